"""Per-token rate and connection limits, feed clients, and the HTTP header and body timeouts:
each at the limit and one past it, over loopback on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgpack

from ingest.client import GatewayClient
from lowalt.app import RUNTIME, create_app, start_http
from lowalt.settings import Settings, replace
from tests.conftest import Server, make_token, running

RATE = 200.0  # observations per second per token
BURST = 40


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rows(n: int, uav: str, t0: float | None = None) -> list[list[Any]]:
    t0 = time.time() - 100.0 if t0 is None else t0
    return [[uav, t0 + i * 0.001, 29.7, 106.6, 120.0] for i in range(n)]


async def stored(server: Server, uav: str) -> int:
    return len(await server.runtime.store.track(uav, 0, time.time() + 10, 10_000))


# -- observations per second per token ---------------------------------------------------------

async def test_http_rate_limit_at_the_limit_and_one_past(settings: Settings) -> None:
    async with running(settings, rate_obs_per_s=10.0, rate_burst_obs=BURST,
                       max_obs_per_batch=BURST) as srv:
        gw, other = await srv.token("gateway"), await srv.token("gateway", name="other")
        r = await srv.client.post("/v1/telemetry", json=rows(BURST, "R"), headers=auth(gw))
        assert r.status == 200 and (await r.json())["accepted"] == BURST  # the whole bucket
        r = await srv.client.post("/v1/telemetry", json=rows(1, "R+1"), headers=auth(gw))
        assert r.status == 429 and r.headers["Retry-After"] == "1"  # 1 more: 0.1 s away
        assert (await r.json())["error"] == (
            "rate limit: this token may send 10 observations per second (bursts of 40); "
            "nothing was stored")
        r = await srv.client.post("/v1/telemetry", json=rows(25, "R+25"), headers=auth(gw))
        assert r.status == 429 and r.headers["Retry-After"] == "3"  # 25 at 10/s: 2.5 s away
        r = await srv.client.post("/v1/telemetry", json=rows(BURST, "O"), headers=auth(other))
        assert r.status == 200  # another token has a bucket of its own
        await asyncio.sleep(0.25)  # 2.5 observations refilled
        r = await srv.client.post("/v1/telemetry", json=rows(2, "R-after"), headers=auth(gw))
        assert r.status == 200
        assert await stored(srv, "R+1") == 0 and await stored(srv, "R+25") == 0
        assert await stored(srv, "R-after") == 2


async def test_gateway_backpressure_under_the_rate_limit_loses_nothing(settings: Settings) -> None:
    frames, per_frame = 30, 20  # 600 observations: 40 at once, then 200/s: about 2.8 s
    async with running(settings, rate_obs_per_s=RATE, rate_burst_obs=BURST,
                       max_obs_per_batch=BURST) as srv:
        gw = await srv.token("gateway")
        client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw, "sat")
        started = time.monotonic()
        t0 = time.time() - 100.0
        try:
            seqs = [client.send_obs(rows(per_frame, "BP", t0 + k)) for k in range(frames)]
            await client.drain()
            acks = [await client.recv_ack() for _ in range(frames)]
        finally:
            await client.close()
        elapsed = time.monotonic() - started
    assert [a["ack"] for a in acks] == seqs  # every frame answered, in order, none refused
    assert all(a["accepted"] == per_frame for a in acks)
    assert elapsed >= (frames * per_frame - BURST) / RATE * 0.9  # slowed to the rate
    async with running(settings) as srv:  # every acknowledged observation is stored
        assert await stored(srv, "BP") == frames * per_frame


async def test_websocket_backpressure_under_the_rate_limit_loses_nothing(
    settings: Settings,
) -> None:
    async with running(settings, rate_obs_per_s=RATE, rate_burst_obs=BURST,
                       max_obs_per_batch=BURST) as srv:
        gw = await srv.token("gateway")
        started = time.monotonic()
        async with srv.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
            for k in range(10):  # 200 observations: 40 at once, then 0.8 s
                await ws.send_bytes(msgpack.packb({"seq": k, "obs": rows(20, "WSBP",
                                                                        time.time() - 50 + k)}))
            acks = [msgpack.unpackb((await ws.receive()).data) for _ in range(10)]
        elapsed = time.monotonic() - started
        assert [a["ack"] for a in acks] == list(range(10))
        assert sum(a["accepted"] for a in acks) == 200 and await stored(srv, "WSBP") == 200
        assert elapsed >= (200 - BURST) / RATE * 0.9


async def test_transports_share_one_bucket_per_token(settings: Settings) -> None:
    async with running(settings, rate_obs_per_s=10.0, rate_burst_obs=BURST,
                       max_obs_per_batch=BURST) as srv:
        gw = await srv.token("gateway")
        client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw)
        try:
            client.send_obs(rows(BURST, "SH"))
            assert (await client.recv_ack())["accepted"] == BURST
        finally:
            await client.close()
        r = await srv.client.post("/v1/telemetry", json=rows(5, "SH-http"), headers=auth(gw))
        assert r.status == 429


# -- connections per token ---------------------------------------------------------------------

async def test_connections_per_token_at_the_limit_and_one_past(settings: Settings) -> None:
    async with running(settings, conn_max_per_token=2) as srv:
        gw, other = await srv.token("gateway"), await srv.token("gateway", name="other")
        port = srv.gateway_port
        first = await GatewayClient.connect("127.0.0.1", port, gw, "a")
        async with srv.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
            # At the limit (one gateway + one WebSocket): both work.
            first.send_obs(rows(1, "C1"))
            assert (await first.recv_ack())["accepted"] == 1
            await ws.send_json({"seq": 1, "obs": rows(1, "C2")})
            assert (await ws.receive_json())["accepted"] == 1
            # One past: refused, with the reason, on either transport.
            third = await GatewayClient.connect("127.0.0.1", port, "", hello=False)
            third.send({"hello": 1, "token": gw, "name": "c"})
            assert await third.recv() == {
                "ok": False, "error": "too many open connections for this token (limit 2)"}
            await third.close()
            try:
                await srv.client.ws_connect("/v1/telemetry/ws", headers=auth(gw))
                raise AssertionError("a third connection was accepted")
            except aiohttp.WSServerHandshakeError as exc:
                assert exc.status == 429
            ok = await GatewayClient.connect("127.0.0.1", port, other, "b")  # another token
            await ok.close()
        await first.close()
        for _ in range(100):  # the server sees both closes
            if not srv.runtime.ingest.limits.connections.open:
                break
            await asyncio.sleep(0.02)
        again = await GatewayClient.connect("127.0.0.1", port, gw, "d")  # slots were freed
        await again.close()


async def test_feed_clients_at_the_limit_and_one_past(settings: Settings) -> None:
    async with running(settings, feed_max_clients=2, feed_heartbeat_s=0.2) as srv:
        reg = await srv.token("regulator")
        streams = [await srv.client.get("/v1/alerts/stream", headers=auth(reg))
                   for _ in range(2)]
        assert [s.status for s in streams] == [200, 200]
        busy = await srv.client.get("/v1/alerts/stream", headers=auth(reg))
        assert busy.status == 503 and busy.headers["Retry-After"] == "5"
        for s in streams:
            s.close()


# -- slowloris: header and body timeouts -------------------------------------------------------

@asynccontextmanager
async def real_server(settings: Settings, **changes: Any) -> AsyncIterator[tuple[int, Any]]:
    """The HTTP listener exactly as `lowalt serve` opens it."""
    s = replace(settings, **changes)
    app = create_app(s, with_gateway=False)
    runner = await start_http(app, s)
    try:
        yield runner.addresses[0][1], app[RUNTIME]
    finally:
        await runner.cleanup()


async def read_all(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await reader.read()


async def test_half_a_header_is_disconnected_after_the_header_timeout(settings: Settings) -> None:
    async with real_server(settings, http_header_timeout_s=0.5) as (port, _):
        # At the limit: the header completes in time and is answered.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.3)
        writer.write(b"Connection: close\r\n\r\n")
        assert (await read_all(reader, 5.0)).startswith(b"HTTP/1.1 200")
        writer.close()
        # One past: half a header, then nothing; the server hangs up.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert await read_all(reader, 5.0) == b""
        assert 0.45 <= time.monotonic() - started < 3.0
        writer.close()
        # A keep-alive connection that stays idle after an answer goes the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        await read_all(reader, 5.0)  # the body, then the close
        assert 0.45 <= time.monotonic() - started < 3.0
        writer.close()


async def test_slow_body_is_answered_408_after_the_body_timeout(settings: Settings) -> None:
    async with real_server(settings, http_body_timeout_s=0.5) as (port, rt):
        token = await make_token(rt.store, "gateway")
        body = b'[["SLOW", %f, 29.7, 106.6, 100.0]]' % (time.time() - 5)
        head = (f"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        # At the limit: the rest of the body comes in time.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body[:10])
        await asyncio.sleep(0.3)
        writer.write(body[10:])
        assert (await read_all(reader, 5.0)).startswith(b"HTTP/1.1 200")
        writer.close()
        # One past: half the body, then nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(head + body[:10])
        answer = await read_all(reader, 5.0)
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"request body not received within 0.5 s" in answer
        assert 0.45 <= time.monotonic() - started < 3.0
        writer.close()
        assert len(await rt.store.track("SLOW", 0, time.time(), 10)) == 1
