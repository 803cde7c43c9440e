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
