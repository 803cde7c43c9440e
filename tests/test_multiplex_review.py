"""Issue 9 review: adversarial tests of many channels on one stream, against
both brokers (a real redis-server) over real sockets. Each test names the
defect it was written for; those that found one are its regression test."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.subprocess
import pytest
import redis
from gevent.pywsgi import WSGIServer

from tests.conftest import ROOT, RedisServer
from tests.helpers import ParsedEvent, StreamClient, wait_until
from tests.test_multiplex import (
    MakeBroker,
    Server,
    channel_of,
    check_frames,
    open_stream,
    own_id,
    redis_broker_options,
    reset_data,
    summary,
)
from tests.test_server_werkzeug import check_fds_return_to_baseline, threaded_server
from wsgi_eventsource import BrokerUnavailable, EventSource, MemoryBroker, RedisBroker
from wsgi_eventsource.brokers import encode_cursor, parse_cursor
from wsgi_eventsource.hub import Hub

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["redis_broker_options"]  # the fixture (block 0.2), imported for its use here

# Arabic-Indic digits: Python's \d matches them, Redis refuses them as an id.
NON_ASCII_ID = "\u0661\u0667\u0666\u0664-\u0660"
NON_ASCII_SHORT = "\u0661-\u0661"


def as_header(text: str) -> str:
    """*text* as UTF-8 bytes in a latin-1 header value (as a browser sends it)."""
    return text.encode("utf-8").decode("latin-1")


def test_a_cursor_with_non_ascii_digits_is_no_cursor_not_a_refusal(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Issue 9 review: parse_id took any Unicode decimal digit (``\\d``), so a
    cursor entry of Arabic-Indic digits passed as a position: RedisBroker sent it to
    XRANGE, Redis refused it, and the whole multiplexed stream was refused
    softly as "broker unavailable" at every reconnect (a browser resends the
    same Last-Event-ID for good); MemoryBroker called it "expired". It is no
    id, so the cursor does not parse: every channel starts over."""
    broker = make_broker()
    server = Server(serve, broker)
    broker.publish("a", "a0")
    b0 = broker.publish("b", "b0")
    cursor = encode_cursor([("a", NON_ASCII_ID), ("b", b0)])
    client = server.open(["a", "b"], as_header(cursor))
    events = client.events(4)
    assert summary(events) == [
        ("a", "stream-reset", "unknown"),
        ("a", "message", "a0"),
        ("b", "stream-reset", "unknown"),
        ("b", "message", "b0"),
    ]
    check_frames(events, ["a", "b"])
    assert server.app.source.refused["broker_unavailable"] == 0
    # The same id on one channel's stream: a reset, not a refusal.
    single = open_stream(server.port, "/events/a", as_header(NON_ASCII_SHORT))
    first = single.events(1)[0]
    assert reset_data(first) == {"channel": "a", "lastEventId": NON_ASCII_SHORT, "reason": "unknown"}
    assert server.app.source.refused["broker_unavailable"] == 0


# -- live resets on a multiplexed stream (RedisBroker's reader) ---------------------------------


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def view_of(events: Sequence[ParsedEvent]) -> dict[str, list[str]]:
    """What a page shows per channel: a stream-reset starts it over."""
    view: dict[str, list[str]] = {}
    for event in events:
        if event.type == "stream-reset":
            view[channel_of(event)] = []
        elif event.type == "message":
            view.setdefault(channel_of(event), []).append(event.data)
    return view


def assert_no_silent_gap(view: dict[str, list[str]], published: dict[str, list[str]]) -> None:
    """Each channel's view is what the broker holds of it, with nothing
    missing or twice since its last reset: a suffix of what was published."""
    for channel, shown in view.items():
        assert shown == published[channel][len(published[channel]) - len(shown) :], channel


def resume_from_every_cut(
    server: Server, channels: list[str], live: Sequence[ParsedEvent], published: dict[str, list[str]]
) -> None:
    """Reconnect with the id of each event of *live* in turn: each gets
    exactly what follows (a reset only where it means "start over")."""
    final = parse_cursor(live[-1].last_event_id, channels)
    assert final is not None
    assert set(final) == set(channels)
    for cut in range(1, len(live) + 1):
        seen = list(live[:cut])
        resume = seen[-1].last_event_id
        client = server.open(channels, resume)
        client.wait_for(
            lambda c, resume=resume: parse_cursor(c.parser.last_event_id or resume, channels) == final, timeout=5
        )
        rest = list(client.parser.events)
        client.close()
        check_frames(rest, channels)
        assert_no_silent_gap(view_of([*seen, *rest]), published)
        for channel in channels:
            assert view_of([*seen, *rest]).get(channel), f"cut after {cut}: {channel} shows nothing"


