"""Recommended gunicorn settings for wsgi-eventsource apps.

gunicorn --config examples/gunicorn.conf.py yourapp:application
"""

# Ends a worker's streams when gunicorn retires it (see max_requests below).
# If you have your own post_worker_init, call this one from it.
from wsgi_eventsource.gunicorn_hooks import post_worker_init  # noqa: F401

# gevent workers (needs `pip install 'gunicorn[gevent]'`); sync and gthread
# workers would tie up a whole worker or thread per open stream. This one is
# gunicorn's gevent worker that writes open streams from the hub, with no
# greenlet each (about 5.5 KiB per idle stream instead of 14; docs/deployment.rst
# "The library's worker"). worker_class = "gevent" works too.
worker_class = "wsgi_eventsource.gunicorn_worker.GeventWorker"

# Requests one worker serves at once. On the stock "gevent" worker every open
# stream keeps its slot for its whole life, so gunicorn's default of 1000 is a
# hard cap on subscribers per worker; on the worker above, streams hold no
# slot. Raise the open-files limit (ulimit -n) to the streams you expect.
worker_connections = 10_000

# With a MemoryBroker keep ONE worker: channels live in the worker's memory.
# With RedisBroker, run about one worker per core.
workers = 1

# The worker heartbeat: gevent workers keep notifying the master while streams
# are open, so long streams do not trip it. It only catches a stuck worker.
timeout = 30

# How long a stopping worker may take. wsgi-eventsource ends its streams at
# SIGTERM at once (with a retry hint if configured), so workers stop within
# a few seconds and this is only a ceiling.
graceful_timeout = 30

# gunicorn retires a worker after max_requests requests (0, the default: never)
# without sending it a signal, so nothing would end its streams until
# graceful_timeout. The post_worker_init hook imported above ends them at once,
# as SIGTERM does.
max_requests = 0

# Seconds to wait for the next request on a kept-alive connection (not for
# streams, which are one long response).
keepalive = 5

bind = "127.0.0.1:8000"
