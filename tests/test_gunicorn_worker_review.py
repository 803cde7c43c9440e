"""Review of :class:`wsgi_eventsource.gunicorn_worker.GeventWorker` (issue 12):
regression tests for the defects found, each against a real gunicorn
subprocess and real sockets, and checks that its contract is the stock
worker's under the loud cases.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import gevent
import pytest

from tests.conftest import ServerProcess
from tests.helpers import StreamClient, wait_until
from tests.test_gunicorn_worker import stats

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


def test_an_on_close_callback_may_wait_after_a_hang_up(either: Callable[..., ServerProcess]) -> None:
    """Issue 12 review (1): the worker ran a stream's ``on_close`` callbacks
    in the hub's own loop, where a callback that waits (a cooperative
    database or Redis call, here ``gevent.sleep``) fails with gevent's
    BlockingSwitchOutError and never finishes. On the stock worker they run
    in the request's greenlet and may wait."""
    server = either()  # keepalives every 0.2 s: the stock worker notices a hang-up too
    clients = [StreamClient(server.port, "/slow-close") for _ in range(3)]
    for client in clients:
        client.wait_for(lambda c: b": ok" in c.raw)
    for client in clients:
        client.close()
    wait_until(lambda: stats(server)["closed"] == 3, 10, 0.05, "the hang-ups noticed")
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
    socket: a failed request (nginx answers 502 to a POST it may not retry).
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
    failing = [StreamClient(server.port, "/raise-on-close") for _ in range(5)]
    for client in failing:
        client.wait_for(lambda c: b": ok" in c.raw)
    for client in failing:
        client.close()
    wait_until(lambda: stats(server)["closed"] == 5, 10, 0.05, "the hang-ups noticed")
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
