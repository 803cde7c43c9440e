"""The WSGI entry point: Django's application, with wsgi-eventsource's
subscriber app mounted in front of it at ``/eventsource``.

``GET /eventsource/<channel>`` streams one channel and
``GET /eventsource/?channel=a&channel=b`` several on one stream; every other
path goes to Django. The views publish with ``broker.publish(...)``.

Run it (from examples/django_site; gevent workers: each stream is a greenlet)::

    gunicorn --worker-class gevent --bind 127.0.0.1:8000 newsroom.wsgi
    # several workers need Redis, so that every worker's streams get every event:
    REDIS_URL=redis://localhost:6379/0 gunicorn --worker-class gevent --workers 4 newsroom.wsgi

or with the recommended settings: ``gunicorn --config ../gunicorn.conf.py newsroom.wsgi``.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application  # type: ignore[import-untyped]
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from .live import broker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")

application = DispatcherMiddleware(
    get_wsgi_application(),
    {
        # Without authorize=, every channel is open to everyone: fine for public news.
        "/eventsource": broker.subscriber_app(),
    },
)
