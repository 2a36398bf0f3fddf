"""Geofences end to end: zones over HTTP, persisted, checked on every committed observation,
alerts out through dispatch; on both backends."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dispatch.service import DISPATCH
from lowalt.settings import Settings
from tests.conftest import GOLDEN, Server

JIANGBEI = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [106.642, 29.719]},
            "properties": {"id": "jiangbei-ctr", "name": "Jiangbei CTR",
                           "restriction": "prohibited", "radius_m": 3000, "lower_m": 0,
                           "upper_m": None, "reference": "agl", "approach_m": 500}}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
    """Poll until check() returns something truthy (alerts come after the ack, not with it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def alerts(server: Server, token: str, **params: str) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/alerts", params=params, headers=auth(token))
    assert r.status == 200
    # The UAVs here are not registered: leave out their `unregistered_uav` alerts (tested in
    # tests/test_registry_api.py) unless asked for by type.
    events: list[dict[str, Any]] = [e for e in (await r.json())["events"]
                                    if "type" in params or e["type"] != "unregistered_uav"]
    return events


async def send(server: Server, token: str, *obs: dict[str, Any]) -> dict[str, Any]:
    r = await server.client.post("/v1/telemetry", json=list(obs), headers=auth(token))
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


def obs(uav: str, t: float, lat: float, lon: float, agl_m: float = 80.0) -> dict[str, Any]:
    return {"uav": uav, "t": t, "lat": lat, "lon": lon, "alt_m": agl_m + 200.0, "agl_m": agl_m,
            "status": "airborne"}


async def test_zone_crud_roles_and_validation(server: Server) -> None:
    reg, op = await server.token("regulator"), await server.token("operator", operator="op1")
    r = await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(op))
    assert r.status == 403
    r = await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(reg))
    assert r.status == 201
    assert (await r.json())["properties"]["id"] == "jiangbei-ctr"
    r = await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(reg))
    assert r.status == 409
    bad = json.loads(json.dumps(JIANGBEI))
    bad["properties"].update(id="x", radius_m=-5)
    r = await server.client.post("/v1/zones", json=bad, headers=auth(reg))
    body = await r.json()
    assert r.status == 400 and body["field"] == "properties.radius_m"
    r = await server.client.get("/v1/zones", headers=auth(op))
    assert [f["properties"]["id"] for f in (await r.json())["features"]] == ["jiangbei-ctr"]
    r = await server.client.get("/v1/zones/jiangbei-ctr", headers=auth(op))
    assert (await r.json())["properties"]["radius_m"] == 3000
    r = await server.client.delete("/v1/zones/jiangbei-ctr", headers=auth(op))
    assert r.status == 403
    r = await server.client.delete("/v1/zones/jiangbei-ctr", headers=auth(reg))
    assert r.status == 200
    r = await server.client.get("/v1/zones/jiangbei-ctr", headers=auth(reg))
    assert r.status == 404


async def test_breach_approach_and_ceiling_raise_alerts(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    assert (await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(reg))).status == 201
    now = time.time()
    await send(server, gw,
               obs("INTRUDER", now - 1, 29.719, 106.642),       # inside the 3 km circle
               obs("NEARBY", now - 1, 29.719 + 0.0295, 106.642),  # ~3.27 km north: approach
               obs("HIGH", now - 1, 29.60, 106.50, agl_m=150.0),  # far away, above 120 m AGL
               obs("CLEAR", now - 1, 29.60, 106.40))
    events = await eventually(
        lambda: _when(alerts(server, reg), lambda e: len(e) >= 3))
    by_uav = {e["uav"]: e for e in events}
    assert by_uav["INTRUDER"]["type"] == "geofence_breach"
    assert by_uav["INTRUDER"]["zone"] == "jiangbei-ctr"
    assert by_uav["INTRUDER"]["severity"] == "critical"
    assert by_uav["NEARBY"]["type"] == "geofence_approach"
    assert 0 < by_uav["NEARBY"]["detail"]["distance_m"] <= 500
    assert by_uav["HIGH"]["type"] == "altitude_limit"
    assert by_uav["HIGH"]["detail"]["agl_m"] == 150.0
    assert "CLEAR" not in by_uav
    assert all(e["state"] == "open" for e in events)


async def _when(events: Awaitable[list[dict[str, Any]]],
                ok: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]] | None:
    result = await events
    return result if ok(result) else None


