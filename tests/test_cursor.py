"""The cursor of a multiplexed stream (issue 9), pure: encode and parse round
trip for every valid channel name and id, every malformed cursor refused, and
the size the README promises for 64 channels of 40-character names."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_eventsource import MemoryBroker
from wsgi_eventsource.brokers import CHANNEL_MAX_LENGTH, cursor_channel, encode_cursor, parse_cursor, validate_channel
from wsgi_eventsource.brokers.base import parse_id

#: Every character a channel segment may hold (see validate_channel).
SEGMENT_ALPHABET = string.ascii_letters + string.digits + "-_.:@~+=,!"
#: The characters the cursor format uses as separators (or could be mistaken for).
PUNCTUATION = "-_.:@~+=,!"

segments = st.text(SEGMENT_ALPHABET, min_size=1, max_size=20).filter(lambda s: s not in (".", ".."))
# Names made mostly of punctuation, to find any ambiguity with the separators.
punctuated = st.text(PUNCTUATION, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
channel_names = (
    st.lists(st.one_of(segments, punctuated), min_size=1, max_size=12)
    .map("/".join)
    .filter(lambda name: len(name) <= CHANNEL_MAX_LENGTH)
)
id_parts = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**64 - 1, 1764579475123]))
event_ids = st.builds(lambda ms, seq: f"{ms}-{seq}", id_parts, id_parts)
positions = st.dictionaries(channel_names, event_ids, min_size=1, max_size=20)


def test_the_channel_strategy_makes_only_valid_names() -> None:
    # The strategies above would test nothing if they made names the
    # broker refuses (or never made the awkward ones).
    @given(channel_names)
    @settings(max_examples=300)
    def check(name: str) -> None:
        assert validate_channel(name) == name

    check()


@given(positions)
@settings(max_examples=500)
def test_encode_then_parse_gives_back_every_position(cursor_positions: dict[str, str]) -> None:
    text = encode_cursor(cursor_positions.items())
    assert parse_cursor(text, list(cursor_positions)) == cursor_positions


@given(positions, st.randoms(use_true_random=False))
@settings(max_examples=300)
def test_entries_may_come_in_any_order(cursor_positions: dict[str, str], rng: object) -> None:
    pairs = list(cursor_positions.items())
    rng.shuffle(pairs)  # type: ignore[attr-defined]
    channels = list(cursor_positions)
    rng.shuffle(channels)  # type: ignore[attr-defined]
    assert parse_cursor(encode_cursor(pairs), channels) == cursor_positions


@given(positions)
@settings(max_examples=300)
def test_the_channel_of_an_event_is_its_first_entry(cursor_positions: dict[str, str]) -> None:
    first, first_id = next(iter(cursor_positions.items()))
    event_id = encode_cursor(cursor_positions.items())
    assert cursor_channel(event_id) == first
    # Between that "*" and the first ";": the event's id in its own channel.
    assert event_id[len(first) + 1 :].split(";", 1)[0] == first_id


@given(positions, st.data())
@settings(max_examples=300)
def test_entries_of_channels_not_asked_for_are_ignored_and_missing_ones_absent(
    cursor_positions: dict[str, str], data: st.DataObject
) -> None:
    text = encode_cursor(cursor_positions.items())
    # At least half of the cursor's channels still asked for: a cursor may
    # carry as many entries again of dropped channels (see the length test).
    half = (len(cursor_positions) + 1) // 2
    asked = data.draw(st.lists(st.sampled_from(list(cursor_positions)), unique=True, min_size=half))
    added = data.draw(st.lists(channel_names.filter(lambda n: n not in cursor_positions), unique=True, max_size=5))
    parsed = parse_cursor(text, [*asked, *added])
    assert parsed == {channel: cursor_positions[channel] for channel in asked}
    assert parsed is not None
    assert not set(added) & set(parsed)  # a channel the page added has no position


def test_the_example_from_the_docs() -> None:
    text = "chat/lobby*1764579475123-0;notify/alice*1764579000000-3"
    assert parse_cursor(text, ["chat/lobby", "notify/alice"]) == {
        "chat/lobby": "1764579475123-0",
        "notify/alice": "1764579000000-3",
    }
    assert cursor_channel(text) == "chat/lobby"
    assert encode_cursor([("chat/lobby", "1764579475123-0"), ("notify/alice", "1764579000000-3")]) == text


@pytest.mark.parametrize(
    ("cursor", "channels", "expected"),
    [
        # Names full of the punctuation other formats use as separators.
        ("a,b*1-0;c=d*2-0", ["a,b", "c=d"], {"a,b": "1-0", "c=d": "2-0"}),
        ("a:b@c!*1-0", ["a:b@c!"], {"a:b@c!": "1-0"}),
        ("x/y:1-0*5-5;x*6-6", ["x/y:1-0", "x"], {"x/y:1-0": "5-5", "x": "6-6"}),
        ("-*0-0;_*1-1;~*2-2;+*3-3;=*4-4;,*5-5;!*6-6", ["-", "~", "!"], {"-": "0-0", "~": "2-2", "!": "6-6"}),
        # Ignored entries and missing ones.
        ("a*1-0;gone*2-0", ["a"], {"a": "1-0"}),
        ("gone*2-0", ["a"], {}),
        ("a*1-0", ["a", "new"], {"a": "1-0"}),
        # The largest ids there are.
        (f"a*{2**64 - 1}-{2**64 - 1}", ["a"], {"a": f"{2**64 - 1}-{2**64 - 1}"}),
    ],
)
def test_parse_cursor_table(cursor: str, channels: list[str], expected: dict[str, str]) -> None:
    assert parse_cursor(cursor, channels) == expected


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param("1764579475123-0", id="single-channel-id"),
        pytest.param("a", id="no-star"),
        pytest.param("a*1-0;b", id="an-entry-without-star"),
        pytest.param("a*1-0;", id="trailing-separator"),
        pytest.param(";a*1-0", id="leading-separator"),
        pytest.param("a*1-0;;b*2-0", id="empty-entry"),
        pytest.param("a*", id="no-id"),
        pytest.param("a*x", id="bad-id"),
        pytest.param("a*1", id="id-without-sequence"),
        pytest.param("a*1-0-0", id="id-with-three-parts"),
        pytest.param("a*-1-0", id="negative-id"),
        pytest.param(f"a*{2**64}-0", id="id-part-over-64-bits"),
        pytest.param("a*1-" + "9" * 21, id="id-part-too-long"),
        pytest.param("a*1-0*2-0", id="star-in-id"),
        pytest.param("*1-0", id="empty-name"),
        pytest.param("a b*1-0", id="space-in-name"),
        pytest.param("a//b*1-0", id="double-slash"),
        pytest.param("/a*1-0", id="leading-slash"),
        pytest.param("a/*1-0", id="trailing-slash"),
        pytest.param("a/../b*1-0", id="dotdot-segment"),
        pytest.param("caf\u00e9*1-0", id="non-ascii-name"),
        pytest.param("x" * (CHANNEL_MAX_LENGTH + 1) + "*1-0", id="name-too-long"),
        pytest.param("a*1-0;a*2-0", id="duplicate-channel"),
        pytest.param("a*1-0;b*2-0;a*1-0", id="duplicate-channel-apart"),
        pytest.param("gone*1-0;gone*2-0", id="duplicate-of-an-ignored-channel"),
        pytest.param(" a*1-0", id="leading-space"),
        pytest.param("a*1-0 ", id="trailing-space"),
        pytest.param("a*1-0\n", id="newline"),
    ],
)
def test_a_malformed_cursor_is_none(cursor: str | None) -> None:
    assert parse_cursor(cursor, ["a", "b"]) is None


def test_a_cursor_longer_than_any_this_server_makes_is_none() -> None:
    # Longest names, longest ids, and as many again for dropped channels
    # still parse; more than that is not one of ours.
    longest_id = f"{2**64 - 1}-{2**64 - 1}"
    names = [f"{i:03d}".ljust(CHANNEL_MAX_LENGTH, "x") for i in range(4)]
    fits = encode_cursor((name, longest_id) for name in names)
    assert parse_cursor(fits, names[:2]) == dict.fromkeys(names[:2], longest_id)
    too_long = encode_cursor((name, longest_id) for name in [*names, "y" * CHANNEL_MAX_LENGTH])
    assert parse_cursor(too_long, names[:2]) is None
    # And a huge header is refused before any work on its entries.
    assert parse_cursor("a*1-0;" * 100_000 + "a*1-0", ["a"]) is None


def test_cursor_channel_of_a_single_entry_and_of_no_star() -> None:
    assert cursor_channel("chat/lobby*1-0") == "chat/lobby"
    assert cursor_channel("1-0") == "1-0"  # not a cursor: the whole text (callers check parse_cursor)


def test_a_cursor_of_64_channels_with_40_character_names_is_3647_bytes() -> None:
    """The README and cursor.py say 3,647 bytes: measured on real ids, from a broker."""
    broker = MemoryBroker()
    try:
        names = [f"t-{i:02d}/" + "r" * 32 + f"-{i:02d}" for i in range(64)]
        assert all(len(name) == 40 and validate_channel(name) for name in names)
        cursor = encode_cursor((name, broker.publish(name, "x")) for name in names)
    finally:
        broker.close()
    ids = [entry.split("*")[1] for entry in cursor.split(";")]
    assert all(parse_id(i) is not None and len(i) == 15 for i in ids), ids[:3]  # 13 digits of ms, "-", "0"
    size = len(cursor.encode("ascii"))
    assert size == 3647
    header_line = f"Last-Event-ID: {cursor}"
    assert len(header_line) == 3662
    assert len(header_line) < 8190  # gunicorn's limit_request_field_size
    assert len(header_line) + 2 <= 8192  # nginx's large_client_header_buffers 4 8k (the line with CRLF)
    assert parse_cursor(cursor, names) == dict(zip(names, ids, strict=True))
