"""A tiny client for a hub (:class:`~wsgi_eventsource.hub.Hub`), stdlib only:
:func:`publish` one event over HTTP, :func:`follow` channels as an event
stream. ``wsgi-eventsource publish`` and ``wsgi-eventsource tail`` use them.

:class:`EventParser` reads an event stream as the WHATWG HTML standard's
EventSource does ("9.2.6 Interpreting an event stream"): lines end with CRLF,
LF or CR; ``data`` lines are joined with LF; a blank line dispatches; an event
with no data is not dispatched, but its ``id`` still becomes the last event id.

Deliberate divergences from a browser's EventSource: :func:`follow` also
reconnects after a ``502``, ``503`` or ``504`` (a proxy in front of a hub that
restarts), where a browser gives up; any other answer that is not a ``200``
event stream ends it with :class:`HubRefused`, as a browser would.

.. versionadded:: 0.1
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

from .brokers.base import validate_channel
from .brokers.cursor import cursor_channel
from .errors import EventSourceError

__all__ = ["EventParser", "HubRefused", "ReceivedEvent", "follow", "publish"]

#: The reconnection delay (ms) until the stream sends ``retry:`` (browsers use
#: about 3 s as well).
DEFAULT_RETRY = 3000
#: Answers after which :func:`follow` tries again: the hub behind a proxy is
#: restarting or down for a moment.
_TRY_AGAIN = frozenset({502, 503, 504})
_LINE_END = re.compile(rb"\r\n|\r|\n")
_BOM = "\ufeff".encode()


class HubRefused(EventSourceError):
    """The hub answered, but not with what was asked for (a ``403``, a
    ``400``...): :attr:`status` and the hub's own :attr:`message`."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.message = message


@dataclass(frozen=True, kw_only=True)
class ReceivedEvent:
    """One event as a client receives it.

    :param type: the event type (``"message"`` when the stream names none).
    :param data: the data, lines joined with ``"\\n"``.
    :param id: the last event id when it was dispatched (``""`` for none).
    """

    type: str
    data: str
    id: str


