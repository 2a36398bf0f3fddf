"""The traffic generator behind `lowalt simulate`, `lowalt serve --demo`, the tests and benchmarks.

    scenario = Scenario(seed, uavs, kinds, t0)          # pure: states_at(t) -> observation maps
    link = SatelliteLink(seed, delay_mean_s=..., ...)     # deliver(obs, now) / due(now)
    summary = await run_simulation(Target.parse(gateway="127.0.0.1:7700"), token, "native",
                                   scenario, link, duration_s=60, rate_hz=1)

Logistics flights that ask clearances first: build the scenario with `clearances=True` and pass
`clearances=ClearanceAgent("http://127.0.0.1:8080", operator_token, scenario)` to the run.
"""

from __future__ import annotations

from .clearances import CORRIDOR_M, VERTICAL_M, ClearanceAgent, ClearanceStats
from .demo import DEMO_SEED, DEMO_UAVS, demo_fleet, demo_zones, start_demo
from .scenario import (
    AIRPORT_RADIUS_M,
    CITY_BOX,
    GEOID_UNDULATION_M,
    GROUND_AMSL_M,
    GROUND_WGS84_M,
    JIANGBEI,
    KINDS,
    MINGYUE_LAKE,
    PERFORMANCE,
    SEPARATION_H_M,
    SEPARATION_V_M,
    TRAFFIC_OPERATORS,
    Departure,
    LinkStats,
    Performance,
    RouteFit,
    SatelliteLink,
    Scenario,
    ScriptedConflict,
    ScriptedIntrusion,
)
from .senders import FORMATS, Summary, Target, encode_frame, icao_of, run_simulation, wire_id

__all__ = [
    "AIRPORT_RADIUS_M",
    "CITY_BOX",
    "CORRIDOR_M",
    "DEMO_SEED",
    "DEMO_UAVS",
    "FORMATS",
    "GEOID_UNDULATION_M",
    "GROUND_AMSL_M",
    "GROUND_WGS84_M",
    "JIANGBEI",
    "KINDS",
    "MINGYUE_LAKE",
    "PERFORMANCE",
    "SEPARATION_H_M",
    "SEPARATION_V_M",
    "TRAFFIC_OPERATORS",
    "VERTICAL_M",
    "ClearanceAgent",
    "ClearanceStats",
    "Departure",
    "LinkStats",
    "Performance",
    "RouteFit",
    "SatelliteLink",
    "Scenario",
    "ScriptedConflict",
    "ScriptedIntrusion",
    "Summary",
    "Target",
    "demo_fleet",
    "demo_zones",
    "encode_frame",
    "icao_of",
    "run_simulation",
    "start_demo",
    "wire_id",
]
