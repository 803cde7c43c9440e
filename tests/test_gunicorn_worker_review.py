"""Review of :class:`wsgi_eventsource.gunicorn_worker.GeventWorker` (issue 12):
regression tests for the defects found, each against a real gunicorn
subprocess and real sockets, and checks that its contract is the stock
worker's under the loud cases.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gevent
import gevent.socket
import gevent.ssl
import pytest

from tests.conftest import ServerProcess, self_signed_certificate
from tests.helpers import StreamClient, wait_until
from tests.test_server_gunicorn import stats

pytestmark = pytest.mark.server

APP = "tests.apps.streams:app"
OURS = "wsgi_eventsource.gunicorn_worker.GeventWorker"
Gunicorn = Callable[..., ServerProcess]


@pytest.fixture
def ours(gunicorn: Gunicorn) -> Callable[..., ServerProcess]:
    def start(*extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        return gunicorn(APP, "--worker-class", OURS, *extra, env=env)

    return start


@pytest.fixture(params=["gevent", OURS], ids=["stock-worker", "our-worker"])
def either(request: pytest.FixtureRequest, gunicorn: Gunicorn) -> Callable[..., ServerProcess]:
    """A contract test: on the stock worker (the reference) and on ours."""
    worker: str = request.param

    def start(*extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        return gunicorn(APP, "--worker-class", worker, *extra, env=env)

    return start


def open_then_hang_up(server: ServerProcess, path: str, n: int) -> None:
    """Open *n* streams of *path*, wait until each is open, close them all
    and wait until the worker has noticed every hang-up."""
    clients = [StreamClient(server.port, path) for _ in range(n)]
    for client in clients:
        client.wait_for(lambda c: b": ok" in c.raw)
    for client in clients:
        client.close()
    wait_until(lambda: stats(server)["closed"] == n, 10, 0.05, "the hang-ups noticed")


def test_an_on_close_callback_may_wait_after_a_hang_up(either: Callable[..., ServerProcess]) -> None:
    """Issue 12 review (1): the worker ran a stream's ``on_close`` callbacks
    in the hub's own loop, where a callback that waits (a cooperative
    database or Redis call, here ``gevent.sleep``) fails with gevent's
    BlockingSwitchOutError and never finishes. On the stock worker they run
    in the request's greenlet and may wait."""
    server = either()  # keepalives every 0.2 s: the stock worker notices a hang-up too
    open_then_hang_up(server, "/slow-close", 3)
    wait_until(lambda: stats(server)["slow_closed"] == 3, 5, 0.05, "the waiting on_close callbacks to finish")
    assert "BlockingSwitchOutError" not in "".join(server.log)


def test_waiting_on_close_callbacks_run_before_the_worker_exits_at_sigterm(
    either: Callable[..., ServerProcess],
) -> None:
    """Issue 12 review (1): at SIGTERM the streams end in the hub; their
    waiting ``on_close`` callbacks must all run (and finish) before the
    worker exits."""
    server = either("--graceful-timeout", "10", env={"TEST_KEEPALIVE": "30"})
    clients = [StreamClient(server.port, "/slow-close") for _ in range(5)]
    for client in clients:
        client.wait_for(lambda c: b": ok" in c.raw)
    wait_until(lambda: stats(server)["opened"] == 5, 5, 0.05)
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    for client in clients:
        client.read_to_end(timeout=5)
    assert server.wait(10) == 0, "".join(server.log)
    assert time.monotonic() - started < 5
    log = "".join(server.log)
    assert "slow on_close done: 5" in log, log
    assert "BlockingSwitchOutError" not in log


def test_a_connection_closed_after_its_stream_says_so_in_its_headers(either: Callable[..., ServerProcess]) -> None:
    """Issue 12 review (2): the worker closes a stream's connection when the
    stream ends, but its headers said ``Connection: keep-alive``, so a client
    or proxy may reuse it for its next request (nginx's upstream ``keepalive``
    pool of the shipped config does) and send that request into a closing
    socket, where it fails (a race: not seen in 300 tries through nginx).
    Either the connection is kept alive and serves the next request (the
    stock worker), or the headers say ``Connection: close``."""
    server = either()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /finite HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        with gevent.Timeout(10):
            while not received.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, f"closed before the last chunk: {received!r}"
                received += data
        head = received.partition(b"\r\n\r\n")[0].lower()
        if b"\r\nconnection: close" in head:
            with gevent.Timeout(10):
                assert sock.recv(65536) == b"", "announced a close, did not close"
            return
        assert b"\r\nconnection: keep-alive" in head, head
        sock.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        with gevent.Timeout(10):
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 OK"), f"announced keep-alive, then closed: {answer!r}"


def test_a_raising_on_close_callback_leaves_the_other_streams_alone(either: Callable[..., ServerProcess]) -> None:
    """Checked (no defect): callbacks that raise, of streams that end together,
    are logged; the other streams' events keep coming, in order."""
    server = either()
    ticking = [StreamClient(server.port, "/clock") for _ in range(5)]
    open_then_hang_up(server, "/raise-on-close", 5)
    for client in ticking:
        events = client.events(len(client.parser.events) + 5, timeout=5)
        assert [int(e.last_event_id) for e in events] == list(range(1, len(events) + 1))
    log = "".join(server.log)
    assert log.count("RuntimeError: on_close failure on purpose") == 5, log
    assert stats(server)["open"] == 5


