"""One picture across workers (issue 11) with the real thing: ``serve
--workers 3 --redis`` (real gunicorn, real redis-server), streams spread
over the workers, and ``/stats`` and ``/metrics`` of any worker telling the
totals of all; a worker SIGKILLed and replaced no longer counts."""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from typing import Any

import gevent
import pytest

from tests.conftest import Serve, ServerProcess
from tests.helpers import StreamClient, wait_until
from tests.test_workers import sample, samples

pytestmark = pytest.mark.server

Gunicorn = Any


def get(port: int, path: str) -> bytes:
    client = StreamClient(port, path)
    try:
        assert client.status == 200, client.read_body()
        return client.read_body()
    finally:
        client.close()


def stats(port: int) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(get(port, "/stats"))
    return result


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(get(port, "/metrics").decode())


def publish(port: int, channel: str, data: str) -> str:
    client = StreamClient(
        port, f"/publish/{channel}", method="POST", body=data.encode(), headers={"Content-Type": "text/plain"}
    )
    try:
        assert client.status == 201
        event_id: str = json.loads(client.read_body())["id"]
        return event_id
    finally:
        client.close()


def current_stats(port: int, streams: int) -> dict[str, Any]:
    """The first ``/stats`` answer in which every worker's report was written
    after now and counts *streams* in all.

    The answering worker counts its own streams as they are, the others from
    reports up to a second old: a total that matches can still hide a stale
    report (the answering worker's own fresh count making up for it), which
    then misleads the next answer, from another worker.
    """
    since = time.time()
    deadline = time.monotonic() + 10
    while True:
        asked = time.time()
        numbers = stats(port)
        fresh = all(w["report_age_seconds"] < asked - since - 0.01 for w in numbers["per_worker"])
        if fresh and numbers["connections"]["total"] == streams:
            return numbers
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer with every worker's report after {streams} streams opened: {numbers}")
        gevent.sleep(0.1)


def open_streams_on_every_worker(port: int, workers: int, channel: str) -> list[StreamClient]:
    """Open streams (15 at a time, at once) until each worker holds some."""
    clients: list[StreamClient] = []
    while len(clients) < 300:
        batch = [gevent.spawn(StreamClient, port, f"/events/{channel}") for _ in range(15)]
        gevent.joinall(batch, timeout=20, raise_error=True)
        for greenlet in batch:
            client = greenlet.value
            client.wait_for(lambda c: b"\n\n" in c.raw)
            clients.append(client)
        if sum(1 for w in current_stats(port, len(clients))["per_worker"] if w["connections"]) == workers:
            return clients
    raise AssertionError(f"{len(clients)} streams did not reach all {workers} workers: {stats(port)['per_worker']}")


def cut_off(client: StreamClient) -> bool:
    """True if the stream was cut (the connection closed mid-response)."""
    if client.eof:
        return True
    try:
        with gevent.Timeout(0.01):
            client.read_some()
    except gevent.Timeout:
        return False
    except ConnectionError:
        return True  # EOF without the end of the chunked body: its worker died
    return client.eof


def answers_agree(port: int, check: Any, answers: int = 6) -> set[int]:
    """*check* holds for each of several answers in a row; the pids that gave them."""
    pids = set()
    for _ in range(answers):
        numbers = stats(port)
        check(numbers, metrics(port))
        pids.add(numbers["pid"])
    return pids


