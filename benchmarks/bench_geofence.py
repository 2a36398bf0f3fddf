"""Geofence check throughput: ZoneIndex.check against a naive per-point shapely loop.

    .venv/bin/python benchmarks/bench_geofence.py [--zones 10000] [--points 100000] [--naive 200]

Zones: random circles and star-shaped polygons (20..200 vertices), size log-uniform 30..600 m,
over Chongqing (lon 106.3..106.9, lat 29.4..29.9), with random altitude bands and references, a
fifth with a time window, a tenth with a weekly schedule, a tenth with authorised UAVs. Points:
uniform over the same area, heights 0..400 m, times over two weeks. The naive loop runs on the
first `--naive` points only and must give the same hits.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import shapely
from shapely.geometry import Point, Polygon

from geofence.index import ZoneHit, ZoneIndex
from geofence.zones import REFERENCES, Zone

_A_M = 6_378_137.0
_E2 = 6.694_379_990_14e-3
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


def random_zones(n: int, rng: np.random.Generator) -> list[Zone]:
    zones = []
    for k in range(n):
        lon, lat = rng.uniform(106.3, 106.9), rng.uniform(29.4, 29.9)
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
        common = {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--naive", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)

    zones = random_zones(args.zones, rng)
    started = time.perf_counter()
    index = ZoneIndex(zones)
    build_s = time.perf_counter() - started

    n = args.points
    lon = rng.uniform(106.3, 106.9, n)
    lat = rng.uniform(29.4, 29.9, n)
    agl = rng.uniform(0.0, 400.0, n)
    heights = {"agl": agl, "amsl": agl + 250.0, "wgs84": agl + 220.0}
    t = T0 + rng.uniform(0.0, 14 * 86400, n)
    uav = [f"UAV-{i}" for i in rng.integers(0, 500, n)]

    index.check(
        lon[:1000],
        lat[:1000],
        agl[:1000],
        heights["amsl"][:1000],
        heights["wgs84"][:1000],
        t[:1000],
        uav[:1000],
    )  # first use prepares geometries
    started = time.perf_counter()
    hits = index.check(lon, lat, agl, heights["amsl"], heights["wgs84"], t, uav)
    check_s = time.perf_counter() - started

    m = min(args.naive, n)
    started = time.perf_counter()
    naive = naive_hits(
        zones, lon[:m], lat[:m], {k: v[:m] for k, v in heights.items()}, t[:m], uav[:m]
    )
    naive_s = time.perf_counter() - started
    fast = [h for h in hits if h.obs_index < m]
    same = [(h.obs_index, h.zone_id, h.kind) for h in fast] == [
        (h.obs_index, h.zone_id, h.kind) for h in naive
    ]

    fast_rate, naive_rate = n / check_s, m / naive_s
    print(f"zones {args.zones}, points {n}, build {build_s * 1e3:.0f} ms")
    print(
        f"ZoneIndex.check: {check_s:.3f} s, {fast_rate:,.0f} points/s, "
        f"{check_s / n * 1e6:.2f} us/point, {len(hits)} hits"
    )
    print(
        f"naive loop ({m} points): {naive_s:.3f} s, {naive_rate:,.0f} points/s, "
        f"{len(naive)} hits, same hits: {same}"
    )
    print(f"ratio: {fast_rate / naive_rate:,.0f}x")


if __name__ == "__main__":
    main()
