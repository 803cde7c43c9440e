"""A smoke run of the benchmark harness (not a benchmark: timing is not checked
here), so that ``python -m bench.run`` keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.server, pytest.mark.slow]


def smoke(*args: str) -> None:
    """``python -m bench.run --smoke *args*``, which must succeed (its output on failure)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_bench_smoke_run_delivers_every_event(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    smoke("--only", "eventsource,hub", "--skip-scale-out", "--output", str(output))
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
    smoke("--only", only, "--scenarios", "multiplexed", "--skip-scale-out", "--output", str(output))
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


def test_bench_smoke_http_throughput_checks_every_delivery(tmp_path: Path) -> None:
    """Issue 12: the http-throughput scenario publishes over HTTP through
    each server's own publisher (the hub's ``/publish/bench``, nchan's
    ``/pub``) with the C client, every publish answered 2xx, and the load
    client checked every event at every subscriber (data, order; the hub's
    ids); the report has its table, with ratios to nchan."""
    output = tmp_path / "http.json"
    only = "hub,nchan" if NCHAN.exists() else "hub"
    smoke("--only", only, "--scenarios", "http-throughput", "--skip-scale-out", "--output", str(output))
    results = json.loads(output.read_text())
    for name in only.split(","):
        run = results["servers"][name]["http_throughput"]
        assert "error" not in run, run
        assert run["delivered_all"], run
        assert run["checked"] == run["expected"] == run["events"] == 100 * 200, run
        assert run["publisher"]["ok"] == run["publisher"]["sent"] == 200, run
        assert run["ids_checked"] == ("plain" if name == "hub" else "none")
        assert run["delivered_per_second"] > 0
    report = Path(ROOT, "bench", "results", "benchmarks.rst").read_text()
    assert "Throughput published over HTTP" in report
    if "nchan" in only:
        assert "delivered / nchan" in report


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


def test_bench_smoke_scale_and_storm_merge_into_a_whole_run(tmp_path: Path) -> None:
    """Issue 11 (measured scale): the scale scenario serves its streams with
    ``serve --workers N --redis`` (N >= 3) to several load clients and counts
    every delivery, with the CPU and RSS of every worker and of Redis, on one
    Redis and on a real 3-master Redis Cluster (every master read); the
    storm gets every channel live and counts the Redis commands; all merge
    into a whole run's results (``--merge-into``), whose other scenarios stay,
    and the report beside it shows all of them."""
    whole = tmp_path / "benchmarks.json"
    whole.write_text(Path(ROOT, "docs", "benchmarks.json").read_text())
    before = json.loads(whole.read_text())
    smoke("--scenarios", "scale,cluster,storm", "--output", str(tmp_path / "smoke.json"), "--merge-into", str(whole))
    runs = json.loads((tmp_path / "smoke.json").read_text())["scale"]
    for kind, servers in (("single", 1), ("cluster", 3)):
        scale = runs[kind]
        assert "error" not in scale, scale
        assert scale["workers"] >= 3, scale
        assert scale["load_clients"] == 4, scale
        assert scale["delivered"] == scale["expected"] == scale["streams"] * scale["events"] > 0, scale
        assert scale["delivered_all"], scale
        assert scale["closed_early"] == 0, scale
        assert len(scale["hub_rss_kib"]) == len(scale["hub_cpu_events_s"]) == scale["workers"], scale
        assert sum(scale["hub_fds"]) >= scale["streams"], scale  # every worker's streams are its descriptors
        assert len(scale["redis_rss_kib"]) == scale["redis_servers"] == servers, scale
        assert all(rss > 0 for rss in scale["hub_rss_kib"] + scale["redis_rss_kib"]), scale
        assert 0 < scale["p50_ms"] <= scale["p99_ms"], scale
        # The events were read from every server: on the cluster, from each master.
        assert scale["redis_servers_used"] == servers, scale
        assert all(n > 0 for n in scale["redis_xread_events_per_server"]), scale

    merged = json.loads(whole.read_text())
    storm = merged["storm"]["after"]
    assert storm["all_live"], storm
    assert storm["live"] == storm["channels"] > 0, storm
    # Every channel subscribed once (CURRENT) and published to once: at least 2 EVALSHA each.
    assert storm["commands_total"]["evalsha"]["calls"] >= 2 * storm["channels"], storm
    assert storm["commands_total"]["xread"]["calls"] > 0, storm
    assert storm["xread_all_keys"]["keys"] == storm["channels"], storm
    assert storm["xread_all_keys"]["usec_per_call"] > 0, storm
    assert merged["servers"] == before["servers"]  # the whole run's scenarios are kept
    assert merged["scale"] == runs
    assert "scale_out" not in merged  # superseded
    report = (tmp_path / "benchmarks.rst").read_text()
    for title in ("Scale: streams through several workers and Redis", "Subscription storm", "Fan-out: one channel"):
        assert title in report, title


def test_scale_sizing_fits_the_descriptor_limit() -> None:
    """Issue 11: 50,000 streams take at least 4 workers (at least 3 for any
    size) with every worker's streams, and their 10 % reserve of gunicorn
    connections, under 20,000 descriptors; the workers hold the streams with
    a quarter to spare, since the kernel spreads them unevenly."""
    from bench.scale import hub_workers_for

    for streams in (400, 2000, 20_000, 50_000, 60_000):
        workers, worker_connections, max_connections = hub_workers_for(streams)
        assert workers >= (4 if streams >= 40_000 else 3), (streams, workers)
        assert max_connections < worker_connections < 20_000 - 100, (streams, worker_connections)
        assert workers * max_connections >= streams * 1.25, (streams, workers, max_connections)
        assert max_connections >= min(streams, 15_000), (streams, max_connections)  # room for a skewed spread


def test_load_client_connects_from_source_address() -> None:
    """Issue 11: the load client's streams come from SOURCE_ADDRESS (so that
    several clients get past the ~28,000 ephemeral ports of one address),
    and an address that is not one is refused with a message naming it."""
    import socket

    from bench import run

    run.build_client()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        client = subprocess.Popen(
            [str(run.CLIENT), "sub", "127.0.0.1", str(port), "/events", "3", "0", "1"],
            stdout=subprocess.PIPE, env={"SOURCE_ADDRESS": "127.0.0.7"},
        )  # fmt: skip
        try:
            peers, accepted = [], []
            for _ in range(3):
                conn, peer = listener.accept()
                accepted.append(conn)
                peers.append(peer[0])
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
            assert client.stdout is not None
            assert client.stdout.readline().startswith(b"READY 3")
        finally:
            for conn in accepted:
                conn.close()
            client.kill()
            client.communicate(timeout=10)
    assert peers == ["127.0.0.7"] * 3
    refused = subprocess.run(
        [str(run.CLIENT), "sub", "127.0.0.1", str(port), "/events", "1", "0", "1"],
        env={"SOURCE_ADDRESS": "localhost"}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "SOURCE_ADDRESS is not an IPv4 address: localhost" in refused.stderr


def test_bench_refuses_an_unknown_server_name(tmp_path: Path) -> None:
    """Bench: ``--only ours,hub`` ran the hub alone and said nothing of ``ours``
    (no server has that name): an unknown name is an error that names it."""
    output = tmp_path / "out.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "ours", "--compare-with", str(tmp_path),
         "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--only: unknown ours" in run.stderr
    assert "known: floor, eventsource, hub, stock, naive, starlette, nchan" in run.stderr
    assert not output.exists()


def test_bench_smoke_storm_on_a_cluster(tmp_path: Path) -> None:
    """Issue 11 (one reader per master): ``--storm-cluster`` runs the storm on
    a real 3-master Redis Cluster too, next to the one-Redis run: every
    channel live, the commands summed over the masters, and the report shows
    it as a column of its own. Its probe of one XREAD naming every channel's
    key failed there (CROSSSLOT), after the storm itself, and made the
    cluster's result an error; on a cluster there is no such read, so it is
    left out (null)."""
    whole = tmp_path / "benchmarks.json"
    whole.write_text(Path(ROOT, "docs", "benchmarks.json").read_text())
    smoke(
        "--scenarios", "storm", "--storm-cluster", "--output", str(tmp_path / "smoke.json"), "--merge-into", str(whole)
    )
    storms = json.loads((tmp_path / "smoke.json").read_text())["storm"]
    assert set(storms) == {"after", "cluster"}, storms
    cluster = storms["cluster"]
    assert "error" not in cluster, cluster
    assert cluster["redis"] == "cluster", cluster
    assert cluster["all_live"], cluster
    assert cluster["live"] == cluster["channels"] == storms["after"]["channels"] > 0, cluster
    assert cluster["commands_total"]["evalsha"]["calls"] >= 2 * cluster["channels"], cluster
    assert cluster["xread_all_keys"] is None, cluster
    assert storms["after"]["xread_all_keys"]["keys"] == storms["after"]["channels"], storms["after"]
    report = (tmp_path / "benchmarks.rst").read_text()
    assert "The cluster column: the same on a 3-master Redis Cluster" in report
    assert "--storm-cluster --merge-into" in report
    header = next(line for line in report.splitlines() if line.startswith("measured "))
    assert header.split()[-1] == "cluster", header


def test_bench_refuses_storm_cluster_without_the_storm(tmp_path: Path) -> None:
    """Bench: ``--storm-cluster`` with scenarios that leave out the storm
    would do nothing, silently: it is a usage error that says why."""
    output = tmp_path / "out.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--scenarios", "scale", "--storm-cluster", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--storm-cluster: the storm is not among the scenarios run" in run.stderr
    assert not output.exists()


def test_memory_breakdown_smoke_names_every_part(tmp_path: Path) -> None:
    """Issue 12 (memory): ``bench/memory_breakdown.py`` runs the hub on the
    library's gunicorn worker and EventSource on the stock ``-k gevent``
    worker with a few streams and writes where their memory goes: RSS and
    smaps per stream, every greenlet's saved C stack and where it waits,
    tracemalloc's bytes per part, what the environ keeps of gunicorn's
    request, the kernel's side; and the report renders them, each note about
    the setup it describes. (After the library's worker came, this test
    still expected a greenlet per hub stream, and the report said so.)"""
    output = tmp_path / "memory.json"
    whole = tmp_path / "benchmarks.json"
    whole.write_text(json.dumps({"machine": {"cpu": "x", "cores": 2, "kernel": "k", "python": "3", "nginx": "",
                                             "nchan": "", "date": "d"}, "servers": {}}))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "bench.memory_breakdown", "--streams", "50", "--setups", "hub,stock", "--settle",
         "0.5", "--output", str(output), "--merge-into", str(whole)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    breakdown = json.loads(output.read_text())["memory_breakdown"]
    hub, stock = breakdown["hub"], breakdown["stock"]
    for setup in (hub, stock):
        assert "error" not in setup, setup
        assert setup["streams"] == 50
        assert setup["rss_kib_per_stream"] > 0
        parts = setup["parts_bytes_per_stream"]
        assert parts["ours (Connection, subscription, Stream or SocketWriter)"] > 0, parts
        assert parts["gunicorn (request, environ, response)"] > 0, parts
        assert sum(parts.values()) == pytest.approx(setup["traced_bytes_per_stream"], rel=0.05), parts
        assert any(line["at"].startswith("wsgi_eventsource/") for line in setup["lines"]), setup["lines"]
        allocators = setup["allocators_bytes_per_stream"]
        assert allocators["allocated_blocks"] > 0, allocators  # pymalloc's, read inside the worker
        if os.access("/proc/slabinfo", os.R_OK):  # root only
            assert setup["kernel_per_end"]["bytes"] > 0, setup["kernel_per_end"]
    # The stock worker: one greenlet per stream, all waiting in the same place.
    waiting = stock["greenlets"][0]
    assert waiting["count"] == 50, stock["greenlets"]
    assert waiting["frames"][0] == "wsgi_eventsource/stream.py:__next__", waiting
    assert 500 < waiting["stack_saved_median"] < 64 * 1024, waiting
    assert stock["parts_bytes_per_stream"]["greenlet's saved C stack"] > 500, stock["parts_bytes_per_stream"]
    # The library's worker: no greenlet per stream; the environ keeps gunicorn's request alive.
    assert sum(g["count"] for g in hub["greenlets"]) < 10, hub["greenlets"]
    assert hub["parts_bytes_per_stream"]["greenlet's saved C stack"] < 50, hub["parts_bytes_per_stream"]
    assert any(line["at"].startswith("wsgi_eventsource/socket_writer.py") for line in hub["lines"]), hub["lines"]
    kept = hub["request_kept_by_environ"]
    assert kept["objects_per_stream"].get("Request") == 1.0, kept
    assert kept["bytes_per_stream"] > 500, kept
    assert kept["environ_bytes_per_stream"] > 500, kept
    assert set(breakdown["greenlet_pages"]) == {"python_gevent", "python_raw", "c_raw"}, breakdown
    report = (tmp_path / "benchmarks.rst").read_text()
    section = report[report.index("Where the memory of a stream goes") :]
    assert "greenlet's saved C stack" in section
    assert "EventSource, stock worker" in section
    assert "On the library's worker an idle stream has no greenlet" in section
    assert "On the stock worker, each stream keeps the greenlet that answered its request" in section
    assert "``SocketWriter``" in section
    assert "gunicorn ``-k gevent``, one" not in section  # the old intro: every setup on the stock worker


def test_bench_smoke_floor_delivers_every_event(tmp_path: Path) -> None:
    """Issue 12 (the floor): the C floor (bench/floor.c, one thread writing
    each event to every socket) is built and run as a server like the others,
    passes the same checks (every event at every subscriber) in idle, fan-out
    and throughput, and the report shows the floor and its ratio column."""
    output = tmp_path / "floor.json"
    smoke("--only", "floor", "--skip-scale-out", "--output", str(output))
    floor = json.loads(output.read_text())["servers"]["floor"]
    assert "error" not in floor["idle"][0], floor["idle"]
    assert floor["idle"][0]["streams"] == 100
    assert floor["idle"][0]["kib_per_stream"] < 1, floor["idle"]  # a descriptor and a record per stream
    assert floor["fanout"][0]["delivered_all"], floor["fanout"]
    assert floor["throughput"]["delivered_all"], floor["throughput"]
    assert floor["throughput"]["delivered_per_second"] > 0, floor["throughput"]
    assert "multiplexed" not in floor  # it has no multiplexed streams: left out
    report = Path(ROOT, "bench", "results", "benchmarks.rst").read_text()
    assert "The floor: the system calls alone" in report
    assert "p99 / floor's" in report


def test_report_shows_every_server_as_a_ratio_of_the_floor(tmp_path: Path) -> None:
    """Issue 12 (the floor): each table gains a column, each server's figure
    over the floor's from the same run (memory and p99: theirs / the floor's;
    throughput: the floor's / theirs); a run without the floor has no such
    column, and a floor figure of 0 gives n/a, not a division by zero."""
    from bench import report

    def server(label: str, kib: float, p99: float, per_second: int) -> dict[str, Any]:
        fan = {"connections": 10, "events": 20, "expected": 20, "span_s": 1.0, "p50_ms": 1.0, "p99_ms": p99,
               "max_ms": p99, "delivered_all": True}  # fmt: skip
        return {"label": label, "idle": [{"streams": 100, "kib_per_stream": kib, "idle_cpu_percent": 0.0}],
                "fanout": [fan], "throughput": {**fan, "delivered_per_second": per_second}}  # fmt: skip

    machine = {"cpu": "c", "cores": 2, "kernel": "k", "python": "3", "nginx": "n", "nchan": "m", "date": "d"}
    runs = {"eventsource": server("ours", 12.0, 8.0, 100_000), "floor": server("the floor", 0.5, 2.0, 400_000)}
    results: dict[str, Any] = {"machine": machine, "servers": runs}
    report.write_report(results, tmp_path, quick=False)
    text = (tmp_path / "benchmarks.rst").read_text()
    ours = [line for line in text.splitlines() if line.startswith("ours ")]
    assert len(ours) == 3, text  # idle, fan-out, throughput
    assert [line.split()[-1] for line in ours] == ["24.0x", "4.00x", "4.00x"], ours
    floor = [line for line in text.splitlines() if line.startswith("the floor ")]
    assert [line.split()[-1] for line in floor] == ["1.00x"] * 3, floor

    results["servers"]["floor"]["idle"][0]["kib_per_stream"] = 0.0
    report.write_report(results, tmp_path, quick=False)
    ours = [line for line in (tmp_path / "benchmarks.rst").read_text().splitlines() if line.startswith("ours ")]
    assert ours[0].split()[-1] == "n/a", ours

    del results["servers"]["floor"]
    report.write_report(results, tmp_path, quick=False)
    text = (tmp_path / "benchmarks.rst").read_text()
    assert "floor" not in text, text
