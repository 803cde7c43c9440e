"""The hub's live dashboard: ``GET /dashboard`` (a page) and
``GET /dashboard/events`` (its event stream).

While anyone watches, once a second (:attr:`Dashboard.interval`) the
process computes its numbers (``/stats`` of every worker, see
:mod:`wsgi_eventsource.workers`, with the broker's state), adds the events
published and delivered per second since the last time, encodes that once
as one ``stats`` event and queues the same bytes on every viewer's stream.
A viewer that opens the stream first gets ``history`` (the rates of the
last :attr:`Dashboard.history_length` seconds, for the chart) and the
latest ``stats``. Nothing runs on the path of an event: the counters read
are the ones ``/stats`` reads, and without viewers nothing runs at all.

Whether the broker answers is asked by a greenlet of its own, once a
second, and the ticker reads its last answer: a Redis that does not answer
(frozen, or a network that drops packets) would otherwise hold every tick
for a socket timeout, just when the dashboard matters. Past a second
without an answer, the broker counts as unreachable.

The viewers' streams belong to an :class:`~wsgi_eventsource.EventSource`
of their own, so that they are not counted among the channels' streams in
``/stats``; at shutdown they end with the hub's ``retry:`` hint like any
stream. Who may watch is the hub's business (:class:`~wsgi_eventsource.hub.Hub`).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from .app import EventSource
from .connection import Connection
from .encoding import encode_event

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .stream import Stream

__all__ = ["Dashboard"]


def _no_handler(conn: Connection, environ: WSGIEnvironment) -> None:
    """Viewers get what the ticker queues; nothing runs per viewer."""


def _encode(event: str, payload: object) -> bytes:
    return encode_event(json.dumps(payload, separators=(",", ":")), event=event)


class Dashboard:
    """The numbers behind ``/dashboard``, computed once a second while
    anyone watches and shared by every viewer of this process.

    :param numbers: what a ``stats`` event shows (the hub's ``/stats``), a
        JSON-able dict with ``events.published`` and ``events.delivered``.
    :param probe: ``probe() -> bool``, whether the broker answers right now
        (``RedisBroker.ping``); ``None`` for a broker in this process.
    :param keepalive: seconds between keepalive comments (none are needed
        while the ticker runs, but a viewer's stream outlives a stalled one).
    :param shutdown_retry: the ``retry:`` hint (ms, spread) viewers get when
        the server shuts down.

    .. versionadded:: 0.1
    """

    #: Seconds between two ``stats`` events.
    interval: float = 1.0
    #: Samples of the events-per-second chart kept (one per :attr:`interval`):
    #: five minutes.
    history_length: int = 300

    def __init__(
        self,
        numbers: Callable[[], dict[str, Any]],
        *,
        probe: Callable[[], bool] | None = None,
        keepalive: float | None = 15.0,
        shutdown_retry: int | None = 2000,
    ) -> None:
        self._numbers = numbers
        self._probe = probe
        self._reachable: bool | None = None  # the probe's last answer
        self._asking_since: float | None = None  # monotonic time the probe's question went out
        self._prober: gevent.Greenlet[Any, Any] | None = None
        #: The viewers' streams.
        self.source = EventSource(_no_handler, keepalive=keepalive, shutdown_retry=shutdown_retry)
        #: ``{"t": POSIX seconds, "published": per second, "delivered": per second}``, oldest first.
        self.history: deque[dict[str, float]] = deque(maxlen=self.history_length)
        #: How many times the numbers were computed (once per tick, whatever the viewers).
        self.snapshots = 0
        self._latest = b""
        self._latest_at = -float("inf")
        self._previous: tuple[float, int, int] | None = None  # monotonic time, published, delivered
        self._ticker: gevent.Greenlet[Any, Any] | None = None

    @property
    def viewers(self) -> int:
        """Dashboard streams open in this process."""
        return self.source.connection_count

    def open(self, environ: WSGIEnvironment, start_response: StartResponse) -> Stream:
        """A viewer's stream (the caller has checked who asks): ``history``,
        the latest ``stats``, then a ``stats`` every :attr:`interval`."""
        if self.source.shutting_down:
            return self.source.open_stream(environ, start_response, None)  # a soft refusal
        stream = self.source.open_stream(environ, start_response, None, _encode("history", list(self.history)))
        if time.monotonic() - self._latest_at >= self.interval:
            self.snapshot()  # nobody watched lately (or a second has passed); counts this viewer
        stream.connection._enqueue(self._latest)
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick)
        if self._prober is None and self._probe is not None:
            self._prober = gevent.spawn(self._ask_broker)
        return stream

    def snapshot(self) -> bytes:
        """Compute the numbers now and encode them (the latest ``stats`` event)."""
        numbers = self._numbers()
        self.snapshots += 1
        now = time.monotonic()
        published, delivered = int(numbers["events"]["published"]), int(numbers["events"]["delivered"])
        rates = None
        previous = self._previous
        if previous is not None and now - previous[0] < 3 * self.interval:  # no rate across a pause
            elapsed = max(now - previous[0], 1e-6)
            # A worker that exits takes its counts with it: never a negative rate.
            rates = {
                "t": round(time.time(), 3),
                "published": round(max(0, published - previous[1]) / elapsed, 2),
                "delivered": round(max(0, delivered - previous[2]) / elapsed, 2),
            }
            self.history.append(rates)
        self._previous = (now, published, delivered)
        broker = {**numbers.get("broker", {}), **self._broker_state(now)}
        self._latest = _encode("stats", {**numbers, "broker": broker, "rates": rates, "viewers": self.viewers})
        self._latest_at = now
        return self._latest

    def _broker_state(self, now: float) -> dict[str, Any]:
        """``probe`` (whether there is one), ``reachable`` (None: no probe, or
        no answer yet) and ``silent_seconds`` (how long the question in flight
        has been waiting)."""
        if self._probe is None:
            return {"probe": False, "reachable": None, "silent_seconds": None}
        silent = None if self._asking_since is None else now - self._asking_since
        reachable = False if silent is not None and silent > self.interval else self._reachable
        return {"probe": True, "reachable": reachable, "silent_seconds": None if silent is None else round(silent, 1)}

    def _ask_broker(self) -> None:
        probe = self._probe
        assert probe is not None
        try:
            while self.source.connection_count:
                asked = self._asking_since = time.monotonic()
                try:
                    self._reachable = bool(probe())
                except Exception:
                    self._reachable = False
                self._asking_since = None
                gevent.sleep(max(0.0, self.interval - (time.monotonic() - asked)))
        finally:
            self._prober = None

    def _tick(self) -> None:
        try:
            while self.source.connection_count:
                gevent.sleep(self.interval)
                if not self.source.connection_count:
                    break
                try:
                    wire = self.snapshot()
                except Exception:  # a full disk, a Redis error: the next second tries again
                    import logging

                    logging.getLogger("wsgi_eventsource").exception("could not compute the dashboard's numbers")
                    continue
                for conn in self.source.connections:
                    conn._enqueue(wire)  # the same bytes for every viewer: encoded once
        finally:
            self._ticker = None
