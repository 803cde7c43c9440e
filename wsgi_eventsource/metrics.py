"""The hub's ``/metrics``: a Prometheus text exposition (prometheus-client).

One process (no ``PROMETHEUS_MULTIPROC_DIR``): the numbers are read when
asked, as :meth:`Hub.stats <wsgi_eventsource.hub.Hub.stats>` has them.

Several gunicorn workers sharing the directory (see
:mod:`wsgi_eventsource.workers`): prometheus-client's multiprocess mode.
Each worker copies its numbers into prometheus-client's per-process files
once a second (:meth:`Reporter.sync`, from a greenlet; never on the path of
an event, whose counters stay plain integers), and ``/metrics`` sums every
worker's files with ``MultiProcessCollector``: counters and the latency
histogram over every worker that ever ran, gauges over the live ones
(``livesum``: connections, workers; ``livemax``: reader lag, uptime), a
worker gone being dropped by ``mark_process_dead`` in gunicorn's
``child_exit``. Per-channel series (the :attr:`Hub.top_channels` busiest
across workers) and the subscribers-per-channel histogram come from the
workers' reports instead, so that no channel name ever lands in
prometheus-client's files (their series would never go away).

In multiprocess mode each process reports one :class:`Hub` (the last one
started).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .histogram import HistogramSnapshot
from .workers import SYNC_INTERVAL, merge, read_reports, write_report

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["CONTENT_TYPE", "Reporter", "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "open": "Open event streams",
    "published": "Events published",
    "delivered": "Events handed to local subscribers (one per event per subscriber)",
    "dropped": "Streams cut for not reading",
    "refused": "Stream requests refused softly (a 200 stream with a retry hint, then the end), per reason",
    "uptime": "Seconds since start",
    "latency": "Seconds from an event's publish to its hand-off to a process's subscribers (once per event)",
    "lag": "Seconds the Redis reader is behind (since its last read returned, less a read's wait for events)",
    "errors": "Redis errors met (reader, publish, subscribe), by kind",
    "workers": "Worker processes reporting",
}


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(float(bound))  # le="1.0", as client libraries write it


def subscriber_histogram(family: Any, counts: Mapping[str, int], bounds: Sequence[float]) -> Any:
    """Channels by how many subscribers they have, over every channel in *counts*."""
    values = sorted(counts.values())
    buckets, index = [], 0
    for bound in bounds:
        while index < len(values) and values[index] <= bound:
            index += 1
        buckets.append((_bucket_label(bound), index))
    buckets.append(("+Inf", len(values)))
    return family(
        "eventsource_channel_subscribers",
        "Channels with subscribers, by how many subscribers they have",
        buckets=buckets,
        sum_value=sum(values),
    )


def _channel_families(hub: Hub, stats: Mapping[str, Any], counts: Mapping[str, int], core: Any) -> Iterator[Any]:
    connections = core.GaugeMetricFamily(
        "eventsource_connections",
        f"Open event streams, for the {hub.top_channels} channels with the most",
        labels=["channel"],
    )
    for channel, count in stats["connections"]["per_channel"].items():
        connections.add_metric([channel], count)
    yield connections
    yield subscriber_histogram(core.HistogramMetricFamily, counts, hub.subscriber_buckets)


def _process_families(hub: Hub, stats: Mapping[str, Any], latency: HistogramSnapshot, core: Any) -> Iterator[Any]:
    """Everything but the per-channel families, from one process's numbers."""
    # Not "_total": that suffix is for counters.
    yield core.GaugeMetricFamily("eventsource_connections_open", _HELP["open"], stats["connections"]["total"])
    yield core.CounterMetricFamily("eventsource_events_published", _HELP["published"], stats["events"]["published"])
    yield core.CounterMetricFamily("eventsource_events_delivered", _HELP["delivered"], stats["events"]["delivered"])
    yield core.CounterMetricFamily("eventsource_slow_clients_dropped", _HELP["dropped"], stats["slow_clients_dropped"])
    refused = core.CounterMetricFamily("eventsource_streams_refused", _HELP["refused"], labels=["reason"])
    for reason, count in stats["refused"].items():
        refused.add_metric([reason], count)
    yield refused
    yield core.GaugeMetricFamily("eventsource_uptime_seconds", _HELP["uptime"], stats["uptime_seconds"])
    yield core.HistogramMetricFamily(
        "eventsource_delivery_latency_seconds",
        _HELP["latency"],
        buckets=[(_bucket_label(bound), count) for bound, count in latency.cumulative()],
        sum_value=latency.sum,
    )
    if stats["reader_lag_seconds"] is not None:
        yield core.GaugeMetricFamily("eventsource_reader_lag_seconds", _HELP["lag"], stats["reader_lag_seconds"])
    if stats["redis_errors"]:
        errors = core.CounterMetricFamily("eventsource_redis_errors", _HELP["errors"], labels=["kind"])
        for kind, count in stats["redis_errors"].items():
            errors.add_metric([kind], count)
        yield errors


class _Collector:
    def __init__(self, families: Iterable[Any]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Any]:
        return self._families


