"""The real servers the fault scenarios drive: redis-server and the hub
(``wsgi-eventsource serve`` on gunicorn gevent workers), on free loopback
ports, with their logs kept in a temporary directory for post-mortems."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.procs import wait_for_port
from bench.run import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent


def rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return sorted(found)


class Redis:
    """A real redis-server; with *persist*, every write is fsynced to an
    append-only file first, so a ``kill -9`` loses nothing it acknowledged."""

    def __init__(self, *, persist: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="faults-redis-")
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        log = open(Path(self.dir, "redis.log"), "ab")  # noqa: SIM115  # closed with the process
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir,
             "--maxclients", "20000", *durability],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.port)

    def client(self) -> Any:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Hub:
    """``wsgi-eventsource serve`` as an operator runs it, on a fixed port so
    that it can be restarted in place."""

    def __init__(self, *options: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.options = list(options)
        self.dir = tempfile.mkdtemp(prefix="faults-hub-")
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = open(Path(self.dir, "hub.log"), "ab")  # noqa: SIM115  # closed with the process
        self.process = subprocess.Popen(
            [str(BIN / "wsgi-eventsource"), "serve", "--port", str(self.port), "--log-level", "warning",
             *self.options],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.port)
        workers = int(self.options[self.options.index("--workers") + 1]) if "--workers" in self.options else 1
        deadline = time.monotonic() + 20
        while len(self.workers) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the workers' apps load after the fork

    @property
    def workers(self) -> list[int]:
        return children(self.process.pid) if self.process is not None else []

    def rss_kib(self) -> int:
        """The resident memory of every worker, together."""
        return sum(rss_kib(pid) for pid in self.workers)

    def log(self) -> str:
        return Path(self.dir, "hub.log").read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def close(self) -> None:
        self.stop(signal.SIGINT)
        shutil.rmtree(self.dir, ignore_errors=True)
