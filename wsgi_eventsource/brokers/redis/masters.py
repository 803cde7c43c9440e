"""The reader of a Redis Cluster: one thread per master, woken by doorbells.

On one Redis the reader blocks in one ``XREAD`` over every channel. On a
cluster a command names keys of one slot only (``CROSSSLOT``), and each
partition is a slot of its own: blocking there would take a thread and a
connection per partition. Instead each partition has a *doorbell*, a shard
channel (``SPUBLISH``, Redis 7) in the partition's slot, named like its keys
without a channel (:func:`bell_of`). The publish script rings it with the
channel's name in the same atomic step that adds the entry. Each master's
reader thread listens to the doorbells of the partitions that master holds,
all on one connection (``SSUBSCRIBE``), and reads, on a second connection and
without blocking, only the channels that rang: a read costs what was
published, not how many channels are subscribed.

No event depends on a ring arriving:

- A partition *joins* a reader (the reader connects, or the partition moved
  to it): its doorbell is subscribed first, then every channel of it is read
  from its position. Rings lost before that are covered by the read.
- A new channel: its subscriber sets its position, then rings the doorbell
  with an empty name ("read the new channels"), once for all the channels
  added until the reader reads them (a storm of N new channels costs O(N)).
- A connection lost (rings sent meanwhile are lost with it): every partition
  joins again on the new one. A master that hangs (a host gone, a network
  partition) closes nothing, and an idle subscribe-mode connection never
  times out: after ``block`` seconds of silence the doorbell connection
  sends ``PING``, and no answer within ``block + 5`` s counts as lost.
- A reshard: Redis sends ``sunsubscribe`` for the slot that leaves, reads get
  ``ASK`` while it moves, then ``MOVED``. The partition is read by polling
  (every 0.1 s, longer while it fails) until a read succeeds where it is
  subscribed, or ``MOVED`` names its new master, whose reader takes it over.
- A failover: the connection breaks; the master of every partition is asked
  again (one ``CLUSTER SLOTS``), and partitions follow theirs to its reader.

Everything else (positions, gaps, ``stream-reset``, foreign entries, broken
keys, ``max_age`` keep-alive) is the one-Redis reader's (:mod:`.reader`).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from gevent._hub_local import get_hub_if_exists

from .cluster import hash_tag, slot_of
from .reader import _COUNT, Lane, RedisReader, _sleep, _start_new_thread, _with_readers
from .support import ReadClock, count_error

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["READER_NAME", "ClusterReader", "Master", "bell_of"]

logger = logging.getLogger("wsgi_eventsource")

#: The name of the readers' connections (``CLIENT LIST`` shows it).
READER_NAME = "wsgi-eventsource-reader"

#: Seconds between two reads of a partition whose slot is moving (at first).
_POLL = 0.1


def bell_of(prefix: str, partition: int) -> str:
    """The doorbell (a shard channel) of *partition*: in its slot, and no key."""
    return prefix + hash_tag(partition)


class Master:
    """One master of the cluster as this process reads it: the partitions
    (lanes) its reader thread reads. Guarded by the broker's lock."""

    __slots__ = ("address", "alive", "backoff", "clock", "joining", "lanes")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.lanes: dict[int, Lane] = {}
        #: Lanes to subscribe and read whole (new here, or after a reconnect).
        self.joining: set[int] = set()
        #: True while its thread runs (set by whoever starts it).
        self.alive = False
        #: When its waits began and returned: how far behind it is. Up to
        #: date when made: one that never reads its master falls behind.
        self.clock = ReadClock()
        self.clock.returned()
        #: Seconds to wait before reconnecting after a failure (its thread's):
        #: doubles while it fails, back to the first once it reads again.
        self.backoff = 0.1


class _Bells:
    """The doorbell connection of one master's reader: a plain connection
    in subscribe mode (not redis-py's PubSub, which reconnects and
    resubscribes by itself: a ring lost that way would go unnoticed)."""

    def __init__(self, client: Any) -> None:
        self.connection = client.connection_pool.make_connection()
        self.connection.connect()
        # An idle subscribe-mode connection never times out: a master that
        # hangs (a host gone, a partition) would be waited on for ever.
        #: When a message last came; when a PING no message followed yet was sent.
        self.heard_at = time.monotonic()
        self.pinged_at: float | None = None

    def send(self, *command: str) -> None:
        self.connection.send_command(*command)

    def next(self, timeout: float) -> list[Any] | None:
        """The next message within *timeout* seconds, else ``None``; an
        error reply (to an ``SSUBSCRIBE``) is raised."""
        if not self.connection.can_read(timeout=timeout):
            return None
        # push_request: over RESP3 (redis-py may choose it) a message is a
        # push, which read_response would otherwise hand to a logger and skip.
        message = self.connection.read_response(push_request=True)
        self.heard_at, self.pinged_at = time.monotonic(), None
        return message if isinstance(message, list) else None

    def answers(self, idle: float, timeout: float) -> bool:
        """PING after *idle* seconds without a message (its ``pong`` is one);
        False once a PING is *timeout* seconds without one."""
        now = time.monotonic()
        if self.pinged_at is not None:
            return now - self.pinged_at <= timeout
        if now - self.heard_at >= idle:
            self.send("PING")
            self.pinged_at = now
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.disconnect()


