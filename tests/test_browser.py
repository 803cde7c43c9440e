"""A real headless Chromium (Debian's) against the hub behind nginx, driven by
Playwright (its driver only; the browser is the system one)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT, VENV_BIN, Nginx, RedisServer, ServerProcess
from tests.helpers import StreamClient

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What works headless on this network (see the machine notes): no sandbox as
# root, no GPU, no QUIC, and none of Chromium's background network services.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"


@pytest.fixture
def site(nginx: Any, redis_server: RedisServer, redis_url: str) -> Iterator[tuple[int, ServerProcess]]:
    """The hub (Redis broker) behind nginx; yields nginx's port and the hub."""
    command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--redis", redis_url]
    command += ["--publish-token", TOKEN, "--keepalive", "2", "--shutdown-retry", "1500"]
    hub = ServerProcess(command, ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)", stop_signal=signal.SIGINT)
    proxy: Nginx = nginx(hub.port)
    yield proxy.port, hub
    hub.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def publish(port: int, channel: str, data: str, event: str | None = None) -> str:
    body = {"data": data} if event is None else {"data": data, "event": event}
    client = StreamClient(
        port,
        f"/publish/{channel}",
        method="POST",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    answer = client.read_body()
    client.close()
    assert client.status == 201, answer
    event_id: str = json.loads(answer)["id"]
    return event_id


LISTEN = """
(url) => new Promise((resolve) => {
  window.received = [];
  window.opens = 0;
  const started = performance.now();
  const source = new EventSource(url);
  window.source = source;
  const keep = (e) => window.received.push({type: e.type, data: e.data, id: e.lastEventId});
  source.onmessage = keep;
  source.addEventListener("tick", keep);
  source.addEventListener("stream-reset", keep);
  source.onopen = () => { window.opens += 1; if (window.opens === 1) resolve(performance.now() - started); };
})
"""


def received(page: Any, n: int, timeout: float = 5) -> list[dict[str, str]]:
    page.wait_for_function(f"window.received.length >= {n}", timeout=timeout * 1000)
    result: list[dict[str, str]] = page.evaluate("window.received")
    return result


def test_eventsource_opens_at_once_and_gets_events_intact(site: tuple[int, ServerProcess], browser: Any) -> None:
    port, _ = site
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/healthz")
    opened_after_ms = page.evaluate(LISTEN, "/events/browser")
    assert opened_after_ms < 1000
    plain = publish(port, "browser", "plain text")
    named = publish(port, "browser", "tock", event="tick")
    multi = publish(port, "browser", "line one\nline two\r\nline three \u2603 \U0001f600")
    assert received(page, 3) == [
        {"type": "message", "data": "plain text", "id": plain},
        {"type": "tick", "data": "tock", "id": named},
        {"type": "message", "data": "line one\nline two\nline three \u2603 \U0001f600", "id": multi},
    ]


def test_the_browser_reconnects_with_last_event_id_and_gets_what_it_missed(
    site: tuple[int, ServerProcess], browser: Any
) -> None:
    port, hub = site
    page = browser.new_page()
    stream_requests: list[Any] = []
    page.on("request", lambda r: stream_requests.append(r) if "/events/" in r.url else None)
    page.goto(f"http://127.0.0.1:{port}/healthz")
    page.evaluate(LISTEN, "/events/resume")
    before = [publish(port, "resume", f"before {i}") for i in range(2)]
    assert [e["id"] for e in received(page, 2)] == before

    # The server ends the stream: gunicorn replaces its worker (SIGHUP); the old
    # one ends its streams with a retry hint of 1.5 s.
    hub.proc.send_signal(signal.SIGHUP)
    page.wait_for_function("window.source.readyState === EventSource.CONNECTING", timeout=10_000)
    missed = [publish(port, "resume", f"while away {i}") for i in range(3)]
    page.wait_for_function("window.opens >= 2", timeout=10_000)
    events = received(page, 5, timeout=10)
    assert [e["id"] for e in events] == before + missed  # all of it, once, in order
    assert all(e["type"] == "message" for e in events)
    assert len(stream_requests) == 2
    assert "last-event-id" not in stream_requests[0].all_headers()
    assert stream_requests[1].all_headers().get("last-event-id") == before[-1]


def test_the_demo_page_works_and_its_screenshot(site: tuple[int, ServerProcess], browser: Any, tmp_path: Any) -> None:
    port, _ = site
    page = browser.new_page(viewport={"width": 960, "height": 720})
    started = time.monotonic()
    page.goto(f"http://127.0.0.1:{port}/?channel=lobby")
    page.wait_for_selector("#state.open", timeout=5000)
    assert time.monotonic() - started < 3
    assert page.inner_text("#current-channel") == "lobby"

    publish(port, "lobby", "Welcome to the lobby")
    page.fill("#data", "Deploy finished\nall 12 hosts green")
    page.fill("#event", "deploy")
    page.fill("#token", TOKEN)
    page.click("#publish button")
    page.wait_for_function("document.querySelectorAll('#events li').length >= 2", timeout=5000)
    page.wait_for_selector("#publish-result:has-text('published')", timeout=5000)
    newest = page.locator("#events li").first
    assert "named" in (newest.get_attribute("class") or "")
    assert newest.locator("pre").inner_text() == "Deploy finished\nall 12 hosts green"
    assert page.inner_text("#last-id") != "(none)"
    publish(port, "lobby", "CPU at 42%", event="metrics")  # a name the page does not listen for
    publish(port, "lobby", "Good night")
    page.wait_for_function("document.querySelectorAll('#events li').length >= 3", timeout=5000)

    target = pathlib.Path(ROOT, "docs", "demo.png") if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "demo.png"
    page.screenshot(path=str(target))
    assert target.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("curl") is None, reason="the real curl is not installed")
