"""wsgi-eventsource under test, run by gunicorn, one worker: the library's worker
(``wsgi_eventsource.gunicorn_worker.GeventWorker``), or ``-k gevent`` for the ``stock`` server.

``eventsource_app``: ``EventSource``, a handler that keeps every connection,
and an in-process publisher that encodes each event once (``Event``) and
pushes it to all of them. ``hub_app``: the channel hub (``MemoryBroker``),
subscribers at ``/events/bench`` (or any ``/events/<channel>``, or many
channels on one stream at ``/events?channel=c0&channel=c1...``), published
with ``broker.publish``. Both start publishing on
``POST /bench/publish?count=N&rate=R&size=S``; the hub's takes ``&channel=C``
(default ``bench``), and then tags each event's data with ``C``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent

import wsgi_eventsource
from bench.servers.common import payload, publish_channel, publish_params
from wsgi_eventsource import Connection, ConnectionClosed, Event, EventSource, MemoryBroker
from wsgi_eventsource.hub import Hub

connections: set[Connection] = set()


def keep(conn: Connection, environ: dict[str, Any]) -> None:
    connections.add(conn)
    conn.on_close(lambda: connections.discard(conn))


events = EventSource(keep, keepalive=15.0)


def paced(count: int, rate: float, send: Callable[[int], None]) -> None:
    start = time.monotonic()
    for i in range(count):
        send(i)
        if rate:
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
        elif i % 64 == 63:
            gevent.sleep(0)  # flat out, but let the writers run


def push_to_all(size: int) -> Callable[[int], None]:
    def send(i: int) -> None:
        event = Event(payload(i, size))  # encoded once, the same bytes for everyone
        for conn in list(connections):
            # Not contextlib.suppress: a context manager per push cost ~12% here.
            try:  # noqa: SIM105
                conn.push(event)
            except ConnectionClosed:  # it went away meanwhile
                pass

    return send


def accepted(start_response: Any) -> Iterable[bytes]:
    start_response("202 Accepted", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


def library(start_response: Any) -> Iterable[bytes]:
    """``GET /bench/library``: where wsgi_eventsource was imported from (the
    before/after comparison checks it serves the package it means to)."""
    body = os.path.realpath(wsgi_eventsource.__file__ or "").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def eventsource_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/bench/library":
        return library(start_response)
    if environ["PATH_INFO"] == "/bench/publish":
        count, rate, size = publish_params(environ.get("QUERY_STRING", ""))
        gevent.spawn(paced, count, rate, push_to_all(size))
        return accepted(start_response)
    return events(environ, start_response)


broker = MemoryBroker(history=1000)
hub = Hub(broker, keepalive=15.0)


def hub_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/bench/library":
        return library(start_response)
    if environ["PATH_INFO"] == "/bench/publish":
        query = environ.get("QUERY_STRING", "")
        count, rate, size = publish_params(query)
        channel = publish_channel(query, "bench")
        tag = None if channel == "bench" else channel  # the single-channel rows' data stays as it was
        gevent.spawn(paced, count, rate, lambda i: broker.publish(channel, payload(i, size, tag)))
        return accepted(start_response)
    return hub(environ, start_response)
