"""One picture across gunicorn workers: what each worker shares, and the sum.

Every worker of a server answers ``/stats`` and ``/metrics`` for all of
them when they share a directory, the one prometheus-client's multiprocess
mode uses: ``PROMETHEUS_MULTIPROC_DIR`` (``wsgi-eventsource serve --workers
N`` makes one by itself; with your own gunicorn see
:mod:`wsgi_eventsource.gunicorn_hooks`). Each worker writes, once a second
(:data:`SYNC_INTERVAL`, from a greenlet: nothing on the path of an event),

- its *report*, ``wsgi-eventsource-<pid>.json``: its numbers for ``/stats``
  and its :data:`SHARED_CHANNELS` busiest channels (per-channel numbers and
  the subscribers-per-channel histogram are computed from their sum), and
- prometheus-client's own files (see :mod:`wsgi_eventsource.metrics`).

A worker that answers merges the reports of the others with its own numbers
of this moment (:func:`merge`); the others' are up to a second old. A report
older than :data:`STALE_AFTER` is of a worker that is gone without gunicorn's
``child_exit`` hook having removed it (:func:`worker_exited`), and is left
out. ``/stats`` sums the workers running now (a worker replaced takes its
counts with it); ``/metrics`` counters keep them, as Prometheus counters must.

Without the directory (one process), nothing is written and each process
answers for itself, as before.
"""

from __future__ import annotations

import contextlib
import glob
import heapq
import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .histogram import HistogramSnapshot

__all__ = [
    "MULTIPROC_ENV",
    "SHARED_CHANNELS",
    "STALE_AFTER",
    "SYNC_INTERVAL",
    "merge",
    "read_reports",
    "shared_directory",
    "top_channels",
    "worker_exited",
    "write_report",
]

#: The environment variable naming the directory the workers share
#: (prometheus-client's, so that one setting serves both).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two reports of a worker.
SYNC_INTERVAL = 1.0
#: A report this many seconds old is of a worker that is gone (or stuck).
STALE_AFTER = 10.0
#: Channels one worker shares at most (its busiest). Per-channel numbers, the
#: channel count and the subscribers-per-channel histogram are exact while no
#: worker has more channels than this; beyond, they are counted over the
#: channels shared (``connections.exact`` in ``/stats`` says which).
SHARED_CHANNELS = 10_000

_PREFIX = "wsgi-eventsource-"


