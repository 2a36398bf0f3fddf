"""The traffic generator: a deterministic, physically plausible model whose scripted events happen
when it says, logistics flights that stay inside the clearances they ask for, a satellite link
with the effects it is configured for, and senders that land the traffic in a real server over
every transport and format (tests/test_simulator_scenarios.py: the scripted alerts, live)."""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest

from geofence.clearances import (
    Heights,
    RouteRequest,
    VolumeIndex,
    build_volume,
    conformance,
    decide,
)
from lowalt.cli import main
from lowalt.errors import ConfigError
from lowalt.settings import Settings
from lowalt.simulator import (
    AIRPORT_RADIUS_M,
    CITY_BOX,
    CORRIDOR_M,
    GEOID_UNDULATION_M,
    GROUND_AMSL_M,
    GROUND_WGS84_M,
    JIANGBEI,
    KINDS,
    PERFORMANCE,
    SEPARATION_H_M,
    SEPARATION_V_M,
    TRAFFIC_OPERATORS,
    VERTICAL_M,
    SatelliteLink,
    Scenario,
    Target,
    run_simulation,
    wire_id,
)
from lowalt.simulator.scenario import (
    CONFLICT_FIRST_S,
    CONFLICT_PERIOD_S,
    INTRUDER_FIRST_S,
    INTRUDER_PERIOD_S,
    LOGISTICS_CYCLE_S,
    LOGISTICS_FIT_S,
    LOGISTICS_UAVS,
)
from tests.conftest import Server, running

T0 = 1_764_000_000.0
# Phases a flight may go through next (crewed arrivals only ever "approach").
NEXT_PHASES = {
    "ground": {"takeoff"},
    "takeoff": {"cruise"},
    "cruise": {"hover"},
    "hover": {"cruise", "return", "climb", "landing"},
    "climb": {"return"},
    "return": {"landing"},
    "landing": {"ground"},
}


