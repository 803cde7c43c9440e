"""Small pieces the broker and its reader share: what the reader counts,
warnings that repeat at most every few seconds, and reply decoding."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

__all__ = ["ReaderStats", "Throttled", "text"]

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
