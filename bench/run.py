"""Side-by-side benchmark of wsgi-eventsource and its peers, in one run.

    .venv/bin/python -m bench.run            # everything (about 15 minutes)
    .venv/bin/python -m bench.run --quick    # small sizes: a smoke run (a few minutes)
    .venv/bin/python -m bench.run --only hub,nchan --scenarios multiplexed --skip-scale-out
    .venv/bin/python -m bench.run --scenarios scale,cluster,storm --merge-into docs/benchmarks.json
    .venv/bin/python -m bench.run --only eventsource,hub --compare-with /tmp/before  # see hot_path()

Each server is started here, one worker process, pinned to core 0; the load
client (bench/loadclient.c, C and epoll) is pinned to core 1. Scenarios:

* idle: N open streams (1k, 5k, 10k): server RSS per stream, CPU while idle;
* fan-out: N subscribers of one channel, 20 events/s for 10 s: the latency
  from publish to receive of every event at every subscriber;
* throughput: 100 subscribers, the publisher flat out: events delivered per
  second, and their latency;
* scale (one Redis) and cluster (a 3-master Redis Cluster): the hub with
  ``--workers 4 --redis`` holding 50,000 streams of one channel from 4 load
  clients, 10 events: every delivery counted, p50/p99, CPU time and RSS of
  every hub worker and Redis server (see ``bench/scale.py``);
* storm: 10,000 channels subscribed at once in one process: seconds until
  all are live and the Redis commands issued (``bench/storm.py``), also with
  another checkout's package (``--storm-before``) or on a 3-master Redis
  Cluster (``--storm-cluster``);
* http-throughput (the hub and nchan): throughput, published over HTTP by
  the C client flat out (each server's own publisher, 32 requests in flight
  on one keep-alive connection), every event checked at every subscriber;
* multiplexed (the hub and nchan): 1,000 clients each with ONE stream of 10
  channels. Memory per stream against 1,000 single-channel streams and
  1,000 x 10 separate single-channel streams; fan-out at 20 events/s on one
  of the 10 channels, next to the same fan-out on single-channel streams,
  the load client checking every event's data, order and id (the cursor,
  the event's channel first); and what one more channel costs
  (``broker.subscribe()``, measured with tracemalloc).

The floor (server ``floor``, ``bench/floor.c``) is the reference every
server is reported against in idle, fan-out and throughput (not in
multiplexed): one C thread, epoll, that formats each event once and writes
it to every subscriber's socket, one write(2) each: the cost of the system
calls alone.

Every scenario checks that every subscriber got every event. Results go to
``bench/results/latest.json``, ``docs/benchmarks.rst`` and two plots in
``docs/`` (a quick run, or one of some servers or scenarios only, writes its
report to ``bench/results/`` instead). Timings on a shared machine are noisy:
compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bench import scale
from bench.procs import children, cpu_seconds, rss_kib, wait_for_port
from bench.scale import raise_fd_limit

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / ".build"
CLIENT = BUILD / "loadclient"
PY = sys.executable
SERVER_CORE, CLIENT_CORE = "0", "1"


def build_client() -> None:
    BUILD.mkdir(exist_ok=True)
    source = ROOT / "bench" / "loadclient.c"
    if not CLIENT.exists() or CLIENT.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(CLIENT), str(source)], check=True)
    build_floor()


#: The floor (``bench/floor.c``): one C thread writing each event to every socket;
#: its server name (``--only floor``). bench/report.py shows every server as a ratio of it.
FLOOR = BUILD / "floor"
FLOOR_NAME = "floor"


def build_floor() -> None:
    """Build the floor server as the load client is built (gcc -O2, when its source is newer)."""
    source = ROOT / "bench" / "floor.c"
    if not FLOOR.exists() or FLOOR.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(FLOOR), str(source)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http(port: int, method: str, path: str, body: bytes = b"") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return int(s.recv(4096).split()[1])


@dataclass
class Server:
    """One server under test, and how to talk to it."""

    name: str
    label: str
    command: list[str]
    subscribe_path: str
    publish: str  # "trigger": POST /bench/publish; "nchan": the C client POSTs each event
    worker_depth: int = 1  # 0: the process itself is the worker; 1: its child
    # Where the C client POSTs events to the subscribe_path's channel (the
    # http-throughput scenario, and nchan's every scenario); None: the server
    # has no publisher over HTTP.
    publish_path: str | None = None
    # The multiplexed scenario: one channel's stream ("{channel}"), and one
    # stream of many ("{channels}": the channels' names, ",".join-ed; for
    # the hub the path is built from MULTIPLEX_QUERY). None: not supported.
    channel_path: str | None = None
    multiplex_path: str | None = None
    cursor_ids: bool = False  # its multiplexed ids are our cursor (checked); else only data is checked
    # Another checkout's wsgi_eventsource package to serve with (the hot-path
    # comparison, see hot_path()); None: this checkout's.
    library: Path | None = None
    log: BinaryIO | None = None
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    tmp: str = ""

    def start(self) -> None:
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        command = [part.format(port=self.port, tmp=self.tmp) for part in self.command]
        cwd = ROOT
        if self.library is not None:
            # gunicorn puts its working directory first on sys.path: one that
            # holds this bench/ and the other checkout's package serves the
            # same harness with the other library.
            cwd = Path(self.tmp, "tree")
            cwd.mkdir()
            (cwd / "bench").symlink_to(ROOT / "bench")
            (cwd / "wsgi_eventsource").symlink_to(self.library / "wsgi_eventsource")
        if self.name == "nchan":
            Path(self.tmp, "nginx.conf").write_text(NCHAN_CONF.format(port=self.port, tmp=self.tmp))
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            cwd=cwd,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=self._log(),
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 20
        while self.worker_depth and not children(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)

    @property
    def worker(self) -> int:
        assert self.process is not None
        if self.worker_depth == 0:
            return self.process.pid
        return max(children(self.process.pid))

    def _log(self) -> BinaryIO:
        self.log = open(Path(self.tmp, "server.log"), "wb")  # noqa: SIM115  # closed by stop()
        return self.log

    def stop(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if self.name == "nchan" else signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def trigger(self, count: int, rate: float, size: int, channel: str | None = None) -> subprocess.Popen[bytes] | None:
        """Start publishing; *channel* (the multiplexed scenario) also tags each event's data with it."""
        if self.publish == "trigger":
            to = "" if channel is None else f"&channel={channel}"
            status = http(self.port, "POST", f"/bench/publish?count={count}&rate={rate}&size={size}{to}")
            assert status == 202, status
            return None
        assert self.publish_path is not None
        path = self.publish_path if channel is None else f"{self.publish_path}/{channel}"
        return self.post(path, count, rate, size, channel)

    def post(self, path: str, count: int, rate: float, size: int, tag: str | None) -> subprocess.Popen[bytes]:
        """The C client POSTing *count* events to *path*, *rate* per second (0:
        flat out, 32 requests in flight on one keep-alive connection); *tag*
        (if any) follows the time stamp and number in each event's data."""
        return subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, str(CLIENT), "pub", "127.0.0.1", str(self.port), path,
             str(count), str(rate), str(size), *([tag] if tag else [])],
            stdout=subprocess.PIPE,
        )  # fmt: skip

    def path_of(self, channels: list[str]) -> str:
        """The stream path of one channel, or of several on one stream."""
        if len(channels) == 1 and self.channel_path:
            return self.channel_path.format(channel=channels[0])
        assert self.multiplex_path is not None, f"{self.name} has no multiplexed streams"
        if self.multiplex_path == MULTIPLEX_QUERY:
            return "/events?" + "&".join(f"channel={c}" for c in channels)
        return self.multiplex_path.format(channels=",".join(channels))


