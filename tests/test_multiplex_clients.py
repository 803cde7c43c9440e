"""Issue 9, many channels on one stream, with the real things: the cursor of
64 long channel names through gunicorn's and nginx's header limits, the
README's browser snippet in Chromium through nginx across a worker restart,
and the npm ``eventsource`` package across one.

Publishers are :class:`RedisBroker` in this process (another process than the
servers'), so events published while a worker is down wait in Redis.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from tests.conftest import ROOT, Nginx, Serve, ServerProcess
from tests.helpers import ParsedEvent, StreamClient, wait_until
from tests.test_browser import browser  # the fixture
from tests.test_clients_node import CLOSED, NodeClients, node  # the fixture
from wsgi_eventsource import RedisBroker
from wsgi_eventsource.brokers import cursor_channel, encode_cursor, parse_cursor

pytestmark = pytest.mark.server
__all__ = ["browser", "node"]

CHANNELS_APP = "tests.apps.channels:app"  # /events (?channel=...) and /publish under gunicorn
PAGE = pathlib.Path(ROOT, "tests", "apps", "multiplex.html")
SNIPPET_PLACEHOLDER = "/* the README's snippet */"
# The README's figure: 64 channels of 40-character names, ids of 15 characters.
README_CURSOR_BYTES = 3_647
GUNICORN_LIMIT_REQUEST_LINE = 4094  # gunicorn's defaults (limit_request_line,
GUNICORN_LIMIT_REQUEST_FIELD_SIZE = 8190  # limit_request_field_size)
NGINX_HEADER_BUFFER = 8192  # nginx's default large_client_header_buffers 4 8k


@pytest.fixture
def shipped_nginx(nginx: Callable[..., Nginx]) -> Iterator[Callable[..., Nginx]]:
    """The ``nginx`` fixture, with the test's streams closed before nginx stops
    (its graceful stop waits for open streams, ``proxy_read_timeout 1h``),
    also when a test fails with streams open."""
    yield nginx
    for client in list(StreamClient.unclosed):
        client.close()


def form_query(pairs: list[tuple[str, str]]) -> str:
    """A query string as the browser's ``URLSearchParams`` writes it (every
    byte but letters, digits and ``*-._`` percent-encoded; the README's snippet
    builds its URL so)."""
    return urlencode(pairs, quote_via=lambda text, *_: quote(text, safe="*-._"))


def wide_names(count: int = 64, length: int = 40) -> list[str]:
    """*count* valid channel names of *length* characters, each with every one
    of ``, : ! = @`` (and ``/``) in it."""
    names = [(f"room:{i:02d}/user@host!k=v,w/" + "x" * length)[:length] for i in range(count)]
    assert all(len(name) == length and all(c in name for c in ",:!=@") for name in names)
    return names


def publish_all(redis_url: str, pairs: list[tuple[str, str]]) -> list[str]:
    """Publish ``(channel, data)`` pairs straight to Redis; return the ids."""
    broker = RedisBroker(redis_url)
    try:
        return [broker.publish(channel, data) for channel, data in pairs]
    finally:
        broker.close()


def shown(events: list[ParsedEvent]) -> list[tuple[str, str, str]]:
    """``(channel, type, data)`` of each event, the channel read from its id."""
    return [(cursor_channel(e.last_event_id), e.type, e.data) for e in events]


def request_line(path: str) -> int:
    return len(f"GET {path} HTTP/1.1".encode())


# -- 1. the header size ------------------------------------------------------------------


def test_a_cursor_of_64_channels_of_40_characters_resumes_through_gunicorn_and_nginx(
    gunicorn: Callable[..., ServerProcess], shipped_nginx: Callable[..., Nginx], redis_url: str
) -> None:
    """Issue 9, "the cursor fits real header limits": 64 channels with
    40-character names (``, : ! = @`` in each), one event on every channel so
    every position is a real id; the last event's id (the cursor) is 3,647
    bytes as the README says for 15-character ids, and as ``Last-Event-ID``
    it resumes exactly the events published since, straight to gunicorn
    (default ``limit_request_field_size`` 8,190) and through nginx with the
    shipped snippet and its default ``large_client_header_buffers``."""
    server = gunicorn(CHANNELS_APP, env={"REDIS_URL": redis_url})
    proxy = shipped_nginx(server.port)
    names = wide_names()
    path = "/events/?" + form_query([("channel", name) for name in names])  # /events/: the snippet's location
    first = StreamClient(server.port, path)
    assert first.status == 200, first.read_body()
    first.wait_for(lambda c: b"id: " in c.raw)  # subscribed: the bare id with the starting cursor

    ids = publish_all(redis_url, [(name, f"first on {name}") for name in names])
    events = first.events(64)
    assert shown(events) == [(name, "message", f"first on {name}") for name in names]
    cursor = events[-1].last_event_id
    assert parse_cursor(cursor, names) == dict(zip(names, ids, strict=True))  # every position a real id
    assert cursor_channel(cursor) == names[-1]

    measured = len(cursor.encode())
    # An entry is the name, "*", the id; entries are joined by ";".
    assert (
        measured
        == sum(len(name) + 1 + len(event_id) for name, event_id in zip(names, ids, strict=True)) + len(names) - 1
    )
    # So the README's 3,647 bytes, plus one byte per id digit beyond 15 characters
    # (a sequence number of 10 or more, for publishes in the same millisecond).
    assert all(len(event_id) >= 15 for event_id in ids)
    assert measured == README_CURSOR_BYTES + sum(len(event_id) - 15 for event_id in ids)
    header_line = len(f"Last-Event-ID: {cursor}".encode())
    assert header_line < GUNICORN_LIMIT_REQUEST_FIELD_SIZE
    assert request_line(path) < GUNICORN_LIMIT_REQUEST_LINE  # the channel list itself (see the next test)
    print(
        f"cursor of 64 x 40-character channels: {measured} bytes (ids {sorted({len(i) for i in ids})} characters),"
        f" header line {header_line} bytes; request line {request_line(path)} bytes",
        file=sys.stderr,
    )
    first.close()

    since = [(names[0], "since 0"), (names[17], "since 1"), (names[63], "since 2")]
    publish_all(redis_url, since)
    direct = StreamClient(server.port, path, headers={"Last-Event-ID": cursor})
    proxied = StreamClient(proxy.port, path, headers={"Last-Event-ID": cursor})
    for resumed in (direct, proxied):
        assert resumed.status == 200, resumed.read_body()
        assert shown(resumed.events(3)) == [(channel, "message", data) for channel, data in since]
    # Anything more (a duplicate, a stream-reset) would come before this live event.
    publish_all(redis_url, [(names[40], "live")])
    for resumed in (direct, proxied):
        events = resumed.events(4)
        assert shown(events) == [(channel, "message", data) for channel, data in [*since, (names[40], "live")]]
        assert parse_cursor(events[-1].last_event_id, names) is not None
        resumed.close()  # before nginx stops: its graceful stop waits for open streams


def test_the_same_cursor_in_the_url_meets_the_request_line_limits(
    gunicorn: Callable[..., ServerProcess], shipped_nginx: Callable[..., Nginx], redis_url: str
) -> None:
    """Issue 9, what the README warns of: polyfills that send the cursor as
    ``?lastEventId=`` put it in the request line; for 64 channels of 40
    characters that line is over gunicorn's 4,094-byte limit (``414``, from
    gunicorn, not from us) and nginx's 8 KiB header buffer (``414`` from
    nginx). The channel list is in the request line too: 64 names of 40
    characters with 8 characters each that the browser percent-encodes are
    over gunicorn's limit even with the cursor in the header. A short
    subscription resumes by the URL as by the header."""
    server = gunicorn(CHANNELS_APP, env={"REDIS_URL": redis_url})
    proxy = shipped_nginx(server.port)
    names = wide_names()
    channels = [("channel", name) for name in names]
    ids = publish_all(redis_url, [(name, f"on {name}") for name in names])
    cursor = encode_cursor(reversed(list(zip(names, ids, strict=True))))  # as the last event's id (test above)
    path = "/events/?" + form_query([*channels, ("lastEventId", cursor)])
    measured = request_line(path)
    assert measured > NGINX_HEADER_BUFFER > GUNICORN_LIMIT_REQUEST_LINE
    for port, answer in [(server.port, "Request Line is too large"), (proxy.port, "414 Request-URI Too Large")]:
        client = StreamClient(port, path)
        assert client.status == 414
        assert answer in client.read_body().decode()
        client.close()

    # The channel list alone: the names above have 7 characters each that
    # URLSearchParams percent-encodes (3 bytes each), which leaves the request
    # line 41 bytes under gunicorn's limit; with 8 each it is over it (by
    # 64 x 2 bytes more), cursor or not, and nginx passes gunicorn's 414 on.
    assert request_line(path.partition("&lastEventId=")[0]) == GUNICORN_LIMIT_REQUEST_LINE - 41
    dense = [(f"r{i:02d}/,:!=@,:" + "x" * 40)[:40] for i in range(64)]  # "/" and 7 more encoded
    dense_path = "/events/?" + form_query([("channel", name) for name in dense])
    assert request_line(dense_path) == GUNICORN_LIMIT_REQUEST_LINE - 41 + 64 * 2
    for port in (server.port, proxy.port):
        client = StreamClient(port, dense_path)
        assert client.status == 414
        client.close()
    print(
        f"request line with ?lastEventId= for 64 x 40-character channels: {measured} bytes;"
        f" the channel list alone, 8 percent-encoded characters in each name: {request_line(dense_path)} bytes",
        file=sys.stderr,
    )

    # What fits resumes through the URL as through the header (the snippet's three channels).
    few = ["chat/lobby", "presence/lobby", "notify/alice"]
    few_ids = publish_all(redis_url, [(name, f"before on {name}") for name in few])
    few_cursor = encode_cursor(zip(few, few_ids, strict=True))
    publish_all(redis_url, [(few[1], "after")])
    client = StreamClient(
        server.port, "/events?" + form_query([*[("channel", n) for n in few], ("lastEventId", few_cursor)])
    )
    assert shown(client.events(1)) == [(few[1], "message", "after")]
    client.close()


def test_the_hub_takes_a_channel_list_of_the_longest_request_line_gunicorn_allows(
    hub_server: Serve, shipped_nginx: Callable[..., Nginx]
) -> None:
    """Issue 9: ``serve`` raises gunicorn's request line limit to its most
    (8190, from 4094), so the dense channel list that plain gunicorn answers
    with 414 above (64 x 40 characters, 8 of each percent-encoded) streams,
    directly and through the shipped nginx config."""
    hub = hub_server()
    proxy = shipped_nginx(hub.port)
    dense = [(f"r{i:02d}/,:!=@,:" + "x" * 40)[:40] for i in range(64)]
    path = "/events?" + form_query([("channel", name) for name in dense])
    assert request_line(path) > GUNICORN_LIMIT_REQUEST_LINE
    for port in (hub.port, proxy.port):
        client = StreamClient(port, path)
        assert client.status == 200
        client.wait_for(lambda c: c.parser.last_event_id.count("*") == 64)  # the bare starting cursor
        assert sorted(parse_cursor(client.parser.last_event_id, dense) or {}) == sorted(dense)
        client.close()


# -- a publisher across a restart ---------------------------------------------------------


class Publisher:
    """Publishes ``"<channel> #<n>"`` round-robin on *channels* straight to
    Redis, from an OS thread (Playwright's sync API holds the main thread, and
    gevent's hub with it, while it waits), until :meth:`stop`. *types* maps a
    channel to the event type its events get (``message`` otherwise)."""

    def __init__(self, redis_url: str, channels: list[str], types: dict[str, str], interval: float = 0.05) -> None:
        self.redis_url = redis_url
        self.channels = channels
        self.types = types
        self.interval = interval
        #: ``(channel, type, data)`` of every event published, in order.
        self.published: list[tuple[str, str, str]] = []
        #: The id of the last event published on each channel.
        self.last_ids: dict[str, str] = {}
        self._stopping = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        broker = RedisBroker(self.redis_url)
        try:
            n = 0
            while not self._stopping.is_set():
                channel = self.channels[n % len(self.channels)]
                data = f"{channel} #{n // len(self.channels)}"
                self.last_ids[channel] = broker.publish(channel, data, event=self.types.get(channel))
                self.published.append((channel, self.types.get(channel, "message"), data))
                n += 1
                self._stopping.wait(self.interval)
        except BaseException as exc:  # handed to the test in stop()
            self._failed = exc
        finally:
            broker.close()

    def count(self) -> int:
        return len(self.published)

    def stop(self) -> list[tuple[str, str, str]]:
        self._stopping.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the publisher thread did not stop"
        if self._failed is not None:
            raise AssertionError(f"publishing failed: {self._failed!r}") from self._failed
        return self.published


@pytest.fixture
def publishers() -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def start(*args: Any, **kwargs: Any) -> Publisher:
        publisher = Publisher(*args, **kwargs)
        started.append(publisher)
        return publisher

    yield start
    for publisher in started:
        publisher._stopping.set()


def per_channel(events: list[tuple[str, str, str]]) -> dict[str, list[tuple[str, str]]]:
    """``{channel: [(type, data), ...]}`` in arrival order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for channel, event_type, data in events:
        out.setdefault(channel, []).append((event_type, data))
    return out


def gunicorn_worker(master: ServerProcess) -> int:
    """The pid of the one worker of a gunicorn master."""
    pid = master.proc.pid
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, f"expected one worker, found {children}"
    return int(children[0])


def kill_the_worker(master: ServerProcess) -> int:
    """SIGKILL the worker (its streams die mid-response, nothing is said to
    the clients); return its pid once its master has booted another."""
    old = gunicorn_worker(master)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: _another_worker(master, old), 15, 0.05, "gunicorn to boot a new worker")
    return old


