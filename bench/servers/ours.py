"""wsgi-eventsource under test, run by ``gunicorn -k gevent -w 1``.

``eventsource_app``: ``EventSource``, a handler that keeps every connection,
and an in-process publisher that encodes each event once (``Event``) and
pushes it to all of them. ``hub_app``: the channel hub (``MemoryBroker``),
subscribers at ``/events/bench``, published with ``broker.publish``.
Both start publishing on ``POST /bench/publish?count=N&rate=R&size=S``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from bench.servers.common import payload, publish_params
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


def eventsource_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/bench/publish":
        count, rate, size = publish_params(environ.get("QUERY_STRING", ""))
        gevent.spawn(paced, count, rate, push_to_all(size))
        return accepted(start_response)
    return events(environ, start_response)


broker = MemoryBroker(history=1000)
hub = Hub(broker, keepalive=15.0)


def hub_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/bench/publish":
        count, rate, size = publish_params(environ.get("QUERY_STRING", ""))
        gevent.spawn(paced, count, rate, lambda i: broker.publish("bench", payload(i, size)))
        return accepted(start_response)
    return hub(environ, start_response)
