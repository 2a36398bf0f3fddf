"""HTTP and WebSocket telemetry (API.md sections 2.1 and 2.3).

Who may send is decided by the route table (lowalt/access.py). Per token: HTTP answers 429 with
Retry-After when a request holds more observations than the token's bucket has now; a WebSocket
waits for the bucket instead (it reads no further message meanwhile), and a token may hold at
most `conn_max_per_token` gateway and WebSocket connections together.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from ingest.frames import (
    FrameSession,
    IngestContext,
    OrderedReplies,
    Reply,
    count_rejections,
    filter_owned,
    frame_items,
)
from ingest.gateway import decode_payload
from lowalt.auth import PRINCIPAL
from lowalt.errors import StorageUnavailable
from lowalt.limits import retry_after_s

INGEST = web.AppKey("ingest", IngestContext)


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _decode_body(body: bytes, content_type: str) -> Any:
    if content_type in ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack"):
        return decode_payload(body)
    if content_type in ("application/json", ""):
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
    raise ValueError(f"unsupported Content-Type {content_type!r} (use application/json or "
                     "application/msgpack)")


def _items(payload: Any) -> list[Any]:
    """One observation, a list, or {"obs": [...]} -> the list of items."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        if "obs" in payload:
            if not isinstance(payload["obs"], list):
                raise ValueError("obs: must be a list")
            return list(payload["obs"])
        return [payload]
    raise ValueError("body must be an observation, a list of observations or {\"obs\": [...]}")


async def post_telemetry(request: web.Request) -> web.Response:
    ctx = request.app[INGEST]
    principal = request[PRINCIPAL]
    retry_after = str(request.app[RETRY_AFTER])
    if not ctx.pipeline.available or not ctx.pipeline.has_room():
        return error_response(503, "storage unavailable or busy; nothing was stored",
                              **{"Retry-After": retry_after})
    body = await request.read()
    try:
        items = _items(_decode_body(body, request.content_type))
    except ValueError as exc:
        return error_response(400, str(exc))
    if len(items) > ctx.max_obs_per_batch:
        return error_response(
            413,
            f"{len(items)} observations exceed the limit of {ctx.max_obs_per_batch} per request",
        )
    rates = ctx.limits.rates
    wait_s = rates.take(principal.token_id, len(items))
    if wait_s > 0:
        return error_response(
            429, f"rate limit: this token may send {rates.rate_per_s:g} observations per second "
            f"(bursts of {rates.burst}); nothing was stored",
            **{"Retry-After": str(retry_after_s(wait_s))},
        )
    source = f"{principal.name}/http/native"
    rows, indexes, rejected = ctx.validator.batch(items, time.time(), source)
    rows = filter_owned(ctx.registry, principal, rows, indexes, rejected)
    count_rejections(ctx.metrics, rejected)
    try:
        result = await ctx.pipeline.submit(rows, retry=False)
    except StorageUnavailable as exc:
        return error_response(503, f"{exc}; nothing was stored", **{"Retry-After": retry_after})
    return web.json_response({
        "accepted": result.accepted, "duplicates": result.duplicates,
        "rejected": [{"index": i, "error": reason} for i, reason in rejected],
    })


RETRY_AFTER = web.AppKey("retry_after_s", int)
WS_MAX_BYTES = web.AppKey("ws_max_bytes", int)


async def telemetry_ws(request: web.Request) -> web.StreamResponse:
    ctx = request.app[INGEST]
    principal = request[PRINCIPAL]
    # aiohttp refuses messages of max_msg_size bytes or more; ours allows exactly the limit.
    ws = web.WebSocketResponse(max_msg_size=request.app[WS_MAX_BYTES] + 1, heartbeat=30.0)
    closing: set[asyncio.Task[bool]] = set()

    def revoked(reason: str) -> None:  # the token was revoked: end this connection
        closing.add(asyncio.ensure_future(
            ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())))

    connections = ctx.limits.connections
    if not connections.acquire(principal.token_id, revoked):
        return error_response(429, connections.refusal())
    try:
        await ws.prepare(request)
    except BaseException:
        connections.release(principal.token_id, revoked)
        raise
    session = FrameSession(ctx, principal, f"{principal.name}/ws")
    binary = True

    async def write(reply: Reply) -> None:
        if ws.closed:
            return
        if binary:
            await ws.send_bytes(msgpack.packb(reply, use_bin_type=True))
        else:
            await ws.send_str(json.dumps(reply))

    replies = OrderedReplies(write)
    session.replies = replies
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                binary = True
                try:
                    payload = decode_payload(msg.data)
                except ValueError as exc:
                    session.frames += 1
                    replies.push({"error": str(exc), "frame": session.frames})
                    continue
            elif msg.type == WSMsgType.TEXT:
                binary = False
                try:
                    payload = json.loads(msg.data)
                except json.JSONDecodeError as exc:
                    session.frames += 1
                    replies.push({"error": f"not valid JSON: {exc}", "frame": session.frames})
                    continue
            else:
                break
            await ctx.pipeline.wait_for_room()
            # Backpressure: no further message is read while the token's bucket refills.
            await ctx.limits.rates.wait_for(principal.token_id, frame_items(payload))
            try:
                replies.push(session.handle(payload))
            except StorageUnavailable as exc:
                replies.push({"error": str(exc), "frame": session.frames})
    finally:
        connections.release(principal.token_id, revoked)
        session.close()
        await replies.close(flush=not ws.closed)
        await ws.close()
    return ws
