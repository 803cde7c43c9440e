"""The Redis reader thread at interpreter exit (a worker crash at shutdown).

A gunicorn ``-k gevent`` worker holding ~12,500 streams died when it was
stopped, with glibc's "corrupted double-linked list" (SIGABRT) or a SIGSEGV in
``func_dealloc`` on a thread that was not the main one. The reader thread was
left running at exit: under monkey-patching it blocks in ``XREAD`` inside a
gevent hub of its own and wakes every ``block`` seconds. A worker with many
streams takes longer than that to finalize; the reader then asks for the GIL
and CPython 3.11 ends it with ``pthread_exit``, which unwinds through the
greenlet/gevent frames of its hub and frees Python objects without the GIL
(CPython gh-87135: only 3.14 hangs such threads instead). The readers are now
stopped by an ``atexit`` hook, which runs before finalization.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from tests.conftest import ROOT, Serve
from tests.helpers import StreamClient

# Exits the way a gunicorn gevent worker does on SIGQUIT/SIGINT: sys.exit()
# in a greenlet (GeventWorker.handle_quit), thrown into the main greenlet.
_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import atexit, json, os, sys, time

    import gevent

    state = {}

    def probe():
        # Registered before the library is imported: atexit runs hooks last
        # in, first out, so this one runs after the library's, just before
        # Python finalizes.
        print(json.dumps({"started": [lane.started for lane in state["lanes"]]}), flush=True)

    atexit.register(probe)

    from wsgi_eventsource import RedisBroker

    broker = RedisBroker(sys.argv[1], block=float(sys.argv[2]))
    subscription, _ = broker.subscribe("exit-channel", None)
    deadline = time.monotonic() + 10
    while not any(lane.client_id for lane in broker._lanes.values()):
        if time.monotonic() > deadline:
            sys.exit("the reader did not connect within 10 s")
        gevent.sleep(0.01)
    state["lanes"] = list(broker._lanes.values())
    gevent.sleep(0.1)  # it is blocked in XREAD now
    gevent.spawn(sys.exit, 0).join()
    """
)


def _exit_with_reader(redis_url: str, block: float) -> tuple[subprocess.CompletedProcess[str], dict[str, list[bool]]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, redis_url, str(block)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no probe output; rc={done.returncode}, stderr:\n{done.stderr[-3000:]}"
    return done, json.loads(lines[-1])


def test_reader_is_gone_before_finalization(redis_url: str) -> None:
    """Crash at shutdown (SIGABRT "corrupted double-linked list" / SIGSEGV in a
    gunicorn worker with many streams): the Redis reader thread still ran
    when Python began to finalize, and was killed there with pthread_exit.
    It must have ended by the time the last atexit hook runs."""
    done, probe = _exit_with_reader(redis_url, block=30)
    assert probe["started"] == [False], probe  # the reader ended before finalization
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Fatal Python error" not in done.stderr
    assert "did not stop" not in done.stderr


def test_reader_stops_at_exit_without_waiting_for_its_block(redis_url: str) -> None:
    """The exit hook unblocks the reader's XREAD (CLIENT UNBLOCK): a process
    exits at once, not after ``block`` seconds (here 30; the hook would give
    up after EXIT_WAIT, 5 s)."""
    started = time.monotonic()
    done, probe = _exit_with_reader(redis_url, block=30)
    assert probe["started"] == [False], probe
    assert done.returncode == 0, done.stderr[-3000:]
    # Interpreter start, imports and the connection take about a second.
    assert time.monotonic() - started < 4.5


@pytest.mark.server
def test_serve_worker_with_streams_exits_cleanly_on_sigint(hub_server: Serve, redis_url: str) -> None:
    """Crash at shutdown, end to end: ``serve --redis`` (real gunicorn, real
    Redis) with open streams that got an event, stopped the way the bench
    stops it (SIGINT: gunicorn's quick shutdown, SIGQUIT to the worker). The
    worker exits by itself (exit status 0, gunicorn reports no signal), with
    its reader stopped before finalization (no warning that it did not)."""
    server = hub_server("--workers", "1", "--redis", redis_url, "--log-level", "info")
    batch = [gevent.spawn(StreamClient, server.port, "/events/exit-lobby") for _ in range(50)]
    gevent.joinall(batch, timeout=20, raise_error=True)
    clients = [greenlet.value for greenlet in batch]
    try:
        for client in clients:
            client.wait_for(lambda c: b"\n\n" in c.raw)
        publisher = StreamClient(
            server.port, "/publish/exit-lobby", method="POST", body=b"bye", headers={"Content-Type": "text/plain"}
        )
        assert publisher.status == 201
        publisher.close()
        for client in clients:
            assert [e.data for e in client.events(1)] == ["bye"]
        started = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        assert server.wait(15) == 0, "".join(server.log)[-3000:]
        assert time.monotonic() - started < 10
    finally:
        for client in clients:
            client.close()
    log = "".join(server.log)
    for trouble in ("was sent SIG", "corrupted", "Fatal Python error", "did not stop", "Traceback"):
        assert trouble not in log, log[-3000:]
