"""Traffic-monitor ticks at city scale, against the all-pairs reference on the same data.

Traffic: N aircraft around lon 106.55, lat 29.65 in a 50 x 50 km square (within 25 km of the
centre on each axis); 80 % spread uniformly, 20 % around 20 hubs (1.5 km standard deviation).
Altitudes 30..120 m, UAV speeds 0..20 m/s on random tracks, 20 % climbing or descending at up to
3 m/s, 1 % with unknown velocity, report ages 0..2 s (2 % satellite-late, 5..30 s). Ten crewed
helicopters at 30..60 m/s. The dense hub: N aircraft uniformly within 1 km x 1 km, the same
speeds and altitudes.

    .venv/bin/python -m benchmarks.bench_conflicts [--n 1000 10000 100000] [--hub 2000] [--runs 7]

Two figures per N: `detect_conflicts` alone (column arrays in, pairs out: median of `runs`), and
a whole `TrafficMonitor.tick` over a live picture of N observations (the arrays built from the
live rows, detection, one condition per pair, the alert manager's reconciliation, telemetry_lost;
alert events go to an in-memory store): the median of `runs` ticks one second apart, every
aircraft reporting again (one second further on) before each, after a first tick that opens
every alert (reported apart: a sky going from no traffic to all of it at once). Then the first
tick after a restart: a new alert manager loads the open alerts from the store, as the server
does, and a new monitor ticks over the same picture. Memory: the peak of what one tick allocates
(tracemalloc), per aircraft. The naive O(N^2) reference runs once, on the same data, for
N <= 20,000. Above that its time is estimated from a random subsample of 10,000 aircraft scaled by
(N / 10,000)^2, and printed as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from benchmarks.harness import log
from dispatch.alerts import AlertEvent, AlertManager, Broadcaster
from dispatch.store import AlertStore, LoadedState
from geofence.conflicts import ConflictParams, detect_conflicts, detect_conflicts_naive
from geofence.monitor import TrafficMonitor
from lowalt.gcpolicy import tune_as_server
from lowalt.live import LiveState
from lowalt.models import Observation
from lowalt.settings import load_settings

CENTRE_LAT, CENTRE_LON = 29.65, 106.55
HALF_SIDE_M = 25_000.0
NAIVE_FULL_MAX_N = 20_000
NAIVE_SAMPLE_N = 10_000
TICK_T = 1_700_000_000.0


def city_traffic(n: int, seed: int = 5, hub_side_m: float | None = None) -> dict[str, Any]:
    """Random city traffic as the column arrays `detect_conflicts` takes; with `hub_side_m`,
    all of it within one square of that side."""
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
    if hub_side_m is not None:
        east = rng.uniform(-hub_side_m / 2, hub_side_m / 2, n)
        north = rng.uniform(-hub_side_m / 2, hub_side_m / 2, n)
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


def detection(data: dict[str, Any], runs: int, naive_full_max_n: int = NAIVE_FULL_MAX_N,
              naive_sample_n: int = NAIVE_SAMPLE_N) -> dict[str, Any]:
    """Median `detect_conflicts` time on data, candidates, conflicts; the naive reference."""
    params = ConflictParams()
    n = len(data["lat"])
    stats: dict[str, int] = {}
    detect_conflicts(**data, params=params)  # warm-up
    times = []
    found = []
    for _ in range(runs):
        t0 = time.perf_counter()
        found = detect_conflicts(**data, params=params, stats=stats)
        times.append(time.perf_counter() - t0)
    tick_ms = statistics.median(times) * 1e3
    row: dict[str, Any] = {
        "n": n, "runs": runs, "tick_ms": round(tick_ms, 2),
        "tick_ms_min": round(min(times) * 1e3, 2),
        "candidate_pairs": stats["candidate_pairs"], "conflicts": len(found),
        "separation_loss": sum(p.kind == "separation_loss" for p in found),
    }
    if n <= naive_full_max_n:
        t0 = time.perf_counter()
        reference = detect_conflicts_naive(**data, params=params)
        row["naive_ms"] = (time.perf_counter() - t0) * 1e3
        row["naive"] = "measured once"
        row["naive_equal"] = reference == found
    else:
        k = min(naive_sample_n, n)
        t0 = time.perf_counter()
        detect_conflicts_naive(**_subsample(data, k), params=params)
        scale = (n / k) ** 2
        row["naive_ms"] = (time.perf_counter() - t0) * 1e3 * scale
        row["naive"] = f"estimated: {k} subsample x {scale:g}"
    row["naive_ms"] = round(row["naive_ms"], 1)
    row["ratio"] = round(row["naive_ms"] / tick_ms, 1)
    return row


class _MemoryAlertStore:
    """Just enough of an AlertStore for the manager: events are counted, by state, and each open
    alert's last event kept, so a second manager can start from it as after a restart."""

    def __init__(self) -> None:
        self.events = 0
        self.by_state: Counter[str] = Counter()
        self.open: dict[int, tuple[AlertEvent, float]] = {}  # alert_id -> (last event, opened_at)

    async def load_state(self) -> LoadedState:
        return LoadedState(self.events, max(self.open, default=0), list(self.open.values()))

    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        self.events += len(events)
        self.by_state.update(e.state for e in events)
        for e in events:
            if e.state == "resolved":
                self.open.pop(e.alert_id, None)
            else:
                opened_at = e.raised_at if e.state == "open" else self.open[e.alert_id][1]
                self.open[e.alert_id] = (e, opened_at)

    async def max_seq(self) -> int:
        return self.events


