"""Regression tests for issue 8 in the channel apps, the hub, its command line
and MemoryBroker: each reproduces one defect (named in its docstring) with real
servers and sockets, and fails on the code before its fix."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.conftest import Serve, ServerProcess, call, free_port
from tests.helpers import StreamClient, fork, wait_until
from wsgi_eventsource import MemoryBroker, RedisBroker, cli
from wsgi_eventsource.hub import Hub

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

pytestmark = pytest.mark.server

#: EventSource's default refusal_retry (ms), spread over [R/2, 3R/2].
REFUSAL_RETRY = 5000


def assert_soft_refusal(client: StreamClient, why: str) -> None:
    """A 200 event stream with a spread retry hint and a comment, then its end."""
    assert client.status == 200, client.read_body()
    assert client.headers["content-type"].startswith("text/event-stream")
    if "content-length" in client.headers:  # the end is where the length says
        client.parser.feed(client.read_body())
    else:
        client.read_to_end(timeout=5)
    assert client.parser.events == []
    assert REFUSAL_RETRY // 2 <= (client.parser.reconnection_time or 0) <= REFUSAL_RETRY * 3 // 2
    assert any(why in comment for comment in client.parser.comments), client.parser.comments


def request(port: int, path: str, headers: dict[str, str]) -> bytes:
    """One raw GET with exactly these headers (Host included): what came back
    until the end of the headers and the first piece of the body."""
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        received = b""
        with gevent.Timeout(10):
            while b"\r\n\r\n" not in received or received.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
    return received


def get_json(port: int, path: str) -> Any:
    client = StreamClient(port, path, timeout=5)
    try:
        return json.loads(client.read_body())
    finally:
        client.close()


# -- item 4: soft refusals instead of 503 ------------------------------------------------


def test_a_stream_over_max_connections_is_refused_softly_with_the_cors_headers(hub_server: Serve) -> None:
    """Issue 8 (4): over --max-connections the hub answered 503, and a browser
    gives up for good on it. It must be a 200 event stream that ends with a
    spread retry hint, keep the CORS headers, and be counted in /stats and
    /metrics by reason."""
    server = hub_server("--max-connections", "2", "--keepalive", "0.3", "--cors-origin", "https://app.example")
    first, second = StreamClient(server.port, "/events/m"), StreamClient(server.port, "/events/m")
    for c in (first, second):
        assert c.status == 200
    refused = StreamClient(server.port, "/events/m", headers={"Origin": "https://app.example"})
    assert_soft_refusal(refused, "maximum of 2 streams")
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert refused.headers["access-control-allow-credentials"] == "true"
    stats = get_json(server.port, "/stats")
    assert stats["refused"] == {"over_max_connections": 1, "broker_unavailable": 0, "shutting_down": 0}
    metrics = StreamClient(server.port, "/metrics").read_body()
    assert b'eventsource_streams_refused_total{reason="over_max_connections"} 1.0' in metrics
    assert b'eventsource_streams_refused_total{reason="broker_unavailable"} 0.0' in metrics
    first.reset()  # noticed at the next keepalive; then there is room again

    def room() -> bool:
        client = StreamClient(server.port, "/events/m")
        client.read_some()
        client.close()
        return b"retry:" not in client.raw

    wait_until(room, 10, interval=0.3)


def test_a_subscribe_while_the_broker_is_down_is_refused_softly(serve: Callable[..., WSGIServer]) -> None:
    """Issue 8 (4): Redis down at subscribe answered 503 (a browser gives up for
    good); publishing, which no EventSource does, keeps its 503 + Retry-After."""
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        subscribe = broker.subscriber_app()
        app = DispatcherMiddleware(lambda e, s: [], {"/events": subscribe, "/publish": broker.publisher_app()})
        port = serve(app).server_port
        assert_soft_refusal(StreamClient(port, "/events/down"), "broker is unavailable")
        assert subscribe.source.refused["broker_unavailable"] == 1
        publish = StreamClient(port, "/publish/down", method="POST", body=b"x")
        assert publish.status == 503
        assert "retry-after" in publish.headers
    finally:
        broker.close()


def test_a_subscriber_app_shutting_down_refuses_softly_before_subscribing(serve: Callable[..., WSGIServer]) -> None:
    """Issue 8 (4): once shutdown began, a new stream was subscribed (replay
    read, subscription registered) only to be ended at once."""
    broker = MemoryBroker()
    subscribe = broker.subscriber_app(shutdown_retry=1000)
    port = serve(subscribe).server_port
    subscribe.source.shutdown()
    calls: list[str] = []
    real_subscribe = broker.subscribe

    def counting(channel: str, last_event_id: str | None) -> Any:
        calls.append(channel)
        return real_subscribe(channel, last_event_id)

    broker.subscribe = counting  # type: ignore[method-assign]
    client = StreamClient(port, "/room")
    assert client.status == 200
    client.read_to_end(timeout=5)
    assert 500 <= (client.parser.reconnection_time or 0) <= 1500  # the spread shutdown hint
    assert client.parser.events == []
    assert calls == []
    assert broker.channel_counts() == {}
    assert subscribe.source.refused["shutting_down"] == 1


# -- item 6: streams cannot lock out publish and health --------------------------------


def test_streams_cannot_take_the_slots_publish_and_health_need(hub_server: Serve) -> None:
    """Issue 8 (6): with no --max-connections, streams took every gunicorn
    worker_connections slot and publishes, /healthz and /stats hung. The
    default cap keeps a reserve: they answer promptly, an extra stream is
    refused softly."""
    server = hub_server("--worker-connections", "30", "--keepalive", "1")
    streams = []
    for _ in range(30):  # as many as the worker has slots
        client = StreamClient(server.port, "/events/full", timeout=5)
        client.wait_for(lambda c: b"\n\n" in c.raw, timeout=5)
        if b"retry:" in client.raw:
            client.close()
        else:
            streams.append(client)
    assert len(streams) == cli.default_max_connections(30) == 10
    started = time.monotonic()
    for path in ("/healthz", "/stats"):
        answer = StreamClient(server.port, path, timeout=3)
        assert answer.status == 200
        answer.read_body()
        answer.close()
    publish = StreamClient(server.port, "/publish/full", method="POST", body=b"still here", timeout=3)
    assert publish.status == 201
    publish.close()
    assert time.monotonic() - started < 3
    for client in streams:
        assert client.events(1, timeout=5)[0].data == "still here"
    assert_soft_refusal(StreamClient(server.port, "/events/full", timeout=5), "maximum of 10 streams")


def test_max_connections_at_or_over_worker_connections_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8 (6): --max-connections >= --worker-connections leaves no slot
    for publishes and health checks; it must be refused with a clear error."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--worker-connections", "100", "--max-connections", "100"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--max-connections 100 must be below --worker-connections 100" in err
    assert "leaves 20 free" in err


def test_the_default_cap_keeps_a_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (6): the default cap is worker-connections less max(20, 10 %)."""
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve"])
    cli.main(["serve", "--worker-connections", "50"])
    cli.main(["serve", "--worker-connections", "50", "--max-connections", "49"])
    assert [args.max_connections for args in served] == [9000, 30, 49]
    assert cli.make_hub_factory(served[0])().max_connections == 9000
    assert [cli.connection_reserve(n) for n in (1, 200, 1000, 10_000)] == [20, 20, 100, 1000]
    assert cli.default_max_connections(5) == 1


