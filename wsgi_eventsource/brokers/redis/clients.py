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

from gevent.monkey import get_original, is_module_patched

from ...connection import os_lock
from ...errors import BrokerUnavailable
from .support import count_error, text
from .urls import shown_url

if TYPE_CHECKING:
    from _thread import LockType as Lock

    from ..base import BrokerStats

__all__ = ["RedisClients"]

# Real thread-local storage even under monkey-patching (where
# threading.local is greenlet-local).
_ThreadLocal: type[Any] = get_original("_thread", "_local")

#: The oldest Redis the broker works with, and the oldest with XTRIM MINID.
_MIN_VERSION, _MIN_VERSION_MAX_AGE = (5, 0), (6, 2)


class RedisClients:
    """Client management for :class:`RedisBroker` (a base class)."""

    url: str
    block: float
    max_age: float | None
    max_connections: int
    pool_timeout: float
    _redis: Any
    _pid: int
    _reader_client_id: int | None
    stats: BrokerStats

    def _init_clients(self) -> None:
        self._local = _ThreadLocal()
        self._client: Any = None
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()  # every one made, for close()
        self._server_checked = False
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
        redis = self._redis
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            socket_connect_timeout=2,
            socket_timeout=5,
            health_check_interval=0,
            retry_on_timeout=False,
        )
        return redis.Redis(connection_pool=pool)

    def _connect_reader(self) -> Any:
        """The reader's own client; one thread uses it in sequence, so one connection."""
        return self._redis.Redis.from_url(
            self.url,
            socket_connect_timeout=2,
            # Above the reader's XREAD BLOCK, or every idle read times out.
            socket_timeout=self.block + 5,
            health_check_interval=0,
            retry_on_timeout=False,
        )

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
        except self._redis.RedisError as exc:
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
        if isinstance(exc, (self._redis.ConnectionError, self._redis.TimeoutError)):
            return BrokerUnavailable(f"Redis at {self._shown_url} cannot be reached: {exc}")
        return BrokerUnavailable(f"Redis at {self._shown_url} answered with an error: {exc}")

    def _close_clients(self) -> None:
        """Unblock the reader and close every client this process made."""
        clients = list(self._clients)
        reader = self._reader_client_id
        if reader is not None and clients:
            # If this fails the reader ends by itself within `block` seconds.
            with contextlib.suppress(self._redis.RedisError):
                clients[0].client_unblock(reader)
        for client in clients:
            client.close()
            client.connection_pool.disconnect()


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
