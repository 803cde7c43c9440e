"""RedisBroker against a real redis-server: many processes, one reader per
process, and Redis going away and coming back."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest
import redis
from gevent.pywsgi import WSGIServer
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.conftest import ROOT, RedisServer, ServerProcess
from tests.helpers import StreamClient, parse, wait_until
from wsgi_eventsource import BrokerUnavailable, RedisBroker

pytestmark = pytest.mark.server


def test_without_redis_installed_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from wsgi_eventsource import RedisBroker, MemoryBroker\n"
        "MemoryBroker().publish('a', 'works without redis')\n"
        "RedisBroker('redis://localhost')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 1
    assert "ImportError" in result.stderr
    assert "pip install 'wsgi-eventsource[redis]'" in result.stderr


def test_one_reader_connection_per_process_not_per_subscriber(serve: Callable[..., WSGIServer], redis_url: str) -> None:
    broker = RedisBroker(redis_url)
    port = serve(DispatcherMiddleware(lambda e, s: [], {"/events": broker.subscriber_app()})).server_port
    admin = redis.Redis.from_url(redis_url)
    before = len(admin.client_list())
    clients = [StreamClient(port, f"/events/ch{i % 10}") for i in range(60)]
    for c in clients:
        c.wait_for(lambda c: b"id: " in c.raw)
    for i in range(10):
        broker.publish(f"ch{i}", "x")
    for c in clients:
        c.events(1)
    connections = len(admin.client_list()) - before
    assert connections <= 3, f"{connections} Redis connections for 60 subscribers"
    admin.close()
    broker.close()


def test_redis_killed_and_restarted_mid_stream(serve: Callable[..., WSGIServer], redis_server: RedisServer) -> None:
    broker = RedisBroker(redis_server.url, block=0.2)
    app = DispatcherMiddleware(
        lambda e, s: [], {"/events": broker.subscriber_app(keepalive=0.2), "/publish": broker.publisher_app()}
    )
    port = serve(app).server_port
    client = StreamClient(port, "/events/live")
    before = [broker.publish("live", f"before {i}") for i in range(3)]
    assert [e.last_event_id for e in client.events(3)] == before

    redis_server.kill()
    with pytest.raises(BrokerUnavailable, match="cannot be reached"):
        broker.publish("live", "lost")
    answer = StreamClient(port, "/publish/live", method="POST", body=b"x")
    assert answer.status == 503
    assert "retry-after" in answer.headers
    assert str(redis_server.port).encode() not in answer.read_body()  # where Redis is: the log's business
    refused = StreamClient(port, "/events/other")  # a new subscription cannot replay: refused softly
    assert (refused.status, refused.headers["content-type"][:17]) == (200, "text/event-stream")
    # The open stream stays open: keepalives keep coming while Redis is down.
    comments = len(client.parser.comments)
    client.wait_for(lambda c: len(c.parser.comments) >= comments + 3, timeout=5)

    redis_server.start()
    after: list[str] = []

    def publish_when_back() -> None:
        while True:
            try:
                after.append(broker.publish("live", f"after {len(after)}"))
            except BrokerUnavailable:
                gevent.sleep(0.05)
                continue
            if len(after) == 3:
                return
            gevent.sleep(0.01)

    gevent.spawn(publish_when_back).join(timeout=20)
    assert len(after) == 3
    events = client.events(7, timeout=20)
    # Redis came back empty: what it held is gone, so the client is told
    # (issue 8 (3)), then gets the new events; nothing twice.
    assert [e.type for e in events] == ["message"] * 3 + ["stream-reset"] + ["message"] * 3
    assert json.loads(events[3].data) == {"channel": "live", "lastEventId": before[-1], "reason": "restarted"}
    assert [e.last_event_id for e in events if e.type == "message"] == before + after
    assert not client.eof
    broker.close()


def test_two_processes_share_channels_and_replay_across_them(
    gunicorn: Callable[..., ServerProcess], redis_url: str
) -> None:
    env = {"REDIS_URL": redis_url}
    one = gunicorn("tests.apps.channels:app", env=env)
    two = gunicorn("tests.apps.channels:app", env=env)
    subscriber = StreamClient(two.port, "/events/room")
    subscriber.wait_for(lambda c: b"id: " in c.raw)
    ids = []
    for i in range(3):
        answer = StreamClient(one.port, "/publish/room", method="POST", body=f"m{i}".encode())
        assert answer.status == 201
        ids.append(json.loads(answer.read_body())["id"])
    assert [e.data for e in subscriber.events(3)] == ["m0", "m1", "m2"]
    assert [e.last_event_id for e in subscriber.parser.events] == ids

    # A client of process 1 saw the first event, then reconnects to process 2.
    watcher = StreamClient(one.port, "/events/room", headers={"Last-Event-ID": ids[0]})
    assert [e.last_event_id for e in watcher.events(2)] == ids[1:]
    watcher.close()
    moved = StreamClient(two.port, "/events/room", headers={"Last-Event-ID": ids[0]})
    assert [e.data for e in moved.events(2)] == ["m1", "m2"]
    assert all(e.type == "message" for e in moved.parser.events)


def test_a_gap_trimmed_by_maxlen_is_detected_across_processes(
    gunicorn: Callable[..., ServerProcess], redis_url: str
) -> None:
    server = gunicorn("tests.apps.channels:app", env={"REDIS_URL": redis_url, "HISTORY": "5"})
    broker = RedisBroker(redis_url, history=5)
    first = broker.publish("trim", "first")
    for i in range(500):
        broker.publish("trim", f"m{i}")
    client = StreamClient(server.port, "/events/trim", headers={"Last-Event-ID": first})
    events = client.events(2)
    assert events[0].type == "stream-reset"
    assert json.loads(events[0].data)["reason"] == "expired"
    broker.close()


def test_the_reader_follows_a_newly_subscribed_channel_at_once(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    broker = RedisBroker(redis_url, block=30)  # a long XREAD: only CLIENT UNBLOCK can cut it short
    port = serve(DispatcherMiddleware(lambda e, s: [], {"/events": broker.subscriber_app()})).server_port
    first = StreamClient(port, "/events/one")
    first.wait_for(lambda c: b"id: " in c.raw)
    wait_until(lambda: broker._lanes[0].client_id is not None, 5)
    second = StreamClient(port, "/events/two")
    second.wait_for(lambda c: b"id: " in c.raw)
    broker.publish("two", "hello")
    assert second.events(1, timeout=3)[0].data == "hello"
    broker.close()


def test_a_reader_left_without_channels_waits_instead_of_polling(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    """Review of issue 11: the reader of a process whose streams had all
    ended woke 20 times a second for ever to look for channels. It now waits
    until one is added (or ``block`` seconds pass), and a new channel wakes
    it at once: here block=30, so anything but the wake-up would take 30 s."""
    broker = RedisBroker(redis_url, block=30)
    app = broker.subscriber_app(keepalive=0.1)  # a closed stream is noticed at the next keepalive
    port = serve(DispatcherMiddleware(lambda e, s: [], {"/events": app})).server_port
    first = StreamClient(port, "/events/gone")
    first.wait_for(lambda c: b"id: " in c.raw)
    lane = broker._lanes[0]
    wait_until(lambda: lane.client_id is not None, 5)
    first.reset()
    wait_until(lambda: not broker.channel_counts() and not lane.positions, 5, message="the stream is gone")
    # Cut its XREAD short (it would wait out block=30): it finds no channel to read.
    was_blocked = lane.clock.read_began
    assert broker._unblock(broker._ensure_client(), lane) == 1
    wait_until(lambda: lane.clock.read_returned > was_blocked, 5, message="the reader is out of its XREAD")
    wakes = set()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        wakes.add(lane.clock.read_returned)  # set at every look for channels
        gevent.sleep(0.01)
    assert len(wakes) <= 2, f"the idle reader woke {len(wakes)} times in 0.5 s"
    second = StreamClient(port, "/events/next")
    second.wait_for(lambda c: b"id: " in c.raw)
    broker.publish("next", "hello")
    assert second.events(1, timeout=5)[0].data == "hello"
    broker.close()


def test_a_lane_has_its_clock_from_the_start_and_a_wake_keeps_it(redis_url: str) -> None:
    """Regression (8439623, caught by CI): the lane's clock was made in
    ``wake()`` instead of ``__init__`` (an edit that put the new method in
    the middle of the constructor). ``/stats`` of a hub that made a lane but
    had not woken its reader yet answered 500 (``'Lane' object has no
    attribute 'clock'``), and every wake reset the reader's lag."""
    broker = RedisBroker(redis_url)
    with broker._lock:
        lane = broker._lane_of("news")  # as a subscribe does, before it wakes the reader
    assert broker.reader_lag() == 0.0
    clock = lane.clock
    lane.wake()
    assert lane.clock is clock
    broker.close()


