"""A fixed-bucket histogram that one OS thread writes and others read.

The brokers time each event from its publish to its hand-off to local
subscribers (see :attr:`BrokerStats.latency
<wsgi_eventsource.brokers.base.BrokerStats.latency>`): the Redis reader
thread observes, the hub's greenlets read for ``/stats`` and ``/metrics``.
So it is a plain list of counts behind a real OS lock (held for a few
instructions, never across a switch), with no allocation per observation;
nothing here knows about Prometheus, which gets its numbers from
:meth:`Histogram.snapshot`.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from .connection import os_lock

__all__ = ["LATENCY_BUCKETS", "Histogram", "HistogramSnapshot"]

#: Upper bounds (seconds) of the publish-to-deliver latency buckets: from one
#: millisecond (the resolution of a Redis event id) to ten seconds (a reader
#: that was cut off and catches up).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """The counts of a :class:`Histogram` at one moment.

    .. versionadded:: 0.1
    """

    #: Upper bounds of the buckets, ascending (``+Inf`` is implied last).
    bounds: tuple[float, ...]
    #: Observations per bucket, NOT cumulative: one more than ``bounds``, the
    #: last for values above every bound.
    counts: tuple[int, ...]
    #: Sum of every value observed.
    sum: float

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations at or below it)`` per bucket, the last
        bound ``inf``: Prometheus's ``le`` buckets."""
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket that holds the *q* quantile (an upper
        estimate, ``inf`` past the last bound), or None with no observation."""
        total = self.count
        if not total:
            return None
        rank = q * total
        for bound, seen in self.cumulative():
            if seen >= rank:
                return bound
        return float("inf")  # pragma: no cover - the last cumulative count is the total

    def __sub__(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed since *earlier* (a snapshot of the same histogram)."""
        if earlier.bounds != self.bounds:
            raise ValueError("snapshots of histograms with different buckets")
        counts = tuple(now - then for now, then in zip(self.counts, earlier.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.sum - earlier.sum)


class Histogram:
    """Counts of observed values in fixed buckets, safe across OS threads.

    :param bounds: the buckets' upper bounds, ascending, finite (a value
        equal to a bound falls in that bucket, as Prometheus's ``le`` says).

    .. versionadded:: 0.1
    """

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        bounds = tuple(float(b) for b in bounds)
        if not bounds or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"bounds must be finite numbers, at least one, not {bounds!r}")
        if any(low >= high for low, high in itertools.pairwise(bounds)):
            raise ValueError(f"bounds must be strictly ascending, not {bounds!r}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = os_lock()

    @property
    def bounds(self) -> tuple[float, ...]:
        """The buckets' upper bounds."""
        return self._bounds

    def observe(self, value: float) -> None:
        """Count *value* (a negative one, say from clocks apart, counts as 0)."""
        if value < 0:
            value = 0.0
        index = bisect_left(self._bounds, value)
        # acquire/release, not ``with``: once per event on the hot path, and
        # ``with`` on a lock cost 80 ns more here (290 -> 210 ns per call,
        # bench/observe_cost.py). The lock stays: each Redis reader lane is
        # an OS thread of its own, and they share the broker's histogram.
        lock = self._lock
        lock.acquire()
        try:
            self._counts[index] += 1
            self._sum += value
        finally:
            lock.release()

    def snapshot(self) -> HistogramSnapshot:
        """The counts now (buckets and sum consistent with each other)."""
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum)
