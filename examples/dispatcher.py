"""A Flask site with live updates mounted beside it.

``/`` is the Flask app; ``/eventsource/<node>`` streams a channel (the
Prosody-style pubsub mount) and ``/events/clock`` is a hand-written stream.
Flask publishes with ``broker.publish``.

Run it:  gunicorn --config examples/gunicorn.conf.py examples.dispatcher:application
"""

from __future__ import annotations

import time

import gevent
from flask import Flask, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from wsgi_eventsource import Connection, EventSource, MemoryBroker

site = Flask(__name__)
broker = MemoryBroker(history=100)  # RedisBroker("redis://...") with several workers


@site.get("/")
def index() -> str:
    return (
        "<!doctype html><title>dispatcher example</title><ul id=log></ul>"
        "<script>const s = new EventSource('/eventsource/news');"
        "s.onmessage = (e) => { const li = document.createElement('li');"
        "li.textContent = e.data; document.getElementById('log').append(li); };</script>"
    )


@site.post("/news")
def post_news() -> tuple[dict[str, str], int]:
    """Flask publishes to the channel; every subscriber gets it."""
    text = request.get_data(as_text=True)
    return {"id": broker.publish("news", text, event=request.args.get("event"))}, 201


def clock(conn: Connection, environ: dict[str, object]) -> None:
    while not conn.closed:
        conn.push({"event": "tick", "data": time.strftime("%H:%M:%S")})
        gevent.sleep(1)


application = DispatcherMiddleware(
    site,
    {
        "/eventsource": broker.subscriber_app(),  # GET /eventsource/<node>
        "/events/clock": EventSource(clock),
    },
)
