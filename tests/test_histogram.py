"""The fixed-bucket histogram the brokers time deliveries with (issue 11)."""

from __future__ import annotations

import math

import gevent
import pytest
from gevent.monkey import get_original

from wsgi_eventsource.histogram import LATENCY_BUCKETS, Histogram, HistogramSnapshot

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")


@pytest.mark.parametrize(
    ("value", "bucket"),
    [
        pytest.param(0.0, 0, id="zero"),
        pytest.param(-3.0, 0, id="negative-counts-as-zero"),
        pytest.param(0.5, 0, id="below-first"),
        pytest.param(1.0, 0, id="equal-to-a-bound-is-in-it"),
        pytest.param(1.0000001, 1, id="just-above-a-bound"),
        pytest.param(2.0, 1, id="equal-to-second"),
        pytest.param(4.9, 2, id="middle"),
        pytest.param(5.0, 2, id="equal-to-last"),
        pytest.param(5.1, 3, id="above-last-is-inf"),
        pytest.param(math.inf, 3, id="inf"),
    ],
)
def test_a_value_falls_in_the_first_bucket_whose_bound_it_does_not_exceed(value: float, bucket: int) -> None:
    histogram = Histogram((1, 2, 5))
    histogram.observe(value)
    counts = [0, 0, 0, 0]
    counts[bucket] = 1
    assert histogram.snapshot().counts == tuple(counts)


def test_snapshot_sum_count_cumulative_and_quantiles() -> None:
    histogram = Histogram((1, 2, 5))
    for value in (0.5, 0.5, 1.5, 3, 3, 3, 3, 3, 3, 9):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.count == 10
    assert snapshot.sum == pytest.approx(29.5)
    assert snapshot.cumulative() == [(1.0, 2), (2.0, 3), (5.0, 9), (math.inf, 10)]
    assert snapshot.quantile(0.2) == 1.0
    assert snapshot.quantile(0.5) == 5.0
    assert snapshot.quantile(0.99) == math.inf
    assert HistogramSnapshot((1.0,), (0, 0), 0.0).quantile(0.5) is None


def test_the_difference_of_two_snapshots_is_what_was_observed_between() -> None:
    histogram = Histogram((1, 2))
    histogram.observe(0.5)
    earlier = histogram.snapshot()
    histogram.observe(1.5)
    histogram.observe(7)
    assert histogram.snapshot() - earlier == HistogramSnapshot((1.0, 2.0), (0, 1, 1), 8.5)
    with pytest.raises(ValueError, match="different buckets"):
        _ = histogram.snapshot() - Histogram((1, 3)).snapshot()


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        pytest.param((), "at least one", id="empty"),
        pytest.param((1, math.inf), "finite", id="inf"),
        pytest.param((math.nan,), "finite", id="nan"),
        pytest.param((1, 1), "strictly ascending", id="equal"),
        pytest.param((2, 1), "strictly ascending", id="descending"),
    ],
)
def test_bad_bounds_are_refused_with_the_reason(bounds: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Histogram(bounds)


def test_the_latency_buckets_go_from_a_millisecond_to_ten_seconds() -> None:
    assert Histogram().bounds == LATENCY_BUCKETS
    assert LATENCY_BUCKETS[0] == 0.001
    assert LATENCY_BUCKETS[-1] == 10.0


def test_an_os_thread_writes_while_greenlets_read_and_no_observation_is_lost() -> None:
    """The Redis reader is an OS thread; /stats and /metrics read from greenlets."""
    histogram = Histogram((0.5,))
    done = _allocate_lock()
    done.acquire()
    per_thread = 50_000

    def write() -> None:
        try:
            for i in range(per_thread):
                histogram.observe(i % 2)  # half in each bucket
        finally:
            done.release()

    seen: list[int] = []

    def read() -> None:
        while True:
            finished = not done.locked()
            snapshot = histogram.snapshot()
            assert snapshot.sum == snapshot.counts[1]  # buckets and sum consistent with each other
            seen.append(snapshot.count)
            if finished:
                return
            gevent.sleep(0)

    _start_new_thread(write, ())
    for i in range(per_thread):
        histogram.observe(i % 2)
    reader = gevent.spawn(read)
    with gevent.Timeout(30):
        while done.locked():
            gevent.sleep(0.001)
    reader.join(5)
    final = histogram.snapshot()
    assert final.counts == (per_thread, per_thread)
    assert final.sum == per_thread
    assert seen == sorted(seen)  # never goes back