NCHAN_CONF = r"""
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 10000000;  # the benchmark publisher keeps one connection
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location = /events {{ nchan_subscriber eventsource; nchan_channel_id bench; }}
        location = /pub {{
            nchan_publisher; nchan_channel_id bench;
            nchan_message_buffer_length 1000; nchan_message_timeout 120s;
        }}
        # The multiplexed scenario: one channel, many on one stream, and a publisher per channel.
        location ~ ^/sub/(\w+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
        location ~ ^/multi/([\w,]+)$ {{
            nchan_subscriber eventsource; nchan_channel_id $1; nchan_channel_id_split_delimiter ",";
        }}
        location ~ ^/pub/(\w+)$ {{
            nchan_publisher; nchan_channel_id $1;
            nchan_message_buffer_length 1000; nchan_message_timeout 120s;
        }}
    }}
}}
"""
#: Server.multiplex_path for the hub: ``/events?channel=c0&channel=c1...``.
MULTIPLEX_QUERY = "query"

#: gunicorn's stock gevent worker, one greenlet per open stream.
STOCK_GUNICORN = [PY, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1", "--worker-connections", "40000",
                  "--bind", "127.0.0.1:{port}", "--backlog", "16384", "--log-level", "warning"]  # fmt: skip
#: The same, on the worker wsgi-eventsource deploys on (``serve`` runs it): streams written from the hub.
GUNICORN = [*STOCK_GUNICORN[:4], "wsgi_eventsource.gunicorn_worker.GeventWorker", *STOCK_GUNICORN[5:]]


