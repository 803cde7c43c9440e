"""Random requests for the hub, raw bytes on the wire: publish bodies of every
content type it knows (and some it does not), and subscribe requests with odd
paths, methods and headers. Seeded, so a run can be repeated exactly."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from urllib.parse import quote as _quote

_ODD = ["\n", "\r", "\r\n", "\0", "\u2028", "\ufeff", "\U0001f600", "\udcff", "%", "%zz", "%00", "..", "/", "//", " "]
_TYPES = [
    "application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
    "text/plain", "text/plain; charset=utf-16", "application/x-www-form-urlencoded", "multipart/form-data",
    "application/octet-stream", "", "text/event-stream", "application/json; charset=",
]  # fmt: skip


def quote(text: str, safe: str = "/") -> str:
    # Lone surrogates become bytes that are not UTF-8: exactly what a fuzzer wants.
    return _quote(text, safe=safe, errors="surrogatepass")


def _text(rng: random.Random, limit: int = 40) -> str:
    pieces = [rng.choice(string.printable) for _ in range(rng.randrange(limit))]
    for _ in range(rng.randrange(3)):
        pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(_ODD))
    return "".join(pieces)


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**70), 10**400])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.random() * 10 ** rng.randrange(-5, 300)
    if kind == 4:
        return [_text(rng) for _ in range(rng.randrange(4))]
    if kind == 5:
        return ""
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng, 8): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _json_body(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        depth = rng.choice([100, 10_000, 100_000])
        return (
            ("[" * depth + "]" * depth).encode()
            if rng.random() < 0.5
            else b'{"data": ' + b"[" * depth + b"]" * depth + b"}"
        )
    if roll < 0.10:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if roll < 0.15:
        return json.dumps(_value(rng)).encode()
    document: dict[str, object] = {}
    for key in ("data", "event", "retry", "id", _text(rng, 6)):
        if rng.random() < 0.6:
            document[key] = _value(rng)
    if rng.random() < 0.5:
        document["data"] = _text(rng)
    text = json.dumps(document, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8", "surrogatepass")


def _channel(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return f"fuzz/{rng.randrange(50)}"
    if roll < 0.7:
        return quote(_text(rng, 20), safe="/:@")
    if roll < 0.8:
        return "x" * rng.choice([199, 200, 201, 5000])
    return "".join(rng.choice(string.ascii_letters + "/-_.:@~+=,!%") for _ in range(rng.randrange(1, 30)))


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def publish_requests(rng: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        content_type = rng.choice(_TYPES)
        mimetype = content_type.split(";")[0]
        if mimetype == "application/json":
            body = _json_body(rng)
        elif mimetype == "application/x-www-form-urlencoded":
            fields = [(rng.choice(["data", "event", "retry", "x", ""]), _text(rng)) for _ in range(rng.randrange(4))]
            body = "&".join(f"{quote(k)}={quote(v, safe='%')}" for k, v in fields).encode()
        else:
            body = _text(rng, 200).encode("utf-8", "surrogatepass")
        query = ""
        if rng.random() < 0.3:
            query = "?" + "&".join(f"{rng.choice(['event', 'retry', 'data'])}={quote(_text(rng, 10), safe='%')}"
                                   for _ in range(rng.randrange(1, 3)))  # fmt: skip
        headers = {"Content-Type": content_type} if content_type else {}
        if rng.random() < 0.1:
            headers["Origin"] = rng.choice(["null", "https://evil.example", "http://127.0.0.1"])
        yield _request("POST", f"/publish/{_channel(rng)}{query}", headers, body)


def subscribe_requests(rng: random.Random, n: int) -> Iterator[bytes]:
    for _ in range(n):
        method = rng.choice(["GET"] * 6 + ["HEAD", "POST", "OPTIONS", "DELETE", "PUT", "BREW"])
        headers: dict[str, str] = {}
        if rng.random() < 0.7:
            headers["Last-Event-ID"] = rng.choice([
                "0-0", "1-1", "99999999999999-0", "-1", "abc", "", "1" * 400, "18446744073709551616-0",
                _text(rng, 30).replace("\r", "").replace("\n", ""), "1-", "-", "1-2-3", " 5-5 ",
            ])  # fmt: skip
        if rng.random() < 0.3:
            headers["Accept"] = rng.choice(["text/event-stream", "*/*", "application/json", _text(rng, 10)])
        if rng.random() < 0.2:
            headers["Origin"] = rng.choice(["null", "https://evil.example"])
        if rng.random() < 0.1:
            headers["Host"] = rng.choice(["evil.example", "127.0.0.1:1", ""])
        path = rng.choice(["/events/", "/events", "/events//", "/", "/stats", "/healthz", "/metrics", "/nope/"])
        if path == "/events/":
            path += _channel(rng)
        if rng.random() < 0.2:
            path += "?" + quote(_text(rng, 12), safe="=&%")
        yield _request(method, path, {k: v.replace("\r", "").replace("\n", "") for k, v in headers.items()})
