"""``wsgi-eventsource serve``: the hub on gunicorn gevent workers;
``wsgi-eventsource token``: a signed token (JWT) for it;
``wsgi-eventsource publish`` and ``tail``: publish to it and follow its
channels from a shell (see :mod:`wsgi_eventsource.client`).

Every option of ``serve`` can also come from the environment
(``WSGI_EVENTSOURCE_PORT=8080`` and so on), which is handy in containers and
systemd units; a command-line option wins over the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import EventSourceError

if TYPE_CHECKING:
    from .client import ReceivedEvent

__all__ = ["main"]

#: Connections one worker serves at once, and so the streams it may hold
#: (``--max-connections`` stays below it). gunicorn's own default, 1000, is
#: far too few for an SSE hub.
DEFAULT_WORKER_CONNECTIONS = 10_000

_ENV = "WSGI_EVENTSOURCE_"
#: Where ``publish`` and ``tail`` find the hub without ``--url`` or WSGI_EVENTSOURCE_URL.
DEFAULT_HUB_URL = "http://127.0.0.1:8000"
#: Options whose values an error message must not repeat.
_SECRETS = frozenset({"jwt_key"})


def connection_reserve(worker_connections: int) -> int:
    """Worker slots kept free of streams when ``--max-connections`` is not given.

    On gunicorn's stock gevent worker every open stream holds one of its
    ``worker_connections`` slots for its whole life; were streams allowed to
    take them all, publishes, ``/healthz`` and ``/stats`` would wait for a
    free slot (hang). (The hub's own worker,
    :class:`~wsgi_eventsource.gunicorn_worker.GeventWorker`, frees a stream's
    slot once its headers are sent; the cap stays, as the bound on streams
    and open files.) The reserve
    also carries the clients refused softly over the cap: each keeps its slot
    for gunicorn's keepalive (2 s) after its short answer, so 10 % of 10,000
    slots absorb about 500 refusals a second besides publishes and health
    checks (and their spread ``retry:`` of about 5 s keeps them apart).
    """
    return max(20, worker_connections // 10)


def default_max_connections(worker_connections: int) -> int:
    """The streams a worker serves when ``--max-connections`` is not given:
    its worker connections less :func:`connection_reserve` (at least 1)."""
    return max(1, worker_connections - connection_reserve(worker_connections))


def _whole_number(low: int, high: int | None, what: str) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
        return value

    return convert


_positive_int = _whole_number(1, None, "a positive integer")
_port = _whole_number(0, 65535, "a port number (0 to 65535)")
_milliseconds = _whole_number(0, None, "a whole number of milliseconds (0 or more)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def _token(text: str) -> str:
    if not text.strip() or text != text.strip():
        raise argparse.ArgumentTypeError("must not be empty or start or end with spaces")
    return text


def _redis_url(text: str) -> str:
    from .brokers.redis import check_redis_url

    try:
        return check_redis_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("url ")) from None


def _allowed_host(text: str) -> str:
    from .hub import check_allowed_host

    try:
        return check_allowed_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("allowed_hosts: ")) from None


def _origin(text: str) -> str:
    from .hub import check_origin

    try:
        return check_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("cors_origin ")) from None


def _read_key(text: str) -> bytes:
    """A key as given: ``@path`` is the file's content (read now, at start;
    trailing line ends are not part of a secret), anything else the key itself."""
    if not text.startswith("@"):
        if not text:
            raise argparse.ArgumentTypeError("must not be empty")
        # The bytes as given: argv and the environment hand over a byte that
        # is not UTF-8 as a surrogate, which str.encode refused with a
        # ValueError that argparse reported with the secret in it.
        return os.fsencode(text)
    path = text[1:]
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read the key file {path!r}: {exc.strerror or exc}") from None
    raw = raw.rstrip(b"\r\n")
    if not raw:
        raise argparse.ArgumentTypeError(f"the key file {path!r} is empty")
    return raw


def _verifying_key(text: str) -> bytes:
    from .auth import TokenAuth

    raw = _read_key(text)
    try:
        TokenAuth(raw)  # the key's kind, a PEM that parses, a secret long enough
    except (ValueError, ImportError) as exc:
        where = f"the key file {text[1:]!r}: " if text.startswith("@") else ""
        raise argparse.ArgumentTypeError(f"{where}{exc}") from None
    return raw


def _pattern(text: str) -> str:
    from .auth import check_pattern

    try:
        check_pattern(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class _Default:
    """An option's default while parsing, so that an option not given on the
    command line can be told apart and taken from the environment instead."""

    def __init__(self, value: Any, shown: str | None = None) -> None:
        self.value = value
        self.shown = shown

    def __str__(self) -> str:  # what --help shows
        return str(self.value) if self.shown is None else self.shown


class _Append(argparse.Action):
    """A repeatable option: each use adds one value (the default is dropped)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, *_: Any) -> None:
        items = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*([] if isinstance(items, _Default) else items or []), values])

    #: How the environment variable's text is split (None: on whitespace).
    env_separator: str | None = ","


