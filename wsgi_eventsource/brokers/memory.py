"""The in-process broker: channels, history and fan-out in one process."""

from __future__ import annotations

import itertools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gevent.monkey import get_original

from ..connection import os_lock, thread_hub
from ..encoding import Data
from .base import (
    DEFAULT_HISTORY,
    Broker,
    BrokerStats,
    Entry,
    ReplayPlan,
    Subscription,
    check_history,
    encode_body,
    fan_out_batch,
    now_ms,
)
from .base import validate_channel as _validate_channel

if TYPE_CHECKING:
    from _thread import LockType as Lock

__all__ = ["MemoryBroker"]

logger = logging.getLogger("wsgi_eventsource")

# The sweeper is a real OS thread even under monkey-patching: it must run
# when nothing else happens (no request, no greenlet switch) after a burst.
_start_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
_allocate_lock: Callable[[], Lock] = get_original("_thread", "allocate_lock")
_native_id: Callable[[], int] = get_original("_thread", "get_native_id")
#: The sweeper never wakes more often than this (seconds).
MIN_SWEEP_INTERVAL = 0.25
#: Channels the sweeper looks at per hold of the broker's lock.
SWEEP_BATCH = 1000
# Brokers whose sweeper a fork leaves behind in the child.
# Every broker of this process: a fork gives each fresh locks and flags (see
# MemoryBroker._after_fork_in_child).
_brokers: weakref.WeakSet[MemoryBroker] = weakref.WeakSet()