# -- item 7: MemoryBroker frees short-lived channels -----------------------------------


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def test_short_lived_channels_are_freed_after_max_age() -> None:
    """Issue 8 (7): 20,000 job/<n> channels with max_age=0.5 held all 20,000
    for good; they must be freed (with their remembered last ids) within a
    few seconds even if nothing else happens, and memory must not grow over
    rounds."""
    import gc

    broker = MemoryBroker(max_age=0.5)
    rss, blocks = [], []
    try:
        for round_number in range(5):
            for n in range(20_000):
                broker.publish(f"job/{round_number}/{n}", "done")
            assert broker.channel_count > 0  # the newest are not expired yet
            # Nothing but time passes: the sweeper thread frees them.
            wait_until(lambda: broker.channel_count == 0 and broker.tombstone_count == 0, 5, 0.05)
            gc.collect()
            rss.append(rss_kib())
            blocks.append(sys.getallocatedblocks())
    finally:
        broker.close()
    # What Python holds (20,000 channels are ~200,000 blocks) is back to the
    # same after every round: exactly nothing is kept. RSS may creep for the
    # first rounds while the allocator settles (measured: flat alone, 2 MB a
    # round for a few rounds in the full suite); the channels kept would add
    # ~30 MB a round.
    assert blocks[-1] - blocks[0] < 2000, f"memory blocks Python holds after each round: {blocks}"
    assert rss[-1] - rss[0] < 20 * 1024, f"RSS KiB after each round: {rss}"


