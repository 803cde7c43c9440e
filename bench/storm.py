"""The subscription storm, in a process of its own (as a hub worker: gevent's
monkey-patching first): *channels* channels subscribed at once through one
RedisBroker, one greenlet each, as a reconnect storm subscribes them. Then
one event is published to each channel, and we wait until every subscription
has it. Prints one JSON line:

* ``subscribe_s``: until every ``subscribe()`` returned;
* ``live_s``: until every subscription got its event (from the start);
* the Redis commands issued (``INFO commandstats``, summed over the servers
  given, less this script's own ``INFO``), while subscribing and in all:
  ``xread``, ``client|unblock``, ``evalsha`` and the total, calls and the
  microseconds Redis spent in them.
* on one Redis, what one ``XREAD`` naming every channel's key costs (none
  on a cluster: ``xread_all_keys`` is null).

    python -m bench.storm --url redis://127.0.0.1:6379/0 --ports 6379 --channels 10000

``bench.run`` starts the Redis and runs this (``--scenarios storm``).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  # after patch_all, as in a hub worker
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

COUNTED = ("xread", "client|unblock", "evalsha")
#: This script's own commands, left out of the totals.
OWN = ("info",)


def commandstats(ports: list[int]) -> dict[str, dict[str, int]]:
    """``INFO commandstats`` summed over the servers on *ports*: command -> calls, usec."""
    import redis

    total: dict[str, dict[str, int]] = {}
    for port in ports:
        client = redis.Redis(port=port)
        try:
            for name, stats in client.info("commandstats").items():
                entry = total.setdefault(name.removeprefix("cmdstat_"), {"calls": 0, "usec": 0})
                entry["calls"] += int(stats["calls"])
                entry["usec"] += int(stats["usec"])
        finally:
            client.close()
    return total


def difference(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The commands counted between two :func:`commandstats`, and their total."""

    def spent(name: str) -> dict[str, int]:
        a, b = after.get(name, {"calls": 0, "usec": 0}), before.get(name, {"calls": 0, "usec": 0})
        return {"calls": a["calls"] - b["calls"], "usec": a["usec"] - b["usec"]}

    counted: dict[str, Any] = {name: spent(name) for name in COUNTED}
    every = {name: spent(name) for name in after if name not in OWN}
    counted["total"] = {
        "calls": sum(s["calls"] for s in every.values()),
        "usec": sum(s["usec"] for s in every.values()),
    }
    others = sorted((s["calls"], name) for name, s in every.items() if name not in COUNTED and s["calls"])
    counted["others"] = {name: every[name] for _, name in reversed(others)}
    return counted


def probe_xread(port: int, keys: list[str], calls: int = 20) -> dict[str, Any]:
    """What one ``XREAD`` naming every key costs Redis when nothing is new
    (as a reader's read does, before it blocks): *calls* of them, each key
    at ``$``, not blocking; the microseconds per call from ``INFO
    commandstats`` (Redis's own time, not the round trip)."""
    import redis

    client = redis.Redis(port=port)
    try:
        before = commandstats([port]).get("xread", {"calls": 0, "usec": 0})
        for _ in range(calls):
            client.xread(dict.fromkeys(keys, "$"))
        after = commandstats([port]).get("xread", {"calls": 0, "usec": 0})
    finally:
        client.close()
    usec = (after["usec"] - before["usec"]) / max(1, after["calls"] - before["calls"])
    return {
        "keys": len(keys),
        "calls": calls,
        "usec_per_call": round(usec, 1),
        "usec_per_key": round(usec / len(keys), 3),
    }


def run(url: str, ports: list[int], channels: int, timeout: float) -> dict[str, Any]:
    from wsgi_eventsource import RedisBroker

    broker = RedisBroker(url)
    publisher = RedisBroker(url)  # its own pool: publishing does not wait behind the subscribers
    names = [f"storm-{i}" for i in range(channels)]
    subscriptions: list[Any] = [None] * channels

    def subscribe(i: int) -> None:
        subscriptions[i] = broker.subscribe(names[i], None)[0]

    try:
        publisher.ping()
        start_stats = commandstats(ports)
        started = time.monotonic()
        greenlets = [gevent.spawn(subscribe, i) for i in range(channels)]  # all at once, as a storm
        gevent.joinall(greenlets, timeout=timeout, raise_error=True)
        if not all(g.successful() for g in greenlets):
            raise RuntimeError(f"subscribing {channels} channels took over {timeout} s")
        subscribed = time.monotonic()
        subscribe_stats = commandstats(ports)

        pool = gevent.pool.Pool(50)
        for name in names:
            pool.spawn(publisher.publish, name, "live")
        pool.join(timeout=timeout, raise_error=True)
        published = time.monotonic()

        pending = list(range(channels))
        deadline = started + timeout
        while pending and time.monotonic() < deadline:
            pending = [i for i in pending if not subscriptions[i].buffer]
            if pending:
                gevent.sleep(0.005)
        live = time.monotonic()
        end_stats = commandstats(ports)
        # A cluster refuses an XREAD of keys in several slots (CROSSSLOT), and
        # its readers read only the channels that rang: no such read to probe.
        cluster = url.startswith("redis+cluster")
        xread_probe = None if cluster else probe_xread(ports[0], [broker.prefix + name for name in names])
    finally:
        publisher.close()
        broker.close()
    return {
        "channels": channels,
        "live": channels - len(pending),
        "all_live": not pending,
        "subscribe_s": round(subscribed - started, 3),
        "publish_s": round(published - subscribed, 3),
        "live_s": round(live - started, 3),
        "commands_subscribing": difference(subscribe_stats, start_stats),
        "commands_total": difference(end_stats, start_stats),
        "xread_all_keys": xread_probe,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the RedisBroker URL")
    parser.add_argument("--ports", required=True, help="comma-separated ports of every Redis server (127.0.0.1)")
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=600, help="seconds the whole storm may take")
    args = parser.parse_args()
    ports = [int(p) for p in args.ports.split(",")]
    print(json.dumps(run(args.url, ports, args.channels, args.timeout)), flush=True)


if __name__ == "__main__":
    main()
