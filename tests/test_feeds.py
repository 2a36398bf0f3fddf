"""The alert feeds over loopback, on both backends: the paged list and its filters, SSE with
Last-Event-ID resume (exactly once, across a reconnect while alerts keep coming), slow consumers,
the client limit, the WebSocket feed, and operators seeing only their own UAVs."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import ClientResponse, WSMsgType
from aiohttp.test_utils import TestClient, TestServer

from dispatch.alerts import AlertManager, Condition
from dispatch.service import DISPATCH
from lowalt.app import RUNTIME, create_app
from lowalt.settings import Settings, replace
from lowalt.storage import UavRecord
from tests.conftest import Server, make_token

T0 = 1_764_000_000.0


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def breach(uav: str, zone: str, t: float = T0, **kw: Any) -> Condition:
    kw.setdefault("lat", 29.70)
    kw.setdefault("lon", 106.60)
    return Condition(type=kw.pop("type", "geofence_breach"), uav=uav,
                     severity=kw.pop("severity", "critical"), t=t, alt_m=kw.pop("alt_m", 100.0),
                     zone=zone, **kw)


def manager_of(server: Server | TestClient[Any, Any]) -> AlertManager:
    client = server.client if isinstance(server, Server) else server
    manager: AlertManager = client.app[DISPATCH].manager
    return manager


@asynccontextmanager
async def running(settings: Settings, **changes: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """A whole server with changed settings (the `server` fixture's are the defaults)."""
    app = create_app(replace(settings, **changes), with_gateway=False)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def token_for(client: TestClient[Any, Any], role: str, operator: str | None = None) -> str:
    return await make_token(client.app[RUNTIME].store, role, operator)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Poll check() until it holds, for states that no event announces; fail after timeout_s."""
    step_s = 0.05
    for _ in range(int(timeout_s / step_s)):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"not reached within {timeout_s} s")


class SseReader:
    """Parses a text/event-stream response into {"id", "event", "data"} or {"comment"} blocks."""

    def __init__(self, resp: ClientResponse) -> None:
        self.resp = resp

    async def block(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next event or comment block; None at the end of the stream."""
        return await asyncio.wait_for(self._block(), timeout_s)

    async def _block(self) -> dict[str, Any] | None:
        fields: dict[str, Any] = {}
        while True:
            raw = await self.resp.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if line == "":
                if set(fields) - {"retry"}:
                    return fields
                fields = {}
                continue
            if line.startswith(":"):
                fields["comment"] = line[1:].strip()
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value

    async def event(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """The next event, skipping comments (heartbeats)."""
        while True:
            block = await self.block(timeout_s)
            if block is None or "comment" not in block:
                return block


async def test_list_filters_and_paging(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    m = manager_of(server)
    await m.open_or_update(breach("U1", "Z1"))
    await m.open_or_update(breach("U2", "Z9", lat=30.5, lon=107.5, type="altitude_limit",
                                  severity="warning"))
    await m.open_or_update(Condition("separation_loss", "U3", "critical", T0, 29.7, 106.6, 90.0,
                                     other_uav="U1", detail={"h_now_m": 30.0}))
    await m.resolve(("geofence_breach", "U1", "Z1"), T0 + 5)
    for k in range(6):
        await m.open_or_update(breach(f"M{k}", "Z2", T0 + k))
    await m.flush(10)
    c = server.client

    async def get(query: str, token: str = reg) -> Any:
        r = await c.get(f"/v1/alerts{query}", headers=auth(token))
        assert r.status == 200, await r.text()
        return await r.json()

    everything = await get("")
    assert [e["seq"] for e in everything["events"]] == list(range(1, 11))
    assert everything["next"] == 10
    assert everything["events"][0] == {
        "seq": 1, "alert_id": 1, "state": "open", "type": "geofence_breach",
        "severity": "critical", "uav": "U1", "other_uav": None, "zone": "Z1", "clearance": None,
        "t": T0, "raised_at": everything["events"][0]["raised_at"], "lat": 29.7, "lon": 106.6,
        "alt_m": 100.0, "detail": {},
    }
    assert [e["uav"] for e in (await get("?type=altitude_limit"))["events"]] == ["U2"]
    body = await get("?type=altitude_limit,separation_loss")
    assert [e["seq"] for e in body["events"]] == [2, 3]
    assert body["next"] == 10  # nothing else matches up to the head: skip past it
    assert [e["seq"] for e in (await get("?state=resolved"))["events"]] == [4]
    assert [e["seq"] for e in (await get("?uav=U1"))["events"]] == [1, 3, 4]  # as other_uav too
    assert [e["uav"] for e in (await get("?bbox=107,30,108,31"))["events"]] == ["U2"]
    assert (await get("?since=10"))["events"] == []
    pages, since = [], 0
    while True:
        page = await get(f"?since={since}&limit=3")
        if not page["events"]:
            break
        pages.append([e["seq"] for e in page["events"]])
        since = page["next"]
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    for bad in ("?type=nope", "?state=closed", "?limit=0", "?limit=10001", "?since=-1",
                "?since=x", "?bbox=1,2,3"):
        r = await c.get(f"/v1/alerts{bad}", headers=auth(reg))
        assert r.status == 400, bad
    assert (await c.get("/v1/alerts", headers=auth(gw))).status == 403
    assert (await c.get("/v1/alerts")).status == 401
    r = await c.get("/v1/alerts/open", headers=auth(reg))
    assert [(a["type"], a["uav"]) for a in (await r.json())["alerts"]][:2] == [
        ("separation_loss", "U3"), ("geofence_breach", "M0")]  # most severe first


async def test_operator_sees_only_its_uavs(server: Server) -> None:
    reg = server.runtime.registry
    await reg.register(UavRecord("MINE", "op1"))
    await reg.register(UavRecord("THEIRS", "op2"))
    op1, gw = await server.token("operator", "op1"), await server.token("gateway")
    m = manager_of(server)
    await m.open_or_update(breach("MINE", "Z1"))
    await m.open_or_update(breach("THEIRS", "Z1"))
    await m.open_or_update(Condition("separation_loss", "OTHER", "critical", T0, 29.7, 106.6,
                                     90.0, other_uav="MINE"))
    await m.flush(10)
    c = server.client
    r = await c.get("/v1/alerts", headers=auth(op1))
    assert [(e["uav"], e["other_uav"]) for e in (await r.json())["events"]] == [
        ("MINE", None), ("OTHER", "MINE")]
    r = await c.get("/v1/alerts?uav=THEIRS", headers=auth(op1))
    assert (await r.json())["events"] == []
    r = await c.get("/v1/alerts/open", headers=auth(op1))
    assert sorted(a["uav"] for a in (await r.json())["alerts"]) == ["MINE", "OTHER"]
    async with c.get("/v1/alerts/stream?since=0", headers=auth(op1)) as resp:
        sse = SseReader(resp)
        backlog = [await sse.event() for _ in range(2)]
        assert [e["data"]["uav"] for e in backlog if e is not None] == ["MINE", "OTHER"]
        await m.open_or_update(breach("THEIRS", "Z2"))
        await m.open_or_update(breach("MINE", "Z2"))
        live = await sse.event()
        assert live is not None and (live["data"]["uav"], live["id"]) == ("MINE", "5")
    for path in ("/v1/alerts/stream", "/v1/alerts/ws", "/v1/alerts/open"):
        assert (await c.get(path, headers=auth(gw))).status == 403


async def test_sse_resume_gets_every_event_exactly_once(server: Server) -> None:
    """Alerts keep coming while the client is connected, away, and reconnecting."""
    reg = await server.token("regulator")
    m = manager_of(server)
    total = 300

    async def produce() -> None:
        for k in range(total):
            await m.open_or_update(breach(f"S{k % 5}", f"Z{k}", T0 + k))
            await asyncio.sleep(0.002)

    producer = asyncio.create_task(produce())
    received: list[int] = []
    try:
        async with server.client.get("/v1/alerts/stream?since=0", headers=auth(reg)) as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            sse = SseReader(resp)
            while len(received) < 40:
                ev = await sse.event()
                assert ev is not None and ev["event"] == "geofence_breach"
                assert int(ev["id"]) == ev["data"]["seq"]
                received.append(ev["data"]["seq"])
        await asyncio.sleep(0.1)  # away while alerts are raised
        headers = {**auth(reg), "Last-Event-ID": str(received[-1])}
        async with server.client.get("/v1/alerts/stream?since=0", headers=headers) as resp:
            sse = SseReader(resp)  # Last-Event-ID wins over since=0
            while received[-1] < total:
                ev = await sse.event()
                assert ev is not None
                received.append(ev["data"]["seq"])
    finally:
        await producer
    assert received == list(range(1, total + 1))
    assert await m.flush(10) and m.committed_seq == total


async def test_sse_live_only_and_heartbeat(settings: Settings) -> None:
    async with running(settings, feed_heartbeat_s=0.2) as c:
        reg = await token_for(c, "regulator")
        m = manager_of(c)
        await m.open_or_update(breach("OLD", "Z1"))
        await m.flush(10)
        async with c.get("/v1/alerts/stream", headers=auth(reg)) as resp:
            sse = SseReader(resp)
            assert await sse.block() == {"comment": "keepalive"}  # nothing yet: a heartbeat
            await m.open_or_update(breach("NEW", "Z1"))
            ev = await sse.event()
            assert ev is not None and ev["data"]["uav"] == "NEW"  # no backlog without since


async def test_sse_slow_consumer_is_dropped_and_resumes(settings: Settings) -> None:
    async with running(settings, feed_queue_events=5, alert_commit_delay_s=0.05) as c:
        reg = await token_for(c, "regulator")
        m = manager_of(c)
        async with c.get("/v1/alerts/stream?since=0", headers=auth(reg)) as resp:
            sse = SseReader(resp)
            await m.open_or_update(breach("A", "Z0"))
            first = await sse.event()
            assert first is not None and first["id"] == "1"  # live now
            for k in range(1, 21):  # one commit of 20 events: more than the client's buffer
                await m.open_or_update(breach("A", f"Z{k}"))
            ev = await sse.event()
            assert ev is not None and ev["event"] == "disconnect"
            assert ev["data"]["last_event_id"] == 1 and "slow consumer" in ev["data"]["reason"]
            assert await sse.event() is None  # the server closed the stream
        async with c.get("/v1/alerts/stream", headers={**auth(reg), "Last-Event-ID": "1"}) as resp:
            sse = SseReader(resp)
            seqs = []
            for _ in range(20):
                ev = await sse.event()
                assert ev is not None
                seqs.append(int(ev["id"]))
            assert seqs == list(range(2, 22))
        metrics = c.app[RUNTIME].metrics
        assert metrics.value("lowalt_alert_feed_slow_total") == 1


async def test_feed_client_limit(settings: Settings) -> None:
    async with running(settings, feed_max_clients=1, feed_heartbeat_s=0.1) as c:
        reg = await token_for(c, "regulator")
        resp = await c.get("/v1/alerts/stream", headers=auth(reg))
        assert resp.status == 200
        busy = await c.get("/v1/alerts/stream", headers=auth(reg))
        assert busy.status == 503 and busy.headers["Retry-After"]
        assert (await c.get("/v1/alerts/ws", headers=auth(reg))).status == 503
        resp.close()
        for _ in range(100):  # the slot comes back once the server notices (next heartbeat)
            again = await c.get("/v1/alerts/stream", headers=auth(reg))
            if again.status == 200:
                again.close()
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the feed slot was never released")


async def test_websocket_feed(server: Server) -> None:
    reg = await server.token("regulator")
    m = manager_of(server)
    for k in range(3):
        await m.open_or_update(breach("W", f"Z{k}"))
    await m.flush(10)
    async with server.client.ws_connect("/v1/alerts/ws", headers=auth(reg)) as ws:
        await ws.send_str(json.dumps({"since": 1}))
        got = [json.loads((await ws.receive(timeout=10)).data)["seq"] for _ in range(2)]
        assert got == [2, 3]
        await m.open_or_update(breach("W", "Z9"))
        msg = await ws.receive(timeout=10)
        assert msg.type == WSMsgType.TEXT and json.loads(msg.data)["zone"] == "Z9"
    async with server.client.ws_connect("/v1/alerts/ws?type=altitude_limit&since=0",
                                        headers=auth(reg)) as ws:
        await m.open_or_update(breach("W", "Z10"))
        await m.open_or_update(breach("W", "Z1", type="altitude_limit", severity="warning"))
        event = json.loads((await ws.receive(timeout=10)).data)
        assert (event["type"], event["seq"]) == ("altitude_limit", 6)
    async with server.client.ws_connect("/v1/alerts/ws", headers=auth(reg)) as ws:
        # no since: only what is raised after connecting
        await m.open_or_update(breach("W", "Z11"))
        assert json.loads((await ws.receive(timeout=10)).data)["seq"] == 7
