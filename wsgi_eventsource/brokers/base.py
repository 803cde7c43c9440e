"""What every broker shares: channel names, event ids, replay planning and the
hand-off from replay to live delivery.

Event ids look like Redis stream ids, ``"<milliseconds>-<sequence>"``, for
both brokers: they increase within a channel, and ids of different broker
instances (a restarted process) do not collide, so a stale ``Last-Event-ID``
is recognised instead of being mistaken for a recent one.

Replay ("nothing lost, nothing twice"): every history entry remembers its
predecessor's id. A client's ``Last-Event-ID`` is *in history* when it is the
id of a retained entry, or the predecessor of the oldest retained entry (the
client has seen everything before it). Then exactly the entries after it are
replayed. Any other id (unknown, malformed, trimmed away, or from another
broker instance) gets one ``stream-reset`` event first, then all of history.
"""

from __future__ import annotations

import json
import re
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from gevent._hub_local import get_hub_if_exists

from ..encoding import Data, Event, encode_id
from ..errors import ChannelUnavailable, InvalidChannel, InvalidEvent
from ..histogram import Histogram

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from gevent.hub import Hub

    from ..app import HeadersLike
    from .apps import PublisherApp, SubscriberApp
    from .multiplex import Multiplex

__all__ = [
    "CHANNEL_MAX_LENGTH",
    "DEFAULT_HISTORY",
    "STREAM_RESET",
    "Broker",
    "BrokerStats",
    "ChannelSink",
    "Entry",
    "ReplayPlan",
    "Sink",
    "Subscription",
    "parse_id",
    "plan_replay",
    "stream_reset_event",
    "validate_channel",
]

#: Events kept per channel for replay, unless the broker is told otherwise.
DEFAULT_HISTORY = 1000
#: The longest channel name accepted, in characters.
CHANNEL_MAX_LENGTH = 200
#: The event type sent to a client whose ``Last-Event-ID`` is not in history
#: (reason ``"unknown"`` or ``"expired"``), or live, before the events after a
#: gap the broker saw (RedisBroker: ``"overrun"``, ``"restarted"``).
STREAM_RESET = "stream-reset"

# Letters, digits and "-_.:@~+=,!" in segments separated by single "/": enough
# for XMPP node names and room ids, nothing a path could be tricked with.
_SEGMENT = re.compile(r"[A-Za-z0-9\-_.:@~+=,!]+")
# ASCII digits only: \d takes any Unicode digit (Arabic-Indic, fullwidth), which int() reads
# but Redis refuses as an id (a cursor with one was refused as "broker unavailable").
_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_ID_PART_MAX = 2**64 - 1  # each part of an id is an unsigned 64-bit number


def validate_channel(name: str) -> str:
    """Return *name* if it is a valid channel name, else raise :class:`InvalidChannel`.

    A name is 1 to :data:`CHANNEL_MAX_LENGTH` characters: segments of ASCII
    letters, digits and ``- _ . : @ ~ + = , !`` separated by single ``/``. No
    empty, ``.`` or ``..`` segment, no leading or trailing ``/``. So every
    channel has exactly one spelling, and ``authorize`` sees what is served.
    """
    if not isinstance(name, str):
        raise InvalidChannel(f"channel must be str, not {type(name).__name__}")
    if not name:
        raise InvalidChannel("channel name is empty")
    if len(name) > CHANNEL_MAX_LENGTH:
        raise InvalidChannel(f"channel name is longer than {CHANNEL_MAX_LENGTH} characters")
    for segment in name.split("/"):
        if not segment:
            raise InvalidChannel(f"channel name {name!r} has an empty segment (leading, trailing or double '/')")
        if segment in (".", ".."):
            raise InvalidChannel(f"channel name {name!r} has a {segment!r} segment")
        if not _SEGMENT.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT.fullmatch(c))
            raise InvalidChannel(f"channel name {name!r} has a character that is not allowed: {bad!r}")
    return name


def _interned(name: str) -> str:
    """*name*, interned (a ``str`` subclass as it is): the subscriptions of
    one channel then share one name object, not one per request."""
    return sys.intern(name) if type(name) is str else name


