"""Redis URLs (issue 11): what each names, the error for each bad part, and
that a password is never shown; RedisBroker.from_client on a real Redis."""

from __future__ import annotations

import pytest

from wsgi_eventsource import BrokerUnavailable, RedisBroker
from wsgi_eventsource.brokers.redis.urls import RedisTarget, parse_redis_url, shown_url

GOOD = [
    ("redis://localhost:6379/0", RedisTarget("single", "")),
    ("rediss://:pw@example.com:6380/2", RedisTarget("single", "")),
    ("unix:///run/redis.sock?db=1", RedisTarget("single", "")),
    (
        "redis+sentinel://:s3cret@h1:26379,h2:26380/mymaster/2",
        RedisTarget("sentinel", "", (("h1", 26379), ("h2", 26380)), service="mymaster", db=2, password="s3cret"),
    ),
    ("redis+sentinel://h1,h2/svc", RedisTarget("sentinel", "", (("h1", 26379), ("h2", 26379)), service="svc")),
    (
        "redis+cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001/?partitions=4",
        RedisTarget(
            "cluster", "", (("10.0.0.1", 7000), ("10.0.0.2", 7001)), username="app", password="p@ss", partitions=4
        ),
    ),
    ("redis+cluster://[::1]:7000/", RedisTarget("cluster", "", (("::1", 7000),))),
    ("redis+cluster://node", RedisTarget("cluster", "", (("node", 6379),))),
]


@pytest.mark.parametrize(("url", "expected"), GOOD)
def test_each_url_names_its_nodes_service_and_credentials(url: str, expected: RedisTarget) -> None:
    target = parse_redis_url(url)
    assert target.kind == expected.kind
    assert target.url == url
    for name in ("nodes", "service", "db", "username", "password", "partitions"):
        assert getattr(target, name) == getattr(expected, name), name


BAD = [
    ("http://localhost:6379", "starts with redis://"),
    ("localhost:6379", "not 'localhost:6379'"),
    ("redis://h:x/0", "Port could not be cast"),
    ("redis+sentinel://:hunter2@h1:99999/m/0", "port '99999' of host 'h1'"),
    ("redis+sentinel://:hunter2@h1:26379/", "names the service"),
    ("redis+sentinel://:hunter2@h1/m/x", "database after the service must be a number, not 'x'"),
    ("redis+sentinel://:hunter2@h1/m!x/0", "not a Sentinel service name"),
    ("redis+cluster://:hunter2@/", "names no host"),
    ("redis+cluster://:hunter2@h:1,/", "'' is not a host name"),
    ("redis+cluster://:hunter2@h:1/0", "has no path"),
    ("redis+cluster://:hunter2@h:1/?partitons=3", "unknown option 'partitons'"),
    ("redis+cluster://:hunter2@h:1/?partitions=0", "partitions must be a whole number from 1 to 16384, not '0'"),
    ("redis+cluster://:hunter2@h:1/?partitions=2&partitions=3", "given 2 times"),
    ("redis+cluster://:hunter2@h_1:1/", "'h_1' is not a host name"),
    ("redis+cluster://:hunter2@[::1/", "is not a host name"),
]


@pytest.mark.parametrize(("url", "says"), BAD)
def test_a_bad_url_says_which_part_is_wrong_and_never_shows_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"\S") as raised:
        parse_redis_url(url)
    assert says in str(raised.value)
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ValueError, match=r"\S") as raised:
        RedisBroker(url)
    assert says in str(raised.value)


def test_a_url_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValueError, match="must be a str, not int"):
        parse_redis_url(6379)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
        ("redis://u:hunter2@h:1/0?password=hunter2", "redis://u:***@h:1/0?password=***"),
        ("redis+sentinel://:hunter2@h1,h2/m/0", "redis+sentinel://:***@h1,h2/m/0"),
        ("redis+cluster://u:hunter2@h:1,h:2/", "redis+cluster://u:***@h:1,h:2/"),
        ("redis+cluster://u@h:1/", "redis+cluster://u@h:1/"),
    ],
)
def test_shown_urls_mask_every_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown
    assert "hunter2" not in repr(parse_redis_url(url))


def test_a_cluster_prefix_may_not_hold_a_hash_tag() -> None:
    with pytest.raises(ValueError, match="may not contain"):
        RedisBroker("redis+cluster://h:1/", prefix="app{x}:")


def test_cluster_keys_carry_the_partition_tag_and_a_single_redis_keys_do_not() -> None:
    single, cluster = RedisBroker("redis://h:1/0"), RedisBroker("redis+cluster://h:1/?partitions=4")
    assert single._key("room/1") == "wsgi-eventsource:room/1"  # as before: no migration
    key = cluster._key("room/1")
    assert key.startswith("wsgi-eventsource:{p")
    assert key.endswith("}room/1")
    assert cluster._channel_of_key(key) == "room/1"
    tags = {cluster._key(f"room/{i}").split("}")[0] for i in range(200)}
    assert len(tags) == 4  # every partition is used


def test_from_client_uses_the_clients_settings_not_its_connections(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, db=3)
    broker = RedisBroker.from_client(client, history=10, block=0.2)
    try:
        event_id = broker.publish("c", "hello")
        assert client.exists(broker._key("c"))  # the same server and database
        assert [entry.id for entry in broker.history_of("c")] == [event_id]
        subscription, plan = broker.subscribe("c", "0-0")
        assert b"data: hello" in plan
        broker.unsubscribe(subscription)
    finally:
        broker.close()
    client.ping()  # the app's client is left alone


def test_from_client_refuses_what_is_not_a_redis_client() -> None:
    with pytest.raises(TypeError, match="not str"):
        RedisBroker.from_client("redis://localhost")


def test_from_client_with_a_wrong_password_never_shows_it(redis_url: str) -> None:
    import redis

    admin = redis.Redis.from_url(redis_url)
    admin.config_set("requirepass", "right-one")
    try:
        client = redis.Redis.from_url(redis_url, password="hunter2")
        broker = RedisBroker.from_client(client, block=0.2)
        with pytest.raises(BrokerUnavailable) as raised:
            broker.publish("c", "x")
        assert "hunter2" not in str(raised.value)
        assert "hunter2" not in repr(broker)
        broker.close()
    finally:
        redis.Redis.from_url(redis_url, password="right-one").config_set("requirepass", "")
