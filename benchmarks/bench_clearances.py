"""Clearance decisions per second: the R-tree over reserved volumes against a naive scan.

    .venv/bin/python -m benchmarks.bench_clearances [--clearances 10000] [--zones 10000]
        [--requests 300] [--naive 60] [--batches 21]

Setup, around Chongqing (lon 106.4..106.8, lat 29.5..29.8): `--clearances` granted volumes
already reserved (delivery routes of 2..6 points, 1..8 km, 60..110 m, 8..20 m/s, corridors
20..50 m, departures over 24 h) and `--zones` zones (benchmarks/bench_geofence.py's generator:
circles and polygons of 30..600 m, all prohibited, with bands, windows and schedules).

A decision is what POST /v1/clearances does under its lock, without storage: build the 4D
volume, screen it against the zones (STRtree) and the ceiling, and look for reserved volumes it
meets. Indexed: `VolumeIndex` (3D R-tree over lon, lat, time). Naive: the same decision with the
reserved volumes scanned one by one (`naive_conflicts`), on the first `--naive` requests; both
must name the same clearances at the same instants.

Conformance: the check stage itself, `ClearanceService.on_committed` on committed batches,
with every reserved volume monitored (active) and the alert manager left out (a stub takes the
conditions; storage is in memory): each report's clearance found by UAV and time, one vectorised
pass over the batch, conditions for the reports off their corridor. Batches of 1,000 reports
from 1,000 UAVs (one report each, as at 1 Hz) and of 1,000 reports from 100 UAVs (ten each); a
tenth of the reports are off the corridor. The median of `--batches` batches, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from benchmarks.bench_geofence import random_zones
from benchmarks.harness import log
from dispatch.alerts import Condition
from geofence.clearance_service import Clearance, ClearanceService, ClearanceStore
from geofence.clearances import (
    Heights,
    RouteRequest,
    Volume,
    VolumeIndex,
    ZoneScreen,
    build_volume,
    ceiling_reason,
    naive_conflicts,
)
from geofence.index import ZoneIndex
from lowalt.gcpolicy import tune_as_server
from lowalt.models import Observation
from lowalt.settings import Settings

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TOLERANCE_S = 30.0
PIECE_S = 30.0
MAX_AGL_M = 120.0
M_PER_DEG_LAT = 110_850.0
M_PER_DEG_LON = 96_800.0


def random_route(rng: np.random.Generator, uav: str) -> RouteRequest:
    """A delivery route in the box: a start, then 1..5 legs heading roughly one way."""
    n = int(rng.integers(2, 7))
    total_m = float(rng.uniform(1000.0, 8000.0))
    heading = float(rng.uniform(0.0, 2 * np.pi))
    lon, lat = float(rng.uniform(106.42, 106.78)), float(rng.uniform(29.52, 29.78))
    alt = float(rng.uniform(60.0, 110.0))
    points = [(lon, lat, alt)]
    for _ in range(n - 1):
        leg = total_m / (n - 1)
        h = heading + float(rng.normal(0.0, 0.5))
        lon += leg * np.sin(h) / M_PER_DEG_LON
        lat += leg * np.cos(h) / M_PER_DEG_LAT
        alt = float(np.clip(alt + rng.normal(0.0, 10.0), 40.0, 105.0))
        points.append((lon, lat, alt))
    return RouteRequest(
        uav=uav, coordinates=tuple(points), departure=T0 + float(rng.uniform(0.0, 86400.0)),
        speed_mps=float(rng.uniform(8.0, 20.0)), corridor_m=float(rng.uniform(20.0, 50.0)),
        vertical_m=float(rng.uniform(10.0, 15.0)),
    )


def _volume(req: RouteRequest) -> Volume:
    return build_volume(req, tolerance_s=TOLERANCE_S, piece_s=PIECE_S)


def _decide(req: RouteRequest, screen: ZoneScreen, heights: Heights,
            conflicts: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    volume = _volume(req)
    ground = heights.ground_range(volume)
    reasons = screen.reasons(volume, req.uav, heights, ground)
    ceiling = ceiling_reason(volume, heights, MAX_AGL_M, ground)
    if ceiling is not None:
        reasons.append(ceiling)
    found = conflicts(volume)
    return reasons, found


def _stats(times_s: list[float]) -> dict[str, float]:
    ordered = sorted(times_s)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "decisions_per_s": len(times_s) / sum(times_s),
        "p50_ms": statistics.median(times_s) * 1e3,
        "p99_ms": p99 * 1e3,
    }


class MemoryClearanceStore(ClearanceStore):
    """Clearances in memory: what the check stage reads and writes, without a database (also
    used by tests/test_clearance_conformance.py)."""

    def __init__(self, clearances: Sequence[Clearance]) -> None:
        self.clearances = {c.id: c for c in clearances}

    async def setup(self) -> None:
        pass

    async def insert(self, c: Clearance, volume: Volume, corridor_wkt: str | None) -> None:
        self.clearances[c.id] = c

    async def update(self, c: Clearance) -> None:
        self.clearances[c.id] = c

    async def get(self, cid: str) -> Clearance | None:
        return self.clearances.get(cid)

    async def in_states(self, states: Sequence[str]) -> list[Clearance]:
        return [c for c in self.clearances.values() if c.state in states]

    async def search(self, *, operator: str | None, all_operators: bool, state: str | None,
                     uav: str | None, limit: int) -> list[Clearance]:
        return []


class _Prebuilt(ClearanceService):
    """The service with the benchmark's volumes (built once) instead of building them again."""

    def __init__(self, volumes: Mapping[RouteRequest, Volume], **kw: Any) -> None:
        super().__init__(**kw)
        self.prebuilt = volumes

    def volume_of(self, request: RouteRequest) -> Volume:
        return self.prebuilt[request]


