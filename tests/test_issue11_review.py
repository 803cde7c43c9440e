"""Adversarial review of issue 11's broker changes: one regression test per
defect found, each against a real redis-server."""

from __future__ import annotations

import pytest

from wsgi_eventsource import RedisBroker


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


def test_good_query_options_still_work(redis_url: str) -> None:
    """Issue 11 review (1): the check does not refuse options redis-py takes."""
    broker = RedisBroker(redis_url + "?socket_keepalive=true&client_name=hub")
    try:
        assert broker.publish("ch", "x")
    finally:
        broker.close()
