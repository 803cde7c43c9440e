"""The Redis broker: channels shared by many processes and hosts.

One Redis stream per channel is both the fan-out and the history:
``XADD ... MAXLEN ~ history`` publishes, a Lua snapshot replays (at most
``history`` entries) and ``XREAD BLOCK`` delivers live events. Stream ids are
the event ids.

Each process runs ONE reader per Redis (per partition on a cluster): a real OS
thread with its own Redis connection, reading every channel that has
subscribers in this process with a single ``XREAD``, and handing each batch
to the subscribers' gevent hubs (one callback per hub per batch). It never opens a connection per subscriber;
publish and subscribe share a bounded pool that waits for a free connection.

Redis does not record what ``MAXLEN`` trimmed away, so every entry stores its
predecessor's id (field ``p``, written atomically by a Lua script with the
stream's ``last-generated-id``); replay uses it to tell "the client saw
everything before the oldest entry" from "the client missed events", and the
reader uses it to see a gap in what it reads live (then it sends a
``stream-reset``; see :mod:`.reader`, which also says what a foreign entry or
a key of another type does).

When Redis cannot be reached, :meth:`RedisBroker.publish` raises
:class:`BrokerUnavailable`; the reader retries with backoff and resumes from
the last id it saw, so nothing Redis still holds is lost, and streams stay
open meanwhile (keepalives continue).

On Redis Cluster (``redis+cluster://``) channels are spread over hash-tagged
partitions and each partition with subscribers here has a reader of its own
(see :mod:`.cluster`); with Sentinel (``redis+sentinel://``) the clients
follow the master (:mod:`.sentinel`). A storm of new channels is batched: one
subscriber wakes a reader for all that arrive meanwhile, and a reader reads a
changed key set at most once per 10 µs per key.

Modules: :mod:`.urls` (URLs, password masking), :mod:`.scripts` (Lua),
:mod:`.reader` (the reader threads), :mod:`.clients` (connections),
:mod:`.cluster`, :mod:`.sentinel`, :mod:`.broker` (:class:`RedisBroker`).
"""

from .broker import RedisBroker
from .reader import STREAM_ERROR
from .urls import RedisTarget, check_redis_url, parse_redis_url

__all__ = ["STREAM_ERROR", "RedisBroker", "RedisTarget", "check_redis_url", "parse_redis_url"]
