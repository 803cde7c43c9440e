"""The channel WSGI apps: subscribe with ``GET /<channel>`` (or to many
channels on one stream with ``GET /?channel=a&channel=b``), publish with
``POST /<channel>``. The channel is ``PATH_INFO`` below the mount point, so

::

    DispatcherMiddleware(site, {
        "/eventsource": broker.subscriber_app(),
        "/publish": broker.publisher_app(authorize=is_admin),
    })

serves ``/eventsource/<channel>``, ``/eventsource/?channel=<channel>&...``
and ``/publish/<channel>``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_to_bytes

from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from ..app import EventSource, HeadersLike, check_authorized, plain_response
from ..connection import Connection, last_event_id
from ..encoding import Data
from ..errors import BrokerUnavailable, InvalidChannel, InvalidEvent, NotReplicated
from ..publisher import LoopTurns
from .base import Broker, Subscription, validate_channel
from .multiplex import Multiplex

if TYPE_CHECKING:
    from collections.abc import Iterable

    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["PublisherApp", "SubscriberApp"]

logger = logging.getLogger("wsgi_eventsource")

Authorize = Callable[["WSGIEnvironment", str], bool]

#: Seconds a client is told to wait (``Retry-After``) when the broker is down.
RETRY_AFTER = "2"


_last_logged = [0.0]  # when _log_unavailable last logged (monotonic seconds)


def _log_unavailable(exc: BrokerUnavailable) -> None:
    # The details (where the broker is) go to the log, not to the client; at
    # most every 10 s, since every client retries during an outage.
    now = time.monotonic()
    if now - _last_logged[0] >= 10:
        _last_logged[0] = now
        logger.warning("broker unavailable (not logged again for 10 s): %s", exc)


def _warn_if_multiprocess(broker: Broker, environ: WSGIEnvironment) -> None:
    # Only a server that says it runs several processes: a fork alone (say
    # gunicorn --preload with one worker) is not a reason to warn.
    if environ.get("wsgi.multiprocess"):
        warn = getattr(broker, "warn_multiprocess", None)
        if warn is not None:
            warn()


def _unavailable(start_response: StartResponse, exc: BrokerUnavailable) -> list[bytes]:
    """503 with ``Retry-After``: for publishes, whose clients are not EventSources."""
    _log_unavailable(exc)
    return plain_response(
        start_response,
        "503 Service Unavailable",
        "The event broker cannot be reached; try again shortly\n",
        [("Retry-After", RETRY_AFTER)],
    )


def _not_replicated(start_response: StartResponse, channel: str, exc: NotReplicated) -> list[bytes]:
    """503 for a publish that IS stored but not yet on enough replicas:
    the body says so and gives the id (as a 201 would). No ``Retry-After``:
    publishing again would make a second event."""
    _log_unavailable(exc)
    error = (
        f"The event was stored with id {exc.event_id}, but {exc.replicas} of {exc.wanted} replicas confirmed it "
        "in time: a Redis failover now could lose it. Publishing it again makes a second event."
    )
    payload = json.dumps(
        {"id": exc.event_id, "channel": channel, "replicas": exc.replicas, "wanted": exc.wanted, "error": error}
    ).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response("503 Service Unavailable", headers)
    return [payload]


def _channels_or_error(
    environ: WSGIEnvironment, start_response: StartResponse, max_channels: int
) -> tuple[str, ...] | list[bytes]:
    """The channels named by ``?channel=`` (each once, in order), or the
    error response to return."""
    try:
        names = _query_of(environ).get("channel", [])
    except ValueError as exc:
        return plain_response(start_response, "400 Bad Request", f"{exc}\n")
    if not names:
        return plain_response(
            start_response,
            "400 Bad Request",
            "No channel: use /<channel>, or ?channel=<channel> (repeated for several) for one stream of many\n",
        )
    channels = tuple(dict.fromkeys(names))
    if len(channels) > max_channels:
        return plain_response(
            start_response,
            "400 Bad Request",
            f"{len(channels)} channels are listed; one stream takes at most {max_channels} (max_channels)\n",
        )
    for name in channels:
        try:
            validate_channel(name)
        except InvalidChannel as exc:
            hint = " (a '+' in a query string is a space: write %2B)" if " " in name else ""
            return plain_response(start_response, "400 Bad Request", f"{exc}{hint}\n")
    return channels


def _names_channels_in_query(environ: WSGIEnvironment) -> bool:
    query: str = environ.get("QUERY_STRING", "")
    return "channel" in query and any(name == "channel" for name, _ in parse_qsl(query, keep_blank_values=True))


def _channel_or_error(environ: WSGIEnvironment, start_response: StartResponse) -> str | list[bytes]:
    """The channel named by ``PATH_INFO``, or the error response to return."""
    path: str = environ.get("PATH_INFO", "")
    name = path[1:] if path.startswith("/") else path
    try:
        # WSGI hands the path over as bytes decoded as latin-1.
        name = name.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return plain_response(start_response, "400 Bad Request", "The channel name is not valid UTF-8\n")
    try:
        return validate_channel(name)
    except InvalidChannel as exc:
        if not name:
            return plain_response(start_response, "404 Not Found", "No channel: use /<channel>\n")
        return plain_response(start_response, "400 Bad Request", f"{exc}\n")


class SubscriberApp:
    """``GET /<channel>``: the channel's events as an event stream.
    ``GET /?channel=a&channel=b`` (path empty or ``/`` below the mount): the
    events of every channel listed, on one stream, each with its ``data`` and
    ``event`` type as published and a cursor for the whole subscription as
    its ``id``; see :mod:`wsgi_eventsource.brokers.multiplex`.

    A client that sends ``Last-Event-ID`` (or ``?lastEventId=``) first gets what
    it missed, then live events; see :mod:`wsgi_eventsource.brokers.base`.

    A multiplexed request names 1 to *max_channels* channels (one listed
    twice counts once); none, a bad name or too many answers ``400`` with
    what is wrong, and so does a path channel together with ``?channel=``.
    ``authorize`` is asked for every channel: one ``False`` answers ``403``.

    When the broker cannot be reached, or the server is shutting down, the
    request is refused *softly* (:meth:`EventSource.refuse`): a ``200`` event
    stream with a spread ``retry:`` hint and a comment, then the end, so that
    the browser reconnects by itself (a ``503`` would make it give up).

    :param broker: the broker to subscribe to.
    :param authorize: ``authorize(environ, channel) -> bool``; ``False``
        answers ``403``. Without it every channel is open to everyone.
    :param headers: extra response headers, as for :class:`EventSource`.
    :param max_channels: the most channels one multiplexed stream may name.
    :param options: other :class:`EventSource` options (``keepalive``,
        ``retry``, ``max_pending``, ``shutdown_retry``, ...).

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        Multiplexed streams and ``max_channels``.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        authorize: Authorize | None = None,
        headers: HeadersLike | None = None,
        max_channels: int = 64,
        **options: Any,
    ) -> None:
        if "authorize" in options:
            raise TypeError("pass authorize(environ, channel) as subscriber_app(authorize=...)")
        if authorize is not None and not callable(authorize):
            raise TypeError("authorize must be callable or None")
        if not isinstance(max_channels, int) or isinstance(max_channels, bool) or max_channels < 1:
            raise ValueError(f"max_channels must be a positive int, not {max_channels!r}")
        self.broker = broker
        self.authorize = authorize
        self.max_channels = max_channels
        self.source = EventSource(_no_handler, headers=headers, **options)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return self.source(environ, start_response)  # 405, or a CORS preflight
        channels: tuple[str, ...] | str | list[bytes]
        if environ.get("PATH_INFO", "") in ("", "/"):
            channels = _channels_or_error(environ, start_response, self.max_channels)
        elif _names_channels_in_query(environ):
            return plain_response(
                start_response,
                "400 Bad Request",
                "Name the channel in the path (/<channel>) or with ?channel= (without a path), not both\n",
            )
        else:
            channels = _channel_or_error(environ, start_response)
        if isinstance(channels, list):
            return channels
        if self.authorize is not None:
            for channel in (channels,) if isinstance(channels, str) else channels:
                refusal = check_authorized(self.authorize, environ, start_response, channel)
                if refusal is not None:
                    return refusal
        _warn_if_multiprocess(self.broker, environ)
        if self.source.shutting_down:
            # Before subscribing: nothing to undo. open_stream ends the stream
            # at once with the (spread) shutdown retry hint and counts it.
            return self.source.open_stream(environ, start_response, None)
        subscription: Subscription | Multiplex
        try:
            # An empty id (a polyfill's "?lastEventId=") means "none yet".
            cursor = last_event_id(environ) or None
            if isinstance(channels, str):
                subscription, preamble = self.broker.subscribe(channels, cursor)
            else:
                subscription, preamble = self.broker.subscribe_many(channels, cursor)
        except BrokerUnavailable as exc:
            # A soft refusal: a browser gives up for good on a 503, but
            # reconnects by itself when a 200 event stream ends.
            _log_unavailable(exc)
            return self.source.refuse(
                start_response, "broker_unavailable", "the event broker is unavailable; reconnect shortly"
            )
        stream = None
        try:
            stream = self.source.open_stream(environ, start_response, None, preamble=preamble)
            conn = stream.connection
            if isinstance(subscription, Multiplex):
                subscription.attach(conn)  # unsubscribes when conn closes
            else:
                subscription.attach(conn)
                conn.on_close(_Unsubscribe(self.broker, subscription))
        except BaseException:
            # start_response (or anything before the stream is handed over)
            # raised: the server will never close this stream, so undo here.
            if isinstance(subscription, Multiplex):
                subscription.close()  # idempotent
            else:
                self.broker.unsubscribe(subscription)  # idempotent
            if stream is not None:
                stream.close()
            raise
        return stream

    def close_all(self, retry: int | None = None) -> int:
        """Close every stream this app serves (see :meth:`EventSource.close_all`)."""
        return self.source.close_all(retry)

    @property
    def connections(self) -> frozenset[Connection]:
        """The streams open right now."""
        return self.source.connections


