"""Issue 9: many channels on one stream, against both MemoryBroker and
RedisBroker (a real redis-server), over real sockets under gevent.pywsgi.

Every clause of the contract: the URL and its errors, the frame (data and
event type as published, the channel told by the id), the cursor that resumes
every channel exactly (also while publishes race the reconnects, through two
server processes for Redis), per-channel resets, a broken Redis key ending one
channel only, soft refusals, unsubscribing, one Redis reader per process, and
the Python API. And ``GET /<channel>`` unchanged, byte for byte.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import gevent
import gevent.subprocess
import pytest
import redis
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.conftest import ROOT, ServerProcess, free_port
from tests.helpers import ParsedEvent, StreamClient, parse, wait_until
from wsgi_eventsource import (
    Broker,
    BrokerUnavailable,
    ChannelUnavailable,
    EventSource,
    InvalidChannel,
    MemoryBroker,
    RedisBroker,
)
from wsgi_eventsource.brokers import cursor_channel, encode_cursor, parse_cursor
from wsgi_eventsource.brokers.base import parse_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from wsgi_eventsource import Connection

MakeBroker = Callable[..., Broker]


@pytest.fixture
def redis_broker_options() -> dict[str, Any]:
    """The RedisBrokers of ``make_broker`` (tests/conftest.py) look for new
    channels every 0.2 s here."""
    return {"block": 0.2}


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


class Server:
    """A broker's subscriber app on a real socket, at *mount* (``""``: the
    app itself, not below a DispatcherMiddleware)."""

    def __init__(
        self, serve: Callable[..., WSGIServer], broker: Broker, mount: str = "/events", **options: Any
    ) -> None:
        self.broker = broker
        self.app = broker.subscriber_app(**{"keepalive": 0.5, **options})
        wsgi = self.app if mount == "" else DispatcherMiddleware(not_found, {mount: self.app})
        self.mount = mount
        self.port = serve(wsgi).server_port

    def path(self, channels: Sequence[str], *, slash: str = "/", cursor_in_query: str | None = None) -> str:
        pairs = [("channel", channel) for channel in channels]
        if cursor_in_query is not None:
            pairs.append(("lastEventId", cursor_in_query))
        return f"{self.mount}{slash}?{urlencode(pairs)}"

    def open(
        self, channels: Sequence[str], cursor: str | None = None, *, via: str = "header", slash: str = "/"
    ) -> StreamClient:
        """A multiplexed stream, its ``: ok`` comment received."""
        return open_stream(self.port, self.path(channels, slash=slash), cursor, via=via)


def open_stream(port: int, path: str, cursor: str | None = None, *, via: str = "header") -> StreamClient:
    """A stream at *path* (with a query string), resuming from *cursor* sent
    in the ``Last-Event-ID`` header or (``via="query"``) as ``?lastEventId=``."""
    headers = {}
    if cursor is not None and via == "header":
        headers["Last-Event-ID"] = cursor
    elif cursor is not None:
        path += "&" + urlencode({"lastEventId": cursor})
    client = StreamClient(port, path, headers=headers)
    assert client.status == 200, client.read_body()
    assert client.headers["content-type"].startswith("text/event-stream")
    client.wait_for(lambda c: b": ok\n\n" in c.raw)
    return client


def channel_of(event: ParsedEvent) -> str:
    return cursor_channel(event.last_event_id)


def own_id(event: ParsedEvent) -> str:
    """The event's id in its own channel: between the first ``*`` and ``;``."""
    return event.last_event_id.split("*", 1)[1].split(";", 1)[0]


def check_frames(events: Sequence[ParsedEvent], channels: Sequence[str]) -> None:
    """Every id is a cursor of the subscription with the event's channel first."""
    for event in events:
        positions = parse_cursor(event.last_event_id, channels)
        assert positions is not None, event
        assert channel_of(event) in channels, event
        assert positions[channel_of(event)] == own_id(event)
        assert parse_id(own_id(event)) is not None


def reset_data(event: ParsedEvent) -> dict[str, Any]:
    assert event.type == "stream-reset", event
    data: dict[str, Any] = json.loads(event.data)
    return data


def summary(events: Sequence[ParsedEvent]) -> list[tuple[str, str, str]]:
    """(channel, type, data) of each event; a reset's data as its reason."""
    return [(channel_of(e), e.type, reset_data(e)["reason"] if e.type == "stream-reset" else e.data) for e in events]


# -- the URL, the frame, the first cursor ---------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "slash"),
    [
        pytest.param("", "/", id="GET /?channel="),
        pytest.param("/events", "", id="GET /events?channel="),
        pytest.param("/events", "/", id="GET /events/?channel="),
    ],
)
def test_a_multiplexed_stream_delivers_every_channel_exactly_as_published(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, mount: str, slash: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker, mount, keepalive=60)  # no keepalive comment between the bytes compared
    channels = ["chat/lobby", "presence/lobby"]
    earlier = broker.publish("chat/lobby", "before the client came")
    client = server.open(channels, slash=slash)
    client.wait_for(lambda c: c.parser.last_event_id != "")
    start = client.parser.last_event_id
    assert client.parser.events == []  # a bare id line: no event
    published = [
        ("presence/lobby", broker.publish("presence/lobby", ["alice joined", "bob joined"], event="presence")),
        ("chat/lobby", broker.publish("chat/lobby", "hello: world, a=b; c*d")),
        ("chat/lobby", broker.publish("chat/lobby", "two\r\nlines", event="chat")),
        ("presence/lobby", broker.publish("presence/lobby", "", event="presence")),
    ]
    events = client.events(4)
    # The starting cursor names every channel at its current id.
    presence_start = broker.history_of("presence/lobby")[0].prev
    assert parse_cursor(start, channels) == {"chat/lobby": earlier, "presence/lobby": presence_start}
    assert start == encode_cursor([("chat/lobby", earlier), ("presence/lobby", presence_start)])
    # In order per channel (RedisBroker's reader may interleave channels otherwise).
    by_channel = {channel: [(e.type, e.data) for e in events if channel_of(e) == channel] for channel in channels}
    assert by_channel == {
        "presence/lobby": [("presence", "alice joined\nbob joined"), ("presence", "")],
        "chat/lobby": [("message", "hello: world, a=b; c*d"), ("chat", "two\nlines")],
    }
    arrived = [(channel_of(e), own_id(e)) for e in events]
    assert sorted(arrived) == sorted(published)
    assert [i for c, i in arrived if c == "chat/lobby"] == [i for c, i in published if c == "chat/lobby"]
    check_frames(events, channels)
    # Byte for byte: each event is the published one with the cursor as its
    # id, the event's channel first, the other channel at its latest id.
    bodies = {(channel, entry.id): entry.body for channel in channels for entry in broker.history_of(channel)}
    positions = {"chat/lobby": earlier, "presence/lobby": presence_start}
    expected = b": ok\n\nid: " + start.encode() + b"\n\n"
    for channel, event_id in arrived:
        positions[channel] = event_id
        others = [(name, positions[name]) for name in channels if name != channel]
        expected += b"id: " + encode_cursor([(channel, event_id), *others]).encode() + b"\n" + bodies[channel, event_id]
    assert bytes(client.raw) == expected


