"""How a publishing greenlet shares its thread's gevent loop with the fan-out.

A publish in this process only queues the event at each subscriber's
:class:`~wsgi_eventsource.connection.Connection` and schedules ONE loop
callback that wakes the writers: the bytes go out when the loop gets a turn.
A greenlet that publishes again and again without ever blocking never gives
it one. That is what a keep-alive HTTP publisher with pipelined requests
does to the request's greenlet: its next request is always in the socket
buffer already, so gevent's ``recv`` returns at once, and the greenlet reads,
publishes and answers request after request while every subscriber's events
pile up unwritten. Measured (issue 12, 100 subscribers, 20,000 publishes
over one connection flat out): p99 2,301 ms, and nginx's nchan 67 ms on the
same run.

:class:`LoopTurns` is the rule that prevents it: after ``every`` publishes
in a row in one thread with no turn of its loop in between, the publisher
yields (``gevent.sleep(0)``) before it makes the next. Loop callbacks run
in the order they were scheduled, so the writers' wake-ups, queued by those
publishes, all run before the publisher resumes. A publisher that blocks anyway (waiting for
its next request, or for Redis) gives the loop its turns by itself and never
yields here.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import gevent
from gevent import getcurrent
from gevent._hub_local import get_hub_if_exists

if TYPE_CHECKING:
    from gevent.hub import Hub

__all__ = ["LoopTurns"]


class _Turn:
    """One hub's count of publishes since its loop last had a turn."""

    __slots__ = ("in_a_row", "marked")

    def __init__(self) -> None:
        self.in_a_row = 0
        self.marked = False  # a reset() callback is scheduled: it runs at the loop's next turn

    def reset(self) -> None:
        self.in_a_row = 0
        self.marked = False


class LoopTurns:
    """Give the loop a turn after *every* publishes in a row without one.

    Call :meth:`before_publish` before each publish, in the publishing greenlet.

    :param every: publishes one greenlet may make in a row, while its loop
        has had no turn, before it yields to let the writers run. Fewer
        means lower latency for subscribers and fewer events coalesced per
        write (more writes per event).

    .. versionadded:: 0.1
    """

    __slots__ = ("_turns", "every")

    def __init__(self, every: int) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int (publishes), not {every!r}")
        self.every = every
        # Per hub (one per OS thread that runs gevent); a hub that is
        # destroyed with its thread takes its count with it.
        self._turns: weakref.WeakKeyDictionary[Hub, _Turn] = weakref.WeakKeyDictionary()

    def before_publish(self) -> bool:
        """Count the publish about to be made; first yield to the loop if
        *every* were made in a row since its last turn. True if it yielded.

        Before the publish, not after: a greenlet killed while it yields
        (a worker shutting down) has published nothing, so its client,
        left without an answer, can publish again without a duplicate."""
        hub = get_hub_if_exists()
        if hub is None or getcurrent() is hub:
            # No loop in this thread (a thread-per-request server: OS threads
            # are preempted anyway), or called from a loop callback: nothing
            # to give a turn to, and the hub cannot wait on itself.
            return False
        turn = self._turns.get(hub)
        if turn is None:
            turn = self._turns[hub] = _Turn()
        yielded = False
        if turn.in_a_row >= self.every:
            # Behind every callback already scheduled: the wake-ups of the
            # writers those publishes fed, and the reset() the first of them
            # scheduled.
            gevent.sleep(0)
            turn.in_a_row = 0
            yielded = True
        turn.in_a_row += 1
        if not turn.marked:
            turn.marked = True
            hub.loop.run_callback(turn.reset)
        return yielded
