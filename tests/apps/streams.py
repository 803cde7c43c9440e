"""The app the gunicorn tests run in a real ``gunicorn -k gevent`` worker.

Streams by path, plus ``/stats``: a JSON side channel that tells the test what
happened inside the worker (streams opened and closed, handlers still running).
"""

from __future__ import annotations

import gc
import json
import os
from typing import TYPE_CHECKING

import gevent
import greenlet
from gevent.monkey import get_original

from wsgi_eventsource import Connection, ConnectionClosed, Event, EventSource

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

stats = {"opened": 0, "closed": 0, "handlers_running": 0, "handlers_ended": 0, "slow_closed": 0}
BIG = Event("x" * 65536)


def _closed() -> None:
    stats["closed"] += 1


def _slow_closed() -> None:
    # An on_close callback that waits, as one that tells a database or
    # Redis that the client left does (a cooperative wait under gevent).
    gevent.sleep(0.01)
    stats["slow_closed"] += 1
    print(f"slow on_close done: {stats['slow_closed']}", flush=True)  # seen after the worker exits


def _raising_on_close() -> None:
    raise RuntimeError("on_close failure on purpose")


def handler(conn: Connection, environ: WSGIEnvironment) -> None:
    stats["opened"] += 1
    conn.on_close(_closed)
    path = environ["PATH_INFO"]
    if path == "/slow-close":
        conn.on_close(_slow_closed)
    elif path == "/raise-on-close":
        conn.on_close(_raising_on_close)
    stats["handlers_running"] += 1
    try:
        if path == "/clock":
            n = int(conn.last_event_id or 0)
            while True:
                n += 1
                conn.push({"id": n, "event": "tick", "data": f"tick {n}"})
                gevent.sleep(0.05)
        elif path == "/big":
            while True:  # far faster than a client that does not read
                conn.push(BIG)
                gevent.sleep(0.001)
        elif path == "/stall":  # more than socket buffers hold, then nothing
            conn.push(Event("s" * (16 * 1024 * 1024)))
        elif path == "/thread":
            # A real OS thread (not a monkey-patched greenlet) pushing.
            start_new_thread = get_original("_thread", "start_new_thread")
            start_new_thread(_push_from_thread, (conn,))
        elif path == "/thread-blocked":
            # Blocked behind an event the client does not read, then pushed
            # to from a real OS thread until the stream is cut.
            conn.push(Event("s" * (4 * 1024 * 1024)))
            start_new_thread = get_original("_thread", "start_new_thread")
            start_new_thread(_push_from_thread_until_closed, (conn,))
        elif path == "/raise":
            conn.push("about to fail")
            raise RuntimeError("handler failure on purpose")
        elif path == "/invalid":
            conn.push({"event": "bad\nname", "data": "x"})
        elif path == "/finite":
            conn.push({"id": 1, "data": "one"})
            conn.push("two\nlines")
            conn.push({"event": "last", "data": "three"})
            conn.close()
        elif path == "/idle":
            return  # the stream stays open with no handler behind it
        elif path == "/lines":
            conn.push("first line", "second line")
            conn.push({"event": "named", "data": "a\r\nb\rc"})
        gevent.sleep(3600)  # still running when the stream ends
    except ConnectionClosed:
        pass
    finally:
        stats["handlers_running"] -= 1
        stats["handlers_ended"] += 1


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _push_from_thread(conn: Connection) -> None:
    sleep = get_original("time", "sleep")
    for i in range(100):
        conn.push({"id": i, "data": f"from thread {i}"})
        if i % 25 == 0:
            sleep(0.005)
    conn.close()


def _push_from_thread_until_closed(conn: Connection) -> None:
    sleep = get_original("time", "sleep")
    try:
        while True:
            conn.push("x" * 1024)
            sleep(0.0005)
    except ConnectionClosed:
        stats["thread_saw_closed"] = stats.get("thread_saw_closed", 0) + 1


events = EventSource(
    handler,
    keepalive=float(os.environ.get("TEST_KEEPALIVE", "0.2")),
    max_pending=int(os.environ.get("TEST_MAX_PENDING", str(256 * 1024))),
    write_timeout=float(os.environ.get("TEST_WRITE_TIMEOUT", "60")),
    shutdown_retry=1500,
)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``/stats`` answers JSON; any other path is an event stream."""
    if environ["PATH_INFO"] == "/stats":
        gc.collect()
        body = json.dumps(
            {
                **stats,
                "open": len(events.connections),
                "greenlets": sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead),
                "pid": os.getpid(),
                "rss_kib": _rss_kib(),
                "fds": len(os.listdir("/proc/self/fd")),
                "dropped": events.dropped,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return events(environ, start_response)
