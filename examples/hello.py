"""A complete small app: a page, and a clock stream at /events that ticks
every second and resumes from Last-Event-ID.

Run it:  gunicorn -k gevent --bind 127.0.0.1:8000 examples.hello:app
Watch:   curl -N http://127.0.0.1:8000/events   (or open http://127.0.0.1:8000/ in a browser)
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import gevent

from wsgi_eventsource import Connection, EventSource

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PAGE = b"""<!doctype html>
<meta charset="utf-8"><title>wsgi-eventsource clock</title>
<h1>Server time</h1><p id="state">connecting</p><ol id="log"></ol>
<script>
const es = new EventSource("events");
es.onopen = () => { document.getElementById("state").textContent = "open"; };
es.onerror = () => { document.getElementById("state").textContent = "reconnecting"; };
es.addEventListener("tick", (e) => {
  const li = document.createElement("li");
  li.textContent = e.lastEventId + ": " + e.data;
  document.getElementById("log").prepend(li);
});
</script>
"""


def tick(conn: Connection, environ: WSGIEnvironment) -> None:
    """Push the time every second until the client goes away."""
    last = conn.last_event_id
    n = int(last) if last is not None and last.isdigit() else 0
    while not conn.closed:
        n += 1
        conn.push({"id": n, "event": "tick", "data": time.strftime("%H:%M:%S")})
        gevent.sleep(1)


events = EventSource(tick, keepalive=15)


def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes] | object:
    """``/events`` is the stream; everything else is a small page that shows it."""
    if environ.get("PATH_INFO", "/").rstrip("/").endswith("events"):
        return events(environ, start_response)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]
