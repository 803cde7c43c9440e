"""HTTP/2 to the browser: headless Chromium against the hub behind the shipped
nginx site's TLS + ``http2`` server (a self-signed certificate, see the
``nginx`` fixture), with more EventSources open at once than HTTP/1.1 allows
per host.

nchan #576 is the failure these tests look for: over HTTP/2 some streams of a
connection stalled (events held back until the proxy's buffer or the
connection's flow-control window moved), while HTTP/1.1 looked fine."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Nginx, Serve, ServerProcess
from tests.helpers import StreamClient
from tests.test_browser import CHROMIUM, FLAGS

pytestmark = pytest.mark.server

TOKEN = "http2-test-token"
#: More than the six HTTP/1.1 connections a browser opens to one host.
STREAMS = 8
#: The stream left without events for a while (nchan #576: the idle one stalls).
IDLE = STREAMS - 1


@pytest.fixture
def site(hub_server: Serve, nginx: Any) -> tuple[Nginx, ServerProcess]:
    """The hub (in-memory broker) behind the shipped nginx site."""
    hub = hub_server("--publish-token", TOKEN)
    proxy: Nginx = nginx(hub.port)
    return proxy, hub


@pytest.fixture
def browser(site: tuple[Nginx, ServerProcess]) -> Iterator[Any]:
    """Chromium, closed before nginx stops (nginx's graceful stop waits for
    open streams): hence the dependency on ``site``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def publish(hub_port: int, channel: str, data: str) -> str:
    """Publish straight to the hub; return the event's id."""
    client = StreamClient(
        hub_port,
        f"/publish/{channel}",
        method="POST",
        body=data.encode(),
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"},
    )
    answer = client.read_body()
    client.close()
    assert client.status == 201, answer
    event_id: str = json.loads(answer)["id"]
    return event_id


# window.sources[i] listens to channel stream-i; window.opened lists the
# indexes in the order their streams opened; window.received[i] its data.
SETUP = """
() => { window.sources = []; window.opened = []; window.received = []; }
"""
OPEN = """
(i) => {
  const source = new EventSource(`/events/stream-${i}`);
  window.sources[i] = source;
  window.received[i] = [];
  source.onopen = () => { if (!window.opened.includes(i)) window.opened.push(i); };
  source.onmessage = (e) => window.received[i].push(e.data);
}
"""
# A publish from the page itself, over the same connection as the streams.
FETCH_PUBLISH = """
async ([channel, data, token]) => {
  const answer = await fetch(`/publish/${channel}`, {
    method: "POST",
    headers: {"Content-Type": "text/plain", "Authorization": `Bearer ${token}`},
    body: data,
  });
  return answer.status;
}
"""


def record_responses(context: Any, page: Any) -> list[dict[str, Any]]:
    """The protocol and connection of every response the page gets, from the
    DevTools protocol (Playwright's own Response does not tell the protocol)."""
    responses: list[dict[str, Any]] = []
    cdp = context.new_cdp_session(page)
    cdp.on("Network.responseReceived", lambda event: responses.append({"type": event["type"], **event["response"]}))
    cdp.send("Network.enable")
    return responses


def wait_received(page: Any, expected: dict[int, list[str]], timeout: float = 5) -> None:
    """Wait until stream *i* has received exactly ``expected[i]`` for each *i*;
    on a timeout, fail with what every stream had."""
    same = "([i, want]) => JSON.stringify(window.received[i]) === JSON.stringify(want)"
    try:
        page.wait_for_function(f"Object.entries({json.dumps(expected)}).every({same})", timeout=timeout * 1000)
    except Exception as error:
        got = page.evaluate("window.received")
        raise AssertionError(f"streams did not receive their events: expected {expected}, got {got}") from error


