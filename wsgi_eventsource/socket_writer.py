"""Writing an event stream straight to its socket, from the hub, with no greenlet.

Under a stock gunicorn ``-k gevent`` worker, every open stream keeps the
greenlet that answered its request: parked six Python frames deep in
:class:`~wsgi_eventsource.stream.Stream`, with gunicorn's request, environ and
response objects on its stack. That is 10 of the 14 KB an idle stream costs,
and every event wakes that greenlet to write one chunk through gunicorn.

:class:`~wsgi_eventsource.gunicorn_worker.GeventWorker` takes a stream's socket
over once gunicorn has sent the headers, and lets the request's greenlet end.
A :class:`SocketWriter` then plays the part of the reader greenlet for the
:class:`~wsgi_eventsource.connection.Connection`: where the connection would
switch into its reader, it calls :meth:`SocketWriter.switch`, which writes what
is queued at once, without blocking, from the hub. What the socket does not
take is kept and written when the socket is writable again, and counts as the
write in progress for ``write_timeout`` and ``max_pending`` exactly as a
blocked write of the reader greenlet does.

It also watches the socket for reading, which the server never does during a
response: a client that hangs up is noticed at once (a stock worker notices it
at the second write after it went away, up to two keepalives later).

Deliberate divergences from the greenlet path: the connection is closed when
the stream ends (no keep-alive for a next request on it: an event stream is
the last request of its connection in practice, and EventSource reconnects on
a new one; the worker's headers say ``Connection: close``), bytes a client
sends after its request are read and dropped, and a client that half-closes
its connection (shuts down its sending side, as ``nc -N`` does) is taken as
gone, as nginx takes it ("client prematurely closed connection"): a socket
cannot tell that from a hang-up until a write fails.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from gevent import getcurrent, spawn_raw

from .connection import _KEEPALIVE_DUE
from .stream import KEEPALIVE

if TYPE_CHECKING:
    import _socket

    from .connection import Connection

__all__ = ["FRAME_CACHE_MAX", "SocketWriter", "frame_chunk"]

logger = logging.getLogger("wsgi_eventsource")

_READ = 1
_WRITE = 2
#: The end of a chunked response (RFC 9112 section 7.1): a chunk of size 0.
_LAST_CHUNK = b"0\r\n\r\n"


class _FrameCache:
    """The last chunk framed, by the identity of its data.

    A fan-out hands the same ``bytes`` object to every subscriber, so each
    flush of one event after the first finds it framed already: one chunk
    header per event, not one per subscriber (and no allocation at all).
    """

    __slots__ = ("data", "framed")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.framed = b""


_frames = _FrameCache()
#: The biggest chunk the cache keeps: a big event (a replay of megabytes) is
#: framed per write and not kept, twice its size, until the next event.
FRAME_CACHE_MAX = 64 * 1024


def frame_chunk(data: bytes) -> bytes:
    """*data* as one HTTP/1.1 chunk (size in hex, CRLF, data, CRLF)."""
    cache = _frames
    if data is cache.data:
        return cache.framed
    framed = b"%X\r\n%s\r\n" % (len(data), data)
    if len(data) <= FRAME_CACHE_MAX:
        cache.data = data
        cache.framed = framed
    return framed


class SocketWriter:
    """Writes one connection's stream to its (non-blocking) socket from the hub.

    :param conn: the stream's connection; its reader from now on.
    :param sock: the client's socket, non-blocking, ours alone (closed with
        the stream).
    :param chunked: frame what is written as HTTP/1.1 chunks (what the
        server's headers announced); else the bytes go out as they are (an
        HTTP/1.0 client), and the end of the stream is the end of the
        connection.
    :param registry: a set that holds this writer while its stream is open
        (the worker waits on it at shutdown).
    """

    __slots__ = ("_chunked", "_conn", "_reading", "_registry", "_rest", "_sock", "_writing")

    def __init__(self, conn: Connection, sock: _socket.socket, *, chunked: bool, registry: set[SocketWriter]) -> None:
        self._conn = conn
        self._sock = sock
        self._chunked = chunked
        self._registry = registry
        # What the socket did not take of the last write.
        self._rest: memoryview | None = None
        self._writing: Any = None  # a write watcher, only while a write is blocked
        self._reading: Any = conn._hub.loop.io(sock.fileno(), _READ)
        self._reading.start(self._readable)
        registry.add(self)

    def __repr__(self) -> str:
        return f"<SocketWriter {self._conn!r}>"

    # -- what Connection calls on its reader ---------------------------------

    def switch(self, why: object = None) -> None:
        """Write what is queued (or a keepalive, if *why* says one is due).

        Called by the connection in the hub where it would switch into a
        waiting reader greenlet; returns once the socket has taken all of it
        or would block.
        """
        self._conn._waiting = False
        self._pump(why)

    def kill(self, block: bool = False) -> None:
        """Cut the connection at the hub's next turn (a client that is not
        reading), as killing a reader greenlet does.

        Deferred because it may be called in the middle of a fan-out (a push
        over ``max_pending``): the stream's end runs its ``on_close``
        callbacks, which unsubscribe it from the very channel being fanned
        out. The connection is closed already, so nothing more is queued.
        """
        self._conn._hub.loop.run_callback(self.cut)

    def cut(self) -> None:
        """Cut the connection now, without the last chunk."""
        self._end(last_chunk=False)

    # -- internal -----------------------------------------------------------

    def _pump(self, why: object = None) -> None:
        conn = self._conn
        now = conn._hub.loop.now()
        while True:
            rest = self._rest
            if rest is not None:
                data: bytes | memoryview = rest
                self._rest = None
            else:
                if conn._chunks:
                    data = conn._take_all()
                elif why is _KEEPALIVE_DUE and not conn._closed:
                    data = KEEPALIVE
                elif conn._closed and not conn._remote:
                    self._end(last_chunk=True)
                    return
                else:
                    # Idle: what Stream.__next__ does before it parks.
                    conn._since = now
                    conn._waiting = True
                    return
                why = None
                if self._chunked:
                    data = frame_chunk(data)
            # A write starts (or goes on): the sweeper's write_timeout runs
            # from the last progress.
            conn._since = now
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._end(last_chunk=False)  # the client is gone
                return
            if sent < len(data):
                self._rest = memoryview(data)[sent:]
                self._wait_writable()
                return

    def _wait_writable(self) -> None:
        if self._writing is None:
            self._writing = self._conn._hub.loop.io(self._sock.fileno(), _WRITE)
        if not self._writing.active:
            self._writing.start(self._writable)

    def _writable(self) -> None:
        self._writing.stop()
        self._pump()

    def _readable(self) -> None:
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client hung up
            self._end(last_chunk=False)
        # Else bytes after the request (a pipelined request, which a response
        # that never ends cannot be followed by): dropped.

    def _end(self, *, last_chunk: bool) -> None:
        """The stream is over: close the socket, then let the connection go."""
        conn = self._conn
        if self._reading is None:  # ended already (its connection may not be finished yet)
            return
        # Over for its pushers at once, as when a reader greenlet's write
        # fails and the server closes the stream right away.
        conn._closed = True
        conn._waiting = False
        conn._since = 0.0
        conn._chunks = []
        conn._size = 0
        for watcher in (self._reading, self._writing):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reading = self._writing = None
        self._rest = None
        if last_chunk and self._chunked:
            with contextlib.suppress(OSError):  # best effort: it fits unless the client stopped reading
                self._sock.send(_LAST_CHUNK)
        self._sock.close()
        if getcurrent() is conn._hub:
            # The on_close callbacks may wait (a call to a database, to
            # Redis), which a loop callback cannot: they run in a greenlet,
            # as on the stock worker (the request's, in its finally).
            spawn_raw(self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        try:
            self._conn._finish()
        finally:
            # Only now: the worker waits on the registry at shutdown, so the
            # callbacks of the streams it ends have run when it exits.
            self._registry.discard(self)
