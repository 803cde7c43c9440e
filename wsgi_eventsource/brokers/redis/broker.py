"""RedisBroker: publishing, subscribing and replay (the reader is in
:mod:`.reader`, the Lua scripts in :mod:`.scripts`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from ...connection import os_lock, thread_hub
from ...encoding import Data
from ...errors import ChannelUnavailable, NotReplicated
from ..base import (
    DEFAULT_HISTORY,
    Broker,
    BrokerStats,
    Entry,
    ReplayPlan,
    Subscription,
    check_history,
    encode_body,
    parse_id,
    validate_channel,
)
from . import scripts
from .clients import RedisClients, _bracketed
from .cluster import partition_of
from .masters import ClusterReader, Master, bell_of
from .reader import Lane
from .support import REDIS_ERROR_KINDS, ReaderStats, Throttled, text
from .urls import DEFAULT_PARTITIONS, RedisTarget, check_url_options, parse_redis_url

__all__ = ["RedisBroker"]


class _Redirected(Exception):
    """A cluster pipeline's command was answered MOVED, ASK or TRYAGAIN."""


def _import_redis() -> Any:
    try:
        import redis  # optional: only RedisBroker needs it
    except ImportError as exc:
        raise ImportError("RedisBroker needs the redis package: pip install 'wsgi-eventsource[redis]'") from exc
    return redis


