"""A smoke run of the benchmark harness (not a benchmark: timing is not checked
here), so that ``python -m bench.run`` keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_bench_smoke_run_delivers_every_event(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--only", "eventsource,hub", "--skip-scale-out",
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    for name in ("eventsource", "hub"):
        server = results["servers"][name]
        assert "error" not in server["idle"][0], server["idle"]
        assert server["idle"][0]["kib_per_stream"] > 0
        assert server["fanout"][0]["delivered_all"], server["fanout"]
        assert server["throughput"]["delivered_all"], server["throughput"]
        assert server["fanout"][0]["p99_ms"] < 1000
    assert Path(ROOT, "bench", "results", "benchmarks.rst").exists()


NCHAN = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")


def test_bench_smoke_multiplexed_checks_every_delivery(tmp_path: Path) -> None:
    """Issue 9 (performance): the multiplexed scenario runs and the load
    client checked every event at every stream (data, order, the cursor id
    with the event's channel first), next to single-channel streams."""
    output = tmp_path / "multiplexed.json"
    only = "hub,nchan" if NCHAN.exists() else "hub"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--only", only, "--scenarios", "multiplexed",
         "--skip-scale-out", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(output.read_text())
    for name in only.split(","):
        run = results["servers"][name]["multiplexed"]
        assert "error" not in run, run
        clients, channels = run["clients"], run["channels"]
        assert channels == 10
        memory = run["memory"]
        assert memory["single"]["streams"] == memory["multiplexed"]["streams"] == clients
        assert memory["separate"]["streams"] == clients * channels
        assert all(memory[kind]["kib_per_stream"] > 0 for kind in ("single", "separate", "multiplexed"))
        for kind in ("single", "multiplexed"):
            fan = run["fanout"][kind]
            assert fan["delivered_all"], fan
            assert fan["checked"] == fan["expected"] == clients * int(20 * 1.0), fan
        ids = run["fanout"]["multiplexed"]["ids_checked"]
        assert ids == ("cursor:10" if name == "hub" else "none")
    cost = results["subscription_cost"]
    assert 0 < cost["subscribe_one_bytes"] < cost["subscribe_many_bytes"], cost
    assert "Multiplexed streams" in Path(ROOT, "bench", "results", "benchmarks.rst").read_text()


def test_load_client_check_mode_counts_wrong_deliveries() -> None:
    """The check mode of the load client can fail: a stream whose events do
    not match what it is told to expect (another channel, a cursor of another
    size, a plain id) has every event counted wrong, while a client told the
    truth about the same stream counts none."""
    from bench import run

    run.build_client()
    hub = next(server for server in run.servers() if server.name == "hub")
    channels = [f"c{k}" for k in range(10)]
    path, clients, count = hub.path_of(channels), 5, 10
    expectations = {
        "right": ("c0", "cursor:10"),
        "channel": ("c1", "cursor:10"),
        "entries": ("c0", "cursor:9"),
        "plain": ("c0", "plain"),
    }
    with run.running(hub):
        subscribers = {
            name: run.subscribe(hub, clients, count, 10, path=path, check=check) for name, check in expectations.items()
        }
        assert hub.trigger(count, 200, 64, "c0") is None
        results = {name: run.finish(client, 60) for name, client in subscribers.items()}
    total = clients * count
    for name, result in results.items():
        assert result["checked"] == total, (name, result)
        assert result["bad_order"] == result["other_events"] == 0, (name, result)
        # "events" counts the events whose data was right (their latency is recorded).
        assert result["events"] == (0 if name == "channel" else total), (name, result)
    assert results["right"]["bad_data"] == results["right"]["bad_id"] == 0, results["right"]
    assert results["channel"]["bad_data"] == total, results["channel"]
    assert results["channel"]["bad_id"] == total, results["channel"]  # c0 first, not c1
    assert results["entries"]["bad_id"] == total + clients, results["entries"]  # and each starting cursor
    assert results["plain"]["bad_id"] == total, results["plain"]
