"""Where the memory of an idle stream goes, part by part (JSON out).

    .venv/bin/python -m bench.memory_breakdown                   # 10,000 streams, every setup
    .venv/bin/python -m bench.memory_breakdown --streams 500 --output /tmp/m.json
    .venv/bin/python -m bench.memory_breakdown --merge-into docs/benchmarks.json

Each server runs as in ``bench/run.py`` (one gunicorn worker pinned to core 0:
the library's worker, ``wsgi_eventsource.gunicorn_worker.GeventWorker``, for
``hub`` and ``eventsource``, where an open stream has no greenlet; gunicorn's
stock ``-k gevent`` for ``stock``, the same EventSource app with a greenlet
per stream), wrapped by ``bench/servers/memory_probe.py``; the load client
opens N idle streams. Each setup is run twice:

* untraced: the worker's RSS and ``/proc/<pid>/smaps`` before and after, per
  kind of mapping (``[heap]``: glibc's brk heap; anonymous mappings:
  pymalloc's arenas and big mallocs), and the kernel's side, which RSS does
  not count (``/proc/net/sockstat`` socket buffers, ``/proc/slabinfo``: the
  socket, file and epoll objects), for BOTH ends of each connection (the load
  client runs on this machine);
* traced: tracemalloc inside the worker, from a snapshot taken with no stream
  open to one with N: bytes per stream by source line and by part (ours,
  gunicorn's request and environ, gevent's socket and greenlet), the saved C
  stack of every waiting greenlet (``greenlet._stack_saved``) and where in
  Python it waits; then what the streams' environs alone keep of gunicorn's
  request (``memory_probe.release_request``).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import run
from bench.procs import rss_kib
from bench.scale import raise_fd_limit

#: What each stream of a server runs: (server of bench/run.py, path: None for its own).
SETUPS: dict[str, tuple[str, str | None]] = {
    "hub": ("hub", None),
    "eventsource": ("eventsource", None),
    "stock": ("stock", None),
    "hub-multiplexed": ("hub", "/events?" + "&".join(f"channel=c{k}" for k in range(10))),
}
#: The part of wsgi_eventsource's own objects: a stream's Stream on the stock
#: worker, its SocketWriter (with its io watcher and socket) on the library's.
OURS = "ours (Connection, subscription, Stream or SocketWriter)"
#: The parts of a stream, by the files their bytes are allocated in (the first match wins).
PARTS = (
    (OURS, ("wsgi_eventsource/",)),
    ("gunicorn (request, environ, response)", ("gunicorn/http/",)),
    ("gunicorn worker (accept, handler greenlet)", ("gunicorn/",)),
    ("gevent (socket, greenlet, pool, hub)", ("gevent/", "greenlet/")),
    ("stdlib (socket, io, urllib)", ("socket.py", "selectors.py", "urllib/", "io.py", "_weakrefset.py")),
)
#: The part that holds the greenlets' saved C stacks (see :func:`traced`).
STACK = "greenlet's saved C stack"


def part_of(file: str) -> str:
    """Which of :data:`PARTS` the bytes allocated in *file* belong to."""
    return next((label for label, marks in PARTS if any(mark in file for mark in marks)), "other")


#: Slab caches of a TCP connection's kernel side.
SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq", "skbuff_head_cache",
         "kmalloc-", "ep_head", "inode_cache", "pid")  # fmt: skip


def smaps(pid: int) -> dict[str, int]:
    """Rss (KiB) per kind of mapping (heap, anonymous, stack, file-backed),
    and how many mappings (adjacent anonymous ones merge into one)."""
    kinds: dict[str, int] = {"heap": 0, "anonymous": 0, "stack": 0, "file": 0, "mappings": 0}
    kind = "file"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if not head[0].endswith(":"):  # a mapping's first line: address perms offset dev inode [path]
                path = head[5].strip() if len(head) > 5 else ""
                kind = ("heap" if path == "[heap]" else "stack" if path.startswith("[stack") else
                        "anonymous" if not path or path.startswith("[anon") else "file")  # fmt: skip
                kinds["mappings"] += 1
            elif head[0] == "Rss:":
                kinds[kind] += int(head[1])
    return kinds


def sockstat_tcp_pages() -> int:
    """Pages of TCP socket buffers in use on this machine (both ends of each connection)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1])
    return 0


