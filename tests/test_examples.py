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


ROOMS_SECRET = "rooms-example-secret-of-32-bytes-or-more"


def test_rooms_example_logs_a_user_in_and_streams_only_their_rooms(gunicorn: Callable[..., ServerProcess]) -> None:
    """Issue 10: the Flask page that logs a user in, mints their token into the
    eventsource_token cookie, and streams their rooms and the public lobby."""
    from wsgi_eventsource.auth import TokenAuth, mint

    server = gunicorn("examples.rooms:application", env={"ROOMS_SECRET": ROOMS_SECRET})
    wait_until(lambda: any("Using worker: gevent" in line for line in server.log), 5, message="a gevent worker")
    form = StreamClient(server.port, "/")
    assert b'action="/login"' in form.read_body()
    assert StreamClient(server.port, "/rooms").status == 302  # not logged in: to the form

    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    refused = StreamClient(server.port, "/login", method="POST", body=b"user=Alice%20B", headers=form_type)
    assert (refused.status, refused.read_body()) == (400, b"A user name is 1 to 32 of a-z, 0-9, _ and -\n")
    login = StreamClient(server.port, "/login", method="POST", body=b"user=alice", headers=form_type)
    assert login.status == 303
    assert login.headers["location"].endswith("/rooms")
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    token = cookie.split(";")[0].removeprefix("eventsource_token=")
    claims = TokenAuth(ROOMS_SECRET).verify(token)
    assert claims["sub"] == "alice"
    assert claims["eventsource"] == {"subscribe": ["alice/*"], "publish": []}
    with_cookie = {"Cookie": f"eventsource_token={token}"}

    page = StreamClient(server.port, "/rooms", headers=with_cookie)
    body = page.read_body()
    assert b"channel=alice%2Finbox&amp;channel=alice%2Falerts&amp;channel=public%2Flobby" in body
    path = "/events?channel=alice/inbox&channel=alice/alerts&channel=public/lobby"
    stream = StreamClient(server.port, path, headers=with_cookie)
    assert stream.status == 200
    stream.wait_for(lambda c: c.parser.last_event_id.count("*") == 3)  # the starting cursor

    assert StreamClient(server.port, path).status == 401  # no cookie
    assert StreamClient(server.port, "/events/bob/inbox", headers=with_cookie).status == 403  # another's room
    lobby = StreamClient(server.port, "/events/public/lobby")  # public: no token needed
    assert lobby.status == 200

    # The cookie does not publish (a page of another site could make the
    # browser send it); a token in the header that may publish does.
    by_cookie = StreamClient(server.port, "/publish/alice/inbox", method="POST", body=b"x", headers=with_cookie)
    assert by_cookie.status == 401
    admin = {"Authorization": f"Bearer {mint(ROOMS_SECRET, publish=['**'], ttl=60)}"}
    for channel, text in [("bob/inbox", "not for alice"), ("alice/inbox", "hello alice"), ("public/lobby", "hi all")]:
        posted = StreamClient(server.port, f"/publish/{channel}", method="POST", body=text.encode(), headers=admin)
        assert posted.status == 201, posted.read_body()
    events = stream.events(2)
    assert [(e.last_event_id.partition("*")[0], e.data) for e in events] == [
        ("alice/inbox", "hello alice"),
        ("public/lobby", "hi all"),
    ]
    assert lobby.events(1)[0].data == "hi all"

    refreshed = StreamClient(server.port, "/refresh", method="POST", headers=with_cookie)
    assert refreshed.status == 204
    assert "eventsource_token=" in refreshed.headers["set-cookie"]
    assert StreamClient(server.port, "/refresh", method="POST").status == 401
