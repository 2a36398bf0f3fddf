"""The live traffic feed over loopback, on both backends: the bbox, the per-aircraft rate limit,
`gone` on leaving the view and on silence, who sees what, the WebSocket view change, slow
clients and the client limit."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientResponse, WSMsgType

from lowalt.app import RUNTIME
from lowalt.settings import Settings
from lowalt.storage import UavRecord
from tests.conftest import Server
from tests.test_feeds import SseReader, running, token_for
from tests.test_geofence_e2e import send

BBOX = "106.40,29.50,106.60,29.70"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(uav: str, lat: float, lon: float, t: float | None = None, **kw: Any) -> dict[str, Any]:
    return {"uav": uav, "t": time.time() if t is None else t, "lat": lat, "lon": lon,
            "alt_m": 300.0, "agl_m": 80.0, "speed_mps": 5.0, "track_deg": 90.0,
            "vspeed_mps": 0.0, "status": "airborne", **kw}


class TrafficSse:
    """Reads `traffic` events (JSON arrays) of an SSE response, remembering arrival times."""

    def __init__(self, resp: ClientResponse) -> None:
        self.sse = SseReader(resp)
        self.flushes: list[tuple[float, list[dict[str, Any]]]] = []
        self._cursor = 0

    async def flush(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        event = await self.sse.event(timeout_s)
        assert event is not None and event["event"] == "traffic", event
        items: list[dict[str, Any]] = event["data"]
        self.flushes.append((time.monotonic(), items))
        return items

    async def until(self, wanted: Any, timeout_s: float = 10.0) -> dict[str, Any]:
        """The next item, after the one `until` returned last, that satisfies wanted(item)."""
        async with asyncio.timeout(timeout_s):
            while True:
                items = self.items()
                while self._cursor < len(items):
                    item = items[self._cursor]
                    self._cursor += 1
                    if wanted(item):
                        return item
                await self.flush()

    def items(self) -> list[dict[str, Any]]:
        return [item for _, items in self.flushes for item in items]


@asynccontextmanager
async def traffic(client: Any, token: str, query: str = "") -> AsyncIterator[TrafficSse]:
    async with client.get(f"/v1/traffic/stream{query}", headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "text/event-stream"
        reader = TrafficSse(resp)
        assert await reader.flush() == []  # the (empty) view, at the first flush
        yield reader


async def test_bbox_and_gone_on_leaving_the_view(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    async with traffic(server.client, reg, f"?bbox={BBOX}&rate_hz=10") as feed:
        await send(server, gw, report("IN-1", 29.60, 106.50), report("OUT-1", 29.60, 106.90))
        state = await feed.until(lambda i: i.get("uav") == "IN-1")
        assert state["kind"] == "uav" and state["registered"] is False
        assert state["sources"] == ["gateway/http/native"]
        assert abs(state["lat"] - 29.60) < 1e-9 and abs(state["lon"] - 106.50) < 1e-9
        assert set(state) == {"uav", "t", "lat", "lon", "alt_m", "agl_m", "speed_mps",
                              "track_deg", "vspeed_mps", "kind", "sources", "status",
                              "registered", "acc_h_m", "acc_v_m"}
        await send(server, gw, report("IN-1", 29.60, 106.70))  # flies out of the box
        gone = await feed.until(lambda i: "gone" in i)
        assert gone == {"gone": "IN-1"}
        await send(server, gw, report("IN-1", 29.61, 106.50))  # and back in
        back = await feed.until(lambda i: i.get("uav") == "IN-1")
        assert back["lat"] == 29.61
    assert all(i.get("uav") != "OUT-1" and i.get("gone") != "OUT-1" for i in feed.items())


async def test_rate_limit_per_aircraft(server: Server) -> None:
    """Reports at 5 Hz; a rate_hz=1 client gets at most one update per second of them, a
    rate_hz=5 client more."""
    reg, gw = await server.token("regulator"), await server.token("gateway")
    async with traffic(server.client, reg, "?rate_hz=1") as slow, \
            traffic(server.client, reg, "?rate_hz=5") as fast:

        async def read(feed: TrafficSse) -> None:
            while True:
                await feed.flush(30)

        readers = [asyncio.create_task(read(f)) for f in (slow, fast)]
        started = time.monotonic()
        for k in range(16):  # 3 s of reports at 5 Hz
            await send(server, gw, report("FAST-1", 29.6, 106.5 + k * 1e-5))
            await asyncio.sleep(max(0.0, started + (k + 1) * 0.2 - time.monotonic()))
        sending_s = time.monotonic() - started
        await asyncio.sleep(1.5)  # the last report's flush
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    def updates(feed: TrafficSse) -> list[float]:
        return [lon for _, items in feed.flushes for i in items if i.get("uav") == "FAST-1"
                for lon in [i["lon"]]]

    slow_updates, fast_updates = updates(slow), updates(fast)
    # Flushes of a rate_hz=1 view are at least 1 s apart: over 3.2 s of reports that is at most
    # one at the first report, one per whole second after it, and one for the last report.
    assert 2 <= len(slow_updates) <= math.floor(sending_s) + 2, (sending_s, slow_updates)
    assert len(fast_updates) <= math.floor(sending_s * 5) + 2
    assert len(fast_updates) > len(slow_updates)
    assert slow_updates[-1] == fast_updates[-1] == round(106.5 + 15 * 1e-5, 7)  # the newest


async def test_gone_when_silent(settings: Settings) -> None:
    async with running(settings, traffic_gone_after_s=1.0) as c:
        reg, gw = await token_for(c, "regulator"), await token_for(c, "gateway")
        async with traffic(c, reg, "?rate_hz=10") as feed:
            r = await c.post("/v1/telemetry", json=[report("QUIET-1", 29.6, 106.5)],
                             headers=auth(gw))
            assert r.status == 200
            await feed.until(lambda i: i.get("uav") == "QUIET-1")
            assert await feed.until(lambda i: "gone" in i) == {"gone": "QUIET-1"}
        # A new client does not see an aircraft silent past the horizon.
        async with traffic(c, reg, "?rate_hz=10") as feed:
            await asyncio.sleep(0.3)
        assert feed.items() == []


async def test_operator_sees_only_its_own(server: Server) -> None:
    await server.runtime.registry.register(UavRecord("MINE-1", "op1"))
    await server.runtime.registry.register(UavRecord("THEIRS-1", "op2"))
    op1, gw = await server.token("operator", "op1"), await server.token("gateway")
    async with traffic(server.client, op1, "?rate_hz=10") as feed:
        await send(server, gw, report("THEIRS-1", 29.6, 106.5), report("UNREG-1", 29.6, 106.5))
        await send(server, gw, report("MINE-1", 29.6, 106.5))
        mine = await feed.until(lambda i: i.get("uav") == "MINE-1")
        assert mine["registered"] is True
        await asyncio.sleep(0.3)
    assert {i.get("uav") for i in feed.items()} == {"MINE-1"}
    c = server.client
    assert (await c.get("/v1/traffic/stream", headers=auth(gw))).status == 403
    assert (await c.get("/v1/traffic/ws", headers=auth(gw))).status == 403
    assert (await c.get("/v1/traffic/stream")).status == 401
    reg = await server.token("regulator")
    for bad in ("?rate_hz=0", "?rate_hz=10.5", "?rate_hz=x", "?bbox=1,2,3", "?bbox=5,5,4,4"):
        assert (await c.get(f"/v1/traffic/stream{bad}", headers=auth(reg))).status == 400, bad
    async with c.get(f"/v1/traffic/stream?access_token={reg}&rate_hz=10") as resp:
        assert resp.status == 200  # browsers: the token in the query


async def test_websocket_batches_and_view_change(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    await send(server, gw, report("WEST-1", 29.6, 106.45), report("EAST-1", 29.6, 106.75))
    async with server.client.ws_connect(f"/v1/traffic/ws?bbox={BBOX}&rate_hz=10",
                                        headers=auth(reg)) as ws:

        async def message() -> list[dict[str, Any]]:
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.TEXT
            items: list[dict[str, Any]] = json.loads(msg.data)
            return items

        assert [i["uav"] for i in await message()] == ["WEST-1"]  # the view, as one array
        await ws.send_str(json.dumps({"bbox": [106.7, 29.5, 106.8, 29.7], "rate_hz": 5}))
        changed = await message()
        assert changed[0] == {"gone": "WEST-1"} and [i["uav"] for i in changed[1:]] == ["EAST-1"]
        await ws.send_str(json.dumps({"bbox": [1, 2]}))
        assert "bbox" in json.loads((await ws.receive(timeout=10)).data)["error"]
        await send(server, gw, report("EAST-1", 29.61, 106.75))
        assert (await message())[0]["lat"] == 29.61  # still live after the bad message


async def test_slow_client_is_dropped_with_a_reason(settings: Settings) -> None:
    async with running(settings, traffic_buffer_bytes=200) as c:
        reg, gw = await token_for(c, "regulator"), await token_for(c, "gateway")
        r = await c.post("/v1/telemetry", json=[report("BIG-1", 29.6, 106.5)], headers=auth(gw))
        assert r.status == 200
        await asyncio.sleep(0.3)  # the fusion stage runs after the ack
        async with c.get("/v1/traffic/stream?rate_hz=10", headers=auth(reg)) as resp:
            sse = SseReader(resp)
            event = await sse.event()  # one aircraft's state is more than the 200 bytes allowed
            assert event is not None and event["event"] == "disconnect"
            assert "slow consumer" in event["data"]["reason"]
            assert await sse.event() is None
        assert c.app[RUNTIME].metrics.value("lowalt_traffic_slow_total") == 1


async def test_client_limit(settings: Settings) -> None:
    async with running(settings, traffic_max_clients=1) as c:
        reg = await token_for(c, "regulator")
        async with c.get("/v1/traffic/stream", headers=auth(reg)) as first:
            assert first.status == 200
            busy = await c.get("/v1/traffic/ws", headers=auth(reg))
            assert busy.status == 503 and busy.headers["Retry-After"] == "5"
