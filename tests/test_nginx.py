"""The shipped nginx configuration, with a real nginx in front of the real hub
on a gunicorn gevent worker."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import VENV_BIN, Nginx, ServerProcess
from tests.helpers import StreamClient

pytestmark = pytest.mark.server


@pytest.fixture
def hub_port() -> Iterator[Callable[..., int]]:
    started: list[ServerProcess] = []

    def start(*args: str) -> int:
        server = ServerProcess(
            [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--publish-token", "tok", *args],
            ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
            stop_signal=signal.SIGINT,
        )
        started.append(server)
        return server.port

    yield start
    for server in started:
        server.stop()


def publish(port: int, channel: str, data: str) -> str:
    client = StreamClient(
        port,
        f"/publish/{channel}",
        method="POST",
        body=data.encode(),
        headers={"Content-Type": "text/plain", "Authorization": "Bearer tok"},
    )
    assert client.status == 201, client.read_body()
    event_id: str = json.loads(client.read_body())["id"]
    client.close()
    return event_id


def test_events_pass_through_nginx_unbuffered(nginx: Callable[..., Nginx], hub_port: Callable[..., int]) -> None:
    upstream = hub_port()
    proxy = nginx(upstream)
    client = StreamClient(proxy.port, "/events/fast")
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    client.wait_for(lambda c: b"id: " in c.raw, timeout=2)  # headers and the bare id at once
    delays = []
    for i in range(10):
        sent_at = time.monotonic()
        publish(proxy.port, "fast", f"small event {i}")  # through nginx too
        client.events(i + 1, timeout=2)
        delays.append(time.monotonic() - sent_at)
    # A buffering proxy holds small events until its buffer fills: they would
    # not arrive within the 2 s above at all. The median is the sharp check;
    # the max only allows for one scheduling hiccup on a busy machine.
    assert statistics.median(delays) < 0.1, f"events were held back by the proxy: {delays}"
    assert max(delays) < 1.0, f"events were held back by the proxy: {delays}"
    print(f"publish-to-receive through nginx: median {statistics.median(delays) * 1000:.1f} ms", file=sys.stderr)


def test_last_event_id_passes_through(nginx: Callable[..., Nginx], hub_port: Callable[..., int]) -> None:
    proxy = nginx(hub_port())
    ids = [publish(proxy.port, "r", f"m{i}") for i in range(4)]
    client = StreamClient(proxy.port, "/events/r", headers={"Last-Event-ID": ids[1]})
    assert [e.last_event_id for e in client.events(2)] == ids[2:]
    assert all(e.type == "message" for e in client.parser.events)


def test_an_idle_stream_outlives_the_proxy_read_timeout(
    nginx: Callable[..., Nginx], hub_port: Callable[..., int]
) -> None:
    proxy = nginx(hub_port("--keepalive", "0.5"), read_timeout="2s")
    client = StreamClient(proxy.port, "/events/idle")
    client.wait_for(lambda c: b"id: " in c.raw)
    started = time.monotonic()
    client.wait_for(lambda c: time.monotonic() - started > 5, timeout=10)  # idle 2.5 x the timeout
    assert not client.eof
    publish(proxy.port, "idle", "still here")
    assert client.events(1, timeout=2)[0].data == "still here"


def test_a_keepalive_longer_than_the_read_timeout_loses_the_stream(
    nginx: Callable[..., Nginx], hub_port: Callable[..., int]
) -> None:
    """The control for the test above: the timeout is real, so keepalive must stay below it."""
    proxy = nginx(hub_port("--keepalive", "30"), read_timeout="1s")
    client = StreamClient(proxy.port, "/events/idle")
    client.wait_for(lambda c: b"id: " in c.raw)
    started = time.monotonic()
    with pytest.raises(ConnectionError):  # nginx cuts the stream: no final chunk
        client.read_to_end(timeout=5)
    assert client.eof
    assert time.monotonic() - started < 3


def test_publishing_through_the_proxy_needs_the_token(
    nginx: Callable[..., Nginx], hub_port: Callable[..., int]
) -> None:
    proxy = nginx(hub_port())
    client = StreamClient(proxy.port, "/publish/x", method="POST", body=b"x", headers={"Content-Type": "text/plain"})
    assert client.status == 403
