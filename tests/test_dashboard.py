"""Issue 13: the hub's live dashboard, ``/dashboard`` and ``/dashboard/events``:
its stream (numbers computed once a second and shared), who may see it
(the rules of ``/stats``, the cookie counting as the header), its soft
refusals, and the page in a real Chromium."""

from __future__ import annotations

import html
import json
import os
import pathlib
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, VENV_BIN, Nginx, RedisServer, Serve, ServerProcess, call
from tests.helpers import StreamClient, parse, wait_until
from wsgi_eventsource import MemoryBroker
from wsgi_eventsource.hub import Hub

SECRET = "dashboard-test-secret-" + "0123456789abcdef" * 3  # 70 bytes: every HMAC algorithm
TOKEN = "s3cret"


def post(port: int, channel: str, data: str, headers: dict[str, str] | None = None) -> int:
    client = StreamClient(
        port,
        f"/publish/{channel}",
        method="POST",
        body=data.encode(),
        headers={"Content-Type": "text/plain", **(headers or {})},
    )
    client.read_body()
    client.close()
    return client.status


def stats_events(client: StreamClient) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in client.parser.events if e.type == "stats"]


def fast(hub: Hub, interval: float = 0.2) -> Hub:
    hub.dashboard.interval = interval  # a test need not wait seconds between ticks
    return hub


# -- the stream ------------------------------------------------------------------------------------


@pytest.mark.server
def test_the_page_is_one_file_that_loads_nothing_else(serve: Callable[..., Any]) -> None:
    server = serve(Hub(MemoryBroker()))
    client = StreamClient(server.server_port, "/dashboard")
    page = client.read_body()
    assert client.status == 200
    assert client.headers["content-type"] == "text/html; charset=utf-8"
    assert b"new EventSource(url)" in page
    assert b'"dashboard/events"' in page
    # Offline: no script, style sheet, image or font from anywhere.
    assert re.search(rb"\b(src|href)\s*=|@import|url\(|<link", page) is None, page
    head = StreamClient(server.server_port, "/dashboard", method="HEAD")
    assert head.status == 200
    assert head.headers["content-length"] == str(len(page))


@pytest.mark.server
def test_viewers_get_the_history_then_stats_computed_once_a_tick_for_all(serve: Callable[..., Any]) -> None:
    """The numbers are computed once per tick whatever the number of viewers,
    and every viewer gets the same bytes (encoded once)."""
    hub = fast(Hub(MemoryBroker()))
    server = serve(hub)
    port = server.server_port
    subscriber = StreamClient(port, "/events/lobby")
    subscriber.wait_for(lambda c: b"id: " in c.raw)
    viewers = [StreamClient(port, "/dashboard/events") for _ in range(2)]
    for viewer in viewers:
        assert viewer.status == 200
        assert viewer.headers["content-type"].startswith("text/event-stream")
        first, opened = viewer.events(2)
        assert (first.type, json.loads(first.data)) == ("history", [])
        assert opened.type == "stats"
    opening = json.loads(viewers[0].parser.events[1].data)
    assert opening["connections"]["per_channel"] == {"lobby": 1}
    assert opening["viewers"] == 1  # the viewer itself, counted
    assert opening["broker"] == {"kind": "MemoryBroker", "probe": False, "reachable": None, "silent_seconds": None}

    computed = hub.dashboard.snapshots
    for i in range(5):
        assert post(port, "lobby", f"event {i}") == 201
    for viewer in viewers:
        viewer.wait_for(lambda c: any(s["events"]["published"] == 5 and s["rates"] for s in stats_events(c)))
    ticks = len(stats_events(viewers[0])) - 1
    assert hub.dashboard.snapshots - computed <= ticks + 1  # not once per viewer
    latest = stats_events(viewers[0])[-1]
    assert latest["events"] == {"published": 5, "delivered": 5}
    assert latest["viewers"] == 2
    assert latest["connections"]["total"] == 1  # viewers are not the channels' streams
    assert any(s["rates"] and s["rates"]["published"] > 0 for s in stats_events(viewers[0]))
    # The ticks both viewers got after both were open: the same events.
    common = [e.data for e in viewers[1].parser.events if e.type == "stats"][1:]
    assert common
    assert all(data in [e.data for e in viewers[0].parser.events] for data in common)

    late = StreamClient(port, "/dashboard/events")  # a late viewer gets the chart so far
    history = json.loads(late.events(1)[0].data)
    assert history
    assert all(set(sample) == {"t", "published", "delivered"} for sample in history)