def servers() -> list[Server]:
    return [
        # The floor: what the system calls alone cost (bench/floor.c); the report shows every server against it.
        Server(FLOOR_NAME, "C floor: write(2) to N sockets, one thread", [str(FLOOR), "{port}"], "/events",
               "trigger", worker_depth=0),
        Server("eventsource", "wsgi-eventsource EventSource (its gunicorn gevent worker)",
               [*GUNICORN, "bench.servers.ours:eventsource_app"], "/events", "trigger"),
        Server("hub", "wsgi-eventsource hub, MemoryBroker (its gunicorn gevent worker)",
               [*GUNICORN, "bench.servers.ours:hub_app"], "/events/bench", "trigger", publish_path="/publish/bench",
               channel_path="/events/{channel}", multiplex_path=MULTIPLEX_QUERY, cursor_ids=True),
        Server("stock", "wsgi-eventsource EventSource on gunicorn's stock -k gevent (a greenlet per stream)",
               [*STOCK_GUNICORN, "bench.servers.ours:eventsource_app"], "/events", "trigger"),
        Server("naive", "hand-written gevent app (gunicorn -k gevent)",
               [*STOCK_GUNICORN, "bench.servers.naive_gevent:app"], "/events", "trigger"),
        Server("starlette", "sse-starlette (uvicorn, uvloop + httptools)",
               [PY, "-m", "uvicorn", "bench.servers.starlette_app:app", "--port", "{port}", "--workers", "1",
                "--log-level", "warning", "--backlog", "16384", "--no-access-log"], "/events", "trigger",
               worker_depth=0),
        Server("nchan", "nchan (nginx module, C)", ["/usr/sbin/nginx", "-p", "{tmp}", "-c", "{tmp}/nginx.conf"],
               "/events", "nchan", publish_path="/pub", channel_path="/sub/{channel}",
               multiplex_path="/multi/{channels}"),
    ]  # fmt: skip


