"""EventSource and Connection driven in-process through ``wsgiref.validate``,
stepping the response iterator by hand (gevent runs the handler greenlets
whenever the iterator waits)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import pytest

import wsgi_eventsource.connection as connection_module
from tests.conftest import Response, call
from tests.helpers import ParsedEvent, parse, wait_until
from wsgi_eventsource import Connection, ConnectionClosed, Event, EventSource, InvalidEvent, Stream
from wsgi_eventsource.app import spread_retry

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment


def noop(conn: Connection, environ: WSGIEnvironment) -> None:
    pass


class Recorder:
    """A handler that keeps every connection it is given."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.opened = gevent.event.Event()

    def __call__(self, conn: Connection, environ: WSGIEnvironment) -> None:
        self.connections.append(conn)
        self.opened.set()

    @property
    def conn(self) -> Connection:
        assert self.opened.wait(5), "handler was not called"
        return self.connections[-1]


def body_until(response: Response, predicate: Any, limit: int = 100) -> bytes:
    data = b""
    for _ in range(limit):
        data += next(response.body)
        if predicate(data):
            return data
    raise AssertionError(f"not reached: {data!r}")


# -- the response --------------------------------------------------------------------


def test_get_starts_a_stream_with_the_right_headers_and_a_first_comment() -> None:
    response = call(EventSource(noop))
    assert response.status == "200 OK"
    assert response.header("Content-Type") == "text/event-stream; charset=utf-8"
    assert response.header("Cache-Control") == "no-cache, no-transform"
    assert response.header("X-Accel-Buffering") == "no"
    assert "connection" not in response.header_names
    assert "content-length" not in response.header_names
    assert next(response.body) == b": ok\n\n"  # sent before any event: onopen fires at once
    assert not hasattr(response.body, "__len__")
    response.close()


def test_retry_is_sent_at_stream_start() -> None:
    response = call(EventSource(noop, retry=2500))
    first = next(response.body)
    assert first.startswith(b"retry: 2500\n\n")
    assert parse(first).reconnection_time == 2500
    response.close()


