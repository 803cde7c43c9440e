"""The WSGI response iterator that drains a :class:`Connection`.

Neither gunicorn nor ``gevent.pywsgi`` reads the socket while a response is
being written, so a client that goes away shows up only as an ``OSError`` from
a later write, inside the server. The server then calls :meth:`Stream.close`
in a ``finally``. That is why the keepalive wait lives here, in
``__next__``: an idle stream writes a comment every ``keepalive`` seconds, and
the second write after a clean client close fails (the first still succeeds).

The iterator has no ``__len__``: ``gevent.pywsgi`` would otherwise try to
compute a ``Content-Length`` from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gevent import getcurrent

from .connection import _KEEPALIVE_DUE

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["KEEPALIVE", "Stream"]

#: What an idle stream writes every ``keepalive`` seconds: an empty comment.
KEEPALIVE = b":\n\n"


class Stream:
    """Iterates over a connection's encoded output until it is closed."""

    __slots__ = ("_conn", "_keepalive", "_response")

    def __init__(self, connection: Connection, keepalive: float | None) -> None:
        self._conn = connection
        self._keepalive = keepalive
        # The server's response object, when a worker that can take the
        # stream's socket over (gunicorn_worker.GeventWorker) noted it.
        self._response: object = None

    @property
    def connection(self) -> Connection:
        """The connection this stream drains."""
        return self._conn

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> bytes:
        conn = self._conn
        conn._since = 0.0  # the server finished writing what we gave it
        if conn._reader is None:
            conn._reader = getcurrent()
        hub = conn._hub
        while True:
            if conn._chunks or conn._rest is not None:
                # A write starts: the sweeper's write_timeout runs from here,
                # for this piece of at most PIECE_SIZE bytes.
                conn._since = hub.loop.now()
                return conn._take()
            if conn._closed and not conn._remote:
                raise StopIteration
            # Park this greenlet in the hub until a push (Connection._wake_now)
            # or a keepalive (the app's sweeper, or a timer) switches back. No
            # object is allocated per wait when the app's sweeper keeps time.
            timer = None
            if self._keepalive is not None and not conn._swept:
                timer = hub.loop.timer(self._keepalive)
                timer.start(conn._keepalive_now)
            conn._since = hub.loop.now()  # idle from now
            conn._waiting = True
            try:
                woke_by = hub.switch()
            finally:
                conn._waiting = False
                if timer is not None:
                    timer.close()
            if woke_by is _KEEPALIVE_DUE and not conn._chunks and not conn._closed:
                conn._since = hub.loop.now()  # a write starts
                return KEEPALIVE

    def close(self) -> None:
        """Called by the server when the response is over, however it ended."""
        self._conn._finish()
