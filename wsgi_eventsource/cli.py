"""``wsgi-eventsource serve``: the hub on gunicorn gevent workers.

Every option can also come from the environment (``WSGI_EVENTSOURCE_PORT=8080``
and so on), which is handy in containers and systemd units; a command-line
option wins over the environment.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__

__all__ = ["main"]

#: Streams one worker may hold. gunicorn's own default, 1000, counts every
#: open stream for its whole life, which is far too few for an SSE hub.
DEFAULT_WORKER_CONNECTIONS = 10_000

_ENV = "WSGI_EVENTSOURCE_"


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(_ENV + name.upper().replace("-", "_"), default)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


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
            f"e.g. {_ENV}PORT=8080."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def option(name: str, kind: Callable[[str], Any], default: Any, help: str) -> None:
        env = _env(name)
        serve.add_argument(f"--{name}", type=kind, default=kind(env) if env is not None else default, help=help)

    option("host", str, "127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    option("port", int, 8000, "port to listen on")
    option("workers", _positive_int, 1, "gunicorn worker processes; more than one needs --redis")
    option(
        "worker-connections",
        _positive_int,
        DEFAULT_WORKER_CONNECTIONS,
        "streams one worker may hold at once (each open stream holds a slot for its whole life; "
        "gunicorn's own default is 1000)",
    )
    option("redis", str, None, "Redis URL (redis://host:6379/0) to share channels between workers and hosts")
    option("history", _positive_int, 1000, "events kept per channel for Last-Event-ID replay")
    option("keepalive", _positive_float, 15.0, "seconds between keepalive comments on idle streams")
    option(
        "publish-token",
        str,
        None,
        "require 'Authorization: Bearer TOKEN' to publish; without it publishing is allowed from loopback only",
    )
    option("cors-origin", str, None, "origin allowed to subscribe and publish from another site ('*' for any)")
    option("max-connections", _positive_int, None, "streams per worker beyond which the hub answers 503")
    option("graceful-timeout", _positive_int, 30, "seconds gunicorn waits for a worker to stop")
    option("shutdown-retry", int, 2000, "the retry hint (ms) streams get when a worker stops")
    option("log-level", str, "info", "gunicorn log level")
    return parser


def _raise_fd_limit(wanted: int) -> None:
    # Every stream is a socket: let the workers have the descriptors they need.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


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

            broker = RedisBroker(args.redis, history=args.history)
        else:
            broker = MemoryBroker(history=args.history)
        return Hub(
            broker,
            keepalive=args.keepalive,
            publish_token=args.publish_token,
            cors_origin=args.cors_origin,
            max_connections=args.max_connections,
            shutdown_retry=args.shutdown_retry,
        )

    return factory


def serve(args: argparse.Namespace) -> None:
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        sys.exit("wsgi-eventsource serve needs gunicorn: pip install 'wsgi-eventsource[gunicorn]'")

    options = {
        "bind": f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}",
        "workers": args.workers,
        "worker_class": "gevent",
        "worker_connections": args.worker_connections,
        "graceful_timeout": args.graceful_timeout,
        "loglevel": args.log_level,
        "accesslog": "-" if args.log_level == "debug" else None,
        "proc_name": "wsgi-eventsource",
    }
    factory = make_hub_factory(args)

    class HubApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return factory()

    _raise_fd_limit(args.worker_connections + 100)
    HubApplication().run()


def main(argv: Sequence[str] | None = None) -> None:
    """The ``wsgi-eventsource`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.workers > 1 and not args.redis:
            parser.error(
                "--workers > 1 needs --redis: memory channels live in one process, so subscribers "
                "of one worker would never see events published in another"
            )
        serve(args)