@pytest.mark.parametrize(
    "headers",
    [
        [("Access-Control-Allow-Origin", "https://example.org"), ("cache-control", "no-store")],
        {"Access-Control-Allow-Origin": "https://example.org", "CACHE-CONTROL": "no-store"},
    ],
)
def test_configured_headers_are_added_and_replace_defaults(headers: Any) -> None:
    response = call(EventSource(noop, headers=headers))
    assert response.header("Access-Control-Allow-Origin") == "https://example.org"
    assert [v for k, v in response.headers if k.lower() == "cache-control"] == ["no-store"]
    assert response.header("Content-Type") == "text/event-stream; charset=utf-8"
    response.close()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Connection": "keep-alive"}, "hop-by-hop"),
        ({"Transfer-Encoding": "chunked"}, "hop-by-hop"),
        ({"X-Bad": "a\r\nInjected: 1"}, "invalid header"),
        ({"Bad Name": "x"}, "invalid header"),
        ([("X-Only-Name",)], "tuple"),
        ([("X-Int", 5)], "must be str"),
        (
            {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"},
            "cannot be combined",
        ),
    ],
)
def test_bad_headers_are_refused_at_construction(headers: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EventSource(noop, headers=headers)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"keepalive": 0}, ValueError, "keepalive"),
        ({"keepalive": -1}, ValueError, "keepalive"),
        ({"keepalive": "5"}, ValueError, "keepalive"),
        ({"max_pending": 0}, ValueError, "max_pending"),
        ({"retry": -1}, ValueError, "retry"),
        ({"shutdown_retry": "x"}, ValueError, "retry"),
        ({"authorize": 5}, TypeError, "authorize"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        EventSource(noop, **kwargs)


def test_handler_must_be_callable() -> None:
    with pytest.raises(TypeError, match="handler_cb"):
        EventSource("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_with_allow(method: str) -> None:
    handler = Recorder()
    response = call(EventSource(handler), method=method)
    assert response.status.startswith("405")
    allow = response.header("Allow")
    assert allow is not None
    assert "GET" in allow
    response.close()
    gevent.sleep(0)
    assert handler.connections == []


def test_options_answers_a_cors_preflight_from_configured_headers() -> None:
    app = EventSource(
        noop,
        headers={"Access-Control-Allow-Origin": "https://a.example", "Access-Control-Allow-Credentials": "true"},
    )
    response = call(app, method="OPTIONS", headers={"Origin": "https://a.example"})
    assert response.status.startswith("204")
    assert response.header("Access-Control-Allow-Origin") == "https://a.example"
    assert response.header("Access-Control-Allow-Credentials") == "true"
    assert "GET" in (response.header("Access-Control-Allow-Methods") or "")
    assert "Last-Event-ID" in (response.header("Access-Control-Allow-Headers") or "")
    assert list(response.body) == []
    response.close()


def test_options_without_cors_headers_only_allows() -> None:
    response = call(EventSource(noop), method="OPTIONS")
    assert response.status.startswith("204")
    assert "access-control-allow-origin" not in response.header_names
    assert "GET" in (response.header("Allow") or "")
    response.close()


def test_authorize_false_gives_403_and_never_calls_the_handler() -> None:
    handler = Recorder()
    seen: list[str] = []

    def authorize(environ: WSGIEnvironment) -> bool:
        seen.append(environ["PATH_INFO"])
        return environ.get("HTTP_AUTHORIZATION") == "Bearer ok"

    app = EventSource(handler, authorize=authorize)
    refused = call(app, "/x")
    assert refused.status.startswith("403")
    refused.close()
    gevent.sleep(0)
    assert handler.connections == []
    allowed = call(app, "/x", headers={"Authorization": "Bearer ok"})
    assert allowed.status == "200 OK"
    assert handler.conn.environ["PATH_INFO"] == "/x"
    allowed.close()
    assert seen == ["/x", "/x"]


# -- pushing -------------------------------------------------------------------------


def test_push_forms_make_one_event_each() -> None:
    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        conn.push("foo")
        conn.push("foo", "bar", "baz")
        conn.push({"id": 1, "event": "tick", "data": "foo", "retry": 3000})
        conn.push(Event("", event="empty"))
        conn.push(b"caf\xc3\xa9")
        conn.comment("just a comment")
        conn.close()

    response = call(EventSource(handler))
    data = b"".join(response.body)  # ends: the handler closed the connection
    response.close()
    parser = parse(data)
    assert parser.events == [
        ParsedEvent("message", "foo", ""),
        ParsedEvent("message", "foo\nbar\nbaz", ""),
        ParsedEvent("tick", "foo", "1"),
        ParsedEvent("empty", "", "1"),
        ParsedEvent("message", "café", "1"),
    ]
    assert parser.reconnection_time == 3000
    assert " just a comment" in parser.comments


def test_close_flushes_what_was_queued_before_ending() -> None:
    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        for i in range(100):
            conn.push(str(i))
        conn.close()
        conn.close()  # idempotent

    response = call(EventSource(handler))
    data = b"".join(response.body)
    response.close()
    assert [e.data for e in parse(data).events] == [str(i) for i in range(100)]


def test_queued_events_are_coalesced_into_one_write() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    assert next(response.body) == b": ok\n\n"
    conn = handler.conn
    for i in range(50):
        conn.push(str(i))
    chunk = next(response.body)
    assert [e.data for e in parse(chunk).events] == [str(i) for i in range(50)]
    response.close()


def test_push_after_close_raises_and_closed_is_true() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    assert not conn.closed
    conn.close()
    assert conn.closed
    with pytest.raises(ConnectionClosed):
        conn.push("late")
    with pytest.raises(ConnectionClosed):
        conn.comment("late")
    assert list(response.body) == []
    response.close()


def test_invalid_push_raises_and_queues_nothing() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    with pytest.raises(InvalidEvent, match="event"):
        conn.push({"event": "a\nb", "data": "x"})
    with pytest.raises(InvalidEvent, match="colour"):
        conn.push({"colour": "red"})
    conn.push("after")
    assert parse(next(response.body)).events == [ParsedEvent("message", "after", "")]
    response.close()


def test_returning_from_the_handler_does_not_end_the_stream() -> None:
    response = call(EventSource(noop, keepalive=0.05))
    assert next(response.body) == b": ok\n\n"
    assert next(response.body) == b":\n\n"  # a keepalive, not the end
    assert next(response.body) == b":\n\n"
    response.close()


def test_keepalive_none_disables_keepalives() -> None:
    handler = Recorder()
    response = call(EventSource(handler, keepalive=None))
    next(response.body)
    conn = handler.conn
    gevent.spawn_later(0.3, conn.push, "late")
    started = gevent.get_hub().loop.now()
    assert parse(next(response.body)).events == [ParsedEvent("message", "late", "")]
    assert gevent.get_hub().loop.now() - started >= 0.25
    response.close()


# -- last event id ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        ({}, None, None),
        ({"Last-Event-ID": "42"}, None, "42"),
        ({}, "lastEventId=17", "17"),
        ({}, "lastEventId=", None),
        ({"Last-Event-ID": ""}, None, None),
        ({"Last-Event-ID": ""}, "lastEventId=17", "17"),
        ({"Last-Event-ID": "42"}, "lastEventId=17", "42"),
        ({}, "lastEventId=%C3%A9", "é"),
        ({"Last-Event-ID": "é".encode().decode("latin-1")}, None, "é"),
    ],
)
def test_last_event_id(headers: dict[str, str], query: str | None, expected: str | None) -> None:
    handler = Recorder()
    response = call(EventSource(handler), headers=headers, query_string=query)
    next(response.body)
    assert handler.conn.last_event_id == expected
    response.close()


