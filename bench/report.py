"""Turn bench results into ``docs/benchmarks.rst`` and two plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OURS = "eventsource"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "n/a"
    ratio = ours / theirs if higher_is_better else theirs / ours
    return f"{ratio:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""  # a scenario not run: its section is left out
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(line)
    return "\n".join(out)


def _get(result: dict[str, Any] | None, key: str) -> Any:
    if not result or "error" in result:
        return None
    return result.get(key)


#: The floor's server name (bench/run.py FLOOR_NAME): the reference each table's last column divides by.
FLOOR = "floor"


def _floor_header(servers: dict[str, Any], title: str) -> list[str]:
    """The floor column's header, if the run has the floor (else no column)."""
    return [title] if FLOOR in servers else []


def _floor_blank(servers: dict[str, Any]) -> list[str]:
    return [""] if FLOOR in servers else []


def _times(value: float | None, floor: float | None) -> str:
    """*value* as a multiple of the floor's; n/a when either is missing
    (or the floor's is not above 0: its RSS per idle stream can round to 0)."""
    if value is None or not floor or floor <= 0:
        return "n/a"
    return f"{value / floor:,.1f}x" if value / floor >= 10 else f"{value / floor:.2f}x"


def _floor_idle_cell(servers: dict[str, Any], largest: dict[str, Any] | None, streams: int) -> list[str]:
    """RSS per stream at the largest size over the floor's at the same size."""
    if FLOOR not in servers:
        return []
    floor = next((r for r in servers[FLOOR]["idle"] if r.get("streams") == streams), None)
    return [_times(_get(largest, "kib_per_stream"), _get(floor, "kib_per_stream"))]


def _floor_fanout_cell(servers: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """The fan-out p99 over the floor's at the same number of subscribers."""
    if FLOOR not in servers:
        return []
    floor = next((f for f in servers[FLOOR]["fanout"] if f.get("connections") == r["connections"]), None)
    return [_times(r["p99_ms"], _get(floor, "p99_ms"))]


def _floor_throughput_cell(servers: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """The floor's events delivered per second over this server's (how many times slower it is)."""
    if FLOOR not in servers:
        return []
    return [_times(_get(servers[FLOOR]["throughput"], "delivered_per_second"), r["delivered_per_second"] or None)]


def _floor_sections(results: dict[str, Any]) -> list[tuple[str, str]]:
    """What the floor is, when the run has it: every table's last column divides by it."""
    if FLOOR not in results["servers"]:
        return []
    text = (
        'The floor (``bench/floor.c``, the row "C floor") is not a server to choose: it is the cost of the system'
        " calls alone, the least any server must spend to deliver the same events. One C thread, epoll, no queue"
        " and no buffer per stream: it answers the same HTTP/1.0 stream requests with the same headers and frames"
        " as the hub (``id: <ms>-<i>``, ``data: <ns> <i> xxx...``), publishes on the same trigger"
        " (``POST /bench/publish``, paced as the Python servers' publisher is), formats each event once and writes"
        " it to every subscriber's socket, one blocking write(2) each (``TCP_NODELAY``, as gunicorn sets), nothing"
        " else; the load client checks every event at every subscriber as it does for the others. Each table's"
        " last column is every server's figure as a multiple of the floor's in the same run: memory (RSS per"
        " stream over the floor's: the floor keeps a descriptor and a 24-byte record per stream, its sockets'"
        " kernel buffers are not in any server's RSS), fan-out (p99 over the floor's), throughput (the floor's"
        " events delivered per second over the server's). The multiplexed scenario has no floor. One write(2) per"
        " subscriber per event is the floor of fan-out at 20 events/s, where every server writes each event alone;"
        " flat out, the Python servers coalesce the events queued while a stream's writer waits into one write, so"
        " they can pass this floor there (below 1.00x): ``bench/.build/floor PORT 64`` writes up to 64 due events"
        " to each socket at once, the floor of coalescing writers."
    )
    return [("The floor: the system calls alone", text)]


def _idle_section(servers: dict[str, Any], ours: dict[str, Any]) -> tuple[str, str] | None:
    """Idle memory and CPU: the section, or None when no run has idle streams."""
    sizes = sorted({r["streams"] for s in servers.values() for r in s["idle"] if "streams" in r})
    rows = []
    for name in servers:
        by_n = {r["streams"]: r for r in servers[name]["idle"] if "streams" in r}
        row = [servers[name]["label"]]
        for n in sizes:
            r = by_n.get(n)
            row.append(f"{_fmt(r['kib_per_stream'], 1 if r['kib_per_stream'] >= 1 else 2)} KiB" if r else "failed")
        largest = by_n.get(sizes[-1]) if sizes else None
        row.append(f"{_fmt(_get(largest, 'idle_cpu_percent'), 2)} %")
        ours_largest = (
            {r["streams"]: r for r in ours.get("idle", []) if "streams" in r}.get(sizes[-1]) if sizes else None
        )
        row.append(_ratio(_get(ours_largest, "kib_per_stream"), _get(largest, "kib_per_stream"), False))
        row += _floor_idle_cell(servers, largest, sizes[-1] if sizes else 0)
        rows.append(row)
    header = ["server", *[f"RSS/stream at {n:,}" for n in sizes], f"idle CPU at {sizes[-1]:,}" if sizes else "idle CPU",
              "theirs / ours (memory)", *_floor_header(servers, "memory / floor's")]  # fmt: skip
    if not sizes:
        return None
    return ("Idle streams: memory per stream", _table(header, rows))


def write_report(results: dict[str, Any], docs: Path, quick: bool = False) -> None:
    target = docs if not quick else Path(__file__).parent / "results"
    target.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Any] = results["servers"]
    names = list(servers)
    ours = servers.get(OURS, {})
    sections = _floor_sections(results)

    idle = _idle_section(servers, ours)
    if idle is not None:
        sections.append(idle)

    # Fan-out latency.
    rows = []
    for name in names:
        for r in servers[name]["fanout"]:
            if "error" in r:
                rows.append([servers[name]["label"], "?", "error", r["error"][:60], "", "", "", "", "",
                             *_floor_blank(servers)])  # fmt: skip
                continue
            ours_r = next((o for o in ours.get("fanout", []) if o.get("connections") == r["connections"]), None)
            kept_rate = r["span_s"] <= 10 * 1.1  # 200 events at 20/s take 10 s
            rows.append([
                servers[name]["label"], _fmt(r["connections"]), f"{r['events']:,}/{r['expected']:,}",
                "yes" if kept_rate else f"no ({r['span_s']:.0f} s)",
                _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["max_ms"]),
                _fmt(r["p99_ms"] * 1000 / r["connections"]),
                _ratio(_get(ours_r, "p99_ms"), r["p99_ms"], False), *_floor_fanout_cell(servers, r),
            ])  # fmt: skip
    sections.append(
        (
            "Fan-out: one channel, 20 events/s for 10 s, publish-to-receive latency (ms)",
            _table(
                [
                    "server",
                    "subscribers",
                    "delivered",
                    "kept 20/s",
                    "p50",
                    "p99",
                    "max",
                    "p99 µs/subscriber",
                    "theirs / ours (p99)",
                    *_floor_header(servers, "p99 / floor's"),
                ],
                rows,
            ),
        )
    )

    # Throughput.
    rows = []
    floor_column = _floor_header(servers, "floor's / theirs (events/s)")
    ours_t = ours.get("throughput")
    for name in names:
        r = servers[name]["throughput"]
        if r is None:
            continue
        if "error" in r:
            rows.append([servers[name]["label"], "error", (r or {}).get("error", "")[:60], "", "",
                         *_floor_blank(servers)])  # fmt: skip
            continue
        rows.append([
            servers[name]["label"], f"{r['events']:,}/{r['expected']:,}", _fmt(r["delivered_per_second"]),
            _fmt(r["p99_ms"]), _ratio(_get(ours_t, "delivered_per_second"), r["delivered_per_second"], True),
            *_floor_throughput_cell(servers, r),
        ])  # fmt: skip
    sections.append(
        (
            "Throughput: 100 subscribers, publisher flat out",
            _table(["server", "delivered", "events/s delivered", "p99 ms", "ours / theirs", *floor_column], rows),
        )
    )
    sections += _http_throughput_sections(servers)
    scale = results.get("scale_out")  # an older run's scenario (2 workers, 20,000 streams)
    if scale and not results.get("scale"):
        text = (
            f"The hub with ``--workers 2 --redis`` (not pinned): {scale.get('streams', 0):,} streams, "
            f"{scale.get('delivered', 0):,} of {scale.get('expected', 0):,} deliveries, "
            f"p50 {_fmt(scale.get('p50_ms'))} ms, p99 {_fmt(scale.get('p99_ms'))} ms."
            if "error" not in scale
            else f"failed: {scale['error']}"
        )
        sections.append(("Scale-out", text))
    sections += _scale_sections(results)

    sections += _multiplexed_sections(results)
    if results.get("hot_path"):
        sections.append(_hot_path_section(results["hot_path"]))
    if results.get("memory_breakdown"):
        sections.append(_memory_breakdown_section(results["memory_breakdown"]))

    _write(results, sections, target)


