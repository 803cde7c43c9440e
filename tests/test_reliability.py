"""Breaking things on purpose, with real servers: disconnect storms, slow
consumers, faulty handlers and a worker killed under load. (Redis killed
mid-stream is in test_brokers_redis.py.) Every test is bounded in time."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import pytest

from tests.conftest import VENV_BIN, ServerProcess
from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import RedisBroker

pytestmark = [pytest.mark.server, pytest.mark.slow]

STREAMS = "tests.apps.streams:app"
CHANNELS = "tests.apps.channels:app"
Gunicorn = Callable[..., ServerProcess]


@pytest.fixture(autouse=True)
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def stats(port: int) -> dict[str, Any]:
    client = StreamClient(port, "/stats")
    try:
        result: dict[str, Any] = json.loads(client.read_body())
        return result
    finally:
        client.close()


def open_many(port: int, path: str, n: int, concurrency: int = 200) -> list[StreamClient]:
    clients: list[StreamClient] = []

    def one() -> None:
        client = StreamClient(port, path, timeout=30)
        client.wait_for(lambda c: b": ok" in c.raw)
        clients.append(client)

    pool = gevent.pool.Pool(concurrency)
    for _ in range(n):
        pool.spawn(one)
    pool.join(timeout=60, raise_error=True)
    assert len(clients) == n
    return clients


def test_disconnect_storms_leave_nothing_behind_and_others_keep_receiving(gunicorn: Gunicorn) -> None:
    server = gunicorn(STREAMS, "--worker-connections", "5000", env={"TEST_KEEPALIVE": "0.3"})
    observers = [StreamClient(server.port, "/clock") for _ in range(3)]
    for o in observers:
        o.events(2)
    warm = open_many(server.port, "/idle", 200)  # let the worker reach its working size
    for c in warm:
        c.close()
    wait_until(lambda: stats(server.port)["open"] == 3, 10)
    baseline = stats(server.port)
    rss_growth: list[int] = []
    footprints: list[int] = []  # RSS that 2,000 open streams add, per storm

    for storm, how in enumerate(["close", "half-reset", "close", "half-reset"]):
        before = stats(server.port)
        clients = open_many(server.port, "/idle", 2000)
        while_open = stats(server.port)
        assert while_open["open"] == 2003
        footprints.append(while_open["rss_kib"] - before["rss_kib"])
        for i, client in enumerate(clients):  # all at once
            client.reset() if how == "half-reset" and i % 2 else client.close()
        expected_closed = before["closed"] + 2000
        wait_until(lambda n=expected_closed: stats(server.port)["closed"] >= n, 20, 0.2, "every stream's cleanup")
        after = stats(server.port)
        assert after["open"] == 3
        assert after["handlers_running"] == 3  # only the observers' handlers
        wait_until(lambda: stats(server.port)["greenlets"] <= baseline["greenlets"], 10, 0.2, "greenlets at baseline")
        wait_until(lambda: stats(server.port)["fds"] <= baseline["fds"] + 2, 10, 0.2, "fds at baseline")
        rss_growth.append(stats(server.port)["rss_kib"] - baseline["rss_kib"])
        for o in observers:  # the other streams kept receiving throughout
            n = len(o.parser.events)
            o.events(n + 2, timeout=5)
        print(f"storm {storm + 1} ({how}): RSS +{rss_growth[-1]} KiB over baseline", file=sys.stderr)
    # No leak: the allocator keeps much of what the first storm freed (RSS stays
    # ~25-30 MiB up, varying by several MiB from run to run), so the first storm
    # is the warm-up and the later ones are compared with what a leak would
    # cost: leaking every stream would add a whole storm's footprint per storm,
    # two footprints from storm 2 to storm 4. The observed drift is a small
    # fraction of one. Object leaks are checked exactly, by refcount, in
    # test_server_pywsgi.
    footprint = min(footprints)
    print(f"2,000 open streams add {footprints} KiB of RSS", file=sys.stderr)
    assert footprint > 0, footprints
    assert rss_growth[-1] - rss_growth[1] <= footprint / 2, (rss_growth, footprints)


@pytest.mark.parametrize("worker", ["gevent", "wsgi_eventsource.gunicorn_worker.GeventWorker"], ids=["stock", "ours"])
def test_slow_consumers_are_cut_at_the_limit_and_fast_ones_keep_their_latency(gunicorn: Gunicorn, worker: str) -> None:
    """On both workers: on ours the cut happens in the middle of a fan-out
    (a push over max_pending), from the hub rather than a stream's greenlet."""
    server = gunicorn(CHANNELS, "--worker-class", worker, env={"TEST_KEEPALIVE": "1"})
    fast = [StreamClient(server.port, "/events/load") for _ in range(10)]
    for c in fast:
        c.wait_for(lambda c: b"id: " in c.raw)
    payload = "x" * 64_000
    sent = 0

    def publish_and_time(n: int) -> list[float]:
        nonlocal sent
        latencies = []
        for _ in range(n):
            started = time.monotonic()
            publisher = StreamClient(server.port, "/publish/load", method="POST", body=f"{sent} {payload}".encode())
            assert publisher.status == 201
            publisher.close()
            sent += 1
            gevent.joinall([gevent.spawn(c.events, sent, 10) for c in fast], timeout=15, raise_error=True)
            latencies.append(time.monotonic() - started)
        return latencies

    alone = publish_and_time(50)
    slow = [StreamClient(server.port, "/events/load") for _ in range(20)]
    for c in slow:
        c.wait_for(lambda c: b"id: " in c.raw)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read again
    rss_before = _worker_rss(server)
    # 200 x 64 kB: far more than the kernel's socket buffers plus max_pending (1 MiB).
    with_slow = publish_and_time(200)
    info = json.loads(StreamClient(server.port, "/").read_body())
    assert info["subscribers"] == 10, "the non-reading clients were not disconnected"
    wait_until(lambda: "not reading" in "".join(server.log), 5, message="the cut logged")
    assert all(len(c.parser.events) == 250 for c in fast)

    def p99(values: list[float]) -> float:
        return statistics.quantiles(values, n=100)[98]

    print(
        f"fast clients, publish-to-receive of 64 kB events: alone p50 {statistics.median(alone) * 1000:.1f} ms"
        f" p99 {p99(alone) * 1000:.1f} ms; with 20 stalled clients p50 {statistics.median(with_slow) * 1000:.1f} ms"
        f" p99 {p99(with_slow) * 1000:.1f} ms",
        file=sys.stderr,
    )
    assert statistics.median(with_slow) < 2 * statistics.median(alone) + 0.05
    growth_kib = _worker_rss(server) - rss_before
    assert growth_kib < 40 * 1024, f"worker grew {growth_kib} KiB with 20 stalled clients"


