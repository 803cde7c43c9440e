"""One picture across workers (issue 11), the parts one process can test:
merging the workers' reports, the files the workers share, and the new
numbers (publish-to-deliver latency, reader lag, Redis errors) on one hub
with real brokers and a real redis-server. The multi-worker scenarios with
real gunicorn are in test_workers_gunicorn.py."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServer
from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import Broker, BrokerUnavailable, RedisBroker
from wsgi_eventsource.histogram import Histogram
from wsgi_eventsource.hub import Hub
from wsgi_eventsource.workers import STALE_AFTER, merge, read_reports, worker_exited, write_report

Start = Callable[..., Any]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, parsed by prometheus-client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def report(pid: int, **numbers: Any) -> dict[str, Any]:
    """A worker's report as Hub.report writes it, with these numbers."""
    latency = Histogram((0.01, 0.1))
    for value in numbers.pop("latencies", ()):
        latency.observe(value)
    snapshot = latency.snapshot()
    channel_counts = numbers.pop("channel_counts", {})
    base = {
        "pid": pid,
        "written": time.time(),
        "started": time.time() - 5,
        "connections": sum(channel_counts.values()),
        "channels": len(channel_counts),
        "channel_counts": channel_counts,
        "published": 0,
        "delivered": 0,
        "slow_clients_dropped": 0,
        "refused": {"over_max_connections": 0},
        "redis_errors": {"connection": 0},
        "reader_lag_seconds": 0.0,
        "latency": {"bounds": list(snapshot.bounds), "counts": list(snapshot.counts), "sum": snapshot.sum},
    }
    return {**base, **numbers}


# -- merging the reports -----------------------------------------------------------------


def test_merge_sums_the_workers_and_lists_them() -> None:
    stats, counts = merge(
        [
            report(12, channel_counts={"a": 3, "b": 1}, published=5, delivered=20, refused={"over_max_connections": 2}),
            report(11, channel_counts={"a": 1}, published=1, delivered=4, slow_clients_dropped=1, latencies=[0.05]),
            report(13, redis_errors={"connection": 2}, reader_lag_seconds=3.5, latencies=[0.001, 7.0]),
        ],
        top=10,
        pid=12,
    )
    assert stats["pid"] == 12  # the worker that answers
    assert stats["workers"] == 3
    assert stats["worker_pids"] == [11, 12, 13]
    assert [w["pid"] for w in stats["per_worker"]] == [11, 12, 13]
    assert [w["connections"] for w in stats["per_worker"]] == [1, 4, 0]
    assert stats["connections"] == {"total": 5, "channels": 2, "per_channel": {"a": 4, "b": 1}, "exact": True}
    assert counts == {"a": 4, "b": 1}
    assert stats["events"] == {"published": 6, "delivered": 24}
    assert stats["slow_clients_dropped"] == 1
    assert stats["refused"] == {"over_max_connections": 2}
    assert stats["redis_errors"] == {"connection": 2}
    assert stats["reader_lag_seconds"] == 3.5  # the worst worker's
    assert stats["uptime_seconds"] >= 5
    latency = stats["delivery_latency_seconds"]
    assert latency["count"] == 3
    assert latency["sum"] == pytest.approx(7.051)
    assert latency["p50"] == 0.1
    assert latency["p99"] == "+Inf"  # JSON has no infinity
    json.dumps(stats, allow_nan=False)


def test_the_top_channels_are_the_busiest_across_workers_not_in_one() -> None:
    """A channel spread over every worker can be the busiest without being
    the busiest of any one worker."""
    spread = [report(pid, channel_counts={"spread": 3, f"local{pid}": 4}) for pid in (1, 2, 3)]
    stats, _ = merge(spread, top=1, pid=1)
    assert stats["connections"]["per_channel"] == {"spread": 9}
    assert stats["connections"]["channels"] == 4


def test_a_worker_sharing_only_its_busiest_channels_makes_the_counts_inexact() -> None:
    truncated = report(1, channel_counts={"a": 5}, channels=3000)
    stats, _ = merge([truncated, report(2, channel_counts={"b": 1})], top=10, pid=1)
    assert stats["connections"]["exact"] is False
    assert stats["connections"]["channels"] == 3000  # at least the worker's own count


def test_a_worker_shares_its_busiest_channels_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """So that a report stays small (and quick to write) with 50,000 channels."""
    from wsgi_eventsource import MemoryBroker
    from wsgi_eventsource import hub as hub_module

    monkeypatch.setattr(hub_module, "SHARED_CHANNELS", 2)
    hub = Hub(MemoryBroker())
    counts = {"quiet": 1, "busy": 5, "middle": 3}
    shared = hub.report(counts, shared=True)
    assert shared["channel_counts"] == {"busy": 5, "middle": 3}
    assert shared["channels"] == 3
    assert hub.report(counts)["channel_counts"] == counts  # its own answers use them all
    stats, _ = merge([shared], top=10, pid=shared["pid"])
    assert stats["connections"]["exact"] is False


