"""The event-stream wire format: events in, bytes out. No I/O happens here.

Everything follows the WHATWG HTML Standard, section 9.2 "Server-sent events"
(https://html.spec.whatwg.org/multipage/server-sent-events.html), and in
particular its "event stream interpretation" algorithm, which is what a
browser runs over the bytes this module produces.

Rules this module enforces, and why:

* Data is split on every ``\\r\\n``, ``\\r`` and ``\\n`` (the spec's three line
  terminators, and no others: not ``str.splitlines``, which also splits on
  ``\\x0b``, ``\\x1c``, ``\\u2028`` and more) into one ``data:`` line each. A
  client joins those lines with ``\\n``, so it rebuilds the original text
  exactly, with CR and CRLF read as LF, as the spec says it must.
* Every field is written as ``name: value``. The spec strips exactly one space
  after the colon, so a value that itself starts with a space or a colon
  survives.
* ``event`` and ``id`` are single-line fields: a CR or LF in them would let a
  value inject fields of its own, so it raises :class:`InvalidEvent`. A NUL in
  ``id`` makes a browser ignore the whole field ("If the field value does not
  contain U+0000 NULL, then set the last event ID buffer"), so it raises too.
* ``retry`` must be a non-negative integer: the spec ignores anything but
  ASCII digits.
* An event whose data is the empty string is still sent as ``"data: "`` and is
  dispatched by the client with empty data ("If the data buffer is an empty
  string" is checked *before* the trailing LF is removed).

Deliberate divergences from other SSE servers: nothing is ever sanitised or
silently dropped (sse-starlette strips CR/LF from ``id`` and ``event``); lines
end with LF only; comments end with a blank line, so that naive clients which
split the stream on blank lines see comments as separate blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import InvalidEvent

__all__ = [
    "Event",
    "Message",
    "build_event",
    "encode_comment",
    "encode_data",
    "encode_event",
    "encode_id",
    "encode_retry",
    "normalize_data",
]

#: What a data argument may be: text, UTF-8 bytes, or a sequence of either
#: (one data line each, the client joins them with ``\n``), or ``None`` for
#: an event without a data field.
Data = str | bytes | Sequence[str | bytes] | None


_FIELDS = frozenset({"data", "event", "id", "retry"})


def _decode(value: bytes, field: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"{field} is not valid UTF-8: {exc}") from None


def normalize_data(data: object, field: str = "data") -> str | None:
    """Turn any accepted form of event data into one string (or ``None``).

    A sequence becomes its items joined with ``\\n``: one data line each.
    """
    if data is None or type(data) is str:
        return data
    if isinstance(data, str):
        # The characters themselves: a subclass's __str__ could return others.
        return str.__str__(data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _decode(bytes(data), field)
    if isinstance(data, Sequence):
        if not data:
            raise InvalidEvent(
                f'{field} is an empty sequence, which has no lines to send; pass "" for an event with empty data'
            )
        lines = []
        for item in data:
            if isinstance(item, str):
                lines.append(str.__str__(item))
            elif isinstance(item, (bytes, bytearray, memoryview)):
                lines.append(_decode(bytes(item), field))
            else:
                raise InvalidEvent(f"{field} lines must be str or bytes, not {type(item).__name__}")
        return "\n".join(lines)
    raise InvalidEvent(f"{field} must be str, bytes or a sequence of them, not {type(data).__name__}")


def _single_line(value: object, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and field == "id":
        # The digits of the value itself: an int subclass's __str__ or
        # __repr__ could return "1\ndata: injected".
        return int.__repr__(value)
    if not isinstance(value, str):
        allowed = "str or int" if field == "id" else "str"
        raise InvalidEvent(f"{field} must be {allowed}, not {type(value).__name__}")
    # Check and send the characters themselves: a str subclass's __str__
    # (an Enum's, say) could return something else than what was checked.
    value = str.__str__(value)
    if "\n" in value or "\r" in value:
        raise InvalidEvent(f"{field} must not contain CR or LF: {value!r}")
    if field == "id" and "\0" in value:
        raise InvalidEvent(f"id must not contain NUL (browsers ignore such an id): {value!r}")
    return value


def _retry(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        # The plain value: an int subclass may override __lt__ or __int__.
        milliseconds = int.__int__(value)
        if milliseconds >= 0:
            return milliseconds
    raise InvalidEvent(f"retry must be a non-negative int (milliseconds), not {value!r}")


def _utf8(text: str, field: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEvent(f"{field} cannot be encoded as UTF-8: {exc}") from None


def _data_lines(text: str) -> str:
    # The spec's line terminators are CRLF, CR and LF; fold them all to LF, then
    # start every line with "data: ". The client joins the lines with LF again.
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "data: " + text.replace("\n", "\ndata: ") + "\n"


def encode_data(text: str) -> bytes:
    """Encode an event that carries only *text* as its data.

    :raises InvalidEvent: *text* is not a ``str`` or not encodable as UTF-8.
    """
    if type(text) is not str:
        if not isinstance(text, str):
            raise InvalidEvent(f"data must be str, not {type(text).__name__}")
        # The characters themselves: a subclass may override replace() or __contains__.
        text = str.__str__(text)
    return _encode_data(text)


def _encode_data(text: str) -> bytes:
    # The fast path of Connection.push with one plain str (checked there).
    return _utf8(_data_lines(text) + "\n", "data")


@dataclass(frozen=True, init=False, slots=True)
class Event:
    """One server-sent event, validated and encoded when it is created.

    :param data: the event's data: ``str``, UTF-8 ``bytes``, or a sequence of
        them (one line each), or ``None`` for an event without data (a client
        then dispatches nothing, but still applies ``id`` and ``retry``).
    :param event: the event type (``addEventListener`` name); ``None`` means
        the client's default, ``message``.
    :param id: the event id; ``int`` is turned into ``str``. The empty string
        resets the client's last event id.
    :param retry: the client's reconnection delay, in milliseconds.
    :raises InvalidEvent: a field cannot be sent as given; the message names it.

    The encoded bytes are kept in :attr:`encoded`, so an event sent to many
    connections is encoded once.
    """

    data: str | None
    event: str | None
    id: str | None
    retry: int | None
    #: The event on the wire, ready to write.
    encoded: bytes

    def __init__(
        self,
        data: Data = None,
        *,
        event: str | None = None,
        id: str | int | None = None,
        retry: int | None = None,
    ) -> None:
        text = normalize_data(data)
        name = None if event is None else _single_line(event, "event")
        ident = None if id is None else _single_line(id, "id")
        delay = None if retry is None else _retry(retry)
        if text is None and name is None and ident is None and delay is None:
            raise InvalidEvent("an event needs at least one of data, event, id and retry")
        object.__setattr__(self, "data", text)
        object.__setattr__(self, "event", name)
        object.__setattr__(self, "id", ident)
        object.__setattr__(self, "retry", delay)
        object.__setattr__(self, "encoded", _encode_fields(text, name, ident, delay))


#: What :meth:`Connection.push` takes: text or bytes (data lines), a mapping
#: with the keys ``data``, ``event``, ``id`` and ``retry``, or an :class:`Event`.
Message = str | bytes | Mapping[str, object] | Event


def encode_event(
    data: Data,
    *,
    event: str | None = None,
    id: str | int | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event: ``Event(data, event=event, id=id, retry=retry).encoded``.

    Takes and checks its arguments exactly as :class:`Event` does.

    :raises InvalidEvent: a field cannot be sent as given; the message names it.

    .. versionchanged:: 0.1
        Validates its arguments (it trusted them, so a CR or LF in ``event``
        or ``id`` injected fields of its own).
    """
    return Event(data, event=event, id=id, retry=retry).encoded