def slabs() -> dict[str, int]:
    """Bytes in the slab caches a connection uses (needs root; empty if unreadable)."""
    found: dict[str, int] = {}
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if fields[0].startswith(SLABS):
            found[fields[0]] = int(fields[2]) * int(fields[3])  # num_objs * objsize
    return found


#: The kernel objects of one end of an idle TCP connection that a server
#: polls with epoll: the socket, its inode, file and dentry, its epoll item.
CONNECTION_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi")


def slab_object_sizes() -> dict[str, int]:
    """The object size of each of :data:`CONNECTION_SLABS` (``/proc/slabinfo``;
    empty if unreadable): what one end of a connection costs the kernel,
    whatever else the machine does meanwhile."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return {}
    return {fields[0]: int(fields[3]) for fields in map(str.split, lines) if fields[0] in CONNECTION_SLABS}


def probe(server: run.Server, method: str, path: str) -> dict[str, Any]:
    """One of the memory probe's routes, its JSON answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"{path}: {head.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(body)
    return result


def probed_server(name: str, traced: bool) -> run.Server:
    server = next(s for s in run.servers() if s.name == name)
    server.command = [part.replace("bench.servers.ours:", "bench.servers.memory_probe:") for part in server.command]
    # A traced snapshot of 10,000 streams takes the worker longer than
    # gunicorn's heartbeat timeout (30 s), during which it sends no heartbeat.
    server.command[-1:-1] = ["--timeout", "600"]
    server.env = {"BENCH_TRACEMALLOC": "1" if traced else "0"}
    return server


def with_streams(server: run.Server, path: str, n: int, settle: float, measure: Any) -> tuple[Any, Any]:
    """*measure()* with no stream open, then with *n*."""
    with run.running(server):
        before = measure(server)
        client = run.subscribe(server, n, 0, settle + 300, path=path)
        try:
            time.sleep(settle)  # the last streams' first writes done; nothing to wait on from here
            after = measure(server)
        finally:
            client.send_signal(signal.SIGTERM)
            client.communicate(timeout=30)
    return before, after


def untraced(name: str, path: str, n: int, settle: float) -> dict[str, Any]:
    def measure(server: run.Server) -> dict[str, Any]:
        return {"rss": rss_kib(server.worker), "smaps": smaps(server.worker), "tcp_pages": sockstat_tcp_pages(),
                "slabs": slabs(), "probe": probe(server, "GET", "/bench/memory")}  # fmt: skip

    before, after = with_streams(probed_server(name, traced=False), path, n, settle, measure)
    slab = {k: (v - before["slabs"].get(k, 0)) / n for k, v in after["slabs"].items()}
    greenlets = after["probe"]["greenlets"]
    return {
        "rss_kib_per_stream": round((after["rss"] - before["rss"]) / n, 2),
        "smaps_kib_per_stream": {
            k: round((v - before["smaps"][k]) / n, 2) for k, v in after["smaps"].items() if k != "mappings"
        },
        "mappings_per_stream": round((after["smaps"]["mappings"] - before["smaps"]["mappings"]) / n, 2),
        "greenlet_stack_bytes_per_stream": round(greenlets["stack_saved_total"] / n, 1),
        "greenlets": greenlets["groups"],
        "greenlets_not_waiting": greenlets["not_waiting"],
        # pymalloc's arenas and glibc's heap, before against after (see memory_probe.allocators).
        "allocators_bytes_per_stream": {
            k: round((v - before["probe"]["allocators"].get(k, 0)) / n, 1)
            for k, v in after["probe"]["allocators"].items()
        },
        "handlers_held": after["probe"]["handlers_held"],
        "kernel_per_end": {"objects": (sizes := slab_object_sizes()), "bytes": sum(sizes.values())},
        # Machine-wide deltas: other processes' sockets count too (rough).
        "kernel_both_ends": {
            "tcp_buffer_bytes_per_stream": round((after["tcp_pages"] - before["tcp_pages"]) * 4096 / n, 1),
            "slab_bytes_per_stream": round(sum(slab.values()), 1),
            "slabs": {k: round(v, 1) for k, v in sorted(slab.items(), key=lambda kv: -kv[1]) if v >= 8},
        },
    }