def shared_directory() -> str | None:
    """The directory the workers share, or None (one process answers for itself)."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def _report_path(directory: str, pid: int) -> str:
    return os.path.join(directory, f"{_PREFIX}{pid}.json")


def write_report(directory: str, report: Mapping[str, Any]) -> None:
    """Write this worker's *report* (it has a ``pid``) so that readers never
    see half of it (a new file renamed over the old one)."""
    path = _report_path(directory, int(report["pid"]))
    partial = f"{path}.tmp"  # this process's alone
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(report, file, separators=(",", ":"))
    os.replace(partial, path)


def read_reports(directory: str, *, exclude_pid: int | None = None) -> list[dict[str, Any]]:
    """The reports of every worker but *exclude_pid*, leaving out stale ones
    (older than :data:`STALE_AFTER`) and any being replaced right now."""
    now = time.time()
    reports = []
    for path in glob.glob(os.path.join(directory, f"{_PREFIX}*.json")):
        try:
            with open(path, encoding="utf-8") as file:
                report = json.load(file)
        except (OSError, ValueError):
            continue  # removed meanwhile (the worker exited), or not ours
        if not isinstance(report, dict) or report.get("pid") == exclude_pid:
            continue
        if now - float(report.get("written", 0)) > STALE_AFTER:
            continue
        reports.append(report)
    return reports


def worker_exited(pid: int, directory: str | None = None) -> None:
    """Forget worker *pid*: its report, and its live gauges in prometheus-client's
    files (``mark_process_dead``). For gunicorn's ``child_exit`` hook.

    .. versionadded:: 0.1
    """
    directory = directory or shared_directory()
    if directory is None:
        return
    for path in (_report_path(directory, pid), f"{_report_path(directory, pid)}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def top_channels(counts: Mapping[str, int], n: int) -> list[tuple[str, int]]:
    """The *n* channels with the most subscribers, most first, then by name
    (so that the list is stable)."""
    return heapq.nsmallest(n, counts.items(), key=lambda item: (-item[1], item[0]))


def _add(into: dict[str, int], numbers: Mapping[str, int]) -> None:
    for key, value in numbers.items():
        into[key] = into.get(key, 0) + int(value)


def _quantile(snapshot: HistogramSnapshot, q: float) -> float | str | None:
    # JSON has no infinity: past the last bound is "+Inf", as in Prometheus.
    value = snapshot.quantile(q)
    return "+Inf" if value == float("inf") else value


def merge(reports: Iterable[Mapping[str, Any]], *, top: int, pid: int) -> tuple[dict[str, Any], dict[str, int]]:
    """``/stats`` for every worker from their reports (the answering worker's
    own among them, pid *pid*), and the subscribers per channel summed over
    the workers (the channels they share).

    The totals have today's keys; besides, ``workers``, ``worker_pids`` and
    ``per_worker`` (pid, connections, uptime, age of its report),
    ``reader_lag_seconds`` (the worst worker's, None without a reader),
    ``redis_errors`` (by kind) and ``delivery_latency_seconds`` (``count``,
    ``sum``, and ``p50``/``p99``: the upper bound of the bucket that holds
    it). A report is what :meth:`Hub.report <wsgi_eventsource.hub.Hub.report>` returns.

    :param top: channels ``connections.per_channel`` lists (the busiest
        over all workers, summed).
    """
    reports = sorted(reports, key=lambda r: int(r["pid"]))
    counts: dict[str, int] = {}
    refused: dict[str, int] = {}
    errors: dict[str, int] = {}
    exact = True
    latency: HistogramSnapshot | None = None
    for report in reports:
        _add(counts, report["channel_counts"])
        _add(refused, report["refused"])
        _add(errors, report["redis_errors"])
        exact = exact and len(report["channel_counts"]) == report["channels"]
        raw = report["latency"]
        snapshot = HistogramSnapshot(tuple(raw["bounds"]), tuple(raw["counts"]), float(raw["sum"]))
        if latency is None:
            latency = snapshot
        elif snapshot.bounds == latency.bounds:  # the same version of this library
            counts_sum = tuple(a + b for a, b in zip(latency.counts, snapshot.counts, strict=True))
            latency = HistogramSnapshot(latency.bounds, counts_sum, latency.sum + snapshot.sum)
    lags = [r["reader_lag_seconds"] for r in reports if r["reader_lag_seconds"] is not None]
    now = time.time()
    stats = {
        "pid": pid,
        "workers": len(reports),
        "worker_pids": [int(r["pid"]) for r in reports],
        "uptime_seconds": round(now - min((r["started"] for r in reports), default=now), 3),
        "connections": {
            "total": sum(int(r["connections"]) for r in reports),
            "channels": len(counts) if exact else max(len(counts), *(int(r["channels"]) for r in reports)),
            "per_channel": dict(top_channels(counts, top)),
            "exact": exact,
        },
        "events": {
            "published": sum(int(r["published"]) for r in reports),
            "delivered": sum(int(r["delivered"]) for r in reports),
        },
        "slow_clients_dropped": sum(int(r["slow_clients_dropped"]) for r in reports),
        "refused": refused,
        "redis_errors": errors,
        "reader_lag_seconds": round(max(lags), 3) if lags else None,
        "delivery_latency_seconds": {
            "count": 0 if latency is None else latency.count,
            "sum": 0.0 if latency is None else round(latency.sum, 6),
            "p50": None if latency is None else _quantile(latency, 0.5),
            "p99": None if latency is None else _quantile(latency, 0.99),
        },
        "per_worker": [
            {
                "pid": int(r["pid"]),
                "connections": int(r["connections"]),
                "uptime_seconds": round(now - r["started"], 3),
                "report_age_seconds": round(max(0.0, now - r["written"]), 3),
            }
            for r in reports
        ],
    }
    return stats, counts
