"""Geofence check throughput: ZoneIndex.check against a naive per-point shapely loop.

    .venv/bin/python -m benchmarks.bench_geofence [--zones 10000] [--points 100000] [--naive 200]
        [--backend sqlite postgres] [--ingest-backend postgres] [--ingest-seconds 30]

Zones: random circles and star-shaped polygons (20..200 vertices), size log-uniform 30..600 m,
over Chongqing (lon 106.3..106.9, lat 29.4..29.9), with random altitude bands and references, a
fifth with a time window, a tenth with a weekly schedule, a tenth with authorised UAVs. Points:
uniform over the same area, heights 0..400 m, times over two weeks. The naive loop runs on the
first `--naive` points only and must give the same hits.

The check stage as ingest runs it (`Geofence.on_committed`: heights, the index check, the hits
as a condition batch, the alert manager's reconciliation; events to an in-memory store), on 100
batches of 5,000 reports from the ingest benchmark's fleet (10,000 UAVs, 30..120 m AGL, over the
zones' area) with the observation clock at 20,000 reports/s: microseconds per observation, split
into the index check and the rest, and alert events per 100,000 observations by state.

Also: reloading the zones (read from storage, parsed, indexed, prepared by a first check) per
backend, and, with `--ingest-seconds`, the gateway ingest benchmark (benchmarks/bench_ingest.py,
4 connections) on a fresh server without zones and on one with the same zones loaded, in two
rounds (the second in the other order, so a slow spell of the shared VM falls on both): the cut
in sustained observations/s, of the rates summed over the rounds. The fleet flies over the
zones' area, so the checks find real hits and raise real alerts: about 47 % of its UAVs are in a
breach or approach of a zone at any time (the zones cover about 46 % of the area). The same
zones spread over a box three times as wide and tall (7 % of the UAVs in a zone condition) are
run too, against the mean rate without zones: the difference between the two cuts is what the
alerts cost, not the geometry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import shapely
from shapely.geometry import Point, Polygon

from benchmarks.harness import database, log, lowalt_cli
from dispatch.alerts import AlertManager, Broadcaster, Condition
from dispatch.store import AlertStore
from geofence.index import ZoneHit, ZoneIndex
from geofence.service import Geofence, ZoneStore, zone_store_for, zones_from_stored
from geofence.worker import frame as worker_frame
from geofence.zones import REFERENCES, Zone, zone_to_feature
from lowalt.gcpolicy import tune_as_server
from lowalt.live import LiveState
from lowalt.models import Observation
from lowalt.settings import load_settings
from lowalt.storage import create_store

_A_M = 6_378_137.0
_E2 = 6.694_379_990_14e-3
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


_BOX_LON_DEG, _BOX_LAT_DEG = (106.3, 106.9), (29.4, 29.9)  # the ingest fleet flies here


def random_zones(n: int, rng: np.random.Generator, spread: float = 1.0) -> list[Zone]:
    """n random zones (module docstring) over the fleet's box, or with `spread` > 1 over a box
    that many times as wide and as tall about the same centre (the same zones, farther apart:
    fewer of the fleet's reports near one)."""
    lon_c, lat_c = sum(_BOX_LON_DEG) / 2, sum(_BOX_LAT_DEG) / 2
    zones = []
    for k in range(n):
        lon, lat = rng.uniform(*_BOX_LON_DEG), rng.uniform(*_BOX_LAT_DEG)
        if spread != 1.0:
            lon, lat = lon_c + (lon - lon_c) * spread, lat_c + (lat - lat_c) * spread
        size_m = float(np.exp(rng.uniform(math.log(30.0), math.log(600.0))))
        lower = None if rng.random() < 0.3 else float(rng.uniform(0.0, 100.0))
        upper = None if rng.random() < 0.3 else float(rng.uniform(150.0, 600.0))
        start = end = None
        if rng.random() < 0.2:
            start = T0 + rng.uniform(0, 7 * 86400)
            end = start + rng.uniform(3600, 7 * 86400)
        schedule = None
        if rng.random() < 0.1:
            days = frozenset(int(d) for d in rng.choice(7, size=rng.integers(1, 8), replace=False))
            schedule = ((days, int(rng.integers(0, 1440)), int(rng.integers(0, 1441))),)
        authorized = frozenset(f"UAV-{i}" for i in rng.integers(0, 500, 3)) if k % 10 == 0 else None
        common: dict[str, Any] = {
            "id": f"Z{k:05d}",
            "name": "",
            "restriction": "prohibited",
            "lower_m": lower,
            "upper_m": upper,
            "reference": REFERENCES[int(rng.integers(0, 3))],
            "start": start,
            "end": end,
            "schedule": schedule,
            "authorized": authorized or frozenset(),
        }
        if rng.random() < 0.5:
            zones.append(Zone(geometry=Point(lon, lat), radius_m=size_m, **common))
            continue
        n_vertices = int(rng.integers(20, 201))
        angle = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
        radius = size_m * (1.0 + 0.3 * np.sin(3 * angle + rng.uniform(0, 6)))
        dlon = radius * np.sin(angle) / (111_320.0 * math.cos(math.radians(lat)))
        dlat = radius * np.cos(angle) / 110_900.0
        shell = np.column_stack([lon + dlon, lat + dlat])
        zones.append(Zone(geometry=Polygon(shell), **common))
    return zones


def naive_hits(
    zones: list[Zone],
    lon: np.ndarray,
    lat: np.ndarray,
    heights: dict[str, np.ndarray],
    t: np.ndarray,
    uav: list[str],
) -> list[ZoneHit]:
    """One point at a time, one zone at a time, with plain shapely calls."""
    polygons = [z.polygon for z in zones]
    hits = []
    for i in range(lon.size):
        point = Point(lon[i], lat[i])
        phi = math.radians(lat[i])
        w = math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
        kx = _A_M / w * math.cos(phi) * math.pi / 180.0
        ky = _A_M * (1.0 - _E2) / w**3 * math.pi / 180.0
        for zone, polygon in zip(zones, polygons, strict=True):
            if not zone.active_at(float(t[i])) or uav[i] in zone.authorized:
                continue
            if zone.lower_m is not None and heights[zone.reference][i] < zone.lower_m:
                continue
            if zone.upper_m is not None and heights[zone.upper_ref][i] > zone.upper_m:
                continue
            if polygon.intersects(point):
                hits.append(ZoneHit(i, zone.id, "breach", 0.0))
                continue
            if polygon.distance(point) * 90_000.0 > zone.approach_m:  # 1 degree >= 96 km here
                continue
            origin, scale = np.array([lon[i], lat[i]]), np.array([kx, ky])
            local = shapely.transform(polygon, lambda c, o=origin, s=scale: (c - o) * s)
            distance_m = local.distance(Point(0.0, 0.0))
            if distance_m <= zone.approach_m:
                hits.append(ZoneHit(i, zone.id, "approach", distance_m))
    return hits


def random_points(n: int, rng: np.random.Generator) -> dict[str, Any]:
    """Observation columns over the zones' area: lon, lat, heights by reference, t, uav."""
    lon = rng.uniform(106.3, 106.9, n)
    lat = rng.uniform(29.4, 29.9, n)
    agl = rng.uniform(0.0, 400.0, n)
    heights = {"agl": agl, "amsl": agl + 250.0, "wgs84": agl + 220.0}
    t = T0 + rng.uniform(0.0, 14 * 86400, n)
    uav = [f"UAV-{i}" for i in rng.integers(0, 500, n)]
    return {"lon": lon, "lat": lat, "heights": heights, "t": t, "uav": uav}


def _check(index: ZoneIndex, p: dict[str, Any], rows: slice) -> list[ZoneHit]:
    h = p["heights"]
    return index.check(p["lon"][rows], p["lat"][rows], h["agl"][rows], h["amsl"][rows],
                       h["wgs84"][rows], p["t"][rows], p["uav"][rows])


async def _reload(url: str, zones: list[Zone]) -> dict[str, float]:
    """Store the zones, then time what a reload does: load, parse, index, first check."""
    store = create_store(load_settings({"database_url": url}, {}))
    await store.open()
    try:
        zone_store = zone_store_for(store)
        await zone_store.setup()
        await zone_store.insert(zones)
        started = time.perf_counter()
        rows = await zone_store.load()
        loaded = time.perf_counter()
        parsed = zones_from_stored(rows)
        built = time.perf_counter()
        index = ZoneIndex(parsed)
        indexed = time.perf_counter()
        index.check(np.array([106.6]), np.array([29.6]), np.array([50.0]), np.array([300.0]),
                    np.array([270.0]), np.array([T0]), ["first"])
        done = time.perf_counter()
        # After the new snapshot is in effect, the server hands its zones to the zone worker
        # (serialised on the event loop; the worker builds its own index meanwhile).
        handover_s = time.perf_counter()
        worker_frame(("zones", 1, index.zones))
        handover_s = time.perf_counter() - handover_s
    finally:
        await store.close()
    return {"total_s": round(done - started, 3), "load_s": round(loaded - started, 3),
            "parse_s": round(built - loaded, 3), "index_s": round(indexed - built, 3),
            "first_check_s": round(done - indexed, 3), "worker_handover_s": round(handover_s, 3)}


def _frame_at(fleet: Any, t: float) -> list[Observation]:
    """`Fleet.frame` (benchmarks/bench_ingest.py) at observation time t, as the committed rows
    the check stage gets."""
    return [Observation(uav, t, lat, lon, alt, speed, track, vspeed, agl, None, None, None,
                        "bench/gateway/native", t)
            for uav, _, lat, lon, alt, speed, track, vspeed, agl in fleet.frame(t)]


async def stage_cost(zones: list[Zone], batches: int = 100, batch: int = 5_000,
                     obs_per_s: float = 20_000.0, unregistered: bool = False) -> dict[str, Any]:
    """The geofence check stage per observation on the ingest benchmark's traffic, its clock
    running at `obs_per_s` (each batch `batch / obs_per_s` seconds of observation time on), and
    the alert events it raises per 100,000 observations, both after the batches in which every
    UAV of the fleet is seen once and its alerts open (two at least): a call of 1,000 reports
    then costs what it costs on a server that has seen its fleet, not the first sightings'
    opening events as well. `unregistered`: every UAV of the fleet also holds an open
    `unregistered_uav` alert first, as on a server fed the benchmark's unregistered fleet (the
    alert manager then holds 10,000 alerts of another type)."""
    from benchmarks.bench_conflicts import _MemoryAlertStore
    from benchmarks.bench_ingest import Fleet

    settings = load_settings({"geofence_worker": False}, {})  # the whole stage, in process
    store = _MemoryAlertStore()
    manager = AlertManager(cast(AlertStore, store), Broadcaster(), commit_delay_s=0.0)
    await manager.start()
    fleet_uavs = 10_000
    fleet = Fleet(0, 1, fleet_uavs, batch, seed=5)
    if unregistered:
        for name in fleet.names:
            await manager.open_or_update(Condition(
                "unregistered_uav", name, "warning", T0, 29.6, 106.5, 300.0,
                detail={"source": "bench/gateway/native"}))
        await manager.flush()
    geofence = Geofence(cast(ZoneStore, None), manager, LiveState(), settings)
    geofence.index = index = ZoneIndex(zones)
    stage_s = check_s = 0.0
    hits = n = 0
    warm_up = max(2, math.ceil(fleet_uavs / batch))  # every UAV of the fleet seen once
    events_before: dict[str, int] = {}
    try:
        for k in range(batches + warm_up):
            rows = _frame_at(fleet, T0 + k * batch / obs_per_s)
            t0 = time.perf_counter()
            await geofence.on_committed(rows, rows)
            t1 = time.perf_counter()
            await manager.flush()
            agl = np.array([r.agl_m for r in rows], np.float64)
            t2 = time.perf_counter()
            found = index.check(np.array([r.lon for r in rows]), np.array([r.lat for r in rows]),
                                agl, agl + 250.0, agl + 250.0, np.array([r.t for r in rows]),
                                [r.uav for r in rows])
            t3 = time.perf_counter()
            if k < warm_up:  # first use: every alert opens
                events_before = dict(store.by_state)
                continue
            stage_s += t1 - t0
            check_s += t3 - t2
            hits += len(found)
            n += len(rows)
    finally:
        await manager.close()
    steady = {state: store.by_state[state] - events_before.get(state, 0)
              for state in ("open", "updated", "resolved")}
    return {"observations": n, "batch": batch, "zones": len(zones), "obs_per_s": obs_per_s,
            "warm_up_observations": warm_up * batch, "fleet_uavs": fleet_uavs,
            "stage_us_per_obs": round(stage_s / n * 1e6, 2),
            "index_check_us_per_obs": round(check_s / n * 1e6, 2),
            "hits_per_obs": round(hits / n, 3), "alert_events": store.events,
            "events_per_100k_obs": {s: round(v * 1e5 / n) for s, v in steady.items()}}


def exposure(zones: list[Zone], connections: int = 4, uavs: int = 10_000) -> dict[str, float]:
    """How much of the gateway benchmark's fleet (its `connections` shares, as `stream_load`
    makes them) the zones catch now: the share of its UAVs in a breach or approach of a zone
    (the server's geofence check: heights, active windows, bands, authorisations) and zone
    hits per report."""
    from benchmarks.bench_ingest import Fleet

    now = time.time()
    rows = [row for n in range(connections)
            for row in _frame_at(Fleet(n, connections, uavs, uavs, seed=n), now)]
    geofence = Geofence(cast(ZoneStore, None), cast(AlertManager, None), LiveState(),
                        load_settings({}, {}))
    batch, _ = geofence.checked(rows, ZoneIndex(zones))
    return {"reports_in_condition": round(len(set(batch.uav)) / len(rows), 3),
            "hits_per_report": round(len(batch) / len(rows), 3)}


def import_zones(url: str, zones: list[Zone]) -> None:
    """Import zones into the database at url, as an operator would (`lowalt zones import`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zones.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection",
                                    "features": [zone_to_feature(z) for z in zones]}))
        lowalt_cli(url, "zones", "import", str(path), "--format", "geojson")


def ingest_impact(zones: list[Zone], backend: str, seconds: float, connections: int = 4,
                  also: dict[str, tuple[list[Zone], dict[str, str]]] | None = None,
                  rounds: int = 2) -> dict[str, Any]:
    """Gateway ingest without zones and with `zones` loaded (imported before start), in
    `rounds` rounds of both, each round's first run in turn (without, with; with, without;
    ...): minutes apart, runs of one code differ by up to 20 % on this shared VM, and a slow
    spell then falls on both sides alike. The cut is of the rates summed over the rounds (each
    round's own is listed); `without_zones` and `with_zones` are the first round's runs. Then
    each layout of `also` (zones, and environment for the server) once, its cut against the mean
    rate without zones (under `layouts`)."""
    from benchmarks.bench_ingest import gateway_run

    def bare_run() -> dict[str, Any]:
        log(f"geofence: ingest on {backend} without zones, {seconds:g} s")
        with database(backend) as url:
            return gateway_run(url, connections, seconds, label=f"{backend} no zones")

    def zoned_run(zone_list: list[Zone], env: dict[str, str] | None = None) -> dict[str, Any]:
        log(f"geofence: ingest on {backend} with {len(zone_list):,} zones, {seconds:g} s"
            + (f" ({env})" if env else ""))
        with database(backend) as url:
            import_zones(url, zone_list)
            return gateway_run(url, connections, seconds,
                               label=f"{backend} {len(zone_list)} zones", extra_env=env)

    def cut(with_rate: float, without_rate: float) -> float:
        return round(100.0 * (1.0 - with_rate / max(1.0, without_rate)), 1)

    bare: list[dict[str, Any]] = []
    zoned: list[dict[str, Any]] = []
    for r in range(rounds):
        for first in ((bare, zoned) if r % 2 == 0 else (zoned, bare)):
            first.append(bare_run() if first is bare else zoned_run(zones))
    bare_rates = [run["obs_per_s"] for run in bare]
    zoned_rates = [run["obs_per_s"] for run in zoned]
    bare_rate = sum(bare_rates) / len(bare_rates)
    out: dict[str, Any] = {
        "backend": backend, "connections": connections, "without_zones": bare[0],
        "with_zones": zoned[0], **exposure(zones, connections),
        "without_zones_obs_per_s": round(bare_rate),
        "with_zones_obs_per_s": round(sum(zoned_rates) / len(zoned_rates)),
        "cut_percent": cut(sum(zoned_rates), sum(bare_rates)),
        "rounds": [{"without_zones_obs_per_s": b, "with_zones_obs_per_s": z,
                    "cut_percent": cut(z, b)}
                   for b, z in zip(bare_rates, zoned_rates, strict=True)],
    }
    if also:
        out["layouts"] = {}
        for name, (zone_list, env) in also.items():
            run = zoned_run(zone_list, env)
            out["layouts"][name] = {"with_zones": run, **exposure(zone_list, connections),
                                    "cut_percent": cut(run["obs_per_s"], bare_rate)}
    return out


def run(zones: int = 10_000, points: int = 100_000, naive: int = 200, seed: int = 1,
        backends: list[str] | None = None, ingest_backend: str | None = None,
        ingest_seconds: float = 0.0) -> dict[str, Any]:
    """Check throughput against the naive loop; reload per backend; ingest cut (optional)."""
    rng = np.random.default_rng(seed)
    zone_list = random_zones(zones, rng)
    started = time.perf_counter()
    index = ZoneIndex(zone_list)
    build_s = time.perf_counter() - started
    p = random_points(points, rng)
    _check(index, p, slice(0, 1000))  # first use prepares geometries
    started = time.perf_counter()
    hits = _check(index, p, slice(None))
    check_s = time.perf_counter() - started

    m = min(naive, points)
    log(f"geofence: naive loop over {m} points x {zones:,} zones")
    started = time.perf_counter()
    slow = naive_hits(zone_list, p["lon"][:m], p["lat"][:m],
                      {k: v[:m] for k, v in p["heights"].items()}, p["t"][:m], p["uav"][:m])
    naive_s = time.perf_counter() - started
    fast = [(h.obs_index, h.zone_id, h.kind) for h in hits if h.obs_index < m]
    same = fast == [(h.obs_index, h.zone_id, h.kind) for h in slow]
    fast_rate, naive_rate = points / check_s, m / naive_s
    out: dict[str, Any] = {
        "zones": zones, "points": points, "build_s": round(build_s, 3),
        "check_s": round(check_s, 3), "points_per_s": round(fast_rate),
        "us_per_point": round(check_s / points * 1e6, 2), "hits": len(hits),
        "naive_points": m, "naive_points_per_s": round(naive_rate, 1),
        "naive_equal": same, "ratio": round(fast_rate / naive_rate),
        "reload": {},
    }
    log("geofence: the check stage on the ingest benchmark's traffic")
    stage_batches = 4 if points < 50_000 else 100
    out["stage"] = asyncio.run(stage_cost(zone_list, batches=stage_batches))
    # Calls of 1,000 reports, as the server makes them near 50,000 obs/s (a call per 20 ms
    # stage interval): the stage's cost per call is then spread over fewer reports.
    out["stage_1000"] = asyncio.run(stage_cost(zone_list, batches=5 * stage_batches,
                                               batch=1_000))
    out["stage_unregistered"] = asyncio.run(stage_cost(zone_list, batches=stage_batches,
                                                       unregistered=True))
    for backend in backends or []:
        log(f"geofence: reload {zones:,} zones from {backend}")
        with database(backend) as url:
            out["reload"][backend] = asyncio.run(_reload(url, zone_list))
    if ingest_backend and ingest_seconds > 0:
        # The same zones spread over a box three times as wide and tall: about a tenth as many
        # of the fleet's reports near one (what the cut owes to the alerts the zones raise).
        # And the same zones with the zone hits in a worker process (`geofence_worker`, off by
        # default): what the worker is worth, in the same sitting.
        spread = random_zones(zones, np.random.default_rng(seed), spread=3.0)
        out["ingest_impact"] = ingest_impact(
            zone_list, ingest_backend, ingest_seconds,
            also={"spread x3": (spread, {}),
                  "with the zone hits in a worker process": (
                      zone_list, {"LOWALT_GEOFENCE_WORKER": "true"})})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--naive", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backend", nargs="*", default=["sqlite"],
                        choices=("sqlite", "postgres"), help="reload from these backends")
    parser.add_argument("--ingest-backend", choices=("sqlite", "postgres"))
    parser.add_argument("--ingest-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    tune_as_server()  # lowalt/gcpolicy.py
    print(json.dumps(run(args.zones, args.points, args.naive, args.seed, args.backend,
                         args.ingest_backend, args.ingest_seconds), indent=2))


if __name__ == "__main__":
    main()
