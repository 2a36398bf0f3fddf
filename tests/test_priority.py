"""Emergency and priority operations end to end (API.md sections 4 and 5, issue 13), on both
backends: emergency alerts first in every feed, priority clearances that suspend the normal
clearances they meet (pushed, alerted, audited), who may ask one, resuming after the priority
operation ends, and temporary zones that tell what they cover at once."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from dispatch.alerts import Condition
from dispatch.service import DISPATCH
from geofence.clearance_http import CLEARANCES
from ingest.client import GatewayClient
from lowalt.storage import Store
from tests.conftest import Server
from tests.test_alerts import all_events, cond, running_manager
from tests.test_clearances_e2e import M_PER_DEG_LAT, ask, at, east_west, get, obs, post, zone
from tests.test_geofence_e2e import alerts, auth, eventually, send

Frame = dict[str, Any]


async def register(server: Server, reg: str, uav: str, operator: str,
                   priority: bool = False) -> None:
    r = await server.client.post("/v1/uavs", headers=auth(reg),
                                 json={"uav": uav, "operator": operator, "priority": priority})
    assert r.status == 201, await r.text()


async def frames(client: GatewayClient, wanted: Callable[[Frame], bool], count: int = 1,
                 timeout_s: float = 10.0) -> list[Frame]:
    """The next `count` frames pushed on a gateway connection that `wanted` accepts."""
    found: list[Frame] = []
    async with asyncio.timeout(timeout_s):
        while len(found) < count:
            frame = await client.recv()
            if wanted(frame):
                found.append(frame)
    return found


def clearance_is(cid: str, state: str, **keys: Any) -> Callable[[Frame], bool]:
    def match(frame: Frame) -> bool:
        c = frame.get("clearance")
        return isinstance(c, dict) and c["id"] == cid and c["state"] == state and all(
            c.get(k) == v for k, v in keys.items())
    return match


async def connected(server: Server, gw: str, name: str, *reports: dict[str, Any]
                    ) -> GatewayClient:
    """A gateway connection that has carried `reports` (so it gets their UAVs' pushes)."""
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, name=name)
    client.send_obs(list(reports))
    assert (await client.recv_ack())["accepted"] == len(reports)
    return client


async def audit_records(server: Server, adm: str, action: str) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/audit", headers=auth(adm))
    assert r.status == 200
    return [rec for rec in (await r.json())["records"] if rec["action"] == action]


def south_north(lat0: float, lon0: float = 106.50, length_m: float = 2000.0
                ) -> list[list[float]]:
    return [at(0, -length_m / 2, lon0, lat0), at(0, length_m / 2, lon0, lat0)]


