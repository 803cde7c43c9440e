"""Server-Sent Events for WSGI, on gevent.

::

    from wsgi_eventsource import EventSource

    def handler(conn, environ):
        conn.push("hello")

    app = EventSource(handler)
"""

from .app import EventSource
from .auth import TokenAuth
from .brokers import Broker, MemoryBroker, PublisherApp, SubscriberApp
from .brokers.redis import RedisBroker
from .connection import Connection
from .encoding import Event, build_event, encode_comment, encode_event, encode_id, encode_retry
from .errors import (
    BrokerUnavailable,
    ChannelUnavailable,
    ConnectionClosed,
    EventSourceError,
    InvalidChannel,
    InvalidEvent,
    NotReplicated,
    Unauthorized,
)
from .stream import Stream

__version__ = "0.1.0"

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "ChannelUnavailable",
    "Connection",
    "ConnectionClosed",
    "Event",
    "EventSource",
    "EventSourceError",
    "InvalidChannel",
    "InvalidEvent",
    "MemoryBroker",
    "NotReplicated",
    "PublisherApp",
    "RedisBroker",
    "Stream",
    "SubscriberApp",
    "TokenAuth",
    "Unauthorized",
    "__version__",
    "build_event",
    "encode_comment",
    "encode_event",
    "encode_id",
    "encode_retry",
]
