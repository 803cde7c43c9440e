"""The README's example, run the way the README says: under gunicorn -k gevent."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import ServerProcess
from tests.helpers import StreamClient

pytestmark = pytest.mark.server


def test_hello_example_serves_a_page_and_a_resumable_clock(gunicorn: Callable[..., ServerProcess]) -> None:
    server = gunicorn("examples.hello:app")
    page = StreamClient(server.port, "/")
    assert page.status == 200
    assert b"new EventSource" in page.read_body()

    client = StreamClient(server.port, "/events")
    first = client.events(2, timeout=5)
    assert [e.type for e in first] == ["tick", "tick"]
    assert [e.last_event_id for e in first] == ["1", "2"]
    client.close()

    resumed = StreamClient(server.port, "/events", headers={"Last-Event-ID": "41"})
    assert resumed.events(1, timeout=5)[0].last_event_id == "42"