def distance_m(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Haversine, independent of the simulator's own projection."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a["lat"], a["lon"], b["lat"], b["lon"]))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)
    return 2 * 6_371_008.8 * math.asin(math.sqrt(h))


def bearing_deg(a: dict[str, Any], b: dict[str, Any]) -> float:
    lat1, lat2 = math.radians(a["lat"]), math.radians(b["lat"])
    dlon = math.radians(b["lon"] - a["lon"])
    y = math.sin(dlon) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(dlon)
    return math.degrees(math.atan2(y, x)) % 360.0


def angle_deg(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


AIRPORT = {"lat": JIANGBEI[0], "lon": JIANGBEI[1]}


# The model


def test_same_seed_same_states_in_any_order_and_another_seed_differs() -> None:
    times = [T0 + s for s in (-30.0, 0.0, 0.5, 61.0, 700.0, 1500.0, 5000.0)]
    one = Scenario(7, 30, KINDS, T0)
    forward = [one.states_at(t) for t in times]
    two = Scenario(7, 30, KINDS, T0)
    backward = [two.states_at(t) for t in reversed(times)][::-1]
    assert forward == backward
    assert all(forward)
    assert {s["traffic"] for states in forward for s in states} == set(KINDS)
    other = Scenario(8, 30, KINDS, T0)
    assert [other.states_at(t) for t in times] != forward
    # t0 only shifts the model in time.
    shifted = Scenario(7, 30, KINDS, T0 + 100.0)
    moved = [{**s, "t": s["t"] - 100.0} for s in shifted.states_at(times[3] + 100.0)]
    assert moved == forward[3]


def test_kinematics_stay_within_each_kinds_performance() -> None:
    scenario = Scenario(3, 25, KINDS, T0)
    dt = 1.0
    tracks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n in range(1500):
        for state in scenario.states_at(T0 + n * dt):
            tracks[state["uav"]].append(state)
    min_lat, min_lon, max_lat, max_lon = CITY_BOX
    phases: dict[str, list[str]] = {}
    for uav, states in tracks.items():
        perf = PERFORMANCE[states[0]["traffic"]]
        for s in states:
            assert min_lat <= s["lat"] <= max_lat and min_lon <= s["lon"] <= max_lon, s
            assert 0.0 <= s["speed_mps"] <= perf.max_speed_mps, s
            assert -perf.max_descent_mps <= s["vspeed_mps"] <= perf.max_climb_mps, s
            assert 0.0 <= s["track_deg"] < 360.0
            assert (s["status"] == "ground") == (s["phase"] == "ground")
            if s["kind"] == "uav":
                assert 0.0 <= s["agl_m"] <= perf.max_agl_m <= 150.0, s
                assert s["alt_m"] == pytest.approx(GROUND_WGS84_M + s["agl_m"])
        for a, b in itertools.pairwise(states):
            assert b["t"] - a["t"] == dt  # reports without gaps: plans fit their cycles
            moved = distance_m(a, b)
            # Positions agree with the reported speeds (piecewise linear in time), ...
            assert moved == pytest.approx((a["speed_mps"] + b["speed_mps"]) / 2 * dt, abs=1.0)
            if a["kind"] == "uav":
                climbed = b["agl_m"] - a["agl_m"]
                assert climbed == pytest.approx((a["vspeed_mps"] + b["vspeed_mps"]) / 2 * dt,
                                                abs=0.6)
            # ... speed changes no faster than the kind's acceleration, ...
            assert abs(b["speed_mps"] - a["speed_mps"]) <= perf.accel_mps2 * dt + 0.02
            assert abs(b["vspeed_mps"] - a["vspeed_mps"]) <= perf.vaccel_mps2 * dt + 0.02
            # ... it moves along its track, and turns only when stopped (multirotors).
            if moved > 2.0:
                assert angle_deg(bearing_deg(a, b), a["track_deg"]) < 1.0
            if a["speed_mps"] > 0.5 and b["speed_mps"] > 0.5:
                assert angle_deg(a["track_deg"], b["track_deg"]) < 0.2
        sequence = [p for i, p in enumerate(s["phase"] for s in states)
                    if i == 0 or p != states[i - 1]["phase"]]
        phases[uav] = sequence
        for a_phase, b_phase in itertools.pairwise(sequence):
            assert b_phase in NEXT_PHASES[a_phase], (uav, sequence)
    city = [seq for uav, seq in phases.items() if uav.startswith("CQ-CITY-")]
    assert len(city) == 25
    for sequence in city:  # 1500 s hold at least one whole 720 s cycle
        assert {"ground", "takeoff", "cruise", "hover", "return", "landing"} <= set(sequence)
    logistics = [seq for uav, seq in phases.items() if uav.startswith("CQ-LOG-")]
    assert any("climb" in seq and "hover" in seq for seq in logistics)
    crewed = [seq for uav, seq in phases.items() if uav.startswith("ICAO-")]
    assert crewed and all(seq == ["approach"] for seq in crewed)


def test_scripted_conflicts_lose_separation_when_scripted_and_nothing_else_does() -> None:
    scenario = Scenario(5, 0, ("conflicts", "intruder"), T0)
    horizon = T0 + 1200.0
    conflicts = scenario.conflicts(horizon)
    assert [c.loss_t - T0 for c in conflicts] == [
        CONFLICT_FIRST_S + k * CONFLICT_PERIOD_S for k in range(len(conflicts))]
    assert len(conflicts) == 13
    assert {c.geometry for c in conflicts} == {"head_on", "crossing"}

    def pair_at(t: float, a: str, b: str) -> tuple[float, float]:
        sa, sb = scenario.state_of(a, t), scenario.state_of(b, t)
        assert sa is not None and sb is not None
        assert sa["phase"] == sb["phase"] == "cruise"
        return distance_m(sa, sb), abs(sa["alt_m"] - sb["alt_m"])

    for c in conflicts:
        before, _ = pair_at(c.loss_t - 0.5, c.uav_a, c.uav_b)
        at, _ = pair_at(c.loss_t, c.uav_a, c.uav_b)
        after, vertical = pair_at(c.loss_t + 0.5, c.uav_a, c.uav_b)
        closest, _ = pair_at(c.cpa_t, c.uav_a, c.uav_b)
        assert before > SEPARATION_H_M > after and vertical < SEPARATION_V_M, c
        assert at == pytest.approx(SEPARATION_H_M, abs=0.5)
        assert closest == pytest.approx(c.cpa_m, abs=0.5) and closest < SEPARATION_H_M

    # Sampled every 0.5 s, the only pairs within separation are the scripted ones.
    losses: set[tuple[str, str]] = set()
    for n in range(int((horizon - T0) * 2)):
        airborne = [s for s in scenario.states_at(T0 + n / 2) if s["status"] == "airborne"]
        for i, a in enumerate(airborne):
            for b in airborne[i + 1:]:
                if (abs(a["alt_m"] - b["alt_m"]) < SEPARATION_V_M
                        and distance_m(a, b) < SEPARATION_H_M):
                    losses.add((a["uav"], b["uav"]))
    assert losses == {(c.uav_a, c.uav_b) for c in conflicts}


def test_the_intruder_enters_the_airport_circle_when_scripted() -> None:
    scenario = Scenario(5, 0, ("intruder",), T0)
    intrusions = scenario.intrusions(T0 + 2000.0)
    assert [i.entry_t - T0 for i in intrusions] == [
        INTRUDER_FIRST_S + k * INTRUDER_PERIOD_S for k in range(len(intrusions))]
    assert len(intrusions) == 3
    for intrusion in intrusions:
        def from_airport(t: float, uav: str = intrusion.uav) -> float:
            state = scenario.state_of(uav, t)
            assert state is not None and state["status"] == "airborne"
            return distance_m(state, AIRPORT)

        assert from_airport(intrusion.entry_t - 0.5) > AIRPORT_RADIUS_M
        assert from_airport(intrusion.entry_t + 0.5) < AIRPORT_RADIUS_M
        assert from_airport((intrusion.entry_t + intrusion.exit_t) / 2) < 1000.0
        assert from_airport(intrusion.exit_t - 0.5) < AIRPORT_RADIUS_M
        assert from_airport(intrusion.exit_t + 0.5) > AIRPORT_RADIUS_M
    # Nothing else of the scenario goes near the airport.
    others = Scenario(5, 40, ("city", "logistics", "conflicts"), T0)
    for n in range(0, 2000, 2):
        for state in others.states_at(T0 + n):
            assert distance_m(state, AIRPORT) > AIRPORT_RADIUS_M + 500.0


# The satellite link


def run_link(link: SatelliteLink, uavs: int = 100, ticks: int = 200
             ) -> list[tuple[float, dict[str, Any]]]:
    """Offer uavs x ticks observations (one per UAV per second); (release time, obs) out."""
    out: list[tuple[float, dict[str, Any]]] = []
    for n in range((ticks + 20) * 4):  # 20 s more to deliver what is late
        now = n * 0.25
        if n % 4 == 0 and n < ticks * 4:
            for u in range(uavs):
                link.deliver({"uav": f"U{u}", "t": now}, now)
        out.extend((now, obs) for obs in link.due(now))
    assert len(link) == 0
    return out


def test_satellite_link_loses_duplicates_and_delays_in_the_configured_proportions() -> None:
    link = SatelliteLink(11, delay_mean_s=1.0, delay_jitter_s=0.3, duplicate=0.05, loss=0.02)
    out = run_link(link)
    stats = link.stats
    assert stats.offered == 20_000 and stats.delivered == len(out)
    assert stats.lost / stats.offered == pytest.approx(0.02, abs=0.005)
    assert stats.duplicated / stats.offered == pytest.approx(0.05, abs=0.008)
    # What came out agrees with the counts: copies, and what never came.
    copies = Counter((obs["uav"], obs["t"]) for _, obs in out)
    assert sum(1 for n in copies.values() if n == 2) == stats.duplicated
    assert max(copies.values()) == 2
    assert stats.offered - len(copies) == stats.lost
    assert len(out) == stats.offered - stats.lost + stats.duplicated
    delays = [released - obs["t"] for released, obs in out]
    assert min(delays) >= 0.0
    assert sum(delays) / len(delays) == pytest.approx(1.0 + 0.125, abs=0.05)  # + 0.25 s steps
    # Deterministic: the same seed gives the same deliveries, another seed others.
    again = SatelliteLink(11, delay_mean_s=1.0, delay_jitter_s=0.3, duplicate=0.05, loss=0.02)
    assert run_link(again) == out
    assert run_link(SatelliteLink(12, delay_mean_s=1.0, delay_jitter_s=0.3, duplicate=0.05,
                                  loss=0.02)) != out


def test_satellite_link_reorders_and_bursts() -> None:
    link = SatelliteLink(3, delay_mean_s=1.0, reorder=0.1, reorder_hold_s=2.0)
    out = run_link(link)
    assert link.stats.reordered / link.stats.offered == pytest.approx(0.1, abs=0.01)
    newest: dict[str, float] = {}
    overtaken = 0
    for _, obs in out:
        if obs["t"] < newest.get(obs["uav"], -1.0):
            overtaken += 1
        newest[obs["uav"]] = max(obs["t"], newest.get(obs["uav"], -1.0))
    # A held report is overtaken by the next one unless that one is held too.
    assert overtaken == pytest.approx(link.stats.reordered * 0.9, rel=0.1)

    bursty = SatelliteLink(3, delay_mean_s=0.3, delay_jitter_s=0.1, burst_s=2.0)
    released = run_link(bursty, uavs=10, ticks=40)
    times = {t for t, _ in released}
    assert times and all(t % 2.0 == 0.0 for t in times)
    assert all(0.0 < t - obs["t"] <= 2.6 for t, obs in released)


# End to end against a real server


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def counter(server: Server, token: str, name: str) -> float:
    text = await (await server.client.get("/metrics", headers=auth(token))).text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, name
    return float(match.group(1))


# format -> how close a stored position is to the model's at the stored t (deg, m)
TOLERANCE = {"native": (1e-7, 0.01), "f3411": (5e-5, 1.0), "sbs": (3e-5, 0.5)}


@pytest.mark.parametrize(("transport", "fmt", "array_form"), [
    ("gateway", "native", False), ("gateway", "f3411", False), ("gateway", "sbs", False),
    ("ws", "native", True), ("http", "native", False),
])
async def test_simulation_lands_in_the_server(server: Server, transport: str, fmt: str,
                                              array_form: bool) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    base = str(server.client.make_url("/"))
    target = {"gateway": Target.parse(gateway=f"127.0.0.1:{server.gateway_port}"),
              "ws": Target.parse(ws=base), "http": Target.parse(http=base)}[transport]
    scenario = Scenario(21, 4, KINDS, time.time() - 150.0)  # episodes in the air
    link = SatelliteLink(21, delay_mean_s=0.2, delay_jitter_s=0.1, reorder=0.1, duplicate=0.2)
    summary = await run_simulation(target, gw, fmt, scenario, link, 1.5, 2.0,
                                   array_form=array_form)

    assert summary.errors == [] and summary.unacked == 0
    assert summary.rejected == 0, summary.reasons
    assert summary.generated > 60 and summary.duplicated > 0
    assert summary.sent == summary.generated + summary.duplicated
    assert summary.accepted == summary.generated
    assert summary.duplicates == summary.duplicated  # every second copy is seen as one
    assert await counter(server, reg, "lowalt_observations_accepted_total") == summary.accepted
    assert await counter(server, reg, "lowalt_observations_duplicate_total") \
        == summary.duplicates

    r = await server.client.get("/v1/uavs", headers=auth(reg))
    live = (await r.json())["uavs"]
    assert {row["uav"] for row in live} == summary.uavs
    deg, metres = TOLERANCE[fmt]
    for row in live:
        model = [s for s in scenario.states_at(row["t"]) if wire_id(s, fmt) == row["uav"]]
        assert len(model) == 1, row
        assert row["lat"] == pytest.approx(model[0]["lat"], abs=deg)
        assert row["lon"] == pytest.approx(model[0]["lon"], abs=deg)
        assert row["alt_m"] == pytest.approx(model[0]["alt_m"], abs=metres)
        assert row["source"].endswith(f"/{transport}/{fmt}")


async def test_simulate_command(server: Server) -> None:
    gw = await server.token("gateway")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lowalt.cli", "simulate", "--token", gw,
        "--gateway", f"127.0.0.1:{server.gateway_port}", "--format", "f3411", "--uavs", "3",
        "--scenario", "city,crewed", "--duration", "1", "--rate-hz", "2", "--duplicate", "0.3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    last = stdout.decode().strip().splitlines()[-1]
    match = re.search(r"accepted (\d+), duplicates (\d+), rejected 0", last)
    assert match is not None, last
    reg = await server.token("regulator")
    assert await counter(server, reg, "lowalt_observations_accepted_total") \
        == int(match.group(1)) > 0


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_simulate_command_asks_logistics_clearances(settings: Settings) -> None:
    async with running(settings, ground_elevation_m=GROUND_AMSL_M,
                       geoid_undulation_m=GEOID_UNDULATION_M) as server:
        gw, reg = await server.token("gateway"), await server.token("regulator")
        operator = await server.token("operator", TRAFFIC_OPERATORS["logistics"])
        for uav in LOGISTICS_UAVS:
            r = await server.client.post("/v1/uavs", headers=auth(reg), json={
                "uav": uav, "operator": TRAFFIC_OPERATORS["logistics"]})
            assert r.status == 201
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lowalt.cli", "simulate", "--token", gw,
            "--gateway", f"127.0.0.1:{server.gateway_port}", "--scenario", "logistics",
            "--duration", "2", "--clearance-token", operator,
            "--api", str(server.client.make_url("/")),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        last = stdout.decode().strip().splitlines()[-1]
        # Seed 1: CQ-LOG-01 leaves 74 s after the start, so it asks at once.
        match = re.search(r"clearances: asked (\d+), granted (\d+), denied 0, flights grounded 0",
                          last)
        assert match is not None and match.group(1) == match.group(2) != "0", last
        r = await server.client.get("/v1/clearances", params={"uav": "CQ-LOG-01"},
                                    headers=auth(reg))
        assert [c["state"] for c in (await r.json())["clearances"]] == ["active"]


def test_simulate_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--reorder", "1.5"], "reorder must be a probability"),
        (["--scenario", "city,balloons"], "unknown kind(s) balloons"),
        (["--http", "http://127.0.0.1:1", "--format", "sbs"], "native observations only"),
        (["--ws", "ftp://x"], "expected ws://HOST:PORT"),
        (["--gateway", "nowhere"], "expected HOST:PORT"),
        (["--clearances", "--api", "ftp://x"], "expected http://HOST:PORT"),
    ]:
        assert main(["simulate", "--token", "t", "--duration", "0.1", *argv]) == 2
        assert message in capsys.readouterr().err


# Logistics flights and their clearances


def logistics_track(scenario: Scenario, uav: str, t_from: float, t_to: float
                    ) -> list[dict[str, Any]]:
    return [s for n in range(int(t_to - t_from) + 1)
            for s in scenario.states_at(t_from + n) if s["uav"] == uav]


def test_logistics_fly_inside_the_route_they_ask_for() -> None:
    """Every report of a cleared flight, from takeoff to landing, lies in the 4D volume the
    server builds from the request (geofence/clearances.py), with only 20 s of the server's
    30 s default time tolerance; the flight completes the route on landing."""
    scenario = Scenario(2, 0, ("logistics",), T0, clearances=True)
    departures = scenario.logistics_departures(T0, T0 + LOGISTICS_CYCLE_S)
    assert {d.uav for d in departures} == set(LOGISTICS_UAVS)
    for d in departures:
        delay_s = 60.0 if d.slot % 3 == 0 else 0.0  # re-planned departures too
        fit = scenario.logistics_route(d.slot, d.cycle, delay_s)
        assert fit is not None
        assert fit.max_deviation_s <= LOGISTICS_FIT_S
        assert fit.takeoff_t == pytest.approx(d.takeoff_t + delay_s)
        assert abs(fit.departure_t - fit.takeoff_t) < LOGISTICS_FIT_S
        assert 0.5 <= fit.speed_mps <= PERFORMANCE["logistics"].max_speed_mps
        request = RouteRequest(d.uav, fit.coordinates, fit.departure_t, fit.speed_mps,
                               CORRIDOR_M, VERTICAL_M)
        volume = build_volume(request, tolerance_s=20.0, piece_s=30.0)
        scenario.decide(d.slot, d.cycle, delay_s)
        track = logistics_track(scenario, d.uav, fit.takeoff_t - 5.0, fit.landing_t + 5.0)
        ground = [s["status"] == "ground" for s in track]
        assert ground[0] and ground[-1] and not all(ground)
        c = conformance(volume, [s["lon"] for s in track], [s["lat"] for s in track],
                        [s["alt_m"] for s in track], [s["t"] for s in track], ground)
        end = int(c.at_end.argmax())
        assert c.at_end[end] and track[end]["phase"] == "landing", d
        for k, state in enumerate(track[:end]):
            assert c.inside[k] and c.early_s[k] == 0.0 and c.late_s[k] == 0.0, (d, state)


def test_the_fleets_clearances_never_deny_each_other() -> None:
    """Two hours of the fleet's requests, decided one after another as the server does (its
    ceiling with the simulated world's ground model included): all granted."""
    scenario = Scenario(4, 0, ("logistics",), T0, clearances=True)
    heights = Heights(GEOID_UNDULATION_M, lambda lon, lat: np.full(np.shape(lon), GROUND_AMSL_M))
    reserved = VolumeIndex()
    departures = scenario.logistics_departures(T0, T0 + 7200.0)
    assert len(departures) == 60
    for d in departures:
        fit = scenario.logistics_route(d.slot, d.cycle)
        assert fit is not None
        volume = build_volume(RouteRequest(d.uav, fit.coordinates, fit.departure_t,
                                           fit.speed_mps, CORRIDOR_M, VERTICAL_M),
                              tolerance_s=30.0, piece_s=30.0)
        assert decide(volume, d.uav, zones=None, reserved=reserved, heights=heights,
                      max_agl_m=120.0) == [], d
        reserved.add(f"{d.uav}/{d.cycle}", volume)


def test_logistics_wait_on_their_pads_until_cleared() -> None:
    free = Scenario(6, 0, ("logistics",), T0)
    asking = Scenario(6, 0, ("logistics",), T0, clearances=True)
    first = asking.logistics_departures(T0, T0 + LOGISTICS_CYCLE_S)[0]
    window = (first.takeoff_t - 10.0, first.takeoff_t + 300.0)

    def track(scenario: Scenario) -> list[dict[str, Any]]:
        return logistics_track(scenario, first.uav, *window)

    # Undecided, or denied: on the pad, on the ground, all cycle.
    for decision in (False, None):
        if decision is None:
            asking.decide(first.slot, first.cycle, None)
        parked = track(asking)
        assert len(parked) == 311 and {s["phase"] for s in parked} == {"ground"}
        assert len({(s["lat"], s["lon"]) for s in parked}) == 1
    # Cleared: exactly the flight it would fly without clearances; later: the same, later.
    asking.decide(first.slot, first.cycle, 0.0)
    assert track(asking) == track(free)
    asking.decide(first.slot, first.cycle, 120.0)
    later, planned = track(asking), track(free)
    assert [s["phase"] for s in later][:130] == ["ground"] * 130
    assert planned[10]["phase"] == "takeoff"

    def untimed(states: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in s.items() if k != "t"} for s in states]

    assert untimed(later[120:]) == untimed(planned[:-120])
    # A departure so late that the flight would not end within its cycle is not offered.
    assert asking.logistics_route(first.slot, first.cycle, LOGISTICS_CYCLE_S) is None
    with pytest.raises(ConfigError):
        asking.decide(first.slot, first.cycle, LOGISTICS_CYCLE_S)


def test_the_fleet_lists_every_uav_the_scenario_flies() -> None:
    scenario = Scenario(8, 5, KINDS, T0)
    fleet = scenario.fleet()
    assert set(fleet.values()) == set(TRAFFIC_OPERATORS) == set(KINDS) - {"crewed"}
    seen: set[str] = set()
    for n in range(0, 3 * 3600, 15):  # past the reuse of the conflict pairs' ids (2.5 h)
        seen |= {s["uav"] for s in scenario.states_at(T0 + n) if s["kind"] == "uav"}
    assert seen <= set(fleet)
    assert {uav for uav, traffic in fleet.items() if traffic != "intruder"} <= seen
    assert Scenario(8, 5, KINDS, T0 + 999.0).fleet() == fleet
