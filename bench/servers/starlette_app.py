"""sse-starlette on uvicorn, the way its documentation shows: an
``EventSourceResponse`` over an async generator, one ``asyncio.Queue`` per
client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.servers.common import payload, publish_params

queues: set[asyncio.Queue[str]] = set()
tasks: set[asyncio.Task[None]] = set()


async def stream(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[str] = asyncio.Queue()
    queues.add(queue)

    async def events() -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"comment": "ok"}
            while True:
                yield {"data": await queue.get()}
        finally:
            queues.discard(queue)

    return EventSourceResponse(events(), ping=15)


async def publisher(count: int, rate: float, size: int) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        data = payload(i, size)
        for queue in list(queues):
            queue.put_nowait(data)
        if rate:
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))
        elif i % 64 == 63:
            await asyncio.sleep(0)


async def publish(request: Request) -> Response:
    task = asyncio.create_task(publisher(*publish_params(request.url.query)))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return Response(status_code=202)


app = Starlette(routes=[Route("/events", stream), Route("/bench/publish", publish, methods=["POST"])])
