"""The examples, run the way their docstrings say: under gunicorn -k gevent."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import ROOT, ServerProcess, free_port
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
        worker = "Using worker: wsgi_eventsource.gunicorn_worker.GeventWorker"
        wait_until(lambda: any(worker in line for line in server.log), 5, message="the library's gevent worker")
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


DJANGO_SITE = os.path.join(ROOT, "examples", "django_site")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def start_django_site(gunicorn: Callable[..., ServerProcess], *extra: str, redis_url: str = "") -> ServerProcess:
    """The Django example under gunicorn -k gevent, run as its wsgi.py says
    (from examples/django_site), DEBUG off; MemoryBroker unless *redis_url*."""
    env = {
        "DJANGO_SETTINGS_MODULE": "newsroom.settings",
        "DJANGO_SECRET_KEY": "test-only-secret-key-of-the-django-example",
        "DJANGO_DEBUG": "0",
        "REDIS_URL": redis_url,
    }
    server = gunicorn("newsroom.wsgi", "--chdir", DJANGO_SITE, *extra, env=env)
    wait_until(lambda: any("Using worker: gevent" in line for line in server.log), 5, message="a gevent worker")
    return server


def csrf_of(port: int) -> tuple[bytes, dict[str, str]]:
    """GET the page as a browser would: its body, and the Cookie header that
    returns the CSRF cookie it set (the form's hidden token is in the body)."""
    page = StreamClient(port, "/")
    assert page.status == 200
    body = page.read_body()
    cookie = page.headers["set-cookie"].split(";")[0]
    assert cookie.startswith("csrftoken=")
    return body, {**FORM, "Cookie": cookie}


def say(port: int, text: str, token: str | None, headers: dict[str, str]) -> StreamClient:
    fields = {"text": text} if token is None else {"csrfmiddlewaretoken": token, "text": text}
    return StreamClient(port, "/say", method="POST", body=urlencode(fields).encode(), headers=headers)


def form_token(page: bytes) -> str:
    match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert match, page
    return match.group(1).decode()


def test_django_example_publishes_from_a_view_to_the_mounted_stream(gunicorn: Callable[..., ServerProcess]) -> None:
    """Issue 13: the Django site whose wsgi.py mounts the subscriber app with
    DispatcherMiddleware: / renders the page that subscribes, the
    CSRF-protected form view /say publishes with broker.publish."""
    server = start_django_site(gunicorn)
    page, with_cookie = csrf_of(server.port)
    assert b'new EventSource("/eventsource/news")' in page
    assert b'action="/say"' in page
    token = form_token(page)

    news = StreamClient(server.port, "/eventsource/news")
    assert news.headers["content-type"].startswith("text/event-stream")
    news.wait_for(lambda c: b"id: " in c.raw)  # subscribed: the starting id

    # Refused, each with its reason and nothing published: no CSRF token (as
    # a page of another site would post), no text, too long, not a POST.
    assert say(server.port, "forged", None, FORM).status == 403
    assert say(server.port, "forged", None, with_cookie).status == 403
    empty = say(server.port, "  ", token, with_cookie)
    assert (empty.status, empty.read_body()) == (400, b"Say something: the text field is empty\n")
    too_long = say(server.port, "x" * 501, token, with_cookie)
    assert (too_long.status, too_long.read_body()) == (400, b"The text is over 500 characters\n")
    assert StreamClient(server.port, "/say").status == 405

    said = say(server.port, "Django says hi\nin two lines", token, with_cookie)
    assert said.status == 303
    assert said.headers["location"] == "/"
    event = news.events(1)[0]
    assert (event.type, event.data) == ("message", "Django says hi\nin two lines")
    assert StreamClient(server.port, "/nowhere").status == 404  # Django's, DEBUG off
    assert not [line for line in server.log if "Traceback" in line or "Internal Server Error" in line]


def test_django_example_with_redis_shares_channels_between_workers(
    gunicorn: Callable[..., ServerProcess], redis_url: str
) -> None:
    """Issue 13: with REDIS_URL the Django site runs several workers: what a
    view publishes is in Redis (so every worker's streams get it), and what
    any process publishes to Redis reaches the site's streams."""
    from wsgi_eventsource import RedisBroker

    server = start_django_site(gunicorn, "--workers", "2", redis_url=redis_url)
    page, with_cookie = csrf_of(server.port)
    streams = [StreamClient(server.port, "/eventsource/news") for _ in range(4)]
    for stream in streams:
        stream.wait_for(lambda c: b"id: " in c.raw)

    assert say(server.port, "from a Django view", form_token(page), with_cookie).status == 303
    elsewhere = RedisBroker(redis_url)  # another process's broker, say another worker's
    try:
        wait_until(lambda: len(elsewhere.history_of("news")) == 1, 5, message="the view's event in Redis")
        elsewhere.publish("news", "from elsewhere")
        for stream in streams:
            assert [e.data for e in stream.events(2)] == ["from a Django view", "from elsewhere"]
    finally:
        elsewhere.close()


def test_django_example_answers_503_when_redis_is_down(gunicorn: Callable[..., ServerProcess]) -> None:
    """Issue 13: with Redis unreachable the page still renders, /say answers
    503 with the reason (not Django's 500) and the stream refuses softly (200
    with a retry hint, so that the browser comes back)."""
    server = start_django_site(gunicorn, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    page, with_cookie = csrf_of(server.port)
    refused = say(server.port, "lost?", form_token(page), with_cookie)
    assert (refused.status, refused.read_body()) == (503, b"Not published: the broker cannot be reached, try again\n")
    stream = StreamClient(server.port, "/eventsource/news")
    assert stream.status == 200
    stream.read_to_end(timeout=5)
    assert b"retry: " in stream.raw
    assert not [line for line in server.log if "Internal Server Error" in line]


@pytest.fixture
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, FLAGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_django_example_page_in_chromium_shows_what_its_form_says(
    gunicorn: Callable[..., ServerProcess], chromium: Any
) -> None:
    """Issue 13: in a real browser, the Django page's form posts (with its CSRF
    token) and the event comes back on the page's own stream, and to another
    page; without JavaScript the form posts and redirects back to the page."""
    server = start_django_site(gunicorn)
    url = f"http://127.0.0.1:{server.port}/"
    writer, reader = chromium.new_page(), chromium.new_page()
    for page in (writer, reader):
        page.goto(url)
        page.wait_for_function("document.getElementById('state').textContent === 'open'", timeout=5000)
    writer.fill("input[name=text]", "hello from Chromium")
    writer.click("button")
    for page in (writer, reader):
        page.wait_for_function("document.querySelectorAll('#log li').length === 1", timeout=5000)
        assert page.inner_text("#log li") == "hello from Chromium"
    # The fetch clears the field once answered, which may be after the event came.
    writer.wait_for_function("document.querySelector('input[name=text]').value === ''", timeout=5000)

    plain = chromium.new_context(java_script_enabled=False).new_page()
    plain.goto(url)
    plain.fill("input[name=text]", "without JavaScript")
    with plain.expect_navigation():
        plain.click("button")
    assert plain.url == url
    for page in (writer, reader):
        page.wait_for_function("document.querySelectorAll('#log li').length === 2", timeout=5000)
        assert page.inner_text("#log").splitlines() == ["hello from Chromium", "without JavaScript"]