def _encode_fields(data: str | None, event: str | None, ident: str | None, retry: int | None) -> bytes:
    # Fields Event has already checked.
    parts = []
    if ident is not None:
        parts.append(_utf8(f"id: {ident}\n", "id"))
    if event is not None:
        parts.append(_utf8(f"event: {event}\n", "event"))
    if retry is not None:
        parts.append(b"retry: %d\n" % retry)
    if data is not None:
        parts.append(_utf8(_data_lines(data), "data"))
    parts.append(b"\n")
    return b"".join(parts)


def encode_comment(text: str = "") -> bytes:
    """Encode a comment: one ``: text`` line per line of *text*, then a blank line.

    Clients ignore comments; they keep proxies and clients from timing out.
    """
    if not isinstance(text, str):
        raise InvalidEvent(f"comment must be str, not {type(text).__name__}")
    text = str.__str__(text)  # a subclass may override replace() or __contains__
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _utf8(": " + text.replace("\n", "\n: ") + "\n\n", "comment")


def encode_retry(milliseconds: int) -> bytes:
    """Encode a lone ``retry:`` field: sets the client's reconnection delay."""
    return b"retry: %d\n\n" % _retry(milliseconds)


def encode_id(event_id: str | int) -> bytes:
    """Encode a lone ``id:`` field followed by a blank line.

    The client sets its last event id and dispatches nothing (its data buffer
    is empty), so a client that reconnects later resumes from this id.
    """
    return _utf8(f"id: {_single_line(event_id, 'id')}\n\n", "id")


def build_event(*messages: Message) -> Event:
    """Merge the arguments of :meth:`Connection.push` into ONE event.

    Each ``str`` or ``bytes`` adds data line(s); a mapping or an :class:`Event`
    may also carry ``event``, ``id`` and ``retry``. A field given twice, an
    unknown key or a message of another type raises :class:`InvalidEvent`.
    """
    if len(messages) == 1 and isinstance(messages[0], Event):
        return messages[0]
    if not messages:
        raise InvalidEvent("push() needs at least one message (data, a dict or an Event)")
    lines: list[str] = []
    fields: dict[str, object] = {}
    for message in messages:
        if isinstance(message, str):
            lines.append(str.__str__(message))
        elif isinstance(message, (bytes, bytearray, memoryview)):
            lines.append(_decode(bytes(message), "data"))
        elif isinstance(message, (Event, Mapping)):
            if isinstance(message, Event):
                items: dict[str, object] = {
                    "data": message.data,
                    "event": message.event,
                    "id": message.id,
                    "retry": message.retry,
                }
            else:
                items = dict(message)
                unknown = sorted(map(repr, set(items) - _FIELDS))
                if unknown:
                    raise InvalidEvent(
                        f"unknown event field {', '.join(unknown)}: an event has only data, event, id and retry"
                    )
            for key, value in items.items():
                if value is None:
                    continue
                if key == "data":
                    text = normalize_data(value)
                    if text is not None:
                        lines.append(text)
                elif key in fields:
                    raise InvalidEvent(f"{key} is given twice in one push")
                else:
                    fields[key] = value
        else:
            raise InvalidEvent(f"push() takes str, bytes, a dict or an Event, not {type(message).__name__}")
    return Event(
        "\n".join(lines) if lines else None,
        event=fields.get("event"),  # type: ignore[arg-type]  # validated by Event
        id=fields.get("id"),  # type: ignore[arg-type]
        retry=fields.get("retry"),  # type: ignore[arg-type]
    )
