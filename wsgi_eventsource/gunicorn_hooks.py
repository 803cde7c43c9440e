"""gunicorn server hooks for apps built on wsgi-eventsource.

gunicorn stops a worker with a signal, and :class:`~wsgi_eventsource.EventSource`
ends its streams at ``SIGTERM`` by itself. But gunicorn also retires a worker
on its own, without any signal: after ``max_requests`` requests. That worker
stops accepting and waits up to ``graceful_timeout`` for its open responses to
finish, which streams never do, so for that long it serves nothing new (with
one worker: nobody can connect). The hook below notices the retirement and
stops the worker the way ``SIGTERM`` does: streams end at once (after the
``shutdown_retry`` hint, if set), clients reconnect to the fresh worker, and
the retired one exits within about a second.

In a gunicorn config file::

    from wsgi_eventsource.gunicorn_hooks import post_worker_init

or on the command line, ``gunicorn -c python:wsgi_eventsource.gunicorn_hooks``.
If the config already has a ``post_worker_init``, call this one from it.
(``wsgi-eventsource serve`` needs none: it never sets ``max_requests``.)

One picture across workers: with several workers, ``/stats`` and
``/metrics`` of a :class:`~wsgi_eventsource.hub.Hub` answer for all of them
when they share a directory (prometheus-client's multiprocess mode, see
:mod:`wsgi_eventsource.workers`). Give gunicorn an empty directory of its own,
set before it starts (so before any worker imports prometheus_client), and
the ``child_exit`` hook below, so that a worker that exits (or is killed) no
longer counts in the gauges::

    export PROMETHEUS_MULTIPROC_DIR=$(mktemp -d)
    gunicorn -k gevent -w 4 -c python:wsgi_eventsource.gunicorn_hooks myapp:hub

or ``from wsgi_eventsource.gunicorn_hooks import child_exit`` in a config
file. (``wsgi-eventsource serve --workers N`` does all this by itself: it
makes the directory at start and removes it at exit.)
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import gevent

__all__ = ["child_exit", "post_worker_init"]

logger = logging.getLogger("wsgi_eventsource")

#: How often the watcher looks at the worker. gunicorn's own gevent worker
#: loop looks once a second, so half of that costs nothing noticeable.
WATCH_INTERVAL = 0.5


def post_worker_init(worker: Any) -> None:
    """gunicorn's ``post_worker_init`` hook: end this worker's streams at once
    when gunicorn retires it after ``max_requests`` requests.

    Only gevent workers hold streams this way; for any other worker class it
    logs a warning and does nothing.
    """
    from gunicorn.workers.ggevent import GeventWorker

    if not isinstance(worker, GeventWorker):
        logger.warning("post_worker_init: %s is not a gevent worker; streams need -k gevent", type(worker).__name__)
        return
    gevent.spawn(_watch, worker)


def _watch(worker: Any) -> None:
    while worker.alive:
        gevent.sleep(WATCH_INTERVAL)
    # A signal (SIGTERM, SIGQUIT, SIGINT) has already been handled as such;
    # only a retirement for max_requests comes without one.
    if worker.nr >= worker.max_requests:
        logger.info("gunicorn retired worker %s after %s requests: ending its streams", os.getpid(), worker.nr)
        os.kill(os.getpid(), signal.SIGTERM)


def child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook (it runs in the master, also for a
    worker killed by a signal): forget the worker in the directory the
    workers share (its report; its live gauges, ``mark_process_dead``), so
    that ``/stats`` and ``/metrics`` no longer count it. Nothing without
    ``PROMETHEUS_MULTIPROC_DIR``.

    .. versionadded:: 0.1
    """
    from .workers import worker_exited

    worker_exited(worker.pid)
