"""Fusion in the running server: the check stage that feeds the fused picture and cross-checks
independent sources, and `setup_traffic`, which wires that stage and the live traffic feed into
the app. The picture itself is built by setup_checks, with the traffic monitor that reads it.

Cross-check: for every committed report of an aircraft heard by more than one source name (the
gateway or token name of `source`), the report of each other source name nearest in time is
taken; when the two are less than `MAX_DT_S` apart, both are extrapolated to the later of their
times and compared. A distance beyond max(`mismatch_floor_m`, `mismatch_k` * the combined 95 %
accuracy sqrt(acc_a^2 + acc_b^2)) is a `position_mismatch` (faulty GNSS or spoofing). The alert
manager resolves it with its hysteresis once pairs of that aircraft agree again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
from aiohttp import web

from dispatch import traffic
from dispatch.alerts import AlertManager, Condition, evaluated_times
from dispatch.service import DISPATCH
from dispatch.traffic import TRAFFIC, TrafficFeed
from dispatch.traffic_nats import TRAFFIC_NATS, TrafficNatsPublisher
from geofence.service_app import CHECKS
from lowalt.fusion import (
    F64,
    FUSED,
    M_PER_DEG,
    Filed,
    FusedPicture,
    Pairs,
    distance_m,
)
from lowalt.models import Observation
from lowalt.settings import Settings

log = logging.getLogger("lowalt.fusion")

MISMATCH_TYPES = frozenset({"position_mismatch"})
MAX_DT_S = 1.0  # reports this close in time count as the same instant
FORGET_EVERY_S = 60.0



class CrossCheck:
    """Independent sources of one aircraft compared at the same instant (module docstring)."""

    def __init__(
        self, picture: FusedPicture, *, floor_m: float, k: float, default_acc_h_m: float
    ) -> None:
        self.picture = picture
        self.floor_m, self.k, self.default_acc_h_m = floor_m, k, default_acc_h_m

    def pairs(self, filed: Filed) -> Pairs:
        """Each filed row (`FusedPicture.add`'s result) with the nearest-in-time report of
        every other source name (|dt| < MAX_DT_S), each pair once."""
        return self.picture.pairs(filed, MAX_DT_S)

    def cross_check(
        self, pairs: Pairs
    ) -> tuple[dict[str, float], list[Condition], dict[str, list[float]] | None]:
        """(uav -> evaluation t, the position_mismatch conditions, and uav -> every
        evaluation t ascending when a UAV has several pairs, else None: what
        `AlertManager.assess` takes) for the pairs, vectorised. Per UAV the conditions are its
        worst pair's and, when later, its newest mismatching pair's, so the alert knows it
        still holds at the newest."""
        if not pairs:
            return {}, [], None
        n = len(pairs)
        uavs = pairs.uavs
        # Both sides at once: the compared fields (lowalt.fusion.COMPARED) as columns.
        t, lat, lon, speed, track, acc = np.concatenate([pairs.a, pairs.b]).T
        t_common = np.maximum(t[:n], t[n:])
        lat, lon = _moved(lat, lon, speed, track, np.concatenate([t_common, t_common]) - t)
        dist = distance_m(lat[:n], lon[:n], lat[n:], lon[n:])
        acc[np.isnan(acc)] = self.default_acc_h_m
        threshold = np.maximum(self.floor_m, self.k * np.hypot(acc[:n], acc[n:]))
        # The latest evaluation t per uav: filed in time order, later ones overwrite earlier
        # ones (the alert manager reads it by uav; its order does not matter).
        by_t = np.argsort(t_common, kind="stable").tolist()
        in_order = list(map(uavs.__getitem__, by_t))
        evaluated = dict(zip(in_order, t_common[by_t].tolist(), strict=True))
        at = (evaluated_times(in_order, t_common[by_t].tolist()) if len(evaluated) < n
              else None)
        ratio = dist / threshold
        worst: dict[str, tuple[float, int]] = {}
        newest: dict[str, int] = {}
        for k in np.flatnonzero(dist > threshold).tolist():
            uav = uavs[k]
            if ratio[k] > worst.get(uav, (0.0, -1))[0]:
                worst[uav] = (float(ratio[k]), k)
            if uav not in newest or t_common[k] >= t_common[newest[uav]]:
                newest[uav] = k
        present = []
        for uav, (_, k_worst) in worst.items():
            for k in sorted({k_worst, newest[uav]}, key=lambda k: float(t_common[k])):
                _, a, b = pairs.pair(k)
                newer = a if a.t >= b.t else b
                present.append(Condition(
                    type="position_mismatch", uav=uav, severity="warning",
                    t=float(t_common[k]), lat=newer.lat, lon=newer.lon, alt_m=newer.alt_m,
                    detail={
                        "sources": sorted((_report(a), _report(b)),
                                          key=lambda r: str(r["source"])),
                        "distance_m": round(float(dist[k]), 1),
                        "threshold_m": round(float(threshold[k]), 1),
                        "dt_s": round(abs(a.t - b.t), 3),
                    },
                ))
        return evaluated, present, at


class FusionStage:
    """Check stage: committed rows into the fused picture, then the cross-check."""

    name = "fusion"

    def __init__(self, picture: FusedPicture, alerts: AlertManager, settings: Settings) -> None:
        self.picture, self.alerts = picture, alerts
        self.check = CrossCheck(picture, floor_m=settings.mismatch_floor_m, k=settings.mismatch_k,
                                default_acc_h_m=settings.fusion_default_acc_h_m)

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        checked = self.picture.add(rows)
        evaluated, present, at = self.check.cross_check(self.check.pairs(checked))
        if evaluated:
            await self.alerts.assess(MISMATCH_TYPES, evaluated, present, evaluated_at=at)


def _moved(lat: F64, lon: F64, speed: F64, track: F64, dt: F64) -> tuple[F64, F64]:
    """Positions moved dt seconds at their constant velocity, locally flat (as
    lowalt.fusion.extrapolate; unknown velocity: not moved)."""
    rad = np.radians(track)
    step = speed * dt
    north, east = step * np.cos(rad), step * np.sin(rad)
    still = np.isnan(north)  # no speed or no track
    north[still] = 0.0
    east[still] = 0.0
    coslat = np.maximum(np.cos(np.radians(lat)), 1e-6)
    return lat + north / M_PER_DEG, lon + east / (M_PER_DEG * coslat)


def _report(row: Observation) -> dict[str, Any]:
    return {"source": row.source, "uav": row.uav, "t": row.t, "lat": row.lat, "lon": row.lon,
            "alt_m": row.alt_m, "acc_h_m": row.acc_h_m}


async def _forget_silent(picture: FusedPicture, max_age_s: float) -> None:
    """Keep the picture's memory bounded like the live picture's: drop aircraft silent for
    longer than observations are accepted (max_age_s)."""
    while True:
        await asyncio.sleep(FORGET_EVERY_S)
        try:
            picture.forget_silent(time.time() - max_age_s)
        except Exception:
            log.exception("forgetting silent aircraft failed")


def setup_traffic(app: web.Application) -> None:
    """The fusion check stage and the live traffic feed, on the fused picture that setup_checks
    built with the traffic monitor (so the monitor never ticks without it). Must come after
    setup_checks and before the ingest context, so no committed batch misses the stage."""
    from lowalt.app import RUNTIME  # lowalt.app imports this module

    async def traffic_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        s = rt.settings
        picture = app[CHECKS].monitor.fused  # built with the monitor, by setup_checks
        if picture is None:
            raise RuntimeError("setup_traffic: the traffic monitor has no fused picture")
        rt.pipeline.stages.append(FusionStage(picture, app[DISPATCH].manager, s))
        feed = TrafficFeed(
            picture, gone_after_s=s.traffic_gone_after_s, max_clients=s.traffic_max_clients,
            buffer_bytes=s.traffic_buffer_bytes, heartbeat_s=s.feed_heartbeat_s,
            write_timeout_s=s.feed_write_timeout_s, metrics=rt.metrics,
        )
        rt.metrics.gauge("lowalt_fused_aircraft", "Aircraft in the fused picture.",
                         lambda: float(len(picture)))
        app[FUSED] = picture
        app[TRAFFIC] = feed
        tasks = [
            asyncio.create_task(feed.run(), name="lowalt-traffic-feed"),
            asyncio.create_task(_forget_silent(picture, s.max_age_s), name="lowalt-fusion-forget"),
        ]
        publisher = TrafficNatsPublisher.from_settings(picture, s, rt.metrics)
        if publisher is not None:  # fused states on NATS JetStream, by cell
            app[TRAFFIC_NATS] = publisher
            tasks.append(asyncio.create_task(publisher.run(), name="lowalt-traffic-nats"))
        yield
        feed.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def end_feed(app: web.Application) -> None:
        feed = app.get(TRAFFIC)
        if feed is not None:
            feed.close()

    app.cleanup_ctx.append(traffic_ctx)
    app.on_shutdown.append(end_feed)
    traffic.add_routes(app)
