"""The traffic generator behind `lowalt simulate`, `lowalt serve --demo`, the tests and benchmarks.

    scenario = Scenario(seed, uavs, kinds, t0)          # pure: states_at(t) -> observation maps
    link = SatelliteLink(seed, delay_mean_s=..., ...)     # deliver(obs, now) / due(now)
    summary = await run_simulation(Target.parse(gateway="127.0.0.1:7700"), token, "native",
                                   scenario, link, duration_s=60, rate_hz=1)
"""

from __future__ import annotations

import asyncio
import logging
import time

from .scenario import (
    AIRPORT_RADIUS_M,
    CITY_BOX,
    GROUND_WGS84_M,
    JIANGBEI,
    KINDS,
    MINGYUE_LAKE,
    PERFORMANCE,
    SEPARATION_H_M,
    SEPARATION_V_M,
    LinkStats,
    Performance,
    SatelliteLink,
    Scenario,
    ScriptedConflict,
    ScriptedIntrusion,
)
from .senders import FORMATS, Summary, Target, encode_frame, icao_of, run_simulation, wire_id

__all__ = [
    "AIRPORT_RADIUS_M",
    "CITY_BOX",
    "DEMO_UAVS",
    "FORMATS",
    "GROUND_WGS84_M",
    "JIANGBEI",
    "KINDS",
    "MINGYUE_LAKE",
    "PERFORMANCE",
    "SEPARATION_H_M",
    "SEPARATION_V_M",
    "LinkStats",
    "Performance",
    "SatelliteLink",
    "Scenario",
    "ScriptedConflict",
    "ScriptedIntrusion",
    "Summary",
    "Target",
    "encode_frame",
    "icao_of",
    "run_simulation",
    "start_demo",
    "wire_id",
]

log = logging.getLogger("lowalt.simulator")

DEMO_UAVS = 40


def start_demo(gateway: str, token: str, uavs: int = DEMO_UAVS) -> asyncio.Task[Summary]:
    """Run every kind of traffic over the gateway at `gateway` (HOST:PORT) until cancelled or
    the server closes the connection, through a mildly imperfect satellite link."""
    t0 = time.time()
    target = Target.parse(gateway=gateway)
    link = SatelliteLink(1, delay_mean_s=0.5, delay_jitter_s=0.3, reorder=0.02, duplicate=0.02)

    def report(summary: Summary) -> None:
        log.info("demo traffic: %s", summary.line())

    async def both() -> Summary:
        """UAVs in the native format; crewed arrivals as ADS-B (SBS), as a receiver relays
        them, so the server knows them as crewed."""
        uav_kinds = tuple(k for k in KINDS if k != "crewed")
        uav_traffic = run_simulation(target, token, "native", Scenario(1, uavs, uav_kinds, t0),
                                     link, None, 1.0, progress=report, progress_every_s=60.0)
        crewed = run_simulation(target, token, "sbs", Scenario(1, 0, ("crewed",), t0),
                                SatelliteLink(1), None, 1.0)
        summary, _ = await asyncio.gather(uav_traffic, crewed)
        return summary

    task = asyncio.create_task(both(), name="lowalt-demo-traffic")

    def finished(task: asyncio.Task[Summary]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("demo traffic failed: %s", exc)
        else:
            report(task.result())

    task.add_done_callback(finished)
    return task
