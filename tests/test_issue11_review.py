"""Adversarial review of issue 11's broker changes: one regression test per
defect found, each against a real redis-server."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from tests.cluster_setup import RedisClusterNodes
from tests.conftest import RedisServer, ServerProcess
from tests.helpers import wait_until
from wsgi_eventsource import BrokerUnavailable, RedisBroker
from wsgi_eventsource.errors import ChannelUnavailable, NotReplicated


@pytest.mark.parametrize(
    ("query", "named"),
    [("?db=x", "db"), ("?socket_timeout=abc", "socket_timeout"), ("?no_such_option=1", "no_such_option")],
)
def test_bad_query_option_is_refused_at_construction(redis_url: str, query: str, named: str) -> None:
    """Issue 11 review (1): a redis:// URL whose query redis-py cannot use
    (``?db=x``, an unknown option) was accepted by RedisBroker, and every
    publish and subscribe then raised redis-py's ValueError or TypeError,
    which is no BrokerUnavailable: a 500 on each request. It is refused at
    once, with a ValueError that names the option and hides the password."""
    url = redis_url.replace("redis://", "redis://:s3cr3t@", 1) + query
    with pytest.raises(ValueError, match=named) as refused:
        RedisBroker(url)
    assert "s3cr3t" not in str(refused.value)


def test_a_bad_tls_option_is_a_value_error_at_construction() -> None:
    """Issue 11 review (1): ``rediss://...?ssl_cert_reqs=bogus`` made the
    check above raise redis-py's RedisError from the constructor, not a
    ValueError like every other bad URL (no connection is made)."""
    with pytest.raises(ValueError, match="Certificate Requirements") as refused:
        RedisBroker("rediss://:s3cr3t@localhost:6379/0?ssl_cert_reqs=bogus")
    assert "s3cr3t" not in str(refused.value)


def test_good_query_options_still_work(redis_url: str) -> None:
    """Issue 11 review (1): the check does not refuse options redis-py takes
    (``timeout``, the blocking pool's, too: a first version of the check did)."""
    broker = RedisBroker(redis_url + "?socket_keepalive=true&client_name=hub&timeout=5&max_connections=3")
    try:
        assert broker.publish("ch", "x")
    finally:
        broker.close()


def slot_of_channel(channel: str) -> int:
    """The cluster slot of *channel*'s key under the default prefix, on one Redis."""
    return int(key_slot(f"wsgi-eventsource:{channel}".encode()))


def slot_of_channel_key(broker: RedisBroker, channel: str) -> int:
    """The cluster slot of *channel*'s key (the broker's own key function)."""
    return int(key_slot(broker._key(channel).encode()))


def test_wait_replicas_on_a_plain_url_answered_moved_is_unavailable_not_a_crash(cluster: RedisClusterNodes) -> None:
    """Issue 11 review (2): with ``wait_replicas``, a publish whose XADD was
    answered MOVED (a redis:// URL that names one node of a cluster) called
    ``client.nodes_manager``, which only a RedisCluster has: AttributeError,
    no BrokerUnavailable, so a 500 from PublisherApp. Without wait_replicas
    the same publish is a BrokerUnavailable; with it, too."""
    node = cluster.masters()[0]
    broker = RedisBroker(f"redis://127.0.0.1:{node.port}/0", wait_replicas=1)
    try:
        # A channel whose key is in a slot this node does not serve.
        elsewhere = (f"ch{n}" for n in range(1000) if cluster.master_of(slot_of_channel(f"ch{n}")).port != node.port)
        with pytest.raises(BrokerUnavailable, match="answered with an error"):
            broker.publish(next(elsewhere), "x")
    finally:
        broker.close()


def test_a_multiplexed_subscribe_with_a_wrongtype_channel_leaves_only_the_good_ones(redis_url: str) -> None:
    """Issue 11 review (3): the pipelined subscribe of many new channels, one
    of them a string key (WRONGTYPE), answers that channel alone, keeps no
    subscription nor reader position for it, delivers the others live, and
    after unsubscribing leaves nothing behind."""
    client = redis.Redis.from_url(redis_url)
    client.set("wsgi-eventsource:bad", "not a stream")
    broker = RedisBroker(redis_url, block=0.5)
    try:
        asks: list[tuple[str, str | None]] = [("a", None), ("bad", None), ("b", "0-0"), ("c", None)]
        done = broker._subscribe_planned_many(asks)
        assert isinstance(done[1], ChannelUnavailable)
        assert done[1].reason == "wrong_type"
        assert set(broker.channel_counts()) == {"a", "b", "c"}
        assert set(broker._lanes[0].positions) == {"a", "b", "c"}
        subscriptions = [item[0] for item in done if not isinstance(item, ChannelUnavailable)]
        ids = {channel: broker.publish(channel, channel) for channel in ("a", "b", "c")}
        wait_until(lambda: all(s.buffer for s in subscriptions), timeout=10)
        for subscription in subscriptions:
            assert ids[subscription.channel].encode() in b"".join(wire for _, wire in subscription.buffer or [])
        for subscription in subscriptions:
            broker.unsubscribe(subscription)
        assert broker.channel_counts() == {}
        assert broker._lanes[0].positions == {}
    finally:
        broker.close()
        client.close()


def test_a_multiplexed_subscribe_against_a_dead_redis_leaves_nothing_subscribed(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Issue 11 review (4): Redis gone before the pipelined subscribe: a
    BrokerUnavailable, and no subscription or position is left behind."""
    broker = RedisBroker(redis_url, block=0.5)
    try:
        broker.check()
        redis_server.kill()
        with pytest.raises(BrokerUnavailable):
            broker._subscribe_planned_many([("a", None), ("b", "0-0"), ("c", None)])
        assert broker.channel_counts() == {}
        assert all(not lane.positions for lane in broker._lanes.values())
    finally:
        broker.close()


@pytest.mark.parametrize("setting", [{"decode_responses": True}, {"protocol": 3}])
def test_from_client_with_another_reply_format_delivers_and_replays(redis_url: str, setting: dict[str, Any]) -> None:
    """Issue 11 review (5): RedisBroker.from_client with an app's client made
    with ``decode_responses=True`` (common) copied that setting into the
    broker's own connections, which read bytes: the reader failed on every
    XREAD answer (``'str' object has no attribute 'decode'``, restarted for
    ever, nothing delivered) and a replay skipped every entry as not the
    broker's (a reset instead of the events). Issue 11 review (6): likewise
    ``protocol=3`` (RESP3: XREAD answers a map; "too many values to
    unpack", the reader restarted for ever)."""
    app_client = redis.Redis.from_url(redis_url, **setting)
    broker = RedisBroker.from_client(app_client, block=0.5)
    try:
        subscription, _ = broker._subscribe_planned("ch", None)
        event_id = broker.publish("ch", "hello")
        wait_until(lambda: bool(subscription.buffer), timeout=5, message="no live event")
        assert event_id.encode() in b"".join(wire for _, wire in subscription.buffer or [])
        assert broker.reader_stats.restarts == 0
        _, plan = broker._subscribe_planned("ch", "0-0")
        assert not plan.reset
        assert [entry.id for entry in plan.entries] == [event_id]
        assert app_client.get("untouched") is None  # the app's client is left as it was
    finally:
        broker.close()
        app_client.close()


@pytest.mark.parametrize(
    ("query", "named"), [("?decode_responses=true", "decode_responses"), ("?protocol=3", "protocol")]
)
def test_another_reply_format_in_the_url_is_refused(redis_url: str, query: str, named: str) -> None:
    """Issue 11 review (5, 6): ``?decode_responses=true`` or ``?protocol=3``
    in the URL makes the broker's connections answer str, or RESP3 maps,
    where it reads RESP2 bytes (nothing is ever delivered); refused at
    construction, by name."""
    with pytest.raises(ValueError, match=named):
        RedisBroker(redis_url + query)


def test_publishing_and_multiplexed_subscribes_resume_after_a_cluster_failover(cluster: RedisClusterNodes) -> None:
    """Issue 11 review (7): a publisher with ``wait_replicas``, and a
    multiplexed subscribe, run their pipelines on a cluster node's own
    client, around RedisCluster, which alone learns a new topology after an
    error: after a master failover, in a process that does nothing else,
    each publish and each multiplexed subscribe went to the dead master for
    good (ConnectionError every time). Both must resume once the replica is
    promoted."""
    publisher = RedisBroker(cluster.url, wait_replicas=1, wait_timeout=1)
    hub = RedisBroker(cluster.url, block=0.5)
    try:
        channel = "failing"
        # Two channels of the partition, so the subscribe is pipelined.
        other = next(f"x{n}" for n in range(10_000) if hub._lane_of(f"x{n}").index == hub._lane_of(channel).index)
        asks: list[tuple[str, str | None]] = [(channel, None), (other, None)]
        publisher.publish(channel, "before")
        for done in hub._subscribe_planned_many(asks):
            assert not isinstance(done, ChannelUnavailable)
            hub.unsubscribe(done[0])
        killed, promoted = cluster.kill_master_of(slot_of_channel_key(publisher, channel))
        assert promoted.port != killed.port
        failures: list[str] = []

        def resumed(step: Callable[[], object]) -> bool:
            try:
                step()
            except NotReplicated:
                return True  # published (the new master has no replica yet)
            except BrokerUnavailable as exc:
                failures.append(str(exc))
                return False
            return True

        wait_until(lambda: resumed(lambda: publisher.publish(channel, "after")), timeout=15, interval=0.2)
        wait_until(lambda: resumed(lambda: hub._subscribe_planned_many(asks)), timeout=15, interval=0.2)
    finally:
        publisher.close()
        hub.close()


def test_multiplexed_subscribes_and_wait_replicas_publishes_follow_a_moved_slot(cluster: RedisClusterNodes) -> None:
    """Issue 11 review (8): a publish with ``wait_replicas`` while its slot
    is moving (the keys are on the new master, the old one answers ASK) was
    refused with BrokerUnavailable for as long as the move took: its
    pipeline, a node's own, did not follow the ASK as RedisCluster does.
    After the move, publishes and multiplexed subscribes of the partition
    (its pipeline's MOVED falls back to one channel after another, which
    teaches RedisCluster the slot's new master) go on."""
    hub = RedisBroker(cluster.url, block=0.5)
    publisher = RedisBroker(cluster.url, wait_replicas=1, wait_timeout=1)
    try:
        channel = "moving"
        other = next(f"x{n}" for n in range(10_000) if hub._lane_of(f"x{n}").index == hub._lane_of(channel).index)
        asks: list[tuple[str, str | None]] = [(channel, None), (other, "0-0")]

        def subscribe_all() -> None:
            for done in hub._subscribe_planned_many(asks):
                assert not isinstance(done, ChannelUnavailable), done
                hub.unsubscribe(done[0])

        publisher.publish(channel, "before")
        subscribe_all()  # both clients know the topology before the move
        published_while_asked: list[str] = []
        cluster.migrate_slot(
            slot_of_channel_key(hub, channel),
            during=lambda: published_while_asked.append(publisher.publish(channel, "during")),
        )
        for _ in range(3):
            subscribe_all()
        assert published_while_asked
        publisher.publish(channel, "after")
    finally:
        hub.close()
        publisher.close()


def test_from_client_takes_a_client_of_a_relative_unix_socket_path(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11 review (9): RedisBroker.from_client with a client of a Unix
    socket named by a relative path (``Redis(unix_socket_path="redis.sock")``)
    was refused with "the Redis URL unix://redis.sock?db=0 names no socket
    path": the URL it builds for messages put the path in the host's place."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    server = ServerProcess(
        [binary, "--port", "0", "--unixsocket", str(tmp_path / "redis.sock"), "--save", "", "--appendonly", "no"],
        ready_pattern="(?i)ready to accept connections",
    )
    monkeypatch.chdir(tmp_path)
    app_client = redis.Redis(unix_socket_path="redis.sock")
    try:
        broker = RedisBroker.from_client(app_client)
        try:
            assert broker.publish("ch", "x")
            assert str(tmp_path / "redis.sock") in repr(broker)
        finally:
            broker.close()
    finally:
        app_client.close()
        server.stop()
