"""A real third-party client, the npm ``eventsource`` package (WHATWG-conformant)
on Node, through the faults an operator meets: soft refusals, a 503, a hub
restart (issue 8, "Measured, not assumed").

The client script is ``tests/node/client.mjs``; ``.ci/setup`` installs Node and
the package (``npm ci`` in ``tests/node``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.subprocess
import pytest

from tests.conftest import ROOT, VENV_BIN, RedisServer, ServerProcess, free_port
from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import RedisBroker

pytestmark = pytest.mark.server

NODE_DIR = os.path.join(ROOT, "tests", "node")
NODE = shutil.which("node") or "/usr/bin/node"
CONNECTING, OPEN, CLOSED = 0, 1, 2


class NodeClients:
    """``node client.mjs URL N SECONDS``: N EventSources; every line it prints is kept."""

    def __init__(self, url: str, count: int, seconds: float = 30) -> None:
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "eventsource")):
            raise AssertionError("the npm eventsource package is missing: run bash .ci/setup (npm ci in tests/node)")
        self.count = count
        self.lines: list[dict[str, Any]] = []
        self.proc = gevent.subprocess.Popen(
            [NODE, os.path.join(NODE_DIR, "client.mjs"), url, str(count), str(seconds)],
            cwd=NODE_DIR,
            stdin=gevent.subprocess.PIPE,
            stdout=gevent.subprocess.PIPE,
            stderr=gevent.subprocess.PIPE,
            text=True,
        )
        self._reader = gevent.spawn(self._read)
        self.wait(lambda: any(line["kind"] == "ready" for line in self.lines), "the client script to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def of(self, client: int, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("client") == client and line["kind"] == kind]

    def events(self, client: int) -> list[dict[str, Any]]:
        return self.of(client, "event")

    def states(self, client: int) -> list[int]:
        return [line["readyState"] for line in self.of(client, "state")]

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
        def done() -> bool:
            if self.proc.poll() is not None and not predicate():
                stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
                raise AssertionError(f"the node client exited while waiting for {what}: {stderr}")
            return predicate()

        wait_until(done, timeout=timeout, message=f"{what}; got {self.lines[-5:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=5)
            except gevent.subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def node() -> Iterator[Callable[..., NodeClients]]:
    started: list[NodeClients] = []

    def start(url: str, count: int = 1, seconds: float = 30) -> NodeClients:
        clients = NodeClients(url, count, seconds)
        started.append(clients)
        return clients

    yield start
    for clients in started:
        clients.stop()


def count_of(port: int, key: str) -> dict[str, Any]:
    client = StreamClient(port, f"/count/{key}")
    result: dict[str, Any] = json.loads(client.read_body())
    client.close()
    return result


# -- soft refusals ----------------------------------------------------------------------


def test_node_eventsource_comes_back_by_itself_after_soft_refusals(gunicorn: Any, node: Any) -> None:
    """Issue 8 (4): a soft refusal (200 event stream, retry hint, comment, end)
    makes a WHATWG client reconnect by itself after the hint: three clients,
    six refusals between them, all three served in the end, none ever CLOSED."""
    server = gunicorn("tests.apps.refusals:app")
    clients = node(f"http://127.0.0.1:{server.port}/soft/node-soft?k=6", count=3)
    for i in range(3):
        clients.wait(lambda i=i: any(e["data"] == "served" for e in clients.events(i)), f"client {i} served")
    seen = count_of(server.port, "node-soft")
    assert seen["requests"] == 6 + 3  # every refusal was followed by a reconnect, nothing more
    for i in range(3):
        assert CLOSED not in clients.states(i), clients.states(i)
        assert clients.states(i)[-1] == OPEN
        assert [e["type"] for e in clients.events(i)] == ["message"]  # the refusals carry no event
    refused = sum(len(clients.of(i, "error")) for i in range(3))
    assert refused == 6  # each refusal is one "error" (stream ended) and one reconnect


def test_node_eventsource_gives_up_for_good_on_a_503(gunicorn: Any, node: Any) -> None:
    """Issue 8 (4), why soft refusals exist: on a 503 (with Retry-After) the
    same client fails the connection, readyState CLOSED, and never comes back."""
    server = gunicorn("tests.apps.refusals:app")
    clients = node(f"http://127.0.0.1:{server.port}/hard/node-hard?k=1")
    clients.wait(lambda: CLOSED in clients.states(0), "readyState CLOSED")
    # Longer than Retry-After (1 s) and the refusal hint: a reconnect would have come.
    gevent.sleep(1.5)
    assert count_of(server.port, "node-hard")["requests"] == 1
    assert clients.events(0) == []
    assert clients.states(0)[-1] == CLOSED


# -- a hub restart ------------------------------------------------------------------------


class RestartableHub:
    """``wsgi-eventsource serve --redis URL`` on a fixed port, stopped with
    SIGTERM (gunicorn's graceful stop) and started again in place."""

    def __init__(self, redis_url: str, *extra: str) -> None:
        self.port = free_port()
        self.command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", str(self.port),
                        "--redis", redis_url, "--shutdown-retry", "300", "--keepalive", "2", *extra]  # fmt: skip
        self.process = self._start()

    def _start(self) -> ServerProcess:
        pattern = rf"Listening at: http://127\.0\.0\.1:({self.port})"
        return ServerProcess(self.command, ready_pattern=pattern, stop_signal=signal.SIGTERM)

    def restart(self, while_down: Callable[[], None]) -> None:
        """SIGTERM, wait until it has exited, run *while_down*, start again."""
        self.process.proc.send_signal(signal.SIGTERM)
        assert self.process.wait(20) is not None, "the hub did not stop on SIGTERM"
        self.process.stop()
        while_down()
        self.process = self._start()

    def publish(self, channel: str, data: str) -> str:
        client = StreamClient(self.port, f"/publish/{channel}", method="POST", body=data.encode(),
                              headers={"Content-Type": "text/plain"})  # fmt: skip
        answer = client.read_body()
        client.close()
        assert client.status == 201, answer
        event_id: str = json.loads(answer)["id"]
        return event_id

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture
def restartable_hub(redis_url: str) -> Iterator[RestartableHub]:
    hub = RestartableHub(redis_url)
    yield hub
    hub.stop()


