"""Which keys make a multi-key ``XREAD`` fail: one key of another type
under the prefix (``WRONGTYPE``), or one the server refuses alone (an ACL),
fails the whole command and would starve every channel of the process."""

from __future__ import annotations

from typing import Any

from .support import text

__all__ = ["find_broken_keys"]


def find_broken_keys(client: Any, streams: dict[str, str]) -> dict[str, tuple[str, str]]:
    """The keys of *streams* (key -> position) that an ``XREAD`` fails on,
    each with a reason (``"wrong_type"`` or ``"error"``) and what is wrong;
    empty if the failure is not about single keys (Redis refuses everything).
    Nothing is read past: no ``BLOCK``, and positions stay as they are."""
    keys = list(streams)
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        types = pipe.execute(raise_on_error=False)
    if all(isinstance(kind, Exception) for kind in types):
        return {}  # BUSY with a script, say: not one key
    broken = {
        key: ("wrong_type", f"it holds a {text(kind)}, not a stream")
        for key, kind in zip(keys, types, strict=True)
        if not isinstance(kind, Exception) and text(kind) not in ("stream", "none")
    }
    if broken:
        return broken
    # Not a type: another error for one key alone. Ask each key alone.
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.xread({key: streams[key]}, count=1)
        answers = pipe.execute(raise_on_error=False)
    pairs = zip(keys, answers, strict=True)
    broken = {key: ("error", str(answer)) for key, answer in pairs if isinstance(answer, Exception)}
    if len(broken) == len(keys) > 1:
        return {}  # every key fails: Redis itself, not a key
    return broken
