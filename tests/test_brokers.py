"""Every broker behaviour, against both MemoryBroker and RedisBroker (a real
redis-server), over real sockets under gevent.pywsgi."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
import pytest
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.helpers import ParsedEvent, StreamClient, fork, wait_until
from wsgi_eventsource import (
    Broker,
    InvalidChannel,
    InvalidEvent,
    MemoryBroker,
    RedisBroker,
)
from wsgi_eventsource.brokers.base import parse_id

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

MakeBroker = Callable[..., Broker]


def not_found(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return []


class Hub:
    """A broker's subscriber and publisher apps served on a real socket."""

    def __init__(self, serve: Callable[..., WSGIServer], broker: Broker, **options: Any) -> None:
        self.broker = broker
        self.subscribe_app = broker.subscriber_app(**{"keepalive": 0.5, **options})
        app = DispatcherMiddleware(not_found, {"/events": self.subscribe_app, "/publish": broker.publisher_app()})
        self.server = serve(app)
        self.port = self.server.server_port

    def subscribe(self, channel: str, last_event_id: str | None = None, **kwargs: Any) -> StreamClient:
        headers = {} if last_event_id is None else {"Last-Event-ID": last_event_id}
        client = StreamClient(self.port, f"/events/{channel}", headers=headers, **kwargs)
        assert client.status == 200, client.read_body()
        client.wait_for(lambda c: b": ok\n\n" in c.raw)
        return client

    def post(self, channel: str, body: bytes, content_type: str = "text/plain") -> tuple[int, bytes]:
        client = StreamClient(
            self.port, f"/publish/{channel}", method="POST", body=body, headers={"Content-Type": content_type}
        )
        try:
            return client.status, client.read_body()
        finally:
            client.close()


