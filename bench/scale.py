"""The scale scenarios of ``bench.run``: many streams through ``wsgi-eventsource
serve --workers N --redis`` (one Redis, or a 3-master Redis Cluster), and the
subscription storm (:mod:`bench.storm`, run in its own process).

Nothing here is pinned to a core: the hub's workers, Redis and the load
clients share the machine's cores, as they would share a host.

Limits of this machine that shape the scenario (``ulimit -Hn`` is 20,000 and
no process may raise it): each hub worker holds at most ``--worker-connections``
descriptors' worth of streams, so 50,000 streams take 4 workers; each load
client holds its share of the streams (``streams / clients``, under 20,000),
and connects from its own loopback address (``SOURCE_ADDRESS`` of
``loadclient.c``), since one source address reaches the hub's address and
port through at most ~28,000 ephemeral ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
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
from typing import Any

from bench.procs import children, cpu_seconds, rss_kib, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / ".build"
CLIENT = BUILD / "loadclient"
PY = sys.executable
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too; below
    the ephemeral range, so no outgoing connection takes either meanwhile."""
    for _ in range(1000):
        port = random.randrange(20_000, 28_000)
        if _bindable(port) and _bindable(port + 10_000):
            return port
    raise RuntimeError("no free port pair (port, port + 10000) in 20000-38000")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE (inherited by every child) as far
    as allowed: the hard limit up to ``fs.nr_open`` if we may (root with
    CAP_SYS_RESOURCE), else the soft limit to the hard one. Returns the limits."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError), open("/proc/sys/fs/nr_open") as f:
        ceiling = int(f.read())
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
            return ceiling, ceiling
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard, hard


# -- Redis: one server, or a cluster of three masters --------------------------------


@dataclass
class RedisDeployment:
    """Redis servers started for one scenario, and the URL the hub is given."""

    kind: str  # "single" or "cluster"
    url: str = ""
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    tmp: str = ""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def commandstats(self) -> dict[str, dict[str, float]]:
        """``INFO commandstats`` summed over every server: command -> calls, usec."""
        total: dict[str, dict[str, float]] = {}
        for port in self.ports:
            for name, stats in _commandstats(port).items():
                entry = total.setdefault(name, {"calls": 0, "usec": 0})
                entry["calls"] += stats["calls"]
                entry["usec"] += stats["usec"]
        return total

    def reset_stats(self) -> None:
        for port in self.ports:
            _cli(port, "CONFIG", "RESETSTAT")


