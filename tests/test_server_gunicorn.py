"""The target deployment: a real gunicorn gevent worker in a subprocess.

Every test runs on gunicorn's stock ``-k gevent`` worker (a greenlet per
stream) and on :class:`wsgi_eventsource.gunicorn_worker.GeventWorker` (the
streams written from the hub), which must keep the same contract.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.conftest import ServerProcess
from tests.helpers import ParsedEvent, StreamClient, wait_until

pytestmark = pytest.mark.server

APP = "tests.apps.streams:app"
Gunicorn = Callable[..., ServerProcess]
OURS = "wsgi_eventsource.gunicorn_worker.GeventWorker"


@pytest.fixture(params=["gevent", OURS], ids=["stock-worker", "our-worker"])
def worker_class(request: pytest.FixtureRequest) -> str:
    worker: str = request.param
    return worker


@pytest.fixture
def gunicorn(gunicorn: Gunicorn, worker_class: str) -> Gunicorn:
    """The conftest's ``gunicorn``, on *worker_class*."""

    def start(app: str, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        return gunicorn(app, "--worker-class", worker_class, *extra, env=env)

    return start


def stats(server: ServerProcess) -> dict[str, Any]:
    client = StreamClient(server.port, "/stats")
    try:
        result: dict[str, Any] = json.loads(client.read_body())
        return result
    finally:
        client.close()


def test_stream_opens_at_once_and_multiline_events_arrive(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP)
    started = time.monotonic()
    client = StreamClient(server.port, "/lines")
    assert client.status == 200
    assert time.monotonic() - started < 1.0
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.chunked
    assert client.events(2, timeout=5) == [
        ParsedEvent("message", "first line\nsecond line", ""),
        ParsedEvent("named", "a\nb\nc", ""),
    ]
    client.wait_for(lambda c: "" in c.parser.comments, timeout=2)  # a keepalive while idle


def test_disconnect_ends_the_handler_and_runs_on_close(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_KEEPALIVE": "0.2"})
    clients = [StreamClient(server.port, "/clock") for _ in range(4)]
    for c in clients:
        c.events(2, timeout=5)
    before = stats(server)
    assert before["handlers_running"] == 4
    clients[0].close()
    clients[1].reset()
    wait_until(lambda: stats(server)["closed"] == 2, 3, message="two streams closed")
    after = stats(server)
    assert after["handlers_running"] == 2
    assert after["open"] == 2
    for c in clients[2:]:
        n = len(c.parser.events)
        c.events(n + 2, timeout=5)  # the others keep receiving


def test_many_cycles_return_to_baseline(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_KEEPALIVE": "0.05"})
    warm = StreamClient(server.port, "/idle")
    warm.wait_for(lambda c: b": ok" in c.raw)
    warm.close()
    wait_until(lambda: stats(server)["open"] == 0, 5)
    baseline = stats(server)["greenlets"]

    def cycle(i: int) -> None:
        c = StreamClient(server.port, "/idle")
        c.wait_for(lambda c: b": ok" in c.raw)
        c.reset() if i % 2 else c.close()

    for _ in range(3):
        gevent.joinall([gevent.spawn(cycle, i) for i in range(100)], timeout=30, raise_error=True)
    wait_until(lambda: stats(server)["closed"] == 301, 10, message="every stream closed")
    wait_until(lambda: stats(server)["greenlets"] <= baseline, 10, message="greenlets back to baseline")
    assert stats(server)["handlers_running"] == 0


def test_sigterm_ends_streams_promptly_with_a_retry_hint(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP, "--graceful-timeout", "20")
    clients = [StreamClient(server.port, "/clock") for _ in range(3)]
    for c in clients:
        c.events(1, timeout=5)
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    for c in clients:
        c.read_to_end(timeout=5)
        assert 750 <= (c.parser.reconnection_time or 0) <= 2250
    ended = time.monotonic() - started
    code = server.wait(10)
    exited = time.monotonic() - started
    assert code == 0, "".join(server.log)
    assert ended < 3, f"streams took {ended:.1f}s to end"
    assert exited < 6, f"gunicorn took {exited:.1f}s to exit (graceful timeout is 20s)"
    assert "graceful timeout" not in "".join(server.log).lower()


@pytest.mark.parametrize("hooked", [True, False], ids=["with-hook", "control-without-hook"])
def test_a_worker_retired_by_max_requests_ends_its_streams_promptly(
    gunicorn: Gunicorn, worker_class: str, hooked: bool
) -> None:
    # gunicorn retires a worker after max_requests without sending it a signal.
    # The stock worker needs the hook for that; ours shuts its streams' apps
    # down by itself when it stops, hook or not.
    hook = ["--config", "python:wsgi_eventsource.gunicorn_hooks"] if hooked else []
    hooked = hooked or worker_class == OURS
    server = gunicorn(APP, *hook, "--max-requests", "3", "--graceful-timeout", "6")
    first_pid = stats(server)["pid"]  # request 1
    clients = [StreamClient(server.port, "/clock") for _ in range(2)]  # requests 2 and 3: retired now
    for c in clients:
        c.events(1, timeout=5)
    started = time.monotonic()
    if not hooked:
        # The control: without the hook, streams are held until gunicorn's
        # graceful timeout cuts them off mid-response, so the test is not vacuous.
        for c in clients:
            with pytest.raises(ConnectionError):
                c.read_to_end(timeout=10)
        ended = time.monotonic() - started
        assert ended > 4, f"streams ended after {ended:.1f}s without the hook"
        return
    for c in clients:
        c.read_to_end(timeout=10)
    ended = time.monotonic() - started
    assert all(750 <= (c.parser.reconnection_time or 0) <= 2250 for c in clients), "no shutdown retry hint"
    assert ended < 3, f"streams took {ended:.1f}s to end"
    # A fresh worker serves new streams; the retired one exited without timing out.
    wait_until(lambda: _pid_or_none(server) not in (None, first_pid), 10, 0.2, "a new worker")
    fresh = StreamClient(server.port, "/clock")
    assert fresh.events(1, timeout=5)[0].type == "tick"
    assert "graceful timeout" not in "".join(server.log).lower()


def _pid_or_none(server: ServerProcess) -> int | None:
    try:
        pid: int = stats(server)["pid"]
        return pid
    except OSError:
        return None


def test_a_client_that_does_not_read_is_disconnected(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP, env={"TEST_MAX_PENDING": str(512 * 1024), "TEST_KEEPALIVE": "5"})
    slow = StreamClient(server.port, "/big")
    slow.wait_for(lambda c: b": ok" in c.raw)
    fast = StreamClient(server.port, "/clock")
    fast.events(1)
    # The slow client never reads again; the worker must cut it off.
    wait_until(lambda: stats(server)["closed"] >= 1, 30, interval=0.2, message="slow client disconnected")
    info = stats(server)
    assert info["open"] == 1
    wait_until(lambda: "not reading" in "".join(server.log), 5, message="the cut logged")
    n = len(fast.parser.events)
    fast.events(n + 3, timeout=5)  # unaffected
    slow.close()


def test_push_from_a_real_os_thread(gunicorn: Gunicorn) -> None:
    server = gunicorn(APP)
    client = StreamClient(server.port, "/thread")
    client.read_to_end(timeout=10)
    assert [e.data for e in client.parser.events] == [f"from thread {i}" for i in range(100)]
    wait_until(lambda: stats(server)["handlers_running"] == 0, 5)


def test_sigterm_is_prompt_even_with_a_client_that_stopped_reading(gunicorn: Gunicorn) -> None:
    """Regression (review): a stream whose write was blocked on a client that
    stopped reading held the worker until gunicorn's graceful timeout."""
    server = gunicorn(APP, "--graceful-timeout", "20", env={"TEST_MAX_PENDING": str(100 * 1024 * 1024)})
    stalled = StreamClient(server.port, "/stall")
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.wait_for(lambda c: b": ok" in c.raw)
    reading = StreamClient(server.port, "/clock")
    reading.events(1)
    wait_until(lambda: stats(server)["opened"] == 2, 5)
    started = time.monotonic()
    os.kill(server.proc.pid, signal.SIGTERM)
    reading.read_to_end(timeout=5)
    code = server.wait(15)
    exited = time.monotonic() - started
    assert code == 0, "".join(server.log)
    assert exited < 8, f"gunicorn took {exited:.1f}s to exit (graceful timeout is 20s)"
    assert "graceful timeout" not in "".join(server.log).lower()


def test_the_retirement_hook_refuses_a_worker_that_is_not_gevent(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gunicorn.workers.sync import SyncWorker

    from wsgi_eventsource import gunicorn_hooks

    spawned: list[object] = []
    monkeypatch.setattr(gevent, "spawn", lambda *args: spawned.append(args))
    worker = SyncWorker.__new__(SyncWorker)  # never started: only its class matters
    with caplog.at_level(logging.WARNING, logger="wsgi_eventsource"):
        gunicorn_hooks.post_worker_init(worker)
    assert "SyncWorker is not a gevent worker" in caplog.text
    assert spawned == [], "a watcher was started anyway"