def test_without_a_reader_the_lag_is_none() -> None:
    stats, _ = merge([report(1, reader_lag_seconds=None)], top=10, pid=1)
    assert stats["reader_lag_seconds"] is None
    assert stats["delivery_latency_seconds"] == {"count": 0, "sum": 0.0, "p50": None, "p99": None}


# -- the shared directory ---------------------------------------------------------------------


def test_reports_are_read_back_but_not_the_own_nor_stale_nor_broken_ones(tmp_path: Any) -> None:
    directory = str(tmp_path)
    write_report(directory, report(1, published=7))
    write_report(directory, report(2))
    write_report(directory, report(3, written=time.time() - STALE_AFTER - 1))  # gone without child_exit
    (tmp_path / "wsgi-eventsource-4.json").write_text("{half a rep")  # never seen: but not a crash
    (tmp_path / "counter_1.db").write_bytes(b"\0" * 8)  # prometheus-client's: not a report
    reports = read_reports(directory, exclude_pid=2)
    assert [(r["pid"], r["published"]) for r in reports] == [(1, 7)]
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_a_worker_that_exited_is_forgotten_its_counters_kept(tmp_path: Any) -> None:
    """child_exit: its report and live gauges go (mark_process_dead), its
    counters stay (a Prometheus counter never goes down)."""
    directory = str(tmp_path)
    write_report(directory, report(41))
    write_report(directory, report(42))
    for name in ("gauge_livesum_41.db", "gauge_livemax_41.db", "counter_41.db", "histogram_41.db"):
        (tmp_path / name).write_bytes(b"")
    worker_exited(41, directory)
    assert sorted(os.listdir(directory)) == ["counter_41.db", "histogram_41.db", "wsgi-eventsource-42.json"]
    worker_exited(41, directory)  # again (gunicorn may reap twice): nothing to do, no error


# -- one hub, one process --------------------------------------------------------------------------


def get(port: int, path: str) -> bytes:
    client = StreamClient(port, path)
    try:
        assert client.status == 200, client.read_body()
        return client.read_body()
    finally:
        client.close()


def test_one_process_keeps_todays_stats_and_adds_the_new_numbers(serve: Start) -> None:
    from wsgi_eventsource import MemoryBroker

    hub = Hub(MemoryBroker())
    assert hub.reporter is None  # no shared directory: as before
    port = serve(hub).server_port
    stream = StreamClient(port, "/events/lobby")
    stream.wait_for(lambda c: b"\n\n" in c.raw)
    stats = json.loads(get(port, "/stats"))
    assert stats["pid"] == os.getpid()
    assert stats["connections"] == {"total": 1, "channels": 1, "per_channel": {"lobby": 1}, "exact": True}
    assert stats["events"] == {"published": 0, "delivered": 0}
    assert stats["slow_clients_dropped"] == 0
    assert set(stats["refused"]) == {"over_max_connections", "broker_unavailable", "shutting_down"}
    assert stats["uptime_seconds"] > 0
    assert stats["workers"] == 1
    assert stats["worker_pids"] == [os.getpid()]
    assert stats["reader_lag_seconds"] is None  # MemoryBroker has no reader
    assert stats["redis_errors"] == {}
    parsed = samples(get(port, "/metrics").decode())
    assert sample(parsed, "eventsource_connections", channel="lobby") == 1
    assert sample(parsed, "eventsource_connections_open") == 1
    assert sample(parsed, "eventsource_delivery_latency_seconds_count") == 0
    assert sample(parsed, "eventsource_reader_lag_seconds") is None
    assert not any(name.startswith("eventsource_redis_errors") for name, _ in parsed)


