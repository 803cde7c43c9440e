"""Streams over real sockets under ``gevent.pywsgi.WSGIServer`` (in-process)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import pytest
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.conftest import live_greenlets, open_fds
from tests.helpers import ParsedEvent, StreamClient, wait_until
from wsgi_eventsource import Connection, ConnectionClosed, Event, EventSource

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

Serve = Callable[..., WSGIServer]


class Tracker:
    """A handler that records connections and when each one's stream ends."""

    def __init__(self, push: Callable[[Connection, WSGIEnvironment], None] | None = None) -> None:
        self.push = push
        self.connections: list[Connection] = []
        self.opened = gevent.event.Event()
        self.closed_count = 0
        self.all_closed = gevent.event.Event()

    def __call__(self, conn: Connection, environ: WSGIEnvironment) -> None:
        self.connections.append(conn)
        self.all_closed.clear()
        conn.on_close(self._closed)
        self.opened.set()
        if self.push is not None:
            self.push(conn, environ)

    def _closed(self) -> None:
        self.closed_count += 1
        if self.closed_count == len(self.connections):
            self.all_closed.set()

    def wait_open(self, n: int = 1, timeout: float = 5) -> list[Connection]:
        wait_until(lambda: len(self.connections) >= n, timeout, message=f"{n} connections")
        return self.connections


def test_the_stream_opens_at_once_and_events_arrive_as_pushed(serve: Serve) -> None:
    tracker = Tracker()
    server = serve(EventSource(tracker))
    started = time.monotonic()
    client = StreamClient(server.server_port, "/")
    client.wait_for(lambda c: b": ok" in c.raw, timeout=2)
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["x-accel-buffering"] == "no"
    assert "connection" not in client.headers or client.headers["connection"].lower() != "close"
    assert time.monotonic() - started < 1.0  # headers and a first comment before any event
    (conn,) = tracker.wait_open()
    conn.push({"id": 1, "event": "tick", "data": "a\nb"})
    conn.push("plain")
    assert client.events(2) == [ParsedEvent("tick", "a\nb", "1"), ParsedEvent("message", "plain", "1")]
    conn.close()
    client.read_to_end()
    assert client.eof
    assert tracker.all_closed.wait(5)


def test_keepalive_comments_flow_while_idle(serve: Serve) -> None:
    server = serve(EventSource(Tracker(), keepalive=0.1))
    client = StreamClient(server.server_port)
    client.wait_for(lambda c: c.parser.comments.count("") >= 3, timeout=3)
    assert client.parser.events == []
    client.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_disconnect_is_noticed_within_two_keepalives(serve: Serve, how: str) -> None:
    handler_ended = gevent.event.Event()

    def push_forever(conn: Connection, environ: WSGIEnvironment) -> None:
        try:
            gevent.sleep(60)  # a handler still running when the client goes
        finally:
            handler_ended.set()

    keepalive = 0.2
    tracker = Tracker(push_forever)
    server = serve(EventSource(tracker, keepalive=keepalive))
    client = StreamClient(server.server_port)
    client.wait_for(lambda c: b": ok" in c.raw)
    (conn,) = tracker.wait_open()
    gone_at = time.monotonic()
    getattr(client, how)()
    assert tracker.all_closed.wait(2 * keepalive + 1.0), "on_close did not run"
    noticed = time.monotonic() - gone_at
    assert noticed <= 2 * keepalive + 0.5
    assert conn.closed
    with pytest.raises(ConnectionClosed):
        conn.push("x")
    assert handler_ended.wait(2), "the handler greenlet was not ended"
    assert tracker.closed_count == 1