# -- priority clearances -------------------------------------------------------------------------
async def test_rescue_route_suspends_both_corridors_and_they_resume_after_cancel(
    server: Server,
) -> None:
    adm, reg, gw = (await server.token("admin"), await server.token("regulator"),
                    await server.token("gateway"))
    op_a = await server.token("operator", "logi-a", name="logi-a-ops")
    op_b = await server.token("operator", "logi-b", name="logi-b-ops")
    rescue_ops = await server.token("operator", "rescue", name="rescue-ops")
    for uav, operator, priority in (("LOG-1", "logi-a", False), ("LOG-2", "logi-b", False),
                                    ("LOG-3", "logi-b", False), ("RESCUE-1", "rescue", True)):
        await register(server, reg, uav, operator, priority)
    now = time.time()
    dep = now + 600
    corridor_1, corridor_2 = east_west(29.600), east_west(29.606)  # 665 m apart
    relay_a = await connected(server, gw, "relay-a", obs("LOG-1", now - 1, corridor_1[0], "ground"))
    relay_b = await connected(server, gw, "relay-b", obs("LOG-2", now - 1, corridor_2[0], "ground"))
    try:
        log_1 = await post(server, op_a, ask("LOG-1", corridor_1, dep))
        log_2 = await post(server, op_b, ask("LOG-2", corridor_2, dep))
        assert log_1["state"] == log_2["state"] == "granted"
        assert log_1["priority"] is None
        await frames(relay_a, clearance_is(log_1["id"], "granted"))
        await frames(relay_b, clearance_is(log_2["id"], "granted"))
        manager = server.client.app[DISPATCH].manager
        head = manager.committed_seq
        async with server.client.ws_connect(
            f"/v1/alerts/ws?since={head}&type=clearance_suspended", headers=auth(reg)
        ) as feed:
            # across both corridors, at the same time: granted over them
            rescue = await post(server, rescue_ops,
                                {**ask("RESCUE-1", south_north(29.603), dep),
                                 "priority": "emergency"})
            assert rescue["state"] == "granted" and rescue["priority"] == "emergency"
            assert sorted((r["clearance"], r["suspended"]) for r in rescue["reasons"]) == sorted(
                [(log_1["id"], True), (log_2["id"], True)])

            # both suspended, with the reason, and each UAV told on its own connection
            for relay, mine in ((relay_a, log_1), (relay_b, log_2)):
                [frame] = await frames(relay, clearance_is(mine["id"], "suspended"))
                pushed = frame["clearance"]
                assert pushed["resumable"] is False
                assert [r["priority_clearance"] for r in pushed["reasons"]] == [rescue["id"]]
                assert pushed == await get(server, adm, mine["id"])

            # the feed carries one clearance_suspended per clearance, in seq order
            events = [json.loads(await feed.receive_str(timeout=10)) for _ in range(2)]
        assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})
        assert {(e["clearance"], e["uav"]) for e in events} == {(log_1["id"], "LOG-1"),
                                                                (log_2["id"], "LOG-2")}
        for e in events:
            assert e["state"] == "open" and e["severity"] == "warning"  # its UAV is on the ground
            assert e["detail"]["reason"] == "priority_clearance"
            assert e["detail"]["priority_clearance"] == rescue["id"]

        # not resumable while the rescue holds the airspace
        r = await server.client.post(f"/v1/clearances/{log_1['id']}/resume", headers=auth(op_a))
        assert r.status == 409
        body = await r.json()
        assert body["reasons"][0]["priority_clearance"] == rescue["id"]
        assert body["clearance"]["state"] == "suspended"

        # the rescue is cancelled: nothing resumes by itself, both become resumable
        r = await server.client.delete(f"/v1/clearances/{rescue['id']}", headers=auth(rescue_ops))
        assert r.status == 200
        for relay, mine in ((relay_a, log_1), (relay_b, log_2)):
            await frames(relay, clearance_is(mine["id"], "suspended", resumable=True))
        resolved = await eventually(lambda: _resolved_suspensions(server, reg, 2))
        assert all(e["detail"]["resumable"] is True for e in resolved)

        # meanwhile another clearance takes LOG-2's corridor (a suspended one reserves nothing)
        log_3 = await post(server, op_b, ask("LOG-3", corridor_2, dep))
        assert log_3["state"] == "granted"

        r = await server.client.post(f"/v1/clearances/{log_1['id']}/resume", headers=auth(op_a))
        assert r.status == 200, await r.text()
        resumed = await r.json()
        assert resumed["state"] == "granted" and resumed["reasons"] == []
        await frames(relay_a, clearance_is(log_1["id"], "granted"))
        r = await server.client.post(f"/v1/clearances/{log_2['id']}/resume", headers=auth(op_b))
        assert r.status == 409
        assert [x["clearance"] for x in (await r.json())["reasons"]] == [log_3["id"]]
        assert (await get(server, adm, log_2["id"]))["state"] == "suspended"
        r = await server.client.post(f"/v1/clearances/{log_3['id']}/resume", headers=auth(op_b))
        assert r.status == 409  # not suspended
        r = await server.client.post(f"/v1/clearances/{log_2['id']}/resume", headers=auth(op_a))
        assert r.status == 404  # another operator's clearance
    finally:
        await relay_a.close()
        await relay_b.close()

    # who asked, for the decision and for each suspension
    [decision] = await audit_records(server, adm, "clearance.priority")
    assert (decision["actor"], decision["role"], decision["target"]) == (
        "rescue-ops", "operator", rescue["id"])
    assert decision["detail"]["state"] == "granted"
    assert sorted(decision["detail"]["suspended"]) == sorted([log_1["id"], log_2["id"]])
    suspensions = await audit_records(server, adm, "clearance.suspend")
    assert sorted(s["target"] for s in suspensions) == sorted([log_1["id"], log_2["id"]])
    assert {s["actor"] for s in suspensions} == {"rescue-ops"}
    assert {s["detail"]["priority_clearance"] for s in suspensions} == {rescue["id"]}
    resumes = await audit_records(server, adm, "clearance.resume")
    assert [(x["actor"], x["detail"]["state"]) for x in resumes] == [
        ("logi-a-ops", "suspended"), ("logi-a-ops", "granted"), ("logi-b-ops", "suspended")]