def parse_id(event_id: str | None) -> tuple[int, int] | None:
    """``"<ms>-<seq>"`` as a comparable tuple, or ``None`` if it is not one."""
    if event_id is None or len(event_id) > 41:
        return None
    match = _ID.fullmatch(event_id)
    if match is None:
        return None
    key = int(match.group(1)), int(match.group(2))
    if key[0] > _ID_PART_MAX or key[1] > _ID_PART_MAX:
        return None  # no broker makes it (and Redis refuses it in a range)
    return key


#: :func:`parse_id` of a subscription's hand-off floor, one tuple per id: the
#: streams that subscribe at the same position (every new stream of a channel
#: between two events) share it instead of holding a tuple and an int each
#: (88 bytes per stream, per channel of a multiplexed stream). The tuples are
#: immutable; a subscription only ever rebinds its floor.
_shared_key = lru_cache(maxsize=1024)(parse_id)


def check_history(history: object, max_age: object) -> None:
    """Validate the history options every broker takes; ``ValueError`` names the bad one."""
    if not isinstance(history, int) or isinstance(history, bool) or history < 1:
        raise ValueError(f"history must be a positive int, not {history!r}")
    if max_age is not None and (
        not isinstance(max_age, (int, float)) or isinstance(max_age, bool) or not 0 < max_age < float("inf")
    ):
        raise ValueError(f"max_age must be a positive number of seconds or None, not {max_age!r}")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    """One event in a channel's history."""

    id: str
    #: The id of the entry published just before this one in the channel.
    prev: str
    #: The encoded event without its ``id:`` line (see :func:`wire`).
    body: bytes
    #: When it was published, in milliseconds since the epoch.
    created: int

    @property
    def wire(self) -> bytes:
        """The event as it is sent: its ``id:`` line, then the body."""
        return b"id: " + self.id.encode("ascii") + b"\n" + self.body


def encode_body(data: Data, event: str | None, retry: int | None) -> bytes:
    """Validate and encode a published event, without its id (not known yet)."""
    if data is None:
        raise InvalidEvent("data is required to publish (use '' for empty data)")
    return Event(data, event=event, retry=retry).encoded


@dataclass(frozen=True)
class ReplayPlan:
    """What a (re)connecting subscriber gets before live events."""

    #: Send a ``stream-reset`` event first (the client missed events).
    reset: bool
    #: The entries to replay, oldest first.
    entries: Sequence[Entry]
    #: The id the client is at once the replay is sent (ignoring live events).
    position: str
    #: ``"unknown"`` or ``"expired"`` when ``reset`` is true.
    reason: str = ""


def plan_replay(last_event_id: str | None, current_id: str, history: Sequence[Entry]) -> ReplayPlan:
    """Decide what a subscriber that last saw *last_event_id* is sent.

    *history* is the channel's retained entries, oldest first; *current_id*
    the id of the newest event (or the channel's start id when it has none).
    """
    if last_event_id is None or last_event_id == current_id:
        return ReplayPlan(False, (), current_id)
    for index, entry in enumerate(history):
        if entry.id == last_event_id:
            return ReplayPlan(False, history[index + 1 :], current_id)
    if history and history[0].prev == last_event_id:
        return ReplayPlan(False, history, current_id)
    key = parse_id(last_event_id)
    first = parse_id(history[0].id) if history else parse_id(current_id)
    expired = key is not None and first is not None and key < first
    return ReplayPlan(True, history, current_id, "expired" if expired else "unknown")


def preamble(channel: str, last_event_id: str | None, plan: ReplayPlan) -> bytes:
    """The bytes sent before live events: a bare ``id:`` line for a new
    client, else an optional ``stream-reset`` event and the replayed events."""
    if last_event_id is None:
        # A bare id with no data: the client's lastEventId is set without an
        # event, so a client that drops before the first event resumes here.
        return encode_id(plan.position)
    parts = []
    if plan.reset:
        base = plan.entries[0].prev if plan.entries else plan.position
        parts.append(stream_reset_event(channel, last_event_id, plan.reason, base))
    parts.extend(entry.wire for entry in plan.entries)
    return b"".join(parts)


