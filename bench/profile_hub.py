"""The hub's worker under a bench scenario, profiled with py-spy.

    .venv/bin/python -m bench.profile_hub docs/profiles/hub-http-throughput-after.svg
    .venv/bin/python -m bench.profile_hub out.json --format speedscope --rate 200

Starts the ``hub`` server of :mod:`bench.run` (gunicorn with the library's
worker, ``wsgi_eventsource.gunicorn_worker.GeventWorker``, one worker, pinned
to core 0), attaches ``py-spy record`` to its worker, runs the
http-throughput scenario (100 subscribers, the C client POSTing 20,000
events flat out) and stops py-spy when the scenario is over. py-spy runs
unpinned; it samples at ``--rate`` per second (a low rate keeps a flame
graph under 1 MB). Prints the scenario's numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench import run
from bench.scale import raise_fd_limit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="where py-spy writes the profile")
    parser.add_argument("--format", default="flamegraph", choices=["flamegraph", "speedscope", "raw"])
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--count", type=int, default=20_000, help="events published")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raise_fd_limit()
    run.build_client()
    server = next(s for s in run.servers() if s.name == "hub")
    with run.running(server):
        client = run.subscribe(server, 100, args.count, 30, check=(run.HTTP_CHANNEL, "plain"))
        profiler = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.worker), "--rate", str(args.rate), "--format", args.format,
             "--output", args.output, "--nonblocking"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert server.publish_path is not None
            publisher = server.post(server.publish_path, args.count, 0, 64, run.HTTP_CHANNEL)
            result = run.finish(client, 600)
            published, _ = publisher.communicate(timeout=60)
        finally:
            profiler.send_signal(signal.SIGINT)  # py-spy writes the profile and ends
            profiler.wait(60)
    result.pop("histogram", None)
    result["publisher"] = json.loads(published.decode().strip().splitlines()[-1])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
