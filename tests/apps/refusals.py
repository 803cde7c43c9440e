"""An app that turns the first K stream requests away, then serves: what the
real-client tests (npm eventsource, Chromium) run under gunicorn.

::

    GET /soft/<key>?k=K    the first K requests: EventSource.refuse() (200
                           event stream, retry hint, comment, end); then a
                           stream with one event and nothing more
    GET /hard/<key>?k=K    the first K requests: 503 with Retry-After; then
                           the same stream
    GET /count/<key>       JSON: how many stream requests <key> got, and the
                           Last-Event-ID header of each
    GET /                  an empty HTML page (an origin for the browser)

Keys keep the tests (and the clients of one test) apart in one worker.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import gevent

from wsgi_eventsource import Connection, EventSource
from wsgi_eventsource.app import plain_response

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

#: The refusals' reconnection hint (ms, spread over [R/2, 3R/2]): short, so
#: the tests take a second, not the default five.
REFUSAL_RETRY = 200

#: key -> the Last-Event-ID header (or None) of every stream request.
requests: defaultdict[str, list[str | None]] = defaultdict(list)


def serve(conn: Connection, environ: WSGIEnvironment) -> None:
    conn.push({"id": f"served-{len(requests[environ['refusals.key']])}", "data": "served"})
    gevent.sleep(3600)  # open until the client goes


source = EventSource(serve, refusal_retry=REFUSAL_RETRY, keepalive=5)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    kind, _, key = environ.get("PATH_INFO", "/").strip("/").partition("/")
    if kind == "count":
        body = json.dumps({"requests": len(requests[key]), "last_event_ids": requests[key]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    if kind not in ("soft", "hard") or not key:
        return plain_response(start_response, "200 OK", "<!doctype html><title>refusals</title>\n",
                              [("Content-Type", "text/html")])  # fmt: skip
    refusals = int(parse_qs(environ.get("QUERY_STRING", "")).get("k", ["1"])[0])
    requests[key].append(environ.get("HTTP_LAST_EVENT_ID"))
    environ["refusals.key"] = key
    n = len(requests[key])
    if n <= refusals and kind == "soft":
        return source.refuse(start_response, "over_max_connections", f"refused {n} of {refusals}; come back")
    if n <= refusals:
        return plain_response(start_response, "503 Service Unavailable", "come back later\n", [("Retry-After", "1")])
    return source(environ, start_response)
