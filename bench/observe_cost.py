"""What ``Histogram.observe`` costs, next to the publish it is part of.

    .venv/bin/python -m bench.observe_cost            # about 20 s
    .venv/bin/python -m bench.observe_cost --quick    # a few seconds

Since issue 11 every event handed out is timed once (not per subscriber):
``MemoryBroker._observe_latency`` and the Redis reader's ``_dispatch`` call
``stats.latency.observe()``. This measures, in this process and one OS thread:

* ``observe()`` alone, and its parts (the ``bisect`` on the bounds, a list
  increment bare, under ``with lock`` and between ``acquire()`` and
  ``release()``), in ns per call;
* ``MemoryBroker.publish`` of one 64-byte event to 1, 100 and 1,000 attached
  subscriptions, with the broker's histogram as it is and with a no-op one:
  the difference is what observing costs a publish, end to end.

The subscriptions are attached to a sink that only counts (no socket), so a
publish here is the broker's own work only: the share of ``observe()`` in a
real publish, whose writes go to sockets, is smaller still. Times are the
best of several repeats (the least disturbed by other processes); a publish with
and without observing alternate.
"""

from __future__ import annotations

import argparse
import json
import timeit
from bisect import bisect_left
from typing import Any

from wsgi_eventsource import MemoryBroker
from wsgi_eventsource.connection import os_lock
from wsgi_eventsource.histogram import LATENCY_BUCKETS, Histogram


class CountingSink:
    """A subscription's sink that keeps nothing: the broker's cost without a socket's."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events = 0

    def _enqueue_here(self, data: bytes) -> bool:
        self.events += 1
        return True

    def close(self) -> None:
        pass


class NoHistogram:
    """Stands in for the broker's histogram: ``observe`` does nothing."""

    def observe(self, value: float) -> None:
        pass


def best_ns(statement: Any, number: int, repeat: int) -> float:
    """Nanoseconds per call of *statement*, the best of *repeat* runs."""
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e9


def observe_parts(number: int, repeat: int) -> dict[str, float]:
    histogram = Histogram()
    bounds, lock, counts = LATENCY_BUCKETS, os_lock(), [0] * (len(LATENCY_BUCKETS) + 1)

    def increment() -> None:
        counts[3] += 1

    def increment_with_lock() -> None:
        with lock:
            counts[3] += 1

    def increment_acquire_release() -> None:
        lock.acquire()
        try:
            counts[3] += 1
        finally:
            lock.release()

    loop = best_ns(lambda: None, number, repeat)  # the cost of calling a lambda: taken off each below
    return {
        "observe_ns": round(best_ns(lambda: histogram.observe(0.004), number, repeat) - loop, 1),
        "bisect_ns": round(best_ns(lambda: bisect_left(bounds, 0.004), number, repeat) - loop, 1),
        "increment_ns": round(best_ns(increment, number, repeat) - loop, 1),
        "increment_with_lock_ns": round(best_ns(increment_with_lock, number, repeat) - loop, 1),
        "increment_acquire_release_ns": round(best_ns(increment_acquire_release, number, repeat) - loop, 1),
        "call_overhead_ns": round(loop, 1),
    }


def publish_cost(subscribers: int, number: int, repeat: int) -> dict[str, Any]:
    broker = MemoryBroker(history=1000)
    sinks = []
    for _ in range(subscribers):
        subscription, _preamble = broker.subscribe("bench", None)
        sink = CountingSink()
        subscription.attach(sink)
        sinks.append(sink)
    data = "x" * 64
    histogram, no_histogram = broker.stats.latency, NoHistogram()
    best = {"with": float("inf"), "without": float("inf")}
    for i in range(repeat):  # alternating, each first in turn: neither gets the quieter moments only
        for variant in ("with", "without") if i % 2 == 0 else ("without", "with"):
            # The same publish, observed or not.
            broker.stats.latency = histogram if variant == "with" else no_histogram  # type: ignore[assignment]
            best[variant] = min(best[variant], best_ns(lambda: broker.publish("bench", data), number, 1))
    broker.stats.latency = histogram
    with_ns, without_ns = best["with"], best["without"]
    broker.close()
    assert all(sink.events == 2 * number * repeat for sink in sinks), "every subscriber got every event"
    return {
        "subscribers": subscribers,
        "publish_ns": round(with_ns),
        "publish_without_observe_ns": round(without_ns),
        "observe_share_percent": round((with_ns - without_ns) / with_ns * 100, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    args = parser.parse_args(argv)
    repeat = 3 if args.quick else 7
    parts = observe_parts(100_000 if args.quick else 1_000_000, repeat)
    print(json.dumps(parts), flush=True)
    for subscribers, number in ((1, 20_000), (100, 2_000), (1000, 200)):
        print(json.dumps(publish_cost(subscribers, number // 4 if args.quick else number, repeat)), flush=True)


if __name__ == "__main__":
    main()
