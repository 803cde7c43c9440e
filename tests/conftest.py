from __future__ import annotations

import gc
import os
import pathlib
import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.validate import validator

import gevent
import gevent.event
import gevent.subprocess
import greenlet
import pytest
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from werkzeug.test import EnvironBuilder

from tests.helpers import StreamClient

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


@dataclass
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: Iterator[bytes]
    header_names: set[str] = field(default_factory=set)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def close(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


def call(
    app: WSGIApplication,
    path: str = "/",
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query_string: str | None = None,
) -> Response:
    """Call *app* wrapped in ``wsgiref.validate.validator``; step the body by hand."""
    builder = EnvironBuilder(path=path, method=method, headers=list((headers or {}).items()), query_string=query_string)
    environ = builder.get_environ()
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        captured["status"] = status
        captured["headers"] = response_headers
        return lambda data: None

    body = validator(app)(environ, start_response)
    return Response(captured["status"], captured["headers"], iter(body), {k.lower() for k, _ in captured["headers"]})


def live_greenlets() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet) and not obj.dead)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close the test clients a test left open (they are not the test's point)."""
    yield
    for client in list(StreamClient.unclosed):
        client.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., WSGIServer]]:
    """Start ``gevent.pywsgi`` servers on free ports; stop them afterwards."""
    servers: list[WSGIServer] = []

    def start(app: WSGIApplication, *, pool: int | None = None) -> WSGIServer:
        server = WSGIServer(("127.0.0.1", 0), app, log=None, spawn=Pool(pool) if pool else "default")
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(timeout=1)


def join_all(greenlets: Iterable[gevent.Greenlet[Any, Any]], timeout: float = 5) -> None:
    done = gevent.joinall(list(greenlets), timeout=timeout, raise_error=True)
    assert all(g.dead for g in done)


class ServerProcess:
    """A server started as a real subprocess; its log is kept for failures."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        ready_pattern: str = "",
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.args = args
        self.stop_signal = stop_signal
        self.log: list[str] = []
        self.proc = gevent.subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.STDOUT,
            text=True,
        )
        self.port = 0
        self._reader = gevent.spawn(self._read)
        self._ready = gevent.event.Event()
        self._pattern = re.compile(ready_pattern) if ready_pattern else None
        if self._pattern is not None and not self._ready.wait(30):
            self.stop()
            raise AssertionError(f"{args[0]} did not start: {''.join(self.log)}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if self._pattern is not None and not self._ready.is_set():
                match = self._pattern.search(line)
                if match:
                    if match.groups():
                        self.port = int(match.group(1))
                    self._ready.set()

    def wait(self, timeout: float) -> int | None:
        try:
            return int(self.proc.wait(timeout=timeout))
        except Exception:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            if self.wait(10) is None:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture
def gunicorn() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``gunicorn -k gevent`` with one worker on a free port."""
    started: list[ServerProcess] = []

    def start(app: str, *extra: str, env: dict[str, str] | None = None) -> ServerProcess:
        args = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gevent", "--workers", "1",
            "--bind", "127.0.0.1:0", "--log-level", "debug",
            *extra, app,
        ]  # fmt: skip
        # SIGINT is gunicorn's quick shutdown: tests need not wait for a graceful one.
        pattern = r"Listening at: http://127\.0\.0\.1:(\d+)"
        server = ServerProcess(args, env=env, ready_pattern=pattern, stop_signal=signal.SIGINT)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A real ``redis-server`` on a free port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: ServerProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = ServerProcess(args, ready_pattern="Ready to accept connections")

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, with everything it held."""
        assert self.process is not None
        self.process.proc.kill()
        self.process.wait(10)
        self.process.stop()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for each test."""
    import redis

    if redis_server.process is None or redis_server.process.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