async def _resolved_suspensions(server: Server, token: str, count: int
                                ) -> list[dict[str, Any]] | None:
    found = await alerts(server, token, type="clearance_suspended", state="resolved")
    return found if len(found) >= count else None


async def test_completed_priority_operation_makes_suspended_clearances_resumable(
    server: Server,
) -> None:
    adm, reg, gw = (await server.token("admin"), await server.token("regulator"),
                    await server.token("gateway"))
    now = math.floor(time.time())
    dep = now - 20
    normal = await post(server, adm, ask("VAN-1", east_west(29.64), dep))
    rescue_route = south_north(29.64)
    rescue = await post(server, reg, {**ask("MED-9", rescue_route, dep, speed=20.0),
                                      "priority": "emergency"})
    assert rescue["state"] == "granted"
    suspended = await get(server, adm, normal["id"])
    assert suspended["state"] == "suspended" and suspended["resumable"] is False

    await send(server, gw, obs("MED-9", now, rescue_route[1]))  # at the end: completed
    async def resumable() -> bool:
        return bool((await get(server, adm, normal["id"])).get("resumable"))

    await eventually(resumable)
    assert (await get(server, adm, rescue["id"]))["state"] == "completed"
    r = await server.client.post(f"/v1/clearances/{normal['id']}/resume", headers=auth(adm))
    assert r.status == 200 and (await r.json())["state"] == "granted"


async def test_who_may_ask_priority(server: Server) -> None:
    adm, reg, gw = (await server.token("admin"), await server.token("regulator"),
                    await server.token("gateway"))
    plain = await server.token("operator", "plain")
    rescue_ops = await server.token("operator", "rescue")
    await register(server, reg, "PLAIN-1", "plain")
    await register(server, reg, "PLAIN-2", "plain")
    await register(server, reg, "RESCUE-2", "rescue", priority=True)
    dep = time.time() + 600
    in_the_way = await post(server, plain, ask("PLAIN-1", east_west(29.66), dep))
    across = {**ask("PLAIN-2", south_north(29.66), dep), "priority": "emergency"}

    await post(server, plain, across, status=403)  # PLAIN-2 is not registered with priority
    await post(server, gw, across, status=403)
    await post(server, reg, {**across, "priority": None}, status=403)  # regulators: priority only
    await post(server, rescue_ops, across, status=403)  # another operator's UAV
    bad = await post(server, rescue_ops, {**across, "uav": "RESCUE-2", "priority": "urgent"},
                     status=400)
    assert bad["field"] == "priority"
    # nothing was suspended, and nothing recorded as a decision
    assert (await get(server, adm, in_the_way["id"]))["state"] == "granted"
    assert await audit_records(server, adm, "clearance.priority") == []


async def test_prohibited_zones_deny_operators_and_are_noted_for_regulators(
    server: Server,
) -> None:
    adm = await server.token("admin")
    reg = await server.token("regulator", name="city-regulator")
    rescue_ops = await server.token("operator", "rescue", name="rescue-ops")
    await register(server, reg, "RESCUE-3", "rescue", priority=True)
    lat0 = 29.68
    r = await server.client.post("/v1/zones", headers=auth(reg),
                                 json=zone("no-fly-p", "prohibited", 106.50,
                                           lat0 + 555 / M_PER_DEG_LAT, 150))
    assert r.status == 201
    dep = time.time() + 600
    normal = await post(server, adm, ask("VAN-2", east_west(lat0), dep))
    route = south_north(lat0)  # through the zone, and across VAN-2's corridor outside it

    denied = await post(server, rescue_ops, {**ask("RESCUE-3", route, dep),
                                             "priority": "emergency"})
    assert denied["state"] == "denied"
    assert [r.get("zone") for r in denied["reasons"]] == ["no-fly-p"]
    assert (await get(server, adm, normal["id"]))["state"] == "granted"

    granted = await post(server, reg, {**ask("HELI-1", route, dep), "priority": "emergency"})
    assert granted["state"] == "granted"
    noted = {r.get("zone") or r.get("clearance"): r for r in granted["reasons"]}
    assert noted["no-fly-p"]["overridden"] is True and noted["no-fly-p"]["restriction"] == \
        "prohibited"
    assert noted[normal["id"]]["suspended"] is True
    assert (await get(server, adm, normal["id"]))["state"] == "suspended"

    # one priority operation never takes another's airspace
    second = await post(server, rescue_ops, {**ask("RESCUE-3", east_west(lat0), dep),
                                             "priority": "emergency"})
    assert second["state"] == "denied"
    assert [r["clearance"] for r in second["reasons"]] == [granted["id"]]

    decisions = await audit_records(server, adm, "clearance.priority")
    assert [(d["actor"], d["detail"]["state"]) for d in decisions] == [
        ("rescue-ops", "denied"), ("city-regulator", "granted"), ("rescue-ops", "denied")]
    [suspension] = await audit_records(server, adm, "clearance.suspend")
    assert (suspension["actor"], suspension["role"], suspension["target"]) == (
        "city-regulator", "regulator", normal["id"])