@pytest.fixture
def hub(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> Hub:
    return Hub(serve, make_broker())


def ids(client: StreamClient) -> list[str]:
    return [e.last_event_id for e in client.parser.events]


# -- publish ------------------------------------------------------------------------


def test_publish_returns_increasing_string_ids(make_broker: MakeBroker) -> None:
    broker = make_broker()
    published = [broker.publish("news", f"item {i}") for i in range(50)]
    assert all(isinstance(i, str) for i in published)
    keys = [parse_id(i) for i in published]
    assert None not in keys
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert len(set(published)) == 50
    history = broker.history_of("news")
    assert [e.id for e in history] == published
    assert [e.prev for e in history[1:]] == published[:-1]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("", "x"), {}, InvalidChannel, "empty"),
        (("a/../b", "x"), {}, InvalidChannel, "'..'"),
        (("a b", "x"), {}, InvalidChannel, "' '"),
        (("x" * 201, "x"), {}, InvalidChannel, "longer"),
        (("news", "x"), {"event": "a\nb"}, InvalidEvent, "event"),
        (("news", "x"), {"retry": -1}, InvalidEvent, "retry"),
        (("news", b"\xff"), {}, InvalidEvent, "UTF-8"),
        (("news", None), {}, InvalidEvent, "data is required"),
        (("news", 5), {}, InvalidEvent, "data"),
    ],
)
def test_publish_rejects_bad_input_and_publishes_nothing(
    make_broker: MakeBroker, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    broker = make_broker()
    with pytest.raises(error, match=match):
        broker.publish(*args, **kwargs)
    assert broker.history_of("news") == []


def test_publish_sequence_data_is_several_lines(hub: Hub) -> None:
    client = hub.subscribe("lines")
    hub.broker.publish("lines", ["a", b"b", "c\r\nd"], event="multi", retry=1200)
    (event,) = client.events(1)
    assert (event.type, event.data) == ("multi", "a\nb\nc\nd")
    assert client.parser.reconnection_time == 1200


# -- subscribe and fan-out -------------------------------------------------------------


def test_a_new_subscriber_gets_the_current_id_then_live_events(hub: Hub) -> None:
    first = hub.broker.publish("room", "before")
    client = hub.subscribe("room")
    client.wait_for(lambda c: c.parser.last_event_id == first)
    assert client.parser.events == []  # the bare id fired no event
    second = hub.broker.publish("room", "after", event="chat")
    assert client.events(1) == [ParsedEvent("chat", "after", second)]


def test_subscribers_are_isolated_by_channel_and_each_gets_every_event(hub: Hub) -> None:
    a1, a2, b = hub.subscribe("a"), hub.subscribe("a"), hub.subscribe("b")
    sent_a = [hub.broker.publish("a", f"a{i}") for i in range(20)]
    sent_b = [hub.broker.publish("b", f"b{i}") for i in range(5)]
    for client in (a1, a2):
        assert [e.data for e in client.events(20)] == [f"a{i}" for i in range(20)]
        assert ids(client) == sent_a
    assert [e.data for e in b.events(5)] == [f"b{i}" for i in range(5)]
    assert ids(b) == sent_b
    a1.wait_for(lambda c: "" in c.parser.comments, timeout=3)  # idle: a keepalive, nothing of b
    assert len(a1.parser.events) == 20


@pytest.mark.slow
def test_a_thousand_subscribers_all_get_every_event(hub: Hub) -> None:
    clients = [hub.subscribe("crowd", timeout=30) for _ in range(1000)]
    sent = [hub.broker.publish("crowd", f"e{i}") for i in range(5)]

    def receive(client: StreamClient) -> list[str]:
        client.events(5, timeout=30)
        return ids(client)

    results = gevent.joinall([gevent.spawn(receive, c) for c in clients], timeout=60, raise_error=True)
    assert len(results) == 1000
    assert all(g.value == sent for g in results)


# -- replay ------------------------------------------------------------------------------


def test_reconnect_replays_exactly_what_was_missed(hub: Hub) -> None:
    sent = [hub.broker.publish("r", f"m{i}") for i in range(6)]
    client = hub.subscribe("r", last_event_id=sent[1])
    assert [e.last_event_id for e in client.events(4)] == sent[2:]
    live = hub.broker.publish("r", "live")
    assert client.events(5)[-1] == ParsedEvent("message", "live", live)
    assert all(e.type != "stream-reset" for e in client.parser.events)


def test_last_event_id_query_parameter_works_like_the_header(hub: Hub) -> None:
    sent = [hub.broker.publish("q", f"m{i}") for i in range(3)]
    client = StreamClient(hub.port, f"/events/q?lastEventId={sent[0]}")
    assert [e.last_event_id for e in client.events(2)] == sent[1:]


def test_up_to_date_client_gets_no_replay(hub: Hub) -> None:
    sent = [hub.broker.publish("u", f"m{i}") for i in range(3)]
    client = hub.subscribe("u", last_event_id=sent[-1])
    client.wait_for(lambda c: "" in c.parser.comments, timeout=3)
    assert client.parser.events == []


def test_client_that_dropped_before_any_event_resumes_from_the_bare_id(hub: Hub) -> None:
    first = hub.subscribe("fresh")  # an empty channel
    first.wait_for(lambda c: b"id: " in c.raw)
    start_id = first.parser.last_event_id
    assert start_id
    first.close()
    sent = [hub.broker.publish("fresh", f"m{i}") for i in range(3)]
    again = hub.subscribe("fresh", last_event_id=start_id)
    assert [e.last_event_id for e in again.events(3)] == sent
    assert all(e.type == "message" for e in again.parser.events)


@pytest.mark.parametrize("bad_id", ["nonsense", "99999999999999-0", "1-1", "0-0x", "1" * 5000, "\u00e9t\u00e9"])
def test_unknown_id_gets_one_stream_reset_then_history_then_live(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker, bad_id: str
) -> None:
    hub = Hub(serve, make_broker(history=50))
    sent = [hub.broker.publish("x", f"m{i}") for i in range(3)]
    header = bad_id.encode().decode("latin-1")
    client = StreamClient(hub.port, "/events/x", headers={"Last-Event-ID": header})
    events = client.events(4)
    reset = events[0]
    assert reset.type == "stream-reset"
    info = json.loads(reset.data)
    assert info["channel"] == "x"
    assert info["reason"] in ("unknown", "expired")
    assert [e.last_event_id for e in events[1:]] == sent
    assert [e.type for e in events[1:]] == ["message"] * 3
    live = hub.broker.publish("x", "live")
    assert client.events(5)[-1].last_event_id == live
    assert sum(e.type == "stream-reset" for e in client.parser.events) == 1


def test_an_empty_last_event_id_is_a_new_client(hub: Hub) -> None:
    """Polyfills may send ``?lastEventId=`` before they have seen an id."""
    sent = hub.broker.publish("empty", "old")
    client = StreamClient(hub.port, "/events/empty?lastEventId=")
    client.wait_for(lambda c: c.parser.last_event_id == sent)
    assert client.parser.events == []  # no reset, no replay: the bare current id
    live = hub.broker.publish("empty", "new")
    assert client.events(1)[0].last_event_id == live


def test_id_older_than_history_gets_a_reset_then_what_is_left(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker(history=5)
    hub = Hub(serve, broker)
    sent = [broker.publish("old", f"m{i}") for i in range(300)]
    retained = [e.id for e in broker.history_of("old")]
    assert retained[-5:] == sent[-5:]
    assert len(retained) < 300  # trimmed (Redis trims approximately)
    client = hub.subscribe("old", last_event_id=sent[1])
    events = client.events(1 + len(retained))
    assert events[0].type == "stream-reset"
    assert json.loads(events[0].data)["reason"] == "expired"
    assert [e.last_event_id for e in events[1:]] == retained
    # The reset carries the id just before the first retained event: a client
    # that drops right after it resumes without a second reset.
    assert events[0].last_event_id == broker.history_of("old")[0].prev


def test_an_id_still_in_history_gets_no_reset_after_trimming(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker(history=5)
    hub = Hub(serve, broker)
    [broker.publish("t", f"m{i}") for i in range(300)]
    history = broker.history_of("t")
    client = hub.subscribe("t", last_event_id=history[0].prev)  # saw everything before the oldest
    assert [e.last_event_id for e in client.events(len(history))] == [e.id for e in history]
    assert all(e.type == "message" for e in client.parser.events)


def test_max_age_limits_replay(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    broker = make_broker(max_age=0.3)
    hub = Hub(serve, broker)
    seen = broker.publish("aged", "the client saw this")
    broker.publish("aged", "the client missed this")
    gevent.sleep(0.4)  # let both age past max_age (what is tested is time itself)
    new = broker.publish("aged", "new")
    assert [e.id for e in broker.history_of("aged")] == [new]
    client = hub.subscribe("aged", last_event_id=seen)
    events = client.events(2)
    assert events[0].type == "stream-reset"
    assert json.loads(events[0].data)["reason"] == "expired"
    assert events[1].last_event_id == new
    # The event right after what a client saw aged out, but it missed nothing.
    up_to_date = hub.subscribe("aged", last_event_id=broker.history_of("aged")[0].prev)
    assert up_to_date.events(1)[0].last_event_id == new


def test_a_client_that_saw_the_last_event_gets_no_reset_after_it_expired(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker(max_age=0.3)
    hub = Hub(serve, broker)
    seen = broker.publish("quiet", "the last event for a while")
    gevent.sleep(0.4)  # it ages out (what is tested is time itself)
    passer_by = hub.subscribe("quiet")  # a subscribe runs the expiry and learns the position
    passer_by.wait_for(lambda c: b"id: " in c.raw)
    assert passer_by.parser.last_event_id == seen, "a new subscriber was given a position before the last event"
    passer_by.close()
    wait_until(lambda: broker.subscriber_count("quiet") == 0, 5)
    new = broker.publish("quiet", "after the pause")
    client = hub.subscribe("quiet", last_event_id=seen)
    first = client.events(1)[0]
    assert (first.type, first.last_event_id) == ("message", new), "a client that missed nothing was reset"


def test_memory_broker_delivers_in_id_order_when_publishers_race_in_threads(
    serve: Callable[..., WSGIServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thread "first" is held after its event got its id but before the event
    # is handed to subscribers, while thread "second" publishes the next one.
    import threading

    import wsgi_eventsource.brokers.memory as memory_module

    paused, resume = threading.Event(), threading.Event()
    for name in ("fan_out_batch", "fan_out"):  # whichever delivers, the race is the same
        real = getattr(memory_module, name, None)
        if real is None:
            continue

        def held(*args: Any, _real: Any = real) -> None:
            if threading.current_thread().name == "first" and not paused.is_set():
                paused.set()
                resume.wait(5)
            _real(*args)

        monkeypatch.setattr(memory_module, name, held)
    broker = MemoryBroker()
    hub = Hub(serve, broker)
    client = hub.subscribe("race")
    client.wait_for(lambda c: b"id: " in c.raw)
    first = threading.Thread(target=broker.publish, args=("race", "first"), name="first")
    first.start()
    assert paused.wait(5)
    second = threading.Thread(target=broker.publish, args=("race", "second"), name="second")
    second.start()
    second.join(5)
    resume.set()
    first.join(5)
    events = client.events(2)
    assert [e.data for e in events] == ["first", "second"]
    assert [e.last_event_id for e in events] == [e.id for e in broker.history_of("race")]
    assert client.parser.last_event_id == broker.history_of("race")[-1].id  # never went backwards


@pytest.mark.slow
def test_reconnecting_clients_see_every_event_exactly_once_while_publishing_races(hub: Hub) -> None:
    total = 400
    published: list[str] = []
    rng = random.Random(7)

    def publisher() -> None:
        for i in range(total):
            published.append(hub.broker.publish("race", str(i)))
            gevent.sleep(0.001)

    def reconnecting_client(seed: int) -> tuple[list[str], int, int]:
        seen: list[str] = []
        last: str | None = None
        resets = 0
        connections = 0
        while len(published) < total or not seen or seen[-1] != published[-1]:
            client = hub.subscribe("race", last_event_id=last)
            connections += 1
            want = rng.randint(0, 25)

            def enough(c: StreamClient, want: int = want) -> bool:
                caught_up = len(published) == total and ids(c)[-1:] == published[-1:]
                return len(c.parser.events) >= want or caught_up

            try:
                client.wait_for(enough, timeout=20)
            finally:
                events = list(client.parser.events)
                last = client.parser.last_event_id or last
                client.reset() if connections % 2 else client.close()
            resets += sum(e.type == "stream-reset" for e in events)
            seen.extend(e.last_event_id for e in events)
        return seen, resets, connections

    clients = [gevent.spawn(reconnecting_client, n) for n in range(4)]
    wait_until(lambda: hub.broker.subscriber_count("race") >= 4, 10, message="the clients subscribed")
    producer = gevent.spawn(publisher)
    gevent.joinall([producer, *clients], timeout=90, raise_error=True)
    assert len(published) == total
    for greenlet in clients:
        seen, resets, connections = greenlet.value
        assert resets == 0
        assert seen == published, "a client missed or repeated an event"
        assert connections >= 20, "too few reconnects to race the publisher"


# -- the subscriber app ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/events/", 400),
        ("/events", 400),
        ("/events//a", 400),
        ("/events/a//b", 400),
        ("/events/a/../b", 400),
        ("/events/a/./b", 400),
        ("/events/a/", 400),
        ("/events/a%2F", 400),
        ("/events/%2E%2E", 400),
        ("/events/a%00b", 400),
        ("/events/a%0Ab", 400),
        ("/events/" + "x" * 300, 400),
        ("/events/caf%C3%A9", 400),
    ],
)
def test_bad_channel_names_never_get_a_stream(hub: Hub, path: str, status: int) -> None:
    client = StreamClient(hub.port, path)
    assert client.status == status
    assert "text/event-stream" not in client.headers.get("content-type", "")
    assert hub.broker.subscriber_count() == 0


def test_authorize_sees_the_channel_and_can_refuse(serve: Callable[..., WSGIServer], make_broker: MakeBroker) -> None:
    broker = make_broker()
    asked: list[str] = []

    def authorize(environ: WSGIEnvironment, channel: str) -> bool:
        asked.append(channel)
        return channel.startswith("public/")

    app = DispatcherMiddleware(not_found, {"/events": broker.subscriber_app(authorize=authorize)})
    port = serve(app).server_port
    refused = StreamClient(port, "/events/private/room")
    assert refused.status == 403
    assert broker.subscriber_count() == 0
    allowed = StreamClient(port, "/events/public/room")
    assert allowed.status == 200
    assert asked == ["private/room", "public/room"]
    broker.publish("public/room", "hi")
    assert allowed.events(1)[0].data == "hi"


def test_subscriber_app_answers_other_methods_with_405(hub: Hub) -> None:
    client = StreamClient(hub.port, "/events/a", method="POST", body=b"x")
    assert client.status == 405
    assert "GET" in client.headers["allow"]


def test_subscriptions_end_with_their_streams(hub: Hub) -> None:
    clients = [hub.subscribe("gone") for _ in range(3)]
    assert hub.broker.subscriber_count("gone") == 3
    for c in clients:
        c.reset()
    wait_until(lambda: hub.broker.subscriber_count("gone") == 0, 5)


# -- the publisher app ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"hello\nworld", "text/plain", ParsedEvent("message", "hello\nworld", "")),
        ("caf\u00e9".encode(), "text/plain; charset=utf-8", ParsedEvent("message", "caf\u00e9", "")),
        (b"data=one&data=two&event=note", "application/x-www-form-urlencoded", ParsedEvent("note", "one\ntwo", "")),
        (b'{"data": "j", "event": "json"}', "application/json", ParsedEvent("json", "j", "")),
        (b'{"data": ["a", "b"], "retry": 900}', "application/json", ParsedEvent("message", "a\nb", "")),
        (b"", "text/plain", ParsedEvent("message", "", "")),
    ],
)
def test_publish_over_http(hub: Hub, body: bytes, content_type: str, expected: ParsedEvent) -> None:
    client = hub.subscribe("pub")
    status, answer = hub.post("pub", body, content_type)
    assert status == 201, answer
    result = json.loads(answer)
    assert result["channel"] == "pub"
    (event,) = client.events(1)
    assert (event.type, event.data) == (expected.type, expected.data)
    assert event.last_event_id == result["id"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"\xff\xfe", "text/plain", 400, b"UTF-8"),
        (b"data=%FF", "application/x-www-form-urlencoded", 400, b"UTF-8"),
        (b"event=x", "application/x-www-form-urlencoded", 400, b"no data"),
        (b"data=x&colour=red", "application/x-www-form-urlencoded", 400, b"colour"),
        (b"data=x&retry=soon", "application/x-www-form-urlencoded", 400, b"retry"),
        (b"data=x&event=a%0Ab", "application/x-www-form-urlencoded", 400, b"event"),
        (b"{not json", "application/json", 400, b"JSON"),
        (b"[1, 2]", "application/json", 400, b"object"),
        (b'{"data": 5}', "application/json", 400, b"data"),
        (b'{"data": "x", "id": "7"}', "application/json", 400, b"id"),
        (b'{"data": "x", "retry": -1}', "application/json", 400, b"retry"),
        (b'{"data": "x", "retry": true}', "application/json", 400, b"retry"),
        (b"<x/>", "application/xml", 415, b"text/plain"),
        (b"caf\xe9", "text/plain; charset=latin-1", 415, b"send UTF-8"),
        (b"x" * (1024 * 1024 + 1), "text/plain", 413, b"larger"),
    ],
)
def test_bad_publish_requests_get_a_clear_4xx_and_publish_nothing(
    hub: Hub, body: bytes, content_type: str, status: int, message: bytes
) -> None:
    got, answer = hub.post("pub", body, content_type)
    assert got == status
    assert message in answer
    assert hub.broker.history_of("pub") == []


def test_a_bad_query_string_gets_a_400_and_publishes_nothing(hub: Hub) -> None:
    got, answer = hub.post("pub?event=%FF", b"x")
    assert (got, b"query string is not valid UTF-8" in answer) == (400, True)
    assert hub.broker.history_of("pub") == []


def test_a_channel_name_is_read_as_utf8_and_named_in_the_error(hub: Hub) -> None:
    client = StreamClient(hub.port, "/events/caf%C3%A9")
    assert client.status == 400
    assert "'é'" in client.read_body().decode()
    client = StreamClient(hub.port, "/events/caf%E9")  # latin-1, not UTF-8
    assert client.status == 400
    assert b"not valid UTF-8" in client.read_body()


@pytest.mark.parametrize(("size", "status"), [(1024 * 1024 + 1, 413), (1024 * 1024, 201)])
def test_a_chunked_publish_is_held_to_max_body_too(hub: Hub, size: int, status: int) -> None:
    # Without a Content-Length the size is known only while reading: a body
    # over the limit must be refused, not cut at the limit and published.
    body = b"x" * size
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536]) for i in range(0, size, 65536))
    head = (
        b"POST /publish/chunked HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with gevent.socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # the server may answer 413 and close first
                sock.sendall(head + chunked + b"0\r\n\r\n")

        sender = gevent.spawn(send)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        sender.join(10)
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    history = hub.broker.history_of("chunked")
    assert [len(e.body) for e in history] == ([] if status == 413 else [len(b"data: \n\n") + size])


def test_publisher_app_refuses_other_methods_bad_channels_and_unauthorized(
    serve: Callable[..., WSGIServer], make_broker: MakeBroker
) -> None:
    broker = make_broker()
    app = broker.publisher_app(authorize=lambda environ, channel: environ.get("HTTP_AUTHORIZATION") == "Bearer t")
    port = serve(app).server_port
    assert StreamClient(port, "/a").status == 405
    assert StreamClient(port, "/a", method="POST", body=b"x").status == 403
    assert StreamClient(port, "/", method="POST", body=b"x", headers={"Authorization": "Bearer t"}).status == 404
    assert StreamClient(port, "/a/../b", method="POST", body=b"x", headers={"Authorization": "Bearer t"}).status == 400
    ok = StreamClient(port, "/a", method="POST", body=b"x", headers={"Authorization": "Bearer t"})
    assert ok.status == 201
    assert [e.body for e in broker.history_of("a")] == [b"data: x\n\n"]


# -- MemoryBroker only ------------------------------------------------------------------


def test_memory_broker_warns_when_used_by_a_multiprocess_server(caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import call

    broker = MemoryBroker()
    app = broker.subscriber_app()

    def multiprocess(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        environ["wsgi.multiprocess"] = True
        return app(environ, start_response)

    with caplog.at_level(logging.WARNING, logger="wsgi_eventsource"):
        response = call(multiprocess, "/room")
        next(response.body)
        response.close()
    assert "multi-process" in caplog.text
    assert "RedisBroker" in caplog.text


def test_memory_broker_does_not_warn_after_a_fork_alone(tmp_path: Any) -> None:
    """Issue 8 (10): MemoryBroker warned in any forked process, so gunicorn
    --preload with one worker warned falsely; a fork alone is no reason (see
    test_faults_hub for the real gunicorn --preload -w 1)."""
    broker = MemoryBroker()
    broker.publish("before", "x")
    log_file = tmp_path / "child.log"
    pid = fork()
    if pid == 0:  # the child: publish, and write what was logged
        try:
            handler = logging.FileHandler(log_file)
            logging.getLogger("wsgi_eventsource").addHandler(handler)
            broker.publish("after", "y")
            handler.close()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert log_file.read_text() == ""


def test_memory_broker_options_are_validated() -> None:
    with pytest.raises(ValueError, match="history"):
        MemoryBroker(history=0)
    with pytest.raises(ValueError, match="max_age"):
        MemoryBroker(max_age=-1)


# -- the replay-to-live hand-off --------------------------------------------------------


def test_events_in_both_the_replay_and_the_live_feed_are_sent_once(make_broker: MakeBroker) -> None:
    """An event published while a subscriber is being set up may reach it both
    by replay and live (when this process's reader had not yet dispatched it);
    it must arrive once. Whether the live copy is in flight depends on thread
    timing; test_subscription_hand_off_unit pins the rule down exactly."""
    from tests.conftest import call

    broker = make_broker()
    app = broker.subscriber_app(keepalive=5)
    watcher = call(app, "/dup")  # makes the process listen to the channel
    first = broker.publish("dup", "first")
    data = b""
    while first.encode() not in data:
        data += next(watcher.body)
    # Publish, then subscribe without letting the hub run: the live copy of
    # "second" is still on its way when the replay (which has it) is built.
    second = broker.publish("dup", "second")
    late = call(app, "/dup", headers={"Last-Event-ID": first})
    third = broker.publish("dup", "third")
    received = b""
    while third.encode() not in received:
        received += next(late.body)
    from tests.helpers import parse

    assert [e.last_event_id for e in parse(received).events] == [second, third]
    watcher.close()
    late.close()


def test_subscription_hand_off_unit() -> None:
    from wsgi_eventsource.brokers.base import Subscription

    class FakeConn:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def _enqueue_here(self, data: bytes) -> bool:
            self.sent.append(data)
            return True

    sub = Subscription("c", gevent.get_hub())
    sub.floor = (10, 0)
    sub.deliver((9, 0), b"old")  # replayed already: dropped while buffering
    sub.deliver((10, 0), b"same")  # the last replayed one: dropped
    sub.deliver((11, 0), b"new")  # buffered
    conn = FakeConn()
    sub.attach(conn)  # type: ignore[arg-type]
    sub.deliver((12, 0), b"live")
    assert conn.sent == [b"new", b"live"]
    late = Subscription("c", gevent.get_hub())
    late.floor = (20, 0)
    conn2 = FakeConn()
    late.attach(conn2)  # type: ignore[arg-type]
    late.deliver((19, 5), b"dup")  # the reader was behind: already replayed
    late.deliver((20, 1), b"next")
    late.deliver((20, 0), b"never: out of order")  # after the floor is passed, order is trusted
    assert conn2.sent == [b"next", b"never: out of order"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"history": 0}, "history"),
        ({"history": True}, "history"),
        ({"history": 2.5}, "history"),
        ({"max_age": 0}, "max_age"),
        ({"max_age": float("inf")}, "max_age"),
        ({"max_age": "60"}, "max_age"),
    ],
)
def test_both_brokers_validate_their_history_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MemoryBroker(**options)
    with pytest.raises(ValueError, match=match):
        RedisBroker("redis://127.0.0.1:1/0", **options)  # validated before any connection


def test_a_buffering_subscription_drops_what_its_replay_had_even_after_newer_events() -> None:
    """Issue 11 (found by the multiplex race test once a subscribe waited for the
    reader): events buffered before the replay floor was set, at or below it,
    were flushed anyway when a newer event had arrived before attach() (the
    floor was cleared while still buffering): a multiplexed stream whose later
    channels took a while to subscribe got the first channel's events twice."""
    from wsgi_eventsource.brokers.base import Subscription

    class Recorder:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def _enqueue_here(self, data: bytes) -> bool:
            self.sent.append(data)
            return True

        def close(self) -> None:
            pass

    subscription = Subscription("c", gevent.get_hub())
    subscription.deliver((1, 0), b"old")  # live, before the replay was planned
    subscription.floor = (2, 0)  # the replay ends at 2-0: it had 1-0
    subscription.deliver((2, 0), b"replayed")
    subscription.deliver((3, 0), b"new")  # still buffering: not attached yet
    recorder = Recorder()
    subscription.attach(recorder)
    subscription.deliver((4, 0), b"live")
    assert recorder.sent == [b"new", b"live"]
