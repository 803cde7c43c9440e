"""Runs the scenarios one after another and renders their rows as a table
(reStructuredText, for docs/reliability.rst, and JSON)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
import traceback
from pathlib import Path

from .scenarios import QUICK, ROOT, SCENARIOS, Row, Sizes

COLUMNS = [
    ("Scenario", "scenario"),
    ("Published", "published"),
    ("Lost", "lost"),
    ("Duplicated", "duplicated"),
    ("Stream-resets", "resets"),
    ("Soft refusals", "soft_refusals"),
    ("Hard refusals", "hard_refusals"),
    ("Gave up", "gave_up"),
    ("Recovery (s)", "recovery_s"),
    ("Other figures", "notes"),
]


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "-"
    return str(value)


def render_rst(rows: list[Row], title: str) -> str:
    """The rows as an RST ``list-table``."""
    lines = [f".. list-table:: {title}", "   :header-rows: 1", "   :widths: auto", ""]
    for n, cells in enumerate([[h for h, _ in COLUMNS], *([_cell(getattr(r, f)) for _, f in COLUMNS] for r in rows)]):
        for i, cell in enumerate(cells):
            text = cell.replace("*", "\\*").replace("`", "'") if n else cell
            lines.append(f"   {'* -' if i == 0 else '  -'} {text}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (about a minute)")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios ({','.join(SCENARIOS)})")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "faults.json"))
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of client sockets
    sizes = QUICK if args.quick else Sizes()
    chosen = [name for name in SCENARIOS if not args.only or name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    rows: list[Row] = []
    started = time.monotonic()
    for name in chosen:
        began = time.monotonic()
        try:
            row = SCENARIOS[name](sizes)
        except Exception as exc:  # one broken scenario is reported, the others still run
            traceback.print_exc()
            row = Row(name, notes=[f"scenario failed: {type(exc).__name__}: {exc}"])
        row.notes.append(f"{time.monotonic() - began:.0f} s")
        rows.append(row)
        print(json.dumps(dataclasses.asdict(row)), flush=True)
    title = f"Faults ({'quick' if args.quick else 'full'} run, {time.strftime('%Y-%m-%d', time.gmtime())})"
    table = render_rst(rows, title)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"quick": args.quick, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2))
    output.with_suffix(".rst").write_text(table)
    print(table)
    print(f"{time.monotonic() - started:.0f} s in all; results: {output}", file=sys.stderr)