def test_the_demo_pages_shell_commands_publish_as_shown(site: tuple[int, ServerProcess], browser: Any) -> None:
    """Issue 13: the demo page shows how to publish from a shell to its
    channel; the curl, Python and ``wsgi-eventsource publish`` lines, run as
    shown (the token in $TOKEN), publish events the page receives."""
    import subprocess

    port, _ = site
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{port}/?channel=room/42:a=b,c")
    page.wait_for_selector("#state.open", timeout=5000)
    assert "$TOKEN" not in page.inner_text("#shell")  # no token given: none in the commands
    page.fill("#token", TOKEN)
    page.click("#subscribe button")
    page.wait_for_selector("#state.open", timeout=5000)
    lines = page.inner_text("#shell").splitlines()
    assert [line.split()[0] for line in lines] == ["curl", "http", "python", "wsgi-eventsource"]
    assert all("TOKEN" in line for line in lines)  # $TOKEN, or os.environ["TOKEN"] in Python
    environment = {**os.environ, "TOKEN": TOKEN, "PATH": VENV_BIN + os.pathsep + os.environ["PATH"]}
    # curl, Python (httpx, a test dependency) and the CLI; httpie is not installed here.
    for number, line in enumerate([lines[0], lines[2], lines[3]], start=1):
        done = subprocess.run(["bash", "-c", line], check=False, env=environment, capture_output=True, timeout=30)
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        page.wait_for_function(f"document.querySelectorAll('#events li').length >= {number}", timeout=5000)
    assert [text.strip() for text in page.locator("#events li pre").all_inner_texts()] == ["hello"] * 3


# -- signed tokens (issue 10) ----------------------------------------------------------------------

# 64 bytes: PyJWT warns about an HS512 secret shorter than that.
JWT_SECRET = "browser-test-jwt-secret-" + "0123456789abcdef" * 3 + "x" * 8


@pytest.fixture
def token_site(nginx: Any) -> Iterator[int]:
    """The hub with a key (from the environment) and a public prefix, behind nginx."""
    command = [os.path.join(VENV_BIN, "wsgi-eventsource"), "serve", "--port", "0", "--public", "public/**"]
    hub = ServerProcess(
        command,
        env={"WSGI_EVENTSOURCE_JWT_KEY": JWT_SECRET},
        ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
        stop_signal=signal.SIGINT,
    )
    proxy: Nginx = nginx(hub.port)
    yield proxy.port
    hub.stop()