def test_a_thousand_connect_disconnect_cycles_leave_nothing_behind(serve: Serve) -> None:
    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        conn.on_close(lambda: None)
        gevent.sleep(60)  # every handler is still running when its client goes

    tracker = Tracker(handler)
    app = EventSource(tracker, keepalive=0.05)
    server = serve(app)
    # Warm up once so lazily created objects (the hub's threadpool, caches) exist.
    warm = StreamClient(server.server_port)
    warm.wait_for(lambda c: b": ok" in c.raw)
    warm.close()
    wait_until(lambda: not app.connections, 5)
    greenlets_before = live_greenlets()
    fds_before = open_fds()

    def cycle(i: int) -> None:
        client = StreamClient(server.server_port, f"/{i}")
        client.wait_for(lambda c: b": ok" in c.raw)
        client.reset() if i % 2 else client.close()

    for batch in range(5):
        gevent.joinall([gevent.spawn(cycle, batch * 200 + i) for i in range(200)], timeout=30, raise_error=True)
    assert len(tracker.connections) == 1001
    wait_until(lambda: tracker.closed_count == 1001, 20, message="every on_close ran")
    wait_until(lambda: not app.connections, 5)
    wait_until(lambda: live_greenlets() <= greenlets_before, 10, message="greenlets back to baseline")
    wait_until(lambda: open_fds() <= fds_before, 10, message="fds back to baseline")
    assert all(c.closed and c._handler is None for c in tracker.connections)
    # Nothing but the test's own list still refers to a connection.
    import gc
    import sys

    gc.collect()
    assert max(sys.getrefcount(c) for c in tracker.connections) <= 3, "something still holds a connection"


def test_a_client_that_stops_reading_is_disconnected_and_others_are_unaffected(serve: Serve) -> None:
    tracker = Tracker()
    max_pending = 256 * 1024
    server = serve(EventSource(tracker, max_pending=max_pending, keepalive=1))
    slow = StreamClient(server.server_port, "/slow")
    slow.wait_for(lambda c: b": ok" in c.raw)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    fast = StreamClient(server.server_port, "/fast")
    fast.wait_for(lambda c: b": ok" in c.raw)
    slow_conn, fast_conn = tracker.wait_open(2)
    assert slow_conn.environ["PATH_INFO"] == "/slow"

    big = Event("x" * 65536)
    pushed = 0
    longest_push = 0.0
    with gevent.Timeout(30):
        while not slow_conn.closed:
            started = time.perf_counter()
            slow_conn.push(big)
            fast_conn.push(big)
            longest_push = max(longest_push, time.perf_counter() - started)
            pushed += 1
            fast.events(pushed)  # the fast client keeps up, event by event
            assert pushed < 1000, "the non-reading client was never disconnected"
    assert longest_push < 0.05  # push never blocks the pusher
    wait_until(lambda: tracker.closed_count >= 1, 10, message="the slow stream's on_close")
    # Its unsent output was dropped: nothing of it stays queued.
    assert slow_conn._size == 0
    assert not slow_conn._chunks
    # The fast client is still served.
    fast_conn.push("still here")
    assert fast.events(pushed + 1)[-1].data == "still here"
    assert not fast_conn.closed


def test_stop_with_a_pool_ends_open_streams_promptly(serve: Serve) -> None:
    tracker = Tracker()
    server = serve(EventSource(tracker, keepalive=30), pool=100)
    clients = [StreamClient(server.server_port) for _ in range(5)]
    for c in clients:
        c.wait_for(lambda c: b": ok" in c.raw)
    tracker.wait_open(5)
    started = time.monotonic()
    server.stop(timeout=0.5)
    assert time.monotonic() - started < 3
    assert tracker.all_closed.wait(2)
    for c in clients:
        with pytest.raises((AssertionError, ConnectionError)):
            c.read_to_end(timeout=3)  # the connection is cut (no final chunk): EOF
        assert c.eof


def test_close_all_before_stop_ends_streams_with_a_retry_hint(serve: Serve) -> None:
    tracker = Tracker()
    app = EventSource(tracker, keepalive=30)
    server = serve(app)
    clients = [StreamClient(server.server_port) for _ in range(3)]
    tracker.wait_open(3)
    assert app.close_all(retry=750) == 3
    for c in clients:
        c.read_to_end(timeout=3)
        assert 375 <= (c.parser.reconnection_time or 0) <= 1125
    assert tracker.all_closed.wait(2)
    server.stop(timeout=1)


def test_mounted_under_dispatcher_middleware(serve: Serve) -> None:
    seen: list[tuple[str, str]] = []

    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        seen.append((environ["SCRIPT_NAME"], environ["PATH_INFO"]))
        conn.push(f"hello {environ['PATH_INFO']}")
        conn.close()

    def site(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"site"]

    app = DispatcherMiddleware(site, {"/events": EventSource(handler)})
    server = serve(app)
    client = StreamClient(server.server_port, "/events/room")
    client.read_to_end()
    assert client.parser.events == [ParsedEvent("message", "hello /room", "")]
    assert seen == [("/events", "/room")]
    page = StreamClient(server.server_port, "/other")
    assert page.read_body() == b"site"


