"""The exceptions raised by wsgi-eventsource.

Every error is an :class:`EventSourceError`, and each also subclasses the
builtin it resembles, so callers may catch either::

    EventSourceError(Exception)
     +-- ConnectionClosed
     +-- InvalidEvent(ValueError)
     +-- InvalidChannel(ValueError)
     +-- BrokerUnavailable(ConnectionError)
     |    +-- ChannelUnavailable
     |    +-- NotReplicated
     +-- Unauthorized
"""

from __future__ import annotations

import re

__all__ = [
    "BrokerUnavailable",
    "ChannelUnavailable",
    "ConnectionClosed",
    "EventSourceError",
    "InvalidChannel",
    "InvalidEvent",
    "NotReplicated",
    "Unauthorized",
]


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

    Nothing was published (but see :class:`NotReplicated`). The publisher
    app answers ``503`` with it.
    """


class ChannelUnavailable(BrokerUnavailable):
    """The broker answers, but cannot serve this one channel (a RedisBroker
    key of another type under its prefix, or one a Redis ACL forbids).

    A single-channel subscribe is refused softly, as for any
    :class:`BrokerUnavailable`; a multiplexed stream leaves the channel out
    with a ``stream-error`` event and serves the others.
    """

    def __init__(self, message: str, *, channel: str, reason: str) -> None:
        super().__init__(message)
        #: The channel that cannot be served.
        self.channel = channel
        #: ``"wrong_type"`` (the key is not a stream) or ``"error"`` (another
        #: error for this key alone), as in the reader's ``stream-error``.
        self.reason = reason


class NotReplicated(BrokerUnavailable):
    """A publish with ``wait_replicas=N``: the Redis master stored the event,
    but fewer than N replicas confirmed it within ``wait_timeout``.

    Unlike any other :class:`BrokerUnavailable` the event WAS published:
    subscribers may have it already, and publishing it again makes a second
    event. It is not yet safe from a failover (replication is asynchronous:
    a replica promoted now may not have it). The publisher app answers
    ``503`` with a JSON body that gives the id.

    .. versionadded:: 0.1
    """

    def __init__(self, message: str, *, event_id: str, replicas: int, wanted: int) -> None:
        super().__init__(message)
        #: The id the event was stored with.
        self.event_id = event_id
        #: How many replicas confirmed it (fewer than :attr:`wanted`).
        self.replicas = replicas
        #: How many were asked for (``wait_replicas``).
        self.wanted = wanted


# RFC 6750 3: error and error_description "MUST NOT include characters
# outside the set %x20-21 / %x23-5B / %x5D-7E" (printable ASCII but '"' and
# '\\'). Anything else (CR/LF, a non-latin-1 character) would also make the
# WSGI server refuse the header: a 500 instead of the 401.
_NOT_IN_CHALLENGE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class Unauthorized(EventSourceError):
    """No usable token: answered with ``401`` and ``WWW-Authenticate: Bearer``.

    :param error: the RFC 6750 error code (``"invalid_request"``,
        ``"invalid_token"``), or ``None`` when the request carried no token
        at all (then the challenge names no error, as RFC 6750 3.1 asks).
    :param description: what is wrong, for the client (no secret in it). In
        the challenge a double quote is written ``'`` and any other character
        RFC 6750 does not allow there (a backslash, a control, anything not
        ASCII) ``?``; the response body has it as it is.
    """

    def __init__(self, description: str, error: str | None = "invalid_token") -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header value."""
        if self.error is None:
            return 'Bearer realm="wsgi-eventsource"'
        error = _NOT_IN_CHALLENGE.sub("?", self.error)
        text = _NOT_IN_CHALLENGE.sub("?", self.description.replace('"', "'"))
        return f'Bearer realm="wsgi-eventsource", error="{error}", error_description="{text}"'
