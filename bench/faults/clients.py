"""Clients that behave like a browser's ``EventSource``, a publisher that
remembers every id it got back, and the ledger that checks one against the
other, event by event.

The client follows the WHATWG HTML Standard, 9.2 "Server-sent events": it
*fails the connection* (gives up for good, readyState CLOSED) on any answer
that is not ``200`` with ``Content-Type: text/event-stream``; it reconnects
after the reconnection time (the last ``retry:`` it saw, 3 s before any) when
a 200 stream ends or the network fails, sending ``Last-Event-ID``. The bytes
are interpreted by the spec-following parser of ``tests/helpers.py``.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import gevent
import gevent.event

from tests.helpers import EventStreamParser

#: The reconnection time before the server sent a ``retry:`` (Chromium's and
#: the npm eventsource package's default).
DEFAULT_RECONNECTION_MS = 3000
STREAM_RESET = "stream-reset"


def parse_id(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Tally:
    """What all clients of a scenario saw, summed."""

    statuses: Counter[int] = field(default_factory=Counter)
    soft_refusals: int = 0
    hard_refusals: int = 0
    gave_up: int = 0
    network_errors: int = 0
    streams: int = 0
    #: Clients connected and waiting at their gate (see SSEClient.gate).
    at_gate: int = 0


class SSEClient:
    """One ``EventSource`` on a greenlet: ``start()``, later ``stop()``.

    :param port: the hub's port on 127.0.0.1.
    :param channel: the channel to subscribe (``/events/<channel>``).
    :param tally: where its refusals and statuses are counted.
    """

    def __init__(self, port: int, channel: str, tally: Tally) -> None:
        self.port = port
        self.channel = channel
        self.tally = tally
        self.last_event_id = ""
        self.reconnection_ms = DEFAULT_RECONNECTION_MS
        #: (type, id, arrival time) of every event dispatched, in order.
        self.received: list[tuple[str, str, float]] = []
        #: The id the first stream started at (its bare ``id:`` preamble).
        self.start_id: str | None = None
        self.closed = False  # readyState CLOSED: gave up for good
        self.open = False
        self.connected = gevent.event.Event()
        self._greenlet: gevent.Greenlet[[], None] | None = None
        self._sock: socket.socket | None = None
        self._stopping = False
        #: If set, the next connection waits for it between connect and
        #: request: many clients then send their requests in one instant.
        self.gate: gevent.event.Event | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def drop(self) -> None:
        """Cut the connection (as a network blip does); it reconnects by itself."""
        if self._sock is not None:
            self._sock.close()

    def stop(self) -> None:
        self._stopping = True
        if self._sock is not None:
            self._sock.close()
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _run(self) -> None:
        while not self._stopping and not self.closed:
            try:
                self._stream()
            except OSError:
                self.tally.network_errors += 1
            finally:
                self.open = False
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            if self._stopping or self.closed:
                return
            gevent.sleep(self.reconnection_ms / 1000)

    def _stream(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self._sock = sock
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.tally.at_gate += 1
            gate.wait(60)
        headers = f"GET /events/{self.channel} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        if self.last_event_id:
            headers += f"Last-Event-ID: {self.last_event_id}\r\n"
        sock.sendall((headers + "\r\n").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed before the headers")
            buffer += data
        head, body = buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        content_type = next((v for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-type"), "")
        self.tally.statuses[status] += 1
        if status != 200 or not content_type.strip().startswith("text/event-stream"):
            # "fail the connection": no reconnect, whatever Retry-After says.
            self.tally.hard_refusals += 1
            self.tally.gave_up += 1
            self.closed = True
            return
        self.tally.streams += 1
        self.open = True
        self.connected.set()
        parser = EventStreamParser(last_event_id=self.last_event_id)
        # The last event ID buffer belongs to the EventSource, not to one
        # connection: a blank line after a comment must not forget it.
        parser._last_event_id_buffer = self.last_event_id
        seen = 0
        data = body
        while True:
            if data:
                parser.feed(data)
                now = time.monotonic()
                for event in parser.events[seen:]:
                    self.received.append((event.type, event.last_event_id, now))
                seen = len(parser.events)
                if self.start_id is None and parser.last_event_id:
                    self.start_id = parser.last_event_id
                self.last_event_id = parser.last_event_id
                if parser.reconnection_time is not None:
                    self.reconnection_ms = parser.reconnection_time
            data = sock.recv(65536)
            if not data:
                break
        # A stream without the hub's opening ": ok" is a soft refusal.
        if "ok" not in parser.comments[:2] and not parser.events:
            self.tally.soft_refusals += 1


@dataclass
class Ledger:
    """Checks every client against the ids published on its channel."""

    published: dict[str, list[str]] = field(default_factory=dict)
    publish_times: dict[str, float] = field(default_factory=dict)
    publish_refused: Counter[int] = field(default_factory=Counter)

    def record(self, channel: str, event_id: str) -> None:
        self.published.setdefault(channel, []).append(event_id)
        self.publish_times[event_id] = time.monotonic()

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.published.values())

    def check(self, client: SSEClient) -> tuple[int, int, int, int]:
        """(lost, duplicated, resets, announced) for one client: lost are the
        ids after its start that it never got and no ``stream-reset`` announced;
        announced, those a reset did."""
        start = parse_id(client.start_id) if client.start_id else (0, 0)
        expected = [i for i in self.published.get(client.channel, []) if parse_id(i) > start]
        index = {event_id: n for n, event_id in enumerate(expected)}
        position, lost, duplicated, resets, announced = 0, 0, 0, 0, 0
        seen: set[str] = set()
        reset_pending = False
        for kind, event_id, _ in client.received:
            if kind == STREAM_RESET:
                resets += 1
                reset_pending = True
                continue
            if kind != "message":
                continue  # not a published event (an error event, say): see other_events
            if event_id in seen:
                duplicated += 1
                continue
            seen.add(event_id)
            n = index.get(event_id)
            if n is None:
                continue  # not ours (a foreign entry): neither lost nor counted
            if n >= position:
                gap = n - position
                if reset_pending:
                    announced += gap
                else:
                    lost += gap
                position = n + 1
            reset_pending = False
        if not client.closed:
            lost += len(expected) - position  # never arrived, though it stayed subscribed
        return lost, duplicated, resets, announced

    @staticmethod
    def other_events(client: SSEClient) -> Counter[str]:
        """Events of a type the publisher never sends (nor stream-reset), by type."""
        return Counter(kind for kind, _, _ in client.received if kind not in ("message", STREAM_RESET))

    def first_after(self, channel: str, moment: float) -> str | None:
        for event_id in self.published.get(channel, []):
            if self.publish_times[event_id] >= moment:
                return event_id
        return None


def arrival(client: SSEClient, event_id: str) -> float | None:
    for _, received_id, at in client.received:
        if received_id == event_id:
            return at
    return None


def http_request(
    port: int, method: str, path: str, body: bytes = b"", *, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, bytes]:
    """One HTTP/1.0 request; (status, body). Status 0: no answer at all."""
    lines = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    raw = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                raw += data
    except OSError:
        if not raw:
            return 0, b""
    head, _, rest = raw.partition(b"\r\n\r\n")
    try:
        return int(head.split()[1]), rest
    except (IndexError, ValueError):
        return 0, raw


def publish(port: int, channel: str, data: str, ledger: Ledger) -> bool:
    """Publish through the hub; remember the id. False if it was refused."""
    request = json.dumps({"data": data}).encode()
    headers = {"Content-Type": "application/json"}
    status, body = http_request(port, "POST", f"/publish/{channel}", request, headers=headers)
    if status == 201:
        ledger.record(channel, json.loads(body)["id"])
        return True
    ledger.publish_refused[status] += 1
    return False


class Publisher:
    """Publishes to every channel in turn, *rate* events a second in all, until stopped."""

    def __init__(self, port: int, channels: list[str], ledger: Ledger, rate: float) -> None:
        self.port, self.channels, self.ledger, self.rate = port, channels, ledger, rate
        self._stop = False
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop:
            channel = self.channels[n % len(self.channels)]
            publish(self.port, channel, f"{time.time_ns()} {n}", self.ledger)
            n += 1
            gevent.sleep(1 / self.rate)

    def stop(self) -> None:
        self._stop = True
        self._greenlet.join(30)
