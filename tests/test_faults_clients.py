"""Clients under load over real sockets (``gevent.pywsgi``): bursts from other
OS threads, slow but steady readers, readers that stop. One scenario per test;
each docstring names the failure it reproduces."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
import gevent.event
import pytest
from gevent.monkey import get_original
from gevent.pywsgi import WSGIServer

from tests.conftest import call
from tests.helpers import ParsedEvent, StreamClient, parse, wait_until
from wsgi_eventsource import Connection, ConnectionClosed, Event, EventSource
from wsgi_eventsource.connection import PIECE_SIZE

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

Serve = Callable[..., WSGIServer]

# A real OS thread, even if a test run were monkey-patched.
_start_thread: Callable[..., int] = get_original("_thread", "start_new_thread")


def in_os_thread(function: Callable[[], object]) -> gevent.event.Event:
    """Run *function* in a new OS thread; the returned event is set (from the
    hub, so a greenlet may wait on it) once it has returned or raised."""
    done = gevent.event.Event()
    hub = gevent.get_hub()

    def run() -> None:
        try:
            function()
        finally:
            hub.loop.run_callback_threadsafe(done.set)

    _start_thread(run, ())
    return done


class Opened:
    """A handler that keeps the connections it is given."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def __call__(self, conn: Connection, environ: WSGIEnvironment) -> None:
        self.connections.append(conn)

    def wait(self, n: int = 1) -> list[Connection]:
        wait_until(lambda: len(self.connections) >= n, 5, message=f"{n} connections")
        return self.connections


def _open(serve: Serve, **options: object) -> tuple[EventSource, StreamClient, Connection]:
    opened = Opened()
    app = EventSource(opened, keepalive=30, **options)  # type: ignore[arg-type]
    server = serve(app)
    client = StreamClient(server.server_port)
    client.wait_for(lambda c: b": ok" in c.raw)
    (conn,) = opened.wait()
    wait_until(lambda: conn._waiting, 5, message="the reader waits for events")
    return app, client, conn


# -- item 8: pushes from other OS threads are charged as local ones are ----------------


def test_a_burst_from_an_os_thread_reaches_a_reading_client(serve: Serve) -> None:
    """Issue 8 (8): cross-thread pushes were charged to max_pending before the
    hub drained them, so two 60 KB pushes from a thread under
    max_pending=100000 cut a stream whose client reads fine (from the hub's own
    thread, the same pushes were fine)."""
    app, client, conn = _open(serve, max_pending=100_000)
    burst = [Event(letter * 60_000, id=i) for i, letter in enumerate("ab")]

    def push_burst() -> None:
        for event in burst:
            conn.push(event)

    assert in_os_thread(push_burst).wait(5)
    events = client.events(2)
    assert [(e.data, e.last_event_id) for e in events] == [("a" * 60_000, "0"), ("b" * 60_000, "1")]
    assert not conn.closed
    assert app.dropped == 0


def test_the_same_burst_from_the_hub_is_fine_too(serve: Serve) -> None:
    """Issue 8 (8), the comparison: the burst from the hub's own thread."""
    app, client, conn = _open(serve, max_pending=100_000)
    conn.push(Event("a" * 60_000))
    conn.push(Event("b" * 60_000))
    assert [e.data[0] for e in client.events(2)] == ["a", "b"]
    assert app.dropped == 0


def test_a_thread_pushing_to_a_client_that_stopped_reading_is_cut_with_memory_bounded(serve: Serve) -> None:
    """Issue 8 (8): charged as local pushes, a thread's pushes to a client that
    stopped reading still cut it at about max_pending, and nothing of its
    backlog stays held."""
    max_pending = 256 * 1024
    app, client, conn = _open(serve, max_pending=max_pending)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.push(Event("x" * (16 * 1024 * 1024)))  # more than the socket buffers hold
    wait_until(lambda: conn._since > 0 and not conn._waiting, 5, message="a write in progress")
    event = Event("y" * 60_000)
    accepted: list[int] = []
    sleep = get_original("time", "sleep")

    def push_until_cut() -> None:
        for i in range(2000):
            try:
                conn.push(event)
            except ConnectionClosed:
                return
            accepted.append(i)
            sleep(0.001)  # a steady producer, leaving the hub its turns

    assert in_os_thread(push_until_cut).wait(30)
    assert conn.closed
    # Cut at about max_pending (4 events), give or take what the thread
    # pushes before the hub's next turn: not the 2000 (120 MB) it tried.
    assert len(accepted) < 100, len(accepted)
    assert app.dropped == 1
    wait_until(lambda: conn._finished, 5, message="the cut stream's end")
    assert not conn._chunks
    assert conn._remote is None


