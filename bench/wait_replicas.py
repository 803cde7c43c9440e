"""What ``wait_replicas`` costs a publish: a local master and replica
(``redis-server``, no persistence), N publishes through ``RedisBroker`` with
``wait_replicas=0`` and with ``wait_replicas=1``, one at a time; the median
and p99 latency of each and their ratio. Last, the replica stops
replicating: what a publish that wants it costs then (``wait_timeout``).

::

    .venv/bin/python -m bench.wait_replicas [--events 5000] [--rounds 10] [--json out.json]

Both nodes run on this machine, so the replica's acknowledgement costs a
loopback round trip plus the replica's own scheduling: across hosts add the
network round trip between master and replica.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from wsgi_eventsource import NotReplicated, RedisBroker

__all__ = ["main", "measure"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _redis_server(directory: str, replica_of: int | None = None) -> Iterator[int]:
    port = _free_port()
    args = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    args += ["--dir", directory, "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _wait_in_sync(master: int, timeout: float = 10) -> None:
    client = redis.Redis(port=master)
    deadline = time.monotonic() + timeout
    while client.info("replication").get("slave0", {}).get("state") != "online":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica did not come online")
        time.sleep(0.05)
    client.close()


def _latencies(url: str, events: int, wait_replicas: int) -> list[float]:
    broker = RedisBroker(url, wait_replicas=wait_replicas, wait_timeout=1.0)
    try:
        for i in range(100):  # warm up: connection, script load
            broker.publish("warm", f"warm {i}")
        payload = "x" * 100
        out = []
        for _ in range(events):
            started = time.perf_counter()
            broker.publish("bench", payload)
            out.append((time.perf_counter() - started) * 1000)
        return out
    finally:
        broker.close()


def _replica_gone(url: str, replica: int, events: int = 20, wait_timeout: float = 0.1) -> dict[str, Any]:
    """The replica stops replicating (REPLICAOF NO ONE): each publish with
    wait_replicas=1 waits the whole wait_timeout, then says NotReplicated."""
    with redis.Redis(port=replica) as client:
        client.replicaof("NO", "ONE")
    broker = RedisBroker(url, wait_replicas=1, wait_timeout=wait_timeout)
    out, unconfirmed = [], 0
    try:
        for _ in range(events):
            started = time.perf_counter()
            try:
                broker.publish("bench", "x")
            except NotReplicated:
                unconfirmed += 1
            out.append((time.perf_counter() - started) * 1000)
    finally:
        broker.close()
    return {"wait_timeout_ms": wait_timeout * 1000, "unconfirmed": unconfirmed, "events": events, **_summary(out)}


def _summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": statistics.fmean(ordered),
    }


def measure(events: int = 5000, rounds: int = 10) -> dict[str, Any]:
    """Run the scenario; the results by ``wait_replicas`` and the ratios."""
    with (
        tempfile.TemporaryDirectory() as master_dir,
        tempfile.TemporaryDirectory() as replica_dir,
        _redis_server(master_dir) as master,
        _redis_server(replica_dir, replica_of=master) as replica,
    ):
        _wait_in_sync(master)
        url = f"redis://127.0.0.1:{master}/0"
        results: dict[str, Any] = {"events": events, "rounds": rounds}
        # Interleaved rounds, so that the machine's other load hits both alike.
        runs: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(rounds):
            for wait in (0, 1):
                runs[wait] += _latencies(url, max(1, events // rounds), wait)
        for wait, latencies in runs.items():
            results[f"wait_replicas={wait}"] = _summary(latencies)
        results["replica_gone"] = _replica_gone(url, replica, events=max(3, min(20, events // 100)))
    plain, waited = results["wait_replicas=0"], results["wait_replicas=1"]
    results["median_ratio"] = waited["median_ms"] / plain["median_ms"]
    results["p99_ratio"] = waited["p99_ms"] / plain["p99_ms"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="publishes per setting (default 5000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the events are split in")
    parser.add_argument("--json", help="also write the results to this file")
    options = parser.parse_args(argv)
    results = measure(options.events, options.rounds)
    print(f"{options.events} publishes each, master + replica on this machine")
    for wait in (0, 1):
        row = results[f"wait_replicas={wait}"]
        print(f"  wait_replicas={wait}: median {row['median_ms']:.3f} ms, p99 {row['p99_ms']:.3f} ms")
    print(f"  ratio (1 / 0): median {results['median_ratio']:.2f}x, p99 {results['p99_ratio']:.2f}x")
    gone = results["replica_gone"]
    print(
        f"  replica gone, wait_timeout={gone['wait_timeout_ms']:g} ms: median {gone['median_ms']:.1f} ms, "
        f"{gone['unconfirmed']} of {gone['events']} publishes NotReplicated"
    )
    if options.json:
        with open(options.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