class _Alerts:
    """Stands in for the AlertManager: keeps the last conditions."""

    present: Sequence[Condition] = ()

    async def assess(self, types: frozenset[str], evaluated: Mapping[str, float],
                     present: Sequence[Condition], *,
                     evaluated_at: Mapping[str, Sequence[float]] | None = None) -> None:
        self.present = present


async def _service(routes: Mapping[str, RouteRequest], volumes: Mapping[str, Volume]
                   ) -> tuple[ClearanceService, _Alerts]:
    """Every route an active clearance of its UAV, loaded as at start-up."""
    clearances = [Clearance(cid, req, None, "active", (), volumes[cid].valid_from,
                            volumes[cid].valid_to, T0, T0) for cid, req in routes.items()]
    alerts = _Alerts()
    settings = Settings(clearance_time_tolerance_s=TOLERANCE_S, clearance_piece_s=PIECE_S)
    service = _Prebuilt({routes[cid]: v for cid, v in volumes.items()},
                        store=MemoryClearanceStore(clearances), alerts=cast(Any, alerts),
                        geofence=cast(Any, None), settings=settings)
    await service.start()
    return service, alerts


def _batch(routes: Mapping[str, RouteRequest], volumes: Mapping[str, Volume],
           rng: np.random.Generator, uavs: int, per_uav: int) -> list[Observation]:
    """per_uav reports of each of the first `uavs` clearances' UAVs, spread over the flight,
    a tenth of them 200 m north of the route; shuffled."""
    rows: list[Observation] = []
    for cid in list(volumes)[:uavs]:
        v, uav = volumes[cid], routes[cid].uav
        for j in range(per_uav):
            t = v.valid_from + (v.valid_to - v.valid_from) * (j + 1) / (per_uav + 1)
            lon, lat, alt = v.expected_position(t)
            if rng.random() < 0.1:
                lat += 200.0 / M_PER_DEG_LAT  # off the corridor
            rows.append(Observation(uav, t, lat, lon, alt, None, None, None, None, "airborne",
                                    None, None, "bench/http/native", t))
    order = rng.permutation(len(rows))
    return [rows[k] for k in order]