def subscribe(
    server: Server,
    connections: int,
    expected: int,
    timeout: float,
    *,
    path: str | None = None,
    check: tuple[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the load client's *connections* streams at *path* and wait until
    they are open. *check*: ``(channel, ids)``, check every event (see
    ``loadclient.c``: the data names *channel*, in order; ids ``none``,
    ``plain`` or ``cursor:N``)."""
    checking = ["check", *check] if check else []
    client = subprocess.Popen(
        ["taskset", "-c", CLIENT_CORE, str(CLIENT), "sub", "127.0.0.1", str(server.port), path or server.subscribe_path,
         str(connections), str(expected), str(timeout), *checking],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    line = client.stdout.readline().decode()
    if not line.startswith("READY"):
        client.kill()
        raise RuntimeError(f"{server.name}: subscribers did not connect: {line!r}")
    return client


def finish(client: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = client.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    except Exception:
        # stop() deletes the server's directory, its log with it: what it said
        # (and whether it still ran) is all a failed scenario leaves to go by.
        assert server.process is not None
        log = Path(server.tmp, "server.log").read_bytes()[-4000:].decode(errors="replace")
        print(f"{server.name} on port {server.port}: exit status {server.process.poll()} (None: running),"
              f" the end of its log:\n{log}", file=sys.stderr, flush=True)  # fmt: skip
        raise
    finally:
        server.stop()


def idle(server: Server, n: int, settle: float = 2, window: float = 5) -> dict[str, Any]:
    with running(server):
        base = rss_kib(server.worker)
        client = subscribe(server, n, 0, settle + window + 5)
        time.sleep(settle)
        rss = rss_kib(server.worker)
        cpu0, t0 = cpu_seconds(server.worker), time.monotonic()
        time.sleep(window)
        cpu = (cpu_seconds(server.worker) - cpu0) / (time.monotonic() - t0)
        client.send_signal(signal.SIGTERM)
        client.communicate(timeout=10)
        return {"streams": n, "rss_base_kib": base, "rss_kib": rss, "kib_per_stream": (rss - base) / n,
                "idle_cpu_percent": round(cpu * 100, 2)}  # fmt: skip


def fanout(server: Server, n: int, rate: float = 20, seconds: float = 10, size: int = 64) -> dict[str, Any]:
    count = int(rate * seconds)
    with running(server):
        client = subscribe(server, n, count, 20)
        publisher = server.trigger(count, rate, size)
        result = finish(client, seconds + 120)
        if publisher is not None:
            publisher.communicate(timeout=30)
        result["delivered_all"] = result["events"] == result["expected"] and result["closed_early"] == 0
        result["rate"] = rate
        return result


def throughput(server: Server, n: int = 100, count: int = 20_000, size: int = 64) -> dict[str, Any]:
    with running(server):
        client = subscribe(server, n, count, 30)
        publisher = server.trigger(count, 0, size)
        result = finish(client, 600)
        if publisher is not None:
            publisher.communicate(timeout=60)
        result["delivered_all"] = result["events"] == result["expected"] and result["closed_early"] == 0
        result["delivered_per_second"] = round(result["events"] / result["span_s"]) if result["span_s"] else 0
        return result


MULTIPLEX_CHECKS = ("bad_data", "bad_order", "bad_id", "other_events")
#: The channel the http-throughput scenario publishes to and checks: each
#: event's data names it (the C client's TAG), as in the multiplexed scenario.
HTTP_CHANNEL = "bench"


def http_throughput(server: Server, n: int = 100, count: int = 20_000, size: int = 64) -> dict[str, Any]:
    """:func:`throughput`, published over HTTP by the C client, flat out, as
    nchan always is: ``POST`` each event to the server's own publisher
    (``server.publish_path``), 32 requests in flight on ONE keep-alive
    connection, the same for every server; every event checked at every
    subscriber (its data, its order, and for the hub its id)."""
    assert server.publish_path is not None, f"{server.name} has no publisher over HTTP"
    with running(server):
        ids = "plain" if server.cursor_ids else "none"
        client = subscribe(server, n, count, 30, check=(HTTP_CHANNEL, ids))
        publisher = server.post(server.publish_path, count, 0, size, HTTP_CHANNEL)
        result = finish(client, 600)
        published, _ = publisher.communicate(timeout=60)
        result["publisher"] = json.loads(published.decode().strip().splitlines()[-1])
        result["ids_checked"] = ids
        result["delivered_all"] = (
            result["events"] == result["expected"] == result["checked"]
            and result["closed_early"] == 0
            and all(result[k] == 0 for k in MULTIPLEX_CHECKS)
            and result["publisher"]["ok"] == count
        )
        result["delivered_per_second"] = round(result["events"] / result["span_s"]) if result["span_s"] else 0
        return result


def held(server: Server, groups: list[tuple[str, int]], settle: float = 2) -> dict[str, Any]:
    """Server RSS with every group's streams open (one load client per
    group: ``(path, streams)``), per stream and per client of the first group."""
    with running(server):
        base = rss_kib(server.worker)
        clients = [subscribe(server, n, 0, settle + 30, path=path) for path, n in groups]
        time.sleep(settle)
        rss = rss_kib(server.worker)
        for client in clients:
            client.send_signal(signal.SIGTERM)
            client.communicate(timeout=10)
        streams, clients_n = sum(n for _, n in groups), groups[0][1]
        return {"streams": streams, "rss_base_kib": base, "rss_kib": rss, "kib_per_stream": (rss - base) / streams,
                "kib_per_client": (rss - base) / clients_n}  # fmt: skip


def checked_fanout(
    server: Server, path: str, channel: str, ids: str, *, n: int, rate: float, seconds: float, size: int = 64
) -> dict[str, Any]:
    """:func:`fanout` on *path*, published to *channel*, every event checked."""
    count = int(rate * seconds)
    with running(server):
        client = subscribe(server, n, count, 20, path=path, check=(channel, ids))
        publisher = server.trigger(count, rate, size, channel)
        result = finish(client, seconds + 120)
        if publisher is not None:
            publisher.communicate(timeout=30)
        result["ids_checked"] = ids
        result["delivered_all"] = (
            result["events"] == result["expected"] == result["checked"]
            and result["closed_early"] == 0
            and all(result[k] == 0 for k in MULTIPLEX_CHECKS)
        )
        return result


def subscription_bytes(channels: int = 10, clients: int = 2000) -> dict[str, Any]:
    """What one more channel costs a stream in the broker, in bytes
    (tracemalloc, a MemoryBroker in this process): ``broker.subscribe()``
    of one channel, and ``subscribe_many()`` of *channels* per client, with
    where the bytes of the latter go (source lines, per client).

    Each client's channel names are its own ``str`` objects, as a server's
    are (parsed from each request); the subscriptions are not attached, so
    each still holds its empty live-event buffer (a list, 56 bytes, that
    ``attach()`` frees) and has no ``_Channel`` sink yet (48 bytes)."""
    import linecache
    import tracemalloc

    import gevent

    from wsgi_eventsource import MemoryBroker

    def names() -> list[str]:
        return [f"c{k}" for k in range(channels)]

    def measure(make: Any) -> tuple[float, list[list[Any]]]:
        broker = MemoryBroker()
        kept: list[Any] = [broker.subscribe(name, None) for name in names()]  # the channels exist already
        gevent.sleep(0)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        kept.extend(make(broker, i)[0] for i in range(clients))  # not the preamble: it is sent and freed
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        broker.close()
        stats = [stat for stat in after.compare_to(before, "lineno") if stat.size_diff > 0]
        total = sum(stat.size_diff for stat in stats) / clients
        root = str(ROOT) + os.sep
        lines = [
            [
                str(stat.traceback[0]).replace(root, ""),
                linecache.getline(stat.traceback[0].filename, stat.traceback[0].lineno).strip(),
                round(stat.size_diff / clients, 1),
            ]
            for stat in stats[:12]
            if stat.size_diff / clients >= 16 and "tracemalloc" not in str(stat.traceback[0])
        ]
        return total, lines

    single, _ = measure(lambda broker, i: broker.subscribe(names()[i % channels], None))
    many, lines = measure(lambda broker, i: broker.subscribe_many(names(), None))
    return {"subscribe_one_bytes": round(single, 1), "subscribe_many_bytes": round(many, 1),
            "subscribe_many_per_channel_bytes": round(many / channels, 1), "subscribe_many_lines": lines}  # fmt: skip


def multiplexed(
    server: Server, n: int = 1000, channels: int = 10, rate: float = 20, seconds: float = 10
) -> dict[str, Any]:
    """The multiplexed scenario (see the module doc) on one server."""
    names = [f"c{k}" for k in range(channels)]
    one, many = server.path_of(names[:1]), server.path_of(names)
    memory = {
        "single": held(server, [(one, n)]),
        "separate": held(server, [(server.path_of([name]), n) for name in names]),
        "multiplexed": held(server, [(many, n)]),
    }
    fan = {
        "single": checked_fanout(
            server, one, names[0], "plain" if server.cursor_ids else "none", n=n, rate=rate, seconds=seconds
        ),
        "multiplexed": checked_fanout(
            server,
            many,
            names[0],
            f"cursor:{channels}" if server.cursor_ids else "none",
            n=n,
            rate=rate,
            seconds=seconds,
        ),
    }
    return {"clients": n, "channels": channels, "rate": rate, "memory": memory, "fanout": fan}


def served_library(server: Server) -> str:
    """Where the running server imported wsgi_eventsource from (``GET /bench/library``)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /bench/library HTTP/1.0\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer.partition(b"\r\n\r\n")[2].decode().strip()


def hot_path(
    chosen: list[Server], before: Path, *, fanout_sizes: list[int], count: int, rounds: int, seconds: float
) -> dict[str, Any]:
    """The single-channel rows (fan-out and throughput) served by this
    checkout's package ("after") and by *before*'s, alternating, *rounds*
    times, with the same harness: the medians and their ratios."""
    import statistics

    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    libraries: dict[str, str] = {}
    for round_ in range(rounds):
        for server in chosen:
            for variant, library in (("after", None), ("before", before)) if round_ % 2 == 0 else (
                ("before", before), ("after", None)):  # fmt: skip
                server.library = library
                key = f"{server.name}/{variant}"
                with running(server):
                    libraries[key] = served_library(server)
                for n in fanout_sizes:
                    runs.setdefault(key, {}).setdefault(f"fanout {n}", []).append(
                        _short(_attempt(fanout, server, n, 20, seconds))
                    )
                runs[key].setdefault("throughput", []).append(_short(_attempt(throughput, server, 100, count)))
                print("hot path", round_, key, {k: v[-1].get("p99_ms") for k, v in runs[key].items()}, flush=True)
        for server in chosen:
            server.library = None

    def median(results: list[dict[str, Any]], metric: str) -> float | None:
        values = [r[metric] for r in results if "error" not in r and r.get("delivered_all")]
        return statistics.median(values) if len(values) == len(results) else None

    rows = []
    for server in chosen:
        after, before_runs = runs[f"{server.name}/after"], runs[f"{server.name}/before"]
        for row in after:
            metrics = ["p50_ms", "p99_ms"] if row.startswith("fanout") else ["delivered_per_second", "p99_ms"]
            numbers: dict[str, Any] = {"server": server.name, "row": row}
            for metric in metrics:
                a, b = median(after[row], metric), median(before_runs[row], metric)
                numbers[metric] = {"after": a, "before": b, "after_over_before": round(a / b, 3) if a and b else None}
            rows.append(numbers)

    def commit(tree: Path) -> str:
        # The last commit that changed the package: the harness is this checkout's either way.
        described = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s", "--", "wsgi_eventsource"],
                                   capture_output=True, text=True, check=False)  # fmt: skip
        return described.stdout.strip()[:100]

    return {"before": str(before), "before_commit": commit(before), "after_commit": commit(ROOT), "rounds": rounds,
            "fanout_sizes": fanout_sizes, "throughput_count": count, "libraries": libraries, "rows": rows,
            "runs": runs}  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    versions = {}
    for package in ["wsgi-eventsource", "gevent", "gunicorn", "sse-starlette", "uvicorn", "uvloop", "starlette"]:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    nchan = subprocess.run(["dpkg-query", "-W", "libnginx-mod-nchan"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
        "versions": versions, "nginx": nginx, "nchan": nchan.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, every server and scenario")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and short runs: checks the harness works")
    parser.add_argument(
        "--only", default="", help="comma-separated server names (eventsource,hub,stock,naive,starlette,nchan,floor)"
    )
    parser.add_argument("--skip-scale-out", action="store_true", help="leave out scale, cluster and storm")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated scenarios to run (of: %(default)s)"
    )
    parser.add_argument("--scale-streams", type=int, default=0, help="streams of scale and cluster (50,000)")
    parser.add_argument("--scale-clients", type=int, default=4, help="load-client processes of scale and cluster")
    parser.add_argument("--scale-events", type=int, default=0, help="events of scale and cluster (10)")
    parser.add_argument("--storm-channels", type=int, default=0, help="channels of the storm (10,000)")
    parser.add_argument(
        "--storm-before",
        default="",
        help="a checkout of another commit: the storm runs with its wsgi_eventsource too (before), next to this one's",
    )
    parser.add_argument(
        "--storm-cluster",
        action="store_true",
        help="the storm also on a 3-master Redis Cluster (this checkout's package; reported as 'cluster')",
    )
    parser.add_argument(
        "--merge-into",
        default="",
        help="a whole run's results (docs/benchmarks.json): this run's scenarios replace theirs there, and the"
        " report beside it is written again from the merge",
    )
    parser.add_argument("--fanout-sizes", default="", help="comma-separated subscriber counts for fan-out")
    parser.add_argument("--throughput-count", type=int, default=0, help="events in the throughput scenario")
    parser.add_argument(
        "--compare-with",
        default="",
        help="a checkout of another commit (git worktree add): run only the single-channel fan-out and throughput"
        " rows, served by its wsgi_eventsource and by this one's, alternating (see --rounds); results to --output",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare-with")
    parser.add_argument("--hot-path", default="", help="the --output of a --compare-with run, for the report")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    chosen = _chosen_servers(args)

    raise_fd_limit()  # inherited by servers and clients
    build_client()
    idle_sizes = [100] if args.smoke else [200, 500] if args.quick else [1000, 5000, 10000]
    fanout_sizes = [100] if args.smoke else [200] if args.quick else [1000, 5000, 10000]
    throughput_count = 200 if args.smoke else 500 if args.quick else 20_000
    seconds = 1.0 if args.smoke else 10.0
    multiplexed_clients = 50 if args.smoke else 200 if args.quick else 1000
    if args.fanout_sizes:
        fanout_sizes = [int(n) for n in args.fanout_sizes.split(",")]
    throughput_count = args.throughput_count or throughput_count
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        _parser().error(f"--scenarios: unknown {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    if args.skip_scale_out:
        scenarios -= set(SCALE_SCENARIOS)
    if args.storm_cluster and "storm" not in scenarios:
        _parser().error("--storm-cluster: the storm is not among the scenarios run (add it to --scenarios)")
    args.quick = args.quick or args.smoke

    if args.compare_with:
        compared = hot_path(
            chosen, Path(args.compare_with).resolve(),
            fanout_sizes=fanout_sizes, count=throughput_count, rounds=args.rounds, seconds=seconds,
        )  # fmt: skip
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps({"machine": machine(), "hot_path": compared}, indent=2))
        for row in compared["rows"]:
            print(row, flush=True)
        return

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "servers": {}}
    for server in chosen if scenarios & set(SERVER_SCENARIOS) else []:
        entry: dict[str, Any] = {"label": server.label, "idle": [], "fanout": [], "throughput": None}
        results["servers"][server.name] = entry
        for n in idle_sizes if "idle" in scenarios else []:
            entry["idle"].append(_attempt(idle, server, n, *((0.5, 1.0) if args.smoke else ())))
            print(server.name, "idle", n, entry["idle"][-1], flush=True)
        for n in fanout_sizes if "fanout" in scenarios else []:
            entry["fanout"].append(_attempt(fanout, server, n, 20, seconds))
            print(server.name, "fanout", n, _short(entry["fanout"][-1]), flush=True)
        if "throughput" in scenarios:
            entry["throughput"] = _attempt(throughput, server, 100, throughput_count)
            print(server.name, "throughput", _short(entry["throughput"]), flush=True)
        if "http-throughput" in scenarios and server.publish_path:
            entry["http_throughput"] = _attempt(http_throughput, server, 100, throughput_count)
            print(server.name, "http-throughput", _short(entry["http_throughput"]), flush=True)
        if "multiplexed" in scenarios and server.multiplex_path:
            entry["multiplexed"] = _attempt(multiplexed, server, multiplexed_clients, 10, 20, seconds)
            print(server.name, "multiplexed", _short_multiplexed(entry["multiplexed"]), flush=True)
    if "multiplexed" in scenarios:
        results["subscription_cost"] = _attempt(subscription_bytes, 10)
        print("subscription cost", results["subscription_cost"], flush=True)
    if args.hot_path:
        results["hot_path"] = json.loads(Path(args.hot_path).read_text())["hot_path"]
    _scale_scenarios(args, scenarios, results)
    _write_results(args, scenarios, results)


