"""The fault scenarios. Each starts its own real servers, drives them through
one fault with clients attached and a publisher running, and returns a
:class:`Row` of figures. Sizes come from a :class:`Sizes` (full or quick)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event

from .clients import Ledger, Publisher, SSEClient, Tally, arrival, http_request, publish
from .fuzz import publish_requests, subscribe_requests
from .infra import ROOT, Hub, Redis

#: The reconnection hint the hub gives when a worker stops (ms).
SHUTDOWN_RETRY = 1000


@dataclass(frozen=True)
class Sizes:
    storm_clients: int = 5000
    burst_clients: int = 1000
    clients: int = 400
    channels: int = 8
    rate: float = 40.0
    freeze_s: float = 10.0
    fuzz: int = 1000
    churn_channels: int = 100_000
    slow_seconds: float = 8.0
    #: How long to wait for clients to recover or catch up before counting.
    patience: float = 15.0


QUICK = Sizes(storm_clients=300, burst_clients=300, clients=60, channels=4, rate=20.0, freeze_s=2.0, fuzz=150,
              churn_channels=3000, slow_seconds=3.0, patience=5.0)  # fmt: skip


@dataclass
class Row:
    """One scenario's figures (None: not measured by that scenario)."""

    scenario: str
    published: int | None = None
    lost: int | None = None
    duplicated: int | None = None
    resets: int | None = None
    soft_refusals: int | None = None
    hard_refusals: int | None = None
    gave_up: int | None = None
    recovery_s: float | str | None = None
    notes: list[str] = field(default_factory=list)


# -- shared machinery ------------------------------------------------------------------


def connect(port: int, channels: list[str], n: int, tally: Tally, batch: int = 100) -> list[SSEClient]:
    """*n* clients spread over *channels*, connected in batches (a gentle ramp,
    so that the start is not itself a storm)."""
    clients = []
    for start in range(0, n, batch):
        wave = [SSEClient(port, channels[i % len(channels)], tally) for i in range(start, min(n, start + batch))]
        for client in wave:
            client.start()
        with gevent.Timeout(30, False):
            for client in wave:
                while not client.connected.is_set() and not client.closed:
                    client.connected.wait(1)
        clients.extend(wave)
    return clients


def settle(clients: list[SSEClient], ledger: Ledger, timeout: float) -> None:
    """Wait (bounded) until every client still trying has its channel's newest id."""
    deadline = time.monotonic() + timeout
    for client in clients:
        ids = ledger.published.get(client.channel)
        while ids and not client.closed and time.monotonic() < deadline:
            if any(event_id == ids[-1] for _, event_id, _ in client.received[-5:]):
                break
            gevent.sleep(0.05)


def recovery(
    clients: list[SSEClient], ledger: Ledger, moment: float, timeout: float, broken: str | None = None
) -> float | str:
    """Seconds from *moment* until every client still trying got an event
    published after it; if one never did, says so. Clients of the *broken*
    channel (one that cannot be published to any more) are not waited for."""
    deadline = time.monotonic() + timeout
    latest = moment
    for client in clients:
        while not client.closed and client.channel != broken:
            first = ledger.first_after(client.channel, moment)
            at = arrival(client, first) if first is not None else None
            if at is not None:
                latest = max(latest, at)
                break
            if time.monotonic() > deadline:
                return f"not within {timeout:g} s"
            gevent.sleep(0.05)
    return round(latest - moment, 2)


def account(row: Row, clients: list[SSEClient], ledger: Ledger, tally: Tally) -> Row:
    lost = duplicated = resets = announced = 0
    others: Counter[str] = Counter()
    for client in clients:
        a, b, c, d = ledger.check(client)
        lost, duplicated, resets, announced = lost + a, duplicated + b, resets + c, announced + d
        others += ledger.other_events(client)
    row.published = ledger.count
    row.lost, row.duplicated, row.resets = lost, duplicated, resets
    row.soft_refusals, row.hard_refusals, row.gave_up = tally.soft_refusals, tally.hard_refusals, tally.gave_up
    statuses = {k: v for k, v in tally.statuses.items() if k != 200}
    if statuses:
        row.notes.append(f"stream statuses {dict(sorted(statuses.items()))}")
    if announced:
        row.notes.append(f"{announced} events skipped after a reset")
    if others:
        row.notes.append(f"other events {dict(sorted(others.items()))}")
    if ledger.publish_refused:
        row.notes.append(f"publishes refused {dict(sorted(ledger.publish_refused.items()))}")
    return row


