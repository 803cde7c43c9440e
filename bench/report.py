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


def write_report(results: dict[str, Any], docs: Path, quick: bool = False) -> None:
    target = docs if not quick else Path(__file__).parent / "results"
    target.mkdir(parents=True, exist_ok=True)
    servers: dict[str, Any] = results["servers"]
    names = list(servers)
    ours = servers.get(OURS, {})
    sections = []

    # Idle memory and CPU.
    sizes = sorted({r["streams"] for s in servers.values() for r in s["idle"] if "streams" in r})
    rows = []
    for name in names:
        by_n = {r["streams"]: r for r in servers[name]["idle"] if "streams" in r}
        row = [servers[name]["label"]]
        for n in sizes:
            r = by_n.get(n)
            row.append(f"{_fmt(r['kib_per_stream'])} KiB" if r else "failed")
        largest = by_n.get(sizes[-1]) if sizes else None
        row.append(f"{_fmt(_get(largest, 'idle_cpu_percent'), 2)} %")
        ours_largest = (
            {r["streams"]: r for r in ours.get("idle", []) if "streams" in r}.get(sizes[-1]) if sizes else None
        )
        row.append(_ratio(_get(ours_largest, "kib_per_stream"), _get(largest, "kib_per_stream"), False))
        rows.append(row)
    header = ["server", *[f"RSS/stream at {n:,}" for n in sizes], f"idle CPU at {sizes[-1]:,}" if sizes else "idle CPU",
              "theirs / ours (memory)"]  # fmt: skip
    sections.append(("Idle streams: memory per stream", _table(header, rows)))

    # Fan-out latency.
    rows = []
    for name in names:
        for r in servers[name]["fanout"]:
            if "error" in r:
                rows.append([servers[name]["label"], "?", "error", r["error"][:60], "", "", "", "", ""])
                continue
            ours_r = next((o for o in ours.get("fanout", []) if o.get("connections") == r["connections"]), None)
            kept_rate = r["span_s"] <= 10 * 1.1  # 200 events at 20/s take 10 s
            rows.append([
                servers[name]["label"], _fmt(r["connections"]), f"{r['events']:,}/{r['expected']:,}",
                "yes" if kept_rate else f"no ({r['span_s']:.0f} s)",
                _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["max_ms"]),
                _fmt(r["p99_ms"] * 1000 / r["connections"]),
                _ratio(_get(ours_r, "p99_ms"), r["p99_ms"], False),
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
                ],
                rows,
            ),
        )
    )

    # Throughput.
    rows = []
    ours_t = ours.get("throughput")
    for name in names:
        r = servers[name]["throughput"]
        if not r or "error" in r:
            rows.append([servers[name]["label"], "error", (r or {}).get("error", "")[:60], "", ""])
            continue
        rows.append([
            servers[name]["label"], f"{r['events']:,}/{r['expected']:,}", _fmt(r["delivered_per_second"]),
            _fmt(r["p99_ms"]), _ratio(_get(ours_t, "delivered_per_second"), r["delivered_per_second"], True),
        ])  # fmt: skip
    sections.append(
        (
            "Throughput: 100 subscribers, publisher flat out",
            _table(["server", "delivered", "events/s delivered", "p99 ms", "ours / theirs"], rows),
        )
    )

    scale = results.get("scale_out")
    if scale:
        text = (
            f"The hub with ``--workers 2 --redis`` (not pinned): {scale.get('streams', 0):,} streams, "
            f"{scale.get('delivered', 0):,} of {scale.get('expected', 0):,} deliveries, "
            f"p50 {_fmt(scale.get('p50_ms'))} ms, p99 {_fmt(scale.get('p99_ms'))} ms."
            if "error" not in scale
            else f"failed: {scale['error']}"
        )
        sections.append(("Scale-out", text))

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
        " Latency runs from the publish time stamped into each event's data to its arrival at the client."
        " Ratios compare servers in the same run: the machine is shared and absolute numbers move between runs.",
        "",
    ]
    for title, content in sections:
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
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target / "bench-latency.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    write_report(json.loads(path.read_text()), Path(__file__).parent.parent / "docs")
