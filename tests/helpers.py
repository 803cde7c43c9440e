"""Test helpers: a client-side event-stream parser written from the spec, and a
small HTTP client over gevent sockets that feeds it.

The parser follows the WHATWG HTML Standard, 9.2.6 "Interpreting an event
stream", step by step, so that what our encoder writes is checked against
what a browser does rather than against our own reading of the format.
"""

from __future__ import annotations

import codecs
import re
import socket
import struct
import time
import typing
from dataclasses import dataclass, field

import gevent
import gevent.socket

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ParsedEvent:
    """What a browser's ``MessageEvent`` would carry."""

    type: str
    data: str
    last_event_id: str


@dataclass
class EventStreamParser:
    """Incremental "event stream interpretation" (WHATWG HTML 9.2.6)."""

    events: list[ParsedEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    #: The event source's reconnection time, as the ``retry`` field sets it.
    reconnection_time: int | None = None
    #: The event source's last event ID string (updated at every dispatch).
    last_event_id: str = ""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    _text: str = ""
    _started: bool = False
    _skip_lf: bool = False
    _data: str = ""
    _event_type: str = ""
    _last_event_id_buffer: str = ""

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        """Feed bytes; return the events dispatched by them."""
        # "Streams must be decoded using the UTF-8 decode algorithm": invalid
        # sequences become U+FFFD; one leading BOM is stripped.
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        before = len(self.events)
        self._text += text
        self._lines()
        return self.events[before:]

    def _lines(self) -> None:
        # Lines end in CRLF, a lone LF or a lone CR. A CR at the very end of
        # what we have may be the first half of a CRLF: treat it as a line end
        # now, and skip an LF that comes first in the next piece.
        text = self._text
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        start = 0
        for match in _LINE_END.finditer(text):
            self._process(text[start : match.start()])
            start = match.end()
            if match.group() == "\r" and start == len(text):
                self._skip_lf = True
        self._text = text[start:]

    def _process(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:])
            return
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._last_event_id_buffer = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            self.reconnection_time = int(value)
        # any other field is ignored

    def _dispatch(self) -> None:
        self.last_event_id = self._last_event_id_buffer
        if self._data == "":
            self._data = self._event_type = ""
            return
        data = self._data[:-1] if self._data.endswith("\n") else self._data
        self.events.append(ParsedEvent(self._event_type or "message", data, self.last_event_id))
        self._data = self._event_type = ""


def parse(stream: bytes) -> EventStreamParser:
    """Parse a whole stream; pending data at the end is discarded, as the spec says."""
    parser = EventStreamParser()
    parser.feed(stream)
    return parser


class StreamClient:
    """An HTTP/1.1 client over a gevent socket, reading one response.

    Parses the status line and headers, then de-chunks the body and feeds it
    to an :class:`EventStreamParser`. Every read is bounded by *timeout*.
    Clients still open at the end of a test are closed by a fixture.
    """

    #: Every client not yet closed; see ``conftest.close_clients``.
    unclosed: typing.ClassVar[set[StreamClient]] = set()

    def __init__(
        self,
        port: int,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
        body: bytes = b"",
    ) -> None:
        self.timeout = timeout
        self.sock = gevent.socket.create_connection((host, port), timeout=timeout)
        StreamClient.unclosed.add(self)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        self.parser = EventStreamParser()
        self.raw = bytearray()  # the de-chunked body received so far (appends are O(1))
        self.eof = False
        self._buf = b""
        head = self._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        self.header_list: list[tuple[str, str]] = []
        for line in header_lines:
            name, value = line.split(":", 1)
            self.header_list.append((name.strip(), value.strip()))
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.headers_at = time.monotonic()

    def _recv(self) -> bytes:
        data: bytes = self.sock.recv(65536)
        if not data:
            self.eof = True
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            data = self._recv()
            if not data:
                raise ConnectionError(f"EOF before {marker!r}; got {self._buf!r}")
            self._buf += data
        head, self._buf = self._buf.split(marker, 1)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self._recv()
            if not data:
                raise ConnectionError("EOF inside a chunk")
            self._buf += data
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def tail(self, n: int = 400) -> bytes:
        """The last *n* bytes received, for error messages."""
        return bytes(self.raw[-n:])

    def read_some(self) -> bytes:
        """Read the next piece of the body (b"" at its end)."""
        if self.chunked:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n")
                self.eof = True
                return b""
            data = self._read_exact(size)
            self._read_exact(2)
        elif self._buf:
            data, self._buf = self._buf, b""
        elif self.eof:
            return b""
        else:
            data = self._recv()
        self.raw += data
        self.parser.feed(data)
        return data

    def read_body(self) -> bytes:
        """Read a whole (non-stream) body, by Content-Length or chunks."""
        if "content-length" in self.headers:
            return self._read_exact(int(self.headers["content-length"]))
        with gevent.Timeout(self.timeout):
            while self.read_some():
                pass
        return bytes(self.raw)

    def wait_for(self, predicate: object, timeout: float | None = None) -> None:
        """Read until ``predicate(self)`` is true; fail after *timeout* seconds."""
        assert callable(predicate)
        with gevent.Timeout(timeout or self.timeout, AssertionError(f"timed out; got ...{self.tail()!r}")):
            while not predicate(self):
                if not self.read_some():
                    raise AssertionError(f"stream ended early; got ...{self.tail()!r}")

    def events(self, n: int, timeout: float | None = None) -> list[ParsedEvent]:
        """Wait until *n* events in all have arrived; return them all."""
        self.wait_for(lambda c: len(c.parser.events) >= n, timeout)
        return self.parser.events

    def read_to_end(self, timeout: float | None = None) -> None:
        """Read until the server ends the response."""
        with gevent.Timeout(timeout or self.timeout, AssertionError(f"stream did not end; got ...{self.tail()!r}")):
            while self.read_some():
                pass

    def close(self) -> None:
        """A clean close (FIN)."""
        StreamClient.unclosed.discard(self)
        self.sock.close()

    def reset(self) -> None:
        """An abortive close: the kernel sends RST."""
        StreamClient.unclosed.discard(self)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.01, message: str = "") -> None:
    """Poll *predicate* cooperatively (other greenlets run) until it is true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message or predicate}")
        gevent.sleep(interval)


def fork() -> int:
    """``os.fork()``, without the DeprecationWarning Python 3.12 gives for
    forking a process that runs other threads (``filterwarnings = error``
    would make it fail the test): these tests fork on purpose, knowing which
    threads run, to check what the child gets."""
    import os
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
        return os.fork()
