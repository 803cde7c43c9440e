"""Many channels on one stream, with one cursor that resumes every channel.

``GET /?channel=chat/lobby&channel=notify/alice`` (see
:class:`~wsgi_eventsource.brokers.apps.SubscriberApp`) streams the events of
every channel listed. Each event keeps the ``data`` and ``event`` type it was
published with; its ``id`` is the stream's *cursor* (see
:mod:`~wsgi_eventsource.brokers.cursor`) with the event's channel first::

    id: chat/lobby*1764579475123-0;notify/alice*1764579000000-3
    event: message
    data: hello

so a native ``EventSource`` tells the channel from ``event.lastEventId`` (the
text before the first ``*``), and reconnects with a ``Last-Event-ID`` that
resumes every channel exactly: each channel replays what was published after
its own position, as a single-channel stream does. A channel whose position is
unknown, malformed or too old gets one ``stream-reset`` event (its JSON data
names the ``"channel"``), then its history; the others replay normally. A new
client gets a bare ``id:`` line with the starting cursor first.

A channel the broker cannot serve while it serves the others (a RedisBroker
key of another type, or one an ACL forbids: :class:`~wsgi_eventsource.ChannelUnavailable`)
gets a ``stream-error`` event, JSON ``{"channel": ..., "reason": ...}``, and
is left out: live (the reader found the key broken) or when the stream opens
(so a page with one broken channel still gets the others at every
reconnect). Only when the broker cannot be reached (any other
:class:`BrokerUnavailable`), or no channel can be served, is the stream
refused (softly, by the app).

Underneath, a :class:`Multiplex` is one ordinary :class:`Subscription` per
channel (so replay, the replay-to-live hand-off, resets and broker stats work
exactly as for one channel) whose events pass through it to the one
connection, which only rewrites their ``id:`` line. The encoded body of an
event is still shared by every subscriber.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING

from ..encoding import Event, encode_id
from ..errors import ChannelUnavailable, InvalidChannel
from .base import Subscription, _interned, stream_reset_event, validate_channel
from .cursor import CHANNEL_SEPARATOR, ENTRY_SEPARATOR, parse_cursor

if TYPE_CHECKING:
    from ..connection import Connection
    from .base import Broker, ReplayPlan

__all__ = ["Multiplex"]

#: The event type of a channel the broker cannot serve (RedisBroker's reader
#: sends the same for a key it cannot read).
STREAM_ERROR = "stream-error"
_STAR = CHANNEL_SEPARATOR.encode("ascii")
_SEMICOLON = ENTRY_SEPARATOR.encode("ascii")


class Multiplex:
    """One stream's subscription to several channels (from
    :meth:`Broker.subscribe_many`).

    ``multiplex.attach(conn)`` sends the channels' events to *conn* and
    unsubscribes them all when it closes; :meth:`close` does that at once.
    """

    __slots__ = ("_ended", "_entries", "broker", "channels", "conn", "subscriptions")

    def __init__(self, broker: Broker, channels: tuple[str, ...]) -> None:
        #: The broker the channels are subscribed on.
        self.broker = broker
        #: The channels, each once, in the order they were asked for (less
        #: any the broker could not serve: see :meth:`open`).
        self.channels = channels
        #: One subscription per channel, in the same order.
        self.subscriptions: tuple[Subscription, ...] = ()
        #: The connection the events go to, once attached.
        self.conn: Connection | None = None
        # The cursor, one ``b"<channel>*<id>"`` per channel; None for a
        # channel whose replay has not been sent yet (a cursor without it
        # makes a client that drops meanwhile start that channel over).
        self._entries: list[bytes | None] = [None] * len(channels)
        self._ended: set[int] | None = None  # channels the broker ended (a broken key); made when one is

    @classmethod
    def open(cls, broker: Broker, channels: Iterable[str], cursor: str | None) -> tuple[Multiplex, bytes]:
        """Subscribe to every channel; return the multiplex and its preamble.
        See :meth:`Broker.subscribe_many`."""
        if isinstance(channels, str):
            raise InvalidChannel(f"channels must be a list of channel names, not the str {channels!r}")
        unique = tuple(dict.fromkeys(_interned(validate_channel(name)) for name in channels))
        if not unique:
            raise InvalidChannel("no channel to subscribe to")
        positions = None if cursor is None else parse_cursor(cursor, unique)
        lasts = [None if cursor is None else (positions or {}).get(channel) for channel in unique]
        # "" (no id) makes the broker plan a reset and the whole history.
        asks = [
            (channel, "" if cursor is not None and last is None else last)
            for channel, last in zip(unique, lasts, strict=True)
        ]
        opened: list[tuple[str, Subscription, str | None, ReplayPlan]] = []
        refused: list[ChannelUnavailable] = []
        for channel, last, done in zip(unique, lasts, broker._subscribe_planned_many(asks), strict=True):
            if isinstance(done, ChannelUnavailable):
                # A broken key (say a string where the stream should be)
                # fails its channel alone: only that channel is left out, or
                # one bad channel would refuse the page's stream at every
                # reconnect. Every channel broken: raised (a soft refusal),
                # as is any other BrokerUnavailable (by the broker).
                refused.append(done)
            else:
                opened.append((channel, done[0], last, done[1]))
        if not opened:
            raise refused[-1]
        multiplex = cls(broker, _shared_channels(tuple(channel for channel, _, _, _ in opened)))
        multiplex.subscriptions = tuple(subscription for _, subscription, _, _ in opened)
        lasts = [last for _, _, last, _ in opened]
        plans = [plan for _, _, _, plan in opened]
        errors = b"".join(_stream_error(exc.channel, exc.reason) for exc in refused)
        return multiplex, multiplex._preamble(cursor is None, lasts, plans) + errors

    def _preamble(self, new_client: bool, lasts: list[str | None], plans: list[ReplayPlan]) -> bytes:
        """The bytes sent before live events (see the module doc)."""
        entries = self._entries
        prefixes = [channel.encode("utf-8") + _STAR for channel in self.channels]
        if new_client:
            for index, plan in enumerate(plans):
                entries[index] = _entry(prefixes[index], plan.position)
            return encode_id(self._cursor())
        for index, (last, plan) in enumerate(zip(lasts, plans, strict=True)):
            if not plan.reset:
                assert last is not None
                entries[index] = prefixes[index] + last.encode("ascii")
        parts = []
        for index, (channel, last, plan) in enumerate(zip(self.channels, lasts, plans, strict=True)):
            if plan.reset:
                base = plan.entries[0].prev if plan.entries else plan.position
                parts.append(self._rewrite(index, stream_reset_event(channel, last, plan.reason, base)))
            parts.extend(self._rewrite(index, entry.wire) for entry in plan.entries)
        stale = False
        for index, plan in enumerate(plans):
            position = prefixes[index] + plan.position.encode("ascii")
            stale = stale or entries[index] != position
            entries[index] = position
        if stale:  # the replay did not end at a channel's position: say where it is
            parts.append(encode_id(self._cursor()))
        return b"".join(parts)

    def _cursor(self) -> str:
        """The whole cursor, for a bare ``id:`` line."""
        return _SEMICOLON.join([entry for entry in self._entries if entry is not None]).decode("utf-8")

    def _rewrite(self, index: int, wire: bytes) -> bytes:
        """*wire* (an event of channel *index*, its ``id:`` line first) with
        the stream's cursor as its id; the cursor moves to the event."""
        if not wire.startswith(b"id: "):
            return wire  # no id (a stream-error): the cursor stays
        end = wire.index(b"\n")
        entries = self._entries
        own = self.channels[index].encode("utf-8") + _STAR + wire[4:end]
        entries[index] = own
        if len(entries) == 1:
            return b"id: " + own + wire[end:]
        others = [entry for i, entry in enumerate(entries) if i != index and entry is not None]
        return b"id: " + _SEMICOLON.join([own, *others]) + wire[end:]

    def attach(self, conn: Connection) -> None:
        """Go live on *conn* (after the preamble): flush what each channel
        buffered meanwhile, and unsubscribe them all when *conn* closes."""
        self.conn = conn
        conn.on_close(self)  # self(): close, without a bound method per stream
        for index, subscription in enumerate(self.subscriptions):
            subscription.attach(self, index)  # this object is each channel's sink

    def close(self) -> None:
        """Unsubscribe from every channel (idempotent)."""
        for subscription in self.subscriptions:
            self.broker.unsubscribe(subscription)

    __call__ = close

    def _deliver(self, index: int, wire: bytes) -> bool:
        conn = self.conn
        assert conn is not None  # channels are attached after the connection
        return conn._enqueue_here(self._rewrite(index, wire))

    def _end(self, index: int) -> None:
        # The broker ended this channel (its stream-error was just sent): the
        # others go on; the stream ends when none is left.
        self.broker.unsubscribe(self.subscriptions[index])
        if self._ended is None:
            self._ended = set()
        self._ended.add(index)
        if len(self._ended) == len(self.channels) and self.conn is not None:
            self.conn.close()


@lru_cache(maxsize=1024)
def _entry(prefix: bytes, position: str) -> bytes:
    """A cursor entry, ``b"<channel>*<id>"``, one object per value: the new
    streams of a channel between two events share it (51 bytes per channel
    of each idle stream otherwise). Bytes are immutable; an event replaces
    a stream's entry with its own."""
    return prefix + position.encode("ascii")


def _stream_error(channel: str, reason: str) -> bytes:
    """The ``stream-error`` of a channel the broker cannot serve (as the
    RedisBroker reader sends for a key it cannot read): no ``id``, so the
    cursor stays; the channel is left out of this stream."""
    return Event(json.dumps({"channel": channel, "reason": reason}), event=STREAM_ERROR).encoded


@lru_cache(maxsize=1024)
def _shared_channels(channels: tuple[str, ...]) -> tuple[str, ...]:
    """*channels* as one tuple object per list of channels: the streams of a
    page that all ask for the same channels share it (120 bytes per stream
    of 10 channels otherwise)."""
    return channels
