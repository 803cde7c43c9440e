"""The runnable hub: channels over HTTP, a demo page, health and statistics.

::

    GET  /                    the demo page
    GET  /events/<channel>    subscribe (an event stream)
    GET  /events?channel=a&channel=b
                              subscribe to several channels on one stream
    POST /publish/<channel>   publish (see PublisherApp for the body formats)
    GET  /healthz             200 "ok", or 503 when the broker is unreachable
    GET  /stats               JSON: connections, events, drops, refusals, uptime,
                              delivery latency, reader lag, Redis errors
    GET  /metrics             the same as a Prometheus text exposition
    GET  /dashboard           a live page of those numbers, with a chart
    GET  /dashboard/events    its event stream (``stats`` once a second)

With several gunicorn workers sharing ``PROMETHEUS_MULTIPROC_DIR`` (``serve
--workers N`` sets it up), ``/stats`` and ``/metrics`` of any worker answer
for all of them: see :mod:`wsgi_eventsource.workers`.

``wsgi-eventsource serve`` runs it under gunicorn; :class:`Hub` is also a plain
WSGI app that can be mounted anywhere.

Who may do what, without signed tokens: with a publish token, publishing,
``/stats``, ``/metrics`` and ``/dashboard`` need it (``Authorization: Bearer <token>``).
Without one, they are for this machine only, and every request but
``/healthz`` must be addressed to a loopback name or to one of
``allowed_hosts``: otherwise a page whose own name was made to resolve to
127.0.0.1 (DNS rebinding) could read every channel. ``/healthz`` tells nothing
but "ok", so load balancers may ask it by any name.

With signed tokens (``auth``, a :class:`~wsgi_eventsource.auth.TokenAuth`):
subscribing needs a token whose subscribe patterns cover every channel of
the stream, except on ``auth.public`` channels (header, cookie or query
parameter, as TokenAuth reads them). Publishing needs the publish token, or
a token whose publish patterns cover the channel, in the ``Authorization``
header only: a cookie comes with requests that any page makes, so it would
let other sites publish as the user (CSRF). ``/stats``, ``/metrics`` and ``/dashboard`` need
the publish token or a token that may publish to every channel (``"**"``).
The loopback rule and the ``Host`` check are off: when nothing private is
answered without a token, a name rebound to this machine gains nothing (a
browser sends the real site's cookie to the real site only).

The dashboard follows the rules of ``/stats``, but a browser's
``EventSource`` cannot send a header: ``/dashboard`` and its stream also
take the token from the ``eventsource_token`` cookie (:attr:`Hub.token_cookie`,
which its form and the demo page set, ``SameSite=Strict``), never from the
URL: a URL lands in access logs, browser history and ``Referer``, and this
token is the most powerful one. The cookie is no CSRF risk here: both
answers are ``GET``, change nothing, carry no CORS headers (no other site can
read them), and a ``SameSite=Strict`` cookie is not even sent with another
site's requests. Publishing still reads the header only.
"""

from __future__ import annotations

import functools
import hmac
import html
import ipaddress
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from importlib import resources
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.sansio.http import parse_cookie

from .app import EXPIRES_KEY, plain_response, unauthorized
from .auth import CLAIM
from .auth import bearer_token as _bearer
from .brokers.apps import _channel_or_error
from .brokers.base import Broker
from .dashboard import Dashboard
from .errors import Unauthorized
from .metrics import CONTENT_TYPE, Reporter, exposition
from .workers import SHARED_CHANNELS, merge, shared_directory

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from .auth import TokenAuth

__all__ = ["Hub"]

#: What the hub asks of its ``auth`` (a :class:`~wsgi_eventsource.auth.TokenAuth`).
_AUTH_METHODS = ("can_subscribe", "can_publish", "claims_of")