def _worker_rss(server: ServerProcess) -> int:
    pid = json.loads(StreamClient(server.port, "/").read_body())["pid"]
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_faulty_handlers_end_only_their_own_stream(gunicorn: Gunicorn) -> None:
    server = gunicorn(STREAMS, env={"TEST_KEEPALIVE": "0.3"})
    healthy = StreamClient(server.port, "/clock")
    healthy.events(1)
    blocked = StreamClient(server.port, "/idle")  # a handler that never returns
    raising = StreamClient(server.port, "/raise")
    raising.read_to_end(timeout=5)
    assert [e.data for e in raising.parser.events] == ["about to fail"]
    invalid = StreamClient(server.port, "/invalid")
    invalid.read_to_end(timeout=5)
    assert invalid.parser.events == []
    for line in ["RuntimeError: handler failure on purpose", "InvalidEvent", "event must not contain CR or LF"]:
        wait_until(lambda line=line: line in "".join(server.log), 5, message=f"{line!r} logged")
    blocked.wait_for(lambda c: c.parser.comments.count("") >= 2, timeout=5)  # still served: keepalives
    n = len(healthy.parser.events)
    healthy.events(n + 5, timeout=5)


def test_a_worker_killed_under_load_loses_nothing_still_in_history(redis_url: str) -> None:
    command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--redis", redis_url]
    server = ServerProcess(
        [*command, "--keepalive", "0.5"],
        ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
        stop_signal=signal.SIGINT,
    )
    broker = RedisBroker(redis_url)
    try:
        total = 300
        published: list[str] = []
        killed: list[int] = []

        def publisher() -> None:
            for i in range(total):
                published.append(broker.publish("killed", str(i)))
                if i == total // 2:
                    pid = stats(server.port)["pid"]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                gevent.sleep(0.005)

        def client() -> tuple[list[str], int]:
            seen: list[str] = []
            last: str | None = None
            connections = 0
            deadline = time.monotonic() + 60
            while not (len(published) == total and seen[-1:] == published[-1:]):
                assert time.monotonic() < deadline, "never caught up"
                headers = {} if last is None else {"Last-Event-ID": last}
                stream = None
                try:
                    stream = StreamClient(server.port, "/events/killed", headers=headers, timeout=10)
                    connections += 1
                    stream.wait_for(lambda c: len(published) == total and c.parser.last_event_id == published[-1])
                except (OSError, AssertionError):
                    gevent.sleep(0.1 + random.random() * 0.2)  # the worker is being replaced
                finally:
                    if stream is not None:
                        events = stream.parser.events
                        seen.extend(e.last_event_id for e in events if e.type == "message")
                        assert all(e.type != "stream-reset" for e in events)
                        last = stream.parser.last_event_id or last
                        stream.close()
            return seen, connections

        clients = [gevent.spawn(client) for _ in range(5)]
        wait_until(lambda: stats(server.port)["connections"]["total"] >= 5, 10, 0.05, "the clients subscribed")
        producer = gevent.spawn(publisher)
        gevent.joinall([producer, *clients], timeout=90, raise_error=True)
        assert killed
        for greenlet in clients:
            seen, connections = greenlet.value
            assert seen == published, "a client missed or repeated events across the worker's death"
            assert connections >= 2  # it did reconnect
    finally:
        broker.close()
        server.stop()