@pytest.mark.server
def test_the_ticker_stops_when_the_last_viewer_leaves(serve: Callable[..., Any]) -> None:
    hub = fast(Hub(MemoryBroker()), 0.05)
    server = serve(hub)
    viewer = StreamClient(server.server_port, "/dashboard/events")
    viewer.events(3)
    assert hub.dashboard._ticker is not None
    viewer.close()
    wait_until(lambda: hub.dashboard._ticker is None, 5, message="the ticker kept running without viewers")
    computed = hub.dashboard.snapshots
    time.sleep(0.3)  # six ticks' worth of nothing: no event to wait for
    assert hub.dashboard.snapshots == computed


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (it is stopped and killed)."""
    server = RedisServer()
    yield server
    if server.process is not None and server.process.proc.poll() is None:
        os.kill(server.process.proc.pid, signal.SIGCONT)
    server.stop()


@pytest.mark.server
def test_the_dashboard_shows_redis_reachable_then_not(serve: Callable[..., Any], own_redis: RedisServer) -> None:
    from wsgi_eventsource.brokers.redis import RedisBroker

    broker = RedisBroker(own_redis.url, block=0.2)
    try:
        hub = fast(Hub(broker))
        server = serve(hub)
        viewer = StreamClient(server.server_port, "/dashboard/events")
        viewer.wait_for(lambda c: any(s["broker"]["reachable"] is True for s in stats_events(c)))
        assert stats_events(viewer)[-1]["broker"]["kind"] == "RedisBroker"
        own_redis.kill()
        viewer.wait_for(lambda c: stats_events(c)[-1]["broker"]["reachable"] is False, timeout=15)
        own_redis.start()
        viewer.wait_for(lambda c: stats_events(c)[-1]["broker"]["reachable"] is True, timeout=15)
    finally:
        broker.close()


@pytest.mark.server
def test_a_frozen_redis_does_not_hold_the_dashboards_ticks(hub_server: Serve, own_redis: RedisServer) -> None:
    """A Redis that does not answer (SIGSTOP) would hold every tick for the
    ping's socket timeout (5 s), just when the dashboard matters: under
    gunicorn the ticks go on once a second and say since when Redis has not
    answered. (Fails with the ping inside the tick.)"""
    server = hub_server("--redis", own_redis.url)
    viewer = StreamClient(server.port, "/dashboard/events", timeout=30)
    viewer.wait_for(lambda c: any(s["broker"]["reachable"] is True for s in stats_events(c)))
    assert own_redis.process is not None
    os.kill(own_redis.process.proc.pid, signal.SIGSTOP)  # Redis answers nothing now
    try:
        frozen_at = time.monotonic()
        viewer.wait_for(lambda c: stats_events(c)[-1]["broker"]["reachable"] is False, timeout=10)
        assert time.monotonic() - frozen_at < 3.5  # a second of silence and a tick, not the 5 s timeout
        ticks = len(stats_events(viewer))
        viewer.wait_for(lambda c: len(stats_events(c)) >= ticks + 2, timeout=10)
        assert time.monotonic() - frozen_at < 5.5  # still once a second
        assert stats_events(viewer)[-1]["broker"]["silent_seconds"] > 1
    finally:
        os.kill(own_redis.process.proc.pid, signal.SIGCONT)
    viewer.wait_for(lambda c: stats_events(c)[-1]["broker"]["reachable"] is True, timeout=15)


# -- who may see it -------------------------------------------------------------------------------


def _hub(kind: str) -> Hub:
    if kind == "loopback":
        return Hub(MemoryBroker())
    if kind == "publish token":
        return Hub(MemoryBroker(), publish_token=TOKEN)
    from wsgi_eventsource.auth import TokenAuth

    return Hub(MemoryBroker(), auth=TokenAuth(SECRET), publish_token=TOKEN if kind == "both" else None)


def _signed(*patterns: str, ttl: float = 60) -> str:
    from wsgi_eventsource.auth import mint

    return mint(SECRET, publish=patterns, ttl=ttl)


def _ask(hub: Hub, path: str, environ: dict[str, str], query: str | None = None) -> tuple[str, str, str]:
    """(status, content type, body) of *path*; a stream is read to its first event."""

    def app(env: dict[str, Any], start_response: Any) -> Any:
        env.update({"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "localhost:8000", **environ})
        return hub(env, start_response)

    response = call(app, path, query_string=query)
    try:
        content_type = response.header("Content-Type") or ""
        if response.status.startswith("200") and content_type.startswith("text/event-stream"):
            return response.status, content_type, next(response.body).decode()
        return response.status, content_type, b"".join(response.body).decode()
    finally:
        response.close()


ALLOWED = [
    pytest.param("loopback", {}, None, id="no-token-from-this-machine"),
    pytest.param("publish token", {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}, None, id="publish-token-header"),
    pytest.param("publish token", {"HTTP_COOKIE": f"eventsource_token={TOKEN}"}, None, id="publish-token-cookie"),
    pytest.param(
        "publish token",
        {"HTTP_COOKIE": f"eventsource_token={TOKEN}", "REMOTE_ADDR": "203.0.113.9", "HTTP_HOST": "events.example"},
        None,
        id="publish-token-from-anywhere",
    ),
    pytest.param("signed", {"HTTP_AUTHORIZATION": "Bearer {all}"}, None, id="signed-header"),
    pytest.param("signed", {"HTTP_COOKIE": "other=1; eventsource_token={all}"}, None, id="signed-cookie"),
    pytest.param("both", {"HTTP_COOKIE": f"eventsource_token={TOKEN}"}, None, id="signed-and-publish-token-cookie"),
]
REFUSED = [
    pytest.param("loopback", {"REMOTE_ADDR": "10.1.2.3"}, None, "403", "came from 10.1.2.3", id="no-token-remote"),
    pytest.param("loopback", {"HTTP_X_FORWARDED_FOR": "198.51.100.7"}, None, "403", "through a proxy", id="proxy"),
    pytest.param(
        "loopback", {"HTTP_ORIGIN": "https://evil.example"}, None, "403", "page of another site", id="other-site"
    ),
    pytest.param(
        "loopback", {"HTTP_HOST": "evil.example:8000"}, None, "403", "not to a loopback name", id="dns-rebinding"
    ),
    pytest.param("publish token", {}, None, "403", "needs the publish token", id="publish-token-missing"),
    pytest.param(
        "publish token", {"HTTP_COOKIE": "eventsource_token=wrong"}, None, "403", "is wrong", id="publish-token-wrong"
    ),
    # Never from the URL: it would land in access logs, history and Referer.
    pytest.param(
        "publish token", {}, f"access_token={TOKEN}", "403", "needs the publish token", id="publish-token-in-url"
    ),
    pytest.param("signed", {}, None, "401", "needs the header Authorization: Bearer <token>", id="signed-missing"),
    pytest.param("signed", {}, "access_token={all}", "401", "eventsource_token cookie", id="signed-in-url"),
    pytest.param("signed", {"HTTP_COOKIE": "eventsource_token={room}"}, None, "403", "('**')", id="signed-narrow"),
    pytest.param("signed", {"HTTP_COOKIE": "eventsource_token={expired}"}, None, "401", "expired", id="expired"),
    pytest.param("both", {"HTTP_COOKIE": "eventsource_token=wrong"}, None, "401", "not the publish token", id="both"),
]


def _expired() -> str:
    import jwt

    claims = {"exp": int(time.time()) - 60, "eventsource": {"publish": ["**"]}}
    return str(jwt.encode(claims, SECRET, algorithm="HS256"))


def _fill(text: str) -> str:
    if "{" not in text:
        return text
    return text.format(all=_signed("**"), room=_signed("room/*"), expired=_expired())


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/events"])
@pytest.mark.parametrize(("kind", "environ", "query"), ALLOWED)
def test_who_may_see_the_dashboard(kind: str, environ: dict[str, str], query: str | None, path: str) -> None:
    """As for /stats, the cookie counting as the header (an EventSource sends no header)."""
    environ = {name: _fill(value) for name, value in environ.items()}
    status, content_type, body = _ask(_hub(kind), path, environ, query)
    assert status == "200 OK", body
    if path == "/dashboard":
        assert content_type.startswith("text/html")
        assert "dashboard/events" in body
    else:
        assert content_type.startswith("text/event-stream")


@pytest.mark.parametrize(("kind", "environ", "query", "code", "reason"), REFUSED)
def test_who_may_not_see_the_dashboard(
    kind: str, environ: dict[str, str], query: str | None, code: str, reason: str
) -> None:
    """A refusal is for good (a token will not come by itself): a 401 or 403
    for the stream too, with the reason; for the page, that reason in HTML
    and, where a token would help, a form for it."""
    environ = {name: _fill(value) for name, value in environ.items()}
    query = None if query is None else _fill(query)
    status, content_type, body = _ask(_hub(kind), "/dashboard/events", environ, query)
    assert (status[:3], content_type) == (code, "text/plain; charset=utf-8")
    assert reason in body
    status, content_type, page = _ask(_hub(kind), "/dashboard", environ, query)
    # The Host check comes before any route, in plain text.
    html_page = "HTTP_HOST" not in environ
    assert (status[:3], content_type) == (code, f"text/{'html' if html_page else 'plain'}; charset=utf-8")
    if html_page:
        assert html.escape(reason) in page
        token_helps = kind != "loopback"
        assert ('<form id="login" hidden>' in page) is not token_helps
        assert "@" not in re.sub(r"@import|[\w.-]+@[\w.-]+", "", page)  # every placeholder filled


def test_the_refusal_page_escapes_what_the_request_sent() -> None:
    origin = "https://evil.example/<b>x</b>@FORM@"
    status, _, page = _ask(_hub("loopback"), "/dashboard", {"HTTP_ORIGIN": origin})
    assert status.startswith("403")
    assert "https://evil.example/&lt;b&gt;x&lt;/b&gt;@FORM@" in page  # quoted as sent, not filled in
    assert "<b>" not in page


def test_a_401_page_keeps_www_authenticate() -> None:
    def app(env: dict[str, Any], start_response: Any) -> Any:
        env["REMOTE_ADDR"] = "127.0.0.1"
        return _hub("signed")(env, start_response)

    response = call(app, "/dashboard")
    response.close()
    assert response.status.startswith("401")
    assert (response.header("WWW-Authenticate") or "").startswith("Bearer")


@pytest.mark.server
def test_a_signed_tokens_dashboard_stream_ends_when_the_token_expires(serve: Callable[..., Any]) -> None:
    from wsgi_eventsource.auth import TokenAuth

    hub = Hub(MemoryBroker(), auth=TokenAuth(SECRET))
    server = serve(hub)
    viewer = StreamClient(
        server.server_port, "/dashboard/events", headers={"Cookie": f"eventsource_token={_signed('**', ttl=1)}"}
    )
    assert viewer.status == 200
    started = time.monotonic()
    viewer.read_to_end(timeout=5)
    assert time.monotonic() - started < 3
    assert viewer.parser.reconnection_time is not None  # it comes back, and then gets its 401


# -- soft refusals ----------------------------------------------------------------------------------


@pytest.mark.server
def test_a_full_server_refuses_a_viewer_softly_and_viewers_count_as_streams(serve: Callable[..., Any]) -> None:
    hub = Hub(MemoryBroker(), max_connections=1)
    server = serve(hub)
    port = server.server_port
    viewer = StreamClient(port, "/dashboard/events")
    viewer.events(2)
    refused = StreamClient(port, "/events/lobby")  # the viewer holds the one slot
    assert refused.status == 200
    assert b"maximum of 1 streams" in refused.read_body()  # a soft refusal (it has a Content-Length)
    viewer.close()
    wait_until(lambda: hub.dashboard.viewers == 0, 5)

    subscriber = StreamClient(port, "/events/lobby")
    subscriber.wait_for(lambda c: b"id: " in c.raw)
    second = StreamClient(port, "/dashboard/events")
    assert (second.status, second.headers["content-type"]) == (200, "text/event-stream; charset=utf-8")
    answer = parse(second.read_body())
    assert 2500 <= (answer.reconnection_time or 0) <= 7500  # refusal_retry 5000, spread
    assert not answer.events
    assert "this server holds its maximum of 1 streams; reconnect later" in " ".join(answer.comments)
    assert hub.stats()["refused"]["over_max_connections"] == 2


@pytest.mark.server
def test_a_server_shutting_down_refuses_a_viewer_softly(serve: Callable[..., Any]) -> None:
    hub = Hub(MemoryBroker(), shutdown_retry=2000)
    server = serve(hub)
    viewer = StreamClient(server.server_port, "/dashboard/events")
    viewer.events(2)
    hub.dashboard.source.shutdown()
    viewer.read_to_end(timeout=5)  # an open viewer is ended with the hint
    assert 1000 <= (viewer.parser.reconnection_time or 0) <= 3000
    late = StreamClient(server.server_port, "/dashboard/events")
    assert late.status == 200
    late.read_to_end(timeout=5)
    assert 1000 <= (late.parser.reconnection_time or 0) <= 3000
    assert not [e for e in late.parser.events if e.type == "stats"]
    assert hub.stats()["refused"]["shutting_down"] == 1


@pytest.mark.server
def test_sigterm_ends_the_viewers_of_a_gunicorn_worker_with_a_retry_hint(hub_server: Serve) -> None:
    """The viewers' streams have an EventSource of their own: gunicorn's
    SIGTERM must end them too (with the hint), not leave them to the SIGKILL."""
    server = hub_server("--graceful-timeout", "30", "--shutdown-retry", "1234")
    viewer = StreamClient(server.port, "/dashboard/events")
    viewer.events(2)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    viewer.read_to_end(timeout=10)
    assert 617 <= (viewer.parser.reconnection_time or 0) <= 1851
    assert server.wait(15) == 0
    assert time.monotonic() - started < 6  # well before the 30 s graceful timeout


# -- Chromium ----------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def two_workers(nginx: Any, redis_url: str) -> Iterator[int]:
    """``serve --workers 2`` (Redis, a publish token) behind nginx; yields nginx's port."""
    command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--redis", redis_url]
    command += ["--workers", "2", "--publish-token", TOKEN]
    hub = ServerProcess(command, ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)", stop_signal=signal.SIGINT)
    proxy: Nginx = nginx(hub.port)
    yield proxy.port
    hub.stop()