# -- the end of a stream ------------------------------------------------------------------


def test_on_close_runs_exactly_once_and_late_callbacks_run_at_once() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    calls: list[str] = []
    conn.on_close(lambda: calls.append("a"))
    conn.on_close(lambda: calls.append("b"))
    assert calls == []
    response.close()  # what the server does when the client has gone
    assert conn.closed
    assert calls == ["a", "b"]
    conn.close()
    response.body.close()  # type: ignore[attr-defined]
    assert calls == ["a", "b"]
    conn.on_close(lambda: calls.append("late"))
    assert calls == ["a", "b", "late"]


def test_a_failing_on_close_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    calls: list[int] = []
    handler.conn.on_close(lambda: 1 / 0)
    handler.conn.on_close(lambda: calls.append(1))
    with caplog.at_level(logging.ERROR, logger="wsgi_eventsource"):
        response.close()
    assert calls == [1]
    assert "ZeroDivisionError" in caplog.text


def open_with_handler(app: EventSource) -> tuple[Response, gevent.Greenlet[Any, Any]]:
    """Open one stream of *app* (first chunk read) and return it with its handler greenlet."""
    response = call(app)
    next(response.body)
    handler_greenlet = next(iter(app.connections))._handler
    assert handler_greenlet is not None
    return response, handler_greenlet


def test_a_running_handler_is_ended_when_the_stream_ends() -> None:
    started = gevent.event.Event()
    finished: list[str] = []

    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        started.set()
        try:
            gevent.sleep(60)
        finally:
            finished.append("ended")

    app = EventSource(handler)
    response, handler_greenlet = open_with_handler(app)
    assert started.wait(5)
    response.close()
    handler_greenlet.join(timeout=5)
    assert handler_greenlet.dead
    assert finished == ["ended"]
    assert app.connections == frozenset()


def test_a_stream_that_ends_before_its_handler_ran_still_runs_it_once_and_ends_it() -> None:
    # A client that hangs up at once: the server closes the response before the
    # handler greenlet has had its first turn. The handler still runs once (so
    # what it sets up, it also tears down) and is ended at its first wait.
    events: list[str] = []

    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        events.append(f"ran, closed={conn.closed}")
        conn.on_close(lambda: events.append("on_close"))
        try:
            conn.push("too late")
        except ConnectionClosed:
            events.append("push raised")
        try:
            gevent.sleep(60)
        finally:
            events.append("ended")

    app = EventSource(handler)
    response, handler_greenlet = open_with_handler(app)
    response.close()  # no switch to the hub since the stream opened
    assert events == []
    handler_greenlet.join(timeout=5)
    assert handler_greenlet.dead
    assert events == ["ran, closed=True", "on_close", "push raised", "ended"]
    assert app.connections == frozenset()


