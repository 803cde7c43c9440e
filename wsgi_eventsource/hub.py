"""The runnable hub: channels over HTTP, a demo page, health and statistics.

::

    GET  /                    the demo page
    GET  /events/<channel>    subscribe (an event stream)
    POST /publish/<channel>   publish (see PublisherApp for the body formats)
    GET  /healthz             200 "ok", or 503 when the broker is unreachable
    GET  /stats               JSON: connections, events, drops, uptime
    GET  /metrics             the same as a Prometheus text exposition

``wsgi-eventsource serve`` runs it under gunicorn; :class:`Hub` is also a plain
WSGI app that can be mounted anywhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import time
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from werkzeug.middleware.dispatcher import DispatcherMiddleware

from .app import plain_response
from .brokers.base import Broker

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["Hub"]


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _is_loopback_host(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    return name == "localhost" or name.endswith(".localhost") or _is_loopback(name)


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
        gets ``403`` with the reason.
    :param cors_origin: if set, the origin (``https://example.org``, no path)
        allowed to subscribe and publish from a browser on another site. A
        specific origin is also allowed to send credentials
        (``withCredentials``); ``*`` never is.
    :param max_connections: streams this process serves at most; beyond it,
        ``503`` with ``Retry-After``.
    :param shutdown_retry: the ``retry:`` hint (ms) streams get when the
        server shuts down.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        keepalive: float = 15.0,
        publish_token: str | None = None,
        cors_origin: str | None = None,
        max_connections: int | None = None,
        shutdown_retry: int | None = 2000,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections!r}")
        if publish_token is not None and not publish_token:
            raise ValueError("publish_token must not be empty")
        if cors_origin is not None:
            check_origin(cors_origin)
        self.broker = broker
        self.publish_token = publish_token
        self.cors_origin = cors_origin
        self.max_connections = max_connections
        self.started = time.time()
        self.refused = 0
        self.cors_headers: list[tuple[str, str]] = []
        if cors_origin:
            self.cors_headers.append(("Access-Control-Allow-Origin", cors_origin))
            if cors_origin != "*":
                # Credentials only for a named origin: browsers refuse "*" with them.
                self.cors_headers += [("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]
        self.subscriber = broker.subscriber_app(
            headers=self.cors_headers, keepalive=keepalive, shutdown_retry=shutdown_retry
        )
        self.publisher = broker.publisher_app()  # refusals come first, in _publish, with a reason
        self._app = DispatcherMiddleware(self._root, {"/events": self._subscribe, "/publish": self._publish})
        self._page = resources.files(__package__).joinpath("static/demo.html").read_bytes()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self._app(environ, start_response)

    # -- routes ------------------------------------------------------------------------

    def _subscribe(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if (
            self.max_connections is not None
            and environ.get("REQUEST_METHOD") == "GET"
            and self.subscriber.source.connection_count >= self.max_connections
        ):
            self.refused += 1
            return plain_response(
                start_response,
                "503 Service Unavailable",
                f"This server holds its maximum of {self.max_connections} streams; try again later\n",
                [("Retry-After", "5"), *self.cors_headers],
            )
        return self.subscriber(environ, start_response)

    def _publish(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "POST":
            refusal = self._refusal(environ)
            if refusal is not None:
                return plain_response(start_response, "403 Forbidden", f"{refusal}\n", self.cors_headers)
        if not self.cors_headers:
            return self.publisher(environ, start_response)
        if environ.get("REQUEST_METHOD") == "OPTIONS":
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

    def _refusal(self, environ: WSGIEnvironment) -> str | None:
        """Why this publish is refused, or None if it may go ahead."""
        if self.publish_token is not None:
            given = environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return "Publishing needs the header Authorization: Bearer <publish token>"
            # Constant time, so the token cannot be guessed byte by byte.
            if not hmac.compare_digest(token.strip().encode("latin-1"), self.publish_token.encode()):
                return "The publish token is wrong"
            return None
        why = self._not_from_this_machine(environ, self.cors_origin)
        if why is None:
            return None
        return (
            f"This hub has no publish token, so it takes publishes only from this machine: {why}. "
            "Set a publish token (--publish-token) to publish from elsewhere"
        )

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
        if path == "/stats":
            body = json.dumps(self.stats(), indent=2).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path == "/metrics":
            return self._metrics(start_response)
        return plain_response(start_response, "404 Not Found", "Not found\n")

    # -- statistics ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """This process's numbers (each gunicorn worker answers for itself)."""
        return {
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 3),
            "connections": {
                "total": self.subscriber.source.connection_count,
                "per_channel": self.broker.channel_counts(),
            },
            "events": {"published": self.broker.stats.published, "delivered": self.broker.stats.delivered},
            "slow_clients_dropped": self.subscriber.source.dropped,
            "refused_over_max_connections": self.refused,
        }

    def _metrics(self, start_response: StartResponse) -> Iterable[bytes]:
        try:
            from prometheus_client import CollectorRegistry, generate_latest
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        except ImportError:
            return plain_response(
                start_response,
                "501 Not Implemented",
                "/metrics needs prometheus-client: pip install 'wsgi-eventsource[metrics]'\n",
            )
        hub = self

        class Collector:
            def collect(self) -> Iterable[Any]:
                numbers = hub.stats()
                connections = GaugeMetricFamily(
                    "eventsource_connections", "Open event streams in this process, per channel", labels=["channel"]
                )
                for channel, count in numbers["connections"]["per_channel"].items():
                    connections.add_metric([channel], count)
                yield connections
                # Not "_total": that suffix is for counters.
                yield GaugeMetricFamily(
                    "eventsource_connections_open",
                    "Open event streams in this process",
                    numbers["connections"]["total"],
                )
                yield CounterMetricFamily(
                    "eventsource_events_published", "Events published from this process", numbers["events"]["published"]
                )
                yield CounterMetricFamily(
                    "eventsource_events_delivered", "Events handed to local subscribers", numbers["events"]["delivered"]
                )
                yield CounterMetricFamily(
                    "eventsource_slow_clients_dropped", "Streams cut for not reading", numbers["slow_clients_dropped"]
                )
                yield CounterMetricFamily(
                    "eventsource_refused_over_max_connections",
                    "Subscribers answered 503 because the process held max_connections streams",
                    numbers["refused_over_max_connections"],
                )
                yield GaugeMetricFamily("eventsource_uptime_seconds", "Seconds since start", numbers["uptime_seconds"])

        registry = CollectorRegistry()
        registry.register(Collector())
        body = generate_latest(registry)
        start_response(
            "200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]