async def conformance_cost(service: ClearanceService, alerts: _Alerts,
                           batch: list[Observation], batches: int) -> dict[str, Any]:
    """Microseconds per observation of `on_committed` on one batch, median of `batches`: wall
    clock, and the process's CPU time (less sensitive to other work on the machine)."""
    await service.on_committed(batch, [])  # warm-up
    wall, cpu = [], []
    for _ in range(batches):
        t0, c0 = time.perf_counter(), time.process_time()
        await service.on_committed(batch, [])
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    uavs = len({r.uav for r in batch})
    return {"batch": len(batch), "uavs": uavs, "per_uav": len(batch) // uavs,
            "us_per_obs": round(statistics.median(wall) / len(batch) * 1e6, 2),
            "cpu_us_per_obs": round(statistics.median(cpu) / len(batch) * 1e6, 2),
            "off_route": sum(c.type == "off_route" for c in alerts.present)}


async def _conformance(routes: Mapping[str, RouteRequest], volumes: Mapping[str, Volume],
                       rng: np.random.Generator, batches: int) -> list[dict[str, Any]]:
    service, alerts = await _service(routes, volumes)
    n = len(volumes)
    return [await conformance_cost(service, alerts, _batch(routes, volumes, rng, uavs, per_uav),
                                   batches)
            for uavs, per_uav in ((min(1000, n), 1), (min(100, n), 10))]


def run(clearances: int = 1000, zones: int = 1000, requests: int = 300,
        naive: int = 60, seed: int = 11, batches: int = 21) -> dict[str, Any]:
    """Figures of one run: indexed and naive decisions/s, latencies, their ratio; the cost of
    conformance checks per observation."""
    rng = np.random.default_rng(seed)
    log(f"clearances: {clearances:,} reserved volumes, {zones:,} zones")
    t_setup = time.perf_counter()
    routes = {f"c{k:05d}": random_route(rng, f"U{k}") for k in range(clearances)}
    existing = {cid: _volume(req) for cid, req in routes.items()}
    screen = ZoneScreen(ZoneIndex(random_zones(zones, rng)))
    index = VolumeIndex(existing.items())
    setup_s = time.perf_counter() - t_setup
    heights = Heights()
    asks = [random_route(rng, f"N{k}") for k in range(requests)]
    _decide(asks[0], screen, heights, index.conflicts)  # warm-up

    indexed: list[float] = []
    denied = met = 0
    answers = []
    for req in asks:
        t0 = time.perf_counter()
        reasons, found = _decide(req, screen, heights, index.conflicts)
        indexed.append(time.perf_counter() - t0)
        denied += bool(reasons or found)
        met += bool(found)
        answers.append(found)

    log(f"clearances: {naive} decisions with the naive scan")
    scanned: list[float] = []
    equal = True
    for req, expected in zip(asks[:naive], answers, strict=False):
        t0 = time.perf_counter()
        _, found = _decide(req, screen, heights, lambda v: naive_conflicts(v, existing))
        scanned.append(time.perf_counter() - t0)
        equal = equal and found == expected

    pieces = sum(len(v) for v in existing.values())
    fast, slow = _stats(indexed), _stats(scanned)
    return {
        "clearances": clearances, "pieces": pieces, "zones": zones, "requests": requests,
        "setup_s": round(setup_s, 2),
        "indexed": {k: round(v, 2) for k, v in fast.items()},
        "naive": {k: round(v, 2) for k, v in slow.items()},
        "naive_requests": len(scanned),
        "ratio": round(fast["decisions_per_s"] / slow["decisions_per_s"], 1),
        "denied": denied, "meeting_a_clearance": met, "naive_equal": equal,
        "conformance": asyncio.run(_conformance(routes, existing, rng, batches)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clearances", type=int, default=10_000)
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--naive", type=int, default=60)
    parser.add_argument("--batches", type=int, default=21)
    args = parser.parse_args(argv)
    tune_as_server()  # lowalt/gcpolicy.py
    print(json.dumps(run(args.clearances, args.zones, args.requests, args.naive,
                         batches=args.batches), indent=2))


if __name__ == "__main__":
    main()