def test_a_handler_that_raises_is_logged_and_only_its_stream_ends(caplog: pytest.LogCaptureFixture) -> None:
    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        if environ["PATH_INFO"] == "/bad":
            conn.push("before")
            raise RuntimeError("boom")
        conn.push("good")

    app = EventSource(handler, keepalive=0.05)
    good = call(app, "/good")
    with caplog.at_level(logging.ERROR, logger="wsgi_eventsource"):
        bad = call(app, "/bad")
        data = b"".join(bad.body)
    bad.close()
    assert [e.data for e in parse(data).events] == ["before"]
    assert "RuntimeError: boom" in caplog.text
    assert any(r.name == "wsgi_eventsource" for r in caplog.records)
    got = body_until(good, lambda d: b"data: good" in d)
    assert next(good.body) == b":\n\n"  # the other stream keeps going
    assert b"good" in got
    good.close()


def test_a_handler_pushing_invalid_data_ends_only_its_stream(caplog: pytest.LogCaptureFixture) -> None:
    def handler(conn: Connection, environ: WSGIEnvironment) -> None:
        conn.push({"id": "1\n2", "data": "x"})

    with caplog.at_level(logging.ERROR, logger="wsgi_eventsource"):
        response = call(EventSource(handler))
        data = b"".join(response.body)
    response.close()
    assert data == b": ok\n\n"
    assert "InvalidEvent" in caplog.text
    assert "id must not contain CR or LF" in caplog.text


# -- threads, slow clients, shutdown -----------------------------------------------------------


def test_push_from_another_os_thread_arrives_in_order() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn

    def pusher() -> None:
        for i in range(500):
            conn.push(str(i))
        conn.close()

    thread = threading.Thread(target=pusher)
    thread.start()
    data = b""
    with gevent.Timeout(10):
        for chunk in response.body:
            data += chunk
    thread.join(5)
    response.close()
    assert [e.data for e in parse(data).events] == [str(i) for i in range(500)]


def test_pushes_from_two_threads_at_once_are_all_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Thread "first" is held just after its hand-over lock is released, while
    # thread "second" pushes too: exactly one of them must still schedule the
    # hub's drain, or both events (and every later one) are stranded.
    real_lock = connection_module._remote_lock
    paused, resume = threading.Event(), threading.Event()

    class PausingLock:
        def __enter__(self) -> None:
            real_lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            real_lock.release()
            if threading.current_thread().name == "first" and not paused.is_set():
                paused.set()
                resume.wait(5)

    monkeypatch.setattr(connection_module, "_remote_lock", PausingLock())
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    first = threading.Thread(target=conn.push, args=("from first",), name="first")
    first.start()
    assert paused.wait(5)
    second = threading.Thread(target=conn.push, args=("from second",), name="second")
    second.start()
    second.join(5)
    resume.set()
    first.join(5)
    closer = threading.Thread(target=conn.close)
    closer.start()
    data = b""
    with gevent.Timeout(5):
        for chunk in response.body:
            data += chunk
    closer.join(5)
    response.close()
    assert sorted(e.data for e in parse(data).events) == ["from first", "from second"]


def test_a_client_that_does_not_read_is_disconnected_at_max_pending(caplog: pytest.LogCaptureFixture) -> None:
    handler = Recorder()
    response = call(EventSource(handler, max_pending=10_000))
    next(response.body)
    conn = handler.conn
    closed: list[bool] = []
    conn.on_close(lambda: closed.append(True))
    event = Event("x" * 1000)
    with caplog.at_level(logging.WARNING, logger="wsgi_eventsource"):
        for _ in range(9):
            conn.push(event)  # 9 x 1007 bytes: under the limit
        assert not conn.closed
        conn.push(event)  # never blocks; crossing the limit closes the connection
    assert conn.closed
    assert conn._size == 0  # the backlog is released at once
    assert "not reading" in caplog.text
    with pytest.raises(ConnectionClosed):
        conn.push(event)
    assert list(response.body) == []
    response.close()
    assert closed == [True]


def test_close_all_sends_a_spread_retry_hint_and_ends_every_stream() -> None:
    """Issue 8 (5): every stream of a restarted worker got the same hint, so all
    its clients came back in the same instant. Each gets its own, in [R/2, 3R/2]."""
    handler = Recorder()
    app = EventSource(handler)
    responses = [call(app, f"/{i}") for i in range(40)]
    for r in responses:
        next(r.body)
    assert len(app.connections) == 40
    assert app.close_all(retry=2000) == 40
    hints = []
    for r in responses:
        parser = parse(b"".join(r.body))
        assert parser.reconnection_time is not None
        hints.append(parser.reconnection_time)
        r.close()
    assert app.connections == frozenset()
    assert all(1000 <= hint <= 3000 for hint in hints), hints
    assert len(set(hints)) > 20, f"the hints are not spread: {sorted(hints)}"