# -- emergencies ---------------------------------------------------------------------------------
async def test_emergency_status_is_first_in_every_feed_and_resolves(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    r = await server.client.post("/v1/zones", headers=auth(reg),
                                 json=zone("em-zone", "prohibited", 106.70, 29.70, 300))
    assert r.status == 201
    now = time.time()
    await send(server, gw, obs("BREACH-1", now - 3, [106.70, 29.70, 100.0]))
    await send(server, gw, obs("WARN-1", now - 3, [106.80, 29.70, 100.0]))

    async def open_now() -> list[dict[str, Any]]:
        r = await server.client.get("/v1/alerts/open", headers=auth(reg))
        found: list[dict[str, Any]] = (await r.json())["alerts"]
        return found

    async def lesser_open() -> bool:
        types = {a["type"] for a in await open_now()}
        return {"geofence_breach", "unregistered_uav"} <= types

    await eventually(lesser_open)  # a critical breach and warnings are open already
    head = server.client.app[DISPATCH].manager.committed_seq
    async with server.client.ws_connect(f"/v1/alerts/ws?since={head}&type=emergency",
                                        headers=auth(reg)) as feed:
        await send(server, gw, obs("EM-1", now - 2, [106.90, 29.70, 100.0], "emergency"))
        # Issue 13: the alert within one second of the observation's commit (its ack).
        event = json.loads(await feed.receive_str(timeout=1.0))
    assert (event["type"], event["state"], event["uav"], event["severity"]) == (
        "emergency", "open", "EM-1", "critical")
    assert event["detail"]["status"] == "emergency"
    first = (await open_now())[0]
    assert (first["type"], first["uav"]) == ("emergency", "EM-1")
    assert [a["type"] for a in await open_now()].count("geofence_breach") == 1

    await send(server, gw, obs("EM-2", now - 2, [106.91, 29.70, 100.0], "lost_link"))
    lost = await eventually(lambda: _emergencies(server, reg, "EM-2", 1))
    assert lost[0]["detail"]["status"] == "lost_link"

    # normal status resolves at once; landing too; late data does not reopen
    await send(server, gw, obs("EM-1", now - 1, [106.90, 29.70, 100.0], "airborne"))
    await send(server, gw, obs("EM-2", now - 1, [106.91, 29.70, 0.0], "ground"))
    em_1 = await eventually(lambda: _emergencies(server, reg, "EM-1", 2))
    em_2 = await eventually(lambda: _emergencies(server, reg, "EM-2", 2))
    assert [e["state"] for e in em_1] == [e["state"] for e in em_2] == ["open", "resolved"]
    await send(server, gw, obs("EM-1", now - 1.5, [106.90, 29.70, 100.0], "emergency"))
    await send(server, gw, obs("EM-3", now - 1, [106.92, 29.70, 100.0], "emergency"))
    await eventually(lambda: _emergencies(server, reg, "EM-3", 1))  # checks run in batch order
    assert len(await alerts(server, reg, type="emergency", uav="EM-1")) == 2
    assert [(a["type"], a["uav"]) for a in await open_now()][:2] == [
        ("emergency", "EM-3"), ("geofence_breach", "BREACH-1")]


async def _emergencies(server: Server, token: str, uav: str, count: int
                       ) -> list[dict[str, Any]] | None:
    found = await alerts(server, token, type="emergency", uav=uav)
    return found if len(found) >= count else None


async def test_emergency_events_commit_ahead_of_waiting_ones(store: Store) -> None:
    """The writer takes an emergency before lesser events raised earlier (and waiting out the
    group-commit window): it gets the lower seq."""
    async with running_manager(store, commit_delay_s=0.5) as m:
        await m.open_or_update(cond("U1", severity="warning", type="geofence_approach"))
        await m.open_or_update(Condition("emergency", "U2", "critical", 1_764_000_000.0, 29.7,
                                         106.6, 100.0, detail={"status": "emergency"}))
        events = await all_events(m)
        assert [(e.seq, e.type) for e in events] == [(1, "emergency"), (2, "geofence_approach")]
        assert [a["type"] for a in m.open_alerts()] == ["emergency", "geofence_approach"]


# -- temporary zones -----------------------------------------------------------------------------
async def test_temporary_zone_tells_airborne_uavs_and_active_clearances_at_once(
    server: Server,
) -> None:
    adm, reg, gw = (await server.token("admin"), await server.token("regulator"),
                    await server.token("gateway"))
    now = math.floor(time.time())
    lat0 = 29.50
    route = east_west(lat0)  # 2 km east-west through the incident
    flight = await post(server, adm, ask("FLY-Z", route, now - 10))
    inside = {f"AIR-{k}": at(100.0 * k, 50.0, 106.50, lat0) for k in (1, 2, 3)}
    relay = await connected(server, gw, "incident-relay",
                            obs("FLY-Z", now, at(-900, 0, 106.50, lat0)),
                            *(obs(uav, now, where) for uav, where in inside.items()))
    try:
        await frames(relay, clearance_is(flight["id"], "active"))
        start = datetime.fromtimestamp(now, UTC).isoformat()
        r = await server.client.post("/v1/zones", headers=auth(reg),
                                     json=zone("incident", "prohibited", 106.50, lat0, 500,
                                               start=start))
        assert r.status == 201
        answered = time.monotonic()
        pushed = await frames(relay, lambda f: "zone" in f, count=4)
        assert time.monotonic() - answered <= 1.0  # the promise: told within one second
    finally:
        await relay.close()
    assert all(f["zone"]["properties"]["id"] == "incident" for f in pushed)
    [told] = [f["clearance"] for f in pushed if "clearance" in f]
    assert told["id"] == flight["id"] and told["state"] == "suspended"
    assert told["resumable"] is True and told["reasons"][0]["zone"] == "incident"
    assert (await get(server, adm, flight["id"]))["state"] == "suspended"

    async def breached() -> list[str] | None:
        found = await alerts(server, reg, type="geofence_breach")
        uavs = sorted(e["uav"] for e in found if e["zone"] == "incident")
        return uavs if len(uavs) >= len(inside) else None

    assert await eventually(breached) == sorted(inside)
    [suspension] = await eventually(lambda: alerts(server, reg, type="clearance_suspended"))
    assert (suspension["uav"], suspension["clearance"]) == ("FLY-Z", flight["id"])
    assert suspension["detail"]["reason"] == "zone_activated"
    assert suspension["detail"]["zone"] == "incident"
    [record] = await audit_records(server, adm, "clearance.suspend")
    assert record["target"] == flight["id"] and record["detail"]["zone"] == "incident"
    assert (record["actor"], record["role"]) == ("regulator", "regulator")  # who added the zone

    # resumable at once, but the zone still denies it; once the zone is gone it is granted
    r = await server.client.post(f"/v1/clearances/{flight['id']}/resume", headers=auth(adm))
    assert r.status == 409
    assert [x.get("zone") for x in (await r.json())["reasons"]] == ["incident"]
    r = await server.client.delete("/v1/zones/incident", headers=auth(reg))
    assert r.status == 200
    r = await server.client.post(f"/v1/clearances/{flight['id']}/resume", headers=auth(adm))
    assert r.status == 200 and (await r.json())["state"] == "granted"
    assert flight["id"] in server.client.app[CLEARANCES].reserved
    ended = await eventually(lambda: _resolved_suspensions(server, reg, 1))
    assert [e["detail"]["clearance_state"] for e in ended] == ["granted"]