def stream_reset_event(channel: str, last_event_id: str | None, reason: str, event_id: str) -> bytes:
    """A ``stream-reset`` event: events after *last_event_id* were missed.

    Its data is JSON ``{"channel", "lastEventId", "reason"}``; its ``id`` is
    *event_id*, the id the events that follow it continue from, so a client
    that reconnects right after it is not told again. (``lastEventId`` is
    ``null`` for a channel a multiplexed stream's cursor did not name.)
    """
    data = json.dumps({"channel": channel, "lastEventId": last_event_id, "reason": reason})
    return Event(data, event=STREAM_RESET, id=event_id).encoded


class Sink(Protocol):
    """Where a :class:`Subscription` sends its events once attached: a
    :class:`~wsgi_eventsource.Connection`, or one channel of a
    :class:`~wsgi_eventsource.brokers.multiplex.Multiplex`."""

    def _enqueue_here(self, data: bytes) -> bool: ...

    def close(self) -> None: ...


class ChannelSink(Protocol):
    """Where a :class:`Subscription` attached with an *index* sends its
    events: one of several channels of a
    :class:`~wsgi_eventsource.brokers.multiplex.Multiplex`.

    .. versionadded:: 0.1
    """

    def _deliver(self, index: int, data: bytes) -> bool: ...

    def _end(self, index: int) -> None: ...


class Subscription:
    """One connection's subscription to one channel.

    Live events that arrive before the connection is attached are buffered;
    events at or before ``floor`` (the last replayed id) are dropped, so the
    replay-to-live hand-off sends nothing twice.
    """

    __slots__ = ("buffer", "channel", "conn", "ending", "floor", "hub", "index")

    def __init__(self, channel: str, hub: Hub) -> None:
        self.channel = _interned(channel)
        # A Sink, or with index >= 0 a ChannelSink (typed Any: which one is
        # decided by index, on the hot path, without an isinstance).
        self.conn: Any = None
        self.buffer: list[tuple[tuple[int, int], bytes]] | None = []
        self.floor: tuple[int, int] | None = None
        #: The last event of a stream that :meth:`end` ended before it was attached.
        self.ending: bytes | None = None
        #: The hub of the subscriber's thread: its events are delivered there.
        self.hub = hub
        #: Its channel's index in the ChannelSink it is attached to; -1 for a Sink.
        self.index = -1

    def deliver(self, key: tuple[int, int], wire: bytes) -> None:
        """In the subscriber's hub: queue a live event (or buffer it)."""
        floor = self.floor
        if floor is not None:
            if key <= floor:
                return
            if self.conn is not None:
                self.floor = None  # events come in order: no comparisons from now on
            # Still buffering: the buffer may hold events from before the
            # floor was set, at or below it, which attach() must drop.
        conn = self.conn
        if conn is not None:
            # fan_out_batch runs this in the connection's thread
            index = self.index
            if index < 0:
                conn._enqueue_here(wire)
            else:
                conn._deliver(index, wire)
        elif self.buffer is not None:
            self.buffer.append((key, wire))

    def attach(self, conn: Sink | ChannelSink, index: int = -1) -> None:
        """Go live on *conn* (with *index*: a :class:`ChannelSink`, this
        subscription its channel *index*): flush what was buffered meanwhile.

        .. versionchanged:: 0.1
            *index*: one object serves every channel of a multiplexed stream,
            instead of one sink object per channel.
        """
        buffered, self.buffer = self.buffer, None
        self.conn = conn
        self.index = index
        for key, wire in buffered or ():
            if self.floor is None or key > self.floor:
                self.floor = None
                if index < 0:
                    conn._enqueue_here(wire)  # type: ignore[union-attr]
                else:
                    conn._deliver(index, wire)  # type: ignore[union-attr]
        if self.ending is not None:
            self.end(self.ending)

    def end(self, wire: bytes) -> None:
        """In the subscriber's hub: send *wire* as the stream's last event and
        end the stream (the client reconnects, as after any end)."""
        conn = self.conn
        if conn is None:
            self.ending = wire  # attach() ends it
            return
        index = self.index
        if index < 0:
            conn._enqueue_here(wire)
            conn.close()
        else:
            conn._deliver(index, wire)
            conn._end(index)


def fan_out(subscriptions: Iterable[Subscription], key: tuple[int, int], wire: bytes) -> None:
    """Deliver one encoded event to many subscriptions, in their own hubs."""
    fan_out_batch([(subscriptions, key, wire)])