def test_clients_gone_before_the_headers_leave_nothing_behind(either: Callable[..., ServerProcess]) -> None:
    """Checked (no defect): a client that resets right after its request (the
    worker's header write or take-over fails half-way) gets its stream ended
    once, with its socket closed."""
    server = either(env={"TEST_KEEPALIVE": "30"})
    base = stats(server)["fds"]
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(b"GET /lines HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.close()  # an RST, at once
    wait_until(lambda: stats(server)["opened"] == 30, 10, 0.05, "every stream opened")
    # The stock worker notices a reset at its next writes (keepalives are 30 s
    # apart here, but the handler's two pushes are writes).
    wait_until(lambda: stats(server)["closed"] == 30, 10, 0.05, "every stream ended")
    wait_until(lambda: stats(server)["fds"] <= base + 1, 10, 0.05, "every socket closed")
    info = stats(server)
    assert (info["open"], info["handlers_running"]) == (0, 0), info
    assert "Traceback" not in "".join(server.log)


def test_pushes_from_a_thread_to_a_blocked_stream_cut_it_at_max_pending(
    either: Callable[..., ServerProcess],
) -> None:
    """Checked (no defect): a stream blocked on a client that stopped reading,
    pushed to from a real OS thread, is cut once more than ``max_pending``
    waits; the thread's next push raises ConnectionClosed."""
    server = either(env={"TEST_MAX_PENDING": str(256 * 1024), "TEST_KEEPALIVE": "30"})
    stalled = StreamClient(server.port, "/thread-blocked")
    stalled.wait_for(lambda c: b": ok" in c.raw)
    wait_until(lambda: stats(server)["closed"] == 1, 10, 0.05, "the blocked stream cut")
    info = stats(server)
    assert info["dropped"] == 1, info
    wait_until(lambda: stats(server).get("thread_saw_closed") == 1, 5, 0.05, "the thread told")
    assert "not reading" in "".join(server.log)


def _tls_gunicorn(tmp_path: Path, *extra: str) -> tuple[ServerProcess, str]:
    """Our worker serving tests/apps/streams.py over TLS (gunicorn's own)."""
    certificate, key = self_signed_certificate(str(tmp_path))
    args = [
        sys.executable, "-m", "gunicorn", "--worker-class", OURS, "--workers", "1",
        "--bind", "127.0.0.1:0", "--log-level", "debug",
        "--certfile", certificate, "--keyfile", key, *extra, APP,
    ]  # fmt: skip
    pattern = r"Listening at: https://127\.0\.0\.1:(\d+)"
    return ServerProcess(args, ready_pattern=pattern, stop_signal=signal.SIGINT), certificate


def _tls_request(port: int, certificate: str, path: str) -> gevent.ssl.SSLSocket:
    context = gevent.ssl.create_default_context(cafile=certificate)
    plain = gevent.socket.create_connection(("127.0.0.1", port), timeout=15)
    sock = context.wrap_socket(plain, server_hostname="127.0.0.1")
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def _read_until_closed(sock: gevent.ssl.SSLSocket) -> bytes:
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return received
        if not data:
            return received
        received += data


def test_a_retired_worker_ends_its_tls_streams_promptly_without_the_hook(tmp_path: Path) -> None:
    """Issue 12 review (3): the worker ended the streams it had taken over
    when gunicorn retired it after ``max_requests``, but only after gunicorn
    had waited out ``graceful_timeout`` for the requests it still served:
    streams over TLS, which it serves as the stock worker does (they hold
    their requests). So a retired worker with TLS streams accepted nobody
    for ``graceful_timeout`` and then cut them, although the documentation
    says the worker needs no hook. Now it ends every stream of its apps as
    soon as it stops."""
    server, certificate = _tls_gunicorn(tmp_path, "--max-requests", "2", "--graceful-timeout", "8")
    try:
        streams = [_tls_request(server.port, certificate, "/clock") for _ in range(2)]  # requests 1, 2: retired
        for sock in streams:
            with gevent.Timeout(5):
                while b"tick 1" not in sock.recv(65536):
                    pass
        started = time.monotonic()
        with gevent.Timeout(15):
            bodies = [_read_until_closed(sock) for sock in streams]
        ended = time.monotonic() - started
        for sock in streams:
            sock.close()
        for body in bodies:
            assert body.endswith(b"\r\n0\r\n\r\n"), f"cut off, not ended: ...{body[-80:]!r}"
            assert b"retry: " in body, "no shutdown retry hint"
        assert ended < 4, f"streams took {ended:.1f}s to end (graceful timeout is 8 s)"
        wait_until(lambda: "Worker exiting" in "".join(server.log), 5, 0.05, "the retired worker to exit")
        assert "graceful timeout" not in "".join(server.log).lower()
    finally:
        server.stop()