def exposition(hub: Hub) -> bytes:
    """The text of ``/metrics`` for *hub* (every worker's, with a shared
    directory). :raises ImportError: without prometheus-client."""
    from prometheus_client import CollectorRegistry, core, generate_latest

    registry = CollectorRegistry()
    reporter = hub.reporter
    if reporter is None:
        counts = hub.broker.channel_counts()
        stats = hub.stats(counts)
        families = [
            *_channel_families(hub, stats, counts, core),
            *_process_families(hub, stats, hub.broker.stats.latency.snapshot(), core),
        ]
    else:
        from prometheus_client.multiprocess import MultiProcessCollector

        reporter.sync()  # this worker's numbers of this moment
        MultiProcessCollector(registry, reporter.directory)  # type: ignore[no-untyped-call]
        stats, counts = reporter.merged()
        families = list(_channel_families(hub, stats, counts, core))
    registry.register(_Collector(families))
    return generate_latest(registry)


class _Files:
    """prometheus-client's metrics of this process, in multiprocess mode (its
    files). Made once per process: two sets would write the same keys."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        from .histogram import LATENCY_BUCKETS

        self.pid = os.getpid()
        self.published = Counter("eventsource_events_published", _HELP["published"], registry=None)
        self.delivered = Counter("eventsource_events_delivered", _HELP["delivered"], registry=None)
        self.dropped = Counter("eventsource_slow_clients_dropped", _HELP["dropped"], registry=None)
        self.refused = Counter("eventsource_streams_refused", _HELP["refused"], ["reason"], registry=None)
        self.errors = Counter("eventsource_redis_errors", _HELP["errors"], ["kind"], registry=None)
        self.open = Gauge("eventsource_connections_open", _HELP["open"], registry=None, multiprocess_mode="livesum")
        self.workers = Gauge("eventsource_workers", _HELP["workers"], registry=None, multiprocess_mode="livesum")
        self.uptime = Gauge("eventsource_uptime_seconds", _HELP["uptime"], registry=None, multiprocess_mode="livemax")
        self.lag = Gauge("eventsource_reader_lag_seconds", _HELP["lag"], registry=None, multiprocess_mode="livemax")
        self.latency = Histogram(
            "eventsource_delivery_latency_seconds", _HELP["latency"], registry=None, buckets=LATENCY_BUCKETS
        )
        self.workers.set(1)

    def add_latency(self, observed: HistogramSnapshot) -> None:
        """Add what was observed since the last sync: bucket by bucket (one
        write per bucket, not one per event as ``observe`` would make)."""
        buckets = self.latency._buckets  # one per bound, then +Inf: as HistogramSnapshot.counts
        for value, count in zip(buckets, observed.counts, strict=True):
            if count:
                value.inc(count)
        if observed.sum:
            self.latency._sum.inc(observed.sum)


_files: _Files | None = None


def _process_files() -> _Files | None:
    """This process's prometheus-client metrics, or None without the package."""
    global _files
    if _files is None or _files.pid != os.getpid():
        try:
            _files = _Files()
        except ImportError:
            return None
    return _files


class Reporter:
    """A hub's part of the picture across workers: its report and
    prometheus-client's files, written by :meth:`sync` every
    :data:`~wsgi_eventsource.workers.SYNC_INTERVAL` seconds from a greenlet
    (:meth:`start`), and before each ``/stats`` or ``/metrics`` answer.

    :param hub: the hub reported (held weakly).
    :param directory: the directory the workers share.

    .. versionadded:: 0.1
    """

    def __init__(self, hub: Hub, directory: str) -> None:
        self._hub = weakref.ref(hub)
        self.directory = directory
        self.pid = os.getpid()
        self._running: Any = None
        # What the files were last given, so that counters get the difference.
        self._counted: dict[str, int] = {}
        self._latency: HistogramSnapshot | None = None

    def start(self) -> None:
        """Sync now and then every second, in this process (again after a fork)."""
        if self._running is not None and self.pid == os.getpid():
            return
        import gevent

        self.pid, self._counted, self._latency = os.getpid(), {}, None
        self.sync()
        self._running = gevent.spawn(self._run)

    def _run(self) -> None:
        import gevent

        while self._hub() is not None:
            gevent.sleep(SYNC_INTERVAL)
            try:
                self.sync()
            except Exception:  # a full disk, say: the next second tries again
                import logging

                logging.getLogger("wsgi_eventsource").exception("could not write this worker's statistics")

    def merged(self) -> tuple[dict[str, Any], dict[str, int]]:
        """``/stats`` over every worker, and the summed subscribers per channel."""
        hub = self._hub()
        assert hub is not None
        own = hub.report()
        others = read_reports(self.directory, exclude_pid=own["pid"])
        return merge([own, *others], top=hub.top_channels, pid=own["pid"])

    def sync(self) -> None:
        """Write this worker's report and its prometheus-client numbers."""
        hub = self._hub()
        if hub is None:
            return
        report = hub.report(shared=True)
        write_report(self.directory, report)
        files = _process_files()
        if files is None:
            return
        files.open.set(report["connections"])
        files.uptime.set(time.time() - report["started"])
        if report["reader_lag_seconds"] is not None:
            files.lag.set(report["reader_lag_seconds"])
        totals = {
            "published": report["published"],
            "delivered": report["delivered"],
            "dropped": report["slow_clients_dropped"],
            **{f"refused:{k}": v for k, v in report["refused"].items()},
            **{f"errors:{k}": v for k, v in report["redis_errors"].items()},
        }
        for name, total in totals.items():
            increase = total - self._counted.get(name, 0)
            self._counted[name] = total
            kind, _, label = name.partition(":")
            counter = getattr(files, kind)
            (counter.labels(label) if label else counter).inc(max(0, increase))
        latency = hub.broker.stats.latency.snapshot()
        files.add_latency(latency if self._latency is None else latency - self._latency)
        self._latency = latency
