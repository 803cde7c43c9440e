"""The examples, run the way their docstrings say: under gunicorn -k gevent."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, ServerProcess
from tests.helpers import StreamClient, wait_until

pytestmark = pytest.mark.server


def test_hello_example_serves_a_page_and_a_resumable_clock(gunicorn: Callable[..., ServerProcess]) -> None:
    server = gunicorn("examples.hello:app")
    page = StreamClient(server.port, "/")
    assert page.status == 200
    assert b"new EventSource" in page.read_body()

    client = StreamClient(server.port, "/events")
    first = client.events(2, timeout=5)
    assert [e.type for e in first] == ["tick", "tick"]
    assert [e.last_event_id for e in first] == ["1", "2"]
    client.close()

    resumed = StreamClient(server.port, "/events", headers={"Last-Event-ID": "41"})
    assert resumed.events(1, timeout=5)[0].last_event_id == "42"
    odd = StreamClient(server.port, "/events?lastEventId=not-a-number")
    assert odd.events(1, timeout=5)[0].last_event_id == "1"


def test_dispatcher_example_with_the_recommended_gunicorn_config() -> None:
    config = os.path.join(ROOT, "examples", "gunicorn.conf.py")
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            config,
            "--bind",
            "127.0.0.1:0",
            "examples.dispatcher:application",
        ],
        ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
        stop_signal=signal.SIGINT,
    )
    try:
        # gunicorn logs the worker class just after "Listening at", so wait for it.
        wait_until(lambda: any("Using worker: gevent" in line for line in server.log), 5, message="a gevent worker")
        page = StreamClient(server.port, "/")
        assert b"/eventsource/news" in page.read_body()
        news = StreamClient(server.port, "/eventsource/news")
        news.wait_for(lambda c: b"id: " in c.raw)
        clock = StreamClient(server.port, "/events/clock")
        assert clock.events(1, timeout=5)[0].type == "tick"
        posted = StreamClient(server.port, "/news?event=update", method="POST", body=b"Flask says hi")
        assert posted.status == 201
        event_id = json.loads(posted.read_body())["id"]
        event = news.events(1)[0]
        assert (event.type, event.data, event.last_event_id) == ("update", "Flask says hi", event_id)
    finally:
        server.stop()