# Cached: every publish asks both (ipaddress parses each time: a quarter of
# a publish request's own cost, issue 12); a server sees few distinct
# addresses and Host values, and the cache is bounded.
@functools.lru_cache(maxsize=1024)
def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def _is_loopback_host(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name)


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def check_allowed_host(name: str) -> str:
    """*name*, lower-cased, if it is ``*``, a host name or ``.example.org`` (that
    name and every name below it); otherwise ``ValueError`` saying why."""
    if not isinstance(name, str):
        raise ValueError(f"allowed_hosts: each must be a str, not {type(name).__name__}")
    lowered = name.lower()
    if lowered == "*":
        return lowered
    bare = lowered.removeprefix(".")
    # A name as it appears in Host, without the port: labels, or an address.
    if not (_HOST_NAME.fullmatch(bare) or (bare[:1] == "[" and bare[-1:] == "]" and _is_address(bare[1:-1]))):
        raise ValueError(
            f"allowed_hosts: {name!r} is not a host name (such as events.example.org, .example.org or *; "
            "no scheme, port or path)"
        )
    return lowered


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _host_allowed(host: str, allowed: Sequence[str]) -> bool:
    if "*" in allowed:
        return True
    try:
        name = (urlsplit(f"//{host}").hostname or "").lower()
    except ValueError:  # "[" without "]", and such
        return False
    if not name:
        return False
    bracketed = f"[{name}]" if ":" in name else name  # how an IPv6 address is written in Host
    for pattern in allowed:
        if pattern.startswith("."):
            if name == pattern[1:] or name.endswith(pattern):
                return True
        elif pattern in (bracketed, name):
            return True
    return False


