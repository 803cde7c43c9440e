"""Small pieces the broker and its reader share: what the reader counts,
how far behind it is, Redis errors by kind, warnings that repeat at most
every few seconds, and reply decoding."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from ..base import BrokerStats

T = TypeVar("T")

__all__ = ["REDIS_ERROR_KINDS", "ReadClock", "ReaderStats", "Throttled", "count_error", "text"]

#: The kinds :func:`count_error` sorts Redis errors into.
REDIS_ERROR_KINDS = ("connection", "timeout", "response", "other")

logger = logging.getLogger("wsgi_eventsource")


@dataclass
class ReaderStats:
    """What this process's Redis reader has met, for tests and operators."""

    #: Entries skipped because they are not the broker's (no ``p``/``b``).
    skipped: int = 0
    #: ``stream-reset`` events sent for gaps seen live.
    resets: int = 0
    #: Channels ended because their key could not be read.
    ended: int = 0
    #: Times the read loop failed unexpectedly and was restarted.
    restarts: int = 0


class ReadClock:
    """When one reader's reads began and returned, for :meth:`lag`. Written
    by its reader thread only, read by anyone."""

    def __init__(self) -> None:
        #: ``time.monotonic()`` when the last read returned (or there was
        #: nothing to read); 0 before the first.
        self.read_returned = 0.0
        #: ``time.monotonic()`` when the read now under way began; 0 when none is.
        self.read_began = 0.0

    def timed(self, read: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``read(*args, **kwargs)`` (an ``XREAD BLOCK``), timed for :meth:`lag`."""
        self.read_began = time.monotonic()
        try:
            answer = read(*args, **kwargs)
        except BaseException:
            self.read_began = 0.0  # failed: behind from the last return on
            raise
        self.returned()  # before read_began goes: lag() never sees the old return alone
        self.read_began = 0.0
        return answer

    def returned(self) -> None:
        """A read returned, or there is nothing to read: the reader is up to date."""
        self.read_returned = time.monotonic()

    def lag(self, block: float) -> float:
        """Seconds the reader is behind: since its last read returned, unless
        a read is under way and has waited less than *block* (it would return
        at once with any new event), then 0; past *block* a read is stuck."""
        if not self.read_returned:
            return 0.0
        now, began = time.monotonic(), self.read_began
        return max(0.0, now - began - block) if began else max(0.0, now - self.read_returned)


def count_error(stats: BrokerStats, redis: Any, exc: BaseException) -> None:
    """Count a redis-py error in ``stats.errors`` by kind (see :data:`REDIS_ERROR_KINDS`)."""
    if isinstance(exc, redis.TimeoutError):
        kind = "timeout"
    elif isinstance(exc, redis.ConnectionError):
        kind = "connection"
    elif isinstance(exc, redis.ResponseError):
        kind = "response"
    else:
        kind = "other"
    stats.errors[kind] = stats.errors.get(kind, 0) + 1


class Throttled:
    """Log a warning at most once per *every* seconds per kind; say how many
    were left out (a broken key or a hand-made entry repeats for ever)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last, left_out = self._last.get(kind, (-self.every, 0))
        if now - last < self.every:
            self._last[kind] = (last, left_out + 1)
            return
        self._last[kind] = (now, 0)
        if left_out:
            message += f" (and {left_out} more like it in the last {self.every:g} s)"
        logger.warning(message, *args)


def text(value: bytes | str) -> str:
    """A reply as Redis gave it (bytes, or str with decode_responses)."""
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
