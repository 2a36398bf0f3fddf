"""Wiring of the checks into the server: the emergency stage, the geofence stage, the traffic
monitor, the motion check, the zone routes, and their lifecycle (started after dispatch, stopped
before it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from dispatch.service import DISPATCH
from geofence import http
from geofence.monitor import MotionCheck, TrafficMonitor
from geofence.priority import EmergencyCheck
from geofence.service import Geofence, zone_store_for
from lowalt.fusion import fused_picture

log = logging.getLogger("lowalt.checks")
ZONE_RELOAD_S = 5.0


@dataclass
class Checks:
    geofence: Geofence
    monitor: TrafficMonitor
    motion: MotionCheck


CHECKS = web.AppKey("checks", Checks)


async def _reload_zones(geofence: Geofence) -> None:
    """Pick up zones changed by another process (the CLI) within ZONE_RELOAD_S."""
    while True:
        await asyncio.sleep(ZONE_RELOAD_S)
        try:
            await geofence.reload_if_changed()
        except Exception:
            log.exception("zone reload failed")


def setup_checks(app: web.Application) -> None:
    from lowalt.app import RUNTIME  # lowalt.app imports this module

    async def checks_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        manager = app[DISPATCH].manager
        geofence = Geofence(zone_store_for(rt.store), manager, rt.live, rt.settings)
        await geofence.start()
        if (worker := geofence.worker) is not None:
            rt.metrics.gauge("lowalt_zone_worker_ready",
                             "1 when the zone worker holds the zones in effect, else 0.",
                             lambda: float(geofence.worker_ready))
            rt.metrics.gauge("lowalt_zone_worker_calls",
                             "Geofence stage calls the zone worker answered, since start.",
                             lambda: float(worker.calls))
            rt.metrics.gauge("lowalt_zone_worker_fallbacks",
                             "Stage calls meant for the zone worker checked in process instead "
                             "(it was gone, failed or too slow), since start.",
                             lambda: float(worker.fallbacks))
            rt.metrics.gauge("lowalt_zone_worker_restarts",
                             "Zone worker restarts after a failure, since start.",
                             lambda: float(worker.restarts))
        fused = fused_picture(rt.registry, rt.settings, rt.live.latest.values())
        checks = Checks(geofence, TrafficMonitor(rt.live, manager, rt.settings, fused=fused),
                        MotionCheck(manager, rt.settings))
        rt.pipeline.stages.extend([EmergencyCheck(manager), geofence, checks.motion])
        app[CHECKS] = checks
        app[http.GEOFENCE] = geofence
        tasks = [
            asyncio.create_task(checks.monitor.run(), name="lowalt-monitor"),
            asyncio.create_task(_reload_zones(geofence), name="lowalt-zone-reload"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await geofence.close()

    app.cleanup_ctx.append(checks_ctx)
    http.add_routes(app)
