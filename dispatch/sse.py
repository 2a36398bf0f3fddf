"""Server-Sent Events plumbing shared by the alert and traffic streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

SSE_RETRY_MS = 1000  # how soon a browser's EventSource reconnects
Write = Callable[[bytes], Awaitable[None]]


async def open_event_stream(
    request: web.Request, write_timeout_s: float
) -> tuple[web.StreamResponse, Write]:
    """Start an event stream; `write` fails with TimeoutError when the client stops reading."""
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)

    async def write(data: bytes) -> None:
        await asyncio.wait_for(resp.write(data), write_timeout_s)

    await write(f"retry: {SSE_RETRY_MS}\n\n".encode())
    return resp, write


async def say_disconnect(resp: web.StreamResponse, detail: dict[str, Any]) -> None:
    """Tell a client why it is being dropped (best effort: it may be gone already)."""
    body = f"event: disconnect\ndata: {json.dumps(detail)}\n\n".encode()
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(resp.write(body), 1.0)
