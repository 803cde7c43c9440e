from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.validate import validator

import gevent
import greenlet
import pytest
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from werkzeug.test import EnvironBuilder

from tests.helpers import StreamClient

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: Iterator[bytes]
    header_names: set[str] = field(default_factory=set)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def call(
    app: WSGIApplication,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query_string: str | None = None,
) -> Response:
    """Call *app* wrapped in ``wsgiref.validate.validator``; step the body by hand."""
    builder = EnvironBuilder(path=path, method=method, headers=list((headers or {}).items()), query_string=query_string)
    environ = builder.get_environ()
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        captured["status"] = status
        captured["headers"] = response_headers
        return lambda data: None

    body = validator(app)(environ, start_response)
    return Response(captured["status"], captured["headers"], iter(body), {k.lower() for k, _ in captured["headers"]})


def live_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close the test clients a test left open (they are not the test's point)."""
    yield
    for client in list(StreamClient.unclosed):
        client.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., WSGIServer]]:
    """Start ``gevent.pywsgi`` servers on free ports; stop them afterwards."""
    servers: list[WSGIServer] = []

    def start(app: WSGIApplication, *, pool: int | None = None) -> WSGIServer:
        server = WSGIServer(("127.0.0.1", 0), app, log=None, spawn=Pool(pool) if pool else "default")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


def join_all(greenlets: Iterable[gevent.Greenlet[Any, Any]], timeout: float = 5) -> None:
    done = gevent.joinall(list(greenlets), timeout=timeout, raise_error=True)
    assert all(g.dead for g in done)
