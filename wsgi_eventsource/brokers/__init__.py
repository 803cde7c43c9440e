"""Channels: publish to a name, every subscriber of that name receives it.

:class:`MemoryBroker` keeps channels in this process; :class:`RedisBroker`
shares them across processes and hosts through Redis streams. Both have the
same API and semantics (see :class:`~wsgi_eventsource.brokers.base.Broker`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .apps import PublisherApp, SubscriberApp
from .base import CHANNEL_MAX_LENGTH, DEFAULT_HISTORY, STREAM_RESET, Broker, validate_channel
from .cursor import cursor_channel, encode_cursor, parse_cursor
from .memory import MemoryBroker
from .multiplex import Multiplex

if TYPE_CHECKING:
    from .redis import RedisBroker

__all__ = [
    "CHANNEL_MAX_LENGTH",
    "DEFAULT_HISTORY",
    "STREAM_RESET",
    "Broker",
    "MemoryBroker",
    "Multiplex",
    "PublisherApp",
    "RedisBroker",
    "SubscriberApp",
    "cursor_channel",
    "encode_cursor",
    "parse_cursor",
    "validate_channel",
]


def __getattr__(name: str) -> Any:
    # RedisBroker is importable without redis installed; using it raises an
    # ImportError that names the extra.
    if name == "RedisBroker":
        from .redis import RedisBroker

        return RedisBroker
    raise AttributeError(name)
