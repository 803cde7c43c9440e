"""Redis Sentinel: the broker's clients for a ``redis+sentinel://`` URL,
which follow the master through a failover.

A connection asks the sentinels where the master is each time it connects
(redis-py's ``SentinelManagedConnection``); one to a master that was
demoted answers ``READONLY``, which redis-py turns into a ``ConnectionError``
and a reconnect. So a publish during a failover fails fast with
:class:`BrokerUnavailable` (the sentinels say the master is down, or the old
address refuses), and succeeds again once a replica is promoted; the reader
reconnects the same way and resumes from its last ids. The publish and
subscribe pool is bounded and waits for a free connection, as for one Redis
(:class:`.sentinel_pools.BlockingSentinelConnectionPool`).

The URL's user name and password are the data nodes' (``requirepass`` or an
ACL user), as for redis-py's ``Sentinel(**connection_kwargs)``; the sentinels
are asked without one, within two seconds and never twice.

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from .urls import RedisTarget

__all__ = ["pool_client", "reader_client"]


def pool_client(
    target: RedisTarget, *, max_connections: int, pool_timeout: float, **connection_kwargs: Any
) -> redis.Redis:
    """A client for publish and subscribe: at most *max_connections*
    connections to the current master; a checkout waits *pool_timeout*
    seconds for a free one, then fails (``ConnectionError("No connection
    available.")``, as ``BlockingConnectionPool``).

    :param target: a parsed ``redis+sentinel://`` URL.
    :param connection_kwargs: for each connection to the master
        (``socket_timeout``, ``socket_connect_timeout``, ...).

    .. versionadded:: 0.1
    """
    from .sentinel_pools import BlockingSentinelConnectionPool, SentinelRedis, sentinels_of

    connect_timeout = connection_kwargs.get("socket_connect_timeout") or 2.0
    # One more than the pool: its connections connect at once in a storm, and a checkout asks too.
    sentinels = sentinels_of(target.nodes, connect_timeout, max(100, max_connections + 1))
    pool = BlockingSentinelConnectionPool(  # type: ignore[no-untyped-call]
        _service(target),
        sentinels,
        max_connections=max_connections,
        timeout=pool_timeout,
        **_node_kwargs(target),
        **connection_kwargs,
    )
    return SentinelRedis(pool, sentinels)


def reader_client(target: RedisTarget, *, socket_timeout: float, **connection_kwargs: Any) -> redis.Redis:
    """The reader thread's client: one connection to the current master
    (the reader sends one command at a time); after a connection error the
    reader makes a new client, which asks the sentinels again. A master
    that becomes a replica under it counts as a connection error
    (:class:`.sentinel_pools.ReaderConnection`).

    :param target: a parsed ``redis+sentinel://`` URL.
    :param socket_timeout: seconds a reply may take (above the reader's
        ``XREAD BLOCK``).

    .. versionadded:: 0.1
    """
    from redis.sentinel import SentinelConnectionPool

    from .sentinel_pools import ReaderConnection, SentinelRedis, sentinels_of

    sentinels = sentinels_of(target.nodes, connection_kwargs.get("socket_connect_timeout") or 2.0)
    pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        _service(target),
        sentinels,
        connection_class=ReaderConnection,
        max_connections=1,
        socket_timeout=socket_timeout,
        **_node_kwargs(target),
        **connection_kwargs,
    )
    return SentinelRedis(pool, sentinels)


def _service(target: RedisTarget) -> str:
    service = target.service
    if target.kind != "sentinel" or not service:
        raise ValueError(f"not a redis+sentinel:// URL with a service name: {target.shown!r}")
    return service


def _node_kwargs(target: RedisTarget) -> dict[str, Any]:
    """What every connection to a data node (the master) needs from the URL."""
    return {"db": target.db, "username": target.username, "password": target.password}