def _chosen_servers(args: argparse.Namespace) -> list[Server]:
    """The servers ``--only`` names (all if none; of them, the ones
    ``--compare-with`` compares), or a usage error that names what is wrong."""
    known = [s.name for s in servers()]
    only = set(args.only.split(",")) if args.only else set(known)
    if only - set(known):  # "--only ours,hub" once ran the hub alone, silently
        _parser().error(f"--only: unknown {', '.join(sorted(only - set(known)))} (known: {', '.join(known)})")
    if args.compare_with:
        only &= set(COMPARED)
        if not only:
            _parser().error(f"--compare-with serves only {' and '.join(COMPARED)}: --only names neither")
    return [s for s in servers() if s.name in only]


def _write_results(args: argparse.Namespace, scenarios: set[str], results: dict[str, Any]) -> None:
    """The JSON to ``--output``, and the report: to docs/ after a whole run,
    beside ``--merge-into`` after merging into it, else to bench/results/."""
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    from bench.report import merge_results, write_report

    if args.merge_into:
        merged_path = Path(args.merge_into)
        merged = merge_results(json.loads(merged_path.read_text()), results)
        merged_path.write_text(json.dumps(merged, indent=2) + "\n")
        write_report(merged, merged_path.parent)
        print(f"merged into {merged_path}", flush=True)
    else:
        # Only a whole run replaces docs/; a quick or partial one writes to bench/results/.
        partial = bool(args.only) or scenarios != set(SCENARIOS)
        write_report(results, ROOT / "docs", quick=args.quick or partial)
    print(f"results: {output}", flush=True)


