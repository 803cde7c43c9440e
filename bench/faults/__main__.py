"""``python -m bench.faults``: run the scenarios, print the table."""

from gevent import monkey

monkey.patch_all()  # the clients, the publisher and redis-py all share one gevent loop

from bench.faults.runner import main  # noqa: E402

main()
