"""A real headless Chromium (Debian's, driven by Playwright) through the same
faults as the Node client: soft refusals, a 503, a hub restart (issue 8,
"Measured, not assumed")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import StreamClient
from tests.test_browser import browser  # the fixture
from tests.test_clients_node import (
    CLOSED,
    OPEN,
    RestartableHub,
    count_of,
    publish_through_a_restart,
    restartable_hub,
    start_hub,
)

pytestmark = pytest.mark.server
__all__ = ["browser", "restartable_hub"]

# Everything the page sees, with readyState changes polled (the browser
# changes it without an event when a refused stream ends).
WATCH = """
(url) => new Promise((resolve) => {
  window.log = [];
  const started = performance.now();
  const t = () => Math.round(performance.now() - started);
  const source = new EventSource(url);
  window.source = source;
  let state = source.readyState;
  window.log.push({kind: "state", readyState: state, t: t()});
  const watch = () => {
    if (source.readyState !== state) {
      state = source.readyState;
      window.log.push({kind: "state", readyState: state, t: t()});
    }
  };
  setInterval(watch, 10);
  const keep = (e) => { watch(); window.log.push({kind: "event", type: e.type, data: e.data, lastEventId: e.lastEventId, t: t()}); };
  source.onmessage = keep;
  source.addEventListener("stream-reset", keep);
  source.onopen = () => { watch(); window.log.push({kind: "open", t: t()}); };
  source.onerror = () => { watch(); window.log.push({kind: "error", t: t()}); };
  resolve(true);
})
"""  # noqa: E501


def log_of(page: Any, kind: str | None = None) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = page.evaluate("window.log")
    return [line for line in log if kind is None or line["kind"] == kind]


def states(page: Any) -> list[int]:
    return [line["readyState"] for line in log_of(page, "state")]


def test_chromium_comes_back_by_itself_after_soft_refusals(gunicorn: Any, browser: Any) -> None:
    """Issue 8 (4): after three soft refusals (200 event stream, retry hint,
    comment, end) Chromium reconnects by itself each time, is served, and
    never reaches readyState CLOSED."""
    server = gunicorn("tests.apps.refusals:app")
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.evaluate(WATCH, "/soft/chromium-soft?k=3")
    page.wait_for_function("window.log.some(l => l.kind === 'event' && l.data === 'served')", timeout=10_000)
    seen = count_of(server.port, "chromium-soft")
    assert seen["requests"] == 3 + 1
    assert CLOSED not in states(page), log_of(page)
    assert states(page)[-1] == OPEN
    assert len(log_of(page, "error")) == 3  # one per refusal, each followed by a reconnect
    assert [e["type"] for e in log_of(page, "event")] == ["message"]


def test_chromium_gives_up_for_good_on_a_503(gunicorn: Any, browser: Any) -> None:
    """Issue 8 (4), why soft refusals exist: a 503 (with Retry-After) makes
    Chromium fail the connection, readyState CLOSED, and never come back."""
    server = gunicorn("tests.apps.refusals:app")
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.evaluate(WATCH, "/hard/chromium-hard?k=1")
    page.wait_for_function("window.source.readyState === EventSource.CLOSED", timeout=10_000)
    page.wait_for_timeout(1500)  # longer than Retry-After (1 s): a reconnect would have come
    assert count_of(server.port, "chromium-hard")["requests"] == 1
    assert log_of(page, "event") == []
    assert states(page)[-1] == CLOSED


def test_chromium_resumes_after_a_hub_restart_with_nothing_lost_or_repeated(
    restartable_hub: RestartableHub,
    redis_url: str,
    browser: Any,
) -> None:
    """Issue 8, "Measured, not assumed": Chromium through a SIGTERM and
    restart of the hub (Redis broker) ends with exactly the published ids,
    in order, no duplicates, no gaps, no stream-reset, never CLOSED."""
    hub = restartable_hub
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{hub.port}/healthz")
    page.evaluate(WATCH, "/events/chromium-restart")
    page.wait_for_function("window.log.some(l => l.kind === 'open')", timeout=10_000)

    def wait_for(n: int) -> None:
        page.wait_for_function(f"window.log.filter(l => l.kind === 'event').length >= {n}", timeout=15_000)

    published = publish_through_a_restart(hub, redis_url, "chromium-restart", wait_for)
    page.wait_for_timeout(300)  # a duplicate would arrive right behind the last event
    events = log_of(page, "event")
    assert [e["lastEventId"] for e in events] == published, json.dumps(events)
    assert {e["type"] for e in events} == {"message"}
    assert [e["data"] for e in events][3:6] == [f"while down {n}" for n in range(3)]
    assert CLOSED not in states(page)
    assert len(log_of(page, "open")) >= 2


def test_chromium_comes_back_after_the_hub_refused_it_over_max_connections(browser: Any) -> None:
    """Issue 8 (4): a stream over ``--max-connections`` is refused softly, so
    Chromium waits and comes back by itself once a slot is free."""
    hub = start_hub("--max-connections", "1")
    try:
        held = StreamClient(hub.port, "/events/held")
        held.wait_for(lambda c: c.raw)  # the only slot is taken
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{hub.port}/healthz")
        page.evaluate(WATCH, "/events/chromium-max")
        page.wait_for_function("window.log.some(l => l.kind === 'error')", timeout=10_000)
        held.reset()  # an RST: the hub notices at its next keepalive (2 s)
        # Fails at once if the browser gave up; the refusal's hint is spread around 5 s.
        page.wait_for_function(
            "(() => { if (window.source.readyState === EventSource.CLOSED) return 'closed';"
            " return window.source.readyState === EventSource.OPEN; })()",
            timeout=20_000,
        )
        assert CLOSED not in states(page), log_of(page)
        assert states(page)[-1] == OPEN
    finally:
        hub.stop()