def test_a_live_restarted_reset_on_a_multiplexed_stream_resumes_from_every_cut(
    serve: Callable[..., WSGIServer], redis_url: str, admin: redis.Redis
) -> None:
    """Issue 9 review: the reader's "restarted" stream-reset (the key deleted
    and made again) is keyed by the new entry but carries its predecessor's
    id (``0-0``); on a multiplexed stream its cursor must resume the channel
    from the new stream's start, and the other channel where it was."""
    broker = RedisBroker(redis_url, block=0.2)
    try:
        server = Server(serve, broker)
        client = server.open(["a", "b"])
        client.wait_for(lambda c: c.parser.last_event_id != "")
        published = {"a": ["a1"], "b": ["b1"]}
        broker.publish("a", "a1")
        broker.publish("b", "b1")
        client.events(2)
        admin.delete(broker._key("a"))
        published["a"] = ["a2", "a3"]  # the stream started over: a1 is gone
        for data in ["a2", "b2", "a3"]:
            broker.publish(data[0], data)
        published["b"].append("b2")
        live = client.events(6)
        check_frames(live, ["a", "b"])
        resets = [e for e in live if e.type == "stream-reset"]
        assert [reset_data(e)["reason"] for e in resets] == ["restarted"]
        assert own_id(resets[0]) == "0-0"
        assert parse_cursor(resets[0].last_event_id, ["a", "b"]) == {"a": "0-0", "b": own_id(live[1])}
        assert view_of(live) == {"a": ["a2", "a3"], "b": ["b1", "b2"]}
        resume_from_every_cut(server, ["a", "b"], live[2:], published)
        client.close()
        server.app.close_all()
        assert_eventually_unsubscribed(broker)
    finally:
        broker.close()


