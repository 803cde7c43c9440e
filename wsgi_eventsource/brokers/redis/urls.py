"""Redis URLs: which ones the broker takes, what they name, and how they are
shown (never with a password, whether it is in the userinfo or in the query).

One Redis: ``redis://``, ``rediss://`` (TLS), ``unix://``, read by redis-py
itself. Many: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/<service>/<db>``
(the master that Sentinel names for *service*; the password is the data
nodes', the sentinels are asked without one) and
``redis+cluster://[[user]:password@]host:port[,host:port...]/[?partitions=N]``
(any of the nodes; the others are found from them).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = ["DEFAULT_PARTITIONS", "RedisTarget", "check_redis_url", "check_url_options", "parse_redis_url", "shown_url"]

# redis-py reads "?password=" from the query of every scheme, unix:// too.
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*")

#: Partitions of a cluster's channels unless the URL says ``?partitions=``.
#: Every process that shares the channels must use the same number.
DEFAULT_PARTITIONS = 16
_MAX_PARTITIONS = 16384  # a cluster has this many slots: more cannot spread further

_SINGLE = ("redis", "rediss", "unix")
_SENTINEL, _CLUSTER = "redis+sentinel", "redis+cluster"
_DEFAULT_PORT = {_SENTINEL: 26379, _CLUSTER: 6379}
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names.

    .. versionadded:: 0.1
    """

    #: ``"single"`` (one server), ``"sentinel"`` or ``"cluster"``.
    kind: Literal["single", "sentinel", "cluster"]
    #: The URL as given (for one server, redis-py reads it).
    url: str = field(repr=False)
    #: The sentinels, or the cluster nodes to start from; ``()`` for one server.
    nodes: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service (the master's name).
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: How many partitions a cluster's channels are spread over.
    partitions: int = DEFAULT_PARTITIONS

    @property
    def shown(self) -> str:
        """The URL for messages and logs: never the password."""
        return shown_url(self.url)


def parse_redis_url(url: object) -> RedisTarget:
    """What *url* names, or a ``ValueError`` that says which part is wrong
    (and never shows a password).

    .. versionadded:: 0.1
    """
    if not isinstance(url, str):
        raise ValueError(f"a Redis URL must be a str, not {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*_SINGLE, _SENTINEL, _CLUSTER):
        raise ValueError(
            "a Redis URL starts with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://, "
            f"not {_first_part(url)!r}"
        )
    if scheme in _SINGLE:
        return _single(url)
    shown = shown_url(url)
    # Up to the last '@' is the user and password, whatever they hold: an
    # unescaped '/', '?' or '#' in a password would end urlsplit's netloc
    # early (the password's start taken for a host, and shown). No '@' may
    # follow in these URLs (service names and options have none).
    userinfo, at, after = url.partition("://")[2].rpartition("@")
    if not at:
        userinfo = ""
    try:
        parts = urlsplit(f"{scheme}://{after}")
    except ValueError as exc:  # "[::1" without "]"
        raise ValueError(f"{exc}: a host is not a host name or address: {shown}") from None
    hosts = parts.netloc
    username, _, password = userinfo.partition(":")
    nodes = _nodes(hosts, _DEFAULT_PORT[scheme], shown)
    options = _query(parts.query, shown, allowed=("partitions",) if scheme == _CLUSTER else ())
    user, secret = unquote(username) or None, unquote(password) if password else None
    if scheme == _SENTINEL:
        service, db = _service_and_db(parts.path, shown)
        return RedisTarget("sentinel", url, nodes, service=service, db=db, username=user, password=secret)
    if parts.path not in ("", "/"):
        raise ValueError(
            f"a redis+cluster:// URL has no path (a cluster has no databases but 0), not {parts.path!r}: {shown}"
        )
    partitions = options.get("partitions", str(DEFAULT_PARTITIONS))
    if not (partitions.isdigit() and 1 <= int(partitions) <= _MAX_PARTITIONS):
        raise ValueError(f"partitions must be a whole number from 1 to {_MAX_PARTITIONS}, not {partitions!r}: {shown}")
    return RedisTarget("cluster", url, nodes, username=user, password=secret, partitions=int(partitions))


def check_redis_url(url: object) -> str:
    """*url* if it is a Redis URL the broker takes (see :func:`parse_redis_url`), else ``ValueError``.

    .. versionadded:: 0.1
    """
    target = parse_redis_url(url)
    assert isinstance(url, str)
    if target.kind == "single":
        with contextlib.suppress(ImportError):  # without redis-py the broker says so when made
            check_url_options(url)
    return url


def check_url_options(url: str) -> None:
    """Refuse a ``redis://``, ``rediss://`` or ``unix://`` *url* whose options
    redis-py cannot use (``?db=x``, an unknown one): else every publish and
    subscribe would fail with its ValueError or TypeError, which is no
    :class:`~wsgi_eventsource.BrokerUnavailable`. Needs redis-py."""
    import redis

    shown = shown_url(url)
    try:
        pool = redis.BlockingConnectionPool.from_url(url)  # as the broker makes it
        pool.connection_class(**pool.connection_kwargs)  # builds one, does not connect
    except (ValueError, TypeError, redis.RedisError) as exc:  # RedisError: a bad ssl_cert_reqs
        raise ValueError(f"the Redis URL {shown} has an option redis-py cannot use: {exc}") from None
    # The broker reads RESP2 bytes (event bodies are sent as they are stored).
    if pool.connection_kwargs.get("decode_responses"):
        raise ValueError(f"the Redis URL {shown} sets decode_responses: the broker reads bytes")
    if str(pool.connection_kwargs.get("protocol") or 2) != "2":
        raise ValueError(f"the Redis URL {shown} sets protocol: the broker reads RESP2 replies")


def shown_url(url: str) -> str:
    """*url* for messages, logs and ``repr``: each password replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        # Everything before the last '@' but a user name: a password may
        # hold an unescaped '/', '?' or '#', which urlsplit would take for
        # the end of the netloc (and show the rest).
        url = f"{scheme}://{userinfo.partition(':')[0]}:***@{after}"
    try:
        parts = urlsplit(url)
    except ValueError:  # "[" without "]": nothing sensible to show
        return _first_part(url) + "://..."
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if "password=" in parts.query:
        parts = parts._replace(query=_QUERY_PASSWORD.sub(r"\1\2***", parts.query))
    return urlunsplit(parts)


def _first_part(url: str) -> str:
    """The scheme, or the start of something that has none (never a password)."""
    return url.partition("://")[0][:30] if "://" in url else url.rpartition("@")[-1][:30]


def _single(url: str) -> RedisTarget:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        if "@" in url.partition("://")[2]:
            # The error may quote a piece of a password (a '/' in one ends
            # the netloc early: "Port could not be cast ... 'pa'").
            raise ValueError(
                f"the Redis URL {shown_url(url)} cannot be read: percent-encode a '/', '?', '#' or '@' "
                "in its user name or password (%2F, %3F, %23, %40)"
            ) from None
        raise ValueError(f"{exc} in the Redis URL {shown_url(url)}") from None
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"the Redis URL {shown_url(url)} names no socket path")
    return RedisTarget("single", url)


def _nodes(hosts: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise ValueError(f"the URL names no host: {shown}")
    nodes = []
    for item in hosts.split(","):
        host, port = item, str(default_port)
        if item.startswith("["):  # [::1]:6379
            end = item.find("]")
            host, rest = item[: end + 1], item[end + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"host {item!r} is not host:port: {shown}")
                port = rest[1:]
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not _HOST.fullmatch(host):
            raise ValueError(f"{host or item!r} is not a host name or address: {shown}")
        if not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"port {port!r} of host {host!r} is not a port number (1 to 65535): {shown}")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


def _service_and_db(path: str, shown: str) -> tuple[str, int]:
    service, _, db = path.lstrip("/").partition("/")
    if not service:
        raise ValueError(f"a redis+sentinel:// URL names the service after the hosts (/mymaster/0): {shown}")
    if not _SERVICE.fullmatch(service):
        raise ValueError(f"{service!r} is not a Sentinel service name: {shown}")
    db = db.rstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the database after the service must be a number, not {db!r}: {shown}")
    return service, int(db)


def _query(query: str, shown: str, allowed: tuple[str, ...]) -> dict[str, str]:
    options = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    for name, values in options.items():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "nothing"
            raise ValueError(f"unknown option {name!r} in the URL (it takes {takes}): {shown}")
        if len(values) > 1:
            raise ValueError(f"option {name!r} is given {len(values)} times: {shown}")
    return {name: values[0] for name, values in options.items()}
