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
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import numpy as np
from aiohttp import web

from dispatch import traffic
from dispatch.alerts import AlertManager, Condition
from dispatch.service import DISPATCH
from dispatch.traffic import TRAFFIC, TrafficFeed
from dispatch.traffic_nats import TRAFFIC_NATS, TrafficNatsPublisher
from geofence.service_app import CHECKS
from lowalt.fusion import (
    FUSED,
    FusedPicture,
    distance_m,
    extrapolate,
    nearest_report,
    source_name,
)
from lowalt.models import Observation
from lowalt.settings import Settings

log = logging.getLogger("lowalt.fusion")

MISMATCH_TYPES = frozenset({"position_mismatch"})
MAX_DT_S = 1.0  # reports this close in time count as the same instant
FORGET_EVERY_S = 60.0

Pair = tuple[str, Observation, Observation]  # canonical id, a report, another source's report


class CrossCheck:
    """Independent sources of one aircraft compared at the same instant (module docstring)."""

    def __init__(
        self, picture: FusedPicture, *, floor_m: float, k: float, default_acc_h_m: float
    ) -> None:
        self.picture = picture
        self.floor_m, self.k, self.default_acc_h_m = floor_m, k, default_acc_h_m

    def pairs(self, rows: Iterable[Observation]) -> list[Pair]:
        """Each row with the nearest-in-time report of every other source name (|dt| < 1 s)."""
        aircraft, resolve = self.picture.aircraft, self.picture.identities.resolve
        found: list[Pair] = []
        seen: set[tuple[str, str, float, str, float]] = set()
        names: dict[str, str] = {}
        for row in rows:
            a = aircraft.get(resolve(row.uav))
            if a is None or len(a.sources) < 2:
                continue
            name = names.get(row.source) or names.setdefault(row.source, source_name(row.source))
            for source, reports in a.sources.items():
                if (names.get(source) or names.setdefault(source, source_name(source))) == name:
                    continue
                other = nearest_report(reports, row.t)
                if other is None or abs(other.t - row.t) >= MAX_DT_S:
                    continue
                if row.source < source:
                    key = (a.uav, row.source, row.t, source, other.t)
                else:
                    key = (a.uav, source, other.t, row.source, row.t)
                if key not in seen:
                    seen.add(key)
                    found.append((a.uav, row, other))
        return found

    def cross_check(self, pairs: list[Pair]) -> tuple[dict[str, float], list[Condition]]:
        """(uav -> evaluation t, the position_mismatch conditions) for the pairs, vectorised."""
        if not pairs:
            return {}, []
        a_cols = _columns([p[1] for p in pairs])
        b_cols = _columns([p[2] for p in pairs])
        t_common = np.maximum(a_cols[0], b_cols[0])
        a_lat, a_lon = self._at(a_cols, t_common)
        b_lat, b_lon = self._at(b_cols, t_common)
        dist = distance_m(a_lat, a_lon, b_lat, b_lon)
        acc_a = np.where(np.isnan(a_cols[7]), self.default_acc_h_m, a_cols[7])
        acc_b = np.where(np.isnan(b_cols[7]), self.default_acc_h_m, b_cols[7])
        threshold = np.maximum(self.floor_m, self.k * np.hypot(acc_a, acc_b))
        evaluated: dict[str, float] = {}
        worst: dict[str, tuple[float, int]] = {}
        ratio = dist / threshold
        for k, (uav, _, _) in enumerate(pairs):
            t = float(t_common[k])
            evaluated[uav] = max(evaluated.get(uav, -math.inf), t)
            if dist[k] > threshold[k] and ratio[k] > worst.get(uav, (0.0, -1))[0]:
                worst[uav] = (float(ratio[k]), k)
        present = []
        for uav, (_, k) in worst.items():
            _, a, b = pairs[k]
            newer = a if a.t >= b.t else b
            present.append(Condition(
                type="position_mismatch", uav=uav, severity="warning", t=float(t_common[k]),
                lat=newer.lat, lon=newer.lon, alt_m=newer.alt_m,
                detail={
                    "sources": sorted((_report(a), _report(b)), key=lambda r: str(r["source"])),
                    "distance_m": round(float(dist[k]), 1),
                    "threshold_m": round(float(threshold[k]), 1),
                    "dt_s": round(abs(a.t - b.t), 3),
                },
            ))
        return evaluated, present

    @staticmethod
    def _at(
        cols: np.ndarray[Any, np.dtype[np.float64]], t: np.ndarray[Any, np.dtype[np.float64]]
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]:
        t0, lat, lon, alt, speed, track, vspeed = cols[:7]
        lat_x, lon_x, *_ = extrapolate(lat, lon, alt, speed, track, vspeed, t - t0)
        return lat_x, lon_x


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
        self.picture.add(rows)
        evaluated, present = self.check.cross_check(self.check.pairs(rows))
        if evaluated:
            await self.alerts.assess(MISMATCH_TYPES, evaluated, present)


def _columns(rows: list[Observation]) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.array(
        [(r.t, r.lat, r.lon, r.alt_m, r.speed_mps, r.track_deg, r.vspeed_mps, r.acc_h_m)
         for r in rows],
        dtype=np.float64,
    ).T


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