class RedisBroker(ClusterReader, RedisClients, Broker):
    """Channels in Redis streams, shared by every process that uses the same Redis.

    :param url: one Redis (``redis://``, ``rediss://``, ``unix://``), the
        master a Sentinel names
        (``redis+sentinel://[:password@]host:port[,host:port...]/<service>/<db>``)
        or a Redis Cluster
        (``redis+cluster://[:password@]host:port[,host:port...]/[?partitions=16]``:
        channels are spread over that many hash-tagged partitions, each read
        by one reader thread per process; every process must use the same
        number). See :func:`~wsgi_eventsource.brokers.redis.parse_redis_url`.
        A redis-py client the app already has: :meth:`from_client`.
    :param history: events replayed at most per channel (Redis keeps a few
        more, since it trims with ``MAXLEN ~``; replay never reaches them).
    :param max_age: if set, events older than this many seconds are trimmed
        at the next publish and never replayed, and the key of a channel
        nobody reads expires ``2 * max_age`` after its last event (so a client
        that saw it and comes back within ``max_age`` more is not reset).
        Needs Redis 6.2 or later.
    :param prefix: prepended to the channel name to make the Redis key.
    :param block: seconds one ``XREAD`` waits for new events before the reader
        looks for newly subscribed channels.
    :param max_connections: Redis connections for publish and subscribe (per
        OS thread under gevent's monkey-patching, where a connection cannot
        move between threads); the reader has one more of its own. A storm of
        subscribes waits for a free one instead of failing.
    :param pool_timeout: seconds a publish or subscribe waits for a free
        connection before it fails with :class:`BrokerUnavailable`.
    :param wait_replicas: if above 0, each publish waits until this many
        replicas have the event (Redis ``WAIT``, on the publish's own
        connection), and raises :class:`NotReplicated` (the event stays
        published) when fewer confirm it within *wait_timeout*. Redis
        replicates asynchronously: without it, an event the master
        acknowledged can be lost in a failover.
    :param wait_timeout: seconds a publish waits for *wait_replicas*
        (below 5, the socket timeout).

    No connection is made until the first publish or subscribe, so the broker
    may be created at import time, before gunicorn forks its workers.
    :meth:`check` connects at once, to fail at start rather than later.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        ``max_connections`` and ``pool_timeout``; replay honours ``history``
        exactly; with ``max_age`` keys expire; Sentinel and Cluster URLs.
    .. versionchanged:: 0.1
        ``wait_replicas`` and ``wait_timeout``.
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        history: int = DEFAULT_HISTORY,
        *,
        max_age: float | None = None,
        prefix: str = "wsgi-eventsource:",
        block: float = 1.0,
        max_connections: int = 50,
        pool_timeout: float = 10.0,
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
    ) -> None:
        self._redis = _import_redis()
        check_history(history, max_age)
        if not (isinstance(block, (int, float)) and not isinstance(block, bool) and 0 < block < 3600):
            raise ValueError(f"block must be a positive number of seconds (under an hour), not {block!r}")
        if not (isinstance(max_connections, int) and not isinstance(max_connections, bool) and max_connections > 0):
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        if not (isinstance(pool_timeout, (int, float)) and not isinstance(pool_timeout, bool) and pool_timeout > 0):
            raise ValueError(f"pool_timeout must be a positive number of seconds, not {pool_timeout!r}")
        if not (isinstance(wait_replicas, int) and not isinstance(wait_replicas, bool) and wait_replicas >= 0):
            raise ValueError(f"wait_replicas must be an int >= 0 (replicas that confirm), not {wait_replicas!r}")
        if not (isinstance(wait_timeout, (int, float)) and not isinstance(wait_timeout, bool) and 0 < wait_timeout < 5):
            # WAIT's reply must come before the connection's socket timeout (5 s).
            raise ValueError(f"wait_timeout must be a positive number of seconds below 5, not {wait_timeout!r}")
        self._target = parse_redis_url(url)
        self.url = url
        if self._target.kind == "single":
            check_url_options(url)
        # On a cluster, channels are spread over partitions (see .cluster).
        self._partitions = self._target.partitions if self._target.kind == "cluster" else None
        if self._partitions is not None and ("{" in prefix or "}" in prefix):
            raise ValueError(f"on a cluster the prefix may not contain '{{' or '}}' (the hash tag's), not {prefix!r}")
        # Every failure redis-py may raise (a cluster's topology errors are not RedisErrors).
        self._errors: tuple[type[Exception], ...] = (
            self._redis.RedisError,
            self._redis.exceptions.RedisClusterException,
        )
        self.history = history
        self.max_age = max_age
        self.prefix = prefix
        self.block = block
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.stats = BrokerStats(errors=dict.fromkeys(REDIS_ERROR_KINDS, 0))
        self.reader_stats = ReaderStats()
        self._throttled = Throttled()
        self._closed = False
        self._init_clients()
        self._reset_process_state()
        self._pid = os.getpid()
        # Called with the client of the calling thread each time (as bytes,
        # a Script needs no client to compute its SHA).
        script = self._redis.commands.core.Script
        self._publish_script = script(None, scripts.PUBLISH.encode())
        self._current_script = script(None, scripts.CURRENT.encode())
        self._snapshot_script = script(None, scripts.SNAPSHOT.encode())
        self._keep_alive_script = script(None, scripts.KEEP_ALIVE.encode())

    @classmethod
    def from_client(cls, client: Any, history: int = DEFAULT_HISTORY, **options: Any) -> RedisBroker:
        """A broker for the Redis that *client* (a redis-py client the app
        already has) talks to: a ``redis.Redis``, a ``redis.cluster.RedisCluster``
        or a Sentinel's ``master_for(...)``. Takes the keyword arguments of
        :class:`RedisBroker` (and ``partitions`` for a cluster, default 16).

        The broker makes its own connections with the client's settings (host,
        database, credentials, TLS, ...): it needs a bounded pool per thread
        and a connection of its own for each reader, which a shared client
        cannot give. The client itself is left alone. (A Sentinel's own
        password, ``sentinel_kwargs``, is not carried over: use a
        ``redis+sentinel://`` URL and sentinels without one.)

        .. versionadded:: 0.1
        """
        redis = _import_redis()
        if isinstance(client, redis.cluster.RedisCluster):
            partitions = options.pop("partitions", DEFAULT_PARTITIONS)
            if not (isinstance(partitions, int) and not isinstance(partitions, bool) and 1 <= partitions <= 16384):
                raise ValueError(f"partitions must be an int from 1 to 16384, not {partitions!r}")
            kwargs = client.nodes_manager.connection_kwargs
            nodes = [(node.host, node.port) for node in client.get_primaries()] or [
                (node.host, node.port) for node in client.nodes_manager.startup_nodes.values()
            ]
            hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in nodes)
            url = f"redis+cluster://{hosts}/?partitions={partitions}"
            broker = cls(url, history, **options)
            broker._target = RedisTarget(
                "cluster", url, tuple(nodes), username=kwargs.get("username"),
                password=kwargs.get("password"), partitions=partitions,
            )  # fmt: skip
            return broker
        if not isinstance(client, redis.Redis):
            raise TypeError(
                "from_client takes a redis.Redis, a redis.cluster.RedisCluster or a Sentinel's master_for(...), "
                f"not {type(client).__name__}"
            )
        pool = client.connection_pool
        # The app's client may decode replies to str, or speak RESP3; the
        # broker reads RESP2 bytes (redis-py's default protocol).
        kwargs = {**pool.connection_kwargs, "decode_responses": False}
        kwargs.pop("protocol", None)
        if isinstance(pool, redis.sentinel.SentinelConnectionPool):
            sentinels = [
                (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs.get("port", 26379))
                for s in pool.sentinel_manager.sentinels
            ]
            hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in sentinels)
            url = f"redis+sentinel://{hosts}/{pool.service_name}/{kwargs.get('db', 0)}"
            broker = cls(url, history, **options)
            broker._target = RedisTarget(
                "sentinel", url, tuple(sentinels), service=pool.service_name, db=int(kwargs.get("db", 0)),
                username=kwargs.get("username"), password=kwargs.get("password"),
            )  # fmt: skip
            return broker
        if "path" in kwargs:
            # Absolute: a relative path would read as the URL's host.
            url = f"unix://{os.path.abspath(kwargs['path'])}?db={kwargs.get('db', 0)}"
        else:
            scheme = "rediss" if issubclass(pool.connection_class, redis.SSLConnection) else "redis"
            host = _bracketed(str(kwargs.get("host", "localhost")))
            url = f"{scheme}://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
        broker = cls(url, history, **options)
        # The client's own settings (credentials, TLS files, ...), not the
        # URL's: the URL above is for messages only.
        broker._connection_settings = (pool.connection_class, kwargs)
        return broker

    def _reset_process_state(self) -> None:
        """This process's subscriptions and reader: none yet (also after a fork)."""
        self._lock = os_lock()
        # channel -> subscriptions in this process; the readers' lanes (each
        # holds its channels' XREAD positions). Both guarded by _lock.
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._lanes: dict[int, Lane] = {}
        # On a cluster: the masters whose reader threads read the lanes.
        self._masters: dict[tuple[str, int], Master] = {}

    def __repr__(self) -> str:
        return f"<RedisBroker {self._shown_url!r} history={self.history}>"

    # -- publishing ------------------------------------------------------------------

    def publish(self, channel: str, data: Data, *, event: str | None = None, retry: int | None = None) -> str:
        validate_channel(channel)
        args = self._publish_args(channel, encode_body(data, event, retry))
        try:
            client = self._checked_client()
            if not self.wait_replicas:
                event_id = text(self._publish_script(keys=[self._key(channel)], args=args, client=client))
                replicas = 0
            else:
                event_id, replicas = self._publish_and_wait(client, channel, args)
        except self._errors as exc:
            raise self._unavailable(exc) from None
        self.stats.published += 1
        if replicas < self.wait_replicas:
            raise NotReplicated(
                f"event {event_id} is stored in the Redis master at {self._shown_url}, but {replicas} of "
                f"{self.wait_replicas} replicas confirmed it within wait_timeout={self.wait_timeout:g} s: a failover "
                "now could lose it (publishing it again makes a second event)",
                event_id=event_id,
                replicas=replicas,
                wanted=self.wait_replicas,
            )
        return event_id

    def _publish_args(self, channel: str, body: bytes) -> list[Any]:
        """The PUBLISH script's ARGV for *body* on *channel* (see :data:`.scripts.PUBLISH`)."""
        max_age_ms = "" if self.max_age is None else max(1, int(self.max_age * 1000))
        args: list[Any] = [self.history, body, max_age_ms, self._key_ttl_ms or ""]
        if self._partitions is not None:
            args += [bell_of(self.prefix, partition_of(channel, self._partitions)), channel]
        return args

    def _publish_and_wait(self, client: Any, channel: str, args: list[Any]) -> tuple[str, int]:
        """Publish, then ``WAIT``: one round trip, on one connection (``WAIT``
        counts the writes of the connection it is sent on). The new id and
        how many replicas have it."""
        script = self._publish_script
        wait_ms = max(1, int(self.wait_timeout * 1000))
        exceptions = self._redis.exceptions
        asking: Any = None  # during a slot's move: the node an ASK named
        for attempt in (1, 2, 3):
            # On a cluster, on the master of the channel's slot (a cluster
            # pipeline refuses EVALSHA, and WAIT has no key to route by).
            node = self._pipeline_client(client, channel) if asking is None else asking
            # EVALSHA by hand: a pipeline that runs a Script first asks
            # SCRIPT EXISTS, a second round trip on every publish.
            with node.pipeline(transaction=False) as pipe:
                if asking is not None:
                    pipe.execute_command("ASKING")
                pipe.evalsha(script.sha, 1, self._key(channel), *args)
                pipe.wait(self.wait_replicas, wait_ms)
                event_id, replicas = self._execute(client, pipe)[-2:]
            if isinstance(event_id, exceptions.NoScriptError) and attempt < 3:
                # A new master (a failover) or SCRIPT FLUSH: nothing was
                # written; load it and publish again.
                node.script_load(script.script)
                continue
            if isinstance(event_id, exceptions.MovedError) and attempt < 3 and self._partitions:
                # The slot has moved (a reshard, a failover): nothing was
                # written; learn where it is now and publish there. (A
                # redis:// URL naming a cluster node has no topology to
                # learn: its MOVED is raised, as without wait_replicas.)
                client.nodes_manager.initialize()
                asking = None
                continue
            if isinstance(event_id, exceptions.AskError) and attempt < 3 and self._partitions:
                # The slot is moving and its key is on the new master
                # already: nothing was written; publish there, after ASKING
                # (as RedisCluster follows an ASK).
                target = client.get_node(host=event_id.host, port=event_id.port)
                if target is not None and target.redis_connection is not None:
                    asking = target.redis_connection
                    continue
            for answer in (event_id, replicas):
                if isinstance(answer, Exception):
                    raise answer
            break
        return text(event_id), int(replicas)

    # -- subscribing -------------------------------------------------------------------

    def _entries(self, channel: str, raw: list[Any], now: int) -> list[Entry]:
        """History entries from a SNAPSHOT answer: the broker's own, young enough."""
        entries = []
        cutoff = None if self.max_age is None else now - int(self.max_age * 1000)
        for raw_id, flat in raw:
            event_id = text(raw_id)
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            prev, body = fields.get(b"p"), fields.get(b"b")
            if prev is None or body is None or not body.endswith(b"\n\n") or parse_id(text(prev)) is None:
                self.reader_stats.skipped += 1
                self._throttled.warning(
                    "foreign-replay", "channel %r: skipped entry %s in replay: it has no event", channel, event_id
                )
                continue
            created = int(event_id.split("-", 1)[0])
            if cutoff is not None and created < cutoff:
                continue
            entries.append(Entry(event_id, text(prev), body, created))
        return entries

    def _snapshot(self, client: Any, channel: str, last_event_id: str | None) -> tuple[str, list[Entry]]:
        """The channel's current id and what to plan a replay from (at most ``history`` entries)."""
        after = last_event_id if parse_id(last_event_id) is not None else ""
        current, now, raw = self._snapshot_script(keys=[self._key(channel)], args=[self.history, after], client=client)
        return text(current), self._entries(channel, raw, int(now))

    def _subscribe_planned(self, channel: str, last_event_id: str | None) -> tuple[Subscription, ReplayPlan]:
        validate_channel(channel)
        subscription = Subscription(channel, thread_hub())
        try:
            client = self._checked_client()
            # Listen first (buffering), then read history: whatever is published
            # meanwhile arrives live and is dropped if the replay had it.
            with self._lock:
                self._subscriptions.setdefault(channel, set()).add(subscription)
                lane = self._lane_of(channel)
                new_channel = channel not in lane.positions
            if new_channel:
                keep = self._keep_alive_ms
                start = text(self._current_script(keys=[self._key(channel)], args=[keep or ""], client=client))
                with self._lock:
                    if subscription in self._subscriptions.get(channel, ()):
                        # Another subscribe of this new channel may have
                        # set the reader's position first, from an older or
                        # a newer CURRENT: this subscriber starts where the
                        # reader reads from, or it would skip what lies
                        # between the two. (Everything the reader handed out
                        # since is in its buffer: it listened first.)
                        added = channel not in lane.positions
                        start = lane.positions.setdefault(channel, start)
                        wake = added and self._added_channel(lane, channel)
                    else:
                        # the reader ended the channel meanwhile (a broken
                        # key) and this subscription with it: no position for
                        # a channel nobody here reads.
                        wake = False
                self._start_reader(lane)
                if wake:
                    self._wake_reader(client, lane)
            if last_event_id is None:
                current = (
                    start
                    if new_channel
                    else text(self._current_script(keys=[self._key(channel)], args=[""], client=client))
                )
                history: list[Entry] = []
            else:
                current, history = self._snapshot(client, channel, last_event_id)
        except self._errors as exc:
            self.unsubscribe(subscription)
            raise self._channel_unavailable(channel, exc) or self._unavailable(exc) from None
        except BaseException:
            self.unsubscribe(subscription)
            raise
        return self._planned(subscription, last_event_id, current, history)

    def _subscribe_planned_many(
        self, asks: Sequence[tuple[str, str | None]]
    ) -> list[tuple[Subscription, ReplayPlan] | ChannelUnavailable]:
        """Every channel of a multiplexed stream in two round trips (one
        pipeline of CURRENTs for the channels new here, one of the rest),
        not two per channel; as :meth:`_subscribe_planned` does one. On a
        cluster, two per partition, each on the master of its slot (a
        cluster pipeline refuses scripts); a partition whose slot is moving
        (MOVED, ASK) is done one channel after another, which follows them."""
        if len(asks) == 1:
            return super()._subscribe_planned_many(asks)
        for channel, _ in asks:
            validate_channel(channel)
        groups: dict[int, list[int]] = {}
        for index, (channel, _) in enumerate(asks):
            lane = 0 if self._partitions is None else partition_of(channel, self._partitions)
            groups.setdefault(lane, []).append(index)
        done: list[tuple[Subscription, ReplayPlan] | ChannelUnavailable | None] = [None] * len(asks)
        try:
            for indexes in groups.values():
                group = [asks[index] for index in indexes]
                for index, item in zip(indexes, self._subscribe_group(group), strict=True):
                    done[index] = item
        except BaseException:
            for maybe in done:
                if maybe is not None and not isinstance(maybe, ChannelUnavailable):
                    self.unsubscribe(maybe[0])
            raise
        return [maybe for maybe in done if maybe is not None]

    def _subscribe_group(
        self, asks: list[tuple[str, str | None]]
    ) -> list[tuple[Subscription, ReplayPlan] | ChannelUnavailable]:
        """The channels of *asks*, all in one lane, in two pipelines."""
        hub = thread_hub()
        subscriptions = [Subscription(channel, hub) for channel, _ in asks]
        try:
            return self._subscribed_many(asks, subscriptions)
        except _Redirected:
            for subscription in subscriptions:
                self.unsubscribe(subscription)
            return super()._subscribe_planned_many(asks)
        except BaseException:
            for subscription in subscriptions:
                self.unsubscribe(subscription)
            raise

    def _pipeline_client(self, client: Any, channel: str) -> Any:
        """What to pipeline *channel*'s scripts on: the client, or on a
        cluster the client of the master of its slot."""
        if self._partitions is None:
            return client
        return client.get_node_from_key(self._key(channel)).redis_connection

    def _subscribed_many(
        self, asks: Sequence[tuple[str, str | None]], subscriptions: list[Subscription]
    ) -> list[tuple[Subscription, ReplayPlan] | ChannelUnavailable]:
        try:
            client = self._checked_client()
            starts = self._listen_many(client, subscriptions)
            with self._pipeline_client(client, asks[0][0]).pipeline(transaction=False) as pipe:
                for channel, last_event_id in asks:
                    if last_event_id is not None:
                        after = last_event_id if parse_id(last_event_id) is not None else ""
                        self._snapshot_script(keys=[self._key(channel)], args=[self.history, after], client=pipe)
                    elif channel not in starts:
                        self._current_script(keys=[self._key(channel)], args=[""], client=pipe)
                answers = iter(self._answers(client, pipe))
        except self._errors as exc:
            raise self._unavailable(exc) from None
        done: list[tuple[Subscription, ReplayPlan] | ChannelUnavailable] = []
        for (channel, last_event_id), subscription in zip(asks, subscriptions, strict=True):
            answer = starts[channel] if last_event_id is None and channel in starts else next(answers)
            if isinstance(answer, Exception):
                self.unsubscribe(subscription)
                failure = self._channel_unavailable(channel, answer)
                if failure is None:
                    raise self._unavailable(answer)
                done.append(failure)
            elif last_event_id is None:
                done.append(self._planned(subscription, None, text(answer), []))
            else:
                current, now, raw = answer
                history = self._entries(channel, raw, int(now))
                done.append(self._planned(subscription, last_event_id, text(current), history))
        return done

    def _listen_many(self, client: Any, subscriptions: list[Subscription]) -> dict[str, Any]:
        """Register *subscriptions* (listening first, as _subscribe_planned
        does), give the channels new here their reader positions (one
        pipeline of CURRENTs) and wake their readers once. Returns each new
        channel's start (its position, or the error its CURRENT got)."""
        with self._lock:
            for subscription in subscriptions:
                self._subscriptions.setdefault(subscription.channel, set()).add(subscription)
            new = [s.channel for s in subscriptions if s.channel not in self._positions_of(s.channel)]
        keep = self._keep_alive_ms or ""
        with self._pipeline_client(client, subscriptions[0].channel).pipeline(transaction=False) as pipe:
            for channel in new:
                self._current_script(keys=[self._key(channel)], args=[keep], client=pipe)
            starts: dict[str, Any] = dict(zip(new, self._answers(client, pipe), strict=True))
        woken: dict[int, Lane] = {}
        with self._lock:
            for channel, start in starts.items():
                lane = self._lane_of(channel)
                if isinstance(start, Exception) or channel not in self._subscriptions:
                    continue  # failed, or the reader ended the channel meanwhile (a broken key)
                if channel not in lane.positions:
                    lane.positions[channel] = text(start)
                    if self._added_channel(lane, channel):
                        woken[lane.index] = lane
                starts[channel] = lane.positions[channel]  # where the reader reads from
            lanes = {self._lane_of(s.channel).index: self._lane_of(s.channel) for s in subscriptions}
        for lane in lanes.values():
            self._start_reader(lane)
        for lane in woken.values():
            self._wake_reader(client, lane)
        return starts

    def _execute(self, client: Any, pipe: Any) -> list[Any]:
        """``pipe.execute`` (errors in place). On a cluster the pipeline is
        a node's own (see :meth:`_pipeline_client`), which RedisCluster does
        not see fail: a node that cannot be reached makes *client* learn the
        topology again, so that after a failover the next call goes to the
        new master, not to the dead one for good. (Not retried here: the
        command may have run.)"""
        try:
            answers: list[Any] = pipe.execute(raise_on_error=False)
        except (self._redis.ConnectionError, self._redis.TimeoutError):
            if self._partitions is not None:
                with contextlib.suppress(*self._errors):
                    client.nodes_manager.initialize()
            raise
        return answers

    def _answers(self, client: Any, pipe: Any) -> list[Any]:
        """A pipeline's answers (errors in place); :class:`_Redirected` if the
        cluster sent one elsewhere (then the caller does them one by one)."""
        answers = self._execute(client, pipe)
        exceptions = self._redis.exceptions
        if any(isinstance(answer, (exceptions.AskError, exceptions.TryAgainError)) for answer in answers):
            raise _Redirected
        return answers

    def _channel_unavailable(self, channel: str, exc: Exception) -> ChannelUnavailable | None:
        """The error for a failure of this channel's key alone (Redis answers,
        the key cannot be used), or None for any other failure."""
        if not isinstance(exc, self._redis.ResponseError):
            return None
        message = str(exc)
        if "WRONGTYPE" in message:
            reason = "wrong_type"
        elif isinstance(exc, self._redis.exceptions.NoPermissionError):  # an ACL ("NOPERM", read by redis-py)
            reason = "error"
        else:
            return None  # BUSY, LOADING, OOM, READONLY, ...: all of Redis, not one key
        return ChannelUnavailable(
            f"channel {channel!r}: Redis answered for key {self._key(channel)!r}: {message}",
            channel=channel,
            reason=reason,
        )

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subs = self._subscriptions.get(subscription.channel)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[subscription.channel]
                    self._positions_of(subscription.channel).pop(subscription.channel, None)

    def history_of(self, channel: str) -> list[Entry]:
        """The entries a replay may draw on: at most ``history``, none older than ``max_age``."""
        validate_channel(channel)
        try:
            return self._snapshot(self._checked_client(), channel, None)[1]
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def channel_counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(subs) for name, subs in self._subscriptions.items()}

    def ping(self) -> bool:
        """True if Redis answers right now."""
        try:
            return bool(self._ensure_client().ping())
        except self._errors:
            return False

    def close(self) -> None:
        """Stop the reader and close the connections."""
        self._closed = True
        self._close_clients()
