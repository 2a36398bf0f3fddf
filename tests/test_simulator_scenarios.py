"""The simulator's scripted scenarios on a live server: what the script says happens is exactly
what the server raises. A scripted conflict pair opens `separation_loss` and
`conflict_predicted` for that pair and no other; the Jiangbei intruder opens `geofence_approach`
and `geofence_breach` in the demo's airport zone and nothing else does; logistics flights ask
their clearances first, get them granted, activate them, and fly them without `off_route` or
`clearance_violation`; with the fleet registered, nothing is `unregistered_uav`."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from lowalt.settings import Settings
from lowalt.simulator import (
    GEOID_UNDULATION_M,
    GROUND_AMSL_M,
    TRAFFIC_OPERATORS,
    ClearanceAgent,
    SatelliteLink,
    Scenario,
    Target,
    demo_zones,
    run_simulation,
)
from lowalt.simulator.scenario import LOGISTICS_UAVS, to_latlon, to_local
from tests.conftest import running
from tests.test_geofence_e2e import auth, eventually

SEED = 3  # logistics UAV CQ-LOG-01 finishes loading 41.2 s into its first cycle
KINDS = ("logistics", "conflicts", "intruder")
LEAD_IN_S = 8.0  # the scenario's clock starts this long before the run
FIRST_S = {"conflicts": 20.0, "intruder": 32.0}  # loss 12 s, entry 24 s into the run
RUN_S = 42.0  # CQ-LOG-01 takes off 33 s into the run: 9 s of its climb are flown
AIRPORT_ZONE = "demo-jiangbei-ctr"


def alert_key(event: dict[str, Any]) -> tuple[str, ...]:
    """What an alert is about: its type and UAV, and the other UAV of a pair or the zone."""
    if event["other_uav"] is not None:
        return (event["type"], *sorted((event["uav"], event["other_uav"])))
    return (event["type"], event["uav"], event["zone"] or "")


def expected_alerts(scenario: Scenario, start_t: float, end_t: float) -> set[tuple[str, ...]]:
    """The alerts the script says the run raises (every other part of it raises none):
    - a pair that loses separation during the run: `separation_loss` for that pair, and
      `conflict_predicted` too, since it is seen converging at one height, in cruise, well
      within the 30 s look-ahead before the loss;
    - an intruder that enters the airport circle during the run: `geofence_breach` in the
      airport zone, and `geofence_approach`, as it comes from outside the zone's 500 m buffer."""
    expected: set[tuple[str, ...]] = set()
    for c in scenario.conflicts(end_t):
        if start_t + 5.0 < c.loss_t:
            pair = sorted((c.uav_a, c.uav_b))
            expected |= {("separation_loss", *pair), ("conflict_predicted", *pair)}
    for i in scenario.intrusions(end_t):
        if start_t < i.entry_t:
            expected |= {("geofence_breach", i.uav, AIRPORT_ZONE),
                         ("geofence_approach", i.uav, AIRPORT_ZONE)}
    return expected


