"""Each limit at the limit and one past it, end to end over loopback on both backends."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from aiohttp import WSMsgType

from ingest.client import GatewayClient
from lowalt.settings import Settings
from tests.conftest import Server, running

MAX_BODY = 8192
MAX_OBS = 40
MAX_WS = 4096
MAX_FRAME = 4096


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Server]:
    """A server with small limits, so that exact-size messages are cheap to build."""
    async with running(settings, max_body_bytes=MAX_BODY, max_obs_per_batch=MAX_OBS,
                       max_ws_message_bytes=MAX_WS, max_frame_bytes=MAX_FRAME) as srv:
        yield srv


def rows(n: int, uav: str) -> list[list[Any]]:
    t0 = time.time() - 100.0
    return [[uav, t0 + i * 0.01, 29.7, 106.6, 120.0] for i in range(n)]


def padded_json(payload: Any, size: int) -> bytes:
    """JSON of exactly `size` bytes: trailing whitespace is valid JSON."""
    body = json.dumps(payload).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def padded_msgpack(payload: dict[str, Any], size: int) -> bytes:
    """MessagePack of exactly `size` bytes, padded by a key the server ignores."""
    for pad in range(size):
        body: bytes = msgpack.packb({**payload, "pad": "x" * pad})
        if len(body) == size:
            return body
    raise AssertionError(f"cannot build {size} bytes")


def auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


async def stored(server: Server, uav: str) -> int:
    return len(await server.runtime.store.track(uav, 0, time.time() + 10, 10_000))


async def test_http_body_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    headers = auth(gw, **{"Content-Type": "application/json"})
    body = padded_json(rows(3, "BODY"), MAX_BODY)
    r = await limited.client.post("/v1/telemetry", data=body, headers=headers)
    assert r.status == 200 and (await r.json())["accepted"] == 3
    body = padded_json(rows(3, "BODY+1"), MAX_BODY + 1)
    r = await limited.client.post("/v1/telemetry", data=body, headers=headers)
    assert r.status == 413
    assert await stored(limited, "BODY+1") == 0


async def test_http_observations_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    r = await limited.client.post("/v1/telemetry", json=rows(MAX_OBS, "N"), headers=auth(gw))
    assert r.status == 200 and (await r.json())["accepted"] == MAX_OBS
    r = await limited.client.post("/v1/telemetry", json={"obs": rows(MAX_OBS + 1, "N+1")},
                                  headers=auth(gw))
    assert r.status == 413
    assert (await r.json())["error"] == (
        f"{MAX_OBS + 1} observations exceed the limit of {MAX_OBS} per request")
    assert await stored(limited, "N+1") == 0


async def test_websocket_message_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    async with limited.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
        await ws.send_bytes(padded_msgpack({"seq": 1, "obs": rows(3, "WS")}, MAX_WS))
        msg = await ws.receive()
        assert msg.type == WSMsgType.BINARY
        assert msgpack.unpackb(msg.data) == {"ack": 1, "accepted": 3, "duplicates": 0,
                                             "rejected": []}
        await ws.send_str(padded_json({"seq": 2, "obs": rows(2, "WS-T")}, MAX_WS).decode())
        msg = await ws.receive()
        assert msg.type == WSMsgType.TEXT and json.loads(msg.data)["ack"] == 2
        await ws.send_bytes(padded_msgpack({"seq": 3, "obs": rows(3, "WS+1")}, MAX_WS + 1))
        msg = await ws.receive()
        assert msg.type == WSMsgType.CLOSE and msg.data == 1009  # message too big
    assert await stored(limited, "WS") == 3 and await stored(limited, "WS+1") == 0


async def test_websocket_observations_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    async with limited.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
        await ws.send_bytes(msgpack.packb({"seq": 1, "obs": rows(MAX_OBS, "WN")}))
        await ws.send_bytes(msgpack.packb({"seq": 2, "obs": rows(MAX_OBS + 1, "WN+1")}))
        first, second = [msgpack.unpackb((await ws.receive()).data) for _ in range(2)]
    assert first["ack"] == 1 and first["accepted"] == MAX_OBS
    assert second["frame"] == 2 and "exceed the limit" in second["error"]
    assert await stored(limited, "WN+1") == 0


async def test_gateway_frame_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    client = await GatewayClient.connect("127.0.0.1", limited.gateway_port, gw)
    try:
        client.send_raw(padded_msgpack({"seq": 1, "obs": rows(3, "GF")}, MAX_FRAME))
        assert await client.recv() == {"ack": 1, "accepted": 3, "duplicates": 0, "rejected": []}
        client.send_raw(padded_msgpack({"seq": 2, "obs": rows(3, "GF+1")}, MAX_FRAME + 1))
        assert await client.recv() == {
            "error": f"frame of {MAX_FRAME + 1} bytes exceeds max_frame ({MAX_FRAME})"}
        with pytest.raises(EOFError):
            await client.recv()
    finally:
        await client.close()
    assert await stored(limited, "GF") == 3 and await stored(limited, "GF+1") == 0


async def test_gateway_observations_at_limit_and_one_past(limited: Server) -> None:
    gw = await limited.token("gateway")
    client = await GatewayClient.connect("127.0.0.1", limited.gateway_port, gw)
    try:
        client.send_obs(rows(MAX_OBS, "GN"))
        client.send_obs(rows(MAX_OBS + 1, "GN+1"))
        client.send_obs(rows(1, "GN-after"))
        acks = [await client.recv() for _ in range(3)]
    finally:
        await client.close()
    assert acks[0]["ack"] == 1 and acks[0]["accepted"] == MAX_OBS
    assert acks[1]["seq"] == 2 and "exceed the limit" in acks[1]["error"]
    assert acks[2]["ack"] == 3  # the connection stays open
    assert await stored(limited, "GN+1") == 0
