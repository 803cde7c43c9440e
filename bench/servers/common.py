"""What every Python server under test shares: the publish trigger's query."""

from __future__ import annotations

import time
from urllib.parse import parse_qs


def publish_params(query: str) -> tuple[int, float, int]:
    """``count``, ``rate`` (events/s, 0 = flat out) and ``size`` (bytes of data)."""
    values = parse_qs(query)
    return int(values["count"][0]), float(values.get("rate", ["0"])[0]), int(values.get("size", ["64"])[0])


def publish_channel(query: str, default: str) -> str:
    """``channel``: where the hub publishes (the multiplexed scenario names one)."""
    return parse_qs(query).get("channel", [default])[0]


def payload(i: int, size: int, tag: str | None = None) -> str:
    """Event data: the publish time in ns first (the load client reads it),
    the event's number, the *tag* if any (the channel, which the load client
    checks against the event's id), then padding."""
    head = f"{time.time_ns()} {i} " if tag is None else f"{time.time_ns()} {i} {tag} "
    return head + "x" * max(0, size - len(head))