def fan_out_batch(batch: Iterable[tuple[Iterable[Subscription], tuple[int, int], bytes]]) -> None:
    """Deliver encoded events, in order, each to its subscriptions.

    Subscriptions of the calling thread are served directly; each other
    thread's hub gets ONE callback that serves the whole batch, in order.
    """
    # A hub belongs to one thread: a subscription whose hub is this thread's
    # is served here. (A thread without a hub, a Redis reader's, has none.)
    here = get_hub_if_exists()
    elsewhere: dict[Hub, list[tuple[Subscription, tuple[int, int], bytes]]] = {}
    for subscriptions, key, wire in batch:
        for sub in subscriptions:
            if sub.hub is here:
                sub.deliver(key, wire)
            else:
                elsewhere.setdefault(sub.hub, []).append((sub, key, wire))
    for hub, items in elsewhere.items():
        try:
            hub.loop.run_callback_threadsafe(_deliver_all, items)
        except Exception:  # that thread's hub is gone with its streams
            continue


def end_subscriptions(subscriptions: Iterable[Subscription], wire: bytes) -> None:
    """End each subscription's stream after the last event *wire*, in its own
    hub (see :meth:`Subscription.end`)."""
    here = get_hub_if_exists()
    for sub in subscriptions:
        if sub.hub is here:
            sub.end(wire)
        else:
            try:
                sub.hub.loop.run_callback_threadsafe(sub.end, wire)
            except Exception:  # that thread's hub is gone with its streams
                continue


def _deliver_all(items: list[tuple[Subscription, tuple[int, int], bytes]]) -> None:
    for sub, key, wire in items:
        sub.deliver(key, wire)


@dataclass
class BrokerStats:
    """What this process's broker has done, for ``/stats`` and ``/metrics``."""

    #: Events published from this process.
    published: int = 0
    #: Events handed to local subscriptions (one per event per subscriber).
    delivered: int = 0
    #: Seconds from each event's publish to its hand-off to this process's
    #: subscribers, observed once per event (not per subscriber).
    #:
    #: .. versionadded:: 0.1
    latency: Histogram = field(default_factory=Histogram)
    #: Errors of the store behind the broker, by kind (RedisBroker:
    #: ``connection``, ``timeout``, ``response``, ``other``).
    #:
    #: .. versionadded:: 0.1
    errors: dict[str, int] = field(default_factory=dict)


