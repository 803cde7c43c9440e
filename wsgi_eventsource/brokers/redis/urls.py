"""Redis URLs: which ones the broker takes, and how they are shown (never
with a password, whether it is in the userinfo or in the query)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["check_redis_url", "shown_url"]

# redis-py reads "?password=" from the query of every scheme, unix:// too.
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*")


def check_redis_url(url: object) -> str:
    """*url* if it is a ``redis://``, ``rediss://`` or ``unix://`` URL, else ``ValueError``.

    .. versionadded:: 0.1
    """
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"url must be a redis://, rediss:// or unix:// URL, not {url!r}")
    return url


def shown_url(url: str) -> str:
    """*url* for messages, logs and ``repr``: each password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if "password=" in parts.query:
        parts = parts._replace(query=_QUERY_PASSWORD.sub(r"\1\2***", parts.query))
    return urlunsplit(parts)
