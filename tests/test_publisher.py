"""Publish requests and the fan-out they cause share the loop (issue 12).

:class:`~wsgi_eventsource.publisher.LoopTurns` alone, then the publisher app
on a real server with a real keep-alive publisher whose requests are
pipelined, as the benchmark's C client sends them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from gevent._hub_local import get_hub_if_exists

from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import MemoryBroker
from wsgi_eventsource.brokers.apps import PublisherApp
from wsgi_eventsource.encoding import Data
from wsgi_eventsource.hub import Hub
from wsgi_eventsource.publisher import LoopTurns

pytestmark = pytest.mark.server


def test_after_k_publishes_in_a_row_the_next_waits_for_the_callbacks_scheduled_before_it() -> None:
    """Issue 12: after K publishes with no turn of the loop in between, the
    next one yields first, and every loop callback scheduled by those K (the
    writers' wake-ups) has run when it returns; the K do not yield."""
    turns = LoopTurns(4)
    ran: list[int] = []
    yielded = []
    hub = gevent.get_hub()

    def publisher() -> None:
        for i in range(10):
            yielded.append(turns.before_publish())
            if yielded[-1]:
                assert ran == list(range(i)), ran  # the wake-ups of every publish before it ran
            hub.loop.run_callback(ran.append, i)  # what a publish schedules: a wake-up

    gevent.spawn(publisher).join(timeout=5)
    assert yielded == [False] * 4 + [True] + [False] * 3 + [True, False]


def test_a_turn_of_the_loop_between_publishes_starts_the_count_again() -> None:
    """Issue 12: a publisher that blocks anyway (its next request is not
    there yet) gives the loop its turns: it is never made to yield."""
    turns = LoopTurns(3)
    yielded = []

    def publisher() -> None:
        for _ in range(4):
            yielded.append(turns.before_publish())
            yielded.append(turns.before_publish())
            yielded.append(turns.before_publish())
            gevent.sleep(0.001)  # blocks: the loop runs

    gevent.spawn(publisher).join(timeout=5)
    assert yielded == [False] * 12


def test_a_thread_without_a_hub_is_never_made_to_yield_or_given_a_hub() -> None:
    """A thread-per-request server's publishing thread: OS threads are
    preempted anyway; no gevent hub is made for it."""
    turns = LoopTurns(1)
    seen: list[object] = []

    def thread() -> None:
        seen.append(turns.before_publish())
        seen.append(get_hub_if_exists())

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join(5)
    assert seen == [False, None]


@pytest.mark.parametrize("every", [0, -1, 1.5, True, "3"])
def test_every_must_be_a_positive_int(every: Any) -> None:
    with pytest.raises(ValueError, match="every must be a positive int"):
        LoopTurns(every)


class RecordingBroker(MemoryBroker):
    """A MemoryBroker that notes, at each publish, the most events any
    subscriber stream holds unwritten (queued at its Connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.app: Hub | None = None
        self.most_unwritten = 0

    def publish(self, channel: str, data: Data, *, event: str | None = None, retry: int | None = None) -> str:
        event_id = super().publish(channel, data, event=event, retry=retry)
        assert self.app is not None
        for conn in self.app.subscriber.connections:
            self.most_unwritten = max(self.most_unwritten, len(conn._chunks))
        return event_id


def pipelined_publishes(port: int, count: int) -> list[int]:
    """POST *count* events to channel ``c`` in ONE write on one keep-alive
    connection (every request is in the server's buffer at once); the
    status of every answer."""
    request = (
        "POST /publish/c HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {n}\r\n\r\n{body}"
    )
    wire = "".join(request.format(n=len(f"e{i}"), body=f"e{i}") for i in range(count)).encode()
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(wire)
        received = b""
        with gevent.Timeout(10, AssertionError(f"fewer than {count} answers")):
            while received.count(b"HTTP/1.1 ") < count:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the publisher's connection"
                received += chunk
    return [int(part.split(b" ", 1)[0]) for part in received.split(b"HTTP/1.1 ")[1:]]


def test_pipelined_publish_requests_let_the_subscribers_writes_run(serve: Callable[..., Any]) -> None:
    """Issue 12 (publish requests starve the fan-out): 200 publish requests
    pipelined on one connection were all handled by one greenlet that never
    blocked (its next request was always buffered), so no subscriber's
    stream got a turn to write: 200 events piled up unwritten at each. Now
    the publisher yields every ``publishes_per_turn`` publishes, and no
    stream ever holds more than that many; every event arrives, in order."""
    broker = RecordingBroker()
    hub = Hub(broker, keepalive=60.0)
    broker.app = hub
    server = serve(hub)
    subscribers = [StreamClient(server.server_port, "/events/c") for _ in range(3)]
    wait_until(lambda: len(hub.subscriber.connections) == 3)
    count = 200
    assert pipelined_publishes(server.server_port, count) == [201] * count
    for client in subscribers:
        assert [e.data for e in client.events(count)] == [f"e{i}" for i in range(count)]
    assert 0 < broker.most_unwritten <= PublisherApp.publishes_per_turn, broker.most_unwritten
    assert PublisherApp.publishes_per_turn < count  # the test can tell the two apart


class CountingTurns(LoopTurns):
    """LoopTurns that notes whether each publish was made to yield."""

    def __init__(self, every: int) -> None:
        super().__init__(every)
        self.yields: list[bool] = []

    def before_publish(self) -> bool:
        self.yields.append(super().before_publish())
        return self.yields[-1]


def test_a_publisher_that_waits_for_each_answer_is_never_made_to_yield(serve: Callable[..., Any]) -> None:
    """One request at a time (the usual client): the greenlet blocks for
    each next request, so the loop has its turns and no yield is forced."""
    hub = Hub(MemoryBroker(), keepalive=60.0)
    turns = hub.publisher.turns = CountingTurns(PublisherApp.publishes_per_turn)
    server = serve(hub)
    count = 3 * PublisherApp.publishes_per_turn
    for i in range(count):
        client = StreamClient(server.server_port, "/publish/c", method="POST", body=f"e{i}".encode())
        assert client.status == 201
        client.close()
    assert turns.yields == [False] * count
