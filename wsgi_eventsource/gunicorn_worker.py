"""A gunicorn gevent worker that serves open event streams with no greenlet each.

::

    gunicorn -k wsgi_eventsource.gunicorn_worker.GeventWorker app:app

It is gunicorn's own ``-k gevent`` worker (every option works as there), with
one difference: once an :class:`~wsgi_eventsource.EventSource` stream's
headers are sent, the worker takes the stream's socket from gunicorn and ends
the request's greenlet. A :class:`~wsgi_eventsource.socket_writer.SocketWriter`
then writes the stream from the hub, straight to the socket. ``wsgi-eventsource
serve`` runs on it.

What it changes, measured in ``docs/benchmarks.rst``:

- An idle stream no longer holds a greenlet (its saved stack and frames) or
  gunicorn's per-request objects: about a third of the memory per stream.
- An event is written to each subscriber with one ``send`` from the hub, with
  no switch into a greenlet and back and no pass through gunicorn's
  ``Response.write``; the chunk header is made once per event.
- A client that hangs up is noticed at once (the socket is watched for
  reading), not at the second write after it went away.
- Open streams no longer hold one of gunicorn's ``worker_connections`` slots
  each: limit them with the app's own ``max_connections`` (the hub's
  ``--max-connections``), and the open files with ``ulimit -n``.

Everything else is unchanged: ``max_pending``, ``write_timeout``,
``close_timeout``, keepalives, ``close_all`` and the ``SIGTERM`` shutdown,
pushes from other threads. A response that is not an event stream, a stream
over TLS or HTTP/2 (the socket then is not a plain one to write to), or a
stream wrapped by a middleware (it is no longer the app's own iterator) is
served by gunicorn as usual. When the worker stops, for a signal or retired
after ``max_requests`` (no hook needed, unlike the stock worker: see
:mod:`wsgi_eventsource.gunicorn_hooks`), it ends the streams of its apps
(the ones it took over and the ones gunicorn serves) as ``SIGTERM`` does
(:meth:`EventSource.shutdown <wsgi_eventsource.EventSource.shutdown>`) at
once, waits for them as gunicorn waits for its requests, until they have
ended or ``graceful_timeout`` has passed, and cuts the ones left then.

Divergences from the stock worker: the connection of a stream that ended is
closed rather than kept alive for a next request (its headers say
``Connection: close``); gunicorn's access log line
of a stream is written when the stream starts (its time is the time to the
headers), and ``post_request`` runs then too; and ``environ["gunicorn.socket"]``
is closed once the stream is taken over (the stream owns the descriptor; the
environ is otherwise left as it was, for the handler).

.. versionadded:: 0.1
"""

from __future__ import annotations

import _socket
import ssl
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import gevent
from gunicorn.http.wsgi import Response
from gunicorn.workers.ggevent import GeventWorker as _StockGeventWorker

from .socket_writer import SocketWriter
from .stream import Stream

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from .app import EventSource

__all__ = ["GeventWorker"]


class _NoteResponse:
    """The worker's WSGI app: the user's, noting the gunicorn response of
    every event stream it returns (so that the worker can send its headers)."""

    __slots__ = ("app",)

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        result = self.app(environ, start_response)
        if type(result) is Stream:
            result._response = getattr(start_response, "__self__", None)
        return result


class GeventWorker(_StockGeventWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's gevent worker, serving event streams from the hub."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The streams this worker took over and that are still open.
        self.streams: set[SocketWriter] = set()
        # The apps of every stream it served: it ends their streams when it
        # stops (the ones it took over and the ones gunicorn serves).
        self._apps: set[EventSource] = set()
        self._stopped_at: float | None = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: WSGIApplication = getattr(self, "wsgi")  # noqa: B009  (set by gunicorn, untyped)
        self.wsgi = _NoteResponse(app)

    def is_already_handled(self, respiter: object) -> bool:
        if type(respiter) is Stream:
            owner = respiter.connection._owner
            if owner is not None:
                self._apps.add(owner)
            if respiter._response is not None and self._take_over(respiter):
                # gunicorn's way for a worker to end the request's greenlet
                # without touching the response: the connection is "closed"
                # (its socket object, which no longer owns the descriptor).
                raise StopIteration("event stream taken over by the hub")
        return bool(super().is_already_handled(respiter))

    def notify(self) -> None:
        super().notify()
        # gunicorn calls this while it waits for its requests to finish after
        # the worker stopped: streams it serves itself (over TLS, HTTP/2) are
        # among them, and would hold it until graceful_timeout.
        if not self.alive and self._stopped_at is None:
            self._end_streams()

    def _end_streams(self) -> None:
        """End every stream of this worker's apps the way SIGTERM does (after
        a signal their apps have begun already; a retirement after
        max_requests comes without one)."""
        self._stopped_at = time.monotonic()
        for app in list(self._apps):
            app.shutdown()

    def _take_over(self, stream: Stream) -> bool:
        resp: Any = stream._response  # gunicorn.http.wsgi.Response, when it is one
        stream._response = None
        conn = stream.connection
        if (
            type(resp) is not Response
            or isinstance(resp.sock, ssl.SSLSocket)
            or not hasattr(resp.sock, "detach")
            or resp.status_code != 200
            or not conn._swept  # its keepalives and timeouts come from its app's sweeper
        ):
            return False
        started = datetime.now()
        # The connection is closed when the stream ends (SocketWriter): say
        # so, or a client or proxy (nginx's upstream keepalive pool) may send
        # its next request into the closing socket.
        resp.force_close()
        try:
            resp.send_headers()  # a blocking (cooperative) write, in the request's greenlet
        except BaseException:
            stream.close()  # what gunicorn would have done, in its finally
            raise
        sock = _socket.socket(fileno=resp.sock.detach())
        sock.setblocking(False)
        environ = conn.environ
        self.log.access(resp, resp.req, environ, datetime.now() - started)
        writer = SocketWriter(conn, sock, chunked=resp.chunked, registry=self.streams)
        conn._reader = writer
        writer.switch()  # what is queued already: the preamble, a replay
        return True

    def run(self) -> None:
        super().run()
        # The worker is stopping. gunicorn waited for its requests; the
        # streams it handed over are not among them. End them (if gunicorn
        # had no request left to wait for, notify() has not done it yet),
        # wait for them as gunicorn waits for its requests (from the same
        # moment on), then cut what is left.
        if self._stopped_at is None:
            self._end_streams()
        deadline = (self._stopped_at or time.monotonic()) + self.cfg.graceful_timeout
        while self.streams and time.monotonic() < deadline:
            self.notify()
            gevent.sleep(0.05)
        for writer in list(self.streams):
            writer.cut()  # now, callbacks in this greenlet: the worker exits next
        # Streams that ended just before run their on_close callbacks in
        # greenlets of their own (see SocketWriter._end): let them finish.
        deadline = time.monotonic() + 1.0
        while self.streams and time.monotonic() < deadline:
            gevent.sleep(0.01)
