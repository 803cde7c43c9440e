"""The :class:`EventSource` WSGI application."""

from __future__ import annotations

import logging
import math
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any
from wsgiref.util import is_hop_by_hop

import gevent
from gevent import GreenletExit

from .connection import PIECE_SIZE, Connection
from .encoding import encode_comment, encode_retry
from .errors import ConnectionClosed, Unauthorized
from .stream import Stream

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["REFUSAL_REASONS", "EventSource", "HandlerCallback", "HeadersLike", "spread_retry"]

logger = logging.getLogger("wsgi_eventsource")

#: ``handler_cb(conn, environ)``: called once per stream, in its own greenlet.
HandlerCallback = Callable[[Connection, "WSGIEnvironment"], object]
#: Response headers: a list of ``(name, value)`` pairs or a mapping.
HeadersLike = Iterable[tuple[str, str]] | Mapping[str, str]

DEFAULT_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    # no-transform: gzip and other transforming proxies must not buffer the stream.
    ("Cache-Control", "no-cache, no-transform"),
    # nginx: do not buffer this response (proxy_buffering for this location only).
    ("X-Accel-Buffering", "no"),
)

#: Why a stream may be refused softly (see :meth:`EventSource.refuse`): the keys
#: of :attr:`EventSource.refused`.
REFUSAL_REASONS = ("over_max_connections", "broker_unavailable", "shutting_down")

_ALLOW = "GET, OPTIONS"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than tab


def merge_headers(defaults: Iterable[tuple[str, str]], extra: HeadersLike | None) -> list[tuple[str, str]]:
    """*defaults* with *extra* added; an extra header replaces a default one
    of the same name (case-insensitive). Raises ``ValueError`` for a header no
    WSGI server may send."""
    pairs = list(extra.items()) if isinstance(extra, Mapping) else list(extra or ())
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"headers: each header must be a (name, value) tuple, not {pair!r}")
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"headers: name and value must be str: {pair!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: invalid header name {name!r}")
        if _BAD_VALUE.search(value) or (not value.isascii() and not _latin1(value)):
            raise ValueError(
                f"headers: invalid header value for {name!r}: {value!r} (control or non-latin-1 character)"
            )
        if is_hop_by_hop(name):
            # PEP 3333 forbids them, gunicorn drops them and HTTP/2 proxies
            # reject the response.
            raise ValueError(f"headers: {name!r} is a hop-by-hop header, which a WSGI app must not send")
    replaced = {name.lower() for name, _ in pairs}
    merged = [(n, v) for n, v in defaults if n.lower() not in replaced]
    merged.extend(pairs)
    values = {n.lower(): v for n, v in merged}
    if (
        values.get("access-control-allow-origin") == "*"
        and values.get("access-control-allow-credentials", "").lower() == "true"
    ):
        raise ValueError(
            "headers: Access-Control-Allow-Origin '*' cannot be combined with "
            "Access-Control-Allow-Credentials 'true'; name the allowed origin"
        )
    return merged


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def spread_retry(milliseconds: int) -> int:
    """A reconnection delay drawn uniformly from ``[R/2, 3R/2]`` for a hint of *R* ms.

    Every stream of a restarted worker (or every refused client) would
    otherwise come back in the same instant and refuse each other again; the
    spread turns a reconnect storm into a ramp of the same mean.
    """
    half = milliseconds // 2
    return random.randint(milliseconds - half, milliseconds + half)


#: The WSGI environ key where an ``authorize`` callback (:class:`~wsgi_eventsource.auth.TokenAuth`)
#: leaves the verified token's ``exp`` (POSIX seconds): :meth:`EventSource.open_stream`
#: ends a stream opened with it then, with a spread ``retry:`` hint, so that
#: access ends with the token and the page can refresh it before reconnecting.
EXPIRES_KEY = "wsgi_eventsource.token_expires"
#: The ``retry:`` hint (ms, spread) a stream gets when its token expires.
EXPIRED_RETRY = 1000