class Nginx:
    """A real nginx (Debian's package) serving ``nginx/example-site.conf``,
    pointed at *upstream_port*, with the snippet from ``nginx/`` (optionally
    with other timeouts, to test them in seconds rather than minutes)."""

    def __init__(self, tmp: str, upstream_port: int, read_timeout: str | None = None) -> None:
        os.makedirs(tmp, exist_ok=True)
        self.port = free_port()
        #: The port of the shipped TLS + HTTP/2 server, with a self-signed certificate for 127.0.0.1.
        self.tls_port = free_port()
        certificate, key = self_signed_certificate(tmp)
        snippet = pathlib.Path(ROOT, "nginx", "eventsource.conf").read_text()
        if read_timeout is not None:
            assert "proxy_read_timeout 1h;" in snippet
            snippet = snippet.replace("proxy_read_timeout 1h;", f"proxy_read_timeout {read_timeout};")
        snippet_path = os.path.join(tmp, "eventsource.conf")
        with open(snippet_path, "w") as f:
            f.write(snippet)
        site = pathlib.Path(ROOT, "nginx", "example-site.conf").read_text()
        for old, new in [
            ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};"),
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("include /etc/nginx/snippets/eventsource.conf;", f"include {snippet_path};"),
            ("listen 443 ssl http2;", f"listen 127.0.0.1:{self.tls_port} ssl http2;"),
            ("ssl_certificate     /etc/ssl/certs/events.example.org.pem;", f"ssl_certificate {certificate};"),
            ("ssl_certificate_key /etc/ssl/private/events.example.org.key;", f"ssl_certificate_key {key};"),
        ]:
            assert old in site, f"example-site.conf no longer has {old!r}"
            site = site.replace(old, new)
        site_path = os.path.join(tmp, "site.conf")
        with open(site_path, "w") as f:
            f.write(site)
        user = "user root;" if os.getuid() == 0 else ""
        temp = " ".join(
            f"{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""
            {user}
            worker_processes 1;
            daemon off;
            pid {tmp}/nginx.pid;
            error_log stderr notice;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                {temp}
                include {site_path};
            }}
        """
        conf_path = os.path.join(tmp, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = ServerProcess(
            [binary, "-p", tmp, "-c", conf_path], ready_pattern=r"start worker process", stop_signal=signal.SIGQUIT
        )

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def nginx(tmp_path: Any) -> Iterator[Callable[..., Nginx]]:
    started: list[Nginx] = []

    def start(upstream_port: int, read_timeout: str | None = None) -> Nginx:
        server = Nginx(str(tmp_path / f"nginx{len(started)}"), upstream_port, read_timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


#: Starts ``wsgi-eventsource serve`` with the given options (see ``hub_server``).
Serve = Callable[..., ServerProcess]


@pytest.fixture
def hub_server() -> Iterator[Serve]:
    """Start ``wsgi-eventsource serve`` (the console script) on a free port."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, module: bool = False) -> ServerProcess:
        command = [sys.executable, "-m", "wsgi_eventsource"] if module else [os.path.join(VENV_BIN, "wsgi-eventsource")]
        server = ServerProcess(
            [*command, "serve", "--port", "0", *args],
            env=env,
            ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
            stop_signal=signal.SIGINT,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def self_signed_certificate(directory: str) -> tuple[str, str]:
    """Write a self-signed certificate for ``127.0.0.1`` and ``localhost``
    (an EC P-256 key, valid for a day) and its key into *directory*; return
    their paths (for the TLS server of ``nginx/example-site.conf``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certificate_path = os.path.join(directory, "certificate.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(certificate_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return certificate_path, key_path


# -- brokers ----------------------------------------------------------------------------


@pytest.fixture
def redis_broker_options() -> dict[str, Any]:
    """Options every RedisBroker of ``make_broker`` gets (a module may override it)."""
    return {}


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def make_broker(request: pytest.FixtureRequest, redis_broker_options: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    """Make brokers of every kind: MemoryBroker, and RedisBroker on a real
    redis-server (``redis_url``) and on a real Redis Cluster (``cluster_url``,
    tests/cluster_setup.py); every one is closed afterwards."""
    from wsgi_eventsource import Broker, MemoryBroker, RedisBroker

    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker(**options)
        else:
            url = request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url")
            broker = RedisBroker(url, **{**redis_broker_options, **options})
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def redis_brokers() -> Iterator[Callable[..., Any]]:
    """``make(url, **options)``: RedisBrokers on *url* (``block=0.2`` unless
    told otherwise), every one closed afterwards."""
    from wsgi_eventsource import RedisBroker

    made: list[RedisBroker] = []

    def make(url: str, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, **{"block": 0.2, **options})
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


# The Redis Cluster (imported last: tests/cluster_setup.py uses ServerProcess from above).
from tests.cluster_setup import cluster, cluster_brokers, cluster_url, redis_cluster  # noqa: E402

__all__ = ["cluster", "cluster_brokers", "cluster_url", "redis_cluster"]  # fixtures, found by pytest here
