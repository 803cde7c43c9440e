"""The Redis broker: channels shared by many processes and hosts.

One Redis stream per channel is both the fan-out and the history:
``XADD ... MAXLEN ~ history`` publishes, ``XRANGE`` replays and ``XREAD
BLOCK`` delivers live events. Stream ids are the event ids.

Each process runs ONE reader: a real OS thread with its own Redis connection,
reading every channel that has subscribers in this process with a single
``XREAD``, and handing each batch to the subscribers' gevent hubs (one
callback per hub per batch). It never opens a connection per subscriber.

Redis does not record what ``MAXLEN`` trimmed away, so every entry stores its
predecessor's id (field ``p``, written atomically by a Lua script with the
stream's ``last-generated-id``); replay uses it to tell "the client saw
everything before the oldest entry" from "the client missed events".

When Redis cannot be reached, :meth:`RedisBroker.publish` raises
:class:`BrokerUnavailable`; the reader retries with backoff and resumes from
the last id it saw, so nothing Redis still holds is lost, and streams stay
open meanwhile (keepalives continue).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from gevent.monkey import get_original

from ..connection import os_lock, thread_hub
from ..encoding import Data
from ..errors import BrokerUnavailable
from .base import (
    DEFAULT_HISTORY,
    Broker,
    BrokerStats,
    Entry,
    Subscription,
    check_history,
    encode_body,
    fan_out_batch,
    now_ms,
    parse_id,
    validate_channel,
)

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RedisBroker"]

logger = logging.getLogger("wsgi_eventsource")

_start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
_sleep: Callable[[float], None] = get_original("time", "sleep")

# KEYS[1]: the stream. ARGV: maxlen, body, minid ('' for none).
# Returns the new id. "p" is the id this entry follows: the stream's
# last-generated-id, which also covers entries already trimmed or deleted.
_PUBLISH = """
local prev = '0-0'
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then prev = info[i + 1] end
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', prev, 'b', ARGV[2])
if ARGV[3] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[3]) end
return id
"""

# KEYS[1]: the stream. Returns its last-generated-id, or '0-0'.
_CURRENT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return info[i + 1] end
end
return '0-0'
"""


def _text(value: bytes | str) -> str:
    """A stream id as Redis answered it (bytes, or str with decode_responses)."""
    return value.decode("ascii") if isinstance(value, bytes) else str(value)


def _import_redis() -> Any:
    try:
        import redis  # optional: only RedisBroker needs it
    except ImportError as exc:
        raise ImportError("RedisBroker needs the redis package: pip install 'wsgi-eventsource[redis]'") from exc
    return redis


