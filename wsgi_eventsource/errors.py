"""The exceptions raised by wsgi-eventsource.

Every error is an :class:`EventSourceError`, and each also subclasses the
builtin it resembles, so callers may catch either::

    EventSourceError(Exception)
     +-- ConnectionClosed
     +-- InvalidEvent(ValueError)
"""

from __future__ import annotations

__all__ = ["ConnectionClosed", "EventSourceError", "InvalidEvent"]


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