def _no_handler(conn: Connection, environ: WSGIEnvironment) -> None:
    """Subscriber streams are fed by the broker; there is nothing to run."""


class PublisherApp:
    """``POST /<channel>``: publish one event; answers ``201`` with JSON
    ``{"id": ..., "channel": ...}``.

    The body is read by its ``Content-Type``:

    ``text/plain`` (or none)
        The body is the data (UTF-8). ``?event=`` and ``?retry=`` in the query
        string set those fields.
    ``application/x-www-form-urlencoded`` with an ``=`` in the body
        Fields ``data`` (repeat it for several lines), ``event``, ``retry``
        (``curl -d data=hello``, ``curl --data-urlencode 'data=hello world'``,
        an HTML form, ``requests.post(url, data={"data": ...})``).
    ``application/x-www-form-urlencoded`` with no ``=`` in the body
        Text, as for ``text/plain`` (``?event=`` and ``?retry=`` apply): what
        ``curl -d 'hello'`` sends, since curl labels every ``-d`` body a form.
        The body is the data *as it is*, not percent-decoded, because
        ``curl -d`` sends the bytes as typed: ``curl -d '100% sure'``,
        ``-d 'C++'``, ``-d '+1'`` publish exactly that. One exception: a body
        made only of letters, digits, ``- . _ ~ +`` and ``%XX`` escapes, with
        at least one escape, is form-decoded (``+`` is a space, the escapes
        must be UTF-8), since that is what ``curl --data-urlencode 'hello,
        world'`` sends (``hello%2C+world``) and what nobody types by hand.
        Without an escape it stays as it is: so ``curl --data-urlencode
        'hello world'`` (``hello+world``, which cannot be told from a typed
        ``a+b``) publishes ``hello+world``; name the field,
        ``--data-urlencode 'data=hello world'``. An empty body publishes
        empty data.
    ``application/json``
        ``{"data": "..." or ["line", ...], "event": "...", "retry": 3000}``.

    Answers ``400`` for bad UTF-8, JSON or fields (the message says which),
    ``403`` when ``authorize`` refuses, ``404``/``400`` for a missing or bad
    channel, ``405`` for a method other than ``POST``, ``413`` for a body over
    *max_body* bytes, ``415`` for another content type, and ``503`` (with
    ``Retry-After``) when the broker cannot be reached. A publish that was
    stored but not confirmed by ``wait_replicas`` replicas in time
    (:class:`NotReplicated`) is a ``503`` without ``Retry-After`` and with
    JSON ``{"id", "channel", "replicas", "wanted", "error"}``: it is
    published, and publishing it again would make a second event.

    :param authorize: ``authorize(environ, channel) -> bool``. Without it,
        anyone who can reach this app can publish to any channel.
    :param max_body: the largest body accepted, in bytes.

    .. versionadded:: 0.1
    .. versionchanged:: 0.1
        A form body with no ``=`` is text (``curl -d 'hello'``).
    """

    #: Publishes one request greenlet makes in a row, while the loop has had
    #: no turn (pipelined requests on a keep-alive connection), before it
    #: yields so that the subscribers' writes run: see :class:`LoopTurns`.
    #: Read when the app is made. 32: an event then waits for at most 32
    #: publish requests before its writes start (one write per subscriber
    #: for all the events queued since its last). The hub's CPU time per
    #: publish to 100 subscribers (issue 12's benchmark): 16: ~235 us,
    #: 32: ~197 us, 64: ~190 us, 128: ~188 us; more buys little but latency.
    #:
    #: .. versionadded:: 0.1
    publishes_per_turn: int = 32

    def __init__(self, broker: Broker, *, authorize: Authorize | None = None, max_body: int = 1024 * 1024) -> None:
        if authorize is not None and not callable(authorize):
            raise TypeError("authorize must be callable or None")
        if not isinstance(max_body, int) or max_body <= 0:
            raise ValueError(f"max_body must be a positive int (bytes), not {max_body!r}")
        self.broker = broker
        self.authorize = authorize
        self.max_body = max_body
        #: Shares the loop between this app's publish requests and the writes
        #: of the events they publish (see :mod:`wsgi_eventsource.publisher`).
        self.turns = LoopTurns(self.publishes_per_turn)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            return plain_response(start_response, "405 Method Not Allowed", "Use POST\n", [("Allow", "POST")])
        channel = _channel_or_error(environ, start_response)
        if not isinstance(channel, str):
            return channel
        if self.authorize is not None:
            refusal = check_authorized(self.authorize, environ, start_response, channel)
            if refusal is not None:
                return refusal
        _warn_if_multiprocess(self.broker, environ)
        body = self._read_body(environ)
        if body is None:
            return plain_response(
                start_response, "413 Content Too Large", f"The body is larger than {self.max_body} bytes\n"
            )
        mimetype, params = parse_options_header(environ.get("CONTENT_TYPE", ""))
        charset = params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
            return plain_response(
                start_response, "415 Unsupported Media Type", f"charset {charset!r} is not supported: send UTF-8\n"
            )
        try:
            data, event, retry = self._fields(mimetype.lower(), body, _query_of(environ))
        except _Unsupported as exc:
            return plain_response(start_response, "415 Unsupported Media Type", f"{exc}\n")
        except (ValueError, UnicodeDecodeError) as exc:
            return plain_response(start_response, "400 Bad Request", f"{exc}\n")
        self.turns.before_publish()
        try:
            event_id = self.broker.publish(channel, data, event=event, retry=retry)
        except InvalidEvent as exc:
            return plain_response(start_response, "400 Bad Request", f"{exc}\n")
        except NotReplicated as exc:
            return _not_replicated(start_response, channel, exc)
        except BrokerUnavailable as exc:
            return _unavailable(start_response, exc)
        payload = json.dumps({"id": event_id, "channel": channel}).encode()
        start_response("201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]

    def _read_body(self, environ: WSGIEnvironment) -> bytes | None:
        """The request body, or None when it is larger than max_body.

        Counted as it is read, so a chunked body (no Content-Length) over the
        limit is refused too, not cut short and published.
        """
        length = get_content_length(environ)
        if length is not None and length > self.max_body:
            return None
        stream = get_input_stream(environ)
        chunks, size = [], 0
        while size <= self.max_body:
            chunk = stream.read(self.max_body + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size == length:
                break  # all of it: no read just to learn that it ended (one per publish)
        return None if size > self.max_body else b"".join(chunks)

    def _fields(self, mimetype: str, body: bytes, query: dict[str, list[str]]) -> tuple[Data, str | None, int | None]:
        if mimetype in ("", "text/plain"):
            text = _utf8(body, "body")
            return text, _single(query, "event"), _retry(_single(query, "retry"))
        if mimetype == "application/x-www-form-urlencoded" and b"=" not in body:
            return _form_text(body), _single(query, "event"), _retry(_single(query, "retry"))
        if mimetype == "application/x-www-form-urlencoded":
            fields = _fields_of(_utf8(body, "body"), "form body")
            unknown = sorted(set(fields) - {"data", "event", "retry"})
            if unknown:
                raise ValueError(
                    f"unknown form field(s): {', '.join(unknown)}; use data, event and retry "
                    "(to publish the body as it is, use Content-Type: text/plain, e.g. curl -H "
                    "'Content-Type: text/plain' -d ...)"
                )
            if "data" not in fields:
                raise ValueError("the form has no data field")
            return fields["data"], _single(fields, "event"), _retry(_single(fields, "retry"))
        if mimetype == "application/json":
            try:
                document = json.loads(_utf8(body, "body"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"the body is not valid JSON: {exc}") from None
            except RecursionError:
                # json's decoder recurses once per level: "[[[[..." deep
                # enough exhausts the stack. No valid body nests at all.
                raise ValueError("the JSON body is nested too deeply (a valid body is one flat object)") from None
            if not isinstance(document, dict):
                raise ValueError('the JSON body must be an object: {"data": ..., "event": ..., "retry": ...}')
            unknown = sorted(set(document) - {"data", "event", "retry"})
            if unknown:
                raise ValueError(f"unknown JSON key(s): {', '.join(unknown)}; use data, event and retry")
            if "data" not in document:
                raise ValueError("the JSON body has no data")
            data = document["data"]
            if not (isinstance(data, str) or (isinstance(data, list) and all(isinstance(x, str) for x in data))):
                raise ValueError("data must be a string or a list of strings")
            event = document.get("event")
            if event is not None and not isinstance(event, str):
                raise ValueError("event must be a string")
            retry = document.get("retry")
            if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool)):
                raise ValueError("retry must be an integer (milliseconds)")
            return data, event, retry
        raise _Unsupported(
            f"Content-Type {mimetype!r} is not supported: use text/plain, "
            "application/x-www-form-urlencoded or application/json"
        )


class _Unsupported(Exception):
    pass


#: What an encoder writes (``curl --data-urlencode``): unreserved characters
#: (RFC 3986 section 2.3), ``+`` for a space and ``%XX`` escapes. One pass, no
#: backtracking: the alternatives differ at their first byte.
_PERCENT_ENCODED = re.compile(rb"(?:[A-Za-z0-9._~+-]|%[0-9A-Fa-f]{2})*")
_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")


def _form_text(body: bytes) -> str:
    """The data of a form body with no ``=``: see :class:`PublisherApp`."""
    if _ESCAPE.search(body) and _PERCENT_ENCODED.fullmatch(body):
        try:
            return unquote_to_bytes(body.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(
                "the form body is percent-encoded (as curl --data-urlencode sends it) but its escapes are not "
                "UTF-8; to publish the body as it is, use Content-Type: text/plain"
            ) from None
    return _utf8(body, "body")


def _fields_of(text: str, what: str) -> dict[str, list[str]]:
    """URL-encoded fields; %-escapes that are not UTF-8 are an error, not kept."""
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"the {what} is not valid UTF-8") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return fields


def _query_of(environ: WSGIEnvironment) -> dict[str, list[str]]:
    # WSGI hands the query string over as bytes decoded as latin-1.
    raw = environ.get("QUERY_STRING", "").encode("latin-1", "replace")
    if not raw:
        return {}  # the usual publish: nothing to parse
    return _fields_of(_utf8(raw, "query string"), "query string")


def _utf8(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the {what} is not valid UTF-8: {exc}") from None


def _single(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"{name} is given more than once")
    return values[0]


def _retry(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"retry must be a non-negative integer (milliseconds), not {value!r}")
    return int(value)


class _Unsubscribe:
    """``broker.unsubscribe(subscription)``, the ``on_close`` callback of a
    single-channel stream: one 48-byte object per stream where a
    ``functools.partial`` of a bound method held four (256 bytes)."""

    __slots__ = ("broker", "subscription")

    def __init__(self, broker: Broker, subscription: Subscription) -> None:
        self.broker = broker
        self.subscription = subscription

    def __call__(self) -> None:
        self.broker.unsubscribe(self.subscription)