@contextlib.contextmanager
def attached(
    hub: Hub, n: int, channels: list[str], rate: float, patience: float = 8
) -> Iterator[tuple[list[SSEClient], Ledger, Tally]]:
    tally, ledger = Tally(), Ledger()
    clients = connect(hub.port, channels, n, tally)
    publisher = Publisher(hub.port, channels, ledger, rate)
    try:
        yield clients, ledger, tally
    finally:
        publisher.stop()
        settle(clients, ledger, patience)
        for client in clients:
            client.stop()


def channels_of(prefix: str, n: int) -> list[str]:
    return [f"{prefix}/{i}" for i in range(n)]


# -- the scenarios -------------------------------------------------------------------


def reconnect_storm(sizes: Sizes) -> Row:
    """Every worker restarted (gunicorn SIGHUP) under *storm_clients* streams:
    all of them re-subscribe with Last-Event-ID within [R/2, 3R/2]."""

    def fault(hub: Hub) -> None:
        old = hub.workers
        assert hub.process is not None
        hub.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 40
        while set(old) & set(hub.workers) and time.monotonic() < deadline:
            gevent.sleep(0.1)

    return _storm(f"reconnect storm: {sizes.storm_clients} clients, workers restarted (SIGHUP; Redis, 2 workers)",
                  sizes, fault)  # fmt: skip