def test_the_sweeper_is_one_thread_started_lazily_and_ended_by_close_or_collection() -> None:
    """Issue 8 (7): the sweeper is one OS thread per broker with max_age,
    started at the first publish, ended by close() and when the broker is
    collected (it holds only a weak reference)."""
    import gc

    def alive(native_id: int | None) -> bool:
        return native_id is not None and os.path.exists(f"/proc/self/task/{native_id}")

    broker = MemoryBroker(max_age=0.25)
    broker.publish("a", "x")
    wait_until(lambda: alive(broker.sweeper_native_id), 5, message="a sweeper at the first publish")
    first = broker.sweeper_native_id
    broker.publish("b", "x")
    assert broker.sweeper_native_id == first  # one thread, not one per publish
    broker.close()
    wait_until(lambda: not alive(first), 5, message="the sweeper ends with close()")
    collected = MemoryBroker(max_age=0.25)
    collected.publish("c", "x")
    wait_until(lambda b=collected: alive(b.sweeper_native_id), 5, message="a sweeper at the first publish")
    second = collected.sweeper_native_id
    del collected
    gc.collect()
    wait_until(lambda: not alive(second), 5, message="the sweeper ends with its broker")
    never = MemoryBroker(max_age=0.25)
    never.subscribe("idle", None)
    kept = MemoryBroker()  # no max_age: history is the point, nothing is swept
    kept.publish("kept", "x")
    assert never.sweeper_native_id is None  # nothing until a publish
    assert kept.sweeper_native_id is None
    assert kept.sweep() == 0
    assert [e.body for e in kept.history_of("kept")] == [b"data: x\n\n"]


def test_a_forked_child_sweeps_with_its_own_thread() -> None:
    """Issue 8 (7): a fork leaves the sweeper thread behind (and maybe the
    broker's lock held by it): the child gets a fresh lock and its own sweeper."""
    broker = MemoryBroker(max_age=0.25)
    try:
        broker.publish("parent", "x")  # the parent's sweeper runs
        pid = fork()
        if pid == 0:
            code = 1
            try:
                for n in range(100):
                    broker.publish(f"child/{n}", "y")
                deadline = time.monotonic() + 5
                while broker.channel_count and time.monotonic() < deadline:
                    time.sleep(0.05)  # only the child's own sweeper can free them
                code = 0 if broker.channel_count == 0 else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        broker.close()


