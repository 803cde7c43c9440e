"""RedisBroker on Redis Sentinel (issue 11), against the real thing: a
master, a replica and three sentinels (tests/sentinel_setup.py); and
``wait_replicas`` (``WAIT`` after each publish), also on a lone Redis,
where no replica can confirm anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from gevent.pywsgi import WSGIServer

from tests.helpers import StreamClient
from tests.sentinel_setup import PASSWORD, SentinelSetup, sentinel, sentinel_setup  # noqa: F401
from wsgi_eventsource import BrokerUnavailable, NotReplicated, RedisBroker

pytestmark = pytest.mark.server


@pytest.fixture
def broker_of() -> Iterator[Callable[..., RedisBroker]]:
    """RedisBrokers (``block=0.2``), closed afterwards."""
    made: list[RedisBroker] = []

    def make(url: str, **options: Any) -> RedisBroker:
        broker = RedisBroker(url, **{"block": 0.2, **options})
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def master_url(setup: SentinelSetup) -> str:
    """A plain redis:// URL of the current master (no Sentinel)."""
    return f"redis://:{PASSWORD}@127.0.0.1:{setup.master_port()}/0"


# -- wait_replicas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"wait_replicas": -1}, "wait_replicas must be an int >= 0", id="negative"),
        pytest.param({"wait_replicas": 1.0}, "wait_replicas must be an int >= 0", id="float"),
        pytest.param({"wait_replicas": True}, "wait_replicas must be an int >= 0", id="bool"),
        pytest.param({"wait_replicas": "1"}, "wait_replicas must be an int >= 0", id="str"),
        pytest.param({"wait_timeout": 0}, "wait_timeout must be a positive number", id="zero-timeout"),
        pytest.param({"wait_timeout": 5}, "below 5", id="timeout-past-the-socket-timeout"),
        pytest.param({"wait_timeout": None}, "wait_timeout must be a positive number", id="none-timeout"),
    ],
)
def test_bad_wait_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisBroker("redis://localhost:6379/0", **options)


def test_a_publish_no_replica_confirms_is_stored_and_says_so(
    redis_url: str, broker_of: Callable[..., RedisBroker], serve: Callable[..., WSGIServer]
) -> None:
    """A lone Redis has no replica: WAIT 1 answers 0 after wait_timeout. The
    event is in Redis (replayed, delivered live) and the caller learns its
    id; the publisher app answers 503 with the id, without Retry-After."""
    broker = broker_of(redis_url, wait_replicas=1, wait_timeout=0.05)
    port = serve(broker.subscriber_app(keepalive=0.2)).server_port
    live = StreamClient(port, "/news")
    live.wait_for(lambda c: c.raw)
    with pytest.raises(NotReplicated) as caught:
        broker.publish("news", "stored anyway")
    error = caught.value
    assert isinstance(error, BrokerUnavailable)
    assert (error.replicas, error.wanted) == (0, 1)
    assert f"event {error.event_id} is stored" in str(error)
    assert [entry.id for entry in broker.history_of("news")] == [error.event_id]
    assert [(e.last_event_id, e.data) for e in live.events(1)] == [(error.event_id, "stored anyway")]

    answer = StreamClient(serve(broker.publisher_app()).server_port, "/news", method="POST", body=b"again")
    assert answer.status == 503
    assert "retry-after" not in answer.headers  # a retry would publish it twice
    assert answer.headers["content-type"] == "application/json"
    body = json.loads(answer.read_body())
    assert (body["channel"], body["replicas"], body["wanted"]) == ("news", 0, 1)
    assert body["id"] == broker.history_of("news")[-1].id
    assert f"stored with id {body['id']}" in body["error"]


def test_wait_replicas_zero_sends_no_wait(redis_url: str, broker_of: Callable[..., RedisBroker]) -> None:
    broker = broker_of(redis_url)
    admin = redis.Redis.from_url(redis_url)
    admin.config_resetstat()
    broker.publish("plain", "x")
    assert "cmdstat_wait" not in admin.info("commandstats")
    admin.close()


def test_a_replica_confirms_in_one_round_trip(
    sentinel: SentinelSetup,  # noqa: F811
    broker_of: Callable[..., RedisBroker],
) -> None:
    """With a replica in sync, WAIT answers 1 at once. The script and WAIT
    go in one pipeline: no SCRIPT EXISTS per publish (a pipeline that runs a
    redis-py Script sends one first)."""
    broker = broker_of(master_url(sentinel), wait_replicas=1, wait_timeout=2)
    broker.publish("warm", "up")  # loads the script (EVALSHA answers NOSCRIPT once)
    with sentinel.admin() as admin:
        admin.config_resetstat()
        ids = [broker.publish("news", f"event {i}") for i in range(20)]
        stats = admin.info("commandstats")
    assert stats["cmdstat_wait"]["calls"] == 20
    assert stats["cmdstat_evalsha"]["calls"] == 20
    assert "cmdstat_script|exists" not in stats  # Redis 7 counts subcommands apart
    with sentinel.admin(_replica_port(sentinel)) as replica:
        assert [raw.decode() for raw, _ in replica.xrange("wsgi-eventsource:news")] == ids


def test_a_script_flushed_from_redis_is_loaded_again(
    sentinel: SentinelSetup,  # noqa: F811
    broker_of: Callable[..., RedisBroker],
) -> None:
    """A new master after a failover has none of the scripts (nor does one
    after SCRIPT FLUSH): EVALSHA answers NOSCRIPT, writes nothing; the
    publish loads the script and publishes once."""
    broker = broker_of(master_url(sentinel), wait_replicas=1, wait_timeout=2)
    first = broker.publish("news", "one")
    with sentinel.admin() as admin:
        admin.script_flush()
        second = broker.publish("news", "two")
        assert [raw.decode() for raw, _ in admin.xrange("wsgi-eventsource:news")] == [first, second]


def _replica_port(setup: SentinelSetup) -> int:
    master = setup.master_port()
    (port,) = (port for port in setup.data_ports if port != master)
    return port