def test_the_redis_password_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    broker = RedisBroker("redis://user:hunter2@127.0.0.1:1/0")  # nothing listens on port 1
    with pytest.raises(BrokerUnavailable) as raised:
        broker.publish("c", "x")
    assert "hunter2" not in str(raised.value)
    assert "user:***@127.0.0.1:1" in str(raised.value)
    assert "hunter2" not in repr(broker)
    broker.close()


@pytest.mark.parametrize(
    ("url", "block", "match"),
    [
        ("localhost:6379", 1.0, "redis://"),
        ("http://x", 1.0, "redis://"),
        ("redis://x", 0, "block"),
        ("redis://x", True, "block"),
    ],
)
def test_bad_redis_options_are_refused_at_construction(url: str, block: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisBroker(url, block=block)


def test_an_id_redis_cannot_hold_gets_a_stream_reset_not_a_500(
    serve: Callable[..., WSGIServer], redis_url: str
) -> None:
    broker = RedisBroker(redis_url)
    port = serve(broker.subscriber_app()).server_port
    newest = broker.publish("huge", "x")
    for odd in ("99999999999999999999-0", "0-99999999999999999999", "18446744073709551616-0"):
        client = StreamClient(port, "/huge", headers={"Last-Event-ID": odd})
        assert client.status == 200
        events = client.events(2)
        assert events[0].type == "stream-reset"
        assert json.loads(events[0].data)["reason"] == "unknown"
        assert events[1].last_event_id == newest
        client.close()
    broker.close()


@pytest.mark.slow
def test_a_long_block_does_not_make_the_reader_time_out(
    serve: Callable[..., WSGIServer], redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(redis_url, block=6)  # over redis-py's usual 5 s socket timeout
    port = serve(broker.subscriber_app(keepalive=1)).server_port
    client = StreamClient(port, "/slow")
    client.wait_for(lambda c: b"id: " in c.raw)
    with caplog.at_level(logging.WARNING, logger="wsgi_eventsource"):
        gevent.sleep(6.5)  # one whole idle XREAD BLOCK (what is tested is time itself)
        event_id = broker.publish("slow", "after a long idle read")
        assert client.events(1, timeout=5)[0].last_event_id == event_id
    assert "cannot be reached" not in caplog.text
    broker.close()


FORK_SCRIPT = """
import os, sys
from gevent import monkey
monkey.patch_all()
import gevent
from wsgi_eventsource import RedisBroker

broker = RedisBroker(sys.argv[1], block=0.2)
broker.subscribe("forked", None)  # the parent reads the channel before forking
pid = os.fork()
if pid == 0:
    subscription, _ = broker.subscribe("forked", None)
    event_id = broker.publish("forked", "to the child")
    for _ in range(100):
        if subscription.buffer:
            break
        gevent.sleep(0.05)
    os._exit(0 if [key for key, _ in subscription.buffer or []] else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_gets_live_events_on_a_channel_its_parent_read(redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, redis_url], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


STORM_SCRIPT = """
import json, sys, time
from gevent import monkey
monkey.patch_all()
import gevent
from gevent.pool import Pool
import redis
from wsgi_eventsource import RedisBroker

url, n = sys.argv[1], int(sys.argv[2])
admin = redis.Redis.from_url(url)
broker = RedisBroker(url, block=5)
broker.subscribe("warm", None)  # a reader that is already blocked in XREAD, as in a serving worker
time.sleep(0.3)
admin.config_resetstat()
subscriptions = []
Pool(100).map(lambda i: subscriptions.append(broker.subscribe(f"storm/{i}", None)[0]), range(n))
for i in range(n):
    broker.publish(f"storm/{i}", "x")
deadline = time.monotonic() + 60
while not all(s.buffer for s in subscriptions) and time.monotonic() < deadline:
    gevent.sleep(0.01)
stats = admin.info("commandstats")
calls = {name: stats.get("cmdstat_" + name, {}).get("calls", 0) for name in ("xread", "client|unblock", "evalsha")}
print(json.dumps({"live": sum(bool(s.buffer) for s in subscriptions), **calls}))
broker.close()
"""


def test_a_storm_of_new_channels_costs_a_few_reads_of_the_key_set_not_one_each(redis_url: str) -> None:
    """Issue 11: every new channel sent CLIENT UNBLOCK and so a fresh XREAD
    naming every channel (2,000 channels at once: ~2,000 of each). Batched:
    one subscriber wakes the reader for all that arrive meanwhile, and a
    changed key set is read at most every 10 us per key. (Fails before the
    batching: ~2,000 UNBLOCKs.) Every channel is live."""
    result = subprocess.run(
        [sys.executable, "-c", STORM_SCRIPT, redis_url, "2000"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["live"] == 2000, counts
    assert counts["client|unblock"] < 200, counts
    assert counts["xread"] < 200, counts


def test_a_redis_error_reply_is_a_503_not_a_500(serve: Callable[..., WSGIServer], redis_url: str) -> None:
    # A key of another type where a channel's stream should be (WRONGTYPE).
    redis.Redis.from_url(redis_url).set("wsgi-eventsource:clash", "not a stream")
    broker = RedisBroker(redis_url)
    with pytest.raises(BrokerUnavailable, match="answered with an error"):
        broker.publish("clash", "x")
    subscribe, publish = broker.subscriber_app(), broker.publisher_app()
    port = serve(DispatcherMiddleware(lambda e, s: [], {"/events": subscribe, "/publish": publish})).server_port
    assert StreamClient(port, "/publish/clash", method="POST", body=b"x").status == 503
    assert StreamClient(port, "/events/clash").headers["content-type"].startswith("text/event-stream")  # soft
    broker.close()
    redis.Redis.from_url(redis_url).delete("wsgi-eventsource:clash")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
        ({"max_connections": True}, "max_connections"),
        ({"pool_timeout": 0}, "pool_timeout"),
        ({"pool_timeout": "10"}, "pool_timeout"),
    ],
)
def test_bad_pool_options_are_refused_at_construction(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RedisBroker("redis://x", **options)


def _replayed(broker: RedisBroker, channel: str, last_event_id: str) -> list[Any]:
    subscription, preamble = broker.subscribe(channel, last_event_id)
    broker.unsubscribe(subscription)
    return parse(preamble).events


def test_replay_never_reaches_further_back_than_history(redis_url: str) -> None:
    """Issue 8 (10): Redis trims with MAXLEN ~ (whole nodes of 100 entries),
    so a client 15 events back with history=10 got all 15 replayed, although
    MemoryBroker never replays more than history."""
    broker = RedisBroker(redis_url, history=10)
    ids = [broker.publish("exact", f"m{i}") for i in range(150)]
    events = _replayed(broker, "exact", ids[-16])  # 15 events back
    assert events[0].type == "stream-reset"
    assert json.loads(events[0].data)["reason"] == "expired"
    assert [e.last_event_id for e in events[1:]] == ids[-10:]
    assert events[0].last_event_id == ids[-11]  # the id the replay continues from
    assert [e.last_event_id for e in _replayed(broker, "exact", ids[-6])] == ids[-5:]
    assert [e.last_event_id for e in _replayed(broker, "exact", ids[-11])] == ids[-10:]  # exactly history back
    assert [e.id for e in broker.history_of("exact")] == ids[-10:]
    broker.close()


def test_max_age_is_measured_on_redis_clock_not_the_apps(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (10): the MINID cutoff and the replay cutoff came from the
    app's clock, compared with ids made by Redis's: an app host one hour
    ahead trimmed and hid every event at once."""
    broker = RedisBroker(redis_url, max_age=60)
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3600 * 10**9)  # this host is an hour ahead
    ids = [broker.publish("clock", f"m{i}") for i in range(3)]
    assert [e.id for e in broker.history_of("clock")] == ids
    assert [e.last_event_id for e in _replayed(broker, "clock", ids[0])] == ids[1:]
    broker.close()


def test_a_password_in_the_query_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 8 (10): ``?password=`` in the URL showed in repr, errors and logs."""
    server = RedisServer()
    try:
        admin = redis.Redis(port=server.port)
        admin.config_set("requirepass", "hunter2")
        admin.close()
        broker = RedisBroker(f"redis://127.0.0.1:{server.port}/0?password=hunter2&db=0", block=0.2)
        assert "hunter2" not in repr(broker)
        assert "password=***&db=0" in repr(broker)
        subscription, _ = broker.subscribe("c", None)  # the reader starts and connects
        wait_until(lambda: broker._lanes[0].client_id is not None, 5)
        with caplog.at_level(logging.WARNING, logger="wsgi_eventsource"):
            server.kill()
            with pytest.raises(BrokerUnavailable) as raised:
                broker.publish("c", "x")
            wait_until(lambda: "cannot be reached" in caplog.text, 5)
        assert "hunter2" not in str(raised.value)
        assert "password=***" in str(raised.value)
        assert "hunter2" not in caplog.text
        assert "password=***" in caplog.text
        broker.unsubscribe(subscription)
        broker.close()
    finally:
        server.stop()
    unix = RedisBroker("unix:///run/redis.sock?db=1&password=hunter2")
    assert "hunter2" not in repr(unix)
    assert "password=***" in repr(unix)


def test_two_threads_never_build_two_clients(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (10): ``_ensure_client`` was an unlocked check-then-act: OS
    threads that raced both built a client (and reset the broker's state)."""
    broker = RedisBroker(redis_url)
    connect, built = broker._connect, []

    def slow_connect() -> Any:
        built.append(threading.get_ident())
        time.sleep(0.05)  # widen the window the race needs
        return connect()

    monkeypatch.setattr(broker, "_connect", slow_connect)
    barrier, clients = threading.Barrier(8), []

    def race() -> None:
        barrier.wait(5)
        clients.append(broker._ensure_client())

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(clients) == 8
    assert len(built) == 1
    assert len({id(c) for c in clients}) == 1
    broker.close()


def test_max_age_with_a_redis_older_than_6_2_is_a_clear_error(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 8 (10): max_age needs XTRIM MINID (Redis 6.2); with an older
    Redis every publish failed with a bare syntax error. Now the message
    names both versions, and check() says it at start."""
    for recent_enough in (RedisBroker(redis_url, max_age=5), RedisBroker(redis_url)):
        recent_enough.check()  # the real one (7.x)
        recent_enough.close()
    monkeypatch.setattr(redis.Redis, "info", lambda self, *args, **kwargs: {"redis_version": "6.0.16"})
    old = RedisBroker(redis_url, max_age=5)
    for attempt in (old.check, lambda: old.publish("c", "x"), lambda: old.subscribe("c", None)):
        with pytest.raises(BrokerUnavailable, match=r"max_age .* needs Redis 6\.2 or later.* is 6\.0\.16"):
            attempt()
    assert old.channel_counts() == {}
    old.close()
    without_max_age = RedisBroker(redis_url)
    without_max_age.publish("c", "without max_age 6.0 will do")
    without_max_age.close()
    with pytest.raises(BrokerUnavailable, match="cannot be reached"):
        RedisBroker("redis://127.0.0.1:1/0").check()
