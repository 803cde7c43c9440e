"""Side-by-side benchmark of wsgi-eventsource and its peers, in one run.

    .venv/bin/python -m bench.run            # everything (about 15 minutes)
    .venv/bin/python -m bench.run --quick    # small sizes: a smoke run (about a minute)

Each server is started here, one worker process, pinned to core 0; the load
client (bench/loadclient.c, C and epoll) is pinned to core 1. Scenarios:

* idle: N open streams (1k, 5k, 10k): server RSS per stream, CPU while idle;
* fan-out: N subscribers of one channel, 20 events/s for 10 s: the latency
  from publish to receive of every event at every subscriber;
* throughput: 100 subscribers, the publisher flat out: events delivered per
  second, and their latency;
* scale-out: the hub with ``--workers 2 --redis`` holding 20,000 streams.

Every scenario checks that every subscriber got every event. Results go to
``bench/results/latest.json``, ``docs/benchmarks.rst`` and two plots in
``docs/``. Timings on a shared machine are noisy: compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "bench" / ".build"
CLIENT = BUILD / "loadclient"
PY = sys.executable
SERVER_CORE, CLIENT_CORE = "0", "1"


def build_client() -> None:
    BUILD.mkdir(exist_ok=True)
    source = ROOT / "bench" / "loadclient.c"
    if not CLIENT.exists() or CLIENT.stat().st_mtime < source.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(CLIENT), str(source)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http(port: int, method: str, path: str, body: bytes = b"") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return int(s.recv(4096).split()[1])


@dataclass
class Server:
    """One server under test, and how to talk to it."""

    name: str
    label: str
    command: list[str]
    subscribe_path: str
    publish: str  # "trigger": POST /bench/publish; "nchan": the C client POSTs each event
    worker_depth: int = 1  # 0: the process itself is the worker; 1: its child
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    tmp: str = ""

    def start(self) -> None:
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        command = [part.format(port=self.port, tmp=self.tmp) for part in self.command]
        if self.name == "nchan":
            Path(self.tmp, "nginx.conf").write_text(NCHAN_CONF.format(port=self.port, tmp=self.tmp))
        self.process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *command],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=open(Path(self.tmp, "server.log"), "wb"),  # noqa: SIM115  # closed with the process
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 20
        while self.worker_depth and not children(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)

    @property
    def worker(self) -> int:
        assert self.process is not None
        if self.worker_depth == 0:
            return self.process.pid
        return max(children(self.process.pid))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT if self.name == "nchan" else signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def trigger(self, count: int, rate: float, size: int) -> subprocess.Popen[bytes] | None:
        if self.publish == "trigger":
            status = http(self.port, "POST", f"/bench/publish?count={count}&rate={rate}&size={size}")
            assert status == 202, status
            return None
        return subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, str(CLIENT), "pub", "127.0.0.1", str(self.port), "/pub",
             str(count), str(rate), str(size)],
            stdout=subprocess.PIPE,
        )  # fmt: skip


NCHAN_CONF = """
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    keepalive_requests 10000000;  # the benchmark publisher keeps one connection
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=16384;
        location = /events {{ nchan_subscriber eventsource; nchan_channel_id bench; }}
        location = /pub {{
            nchan_publisher; nchan_channel_id bench;
            nchan_message_buffer_length 1000; nchan_message_timeout 120s;
        }}
    }}
}}
"""

GUNICORN = [PY, "-m", "gunicorn", "--worker-class", "gevent", "--workers", "1", "--worker-connections", "40000",
            "--bind", "127.0.0.1:{port}", "--backlog", "16384", "--log-level", "warning"]  # fmt: skip


def servers() -> list[Server]:
    return [
        Server("eventsource", "wsgi-eventsource EventSource (gunicorn -k gevent)",
               [*GUNICORN, "bench.servers.ours:eventsource_app"], "/events", "trigger"),
        Server("hub", "wsgi-eventsource hub, MemoryBroker (gunicorn -k gevent)",
               [*GUNICORN, "bench.servers.ours:hub_app"], "/events/bench", "trigger"),
        Server("naive", "hand-written gevent app (gunicorn -k gevent)",
               [*GUNICORN, "bench.servers.naive_gevent:app"], "/events", "trigger"),
        Server("starlette", "sse-starlette (uvicorn, uvloop + httptools)",
               [PY, "-m", "uvicorn", "bench.servers.starlette_app:app", "--port", "{port}", "--workers", "1",
                "--log-level", "warning", "--backlog", "16384", "--no-access-log"], "/events", "trigger",
               worker_depth=0),
        Server("nchan", "nchan (nginx module, C)", ["/usr/sbin/nginx", "-p", "{tmp}", "-c", "{tmp}/nginx.conf"],
               "/events", "nchan"),
    ]  # fmt: skip


def subscribe(server: Server, connections: int, expected: int, timeout: float) -> subprocess.Popen[bytes]:
    client = subprocess.Popen(
        ["taskset", "-c", CLIENT_CORE, str(CLIENT), "sub", "127.0.0.1", str(server.port), server.subscribe_path,
         str(connections), str(expected), str(timeout)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert client.stdout is not None
    line = client.stdout.readline().decode()
    if not line.startswith("READY"):
        client.kill()
        raise RuntimeError(f"{server.name}: subscribers did not connect: {line!r}")
    return client


def finish(client: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, _ = client.communicate(timeout=timeout)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def idle(server: Server, n: int, settle: float = 2, window: float = 5) -> dict[str, Any]:
    with running(server):
        base = rss_kib(server.worker)
        client = subscribe(server, n, 0, settle + window + 5)
        time.sleep(settle)
        rss = rss_kib(server.worker)
        cpu0, t0 = cpu_seconds(server.worker), time.monotonic()
        time.sleep(window)
        cpu = (cpu_seconds(server.worker) - cpu0) / (time.monotonic() - t0)
        client.send_signal(signal.SIGTERM)
        client.communicate(timeout=10)
        return {"streams": n, "rss_base_kib": base, "rss_kib": rss, "kib_per_stream": (rss - base) / n,
                "idle_cpu_percent": round(cpu * 100, 2)}  # fmt: skip


def fanout(server: Server, n: int, rate: float = 20, seconds: float = 10, size: int = 64) -> dict[str, Any]:
    count = int(rate * seconds)
    with running(server):
        client = subscribe(server, n, count, 20)
        publisher = server.trigger(count, rate, size)
        result = finish(client, seconds + 120)
        if publisher is not None:
            publisher.communicate(timeout=30)
        result["delivered_all"] = result["events"] == result["expected"] and result["closed_early"] == 0
        result["rate"] = rate
        return result


def throughput(server: Server, n: int = 100, count: int = 20_000, size: int = 64) -> dict[str, Any]:
    with running(server):
        client = subscribe(server, n, count, 30)
        publisher = server.trigger(count, 0, size)
        result = finish(client, 600)
        if publisher is not None:
            publisher.communicate(timeout=60)
        result["delivered_all"] = result["events"] == result["expected"] and result["closed_early"] == 0
        result["delivered_per_second"] = round(result["events"] / result["span_s"]) if result["span_s"] else 0
        return result


def scale_out(streams: int = 20_000, events: int = 10) -> dict[str, Any]:
    """The hub with two workers and Redis, holding *streams* streams (no pinning)."""
    from wsgi_eventsource import RedisBroker

    redis_port, hub_port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{redis_port}/0"
    hub = subprocess.Popen(
        [str(Path(PY).parent / "wsgi-eventsource"), "serve", "--port", str(hub_port), "--workers", "2",
         "--redis", url, "--worker-connections", str(streams), "--log-level", "warning"],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(redis_port)
        wait_for_port(hub_port)
        time.sleep(1)
        half = streams // 2
        clients = []
        for _ in range(2):  # two client processes: one process may not hold 20,000 descriptors
            client = subprocess.Popen(
                [str(CLIENT), "sub", "127.0.0.1", str(hub_port), "/events/scale", str(half), str(events), "30"],
                stdout=subprocess.PIPE,
            )
            assert client.stdout is not None
            assert client.stdout.readline().startswith(b"READY")
            clients.append(client)
        broker = RedisBroker(url)
        for i in range(events):
            broker.publish("scale", f"{time.time_ns()} {i} scale")
            time.sleep(0.5)
        results = [finish(c, 120) for c in clients]
        broker.close()
        delivered = sum(r["events"] for r in results)
        return {
            "streams": streams,
            "events": events,
            "delivered": delivered,
            "expected": streams * events,
            "delivered_all": delivered == streams * events and all(r["closed_early"] == 0 for r in results),
            "p99_ms": max(r["p99_ms"] for r in results),
            "p50_ms": max(r["p50_ms"] for r in results),
        }
    finally:
        hub.send_signal(signal.SIGINT)
        redis.terminate()
        hub.wait(20)
        redis.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    versions = {}
    for package in ["wsgi-eventsource", "gevent", "gunicorn", "sse-starlette", "uvicorn", "uvloop", "starlette"]:
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[package] = version(package)
    nginx = subprocess.run(["/usr/sbin/nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()
    nchan = subprocess.run(["dpkg-query", "-W", "libnginx-mod-nchan"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
        "versions": versions, "nginx": nginx, "nchan": nchan.stdout.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, every server and scenario")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and short runs: checks the harness works")
    parser.add_argument(
        "--only", default="", help="comma-separated server names (eventsource,hub,naive,starlette,nchan)"
    )
    parser.add_argument("--skip-scale-out", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by servers and clients
    build_client()
    idle_sizes = [100] if args.smoke else [200, 500] if args.quick else [1000, 5000, 10000]
    fanout_sizes = [100] if args.smoke else [200] if args.quick else [1000, 5000, 10000]
    throughput_count = 200 if args.smoke else 500 if args.quick else 20_000
    seconds = 1.0 if args.smoke else 10.0
    args.quick = args.quick or args.smoke
    chosen = [s for s in servers() if not args.only or s.name in args.only.split(",")]

    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "servers": {}}
    for server in chosen:
        entry: dict[str, Any] = {"label": server.label, "idle": [], "fanout": [], "throughput": None}
        results["servers"][server.name] = entry
        for n in idle_sizes:
            entry["idle"].append(_attempt(idle, server, n, *((0.5, 1.0) if args.smoke else ())))
            print(server.name, "idle", n, entry["idle"][-1], flush=True)
        for n in fanout_sizes:
            entry["fanout"].append(_attempt(fanout, server, n, 20, seconds))
            print(server.name, "fanout", n, _short(entry["fanout"][-1]), flush=True)
        entry["throughput"] = _attempt(throughput, server, 100, throughput_count)
        print(server.name, "throughput", _short(entry["throughput"]), flush=True)
    if not args.skip_scale_out:
        results["scale_out"] = _attempt(scale_out, 2000 if args.quick else 20_000, 5 if args.quick else 10)
        print("scale-out", results["scale_out"], flush=True)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    from bench.report import write_report

    write_report(results, ROOT / "docs", quick=args.quick)
    print(f"results: {output}", flush=True)


def _attempt(function: Any, *args: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = function(*args)
        return result
    except Exception as exc:  # a server that cannot do a scenario is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}


def _short(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "histogram"}


if __name__ == "__main__":
    main()