def publish_signed(port: int, channel: str, data: str) -> str:
    """Publish through nginx (so with X-Forwarded-For) with a signed token."""
    from wsgi_eventsource.auth import mint

    token = mint(JWT_SECRET, publish=[channel], ttl=60)
    client = StreamClient(
        port,
        f"/publish/{channel}",
        method="POST",
        body=data.encode(),
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {token}"},
    )
    answer = client.read_body()
    client.close()
    assert client.status == 201, answer
    event_id: str = json.loads(answer)["id"]
    return event_id


OPEN_OR_CLOSED = """
(url) => new Promise((resolve) => {
  window.received = [];
  const source = new EventSource(url);
  window.source = source;
  source.onmessage = (e) => window.received.push({type: e.type, data: e.data, id: e.lastEventId});
  source.onopen = () => resolve("open");
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) resolve("closed"); };
})
"""


def test_a_cookie_token_opens_a_private_channel_and_without_it_the_browser_gives_up(
    token_site: int, browser: Any
) -> None:
    """Issue 10: Chromium's EventSource sends the eventsource_token cookie and
    gets a private channel's events; without it the hub answers 401 and the
    EventSource gives up (CLOSED, no reconnect); a public channel needs none."""
    from wsgi_eventsource.auth import mint

    port = token_site
    origin = f"http://127.0.0.1:{port}"
    context = browser.new_context()
    page = context.new_page()
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if "/events/private/" in r.url else None)
    page.goto(f"{origin}/healthz")
    assert page.evaluate(OPEN_OR_CLOSED, "/events/private/room") == "closed"
    assert statuses == [401]

    token = mint(JWT_SECRET, subscribe=["private/*"], ttl=60)
    context.add_cookies([{"name": "eventsource_token", "value": token, "url": origin}])
    assert page.evaluate(OPEN_OR_CLOSED, "/events/private/room") == "open"
    sent = publish_signed(port, "private/room", "for token holders")
    assert received(page, 1) == [{"type": "message", "data": "for token holders", "id": sent}]
    assert statuses == [401, 200]  # the refused EventSource never came back

    anonymous = browser.new_context().new_page()
    anonymous.goto(f"{origin}/healthz")
    assert anonymous.evaluate(OPEN_OR_CLOSED, "/events/public/news") == "open"
    sent = publish_signed(port, "public/news", "for everyone")
    assert received(anonymous, 1) == [{"type": "message", "data": "for everyone", "id": sent}]


def test_the_demo_page_takes_a_token(token_site: int, browser: Any) -> None:
    """Issue 10: the demo page shows why a private channel closed (401), keeps
    a pasted token in the eventsource_token cookie for its stream and sends it
    as Authorization: Bearer to publish, through nginx (X-Forwarded-For)."""
    from wsgi_eventsource.auth import mint

    port = token_site
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/?channel=private/room")
    page.wait_for_selector("#state.closed", timeout=5000)
    page.wait_for_selector("#why:has-text('401')", timeout=5000)
    assert "a token is required" in page.inner_text("#why")

    token = mint(JWT_SECRET, subscribe=["private/**"], publish=["private/**"], ttl=60)
    page.fill("#token", token)
    page.click("#subscribe button")
    page.wait_for_selector("#state.open", timeout=5000)
    assert page.inner_text("#why") == ""
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["eventsource_token"]["value"] == token
    assert cookies["eventsource_token"]["sameSite"] == "Strict"

    page.fill("#data", "from the demo page")
    page.click("#publish button")
    page.wait_for_selector("#publish-result:has-text('published')", timeout=5000)
    page.wait_for_function("document.querySelectorAll('#events li').length >= 1", timeout=5000)
    assert page.locator("#events li pre").first.inner_text() == "from the demo page"

    page.reload()  # the token comes back from the cookie
    page.wait_for_selector("#state.open", timeout=5000)
    assert page.input_value("#token") == token

    page.fill("#channel", "other/room")  # a valid token that does not cover it
    page.click("#subscribe button")
    page.wait_for_selector("#why:has-text('403')", timeout=5000)
    assert page.get_attribute("#state", "class") == "closed"
