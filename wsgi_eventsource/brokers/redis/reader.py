"""The reader half of :class:`RedisBroker`: one OS thread per process reads
every channel that has subscribers here with one ``XREAD BLOCK`` and hands
each batch to the subscribers' hubs (:func:`fan_out_batch`).

It must never die and never skip events silently:

- An entry it cannot read (an ``XADD`` by hand, without the fields ``p`` and
  ``b``) is skipped and logged, and counts as read: the next entry follows it.
- A key of another type under the prefix makes every multi-key ``XREAD`` fail
  (``WRONGTYPE``). The reader finds it (``TYPE``) and ends that channel alone:
  its subscribers get a ``stream-error`` event, JSON ``{"channel": ...,
  "reason": "wrong_type"}`` (``"error"`` for another error reply for that key
  alone), then their streams end; they reconnect, and a new subscribe
  answers :class:`BrokerUnavailable` while the key stays broken. The other
  channels are read on.
- If the entries it gets do not follow what it read last (the first one's
  ``p`` is not its position), events were lost in between; the channel's
  subscribers get a ``stream-reset`` first (see :func:`stream_reset_event`),
  with ``lastEventId`` the reader's position and reason ``"overrun"`` (more
  than ``history`` events were published while the reader was cut off or
  slow, and ``MAXLEN`` trimmed them) or ``"restarted"`` (the stream started
  over: a Redis restarted without persistence, a failover to a replica that
  lagged, the key deleted). A subscriber whose replay already reached past
  the gap drops it, as it drops every event at or before its floor.
- If the loop ever exits by an exception anyway, it is logged and restarted.

At interpreter exit the readers of this process are stopped, and waited for
(at most :data:`EXIT_WAIT` seconds), by an ``atexit`` hook, before Python
finalizes. Left running, a reader wakes from its ``XREAD`` while the main
thread finalizes; CPython before 3.14 then ends it with ``pthread_exit`` when
it asks for the GIL, which unwinds through the greenlet and gevent frames of
its hub, whose destructors free Python objects without the GIL. That is heap
corruption: a gunicorn worker holding ~12,500 streams (its finalization takes
over a second, the reader wakes every ``block`` s) died at exit with glibc's
"corrupted double-linked list" or a SIGSEGV in ``func_dealloc`` on the
reader's thread (CPython gh-87135).

With ``max_age``, keys expire (``2 * max_age`` after the last publish); the
reader keeps the keys of subscribed channels alive (``KEEP_ALIVE``, every
``min(max_age / 3, 10 s)`` but at most once a second: one pass over 50,000
keys takes ~90 ms of the reader's time and blocks Redis meanwhile), so that a stream's
last-generated-id survives a silence and the next event follows without a
false reset. History age is still enforced by ``MINID`` at publish and by
the replay's cutoff, both on Redis's clock.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import time
import weakref
from typing import TYPE_CHECKING, Any

import gevent
from gevent._hub_local import get_hub_if_exists
from gevent.monkey import get_original

from ...encoding import Event
from ..base import Subscription, end_subscriptions, fan_out_batch, parse_id, stream_reset_event
from .broken import find_broken_keys
from .cluster import hash_tag, partition_of
from .support import ReadClock, ReaderStats, Throttled, count_error

if TYPE_CHECKING:
    from _thread import LockType as Lock
    from collections.abc import Callable

    from ..base import BrokerStats

__all__ = ["EXIT_WAIT", "STREAM_ERROR", "Lane", "RedisReader"]

logger = logging.getLogger("wsgi_eventsource")

#: The event a channel's subscribers get before their stream is ended
#: because its Redis key cannot be read (see the module docstring).
STREAM_ERROR = "stream-error"

_start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
_sleep: Callable[[float], None] = get_original("time", "sleep")
_allocate_lock: Callable[[], Lock] = get_original("_thread", "allocate_lock")

#: The most seconds the exit hook waits for the readers of one broker to end
#: (one wakes within ``block`` seconds by itself; CLIENT UNBLOCK is faster).
EXIT_WAIT = 5.0

#: Brokers of this process that started a reader thread (see _stop_at_exit).
_with_readers: weakref.WeakSet[RedisReader] = weakref.WeakSet()

#: Entries one XREAD takes per channel.
_COUNT = 1000
#: Keys per KEEP_ALIVE call.
_KEEP_ALIVE_BATCH = 1000
#: Seconds per key between two reads of a changed key set (see _read_forever).
_REREAD_COST = 10e-6
#: Seconds per key that events gather between two reads that both return some.
_GATHER_COST = 1e-6


class Lane:
    """One reader thread's share of this process's channels: one partition of
    a cluster, or every channel on one Redis (lane 0). Guarded by the broker's lock."""

    __slots__ = (
        "changes", "client_id", "clock", "fresh", "idle", "index", "positions", "read_changes", "started",
        "waking",
    )  # fmt: skip

    def __init__(self, index: int) -> None:
        self.index = index
        #: channel -> the last id the reader saw (its XREAD position).
        self.positions: dict[str, str] = {}
        self.started = False
        #: The reader's connection id, for CLIENT UNBLOCK (None: not connected).
        self.client_id: int | None = None
        #: Channels added so far, and how many of them the reader's key set has:
        #: the reader is behind while read_changes < changes.
        self.changes = 0
        self.read_changes = 0
        #: True while one subscriber is making sure the reader catches up.
        self.waking = False
        #: On a cluster: channels added since its reader last took them (see .masters).
        self.fresh: set[str] = set()
        #: Held while its reader has nothing to read; released to wake it (a
        #: real lock: the reader is an OS thread, which then waits in the
        #: kernel instead of polling).
        self.idle = _allocate_lock()
        self.idle.acquire()
        #: When its reads began and returned: how far behind it is.
        self.clock = ReadClock()

    def wake(self) -> None:
        """Wake the reader if it waits for channels (from any thread or greenlet)."""
        with contextlib.suppress(RuntimeError):  # not held: it is awake already
            self.idle.release()