def unauthorized(
    start_response: StartResponse, exc: Unauthorized, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    """``401`` with ``WWW-Authenticate: Bearer`` (RFC 6750) and what is wrong."""
    return plain_response(
        start_response,
        "401 Unauthorized",
        f"Unauthorized: {exc.description}\n",
        [("WWW-Authenticate", exc.challenge), *headers],
    )


def check_authorized(
    authorize: Callable[..., bool], environ: WSGIEnvironment, start_response: StartResponse, *args: str
) -> list[bytes] | None:
    """Ask *authorize*; ``None`` if it allows the request, else the ``403``
    (it said no) or ``401`` (it raised :class:`Unauthorized`) to return."""
    try:
        if authorize(environ, *args):
            return None
    except Unauthorized as exc:
        return unauthorized(start_response, exc)
    return plain_response(start_response, "403 Forbidden", "Forbidden\n")


def plain_response(
    start_response: StartResponse, status: str, text: str, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    """Answer with a short ``text/plain`` body."""
    # A message may name what the client sent, which can be a lone surrogate
    # (a JSON "\udcff" key): escape it rather than fail with a 500.
    body = text.encode("utf-8", "backslashreplace")
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *headers,
        ],
    )
    return [body]


class EventSource:
    """A WSGI application that serves one Server-Sent Events stream per request.

    ::

        def handler(conn, environ):
            conn.push("hello")

        app = EventSource(handler, headers={"Access-Control-Allow-Origin": "https://example.org"})

    :param handler_cb: ``handler_cb(conn, environ)``, called once per stream in
        its own greenlet with a :class:`Connection`. Returning does not end the
        stream: keep ``conn`` and push to it later from any greenlet or thread.
        The stream ends on ``conn.close()``, on client disconnect or at server
        shutdown. If the handler raises, the traceback is logged on the
        ``wsgi_eventsource`` logger and its stream is closed. If the client
        hangs up before the handler's first turn, it still runs, on a closed
        connection (``on_close`` callbacks run at once), and is ended at its
        first wait.
    :param headers: extra response headers, a list of ``(name, value)`` pairs or
        a dict; one of the same name (case-insensitive) replaces a default
        header. Hop-by-hop headers are refused with ``ValueError``.
    :param keepalive: seconds of idleness after which a comment line is sent;
        ``None`` disables it. It is also what bounds disconnect detection: a
        closed client is noticed at the second write after it went away.
    :param retry: if set, the stream starts with ``retry: N`` (milliseconds),
        the client's reconnection delay.
    :param authorize: ``authorize(environ) -> bool``; ``False`` answers ``403``
        and the handler is never called.
    :param max_pending: bytes of unsent output a connection may hold before
        its client is treated as not reading and disconnected: what is pushed
        while the server is still writing what was queued before (a burst
        pushed while the stream is idle is written next, whatever its size).
        Pushes from other threads are charged alike, when the stream's hub
        takes them over. Events fanned out to many connections are shared,
        not copied, so this bounds queue length more than memory.
    :param write_timeout: seconds without progress after which the client is
        taken as gone and its connection is cut: one piece of at most
        :data:`~wsgi_eventsource.connection.PIECE_SIZE` (64 KiB) not written
        in that time (a client that stopped reading, even with nothing more
        pushed to it). A slow client that keeps reading is not cut, however
        long a big event or replay takes it. Applies to streams served from a
        gevent hub (gunicorn ``-k gevent``, ``gevent.pywsgi``); a
        thread-per-request server (werkzeug's) blocks its OS thread in the
        write, out of reach.
    :param close_timeout: the same, for a stream that is closed (by
        :meth:`Connection.close`, :meth:`close_all` or :meth:`shutdown`) and
        still writing out what was queued: seconds without progress before its
        connection is cut.
    :param shutdown_retry: when the server shuts down (see :meth:`shutdown`),
        send ``retry: N`` before closing each stream, to spread reconnects.
    :param refusal_retry: the ``retry:`` hint (ms, spread per stream as
        :func:`spread_retry` does) of a soft refusal: see :meth:`refuse`.
    :param shutdown_signals: signals on which open streams are closed before
        the server's own handler runs (default ``SIGTERM``, which is how
        gunicorn stops a worker). Installed on the first request, in the main
        thread, and only where a Python handler is already set (so a process
        that would simply die on the signal is not changed). Empty disables.

    Requests other than ``GET`` answer ``405``; ``OPTIONS`` answers a CORS
    preflight from the configured ``Access-Control-Allow-*`` headers.

    .. versionadded:: 0.1

    .. versionchanged:: 0.1
        ``write_timeout`` and ``close_timeout`` measure time without progress
        (one piece not written), not the time of a whole write.
    """

    #: Data sent first on every stream, so headers reach the client at once
    #: (``onopen`` fires) even before the first event.
    preamble_comment = "ok"

    def __init__(
        self,
        handler_cb: HandlerCallback,
        headers: HeadersLike | None = None,
        *,
        keepalive: float | None = 15.0,
        retry: int | None = None,
        authorize: Callable[[WSGIEnvironment], bool] | None = None,
        max_pending: int = 1024 * 1024,
        write_timeout: float = 60.0,
        close_timeout: float = 2.0,
        shutdown_retry: int | None = None,
        refusal_retry: int = 5000,
        shutdown_signals: Iterable[int] = (signal.SIGTERM,),
    ) -> None:
        if not callable(handler_cb):
            raise TypeError(f"handler_cb must be callable, not {type(handler_cb).__name__}")
        if keepalive is not None and not _seconds(keepalive):
            raise ValueError(f"keepalive must be a positive number of seconds or None, not {keepalive!r}")
        for name, value in (("write_timeout", write_timeout), ("close_timeout", close_timeout)):
            if not _seconds(value):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending <= 0:
            raise ValueError(f"max_pending must be a positive int (bytes), not {max_pending!r}")
        if authorize is not None and not callable(authorize):
            raise TypeError("authorize must be callable or None")
        preamble = encode_comment(self.preamble_comment)
        if retry is not None:
            preamble = encode_retry(retry) + preamble
        if shutdown_retry is not None:
            encode_retry(shutdown_retry)  # validates
        encode_retry(refusal_retry)  # validates
        self.handler_cb = handler_cb
        self.keepalive = keepalive
        self.retry = retry
        self.authorize = authorize
        self.max_pending = max_pending
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self.shutdown_retry = shutdown_retry
        self.refusal_retry = refusal_retry
        self.shutdown_signals = tuple(shutdown_signals)
        self.headers = merge_headers(DEFAULT_HEADERS, headers)
        self._preamble = preamble
        self._connections: set[Connection] = set()
        self._signals_installed = False
        self._shutting_down = False
        self._sweeper: Any = None
        self._sweep_hub: Any = None
        self._to_wake: list[Connection] = []
        self._wake_scheduled = False
        #: Streams cut because their client stopped reading (``max_pending``
        #: passed, or a write blocked past ``write_timeout``/``close_timeout``).
        self.dropped = 0
        #: Streams refused softly, per reason (:data:`REFUSAL_REASONS`).
        self.refused: Counter[str] = Counter(dict.fromkeys(REFUSAL_REASONS, 0))

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method != "GET":
            if method == "OPTIONS":
                return self._preflight(start_response)
            return plain_response(
                start_response, "405 Method Not Allowed", f"{method} is not allowed; use GET\n", [("Allow", _ALLOW)]
            )
        if self.authorize is not None:
            refusal = check_authorized(self.authorize, environ, start_response)
            if refusal is not None:
                return refusal
        return self.open_stream(environ, start_response, self.handler_cb)

    def open_stream(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        handler_cb: HandlerCallback | None,
        preamble: bytes = b"",
    ) -> Stream:
        """Start the response and run ``handler_cb`` on a new connection.

        For apps built on this one (such as the channel subscriber app) that
        check the request themselves. *preamble* is sent right after the
        stream's own preamble and does not count against ``max_pending``.
        With ``handler_cb=None`` no greenlet is started; the caller uses
        :attr:`Stream.connection`.
        """
        if not self._signals_installed:
            self._install_signal_handlers()
        if self._shutting_down:
            # Opened after shutdown began (the server still accepts for a
            # moment): a soft refusal, a spread retry hint, then the end; no
            # handler.
            self.refused["shutting_down"] += 1
            retry = self.refusal_retry if self.shutdown_retry is None else self.shutdown_retry
            preamble = _refusal_body(retry, "this server is shutting down; reconnect shortly")
        conn = Connection(environ, max_pending=self.max_pending, preamble=self._preamble + preamble)
        start_response("200 OK", list(self.headers))
        if self._shutting_down:
            conn._closed = True
            return Stream(conn, self.keepalive)
        conn._owner = self  # only now: start_response may raise
        self._connections.add(conn)
        if self._sweeper is None and not conn._own_hub:
            self._start_sweeper(conn._hub)
        # Streams in the sweeper's hub get their keepalives from it, and it
        # keeps that loop alive while any stream is open.
        conn._swept = conn._hub is self._sweep_hub
        if conn._swept and not self._sweeper.ref:
            self._sweeper.ref = True
        if handler_cb is not None:
            conn._handler = _HandlerGreenlet.spawn(self._run_handler, handler_cb, conn, environ)
        expires = environ.get(EXPIRES_KEY)
        if isinstance(expires, (int, float)):
            _end_when_expired(conn, float(expires))
        return Stream(conn, self.keepalive)

    @property
    def connections(self) -> frozenset[Connection]:
        """The streams open right now."""
        return frozenset(self._connections)

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` has begun: new streams are refused softly."""
        return self._shutting_down

    @property
    def connection_count(self) -> int:
        """How many streams are open right now (cheaper than ``len(connections)``)."""
        return len(self._connections)

    def close_all(self, retry: int | None = None) -> int:
        """Close every open stream, after sending a ``retry:`` hint if given.

        The hint of each stream is drawn from ``[retry/2, 3*retry/2]``
        (:func:`spread_retry`), so the clients do not all come back in the same
        instant. Call it before stopping a server that does not end its
        handlers by itself. Safe from any greenlet or thread. Returns how many
        streams were asked to close.

        .. versionchanged:: 0.1
            The hint is spread per stream.
        """
        if retry is not None:
            encode_retry(retry)  # validates before anything is sent
        connections = list(self._connections)
        for conn in connections:
            if retry is not None:
                conn._enqueue(encode_retry(spread_retry(retry)))
            conn.close()
        return len(connections)

    def refuse(self, start_response: StartResponse, reason: str, why: str) -> list[bytes]:
        """Turn a stream request away *softly*, for a reason that will pass.

        A browser's ``EventSource`` gives up for good on any answer that is not
        ``200 text/event-stream`` (whatever ``Retry-After`` says), but
        reconnects when such a stream ends. So the refusal is a ``200`` event
        stream with this app's headers, a ``retry:`` hint spread around
        :attr:`refusal_retry` (:func:`spread_retry`), a comment saying *why*,
        and the end. Counted in :attr:`refused` under *reason*, one of
        :data:`REFUSAL_REASONS`.
        """
        if reason not in self.refused:
            raise ValueError(f"reason must be one of {', '.join(REFUSAL_REASONS)}, not {reason!r}")
        self.refused[reason] += 1
        body = _refusal_body(self.refusal_retry, why)
        start_response("200 OK", [*self.headers, ("Content-Length", str(len(body)))])
        return [body]

    def shutdown(self, retry: int | None = None) -> int:
        """Close every open stream (after ``retry: N`` if given) and end any
        stream opened from now on at once, with the same hint.

        What the ``SIGTERM`` handler does. Returns how many streams were open.
        """
        self._shutting_down = True
        if retry is not None:
            self.shutdown_retry = retry
        return self.close_all(self.shutdown_retry)

    def _start_sweeper(self, hub: Any) -> None:
        # One periodic timer per app, not one per stream or per wait. It sends
        # keepalives to idle streams, and cuts connections whose current write
        # (one piece, at most PIECE_SIZE bytes) has been blocked too long: the
        # client stopped reading. So close(), close_all() and shutdown always
        # finish.
        interval = 1.0 if self.keepalive is None else min(1.0, self.keepalive / 2)
        self._sweep_hub = hub
        self._sweeper = hub.loop.timer(interval, interval)
        self._sweeper.start(self._sweep, hub.loop, interval)
        self._sweeper.ref = False  # only while streams are open: see open_stream and _forget

    def _sweep(self, loop: Any, interval: float) -> None:
        now = loop.now()
        # Idle at least this long at a sweep: due now, or before the next sweep.
        due = None if self.keepalive is None else self.keepalive - interval
        for conn in list(self._connections):
            if not conn._swept:
                # A stream of another thread's hub (a thread-per-request
                # server): it keeps its own time (its loop's clock stands
                # still while that thread blocks in a write), its writes block
                # an OS thread out of reach from here, and its state belongs
                # to that thread. Not this sweeper's to time or cut.
                continue
            if conn._waiting:
                if due is not None and now - conn._since >= due:
                    conn._keepalive_now()
                continue
            started = conn._since
            if started and not conn._finished:
                limit = self.close_timeout if conn._closed else self.write_timeout
                if now - started > limit:
                    logger.warning(
                        "%r: no progress for %.1fs (a write of at most %d bytes blocked); disconnecting",
                        conn,
                        now - started,
                        PIECE_SIZE,
                    )
                    conn._abort()

    def _forget(self, conn: Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._sweeper is not None:
            self._sweeper.ref = False

    def _wake_later(self, conn: Connection) -> None:
        self._to_wake.append(conn)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._sweep_hub.loop.run_callback(self._wake_all)

    def _wake_all(self) -> None:
        # In the hub: resume every reader that has something to write. Each
        # runs until its write is done (or would block) and comes back here.
        self._wake_scheduled = False
        batch, self._to_wake = self._to_wake, []
        for conn in batch:
            conn._wake_now()

    def _run_handler(self, handler_cb: HandlerCallback, conn: Connection, environ: WSGIEnvironment) -> None:
        if conn._finished:
            # The stream ended before this greenlet first ran. The handler
            # still runs once, on a closed connection (push raises, on_close
            # callbacks run at once), and is ended at its first wait.
            gevent.getcurrent().kill(block=False)
        try:
            handler_cb(conn, environ)
        except GreenletExit:
            raise
        except ConnectionClosed:
            logger.debug("%r: handler pushed after the stream ended", conn)
        except Exception:
            logger.exception("handler %r raised; closing %r", handler_cb, conn)
            conn.close()
        finally:
            if conn._handler is gevent.getcurrent():
                conn._handler = None

    def _preflight(self, start_response: StartResponse) -> list[bytes]:
        headers = [("Allow", _ALLOW)]
        cors = [(n, v) for n, v in self.headers if n.lower().startswith("access-control-")]
        if any(n.lower() == "access-control-allow-origin" for n, _ in cors):
            headers += cors
            headers += [
                ("Access-Control-Allow-Methods", "GET"),
                ("Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control"),
                ("Access-Control-Max-Age", "86400"),
            ]
        start_response("204 No Content", headers)
        return []

    def _install_signal_handlers(self) -> None:
        self._signals_installed = True
        for signum in self.shutdown_signals:
            try:
                previous = signal.getsignal(signum)
                if not callable(previous):
                    continue
                signal.signal(signum, self._make_signal_handler(previous))
            except ValueError:  # not the main thread
                return

    def _make_signal_handler(
        self, previous: Callable[[int, FrameType | None], object]
    ) -> Callable[[int, FrameType | None], None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            # A signal handler may interrupt any code: only schedule the work.
            gevent.get_hub().loop.run_callback_threadsafe(self.shutdown)
            previous(signum, frame)

        return on_signal


class _HandlerGreenlet(gevent.Greenlet):  # type: ignore[misc]  # gevent has no type hints
    """The greenlet ``handler_cb`` runs in.

    gevent records where a greenlet was spawned (``GEVENT_TRACK_GREENLET_TREE``,
    on by default) by walking up to ``spawning_stack_limit`` Python frames, and
    on CPython 3.11+ that walk makes a frame object for each frame it passes.
    Below this app sit the server's frames, which live as long as the stream:
    under gunicorn that was 5 frame objects, 1,232 bytes per stream kept after
    the handler ended. One frame (``open_stream``'s) says where it came from.
    """

    spawning_stack_limit = 1


def _refusal_body(retry: int, why: str) -> bytes:
    return encode_retry(spread_retry(retry)) + encode_comment(why)


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _end_when_expired(conn: Connection, expires: float) -> None:
    """End *conn* at *expires* (POSIX seconds), after a spread ``retry:`` hint.
    A loop timer in the stream's hub: nothing per stream without a token."""
    timer = conn._hub.loop.timer(max(0.0, expires - time.time()))

    def expire() -> None:
        if not conn.closed:
            conn._enqueue(encode_retry(spread_retry(EXPIRED_RETRY)))
            conn.close()

    timer.start(expire)
    conn.on_close(timer.close)
