"""Issue 12: :class:`wsgi_eventsource.gunicorn_worker.GeventWorker`, the gunicorn
worker that writes event streams from the hub (no greenlet per stream), in a
real gunicorn subprocess with real sockets.

The contract tests of tests/test_server_gunicorn.py run on it too; these are
what it does differently: the bytes it writes itself (chunk framing, the last
chunk, HTTP/1.0), no greenlet per idle stream, a hang-up noticed at once, and
what it leaves to gunicorn.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import ServerProcess
from tests.helpers import StreamClient, parse, wait_until
from tests.test_server_gunicorn import stats

pytestmark = pytest.mark.server

APP = "tests.apps.streams:app"
OURS = "wsgi_eventsource.gunicorn_worker.GeventWorker"
Gunicorn = Callable[..., ServerProcess]


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send *request* on a plain socket and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                return received
            received += data
    raise AssertionError(f"the server did not close the connection; got {received!r}")


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The data of a chunked body, and whether it ended with the last chunk.
    Fails on any framing error."""
    data = b""
    while body:
        size_line, sep, body = body.partition(b"\r\n")
        assert sep, f"no CRLF after a chunk size: {size_line!r}"
        size = int(size_line, 16)  # raises on anything but hex
        if size == 0:
            assert body == b"\r\n", f"bytes after the last chunk: {body!r}"
            return data, True
        assert body[size : size + 2] == b"\r\n", f"chunk of {size} bytes not followed by CRLF: {body[: size + 8]!r}"
        data, body = data + body[:size], body[size + 2 :]
    return data, False


@pytest.fixture
def ours(gunicorn: Gunicorn) -> Callable[..., ServerProcess]:
    def start(*extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        return gunicorn(APP, "--worker-class", OURS, *extra, env=env)

    return start


FINITE = b": ok\n\nid: 1\ndata: one\n\ndata: two\ndata: lines\n\nevent: last\ndata: three\n\n"


def test_a_chunked_stream_is_byte_exact_and_ends_with_the_last_chunk(ours: Callable[..., ServerProcess]) -> None:
    server = ours()
    received = raw_exchange(server.port, b"GET /finite HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"\r\nTransfer-Encoding: chunked" in head, head
    assert b"\r\nContent-Type: text/event-stream; charset=utf-8" in head, head
    data, ended = dechunk(body)
    assert ended, f"no last chunk: {body!r}"
    assert data == FINITE
    events = parse(data).events
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("message", "one", "1"),
        ("message", "two\nlines", "1"),
        ("last", "three", "1"),
    ]
    wait_until(lambda: stats(server)["closed"] == 1, 5, 0.05, "the stream's on_close")


def test_an_http_1_0_client_gets_the_bytes_unframed_and_the_end_is_the_close(
    ours: Callable[..., ServerProcess],
) -> None:
    server = ours()
    received = raw_exchange(server.port, b"GET /finite HTTP/1.0\r\n\r\n")
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n"), head
    assert b"Transfer-Encoding" not in head
    assert body == FINITE


def test_an_idle_stream_holds_no_greenlet(ours: Callable[..., ServerProcess], gunicorn: Gunicorn) -> None:
    """The point of the worker: on gunicorn's stock worker each idle stream
    keeps the greenlet that answered it (the control below)."""
    counts = {}
    for name, server in (("ours", ours()), ("stock", gunicorn(APP))):
        before = stats(server)["greenlets"]
        clients = [StreamClient(server.port, "/idle") for _ in range(40)]
        for client in clients:
            client.wait_for(lambda c: b": ok" in c.raw)
        wait_until(lambda s=server: stats(s)["handlers_running"] == 0, 5, 0.05, "the handlers to return")
        info = stats(server)
        assert info["open"] == 40
        counts[name] = info["greenlets"] - before
        for client in clients:
            client.close()
    assert counts["stock"] >= 40, counts  # the control: one greenlet per stream
    assert counts["ours"] <= 2, counts


def test_a_client_that_hangs_up_is_noticed_at_once(ours: Callable[..., ServerProcess]) -> None:
    """The worker watches the socket: a hang-up ends the stream (its on_close
    runs) with nothing written to it. The stock worker notices only at the
    second write after it, two keepalives (here a minute) later."""
    server = ours(env={"TEST_KEEPALIVE": "30"})
    client = StreamClient(server.port, "/lines")
    client.events(2)
    assert stats(server)["open"] == 1
    started = time.monotonic()
    client.close()
    wait_until(lambda: stats(server)["closed"] == 1, 10, 0.05, "the hang-up noticed")
    assert time.monotonic() - started < 5
    assert stats(server)["open"] == 0


def test_a_reset_is_noticed_at_once(ours: Callable[..., ServerProcess]) -> None:
    server = ours(env={"TEST_KEEPALIVE": "30"})
    client = StreamClient(server.port, "/lines")
    client.events(2)
    client.reset()
    wait_until(lambda: stats(server)["closed"] == 1, 10, 0.05, "the reset noticed")
    assert stats(server)["open"] == 0


def test_requests_before_a_stream_on_one_connection_are_served_by_gunicorn(
    ours: Callable[..., ServerProcess],
) -> None:
    server = ours()
    request = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\nGET /finite HTTP/1.1\r\nHost: x\r\n\r\n"
    received = raw_exchange(server.port, request)
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK"), first
    length = int(next(line for line in first.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    assert json.loads(rest[:length])["open"] == 0
    second, _, body = rest[length:].partition(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK"), second
    assert dechunk(body) == (FINITE, True)


def test_keepalives_reach_an_idle_stream(ours: Callable[..., ServerProcess]) -> None:
    server = ours(env={"TEST_KEEPALIVE": "0.2"})
    client = StreamClient(server.port, "/idle")
    client.wait_for(lambda c: c.raw.count(b":\n\n") >= 3, timeout=5)
    assert bytes(client.raw).startswith(b": ok\n\n:\n\n")
    client.close()


def test_many_streams_each_get_every_event_in_order(ours: Callable[..., ServerProcess]) -> None:
    """A fan-out from the hub to many sockets at once (the /clock handlers
    each push their own ticks): every client gets its ticks 1, 2, 3... with
    none missing, and every socket is closed after the clients leave."""
    server = ours()
    base_fds = stats(server)["fds"]
    clients = [StreamClient(server.port, "/clock") for _ in range(50)]
    for client in clients:
        events = client.events(10, timeout=10)
        assert [int(e.last_event_id) for e in events] == list(range(1, len(events) + 1))
    for client in clients:
        client.close()
    wait_until(lambda: stats(server)["open"] == 0, 10, 0.05, "every stream closed")
    wait_until(lambda: stats(server)["fds"] <= base_fds + 1, 10, 0.05, "every socket closed")


def test_the_frame_cache_frames_once_per_event_and_keeps_no_big_chunk() -> None:
    """Review (issue 12): the cache of the last framed chunk kept a 16 MiB
    event twice its size until the next write; it now keeps chunks of at most
    FRAME_CACHE_MAX bytes. An event small enough is framed once for every
    subscriber (the same object comes back)."""
    from wsgi_eventsource import socket_writer

    small = b"data: x\n\n"
    first = socket_writer.frame_chunk(small)
    assert first == b"9\r\ndata: x\n\n\r\n"
    assert socket_writer.frame_chunk(small) is first
    big = b"x" * (socket_writer.FRAME_CACHE_MAX + 1)
    framed = socket_writer.frame_chunk(big)
    assert framed == b"%X\r\n" % len(big) + big + b"\r\n"
    assert socket_writer._frames.data is small, "a big chunk was kept"
    assert socket_writer.frame_chunk(small) is first