class ClusterReader(RedisReader):
    """The readers of :class:`RedisBroker` on a cluster (see the module
    docstring); on one Redis and on Sentinel, :class:`RedisReader`'s."""

    _masters: dict[tuple[str, int], Master]
    _node_client: Any
    _reader_options: Any
    _master_of: Any
    _masters_of: Any

    # -- what subscribers call ------------------------------------------------------------------

    def _start_reader(self, lane: Lane) -> None:
        if self._partitions is None:
            super()._start_reader(lane)
            return
        with self._lock:
            if lane.started:
                return
            lane.started = True
        try:
            address = self._address_of(lane)
        except BaseException:
            with self._lock:
                lane.started = False  # else no later subscriber would start its reader
            raise
        self._move_lane(lane, address)

    def _added_channel(self, lane: Lane, channel: str) -> bool:
        if self._partitions is None:
            return super()._added_channel(lane, channel)
        lane.fresh.add(channel)
        return len(lane.fresh) == 1  # the first since the reader took them: ring once

    def _wake_reader(self, client: Any, lane: Lane) -> None:
        if self._partitions is None:
            super()._wake_reader(client, lane)
            return
        self._ring(client, lane.index)
        # A lane new to a running reader: its doorbell is not subscribed
        # until that reader wakes (within `block`), so ring one it has.
        with self._lock:
            master = next((m for m in self._masters.values() if lane.index in m.joining), None)
            listened = None if master is None else _listened(master)
        if listened is not None:
            self._ring(client, listened)

    def _ring(self, client: Any, index: int) -> None:
        """Ring *index*'s doorbell with no name: "read the new channels" (or "stop")."""
        bell = bell_of(self.prefix, index)
        # If this fails the reader reads them at its next wake-up (within `block`).
        with contextlib.suppress(*self._errors):
            node = client.get_node_from_key(bell)
            if node is not None and node.redis_connection is not None:
                node.redis_connection.execute_command("SPUBLISH", bell, "")

    def reader_lag(self) -> float | None:
        if self._partitions is None:
            return super().reader_lag()
        with self._lock:
            clocks = [master.clock for master in self._masters.values()]
        return max((clock.lag(self.block) for clock in clocks), default=0.0)

    def _reader_threads(self) -> list[Any]:
        if self._partitions is None:
            return super()._reader_threads()
        return [master for master in self._masters.values() if master.alive]

    def _wake_to_stop(self, client: Any, threads: list[Any]) -> None:
        if self._partitions is None:
            super()._wake_to_stop(client, threads)
            return
        for master in threads:
            with self._lock:
                lanes = list(master.lanes)
            if lanes:
                self._ring(client, lanes[0])

    def _alive(self, thread: Any) -> bool:
        return bool(thread.alive) if isinstance(thread, Master) else super()._alive(thread)

    # -- where each partition is read ---------------------------------------------------------------

    def _address_of(self, lane: Lane) -> tuple[str, int]:
        """The master of *lane*'s slot as the publish client knows it (no
        round trip); a wrong guess is corrected by the MOVED it gets."""
        with contextlib.suppress(Exception):
            node = self._ensure_client().nodes_manager.get_node_from_slot(slot_of(lane.index))
            return (str(node.host), int(node.port))
        return self._master_of(slot_of(lane.index))  # type: ignore[no-any-return]

    def _move_lane(self, lane: Lane, address: tuple[str, int]) -> None:
        """Have *address*'s reader read *lane* (it subscribes and reads it whole first)."""
        start = False
        with self._lock:
            for old in self._masters.values():
                if old.lanes.pop(lane.index, None) is not None:
                    old.joining.discard(lane.index)
            master = self._masters.get(address)
            if master is None:
                master = self._masters[address] = Master(address)
            master.lanes[lane.index] = lane
            master.joining.add(lane.index)
            if not master.alive:
                master.alive = start = True
                _with_readers.add(self)
        if start:
            _start_new_thread(self._supervise_master, (self._pid, master))

    def _relocate(self, master: Master) -> None:
        """After *master*'s connection failed: ask where each of its lanes
        is now (a failover promoted a replica), and send it there."""
        with self._lock:
            lanes = list(master.lanes.values())
        if not lanes:
            return
        where = self._masters_of({slot_of(lane.index) for lane in lanes})  # one question for them all
        for lane in lanes:
            address = where[slot_of(lane.index)]
            if address != master.address:
                self._move_lane(lane, address)
        for address in set(where.values()) - {master.address}:
            self._wake_master(address)

    def _wake_master(self, address: tuple[str, int]) -> None:
        """Ring a doorbell that *address*'s running reader listens to, so
        that it takes the lanes just handed to it now, not when its wait
        for rings ends (``block``). For another master's thread, which has
        no cluster client: one short connection, once per handover."""
        with self._lock:
            master = self._masters.get(address)
            listened = None if master is None else _listened(master)
        if listened is None:
            return  # none, or a reader just started: it joins its lanes first
        client = self._node_client(address, socket_connect_timeout=2, socket_timeout=2)
        try:
            with contextlib.suppress(*self._errors):  # else it takes them within `block`
                client.execute_command("SPUBLISH", bell_of(self.prefix, listened), "")
        finally:
            client.close()

    # -- the threads --------------------------------------------------------------------------------

    def _supervise_master(self, pid: int, master: Master) -> None:
        """A master's reader thread: run its loop, and again whenever it fails;
        end when it has no lanes left (they all moved to other masters)."""
        try:
            while not self._closed and self._pid == pid:
                with self._lock:
                    if not master.lanes:
                        master.alive = False
                        if self._masters.get(master.address) is master:
                            del self._masters[master.address]
                        return
                try:
                    self._read_master(pid, master)
                    master.backoff = 0.1
                except self._redis.RedisError as exc:
                    count_error(self.stats, self._redis, exc)
                    if master.backoff == 0.1:
                        logger.warning("Redis cluster master %s:%d cannot be read (%s); retrying", *master.address, exc)
                    self._back_off(master)
                    with contextlib.suppress(*self._errors):
                        if not self._closed:
                            self._relocate(master)
                except Exception:
                    self.reader_stats.restarts += 1
                    logger.exception("the Redis reader failed; restarting it in %.1f s", master.backoff)
                    self._back_off(master)
        finally:
            hub = get_hub_if_exists()  # as RedisReader._supervise does
            if hub is not None:
                with contextlib.suppress(Exception):
                    hub.destroy(destroy_loop=True)
            with self._lock:
                master.alive = False
                if self._pid == pid:
                    for lane in master.lanes.values():
                        lane.started = False

    def _back_off(self, master: Master) -> None:
        """Wait about ``master.backoff`` seconds (jittered), double it; end
        the wait early if the broker closes (an exit hook waits for the
        thread only ``block + 1`` s, and a thread left running at
        finalization crashes the process: see .reader)."""
        until = time.monotonic() + master.backoff * (0.5 + random.random())
        while not self._closed and (left := until - time.monotonic()) > 0:
            _sleep(min(left, 0.05))
        master.backoff = min(master.backoff * 2, 5.0)

    def _read_master(self, pid: int, master: Master) -> None:
        """Read *master*'s lanes until its connection fails (raised) or it has none."""
        client = self._node_client(master.address, **self._reader_options(), client_name=READER_NAME)
        bells = None
        try:
            bells = _Bells(client)
            with self._lock:
                master.joining = set(master.lanes)
            loop = _MasterLoop(self.keep_alive_interval, self.block)
            while not self._closed and self._pid == pid:
                with self._lock:
                    if not master.lanes:
                        return
                    joining, master.joining = master.joining, set()
                if joining:
                    self._join(bells, client, master, loop, joining)
                self._read_due(client, master, loop)
                if loop.interval is not None and time.monotonic() - loop.kept_alive_at >= loop.interval:
                    loop.kept_alive_at = time.monotonic()
                    for lane in self._lanes_of(master):
                        with self._lock:
                            keys = [self._key(channel) for channel in lane.positions]
                        if keys:
                            self._keep_alive(client, keys)
                self._wait_for_rings(bells, master, loop)
                if master.backoff > 0.1:  # connected, subscribed and read: the next failure is a first one
                    logger.warning("Redis cluster master %s:%d is read again; resuming", *master.address)
                    master.backoff = 0.1
        finally:
            if bells is not None:
                bells.close()
            with contextlib.suppress(Exception):
                client.close()

    def _lanes_of(self, master: Master) -> list[Lane]:
        with self._lock:
            return list(master.lanes.values())

    def _join(self, bells: _Bells, client: Any, master: Master, loop: _MasterLoop, joining: set[int]) -> None:
        """Subscribe the doorbells of *joining*, then read those lanes whole."""
        order = sorted(joining)
        for index in order:
            bells.send("SSUBSCRIBE", bell_of(self.prefix, index))
        # Redis answers the SSUBSCRIBEs in order (rings may come in between).
        waiting = list(order)
        exceptions = self._redis.exceptions
        deadline = time.monotonic() + self.block + 5
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._redis.TimeoutError(f"no answer to SSUBSCRIBE from {master.address[0]}:{master.address[1]}")
            try:
                message = bells.next(left)
            except exceptions.MovedError as exc:
                self._moved(master, waiting.pop(0), (exc.host, exc.port))
                continue
            except (exceptions.AskError, exceptions.TryAgainError, exceptions.ClusterDownError):
                loop.poll(waiting.pop(0))  # moving: read by polling until MOVED says where to
                continue
            if message is None:
                continue
            kind, rang = _text(message[0]), self._index_of_bell(_text(message[1]))
            if kind == "ssubscribe" and rang == waiting[0]:
                loop.subscribed.add(waiting.pop(0))
            else:
                self._heard(loop, kind, rang, message)
        for index in joining:
            if index in loop.subscribed:
                loop.whole.add(index)

    def _wait_for_rings(self, bells: _Bells, master: Master, loop: _MasterLoop) -> None:
        """Wait for rings (at most ``block`` seconds, less while polling),
        then take every ring that came meanwhile."""
        timeout = loop.timeout(self.block)
        if timeout > 0 and not loop.work():
            # A wait on a master that has left a PING unanswered for `block`
            # is no sign of being up to date (it may hang): reader_lag grows.
            heard = bells.pinged_at is None or time.monotonic() - bells.pinged_at < self.block
            if heard:
                master.clock.read_began = time.monotonic()
            try:
                message = bells.next(timeout)
            finally:
                master.clock.read_began = 0.0
            while message is not None:
                self._heard(loop, _text(message[0]), self._index_of_bell(_text(message[1])), message)
                message = bells.next(0)
            # (Checked only after a wait, which takes the pong: a loop busy
            # reading takes no message, and an XREAD has its socket timeout.)
            if not bells.answers(self.block, self.block + 5):
                host, port = master.address
                raise self._redis.TimeoutError(f"no answer to PING from {host}:{port} within {self.block + 5:g} s")
            if not heard and bells.pinged_at is not None:
                return
        master.clock.returned()

    def _heard(self, loop: _MasterLoop, kind: str, index: int | None, message: list[Any]) -> None:
        if index is None:
            return
        if kind == "smessage":
            name = _text(message[2])
            if name:
                loop.rung.setdefault(index, set()).add(name)
            else:
                loop.fresh.add(index)
        elif kind == "sunsubscribe":
            # Its slot left this master (a reshard): poll it until MOVED says where to.
            loop.subscribed.discard(index)
            loop.poll(index)

    def _read_due(self, client: Any, master: Master, loop: _MasterLoop) -> None:
        """Read what is due: lanes whole (joined, polled), new channels, rung channels."""
        with self._lock:
            lanes = dict(master.lanes)
        loop.forget_all_but(lanes)
        loop.fresh.clear()  # every lane's new channels are read below
        now = time.monotonic()
        whole = set(loop.whole) | {i for i, due in loop.polling.items() if due <= now}
        loop.whole.clear()
        for index, lane in lanes.items():
            with self._lock:
                fresh, lane.fresh = lane.fresh, set()
            channels: set[str] | None
            if index in whole:
                channels = None
            else:
                channels = fresh | loop.rung.pop(index, set()) | loop.more.pop(index, set())
                if not channels:
                    continue
            self._read_lane(client, master, loop, lane, channels)

    def _read_lane(
        self, client: Any, master: Master, loop: _MasterLoop, lane: Lane, channels: Iterable[str] | None
    ) -> None:
        """One XREAD (no BLOCK) of *channels* of *lane* (all of them for None)."""
        with self._lock:
            names = lane.positions if channels is None else channels
            streams = {self._key(c): lane.positions[c] for c in names if c in lane.positions}
        if not streams:
            loop.polling.pop(lane.index, None)
            return
        exceptions = self._redis.exceptions
        try:
            response = client.xread(streams, count=_COUNT)
        except exceptions.MovedError as exc:
            count_error(self.stats, self._redis, exc)
            self._moved(master, lane.index, (exc.host, exc.port))
            return
        except (exceptions.AskError, exceptions.TryAgainError, exceptions.ClusterDownError) as exc:
            count_error(self.stats, self._redis, exc)
            self._throttled.warning("cluster", "the Redis reader waits for the cluster (%s)", exc)
            loop.poll(lane.index, failed=True)
            return
        except (self._redis.ConnectionError, self._redis.TimeoutError):
            raise
        except self._redis.ResponseError as exc:
            count_error(self.stats, self._redis, exc)
            if not self._end_broken_channels(client, streams):
                self._throttled.warning("xread", "the Redis reader got an error reply (%s); retrying", exc)
                loop.poll(lane.index, failed=True)
            return
        if lane.index in loop.subscribed:
            loop.polling.pop(lane.index, None)  # read where it rings: settled
        else:
            # Read here, but its doorbell is not (a move that was undone, or
            # not yet done): subscribe it again, polling meanwhile.
            loop.poll(lane.index)
            with self._lock:
                if lane.index in master.lanes:
                    master.joining.add(lane.index)
        if response:
            self._dispatch(response, client, lane)
            for raw_key, entries in response:
                if len(entries) >= _COUNT:  # maybe more: read it again at once
                    key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                    loop.more.setdefault(lane.index, set()).add(self._channel_of_key(key))

    def _moved(self, master: Master, index: int, address: tuple[str, int]) -> None:
        """MOVED: *index*'s slot is served by *address* now; its reader takes the lane over."""
        with self._lock:
            lane = master.lanes.get(index)
        if lane is None:
            return
        if address == master.address:
            return
        self._move_lane(lane, address)
        self._wake_master(address)

    def _lane_of_slot(self, indexes: Iterable[int], slot: int) -> int | None:
        return next((index for index in indexes if slot_of(index) == slot), None)

    def _index_of_bell(self, name: str) -> int | None:
        """The partition whose doorbell is *name* (None for another channel)."""
        rest = name[len(self.prefix) :]
        if not (name.startswith(self.prefix) and rest.startswith("{p") and rest.endswith("}")):
            return None
        digits = rest[2:-1]
        return int(digits) if digits.isdigit() else None


