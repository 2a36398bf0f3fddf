"""The monitor's tick over the fused picture (columns, `FusedPicture.airborne` and `heard`)
finds what its tick over the live picture's rows finds for the same single-source traffic, and
follows each source's own lost_after_s for aircraft heard several ways."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from benchmarks.bench_conflicts import _MemoryAlertStore, city_traffic, live_rows
from benchmarks.bench_traffic import StaticRegistry
from dispatch.alerts import AlertManager, Broadcaster
from dispatch.store import AlertStore
from geofence.monitor import TrafficMonitor
from lowalt.fusion import FusedPicture, Identities
from lowalt.live import LiveState
from lowalt.models import Observation
from lowalt.settings import load_settings


@asynccontextmanager
async def manager() -> AsyncIterator[AlertManager]:
    m = AlertManager(cast(AlertStore, _MemoryAlertStore()), Broadcaster(), commit_delay_s=0.0)
    await m.start()
    try:
        yield m
    finally:
        await m.close()


PAIR_TYPES = ("conflict_predicted", "separation_loss")


def pairs_of(m: AlertManager) -> set[tuple[str, str, str | None]]:
    return {(a["type"], a["uav"], a["other_uav"]) for a in m.open_alerts()
            if a["type"] in PAIR_TYPES}


async def test_the_fused_tick_finds_what_the_live_tick_finds() -> None:
    data = city_traffic(3_000, seed=21, hub_side_m=3_000.0)
    tick_t = float(data["tick_t"])
    rows = live_rows(data)
    # Every 9th aircraft silent for a minute, every 11th on the ground, every 13th crewed.
    rows = [r._replace(t=tick_t - 60.0) if k % 9 == 0 else r for k, r in enumerate(rows)]
    rows = [r._replace(status="ground") if k % 11 == 0 else r for k, r in enumerate(rows)]
    rows = [r._replace(source="adsb/gateway/sbs") if k % 13 == 0 else r
            for k, r in enumerate(rows)]
    settings = load_settings({}, {})
    live = LiveState()
    live.update(rows)
    picture = FusedPicture(Identities(StaticRegistry({}, {})))
    picture.add(rows)
    async with manager() as by_rows, manager() as by_columns:
        plain = await TrafficMonitor(live, by_rows, settings).tick(tick_t)
        fused_monitor = TrafficMonitor(LiveState(), by_columns, settings, fused=picture)
        fused = await fused_monitor.tick(tick_t)
        await by_rows.flush()
        await by_columns.flush()
        assert plain.conflicts > 0 and plain.lost > 0  # the case is not empty
        assert (fused.aircraft, fused.conflicts, fused.lost) == (
            plain.aircraft, plain.conflicts, plain.lost)
        assert pairs_of(by_columns) == pairs_of(by_rows)
        lost = {r.uav for r in rows if r.status != "ground" and tick_t - r.t > 5.0}
        assert fused_monitor.lost == lost
        crewed = {r.uav for r in rows if r.crewed}
        crewed_pairs = [a for a in by_columns.open_alerts() if a["type"] in PAIR_TYPES
                        and (a["uav"] in crewed or a["other_uav"] in crewed)]
        assert crewed_pairs and all(a["detail"]["crewed"] for a in crewed_pairs)


async def test_each_source_keeps_its_own_lost_after_s() -> None:
    settings = dataclasses.replace(load_settings({}, {}),
                                   extra={"gateways": {"slowsat": {"lost_after_s": 30.0}}})
    t = 1_764_000_000.0

    def report(uav: str, age_s: float, source: str, lat: float) -> Observation:
        return Observation(uav, t - age_s, lat, 106.5, 120.0, None, None, None, None,
                           "airborne", None, None, source, t - age_s)

    picture = FusedPicture(Identities(StaticRegistry({}, {})))
    picture.add([
        report("SLOW", 20.0, "slowsat/gateway/native", 29.50),  # within its gateway's 30 s
        report("FAST", 20.0, "cell/http/native", 29.52),  # beyond the default 5 s
        report("BOTH", 20.0, "cell/http/native", 29.54),  # beyond 5 s by one source ...
        report("BOTH", 25.0, "slowsat/gateway/native", 29.54),  # ... within 30 s by the other
        report("GONE", 40.0, "slowsat/gateway/native", 29.56),  # beyond both
    ])
    async with manager() as m:
        monitor = TrafficMonitor(LiveState(), m, settings, fused=picture)
        await monitor.tick(t)
        assert monitor.lost == {"FAST", "GONE"}
        await m.flush()
        (fast,) = [a for a in m.open_alerts() if a["uav"] == "FAST"]
        assert fast["type"] == "telemetry_lost" and fast["detail"]["expected_interval_s"] == 5.0
        picture.add([report("FAST", 0.0, "cell/http/native", 29.52)])
        await monitor.tick(t + 1.0)
        assert monitor.lost == {"GONE"}