#: The server every other is compared with in the http-throughput table.
NCHAN = "nchan"


def _http_throughput_sections(servers: dict[str, Any]) -> list[tuple[str, str]]:
    """Throughput published over HTTP (the hub and nchan), as ratios to nchan's."""
    runs = {name: s["http_throughput"] for name, s in servers.items() if s.get("http_throughput")}
    if not runs:
        return []
    theirs = runs.get(NCHAN)
    rows = []
    for name, r in runs.items():
        label = servers[name]["label"]
        if "error" in r:
            rows.append([label, "error", r["error"][:60], "", "", "", "", ""])
            continue
        publisher = r.get("publisher", {})
        rows.append([
            label, f"{r['checked']:,}/{r['expected']:,}" + ("" if r["delivered_all"] else " (NOT all)"),
            _fmt(publisher.get("per_second"), 0), _fmt(r["delivered_per_second"]), _fmt(r["p50_ms"]),
            _fmt(r["p99_ms"]), _ratio(r["delivered_per_second"], _get(theirs, "delivered_per_second"), True),
            _ratio(_get(theirs, "p99_ms"), r["p99_ms"], False),
        ])  # fmt: skip
    text = (
        "The throughput row again, but every server published over HTTP, through its own publisher"
        " (the hub: ``POST /publish/bench``; nchan: its ``nchan_publisher`` location), by the C client: flat out,"
        " 32 requests in flight on one keep-alive connection, the same for both. 100 subscribers, every event"
        " checked at every subscriber (its data names the channel, in order; the hub's ids too). Ratios are"
        " against nchan in the same run (delivered: ours / nchan's; p99: ours / nchan's)."
    )
    table = _table(
        ["server", "checked", "publishes/s", "events/s delivered", "p50 ms", "p99 ms", "delivered / nchan",
         "p99 / nchan"],
        rows,
    )  # fmt: skip
    return [("Throughput published over HTTP: 100 subscribers, publisher flat out", f"{text}\n\n{table}")]


