"""The cursor of a multiplexed stream: one ``Last-Event-ID`` that says how far
a client has read in every channel of its subscription. Pure: no I/O.

A cursor is entries separated by ``;``, one per channel, each the channel's
name, ``*``, and the id of the last event of that channel the client has::

    chat/lobby*1764579475123-0;notify/alice*1764579000000-3

Neither ``;`` nor ``*`` can occur in a channel name (see
:func:`~wsgi_eventsource.brokers.validate_channel`) or in an id, so every
cursor reads one way only, whatever the names. The entries may come in any
order: the ``id`` of each multiplexed event is the cursor with *that event's
channel first*, so a page reads the channel as the text before the first
``*`` (and the channel's own event id, as a single-channel stream would send
it, between that ``*`` and the first ``;``).

Size: one entry is the name, 2 separators and an id of 15 characters today
(13 digits of milliseconds, ``-``, a sequence number), so 64 channels of
40-character names make a 3,647-byte cursor (``Last-Event-ID: `` makes the
header line 3,662 bytes): within gunicorn's 8,190-byte header field limit and
nginx's default 8 KiB ``large_client_header_buffers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import InvalidChannel
from .base import CHANNEL_MAX_LENGTH, parse_id, validate_channel

__all__ = ["CHANNEL_SEPARATOR", "ENTRY_SEPARATOR", "cursor_channel", "encode_cursor", "parse_cursor"]

#: Between a channel's name and its position in a cursor entry.
CHANNEL_SEPARATOR = "*"
#: Between the entries of a cursor.
ENTRY_SEPARATOR = ";"


def encode_cursor(positions: Iterable[tuple[str, str]]) -> str:
    """The cursor of ``(channel, event id)`` pairs, in the order given."""
    return ENTRY_SEPARATOR.join(f"{channel}{CHANNEL_SEPARATOR}{event_id}" for channel, event_id in positions)


def parse_cursor(text: str | None, channels: Sequence[str]) -> dict[str, str] | None:
    """The position of each of *channels* that the cursor *text* names.

    A channel the cursor does not name is missing from the answer (the page
    has added it since). ``None`` if *text* is not a cursor at all: empty,
    malformed (an entry without ``*``, a bad name or id, a channel named
    twice), or longer than a cursor of ``len(channels)`` channels can be;
    then every channel starts over, as for an unknown single-channel id.
    Entries for channels not in *channels* are ignored (the page dropped them).
    """
    if not text or len(text) > _longest(len(channels)):
        return None
    wanted = set(channels)
    positions: dict[str, str] = {}
    seen: set[str] = set()
    for entry in text.split(ENTRY_SEPARATOR):
        channel, separator, event_id = entry.partition(CHANNEL_SEPARATOR)
        if not separator or channel in seen or parse_id(event_id) is None:
            return None
        try:
            validate_channel(channel)
        except InvalidChannel:
            return None
        seen.add(channel)
        if channel in wanted:
            positions[channel] = event_id
    return positions


def cursor_channel(cursor: str) -> str:
    """The channel of a multiplexed event, from its ``id`` (a cursor with the
    event's channel first): the text before the first ``*``."""
    return cursor.partition(CHANNEL_SEPARATOR)[0]


def _longest(channels: int) -> int:
    # Names of the longest length, ids of the longest (2 * 20 digits + "-"),
    # and room for entries of channels since dropped from the page (as many
    # again): anything longer is not a cursor this server made.
    return 2 * max(channels, 1) * (CHANNEL_MAX_LENGTH + 1 + 41 + 1)
