"""The hub as a user's own gunicorn app serves it (issue 11): ``Hub`` over a
RedisBroker at ``REDIS_URL``, made at import in each worker."""

from __future__ import annotations

import os

from wsgi_eventsource import RedisBroker
from wsgi_eventsource.hub import Hub

hub = Hub(RedisBroker(os.environ["REDIS_URL"]))
