"""The fault suite: real servers (``wsgi-eventsource serve``, redis-server),
real clients (WHATWG-following Python clients, the C load client), real faults
(restarts, kill -9, SIGSTOP, CLIENT KILL, foreign data, slow readers, fuzzed
requests, channel churn), and a table of what every client got.

    .venv/bin/python -m bench.faults           # every scenario (about 10 minutes)
    .venv/bin/python -m bench.faults --quick   # small sizes: a smoke run
    .venv/bin/python -m bench.faults --only storm,fuzz

See docs/reliability.rst for what each scenario does and how it is counted.
"""