async def test_breach_resolves_with_hysteresis_after_leaving(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(reg))
    now = time.time() - 30
    await send(server, gw, obs("U", now, 29.719, 106.642))
    await eventually(lambda: alerts(server, reg, type="geofence_breach"))
    await send(server, gw, obs("U", now + 1, 29.80, 106.642))  # out: not yet resolved
    await send(server, gw, obs("U", now + 2, 29.719, 106.642))  # back in: same alert
    await send(server, gw, obs("U", now + 3, 29.80, 106.642))
    await send(server, gw, obs("U", now + 10, 29.80, 106.642))  # clear for > 3 s: resolved
    events = await eventually(lambda: _when(
        alerts(server, reg, type="geofence_breach"),
        lambda e: any(x["state"] == "resolved" for x in e)))
    assert len({e["alert_id"] for e in events}) == 1
    assert events[0]["state"] == "open" and events[-1]["state"] == "resolved"


async def test_ed269_import_export_and_persistence(server: Server, settings: Settings) -> None:
    reg = await server.token("regulator")
    doc = json.loads((GOLDEN / "ed269_sample.json").read_text())
    r = await server.client.post("/v1/zones/import", params={"format": "ed269"}, json=doc,
                                 headers=auth(reg))
    assert r.status == 201, await r.text()
    imported = (await r.json())["imported"]
    assert len(imported) == 2
    r = await server.client.get("/v1/zones", params={"format": "ed269"}, headers=auth(reg))
    exported = await r.json()
    assert len(exported["features"]) == 2
    broken = json.loads(json.dumps(doc))
    broken["features"][1]["geometry"][0]["uomDimensions"] = "YARDS"
    r = await server.client.post("/v1/zones/import", params={"format": "ed269"}, json=broken,
                                 headers=auth(reg))
    assert r.status == 400
    assert "features[1]" in (await r.json())["error"]
    # The store holds them: a second app on the same database loads them at start.
    from geofence.service import zone_store_for, zones_from_stored
    from lowalt.storage import create_store

    store = create_store(settings)
    await store.open()
    try:
        loaded = zones_from_stored(await zone_store_for(store).load())
    finally:
        await store.close()
    assert sorted(z.id for z in loaded) == sorted(imported)


async def test_temporary_zone_tells_uavs_already_inside(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time()
    await send(server, gw, obs("HOVER", now - 1, 29.70, 106.50))
    incident = {"type": "Feature",
                "geometry": {"type": "Point", "coordinates": [106.50, 29.70]},
                "properties": {"id": "fire-1", "restriction": "prohibited", "radius_m": 800,
                               "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}}
    r = await server.client.post("/v1/zones", json=incident, headers=auth(reg))
    assert r.status == 201
    # No new report from HOVER: the alert comes from the live picture at once.
    manager = server.client.app[DISPATCH].manager  # type: ignore[union-attr]
    await eventually(lambda: _async(lambda: [a for a in manager.open_alerts()
                                             if a["uav"] == "HOVER" and a["zone"] == "fire-1"]))


async def _async(fn: Callable[[], Any]) -> Any:
    return fn()


async def test_crewed_traffic_is_not_held_to_uav_geofences(server: Server) -> None:
    """An airliner on approach (ADS-B) is inside the airport zone and above 120 m by design."""
    from datetime import UTC, datetime

    from ingest.client import GatewayClient

    reg, gw = await server.token("regulator"), await server.token("gateway")
    await server.client.post("/v1/zones", json=JIANGBEI, headers=auth(reg))
    when = datetime.fromtimestamp(int(time.time()) - 2, UTC)
    d, t = when.strftime("%Y/%m/%d"), when.strftime("%H:%M:%S.000")
    line = f"MSG,3,1,1,7812C5,1,{d},{t},{d},{t},,1275,,,29.72000,106.64000,,,0,0,0,0\r\n"
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "adsb")
    client.send({"seq": 1, "sbs": line})
    assert (await client.recv_ack())["accepted"] == 1
    await client.close()
    await send(server, gw, obs("DRONE", time.time() - 1, 29.72, 106.64))  # same place: breach
    events = await eventually(lambda: alerts(server, reg, type="geofence_breach"))
    assert [e["uav"] for e in events] == ["DRONE"]
    assert await alerts(server, reg, type="altitude_limit") == []
