"""The broker's Redis clients: which one a call uses, how they are built,
and the server check.

Publish and subscribe use a ``BlockingConnectionPool``: bounded, and a
storm of subscribes waits for a free connection instead of failing (redis-py's
default pool raises on the checkout after ``max_connections``).

Under gevent's monkey-patching (gunicorn's gevent worker) a socket belongs
to the hub of the OS thread that made it, and the pool's ``LifoQueue``
becomes a gevent queue of one hub: one pool shared by greenlets and a plain
OS thread that publishes fails ("cannot switch to a different thread") and
loses wake-ups (measured). So there each OS thread gets its own client and
pool (a real thread-local, freed with the thread); without monkey-patching
one client serves every thread. The reader has a client of its own.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import TYPE_CHECKING, Any

import gevent.lock
from gevent.monkey import get_original, is_module_patched

from ...connection import os_lock
from ...errors import BrokerUnavailable
from . import sentinel
from .cluster import masters_of_slots
from .support import count_error, text
from .urls import RedisTarget, shown_url

if TYPE_CHECKING:
    from _thread import LockType as Lock
    from collections.abc import Callable, Iterable

    from ..base import BrokerStats
    from .reader import Lane

__all__ = ["RedisClients"]

# Real thread-local storage even under monkey-patching (where
# threading.local is greenlet-local).
_ThreadLocal: type[Any] = get_original("_thread", "_local")

#: The oldest Redis the broker works with, and the oldest with XTRIM MINID.
_MIN_VERSION, _MIN_VERSION_MAX_AGE, _MIN_VERSION_CLUSTER = (5, 0), (6, 2), (7, 0)


class RedisClients:
    """Client management for :class:`RedisBroker` (a base class)."""

    url: str
    _target: RedisTarget
    block: float
    max_age: float | None
    max_connections: int
    pool_timeout: float
    _redis: Any
    _pid: int
    _lanes: dict[int, Lane]
    # From the readers (before this class in RedisBroker's bases).
    _reader_threads: Callable[[], list[Any]]
    _wake_to_stop: Callable[[Any, list[Any]], None]
    _lock: Lock
    _errors: tuple[type[Exception], ...]
    stats: BrokerStats

    def _init_clients(self) -> None:
        self._local = _ThreadLocal()
        self._client: Any = None
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()  # every one made, for close()
        self._server_checked = False
        self._masters_seen: set[tuple[str, int]] = set()
        # A connection class and its settings, from RedisBroker.from_client
        # (then they, not the URL, say where and how to connect).
        self._connection_settings: tuple[type[Any], dict[str, Any]] | None = None
        self._client_lock = os_lock()
        # A lock held by another thread at a fork stays held in the child.
        os.register_at_fork(after_in_child=_after_fork_in_child(self))

    def _reset_process_state(self) -> None:
        raise NotImplementedError

    @property
    def _shown_url(self) -> str:
        """The URL for messages and logs: never the password."""
        return shown_url(self.url)

    def _connect(self) -> Any:
        """A client for publish and subscribe: a bounded pool that waits for a free connection."""
        redis, target = self._redis, self._target
        options: dict[str, Any] = {
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
            "health_check_interval": 0,
            "retry_on_timeout": False,
        }
        if target.kind == "sentinel":
            return sentinel.pool_client(
                target, max_connections=self.max_connections, pool_timeout=self.pool_timeout, **options
            )
        if target.kind == "cluster":
            # One bounded pool per node (RedisCluster builds each node's pool
            # from these when it is given a URL). It follows MOVED and ASK,
            # and reloads the topology after a failover.
            host, port = target.nodes[0]
            return redis.cluster.RedisCluster(
                url=f"redis://{_bracketed(host)}:{port}",
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in target.nodes],
                username=target.username,
                password=target.password,
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=self.max_connections,
                timeout=self.pool_timeout,
                **options,
            )
        if self._connection_settings is not None:
            connection_class, settings = self._connection_settings
            pool = redis.BlockingConnectionPool(
                connection_class=connection_class,
                max_connections=self.max_connections,
                timeout=self.pool_timeout,
                **{**settings, **options},
            )
        else:
            pool = redis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=self.pool_timeout, **options
            )
        return redis.Redis(connection_pool=pool)

    def _reader_options(self) -> dict[str, Any]:
        return {
            "socket_connect_timeout": 2,
            # Above the reader's XREAD BLOCK, or every idle read times out.
            "socket_timeout": self.block + 5,
            "health_check_interval": 0,
            "retry_on_timeout": False,
        }

    def _connect_reader(self) -> Any:
        """The reader's own client (one Redis or Sentinel); one thread uses it in sequence, so one connection."""
        redis = self._redis
        if self._target.kind == "sentinel":
            return sentinel.reader_client(self._target, **self._reader_options())
        if self._connection_settings is not None:
            connection_class, settings = self._connection_settings
            pool = redis.ConnectionPool(connection_class=connection_class, **{**settings, **self._reader_options()})
            return redis.Redis(connection_pool=pool)
        return redis.Redis.from_url(self.url, **self._reader_options())

    def _node_client(self, address: tuple[str, int], **options: Any) -> Any:
        target = self._target
        host, port = address
        # from_url, not Redis(host=...): that one warns about retry_on_timeout
        # (deprecated there), and a warning made an error stops the reader.
        return self._redis.Redis.from_url(
            f"redis://{_bracketed(host)}:{port}", username=target.username, password=target.password, **options
        )

    def _master_of(self, slot: int) -> tuple[str, int]:
        """The master of *slot* (see :meth:`_masters_of`)."""
        return self._masters_of([slot])[slot]

    def _masters_of(self, slots: Iterable[int]) -> dict[int, tuple[str, int]]:
        """The master of each of *slots*, asked of the URL's nodes in turn
        (and the masters seen since: the URL's may all be gone after
        failovers), one ``CLUSTER SLOTS`` each until every slot is found
        (not one per slot: a node that hangs costs its timeout once)."""
        failures: list[str] = []
        found: dict[int, tuple[str, int]] = {}
        wanted = set(slots)
        for address in [*self._target.nodes, *(a for a in self._masters_seen if a not in self._target.nodes)]:
            client = self._node_client(address, socket_connect_timeout=2, socket_timeout=2)
            try:
                found.update(masters_of_slots(client, wanted - found.keys()))
            except self._redis.RedisError as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            finally:
                client.close()
            self._masters_seen.update(found.values())
            missing = sorted(wanted - found.keys())
            if not missing:
                return found
            failures.append(f"{address[0]}:{address[1]}: no master serves slot {', '.join(map(str, missing))}")
        missing = sorted(wanted - found.keys())
        raise self._redis.ConnectionError(
            f"no cluster node named the master of slot {', '.join(map(str, missing))} ({'; '.join(failures)})"
        )

    def _unblock(self, client: Any, lane: Lane) -> int:
        """CLIENT UNBLOCK *lane*'s reader (one Redis, Sentinel) with *client*
        (this thread's); 1 if it was blocked (it returns at once), 0 if not.
        (A cluster's readers are woken by a doorbell instead: see .masters.)"""
        reader = lane.client_id
        if reader is None or self._target.kind == "cluster":
            return 0
        return int(client.client_unblock(reader))

    def _ensure_client(self) -> Any:
        """The client for this thread (this process: never the parent's after a fork)."""
        pid = os.getpid()
        if self._pid != pid:
            with self._client_lock:
                if self._pid != pid:
                    # Never share sockets with the parent, nor its
                    # subscriptions and reader positions (a channel the
                    # parent read would look read here).
                    self._client = None
                    self._local = _ThreadLocal()
                    self._reset_process_state()
                    self._pid = pid
        if is_module_patched("socket"):
            client = getattr(self._local, "client", None)
            if client is None:
                # Building a cluster client talks to the cluster, so other
                # greenlets of this thread run meanwhile: one builds, they
                # wait (else a storm on a fresh worker built one per request).
                building = getattr(self._local, "building", None)
                if building is None:
                    building = self._local.building = gevent.lock.Semaphore()
                with building:
                    client = getattr(self._local, "client", None)
                    if client is None:
                        client = self._local.client = self._connect()
                        self._clients.add(client)
            return client
        client = self._client
        if client is None:
            with self._client_lock:  # checked again: two threads must not both build one
                if self._client is None:
                    self._client = self._connect()
                    self._clients.add(self._client)
                client = self._client
        return client

    def _checked_client(self) -> Any:
        """The client, once Redis is known to be recent enough (asked once)."""
        client = self._ensure_client()
        if not self._server_checked:
            version = text(client.info("server").get("redis_version", "0"))
            numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
            needed, why = _MIN_VERSION, "streams"
            if self.max_age is not None:
                needed, why = _MIN_VERSION_MAX_AGE, "max_age (XTRIM MINID)"
            if self._target.kind == "cluster":
                needed, why = max(needed, _MIN_VERSION_CLUSTER), "a Redis Cluster (its readers' doorbells: SPUBLISH)"
            if numbers < needed:
                raise BrokerUnavailable(
                    f"{why} needs Redis {needed[0]}.{needed[1]} or later; the Redis at {self._shown_url} is {version}"
                )
            self._server_checked = True
        return client

    def check(self) -> None:
        """Connect now and check the server; for a start-up check.

        :raises BrokerUnavailable: Redis cannot be reached, or is too old for
            the options given (the message names its version).

        .. versionadded:: 0.1
        """
        try:
            self._checked_client().ping()
        except self._errors as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> BrokerUnavailable:
        # Any Redis failure, not only a lost connection: READONLY after a
        # failover, OOM, a key of another type under our prefix. Publishers
        # and subscribers get 503 (try again), the log gets the details.
        count_error(self.stats, self._redis, exc)
        if isinstance(exc, self._redis.ConnectionError) and str(exc) == "No connection available.":
            return BrokerUnavailable(
                f"no connection to Redis at {self._shown_url} was free within pool_timeout={self.pool_timeout:g} s "
                f"(max_connections={self.max_connections})"
            )
        unreachable = (self._redis.ConnectionError, self._redis.TimeoutError, self._redis.exceptions.ClusterError)
        if isinstance(exc, unreachable):
            return BrokerUnavailable(f"Redis at {self._shown_url} cannot be reached: {exc}")
        if isinstance(exc, self._redis.exceptions.RedisClusterException):  # no node answers, say
            return BrokerUnavailable(f"Redis at {self._shown_url} cannot be reached: {exc}")
        return BrokerUnavailable(f"Redis at {self._shown_url} answered with an error: {exc}")

    def _close_clients(self) -> None:
        """Unblock the readers and close every client this process made."""
        clients = list(self._clients)
        if clients:
            with self._lock:
                threads = self._reader_threads()
            # If this fails the readers end by themselves within `block` seconds.
            with contextlib.suppress(Exception):
                self._wake_to_stop(clients[0], threads)
        for client in clients:
            client.close()
            if self._target.kind != "cluster":
                client.connection_pool.disconnect()


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _after_fork_in_child(clients: RedisClients) -> Any:
    """A fork hook that gives the broker (if it still exists) locks nobody holds."""
    ref = weakref.ref(clients)

    def reset() -> None:
        alive: Any = ref()
        if alive is not None:
            alive._client_lock = os_lock()
            lock: Lock = os_lock()
            alive._lock = lock

    return reset
