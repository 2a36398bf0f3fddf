"""What `lowalt serve --demo` adds to a server: its zones, its registered fleet, and its traffic.

The zones are the ones the scenario aims at: the intruder flies into Jiangbei's control zone,
and the logistics hub sits in the Mingyue Lake logistics area, where the logistics operator's
UAVs hold a permit (the zone's `authorized`). Every UAV of the scenario is registered to its
operator (TRAFFIC_OPERATORS), so `unregistered_uav` never fires and the alerts shown are the
scenario's own: its scripted conflicts, the intruder's breach, and whatever the random city
traffic really does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .clearances import ClearanceAgent
from .scenario import (
    AIRPORT_RADIUS_M,
    JIANGBEI,
    KINDS,
    LOGISTICS_UAVS,
    MINGYUE_LAKE,
    PERFORMANCE,
    TRAFFIC_OPERATORS,
    SatelliteLink,
    Scenario,
)
from .senders import Summary, Target, run_simulation

__all__ = ["DEMO_SEED", "DEMO_UAVS", "demo_fleet", "demo_zones", "start_demo"]

log = logging.getLogger("lowalt.simulator")

DEMO_UAVS = 40
DEMO_SEED = 1


def demo_zones() -> list[dict[str, Any]]:
    """The demo's zones as GeoJSON Features (POST /v1/zones)."""
    return [
        {"type": "Feature",
         "geometry": {"type": "Point", "coordinates": [JIANGBEI[1], JIANGBEI[0]]},
         "properties": {"id": "demo-jiangbei-ctr", "name": "Jiangbei airport control zone",
                        "restriction": "prohibited", "radius_m": AIRPORT_RADIUS_M,
                        "lower_m": 0, "upper_m": None, "reference": "agl", "approach_m": 500}},
        {"type": "Feature",
         "geometry": {"type": "Point", "coordinates": [MINGYUE_LAKE[1], MINGYUE_LAKE[0]]},
         "properties": {"id": "demo-mingyue-lake", "name": "Mingyue Lake logistics area",
                        "restriction": "conditional", "radius_m": 1500, "lower_m": 0,
                        "upper_m": 120, "reference": "agl", "approach_m": 100,
                        "authorized": list(LOGISTICS_UAVS)}},
    ]


def demo_fleet(uavs: int = DEMO_UAVS) -> list[dict[str, Any]]:
    """Every UAV the demo's traffic flies, as POST /v1/uavs bodies (uav, operator, model,
    max_speed_mps)."""
    fleet = Scenario(DEMO_SEED, uavs, KINDS, 0.0).fleet()
    return [{"uav": uav, "operator": TRAFFIC_OPERATORS[traffic], "model": f"sim-{traffic}",
             "max_speed_mps": PERFORMANCE[traffic].max_speed_mps}
            for uav, traffic in sorted(fleet.items())]


def start_demo(gateway: str, token: str, uavs: int = DEMO_UAVS, *, api: str | None = None,
               clearance_token: str | None = None) -> asyncio.Task[Summary]:
    """Run every kind of traffic over the gateway at `gateway` (HOST:PORT) until cancelled or
    the server closes the connection, through a mildly imperfect satellite link. With `api`
    (http://HOST:PORT) and `clearance_token` the logistics flights ask clearances first."""
    t0 = time.time()
    target = Target.parse(gateway=gateway)
    link = SatelliteLink(1, delay_mean_s=0.5, delay_jitter_s=0.3, reorder=0.02, duplicate=0.02)

    def report(summary: Summary) -> None:
        log.info("demo traffic: %s", summary.line())

    async def both() -> Summary:
        """UAVs in the native format; crewed arrivals as ADS-B (SBS), as a receiver relays
        them, so the server knows them as crewed."""
        uav_kinds = tuple(k for k in KINDS if k != "crewed")
        asks = api is not None and clearance_token is not None
        scenario = Scenario(DEMO_SEED, uavs, uav_kinds, t0, clearances=asks)
        agent = None
        if api is not None and clearance_token is not None:
            agent = ClearanceAgent(api, clearance_token, scenario)
        uav_traffic = run_simulation(target, token, "native", scenario, link, None, 1.0,
                                     progress=report, progress_every_s=60.0, clearances=agent)
        crewed = run_simulation(target, token, "sbs", Scenario(DEMO_SEED, 0, ("crewed",), t0),
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
