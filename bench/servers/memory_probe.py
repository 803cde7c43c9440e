"""The bench servers of ``bench/servers/ours.py`` with a memory probe, for
``bench/memory_breakdown.py`` only (never the timed scenarios).

tracemalloc starts when gunicorn loads this module in its worker (after the
fork: it sees the worker's allocations only). Two extra routes, answered
before the app is called, so that they add no frame to a stream's stack:

* ``POST /bench/memory/base``: take the baseline snapshot (no stream open);
* ``GET /bench/memory``: JSON, what has been allocated since the baseline
  (per source line and per file, with the greenlets' saved C stacks, the
  depth of their Python stacks, and counts of live objects by type);
* ``POST /bench/memory/release-request``: JSON, what the open streams'
  environs keep of gunicorn's request (see :func:`release_request`). It
  takes those entries out of every environ: the last route of a run.
"""

from __future__ import annotations

import collections
import gc
import json
import linecache
import os
import sys
import tracemalloc
from collections.abc import Iterable
from typing import Any

import greenlet

from bench.allocators import allocators
from bench.servers import ours
from wsgi_eventsource import Connection

# One frame per allocation, the line that allocated. Off for the run that
# reads RSS: tracing costs memory per block allocated.
if os.environ.get("BENCH_TRACEMALLOC") == "1":
    tracemalloc.start()
_base: list[tracemalloc.Snapshot] = []
_base_types: list[collections.Counter[str]] = []
#: The source trees whose files are named by a path relative to them.
_ROOTS = sorted({os.path.dirname(os.path.dirname(ours.__file__))} | set(sys.path), key=len, reverse=True)


def _short(filename: str) -> str:
    for root in _ROOTS:
        if root and filename.startswith(root + os.sep):
            return filename[len(root) + 1 :]
    return filename


def _types() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _greenlets() -> dict[str, Any]:
    """Every suspended greenlet's saved C stack (greenlet copies the slice of
    the C stack a switched-out greenlet used to the heap, with ``PyMem`` but
    outside tracemalloc's view), grouped by where it waits."""
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    idle = collections.Counter[str]()  # greenlets not suspended in a frame: why
    for obj in gc.get_objects():
        if not isinstance(obj, greenlet.greenlet):
            continue
        if obj.dead or obj.gr_frame is None:
            idle["dead" if obj.dead else "not started" if not obj else "running"] += 1
            continue
        frames = []
        frame = obj.gr_frame
        while frame is not None:
            frames.append(f"{_short(frame.f_code.co_filename)}:{frame.f_code.co_name}")
            frame = frame.f_back
        groups.setdefault(tuple(frames), []).append((obj._stack_saved, len(frames)))
    out = []
    for chain, stacks in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        saved = sorted(s for s, _ in stacks)
        out.append({"count": len(stacks), "stack_saved_median": saved[len(saved) // 2], "stack_saved_total": sum(saved),
                    "python_frames": len(chain), "frames": list(chain)})  # fmt: skip
    return {"groups": out[:8], "stack_saved_total": sum(g["stack_saved_total"] for g in out), "not_waiting": idle}


def report(top: int = 40) -> dict[str, Any]:
    """What has been allocated since the baseline (see the module doc)."""
    gc.collect()
    # The snapshot first: the probe's own walk over frames and objects
    # below allocates (a frame object for each suspended frame it reads).
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    types = _types()
    base_types = _base_types[0] if _base_types else types
    grown = sorted(((n - base_types[t], t) for t, n in types.items() if n > base_types[t]), reverse=True)[:top]
    counts = {
        "allocators": allocators(),
        "objects": [{"type": t, "count": n} for n, t in grown],
        "greenlets": _greenlets(),
        "streams": {"eventsource": ours.events.connection_count, "hub": ours.hub.subscriber.source.connection_count},
        # EventSource streams whose handler greenlet is still referenced (it ended, or not yet started).
        "handlers_held": sum(conn._handler is not None for conn in ours.connections),
    }
    if snapshot is None:
        return counts
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    base = _base[0] if _base else snapshot
    lines = []
    for stat in snapshot.compare_to(base, "lineno")[:top]:
        frame = stat.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()
        lines.append({"at": f"{_short(frame.filename)}:{frame.lineno}", "bytes": stat.size_diff,
                      "blocks": stat.count_diff, "code": code})  # fmt: skip
    files = [
        {"file": _short(stat.traceback[0].filename), "bytes": stat.size_diff, "blocks": stat.count_diff}
        for stat in snapshot.compare_to(base, "filename")[:top]
    ]
    traced = sum(stat.size_diff for stat in snapshot.compare_to(base, "filename"))
    return {**counts, "traced_bytes": traced, "lines": lines, "files": files}


#: The entries of gunicorn's environ that refer to its request objects:
#: ``wsgi.input`` is the request's body reader (its unreader and buffers),
#: ``wsgi.early_hints`` a closure over the request, the socket and the
#: response, ``gunicorn.socket`` the accepted socket object.
REQUEST_ENTRIES = ("wsgi.early_hints", "wsgi.input", "gunicorn.socket")


def _environ_bytes(environ: dict[str, Any]) -> int:
    """The environ's own bytes: its dict, and the strings and tuples made for
    it (not the interned ones, such as ``"PATH_INFO"``, that every environ
    shares), but not the objects of :data:`REQUEST_ENTRIES`."""
    made = [
        item
        for key, value in environ.items()
        if key not in REQUEST_ENTRIES
        for item in (key, value)
        if isinstance(item, str | bytes | tuple) and not (isinstance(item, str) and sys.intern(item) is item)
    ]
    return sys.getsizeof(environ) + sum(map(sys.getsizeof, made))


def release_request() -> dict[str, Any]:
    """Take :data:`REQUEST_ENTRIES` out of every open stream's environ and
    say what that freed (bytes traced, objects by type): what an idle stream
    keeps of gunicorn's request only through its environ. On the stock
    worker the stream's greenlet holds the request too, and little is freed."""
    gc.collect()
    types = _types()
    traced = tracemalloc.get_traced_memory()[0]
    environs = [o.environ for o in gc.get_objects() if type(o) is Connection]
    own = sum(map(_environ_bytes, environs))
    for environ in environs:
        for key in REQUEST_ENTRIES:
            environ.pop(key, None)
    connections = len(environs)
    del environs
    gc.collect()
    freed_bytes = traced - tracemalloc.get_traced_memory()[0]
    left = _types()
    freed = sorted(((n - left[t], t) for t, n in types.items() if n > left[t]), reverse=True)[:20]
    return {"connections": connections, "traced_bytes_freed": freed_bytes, "environ_bytes": own,
            "objects_freed": [{"type": t, "count": n} for n, t in freed]}  # fmt: skip


def _json(start_response: Any, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _probed(app: Any) -> Any:
    def probed(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/bench/memory/base":
            gc.collect()
            _base[:] = [tracemalloc.take_snapshot()] if tracemalloc.is_tracing() else []
            _base_types[:] = [_types()]
            return _json(start_response, {"base": True})
        if path == "/bench/memory":
            return _json(start_response, report())
        if path == "/bench/memory/release-request":
            return _json(start_response, release_request())
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return probed


eventsource_app = _probed(ours.eventsource_app)
hub_app = _probed(ours.hub_app)