#: What a partial run may bring to a whole run's results (see :func:`merge_results`).
_MERGED_TOP = ("scale", "storm", "subscription_cost", "hot_path")


def merge_results(whole: dict[str, Any], partial: dict[str, Any]) -> dict[str, Any]:
    """*whole* (a whole run's results) with what *partial* measured put in
    place of the same measurements: per server, each scenario it ran (idle,
    fan-out, throughput, multiplexed); the scale runs per kind of Redis and
    the storm runs per label (before, after). The machine line stays the
    whole run's; every scale and storm result carries its own date."""
    merged: dict[str, Any] = json.loads(json.dumps(whole))  # a deep copy
    for name, entry in partial.get("servers", {}).items():
        target = merged.setdefault("servers", {}).setdefault(name, {"label": entry["label"], "idle": [], "fanout": [],
                                                                      "throughput": None})  # fmt: skip
        for scenario, result in entry.items():
            if result not in ([], None):
                target[scenario] = result
    for key in _MERGED_TOP:
        value = partial.get(key)
        if isinstance(value, dict) and key in ("scale", "storm"):
            merged.setdefault(key, {}).update(value)
        elif value is not None:
            merged[key] = value
    if partial.get("scale"):
        merged.pop("scale_out", None)  # superseded by the scale scenario
    return merged


def _cpu(seconds: list[float], digits: int = 1) -> str:
    return f"{sum(seconds):.{digits}f} s"