class _MasterLoop:
    """The state of one master reader's loop (its thread's alone)."""

    def __init__(self, interval: float | None, block: float) -> None:
        #: Lanes whose doorbell this connection has.
        self.subscribed: set[int] = set()
        #: Lanes to read whole next.
        self.whole: set[int] = set()
        #: Lanes read by polling: when next, and the current interval.
        self.polling: dict[int, float] = {}
        self.intervals: dict[int, float] = {}
        #: Channels rung by name, per lane; lanes rung with no name (new channels).
        self.rung: dict[int, set[str]] = {}
        self.fresh: set[int] = set()
        #: Channels whose read returned a full COUNT: read again at once.
        self.more: dict[int, set[str]] = {}
        self.interval = interval
        # With max_age, the keys' TTLs are refreshed at least every interval.
        self.block = block if interval is None else min(block, interval)
        self.kept_alive_at = 0.0

    def poll(self, index: int, *, failed: bool = False) -> None:
        """Read *index* whole again soon: at _POLL, doubling (to 5 s) while it fails."""
        interval = min(self.intervals.get(index, _POLL / 2) * 2, 5.0) if failed else _POLL
        self.intervals[index] = interval
        self.polling[index] = time.monotonic() + interval

    def forget_all_but(self, lanes: Iterable[int]) -> None:
        """Drop what is noted of lanes that moved to another master (a due
        poll of one would make every wait 0: a busy loop)."""
        keep = set(lanes)
        for noted in (self.polling, self.intervals, self.rung, self.more):
            for index in [i for i in noted if i not in keep]:
                del noted[index]
        self.subscribed &= keep
        self.whole &= keep

    def work(self) -> bool:
        """True if something is to be read now."""
        return bool(self.whole or self.rung or self.fresh or self.more)

    def timeout(self, block: float) -> float:
        """How long to wait for rings: ``block``, or until the next poll."""
        timeout = min(block, self.block)
        if self.polling:
            timeout = min(timeout, max(0.0, min(self.polling.values()) - time.monotonic()))
        return timeout


def _listened(master: Master) -> int | None:
    """A lane whose doorbell *master*'s reader listens to (lock held): one
    it has taken (not joining); None if it has none such."""
    return next((index for index in master.lanes if index not in master.joining), None)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