def publish_through_a_restart(hub: RestartableHub, redis_url: str, channel: str,
                              wait_for: Callable[[int], None]) -> list[str]:  # fmt: skip
    """Publish 3 events before, 3 while the hub is down (straight to Redis)
    and 3 after it is back; *wait_for(n)* waits until every client has n."""
    published = [hub.publish(channel, f"before {i}") for i in range(3)]
    wait_for(3)

    def while_down() -> None:
        broker = RedisBroker(redis_url)
        try:
            published.extend(broker.publish(channel, f"while down {i}") for i in range(3))
        finally:
            broker.close()

    started = time.monotonic()
    hub.restart(while_down)
    published.extend(hub.publish(channel, f"after {i}") for i in range(3))
    wait_for(9)
    assert time.monotonic() - started < 15
    return published


def test_node_eventsource_resumes_after_a_hub_restart_with_nothing_lost_or_repeated(
    restartable_hub: RestartableHub, redis_url: str, node: Any
) -> None:
    """Issue 8, "Measured, not assumed": three npm eventsource clients through
    a SIGTERM and restart of the hub (Redis broker): each ends with exactly
    the published ids, in order, no duplicates, no gaps, no stream-reset."""
    hub = restartable_hub
    clients = node(f"http://127.0.0.1:{hub.port}/events/node-restart", count=3)
    clients.wait(lambda: all(clients.of(i, "open") for i in range(3)), "three opens")

    def wait_for(n: int) -> None:
        clients.wait(lambda: all(len(clients.events(i)) >= n for i in range(3)), f"{n} events each", timeout=15)

    published = publish_through_a_restart(hub, redis_url, "node-restart", wait_for)
    gevent.sleep(0.3)  # a duplicate would arrive right behind the last event
    for i in range(3):
        events = clients.events(i)
        assert [e["lastEventId"] for e in events] == published
        assert {e["type"] for e in events} == {"message"}
        assert [e["data"] for e in events][3:6] == [f"while down {n}" for n in range(3)]
        assert CLOSED not in clients.states(i)
        # At least one reconnect; streams opened while the hub was stopping were refused softly.
        assert len(clients.of(i, "open")) >= 2


# -- the hub's own refusals (soft since issue 8) --------------------------------------------


def served_again(clients: NodeClients, i: int = 0) -> bool:
    """Client *i* has a stream again after being refused; fails at once if it gave up."""
    if CLOSED in clients.states(i):
        raise AssertionError(f"client {i} gave up for good (readyState CLOSED): {clients.lines[-3:]}")
    return len(clients.of(i, "open")) >= 1 and clients.states(i)[-1] == OPEN


def start_hub(*options: str) -> ServerProcess:
    command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--keepalive", "2", *options]
    return ServerProcess(command, ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)", stop_signal=signal.SIGINT)


def test_node_eventsource_comes_back_after_the_hub_refused_it_over_max_connections(node: Any) -> None:
    """Issue 8 (4): a stream over ``--max-connections`` is refused softly, so
    the client waits and comes back by itself once a slot is free."""
    hub = start_hub("--max-connections", "1")
    try:
        held = StreamClient(hub.port, "/events/held")
        held.wait_for(lambda c: c.raw)  # the only slot is taken
        clients = node(f"http://127.0.0.1:{hub.port}/events/node-max")
        clients.wait(lambda: len(clients.of(0, "error")) >= 1, "a refusal")
        held.reset()  # an RST: the hub notices at its next keepalive (2 s)
        # The refusal's retry hint is spread around 5 s: allow for two of them.
        clients.wait(lambda: served_again(clients), "a stream", timeout=20)
    finally:
        hub.stop()


def test_node_eventsource_comes_back_after_the_hub_refused_it_with_redis_down(node: Any) -> None:
    """Issue 8 (4): a stream refused because Redis is down is refused softly,
    so the client keeps trying and is served once Redis is back."""
    redis = RedisServer()
    redis.stop()  # down from the start; started again on the same port below
    hub = start_hub("--redis", redis.url)
    try:
        clients = node(f"http://127.0.0.1:{hub.port}/events/node-redis-down")
        clients.wait(lambda: len(clients.of(0, "error")) >= 1, "a refusal")
        redis.start()
        clients.wait(lambda: served_again(clients), "a stream", timeout=20)
    finally:
        hub.stop()
        redis.stop()