class _AppendPatterns(_Append):
    """A repeatable channel pattern: patterns may contain commas, never
    whitespace, so the environment variable is split on whitespace."""

    env_separator = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgi-eventsource",
        description="Server-Sent Events for WSGI. `serve` runs a channel hub on gunicorn gevent workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the SSE hub",
        description=(
            "Run the SSE hub: GET /events/<channel> subscribes, POST /publish/<channel> publishes, "
            "GET / is a demo page, /healthz, /stats and /metrics tell how it is doing. "
            f"Every option may also be set as an environment variable {_ENV}<OPTION>, "
            f"e.g. {_ENV}PORT=8080; an option given on the command line wins."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def option(
        name: str, kind: Callable[[str], Any], default: Any, help: str, shown: str | None = None, **extra: Any
    ) -> None:
        serve.add_argument(f"--{name}", type=kind, default=_Default(default, shown), help=help, **extra)

    option("host", str, "127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    option("port", _port, 8000, "port to listen on")
    option("workers", _positive_int, 1, "gunicorn worker processes; more than one needs --redis")
    option(
        "worker-connections",
        _positive_int,
        DEFAULT_WORKER_CONNECTIONS,
        "connections one worker serves at once, and so the streams it may hold (--max-connections stays "
        "below it; gunicorn's own default is 1000)",
    )
    option("redis", _redis_url, None, "Redis URL (redis://host:6379/0) to share channels between workers and hosts")
    option(
        "redis-max-connections",
        _positive_int,
        50,
        "Redis connections per worker for publish and subscribe (a reconnect storm waits up to 10 s for a free one "
        "instead of being refused); the reader has one more",
    )
    option("history", _positive_int, 1000, "events kept per channel for Last-Event-ID replay")
    option("max-age", _positive_float, None, "if set, seconds an event stays replayable (history is also cut by age)")
    option("keepalive", _positive_float, 15.0, "seconds between keepalive comments on idle streams")
    option(
        "publish-token",
        _token,
        None,
        "require 'Authorization: Bearer TOKEN' to publish; without it publishing is allowed from this machine only",
    )
    option(
        "jwt-key",
        _verifying_key,
        None,
        "verify signed tokens (JWT) with this key: an HMAC secret (32 bytes or more) or @FILE, a file holding the "
        "secret or a PEM public key (read at start). With it, subscribing needs a token (except on --public "
        "channels), publishing needs a token that may publish to the channel (or --publish-token), /stats and "
        "/metrics a token that may publish to every channel ('**') (or --publish-token); the loopback rule and "
        "the Host check no longer apply. A secret given here is visible to other users (ps): prefer @FILE or "
        f"{_ENV}JWT_KEY",
        shown="none",
        metavar="SECRET|@FILE",
    )
    option(
        "jwt-algorithm",
        _token,
        [],
        "with --jwt-key, an algorithm tokens may be signed with (repeatable; from the environment: separated by "
        "commas); default: every one the key's kind allows (HS256/384/512 for a secret; RS*, PS*, ES* or EdDSA "
        "for a public key)",
        shown="from the key",
        metavar="ALGORITHM",
        action=_Append,
        dest="jwt_algorithms",
    )
    option("jwt-audience", _token, None, "with --jwt-key, tokens must carry this 'aud'", shown="none")
    option("jwt-issuer", _token, None, "with --jwt-key, tokens must carry this 'iss'", shown="none")
    option(
        "public",
        _pattern,
        [],
        "with --jwt-key, a pattern of channels anyone may subscribe to without a token (news/**: news/a, news/a/b; "
        "room/*: room/a only; ** alone: every channel); repeatable; from the environment: separated by spaces "
        "(a pattern may contain commas)",
        shown="none",
        metavar="PATTERN",
        action=_AppendPatterns,
        dest="public",
    )
    option("cors-origin", _origin, None, "origin allowed to subscribe and publish from another site ('*' for any)")
    option(
        "allowed-host",
        _allowed_host,
        [],
        "without --publish-token, a host name (besides loopback names) requests may be addressed to, such as "
        "events.example.org, .example.org (and every name below) or '*' for any; repeat it for several. Other "
        "Host headers get 403 (DNS rebinding). Behind a proxy that passes the public name on, give that name. "
        "From the environment: names separated by commas",
        shown="none",
        action=_Append,
        dest="allowed_hosts",
    )
    option(
        "max-connections",
        _positive_int,
        None,
        "streams per worker; a stream over it is refused softly (a short 200 stream with a retry hint, so "
        "browsers come back by themselves). Must be below --worker-connections. Default: --worker-connections "
        "less a reserve of max(20, worker-connections/10), kept for publishes, /healthz, /stats and refused "
        "clients (each holds a slot for gunicorn's 2 s keepalive after its answer)",
        shown=f"{default_max_connections(DEFAULT_WORKER_CONNECTIONS)} with the default --worker-connections",
    )
    option(
        "top-channels",
        _whole_number(0, None, "a whole number (0 or more)"),
        10,
        "channels /stats and /metrics show one by one (those with the most subscribers); "
        "/metrics also has a histogram of subscribers per channel over all of them",
    )
    option(
        "max-channels",
        _positive_int,
        64,
        "channels one multiplexed stream (GET /events?channel=a&channel=b) may name; more answer 400",
    )
    option("graceful-timeout", _positive_int, 30, "seconds gunicorn waits for a worker to stop")
    option("shutdown-retry", _milliseconds, 2000, "the retry hint (ms) streams get when a worker stops")
    option(
        "log-level", str.lower, "info", "gunicorn log level", choices=("debug", "info", "warning", "error", "critical")
    )
    token = commands.add_parser(
        "token",
        help="print a signed token (JWT) for a hub started with --jwt-key",
        description=(
            "Print a signed token (JWT) that lets its bearer subscribe and publish to the channels given, "
            "for a hub started with --jwt-key (or any app using wsgi_eventsource.auth.TokenAuth). Patterns: "
            "room/* matches room/42 (one segment), room/** matches room/42 and room/42/x, ** alone every channel."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    token.add_argument(
        "--key",
        type=_read_key,
        required=True,
        metavar="SECRET|@FILE",
        help="the HMAC secret, or @FILE: a file holding the secret or a PEM private key (RSA, EC, Ed25519)",
    )
    token.add_argument(
        "--subscribe", type=_pattern, action="append", default=[], metavar="PATTERN", help="channels it may read"
    )
    token.add_argument(
        "--publish", type=_pattern, action="append", default=[], metavar="PATTERN", help="channels it may publish to"
    )
    token.add_argument(
        "--ttl", type=_positive_float, default=3600.0, metavar="SECONDS", help="seconds until it expires"
    )
    token.add_argument("--audience", type=_token, help="its 'aud' (when the hub has --jwt-audience)")
    token.add_argument("--issuer", type=_token, help="its 'iss' (when the hub has --jwt-issuer)")
    token.add_argument("--subject", type=_token, help="its 'sub' (who it is for)")
    token.add_argument(
        "--algorithm",
        type=_token,
        help="HS256/384/512 for a secret, RS*/PS* for RSA, ES* for EC, EdDSA (default: HS256, RS256, the curve's)",
    )
    _add_client_commands(commands)
    return parser


def _channel(text: str) -> str:
    from .brokers.base import validate_channel
    from .errors import InvalidChannel

    try:
        return validate_channel(text)
    except InvalidChannel as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _event_type(text: str) -> str:
    if not text or "\n" in text or "\r" in text:
        raise argparse.ArgumentTypeError("must be one line, not empty")
    return text


def _add_client_commands(commands: Any) -> None:
    """``publish`` and ``tail``: the hub's clients, from a shell."""
    defaults = (
        f"Defaults from the environment: {_ENV}URL (the hub, else {DEFAULT_HUB_URL}) and {_ENV}TOKEN. "
        "Exit status: 0 done, 1 refused or unreachable, 2 a usage error."
    )
    publish = commands.add_parser(
        "publish",
        help="publish one event to a hub (or straight to its Redis)",
        description=(
            "Publish one event: POST <url>/publish/CHANNEL (text/plain), or with --redis straight into the "
            "Redis the hubs share. DATA '-' or none reads stdin (UTF-8; one trailing line end is dropped, so "
            "`echo hello | wsgi-eventsource publish news` publishes 'hello'; other line ends make a multi-line "
            "event). Prints the event's id. " + defaults
        ),
    )
    target = publish.add_mutually_exclusive_group()
    target.add_argument("--url", metavar="HUB_URL", help="the hub (its path prefix too, behind a proxy)")
    target.add_argument("--redis", type=_redis_url, metavar="URL", help="publish into this Redis, not over HTTP")
    publish.add_argument("--token", type=_token, help="sent as Authorization: Bearer (--publish-token or a JWT)")
    publish.add_argument("--event", type=_event_type, metavar="TYPE", help="the event type (default: message)")
    publish.add_argument(
        "--history",
        type=_positive_int,
        default=os.environ.get(f"{_ENV}HISTORY", "1000"),
        help=f"with --redis: the hubs' --history (Redis trims the channel to it), from {_ENV}HISTORY like theirs",
    )
    publish.add_argument(
        "--max-age",
        type=_positive_float,
        default=os.environ.get(f"{_ENV}MAX_AGE"),
        metavar="SECONDS",
        help=f"with --redis: the hubs' --max-age, from {_ENV}MAX_AGE like theirs",
    )
    publish.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS", help="for the answer")
    publish.add_argument("channel", type=_channel, metavar="CHANNEL")
    publish.add_argument("data", nargs="?", default="-", metavar="DATA", help="the data, or - for stdin")
    tail = commands.add_parser(
        "tail",
        help="print the events of channels as they arrive",
        description=(
            "Subscribe to CHANNEL (GET <url>/events/CHANNEL), or to several on one multiplexed stream, and print "
            "one line per event: channel, event type, data (the lines after the first of multi-line data "
            "follow, indented by two spaces; an event type with spaces is shown in JSON quotes). When the stream "
            "ends or the hub restarts, waits its retry: hint and resumes with Last-Event-ID, so nothing is missed "
            "or repeated while the hub keeps the history. Ctrl-C ends it (status 0). " + defaults
        ),
    )
    tail.add_argument("--url", metavar="HUB_URL", help="the hub (its path prefix too, behind a proxy)")
    tail.add_argument("--token", type=_token, help="sent as Authorization: Bearer (a JWT that may subscribe)")
    tail.add_argument(
        "--json", action="store_true", help='one JSON object per event: {"channel", "event", "data", "id"}'
    )
    tail.add_argument("--last-event-id", default="", metavar="ID", help="resume after this id (or cursor)")
    tail.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=45.0,
        metavar="SECONDS",
        help="reconnect after this long without a byte (the hub sends a keepalive every 15 s by default)",
    )
    tail.add_argument("channels", type=_channel, nargs="+", metavar="CHANNEL")


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = commands.choices[name]
    return found


def _resolve_environment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options not given on the command line: from the environment, else the default."""
    for action in _subcommand(parser, "serve")._actions:
        value = getattr(args, action.dest, None)
        if not isinstance(value, _Default):
            continue
        variable = _ENV + action.option_strings[0].removeprefix("--").replace("-", "_").upper()
        text = os.environ.get(variable)
        if text is None:
            setattr(args, action.dest, value.value)
            continue
        convert = action.type if callable(action.type) else str
        try:
            if isinstance(action, _Append):
                items = text.split(action.env_separator)
                converted: Any = [convert(item.strip()) for item in items if item.strip()]
            else:
                converted = convert(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            # A secret is not echoed into logs, even a refused one (a file name is).
            shown = "..." if action.dest in _SECRETS and not text.startswith("@") else repr(text)
            parser.error(f"{variable}={shown}: {exc}")
        if action.choices is not None and converted not in action.choices:
            parser.error(f"{variable}={text!r}: must be one of {', '.join(map(str, action.choices))}")
        setattr(args, action.dest, converted)


def _raise_fd_limit(wanted: int) -> None:
    # Every stream is a socket: let the workers have the descriptors they need.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Never ask for RLIM_INFINITY itself (an unlimited hard limit): macOS
    # refuses a soft limit above OPEN_MAX with ValueError.
    target = max(soft, wanted) if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if soft == resource.RLIM_INFINITY:
        return
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            print(
                f"wsgi-eventsource: warning: could not raise the open-files limit from {soft} to {target} ({exc}); "
                f"--worker-connections needs {wanted}, so a worker may refuse connections beyond {soft}. "
                "Raise it (ulimit -n, LimitNOFILE= in systemd) or lower --worker-connections.",
                file=sys.stderr,
            )
            return
    if hard != resource.RLIM_INFINITY and target < wanted:
        print(
            f"wsgi-eventsource: warning: the open-files limit is {target} (hard limit), below the {wanted} "
            "that --worker-connections needs; a worker will refuse connections beyond it. "
            "Raise it (ulimit -Hn, LimitNOFILE= in systemd) or lower --worker-connections.",
            file=sys.stderr,
        )


def make_auth(args: argparse.Namespace) -> Any:
    """The hub's :class:`~wsgi_eventsource.auth.TokenAuth`, or None without ``--jwt-key``."""
    if args.jwt_key is None:
        return None
    from .auth import TokenAuth

    return TokenAuth(
        args.jwt_key,
        algorithms=args.jwt_algorithms or None,
        audience=args.jwt_audience,
        issuer=args.jwt_issuer,
        public=args.public,
    )


def check_auth(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """At start: the token options together make sense, or a clear error."""
    if args.jwt_key is None:
        given = [
            option
            for option, value in (
                ("--jwt-algorithm", args.jwt_algorithms),
                ("--jwt-audience", args.jwt_audience),
                ("--jwt-issuer", args.jwt_issuer),
                ("--public", args.public),
            )
            if value
        ]
        if given:
            verb = "works" if len(given) == 1 else "work"
            parser.error(f"{', '.join(given)} {verb} only with --jwt-key (the key that verifies tokens)")
        return
    try:
        make_auth(args)
    except ValueError as exc:  # the key alone was checked as it was read
        parser.error(f"--jwt-algorithm: {exc}")


def make_hub_factory(args: argparse.Namespace) -> Callable[[], Any]:
    """A function that builds the hub app; called in each worker, after fork
    and after gevent's monkey-patching, so no connection is shared."""

    def factory() -> Any:
        from .brokers.base import Broker
        from .brokers.memory import MemoryBroker
        from .hub import Hub

        broker: Broker
        if args.redis:
            from .brokers.redis import RedisBroker

            broker = RedisBroker(
                args.redis, history=args.history, max_age=args.max_age, max_connections=args.redis_max_connections
            )
        else:
            broker = MemoryBroker(history=args.history, max_age=args.max_age)
        return Hub(
            broker,
            keepalive=args.keepalive,
            publish_token=args.publish_token,
            cors_origin=args.cors_origin,
            max_connections=args.max_connections,
            shutdown_retry=args.shutdown_retry,
            allowed_hosts=args.allowed_hosts,
            top_channels=args.top_channels,
            max_channels=args.max_channels,
            auth=make_auth(args),
        )

    return factory


def check_redis(args: argparse.Namespace) -> None:
    """At start, before any worker: a Redis that answers but cannot serve these
    options (too old for ``--max-age``) stops the hub with the reason; one that
    does not answer yet is only a warning (streams are refused softly and
    publishes get 503 until it does)."""
    from .brokers.redis import RedisBroker
    from .errors import BrokerUnavailable

    broker = RedisBroker(args.redis, history=args.history, max_age=args.max_age, max_connections=1)
    try:
        if not broker.ping():
            print(
                f"wsgi-eventsource: warning: Redis at {broker._shown_url} does not answer yet; starting anyway "
                "(streams are refused softly, publishes get 503, until it does)",
                file=sys.stderr,
            )
            return
        try:
            broker.check()
        except BrokerUnavailable as exc:
            sys.exit(f"wsgi-eventsource: {exc}")
    finally:
        broker.close()


def serve(args: argparse.Namespace) -> None:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        sys.exit("wsgi-eventsource serve needs gunicorn: pip install 'wsgi-eventsource[gunicorn]'")

    options = {
        "bind": f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}",
        "workers": args.workers,
        "worker_class": "wsgi_eventsource.gunicorn_worker.GeventWorker",
        "worker_connections": args.worker_connections,
        "graceful_timeout": args.graceful_timeout,
        "loglevel": args.log_level,
        "accesslog": "-" if args.log_level == "debug" else None,
        "proc_name": "wsgi-eventsource",
        # gunicorn's most (its default is 4094): a multiplexed stream's channel
        # list is in the request line, and URLSearchParams writes each "/",
        # ":", "@", ... of a name as 3 bytes (64 names of 40 characters with 8
        # such characters each make 4,181 bytes). nginx's default buffer is 8 KiB.
        "limit_request_line": 8190,
    }
    factory = make_hub_factory(args)

    class HubApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            hub = factory()
            if hub.reporter is not None:
                # In the worker, after the fork and gevent's monkey-patching:
                # it reports from the start, not from its first request on.
                hub.reporter.start()
            return hub

    _raise_fd_limit(args.worker_connections + 100)
    made = _share_between_workers(args.workers, options)
    master = os.getpid()
    try:
        HubApplication().run()
    finally:
        # Workers are forked inside run() and leave it through here too.
        if made is not None and os.getpid() == master:
            shutil.rmtree(made, ignore_errors=True)


def _share_between_workers(workers: int, options: dict[str, Any]) -> str | None:
    """With several workers: the directory they share for ``/stats`` and
    ``/metrics`` (prometheus-client's multiprocess mode), made here unless
    ``PROMETHEUS_MULTIPROC_DIR`` names one already, and the ``child_exit``
    hook that forgets a worker gone. Set in the environment before any
    worker imports prometheus_client (it reads it at import). Returns the
    directory made (to remove at exit), if any."""
    from .gunicorn_hooks import child_exit
    from .workers import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if workers == 1 and not given:
        return None  # one process answers for itself
    options["child_exit"] = child_exit
    if given:
        os.makedirs(given, exist_ok=True)
        return None
    made = tempfile.mkdtemp(prefix="wsgi-eventsource-workers-")
    os.environ[MULTIPROC_ENV] = made
    return made


def print_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``wsgi-eventsource token``: the token on stdout, alone on its line."""
    if not args.subscribe and not args.publish:
        parser.error("give --subscribe PATTERN or --publish PATTERN (a token with neither allows nothing)")
    try:
        from .auth import mint

        token = mint(
            args.key,
            subscribe=args.subscribe,
            publish=args.publish,
            ttl=args.ttl,
            algorithm=args.algorithm,
            audience=args.audience,
            issuer=args.issuer,
            subject=args.subject,
        )
    except ImportError as exc:
        sys.exit(f"wsgi-eventsource token: {exc}")
    except ValueError as exc:
        parser.error(f"--key: {exc}" if "algorithm" not in str(exc) else f"--algorithm: {exc}")
    print(token)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``wsgi-eventsource`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        print_token(_subcommand(parser, "token"), args)
    if args.command == "publish":
        sys.exit(publish_event(_subcommand(parser, "publish"), args))
    if args.command == "tail":
        sys.exit(tail_channels(args))
    if args.command == "serve":
        _resolve_environment(parser, args)
        check_auth(parser, args)
        if args.workers > 1 and not args.redis:
            parser.error(
                "--workers > 1 needs --redis: memory channels live in one process, so subscribers "
                "of one worker would never see events published in another"
            )
        if args.max_connections is None:
            args.max_connections = default_max_connections(args.worker_connections)
        elif args.max_connections >= args.worker_connections:
            parser.error(
                f"--max-connections {args.max_connections} must be below --worker-connections "
                f"{args.worker_connections}: streams would take every slot, and publishes, /healthz and /stats "
                f"would hang (the default leaves {connection_reserve(args.worker_connections)} free)"
            )
        if args.redis:
            check_redis(args)
        serve(args)


def _hub_url(args: argparse.Namespace) -> str:
    return str(args.url or os.environ.get(f"{_ENV}URL") or DEFAULT_HUB_URL)


def _hub_token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(f"{_ENV}TOKEN") or None


def _stdin_data(parser: argparse.ArgumentParser) -> str:
    raw = sys.stdin.buffer.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        parser.error(f"stdin is not valid UTF-8: {exc}")
    # What `echo` and heredocs add; a shell's $(...) drops it the same way.
    return text.removesuffix("\n").removesuffix("\r")


def publish_event(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``wsgi-eventsource publish``: the event id on stdout; the exit status."""
    if args.redis and args.token:
        parser.error("--token is for a hub; with --redis, put Redis credentials in its URL")
    data = _stdin_data(parser) if args.data == "-" else args.data
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        parser.error("DATA is not valid UTF-8")
    try:
        if args.redis:
            from .brokers.redis import RedisBroker

            broker = RedisBroker(args.redis, args.history, max_age=args.max_age, max_connections=1)
            try:
                event_id = broker.publish(args.channel, data, event=args.event)
            finally:
                broker.close()
        else:
            from .client import publish

            url = _hub_url(args)
            try:
                event_id = publish(url, args.channel, data, event=args.event, token=_hub_token(args))
            except ValueError as exc:  # the URL
                parser.error(str(exc))
            except OSError as exc:
                print(f"wsgi-eventsource publish: cannot reach the hub at {url}: {exc}", file=sys.stderr)
                return 1
    except EventSourceError as exc:  # BrokerUnavailable, HubRefused
        print(f"wsgi-eventsource publish: refused: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # --redis without redis-py
        print(f"wsgi-eventsource publish: {exc}", file=sys.stderr)
        return 1
    print(event_id)
    return 0


def _event_line(channel: str, event: ReceivedEvent) -> str:
    shown_type = json.dumps(event.type) if not event.type or any(c.isspace() for c in event.type) else event.type
    first, *more = event.data.split("\n")
    return " ".join((channel, shown_type, first)) + "".join(f"\n  {line}" for line in more)


def tail_channels(args: argparse.Namespace) -> int:
    """``wsgi-eventsource tail``: events on stdout until Ctrl-C; the exit status."""
    from .client import HubRefused, follow

    url = _hub_url(args)

    def on_retry(why: str, delay: float) -> None:
        print(f"wsgi-eventsource tail: {why}; reconnecting in {delay:.1f} s", file=sys.stderr, flush=True)

    try:
        events = follow(
            url,
            args.channels,
            token=_hub_token(args),
            last_event_id=args.last_event_id,
            idle_timeout=args.idle_timeout,
            on_retry=on_retry,
        )
        for channel, event in events:
            if args.json:
                record = {"channel": channel, "event": event.type, "data": event.data, "id": event.id}
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(_event_line(channel, event), flush=True)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (`| head`): no error, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HubRefused as exc:
        print(f"wsgi-eventsource tail: refused: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # the URL
        print(f"wsgi-eventsource tail: {exc}", file=sys.stderr)
        return 2
    return 0
