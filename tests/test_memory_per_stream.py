"""Issue 12 (memory): what an idle stream holds in wsgi_eventsource's own
objects, measured with tracemalloc in this process (the whole breakdown, with
the server's parts, is ``bench/memory_breakdown.py``).

The bounds are this library's bytes per stream after the cuts, with a little
room; each test fails on the code before them (the numbers in its docstring)."""

from __future__ import annotations

import gc
import linecache
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import EnvironBuilder

import wsgi_eventsource
from wsgi_eventsource import Connection, MemoryBroker
from wsgi_eventsource.stream import Stream

PACKAGE = str(Path(wsgi_eventsource.__file__).parent)
STREAMS = 300


def collect() -> None:
    """``gc.collect()``; what earlier tests left unclosed (a socket) is
    collected here too, and its ResourceWarning belongs to them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def ours_per_stream(open_stream: Callable[[int], Any]) -> float:
    """Bytes allocated in the package's files per stream, by *open_stream(i)*
    STREAMS times (each stream's preamble read, as the server reads it first)."""
    kept = [open_stream(-1)]  # the first one makes what every stream shares (a channel, a sweeper)
    next(kept[0])
    collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(STREAMS):
            stream = open_stream(i)
            next(stream)  # the preamble goes out: the stream is idle from here
            kept.append(stream)
        collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, PACKAGE + "/*")]
    grown = after.filter_traces(ours).compare_to(before.filter_traces(ours), "filename")
    for stream in kept:
        stream.close()
    return sum(stat.size_diff for stat in grown) / STREAMS


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
    assert status == "200 OK", status
    return lambda data: None


@pytest.mark.parametrize(
    ("query", "bound"),
    [
        pytest.param("", 560, id="one-channel"),
        pytest.param("?" + "&".join(f"channel=c{k}" for k in range(10)), 2000, id="ten-channels"),
    ],
)
def test_an_idle_hub_stream_holds_few_bytes_of_ours(query: str, bound: float) -> None:
    """Issue 12 (memory): a single-channel stream held 935 bytes of ours
    (its ``on_close`` a ``functools.partial`` of a bound method: 256 bytes in
    4 blocks; a list for its one callback: 64; its own hand-off floor tuple:
    88; its own thread-id int in the connection and the subscription: 64),
    a stream of 10 channels 4,370 (per channel a floor tuple, 88, a thread-id
    int, 32, and a cursor entry, 51). Then 511 and 2,564; the 10-channel
    stream then still had a sink object per channel (48 bytes each), a bound
    method for its ``on_close`` (64), its own tuple of the channel names (120)
    and a list of its subscriptions (64 more than a tuple): now 1,844."""
    broker = MemoryBroker()
    app = broker.subscriber_app(keepalive=None)
    path = "/" if query else "/bench"

    def open_stream(i: int) -> Stream:
        environ = EnvironBuilder(path=path, query_string=query[1:]).get_environ()
        stream = app(environ, start_response)
        assert isinstance(stream, Stream)
        return stream

    per_stream = ours_per_stream(open_stream)
    assert per_stream <= bound, f"{per_stream:.0f} bytes of wsgi_eventsource's per stream"
    broker.close()


@pytest.mark.parametrize("count", [0, 1, 2, 3])
def test_on_close_callbacks_run_once_each_in_order(count: int) -> None:
    """Issue 12 (memory): a connection holds a lone ``on_close`` callback as
    is, and a list from the second on; every one still runs once, in order."""
    conn = Connection(EnvironBuilder().get_environ(), max_pending=1024)
    ran: list[int] = []
    for k in range(count):
        conn.on_close(lambda k=k: ran.append(k))  # type: ignore[misc]
    conn._finish()
    conn._finish()
    assert ran == list(range(count))
    conn.on_close(lambda: ran.append(-1))  # after the end: at once
    assert ran == [*range(count), -1]


def test_an_eventsource_stream_keeps_no_frame_objects_of_the_server() -> None:
    """Issue 12 (memory): spawning each stream's handler made gevent walk
    10 frames up (its spawning stack), creating a frame object for each of
    the server's frames below the app; they lived as long as the stream
    (under gunicorn 5 frame objects, 1,232 bytes per stream, not tracked by
    the garbage collector). Here two such frames sit below the app: 440 bytes
    per stream before, none now."""
    import gevent
    import gevent.event

    from wsgi_eventsource import EventSource

    app = EventSource(lambda conn, environ: None, keepalive=None)
    streams: list[Stream] = []
    release = gevent.event.Event()

    def server_request() -> None:  # a server's frames under the app, alive while the stream is
        def handle() -> None:
            stream = app(EnvironBuilder().get_environ(), start_response)
            assert isinstance(stream, Stream)
            next(stream)
            streams.append(stream)
            release.wait()

        handle()

    requests = [gevent.spawn(server_request) for _ in range(2)]  # what every stream shares, made first
    with gevent.Timeout(10):
        while len(streams) < 2:
            gevent.sleep(0.01)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        requests += [gevent.spawn(server_request) for _ in range(STREAMS)]
        with gevent.Timeout(10):
            while len(streams) < STREAMS + 2 or any(s.connection._handler is not None for s in streams):
                gevent.sleep(0.01)  # every handler ran and ended
        collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
        release.set()
    gevent.joinall(requests, timeout=10)
    for stream in streams:
        stream.close()
    at_spawn = [
        stat for stat in after.compare_to(before, "lineno")
        if stat.traceback[0].filename.startswith(PACKAGE) and "spawn(self._run_handler" in linecache_line(stat)
    ]  # fmt: skip
    kept = sum(stat.size_diff for stat in at_spawn) / STREAMS
    assert kept < 100, f"{kept:.0f} bytes per stream kept from spawning its handler"


def linecache_line(stat: tracemalloc.StatisticDiff) -> str:
    frame = stat.traceback[0]
    return linecache.getline(frame.filename, frame.lineno)