def test_stats_and_metrics_of_any_worker_tell_the_totals_of_all(
    hub_server: Serve, redis_url: str, tmp_path: Any
) -> None:
    server = hub_server("--workers", "3", "--redis", redis_url, env={"TMPDIR": str(tmp_path)})
    directories = glob.glob(str(tmp_path / "wsgi-eventsource-workers-*"))
    assert len(directories) == 1, "serve makes one private directory for its workers"
    wait_until(lambda: stats(server.port)["workers"] == 3, 20, 0.1, "every worker reports from its start")
    clients = open_streams_on_every_worker(server.port, 3, "lobby")
    n = len(clients)
    sent = [publish(server.port, "lobby", f"e{i}") for i in range(4)]
    for client in clients:
        assert [e.last_event_id for e in client.events(4)] == sent  # every delivery checked

    def totals(numbers: dict[str, Any], parsed: Any) -> None:
        assert numbers["workers"] == 3
        assert len(numbers["worker_pids"]) == 3
        assert numbers["connections"]["total"] == n
        assert numbers["connections"]["per_channel"] == {"lobby": n}
        assert numbers["events"] == {"published": 4, "delivered": 4 * n}
        # Once per event per worker: each of the 3 hands every event out once.
        assert numbers["delivery_latency_seconds"]["count"] == 12
        assert sample(parsed, "eventsource_workers") == 3
        assert sample(parsed, "eventsource_connections_open") == n
        assert sample(parsed, "eventsource_connections", channel="lobby") == n
        assert sample(parsed, "eventsource_channel_subscribers_count") == 1
        assert sample(parsed, "eventsource_channel_subscribers_sum") == n
        assert sample(parsed, "eventsource_events_published_total") == 4
        assert sample(parsed, "eventsource_events_delivered_total") == 4 * n
        assert sample(parsed, "eventsource_delivery_latency_seconds_count") == 12
        assert sample(parsed, "eventsource_delivery_latency_seconds_bucket", le="+Inf") == 12
        assert (sample(parsed, "eventsource_delivery_latency_seconds_bucket", le="1.0") or 0) == 12
        assert sample(parsed, "eventsource_reader_lag_seconds") is not None
        assert sample(parsed, "eventsource_redis_errors_total", kind="connection") == 0
        assert sample(parsed, "eventsource_streams_refused_total", reason="over_max_connections") == 0

    def settled() -> bool:
        try:
            answers_agree(server.port, totals, answers=3)
        except AssertionError:
            return False
        return True

    wait_until(settled, 10, 0.2, "the other workers' numbers arrive within a second or so")
    pids: set[int] = set()
    for _ in range(10):
        pids |= answers_agree(server.port, totals)
        if len(pids) > 1:
            break
    assert len(pids) > 1, "answers came from more than one worker, each with the totals of all"
    for client in clients:
        client.close()
    server.stop()
    assert not os.path.exists(directories[0]), "the directory is removed at exit"


def test_a_worker_killed_and_replaced_no_longer_counts(hub_server: Serve, redis_url: str) -> None:
    server = hub_server("--workers", "3", "--redis", redis_url)
    wait_until(lambda: stats(server.port)["workers"] == 3, 20, 0.1)
    clients = open_streams_on_every_worker(server.port, 3, "room")
    publish(server.port, "room", "before")
    for client in clients:
        client.events(1)

    def synced() -> bool:
        parsed = metrics(server.port)
        return sample(parsed, "eventsource_connections_open") == len(clients) and sample(
            parsed, "eventsource_events_delivered_total"
        ) == len(clients)

    # A worker's counts reach the shared files within a second (SIGKILL loses that second).
    wait_until(synced, 10, 0.1)
    victim = max(stats(server.port)["per_worker"], key=lambda w: w["connections"])
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: sum(cut_off(c) for c in clients) == victim["connections"], 10, 0.1, "its streams are cut")
    survivors = [c for c in clients if not c.eof]

    def forgotten() -> bool:
        numbers, parsed = stats(server.port), metrics(server.port)
        return (
            victim["pid"] not in numbers["worker_pids"]
            and numbers["workers"] == 3  # gunicorn's replacement reports from its start
            and numbers["connections"]["total"] == len(survivors)
            and sample(parsed, "eventsource_connections_open") == len(survivors)
            and sample(parsed, "eventsource_workers") == 3
            and sample(parsed, "eventsource_connections", channel="room") == len(survivors)
        )

    # Well within STALE_AFTER (10 s): gunicorn's child_exit hook forgets it at once.
    wait_until(forgotten, 5, 0.2, "the killed worker's gauges and report are dropped")
    parsed = metrics(server.port)
    assert sample(parsed, "eventsource_events_published_total") == 1  # counters keep what it counted
    assert sample(parsed, "eventsource_events_delivered_total") == len(clients)


def test_a_users_own_gunicorn_with_the_hooks_module(gunicorn: Gunicorn, redis_url: str, tmp_path: Any) -> None:
    """The documented way: PROMETHEUS_MULTIPROC_DIR and -c python:wsgi_eventsource.gunicorn_hooks."""
    env = {"REDIS_URL": redis_url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server: ServerProcess = gunicorn(
        "tests.apps.hub:hub", "--workers", "2", "-c", "python:wsgi_eventsource.gunicorn_hooks", env=env
    )
    clients = open_streams_on_every_worker(server.port, 2, "mine")
    numbers = current_stats(server.port, len(clients))
    assert numbers["workers"] == 2
    victim = numbers["per_worker"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not (tmp_path / f"wsgi-eventsource-{victim}.json").exists(), 5, 0.1, "child_exit ran")
    left = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / f"*_{victim}.db")))
    assert left == [f"counter_{victim}.db", f"histogram_{victim}.db"], "live gauges gone, counters kept"
    # The survivor's numbers are up to a second old (it syncs once a second).
    expected = len(clients) - numbers["per_worker"][0]["connections"]
    wait_until(
        lambda: sample(metrics(server.port), "eventsource_connections_open") == expected,
        5,
        0.1,
        "the survivor's streams alone are counted",
    )