class EventParser:
    """An event stream, fed in chunks of any size, read into events.

    :param last_event_id: the last event id so far (kept over reconnects).
    """

    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id = last_event_id
        #: The reconnection delay (ms) the stream asked for, if it did.
        self.retry: int | None = None
        self._pending = b""
        self._first = True
        self._after_cr = False
        self._type = ""
        self._data: list[str] = []
        self._id = last_event_id

    def feed(self, chunk: bytes) -> list[ReceivedEvent]:
        """The events completed by *chunk*."""
        buffer = self._pending + chunk
        if self._first:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._pending = buffer  # maybe the start of a BOM: wait for more
                return []
            self._first = False
            buffer = buffer.removeprefix(_BOM)  # one leading BOM is ignored
        if self._after_cr:
            # The previous chunk ended with CR, taken as a line end at once
            # (an event must not wait for the next chunk): a LF now is its CRLF.
            buffer = buffer.removeprefix(b"\n")
        self._after_cr = buffer.endswith(b"\r")
        events, start = [], 0
        while (end := _LINE_END.search(buffer, start)) is not None:
            event = self._line(buffer[start : end.start()].decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
            start = end.end()
        self._pending = buffer[start:]
        return events

    def _line(self, line: str) -> ReceivedEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (the hub's keepalives)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> ReceivedEvent | None:
        self.last_event_id = self._id
        data, event_type = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return ReceivedEvent(type=event_type or "message", data="\n".join(data), id=self.last_event_id)


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the hub at *url* and the path it is mounted at."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the hub URL must be http://host[:port][/path] or https://..., not {url!r}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return kind(parts.hostname, parts.port, timeout=timeout), parts.path.rstrip("/")


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _refusal(response: http.client.HTTPResponse) -> HubRefused:
    message = response.read(4096).decode("utf-8", "replace").strip()
    return HubRefused(response.status, response.reason, message)


def publish(
    url: str, channel: str, data: str, *, event: str | None = None, token: str | None = None, timeout: float = 10.0
) -> str:
    """Publish *data* to *channel* of the hub at *url*; return the event id.

    Sent as ``text/plain`` (UTF-8) to ``POST <url>/publish/<channel>``, the
    event type as ``?event=``, *token* as ``Authorization: Bearer``.

    :raises HubRefused: the hub refused it (its message says why).
    :raises OSError: the hub cannot be reached.
    :raises ValueError: a bad URL or channel name.
    """
    validate_channel(channel)
    conn, base = _connection(url, timeout)
    path = f"{base}/publish/{quote(channel, safe='/')}"
    if event is not None:
        path += "?" + urlencode({"event": event})
    headers = {"Content-Type": "text/plain; charset=utf-8", "Accept": "application/json", **_headers(token)}
    try:
        conn.request("POST", path, body=data.encode("utf-8"), headers=headers)
        response = conn.getresponse()
        if response.status != 201:
            raise _refusal(response)
        event_id: str = json.loads(response.read())["id"]
        return event_id
    finally:
        conn.close()


def follow(
    url: str,
    channels: Sequence[str],
    *,
    token: str | None = None,
    last_event_id: str = "",
    idle_timeout: float = 45.0,
    on_retry: Callable[[str, float], None] | None = None,
) -> Iterator[tuple[str, ReceivedEvent]]:
    """``(channel, event)`` for every event of *channels* at the hub at
    *url*, as they arrive, for ever: when the stream ends or the hub cannot
    be reached, wait the stream's ``retry:`` delay and reconnect with
    ``Last-Event-ID``, so that the hub replays what was missed.

    One channel is read from ``<url>/events/<channel>``; several from the
    multiplexed ``<url>/events?channel=a&channel=b``, whose event ids are
    cursors with the event's channel first.

    :param idle_timeout: seconds without a byte (not even a keepalive
        comment) after which the connection is taken for dead.
    :param on_retry: called with why and the delay (seconds) before each
        reconnection.
    :raises HubRefused: the hub answered with something else than an event
        stream (a ``401``, ``403``, ``400``...), or a stream refused for good.
    """
    for channel in channels:
        validate_channel(channel)
    _, base = _connection(url, idle_timeout)  # the URL is checked before anything is sent
    if len(channels) == 1:
        path = f"{base}/events/{quote(channels[0], safe='/')}"
    else:
        path = f"{base}/events?" + urlencode([("channel", channel) for channel in channels])
    retry = DEFAULT_RETRY
    while True:
        parser = EventParser(last_event_id)
        conn, _ = _connection(url, idle_timeout)
        why = "the stream ended"
        try:
            headers = {"Accept": "text/event-stream", **_headers(token)}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            kind = response.getheader("Content-Type", "").partition(";")[0].strip().lower()
            if response.status == 200 and kind != "text/event-stream":
                shown = kind or "none"
                raise HubRefused(
                    200, "OK", f"the answer is not an event stream (Content-Type: {shown}): is the URL a hub's?"
                )
            if response.status != 200:
                refusal = _refusal(response)
                if response.status not in _TRY_AGAIN:
                    raise refusal
                why = str(refusal)
            else:
                while chunk := response.read1(65536):
                    for event in parser.feed(chunk):
                        last_event_id = parser.last_event_id
                        channel = channels[0] if len(channels) == 1 else cursor_channel(event.id)
                        yield channel, event
                    last_event_id = parser.last_event_id  # a bare id: line (the starting cursor)
        except (OSError, http.client.HTTPException) as exc:
            why = f"the connection failed ({exc or type(exc).__name__})"
        finally:
            conn.close()
        if parser.retry is not None:
            retry = parser.retry
        if on_retry is not None:
            on_retry(why, retry / 1000)
        time.sleep(retry / 1000)
