"""werkzeug's threaded development server: no gevent server, no monkey-patching.

Each request runs in its own OS thread; the stream waits on that thread's
gevent hub, and pushes from other threads are handed over to it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import gevent.event
import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import open_fds
from tests.helpers import ParsedEvent, StreamClient, wait_until
from wsgi_eventsource import Connection, EventSource, MemoryBroker, Stream, SubscriberApp

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


@contextlib.contextmanager
def threaded_server(app: EventSource | SubscriberApp) -> Iterator[BaseWSGIServer]:
    """werkzeug's threaded development server for *app*, on a free port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        app.close_all()
        server.shutdown()
        server.server_close()
        thread.join(5)


def check_fds_return_to_baseline(one: Callable[[], None], cycles: int, ended: Callable[[int], bool]) -> None:
    """Open and drop a stream with *one()*, once to warm up and then *cycles*
    times; ``ended(n)`` says the first *n* streams have all ended."""
    one()
    wait_until(lambda: ended(1), 5, message="the first stream ended")
    baseline = open_fds()
    for _ in range(cycles):
        one()
    wait_until(lambda: ended(cycles + 1), 10, message="every stream ended")
    wait_until(lambda: open_fds() <= baseline, 5, message=f"fds back to {baseline}")


@pytest.fixture
def dev_server() -> Iterator[tuple[BaseWSGIServer, Handler, EventSource]]:
    handler = Handler()
    app = EventSource(handler, keepalive=0.1)
    with threaded_server(app) as server:
        yield server, handler, app


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

    check_fds_return_to_baseline(one, 30, lambda n: not app.connections and len(handler.closed) == n)


def test_channel_streams_leave_no_hub_behind() -> None:
    """Regression: a broker's subscribe made the request thread's hub before
    the Connection existed, so no one destroyed it: two fds per stream."""
    broker = MemoryBroker()
    app = broker.subscriber_app(keepalive=0.1)
    with threaded_server(app) as server:

        def one() -> None:
            client = StreamClient(server.server_port, "/room")
            client.wait_for(lambda c: b"id: " in c.raw)
            client.close()

        check_fds_return_to_baseline(one, 20, lambda n: not app.connections and broker.subscriber_count("room") == 0)


def test_on_close_added_from_another_thread_runs_even_if_the_stream_ends_in_a_blocked_write() -> None:
    """Regression: under a thread-per-request server, an on_close added from
    another thread was queued on the request thread's hub; when the stream
    ended while that thread was blocked in a socket write (its loop not
    running), the hub was destroyed with the callback still queued."""
    made: list[Connection] = []
    ran: list[str] = []
    ready, write_failed = threading.Event(), threading.Event()

    def request_thread() -> None:  # what werkzeug's request thread does, minus the socket
        conn = Connection({"PATH_INFO": "/"}, max_pending=1 << 20)
        assert conn._own_hub
        made.append(conn)
        ready.set()
        write_failed.wait(5)  # blocked in the server's sendall, which then fails
        Stream(conn, None).close()  # the server closes the response

    thread = threading.Thread(target=request_thread)
    thread.start()
    assert ready.wait(5)
    made[0].on_close(lambda: ran.append("from another thread"))
    write_failed.set()
    thread.join(5)
    assert ran == ["from another thread"]
