"""The channel hub the multi-process tests run under gunicorn: subscribe at
``/events/<channel>``, publish at ``/publish/<channel>``, with the broker
named by the environment (``REDIS_URL`` set: RedisBroker, else MemoryBroker)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from wsgi_eventsource import Broker, MemoryBroker, RedisBroker

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

broker: Broker
if os.environ.get("REDIS_URL"):
    broker = RedisBroker(os.environ["REDIS_URL"], history=int(os.environ.get("HISTORY", "1000")))
else:
    broker = MemoryBroker()


def info(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    body = json.dumps({"pid": os.getpid(), "subscribers": broker.subscriber_count()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


app = DispatcherMiddleware(
    info,
    {
        "/events": broker.subscriber_app(keepalive=float(os.environ.get("TEST_KEEPALIVE", "0.5")), shutdown_retry=500),
        "/publish": broker.publisher_app(),
    },
)
