"""The fault suite's own checks: its loss accounting (a table, no servers), and
a smoke run of ``python -m bench.faults --quick`` so that it keeps working
(not a measurement: the figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.faults.clients import Ledger, SSEClient, Tally
from bench.faults.scenarios import SCENARIOS
from tests.conftest import ROOT

PUBLISHED = ["10-0", "11-0", "12-0", "13-0", "14-0"]


def client_that_received(*received: tuple[str, str], start: str = "9-0", closed: bool = False) -> SSEClient:
    client = SSEClient(0, "c", Tally())
    client.start_id = start
    client.received = [(kind, event_id, 0.0) for kind, event_id in received]
    client.closed = closed
    return client


M, R = "message", "stream-reset"


@pytest.mark.parametrize(
    ("received", "start", "closed", "expected"),
    [
        pytest.param([(M, i) for i in PUBLISHED], "9-0", False, (0, 0, 0, 0), id="everything-once"),
        pytest.param([(M, "10-0"), (M, "13-0"), (M, "14-0")], "9-0", False, (2, 0, 0, 0), id="silent-gap-is-loss"),
        pytest.param([(M, "10-0"), (R, "10-0"), (M, "13-0"), (M, "14-0")], "9-0", False, (0, 0, 1, 2),
                     id="announced-gap-is-not-loss"),
        pytest.param([(M, i) for i in PUBLISHED] + [(M, "14-0")], "9-0", False, (0, 1, 0, 0), id="duplicate"),
        pytest.param([(M, "10-0"), (M, "11-0")], "9-0", False, (3, 0, 0, 0), id="tail-never-arrived"),
        pytest.param([(M, "10-0"), (M, "11-0")], "9-0", True, (0, 0, 0, 0), id="gave-up-tail-not-counted"),
        pytest.param([(M, "13-0"), (M, "14-0")], "12-0", False, (0, 0, 0, 0), id="starts-where-it-subscribed"),
        pytest.param([(M, i) for i in PUBLISHED] + [("stream-error", "14-0")], "9-0", False, (0, 0, 0, 0),
                     id="other-event-types-are-not-duplicates"),
        pytest.param([(M, "10-0"), (M, "99-0"), (M, "11-0")] + [(M, i) for i in PUBLISHED[2:]], "9-0", False,
                     (0, 0, 0, 0), id="foreign-id-ignored"),
    ],
)  # fmt: skip
def test_the_ledger_counts_loss_event_by_event(
    received: list[tuple[str, str]], start: str, closed: bool, expected: tuple[int, int, int, int]
) -> None:
    ledger = Ledger()
    for event_id in PUBLISHED:
        ledger.record("c", event_id)
    assert ledger.check(client_that_received(*received, start=start, closed=closed)) == expected


@pytest.mark.server
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fault_suite_quick_run_covers_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "faults.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=380, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(output.read_text())["rows"]
    assert len(rows) == len(SCENARIOS)
    for name, row in zip(SCENARIOS, rows, strict=True):
        assert not any("scenario failed" in note for note in row["notes"]), row
        if name != "fuzz":  # every other scenario publishes
            assert row["published"], row
    assert ".. list-table::" in output.with_suffix(".rst").read_text()
