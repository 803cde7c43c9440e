"""The site's one broker, shared by the views (which publish) and ``wsgi.py``
(which mounts its subscriber app).

A MemoryBroker keeps channels in the worker's memory: run ONE gunicorn worker
with it. With several workers (or several machines) set ``REDIS_URL``, so that
an event published by any worker reaches the streams of every worker.
"""

from __future__ import annotations

import os

from wsgi_eventsource import Broker, MemoryBroker, RedisBroker

#: The channel the page streams and the form publishes to.
CHANNEL = "news"

REDIS_URL = os.environ.get("REDIS_URL")
# No connection is made until the first publish or subscribe, so a RedisBroker
# is safe to create at import time, before gunicorn forks its workers.
broker: Broker = RedisBroker(REDIS_URL, history=100) if REDIS_URL else MemoryBroker(history=100)