def test_a_forked_child_delivers_even_if_a_thread_was_delivering_at_the_fork() -> None:
    """Review of issue 8: a fork reset the lock but not the "a publisher is
    delivering" flag. Forked while a thread of the parent delivered (a
    --preload master publishing), every publish in the child left delivery to
    a thread that does not exist there: live events were never delivered."""
    broker = MemoryBroker()
    broker._delivering = True  # as a parent thread leaves it, mid-delivery, at the fork
    pid = fork()
    if pid == 0:
        code = 1
        try:
            subscription, _ = broker.subscribe("forked", None)
            broker.publish("forked", "live")
            code = 0 if [w for _, w in subscription.buffer or ()] else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class CountingLock:
    """The broker's lock, counting how often it is taken and what it guards."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.holds = lock, 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_the_sweeper_lets_go_of_the_lock_between_batches() -> None:
    """Review of issue 8 (7): one sweep walked every channel holding the
    broker's OS lock (up to 140 ms for 100,000 subscribed channels), which
    every publish and subscribe of the worker waits for. It now takes the lock
    once per batch of SWEEP_BATCH channels."""
    broker = MemoryBroker(max_age=30)
    try:
        for n in range(5000):  # five batches of 1,000
            broker.subscribe(f"held/{n}", None)
        counting = CountingLock(broker._lock)
        broker._lock = counting  # type: ignore[assignment]
        assert broker.sweep() == 0
        assert counting.holds >= 5
    finally:
        broker.close()


def test_the_sweeper_drops_remembered_ids_in_batches_too() -> None:
    """Second review of issue 8 (7): after the channel pass was batched, the
    pruning of freed channels' remembered last ids still ran in one hold of
    the lock, and quadratically (deleting a dict's first key again and again):
    95,000 of them held every publish of the worker for 1.4 s."""
    broker = MemoryBroker(max_age=0.1)
    for n in range(5000):
        broker.publish(f"once/{n}", "x")
    broker.close()  # this test sweeps by hand
    wait_until(lambda: broker.sweep() == 5000 or broker.channel_count == 0, 5, 0.05)
    assert broker.channel_count == 0
    assert broker.tombstone_count == 5000
    time.sleep(0.15)  # the remembered ids outlive their channel by max_age: let that pass
    counting = CountingLock(broker._lock)
    broker._lock = counting  # type: ignore[assignment]
    assert broker.sweep() == 0
    assert broker.tombstone_count == 0
    assert counting.holds >= 5 + 2


def test_a_subscriber_connected_through_the_expiry_gets_the_next_event_without_reset(
    serve: Callable[..., WSGIServer],
) -> None:
    """Issue 8 (7): a channel with subscribers is never freed, so one that
    stays connected through 3 x max_age of silence keeps its position and
    gets the next event with no stream-reset; a client that saw the last
    event and reconnects right after the channel was freed is not reset."""
    broker = MemoryBroker(max_age=0.3)
    try:
        app = DispatcherMiddleware(lambda e, s: [], {"/events": broker.subscriber_app(keepalive=0.2)})
        port = serve(app).server_port
        first = broker.publish("quiet", "before the silence")
        client = StreamClient(port, "/events/quiet")
        wait_until(lambda: broker.subscriber_count("quiet") == 1, 5)
        wait_until(lambda: broker.history_of("quiet") == [], 5)  # expired and swept
        gevent.sleep(0.9)  # 3 x max_age of silence, several sweeps (time itself is what is tested)
        assert broker.channel_count == 1
        second = broker.publish("quiet", "after the silence")
        assert broker.history_of("quiet")[0].prev == first
        event = client.events(1)[0]
        assert (event.type, event.last_event_id) == ("message", second)
        client.close()
        wait_until(lambda: broker.channel_count == 0, 5)  # freed once nobody listens and it expired
        back = StreamClient(port, "/events/quiet", headers={"Last-Event-ID": second})
        third = broker.publish("quiet", "next")
        events = back.events(1)
        assert [(e.type, e.last_event_id) for e in events] == [("message", third)]
    finally:
        broker.close()


# -- item 10 ---------------------------------------------------------------------------


def test_a_subscription_does_not_leak_when_start_response_raises() -> None:
    """Issue 8 (10): a subscription leaked when start_response raised after
    subscribe (the client gone, a server refusing the headers)."""
    broker = MemoryBroker()
    app = broker.subscriber_app()

    def raising(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        raise OSError("the client went away")

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/room", "QUERY_STRING": "", "wsgi.multiprocess": False}
    with pytest.raises(OSError, match="went away"):
        app(environ, raising)
    assert broker.channel_counts() == {}
    assert broker.channel_count == 0


def test_deeply_nested_json_is_a_400_not_a_500(serve: Callable[..., WSGIServer]) -> None:
    """Issue 8 (10): JSON nested 100,000 deep raised RecursionError: a 500."""
    broker = MemoryBroker()
    port = serve(broker.publisher_app()).server_port
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        client = StreamClient(port, "/x", method="POST", body=body, headers={"Content-Type": "application/json"})
        assert client.status == 400
        assert b"nested too deeply" in client.read_body()
    assert broker.history_of("x") == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("application/json", b'{"data": "x", "\\udcff": 1}', id="json-key"),
        pytest.param("application/json", b'{"data": "x", "event": "\\ud800"}', id="json-event"),
        pytest.param("application/x-www-form-urlencoded", b"data=x&%ED%B3%BF=1", id="form-key"),
    ],
)
def test_a_lone_surrogate_in_a_publish_is_a_400_not_a_500(
    serve: Callable[..., WSGIServer], content_type: str, body: bytes
) -> None:
    """Found by the fault suite's fuzzer: a JSON key that is a lone surrogate
    escape ("\\udcff") was named in the 400's message, which then could not
    be encoded as UTF-8: a 500."""
    broker = MemoryBroker()
    port = serve(broker.publisher_app()).server_port
    client = StreamClient(port, "/x", method="POST", body=body, headers={"Content-Type": content_type})
    assert client.status == 400
    message = client.read_body().decode("utf-8")
    assert message.strip()
    assert broker.history_of("x") == []


class FakeResource(types.SimpleNamespace):
    """The resource module of a system whose hard limit is unlimited, and whose
    setrlimit refuses RLIM_INFINITY (and, with *refuse*, anything)."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        super().__init__(limits=(soft, hard), calls=[], refuse=refuse)

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.calls.append(limits)
        if self.refuse or limits[0] == self.RLIM_INFINITY:
            raise ValueError("current limit exceeds maximum limit")  # what macOS says
        self.limits = limits


def test_raise_fd_limit_with_an_unlimited_hard_limit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8 (10): serve crashed where the hard open-files limit is
    RLIM_INFINITY (macOS refuses setrlimit to infinity); it must ask for what
    it needs, and only warn if even that is refused."""
    fake = FakeResource(256, FakeResource.RLIM_INFINITY)
    monkeypatch.setattr(cli, "resource", fake)
    cli._raise_fd_limit(10_100)
    assert fake.calls == [(10_100, FakeResource.RLIM_INFINITY)]
    assert capsys.readouterr().err == ""
    refusing = FakeResource(256, FakeResource.RLIM_INFINITY, refuse=True)
    monkeypatch.setattr(cli, "resource", refusing)
    cli._raise_fd_limit(10_100)  # does not raise
    err = capsys.readouterr().err
    assert "could not raise the open-files limit from 256 to 10100" in err
    assert "current limit exceeds maximum limit" in err
    enough = FakeResource(20_000, FakeResource.RLIM_INFINITY)
    monkeypatch.setattr(cli, "resource", enough)
    cli._raise_fd_limit(10_100)
    assert enough.calls == []  # already enough: nothing to change


def hub_call(hub: Hub, path: str, method: str = "GET", **environ: str) -> tuple[str, dict[str, str], bytes]:
    def app(env: WSGIEnvironment, start_response: StartResponse) -> Any:
        env.update({"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", **environ})
        return hub(env, start_response)

    response = call(app, path, method=method)
    try:
        body = b""
        if path.startswith("/events/") and response.status.startswith("200"):
            body = next(response.body)
        else:
            body = b"".join(response.body)
    finally:
        response.close()
    return response.status, {k.lower(): v for k, v in response.headers}, body


@pytest.mark.parametrize(
    ("host", "allowed", "served"),
    [
        ("127.0.0.1:8000", (), True),
        ("localhost", (), True),
        ("[::1]:8000", (), True),
        ("evil.example:8000", (), False),  # a name made to resolve to 127.0.0.1
        ("", (), False),
        ("events.example.org", ("events.example.org",), True),
        ("EVENTS.example.org:443", ("events.example.org",), True),
        ("a.example.org", (".example.org",), True),
        ("example.org", (".example.org",), True),
        ("badexample.org", (".example.org",), False),
        ("evil.example", ("events.example.org",), False),
        ("anything.example", ("*",), True),
    ],
)
def test_without_a_token_streams_and_stats_need_a_loopback_or_allowed_host(
    host: str, allowed: tuple[str, ...], served: bool
) -> None:
    """Issue 8 (10): a hub on loopback without a token served streams and
    /stats to any Host: a remote page whose name resolves to 127.0.0.1 (DNS
    rebinding) could read every channel."""
    hub = Hub(MemoryBroker(), allowed_hosts=allowed)
    for path in ("/events/secret", "/", "/stats"):
        if path == "/stats" and served and not allowed:
            continue
        status, _, body = hub_call(hub, path, HTTP_HOST=host)
        if served and path != "/stats":
            assert status.startswith("200"), (path, body)
        else:
            assert status.startswith("403"), (path, status)
            if path != "/stats" or not served:
                assert b"--allowed-host" in body or b"only to this machine" in body
    # Load balancers ask /healthz by any name: it tells nothing but "ok".
    assert hub_call(hub, "/healthz", HTTP_HOST=host)[0].startswith("200")
    # With a publish token the operator has opened the hub: any Host is served.
    with_token = Hub(MemoryBroker(), publish_token="t")
    assert hub_call(with_token, "/events/secret", HTTP_HOST=host)[0].startswith("200")


def test_allowed_hosts_are_checked() -> None:
    """Issue 8 (10): a bad allowed host is named, not silently never matched."""
    for bad in ("https://events.example.org", "events.example.org:443", "a b", "", "events.example.org/path"):
        with pytest.raises(ValueError, match="is not a host name"):
            Hub(MemoryBroker(), allowed_hosts=[bad])
    with pytest.raises(ValueError, match="list of host names"):
        Hub(MemoryBroker(), allowed_hosts="events.example.org")
    assert Hub(MemoryBroker(), allowed_hosts=["Events.Example.org", "[::2]"]).allowed_hosts == (
        "events.example.org",
        "[::2]",
    )


def test_a_hub_refuses_a_foreign_host_over_a_real_socket(hub_server: Serve) -> None:
    """Issue 8 (10): DNS rebinding, as a browser would send it: the right
    address, a foreign name. --allowed-host opts in."""
    server = hub_server()
    answer = request(server.port, "/events/secret", {"Host": "evil.example:8000"})
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"not to a loopback name" in answer
    assert b"text/event-stream" not in answer
    allowed = hub_server("--allowed-host", "events.example.org")
    answer = request(allowed.port, "/events/room", {"Host": "events.example.org"})
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in answer.split(b"\r\n\r\n")[0]


def test_stats_and_metrics_are_protected_like_publishing() -> None:
    """Issue 8 (10): /stats and /metrics listed every channel name to anyone."""
    hub = Hub(MemoryBroker())
    assert hub_call(hub, "/stats")[0].startswith("200")
    for environ in ({"REMOTE_ADDR": "10.1.2.3"}, {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}):
        for path in ("/stats", "/metrics"):
            status, _, body = hub_call(hub, path, **environ)
            assert status.startswith("403")
            assert f"shows {path} only to this machine".encode() in body
    with_token = Hub(MemoryBroker(), publish_token="s3cret")
    status, _, body = hub_call(with_token, "/stats", REMOTE_ADDR="10.1.2.3")
    assert status.startswith("403")
    assert body == b"/stats needs the header Authorization: Bearer <publish token>\n"
    assert hub_call(with_token, "/stats", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer wrong")[0].startswith(
        "403"
    )
    status, _, body = hub_call(with_token, "/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret")
    assert status.startswith("200")
    assert b"eventsource_connections_open" in body


def test_per_channel_numbers_are_bounded_to_the_top_channels() -> None:
    """Issue 8 (10): /metrics had one series per channel (unbounded
    cardinality). Only the top N channels by subscribers get one; a histogram
    covers them all."""
    broker = MemoryBroker()
    hub = Hub(broker, top_channels=3)
    for i in range(1, 16):
        for _ in range(i):
            broker.subscribe(f"room{i:02d}", None)
    stats = json.loads(hub_call(hub, "/stats")[2])
    assert stats["connections"]["per_channel"] == {"room15": 15, "room14": 14, "room13": 13}
    assert stats["connections"]["channels"] == 15
    metrics = hub_call(hub, "/metrics")[2].decode()
    series = [line for line in metrics.splitlines() if line.startswith("eventsource_connections{")]
    assert series == [
        'eventsource_connections{channel="room15"} 15.0',
        'eventsource_connections{channel="room14"} 14.0',
        'eventsource_connections{channel="room13"} 13.0',
    ]
    assert 'eventsource_channel_subscribers_bucket{le="1.0"} 1.0' in metrics
    assert 'eventsource_channel_subscribers_bucket{le="10.0"} 10.0' in metrics
    assert 'eventsource_channel_subscribers_bucket{le="+Inf"} 15.0' in metrics
    assert "eventsource_channel_subscribers_count 15.0" in metrics
    assert "eventsource_channel_subscribers_sum 120.0" in metrics
    with pytest.raises(ValueError, match="top_channels"):
        Hub(broker, top_channels=-1)


@pytest.mark.parametrize(
    ("cors_origin", "token", "headers"),
    [
        ("*", None, {"HTTP_ORIGIN": "https://other.example"}),
        ("*", None, {"HTTP_ORIGIN": "http://localhost:3000", "HTTP_SEC_FETCH_SITE": "same-site"}),
        ("http://localhost:3000", None, {"HTTP_ORIGIN": "http://localhost:3000"}),
        ("http://localhost:3000", None, {"HTTP_ORIGIN": "https://other.example"}),
        ("http://localhost:3000", None, {"HTTP_ORIGIN": "http://localhost:3000", "REMOTE_ADDR": "10.1.2.3"}),
        ("*", "t", {"HTTP_ORIGIN": "https://other.example", "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "content-type"}),
        (
            "*",
            "t",
            {
                "HTTP_ORIGIN": "https://other.example",
                "HTTP_ACCESS_CONTROL_REQUEST_HEADERS": "Content-Type, Authorization",
            },
        ),
    ],
)
def test_a_publish_preflight_is_refused_exactly_when_the_post_would_be(
    cors_origin: str, token: str | None, headers: dict[str, str]
) -> None:
    """Issue 8 (10): --cors-origin '*' answered a preflight for a POST it then
    refused (without a token, other origins may not publish)."""
    broker = MemoryBroker()
    hub = Hub(broker, cors_origin=cors_origin, publish_token=token)
    preflight = {**headers, "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}
    status, answer_headers, body = hub_call(hub, "/publish/x", method="OPTIONS", **preflight)
    # The POST the browser would then send: the Authorization header if (and
    # only if) the preflight asked for it.
    post = {k: v for k, v in headers.items() if not k.startswith("HTTP_ACCESS_CONTROL")}
    if "authorization" in headers.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").lower():
        post["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    post_status, _, post_body = hub_call(hub, "/publish/x", method="POST", **post)
    assert status[:3] == ("204" if post_status.startswith("201") else "403"), (status, post_status, post_body)
    if status.startswith("403"):
        assert not any(name.startswith("access-control-allow") for name in answer_headers)
        assert body.strip(), "a refused preflight names the reason"
        assert b"--publish-token" in body or b"Authorization" in body
    else:
        assert "POST" in answer_headers["access-control-allow-methods"]


def test_memory_broker_does_not_warn_under_preload_with_one_worker(gunicorn: Callable[..., ServerProcess]) -> None:
    """Issue 8 (10): MemoryBroker warned on any fork, so gunicorn --preload
    with one worker (the broker made in the arbiter) warned falsely; only a
    multi-process server (wsgi.multiprocess) is worth a warning."""
    one = gunicorn("tests.apps.channels:app", "--preload")
    client = StreamClient(one.port, "/events/pre")
    client.wait_for(lambda c: b"id: " in c.raw)
    post = StreamClient(one.port, "/publish/pre", method="POST", body=b"x")
    assert post.status == 201
    assert client.events(1)[0].data == "x"
    client.close()
    log = "".join(one.log)
    assert "MemoryBroker" not in log, log
    # What it still warns about: a multi-process server (the warning is seen in this log).
    two = gunicorn("tests.apps.channels:app", "--preload", "--workers", "2")
    StreamClient(two.port, "/events/pre").wait_for(lambda c: b"id: " in c.raw)
    wait_until(lambda: "multi-process" in "".join(two.log), 10)
    assert sys.executable  # the same interpreter runs gunicorn (see the fixture)


def test_subscribes_waiting_on_redis_count_against_max_connections(hub_server: Serve, redis_url: str) -> None:
    """Review of issue 8 (6): the cap counted open streams only, so while
    Redis stalled (here CLIENT PAUSE) every waiting subscribe passed the check
    and 100 streams opened under --max-connections 5, into the reserve that
    publishes and health checks need."""
    import redis

    server = hub_server("--redis", redis_url, "--max-connections", "5", "--keepalive", "1")
    warm = StreamClient(server.port, "/events/warm")  # the broker is connected, the reader runs
    warm.wait_for(lambda c: b"id: " in c.raw, timeout=5)
    warm.close()

    def stats() -> Any:
        answer = StreamClient(server.port, "/stats", timeout=5)
        try:
            return json.loads(answer.read_body())
        finally:
            answer.close()

    wait_until(lambda: stats()["connections"]["total"] == 0, 10, 0.1)
    admin = redis.Redis.from_url(redis_url)
    admin.client_pause(1500, all=True)
    try:
        # All at once (a client waits for its answer's headers when it is made).
        connecting = [
            gevent.spawn(StreamClient, server.port, "/events/storm", headers={"Last-Event-ID": "1-0"}, timeout=10)
            for _ in range(100)
        ]
        gevent.joinall(connecting, timeout=15, raise_error=True)
    finally:
        admin.close()
    clients = [g.value for g in connecting]
    for client in clients:
        client.wait_for(lambda c: b"\n\n" in c.raw, timeout=10)
    opened = [c for c in clients if b"retry:" not in c.raw]
    assert 1 <= len(opened) <= 5, f"{len(opened)} streams opened under --max-connections 5"
    numbers = stats()
    assert numbers["connections"]["total"] <= 5
    assert numbers["refused"]["over_max_connections"] >= 95
