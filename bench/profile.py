"""Flame graphs of the hub worker during a benchmark scenario (py-spy).

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.profile idle docs/profiles/hub-idle.svg
    .venv/bin/python -m bench.profile fanout docs/profiles/hub-fanout.svg
    .venv/bin/python -m bench.profile throughput docs/profiles/hub-throughput.svg

Runs the ``hub`` server of ``bench/run.py`` (``wsgi-eventsource``'s hub on a
MemoryBroker under gunicorn with the library's worker,
``wsgi_eventsource.gunicorn_worker.GeventWorker``, one worker pinned to core
0) through the scenario at its full size (idle: 10,000 streams; fan-out: 10,000
subscribers, 20 events/s for 10 s; throughput: 100 subscribers, 20,000 events
flat out), with ``py-spy record`` attached to the worker from its start to its
stop: the flame graph covers the streams opening, the events and the end.
py-spy runs on the load client's core (1), ``--nonblocking`` (the worker is
never paused to be sampled), so the figures the scenario prints are close to,
not the same as, an unprofiled run's.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import run
from bench.scale import raise_fd_limit

PY_SPY = Path(sys.executable).parent / "py-spy"


def _relative(path: Path) -> str:
    """*path* from the checkout's root if it is inside it (as ./...), else as it is."""
    path = path.resolve()
    return f"./{path.relative_to(run.ROOT)}" if path.is_relative_to(run.ROOT) else str(path)


class Profiled(run.Server):
    """A server whose worker py-spy records from its start to its stop."""

    output: Path = Path()
    rate: int = 100
    spy: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        super().start()
        # Paths relative to the checkout: the command is written into the graph.
        self.spy = subprocess.Popen(
            ["taskset", "-c", run.CLIENT_CORE, _relative(PY_SPY), "record", "--pid", str(self.worker), "--rate",
             str(self.rate), "--nonblocking", "--format", "flamegraph", "--output", _relative(self.output)],
            cwd=run.ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.spy is not None:
            # py-spy writes its flame graph when interrupted, as on Ctrl-C.
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(60)
            self.spy = None
        super().stop()


#: The bench/run.py servers whose worker is a Python process under gunicorn.
PYTHON_SERVERS = ("hub", "eventsource", "naive")

SCENARIOS = {
    "idle": lambda server: run.idle(server, 10_000),
    "fanout": lambda server: run.fanout(server, 10_000, 20, 10),
    "throughput": lambda server: run.throughput(server, 100, 20_000),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("output", type=Path, help="the flame graph (SVG)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (%(default)s)")
    parser.add_argument("--server", default="hub", choices=PYTHON_SERVERS, help="the server to profile (%(default)s)")
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        parser.error(f"py-spy is not installed beside {sys.executable}: pip install py-spy")
    known = {s.name: s for s in run.servers()}
    raise_fd_limit()
    run.build_client()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    base = known[args.server]
    server = Profiled(base.name, base.label, base.command, base.subscribe_path, base.publish)
    server.output, server.rate = args.output.resolve(), args.rate
    result: dict[str, Any] = SCENARIOS[args.scenario](server)
    print(json.dumps(run._short(result)), flush=True)
    size = args.output.stat().st_size if args.output.exists() else 0
    print(f"{args.output}: {size:,} bytes", flush=True)


if __name__ == "__main__":
    main()