class StalledReader:
    """Holds the reader thread (a real OS thread) after its next batch until released."""

    def __init__(self, broker: RedisBroker, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stalled, self.gate = threading.Event(), threading.Event()
        dispatch = broker._dispatch

        def dispatch_then_stall(response: list[Any], client: Any, lane: Any) -> None:
            dispatch(response, client, lane)
            if not self.stalled.is_set():
                self.stalled.set()
                self.gate.wait(30)

        monkeypatch.setattr(broker, "_dispatch", dispatch_then_stall)


def test_a_live_overrun_reset_on_a_multiplexed_stream_resumes_from_every_cut(
    serve: Callable[..., WSGIServer], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9 review: the reader's "overrun" stream-reset (MAXLEN trimmed
    past it while it was held up) on a multiplexed stream: its cursor, and
    every one after it, resumes each channel with nothing missing silently."""
    broker = RedisBroker(redis_url, block=0.2, history=10)
    try:
        reader = StalledReader(broker, monkeypatch)
        server = Server(serve, broker)
        client = server.open(["a", "b"])
        client.wait_for(lambda c: c.parser.last_event_id != "")
        published: dict[str, list[str]] = {"a": ["a0"], "b": []}
        broker.publish("a", "a0")
        client.events(1)
        wait_until(reader.stalled.is_set, 5)
        for i in range(150):
            published["a"].append(f"a{i + 1}")
            broker.publish("a", f"a{i + 1}")
        for i in range(3):
            published["b"].append(f"b{i}")
            broker.publish("b", f"b{i}")
        reader.gate.set()
        client.wait_for(lambda c: view_of(c.parser.events).get("b") == published["b"], timeout=10)
        client.wait_for(lambda c: (view_of(c.parser.events).get("a") or [""])[-1] == "a150", timeout=10)
        live = list(client.parser.events)
        final = parse_cursor(live[-1].last_event_id, ["a", "b"])
        check_frames(live, ["a", "b"])
        resets = [e for e in live if e.type == "stream-reset"]
        assert [(channel_of(e), reset_data(e)["reason"]) for e in resets] == [("a", "overrun")]
        assert_no_silent_gap(view_of(live), published)
        index = live.index(resets[0])
        # Around the reset, and the last few (each resumed from the start of the stream).
        for cut in {*range(1, index + 3), *range(len(live) - 3, len(live) + 1)}:
            seen = live[:cut]
            again = server.open(["a", "b"], seen[-1].last_event_id)
            again.wait_for(
                lambda c, r=seen[-1].last_event_id: parse_cursor(c.parser.last_event_id or r, ["a", "b"]) == final,
                timeout=5,
            )
            rest = list(again.parser.events)
            again.close()
            check_frames(rest, ["a", "b"])
            assert_no_silent_gap(view_of([*seen, *rest]), published)
        client.close()
        assert_eventually_unsubscribed(broker)
    finally:
        broker.close()


def assert_eventually_unsubscribed(broker: Any) -> None:
    wait_until(lambda: broker.subscriber_count() == 0, 5, message="subscriptions left behind")


# -- the hub, shutdown, the memory broker's sweeper ----------------------------------------------


def test_the_hub_counts_a_multiplexed_stream_as_one_and_refuses_past_max_connections_softly(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Issue 9 review: a stream of many channels is one of the hub's
    ``max_connections``; one past it is refused softly (a 200 event stream,
    ``retry:``, the end) and leaves nothing subscribed."""
    broker = make_broker()
    hub = Hub(broker, max_connections=1, keepalive=0.5)
    port = serve(hub).server_port
    first = open_stream(port, "/events?channel=a&channel=b&channel=c")
    wait_until(lambda: broker.subscriber_count() == 3)
    refused = StreamClient(port, "/events?channel=d&channel=e")
    assert refused.status == 200
    body = refused.read_body()
    assert b"retry: " in body
    assert b"id:" not in body
    assert hub.subscriber.source.refused["over_max_connections"] == 1
    assert broker.subscriber_count() == 3
    assert broker.subscriber_count("d") == 0
    first.close()
    assert_eventually_unsubscribed(broker)
    again = open_stream(port, "/events?channel=d&channel=e")  # the slot is free again
    again.wait_for(lambda c: c.parser.last_event_id != "")
    assert set(parse_cursor(again.parser.last_event_id, ["d", "e"]) or ()) == {"d", "e"}


def test_shutdown_ends_multiplexed_streams_refuses_new_ones_and_unsubscribes(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Issue 9 review: shutdown ends a stream of many channels with the retry
    hint and unsubscribes every channel; a multiplexed request after it gets
    the soft refusal, with no channel subscribed."""
    broker = make_broker()
    server = Server(serve, broker)
    client = server.open(["a", "b"])
    wait_until(lambda: broker.subscriber_count() == 2)
    assert server.app.source.shutdown(retry=1000) == 1
    body = client.read_body()  # to the end of the stream: it ends
    assert b"\nretry: " in body
    assert_eventually_unsubscribed(broker)
    late = StreamClient(server.port, server.path(["a", "b"]))
    assert late.status == 200
    assert b"id:" not in late.read_body()
    assert server.app.source.refused["shutting_down"] == 1
    assert broker.subscriber_count() == 0


def test_the_sweeper_keeps_the_channels_of_a_multiplexed_stream(serve: Callable[..., WSGIServer]) -> None:
    """Issue 9 review: with ``max_age`` the MemoryBroker's sweeper frees idle
    channels; those a multiplexed stream is subscribed to (one never
    published to among them) are kept, so their next events arrive live and
    the cursor resumes them with no false stream-reset."""
    broker = MemoryBroker(max_age=0.3)
    try:
        server = Server(serve, broker)
        a0 = broker.publish("a", "a0")
        client = server.open(["a", "quiet"], encode_cursor([("a", a0)]))  # quiet: reset, nothing to replay
        client.events(1)
        wait_until(lambda: not broker.history_of("a"), 5)  # a0 aged out
        broker.sweep()
        assert broker.subscriber_count("a") == 1
        assert broker.subscriber_count("quiet") == 1
        a1 = broker.publish("a", "a1")
        q0 = broker.publish("quiet", "q0")
        events = client.events(3)
        assert summary(events[1:]) == [("a", "message", "a1"), ("quiet", "message", "q0")]
        cursor = events[-1].last_event_id
        client.close()
        assert_eventually_unsubscribed(broker)
        again = server.open(["a", "quiet"], cursor)  # within max_age of the last events: nothing missed
        broker.publish("a", "a2")
        assert summary(again.events(1)) == [("a", "message", "a2")]
        assert parse_cursor(cursor, ["a", "quiet"]) == {"a": a1, "quiet": q0}
    finally:
        broker.close()


# -- several hubs under monkey-patching ----------------------------------------------------------

SEVERAL_HUBS = """
from gevent import monkey

monkey.patch_all()
import sys
import time

import gevent
from gevent.monkey import get_original
from gevent.pywsgi import WSGIServer

from tests.helpers import StreamClient
from wsgi_eventsource import MemoryBroker
from wsgi_eventsource.brokers import cursor_channel, parse_cursor

broker = MemoryBroker(history=10_000)
start = get_original("_thread", "start_new_thread")
gevent.get_hub()  # the main hub first (see test_faults_redis)
ports = []


def serve_in_its_own_hub():
    server = WSGIServer(("127.0.0.1", 0), broker.subscriber_app(keepalive=1), log=None)
    server.start()
    ports.append(server.server_port)
    server.serve_forever()


for _ in range(2):
    start(serve_in_its_own_hub, ())
while len(ports) < 2:
    gevent.sleep(0.01)
channels = ["hub/a", "hub/b", "hub/c"]
path = "/?" + "&".join("channel=" + c for c in channels)
N = 300


def publish(channel):
    for i in range(N):
        broker.publish(channel, str(i))
        if i % 50 == 0:
            time.sleep(0.001)  # a real OS thread: let the others run


clients = [StreamClient(port, path, timeout=30) for port in ports]
for client in clients:
    client.wait_for(lambda c: c.parser.last_event_id != "")
assert broker.subscriber_count() == 6, broker.subscriber_count()
done = []
for channel in channels[:2]:  # two publishers in OS threads, one in this hub
    start(lambda ch: (publish(ch), done.append(ch)), (channel,))
publish(channels[2])
# Halfway, one client drops and comes back with its cursor to the other server's hub.
first = clients[0]
first.wait_for(lambda c: len(c.parser.events) >= N)
seen = list(first.parser.events)
first.close()
again = StreamClient(ports[1], path, headers={"Last-Event-ID": seen[-1].last_event_id}, timeout=30)
clients = [again, clients[1]]
histories = [seen, []]
for client, history in zip(clients, histories):
    client.wait_for(lambda c, h=history: len(h) + len(c.parser.events) >= 3 * N)
    history.extend(client.parser.events)
    got = {c: [] for c in channels}
    for event in history:
        assert event.type == "message", event
        channel = cursor_channel(event.last_event_id)
        assert parse_cursor(event.last_event_id, channels) is not None, event
        got[channel].append(event.data)
    for channel in channels:
        assert got[channel] == [str(i) for i in range(N)], (channel, got[channel][:20])
for client in clients:
    client.close()
deadline = time.monotonic() + 10
while broker.subscriber_count() and time.monotonic() < deadline:
    gevent.sleep(0.05)
assert broker.subscriber_count() == 0, broker.channel_counts()
print("ok", flush=True)
"""


def test_multiplexed_streams_in_several_hubs_get_publishes_from_os_threads_exactly_once() -> None:
    """Issue 9 review: under monkey-patching, two servers each in its own OS
    thread (its own hub) hold multiplexed streams of one MemoryBroker; two
    OS threads and the main hub publish: every stream gets every event once,
    in order per channel, told by its id, also one that drops and resumes on
    the other hub with its cursor; then nothing stays subscribed."""
    result = gevent.subprocess.run(
        [sys.executable, "-c", SEVERAL_HUBS], capture_output=True, text=True, timeout=90, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


# -- names, cursors -----------------------------------------------------------------------------

PUNCTUATED = ["a-_.:@~+=,!/b", "x:y@z=1,2!~+/q.r_s-t", "+/=/,/!/@/:/~"]


@pytest.mark.parametrize("via", ["header", "query"])
def test_names_with_every_allowed_punctuation_stream_and_resume(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, via: str
) -> None:
    """Issue 9 review: channel names made of every character a name may hold
    besides letters and digits (``- _ . : @ ~ + = , !`` and ``/``) are listed,
    told apart by the id, and resumed from a cursor sent in the header or in
    ``?lastEventId=`` (percent-encoded as URLSearchParams does)."""
    broker = make_broker()
    server = Server(serve, broker)
    client = server.open(PUNCTUATED)
    client.wait_for(lambda c: c.parser.last_event_id != "")
    assert set(parse_cursor(client.parser.last_event_id, PUNCTUATED) or ()) == set(PUNCTUATED)
    for name in PUNCTUATED:
        broker.publish(name, f"first {name}")
    events = client.events(3)
    # One event per channel; no order across channels is promised (on a
    # cluster each partition has a reader of its own).
    assert sorted((channel_of(e), e.data) for e in events) == sorted((n, f"first {n}") for n in PUNCTUATED)
    check_frames(events, PUNCTUATED)
    client.close()
    for name in reversed(PUNCTUATED):
        broker.publish(name, f"second {name}")
    again = server.open(PUNCTUATED, events[-1].last_event_id, via=via)
    missed = again.events(3)
    assert sorted((channel_of(e), e.data) for e in missed) == sorted((n, f"second {n}") for n in PUNCTUATED)
    assert not [e for e in again.parser.events if e.type == "stream-reset"]


def test_every_channel_broken_live_ends_the_stream_and_unsubscribes(
    serve: Callable[..., WSGIServer], redis_url: str, admin: redis.Redis
) -> None:
    """Issue 9 review: when the reader finds every channel's key broken, the
    multiplexed stream gets a stream-error per channel, then ends, and
    nothing stays subscribed; a reconnect meanwhile is refused softly."""
    broker = RedisBroker(redis_url, block=0.2)
    try:
        server = Server(serve, broker)
        client = server.open(["a", "b"])
        client.wait_for(lambda c: c.parser.last_event_id != "")
        broker.publish("a", "a0")
        client.events(1)
        for channel in ["a", "b"]:
            admin.set(broker._key(channel), "not a stream")
        body = client.read_body()  # to the end: the stream ends
        errors = [e for e in client.parser.events if e.type == "stream-error"]
        assert sorted(json.loads(e.data)["channel"] for e in errors) == ["a", "b"]
        assert b"stream-error" in body
        assert_eventually_unsubscribed(broker)
        late = StreamClient(
            server.port, server.path(["a", "b"]), headers={"Last-Event-ID": client.parser.last_event_id}
        )
        assert late.status == 200
        assert b"id:" not in late.read_body()
        assert server.app.source.refused["broker_unavailable"] == 1
        assert broker.subscriber_count() == 0
    finally:
        broker.close()


def test_a_redis_restart_under_a_multiplexed_stream_resumes_from_every_cut(
    serve: Callable[..., WSGIServer], redis_server: RedisServer, redis_url: str
) -> None:
    """Issue 9 review: Redis killed and started again (empty) under an open
    multiplexed stream: each channel published to afterwards gets one
    "restarted" stream-reset; every cursor from then on resumes exactly."""
    broker = RedisBroker(redis_url, block=0.2)
    try:
        server = Server(serve, broker)
        client = server.open(["a", "b"])
        client.wait_for(lambda c: c.parser.last_event_id != "")
        broker.publish("a", "a0")
        broker.publish("b", "b0")
        client.events(2)
        redis_server.kill()
        redis_server.start()
        published = {"a": [], "b": ["b0"]}

        def publish(channel: str, data: str) -> None:
            while True:
                try:
                    broker.publish(channel, data)
                    published[channel].append(data)
                    return
                except BrokerUnavailable:
                    gevent.sleep(0.05)

        published["b"] = []  # b0 is gone with the old Redis
        for data in ["a1", "b1", "a2"]:
            publish(data[0], data)
        client.wait_for(lambda c: len(c.parser.events) == 7, timeout=20)
        live = list(client.parser.events)
        check_frames(live, ["a", "b"])
        resets = [e for e in live if e.type == "stream-reset"]
        assert sorted((channel_of(e), reset_data(e)["reason"]) for e in resets) == [
            ("a", "restarted"),
            ("b", "restarted"),
        ]
        assert view_of(live) == {"a": ["a1", "a2"], "b": ["b1"]}
        resume_from_every_cut(server, ["a", "b"], live[2:], published)
        client.close()
        assert_eventually_unsubscribed(broker)
    finally:
        broker.close()


def test_the_header_cursor_wins_over_the_query_one(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    """Issue 9 review: a polyfill may send ``?lastEventId=`` while the
    browser sends ``Last-Event-ID`` too: the header is the cursor (as for one
    channel), and a blank header leaves it to the query."""
    broker = make_broker()
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    a1 = broker.publish("a", "a1")
    broker.publish("a", "a2")
    header, query = encode_cursor([("a", a1)]), encode_cursor([("a", a0)])
    both = StreamClient(server.port, server.path(["a"], cursor_in_query=query), headers={"Last-Event-ID": header})
    assert [e.data for e in both.events(1)] == ["a2"]
    blank = StreamClient(server.port, server.path(["a"], cursor_in_query=query), headers={"Last-Event-ID": ""})
    assert [e.data for e in blank.events(2)] == ["a1", "a2"]


def test_a_stream_closed_before_attach_leaves_nothing_subscribed(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Issue 9 review: the Python API, with the app yielding between
    open_stream and attach (a lookup of its own) while close_all ends the
    stream: attach after the close still unsubscribes every channel, and
    the events published meanwhile go nowhere (no error)."""
    broker = make_broker()
    source = EventSource(lambda conn, environ: None, keepalive=0.5)
    opened, go = gevent.event.Event(), gevent.event.Event()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        multiplex, preamble = broker.subscribe_many(["a", "b"], None)
        stream = source.open_stream(environ, start_response, None, preamble=preamble)
        opened.set()
        go.wait(5)
        multiplex.attach(stream.connection)
        return stream

    port = serve(app).server_port
    # The response headers are sent with the first piece of the body, once the app returns.
    connecting = gevent.spawn(StreamClient, port, "/")
    assert opened.wait(5)
    assert broker.subscriber_count() == 2
    broker.publish("a", "meanwhile")
    assert source.close_all(retry=500) == 1
    go.set()
    client = connecting.get(timeout=5)
    body = client.read_body()
    assert b"meanwhile" not in body  # the stream was closed before it went live
    assert b"\nretry: " in body
    assert_eventually_unsubscribed(broker)


def test_max_age_resumes_a_quiet_channel_without_reset_and_resets_an_aged_out_position(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Issue 9 review: with ``max_age``, a reconnect after every event aged
    out of replay: a channel the client had read to its end gets nothing and
    no reset; one whose next event follows an aged-out one gets just that
    event; one whose unread events aged out gets ``expired``."""
    broker = make_broker(max_age=0.5)
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    b0 = broker.publish("b", "b0")
    c_old = broker.publish("c", "c0")
    broker.publish("c", "c1")  # unread by the client, and it will age out
    cursor = encode_cursor([("a", a0), ("b", b0), ("c", c_old)])
    wait_until(lambda: not broker.history_of("c"), 5)
    b1 = broker.publish("b", "b1")
    client = server.open(["a", "b", "c"], cursor)
    events = client.events(2)
    assert summary(events) == [("b", "message", "b1"), ("c", "stream-reset", "expired")]
    assert reset_data(events[1])["lastEventId"] == c_old
    check_frames(events, ["a", "b", "c"])
    positions = parse_cursor(events[-1].last_event_id, ["a", "b", "c"])
    assert positions is not None
    assert (positions["a"], positions["b"]) == (a0, b1)
    assert [e.type for e in client.parser.events].count("stream-reset") == 1


def test_multiplexed_streams_on_a_thread_per_request_server_get_every_event_and_leave_no_hub() -> None:
    """Issue 9 review: werkzeug's threaded server (no gevent server, no
    monkey-patching): each multiplexed stream waits on its request thread's
    hub, made by the broker's subscribes before its Connection; events
    published from this thread reach every channel once, in order, and
    dropped streams leave no hub (file descriptors) or subscription behind."""
    broker = MemoryBroker()
    app = broker.subscriber_app(keepalive=0.1)
    channels = ["t/a", "t/b", "t/c"]
    with threaded_server(app) as server:
        path = "/?" + "&".join(f"channel={channel}" for channel in channels)
        clients = [open_stream(server.server_port, path) for _ in range(3)]
        for client in clients:
            client.wait_for(lambda c: c.parser.last_event_id != "")
        wait_until(lambda: broker.subscriber_count() == 9, 5)
        for i in range(50):
            for channel in channels:
                broker.publish(channel, f"{channel} {i}")
        for client in clients:
            events = client.events(150)
            check_frames(events, channels)
            for channel in channels:
                assert [e.data for e in events if channel_of(e) == channel] == [f"{channel} {i}" for i in range(50)]
            client.close()

        def one() -> None:
            client = open_stream(server.server_port, path)
            client.wait_for(lambda c: c.parser.last_event_id != "")
            client.close()

        check_fds_return_to_baseline(one, 10, lambda n: not app.connections and broker.subscriber_count() == 0)
