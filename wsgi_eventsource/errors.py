"""The exceptions raised by wsgi-eventsource.

Every error is an :class:`EventSourceError`, and each also subclasses the
builtin it resembles, so callers may catch either::

    EventSourceError(Exception)
     +-- ConnectionClosed
     +-- InvalidEvent(ValueError)
     +-- InvalidChannel(ValueError)
     +-- BrokerUnavailable(ConnectionError)
"""

from __future__ import annotations

__all__ = ["BrokerUnavailable", "ConnectionClosed", "EventSourceError", "InvalidChannel", "InvalidEvent"]


class EventSourceError(Exception):
    """Base class of every exception this package raises on purpose."""


class ConnectionClosed(EventSourceError):
    """Raised by :meth:`Connection.push` once the stream has ended.

    The stream ends when the application calls :meth:`Connection.close`, when
    the client goes away, when the client stops reading and its pending output
    passes the connection's limit, or when the server shuts down.
    """


class InvalidEvent(EventSourceError, ValueError):
    """An event, a field of one, or a comment cannot be sent as given.

    The message always names the offending field (``data``, ``event``, ``id``,
    ``retry`` or ``comment``). Nothing is sent when this is raised.
    """


class InvalidChannel(EventSourceError, ValueError):
    """A channel name is empty, too long, or has a character or segment that
    is not allowed; the message says which."""


class BrokerUnavailable(EventSourceError, ConnectionError):
    """The broker's backing store (Redis) cannot be reached right now.

    Nothing was published. The publisher app answers ``503`` with it.
    """
