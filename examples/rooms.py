"""A Flask site that logs a user in and streams only their rooms, with signed tokens (JWT).

``/`` asks for a user name (no password: the point here is the token),
``/login`` mints the user's token and sets it as the ``eventsource_token``
cookie (two lines, in ``login``), and ``/rooms`` streams the user's rooms
(``<user>/inbox``, ``<user>/alerts``: the token covers ``<user>/*``) and the
public lobby (``public/**``, open to anyone) on one multiplexed stream. The
page refreshes its cookie before the token expires, so that the stream,
which ends at the token's ``exp``, reconnects with a fresh one.

The streams come from an embedded subscriber app checking the tokens with
:class:`~wsgi_eventsource.auth.TokenAuth`; a hub started with the same key
(``wsgi-eventsource serve --jwt-key @secret --public 'public/**'``) takes the
same cookie, if it is served on the same site.

Run it:   export ROOMS_SECRET=$(openssl rand -hex 32)
          gunicorn --worker-class gevent --bind 127.0.0.1:8000 examples.rooms:application
Publish:  curl -H "Authorization: Bearer $(wsgi-eventsource token --key "$ROOMS_SECRET" --publish '**')" \\
              -d 'hello alice' http://127.0.0.1:8000/publish/alice/inbox
"""

from __future__ import annotations

import html
import os
import re
import secrets
from urllib.parse import urlencode

from flask import Flask, redirect, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.wrappers import Response

from wsgi_eventsource import MemoryBroker, Unauthorized
from wsgi_eventsource.auth import TokenAuth, mint

# Shared with whoever else verifies the tokens (a hub). Without ROOMS_SECRET,
# a new one per start: fine for one worker, not for several.
SECRET = os.environ.get("ROOMS_SECRET") or secrets.token_hex(32)
TTL = 600  # seconds: short-lived tokens are how access ends
ROOMS = ("inbox", "alerts")
USER_NAME = re.compile(r"[a-z0-9_-]{1,32}")

broker = MemoryBroker(history=100)  # RedisBroker("redis://...") with several workers
auth = TokenAuth(SECRET, public=["public/**"])
# Publishing reads the Authorization header only: the browser sends the
# cookie with requests that pages of other sites make (CSRF).
publish_auth = TokenAuth(SECRET, cookie=None, query_param=None)
site = Flask(__name__)

LOGIN = """<!doctype html><meta charset="utf-8"><title>rooms: log in</title>
<form method="post" action="/login"><label>User name <input name="user" pattern="[a-z0-9_-]{1,32}" required></label>
<button>Log in</button></form>"""

ROOMS_PAGE = """<!doctype html><meta charset="utf-8"><title>rooms of {user}</title>
<h1>Rooms of {user}</h1><p id="state">connecting</p><ul id="log"></ul>
<script>
const source = new EventSource("/events?{query}");  // the cookie goes with it
source.onopen = () => {{ document.getElementById("state").textContent = "open"; }};
source.onerror = () => {{
  document.getElementById("state").textContent = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
}};
source.onmessage = (e) => {{
  const li = document.createElement("li");
  li.textContent = e.lastEventId.split("*")[0] + ": " + e.data;  // the channel, then the data
  document.getElementById("log").append(li);
}};
// A new cookie well before the token's exp, for the reconnect that follows it.
setInterval(() => fetch("/refresh", {{method: "POST"}}), {refresh_ms});
</script>"""


def _with_token(response: Response, user: str) -> Response:
    token = mint(SECRET, subscribe=[f"{user}/*"], ttl=TTL, subject=user)
    # Secure: never sent over plain http, where anyone on the way could read
    # it (browsers still take it from http://localhost for development).
    response.set_cookie("eventsource_token", token, max_age=TTL, httponly=True, secure=True, samesite="Strict")
    return response


def _user() -> str | None:
    """The user whose valid token came with the request, or None."""
    try:
        subject = auth.claims_of(request.environ).get("sub")
    except Unauthorized:
        return None
    return subject if isinstance(subject, str) and USER_NAME.fullmatch(subject) else None


@site.get("/")
def index() -> str | Response:
    return redirect("/rooms") if _user() else LOGIN


@site.post("/login")
def login() -> Response | tuple[str, int]:
    """Whoever you say you are (a real site checks a password here), with your token."""
    user = request.form.get("user", "")
    if not USER_NAME.fullmatch(user):
        return "A user name is 1 to 32 of a-z, 0-9, _ and -\n", 400
    return _with_token(redirect("/rooms", 303), user)


@site.post("/refresh")
def refresh() -> Response | tuple[str, int]:
    """A fresh token for a user whose token is still valid."""
    user = _user()
    if user is None:
        return "Log in again\n", 401
    return _with_token(Response(status=204), user)


@site.get("/rooms")
def rooms() -> str | Response:
    user = _user()
    if user is None:
        return redirect("/")
    channels = [f"{user}/{room}" for room in ROOMS] + ["public/lobby"]
    query = html.escape(urlencode([("channel", channel) for channel in channels]))
    return ROOMS_PAGE.format(user=html.escape(user), query=query, refresh_ms=TTL * 1000 // 2)


application = DispatcherMiddleware(
    site,
    {
        "/events": broker.subscriber_app(authorize=auth.can_subscribe),  # 401 without a token, 403 for another's room
        "/publish": broker.publisher_app(authorize=publish_auth.can_publish),
    },
)