def test_push_from_an_os_thread_over_a_real_socket(serve: Serve) -> None:
    tracker = Tracker()
    server = serve(EventSource(tracker))
    client = StreamClient(server.server_port)
    (conn,) = tracker.wait_open()

    def pusher() -> None:
        for i in range(200):
            conn.push({"id": i, "data": str(i)})
            if i % 50 == 0:
                time.sleep(0.01)
        conn.close()

    thread = threading.Thread(target=pusher)
    thread.start()
    client.read_to_end(timeout=10)
    thread.join(5)
    assert [e.data for e in client.parser.events] == [str(i) for i in range(200)]


def _stalled_stream(serve: Serve, **options: Any) -> tuple[Tracker, EventSource, StreamClient, Connection]:
    """A stream of a new app (*options*) whose client has stopped reading,
    with the server's write blocked on it."""
    tracker = Tracker()
    app = EventSource(tracker, max_pending=64 * 1024 * 1024, keepalive=30, **options)
    server = serve(app)
    client = StreamClient(server.server_port)
    client.wait_for(lambda c: b": ok" in c.raw)
    (conn,) = tracker.wait_open()
    _stall(client, conn)
    return tracker, app, client, conn


def _stall(client: StreamClient, conn: Connection, size: int = 16 * 1024 * 1024) -> None:
    """Push more than the socket buffers hold to a client that does not read,
    and wait until the server's write is blocked on it."""
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.push(Event("x" * size))
    wait_until(lambda: conn._since > 0 and not conn._waiting, 5, message="a write in progress")
    gevent.sleep(0.2)
    # Still inside that write (not back waiting in Stream.__next__).
    assert not conn._waiting, "the write finished: the client read it all"
    assert conn._since > 0


def test_close_ends_a_stream_whose_write_is_blocked(serve: Serve) -> None:
    """Regression (review): close() only set a flag; a server greenlet stuck
    in a write to a client that stopped reading never came back to see it."""
    tracker, app, _client, conn = _stalled_stream(serve, close_timeout=0.5)
    closed_at = time.monotonic()
    conn.close()
    assert tracker.all_closed.wait(4), "the stalled stream was never ended"
    assert time.monotonic() - closed_at < 0.5 + 2.5
    assert not app.connections


def test_a_client_that_stops_reading_with_nothing_more_pushed_is_cut_after_write_timeout(serve: Serve) -> None:
    tracker, _app, _client, conn = _stalled_stream(serve, write_timeout=1.0)
    assert tracker.all_closed.wait(4), "a zero-window client held its stream forever"
    assert conn.closed


def test_shutdown_ends_open_streams_and_turns_new_ones_away_with_a_retry_hint(serve: Serve) -> None:
    tracker = Tracker()
    app = EventSource(tracker, keepalive=30)
    server = serve(app)
    open_client = StreamClient(server.server_port)
    tracker.wait_open()
    assert app.shutdown(retry=700) == 1
    open_client.read_to_end(timeout=3)
    assert 350 <= (open_client.parser.reconnection_time or 0) <= 1050
    late = StreamClient(server.server_port)  # the server still accepts for a moment
    assert late.status == 200
    late.read_to_end(timeout=3)
    assert 350 <= (late.parser.reconnection_time or 0) <= 1050
    assert late.parser.comments[-1] == " this server is shutting down; reconnect shortly"
    assert app.refused["shutting_down"] == 1
    assert len(tracker.connections) == 1  # the late stream never reached the handler
    assert not app.connections


def test_a_burst_larger_than_max_pending_reaches_a_reading_client(serve: Serve) -> None:
    """Regression (review): pushing more than max_pending without yielding, or
    one event larger than it, disconnected a client that reads fine."""

    def burst(conn: Connection, environ: WSGIEnvironment) -> None:
        for i in range(20):
            conn.push(Event(str(i) * 60_000))
        conn.push(Event("y" * 400_000))
        conn.close()

    tracker = Tracker(burst)
    server = serve(EventSource(tracker, max_pending=256 * 1024))
    client = StreamClient(server.server_port)
    client.read_to_end(timeout=10)
    assert len(client.parser.events) == 21
    assert client.parser.events[-1].data == "y" * 400_000
