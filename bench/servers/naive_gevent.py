"""A hand-written gevent SSE app, as users write it without a library: one
queue per client, a generator that yields each message, run by
``gunicorn -k gevent -w 1``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent
import gevent.queue

from bench.servers.common import payload, publish_params

clients: set[gevent.queue.Queue[bytes]] = set()


def publisher(count: int, rate: float, size: int) -> None:
    for i in range(count):
        message = f"data: {payload(i, size)}\n\n".encode()
        for queue in list(clients):
            queue.put(message)
        if rate:
            gevent.sleep(1 / rate)
        elif i % 64 == 63:
            gevent.sleep(0)


def app(environ: dict[str, Any], start_response: Any) -> Any:
    if environ["PATH_INFO"] == "/bench/publish":
        gevent.spawn(publisher, *publish_params(environ.get("QUERY_STRING", "")))
        start_response("202 Accepted", [("Content-Length", "0")])
        return []
    queue: gevent.queue.Queue[bytes] = gevent.queue.Queue()
    clients.add(queue)
    start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

    def stream() -> Iterator[bytes]:
        try:
            yield b": ok\n\n"
            while True:
                try:
                    yield queue.get(timeout=15)
                except gevent.queue.Empty:
                    yield b":\n\n"
        finally:
            clients.discard(queue)

    return stream()