@pytest.mark.server
def test_the_dashboard_in_chromium_asks_for_the_token_then_updates_live(two_workers: int, tmp_path: Any) -> None:
    """Through nginx (so not from this machine): the page asks for the publish
    token, keeps it in the cookie, and then its numbers and its chart follow
    what is published, over its own event stream."""
    from playwright.sync_api import sync_playwright

    port = two_workers
    origin = f"http://127.0.0.1:{port}"
    listeners = [StreamClient(port, f"/events/{name}") for name in ("news", "news", "news", "alerts")]
    for listener in listeners:
        listener.wait_for(lambda c: b"id: " in c.raw)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = chromium.new_context(viewport={"width": 1100, "height": 900})
            page = context.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            answer = page.goto(f"{origin}/dashboard")
            assert answer is not None
            assert answer.status == 403
            assert "needs the publish token" in page.inner_text("#why")
            page.fill("#token", TOKEN)
            page.click("#login button")
            page.wait_for_selector("#state.open", timeout=10_000)
            (cookie,) = [c for c in context.cookies() if c["name"] == "eventsource_token"]
            assert (cookie["value"], cookie["sameSite"]) == (TOKEN, "Strict")

            page.wait_for_function("document.getElementById('streams').textContent === '4'", timeout=10_000)
            assert page.inner_text("#workers") == "2"
            page.wait_for_function("document.getElementById('redis-state').textContent === 'yes'", timeout=5000)
            channels = page.locator("#per-channel tr").all_inner_texts()
            assert [line.split()[:2] for line in channels] == [["news", "3"], ["alerts", "1"]]

            before = page.get_attribute("#published-line", "points")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            deadline = time.monotonic() + 4
            sent = 0
            while time.monotonic() < deadline:  # a few seconds of traffic for the chart
                for _ in range(5):
                    assert post(port, "news", f"update {sent}", auth) == 201
                    sent += 1
                time.sleep(0.1)  # the pace of the traffic, not a wait for anything
            page.wait_for_function(f"document.getElementById('published').textContent === '{sent:,}'", timeout=10_000)
            page.wait_for_function(
                f"document.getElementById('delivered').textContent === '{3 * sent:,}'", timeout=10_000
            )
            points = page.get_attribute("#published-line", "points") or ""
            assert points != before
            heights = [float(point.split(",")[1]) for point in points.split()]
            assert len(heights) >= 3
            assert min(heights) < 150
            assert float(page.inner_text("#chart-max").replace(",", "")) > 1
            # Offline: the page asked for nothing but itself and its stream.
            paths = {url.removeprefix(origin) for url in requested} - {"/favicon.ico"}
            assert paths == {"/dashboard", "/dashboard/events"}, requested

            target = (
                pathlib.Path(ROOT, "docs", "dashboard.png")
                if os.environ.get("UPDATE_SCREENSHOT")
                else tmp_path / "dashboard.png"
            )
            page.screenshot(path=str(target), full_page=True)
            assert target.stat().st_size > 10_000
        finally:
            chromium.close()