# -- item 9: write_timeout is time without progress ---------------------------------


def _paced_read(sock: socket.socket, rate: float, until: bytes, limit: float) -> bytearray:
    """Read from *sock* at about *rate* bytes/s in small reads until the bytes
    read end with *until*; fail after *limit* seconds."""
    received = bytearray()
    started = time.monotonic()
    with gevent.Timeout(limit, AssertionError(f"not done in {limit}s")):
        while not received.endswith(until):
            data = sock.recv(16384)
            if not data:
                raise AssertionError(f"the stream was cut after {len(received)} bytes")
            received += data
            ahead = len(received) / rate - (time.monotonic() - started)
            if ahead > 0:
                gevent.sleep(ahead)  # pacing: the reader's speed, not synchronisation
    return received


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    view = memoryview(body)
    at = 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        if size == 0:
            return bytes(out)
        out += view[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


def test_a_slow_steady_reader_gets_a_20mb_event_under_a_1s_write_timeout(serve: Serve) -> None:
    """Issue 8 (9): write_timeout timed the whole coalesced chunk, so a 20 MB
    event to a client reading steadily at a few MB/s was cut after about 1.4 s
    under write_timeout=1. It is now time without progress."""
    size = 20 * 1024 * 1024
    app, client, conn = _open(serve, write_timeout=1.0, max_pending=1024 * 1024)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    already = client._buf  # what the client read past the preamble, if anything
    big = Event("z" * size)
    conn.push(big)
    conn.push("done")
    conn.close()
    started = time.monotonic()
    received = _paced_read(client.sock, 4e6, b"0\r\n\r\n", 30)
    took = time.monotonic() - started
    assert took > 2.5, f"read too fast ({took:.1f}s) to show anything"
    parser = parse(_dechunk(already + bytes(received)))
    assert [len(e.data) for e in parser.events] == [size, 4]
    assert parser.events[0] == ParsedEvent("message", "z" * size, "")
    assert app.dropped == 0


def test_a_reader_that_stops_in_the_middle_of_a_big_event_is_cut_after_about_write_timeout(serve: Serve) -> None:
    """Issue 8 (9): the no-progress timeout still cuts a client that reads a
    while and then stops entirely."""
    app, client, conn = _open(serve, write_timeout=1.0)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    conn.push(Event("z" * (32 * 1024 * 1024)))
    with gevent.Timeout(5):
        read = 0
        while read < 1024 * 1024:  # it reads the first MB, then stops
            read += len(client.sock.recv(65536))
    stopped = time.monotonic()
    wait_until(lambda: conn._finished, 5, message="the stalled stream was cut")
    assert time.monotonic() - stopped < 1.0 + 1.0 + 1.5  # write_timeout, a sweep, slack for a busy machine
    assert app.dropped == 1


def test_the_server_is_handed_bounded_pieces_of_a_big_event() -> None:
    """Issue 8 (9): one 5 MB event came out as one 5 MB item, so the write
    timeout timed all of it; now every item is bytes of at most PIECE_SIZE
    (``wsgiref.validate`` checks the type), and they add up to the event."""
    opened = Opened()
    # max_pending: here the reader does not wait in next() while the test pushes.
    response = call(EventSource(opened, keepalive=30, max_pending=64 * 1024 * 1024))
    assert next(response.body) == b": ok\n\n"
    (conn,) = opened.wait()
    big = Event("q" * (5 * 1024 * 1024 + 3))
    conn.push(big)
    conn.push("small")
    conn.close()
    pieces = list(response.body)
    response.close()
    assert all(type(p) is bytes and 0 < len(p) <= PIECE_SIZE for p in pieces)
    assert len(pieces) == -(-(len(big.encoded) + len(b"data: small\n\n")) // PIECE_SIZE)
    assert b"".join(pieces) == big.encoded + b"data: small\n\n"


def test_a_small_event_is_still_one_item() -> None:
    """The fast path: queued small events are written together, in one item."""
    opened = Opened()
    response = call(EventSource(opened, keepalive=30))
    next(response.body)
    (conn,) = opened.wait()
    conn.push("a")
    conn.push("b")
    assert next(response.body) == b"data: a\n\ndata: b\n\n"
    response.close()


@pytest.mark.parametrize("size", [PIECE_SIZE + 1, 3 * 1024 * 1024])
def test_a_replay_preamble_is_written_in_bounded_pieces(size: int) -> None:
    """Issue 8 (9): a replay preamble (which can be MBs) went out as one item,
    timed as one write."""
    app = EventSource(Opened(), keepalive=30)
    preamble = Event("r" * size, id="9").encoded

    def replaying(environ: WSGIEnvironment, start_response: StartResponse) -> object:
        return app.open_stream(environ, start_response, None, preamble)

    response = call(replaying)  # type: ignore[arg-type]
    pieces: list[bytes] = []
    while len(b"".join(pieces)) < len(b": ok\n\n") + len(preamble):
        pieces.append(next(response.body))
    response.close()
    assert all(type(p) is bytes and len(p) <= PIECE_SIZE for p in pieces)
    assert b"".join(pieces) == b": ok\n\n" + preamble


# -- the sweeper times only the streams of its own hub --------------------------------


def test_the_sweeper_does_not_cut_a_slow_reader_of_another_threads_hub(serve: Serve) -> None:
    """Regression (sweeper): the app's sweeper, in the hub of its first
    stream's thread, also timed the streams of werkzeug's request threads, by
    their loop's clock, which does not advance while that thread blocks in a
    write: a client reading a 20 MB event steadily there was cut after about
    write_timeout, from the wrong thread (its queue dropped under it). A
    stream of another thread's hub is not the sweeper's to time or cut."""
    from tests.test_server_werkzeug import Handler, threaded_server

    size = 20 * 1024 * 1024
    handler = Handler()
    app = EventSource(handler, keepalive=30, write_timeout=1.0, max_pending=64 * 1024 * 1024)
    here = StreamClient(serve(app).server_port, "/here")  # starts the sweeper in this hub
    here.events(1)
    with threaded_server(app) as server:
        client = StreamClient(server.server_port, "/there")
        client.events(1)
        (conn,) = [c for c in handler.connections if c.environ["PATH_INFO"] == "/there"]
        assert not conn._swept
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        already = client._buf
        conn.push("z" * size)
        conn.close()
        received = _paced_read(client.sock, 4e6, b"0\r\n\r\n", 30)
        events = parse(bytes(client.raw) + _dechunk(already + bytes(received))).events
        assert [len(e.data) for e in events] == [5, size]
        assert app.dropped == 0
        assert [c.environ["PATH_INFO"] for c in app.connections] == ["/here"]


def test_a_slow_steady_reader_gets_a_long_replay_under_a_1s_write_timeout(serve: Serve) -> None:
    """Issue 8 (9): a replay preamble (here 12 MB of history) went out as one
    write, so write_timeout cut a client reading it steadily at a few MB/s."""
    from wsgi_eventsource import MemoryBroker

    broker = MemoryBroker(history=200)
    first = broker.publish("room", "start")
    for i in range(120):
        broker.publish("room", f"{i:03d}" + "h" * 100_000)
    app = broker.subscriber_app(keepalive=30, write_timeout=1.0)
    client = StreamClient(serve(app).server_port, "/room", headers={"Last-Event-ID": first})
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    last = broker.publish("room", "end")
    started = time.monotonic()
    received = _paced_read(client.sock, 4e6, f"id: {last}\ndata: end\n\n".encode() + b"\r\n", 30)
    assert time.monotonic() - started > 2.0
    events = parse(_dechunk(client._buf + bytes(received) + b"0\r\n\r\n")).events
    assert [e.data[:3] for e in events] == [f"{i:03d}" for i in range(120)] + ["end"]
    assert app.source.dropped == 0
