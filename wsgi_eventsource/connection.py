"""One client's event stream, as the application sees it.

A :class:`Connection` is a small bounded queue of encoded bytes plus state.
The WSGI server drains it through :class:`~wsgi_eventsource.stream.Stream`.

Threads: all state belongs to the gevent hub of the thread that accepted the
request (under gunicorn and ``gevent.pywsgi`` that is the only thread). A call
from another OS thread is handed to that hub with
``loop.run_callback_threadsafe``, so nothing here needs a lock and pushes from
one thread keep their order. Such pushes count against ``max_pending`` when the
hub takes them over, exactly as pushes made there at that moment.

The server is handed pieces of at most :data:`PIECE_SIZE` bytes, so that the
app's ``write_timeout`` is a time without progress.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import gevent
from gevent._hub_local import get_hub_if_exists
from gevent.monkey import get_original

from .encoding import Message, _encode_data, build_event, encode_comment
from .errors import ConnectionClosed

if TYPE_CHECKING:
    from _thread import LockType as Lock

    from _typeshed.wsgi import WSGIEnvironment
    from gevent.hub import Hub

    from .app import EventSource

__all__ = ["PIECE_SIZE", "Connection"]

logger = logging.getLogger("wsgi_eventsource")

# The real OS thread id even under monkey-patching, where threading.get_ident
# returns a greenlet's id instead.
_thread_ident: Callable[[], int] = get_original("_thread", "get_ident")
_main_thread_ident = _thread_ident()  # this module is imported in the main thread


@lru_cache(maxsize=256)
def _shared_ident(ident: int) -> int:
    """*ident* as one ``int`` object per thread id: a thread id is too big for
    CPython's small-int cache, so each stream (and each subscription of
    one) that keeps its own holds 32 bytes more."""
    return ident


#: What a waiting reader is switched back with when a keepalive is due.
_KEEPALIVE_DUE = object()
#: The most bytes handed to the server in one item. A big event (or a replay
#: of many) is written in pieces, so that ``write_timeout`` measures time
#: without progress (one piece not written), not the time a slow but steady
#: reader takes to read all of it.
PIECE_SIZE = 64 * 1024
_allocate_lock: Callable[[], Lock] = get_original("_thread", "allocate_lock")


def os_lock() -> Lock:
    """A real OS lock, even under monkey-patching (where ``threading.Lock`` is
    a gevent lock that a plain OS thread cannot share). Only for short
    sections that never block or switch greenlets."""
    return _allocate_lock()


# Guards the hand-over list of pushes made from other OS threads, and the
# on_close callbacks, which other threads may add (rare, short).
_remote_lock = os_lock()

# Hubs made for a stream in a thread that had none (a thread-per-request
# server), before its Connection existed: that Connection owns and destroys it.
_hubs_made_for_streams: weakref.WeakSet[Hub] = weakref.WeakSet()


def thread_hub() -> Hub:
    """This thread's gevent hub, for code that runs before a stream's
    :class:`Connection` exists (a broker's subscribe). A hub it has to
    create is destroyed with the stream, as if the Connection had made it."""
    hub = get_hub_if_exists()
    if hub is None:
        hub = gevent.get_hub()
        if _thread_ident() != _main_thread_ident:
            _hubs_made_for_streams.add(hub)
    return hub


def last_event_id(environ: WSGIEnvironment) -> str | None:
    """The client's last event id: the ``Last-Event-ID`` header, or else the
    ``lastEventId`` query parameter that EventSource polyfills send; ``None``
    if neither is there or it is empty (an empty id means "none yet")."""
    value: str | None = environ.get("HTTP_LAST_EVENT_ID")
    if value:
        # WSGI hands header values over as latin-1; browsers send UTF-8.
        raw: bytes = value.encode("latin-1", "replace")
        return raw.decode("utf-8", "replace")
    query: str = environ.get("QUERY_STRING", "")
    if "lastEventId" in query:
        values = parse_qs(query).get("lastEventId")  # blank values are left out
        if values:
            return values[-1]
    return None


class Connection:
    """One open event stream; passed to ``handler_cb(conn, environ)``.

    Keep it and push to it later from any greenlet or thread. Every method is
    cheap and none blocks: events are queued and written by the server's
    greenlet.
    """

    __slots__ = (
        "_callbacks",
        "_chunks",
        "_closed",
        "_finished",
        "_handler",
        "_hub",
        "_max_pending",
        "_own_hub",
        "_owner",
        "_reader",
        "_remote",
        "_rest",
        "_since",
        "_size",
        "_swept",
        "_thread",
        "_waiting",
        "_wake_scheduled",
        "environ",
        "last_event_id",
    )

    #: The WSGI environ of the request that opened this stream.
    environ: WSGIEnvironment
    #: The id the client last saw (``Last-Event-ID`` header or ``lastEventId``
    #: query parameter), or ``None`` on a first connection.
    last_event_id: str | None

    def __init__(
        self,
        environ: WSGIEnvironment,
        *,
        max_pending: int,
        preamble: bytes = b"",
    ) -> None:
        self.environ = environ
        self.last_event_id = last_event_id(environ)
        self._chunks: list[bytes] = [preamble] if preamble else []
        self._size = 0  # the preamble (a replay, say) is not held against max_pending
        self._max_pending = max_pending
        self._closed = False
        self._finished = False
        # The reader (the server's greenlet) is parked in Stream.__next__,
        # switched out to the hub; _wake_now switches back into it.
        self._waiting = False
        self._swept = False  # keepalives come from the owner's sweeper, not a timer per wait
        self._wake_scheduled = False
        self._thread = _shared_ident(_thread_ident())
        # A thread-per-request server (werkzeug's) gives each stream a thread
        # with no hub; the hub made for it (here, or by a broker's subscribe
        # just before) must be destroyed with the stream, or its loop's file
        # descriptors outlive the thread.
        self._hub: Hub = thread_hub()
        self._own_hub = self._hub in _hubs_made_for_streams
        if self._own_hub:
            _hubs_made_for_streams.discard(self._hub)
        # The on_close callbacks: most streams have one, held as is (a list
        # of one costs 64 bytes per stream more); a list from the second on.
        self._callbacks: Callable[[], object] | list[Callable[[], object]] | None = None
        self._handler: gevent.Greenlet[Any, Any] | None = None
        self._reader: Any = None
        self._remote: list[bytes] | None = None  # pushed from other threads, not yet queued
        # What is left of the batch the server is writing, in pieces (_take).
        self._rest: memoryview | None = None
        # Loop time the reader started waiting (if _waiting), or the server
        # started writing our last piece (if not); 0 between the two.
        self._since = 0.0
        self._owner: EventSource | None = None  # the app that counts this stream

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Connection {state} {self.environ.get('PATH_INFO', '')!r}>"

    @property
    def closed(self) -> bool:
        """True once the stream has ended or is ending; :meth:`push` then raises."""
        return self._closed

    def push(self, *messages: Message) -> None:
        """Send ONE event made of *messages*.

        Each ``str`` or ``bytes`` adds data line(s) (``push("a", "b")`` sends an
        event whose data is ``"a\\nb"``); a dict or an :class:`Event` may also
        carry ``event``, ``id`` and ``retry``.

        :raises InvalidEvent: (a ``ValueError``) a message cannot be sent as
            given; nothing is queued.
        :raises ConnectionClosed: the stream has already ended.

        Never blocks. A client whose unsent output passes ``max_pending`` bytes
        is disconnected (it will reconnect with its last event id).
        """
        if self._closed:
            raise ConnectionClosed(f"{self!r} is closed")
        if len(messages) == 1 and type(messages[0]) is str:
            data = _encode_data(messages[0])
        else:
            data = build_event(*messages).encoded
        self._enqueue(data)

    def comment(self, text: str = "") -> None:
        """Send a comment line (``: text``), which clients ignore.

        :raises ConnectionClosed: the stream has already ended.
        """
        if self._closed:
            raise ConnectionClosed(f"{self!r} is closed")
        self._enqueue(encode_comment(text))

    def close(self) -> None:
        """End the stream once what is already queued has been written.

        Idempotent, and safe from any greenlet or thread.
        """
        if self._closed:
            return
        # Set here, in the caller's thread, so that push() raises at once from
        # every thread; what was pushed before is still written.
        self._closed = True
        if _thread_ident() != self._thread:
            self._call_in_hub(self._wake)
        else:
            self._wake()

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once when the stream has ended, however it ended.

        A callback added after the end is called at once. Exceptions are
        logged on the ``wsgi_eventsource`` logger.
        """
        # Under the lock _finish takes the callbacks with, from any thread:
        # either _finish runs it, or it sees the end and runs it here.
        with _remote_lock:
            if not self._finished:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = callback
                elif isinstance(callbacks, list):
                    callbacks.append(callback)
                else:
                    self._callbacks = [callbacks, callback]
                return
        _run_callback(callback)

    # -- internal: used by Stream, EventSource and the brokers ---------------

    def _enqueue(self, data: bytes) -> bool:
        """Queue encoded bytes; False if the connection is (now) closed."""
        if _thread_ident() != self._thread:
            return self._enqueue_remote(data)
        return self._enqueue_here(data)

    def _enqueue_here(self, data: bytes) -> bool:
        """:meth:`_enqueue` for callers already in this connection's thread
        (the brokers' fan-out), without asking again which thread it is."""
        if self._closed:
            return False
        return self._append(data)

    def _append(self, data: bytes) -> bool:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._max_pending and not self._waiting and self._reader is not None:
            # Over the limit while the server is still busy writing what we
            # gave it last: the client is not reading. (A burst pushed while
            # the reader waits is not a slow client; it is written next.)
            self._overflow()
            return False
        if self._waiting and not self._wake_scheduled:
            self._schedule_wake()
        return True

    def _schedule_wake(self) -> None:
        # Wake the reader from the hub, once per batch: pushes made before it
        # runs are written together (coalesced into one write). Streams of
        # one app share ONE loop callback per batch (a fan-out to thousands
        # of streams schedules one callback, not thousands).
        self._wake_scheduled = True
        owner = self._owner
        if owner is not None and self._swept:
            owner._wake_later(self)
        else:
            self._hub.loop.run_callback(self._wake_now)

    def _enqueue_remote(self, data: bytes) -> bool:
        # From another OS thread: hand the bytes over in order through a list
        # that the hub drains; one callback per batch. They are charged to
        # max_pending there, by _append, exactly as a push made in the hub at
        # that moment: this thread cannot tell a reader that waits (a burst
        # is then written next, as from the hub) from one blocked in a write,
        # since the reader changes state between any two of its bytecodes.
        # Memory stays bounded: while the reader is blocked the hub is free,
        # drains at its next turn and cuts a client that is not reading.
        with _remote_lock:
            if self._finished:
                return False
            remote = self._remote
            # Decided under the lock: the thread that creates the list (and
            # only that one) schedules the drain, so none is ever missed.
            first = remote is None
            if remote is None:
                remote = self._remote = []
            remote.append(data)
        if first:
            return self._call_in_hub(self._drain_remote)
        return True

    def _drain_remote(self) -> None:
        with _remote_lock:
            remote, self._remote = self._remote, None
        if remote and not self._finished:
            # Pushed before any close(): written even if closed since.
            for data in remote:
                if not self._append(data):
                    break

    def _call_in_hub(self, function: Callable[..., object], *args: object) -> bool:
        try:
            self._hub.loop.run_callback_threadsafe(function, *args)
        except Exception:  # the stream ended and its thread's hub is gone
            if not self._closed:
                raise
            return False
        return True

    def _wake(self) -> None:
        if self._waiting and not self._wake_scheduled:
            self._schedule_wake()

    def _wake_now(self) -> None:
        """In the hub: resume a waiting reader (it finds what was queued)."""
        self._wake_scheduled = False
        if self._waiting:
            self._reader.switch(None)

    def _keepalive_now(self) -> None:
        """In the hub: resume a waiting reader to send a keepalive."""
        if self._waiting:
            self._reader.switch(_KEEPALIVE_DUE)

    def _overflow(self) -> None:
        logger.warning(
            "%r: client is not reading (more than max_pending=%d bytes waiting); disconnecting",
            self,
            self._max_pending,
        )
        self._abort()

    def _abort(self) -> None:
        """Drop what is queued and cut the connection now."""
        if self._owner is not None and not self._finished:
            self._owner.dropped += 1
        self._closed = True
        self._chunks = []
        self._size = 0
        self._rest = None
        with _remote_lock:
            self._remote = None  # pushed from threads before the cut: dropped too
        reader = self._reader
        if self._waiting or reader is None:
            self._wake()
        elif isinstance(reader, (gevent.Greenlet, _socket_writer())):
            # The reader is blocked inside the server's socket write and will
            # not come back while the client does not read. Killing it makes the
            # server close the socket and call Stream.close() (gunicorn and
            # pywsgi both close the result in a finally); a SocketWriter (a
            # stream whose socket the worker took over) closes it itself.
            reader.kill(block=False)

    def _take(self) -> bytes:
        """The next item for the server: what is queued, coalesced, at most
        :data:`PIECE_SIZE` bytes of it at a time.

        Everything queued is taken at once as one batch (pushes made while it
        is written count against ``max_pending``, the batch does not), and a
        batch larger than a piece is handed out through a memoryview, one
        copied piece per call (WSGI items must be ``bytes``): O(n) in all.
        """
        rest = self._rest
        if rest is not None:
            if len(rest) > PIECE_SIZE:
                self._rest = rest[PIECE_SIZE:]
                return bytes(rest[:PIECE_SIZE])
            self._rest = None
            return bytes(rest)
        data = self._take_all()
        if len(data) <= PIECE_SIZE:
            return data
        rest = memoryview(data)
        self._rest = rest[PIECE_SIZE:]
        return bytes(rest[:PIECE_SIZE])

    def _take_all(self) -> bytes:
        """Everything queued, as one batch (coalesced); the queue is empty
        after, and pushes from now on count against ``max_pending`` anew."""
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _finish(self) -> None:
        """The server is done with the stream: release everything, run callbacks."""
        if self._finished:
            return
        self._closed = True
        self._finished = True
        self._chunks = []
        self._size = 0
        self._rest = None
        self._reader = None
        if self._owner is not None:
            self._owner._forget(self)
            self._owner = None
        handler = self._handler
        if handler is not None and handler is not gevent.getcurrent():
            self._handler = None
            # A handler that has not run yet (the client hung up at once) is
            # not cancelled: it runs once, as for every stream, and ends at
            # its first wait (see EventSource._run_handler). Killing it here
            # would skip it, and with it the on_close it would register.
            if handler.gr_frame is not None:  # started, and waiting somewhere
                handler.kill(block=False)
        with _remote_lock:
            callbacks, self._callbacks = self._callbacks, None
        if isinstance(callbacks, list):
            for callback in callbacks:
                _run_callback(callback)
        elif callbacks is not None:
            _run_callback(callbacks)
        if self._own_hub:
            self._own_hub = False
            if handler is not None:
                handler.join(timeout=1)
            self._hub.destroy(destroy_loop=True)


def _socket_writer() -> type[Any]:
    # Imported when first needed: socket_writer imports this module.
    from .socket_writer import SocketWriter

    return SocketWriter


def _run_callback(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("on_close callback %r raised", callback)