def live_rows(data: dict[str, Any]) -> list[Observation]:
    """The traffic as the live picture holds it (unknown velocity as None; crewed via SBS)."""
    def opt(v: float) -> float | None:
        return None if math.isnan(v) else v

    cols = [data[k].tolist() for k in ("lat", "lon", "alt_m", "t", "speed_mps", "track_deg",
                                       "vspeed_mps", "crewed")]
    return [
        Observation(f"A{k:06d}", t, lat, lon, alt, opt(speed), opt(track), opt(vs), None,
                    "airborne", None, None, "bench/gateway/sbs" if crewed else
                    "bench/gateway/native", t)
        for k, (lat, lon, alt, t, speed, track, vs, crewed) in enumerate(zip(*cols, strict=True))
    ]


def moved(data: dict[str, Any], dt_s: float) -> dict[str, Any]:
    """The same traffic dt_s later: every aircraft reported again, dt_s further along its
    velocity (report ages kept), so successive ticks see the same picture moving on."""
    speed = np.nan_to_num(data["speed_mps"])
    track = np.radians(np.nan_to_num(data["track_deg"]))
    m_per_deg_lat = 110_850.0
    m_per_deg_lon = m_per_deg_lat * np.cos(np.radians(CENTRE_LAT))
    return {
        **data,
        "lat": data["lat"] + speed * np.cos(track) * dt_s / m_per_deg_lat,
        "lon": data["lon"] + speed * np.sin(track) * dt_s / m_per_deg_lon,
        "alt_m": data["alt_m"] + np.nan_to_num(data["vspeed_mps"]) * dt_s,
        "t": data["t"] + dt_s,
        "tick_t": data["tick_t"] + dt_s,
    }


async def monitor_ticks(data: dict[str, Any], runs: int) -> dict[str, Any]:
    """Whole monitor ticks over a live picture of the traffic; see the module docstring. Before
    each tick (untimed) every aircraft reports again, one second on."""
    settings = load_settings({}, {})
    live = LiveState()
    live.update(live_rows(data))
    store = _MemoryAlertStore()
    manager = AlertManager(cast(AlertStore, store), Broadcaster(), commit_delay_s=0.0)
    await manager.start()
    try:
        monitor = TrafficMonitor(live, manager, settings)
        first = await monitor.tick(float(data["tick_t"]))
        await manager.flush()
        first_events = store.events
        times = []
        tick_events = []
        for k in range(1, runs + 2):
            now = moved(data, float(k))
            live.update(live_rows(now))
            if k <= runs:
                before_events = store.events
                result = await monitor.tick(float(now["tick_t"]))
                times.append(result.seconds)
                await manager.flush()
                tick_events.append(store.events - before_events)
            else:  # one more tick, for its memory
                tracemalloc.start()
                before, _ = tracemalloc.get_traced_memory()
                await monitor.tick(float(now["tick_t"]))
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            await manager.flush()
    finally:
        await manager.close()
    # A restart with the same sky: a new manager loads the open alerts, a new monitor ticks.
    restarted = AlertManager(cast(AlertStore, store), Broadcaster(), commit_delay_s=0.0)
    await restarted.start()
    try:
        before_events = store.events
        after_restart = await TrafficMonitor(live, restarted, settings).tick(
            float(now["tick_t"]) + 1.0)
        await restarted.flush()
        restart_events = store.events - before_events
    finally:
        await restarted.close()
    n = len(live)
    return {
        "n": n, "runs": runs, "first_tick_ms": round(first.seconds * 1e3, 1),
        "restart_tick_ms": round(after_restart.seconds * 1e3, 1),
        "restart_tick_events": restart_events,
        "tick_ms": round(statistics.median(times) * 1e3, 2),
        "tick_ms_max": round(max(times) * 1e3, 2),
        "aircraft": first.aircraft, "conflicts": first.conflicts, "telemetry_lost": first.lost,
        "alert_events": store.events, "first_tick_events": first_events,
        "events_per_tick": round(statistics.median(tick_events)),
        "events_per_tick_max": max(tick_events),
        "tick_peak_bytes_per_uav": round((peak - before) / n),
        "persistent_bytes_per_uav": round(_persistent_bytes(monitor) / n, 1),
    }


def _persistent_bytes(monitor: TrafficMonitor) -> int:
    """What the monitor keeps between ticks: its set of lost UAVs and per-gateway limits."""
    import sys

    return (sys.getsizeof(monitor.lost) + sum(sys.getsizeof(u) for u in monitor.lost)
            + sys.getsizeof(monitor.lost_after_by_gateway))


def run(ns: Sequence[int] = (1_000, 10_000, 100_000), runs: int = 7, hub: int = 2_000,
        monitor: bool = True) -> dict[str, Any]:
    """City ticks per N, the dense hub, and (monitor) whole monitor ticks."""
    out: dict[str, Any] = {"city": [], "monitor": []}
    cases: list[tuple[str, dict[str, Any]]] = [(f"city {n:,}", city_traffic(n)) for n in ns]
    if hub:
        cases.append((f"hub {hub:,} in 1 km2", city_traffic(hub, hub_side_m=1_000.0)))
    for label, data in cases:
        log(f"conflicts: {label}")
        row = detection(data, runs)
        if label.startswith("hub"):
            out["hub"] = row
        else:
            out["city"].append(row)
        if monitor:
            tick = asyncio.run(monitor_ticks(data, runs))
            tick["case"] = "hub" if label.startswith("hub") else "city"
            out["monitor"].append(tick)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--hub", type=int, default=2_000, help="dense hub size, 0 for none")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--no-monitor", action="store_true", help="detection only")
    args = parser.parse_args(argv)
    tune_as_server()  # lowalt/gcpolicy.py
    print(json.dumps(run(args.n, args.runs, args.hub, not args.no_monitor), indent=2))


if __name__ == "__main__":
    main()