def _reset_brokers_in_child() -> None:
    for broker in list(_brokers):
        broker._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_brokers_in_child)


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
        replayed. A background thread then sweeps every ``max_age / 2``
        seconds (at least :data:`MIN_SWEEP_INTERVAL`): it drops expired
        events, and frees a channel with no subscribers and nothing left to
        replay, so short-lived channels cost nothing once they expire. A
        channel with subscribers is never freed (they keep its last id). A
        freed channel's last id is remembered for another ``max_age`` (a name
        and a number), so a client that saw its last event and reconnects
        meanwhile is not sent a ``stream-reset`` for nothing; after that it
        is. Without ``max_age`` a channel's history is kept for good.

    Only subscribers in this same process receive events. Under several
    gunicorn workers use :class:`RedisBroker`; a ``MemoryBroker`` used by a
    multi-process server (``wsgi.multiprocess``) logs a warning.

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
        # Freed channels: name -> (last key, when freed in ms), oldest first.
        self._tombstones: dict[str, tuple[tuple[int, int], int]] = {}
        # Events waiting to be fanned out, in id order, and whether a
        # publisher is delivering them: see publish().
        self._outbox: list[tuple[list[Subscription], tuple[int, int], bytes]] = []
        self._delivering = False
        self._warned = False
        # The lock whose release tells the sweeper thread to stop; None while
        # there is no sweeper (none started yet, closed, or a forked child).
        self._stop_sweeping: Lock | None = None
        self._sweeper_done: Lock | None = None
        #: The sweeper thread's native id (as in ``/proc/self/task``), once it runs.
        self.sweeper_native_id: int | None = None
        self.stats = BrokerStats()
        _brokers.add(self)

    def __repr__(self) -> str:
        return f"<MemoryBroker history={self.history} channels={len(self._channels)}>"

    def warn_multiprocess(self) -> None:
        """Log (once) that a multi-process server is using this broker."""
        if not self._warned:
            self._warned = True
            logger.warning(
                "MemoryBroker is used by a multi-process server (wsgi.multiprocess is true): "
                "subscribers connected to other workers miss events published in this one. "
                "Use RedisBroker with several workers."
            )

    @property
    def channel_count(self) -> int:
        """How many channels this broker holds (with subscribers or history)."""
        return len(self._channels)

    def _ensure_sweeper(self) -> None:
        # Lazily, at the first publish: a broker that is never published to
        # (or has no max_age) starts no thread.
        with self._lock:
            if self._stop_sweeping is not None:
                return
            stop, done = _allocate_lock(), _allocate_lock()
            stop.acquire()
            done.acquire()  # released by the thread as it ends
            self._stop_sweeping, self._sweeper_done = stop, done
        assert self.max_age is not None
        interval = max(self.max_age / 2, MIN_SWEEP_INTERVAL)
        _start_thread(_sweep_until_stopped, (weakref.ref(self), stop, done, interval))

    def _after_fork_in_child(self) -> None:
        # Only the forking thread lives on in the child: the sweeper is gone,
        # and it or a publishing thread may have held the lock at the fork.
        self._lock = os_lock()
        self._stop_sweeping = self._sweeper_done = None
        # A thread of the parent may have been delivering at the fork: its
        # flag would make every publish here leave delivery to nobody.
        self._delivering = False
        self._outbox = []

    def sweep(self) -> int:
        """Drop expired events and free idle channels now; return how many
        channels were freed. (The sweeper thread calls it; so may tests.)"""
        if self.max_age is None:
            return 0
        now = now_ms()
        freed = 0
        with self._lock:
            names = list(self._channels)
        # In batches, letting go of the lock between them: it is a real OS
        # lock, and every publish and subscribe of the worker's hub waits for
        # it (one pass over 100,000 channels held it for up to 140 ms).
        for start in range(0, len(names), SWEEP_BATCH):
            with self._lock:
                for name in names[start : start + SWEEP_BATCH]:
                    state = self._channels.get(name)
                    if state is None:
                        continue
                    self._expire(state, now)
                    if not state.subscribers and not state.history:
                        self._free(name, state, now)
                        freed += 1
        # The remembered last ids that are too old, oldest first (the dict is
        # in the order they were freed): found in one pass and dropped in
        # batches too. (Deleting the first key of a dict again and again is
        # quadratic in CPython: 95,000 of them held the lock for 1.4 s.)
        cutoff = now - int(self.max_age * 1000)
        with self._lock:
            expired = list(itertools.takewhile(lambda item: item[1][1] < cutoff, self._tombstones.items()))
        for start in range(0, len(expired), SWEEP_BATCH):
            with self._lock:
                for name, tombstone in expired[start : start + SWEEP_BATCH]:
                    if self._tombstones.get(name) is tombstone:  # not freed again meanwhile
                        del self._tombstones[name]
        return freed

    def _free(self, name: str, state: _Channel, now: int) -> None:
        # Under the lock. Only its last id is kept, for max_age: see the class doc.
        del self._channels[name]
        if state.last_key != self._start_key:
            self._tombstones.pop(name, None)  # re-inserted last: the dict stays in age order
            self._tombstones[name] = (state.last_key, now)

    @property
    def tombstone_count(self) -> int:
        """How many freed channels' last ids are still remembered."""
        return len(self._tombstones)

    def close(self) -> None:
        """Stop the sweeper thread (if any) and wait (a second at most) until
        it has ended. The broker stays usable; a later publish starts a new one."""
        with self._lock:
            stop, self._stop_sweeping = self._stop_sweeping, None
            done, self._sweeper_done = self._sweeper_done, None
        if stop is not None:
            stop.release()
        if done is not None and done.acquire(True, 1.0):
            done.release()

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            tombstone = self._tombstones.pop(name, None)
            channel = _Channel(deque(maxlen=self.history), self._start_key if tombstone is None else tombstone[0])
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
        if self.max_age is not None and self._stop_sweeping is None:
            self._ensure_sweeper()
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
                self._observe_latency(batch)
                fan_out_batch(batch)
        except BaseException:
            with self._lock:
                self._delivering = False
            raise

    def _observe_latency(self, batch: list[tuple[list[Subscription], tuple[int, int], bytes]]) -> None:
        # Once per event handed out, not per subscriber; an id's milliseconds
        # are its publish time (a later id in the same ms is a few us late).
        now = time.time()
        latency = self.stats.latency
        for subscribers, key, _ in batch:
            if subscribers:
                latency.observe(now - key[0] / 1000)

    def _subscribe_planned(self, channel: str, last_event_id: str | None) -> tuple[Subscription, ReplayPlan]:
        _validate_channel(channel)
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
                if not state.subscribers:
                    now = now_ms()
                    self._expire(state, now)
                    # Never published to, or (with max_age) nothing left to
                    # replay: nothing to keep. Without max_age history stays.
                    if state.last_key == self._start_key or (self.max_age is not None and not state.history):
                        self._free(subscription.channel, state, now)

    def history_of(self, channel: str) -> list[Entry]:
        with self._lock:
            state = self._channels.get(channel)
            return list(state.history) if state is not None else []

    def channel_counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(state.subscribers) for name, state in self._channels.items() if state.subscribers}


def _sweep_until_stopped(ref: weakref.ref[MemoryBroker], stop: Lock, done: Lock, interval: float) -> None:
    """The sweeper thread: holds only a weak reference, so a broker nobody
    uses any more is collected (and the thread ends at its next wake-up).
    Releases *done* as it ends."""
    broker = ref()
    if broker is not None:
        broker.sweeper_native_id = _native_id()
    del broker
    try:
        while not stop.acquire(True, interval):
            broker = ref()
            if broker is None:
                return
            try:
                broker.sweep()
            except Exception:  # never let the thread die silently: log, go on
                logger.exception("MemoryBroker sweep failed")
            del broker
    finally:
        done.release()
