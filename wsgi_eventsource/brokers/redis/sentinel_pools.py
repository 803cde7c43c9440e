"""The redis-py pieces :mod:`.sentinel` builds its clients from. This module
imports redis-py, so only :mod:`.sentinel`'s functions import it (the package
must import without the ``redis`` extra).

redis-py 8 has no *blocking* Sentinel pool: its ``SentinelConnectionPool``
raises on the checkout after ``max_connections``, where the broker needs a
bounded pool that waits for a free connection (see :mod:`.clients`).
:class:`BlockingSentinelConnectionPool` is the two redis-py pools combined.
(redis-py's sentinel module is untyped: hence the ignores.)
"""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

__all__ = ["BlockingSentinelConnectionPool", "ReaderConnection", "SentinelRedis", "sentinels_of"]

#: The longest a sentinel may take to connect or answer (seconds).
SENTINEL_TIMEOUT = 2.0
#: The longest a pool or the reader goes on with a master without asking
#: the sentinels whether it still is the one (seconds).
MASTER_CHECK_INTERVAL = 1.0


def _master_moved(pool: Any) -> bool:
    """Ask the sentinels where the master is; True if not where the pool
    last found it. (A pool whose master moved disconnects its idle
    connections: they reconnect to the new one.) False if no sentinel
    names a master: connections to a master that is really gone fail by
    themselves, and one that still answers is better than none."""
    known = pool.master_address
    try:
        return bool(pool.get_master_address() != known and known is not None)
    except (redis.ConnectionError, redis.TimeoutError):
        return False


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """A bounded pool of connections to the Sentinel master that waits
    (``timeout`` seconds) for a free connection instead of failing.

    ``SentinelConnectionPool`` gives the connections that find the master;
    ``BlockingConnectionPool`` the bounded queue. A connection to a former
    master is not taken back (``owns_connection``): its slot is freed for a
    new connection to the current master.

    Redis Sentinel does not tell a client that the master moved; a former
    master that still runs (until a sentinel demotes it, up to 10 s after
    the promotion; behind a network partition, never) takes every write
    sent to it, and loses them once it is demoted. So a checkout asks the
    sentinels, at most every :data:`MASTER_CHECK_INTERVAL` seconds.

    .. versionadded:: 0.1
    """

    _checked_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= MASTER_CHECK_INTERVAL:
            self._checked_at = now
            _master_moved(self)  # if it moved, the idle connections are closed: they reconnect there
        return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    def release(self, connection: Any) -> None:
        owned = self.owns_connection(connection)  # type: ignore[no-untyped-call]
        super().release(connection)  # type: ignore[no-untyped-call]
        if not owned:
            # BlockingConnectionPool lists every connection it made (to
            # disconnect them); a dropped one would stay listed for good,
            # one more after every failover.
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)


class ReaderConnection(SentinelManagedConnection):
    """The reader's connection to the Sentinel master, which it leaves when
    that master becomes a replica, or when the sentinels name another one
    (asked at most every :data:`MASTER_CHECK_INTERVAL` seconds, before a
    command).

    Redis ends every blocked command when it turns into a replica (a
    ``SENTINEL FAILOVER``, or a master that comes back after a failover)
    with ``UNBLOCKED ... instance state changed (master -> replica?)``.
    Reading on there would still bring events (replicated), late, but never
    the ``CLIENT UNBLOCK`` a new subscribe sends to the new master: the
    subscribe would wait up to ``block`` seconds. Answered as a lost
    connection, the reader reconnects, through the sentinels, to the new
    master. (Only a ``READONLY`` answer tells redis-py so, and a reader
    writes nothing.)

    .. versionadded:: 0.1
    """

    _checked_at = 0.0

    def connect_to(self, address: tuple[str, int]) -> None:
        super().connect_to(address)  # type: ignore[no-untyped-call]
        self._checked_at = time.monotonic()  # the sentinels were just asked

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        # A master the sentinels replaced may still run and answer (see
        # BlockingSentinelConnectionPool): ask them between two reads.
        now = time.monotonic()
        if self._sock is not None and now - self._checked_at >= MASTER_CHECK_INTERVAL:
            self._checked_at = now
            if _master_moved(self.connection_pool):
                self.disconnect()
                raise redis.ConnectionError("the sentinels name another master; reconnecting to it")
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not str(exc).startswith("UNBLOCKED") or "instance state changed" not in str(exc):
                raise
            self.disconnect()  # type: ignore[no-untyped-call]
            raise redis.ConnectionError(f"the master became a replica ({exc}); asking the sentinels again") from None


class SentinelRedis(redis.Redis):
    """A client of the Sentinel master that owns its pool and its clients
    of the sentinels: closing it closes them too.

    .. versionadded:: 0.1
    """

    def __init__(self, pool: SentinelConnectionPool, sentinels: Sentinel) -> None:
        super().__init__(connection_pool=pool)
        self.auto_close_connection_pool = True  # as Redis.from_pool does
        self.sentinels = sentinels

    def close(self) -> None:
        super().close()
        self.sentinels.close()


def sentinels_of(nodes: tuple[tuple[str, int], ...], connect_timeout: float, connections: int = 100) -> Sentinel:
    """Clients of the sentinels at *nodes*: asked without a password, each
    connect and answer bounded, never retried (redis-py's default retries
    ten times with backoff: seconds lost per sentinel that is down). Each
    may open *connections* at once: every new connection to the master
    asks them first (redis-py's pools refuse the 101st by default)."""
    sentinel_kwargs = {
        "max_connections": connections,
        "socket_connect_timeout": min(connect_timeout, SENTINEL_TIMEOUT),
        "socket_timeout": SENTINEL_TIMEOUT,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    return Sentinel(list(nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