class _Loop:
    """The state of one reader thread's read loop."""

    def __init__(self, interval: float | None, block: float) -> None:
        self.client: Any = None
        self.backoff = 0.1
        self.interval = interval
        # With max_age, the keys' TTLs are refreshed at least every interval.
        self.block_ms = max(1, int((block if interval is None else min(block, interval)) * 1000))
        self.kept_alive_at = 0.0
        self.read_at = 0.0


class RedisReader:
    """The reader threads of :class:`RedisBroker` (a base class: the state is the broker's)."""

    # Set by RedisBroker.__init__ (and again after a fork).
    prefix: str
    block: float
    max_age: float | None
    stats: BrokerStats
    reader_stats: ReaderStats
    _redis: Any
    _lock: Lock
    _subscriptions: dict[str, set[Subscription]]
    _lanes: dict[int, Lane]
    _closed: bool
    _pid: int
    _throttled: Throttled
    _keep_alive_script: Any
    _partitions: int | None
    _errors: tuple[type[Exception], ...]

    # From RedisClients (after this class in RedisBroker's bases, so stubs
    # here would hide them): the URL to show, the readers' own clients.
    _shown_url: str
    _connect_reader: Callable[[], Any]
    _unblock: Callable[[Any, Lane], int]
    _ensure_client: Callable[[], Any]

    def _key(self, channel: str) -> str:
        if self._partitions is None:
            return self.prefix + channel
        return self.prefix + hash_tag(partition_of(channel, self._partitions)) + channel

    def _lane_of(self, channel: str) -> Lane:
        """The lane that reads *channel* (made if new; call with the lock held)."""
        index = 0 if self._partitions is None else partition_of(channel, self._partitions)
        lane = self._lanes.get(index)
        if lane is None:
            lane = self._lanes[index] = Lane(index)
        return lane

    def _positions_of(self, channel: str) -> dict[str, str]:
        """The positions of *channel*'s lane (call with the lock held)."""
        return self._lane_of(channel).positions

    def reader_lag(self) -> float | None:
        """Seconds the most lagging reader is behind (see :meth:`ReadClock.lag`); 0 with none."""
        with self._lock:
            clocks = [lane.clock for lane in self._lanes.values()]
        return max((clock.lag(self.block) for clock in clocks), default=0.0)

    @property
    def keep_alive_interval(self) -> float | None:
        """Seconds between two TTL refreshes of the subscribed keys (with ``max_age``)."""
        if self.max_age is None:
            return None
        return max(1.0, min(self.max_age / 3, 10.0))

    @property
    def _key_ttl_ms(self) -> int | None:
        """With ``max_age``, how long a key outlives its last publish: twice
        ``max_age``. Its entries are all too old to replay after ``max_age``,
        but its last id lets a client that saw the last event, and comes back
        within another ``max_age``, be told it missed nothing (no false
        ``stream-reset``). After that, an old id gets a reset."""
        return None if self.max_age is None else max(1, int(2 * self.max_age * 1000))

    @property
    def _keep_alive_ms(self) -> int | None:
        """The TTL the reader gives subscribed keys: at least the publish
        TTL, and three refresh intervals."""
        interval, ttl = self.keep_alive_interval, self._key_ttl_ms
        if interval is None or ttl is None:
            return None
        return max(ttl, int(3 * interval * 1000))

    # -- the threads and their supervisor ---------------------------------------------------

    def _start_reader(self, lane: Lane) -> None:
        with self._lock:
            if lane.started:
                return
            lane.started = True
            _with_readers.add(self)
        _start_new_thread(self._supervise, (self._pid, lane))

    def _supervise(self, pid: int, lane: Lane) -> None:
        """A reader thread: run the read loop, and again whenever it fails."""
        delay = 0.1
        try:
            while not self._closed and self._pid == pid:
                started = time.monotonic()
                try:
                    self._read_forever(pid, lane)
                except Exception:
                    if time.monotonic() - started > 60:
                        delay = 0.1  # a failure long after the last one starts over
                    self.reader_stats.restarts += 1
                    logger.exception("the Redis reader failed; restarting it in %.1f s", delay)
                    _sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            # Its hub (made by its gevent sockets under monkey-patching)
            # goes with it: nothing of gevent is left running on this thread.
            hub = get_hub_if_exists()
            if hub is not None:
                with contextlib.suppress(Exception):
                    hub.destroy(destroy_loop=True)
            with self._lock:
                if self._pid == pid:
                    lane.started = False  # never True for a reader that is gone

    def _stop_readers(self, timeout: float) -> bool:
        """Stop this process's reader threads, and wait up to *timeout*
        seconds until they are gone; True if they all are (see the module
        docstring: for the exit hook, which runs before Python finalizes)."""
        pid = os.getpid()
        with self._lock:
            if self._pid != pid:
                return True  # a forked child: the parent's readers are not here
            self._closed = True
            threads = self._reader_threads()
        if not threads:
            return True
        # The blocked reads return at once (else within `block` seconds).
        with contextlib.suppress(Exception):
            self._wake_to_stop(self._ensure_client(), threads)
        deadline = time.monotonic() + timeout
        while any(self._alive(thread) for thread in threads):
            if time.monotonic() > deadline:
                return False
            _sleep(0.005)  # a real sleep: it releases the GIL to the readers
        return True

    def _reader_threads(self) -> list[Any]:
        """What stands for each running reader thread (lock held): its lane."""
        return [lane for lane in self._lanes.values() if lane.started]

    def _wake_to_stop(self, client: Any, threads: list[Any]) -> None:
        for lane in threads:
            lane.wake()
            self._unblock(client, lane)

    def _alive(self, thread: Any) -> bool:
        return bool(thread.started)

    def _added_channel(self, lane: Lane, channel: str) -> bool:
        """Note that *lane* has a new *channel* (lock held); True if the caller
        must then make sure its reader catches up (:meth:`_wake_reader`): one
        subscriber does it for every channel added meanwhile, so a storm of N
        new channels costs a few reads of the key set, not N."""
        lane.changes += 1
        lane.wake()
        if lane.waking:
            return False
        lane.waking = True
        return True

    def _wake_reader(self, client: Any, lane: Lane) -> None:
        """Until *lane*'s reader has read its key set with every channel added
        so far: CLIENT UNBLOCK its XREAD (so that it returns at once and reads
        again with them). An UNBLOCK that finds it not blocked (it is between
        two reads) is tried again shortly: its next read may have started
        from an older key set. Gives up after ``block`` seconds (the reader
        reads its key set again at least that often)."""
        deadline = time.monotonic() + self.block
        done = False
        try:
            while True:
                with self._lock:
                    # Checked and cleared under the lock that _added_channel
                    # takes: a channel added after this wakes by itself.
                    if lane.read_changes >= lane.changes or lane.client_id is None or time.monotonic() > deadline:
                        lane.waking, done = False, True  # caught up, reconnecting (it reads first), or late
                        return
                with contextlib.suppress(*self._errors):
                    self._unblock(client, lane)
                gevent.sleep(0.002)
        finally:
            if not done:  # killed while waiting: let the next subscriber wake it
                with self._lock:
                    lane.waking = False

    # -- the loop ---------------------------------------------------------------------------

    def _read_forever(self, pid: int, lane: Lane) -> None:
        loop = _Loop(self.keep_alive_interval, self.block)
        try:
            while not self._closed and self._pid == pid:
                with self._lock:
                    behind = lane.read_changes < lane.changes
                    size = len(lane.positions)
                if behind and loop.client is not None:
                    # Batch the changes of a storm: reading the key set again
                    # costs Redis O(keys), so at most one such read per
                    # _REREAD_COST seconds per key (10,000 keys: every 0.1 s).
                    _sleep(max(0.0, min(size * _REREAD_COST, 0.2) - (time.monotonic() - loop.read_at)))
                with self._lock:
                    streams = {self._key(c): position for c, position in lane.positions.items()}
                    lane.read_changes = lane.changes
                if not streams:
                    lane.clock.returned()  # nothing to read: up to date
                    lane.idle.acquire(timeout=self.block)  # until a channel is added (or stop)
                    continue
                try:
                    if loop.client is None:
                        self._reconnect(loop, lane)
                        continue  # read the key set again: it may have grown while connecting
                    if loop.interval is not None and time.monotonic() - loop.kept_alive_at >= loop.interval:
                        loop.kept_alive_at = time.monotonic()
                        self._keep_alive(loop.client, list(streams))
                    loop.read_at = time.monotonic()
                    response = lane.clock.timed(loop.client.xread, streams, count=_COUNT, block=loop.block_ms)
                except self._redis.RedisError as exc:
                    self._after_failure(exc, loop, lane, streams)
                    continue
                if response:
                    self._dispatch(response, loop.client, lane)
                    # Each read costs this process O(keys) of CPU (the command
                    # names every key) while it holds the GIL: when events
                    # come all the time, let them gather a little (10,000
                    # keys: 10 ms), or a busy reader starves the publishers
                    # and streams of this process.
                    if len(streams) >= 1000:
                        _sleep(min(len(streams) * _GATHER_COST, 0.02))
        finally:
            self._drop_reader_client(loop, lane)

    def _reconnect(self, loop: _Loop, lane: Lane) -> None:
        loop.client = self._connect_reader()
        client_id = loop.client.client_id()
        with self._lock:
            lane.client_id = client_id
        if loop.backoff > 0.1:
            logger.warning("Redis at %s is reachable again; resuming", self._shown_url)
        loop.backoff, loop.kept_alive_at = 0.1, 0.0

    def _after_failure(self, exc: Exception, loop: _Loop, lane: Lane, streams: dict[str, str]) -> None:
        """What the reader does after an XREAD (or a reconnect) failed; the
        positions stay as they are, so it resumes from its last ids."""
        redis, exceptions = self._redis, self._redis.exceptions
        count_error(self.stats, redis, exc)
        if isinstance(exc, exceptions.MovedError):
            # (A cluster's reader is .masters'.) A redis:// URL that names a cluster node.
            self._throttled.warning(
                "cluster", "Redis at %s is a cluster node (%s): use a redis+cluster:// URL", self._shown_url, exc
            )
            self._drop_reader_client(loop, lane)
            loop.backoff = _wait(loop.backoff)
        elif isinstance(exc, (exceptions.AskError, exceptions.TryAgainError, exceptions.ClusterDownError)):
            self._throttled.warning("cluster", "the Redis reader waits for the cluster (%s)", exc)
            self._drop_reader_client(loop, lane)
            loop.backoff = _wait(loop.backoff)
        elif isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            self._drop_reader_client(loop, lane)
            if loop.backoff == 0.1:
                logger.warning("Redis at %s cannot be reached (%s); retrying", self._shown_url, exc)
            loop.backoff = _wait(loop.backoff)
        elif isinstance(exc, redis.ResponseError) and loop.client is not None:
            # An error reply for the whole XREAD: find the keys that cause
            # it and end those channels; wait only if none is found.
            if not self._end_broken_channels(loop.client, streams):
                self._throttled.warning("xread", "the Redis reader got an error reply (%s); retrying", exc)
                loop.backoff = _wait(loop.backoff)
        else:
            raise exc

    def _drop_reader_client(self, loop: _Loop, lane: Lane) -> None:
        """Close the reader's client, if it has one (the next round reconnects)."""
        with self._lock:
            lane.client_id = None
        client, loop.client = loop.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _keep_alive(self, client: Any, keys: list[str]) -> None:
        ttl = self._keep_alive_ms
        try:
            for start in range(0, len(keys), _KEEP_ALIVE_BATCH):
                self._keep_alive_script(keys=keys[start : start + _KEEP_ALIVE_BATCH], args=[ttl], client=client)
        except self._redis.ResponseError as exc:  # OOM, say: XREAD still works, and it is retried
            self._throttled.warning("keep-alive", "the Redis reader could not refresh key TTLs (%s)", exc)

    def _dispatch(self, response: list[Any], client: Any, lane: Lane) -> None:
        """Hand one XREAD answer to the subscribers, in order: per channel, a
        ``stream-reset`` if the entries do not follow the reader's position,
        then one shared wire per entry. (*client*, the reader's, checks a
        foreign first entry: see :meth:`_position_kept`.)"""
        batch: list[tuple[list[Subscription], tuple[int, int], bytes]] = []
        moved: list[tuple[str, str, str]] = []
        # The key is the prefix, the lane's hash tag (on a cluster), the channel.
        prefix = len(self.prefix) + (0 if self._partitions is None else len(hash_tag(lane.index)))
        positions = lane.positions
        deliveries = 0
        for raw_key, raw_entries in response:
            channel = (raw_key.decode() if isinstance(raw_key, bytes) else raw_key)[prefix:]
            with self._lock:
                position = positions.get(channel)
                subs = list(self._subscriptions.get(channel, ()))
            if position is None or not raw_entries:
                continue  # nobody here reads it any more
            after: tuple[int, int] | None = parse_id(position) or (0, 0)
            expected = position.encode("ascii")
            first = False
            for raw_id, fields in raw_entries:
                key = parse_id(raw_id.decode("ascii"))
                if key is None:
                    continue  # Redis makes none such
                if after is not None:
                    if key <= after:
                        continue  # read before (a resubscribe moved the position on meanwhile)
                    after = None  # entries come in order: no comparisons from now on
                    first = True
                    moved.append((channel, position, raw_entries[-1][0].decode("ascii")))
                prev, body = fields.get(b"p"), fields.get(b"b")
                foreign = prev is None or body is None or not body.endswith(b"\n\n")
                if first and foreign and not self._position_kept(client, channel, position):
                    # A foreign entry names no predecessor, so the chain
                    # cannot show a gap right before it: the position itself
                    # tells. Trimming removes the oldest entries first, so
                    # if the reader's last entry is still there nothing after
                    # it was trimmed; if it is gone, assume the worst.
                    self.reader_stats.resets += 1
                    wire = stream_reset_event(channel, position, "overrun", raw_id.decode("ascii"))
                    batch.append((subs, key, wire))
                first = False
                if not foreign and prev != expected:
                    reset = self._reset(channel, expected, prev, key)
                    if reset is None:
                        foreign = True  # its "p" is no id: not ours either
                    else:
                        batch.append((subs, *reset))
                if foreign:
                    self._skipped_foreign(channel, raw_id)
                    expected = raw_id
                    continue
                batch.append((subs, key, b"id: " + raw_id + b"\n" + body))
                expected = raw_id
                deliveries += len(subs)
                # Once per event, not per subscriber; its id's ms are Redis's clock at XADD.
                self.stats.latency.observe(time.time() - key[0] / 1000)
        with self._lock:
            # Under the lock: on a cluster several reader threads count here.
            self.stats.delivered += deliveries
            for channel, position, last in moved:
                if positions.get(channel) == position:
                    positions[channel] = last
        fan_out_batch(batch)

    def _skipped_foreign(self, channel: str, raw_id: bytes) -> None:
        self.reader_stats.skipped += 1
        self._throttled.warning(
            "foreign", "channel %r: skipped entry %s, which has no event (not published by us)",
            channel, raw_id.decode("ascii"),
        )  # fmt: skip

    def _position_kept(self, client: Any, channel: str, position: str) -> bool:
        """True if nothing after *position* was trimmed from the channel's
        stream: the entry at *position* is still there, or, for a stream that
        did not exist when its subscriber came (position ``0-0``), nothing
        was ever removed from it (Redis 7: ``entries-added`` is its length)."""
        key = parse_id(position)
        if client is None or key is None:
            return False
        try:
            if key != (0, 0):
                return bool(client.xrange(self._key(channel), min=position, max=position, count=1))
            info = client.xinfo_stream(self._key(channel))
        except self._redis.RedisError:
            return False  # cannot tell: a reset is safe, a silent gap is not
        return bool(info.get("entries-added") == info.get("length"))

    def _reset(
        self, channel: str, expected: bytes, prev: bytes, key: tuple[int, int]
    ) -> tuple[tuple[int, int], bytes] | None:
        """The key and wire of a live ``stream-reset``: entries between
        *expected* (what the reader read last) and *prev* are gone. ``None``
        if *prev* is not an id (the entry is not the broker's)."""
        position, base = expected.decode("ascii"), prev.decode("ascii", "replace")
        base_key = parse_id(base)
        if base_key is None:
            return None
        overrun = base_key > (parse_id(position) or (0, 0))
        self.reader_stats.resets += 1
        self._throttled.warning(
            "reset", "channel %r: events after %s were lost before the reader read them (%s); sending stream-reset",
            channel, position, "trimmed" if overrun else "the stream started over",
        )  # fmt: skip
        wire = stream_reset_event(channel, position, "overrun" if overrun else "restarted", base)
        # Keyed so that a subscriber whose replay reached *base* (it has
        # everything up to the gap) drops it. After a restart every id
        # before this entry is meaningless: all but those that replayed it get it.
        return (base_key if overrun else key), wire

    # -- broken keys -------------------------------------------------------------------------------

    def _end_broken_channels(self, client: Any, streams: dict[str, str]) -> bool:
        """Find the keys an XREAD of *streams* fails on; end their channels.
        False if there is no such key (the error is not about one key)."""
        try:
            return self._find_and_end_broken(client, streams)
        except self._redis.RedisError:
            return False  # the next XREAD tells what is wrong

    def _find_and_end_broken(self, client: Any, streams: dict[str, str]) -> bool:
        broken = find_broken_keys(client, streams)
        for key, (reason, why) in broken.items():
            self._end_channel(self._channel_of_key(key), reason, why)
        return bool(broken)

    def _channel_of_key(self, key: str) -> str:
        """The channel whose key is *key* (see :meth:`_key`)."""
        rest = key[len(self.prefix) :]
        return rest if self._partitions is None else rest.partition("}")[2]

    def _end_channel(self, channel: str, reason: str, why: str) -> None:
        with self._lock:
            subs = self._subscriptions.pop(channel, set())
            self._positions_of(channel).pop(channel, None)
        self.reader_stats.ended += 1
        self._throttled.warning(
            f"end:{channel}", "channel %r cannot be read: key %r %s; ending its %d streams with stream-error",
            channel, self._key(channel), why, len(subs),
        )  # fmt: skip
        data = json.dumps({"channel": channel, "reason": reason})
        end_subscriptions(subs, Event(data, event=STREAM_ERROR).encoded)


def _wait(backoff: float) -> float:
    """Sleep about *backoff* seconds (jittered); return the next, longer one."""
    _sleep(backoff * (0.5 + random.random()))
    return min(backoff * 2, 5.0)


@atexit.register
def _stop_at_exit() -> None:
    # atexit hooks run while the interpreter is whole (and greenlet and
    # gevent still work), after the non-daemon threads were joined and
    # before finalization: the last moment a thread can still end cleanly.
    for reader in list(_with_readers):
        wait = min(EXIT_WAIT, reader.block + 1)
        if not reader._stop_readers(wait):
            logger.warning("the Redis reader did not stop within %.1f s of exit", wait)