#: The servers that serve the package itself: the only ones ``--compare-with`` runs.
COMPARED = ("eventsource", "hub")
#: Every scenario (``--scenarios``); those run per server, and those that start their own hub and Redis.
SERVER_SCENARIOS = ("idle", "fanout", "throughput", "http-throughput", "multiplexed")
SCALE_SCENARIOS = ("scale", "cluster", "storm")
SCENARIOS = SERVER_SCENARIOS + SCALE_SCENARIOS
#: The scale scenario of each kind of Redis.
SCALE_REDIS = {"single": "scale", "cluster": "cluster"}


def _scale_scenarios(args: argparse.Namespace, scenarios: set[str], results: dict[str, Any]) -> None:
    """The scenarios that start their own hub and Redis (scale, cluster, storm), into *results*."""
    streams = args.scale_streams or (400 if args.smoke else 2000 if args.quick else 50_000)
    events = args.scale_events or (3 if args.smoke else 5 if args.quick else 10)
    channels = args.storm_channels or (200 if args.smoke else 1000 if args.quick else 10_000)
    for kind in [k for k in ("single", "cluster") if SCALE_REDIS[k] in scenarios]:
        results.setdefault("scale", {})[kind] = _attempt(scale.scale, kind, streams, events, args.scale_clients)
        print(SCALE_REDIS[kind], _brief(results["scale"][kind]), flush=True)
    if "storm" in scenarios:
        runs = {"after": None} if not args.storm_before else {"before": Path(args.storm_before), "after": None}
        for label, library in runs.items():
            results.setdefault("storm", {})[label] = _attempt(scale.storm, "single", channels, library)
            print("storm", label, _brief(results["storm"][label]), flush=True)
        if args.storm_cluster:
            results["storm"]["cluster"] = _attempt(scale.storm, "cluster", channels, None)
            print("storm cluster", _brief(results["storm"]["cluster"]), flush=True)


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, (dict, list)) or k in ("commands_total",)}


def _attempt(function: Any, *args: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = function(*args)
        return result
    except Exception as exc:  # a server that cannot do a scenario is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}


def _short(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "histogram"}


def _short_multiplexed(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        return result
    return {**result, "fanout": {k: _short(v) for k, v in result["fanout"].items()}}


if __name__ == "__main__":
    main()
