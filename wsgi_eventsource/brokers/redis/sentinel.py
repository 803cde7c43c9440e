"""Redis Sentinel: clients that follow the master Sentinel names."""

from __future__ import annotations

from typing import Any

from .urls import RedisTarget

__all__ = ["pool_client", "reader_client"]


def pool_client(target: RedisTarget, *, max_connections: int, pool_timeout: float, **options: Any) -> Any:
    """A client over a bounded pool that waits for a free connection, following the master."""
    raise NotImplementedError("redis+sentinel:// is not supported yet")


def reader_client(target: RedisTarget, *, socket_timeout: float, **options: Any) -> Any:
    """A one-connection client for a reader thread, following the master."""
    raise NotImplementedError("redis+sentinel:// is not supported yet")