def traced(name: str, path: str, n: int, settle: float) -> dict[str, Any]:
    def snapshot(server: run.Server) -> dict[str, Any]:
        if not getattr(snapshot, "based", False):
            snapshot.based = True  # type: ignore[attr-defined]
            return probe(server, "POST", "/bench/memory/base")
        found = probe(server, "GET", "/bench/memory")
        found["released"] = probe(server, "POST", "/bench/memory/release-request")  # the run's last probe
        return found

    _, after = with_streams(probed_server(name, traced=True), path, n, settle, snapshot)
    parts: dict[str, float] = {STACK: 0.0, **{label: 0.0 for label, _ in PARTS}, "other": 0.0}
    for entry in after["files"]:
        parts[part_of(entry["file"])] += entry["bytes"] / n
    for line in after["lines"]:
        # greenlet copies a switched-out greenlet's C stack to the heap with
        # PyMem_Realloc while the switching line runs: that line's bytes are
        # the saved stack, not the objects of the file it is in.
        if line["code"].endswith("switch()"):
            parts[part_of(line["at"])] -= line["bytes"] / n
            parts[STACK] += line["bytes"] / n
    return {
        "traced_bytes_per_stream": round(after["traced_bytes"] / n, 1),
        # Objects the garbage collector tracks (containers), more than with no stream open.
        "objects_per_stream": {o["type"]: round(o["count"] / n, 2) for o in after["objects"][:20]},
        "parts_bytes_per_stream": {k: round(v, 1) for k, v in parts.items()},
        "lines": [
            {**line, "bytes": round(line["bytes"] / n, 1), "blocks": round(line["blocks"] / n, 2)}
            for line in after["lines"]
            if abs(line["bytes"]) / n >= 8
        ],
        # What taking gunicorn's request entries out of every environ freed.
        "request_kept_by_environ": {
            "bytes_per_stream": round(after["released"]["traced_bytes_freed"] / n, 1),
            # The environ's dict and the strings made for it (sys.getsizeof).
            "environ_bytes_per_stream": round(after["released"]["environ_bytes"] / n, 1),
            "objects_per_stream": {o["type"]: round(o["count"] / n, 2) for o in after["released"]["objects_freed"]},
        },
    }


def saved_stacks() -> dict[str, int]:
    """What a waiting greenlet's saved C stack costs by where it waits, in
    this process (gevent.spawn, Python 3.11+: Python-to-Python calls add no
    C frame, a call from C into Python adds one of the eval loop): parked in
    the function it runs, one plain call deeper, in a ``__next__`` that a
    ``for`` loop calls (where a stream's greenlet waits on the stock
    ``-k gevent`` worker), and in a C-level iterator
    (``iter(hub.switch, None)``) that calls the switch with no Python frame."""
    import gevent

    hub = gevent.get_hub()

    def park() -> None:
        hub.switch()

    def deeper() -> None:
        park()

    class Parked:
        def __iter__(self) -> Parked:
            return self

        def __next__(self) -> None:
            hub.switch()

    def for_next() -> None:
        for _ in Parked():
            break

    def for_c_iterator() -> None:
        for _ in iter(hub.switch, None):
            break

    sizes = {}
    for name, run_ in (("in_its_function", park), ("one_call_deeper", deeper), ("in___next___of_a_for_loop", for_next),
                       ("in_a_c_iterator_of_a_for_loop", for_c_iterator)):  # fmt: skip
        waiting = gevent.spawn(run_)
        gevent.sleep(0)
        sizes[name] = waiting._stack_saved
        waiting.kill()
    return sizes