def test_spread_retry_covers_half_to_three_halves() -> None:
    # Both ends are drawn: over 11 values, 5,000 draws miss one with
    # probability 1e-207 (over 1,001 values, 1.3 %: this test's old flake).
    assert {spread_retry(11) for _ in range(5000)} == set(range(6, 17))
    draws = [spread_retry(1001) for _ in range(5000)]
    assert min(draws) >= 501
    assert max(draws) <= 1501
    assert spread_retry(0) == 0
    assert spread_retry(1) == 1


def test_refuse_is_a_soft_200_event_stream_that_ends_with_a_spread_hint() -> None:
    """Issue 8 (4): a browser gives up for good on a 503; a 200 stream that
    ends makes it reconnect after the retry hint."""
    app = EventSource(noop, headers={"Access-Control-Allow-Origin": "https://example.org"}, refusal_retry=4000)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        captured.update(status=status, headers=dict(headers))
        return lambda data: None

    body = b"".join(app.refuse(start_response, "over_max_connections", "full, come back later"))
    assert captured["status"] == "200 OK"
    assert captured["headers"]["Content-Type"].startswith("text/event-stream")
    assert captured["headers"]["Access-Control-Allow-Origin"] == "https://example.org"
    assert captured["headers"]["Content-Length"] == str(len(body))
    parser = parse(body)
    assert parser.events == []
    assert parser.comments == [" full, come back later"]
    assert parser.reconnection_time is not None
    assert 2000 <= parser.reconnection_time <= 6000
    assert app.refused["over_max_connections"] == 1
    with pytest.raises(ValueError, match="reason must be one of"):
        app.refuse(start_response, "bored", "x")


def test_close_from_another_thread() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    thread = threading.Thread(target=conn.close)
    thread.start()
    with gevent.Timeout(5):
        assert list(response.body) == []
    thread.join(5)
    response.close()


def test_stream_type_and_repr() -> None:
    handler = Recorder()
    app = EventSource(handler)
    response = call(app, "/room")
    next(response.body)
    assert "open" in repr(handler.conn)
    assert "/room" in repr(handler.conn)
    response.close()
    assert "closed" in repr(handler.conn)
    assert not hasattr(Stream, "__len__")


def test_close_from_a_thread_takes_effect_at_once_there() -> None:
    """Regression (review): close() from another thread returned with closed
    still False, and a push right after it was silently dropped."""
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    outcome: list[object] = []

    def in_thread() -> None:
        conn.push("before")
        conn.close()
        outcome.append(conn.closed)
        try:
            conn.push("after")
        except ConnectionClosed:
            outcome.append("raised")

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(5)
    assert outcome == [True, "raised"]
    with gevent.Timeout(5):
        data = b"".join(response.body)
    response.close()
    assert [e.data for e in parse(data).events] == ["before"]


def test_on_close_from_a_thread_runs_once() -> None:
    handler = Recorder()
    response = call(EventSource(handler))
    next(response.body)
    conn = handler.conn
    calls: list[str] = []
    thread = threading.Thread(target=conn.on_close, args=(lambda: calls.append("x"),))
    thread.start()
    thread.join(5)
    wait_until(lambda: conn._callbacks is not None, 5, message="the hub took the hand-over")
    response.close()
    assert calls == ["x"]


def test_a_failing_start_response_leaves_no_connection_behind() -> None:
    app = EventSource(noop)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Any:
        raise RuntimeError("the server refused the headers")

    from werkzeug.test import EnvironBuilder

    with pytest.raises(RuntimeError):
        app(EnvironBuilder("/").get_environ(), start_response)
    assert app.connections == frozenset()


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "a\x00b"}, {"X-A": "bell\x07"}, {"X-A": "snow \u2603"}, {"X(A)": "v"}, {"": "v"}],
)
def test_header_values_no_server_could_send_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="headers"):
        EventSource(noop, headers=headers)


@pytest.mark.parametrize("value", [True, float("inf"), float("nan")])
def test_odd_keepalive_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="keepalive"):
        EventSource(noop, keepalive=value)  # type: ignore[arg-type]