def test_latency_is_observed_once_per_event_not_per_subscriber(
    serve: Start, make_broker: Callable[..., Broker]
) -> None:
    hub = Hub(make_broker())
    port = serve(hub).server_port
    streams = [StreamClient(port, "/events/timed") for _ in range(3)]
    for stream in streams:
        stream.wait_for(lambda c: b"\n\n" in c.raw)
    wait_until(lambda: hub.broker.subscriber_count("timed") == 3)
    ids = [hub.broker.publish("timed", f"e{i}") for i in range(2)]
    for stream in streams:
        assert [e.last_event_id for e in stream.events(2)] == ids
    stats = json.loads(get(port, "/stats"))
    latency = stats["delivery_latency_seconds"]
    assert latency["count"] == 2
    assert 0 <= latency["sum"] < 2  # a real delay, on this machine well under a second each
    parsed = samples(get(port, "/metrics").decode())
    assert sample(parsed, "eventsource_delivery_latency_seconds_count") == 2
    assert sample(parsed, "eventsource_delivery_latency_seconds_bucket", le="+Inf") == 2
    assert sample(parsed, "eventsource_delivery_latency_seconds_bucket", le="1.0") == 2
    assert sample(parsed, "eventsource_events_delivered_total") == 6
    hub.broker.publish("nobody-listens", "x")
    assert hub.broker.stats.latency.snapshot().count == 2  # no hand-off: nothing timed


# -- the Redis reader: lag and errors, with a redis-server stopped and killed ---------------------


@pytest.fixture
def own_redis() -> Any:
    """A redis-server of this test alone (it is stopped and killed)."""
    server = RedisServer()
    yield server
    if server.process is not None and server.process.proc.poll() is None:
        os.kill(server.process.proc.pid, signal.SIGCONT)
    server.stop()


def stream_on(hub: Hub, port: int, channel: str) -> StreamClient:
    stream = StreamClient(port, f"/events/{channel}", timeout=30)
    stream.wait_for(lambda c: b"\n\n" in c.raw)
    return stream


def test_a_stalled_redis_shows_as_reader_lag_and_timeout_errors(serve: Start, own_redis: RedisServer) -> None:
    broker = RedisBroker(own_redis.url, block=0.2)
    try:
        hub = Hub(broker)
        port = serve(hub).server_port
        stream = stream_on(hub, port, "stalled")
        wait_until(lambda: broker._lanes[0].clock.read_returned > 0, 10)
        assert broker.reader_lag() is not None
        assert (broker.reader_lag() or 0) < 0.5  # blocked in XREAD, up to date
        assert own_redis.process is not None
        os.kill(own_redis.process.proc.pid, signal.SIGSTOP)  # Redis answers nothing now
        try:
            wait_until(lambda: (broker.reader_lag() or 0) > 1.0, 5, 0.05, "the lag grows while the read is stuck")
            # The reader's socket timeout is block + 5 s.
            wait_until(lambda: broker.stats.errors["timeout"] >= 1, 15, 0.1, "a timeout is counted")
        finally:
            os.kill(own_redis.process.proc.pid, signal.SIGCONT)
        stats = json.loads(get(port, "/stats"))
        assert stats["redis_errors"]["timeout"] >= 1
        parsed = samples(get(port, "/metrics").decode())
        assert (sample(parsed, "eventsource_redis_errors_total", kind="timeout") or 0) >= 1
        wait_until(lambda: (broker.reader_lag() or 0) < 0.5, 15, 0.05, "caught up again")
        event_id = broker.publish("stalled", "after the stall")
        assert stream.events(1)[0].last_event_id == event_id
    finally:
        broker.close()


def test_a_redis_gone_shows_as_connection_errors_and_a_growing_lag(serve: Start, own_redis: RedisServer) -> None:
    broker = RedisBroker(own_redis.url, block=0.2)
    try:
        hub = Hub(broker)
        port = serve(hub).server_port
        stream_on(hub, port, "gone")
        wait_until(lambda: broker._lanes[0].clock.read_returned > 0, 10)
        own_redis.kill()
        wait_until(lambda: broker.stats.errors["connection"] >= 1, 10, 0.05, "the reader counts it")
        before = broker.stats.errors["connection"]
        with pytest.raises(BrokerUnavailable):
            broker.publish("gone", "x")
        assert broker.stats.errors["connection"] > before  # and so does a publish
        wait_until(lambda: (broker.reader_lag() or 0) > 1.0, 10, 0.05, "the lag grows while Redis is gone")
        parsed = samples(get(port, "/metrics").decode())
        assert (sample(parsed, "eventsource_reader_lag_seconds") or 0) > 1.0
        assert (sample(parsed, "eventsource_redis_errors_total", kind="connection") or 0) >= 2
        assert sample(parsed, "eventsource_redis_errors_total", kind="response") == 0
    finally:
        broker.close()


def test_an_error_reply_counts_as_a_response_error(redis_url: str) -> None:
    import redis

    broker = RedisBroker(redis_url)
    try:
        redis.Redis.from_url(redis_url).set(broker.prefix + "not-a-stream", "x")
        with pytest.raises(BrokerUnavailable, match="WRONGTYPE"):
            broker.publish("not-a-stream", "x")
        assert broker.stats.errors == {"connection": 0, "timeout": 0, "response": 1, "other": 0}
    finally:
        broker.close()