def check_origin(origin: str) -> str:
    """*origin* if it is ``*`` or a browser origin (``scheme://host[:port]``);
    otherwise ``ValueError`` saying what is wrong (browsers would reject it)."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
        or any(c.isspace() for c in origin)
    ):
        raise ValueError(
            f"cors_origin must be * or one origin such as https://example.org (no path, no trailing slash), "
            f"not {origin!r}"
        )
    return origin


class Hub:
    """The SSE hub as one WSGI app.

    :param broker: where channels live (:class:`MemoryBroker` or :class:`RedisBroker`).
    :param keepalive: seconds between keepalive comments on idle streams.
    :param publish_token: if set, publishing needs ``Authorization: Bearer
        <token>`` (compared in constant time). If not, publishing is allowed
        from loopback addresses only: never for a request that came through a
        proxy (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``), from a
        browser page of another site (``Origin``, ``Sec-Fetch-Site``), or with
        a ``Host`` that is not loopback (DNS rebinding). A refused publish
        gets ``403`` with the reason. ``/stats``, ``/metrics`` and
        ``/dashboard`` follow the same rule (they name the channels).
    :param cors_origin: if set, the origin (``https://example.org``, no path)
        allowed to subscribe and publish from a browser on another site. A
        specific origin is also allowed to send credentials
        (``withCredentials``); ``*`` never is.
    :param max_connections: streams this process serves at most; beyond it,
        a stream request is refused softly (:meth:`EventSource.refuse`: a
        ``200`` event stream with a spread ``retry:`` hint, then the end), so
        that browsers come back by themselves.
    :param shutdown_retry: the ``retry:`` hint (ms) streams get when the
        server shuts down.
    :param allowed_hosts: without a publish token, the host names (besides
        loopback names) requests may be addressed to: ``"events.example.org"``,
        ``".example.org"`` (it and every name below), or ``"*"`` for any. Any
        other ``Host`` gets ``403`` with the reason (``/healthz`` excepted).
        Behind a proxy that passes the public name on, list that name.
    :param top_channels: ``/stats`` and ``/metrics`` show per-channel numbers
        for at most this many channels (those with the most subscribers), so
        that the number of series stays bounded; ``/metrics`` adds a
        histogram of subscribers per channel over all of them.
    :param max_channels: channels one multiplexed stream
        (``GET /events?channel=a&channel=b``) may name at most.
    :param auth: signed tokens (JWT). With it, subscribing needs a token
        that covers every channel of the stream (``auth.public`` channels
        excepted); publishing needs the publish token or a token whose
        publish patterns cover the channel, in the ``Authorization`` header;
        ``/stats`` and ``/metrics`` need the publish token or a token that
        may publish to every channel (``"**"``). No token or a bad one gets
        ``401`` with ``WWW-Authenticate: Bearer``; a valid one that does not
        cover the request, ``403``. The loopback rule and the ``Host`` check
        (``allowed_hosts``) no longer apply.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        ``auth``; ``/dashboard``.
    """

    #: The cookie ``/dashboard`` and its stream also read the token from (a
    #: browser's ``EventSource`` cannot send a header); the dashboard's form
    #: and the demo page set it.
    token_cookie: str = "eventsource_token"
    #: Upper bounds of the buckets of the subscribers-per-channel histogram.
    subscriber_buckets: tuple[float, ...] = (1, 2, 5, 10, 100, 1000, 10_000)

    def __init__(
        self,
        broker: Broker,
        *,
        keepalive: float = 15.0,
        publish_token: str | None = None,
        cors_origin: str | None = None,
        max_connections: int | None = None,
        shutdown_retry: int | None = 2000,
        allowed_hosts: Iterable[str] = (),
        top_channels: int = 10,
        max_channels: int = 64,
        auth: TokenAuth | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections!r}")
        if isinstance(allowed_hosts, str):
            raise ValueError(f"allowed_hosts must be a list of host names, not the str {allowed_hosts!r}")
        if not isinstance(top_channels, int) or isinstance(top_channels, bool) or top_channels < 0:
            raise ValueError(f"top_channels must be an int, 0 or more, not {top_channels!r}")
        if publish_token is not None and not publish_token:
            raise ValueError("publish_token must not be empty")
        if cors_origin is not None:
            check_origin(cors_origin)
        if auth is not None and not all(callable(getattr(auth, name, None)) for name in _AUTH_METHODS):
            raise TypeError(f"auth must be a TokenAuth (or have {', '.join(_AUTH_METHODS)}), not {auth!r}")
        self.allowed_hosts = tuple(check_allowed_host(name) for name in allowed_hosts)
        self.top_channels = top_channels
        self.broker = broker
        self.publish_token = publish_token
        self.cors_origin = cors_origin
        self.max_connections = max_connections
        self.started = time.time()
        self._opening = 0  # stream requests past the max_connections check, not yet streams
        self.cors_headers: list[tuple[str, str]] = []
        if cors_origin:
            self.cors_headers.append(("Access-Control-Allow-Origin", cors_origin))
            if cors_origin != "*":
                # Credentials only for a named origin: browsers refuse "*" with them.
                self.cors_headers += [("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]
        self.auth = auth
        self.subscriber = broker.subscriber_app(
            authorize=None if auth is None else auth.can_subscribe,
            headers=self.cors_headers,
            keepalive=keepalive,
            shutdown_retry=shutdown_retry,
            max_channels=max_channels,
        )
        self.publisher = broker.publisher_app()  # refusals come first, in _publish, with a reason
        self._app = DispatcherMiddleware(self._root, {"/events": self._subscribe, "/publish": self._publish})
        static = resources.files(__package__).joinpath("static")
        self._page = static.joinpath("demo.html").read_bytes()
        self._dashboard_page = static.joinpath("dashboard.html").read_bytes()
        self._login_page = static.joinpath("dashboard-login.html").read_text(encoding="utf-8")
        #: What ``/dashboard`` shows, computed once a second while anyone watches.
        self.dashboard = Dashboard(
            self._dashboard_numbers,
            probe=getattr(broker, "ping", None),
            keepalive=keepalive,
            shutdown_retry=shutdown_retry,
        )
        directory = shared_directory()
        #: With a directory shared by the workers: what writes this worker's
        #: part of ``/stats`` and ``/metrics`` (started by the first request).
        self.reporter = None if directory is None else Reporter(self, directory)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.reporter is not None:
            self.reporter.start()  # here, not in __init__: after gunicorn's fork and monkey-patching
        refusal = self._host_refusal(environ)
        if refusal is not None:
            return plain_response(start_response, "403 Forbidden", f"{refusal}\n")
        return self._app(environ, start_response)

    def _host_refusal(self, environ: WSGIEnvironment) -> str | None:
        """Without a publish token: why a request addressed to this ``Host``
        is refused (DNS rebinding), or None. With signed tokens nothing
        private is answered without one, so any name may be used."""
        if self.publish_token is not None or self.auth is not None or environ.get("PATH_INFO") == "/healthz":
            return None
        host = environ.get("HTTP_HOST", "")
        if _is_loopback_host(host) or _host_allowed(host, self.allowed_hosts):
            return None
        return (
            "This hub has no publish token, so it answers only requests addressed to a loopback name "
            f"(localhost, 127.0.0.1, [::1]) or to a host it is told to allow: this request was addressed "
            f"to {host!r}, not to a loopback name. Name the hosts it is served as with --allowed-host "
            "(Hub(allowed_hosts=...)), or set a publish token (--publish-token)"
        )

    # -- routes ------------------------------------------------------------------------

    def _subscribe(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        source = self.subscriber.source
        if self.auth is not None and self.cors_headers:
            if environ.get("REQUEST_METHOD") == "OPTIONS":
                return self._subscribe_preflight(start_response)
            # A page on the CORS origin can then read why it was refused
            # (401, 403, 400) instead of a bare network error.
            start_response = self._with_cors(start_response)
        if self.max_connections is None or environ.get("REQUEST_METHOD") != "GET":
            return self.subscriber(environ, start_response)
        # Subscribes still waiting on the broker (a Redis stall, a pool wait,
        # a reconnect storm) count too: each becomes a stream, and left
        # uncounted a storm would pass the check all at once.
        if source.connection_count + self._opening + self.dashboard.viewers >= self.max_connections:
            # Soft: a 503 would make a browser give up for good. The stream
            # headers (and so the CORS headers) are the subscriber app's.
            why = f"this server holds its maximum of {self.max_connections} streams; reconnect later"
            return source.refuse(start_response, "over_max_connections", why)
        self._opening += 1
        try:
            return self.subscriber(environ, start_response)
        finally:
            self._opening -= 1

    def _with_cors(self, start_response: StartResponse) -> StartResponse:
        """*start_response*, adding the CORS headers to answers without them."""

        def with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not any(name.lower() == "access-control-allow-origin" for name, _ in headers):
                headers = headers + self.cors_headers
            return start_response(status, headers, exc_info)

        return with_cors

    def _subscribe_preflight(self, start_response: StartResponse) -> list[bytes]:
        # A fetch-based EventSource (a polyfill, a native app) may send the
        # token as Authorization: Bearer, which takes a preflight.
        start_response(
            "204 No Content",
            [
                ("Allow", "GET, OPTIONS"),
                *self.cors_headers,
                ("Access-Control-Allow-Methods", "GET"),
                ("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control"),
                ("Access-Control-Max-Age", "86400"),
            ],
        )
        return []

    def _publish(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST" and self.auth is not None:
            # The channel first: the token is checked against the name served.
            channel = _channel_or_error(environ, self._with_cors(start_response))
            if not isinstance(channel, str):
                return channel
            answer = self._token_refusal(self.auth, environ, start_response, channel)
            if answer is not None:
                return answer
        elif environ.get("REQUEST_METHOD") == "POST":
            refusal = self._refusal(environ)
            if refusal is not None:
                return plain_response(start_response, "403 Forbidden", f"{refusal}\n", self.cors_headers)
        if not self.cors_headers:
            return self.publisher(environ, start_response)
        if environ.get("REQUEST_METHOD") == "OPTIONS":
            # Refused exactly when the POST it asks for would be: a preflight
            # that allows a POST the hub then refuses misleads the page.
            refusal = self._preflight_refusal(environ)
            if refusal is not None:
                return plain_response(start_response, "403 Forbidden", f"{refusal}\n")
            start_response(
                "204 No Content",
                [
                    *self.cors_headers,
                    ("Access-Control-Allow-Methods", "POST"),
                    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                    ("Access-Control-Max-Age", "86400"),
                ],
            )
            return []

        def with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, headers + self.cors_headers, exc_info)

        return self.publisher(environ, with_cors)

    def _refusal(self, environ: WSGIEnvironment, what: str = "", *, cookie: bool = False) -> str | None:
        """Why this publish (or, with *what*, a request for that page) is
        refused, or None if it may go ahead. With *cookie*, the token may
        also come in the :attr:`token_cookie` cookie."""
        if self.publish_token is not None:
            token = self._credential(environ, cookie)
            if token is None:
                if cookie:
                    return (
                        f"{what[:1].upper()}{what[1:]} needs the publish token: the header "
                        f"Authorization: Bearer <publish token>, or the {self.token_cookie} cookie "
                        "(the form of this page sets it)"
                    )
                return f"{what or 'Publishing'} needs the header Authorization: Bearer <publish token>"
            # Constant time, so the token cannot be guessed byte by byte.
            if not hmac.compare_digest(token.encode("latin-1", "replace"), self.publish_token.encode()):
                return "The publish token is wrong"
            return None
        why = self._not_from_this_machine(environ, self.cors_origin)
        if why is None:
            return None
        if what:
            return (
                f"This hub has no publish token, so it shows {what} only to this machine: {why}. "
                f"Set a publish token (--publish-token) and send it to read {what} from elsewhere"
            )
        return (
            f"This hub has no publish token, so it takes publishes only from this machine: {why}. "
            "Set a publish token (--publish-token) to publish from elsewhere"
        )

    def _cookie_token(self, environ: WSGIEnvironment) -> str | None:
        """The token of the :attr:`token_cookie` cookie, or ``None``."""
        cookies: str = environ.get("HTTP_COOKIE", "")
        if not cookies:
            return None
        # Leniently, as TokenAuth.token_of does: one stray byte in any cookie
        # of the site must not make a 500.
        value = parse_cookie(cookies.encode("latin-1", "replace").decode("utf-8", "replace")).get(self.token_cookie)
        # The pages write it with encodeURIComponent (a JWT is left as it is).
        return unquote(value) if value else None

    def _credential(self, environ: WSGIEnvironment, cookie: bool) -> str | None:
        """The token of the ``Authorization`` header, else (with *cookie*) of
        the :attr:`token_cookie` cookie; never of the URL."""
        token = _bearer(environ)
        if token is None and cookie:
            token = self._cookie_token(environ)
        return token

    def _publish_token_given(self, environ: WSGIEnvironment, cookie: bool = False) -> bool:
        """Whether the request carries the (static) publish token."""
        if self.publish_token is None:
            return False
        token = self._credential(environ, cookie)
        # Constant time, so the token cannot be guessed byte by byte.
        return token is not None and hmac.compare_digest(
            token.encode("latin-1", "replace"), self.publish_token.encode()
        )

    def _token_refusal(
        self,
        auth: TokenAuth,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        channel: str | None,
        *,
        cookie: bool = False,
    ) -> list[bytes] | None:
        """With signed tokens (*auth*): ``None`` if the request may publish to
        *channel* (``None``: read ``/stats``, ``/metrics`` or ``/dashboard``),
        else the ``401`` or ``403`` to answer (with the CORS headers). With
        *cookie* (the dashboard), the token may also come in the
        :attr:`token_cookie` cookie, and a stream ends when it expires."""
        if self._publish_token_given(environ, cookie):
            return None
        what = f"Publishing to {channel!r}" if channel is not None else f"Reading {environ.get('PATH_INFO')}"
        token = self._credential(environ, cookie)
        if token is None:
            where = f", or the {self.token_cookie} cookie (the form of this page sets it)" if cookie else ""
            missing = Unauthorized(f"{what} needs the header Authorization: Bearer <token>{where}", error=None)
            return unauthorized(start_response, missing, self.cors_headers)
        # The header only (or the dashboard's cookie, read above): a cookie
        # comes with requests any page makes (CSRF); a URL lands in logs.
        header_only = {k: v for k, v in environ.items() if k not in ("HTTP_COOKIE", "QUERY_STRING")}
        header_only["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        try:
            if channel is None:
                section = auth.claims_of(header_only).get(CLAIM, {})
                allowed = "**" in section.get("publish", [])
            else:
                allowed = auth.can_publish(header_only, channel)
        except Unauthorized as exc:
            if self.publish_token is not None:
                exc = Unauthorized(f"{exc.description}, and it is not the publish token", exc.error)
            return unauthorized(start_response, exc, self.cors_headers)
        if allowed:
            if cookie and EXPIRES_KEY in header_only:
                environ[EXPIRES_KEY] = header_only[EXPIRES_KEY]  # the stream ends with the token
            return None
        if channel is None:
            why = f"{what} needs a token that may publish to every channel ('**')"
        else:
            why = f"This token may not publish to {channel!r}: none of its publish patterns covers it"
        return plain_response(start_response, "403 Forbidden", f"{why}\n", self.cors_headers)

    def _preflight_refusal(self, environ: WSGIEnvironment) -> str | None:
        """Why the POST this CORS preflight asks for would be refused, or None."""
        if self.publish_token is not None or self.auth is not None:
            # A preflight never carries credentials: only whether the POST
            # will send the Authorization header can be known.
            requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
            if "authorization" not in (name.strip().lower() for name in requested.split(",")):
                kind = "publish token" if self.auth is None else "token"
                return (
                    f"Publishing needs the header Authorization: Bearer <{kind}>, "
                    "and this preflight does not ask to send it"
                )
            return None
        return self._refusal(environ)

    @staticmethod
    def _not_from_this_machine(environ: WSGIEnvironment, cors_origin: str | None) -> str | None:
        # Behind nginx every request comes from loopback, but the client is elsewhere.
        if any(k in environ for k in ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")):
            return "this request came through a proxy"
        if not _is_loopback(environ.get("REMOTE_ADDR")):
            return f"this request came from {environ.get('REMOTE_ADDR')}"
        # A page on any site can POST to localhost from the developer's browser;
        # only this hub's own pages and the one CORS origin it names may.
        origin = environ.get("HTTP_ORIGIN")
        own = f"{environ.get('wsgi.url_scheme', 'http')}://{environ.get('HTTP_HOST', '')}"
        if origin is not None and origin not in (own, cors_origin):
            return f"this request came from a page of another site ({origin})"
        if origin is None and environ.get("HTTP_SEC_FETCH_SITE") == "cross-site":
            return "this request came from a page of another site"
        # A page whose own name was made to resolve to 127.0.0.1 (DNS rebinding).
        host = environ.get("HTTP_HOST", "")
        if not _is_loopback_host(host):
            return f"this request was addressed to {host!r}, not to a loopback name"
        return None

    def _root(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if method not in ("GET", "HEAD"):
            return plain_response(start_response, "405 Method Not Allowed", "Use GET\n", [("Allow", "GET, HEAD")])
        if path == "/":
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(self._page))),
                    ("Cache-Control", "no-cache"),
                ],
            )
            return [self._page] if method == "GET" else []
        if path == "/healthz":
            ping = getattr(self.broker, "ping", None)
            if ping is not None and not ping():
                return plain_response(start_response, "503 Service Unavailable", "broker unreachable\n")
            return plain_response(start_response, "200 OK", "ok\n")
        if path in ("/dashboard", "/dashboard/events"):
            return self._dashboard_route(environ, start_response, path)
        if path in ("/stats", "/metrics") and self.auth is not None:
            # They name channels: only for whoever may publish to them all.
            answer = self._token_refusal(self.auth, environ, start_response, None)
            if answer is not None:
                return answer
        elif path in ("/stats", "/metrics"):
            # They name channels: only for whoever may publish.
            refusal = self._refusal(environ, path)
            if refusal is not None:
                return plain_response(start_response, "403 Forbidden", f"{refusal}\n")
        if path == "/stats":
            body = json.dumps(self.stats(), indent=2).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            return self._metrics(start_response)
        return plain_response(start_response, "404 Not Found", "Not found\n")

    # -- the dashboard ---------------------------------------------------------------------

    def _dashboard_route(self, environ: WSGIEnvironment, start_response: StartResponse, path: str) -> Iterable[bytes]:
        page = path == "/dashboard"
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured[:] = [status, headers]
            return lambda data: None

        # A refusal of the stream stays a 401 or 403: it is for good (a token
        # will not appear by itself), so the browser may as well give up.
        answer = self._watch_refusal(environ, capture if page else start_response)
        if answer is not None:
            if not page:
                return answer
            return self._login(start_response, captured[0], captured[1], b"".join(answer).decode())
        if page:
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(self._dashboard_page))),
                    ("Cache-Control", "no-cache"),
                ],
            )
            return [self._dashboard_page] if environ.get("REQUEST_METHOD") == "GET" else []
        if environ.get("REQUEST_METHOD") != "GET":
            return plain_response(start_response, "405 Method Not Allowed", "Use GET\n", [("Allow", "GET")])
        viewers = self.dashboard
        if (
            self.max_connections is not None
            and self.subscriber.source.connection_count + self._opening + viewers.viewers >= self.max_connections
        ):
            # Soft, as for any stream: the viewer comes back when there is room.
            why = f"this server holds its maximum of {self.max_connections} streams; reconnect later"
            return viewers.source.refuse(start_response, "over_max_connections", why)
        return viewers.open(environ, start_response)

    def _watch_refusal(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes] | None:
        """``None`` if the request may see the dashboard, else the answer
        ``/stats`` would get (``401`` or ``403``), the cookie counting as a header."""
        if self.auth is not None:
            return self._token_refusal(self.auth, environ, start_response, None, cookie=True)
        refusal = self._refusal(environ, "the dashboard", cookie=True)
        if refusal is not None:
            return plain_response(start_response, "403 Forbidden", f"{refusal}\n")
        return None

    def _login(
        self, start_response: StartResponse, status: str, headers: list[tuple[str, str]], why: str
    ) -> list[bytes]:
        """The refusal of ``/dashboard`` as a page: its status and why, and a
        form for the token when one would help."""
        token_helps = self.publish_token is not None or self.auth is not None
        body = (
            self._login_page.replace("@STATUS@", html.escape(status))
            .replace("@COOKIE@", self.token_cookie)
            .replace("@FORM@", "" if token_helps else "hidden")
            # Last: the reason may quote the request, placeholders included.
            .replace("@WHY@", html.escape(why.strip()))
            .encode("utf-8", "backslashreplace")
        )
        kept = [(name, value) for name, value in headers if name.lower() not in ("content-type", "content-length")]
        start_response(
            status,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *kept,
            ],
        )
        return [body]

    def _dashboard_numbers(self) -> dict[str, Any]:
        """What a dashboard ``stats`` event shows: :meth:`stats` and the kind
        of broker (the dashboard adds whether it answers)."""
        numbers = self.stats()
        numbers["broker"] = {"kind": type(self.broker).__name__}
        return numbers

    # -- statistics ------------------------------------------------------------------------

    def stats(self, counts: dict[str, int] | None = None) -> dict[str, Any]:
        """The hub's numbers: this process's, or with a directory shared by the
        gunicorn workers (``PROMETHEUS_MULTIPROC_DIR``, see
        :mod:`wsgi_eventsource.workers`) the totals of every worker.

        ``connections.per_channel`` lists the :attr:`top_channels` channels
        with the most subscribers; ``connections.channels`` counts them all.
        ``refused`` counts the soft refusals of streams, per reason. Besides:
        ``workers``, ``worker_pids`` and ``per_worker``, ``redis_errors`` by
        kind, ``reader_lag_seconds`` and ``delivery_latency_seconds`` (see
        :func:`~wsgi_eventsource.workers.merge`).

        :param counts: this process's subscribers per channel, if already at hand.

        .. versionchanged:: 0.1
            The totals of every worker; the keys after ``refused``.
        """
        if self.reporter is not None:
            return self.reporter.merged()[0]
        return merge([self.report(counts)], top=self.top_channels, pid=os.getpid())[0]

    def report(self, counts: dict[str, int] | None = None, *, shared: bool = False) -> dict[str, Any]:
        """This process's numbers as :func:`~wsgi_eventsource.workers.merge`
        takes them (JSON), written for the other workers with *shared* (then
        with the :data:`~wsgi_eventsource.workers.SHARED_CHANNELS` busiest
        channels only).

        .. versionadded:: 0.1
        """
        if counts is None:
            counts = self.broker.channel_counts()
        source = self.subscriber.source
        stats = self.broker.stats
        latency = stats.latency.snapshot()
        lag = self.broker.reader_lag()
        if shared and len(counts) > SHARED_CHANNELS:
            # By count alone (ties in any order): 9 ms for 50,000 channels, a
            # third of what the name tie-break of the top-N lists costs.
            busiest = sorted(counts.items(), key=itemgetter(1), reverse=True)
            counts_shared = dict(busiest[:SHARED_CHANNELS])
        else:
            counts_shared = counts
        return {
            "pid": os.getpid(),
            "written": time.time(),
            "started": self.started,
            "connections": source.connection_count,
            "channels": len(counts),
            "channel_counts": counts_shared,
            "published": stats.published,
            "delivered": stats.delivered,
            "slow_clients_dropped": source.dropped + self.dashboard.source.dropped,
            "refused": {
                reason: count + self.dashboard.source.refused[reason] for reason, count in source.refused.items()
            },
            "redis_errors": dict(stats.errors),
            "reader_lag_seconds": None if lag is None else round(lag, 3),
            "latency": {"bounds": latency.bounds, "counts": latency.counts, "sum": latency.sum},
        }

    def _metrics(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            body = exposition(self)
        except ImportError:
            return plain_response(
                start_response,
                "501 Not Implemented",
                "/metrics needs prometheus-client: pip install 'wsgi-eventsource[metrics]'\n",
            )
        start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
        return [body]
