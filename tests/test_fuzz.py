"""Bad input, generated: every answer of the channel apps is a documented
status, never a 500 or a crash, and a refused request never gets a stream.
Plus the security properties: path tricks cannot get past ``authorize``, the
publish token is compared in constant time, CORS never pairs ``*`` with
credentials."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any
from wsgiref.validate import validator

import pytest
from gevent.pywsgi import WSGIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import EnvironBuilder

from tests.helpers import StreamClient, parse
from wsgi_eventsource import EventSource, MemoryBroker
from wsgi_eventsource.hub import Hub

TRIED = {"publisher": 0, "subscriber": 0}

PUBLISH_STATUSES = {201, 400, 404, 405, 413, 415}
SUBSCRIBE_STATUSES = {200, 204, 400, 404, 405}

broker = MemoryBroker(history=20)
for n in range(5):
    broker.publish("known", f"event {n}")
publisher = broker.publisher_app(max_body=4096)
subscriber = broker.subscriber_app(keepalive=5)

hostile_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("/.%2Fa-_:@~+=,!0 \t\x00\x01\x7f\xff\u00e9\u2603\U0001f600?#&;'\"<>\\|")),
        st.characters(codec="latin-1"),
    ),
    max_size=60,
)
channel_paths = st.one_of(
    hostile_text.map(lambda s: "/" + s),
    st.sampled_from(["", "/", "//", "/known", "/known/", "/a/../known", "/./known", "/%2E%2E", "/" + "k" * 300]),
    st.lists(st.sampled_from(["a", "..", ".", "", "known", "x%2Fy", "\x00"]), max_size=5).map(
        lambda parts: "/" + "/".join(parts)
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "text/plain; charset=latin-1",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/xml",
            "",
            "text/plain; charset",
            ";;;",
        ]
    ),
    hostile_text.filter(lambda s: "\n" not in s and "\r" not in s),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [
            b'{"data": "x"}',
            b'{"data": ["a", 1]}',
            b'{"data": "x", "event": "a\\nb"}',
            b'{"data": "x", "retry": 1e400}',
            b"data=x&data=y&event=e&retry=5",
            b"data=%ZZ",
            b"data=\xff",
            b"\xef\xbb\xbfdata",
            b"x" * 5000,
            b"[]",
            b"null",
            b'{"data": null}',
        ]
    ),
)
header_values = st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80)


def environ_for(method: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> dict[str, Any]:
    environ: dict[str, Any] = EnvironBuilder(method=method, data=body, headers=headers).get_environ()
    environ["PATH_INFO"] = path.encode("utf-8", "surrogatepass").decode("latin-1")  # raw, as a server passes it
    return environ


def run(app: Any, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], Any]:
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    body = validator(app)(environ, start_response)
    return int(captured["status"].split()[0]), captured["headers"], body


fuzz = settings(
    max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@fuzz
@given(
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"]),
    path=channel_paths,
    content_type=content_types,
    body=bodies,
    query=st.sampled_from(["", "event=x", "retry=abc", "retry=5&retry=6", "event=a%0Ab", "event=%FF"]),
)
def test_publisher_app_answers_every_request_with_a_documented_status(
    method: str, path: str, content_type: str, body: bytes, query: str
) -> None:
    TRIED["publisher"] += 1
    environ = environ_for(method, path, body, [("Content-Type", content_type)] if content_type else [])
    environ["QUERY_STRING"] = query
    status, _, response = run(publisher, environ)
    chunks = list(response)
    response.close()
    assert status in PUBLISH_STATUSES, (status, chunks)
    if status == 201:
        assert json.loads(b"".join(chunks))["id"]
    else:
        assert b"".join(chunks).strip(), "a refusal says why"


@fuzz
@given(
    method=st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "OPTIONS", "PUT"]),
    path=channel_paths,
    last_event_id=st.one_of(st.none(), header_values, st.sampled_from(["0-0", "1-1", "9" * 400, "-", "1-"])),
    query=st.sampled_from(["", "lastEventId=", "lastEventId=%FF%FE", "lastEventId=1-0&lastEventId=2-0", "x=%"]),
)
def test_subscriber_app_never_streams_a_refused_request(
    method: str, path: str, last_event_id: str | None, query: str
) -> None:
    TRIED["subscriber"] += 1
    headers = [] if last_event_id is None else [("Last-Event-ID", last_event_id)]
    environ = environ_for(method, path, b"", headers)
    environ["QUERY_STRING"] = query
    status, response_headers, response = run(subscriber, environ)
    content_type = {k.lower(): v for k, v in response_headers}.get("content-type", "")
    try:
        assert status in SUBSCRIBE_STATUSES
        if status == 200:
            assert method == "GET"
            assert content_type.startswith("text/event-stream")
            first = next(response)
            assert first.startswith(b": ok\n\n")
            parser = parse(first)
            if parser.events and last_event_id not in (None, "", "0-0") and "1-0" not in query:
                assert parser.events[0].type == "stream-reset"  # an id this broker never gave out
        else:
            assert not content_type.startswith("text/event-stream")
    finally:
        response.close()


def test_how_many_inputs_were_tried() -> None:
    """Runs after the two fuzz tests (file order) and reports their count."""
    tried = dict(TRIED)
    print(f"fuzzed inputs: {tried}")
    assert tried["publisher"] >= 1000
    assert tried["subscriber"] >= 1000


# -- security -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/events/private",
        "/events/public/../private",
        "/events/public/%2E%2E/private",
        "/events/public%2F..%2Fprivate",
        "/events//private",
        "/events/./private",
        "/events/public/",
        "/events/public//private",
        "/events/private/",
        "/events/private%00",
        "/events/%70rivate",  # percent-encoded "p": the same channel, and refused as such
        "/events/public/..%2Fprivate",
    ],
)
def test_path_tricks_never_get_past_authorize(serve: Callable[..., WSGIServer], path: str) -> None:
    channels = MemoryBroker()
    asked: list[str] = []

    def authorize(environ: Any, channel: str) -> bool:
        asked.append(channel)
        return channel.startswith("public/") or channel == "public"

    app = DispatcherMiddleware(lambda e, s: [], {"/events": channels.subscriber_app(authorize=authorize)})
    port = serve(app).server_port
    client = StreamClient(port, path)
    assert client.status in (400, 403, 404), (path, client.status)
    assert "text/event-stream" not in client.headers.get("content-type", "")
    assert channels.subscriber_count() == 0
    channels.publish("private", "secret")
    assert b"secret" not in client.read_body()  # the whole (finite) refusal


def test_the_publish_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    hub = Hub(MemoryBroker(), publish_token="tok")
    environ = environ_for(
        "POST", "/publish/x", b"x", [("Authorization", "Bearer nope"), ("Content-Type", "text/plain")]
    )
    status, _, response = run(hub, environ)
    response.close()
    assert status == 403
    assert calls == [(b"nope", b"tok")]


def test_cors_never_answers_star_with_credentials() -> None:
    with pytest.raises(ValueError, match="cannot be combined"):
        EventSource(
            lambda c, e: None, headers={"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": "true"}
        )
    with pytest.raises(ValueError, match="cannot be combined"):
        MemoryBroker().subscriber_app(
            headers=[("access-control-allow-origin", "*"), ("access-control-allow-credentials", "TRUE")]
        )
    star = Hub(MemoryBroker(), cors_origin="*")
    assert ("Access-Control-Allow-Origin", "*") in star.cors_headers
    assert not any(name == "Access-Control-Allow-Credentials" for name, _ in star.cors_headers)
