"""Issue 9 review: adversarial tests of many channels on one stream, against
both brokers (a real redis-server) over real sockets. Each test names the
defect it was written for; those that found one are its regression test."""

from __future__ import annotations

from collections.abc import Callable

from gevent.pywsgi import WSGIServer

from tests.test_multiplex import MakeBroker, Server, check_frames, make_broker, open_stream, reset_data, summary
from wsgi_eventsource.brokers import encode_cursor

__all__ = ["make_broker"]  # the fixture, imported for its use here

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
