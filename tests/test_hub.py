"""The hub and its command line: ``wsgi-eventsource serve`` started for real."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.conftest import ROOT, VENV_BIN, Serve, call, free_port
from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import MemoryBroker, cli
from wsgi_eventsource.hub import Hub

pytestmark = pytest.mark.server


def get(port: int, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    client = StreamClient(port, path, **kwargs)
    try:
        return client.status, client.headers, client.read_body()
    finally:
        client.close()


def post(port: int, channel: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    client = StreamClient(
        port, f"/publish/{channel}", method="POST", body=body, headers={"Content-Type": "text/plain", **(headers or {})}
    )
    try:
        return client.status, client.read_body()
    finally:
        client.close()


# -- the command line ---------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.path.join(VENV_BIN, "wsgi-eventsource"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_help_lists_every_option_and_the_environment_variables() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for option in [
        "--host", "--port", "--workers", "--worker-connections", "--redis", "--history", "--keepalive",
        "--publish-token", "--cors-origin", "--max-connections", "--allowed-host", "--top-channels",
        "--max-channels",
    ]:  # fmt: skip
        assert option in result.stdout
    assert "reserve of max(20, worker-connections/10)" in " ".join(result.stdout.split())
    assert "WSGI_EVENTSOURCE_" in result.stdout
    assert "10000" in result.stdout  # the hub's worker-connections default, not gunicorn's 1000


def test_several_workers_without_redis_are_refused() -> None:
    result = run_cli("serve", "--workers", "2")
    assert result.returncode == 2
    assert "--workers > 1 needs --redis" in result.stderr
    from_env = run_cli("serve", env={"WSGI_EVENTSOURCE_WORKERS": "3"})
    assert from_env.returncode == 2
    assert "needs --redis" in from_env.stderr


def test_bad_option_values_are_refused() -> None:
    result = run_cli("serve", "--keepalive", "-1")
    assert result.returncode == 2
    assert "keepalive" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--shutdown-retry", "-1"], {}, "--shutdown-retry: must be a whole number of milliseconds"),
        (["--publish-token", ""], {}, "--publish-token: must not be empty"),
        (["--redis", "localhost:6379"], {}, "--redis: a Redis URL starts with redis://"),
        (["--cors-origin", "https://a.example/"], {}, "no trailing slash"),
        (["--port", "http"], {}, "--port: must be a port number"),
        (["--log-level", "loud"], {}, "invalid choice"),
        # Kubernetes sets this for a Service named wsgi-eventsource:
        ([], {"WSGI_EVENTSOURCE_PORT": "tcp://10.0.0.7:8000"}, "WSGI_EVENTSOURCE_PORT='tcp://10.0.0.7:8000': must be"),
        ([], {"WSGI_EVENTSOURCE_PUBLISH_TOKEN": ""}, "WSGI_EVENTSOURCE_PUBLISH_TOKEN='': must not be empty"),
        ([], {"WSGI_EVENTSOURCE_WORKERS": "0"}, "WSGI_EVENTSOURCE_WORKERS='0': must be a positive integer"),
        ([], {"WSGI_EVENTSOURCE_LOG_LEVEL": "loud"}, "WSGI_EVENTSOURCE_LOG_LEVEL='loud': must be one of"),
    ],
)
def test_bad_values_from_the_command_line_or_the_environment_are_named(
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", *args])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_command_line_wins_over_a_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGI_EVENTSOURCE_PORT", "tcp://10.0.0.7:8000")
    monkeypatch.setenv("WSGI_EVENTSOURCE_HISTORY", "7")
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve", "--port", "8123"])
    (args,) = served
    assert (args.port, args.history, args.keepalive) == (8123, 7, 15.0)  # command line, environment, default


def test_max_age_reaches_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve", "--max-age", "90", "--history", "5"])
    hub = cli.make_hub_factory(served[0])()
    assert (hub.broker.max_age, hub.broker.history) == (90.0, 5)


def test_an_open_files_limit_too_low_for_worker_connections_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    cli._raise_fd_limit(hard + 1)
    assert f"the open-files limit is {hard} (hard limit), below the {hard + 1}" in capsys.readouterr().err


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wsgi_eventsource", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert result.stdout.strip().startswith("wsgi-eventsource 0.")


# -- the running hub --------------------------------------------------------------------


def test_the_embedded_hub_serves_page_health_streams_stats_and_metrics(hub_server: Serve) -> None:
    server = hub_server("--keepalive", "0.5")
    status, headers, page = get(server.port, "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"new EventSource" in page
    assert get(server.port, "/healthz")[0] == 200

    subscriber = StreamClient(server.port, "/events/lobby")
    subscriber.wait_for(lambda c: b"id: " in c.raw)
    status, answer = post(server.port, "lobby", b"hello\nworld")  # from loopback: allowed without a token
    assert status == 201
    event = subscriber.events(1)[0]
    assert (event.data, event.last_event_id) == ("hello\nworld", json.loads(answer)["id"])

    stats = json.loads(get(server.port, "/stats")[2])
    assert stats["connections"]["total"] == 1
    assert stats["connections"]["per_channel"] == {"lobby": 1}
    assert stats["events"] == {"published": 1, "delivered": 1}
    assert stats["uptime_seconds"] > 0
    metrics = get(server.port, "/metrics")[2].decode()
    assert 'eventsource_connections{channel="lobby"} 1.0' in metrics
    assert "eventsource_connections_open 1.0" in metrics
    assert "eventsource_events_published_total 1.0" in metrics
    assert get(server.port, "/nowhere")[0] == 404


def test_python_m_and_environment_variables(hub_server: Serve) -> None:
    server = hub_server(module=True, env={"WSGI_EVENTSOURCE_HISTORY": "2"})
    for i in range(5):
        assert post(server.port, "h", f"m{i}".encode())[0] == 201
    client = StreamClient(server.port, "/events/h", headers={"Last-Event-ID": "0-0"})
    events = client.events(3)
    assert events[0].type == "stream-reset"
    assert [e.data for e in events[1:]] == ["m3", "m4"]  # history 2, from the environment


def test_the_hub_multiplexes_and_max_channels_comes_from_the_command_line(hub_server: Serve) -> None:
    """Issue 9: GET /events?channel=a&channel=b through the hub; --max-channels bounds it."""
    server = hub_server("--max-channels", "2")
    too_many = StreamClient(server.port, "/events?channel=a&channel=b&channel=c")
    assert too_many.status == 400
    assert b"3 channels are listed; one stream takes at most 2 (max_channels)" in too_many.read_body()
    client = StreamClient(server.port, "/events?channel=a&channel=b&channel=a")  # a twice counts once
    assert client.status == 200
    client.wait_for(lambda c: c.parser.last_event_id.count("*") == 2)  # the bare starting cursor
    assert post(server.port, "b", b"to b")[0] == 201
    (event,) = client.events(1)
    assert (event.data, event.last_event_id.partition("*")[0]) == ("to b", "b")


def test_publish_token_is_required_when_set(hub_server: Serve) -> None:
    server = hub_server("--publish-token", "s3cret")
    missing = (403, b"Publishing needs the header Authorization: Bearer <publish token>\n")
    wrong = (403, b"The publish token is wrong\n")
    assert post(server.port, "t", b"x") == missing
    assert post(server.port, "t", b"x", {"Authorization": "Bearer wrong"}) == wrong
    assert post(server.port, "t", b"x", {"Authorization": "Bearer s3cret-and-more"}) == wrong
    assert post(server.port, "t", b"x", {"Authorization": "Basic s3cret"}) == missing
    assert post(server.port, "t", b"x", {"Authorization": "Bearer s3cret"})[0] == 201


def test_without_a_token_only_loopback_may_publish() -> None:
    hub = Hub(MemoryBroker())

    def from_address(address: str) -> str:
        def app(environ: dict[str, Any], start_response: Any) -> Any:
            environ["REMOTE_ADDR"] = address
            return hub(environ, start_response)

        response = call(app, "/publish/x", method="POST")
        response.close()
        return response.status

    assert from_address("127.0.0.1").startswith("201")
    assert from_address("::1").startswith("201")
    assert from_address("10.1.2.3").startswith("403")
    assert from_address("203.0.113.9").startswith("403")
    assert from_address("not an address").startswith("403")

    def through_a_proxy(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_ADDR"] = "127.0.0.1"
        environ["HTTP_X_FORWARDED_FOR"] = "198.51.100.7"
        return hub(environ, start_response)

    response = call(through_a_proxy, "/publish/x", method="POST")
    response.close()
    assert response.status.startswith("403")


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, None),
        ({"HTTP_ORIGIN": "http://localhost"}, None),  # the demo page, same origin
        ({"HTTP_SEC_FETCH_SITE": "same-origin"}, None),
        ({"HTTP_HOST": "127.0.0.1:8000", "HTTP_ORIGIN": "http://127.0.0.1:8000"}, None),
        ({"HTTP_HOST": "[::1]:8000"}, None),
        ({"HTTP_ORIGIN": "http://localhost:3000", "HTTP_SEC_FETCH_SITE": "same-site"}, None),  # the CORS origin
        ({"HTTP_ORIGIN": "https://evil.example"}, "from a page of another site"),
        ({"HTTP_ORIGIN": "https://evil.example", "HTTP_SEC_FETCH_SITE": "cross-site"}, "from a page of another site"),
        ({"HTTP_SEC_FETCH_SITE": "cross-site"}, "from a page of another site"),
        ({"HTTP_HOST": "evil.example:8000", "HTTP_ORIGIN": "http://evil.example:8000"}, "not to a loopback name"),
        ({"REMOTE_ADDR": "10.1.2.3"}, "came from 10.1.2.3"),
        ({"HTTP_X_REAL_IP": "198.51.100.7"}, "through a proxy"),
    ],
)
def test_without_a_token_browsers_on_other_sites_may_not_publish(environ: dict[str, str], reason: str | None) -> None:
    # Any page a developer visits can POST to a hub on their own machine;
    # only the hub's own pages and its one CORS origin may.
    broker = MemoryBroker()
    hub = Hub(broker, cors_origin="http://localhost:3000")

    def app(env: dict[str, Any], start_response: Any) -> Any:
        env.update({"REMOTE_ADDR": "127.0.0.1", **environ})
        return hub(env, start_response)

    response = call(app, "/publish/x", method="POST")
    body = b"".join(response.body).decode()
    response.close()
    if reason is None:
        assert response.status.startswith("201"), body
        assert len(broker.history_of("x")) == 1
    else:
        assert response.status.startswith("403")
        assert reason in body
        assert "--publish-token" in body
        assert broker.history_of("x") == []


@pytest.mark.parametrize(
    "origin", ["https://app.example/", "https://a.example https://b.example", "app.example", "https://x/path"]
)
def test_a_cors_origin_browsers_would_reject_is_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="one origin such as"):
        Hub(MemoryBroker(), cors_origin=origin)


def test_cors_origin_allows_a_named_origin_with_credentials(hub_server: Serve) -> None:
    server = hub_server("--cors-origin", "https://app.example")
    stream = StreamClient(server.port, "/events/c", headers={"Origin": "https://app.example"})
    assert stream.headers["access-control-allow-origin"] == "https://app.example"
    assert stream.headers["access-control-allow-credentials"] == "true"
    stream.close()
    status, headers, _ = get(
        server.port,
        "/publish/c",
        method="OPTIONS",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 204
    assert "POST" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    status, headers, _ = get(server.port, "/publish/c", method="POST", body=b"x")
    assert status == 201
    assert headers["access-control-allow-origin"] == "https://app.example"


def test_cors_star_never_comes_with_credentials(hub_server: Serve) -> None:
    server = hub_server("--cors-origin", "*")
    stream = StreamClient(server.port, "/events/c")
    assert stream.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in stream.headers


def test_sigterm_ends_streams_with_a_retry_hint_and_exits_promptly(hub_server: Serve) -> None:
    server = hub_server("--graceful-timeout", "30", "--shutdown-retry", "1234")
    clients = [StreamClient(server.port, f"/events/s{i}") for i in range(3)]
    for c in clients:
        c.wait_for(lambda c: b"id: " in c.raw)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for c in clients:
        c.read_to_end(timeout=5)
        assert 617 <= (c.parser.reconnection_time or 0) <= 1851
    assert server.wait(15) == 0
    assert time.monotonic() - started < 6  # well before the 30 s graceful timeout


def test_several_workers_with_redis_deliver_to_subscribers_of_every_worker(hub_server: Serve, redis_url: str) -> None:
    server = hub_server("--workers", "2", "--redis", redis_url)
    wait_until(lambda: len({json.loads(get(server.port, "/stats")[2])["pid"] for _ in range(6)}) == 2, 20, 0.2)
    clients = [StreamClient(server.port, "/events/multi") for _ in range(12)]
    for c in clients:
        c.wait_for(lambda c: b"id: " in c.raw)
    sent = [json.loads(post(server.port, "multi", f"e{i}".encode())[1])["id"] for i in range(3)]
    for c in clients:
        assert [e.last_event_id for e in c.events(3)] == sent


def test_serve_stops_at_start_when_redis_is_too_old_for_max_age(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 8 (10): max_age needs Redis 6.2; the hub said nothing at start and
    every publish failed later. (A 6.0 server is simulated by its INFO answer.)"""
    import redis

    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve", "--redis", redis_url, "--max-age", "30", "--redis-max-connections", "7"])
    assert served, "a recent Redis must be accepted"
    hub = cli.make_hub_factory(served[0])()
    assert hub.broker.max_connections == 7
    monkeypatch.setattr(redis.Redis, "info", lambda self, *args, **kwargs: {"redis_version": "6.0.16"})
    with pytest.raises(SystemExit, match=r"max_age .* needs Redis 6\.2 or later.* is 6\.0\.16"):
        cli.main(["serve", "--redis", redis_url, "--max-age", "30"])
    assert len(served) == 1


def test_serve_starts_with_a_warning_when_redis_does_not_answer_yet(hub_server: Serve) -> None:
    """A Redis that is not up yet is no reason not to start: streams are
    refused softly until it answers."""
    server = hub_server("--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert "does not answer yet; starting anyway" in "".join(server.log)
    client = StreamClient(server.port, "/events/early")
    assert client.status == 200
    client.read_to_end(timeout=5)
    assert client.parser.reconnection_time is not None
    assert get(server.port, "/healthz")[0] == 503