class Broker(ABC):
    """The channel API shared by :class:`MemoryBroker` and :class:`RedisBroker`."""

    history: int
    max_age: float | None
    #: Counters for this process.
    stats: BrokerStats

    @abstractmethod
    def channel_counts(self) -> dict[str, int]:
        """Subscriptions open in this process, per channel."""

    def reader_lag(self) -> float | None:
        """Seconds this process's reader of the store is behind (0 when it is
        up to date), or None for a broker without one (MemoryBroker).

        .. versionadded:: 0.1
        """
        return None

    def subscriber_count(self, channel: str | None = None) -> int:
        """Subscriptions open in this process, to *channel* or to all channels."""
        counts = self.channel_counts()
        return counts.get(channel, 0) if channel is not None else sum(counts.values())

    @abstractmethod
    def publish(self, channel: str, data: Data, *, event: str | None = None, retry: int | None = None) -> str:
        """Publish one event to *channel*; return its id.

        *data* is as in :meth:`Connection.push`: ``str``, UTF-8 ``bytes`` or a
        sequence of them (one data line each).

        :raises InvalidChannel: the channel name is not valid.
        :raises InvalidEvent: the event cannot be sent as given.
        :raises BrokerUnavailable: the backing store cannot be reached.
        """

    def subscribe(self, channel: str, last_event_id: str | None) -> tuple[Subscription, bytes]:
        """Register a subscription (buffering until attached) and return it
        with the preamble to send first (a bare id, or reset and replay).

        Then ``subscription.attach(conn)`` once the stream is open, and
        ``conn.on_close(lambda: broker.unsubscribe(subscription))``.

        :raises InvalidChannel: the channel name is not valid.
        :raises BrokerUnavailable: the backing store cannot be reached.
        """
        subscription, plan = self._subscribe_planned(channel, last_event_id)
        return subscription, preamble(channel, last_event_id, plan)

    def subscribe_many(self, channels: Iterable[str], cursor: str | None) -> tuple[Multiplex, bytes]:
        """Register one stream's subscription to several channels; return it
        with the preamble to send first.

        *cursor* is the client's ``Last-Event-ID`` (``None`` for a new
        client): see :mod:`wsgi_eventsource.brokers.multiplex` for the frame
        format and the cursor. Then ``multiplex.attach(conn)`` once the
        stream is open; it unsubscribes every channel when *conn* closes.

        :raises InvalidChannel: a channel name is not valid, or none is given.
        :raises BrokerUnavailable: the backing store cannot be reached, or
            cannot serve any of the channels (nothing stays subscribed). A
            channel it cannot serve while it serves others gets a
            ``stream-error`` event in the preamble and is left out.
        """
        from .multiplex import Multiplex

        return Multiplex.open(self, channels, cursor)

    @abstractmethod
    def _subscribe_planned(self, channel: str, last_event_id: str | None) -> tuple[Subscription, ReplayPlan]:
        """:meth:`subscribe`, returning the replay plan instead of its bytes."""

    def _subscribe_planned_many(
        self, asks: Sequence[tuple[str, str | None]]
    ) -> list[tuple[Subscription, ReplayPlan] | ChannelUnavailable]:
        """:meth:`_subscribe_planned` for each ``(channel, last_event_id)``
        of *asks*, in order: a channel the broker cannot serve alone gets its
        :class:`ChannelUnavailable` in its place. Any other failure is raised,
        with nothing left subscribed. (A broker may do them all at once.)"""
        done: list[tuple[Subscription, ReplayPlan] | ChannelUnavailable] = []
        try:
            for channel, last_event_id in asks:
                try:
                    done.append(self._subscribe_planned(channel, last_event_id))
                except ChannelUnavailable as exc:
                    done.append(exc)
        except BaseException:
            for item in done:
                if not isinstance(item, ChannelUnavailable):
                    self.unsubscribe(item[0])
            raise
        return done

    @staticmethod
    def _planned(
        subscription: Subscription, last_event_id: str | None, current_id: str, history: Sequence[Entry]
    ) -> tuple[Subscription, ReplayPlan]:
        """The end of :meth:`_subscribe_planned` for every broker: plan the
        replay, set the hand-off floor, and return the subscription with the plan."""
        plan = plan_replay(last_event_id, current_id, history)
        subscription.floor = _shared_key(plan.position)
        return subscription, plan

    @abstractmethod
    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription; called when its stream ends."""

    def history_of(self, channel: str) -> list[Entry]:
        """The channel's retained entries, oldest first (for inspection and tests)."""
        raise NotImplementedError

    def subscriber_app(
        self,
        authorize: Callable[[WSGIEnvironment, str], bool] | None = None,
        headers: HeadersLike | None = None,
        *,
        max_channels: int = 64,
        **options: Any,
    ) -> SubscriberApp:
        """A WSGI app: ``GET /<channel>`` streams the channel's events, and
        ``GET /?channel=a&channel=b`` the events of every channel listed (at
        most *max_channels*), multiplexed on one stream.

        The channel is ``PATH_INFO`` below the mount point. ``authorize(environ,
        channel) -> bool`` is asked first, for every channel; without it,
        **every channel is open to everyone**. Other keyword *options* go to
        :class:`EventSource` (``keepalive``, ``retry``, ``max_pending``, ...).

        .. versionchanged:: 0.1
            ``max_channels`` and multiplexed streams.
        """
        from .apps import SubscriberApp

        return SubscriberApp(self, authorize=authorize, headers=headers, max_channels=max_channels, **options)

    def publisher_app(
        self,
        authorize: Callable[[WSGIEnvironment, str], bool] | None = None,
        *,
        max_body: int = 1024 * 1024,
    ) -> PublisherApp:
        """A WSGI app: ``POST /<channel>`` publishes the request body.

        See :class:`~wsgi_eventsource.brokers.apps.PublisherApp`. Without
        ``authorize``, **anyone who can reach it can publish to any channel**.
        """
        from .apps import PublisherApp

        return PublisherApp(self, authorize=authorize, max_body=max_body)

    def close(self) -> None:  # noqa: B027  # a no-op for brokers that hold nothing
        """Release what the broker holds (connections, reader threads)."""