@pytest.mark.parametrize("backend", ["sqlite"])  # the checks are storage-independent
async def test_scripted_scenarios_raise_exactly_the_scripted_alerts(settings: Settings) -> None:
    # The simulated world's ground model, so that clearances see true heights above ground;
    # telemetry_lost is kept out of it (the run ends with UAVs in the air).
    async with running(settings, ground_elevation_m=GROUND_AMSL_M,
                       geoid_undulation_m=GEOID_UNDULATION_M, lost_after_s=3600.0) as server:
        regulator, gateway = await server.token("regulator"), await server.token("gateway")
        logistics = await server.token("operator", TRAFFIC_OPERATORS["logistics"])
        for zone in demo_zones():
            r = await server.client.post("/v1/zones", json=zone, headers=auth(regulator))
            assert r.status == 201, await r.text()
        # Register every UAV the run flies (ids do not depend on t0) to its operator.
        probe = Scenario(SEED, 0, KINDS, 0.0, first_s=FIRST_S)
        fleet = probe.fleet()
        flown = {s["uav"] for k in range(int(RUN_S) + 2)
                 for s in probe.states_at(LEAD_IN_S + k)}
        assert set(LOGISTICS_UAVS) <= flown and len(flown) > len(LOGISTICS_UAVS)
        for uav in sorted(flown):
            r = await server.client.post("/v1/uavs", headers=auth(regulator), json={
                "uav": uav, "operator": TRAFFIC_OPERATORS[fleet[uav]]})
            assert r.status == 201, await r.text()

        start_t = time.time()
        scenario = Scenario(SEED, 0, KINDS, start_t - LEAD_IN_S, first_s=FIRST_S,
                            clearances=True)
        agent = ClearanceAgent(str(server.client.make_url("/")), logistics, scenario)
        summary = await run_simulation(
            Target.parse(gateway=f"127.0.0.1:{server.gateway_port}"), gateway, "native",
            scenario, SatelliteLink(SEED), RUN_S, 1.0, clearances=agent)
        end_t = start_t + RUN_S
        assert summary.errors == [] and summary.rejected == 0 and summary.unacked == 0

        # A last report through the same pipeline: once its own alert is out, every check of
        # the run's reports is done (the check stages run batch after batch, in order).
        r = await server.client.post("/v1/telemetry", headers=auth(gateway), json={
            "uav": "SENTINEL", "t": time.time(), "lat": 29.5, "lon": 106.45, "alt_m": 230.0,
            "status": "ground"})
        assert r.status == 200

        async def events() -> list[dict[str, Any]]:
            r = await server.client.get("/v1/alerts", params={"since": "0", "limit": "1000"},
                                        headers=auth(regulator))
            assert r.status == 200
            found: list[dict[str, Any]] = (await r.json())["events"]
            return found

        async def sentinel_seen() -> list[dict[str, Any]] | None:
            found = await events()
            return found if any(e["uav"] == "SENTINEL" for e in found) else None

        all_events = await eventually(sentinel_seen, timeout_s=30.0)
        # Monitor ticks after the run extrapolate the last positions: not part of the run.
        opened = [e for e in all_events
                  if e["state"] == "open" and e["uav"] != "SENTINEL" and e["t"] <= end_t]
        assert {alert_key(e) for e in opened} == expected_alerts(scenario, start_t, end_t)
        assert len(opened) == len({alert_key(e) for e in opened})  # one alert each

        # Logistics: every departure in the run's look-ahead asked, was granted, and its
        # clearance is active (the UAV has reported since); nothing to say about its flight.
        stats = agent.stats
        assert stats.errors == [] and stats.denied == 0 and stats.grounded == 0
        assert stats.asked == stats.granted == len(stats.ids) >= 2
        for cid in stats.ids:
            r = await server.client.get(f"/v1/clearances/{cid}", headers=auth(logistics))
            assert r.status == 200
            assert (await r.json())["state"] == "active"
        takeoff = [s for s in scenario.states_at(end_t - 1.0) if s["uav"] == "CQ-LOG-01"]
        assert takeoff and takeoff[0]["phase"] == "takeoff" and takeoff[0]["agl_m"] > 10.0
        assert not [e for e in all_events if e["uav"] in LOGISTICS_UAVS]


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_denied_logistics_ask_again_later_or_stay_on_their_pads(settings: Settings) -> None:
    """CQ-LOG-01's first route is crossed by another clearance: denied, it asks for a later
    departure until granted, and leaves that much later. CQ-LOG-10's drop point is in a
    prohibited zone: denied every time, it stays on its pad for the cycle."""
    async with running(settings, ground_elevation_m=GROUND_AMSL_M,
                       geoid_undulation_m=GEOID_UNDULATION_M) as server:
        admin, regulator = await server.token("admin"), await server.token("regulator")
        logistics = await server.token("operator", TRAFFIC_OPERATORS["logistics"])
        for uav in LOGISTICS_UAVS:
            r = await server.client.post("/v1/uavs", headers=auth(regulator), json={
                "uav": uav, "operator": TRAFFIC_OPERATORS["logistics"]})
            assert r.status == 201
        start_t = time.time()
        scenario = Scenario(SEED, 0, ("logistics",), start_t - LEAD_IN_S, clearances=True)
        first, tenth = scenario.logistics_departures(start_t + 31.0, start_t + 89.0)
        assert (first.uav, tenth.uav) == ("CQ-LOG-01", "CQ-LOG-10")
        planned = scenario.logistics_route(first.slot, first.cycle)
        no_drop = scenario.logistics_route(tenth.slot, tenth.cycle)
        assert planned is not None and no_drop is not None

        # A short crossing flight where and when CQ-LOG-01 would be halfway out.
        (_, _, _), (lon1, lat1, alt_m), (lon2, lat2, _) = planned.coordinates[:3]
        x1, y1 = to_local(lat1, lon1)
        x2, y2 = to_local(lat2, lon2)
        climb_m = alt_m - planned.coordinates[0][2]
        halfway_t = planned.departure_t + (climb_m + math.dist((x1, y1), (x2, y2)) / 2.0) \
            / planned.speed_mps
        mx, my, ux, uy = (x1 + x2) / 2, (y1 + y2) / 2, (y2 - y1), (x1 - x2)  # u: across
        scale = 150.0 / math.hypot(ux, uy)
        ends = [to_latlon(mx + side * ux * scale, my + side * uy * scale) for side in (-1, 1)]
        r = await server.client.post("/v1/clearances", headers=auth(admin), json={
            "uav": "CROSSING-1", "departure": halfway_t - 15.0, "speed_mps": 10.0,
            "corridor_m": 25.0, "vertical_m": 8.0,
            "route": {"type": "LineString",
                      "coordinates": [[lon, lat, alt_m] for lat, lon in ends]}})
        assert r.status == 201 and (await r.json())["state"] == "granted"
        drop_lon, drop_lat, _ = no_drop.coordinates[2]
        r = await server.client.post("/v1/zones", headers=auth(regulator), json={
            "type": "Feature", "geometry": {"type": "Point", "coordinates": [drop_lon, drop_lat]},
            "properties": {"id": "no-drop", "restriction": "prohibited", "radius_m": 100,
                           "lower_m": 0, "upper_m": None, "reference": "agl"}})
        assert r.status == 201

        agent = ClearanceAgent(str(server.client.make_url("/")), logistics, scenario)
        asking = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: _done(agent, 2), timeout_s=30.0)
        finally:
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)

        async def decisions(uav: str) -> list[dict[str, Any]]:
            r = await server.client.get("/v1/clearances", params={"uav": uav},
                                        headers=auth(regulator))
            found: list[dict[str, Any]] = (await r.json())["clearances"]
            return sorted(found, key=lambda c: c["created_at"])

        tries = await decisions("CQ-LOG-01")
        assert [c["state"] for c in tries] == ["denied"] * (len(tries) - 1) + ["granted"]
        assert len(tries) >= 2 and all(c["reasons"][0]["clearance"] for c in tries[:-1])
        delay_s = (len(tries) - 1) * 60.0
        granted = scenario.logistics_route(first.slot, first.cycle, delay_s)
        assert granted is not None and tries[-1]["departure"] == granted.departure_t
        assert tries[-1]["route"]["coordinates"] == [list(c) for c in planned.coordinates]
        assert scenario.state_of("CQ-LOG-01", first.takeoff_t + 1.0)["phase"] == "ground"
        assert scenario.state_of("CQ-LOG-01", granted.takeoff_t + 1.0)["phase"] == "takeoff"

        tries = await decisions("CQ-LOG-10")
        assert [c["state"] for c in tries] == ["denied"] * 4
        assert all(c["reasons"][0]["zone"] == "no-drop" for c in tries)
        for n in range(0, 900, 10):
            assert scenario.state_of("CQ-LOG-10", tenth.takeoff_t + n)["phase"] == "ground"
        assert (agent.stats.granted, agent.stats.grounded, agent.stats.errors) == (1, 1, [])


async def _done(agent: ClearanceAgent, flights: int) -> bool:
    return agent.stats.granted + agent.stats.grounded >= flights
