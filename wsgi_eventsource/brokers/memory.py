"""The in-process broker: channels, history and fan-out in one process."""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..connection import os_lock, thread_hub
from ..encoding import Data
from .base import (
    DEFAULT_HISTORY,
    Broker,
    BrokerStats,
    Entry,
    Subscription,
    check_history,
    encode_body,
    fan_out_batch,
    now_ms,
)
from .base import validate_channel as _validate_channel

if TYPE_CHECKING:
    pass

__all__ = ["MemoryBroker"]

logger = logging.getLogger("wsgi_eventsource")


@dataclass
class _Channel:
    history: deque[Entry]
    #: The id of the last event published here (the broker's start id before
    #: any), kept even when max_age has emptied the history.
    last_key: tuple[int, int]
    subscribers: set[Subscription] = field(default_factory=set)

    @property
    def current_id(self) -> str:
        return f"{self.last_key[0]}-{self.last_key[1]}"


class MemoryBroker(Broker):
    """Channels in this process's memory: the embedded default, no server needed.

    :param history: events kept per channel for ``Last-Event-ID`` replay.
    :param max_age: if set, events older than this many seconds are not
        replayed (and are dropped at the next publish).

    Only subscribers in this same process receive events. Under several
    gunicorn workers use :class:`RedisBroker`; a ``MemoryBroker`` used in a
    process that was forked, or by a multi-process server, logs a warning.

    .. versionadded:: 0.1
    """

    def __init__(self, history: int = DEFAULT_HISTORY, *, max_age: float | None = None) -> None:
        check_history(history, max_age)
        self.history = history
        self.max_age = max_age
        self._channels: dict[str, _Channel] = {}
        # Publishers may be real OS threads; the lock is held only briefly.
        self._lock = os_lock()
        # Ids of this instance start after its creation time, so that an id
        # handed out by another instance (a restarted process) is never in
        # this one's history.
        self._start_key = (now_ms(), 0)
        self._pid = os.getpid()
        # Events waiting to be fanned out, in id order, and whether a
        # publisher is delivering them: see publish().
        self._outbox: list[tuple[list[Subscription], tuple[int, int], bytes]] = []
        self._delivering = False
        self._warned = False
        self.stats = BrokerStats()

    def __repr__(self) -> str:
        return f"<MemoryBroker history={self.history} channels={len(self._channels)}>"

    def _check_process(self) -> None:
        if not self._warned and os.getpid() != self._pid:
            self._warned = True
            logger.warning(
                "MemoryBroker was created in process %d and is used in forked process %d: each "
                "worker has its own channels, so subscribers connected to another worker miss "
                "events published here. Use RedisBroker with several workers.",
                self._pid,
                os.getpid(),
            )

    def warn_multiprocess(self) -> None:
        """Log (once) that a multi-process server is using this broker."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "MemoryBroker is used by a multi-process server (wsgi.multiprocess is true): "
                "subscribers connected to other workers miss events published in this one. "
                "Use RedisBroker with several workers."
            )

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = _Channel(deque(maxlen=self.history), self._start_key)
            self._channels[name] = channel
        return channel

    def _expire(self, channel: _Channel, now: int) -> None:
        if self.max_age is not None:
            cutoff = now - int(self.max_age * 1000)
            history = channel.history
            while history and history[0].created < cutoff:
                history.popleft()

    def publish(self, channel: str, data: Data, *, event: str | None = None, retry: int | None = None) -> str:
        _validate_channel(channel)
        body = encode_body(data, event, retry)
        self._check_process()
        with self._lock:
            state = self._channel(channel)
            now = now_ms()
            previous_id = state.current_id
            ms, seq = state.last_key
            key = (now, 0) if now > ms else (ms, seq + 1)
            state.last_key = key
            entry = Entry(f"{key[0]}-{key[1]}", previous_id, body, now)
            self._expire(state, now)
            state.history.append(entry)
            subscribers = list(state.subscribers)
            self.stats.published += 1
            self.stats.delivered += len(subscribers)
            # Publishers in other OS threads may race this one: delivery goes
            # through one outbox, drained in order by one publisher at a time,
            # so every subscriber gets events in id order. (Fanning out under
            # the lock would also order them, but a switch inside it, say in
            # a logging handler, would deadlock this thread's other greenlets.)
            self._outbox.append((subscribers, key, entry.wire))
            if self._delivering:
                return entry.id  # the publisher delivering now sends it next
            self._delivering = True
        self._deliver_outbox()
        return entry.id

    def _deliver_outbox(self) -> None:
        try:
            while True:
                with self._lock:
                    batch, self._outbox = self._outbox, []
                    if not batch:
                        self._delivering = False
                        return
                fan_out_batch(batch)
        except BaseException:
            with self._lock:
                self._delivering = False
            raise

    def subscribe(self, channel: str, last_event_id: str | None) -> tuple[Subscription, bytes]:
        _validate_channel(channel)
        self._check_process()
        subscription = Subscription(channel, thread_hub())
        with self._lock:
            state = self._channel(channel)
            self._expire(state, now_ms())
            state.subscribers.add(subscription)
            return self._planned(subscription, last_event_id, state.current_id, list(state.history))

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            state = self._channels.get(subscription.channel)
            if state is not None:
                state.subscribers.discard(subscription)
                if not state.subscribers and state.last_key == self._start_key:
                    del self._channels[subscription.channel]  # never published to: nothing to keep

    def history_of(self, channel: str) -> list[Entry]:
        with self._lock:
            state = self._channels.get(channel)
            return list(state.history) if state is not None else []

    def channel_counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(state.subscribers) for name, state in self._channels.items() if state.subscribers}