def greenlet_pages(n: int = 10_000) -> dict[str, float]:
    """Anonymous memory per waiting greenlet outside pymalloc's arenas and
    glibc's blocks, in this process: one that runs Python code (a raw
    greenlet and a gevent one, parked in a Python function) against one
    whose ``run`` is a C function (``hub.switch``), which pushes no Python
    frame. The difference is what the greenlet's own frame data stack costs
    (CPython 3.11+ maps those in 16 KiB chunks; greenlet keeps one per
    greenlet)."""
    import os

    import gevent
    import greenlet

    from bench.allocators import allocators

    hub = gevent.get_hub()

    def park() -> None:
        hub.switch()

    def raw(run_: Any) -> Any:
        waiting = greenlet.greenlet(run_, parent=hub)
        hub.loop.run_callback(waiting.switch)
        return waiting

    kinds: dict[str, Callable[[], Any]] = {
        "python_gevent": lambda: gevent.spawn(park),
        "python_raw": lambda: raw(park),
        "c_raw": lambda: raw(hub.switch),
    }
    found = {}
    for name, spawn in kinds.items():
        warm = [spawn() for _ in range(500)]  # what the first ones make once
        gevent.sleep(0.05)
        maps, held = smaps(os.getpid()), allocators()
        waiting = [spawn() for _ in range(n)]
        gevent.sleep(0.2)
        maps2, held2 = smaps(os.getpid()), allocators()
        outside = (maps2["anonymous"] - maps["anonymous"]) * 1024 - sum(
            held2.get(k, 0) - held.get(k, 0) for k in ("arenas_bytes", "malloc_mmapped")
        )
        found[name] = round(outside / n, 1)
        del warm, waiting  # greenlet ends a suspended greenlet it frees
    return found


def breakdown(setup: str, n: int, settle: float = 3) -> dict[str, Any]:
    """Both runs of one setup (see the module doc)."""
    name, path = SETUPS[setup]
    server = next(s for s in run.servers() if s.name == name)
    path = path or server.subscribe_path
    return {"server": name, "path": path, "streams": n, **untraced(name, path, n, settle),
            **traced(name, path, n, settle)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"of: {', '.join(SETUPS)}")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds from READY to the measurement")
    parser.add_argument("--output", default=str(run.ROOT / "bench" / "results" / "memory.json"))
    parser.add_argument("--merge-into", default="", help="a whole run's results (docs/benchmarks.json): set its"
                        " memory_breakdown and write the report beside it again")  # fmt: skip
    args = parser.parse_args(argv)
    setups = args.setups.split(",")
    unknown = set(setups) - set(SETUPS)
    if unknown:
        parser.error(f"--setups: unknown {', '.join(sorted(unknown))} (known: {', '.join(SETUPS)})")
    raise_fd_limit()
    run.build_client()
    results: dict[str, Any] = {
        "machine": run.machine(),
        "memory_breakdown": {"saved_stacks": saved_stacks(), "greenlet_pages": greenlet_pages()},
    }
    for setup in setups:
        results["memory_breakdown"][setup] = run._attempt(breakdown, setup, args.streams, args.settle)
        print(setup, {k: v for k, v in results["memory_breakdown"][setup].items() if k != "lines"}, flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if args.merge_into:
        merge_into(Path(args.merge_into), results)
    print(f"results: {output}", flush=True)


def merge_into(whole_path: Path, results: dict[str, Any]) -> None:
    """Put *results* (this script's output) into a whole run's results as
    ``memory_breakdown``, and write the report beside them again."""
    from bench.report import write_report

    whole = json.loads(whole_path.read_text())
    whole["memory_breakdown"] = {**results["memory_breakdown"], "machine": results["machine"]}
    whole_path.write_text(json.dumps(whole, indent=2) + "\n")
    write_report(whole, whole_path.parent)


if __name__ == "__main__":
    main()