def test_a_channel_listed_twice_counts_once(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    broker = make_broker()
    server = Server(serve, broker, max_channels=3)
    for name in "abc":
        broker.publish(name, "x")
    client = server.open(["a", "b", "a", "c", "b", "c"])  # 3 channels: exactly max_channels passes
    client.wait_for(lambda c: c.parser.last_event_id != "")
    assert [entry.split("*")[0] for entry in client.parser.last_event_id.split(";")] == ["a", "b", "c"]
    assert broker.channel_counts() == {"a": 1, "b": 1, "c": 1}
    broker.publish("b", "once")
    broker.publish("b", "next")
    events = client.events(2)
    # Not twice for a channel listed twice (a copy would have come before "next").
    assert [(channel_of(e), e.data) for e in events] == [("b", "once"), ("b", "next")]


def test_one_channel_by_query_is_a_multiplexed_stream(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    first = broker.publish("solo", "x")
    client = server.open(["solo"])
    client.wait_for(lambda c: c.parser.last_event_id != "")
    assert client.parser.last_event_id == f"solo*{first}"
    second = broker.publish("solo", "y")
    assert client.events(1)[0].last_event_id == f"solo*{second}"


# -- GET /<channel> is unchanged --------------------------------------------------------------


def test_a_single_channel_stream_is_unchanged_byte_for_byte(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """What ``GET /<channel>`` sent before issue 9 (56f8aa7^, same bytes for
    the bare id, the replay, the reset and live events): checked on a known
    sequence of publishes."""
    broker = make_broker()
    server = Server(serve, broker, keepalive=60)
    first = broker.publish("room", "one")
    new = StreamClient(server.port, "/events/room")
    assert new.status == 200
    new.wait_for(lambda c: c.parser.last_event_id == first)
    second = broker.publish("room", ["two", "lines"], event="chat")
    new.events(1)
    assert bytes(new.raw) == (
        b": ok\n\n" + f"id: {first}\n\n".encode() + f"id: {second}\nevent: chat\ndata: two\ndata: lines\n\n".encode()
    )
    assert new.header_list == [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache, no-transform"),
        ("X-Accel-Buffering", "no"),
        ("Date", new.headers["date"]),
        ("Transfer-Encoding", "chunked"),
    ]
    new.close()

    resumed = StreamClient(server.port, "/events/room", headers={"Last-Event-ID": first})
    third = broker.publish("room", "three", retry=2500)
    resumed.events(2)
    assert bytes(resumed.raw) == (
        b": ok\n\n"
        + f"id: {second}\nevent: chat\ndata: two\ndata: lines\n\n".encode()
        + f"id: {third}\nretry: 2500\ndata: three\n\n".encode()
    )
    resumed.close()

    start = broker.history_of("room")[0].prev
    reset = StreamClient(server.port, "/events/room?lastEventId=bogus")
    reset.events(4)
    assert bytes(reset.raw) == (
        b": ok\n\n"
        + f"id: {start}\nevent: stream-reset\n".encode()
        + b'data: {"channel": "room", "lastEventId": "bogus", "reason": "unknown"}\n\n'
        + f"id: {first}\ndata: one\n\n".encode()
        + f"id: {second}\nevent: chat\ndata: two\ndata: lines\n\n".encode()
        + f"id: {third}\nretry: 2500\ndata: three\n\n".encode()
    )
    # A cursor sent to a single-channel stream is just an unknown id there.
    cursor = StreamClient(server.port, "/events/room", headers={"Last-Event-ID": f"room*{second}"})
    assert reset_data(cursor.events(4)[0])["reason"] == "unknown"


# -- refused requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("", "No channel: use /<channel>, or ?channel=<channel>", id="no-query"),
        pytest.param("lastEventId=x", "No channel", id="no-channel"),
        pytest.param("channel=", "channel name is empty", id="empty"),
        pytest.param("channel=a&channel=", "channel name is empty", id="one-empty"),
        pytest.param("channel=a%20b", "character that is not allowed: ' '", id="space"),
        pytest.param("channel=a+b", "write %2B", id="plus-is-a-space"),
        pytest.param("channel=a//b", "empty segment", id="double-slash"),
        pytest.param("channel=a/../b", "'..' segment", id="dotdot"),
        pytest.param("channel=a%2Ab", "not allowed: '*'", id="star"),
        pytest.param("channel=a%3Bb", "not allowed: ';'", id="semicolon"),
        pytest.param("channel=caf%C3%A9", "not allowed: 'é'", id="non-ascii"),
        pytest.param("channel=" + "x" * 201, "longer than 200", id="too-long"),
        pytest.param(
            "channel=a&channel=b&channel=c&channel=d",
            "4 channels are listed; one stream takes at most 3",
            id="too-many",
        ),
        pytest.param(
            "channel=a&channel=b&channel=c&channel=a&channel=d", "4 channels are listed", id="too-many-deduped"
        ),
        pytest.param("channel=%FF", "query string is not valid UTF-8", id="bad-utf8-name"),
        pytest.param("channel=a&x=%C3", "query string is not valid UTF-8", id="bad-utf8-elsewhere"),
    ],
)
@pytest.mark.parametrize("slash", ["/", ""])
def test_a_bad_multiplexed_request_is_a_400_that_names_the_problem(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, query: str, message: str, slash: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker, max_channels=3)
    client = StreamClient(server.port, f"/events{slash}?{query}" if query else f"/events{slash}")
    assert client.status == 400
    assert client.headers["content-type"].startswith("text/plain")
    assert message in client.read_body().decode("utf-8")
    assert broker.subscriber_count() == 0


@pytest.mark.parametrize("query", ["channel=a", "channel=", "x=1&channel=b"])
def test_a_channel_in_the_path_and_in_the_query_is_a_400(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, query: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    client = StreamClient(server.port, f"/events/room?{query}")
    assert client.status == 400
    assert "not both" in client.read_body().decode()
    assert broker.subscriber_count() == 0


@pytest.mark.parametrize("value", [0, -1, True, "3", 2.5, None])
def test_max_channels_must_be_a_positive_int(value: object) -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="max_channels must be a positive int"):
        broker.subscriber_app(max_channels=value)  # type: ignore[arg-type]
    broker.close()


def test_authorize_is_asked_for_every_channel_and_one_refusal_is_a_403(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker()
    asked: list[str] = []

    def authorize(environ: WSGIEnvironment, channel: str) -> bool:
        asked.append(channel)
        return not channel.startswith("private/")

    server = Server(serve, broker, authorize=authorize)
    refused = StreamClient(server.port, server.path(["public/a", "private/b", "public/c"]))
    assert refused.status == 403
    assert "text/event-stream" not in refused.headers["content-type"]
    assert "private/b" in asked
    assert broker.subscriber_count() == 0
    refused_last = StreamClient(server.port, server.path(["public/a", "public/c", "private/z"]))
    assert refused_last.status == 403
    assert broker.subscriber_count() == 0
    asked.clear()
    allowed = server.open(["public/a", "public/c", "public/a"])
    assert asked == ["public/a", "public/c"]
    broker.publish("public/c", "hi")
    assert allowed.events(1)[0].data == "hi"


# -- resuming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["header", "query"])
def test_a_reconnect_gets_exactly_what_each_channel_missed_then_live(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, via: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    channels = ["chat/lobby", "notify/al+ice,x=y"]  # '+' ',' '=' survive the query string and the cursor
    chat, notify = channels
    client = server.open(channels)
    broker.publish(chat, "c0")
    broker.publish(notify, "n0")
    broker.publish(chat, "c1")
    client.events(3)
    cursor = client.parser.last_event_id
    client.reset()
    missed = [
        (chat, broker.publish(chat, "c2")),
        (notify, broker.publish(notify, "n1")),
        (notify, broker.publish(notify, "n2", event="ping")),
        (chat, broker.publish(chat, "c3")),
    ]
    resumed = server.open(channels, cursor, via=via)
    events = list(resumed.events(4))
    assert not [e for e in events if e.type == "stream-reset"]
    assert sorted((channel_of(e), own_id(e)) for e in events) == sorted(missed)
    for channel in channels:  # per channel in order
        assert [own_id(e) for e in events if channel_of(e) == channel] == [i for c, i in missed if c == channel]
    assert [e.type for e in events if e.data == "n2"] == ["ping"]
    check_frames(events, channels)
    live = broker.publish(notify, "live")
    events = resumed.events(5)
    assert len(events) == 5  # nothing twice before it
    assert (channel_of(events[4]), own_id(events[4]), events[4].data) == (notify, live, "live")
    assert parse_cursor(events[4].last_event_id, channels) == {chat: missed[3][1], notify: live}


def test_an_event_both_replayed_and_live_is_sent_once_per_channel(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """The replay-to-live hand-off of every channel: live copies of events the
    replay has (RedisBroker's reader, or a publisher in another thread, may
    hand them over after the subscription was registered) are dropped."""
    broker = make_broker()
    a0, b0 = broker.publish("a", "a0"), broker.publish("b", "b0")
    a1, b1 = broker.publish("a", "a1"), broker.publish("b", "b1")
    source = EventSource(lambda conn, environ: None, keepalive=5)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        multiplex, preamble = broker.subscribe_many(["a", "b"], encode_cursor([("a", a0), ("b", b0)]))
        for subscription in multiplex.subscriptions:  # live copies, as fan_out delivers them
            for entry in broker.history_of(subscription.channel):
                key = parse_id(entry.id)
                assert key is not None
                subscription.deliver(key, entry.wire)
        stream = source.open_stream(environ, start_response, None, preamble=preamble)
        multiplex.attach(stream.connection)
        return stream

    client = open_stream(serve(app).server_port, "/")
    a2 = broker.publish("a", "a2")
    client.wait_for(lambda c: any(own_id(e) == a2 and channel_of(e) == "a" for e in c.parser.events))
    assert [(channel_of(e), own_id(e)) for e in client.parser.events] == [("a", a1), ("b", b1), ("a", a2)]


def test_64_channels_of_40_characters_resume_with_their_3647_byte_cursor(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """The default max_channels (64) of 40-character names: the cursor in the
    ``Last-Event-ID`` header resumes every one (65 channels are a 400)."""
    broker = make_broker()
    server = Server(serve, broker)
    channels = [f"t-{i:02d}/" + "r" * 32 + f"-{i:02d}" for i in range(64)]
    for channel in channels:
        broker.publish(channel, "before")
    client = server.open(channels)
    client.wait_for(lambda c: c.parser.last_event_id != "")
    cursor = client.parser.last_event_id
    assert len(cursor) == 3647
    client.reset()
    missed = {channel: broker.publish(channel, f"missed on {channel}") for channel in channels[::7]}
    resumed = server.open(channels, cursor)
    events = resumed.events(len(missed))
    assert {channel_of(e): own_id(e) for e in events} == missed
    assert not [e for e in events if e.type == "stream-reset"]
    too_many = StreamClient(server.port, server.path([*channels, "one-more"]))
    assert too_many.status == 400
    assert "65 channels are listed; one stream takes at most 64" in too_many.read_body().decode()


@pytest.mark.parametrize("empty", ["header", "query"])
def test_an_empty_cursor_is_a_new_client(serve: Callable[..., WSGIServer], make_broker: MakeBroker, empty: str) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    path = server.path(["a", "b"], cursor_in_query="" if empty == "query" else None)
    client = StreamClient(server.port, path, headers={"Last-Event-ID": ""} if empty == "header" else {})
    assert client.status == 200
    client.wait_for(lambda c: c.parser.last_event_id != "")
    start = broker.history_of("a")[0].prev  # where a started: b, never published to, is there still
    assert parse_cursor(client.parser.last_event_id, ["a", "b"]) == {"a": a0, "b": start}
    assert client.parser.events == []  # no reset, no replay


def test_an_up_to_date_cursor_replays_nothing(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    broker.publish("a", "a0")
    broker.publish("b", "b0")
    client = server.open(["a", "b"])
    client.wait_for(lambda c: c.parser.last_event_id != "")
    cursor = client.parser.last_event_id
    client.close()
    again = server.open(["a", "b"], cursor)
    live = broker.publish("b", "b1")
    (event,) = again.events(1)
    assert own_id(event) == live


def test_an_unknown_position_resets_only_its_channel(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    b0 = broker.publish("b", "b0")
    broker.publish("b", "b1")
    broker.publish("a", "a1")
    future = "99999999999999-0"  # an id no broker gave: "unknown", not "expired"
    client = server.open(["a", "b"], encode_cursor([("a", a0), ("b", future)]))
    events = client.events(4)
    assert summary(events) == [
        ("a", "message", "a1"),
        ("b", "stream-reset", "unknown"),
        ("b", "message", "b0"),
        ("b", "message", "b1"),
    ]
    assert reset_data(events[1]) == {"channel": "b", "lastEventId": future, "reason": "unknown"}
    # The reset's own id is where the history that follows it continues from.
    assert own_id(events[1]) == broker.history_of("b")[0].prev
    assert own_id(events[2]) == b0
    check_frames(events, ["a", "b"])
    broker.publish("a", "live")
    assert client.events(5)[4].data == "live"
    assert sum(e.type == "stream-reset" for e in client.parser.events) == 1


def test_a_channel_missing_from_the_cursor_resets_with_a_null_position(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    broker.publish("a", "a1")
    broker.publish("added", "x0")
    client = server.open(["a", "added"], encode_cursor([("a", a0), ("dropped", a0)]))  # the page added one
    events = client.events(3)
    assert summary(events) == [("a", "message", "a1"), ("added", "stream-reset", "unknown"), ("added", "message", "x0")]
    assert reset_data(events[1]) == {"channel": "added", "lastEventId": None, "reason": "unknown"}
    assert "dropped" not in events[2].last_event_id


@pytest.mark.parametrize("cursor", ["garbage", "single-channel id", "a*1-0;a*1-0", "a*1-0;b"])
def test_a_cursor_that_does_not_parse_resets_every_channel(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, cursor: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    broker.publish("b", "b0")
    broker.publish("a", "a1")
    if cursor == "single-channel id":
        cursor = a0  # what a single-channel stream of "a" sent
    client = server.open(["a", "b"], cursor)
    events = client.events(5)
    assert summary(events) == [
        ("a", "stream-reset", "unknown"),
        ("a", "message", "a0"),
        ("a", "message", "a1"),
        ("b", "stream-reset", "unknown"),
        ("b", "message", "b0"),
    ]
    assert [reset_data(e) for e in events if e.type == "stream-reset"] == [
        {"channel": "a", "lastEventId": None, "reason": "unknown"},
        {"channel": "b", "lastEventId": None, "reason": "unknown"},
    ]


def test_a_position_older_than_history_resets_with_reason_expired(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker(history=3)
    server = Server(serve, broker)
    old = broker.publish("a", "a0")
    b0 = broker.publish("b", "b0")
    for i in range(1, 10):
        broker.publish("a", f"a{i}")
    b1 = broker.publish("b", "b1")
    client = server.open(["a", "b"], encode_cursor([("b", b0), ("a", old)]))
    events = client.events(5)
    assert summary(events) == [
        ("a", "stream-reset", "expired"),
        ("a", "message", "a7"),
        ("a", "message", "a8"),
        ("a", "message", "a9"),
        ("b", "message", "b1"),
    ]
    assert reset_data(events[0]) == {"channel": "a", "lastEventId": old, "reason": "expired"}
    assert own_id(events[4]) == b1


def test_a_client_that_drops_anywhere_in_the_replay_resumes_without_loss(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """Cut the first connection's replay after every event in turn (and
    before the first): resuming with the id seen last gives each channel
    exactly its history (a reset means "start this channel over"), and only
    channels the cursor does not name (their reset not yet sent) are reset."""
    broker = make_broker()
    server = Server(serve, broker)
    channels = ["a", "b", "c"]
    ids = {channel: [broker.publish(channel, f"{channel}{i}") for i in range(4)] for channel in channels}
    history = {channel: [f"{channel}{i}" for i in range(4)] for channel in channels}
    positions = {channel: ids[channel][-1] for channel in channels}
    # a resumes after its first event, b is missing, c unknown: a's replay
    # comes first, then b's and c's resets and histories.
    cursor = encode_cursor([("a", ids["a"][0]), ("c", "99999999999999-0")])
    first = server.open(channels, cursor)
    first.wait_for(lambda c: parse_cursor(c.parser.last_event_id, channels) == positions)
    replay = list(first.parser.events)
    first.close()
    assert len(replay) == 3 + 5 + 5
    for event in replay[:3]:  # in a's replay: b and c, not sent yet, are left out of the cursor
        assert channel_of(event) == "a"
        assert set(parse_cursor(event.last_event_id, channels) or ()) == {"a"}
    for cut in range(len(replay) + 1):
        seen = replay[:cut]
        resume = seen[-1].last_event_id if seen else cursor
        client = server.open(channels, resume)
        # Until the cursor (the one it came with, if nothing was replayed) is current.
        client.wait_for(lambda c, resume=resume: parse_cursor(c.parser.last_event_id or resume, channels) == positions)
        rest = list(client.parser.events)
        client.close()
        # The server's own cursors name only positions it knows: only channels
        # they leave out start over (the first cursor had c's unknown too).
        named = parse_cursor(resume, channels) or {}
        restarted = set(channels) - set(named) if seen else {"b", "c"}
        assert {channel_of(e) for e in rest if e.type == "stream-reset"} == restarted, f"cut after {cut} events"
        view: dict[str, list[str]] = {"a": ["a0"], "b": [], "c": []}  # it had a0 before it came
        for event in [*seen, *rest]:
            if event.type == "stream-reset":
                view[channel_of(event)] = []  # start the channel over
            else:
                view[channel_of(event)].append(event.data)
        assert view == history, f"cut after {cut} events"


# -- the race -----------------------------------------------------------------------------------


def follow_while_publishing(
    broker: Broker,
    *,
    open_at: Callable[[int, str | None], StreamClient],
    channels: Sequence[str],
    stop_publishing: Callable[[], dict[str, int]],
    rng: random.Random,
    reconnects: int = 5,
) -> tuple[dict[str, list[int]], int, int]:
    """Follow *channels* (each event's data is its channel's sequence number)
    through *reconnects* reconnections, each after a random number of events
    and cut at a random point of what arrived (so often in the middle of a
    replay), the client resuming from the id of the last event it kept.
    Then stop the publisher and read until every event arrived. Returns the
    sequence numbers seen per channel, the resets, and the events replayed
    after a cut (what a reconnect had to make up)."""
    seen: dict[str, list[int]] = {channel: [] for channel in channels}
    cursor: str | None = None
    start = ""  # the first connection's bare id
    resets = made_up = 0

    def keep(events: Sequence[ParsedEvent]) -> None:
        nonlocal resets
        for event in events:
            if event.type == "stream-reset":
                resets += 1
            else:
                seen[channel_of(event)].append(int(event.data))

    for attempt in range(reconnects + 1):
        client = open_at(attempt, cursor)
        if cursor is None:
            client.wait_for(lambda c: c.parser.last_event_id != "")
            cursor = start = client.parser.last_event_id  # the bare id: where this client starts
        want = rng.randint(1, 60)
        client.wait_for(lambda c, want=want: len(c.parser.events) >= want, timeout=30)
        events = list(client.parser.events)
        cut = rng.randint(0, len(events))
        keep(events[:cut])
        made_up += len(events) - cut
        if cut:
            cursor = events[cut - 1].last_event_id
        client.reset() if attempt % 2 else client.close()
        gevent.sleep(rng.uniform(0, 0.1))  # not a wait for anything: lets the publisher get ahead
    published = stop_publishing()
    # What this client should get: every event after its starting cursor.
    first = {}
    for channel, position in (parse_cursor(start, channels) or {}).items():
        history = [entry.id for entry in broker.history_of(channel)]
        assert len(history) == published[channel]
        first[channel] = history.index(position) + 1 if position in history else 0
    assert sorted(first) == sorted(channels)
    totals = {channel: published[channel] - first[channel] for channel in channels}
    assert all(totals[channel] > len(seen[channel]) for channel in channels), "the publisher stopped too soon"
    last = open_at(reconnects + 1, cursor)

    def caught_up(c: StreamClient) -> bool:
        counts = {channel: len(seen[channel]) for channel in channels}
        for event in c.parser.events:
            if event.type != "stream-reset":
                counts[channel_of(event)] += 1
        return counts == totals or any(counts[ch] > totals[ch] for ch in channels)

    last.wait_for(caught_up, timeout=60)
    keep(last.parser.events)
    check_frames(last.parser.events, channels)
    last.close()
    for channel in channels:
        expected = list(range(first[channel], published[channel]))
        assert seen[channel] == expected, f"{channel}: an event missed, repeated or out of order"
    return seen, resets, made_up


def test_every_event_is_seen_once_while_publishes_race_the_reconnects_memory(
    serve: Callable[..., WSGIServer],
) -> None:
    """The issue's race test, MemoryBroker: an OS thread publishes on two
    channels as fast as it can while the client reconnects five times,
    alternately to two servers of the process."""
    broker = MemoryBroker(history=100_000)
    channels = ["race/a", "race/b"]
    servers = [Server(serve, broker), Server(serve, broker)]
    counts = dict.fromkeys(channels, 0)
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            for channel in channels:
                broker.publish(channel, str(counts[channel]))
                counts[channel] += 1
            time.sleep(0.0005)

    publisher = threading.Thread(target=publish)
    try:
        publisher.start()
        wait_until(lambda: counts["race/b"] > 20, message="the publisher runs")

        def stop_publishing() -> dict[str, int]:
            stop.set()
            publisher.join(10)
            return dict(counts)

        def open_at(attempt: int, cursor: str | None) -> StreamClient:
            return servers[attempt % 2].open(channels, cursor)

        _, resets, made_up = follow_while_publishing(
            broker, open_at=open_at, channels=channels, stop_publishing=stop_publishing, rng=random.Random(9)
        )
    finally:
        stop.set()
        publisher.join(10)
        broker.close()
    assert resets == 0
    assert made_up > 0, "no reconnect was cut short of what had arrived"


PUBLISHER = """
import select, sys, time
from wsgi_eventsource import RedisBroker

broker = RedisBroker(sys.argv[1], history=100_000)
channels = sys.argv[2:]
counts = dict.fromkeys(channels, 0)
print("publishing", flush=True)
# Until the test closes our stdin: then say how many were published.
while not select.select([sys.stdin], [], [], 0)[0]:
    for channel in channels:
        broker.publish(channel, str(counts[channel]))
        counts[channel] += 1
    time.sleep(0.001)
print("published", *(counts[channel] for channel in channels), flush=True)
"""

SUBSCRIBER_SERVER = """
import sys
from gevent import monkey

monkey.patch_all()
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from wsgi_eventsource import RedisBroker

broker = RedisBroker(sys.argv[1], history=100_000, block=0.2)
app = DispatcherMiddleware(lambda e, s: [], {"/events": broker.subscriber_app(keepalive=0.5)})
server = WSGIServer(("127.0.0.1", 0), app, log=None)
server.start()
print(f"listening on {server.server_port}", flush=True)
server.serve_forever()
"""


@pytest.mark.server
def test_every_event_is_seen_once_while_publishes_race_the_reconnects_redis(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """The issue's race test, RedisBroker: another process publishes on two
    channels continuously while the client reconnects five times, alternately
    to two server processes (this one and a child) sharing the redis-server."""
    channels = ["race/a", "race/b"]
    broker = RedisBroker(redis_url, history=100_000, block=0.2)
    here = Server(serve, broker)
    there = ServerProcess(
        [sys.executable, "-c", SUBSCRIBER_SERVER, redis_url],
        ready_pattern=r"listening on (\d+)",
        stop_signal=signal.SIGKILL,
    )
    publisher = gevent.subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, redis_url, *channels],
        cwd=ROOT,
        stdin=gevent.subprocess.PIPE,
        stdout=gevent.subprocess.PIPE,
        text=True,
    )
    try:
        assert publisher.stdout is not None
        assert publisher.stdin is not None
        assert publisher.stdout.readline() == "publishing\n"
        admin = redis.Redis.from_url(redis_url)
        wait_until(lambda: admin.xlen("wsgi-eventsource:race/b") > 20, message="the publisher runs")
        admin.close()

        def stop_publishing() -> dict[str, int]:
            assert publisher.stdin is not None
            assert publisher.stdout is not None
            publisher.stdin.close()
            line = publisher.stdout.readline().split()
            assert publisher.wait(10) == 0
            assert line[0] == "published"
            return dict(zip(channels, map(int, line[1:]), strict=True))

        ports = [here.port, there.port]

        def open_at(attempt: int, cursor: str | None) -> StreamClient:
            return open_stream(ports[attempt % 2], here.path(channels), cursor)

        _, resets, made_up = follow_while_publishing(
            broker, open_at=open_at, channels=channels, stop_publishing=stop_publishing, rng=random.Random(9)
        )
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait(5)
        there.stop()
        broker.close()
    assert resets == 0
    assert made_up > 0, "no reconnect was cut short of what had arrived"


# -- RedisBroker: one reader, a broken key, refusals ---------------------------------------------


@pytest.mark.server
def test_multiplexed_subscribers_add_no_redis_connection_each(serve: Callable[..., WSGIServer], redis_url: str) -> None:
    broker = RedisBroker(redis_url, max_connections=4, block=0.2)
    server = Server(serve, broker)
    channels = [f"many/{i}" for i in range(5)]
    admin = redis.Redis.from_url(redis_url)
    before = len(admin.client_list())
    opening = [gevent.spawn(server.open, channels) for _ in range(50)]  # all at once: a storm
    gevent.joinall(opening, timeout=30, raise_error=True)
    clients = [g.value for g in opening]
    assert broker.subscriber_count() == 250
    for channel in channels:
        broker.publish(channel, channel)
    for client in clients:
        assert sorted(e.data for e in client.events(5)) == channels
    added = len(admin.client_list()) - before
    assert added <= 4 + 1, f"{added} Redis connections for 50 streams of 5 channels (pool 4 + the reader)"
    admin.close()
    broker.close()


@pytest.mark.server
def test_a_broken_key_ends_only_its_channel_of_a_multiplexed_stream(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    broker = RedisBroker(redis_url, block=0.2)
    server = Server(serve, broker)
    channels = ["fine", "clash"]
    client = server.open(channels)
    broker.publish("clash", "before")
    broker.publish("fine", "before")
    client.events(2)
    admin = redis.Redis.from_url(redis_url)
    admin.delete("wsgi-eventsource:clash")
    admin.set("wsgi-eventsource:clash", "not a stream")
    client.wait_for(lambda c: any(e.type == "stream-error" for e in c.parser.events))
    error = next(e for e in client.parser.events if e.type == "stream-error")
    assert json.loads(error.data)["channel"] == "clash"
    assert json.loads(error.data)["reason"] == "wrong_type"
    wait_until(lambda: broker.channel_counts() == {"fine": 1}, message="only the broken channel unsubscribed")
    after = broker.publish("fine", "still here")
    events = client.events(4)  # the same stream goes on
    assert (channel_of(events[3]), own_id(events[3]), events[3].data) == ("fine", after, "still here")
    assert not client.eof
    admin.delete("wsgi-eventsource:clash")
    admin.close()
    broker.close()


@pytest.mark.server
def test_a_reconnect_after_a_broken_key_still_gets_the_other_channels(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """Issue 9 (found in testing): after a channel's stream-error, the page's
    EventSource reconnects (a worker restart, a network blip) with a cursor
    that names the broken channel, and the whole multiplexed stream was
    refused (softly, at every reconnect, until the key was fixed): one broken
    key cut the page off from every channel. The other channels must go on."""
    broker = RedisBroker(redis_url, block=0.2)
    server = Server(serve, broker)
    channels = ["fine", "clash"]
    client = server.open(channels)
    broker.publish("fine", "before")
    client.events(1)
    admin = redis.Redis.from_url(redis_url)
    admin.delete("wsgi-eventsource:clash")
    admin.set("wsgi-eventsource:clash", "not a stream")
    client.wait_for(lambda c: any(e.type == "stream-error" for e in c.parser.events))
    cursor = client.parser.last_event_id
    client.reset()
    wait_until(lambda: broker.subscriber_count() == 0, 5, message="the first stream unsubscribed")
    again = StreamClient(server.port, server.path(channels), headers={"Last-Event-ID": cursor})
    assert again.status == 200
    assert "content-length" not in again.headers, "the whole stream was refused for one broken channel"
    after = broker.publish("fine", "after")
    again.wait_for(lambda c: any(own_id(e) == after for e in c.parser.events if channel_of(e) == "fine"))
    assert [(e.type, json.loads(e.data)) for e in again.parser.events if e.type != "message"] == [
        ("stream-error", {"channel": "clash", "reason": "wrong_type"})
    ]
    assert broker.channel_counts() == {"fine": 1}
    assert "clash" not in again.parser.events[-1].last_event_id  # left out of this stream
    admin.delete("wsgi-eventsource:clash")
    admin.close()
    broker.close()


@pytest.mark.server
def test_a_skipped_entry_at_the_end_of_a_channel_still_moves_the_cursor(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """The replay of a channel ends before the channel's position (its newest
    entry is not one of the broker's: skipped): a bare id line then names
    every channel at its position, so the client does not come back for it."""
    broker = RedisBroker(redis_url, block=0.2)
    server = Server(serve, broker)
    a0 = broker.publish("a", "a0")
    a1 = broker.publish("a", "a1")
    b0 = broker.publish("b", "b0")
    admin = redis.Redis.from_url(redis_url)
    added = admin.xadd("wsgi-eventsource:a", {"by": "hand"})
    foreign = added.decode() if isinstance(added, bytes) else added
    admin.close()
    client = server.open(["a", "b"], encode_cursor([("a", a0), ("b", b0)]))
    client.wait_for(lambda c: parse_cursor(c.parser.last_event_id, ["a", "b"]) == {"a": foreign, "b": b0})
    assert [(channel_of(e), own_id(e)) for e in client.parser.events] == [("a", a1)]
    a2 = broker.publish("a", "a2")
    assert own_id(client.events(2)[1]) == a2
    broker.close()


@pytest.mark.server
def test_a_new_client_gets_a_stream_error_for_a_broken_channel_and_the_others(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """Issue 9 (found in testing): a page whose channels include one with a
    broken key got no stream at all (a soft refusal, at every reconnect)."""
    admin = redis.Redis.from_url(redis_url)
    admin.set("wsgi-eventsource:clash", "not a stream")
    broker = RedisBroker(redis_url, block=0.2)
    server = Server(serve, broker)
    client = server.open(["clash", "fine"])
    client.wait_for(lambda c: c.parser.events)
    (error,) = client.parser.events
    assert (error.type, json.loads(error.data)) == ("stream-error", {"channel": "clash", "reason": "wrong_type"})
    assert parse_cursor(client.parser.last_event_id, ["clash", "fine"]) == {"fine": "0-0"}
    assert broker.channel_counts() == {"fine": 1}
    event_id = broker.publish("fine", "hi")
    assert (channel_of(client.events(2)[1]), own_id(client.events(2)[1])) == ("fine", event_id)
    assert server.app.source.refused["broker_unavailable"] == 0
    admin.delete("wsgi-eventsource:clash")
    admin.close()
    broker.close()


@pytest.mark.server
def test_a_stream_of_only_broken_channels_is_refused_softly(serve: Callable[..., WSGIServer], redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.set("wsgi-eventsource:clash", "not a stream")
    admin.set("wsgi-eventsource:clash2", "not a stream either")
    broker = RedisBroker(redis_url, block=0.2)
    server = Server(serve, broker)
    client = StreamClient(server.port, server.path(["clash", "clash2"]))
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    refusal = parse(client.read_body())  # a whole body (Content-Length), then the end
    assert refusal.reconnection_time is not None
    assert refusal.events == []
    assert server.app.source.refused["broker_unavailable"] == 1
    assert broker.subscriber_count() == 0
    admin.delete("wsgi-eventsource:clash", "wsgi-eventsource:clash2")
    admin.close()
    broker.close()


@pytest.mark.server
def test_a_channel_an_acl_forbids_is_left_out_and_the_others_stream(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """A Redis user (ACL) that may use only the key of "fine": "other" fails
    alone (NOPERM, a ChannelUnavailable) and gets a stream-error; "fine"
    streams; a single-channel subscribe to "other" is refused softly."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        "limited", enabled=True, passwords=["+secret"], keys=["wsgi-eventsource:fine"], commands=["+@all"]
    )
    url = redis_url.replace("redis://", "redis://limited:secret@")
    broker = RedisBroker(url, block=0.2)
    try:
        server = Server(serve, broker)
        client = server.open(["fine", "other"])
        client.wait_for(lambda c: c.parser.events)
        (error,) = client.parser.events
        assert (error.type, json.loads(error.data)) == ("stream-error", {"channel": "other", "reason": "error"})
        assert broker.channel_counts() == {"fine": 1}
        event_id = broker.publish("fine", "hi")
        assert own_id(client.events(2)[1]) == event_id
        alone = StreamClient(server.port, "/events/other")
        assert alone.status == 200
        assert parse(alone.read_body()).reconnection_time is not None  # a soft refusal, as before
        assert server.app.source.refused["broker_unavailable"] == 1
    finally:
        broker.close()
        admin.acl_deluser("limited")
        admin.close()


class FailingAt(MemoryBroker):
    """A MemoryBroker whose subscribe to one channel fails as an unreachable
    Redis does (a stand-in for the moment a real one goes away mid-request,
    which no real server can be made to do between two channels on cue)."""

    def __init__(self, channel: str, error: Exception) -> None:
        super().__init__()
        self.failing, self.error = channel, error

    def _subscribe_planned(self, channel: str, last_event_id: str | None) -> Any:
        if channel == self.failing:
            raise self.error
        return super()._subscribe_planned(channel, last_event_id)


@pytest.mark.parametrize(
    "error", [BrokerUnavailable("gone"), ChannelUnavailable("broken", channel="c", reason="error")]
)
def test_a_broker_failing_after_some_channels_subscribed_leaves_nothing_subscribed(
    serve: Callable[..., WSGIServer], error: Exception
) -> None:
    """Any BrokerUnavailable but a ChannelUnavailable refuses the stream
    (softly) after "a" and "b" subscribed: they must be unsubscribed. A
    ChannelUnavailable of the last channel with none other served, too."""
    broker = FailingAt("c", error)
    server = Server(serve, broker)
    names = ["a", "b", "c"] if isinstance(error, ChannelUnavailable) is False else ["c"]
    client = StreamClient(server.port, server.path(names))
    assert client.status == 200
    refusal = parse(client.read_body())
    assert refusal.reconnection_time is not None
    assert refusal.events == []
    assert server.app.source.refused["broker_unavailable"] == 1
    assert broker.subscriber_count() == 0
    if isinstance(error, ChannelUnavailable):  # with others served, only "c" is left out
        client = server.open(["a", "c"])
        client.wait_for(lambda c: c.parser.events)
        assert [e.type for e in client.parser.events] == ["stream-error"]
        assert broker.channel_counts() == {"a": 1}


@pytest.mark.server
def test_an_unreachable_redis_is_a_soft_refusal_of_a_multiplexed_stream(serve: Callable[..., WSGIServer]) -> None:
    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}/0", pool_timeout=1)
    server = Server(serve, broker, refusal_retry=4000)
    client = StreamClient(server.port, server.path(["a", "b", "c"]))
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    refusal = parse(client.read_body())  # a whole body (Content-Length), then the end
    assert refusal.reconnection_time is not None
    assert 2000 <= refusal.reconnection_time <= 6000
    assert refusal.events == []
    assert any("unavailable" in comment for comment in refusal.comments)
    assert server.app.source.refused["broker_unavailable"] == 1
    assert broker.subscriber_count() == 0
    broker.close()


# -- unsubscribing, the Python API ------------------------------------------------------------


@pytest.mark.parametrize("how", ["reset", "close"])
def test_closing_the_stream_unsubscribes_every_channel(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, how: str
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    clients = [server.open(["x", "y", "z"]) for _ in range(2)]
    assert broker.channel_counts() == {"x": 2, "y": 2, "z": 2}
    for client in clients:
        client.reset() if how == "reset" else client.close()
    wait_until(lambda: broker.subscriber_count() == 0, 5, message="every channel unsubscribed")
    assert server.app.connections == frozenset()
    broker.publish("x", "nobody listens")  # and nothing breaks


def test_close_all_ends_multiplexed_streams_and_unsubscribes(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker()
    server = Server(serve, broker)
    client = server.open(["x", "y"])
    assert server.app.close_all(retry=1000) == 1
    client.read_to_end()
    assert broker.subscriber_count() == 0


def test_the_python_api_opens_a_multiplexed_stream_in_a_custom_app(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    """The README's "From Python": subscribe_many, open_stream(preamble=...), attach."""
    broker = make_broker()
    source = EventSource(lambda conn, environ: None, keepalive=0.5)
    channels = ["chat/lobby", "notify/alice"]

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        cursor = environ.get("HTTP_LAST_EVENT_ID") or None
        multiplex, preamble = broker.subscribe_many(channels, cursor)
        stream = source.open_stream(environ, start_response, None, preamble=preamble)
        connection: Connection = stream.connection
        multiplex.attach(connection)
        return stream

    port = serve(app).server_port
    client = open_stream(port, "/")
    client.wait_for(lambda c: c.parser.last_event_id != "")
    first = broker.publish("notify/alice", "for alice", event="notify")
    (event,) = client.events(1)
    assert (channel_of(event), own_id(event), event.type, event.data) == ("notify/alice", first, "notify", "for alice")
    cursor = event.last_event_id
    client.reset()
    wait_until(lambda: broker.subscriber_count() == 0, 5, message="unsubscribed when the stream ended")
    missed = broker.publish("chat/lobby", "missed")
    resumed = open_stream(port, "/", cursor)
    (event,) = resumed.events(1)
    assert (channel_of(event), own_id(event), event.data) == ("chat/lobby", missed, "missed")
    assert parse_cursor(event.last_event_id, channels) == {"chat/lobby": missed, "notify/alice": first}


def test_subscribe_many_refuses_bad_channel_lists_and_subscribes_nothing(make_broker: MakeBroker) -> None:
    broker = make_broker()
    with pytest.raises(InvalidChannel, match="list of channel names"):
        broker.subscribe_many("chat/lobby", None)
    with pytest.raises(InvalidChannel, match="no channel"):
        broker.subscribe_many([], None)
    with pytest.raises(InvalidChannel, match="not allowed"):
        broker.subscribe_many(["fine", "bad name"], None)
    assert broker.subscriber_count() == 0
    multiplex, preamble = broker.subscribe_many(["a", "b", "a"], None)
    assert multiplex.channels == ("a", "b")
    assert broker.channel_counts() == {"a": 1, "b": 1}
    assert preamble.startswith(b"id: a*")
    assert b";b*" in preamble
    multiplex.close()
    multiplex.close()  # idempotent
    assert broker.subscriber_count() == 0


def test_subscriptions_of_one_channel_share_its_name_and_a_str_subclass_still_subscribes() -> None:
    """Memory (issue 9's bench: 510 bytes per 10-channel stream were channel
    names, one copy per request): names are interned. A ``str`` subclass
    cannot be interned; it is kept as it is, not a TypeError."""

    class Name(str):
        pass

    broker = MemoryBroker()
    first, _ = broker.subscribe_many(["".join(["ro", "om/1"]), "x"], None)
    second, _ = broker.subscribe_many(["".join(["roo", "m/1"]), "x"], None)
    assert first.channels[0] is second.channels[0]
    assert first.subscriptions[0].channel is second.subscriptions[0].channel
    odd, _ = broker.subscribe_many([Name("room/1")], None)
    assert odd.channels == ("room/1",)
    for multiplex in (first, second, odd):
        multiplex.close()
    assert broker.subscriber_count() == 0