def _cli(port: int, *command: str) -> str:
    done = subprocess.run(
        [REDIS_CLI, "-p", str(port), *command], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


def _commandstats(port: int) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for line in _cli(port, "INFO", "commandstats").splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, values = line.removeprefix("cmdstat_").partition(":")
        fields = dict(part.split("=", 1) for part in values.split(","))
        stats[name] = {"calls": int(fields["calls"]), "usec": int(fields["usec"])}
    return stats


def _redis_server(port: int, tmp: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", tmp, "--maxclients", "10000", *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.contextmanager
def redis_deployment(kind: str) -> Iterator[RedisDeployment]:
    """One redis-server (``kind="single"``) or a 3-master Redis Cluster
    (``"cluster"``: ``--cluster-enabled yes`` and ``redis-cli --cluster
    create``), on free ports, stopped afterwards."""
    deployment = RedisDeployment(kind, tmp=tempfile.mkdtemp(prefix=f"bench-redis-{kind}-"))
    try:
        if kind == "single":
            port = free_port()
            deployment.ports = [port]
            deployment.processes = [_redis_server(port, deployment.tmp)]
            wait_for_port(port)
            deployment.url = f"redis://127.0.0.1:{port}/0"
        elif kind == "cluster":
            for _ in range(3):
                port = free_cluster_port()
                while port in deployment.ports:
                    port = free_cluster_port()
                deployment.ports.append(port)
                deployment.processes.append(
                    _redis_server(port, deployment.tmp, "--cluster-enabled", "yes", "--cluster-config-file",
                                  f"nodes-{port}.conf", "--cluster-node-timeout", "5000")
                )  # fmt: skip
            for port in deployment.ports:
                wait_for_port(port)
            nodes = [f"127.0.0.1:{port}" for port in deployment.ports]
            subprocess.run([REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                           capture_output=True, timeout=60, check=True)  # fmt: skip
            deadline = time.monotonic() + 30
            while not all("cluster_state:ok" in _cli(port, "CLUSTER", "INFO") for port in deployment.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok in 30 s")
                time.sleep(0.1)
            deployment.url = "redis+cluster://" + ",".join(nodes) + "/"
        else:
            raise ValueError(f"kind is 'single' or 'cluster', not {kind!r}")
        yield deployment
    finally:
        for process in deployment.processes:
            process.terminate()
        for process in deployment.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(deployment.tmp, ignore_errors=True)


# -- The hub and its load ---------------------------------------------------------------


def hub_workers_for(streams: int, max_fds: int = 20_000) -> tuple[int, int, int]:
    """(workers, worker connections, max connections) for *streams* streams:
    at least 3 workers (4 from 40,000 streams); each worker may hold every
    stream (small runs) or as many as its descriptors allow (its Redis pool,
    listener and logs take under 1,000 more), since the kernel does not
    spread the connections evenly over the workers; and the workers together
    hold the streams with a quarter to spare."""
    # gunicorn's connections: the streams and a reserve of a tenth, as ``serve`` keeps by default.
    max_connections = min((max_fds - 1_000) * 10 // 11, streams)
    worker_connections = max_connections + max(20, max_connections // 10)
    workers = max(4 if streams >= 40_000 else 3, -(-streams * 5 // 4 // max_connections))
    return workers, worker_connections, max_connections


def spread_channels(redis: RedisDeployment, count: int) -> tuple[list[str], int]:
    """*count* channel names, and how many Redis servers hold them: on a
    cluster, chosen so that they fall on every master in turn (each channel's
    partition's slot, as RedisBroker places it with its default partitions)."""
    if redis.kind != "cluster":
        return [f"scale-{k}" for k in range(count)], 1
    import redis as redis_py

    from wsgi_eventsource.brokers.redis.cluster import master_of_slot, partition_of, slot_of
    from wsgi_eventsource.brokers.redis.urls import DEFAULT_PARTITIONS

    client = redis_py.Redis(port=redis.ports[0])
    try:
        names: list[str] = []
        for j in range(10_000):
            if len(names) == count:
                break
            name = f"scale-{j}"
            master = master_of_slot(client, slot_of(partition_of(name, DEFAULT_PARTITIONS)))
            if master is not None and master[1] == redis.ports[len(names) % len(redis.ports)]:
                names.append(name)
    finally:
        client.close()
    if len(names) < count:
        raise RuntimeError(f"found only {len(names)} channel names over the cluster's masters")
    return names, min(count, len(redis.ports))


def _publish_events(url: str, channels: list[str], events: int, interval: float) -> None:
    from wsgi_eventsource import RedisBroker

    broker = RedisBroker(url)
    try:
        for i in range(events):
            for channel in channels:
                broker.publish(channel, f"{time.time_ns()} {i} {channel}")
            time.sleep(interval)
    finally:
        broker.close()


def _usage(pids: list[int]) -> dict[str, Any]:
    return {"cpu_s": [cpu_seconds(p) for p in pids], "rss_kib": [rss_kib(p) for p in pids]}


def scale(
    kind: str = "single",
    streams: int = 50_000,
    events: int = 10,
    clients: int = 4,
    interval: float = 1.0,
    *,
    library: Path | None = None,
) -> dict[str, Any]:
    """*streams* streams through the hub (``serve --workers N --redis``) on
    one Redis (*kind* ``"single"``) or a 3-master cluster (``"cluster"``),
    held by *clients* load-client processes, each subscribed to a channel of
    its own (on a cluster, the channels fall on every master); *events*
    events to each channel, *interval* s apart, published through a
    RedisBroker of this process. Every delivery is counted; the CPU time and
    RSS of every hub worker and Redis server are taken before the streams
    open, once they are open, and after the events. *library*: another
    checkout whose ``wsgi_eventsource`` package the hub runs (None: this
    checkout's)."""
    if streams % clients:
        raise ValueError(f"streams ({streams}) must split evenly over {clients} clients")
    workers, worker_connections, max_connections = hub_workers_for(streams)
    with redis_deployment(kind) as redis, _tree(library) as tree:
        channels, servers_used = spread_channels(redis, clients)
        hub_port = free_port()
        hub = subprocess.Popen(
            [PY, "-m", "wsgi_eventsource", "serve", "--port", str(hub_port), "--workers", str(workers),
             "--redis", redis.url, "--worker-connections", str(worker_connections),
             "--max-connections", str(max_connections), "--log-level", "warning"],
            cwd=tree, stderr=subprocess.PIPE, env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash shows where
        )  # fmt: skip
        load: list[subprocess.Popen[bytes]] = []
        try:
            hub_pids = _workers_of(hub, hub_port, workers)
            base = {"hub": _usage(hub_pids), "redis": _usage(redis.pids)}
            redis.reset_stats()
            share = streams // clients
            opened = time.monotonic()
            for k in range(clients):
                command = [str(CLIENT), "sub", "127.0.0.1", str(hub_port), f"/events/{channels[k]}", str(share),
                           str(events), "60"]  # fmt: skip
                source = {"SOURCE_ADDRESS": f"127.0.0.{2 + k}"}  # see the module docstring
                load.append(subprocess.Popen(command, stdout=subprocess.PIPE, env={**os.environ, **source}))
            for client in load:
                assert client.stdout is not None
                line = client.stdout.readline().decode()
                if not line.startswith("READY"):
                    raise RuntimeError(f"a load client's streams did not all open: {line!r}")
            open_seconds = time.monotonic() - opened
            time.sleep(2)  # let the workers settle (the last subscribes reach Redis)
            connected = {"hub": _usage(hub_pids), "redis": _usage(redis.pids)}
            fds = [open_fds(p) for p in hub_pids]
            stats_connected = redis.commandstats()
            xreads_connected = [_commandstats(port).get("xread", {}).get("calls", 0) for port in redis.ports]
            _publish_events(redis.url, channels, events, interval)
            results = [_finish(client, 180) for client in load]
            after = {"hub": _usage(hub_pids), "redis": _usage(redis.pids)}
            stats_after = redis.commandstats()
            xreads_after = [_commandstats(port).get("xread", {}).get("calls", 0) for port in redis.ports]
        finally:
            for client in load:
                if client.poll() is None:
                    client.kill()
                    client.wait(5)
            errors = _stop(hub)
    delivered = sum(r["events"] for r in results)
    closed_early = sum(r["closed_early"] for r in results)

    def spent(part: str, start: dict[str, Any], end: dict[str, Any]) -> list[float]:
        return [round(b - a, 2) for a, b in zip(start[part]["cpu_s"], end[part]["cpu_s"], strict=True)]

    reads = {
        name: {"calls": stats_after.get(name, {}).get("calls", 0) - stats_connected.get(name, {}).get("calls", 0)}
        for name in ("xread", "evalsha")
    }
    return {
        "redis": kind,
        "redis_servers": len(redis.ports),
        "channels": channels,
        "redis_servers_used": servers_used,
        "streams": streams,
        "events": events,
        "interval_s": interval,
        "workers": workers,
        "worker_connections": worker_connections,
        "max_connections": max_connections,
        "load_clients": clients,
        "delivered": delivered,
        "expected": streams * events,
        "closed_early": closed_early,
        "delivered_all": delivered == streams * events and closed_early == 0,
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "max_ms": max(r["max_ms"] for r in results),
        "p50_ms_per_client": [r["p50_ms"] for r in results],
        "p99_ms_per_client": [r["p99_ms"] for r in results],
        "open_seconds": round(open_seconds, 2),
        "hub_fds": fds,
        "hub_rss_kib": connected["hub"]["rss_kib"],
        "hub_rss_base_kib": base["hub"]["rss_kib"],
        "hub_kib_per_stream": round((sum(connected["hub"]["rss_kib"]) - sum(base["hub"]["rss_kib"])) / streams, 2),
        "hub_cpu_open_s": spent("hub", base, connected),
        "hub_cpu_events_s": spent("hub", connected, after),
        "redis_rss_kib": after["redis"]["rss_kib"],
        "redis_cpu_open_s": spent("redis", base, connected),
        "redis_cpu_events_s": spent("redis", connected, after),
        "redis_commands_open": _summary(stats_connected),
        "redis_commands_events": reads,
        "redis_xread_events_per_server": [b - a for a, b in zip(xreads_connected, xreads_after, strict=True)],
        "hub_errors": _problems(errors),
        "library": str(library or ROOT),
        "commit": _commit(library or ROOT),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _workers_of(hub: subprocess.Popen[bytes], port: int, workers: int) -> list[int]:
    """The worker processes of the hub, once it listens and has them all."""
    wait_for_port(port)
    deadline = time.monotonic() + 30
    while len(children(hub.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # the workers import and build the app
    return children(hub.pid)


def _stop(hub: subprocess.Popen[bytes]) -> bytes:
    """Stop the hub; what it wrote to stderr."""
    hub.send_signal(signal.SIGINT)
    try:
        _, errors = hub.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        hub.kill()
        _, errors = hub.communicate(timeout=10)
    return errors


def _problems(stderr: bytes) -> str:
    """What the hub wrote to stderr, less gevent's MonkeyPatchWarning (two
    lines per worker, about the ssl module gunicorn imports first)."""
    lines = stderr.decode(errors="replace").splitlines()
    kept = [line for line in lines if "MonkeyPatchWarning" not in line and line.strip() != "monkey.patch_all()"]
    return "\n".join(kept)[-6000:]


def _summary(stats: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The commands a scenario counts, and the total (less the bench's own INFO and CONFIG)."""
    own = {"info", "config|resetstat", "cluster|info"}
    picked = {name: stats.get(name, {"calls": 0, "usec": 0}) for name in ("xread", "client|unblock", "evalsha")}
    picked["total"] = {
        "calls": sum(s["calls"] for n, s in stats.items() if n not in own),
        "usec": sum(s["usec"] for n, s in stats.items() if n not in own),
    }
    return picked


def _finish(client: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = client.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result.pop("histogram", None)
    return result


# -- The subscription storm ----------------------------------------------------------------


def storm(kind: str = "single", channels: int = 10_000, library: Path | None = None) -> dict[str, Any]:
    """The subscription storm (:mod:`bench.storm`) against a fresh Redis of
    *kind*, in a process of its own; *library*: another checkout whose
    ``wsgi_eventsource`` package it runs with (None: this checkout's)."""
    with redis_deployment(kind) as redis, _tree(library) as cwd:
        done = subprocess.run(
            [PY, "-m", "bench.storm", "--url", redis.url, "--ports", ",".join(map(str, redis.ports)),
             "--channels", str(channels)],
            cwd=cwd, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bench.storm failed ({done.returncode}): {done.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        result["redis"] = kind
        result["library"] = str(library or ROOT)
        result["commit"] = _commit(library or ROOT)
        result["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        return result


@contextlib.contextmanager
def _tree(library: Path | None) -> Iterator[Path]:
    """A working directory for ``python -m`` that imports *library*'s
    ``wsgi_eventsource`` (``-m`` puts it first on sys.path) and this
    checkout's ``bench``; this checkout itself when *library* is None."""
    if library is None:
        yield ROOT
        return
    with tempfile.TemporaryDirectory(prefix="bench-tree-") as tmp:
        (Path(tmp) / "bench").symlink_to(ROOT / "bench")
        (Path(tmp) / "wsgi_eventsource").symlink_to(library.resolve() / "wsgi_eventsource")
        yield Path(tmp)


def _commit(tree: Path) -> str:
    """The last commit that changed the package in *tree*."""
    described = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s", "--", "wsgi_eventsource"],
                               capture_output=True, text=True, check=False)  # fmt: skip
    return described.stdout.strip()[:100]