def _scale_sections(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The scale scenarios (one Redis, a 3-master cluster) and the storm."""
    sections = []
    runs: dict[str, Any] = results.get("scale") or {}
    if runs:
        rows, notes = [], []
        for kind, r in runs.items():
            label = {"single": "one Redis", "cluster": "Redis Cluster, 3 masters"}.get(kind, kind)
            if "error" in r:
                rows.append([label, "error", r["error"][:70], *[""] * 10])
                continue
            hub_events = sum(r["hub_cpu_events_s"])
            deliveries = r["delivered"] or 1
            rows.append([
                label, f"{r['streams']:,}", f"{r['workers']} x {r['max_connections']:,}", str(r["load_clients"]),
                f"{r['delivered']:,}/{r['expected']:,}" + ("" if r["delivered_all"] else " (NOT all)"),
                _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["hub_kib_per_stream"], 2),
                f"{_fmt(sum(r['hub_rss_kib']) / 1024)} MiB", _cpu(r["hub_cpu_open_s"]),
                f"{_cpu(r['hub_cpu_events_s'])} ({_fmt(hub_events * 1e6 / deliveries)} µs)",
                f"{_cpu(r['redis_cpu_open_s'], 2)} / {_cpu(r['redis_cpu_events_s'], 2)}",
                f"{_fmt(sum(r['redis_rss_kib']) / 1024)} MiB",
            ])  # fmt: skip
            opening = r["redis_commands_open"]
            notes.append(
                f"{label} ({r['measured']}): the {r['streams']:,} streams opened in {_fmt(r['open_seconds'])} s;"
                f" descriptors held per worker: {', '.join(f'{n:,}' for n in r['hub_fds'])}; p99 per load client:"
                f" {', '.join(_fmt(x) for x in r['p99_ms_per_client'])} ms; Redis commands while the streams opened:"
                f" {opening['total']['calls']:,} (XREAD {opening['xread']['calls']:,},"
                f" CLIENT UNBLOCK {opening['client|unblock']['calls']:,}); XREADs during the"
                f" {r['events']} events: {r['redis_commands_events']['xread']['calls']:,}"
                + (
                    f" ({', '.join(f'{n:,}' for n in r['redis_xread_events_per_server'])} on the masters)."
                    if len(r.get("redis_xread_events_per_server", [])) > 1
                    else "."
                )
                + _shutdown_problems(r.get("hub_errors", ""))
            )
        first: dict[str, Any] = next((r for r in runs.values() if "error" not in r), {})
        intro = (
            f"``wsgi-eventsource serve --workers N --redis URL`` (gunicorn, gevent workers, not pinned: the workers,"
            f" Redis and the load clients share the machine's {results['machine'].get('cores', '?')} cores) holding"
            f" the streams of {first.get('load_clients', '?')} load-client processes (each its own share of the"
            " streams, all on a channel of its own: on the cluster the channels fall on every master in turn; each"
            " client connects from its own loopback address, since one source address reaches the hub through"
            " ~28,000 ephemeral ports); ``--max-connections`` per worker with room to spare (the kernel does not"
            f" spread the streams evenly). {first.get('events', '?')} events to each channel, published"
            f" {first.get('interval_s', '?')} s apart through a RedisBroker; every stream must get every event"
            " and none may end early. Latency: publish to receive,"
            " the worst load client's p50 and p99. CPU: the hub's workers summed (while the streams opened, and"
            " while the events were delivered, with that per delivery), Redis's (opening / events). The machine"
            " allows 20,000 descriptors per process (``ulimit -Hn``), hence the workers and load clients. Shared"
            " machine: compare ratios. Reproduce: ``python -m bench.run --scenarios scale,cluster --merge-into"
            " docs/benchmarks.json``."
        )
        table = _table(
            ["Redis", "streams", "workers x max", "load clients", "delivered", "p50 ms", "p99 ms", "hub KiB/stream",
             "hub RSS", "hub CPU opening", "hub CPU events (per delivery)", "Redis CPU open / events",
             "Redis RSS"],
            rows,
        )  # fmt: skip
        sections.append(("Scale: streams through several workers and Redis", "\n\n".join([intro, table, *notes])))
    storms: dict[str, Any] = results.get("storm") or {}
    if storms:
        sections.append(_storm_section(storms))
    return sections


def _shutdown_problems(stderr: str) -> str:
    """What the hub wrote to stderr (after every delivery was counted: when it was stopped), in short."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    crashed = sum("was sent SIG" in line for line in lines)
    first = next((line for line in lines if "was sent SIG" not in line), lines[0])
    return f" The hub wrote to stderr when it was stopped: ``{first[:100]}``" + (
        f" ({crashed} worker(s) killed by a signal)." if crashed else "."
    )


def _storm_section(storms: dict[str, Any]) -> tuple[str, str]:
    """The subscription storm: every labelled run (before, after) side by side."""
    labels = [label for label in ("before", "after") if label in storms] + [
        label for label in storms if label not in ("before", "after")
    ]
    metrics: list[tuple[str, Any]] = [
        ("channels", lambda r: _fmt(r["channels"])),
        ("all live", lambda r: "yes" if r["all_live"] else f"NO ({r['live']:,})"),
        ("seconds until every subscribe() returned", lambda r: _fmt(r["subscribe_s"], 2)),
        ("seconds until every channel is live", lambda r: _fmt(r["live_s"], 2)),
    ]
    for phase, title in (("commands_subscribing", "while subscribing"), ("commands_total", "in all")):
        for command in ("xread", "client|unblock", "evalsha", "total"):
            shown = command.upper().replace("|", " ") if command != "total" else "all commands"
            metrics.append((
                f"{shown} {title}: calls",
                lambda r, p=phase, c=command: _fmt(r[p][c]["calls"]),
            ))  # fmt: skip
        metrics.append((
            f"Redis time in XREAD {title} (ms)",
            lambda r, p=phase: _fmt(r[p]["xread"]["usec"] / 1000, 0),
        ))  # fmt: skip
        metrics.append((
            f"Redis time in all commands {title} (ms)",
            lambda r, p=phase: _fmt(r[p]["total"]["usec"] / 1000, 0),
        ))  # fmt: skip
    metrics.append((
        "Redis time of one XREAD naming every channel's key, nothing new (µs)",
        lambda r: _fmt(r["xread_all_keys"]["usec_per_call"], 0) if r.get("xread_all_keys") else "n/a",
    ))  # fmt: skip
    rows = []
    for name, show in metrics:
        cells = []
        for label in labels:
            r = storms[label]
            cells.append(show(r) if "error" not in r else ("error" if name == "channels" else ""))
        rows.append([name, *cells])
    errors = [f"{label}: {storms[label]['error']}" for label in labels if "error" in storms[label]]
    described = "; ".join(
        f"{label}: ``{storms[label].get('commit', '?')[:70]}`` ({storms[label].get('measured', '?')})"
        for label in labels
        if "error" not in storms[label]
    )
    channels = next((storms[label]["channels"] for label in labels if "error" not in storms[label]), 10_000)
    cluster = "cluster" in storms
    text = (
        f"{channels:,} channels subscribed at once in one process (``broker.subscribe()`` of a RedisBroker in one"
        " greenlet each, gevent's monkey-patching on, as in a hub worker), then one event published to each"
        " channel; a channel is live when its subscription got its event. Redis commands from ``INFO"
        " commandstats`` (all commands include those run inside the broker's Lua scripts: XADD, EXISTS, ...)."
        + (
            " The cluster column: the same on a 3-master Redis Cluster, its commands summed over the masters (no"
            " XREAD there can name every channel's key: CROSSSLOT)."
            if cluster
            else ""
        )
        + f" Runs: {described}. Reproduce: ``python -m bench.run --scenarios storm --storm-before /tmp/before"
        + (" --storm-cluster" if cluster else "")
        + " --merge-into docs/benchmarks.json`` (``/tmp/before``: ``git worktree add /tmp/before <commit>``)."
    )
    table = _table(["measured", *labels], rows)
    return ("Subscription storm", "\n\n".join([text, table, *errors]))


def _write(results: dict[str, Any], sections: list[tuple[str, str]], target: Path) -> None:
    machine = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    body = [
        "Benchmarks",
        "==========",
        "",
        "Written by ``python -m bench.run`` (see ``bench/run.py`` for every setting); do not edit by hand.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, Python {machine['python']};"
        f" {versions}; {machine['nginx']}; {machine['nchan']}. Run on {machine['date']}.",
        "",
        "Each server runs ONE worker process pinned to core 0; the load client (``bench/loadclient.c``, C with"
        " epoll, HTTP/1.0 streams) is pinned to core 1 and reads every byte. Python servers publish from inside"
        " the process (``POST /bench/publish`` starts a publisher greenlet or task that encodes each event and"
        " hands it to every subscriber); nchan is published to over HTTP by the C client, as nchan is meant to be."
        " The http-throughput rows publish to the hub over HTTP too, through its own publisher, exactly as to nchan."
        " Latency runs from the publish time stamped into each event's data to its arrival at the client."
        " Ratios compare servers in the same run: the machine is shared and absolute numbers move between runs.",
        "",
    ]
    for title, content in sections:
        if content:
            body += [title, "-" * len(title), "", content, ""]
    body += [
        ".. image:: bench-memory.png",
        "   :alt: Memory per idle stream against the number of streams.",
        "",
        ".. image:: bench-latency.png",
        "   :alt: Latency distribution of the fan-out scenario.",
        "",
    ]
    (target / "benchmarks.rst").write_text("\n".join(body))
    _plots(results, target)


def _multiplexed_sections(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The multiplexed scenario: memory per stream and fan-out, single-channel
    next to multiplexed, per server that has it."""
    runs = {name: s["multiplexed"] for name, s in results["servers"].items() if s.get("multiplexed")}
    if not runs:
        return []
    labels = {name: results["servers"][name]["label"] for name in runs}
    first = next((r for r in runs.values() if "error" not in r), None)
    if first is None:
        return [("Multiplexed streams", "\n\n".join(f"{labels[n]}: failed: {r['error']}" for n, r in runs.items()))]
    n, channels = first["clients"], first["channels"]
    cost = results.get("subscription_cost") or {}
    per_sub = _get(cost, "subscribe_one_bytes")

    memory_rows, fan_rows, notes = [], [], []
    for name, r in runs.items():
        if "error" in r:
            memory_rows.append([labels[name], "error", r["error"][:60], "", "", "", ""])
            continue
        m = r["memory"]
        single, separate, many = (_get(m[k], "kib_per_stream") for k in ("single", "separate", "multiplexed"))
        per_client = _get(m["separate"], "kib_per_client")
        memory_rows.append([
            labels[name], f"{_fmt(single)} KiB", f"{_fmt(separate)} KiB", f"{_fmt(per_client)} KiB",
            f"{_fmt(many)} KiB", _ratio(many, single, True), _ratio(per_client, many, True),
        ])  # fmt: skip
        if name == "hub" and single and many and per_sub:
            target = 1.3 * single + channels * per_sub / 1024
            notes.append(
                f"{labels[name]}: a multiplexed stream of {channels} channels takes {_fmt(many)} KiB, "
                f"{_fmt(many - single)} KiB more than a single-channel stream ({_fmt(single)} KiB); one more "
                f"channel's ``broker.subscribe()`` costs {_fmt(per_sub, 0)} bytes (tracemalloc), "
                f"``subscribe_many()`` of {channels} channels {_fmt(_get(cost, 'subscribe_many_bytes'), 0)} bytes. "
                f"The target, 1.3 x a single-channel stream + {channels} subscriptions = {_fmt(target)} KiB, is "
                f"{'met' if many <= target else 'NOT met'}."
            )
        fans = r["fanout"]
        p99_single = _get(fans.get("single"), "p99_ms")
        for kind in ("single", "multiplexed"):
            f = fans.get(kind)
            if not f or "error" in f:
                fan_rows.append([labels[name], kind, "error", (f or {}).get("error", "")[:60], "", "", "", ""])
                continue
            checks = sum(f.get(k, 0) for k in ("bad_data", "bad_order", "bad_id", "other_events"))
            fan_rows.append([
                labels[name], f"{kind} ({channels} channels)" if kind == "multiplexed" else "single channel",
                f"{f['events']:,}/{f['expected']:,}",
                f"ids {f['ids_checked']}: " + ("all right" if not checks and f["delivered_all"] else f"{checks} wrong"),
                _fmt(f["p50_ms"]), _fmt(f["p99_ms"]), _fmt(f["max_ms"]), _ratio(p99_single, f["p99_ms"], False),
            ])  # fmt: skip

    intro = (
        f"{n:,} clients, each with ONE stream of {channels} channels"
        f" (``GET /events?channel=c0&...&channel=c{channels - 1}`` through the hub;"
        " nchan: ``nchan_channel_id`` of the channels split on ``,``), against"
        f" {n:,} single-channel streams and {n:,} x {channels} separate single-channel streams, each in a fresh"
        " server of the same run. Fan-out: 20 events/s for 10 s on ``c0``; the load client checks every event at"
        " every stream: its data names ``c0`` and numbers run 0, 1, 2, ... (nothing lost, twice or out of order),"
        " no ``stream-reset`` or other event type, and its id: ``plain``, an event id greater than the one before;"
        f" ``cursor:{channels}``, the cursor of {channels} entries with ``c0`` first and its own id greater than the"
        " one before (nchan's ids are its own: data only). Reproduce: ``bash bench/run.sh`` (everything), or"
        " ``bash bench/run.sh --only hub,nchan --scenarios multiplexed --skip-scale-out``."
    )
    memory = _table(
        ["server", f"single-channel, {n:,} streams", f"{n:,} x {channels} separate, per stream", "per client",
         f"multiplexed x {channels}, per stream", "multiplexed / single", f"{channels} separate / multiplexed"],
        memory_rows,
    )  # fmt: skip
    fan = _table(
        ["server", "stream", "delivered", "every delivery checked", "p50 ms", "p99 ms", "max ms", "p99 / single"],
        fan_rows,
    )
    lines = cost.get("subscribe_many_lines") or []
    if lines:
        notes.append(
            f"Where the broker-side bytes of one multiplexed stream of {channels} channels go (tracemalloc,"
            " ``subscribe_many()`` not yet attached, per stream):\n\n"
            + _table(["bytes", "allocated at", "code"], [[_fmt(b, 0), at, _code(at, code)] for at, code, b in lines])
        )
    return [
        ("Multiplexed streams", "\n\n".join([intro, memory, *notes])),
        (f"Multiplexed streams: fan-out on one of {channels} channels, 20 events/s for 10 s", fan),
    ]


def _code(at: str, code: str) -> str:
    if at.startswith("bench/"):
        return "the request's channel names (each stream has its own ``str`` objects)"
    return f"``{code}``" if code else ""


def _hot_path_section(hot: dict[str, Any]) -> tuple[str, str]:
    """The single-channel rows served by this checkout and by the one before."""
    rows = []
    for row in hot["rows"]:
        for metric, numbers in row.items():
            if metric in ("server", "row"):
                continue
            digits = 0 if metric == "delivered_per_second" else 1
            rows.append([
                row["server"], row["row"], metric.removesuffix("_ms") + (" ms" if metric.endswith("_ms") else ""),
                _fmt(numbers["before"], digits), _fmt(numbers["after"], digits),
                f"{numbers['after_over_before']:.2f}x" if numbers["after_over_before"] else "n/a",
            ])  # fmt: skip
    sizes = ",".join(str(n) for n in hot.get("fanout_sizes", []))
    text = (
        f"The single-channel rows (fan-out at 20 events/s for 10 s; throughput: 100 subscribers, publisher flat"
        f" out) served by this checkout's package (after: {hot.get('after_commit', '?')[:60]}) and by the one in"
        f" ``{hot['before']}`` (before: {hot.get('before_commit', '?')[:60]}), with the same harness, alternating"
        f" before and after, {hot['rounds']} rounds ({hot.get('note') or 'in one run'}); medians of the rounds."
        " Reproduce:"
        f" ``git worktree add /tmp/before <commit>`` then ``python -m bench.run --only eventsource,hub"
        f" --compare-with /tmp/before --rounds {hot['rounds']} --fanout-sizes {sizes}``."
        " The EventSource rows run code neither commit touched: their spread is the noise of the machine."
    )
    table = _table(["server", "row", "metric", "before", "after", "after / before"], rows)
    return ("Single-channel hot path: before and after", f"{text}\n\n{table}")


def _plots(results: dict[str, Any], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers: dict[str, Any] = results["servers"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in servers.values():
        points = [(r["streams"], r["kib_per_stream"]) for r in s["idle"] if "streams" in r]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=s["label"])
    ax.set_xlabel("open streams")
    ax.set_ylabel("RSS per stream (KiB)")
    ax.set_title("Memory per idle stream (one worker)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run without these scenarios plots nothing
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target / "bench-memory.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in servers.values():
        runs = [r for r in s["fanout"] if "histogram" in r]
        if not runs:
            continue
        r = max(runs, key=lambda r: r["connections"])
        total = sum(count for _, count in r["histogram"]) or 1
        xs, ys, seen = [], [], 0
        for ms, count in r["histogram"]:
            seen += count
            xs.append(ms)
            ys.append(seen / total)
        ax.step(xs, ys, where="post", label=f"{s['label']} ({r['connections']:,} subs)")
    ax.set_xscale("log")
    ax.set_xlabel("publish-to-receive latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Fan-out latency, 20 events/s (CDF)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # a run without these scenarios plots nothing
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target / "bench-latency.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    write_report(json.loads(path.read_text()), Path(__file__).parent.parent / "docs")


#: The columns of the memory breakdown, in order (``bench/memory_breakdown.py``'s setups).
_BREAKDOWN_SETUPS = {"hub": "hub", "eventsource": "EventSource", "stock": "EventSource, stock worker",
                     "hub-multiplexed": "hub, 10 channels"}  # fmt: skip
#: The setup on gunicorn's stock ``-k gevent`` worker (a greenlet per stream); the others run on the library's.
_STOCK = "stock"


def _outside_arenas(result: dict[str, Any]) -> float | None:
    """Anonymous RSS (not ``[heap]``) per stream that neither pymalloc's
    arenas nor glibc's mmap-ed blocks (its big ones, such as a set of
    10,000 subscribers) account for."""
    allocators = result.get("allocators_bytes_per_stream", {})
    if "arenas_bytes" not in allocators:
        return None
    arenas_and_mmapped: float = allocators["arenas_bytes"] + allocators.get("malloc_mmapped", 0)
    anonymous: float = result["smaps_kib_per_stream"]["anonymous"] * 1024
    return anonymous - arenas_and_mmapped


def _ours(parts: dict[str, float]) -> float:
    """wsgi_eventsource's own part (its label changed with the worker: found by its prefix)."""
    return next((v for k, v in parts.items() if k.startswith("ours")), 0.0)


def _part(parts: dict[str, float], prefix: str) -> float:
    """The sum of the parts whose label starts with *prefix* (``"gunicorn"``: the request's and the worker's)."""
    return sum(v for k, v in parts.items() if k.startswith(prefix))


def _library_worker_notes(name: str, result: dict[str, Any]) -> list[str]:
    """What an idle stream on the library's worker holds (no greenlet)."""
    parts = result["parts_bytes_per_stream"]
    suspended = sum(g["count"] for g in result.get("greenlets", []))
    greenlets = (
        f"On the library's worker an idle stream has no greenlet: with {result['streams']:,} {name} streams open,"
        f" {suspended:,} greenlets wait in the whole worker (its own), and their saved stacks do not grow with the"
        " streams."
        if suspended < result["streams"] // 2
        else f"On the library's worker, {suspended:,} greenlets wait with {result['streams']:,} {name} streams open."
    )
    notes = [
        f"{greenlets} What a stream holds is its ``Connection``, its subscription, the ``SocketWriter`` that writes it"
        " from the hub, with its io watcher (the socket watched for reading) and the socket itself, and the environ,"
        f" which the ``Connection`` keeps. Of the {_fmt(result['traced_bytes_per_stream'], 0)} bytes tracemalloc"
        f" sees per {name} stream, {_fmt(_ours(parts), 0)} are wsgi_eventsource's objects,"
        f" {_fmt(_part(parts, 'gunicorn'), 0)} gunicorn's and {_fmt(_part(parts, 'gevent'), 0)} gevent's."
    ]
    kept = result.get("request_kept_by_environ")
    if kept:
        objects = ", ".join(f"``{t}``" for t, count in kept["objects_per_stream"].items()
                            if count >= 0.9 and (t[:1].isupper() or t.startswith("_") or t == "socket"))  # fmt: skip
        rest = _part(parts, "gunicorn") + _part(parts, "gevent") - kept["bytes_per_stream"]
        notes.append(
            "gunicorn's and gevent's share is mostly the environ and what it refers to: its ``wsgi.input`` (the"
            " request's body reader, with the request's unreader and buffers), its ``wsgi.early_hints`` (a closure"
            " over the request, the socket and the response) and ``gunicorn.socket`` (the accepted gevent socket,"
            " closed once the stream is taken over) keep gunicorn's request objects alive. Taking these three"
            " entries out of every environ at the end of the traced run freed"
            f" {_fmt(kept['bytes_per_stream'], 0)} bytes per {name} stream ({objects or 'no object per stream'},"
            f" and their lists and buffers). The rest of the two parts is {_fmt(rest, 0)} bytes"
        )
        if "environ_bytes_per_stream" in kept:
            notes[-1] += (
                ", of which the environ's own dict and the strings made for it are"
                f" {_fmt(kept['environ_bytes_per_stream'], 0)} (``sys.getsizeof``)"
            )
        notes[-1] += "."
    return notes


def _stock_worker_notes(breakdown: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """Where the greenlet of a stream on the stock ``-k gevent`` worker waits, and what it costs."""
    streams = result["streams"]
    notes = []
    for wait in [g for g in result.get("greenlets", []) if g["count"] >= streams // 2][:1]:
        chain = " < ".join(f"``{f.split(':', 1)[1]}``" for f in wait["frames"])
        notes.append(
            "On the stock worker, each stream keeps the greenlet that answered its request: it waits with"
            f" {wait['python_frames']} Python frames ({chain}) and"
            f" {wait['stack_saved_median']:,} bytes of saved C stack (median)."
        )
    stacks = breakdown.get("saved_stacks")
    if not stacks:
        return notes
    ours_frame = stacks["in___next___of_a_for_loop"] - stacks["in_its_function"]
    notes.append(
        "That saved stack is the C frames between the greenlet's start and its switch: gevent's ``Greenlet.run``"
        " (Cython), CPython's eval loop for the server's frames (gunicorn's chain enters through"
        " ``_handle_and_close_when_done(*args)``, a call CPython does not inline), the eval loop again for"
        " ``Stream.__next__`` (called from the server's ``for`` loop through the iterator slot), then"
        f" greenlet's switch. In one process: a greenlet parked in its own function saves"
        f" {stacks['in_its_function']:,} bytes, one plain call deeper {stacks['one_call_deeper']:,}, in a"
        f" ``__next__`` of a ``for`` loop {stacks['in___next___of_a_for_loop']:,} (``Stream.__next__``'s share:"
        f" {ours_frame:,}), in a C-level iterator that calls the switch with no Python frame"
        f" {stacks['in_a_c_iterator_of_a_for_loop']:,}."
    )
    parts = result["parts_bytes_per_stream"]
    theirs = sum(v for k, v in parts.items() if not k.startswith("ours")) - ours_frame
    notes.append(
        f"Ours, of the {_fmt(result['traced_bytes_per_stream'], 0)} bytes tracemalloc sees per stream on the stock"
        f" worker: {_fmt(_ours(parts), 0)} in wsgi_eventsource's objects (with the ``Stream`` the server iterates)"
        f" and about {ours_frame:,} of the saved stack (``Stream.__next__``'s eval-loop frame). The other"
        f" {_fmt(theirs, 0)} are the server's: gunicorn's request, environ and response, gevent's socket and"
        " greenlet, and the rest of the saved stack."
    )
    return notes


def _outside_notes(breakdown: dict[str, Any], setups: dict[str, dict[str, Any]]) -> str:
    """What RSS holds beyond what tracemalloc sees, per setup, and the anonymous memory neither allocator has."""
    gaps = "; ".join(f"{_BREAKDOWN_SETUPS[k]} {_fmt(r['rss_kib_per_stream'] * 1024 - r['traced_bytes_per_stream'], 0)}"
                     for k, r in setups.items())  # fmt: skip
    free = "; ".join(
        f"{_BREAKDOWN_SETUPS[k]} {_fmt(a['arenas_bytes'] - a['allocated_blocks'], 0)}"
        for k, r in setups.items()
        if "allocated_blocks" in (a := r.get("allocators_bytes_per_stream", {}))
    )
    note = (
        f"What RSS holds beyond what tracemalloc sees, in bytes per stream: {gaps}. pymalloc's arenas grow by what"
        f" their allocated blocks hold and their free blocks and pools ({free or 'n/a'}), glibc's malloc holds the"
        " blocks over pymalloc's 512 bytes (the environ's dict table, and on the stock worker the saved stacks), in"
        " its ``[heap]`` and in space it had free before the streams."
    )
    ours = {k: v for k, r in setups.items() if k != _STOCK and (v := _outside_arenas(r)) is not None}
    if ours:
        values = "; ".join(f"{_BREAKDOWN_SETUPS[k]} {_fmt(v, 0)}" for k, v in ours.items())
        note += (
            " Anonymous memory outside both (and outside glibc's mmap-ed blocks), per stream on the library's"
            f" worker: {values}"
        )
        if max(abs(v) for v in ours.values()) < 1024:
            note += (
                ": nothing to speak of (below zero where the arenas have pages not touched yet, which RSS does not"
                " count), as no greenlet runs Python code for a stream."
            )
        else:
            note += ", seen neither by tracemalloc nor by either allocator."
    stock = setups.get(_STOCK)
    outside = _outside_arenas(stock) if stock else None
    if outside is not None:
        note += (
            f" On the stock worker it is {_fmt(outside, 0)} bytes per stream ({_pages(outside)}),"
            " seen neither by tracemalloc nor by either allocator: the frame data stack of the stream's greenlet"
            " (CPython 3.11+ maps it in chunks of 16 KiB, greenlet keeps one per greenlet that runs Python code, and"
            " its first page is touched)."
        )
    pages = breakdown.get("greenlet_pages")
    if pages and outside is not None:
        note += (
            f" In one process, such memory per waiting greenlet: {_fmt(pages['python_gevent'], 0)} bytes for a"
            f" gevent greenlet parked in a Python function, {_fmt(pages['python_raw'], 0)} for a raw greenlet, and"
            f" {_fmt(pages['c_raw'], 0)} for one whose ``run`` is a C function (no Python frame)."
        )
    return note


def _pages(size: float) -> str:
    """*size* bytes in 4 KiB pages, in words."""
    pages = size / 4096
    return "about one 4 KiB page" if 0.8 <= pages <= 1.2 else f"about {pages:.1f} pages of 4 KiB"


def _memory_breakdown_section(breakdown: dict[str, Any]) -> tuple[str, str]:
    """Where the memory of an idle stream goes (``bench/memory_breakdown.py``):
    bytes per stream, part by part, per setup; what a stream holds on the
    library's worker, and on the stock one the stack its greenlet waits with;
    then the top source lines of the first setup."""
    setups = {k: breakdown[k] for k in _BREAKDOWN_SETUPS if k in breakdown and "error" not in breakdown[k]}
    if not setups:
        return ("Where the memory of a stream goes", "")
    first_name, first = next(iter(setups.items()))
    streams = first["streams"]
    header = ["bytes per idle stream", *[_BREAKDOWN_SETUPS[k] for k in setups]]

    def row(label: str, value: Any) -> list[str]:
        return [label, *[_fmt(value(r), 0) if value(r) is not None else "n/a" for r in setups.values()]]

    rows = [
        row("RSS of the worker (not traced)", lambda r: r["rss_kib_per_stream"] * 1024),
        row("  of it, anonymous mappings", lambda r: r["smaps_kib_per_stream"]["anonymous"] * 1024),
        row("  of it, ``[heap]`` (glibc malloc)", lambda r: r["smaps_kib_per_stream"]["heap"] * 1024),
        *[row(label, lambda r, k=key: r.get("allocators_bytes_per_stream", {}).get(k)) for label, key in (
            ("pymalloc's arenas (untraced run)", "arenas_bytes"),
            ("  of them, in allocated blocks", "allocated_blocks"),
            ("glibc malloc, in use (untraced run)", "malloc_in_use"),
        )],
        row("anonymous memory outside both", _outside_arenas),
        row("allocated, as tracemalloc sees it", lambda r: r["traced_bytes_per_stream"]),
        *[row(f"  {part}", lambda r, p=part: r["parts_bytes_per_stream"].get(p))
          for part in first["parts_bytes_per_stream"]],
        row("greenlet._stack_saved (not traced run)", lambda r: r["greenlet_stack_bytes_per_stream"]),
        row("kernel, not in RSS: per end of a connection", lambda r: r.get("kernel_per_end", {}).get("bytes")),
    ]  # fmt: skip
    stock = (
        f' but "{_BREAKDOWN_SETUPS[_STOCK]}": the same EventSource app on gunicorn\'s stock ``-k gevent``, where each'
        " stream keeps the greenlet that answered its request"
        if _STOCK in setups
        else ""
    )
    intro = (
        f"``python -m bench.memory_breakdown`` ({streams:,} idle streams per setup, one gunicorn worker as above; the"
        " worker wraps the bench app in ``bench/servers/memory_probe.py``). Every setup runs on the library's worker"
        " (``wsgi_eventsource.gunicorn_worker.GeventWorker``: it writes an open stream from the hub, with no"
        f" greenlet){stock}. Each setup runs twice: untraced, for RSS and ``/proc/<pid>/smaps``, and with tracemalloc"
        " inside the worker, a snapshot with no stream open against one with all of them. The kernel's row is the"
        " size of the slab objects of one end of an idle connection (``/proc/slabinfo``: its socket, inode, file,"
        " dentry and epoll item; an idle stream holds no socket buffers). Run on"
        f" {breakdown.get('machine', {}).get('date', 'n/a')}."
    )
    lines = [
        [f"``{line['at']}``", f"``{line['code'][:70]}``", _fmt(line["bytes"], 0), _fmt(line["blocks"], 1)]
        for line in first["lines"][:16]
    ]
    notes = []
    library = next(((k, r) for k, r in setups.items() if k != _STOCK), None)
    if library:
        notes += _library_worker_notes(_BREAKDOWN_SETUPS[library[0]], library[1])
    if _STOCK in setups:
        notes += _stock_worker_notes(breakdown, setups[_STOCK])
    notes.append(_outside_notes(breakdown, setups))
    notes.append("The kernel's side (the socket, file and epoll objects) is not in RSS at all.")
    name = _BREAKDOWN_SETUPS[first_name]
    return (
        "Where the memory of a stream goes",
        "\n\n".join([
            intro, _table(header, rows), *notes,
            f"The source lines that allocate the most per stream ({name}, traced run; bytes and blocks per stream):",
            _table(["line", "code", "bytes", "blocks"], lines),
        ]),
    )  # fmt: skip
