"""Redis Cluster: how channels are spread over the masters, and where a
reader finds the master of its partition.

A multi-key ``XREAD`` runs on a cluster only if every key is in one slot
(else ``CROSSSLOT``). So a channel's key carries a hash tag naming its
partition, ``prefix + "{p<N>}" + channel`` with ``N = crc32(channel) %
partitions``: the channels of a partition share one slot and one ``XREAD``,
and the partitions' slots spread over every master. Every process that shares
the channels must use the same ``partitions`` (the URL's ``?partitions=``):
another number puts a channel under another key, whose history is elsewhere
(a resuming client then gets a ``stream-reset``, never a silent gap).

Each process reads the partitions of one master with one reader thread
(:mod:`.masters`). The master of a partition's slot is found with ``CLUSTER
SLOTS`` from any node that answers; a ``MOVED`` reply names the new master
directly (after a reshard or a failover).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Any

__all__ = ["hash_tag", "master_of_slot", "masters_of_slots", "partition_of", "slot_of"]


def partition_of(channel: str, partitions: int) -> int:
    """The partition of *channel*: the same in every process and language (CRC-32)."""
    return zlib.crc32(channel.encode("utf-8")) % partitions


def hash_tag(partition: int) -> str:
    """The hash tag in the keys of *partition*'s channels."""
    return f"{{p{partition}}}"


def slot_of(partition: int) -> int:
    """The cluster slot of *partition* (Redis's CRC16 of the tag, mod 16384)."""
    from redis.crc import key_slot

    return int(key_slot(hash_tag(partition).encode("ascii")))


def master_of_slot(client: Any, slot: int) -> tuple[str, int] | None:
    """The address of the master serving *slot*, as the node behind *client*
    (a plain ``redis.Redis``) sees it; ``None`` if no master serves it."""
    return masters_of_slots(client, [slot]).get(slot)


def masters_of_slots(client: Any, slots: Iterable[int]) -> dict[int, tuple[str, int]]:
    """The address of the master serving each of *slots* that one serves,
    as the node behind *client* sees it: one ``CLUSTER SLOTS``."""
    own_host = client.connection_pool.connection_kwargs.get("host", "127.0.0.1")
    wanted, found = set(slots), {}
    for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        # An empty or "?" host means "the address you reached me at".
        address = (host if host not in ("", "?") else own_host), int(master[1])
        found.update(dict.fromkeys((slot for slot in wanted if start <= slot <= end), address))
    return found