class RedisBroker(Broker):
    """Channels in Redis streams, shared by every process that uses the same Redis.

    :param url: a ``redis://`` (or ``rediss://``, ``unix://``) URL.
    :param history: events kept per channel for replay (approximately: Redis
        trims with ``MAXLEN ~``, so a little more may be kept).
    :param max_age: if set, events older than this many seconds are trimmed
        at the next publish and never replayed.
    :param prefix: prepended to the channel name to make the Redis key.
    :param block: seconds one ``XREAD`` waits for new events before the reader
        looks for newly subscribed channels.

    No connection is made until the first publish or subscribe, so the broker
    may be created at import time, before gunicorn forks its workers.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        history: int = DEFAULT_HISTORY,
        *,
        max_age: float | None = None,
        prefix: str = "wsgi-eventsource:",
        block: float = 1.0,
    ) -> None:
        self._redis = _import_redis()
        check_history(history, max_age)
        if not (isinstance(block, (int, float)) and not isinstance(block, bool) and 0 < block < 3600):
            raise ValueError(f"block must be a positive number of seconds (under an hour), not {block!r}")
        self.url = check_redis_url(url)
        self.history = history
        self.max_age = max_age
        self.prefix = prefix
        self.block = block
        self._client: Any = None
        self._publish_script: Any = None
        self._current_script: Any = None
        self._lock = os_lock()
        # channel -> subscriptions in this process; channel -> the last id the
        # reader has seen (its XREAD position). Both guarded by _lock.
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._positions: dict[str, str] = {}
        self._reader_started = False
        self._reader_client_id: int | None = None
        self._closed = False
        self._pid = 0
        self.stats = BrokerStats()

    def __repr__(self) -> str:
        return f"<RedisBroker {self._shown_url!r} history={self.history}>"

    # -- Redis access ------------------------------------------------------------

    def _connect(self) -> Any:
        redis = self._redis
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=2,
            # Above the reader's XREAD BLOCK, or every idle read times out.
            socket_timeout=self.block + 5,
            health_check_interval=0,
            retry_on_timeout=False,
        )

    @property
    def _shown_url(self) -> str:
        """The URL for messages and logs: never the password."""
        return _without_password(self.url)

    def _ensure_client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            # A fresh client after fork: never share sockets with the parent.
            self._pid = os.getpid()
            self._client = self._connect()
            self._publish_script = self._client.register_script(_PUBLISH)
            self._current_script = self._client.register_script(_CURRENT)
            self._reader_started = False
            self._reader_client_id = None
            # The parent's subscriptions (and its reader's positions) are not
            # this process's: without clearing them, a channel the parent read
            # would look already read here, and no reader would start.
            self._lock = os_lock()  # the parent's may have been held at the fork
            self._subscriptions = {}
            self._positions = {}
        return self._client

    def _unavailable(self, exc: Exception) -> BrokerUnavailable:
        # Any Redis failure, not only a lost connection: READONLY after a
        # failover, OOM, a key of another type under our prefix. Publishers
        # and subscribers get 503 (try again), the log gets the details.
        if isinstance(exc, (self._redis.ConnectionError, self._redis.TimeoutError)):
            return BrokerUnavailable(f"Redis at {self._shown_url} cannot be reached: {exc}")
        return BrokerUnavailable(f"Redis at {self._shown_url} answered with an error: {exc}")

    def _key(self, channel: str) -> str:
        return self.prefix + channel

    # -- publishing ------------------------------------------------------------------

    def publish(self, channel: str, data: Data, *, event: str | None = None, retry: int | None = None) -> str:
        validate_channel(channel)
        body = encode_body(data, event, retry)
        self._ensure_client()
        min_id = "" if self.max_age is None else f"{now_ms() - int(self.max_age * 1000)}-0"
        try:
            event_id = self._publish_script(keys=[self._key(channel)], args=[self.history, body, min_id])
        except self._redis.RedisError as exc:
            raise self._unavailable(exc) from None
        self.stats.published += 1
        return _text(event_id)

    # -- subscribing -------------------------------------------------------------------

    def _entries(self, raw: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Entry]:
        entries = []
        cutoff = None if self.max_age is None else now_ms() - int(self.max_age * 1000)
        for raw_id, fields in raw:
            event_id = raw_id.decode("ascii")
            created = int(event_id.split("-", 1)[0])
            if cutoff is not None and created < cutoff:
                continue
            entries.append(Entry(event_id, fields[b"p"].decode("ascii"), fields[b"b"], created))
        return entries

    def _history_after(self, client: Any, key: str, last_event_id: str | None) -> tuple[list[Entry], str]:
        """Entries to plan a replay from, and the channel's current id."""
        if last_event_id is None:
            current = self._current_script(keys=[key])
            return [], _text(current)
        if parse_id(last_event_id) is not None:
            # Usually the client's id is still there: read from it onwards.
            entries = self._entries(client.xrange(key, min=last_event_id, max="+"))
            if entries and entries[0].id == last_event_id:
                return entries, entries[-1].id
        entries = self._entries(client.xrange(key, min="-", max="+"))
        if entries:
            return entries, entries[-1].id
        current = self._current_script(keys=[key])
        return [], _text(current)

    def subscribe(self, channel: str, last_event_id: str | None) -> tuple[Subscription, bytes]:
        validate_channel(channel)
        client = self._ensure_client()
        subscription = Subscription(channel, thread_hub())
        key = self._key(channel)
        new_channel = False
        try:
            # Listen first (buffering), then read history: whatever is published
            # meanwhile arrives live and is dropped if the replay had it.
            with self._lock:
                subs = self._subscriptions.setdefault(channel, set())
                subs.add(subscription)
                new_channel = channel not in self._positions
            if new_channel:
                start = self._current_script(keys=[key])
                start = _text(start)
                with self._lock:
                    self._positions.setdefault(channel, start)
                self._start_reader()
                self._wake_reader(client)
            history, current = self._history_after(client, key, last_event_id)
        except self._redis.RedisError as exc:
            self.unsubscribe(subscription)
            raise self._unavailable(exc) from None
        except BaseException:
            self.unsubscribe(subscription)
            raise
        return self._planned(subscription, last_event_id, current, history)

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subs = self._subscriptions.get(subscription.channel)
            if subs is not None:
                subs.discard(subscription)
                if not subs:
                    del self._subscriptions[subscription.channel]
                    self._positions.pop(subscription.channel, None)

    def history_of(self, channel: str) -> list[Entry]:
        client = self._ensure_client()
        try:
            return self._entries(client.xrange(self._key(channel), min="-", max="+"))
        except self._redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def channel_counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(subs) for name, subs in self._subscriptions.items()}

    def ping(self) -> bool:
        """True if Redis answers right now."""
        try:
            return bool(self._ensure_client().ping())
        except self._redis.RedisError:
            return False

    # -- the reader ---------------------------------------------------------------------

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader_started:
                return
            self._reader_started = True
        _start_new_thread(self._read_forever, (self._pid,))

    def _wake_reader(self, client: Any) -> None:
        # The reader may be blocked in XREAD without the new channel; CLIENT
        # UNBLOCK makes it return at once and read again with it.
        reader = self._reader_client_id
        if reader is not None:
            # If this fails the reader comes back by itself within `block` seconds.
            with contextlib.suppress(self._redis.RedisError):
                client.client_unblock(reader)

    def _read_forever(self, pid: int) -> None:
        redis = self._redis
        client = None
        backoff = 0.1
        block_ms = int(self.block * 1000)
        while not self._closed and self._pid == pid:
            with self._lock:
                streams = {self._key(c): position for c, position in self._positions.items()}
            if not streams:
                _sleep(0.05)
                continue
            try:
                if client is None:
                    client = self._connect()
                    self._reader_client_id = client.client_id()
                    if backoff > 0.1:
                        logger.warning("Redis at %s is reachable again; resuming", self._shown_url)
                    backoff = 0.1
                response = client.xread(streams, count=1000, block=block_ms)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._reader_client_id = None
                if client is not None:
                    client.close()
                    client = None
                if backoff == 0.1:
                    logger.warning("Redis at %s cannot be reached (%s); retrying", self._shown_url, exc)
                _sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:
                logger.exception("the Redis reader failed; retrying")
                _sleep(1.0)
                continue
            if response:
                self._dispatch(response)
        if client is not None:
            client.close()

    def _dispatch(self, response: list[Any]) -> None:
        batch = []
        prefix = len(self.prefix)
        for raw_key, raw_entries in response:
            channel = (raw_key.decode() if isinstance(raw_key, bytes) else raw_key)[prefix:]
            if not raw_entries:
                continue
            last_id = raw_entries[-1][0].decode("ascii")
            with self._lock:
                if channel in self._positions:
                    self._positions[channel] = last_id
                subs = list(self._subscriptions.get(channel, ()))
            for raw_id, fields in raw_entries:
                event_id = raw_id.decode("ascii")
                key = parse_id(event_id)
                assert key is not None
                wire = b"id: " + raw_id + b"\n" + fields[b"b"]
                batch.append((subs, key, wire))
            self.stats.delivered += len(subs) * len(raw_entries)
        fan_out_batch(batch)

    def close(self) -> None:
        """Stop the reader and close the connections."""
        self._closed = True
        if self._client is not None:
            reader = self._reader_client_id
            if reader is not None:
                with contextlib.suppress(self._redis.RedisError):
                    self._client.client_unblock(reader)
            self._client.close()


def check_redis_url(url: object) -> str:
    """*url* if it is a ``redis://``, ``rediss://`` or ``unix://`` URL, else ``ValueError``."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"url must be a redis://, rediss:// or unix:// URL, not {url!r}")
    return url


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
