"""Conflict detection at city scale: one tick of `detect_conflicts` against the all-pairs reference.

Traffic: N aircraft around lon 106.55, lat 29.65 in a 40 x 40 km square (within 20 km of the
centre on each axis); 80 % spread uniformly, 20 % around 20 hubs (1.5 km standard deviation).
Altitudes 30..120 m, UAV speeds 0..20 m/s on random tracks, 20 % climbing or descending at up to
3 m/s, 1 % with unknown velocity, report ages 0..2 s (2 % satellite-late, 5..30 s). Ten crewed
helicopters at 30..60 m/s.

    .venv/bin/python benchmarks/bench_conflicts.py [--n 10000 100000] [--runs 7]

The naive O(N^2) reference runs once, on the same data, for N <= 20,000. Above that its time is
estimated from a random subsample of 10,000 aircraft scaled by (N / 10,000)^2, and printed as such.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from geofence.conflicts import ConflictParams, detect_conflicts, detect_conflicts_naive

CENTRE_LAT, CENTRE_LON = 29.65, 106.55
HALF_SIDE_M = 20_000.0
NAIVE_FULL_MAX_N = 20_000
NAIVE_SAMPLE_N = 10_000
TICK_T = 1_700_000_000.0


def city_traffic(n: int, seed: int = 5) -> dict[str, Any]:
    """Random city traffic as the column arrays `detect_conflicts` takes."""
    rng = np.random.default_rng(seed)
    n_hub = n // 5
    hubs = rng.uniform(-0.8 * HALF_SIDE_M, 0.8 * HALF_SIDE_M, size=(20, 2))
    east = rng.uniform(-HALF_SIDE_M, HALF_SIDE_M, n)
    north = rng.uniform(-HALF_SIDE_M, HALF_SIDE_M, n)
    which = rng.integers(0, len(hubs), n_hub)
    east[:n_hub] = hubs[which, 0] + rng.normal(0.0, 1_500.0, n_hub)
    north[:n_hub] = hubs[which, 1] + rng.normal(0.0, 1_500.0, n_hub)
    np.clip(east, -HALF_SIDE_M, HALF_SIDE_M, out=east)
    np.clip(north, -HALF_SIDE_M, HALF_SIDE_M, out=north)
    m_per_deg_lat = 110_850.0
    m_per_deg_lon = m_per_deg_lat * np.cos(np.radians(CENTRE_LAT))

    speed = rng.uniform(0.0, 20.0, n)
    vspeed = np.where(rng.random(n) < 0.2, rng.uniform(-3.0, 3.0, n), 0.0)
    track = rng.uniform(0.0, 360.0, n)
    unknown = rng.random(n) < 0.01
    speed[unknown] = np.nan
    track[unknown] = np.nan
    vspeed[unknown] = np.nan
    age = rng.uniform(0.0, 2.0, n)
    late = rng.random(n) < 0.02
    age[late] = rng.uniform(5.0, 30.0, int(late.sum()))
    crewed = np.zeros(n, dtype=bool)
    crewed[rng.choice(n, size=min(10, n), replace=False)] = True
    speed[crewed] = rng.uniform(30.0, 60.0, int(crewed.sum()))
    return {
        "lat": CENTRE_LAT + north / m_per_deg_lat,
        "lon": CENTRE_LON + east / m_per_deg_lon,
        "alt_m": rng.uniform(30.0, 120.0, n),
        "t": TICK_T - age,
        "speed_mps": speed,
        "track_deg": track,
        "vspeed_mps": vspeed,
        "crewed": crewed,
        "tick_t": TICK_T,
    }


def _subsample(data: dict[str, Any], k: int, seed: int = 6) -> dict[str, Any]:
    rows = np.sort(np.random.default_rng(seed).choice(len(data["lat"]), size=k, replace=False))
    return {key: (v if key == "tick_t" else v[rows]) for key, v in data.items()}


def run(ns: list[int], runs: int = 7) -> list[dict[str, Any]]:
    """One result dict per N: median tick ms, candidate pairs, conflicts, naive ms and ratio."""
    params = ConflictParams()
    results: list[dict[str, Any]] = []
    for n in ns:
        data = city_traffic(n)
        stats: dict[str, int] = {}
        detect_conflicts(**data, params=params)  # warm-up
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            found = detect_conflicts(**data, params=params, stats=stats)
            times.append(time.perf_counter() - t0)
        tick_ms = statistics.median(times) * 1e3
        row: dict[str, Any] = {
            "n": n,
            "runs": runs,
            "tick_ms": tick_ms,
            "tick_ms_min": min(times) * 1e3,
            "candidate_pairs": stats["candidate_pairs"],
            "conflicts": len(found),
            "separation_loss": sum(p.kind == "separation_loss" for p in found),
        }
        if n <= NAIVE_FULL_MAX_N:
            t0 = time.perf_counter()
            reference = detect_conflicts_naive(**data, params=params)
            row["naive_ms"] = (time.perf_counter() - t0) * 1e3
            row["naive"] = "measured once"
            row["naive_equal"] = reference == found
        else:
            t0 = time.perf_counter()
            detect_conflicts_naive(**_subsample(data, NAIVE_SAMPLE_N), params=params)
            scale = (n / NAIVE_SAMPLE_N) ** 2
            row["naive_ms"] = (time.perf_counter() - t0) * 1e3 * scale
            row["naive"] = f"estimated: {NAIVE_SAMPLE_N} subsample x {scale:g}"
        row["ratio"] = row["naive_ms"] / tick_ms
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    for row in run(args.n, args.runs):
        line = (
            f"N={row['n']:>7}  tick {row['tick_ms']:8.1f} ms (median of {row['runs']}, "
            f"min {row['tick_ms_min']:.1f})  candidates {row['candidate_pairs']:>9}  "
            f"conflicts {row['conflicts']:>6} ({row['separation_loss']} lost now)  "
            f"naive {row['naive_ms']:9.0f} ms [{row['naive']}]  ratio {row['ratio']:.0f}x"
        )
        if "naive_equal" in row:
            line += f"  equal={row['naive_equal']}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