def test_eight_eventsources_over_http2_all_get_their_events(site: tuple[Nginx, ServerProcess], browser: Any) -> None:
    """Issue 13, HTTP/2: through the shipped nginx site's TLS + http2 server,
    one page holds eight EventSources on eight channels at once, all on one
    HTTP/2 connection, and every one gets its events: one published while the
    later ones were still opening, three more on each after all are open
    (published by the page's own fetch, which an HTTP/1.1 page with six open
    streams could not even send), and, after three idle seconds, one on the
    stream that had nothing since its first event (nchan #576: idle streams
    over HTTP/2 held their events back)."""
    proxy, hub = site
    context = browser.new_context(ignore_https_errors=True)  # the self-signed certificate
    page = context.new_page()
    responses = record_responses(context, page)
    page.goto(f"https://127.0.0.1:{proxy.tls_port}/healthz")
    assert page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"

    page.evaluate(SETUP)
    expected: dict[int, list[str]] = {}
    for i in range(STREAMS):
        page.evaluate(OPEN, i)
        page.wait_for_function(f"window.opened.includes({i})", timeout=5000)
        publish(hub.port, f"stream-{i}", f"early {i}")  # while streams i+1.. are not open yet
        expected[i] = [f"early {i}"]
    assert page.evaluate("window.sources.map((s) => s.readyState)") == [1] * STREAMS  # OPEN, all at once
    wait_received(page, expected)

    for round_ in range(3):
        for i in range(STREAMS):
            if i != IDLE:
                assert page.evaluate(FETCH_PUBLISH, [f"stream-{i}", f"live {i}.{round_}", TOKEN]) == 201
                expected[i].append(f"live {i}.{round_}")
    wait_received(page, expected)

    # The idle stream: nothing but its first event for three seconds (the
    # hub's keepalive is 15 s, so not a byte on it), then one event.
    page.wait_for_timeout(3000)
    assert page.evaluate(f"window.received[{IDLE}]") == [f"early {IDLE}"]
    sent_at = time.monotonic()
    assert page.evaluate(FETCH_PUBLISH, [f"stream-{IDLE}", "after idling", TOKEN]) == 201
    expected[IDLE].append("after idling")
    wait_received(page, expected, timeout=2)
    delay = time.monotonic() - sent_at
    assert delay < 1.0, f"the idle stream's event was held back {delay:.2f} s"
    print(f"HTTP/2: an idle stream's event arrived {delay * 1000:.0f} ms after its publish", file=sys.stderr)

    streams = [r for r in responses if r["type"] == "EventSource"]
    assert len(streams) == STREAMS  # none reconnected
    assert {r["protocol"] for r in streams} == {"h2"}
    assert {r["status"] for r in streams} == {200}
    assert len({r["connectionId"] for r in streams}) == 1, "the streams did not share one HTTP/2 connection"
    publishes = [r for r in responses if r["type"] == "Fetch"]
    assert len(publishes) == 3 * (STREAMS - 1) + 1
    assert {r["protocol"] for r in publishes} == {"h2"}
    context.close()
    # The shipped site, TLS server included, loads without a warning on this nginx.
    assert not [line for line in proxy.process.log if "[warn]" in line or "[emerg]" in line], proxy.process.log


def test_over_http1_the_seventh_eventsource_waits_for_a_connection(
    site: tuple[Nginx, ServerProcess], browser: Any
) -> None:
    """Issue 13, HTTP/2 (the control): the same eight EventSources through
    the shipped port-80 server (HTTP/1.1) do not all open: Chromium holds six
    connections per host, the seventh and eighth wait (CONNECTING, no event)
    while the six get theirs, and each opens only when an open one closes."""
    proxy, hub = site
    context = browser.new_context()
    page = context.new_page()
    responses = record_responses(context, page)
    page.goto(f"http://127.0.0.1:{proxy.port}/healthz")
    assert page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "http/1.1"

    page.evaluate(SETUP)
    for i in range(STREAMS):
        page.evaluate(OPEN, i)
    page.wait_for_function("window.opened.length >= 6", timeout=5000)
    for i in range(STREAMS):
        publish(hub.port, f"stream-{i}", f"first {i}")
    opened: list[int] = page.evaluate("window.opened")
    # The round trip of an event to each open stream is the time the waiting
    # ones had to open, had they been able to.
    wait_received(page, {i: [f"first {i}"] for i in opened})
    assert len(page.evaluate("window.opened")) == 6
    waiting = sorted(set(range(STREAMS)) - set(opened))
    assert [page.evaluate(f"window.sources[{i}].readyState") for i in waiting] == [0, 0]  # CONNECTING
    assert [page.evaluate(f"window.received[{i}]") for i in waiting] == [[], []]

    for closed, now_open in enumerate((7, 8), start=1):
        page.evaluate(f"window.sources[window.opened[{closed - 1}]].close()")
        page.wait_for_function(f"window.opened.length >= {now_open}", timeout=5000)
    assert sorted(page.evaluate("window.opened")) == list(range(STREAMS))
    streams = [r for r in responses if r["type"] == "EventSource"]
    assert {r["protocol"] for r in streams} == {"http/1.1"}
    assert len({r["connectionId"] for r in streams}) == STREAMS  # one connection each
    context.close()