def _another_worker(master: ServerProcess, old: int) -> bool:
    try:
        return gunicorn_worker(master) != old
    except AssertionError:  # between the old one's death and the new one's fork
        return False


# -- 2. Chromium, the README's snippet, through nginx -------------------------------------


# The page of the documentation that shows the snippet (it was in README.rst
# until the docs moved to docs/).
SNIPPET_PAGE = pathlib.Path(ROOT, "docs", "multiplexing.rst")


def readme_snippet() -> str:
    """The browser snippet of the docs (``docs/multiplexing.rst``), as it stands."""
    page = SNIPPET_PAGE.read_text()
    match = re.search(r"// multiplex-snippet-start\n(.*?)\n\s*// multiplex-snippet-end", page, re.DOTALL)
    assert match is not None, f"{SNIPPET_PAGE.name} has no multiplex-snippet-start/-end markers"
    return match.group(1)


SNIPPET_CHANNELS = ["chat/lobby", "presence/lobby", "notify/alice"]  # the snippet's own


def test_chromium_runs_the_readme_snippet_through_nginx_across_a_worker_restart(
    hub_server: Serve, shipped_nginx: Callable[..., Nginx], redis_url: str, browser: Any, publishers: Any
) -> None:
    """Issue 9, "Chromium through nginx with the shipped snippet": the
    README's snippet, verbatim, on a page behind nginx (the shipped config) in
    front of the hub (gunicorn gevent worker, Redis broker). Events on its
    three channels (``presence`` ones with that event type) go on being
    published while the hub's worker is killed and booted again; the browser
    reconnects by itself with its cursor, and the page shows every event
    exactly once, in order per channel, each in a row naming its channel,
    and never a stream-reset."""
    snippet = readme_snippet()
    for channel in SNIPPET_CHANNELS:
        assert f'"{channel}"' in snippet, f"the snippet no longer listens on {channel}"
    hub = hub_server("--redis", redis_url, "--keepalive", "2")
    proxy = shipped_nginx(hub.port)
    page_url = f"http://127.0.0.1:{proxy.port}/multiplex.html"
    html = PAGE.read_text()
    assert SNIPPET_PLACEHOLDER in html
    html = html.replace(SNIPPET_PLACEHOLDER, snippet)

    page = browser.new_page()
    # The page comes from here; everything it fetches goes to nginx for real.
    page.route(page_url, lambda route: route.fulfill(status=200, content_type="text/html", body=html))
    streams: list[Any] = []  # the requests for the stream
    page.on("request", lambda request: streams.append(request) if "/events" in request.url else None)
    page.goto(page_url)
    page.wait_for_function("window.opens >= 1", timeout=10_000)

    def wait_for_rows(n: int, timeout: int = 15_000) -> None:
        page.wait_for_function(f"document.querySelectorAll('#events tbody tr').length >= {n}", timeout=timeout)

    publisher = publishers(redis_url, SNIPPET_CHANNELS, {"presence/lobby": "presence"})
    wait_for_rows(6)  # two events on each channel
    started = time.monotonic()
    killed_at = publisher.count()
    kill_the_worker(hub)
    page.wait_for_function("window.errors >= 1", timeout=10_000)  # the browser saw its stream die
    page.wait_for_function("window.opens >= 2", timeout=15_000)  # and came back by itself
    reconnected_at = publisher.count()
    wait_until(lambda: publisher.count() >= reconnected_at + 6, 10, message="publishes after the reconnect")
    published = publisher.stop()
    wait_for_rows(len(published))
    # A duplicate (a replay twice) would come before this live event.
    publish_all(redis_url, [("notify/alice", "the end")])
    wait_for_rows(len(published) + 1)
    assert time.monotonic() - started < 25

    shown_rows: list[list[str]] = page.eval_on_selector_all(
        "#events tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    expected = [*published, ("notify/alice", "message", "the end")]
    assert per_channel([(c, t, d) for c, t, d in shown_rows]) == per_channel(expected)  # the DOM's rows
    assert len(shown_rows) == len(expected)  # nothing twice, nothing else (no stream-reset row)
    # The page names each event's channel; the data says where it was published.
    assert all(data.startswith(channel) for channel, _, data in shown_rows[:-1])
    assert {event_type for channel, event_type, _ in shown_rows if channel == "presence/lobby"} == {"presence"}
    assert all(row[1] != "stream-reset" for row in shown_rows)
    assert page.evaluate("source.readyState") == 1  # OPEN
    # Some of them were published while the worker was down: the replay brought
    # them, so the reconnect sent its cursor (Playwright does not show the
    # Last-Event-ID header; without one the hub would have sent only live events).
    assert reconnected_at > killed_at
    away = reconnected_at - killed_at
    print(f"Chromium: {len(expected)} events, {away} published between the kill and the reconnect", file=sys.stderr)
    # The shipped example-site proxies the snippet's /events?... as it is: no
    # 301 to /events/?... (which nginx builds from its own scheme and port, so
    # behind TLS termination or another port it would lead elsewhere).
    query = form_query([("channel", channel) for channel in SNIPPET_CHANNELS])
    origin = f"http://127.0.0.1:{proxy.port}"
    urls = [request.url for request in streams]
    assert urls == [f"{origin}/events?{query}"] * len(urls), urls
    assert len(urls) >= 2, urls  # the first stream and at least one reconnect


# -- 3. Node, the npm eventsource package -----------------------------------------------


def test_node_eventsource_on_three_channels_across_a_worker_kill_while_publishing(
    gunicorn: Callable[..., ServerProcess], redis_url: str, node: Callable[..., NodeClients], publishers: Any
) -> None:
    """Issue 9 with a third-party client: one npm ``eventsource`` on three
    channels; its worker is killed while events go on being published on all
    three; the client reconnects by itself with the cursor and ends with
    every event exactly once, in order per channel, each channel read from
    the event's ``lastEventId``; no stream-reset, never CLOSED."""
    server = gunicorn(CHANNELS_APP, env={"REDIS_URL": redis_url})
    channels = ["chat/lobby", "presence/lobby:alice@home", "notify/a=b,c!"]
    clients = node(f"http://127.0.0.1:{server.port}/events?" + form_query([("channel", c) for c in channels]))
    clients.wait(lambda: bool(clients.of(0, "open")), "the stream to open")
    publisher = publishers(redis_url, channels, {}, 0.03)
    clients.wait(lambda: len(clients.events(0)) >= 9, "three events on each channel")
    started = time.monotonic()
    killed_at = publisher.count()
    kill_the_worker(server)
    clients.wait(lambda: len(clients.of(0, "open")) >= 2, "a reconnect", timeout=15)
    reconnected_at = publisher.count()
    wait_until(lambda: publisher.count() >= reconnected_at + 9, 10, message="publishes after the reconnect")
    published = publisher.stop()
    clients.wait(lambda: len(clients.events(0)) >= len(published), "every event", timeout=10)
    [end_id] = publish_all(redis_url, [(channels[0], "the end")])  # a duplicate would come before it
    clients.wait(lambda: len(clients.events(0)) >= len(published) + 1, "the last event")
    assert time.monotonic() - started < 25

    events = clients.events(0)
    received = [(cursor_channel(e["lastEventId"]), e["type"], e["data"]) for e in events]
    expected = [*published, (channels[0], "message", "the end")]
    assert per_channel(received) == per_channel(expected)
    assert len(received) == len(expected)
    assert all(data.startswith(channel) for channel, _, data in received[:-1])
    assert CLOSED not in clients.states(0)
    assert reconnected_at > killed_at  # some were published while the worker was down
    away = reconnected_at - killed_at
    print(f"node: {len(expected)} events, {away} published between the kill and the reconnect", file=sys.stderr)
    # The cursor of the last event names every channel at its last event.
    assert parse_cursor(events[-1]["lastEventId"], channels) == {**publisher.last_ids, channels[0]: end_id}
