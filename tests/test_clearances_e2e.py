"""Route clearances end to end (API.md section 5), on both backends: decisions over HTTP with
every denial reason, serialised decisions, persistence across a restart, cancel, expiry, operator
isolation, delivery on gateway and WebSocket connections, and conformance monitoring."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

from geofence.clearance_http import CLEARANCES
from ingest.client import GatewayClient
from lowalt.settings import Settings, replace
from tests.conftest import Server, running
from tests.test_geofence_e2e import alerts, auth, eventually, send

M_PER_DEG_LAT = 110_845.0
M_PER_DEG_LON = 96_870.0  # at 29.6 N


def at(x_m: float, y_m: float, lon0: float, lat0: float, alt_m: float = 100.0) -> list[float]:
    """[lon, lat, alt_m] x_m east and y_m north of (lon0, lat0)."""
    return [lon0 + x_m / M_PER_DEG_LON, lat0 + y_m / M_PER_DEG_LAT, alt_m]


def east_west(lat0: float, lon0: float = 106.50, alt_m: float = 100.0, length_m: float = 2000.0
              ) -> list[list[float]]:
    return [at(-length_m / 2, 0, lon0, lat0, alt_m), at(length_m / 2, 0, lon0, lat0, alt_m)]


def south_north(lat0: float, lon0: float = 106.50, alt_m: float = 100.0) -> list[list[float]]:
    return [at(0, -1000, lon0, lat0, alt_m), at(0, 1000, lon0, lat0, alt_m)]


def ask(uav: str, coords: list[list[float]], departure: float, speed: float = 10.0,
        corridor: float = 30.0, vertical: float = 15.0) -> dict[str, Any]:
    return {"uav": uav, "route": {"type": "LineString", "coordinates": coords},
            "departure": departure, "speed_mps": speed, "corridor_m": corridor,
            "vertical_m": vertical}


async def post(server: Server, token: str, body: Any, status: int = 201) -> dict[str, Any]:
    r = await server.client.post("/v1/clearances", json=body, headers=auth(token))
    assert r.status == status, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


async def get(server: Server, token: str, cid: str, status: int = 200) -> dict[str, Any]:
    r = await server.client.get(f"/v1/clearances/{cid}", headers=auth(token))
    assert r.status == status, await r.text()
    answer: dict[str, Any] = await r.json()
    return answer


def zone(zid: str, restriction: str, lon: float, lat: float, radius_m: float,
         **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"id": zid, "restriction": restriction, "radius_m": radius_m,
                           "lower_m": 0, "upper_m": None, "reference": "agl", **props}}


async def test_granted_when_clear_and_denied_with_every_reason(server: Server) -> None:
    adm = await server.token("admin")
    now = time.time()
    for feature in (zone("no-fly", "prohibited", 106.50, 29.62, 200),
                    zone("hospital", "authorization_required", 106.50, 29.64, 200,
                         authorized=["MED-1"])):
        r = await server.client.post("/v1/zones", json=feature, headers=auth(adm))
        assert r.status == 201
    dep = now + 600

    first = await post(server, adm, ask("A-1", east_west(29.60), dep))
    assert first["state"] == "granted" and first["reasons"] == []
    assert first["uav"] == "A-1" and first["speed_mps"] == 10 and first["corridor_m"] == 30
    assert first["route"]["coordinates"] == east_west(29.60)
    assert first["valid_from"] == dep
    assert math.isclose(first["valid_to"] - dep, 200.0, rel_tol=3e-3)
    assert await get(server, adm, first["id"]) == first

    # another granted clearance in space AND time: named, with when
    crossing = await post(server, adm, ask("A-2", south_north(29.60), dep))
    assert crossing["state"] == "denied"
    assert [r["clearance"] for r in crossing["reasons"]] == [first["id"]]
    assert dep - 30 <= crossing["reasons"][0]["at"] <= dep + 100
    # the same corridor at a time that does not overlap; the same time, corridors apart
    later = await post(server, adm, ask("A-3", east_west(29.60), dep + 600))
    apart = await post(server, adm, ask("A-4", east_west(29.60 + 300 / M_PER_DEG_LAT), dep))
    assert later["state"] == "granted" and apart["state"] == "granted"

    no_fly = await post(server, adm, ask("B-1", east_west(29.62), dep))
    assert no_fly["state"] == "denied"
    assert [r["zone"] for r in no_fly["reasons"]] == ["no-fly"]

    stranger = await post(server, adm, ask("C-1", east_west(29.64), dep))
    assert [r.get("zone") for r in stranger["reasons"]] == ["hospital"]
    medic = await post(server, adm, ask("MED-1", east_west(29.64), dep))
    assert medic["state"] == "granted"

    high = await post(server, adm, ask("D-1", east_west(29.66, alt_m=110.0), dep))
    assert high["state"] == "denied"
    assert high["reasons"][0]["ceiling"] == 120.0 and high["reasons"][0]["agl_m"] == 125.0

    # every reason at once: across no-fly, the hospital and MED-1's corridor (when MED-1 is
    # there), too high
    across = [at(0, -1500, 106.50, 29.63, 110.0), at(0, 1500, 106.50, 29.63, 110.0)]
    everything = await post(server, adm, ask("E-1", across, dep - 150))
    kinds = sorted(next(iter(r)) for r in everything["reasons"])
    assert kinds == ["ceiling", "clearance", "zone", "zone"]
    assert {r.get("zone") for r in everything["reasons"]} >= {"no-fly", "hospital"}
    assert [r["clearance"] for r in everything["reasons"] if "clearance" in r] == [medic["id"]]
    granted = await server.client.app[CLEARANCES].search(
        operator=None, all_operators=True, state="granted", uav=None, limit=100)
    assert {c.uav for c in granted} == {"A-1", "A-3", "A-4", "MED-1"}


async def test_bad_requests_name_the_field(server: Server) -> None:
    adm = await server.token("admin")
    now = time.time()
    good = ask("V-1", east_west(29.60), now + 60)
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "speed_mps": 100.5}, "speed_mps"),
        ({**good, "corridor_m": 4}, "corridor_m"),
        ({**good, "vertical_m": 501}, "vertical_m"),
        ({**good, "departure": now + 86400 + 60}, "departure"),
        ({**good, "route": {"type": "LineString", "coordinates": [[106.5, 29.6, 100]]}},
         "route.coordinates"),
        ({**good, "route": {"type": "LineString",
                            "coordinates": [[106.5, 29.6, 100], [106.6, 95, 100]]}},
         "route.coordinates[1][1]"),
    ]
    for body, field in cases:
        answer = await post(server, adm, body, status=400)
        assert answer["field"] == field, answer
    r = await server.client.post("/v1/clearances", data=b"{", headers=auth(adm))
    assert r.status == 400


async def test_simultaneous_requests_for_the_same_airspace_grant_exactly_one(
    server: Server,
) -> None:
    adm = await server.token("admin")
    dep = time.time() + 300
    answers = await asyncio.gather(*(
        post(server, adm, ask(f"RUSH-{k}", east_west(29.70), dep)) for k in range(10)
    ))
    granted = [a for a in answers if a["state"] == "granted"]
    assert len(granted) == 1
    for a in answers:
        if a is not granted[0]:
            assert [r["clearance"] for r in a["reasons"]] == [granted[0]["id"]]


async def test_persists_across_restart_and_cancel_frees_the_airspace(
    settings: Settings,
) -> None:
    dep = time.time() + 900
    async with running(settings) as first:
        adm = await first.token("admin")
        kept = await post(first, adm, ask("P-1", east_west(29.72), dep))
        denied = await post(first, adm, ask("P-2", south_north(29.72), dep))
        assert kept["state"] == "granted" and denied["state"] == "denied"
    async with running(settings) as second:
        assert await get(second, adm, kept["id"]) == kept
        assert (await get(second, adm, denied["id"]))["reasons"] == denied["reasons"]
        again = await post(second, adm, ask("P-3", south_north(29.72), dep))
        assert [r["clearance"] for r in again["reasons"]] == [kept["id"]]
        r = await second.client.delete(f"/v1/clearances/{kept['id']}", headers=auth(adm))
        assert r.status == 200 and (await r.json())["state"] == "cancelled"
        r = await second.client.delete(f"/v1/clearances/{kept['id']}", headers=auth(adm))
        assert r.status == 409
        r = await second.client.delete("/v1/clearances/c-nosuchthing", headers=auth(adm))
        assert r.status == 404
        freed = await post(second, adm, ask("P-3", south_north(29.72), dep))
        assert freed["state"] == "granted"
    async with running(settings) as third:
        assert (await get(third, adm, kept["id"]))["state"] == "cancelled"
        assert list(third.client.app[CLEARANCES].live) == [freed["id"]]


async def test_expiry(settings: Settings) -> None:
    quick = replace(settings, clearance_time_tolerance_s=1.0, clearance_expiry_interval_s=0.1)
    async with running(quick) as server:
        adm = await server.token("admin")
        now = time.time()
        short = [at(0, 0, 106.5, 29.74), at(20, 0, 106.5, 29.74)]
        c = await post(server, adm, ask("X-1", short, now))
        assert c["state"] == "granted" and abs(c["valid_to"] - (now + 2.0)) < 0.01

        async def expired() -> bool:
            return bool((await get(server, adm, c["id"]))["state"] == "expired")

        await eventually(expired)
        assert c["id"] not in server.client.app[CLEARANCES].live
        r = await server.client.delete(f"/v1/clearances/{c['id']}", headers=auth(adm))
        assert r.status == 409


async def test_operators_see_and_ask_only_for_their_own(server: Server) -> None:
    reg = await server.token("regulator")
    op_a = await server.token("operator", operator="opA")
    op_b = await server.token("operator", operator="opB")
    gw = await server.token("gateway")
    for uav, operator in (("OWN-A", "opA"), ("OWN-B", "opB")):
        r = await server.client.post("/v1/uavs", json={"uav": uav, "operator": operator},
                                     headers=auth(reg))
        assert r.status == 201
    dep = time.time() + 600
    mine = await post(server, op_a, ask("OWN-A", east_west(29.76), dep))
    assert mine["state"] == "granted"
    await post(server, op_a, ask("OWN-B", east_west(29.78), dep), status=403)
    await post(server, op_a, ask("NOBODY", east_west(29.80), dep), status=403)
    await post(server, gw, ask("OWN-A", east_west(29.82), dep), status=403)
    theirs = await post(server, op_b, ask("OWN-B", east_west(29.78), dep))

    assert (await get(server, op_a, mine["id"]))["id"] == mine["id"]
    await get(server, op_a, theirs["id"], status=404)
    await get(server, gw, mine["id"], status=403)
    r = await server.client.delete(f"/v1/clearances/{theirs['id']}", headers=auth(op_a))
    assert r.status == 404
    assert (await get(server, reg, theirs["id"]))["uav"] == "OWN-B"
    await post(server, reg, ask("OWN-A", east_west(29.82), dep), status=403)  # regulators read
    service = server.client.app[CLEARANCES]
    own = await service.search(operator="opA", all_operators=False, state=None, uav=None,
                               limit=10)
    assert [c.id for c in own] == [mine["id"]]
    r = await server.client.delete(f"/v1/clearances/{mine['id']}", headers=auth(op_a))
    assert r.status == 200
    r = await server.client.delete(f"/v1/clearances/{theirs['id']}", headers=auth(reg))
    assert r.status == 200


async def test_list_shows_operators_their_own_and_regulators_all(server: Server) -> None:
    adm, reg = await server.token("admin"), await server.token("regulator")
    op_a = await server.token("operator", operator="opA")
    gw = await server.token("gateway")
    await server.client.post("/v1/uavs", json={"uav": "L-A", "operator": "opA"},
                             headers=auth(reg))
    dep = time.time() + 600
    mine = await post(server, op_a, ask("L-A", east_west(29.92), dep))
    other = await post(server, adm, ask("L-X", east_west(29.92), dep))  # denied: same airspace
    r = await server.client.get("/v1/clearances", headers=auth(reg))
    assert r.status == 200
    assert [c["id"] for c in (await r.json())["clearances"]] == [other["id"], mine["id"]]
    r = await server.client.get("/v1/clearances", params={"state": "denied"}, headers=auth(reg))
    assert [c["id"] for c in (await r.json())["clearances"]] == [other["id"]]
    r = await server.client.get("/v1/clearances", headers=auth(op_a))
    assert [c["id"] for c in (await r.json())["clearances"]] == [mine["id"]]
    r = await server.client.get("/v1/clearances", params={"state": "bogus"}, headers=auth(reg))
    assert r.status == 400 and (await r.json())["field"] == "state"
    r = await server.client.get("/v1/clearances", headers=auth(gw))
    assert r.status == 403


# -- delivery on open connections ---------------------------------------------------------------
async def next_push(recv: Any) -> dict[str, Any]:
    """The next {"clearance": ...} frame, skipping acks."""
    async with asyncio.timeout(10):
        while True:
            frame = await recv()
            if "clearance" in frame:
                clearance: dict[str, Any] = frame["clearance"]
                return clearance


def obs(uav: str, t: float, where: list[float], status: str = "airborne") -> dict[str, Any]:
    return {"uav": uav, "t": t, "lon": where[0], "lat": where[1], "alt_m": where[2],
            "status": status}


async def test_gateway_connection_receives_its_uavs_clearances(server: Server) -> None:
    adm, gw = await server.token("admin"), await server.token("gateway")
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, name="relay")
    try:
        now = time.time()
        route = [at(0, 0, 106.5, 29.84), at(200, 0, 106.5, 29.84)]
        client.send_obs([obs("PUSH-1", now - 5, route[0], "ground")])
        assert (await client.recv_ack())["accepted"] == 1
        granted = await post(server, adm, ask("PUSH-1", route, now))
        pushed = await next_push(client.recv)
        assert pushed == granted and pushed["state"] == "granted"

        client.send_obs([obs("PUSH-1", now + 0.5, route[0])])
        assert (await next_push(client.recv))["state"] == "active"
        client.send_obs([obs("PUSH-1", now + 2.0, route[1])])  # at the end, 18 s early
        done = await next_push(client.recv)
        assert done["state"] == "completed" and done["id"] == granted["id"]

        other = await post(server, adm, ask("PUSH-1", route, time.time() + 600))
        assert (await next_push(client.recv))["id"] == other["id"]
        r = await server.client.delete(f"/v1/clearances/{other['id']}", headers=auth(adm))
        assert r.status == 200
        cancelled = await next_push(client.recv)
        assert cancelled["id"] == other["id"] and cancelled["state"] == "cancelled"
    finally:
        await client.close()


async def test_websocket_connection_receives_its_uavs_clearances(server: Server) -> None:
    adm, gw = await server.token("admin"), await server.token("gateway")
    now = time.time()
    route = [at(0, 0, 106.5, 29.86), at(200, 0, 106.5, 29.86)]
    async with server.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
        await ws.send_str(json.dumps({"seq": 1, "obs": [obs("PUSH-2", now - 5, route[0])]}))

        async def recv() -> dict[str, Any]:
            frame: dict[str, Any] = json.loads(await ws.receive_str())
            return frame

        assert (await recv())["ack"] == 1
        granted = await post(server, adm, ask("PUSH-2", route, now + 600))
        assert await next_push(recv) == granted
        r = await server.client.delete(f"/v1/clearances/{granted['id']}", headers=auth(adm))
        assert r.status == 200
        assert (await next_push(recv))["state"] == "cancelled"
    # a closed connection is forgotten: nothing is pushed to it any more
    hub = server.runtime.ingest.push_hub
    await eventually(lambda: _async(hub.sessions("PUSH-2") == 0))


async def _async(value: Any) -> Any:
    return value


# -- conformance ---------------------------------------------------------------------------------
async def events_of(server: Server, token: str, kind: str, cid: str) -> list[dict[str, Any]]:
    return [e for e in await alerts(server, token, type=kind) if e["clearance"] == cid]


async def test_conformance_active_off_route_resolved_and_completed(server: Server) -> None:
    adm, gw = await server.token("admin"), await server.token("gateway")
    dep = math.floor(time.time()) - 25  # 600 m at 20 m/s: the flight ends 5 s from now
    lat0 = 29.88

    def p(x_m: float, y_m: float = 0.0, alt_m: float = 100.0) -> list[float]:
        return at(x_m, y_m, 106.5, lat0, alt_m)

    c = await post(server, adm, ask("FLY-1", [p(0), p(600)], dep, speed=20.0, corridor=30.0,
                                    vertical=15.0))
    assert c["state"] == "granted"
    cid = c["id"]
    await send(server, gw, obs("FLY-1", dep + 1, p(20)))

    async def state_is(wanted: str) -> bool:
        return bool((await get(server, adm, cid))["state"] == wanted)

    await eventually(lambda: state_is("active"))

    await send(server, gw, obs("FLY-1", dep + 5, p(100, 100)))  # 100 m off a 30 m corridor
    opened = await eventually(lambda: events_of(server, adm, "off_route", cid))
    assert opened[0]["state"] == "open" and opened[0]["uav"] == "FLY-1"
    assert abs(opened[0]["detail"]["distance_m"] - 100.0) < 1.0
    assert opened[0]["detail"]["vertical_m"] == 0.0
    await send(server, gw, obs("FLY-1", dep + 6, p(120, 100)))
    await send(server, gw, obs("FLY-1", dep + 8, p(160)))  # back in the corridor
    await send(server, gw, obs("FLY-1", dep + 12, p(240)))  # clear for 4 s > alert_clear_s
    resolved = await eventually(lambda: _resolved(events_of(server, adm, "off_route", cid)))
    assert len({e["alert_id"] for e in resolved}) == 1

    await send(server, gw, obs("FLY-1", dep + 14, p(280, 0, 140)))  # 40 m above the route
    high = await eventually(lambda: _opened_after(
        events_of(server, adm, "off_route", cid), resolved[-1]["seq"]))
    assert high[0]["detail"]["vertical_m"] == 40.0 and high[0]["detail"]["distance_m"] < 1.0

    await send(server, gw, obs("FLY-1", dep + 29, p(590)))  # at the end
    await eventually(lambda: state_is("completed"))
    # the clearance is over: its open alert is resolved at once, and it reserves nothing
    await eventually(lambda: _resolved(events_of(server, adm, "off_route", cid), count=2))
    assert cid not in server.client.app[CLEARANCES].live
    assert await events_of(server, adm, "clearance_violation", cid) == []


async def _resolved(events: Any, count: int = 1) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = await events
    return found if sum(e["state"] == "resolved" for e in found) >= count else None


async def _opened_after(events: Any, seq: int) -> list[dict[str, Any]] | None:
    found: list[dict[str, Any]] = [e for e in await events if e["seq"] > seq]
    return found or None


async def test_flying_before_departure_less_tolerance_is_a_violation(server: Server) -> None:
    adm, gw = await server.token("admin"), await server.token("gateway")
    now = math.floor(time.time())
    route = east_west(29.90)
    c = await post(server, adm, ask("EARLY-1", route, now - 25))
    await send(server, gw, obs("EARLY-1", now - 145, route[0]))  # 90 s before departure - 30 s
    events = await eventually(lambda: events_of(server, adm, "clearance_violation", c["id"]))
    assert events[0]["state"] == "open" and events[0]["detail"]["early_s"] == 90.0
    assert (await get(server, adm, c["id"]))["state"] == "active"
    # on time, it resolves (hysteresis: 3 s of observation time)
    await send(server, gw, obs("EARLY-1", now - 50, route[0]))
    await send(server, gw, obs("EARLY-1", now - 46, route[0]))
    await eventually(lambda: _resolved(events_of(server, adm, "clearance_violation", c["id"])))


async def test_a_granted_corridor_authorises_its_zone_and_only_inside(server: Server) -> None:
    """Issue 7: a clearance through an authorisation-required zone suppresses the breach there;
    outside its corridor it does not. (A normal request through such a zone is denied unless the
    UAV holds a permit, which exempts it anyway; a regulator's priority clearance is granted
    through it, so that is the case that needs the corridor to authorise the flight.)"""
    adm, gw = await server.token("regulator"), await server.token("gateway")
    lat0 = 29.66
    r = await server.client.post("/v1/zones", json=zone("campus", "authorization_required",
                                                         106.50, lat0, 400), headers=auth(adm))
    assert r.status == 201
    now = time.time()
    route = east_west(lat0, length_m=600.0)  # all of it inside the 400 m zone
    granted = await post(server, adm, {**ask("DEL-1", route, now - 25, speed=10.0),
                                       "priority": "emergency"})
    assert granted["state"] == "granted"
    assert [r.get("zone") for r in granted["reasons"]] == ["campus"]  # noted, overridden
    # On the route where it should be (240 m along at 10 m/s), in the zone: authorised.
    await send(server, gw, obs("DEL-1", now - 1, at(-60, 0, 106.50, lat0)))
    # Another UAV at the same place, with no clearance: a breach.
    await send(server, gw, obs("OTHER", now - 1, at(-60, 0, 106.50, lat0)))
    events = await eventually(lambda: alerts(server, adm, type="geofence_breach"))
    assert [e["uav"] for e in events] == ["OTHER"]
    # DEL-1 leaves its corridor (200 m north, still inside the 400 m zone): now a breach.
    await send(server, gw, obs("DEL-1", now, at(-50, 200, 106.50, lat0)))
    events = await eventually(lambda: _async_filter(
        alerts(server, adm, type="geofence_breach"), "DEL-1"))
    assert events[0]["zone"] == "campus"


async def _async_filter(pending: Any, uav: str) -> list[dict[str, Any]] | None:
    events: list[dict[str, Any]] = await pending
    mine = [e for e in events if e["uav"] == uav]
    return mine or None
