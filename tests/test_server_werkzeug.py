"""werkzeug's threaded development server: no gevent server, no monkey-patching.

Each request runs in its own OS thread; the stream waits on that thread's
gevent hub, and pushes from other threads are handed over to it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import gevent.event
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import open_fds
from tests.helpers import ParsedEvent, StreamClient, wait_until
from wsgi_eventsource import Connection, EventSource

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


class Handler:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.closed: list[Connection] = []
        self.lock = threading.Lock()

    def __call__(self, conn: Connection, environ: WSGIEnvironment) -> None:
        with self.lock:
            self.connections.append(conn)
        conn.on_close(lambda: self.closed.append(conn))
        conn.push("hello")


@pytest.fixture
def dev_server() -> Iterator[tuple[BaseWSGIServer, Handler, EventSource]]:
    handler = Handler()
    app = EventSource(handler, keepalive=0.1)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler, app
    app.close_all()
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_streams_and_pushes_from_other_threads(dev_server: tuple[BaseWSGIServer, Handler, EventSource]) -> None:
    server, handler, _ = dev_server
    client = StreamClient(server.server_port, "/a")
    assert client.events(1) == [ParsedEvent("message", "hello", "")]
    wait_until(lambda: len(handler.connections) == 1, 5)
    conn = handler.connections[0]

    pushed = gevent.event.Event()

    def pusher() -> None:  # a plain OS thread, as a web request thread would be
        for i in range(50):
            conn.push({"id": i, "data": str(i)})
        pushed.set()

    threading.Thread(target=pusher).start()
    assert pushed.wait(5)
    events = client.events(51)
    assert [e.data for e in events[1:]] == [str(i) for i in range(50)]
    client.wait_for(lambda c: "" in c.parser.comments, timeout=2)  # keepalives while idle
    conn.close()
    client.read_to_end(timeout=5)
    wait_until(lambda: handler.closed == [conn], 5)


def test_disconnect_is_noticed(dev_server: tuple[BaseWSGIServer, Handler, EventSource]) -> None:
    server, handler, app = dev_server
    client = StreamClient(server.server_port, "/b")
    client.events(1)
    wait_until(lambda: len(handler.connections) == 1, 5)
    client.close()
    wait_until(lambda: len(handler.closed) == 1, 3, message="on_close after disconnect")
    assert handler.connections[0].closed
    assert not app.connections


def test_streams_leave_no_hub_behind(dev_server: tuple[BaseWSGIServer, Handler, EventSource]) -> None:
    """Regression: each request thread's gevent hub (an epoll fd and an
    eventfd) outlived its stream, two fds leaked per request."""
    server, handler, app = dev_server

    def one() -> None:
        client = StreamClient(server.server_port, "/c")
        client.events(1)
        client.close()

    one()
    wait_until(lambda: not app.connections, 5)
    baseline = open_fds()
    for _ in range(30):
        one()
    wait_until(lambda: len(handler.closed) == 31, 10, message="every stream ended")
    wait_until(lambda: open_fds() <= baseline, 5, message=f"fds back to {baseline}")