def crash_storm(sizes: Sizes) -> Row:
    """One of two workers killed -9 (the OOM killer): its clients get no
    retry hint, so they all come back after the same default 3 s, at once."""

    def fault(hub: Hub) -> None:
        victim = hub.workers[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (victim in hub.workers or len(hub.workers) < 2) and time.monotonic() < deadline:
            gevent.sleep(0.1)

    return _storm(
        f"reconnect storm: {sizes.storm_clients} clients, a worker killed -9 (Redis, 2 workers)", sizes, fault
    )


def reconnect_burst(sizes: Sizes) -> Row:
    """A network blip: *burst_clients* streams of ONE worker cut at once; all
    of them re-subscribe with Last-Event-ID in the same instant (connected
    first, then every request sent in one go)."""
    n = sizes.burst_clients
    row = Row(f"reconnect burst: {n} clients re-subscribe at one instant with Last-Event-ID (Redis, 1 worker)")
    redis = Redis()
    hub = Hub("--redis", redis.url, "--worker-connections", str(n + 1000))
    try:
        channels = channels_of("burst", sizes.channels)
        with attached(hub, n, channels, sizes.rate, sizes.patience) as (clients, ledger, tally):
            gevent.sleep(1)
            gate = gevent.event.Event()
            for client in clients:
                client.gate = gate
                client.drop()
            deadline = time.monotonic() + 30
            while tally.at_gate < n and time.monotonic() < deadline:
                gevent.sleep(0.05)
            row.notes.append(f"{tally.at_gate} requests sent at once")
            moment = time.monotonic()
            gate.set()
            row.recovery_s = recovery(clients, ledger, moment, sizes.patience)
            row.notes.append(f"still subscribed at the end: {sum(c.open for c in clients)}/{len(clients)}")
        return account(row, clients, ledger, tally)
    finally:
        hub.close()
        redis.stop()


def _storm(name: str, sizes: Sizes, fault: Callable[[Hub], None]) -> Row:
    row = Row(name)
    redis = Redis()
    hub = Hub("--redis", redis.url, "--workers", "2", "--shutdown-retry", str(SHUTDOWN_RETRY),
              "--worker-connections", str(sizes.storm_clients + 1000))  # fmt: skip
    try:
        channels = channels_of("storm", sizes.channels)
        with attached(hub, sizes.storm_clients, channels, sizes.rate, sizes.patience) as (clients, ledger, tally):
            gevent.sleep(1)
            opened = tally.streams
            tally.soft_refusals = 0  # count the storm's only
            moment = time.monotonic()
            fault(hub)
            row.recovery_s = recovery(clients, ledger, moment, sizes.patience * 3)
            row.notes.append(f"{tally.streams - opened} streams reopened")
            row.notes.append(f"still subscribed at the end: {sum(c.open for c in clients)}/{len(clients)}")
        return account(row, clients, ledger, tally)
    finally:
        hub.close()
        redis.stop()


def _redis_fault(
    name: str,
    sizes: Sizes,
    fault: Callable[[Redis, Hub, Ledger], float],
    *options: str,
    persist: bool = False,
    broken: str | None = None,
) -> Row:
    """A hub on Redis with clients and a publisher; *fault* does its harm and
    returns the moment it ended (recovery is measured from there)."""
    row = Row(name)
    redis = Redis(persist=persist)
    hub = Hub("--redis", redis.url, "--shutdown-retry", str(SHUTDOWN_RETRY), *options)
    try:
        with attached(hub, sizes.clients, channels_of("r", sizes.channels), sizes.rate, sizes.patience / 2) as (
            clients,
            ledger,
            tally,
        ):
            gevent.sleep(1)
            ended = fault(redis, hub, ledger)
            row.recovery_s = recovery(clients, ledger, ended, sizes.patience, broken)
            gevent.sleep(1)
        if "Traceback" in hub.log():
            row.notes.append("tracebacks in the hub's log")
        return account(row, clients, ledger, tally)
    finally:
        hub.close()
        redis.stop()


def redis_killed(sizes: Sizes) -> Row:
    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        redis.kill()
        gevent.sleep(2)
        redis.start()
        return time.monotonic()

    return _redis_fault("Redis killed -9, restarted after 2 s (AOF, fsync always)", sizes, fault, persist=True)


def redis_frozen(sizes: Sizes) -> Row:
    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        redis.signal(signal.SIGSTOP)
        gevent.sleep(sizes.freeze_s)
        redis.signal(signal.SIGCONT)
        return time.monotonic()

    return _redis_fault(f"Redis frozen (SIGSTOP) for {sizes.freeze_s:g} s", sizes, fault)


def reader_killed(sizes: Sizes) -> Row:
    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        admin = redis.client()
        for _ in range(3):
            for entry in admin.client_list():
                if entry.get("cmd") in ("xread", "xread|"):
                    admin.client_kill_filter(_id=entry["id"])
            gevent.sleep(1)
        with contextlib.suppress(Exception):
            admin.execute_command("CLIENT", "KILL", "TYPE", "normal")
        admin.close()
        return time.monotonic()

    return _redis_fault("the reader's connection killed (CLIENT KILL ID x3, then TYPE normal)", sizes, fault)


def foreign_entry(sizes: Sizes) -> Row:
    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        admin = redis.client()
        admin.xadd("wsgi-eventsource:r/0", {"written": "by hand"})
        admin.close()
        return time.monotonic()

    return _redis_fault("a foreign entry (XADD by hand) in one channel", sizes, fault)


def wrong_type_key(sizes: Sizes) -> Row:
    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        # A channel with subscribers (so the reader reads it) becomes a string.
        admin = redis.client()
        admin.delete("wsgi-eventsource:r/0")
        admin.set("wsgi-eventsource:r/0", "a string, not a stream")
        admin.close()
        status, body = _status_only(hub.port, b"GET /events/r/0 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        soft = " (a soft refusal)" if status == 200 and "retry:" in body else ""
        hub_notes.append(f"a new subscribe to that channel: {status}{soft}")
        return time.monotonic()

    hub_notes: list[str] = []
    name = "a wrong-type key (DEL + SET on a subscribed channel's key; recovery: the other channels)"
    row = _redis_fault(name, sizes, fault, broken="r/0")
    row.notes.extend(hub_notes)
    return row


def lagging_reader(sizes: Sizes) -> Row:
    """The hub's reader falls behind by more than ``history`` events: its
    worker is frozen (SIGSTOP) while events go straight to Redis, where
    ``MAXLEN ~`` trims past the reader's position."""
    history = 50
    burst = 300 * sizes.channels  # 300 a channel: past MAXLEN ~ 50 (which keeps up to ~150)

    def fault(redis: Redis, hub: Hub, ledger: Ledger) -> float:
        from wsgi_eventsource import RedisBroker

        broker = RedisBroker(redis.url, history=history)
        worker = hub.workers[0]
        os.kill(worker, signal.SIGSTOP)
        try:
            for i in range(burst):
                channel = f"r/{i % sizes.channels}"
                ledger.record(channel, broker.publish(channel, f"{time.time_ns()} while the reader lags {i}"))
        finally:
            os.kill(worker, signal.SIGCONT)
            broker.close()
        return time.monotonic()

    name = f"a lagging reader: its worker frozen while {burst} events go to Redis (--history {history})"
    return _redis_fault(name, sizes, fault, "--history", str(history))


def slow_clients(sizes: Sizes) -> Row:
    """Fast C clients (latency per event) next to stalled and slow ones."""
    from bench.run import CLIENT, build_client

    build_client()
    row = Row("slow and stalled clients next to fast ones (memory broker)")
    fast, count, size = 200, int(sizes.slow_seconds * 50), 2048

    def measure(with_slow: bool) -> tuple[dict[str, Any], int, dict[str, Any]]:
        hub = Hub("--keepalive", "5")
        sockets: list[socket.socket] = []
        readers: list[gevent.Greenlet[..., None]] = []
        try:
            if with_slow:
                for i in range(200):
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.connect(("127.0.0.1", hub.port))
                    sock.sendall(b"GET /events/slow HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    sockets.append(sock)
                    if i % 2:  # every other one reads 1 KB a second; the rest never read
                        readers.append(gevent.spawn(_trickle, sock))
            client = subprocess.Popen(
                [str(CLIENT), "sub", "127.0.0.1", str(hub.port), "/events/slow", str(fast), str(count), "20"],
                stdout=subprocess.PIPE,
            )
            assert client.stdout is not None
            client.stdout.readline()  # READY
            base = hub.rss_kib()
            pad = "p" * size
            ledger = Ledger()
            for i in range(count):
                publish(hub.port, "slow", f"{time.time_ns()} {i} {pad}", ledger)
                gevent.sleep(1 / 50)
            out, _ = client.communicate(timeout=60)
            result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            peak = hub.rss_kib() - base
            _, body = http_request(hub.port, "GET", "/stats")
            return result, peak, json.loads(body)
        finally:
            for greenlet in readers:
                greenlet.kill(block=False)
            for sock in sockets:
                sock.close()
            hub.close()

    baseline, _, _ = measure(False)
    loaded, grown, stats = measure(True)
    row.published = count
    row.lost = (baseline["expected"] - baseline["events"]) + (loaded["expected"] - loaded["events"])
    row.duplicated = 0
    row.notes.append(f"fast p99 {baseline['p99_ms']:.1f} ms alone, {loaded['p99_ms']:.1f} ms next to 200 slow")
    row.notes.append(f"RSS +{grown / 1024:.1f} MiB; slow clients dropped {stats.get('slow_clients_dropped')}")
    return row


def _trickle(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(1024):
            gevent.sleep(1)


def _status_only(port: int, request: bytes, timeout: float = 10) -> tuple[int, str]:
    """Send raw bytes; the status of the answer (0: none), and the first body bytes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(request)
            raw = b""
            while b"\r\n\r\n" not in raw and len(raw) < 65536:
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
    except OSError:
        return 0, ""
    try:
        return int(raw.split(b" ", 2)[1]), raw.partition(b"\r\n\r\n")[2][:200].decode("latin-1")
    except (IndexError, ValueError):
        return 0, ""


def fuzzed(sizes: Sizes) -> Row:
    row = Row(f"{sizes.fuzz} fuzzed publish bodies + {sizes.fuzz} fuzzed subscribe URLs/headers")
    redis = Redis()
    hub = Hub("--redis", redis.url)
    try:
        rng = random.Random(8)
        publishes: Counter[int] = Counter()
        subscribes: Counter[int] = Counter()
        fives: list[bytes] = []
        for request in publish_requests(rng, sizes.fuzz):
            status, _ = _status_only(hub.port, request)
            publishes[status] += 1
            if status == 500:
                fives.append(request)
        for request in subscribe_requests(rng, sizes.fuzz):
            status, _ = _status_only(hub.port, request)
            subscribes[status] += 1
            if status == 500:
                fives.append(request)
        row.notes.append(f"publish statuses {dict(sorted(publishes.items()))}")
        row.notes.append(f"subscribe statuses {dict(sorted(subscribes.items()))}")
        row.notes.append(f"500s: {len(fives)}; no answer: {publishes[0] + subscribes[0]}")
        kinds: Counter[bytes] = Counter()
        for request in fives:
            kinds[request.partition(b"\r\n\r\n")[2][:24]] += 1
        for start, count in kinds.most_common(4):
            row.notes.append(f"{count} x 500 for a body starting {start!r}")
        return row
    finally:
        hub.close()
        redis.stop()


def churn(sizes: Sizes, broker: str) -> Row:
    """Short-lived channels (one event, every 100th subscribed for a moment)
    with --max-age 1: is everything back to the baseline once they expire?"""
    n = sizes.churn_channels
    row = Row(f"channel churn: {n:,} short-lived channels, --max-age 1 ({broker})")
    redis = Redis() if broker == "Redis" else None
    options = ["--redis", redis.url] if redis is not None else []
    hub = Hub(*options, "--max-age", "1")
    try:
        admin = redis.client() if redis is not None else None
        http_request(hub.port, "POST", "/publish/warmup", b"x")
        gevent.sleep(0.5)
        rss0, keys0 = hub.rss_kib(), admin.dbsize() if admin is not None else 0
        ledger = Ledger()
        queue = iter(range(n))

        def worker() -> None:
            for i in queue:
                publish(hub.port, f"job/{i}", "done", ledger)
                if i % 100 == 0:
                    _status_only(hub.port, f"GET /events/job/{i} HTTP/1.0\r\n\r\n".encode())

        started = time.monotonic()
        gevent.joinall([gevent.spawn(worker) for _ in range(16)], timeout=900)
        took = time.monotonic() - started
        peak, keys_peak = hub.rss_kib(), admin.dbsize() if admin is not None else 0
        gevent.sleep(3)  # max_age is 1 s
        http_request(hub.port, "POST", "/publish/warmup", b"x")  # touches one channel only
        gevent.sleep(0.5)
        rss1, keys1 = hub.rss_kib(), admin.dbsize() if admin is not None else 0
        row.published = ledger.count
        row.notes.append(f"{ledger.count / took:.0f} publishes/s")
        row.notes.append(f"RSS {rss0 / 1024:.1f} MiB before, {peak / 1024:.1f} at the end, {rss1 / 1024:.1f} 3 s later")
        if admin is not None:
            row.notes.append(f"Redis keys {keys0} before, {keys_peak} at the end, {keys1} 3 s later")
            admin.close()
        return row
    finally:
        hub.close()
        if redis is not None:
            redis.stop()


SCENARIOS: dict[str, Callable[[Sizes], Row]] = {
    "storm": reconnect_storm,
    "crash-storm": crash_storm,
    "burst": reconnect_burst,
    "redis-kill": redis_killed,
    "redis-freeze": redis_frozen,
    "reader-kill": reader_killed,
    "foreign-entry": foreign_entry,
    "wrong-type": wrong_type_key,
    "lagging-reader": lagging_reader,
    "slow-clients": slow_clients,
    "fuzz": fuzzed,
    "churn-redis": lambda sizes: churn(sizes, "Redis"),
    "churn-memory": lambda sizes: churn(sizes, "memory"),
}

__all__ = ["QUICK", "ROOT", "SCENARIOS", "Row", "Sizes"]
