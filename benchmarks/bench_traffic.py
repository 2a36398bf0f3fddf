"""Fusion and the live traffic feed at city scale: 5,000 aircraft reporting at 1 Hz.

Traffic: N aircraft around lon 106.55, lat 29.65; 40 % are heard twice (native telemetry over a
satellite relay, and their F3411 broadcast under an alias, 0.3 s later and 8 m off), the rest
once. Reports arrive in commit-sized batches (500 rows).

Parts, all in `run()`:
- fusion: `FusedPicture.add` plus the cross-check's pairing and vectorised comparison, per
  observation (the fusion check stage's work, without the alert manager);
- monitor: whole `TrafficMonitor.tick`s over the fused picture (the server's path), the picture
  fed one second of reports before each tick;
- fan-out: one second of the feed for 20 clients at rate_hz=1: every aircraft updated, then each
  view flushed once; (a) all 20 clients with the same view (one shared diff), (b) 20 different
  views (20 diffs). CPU per second of traffic, and bytes queued;
- feed delay, simulated time (machine-independent): N aircraft at 1 Hz with their phases spread
  over the second (as the e2e sender's ten slices), each report fused the moment it is made, the
  flusher called every 0.1 s and 3 ms late each time (a busy loop), one client at rate_hz=1. The
  age of each state it receives at its flush (flush time - the state's `t`) is what the feed
  itself adds to ingest and transport; also the most states of one aircraft and the shortest
  gap between two, against the rate limit;
- end to end (`--e2e`, seconds given): a real server process (`lowalt serve`, SQLite), one
  gateway sending N aircraft at 1 Hz, 20 SSE clients at rate_hz=1; age of each state at its
  arrival (arrival wall time - the state's `t`, both on this machine's clock). It includes the
  gateway's send and commit, fusion, the wait for the view's next flush (the feed flushes every
  0.1 s; an aircraft whose report comes less than 1 s after its previous update waits for the
  rest of that second, the rate limit), encoding and the SSE write to 20 clients, and the
  client's own reading and JSON parsing (one client parses every state).

    .venv/bin/python -m benchmarks.bench_traffic [--n 5000] [--clients 20] [--e2e 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from benchmarks.bench_conflicts import _MemoryAlertStore
from benchmarks.harness import cpu_s as process_cpu_s
from benchmarks.harness import database, log, percentile, server
from dispatch.alerts import AlertManager, Broadcaster
from dispatch.store import AlertStore
from dispatch.traffic import TrafficFeed
from geofence.fusion_stage import CrossCheck
from geofence.monitor import TrafficMonitor
from ingest.client import GatewayClient
from lowalt.fusion import M_PER_DEG, FusedPicture, Identities
from lowalt.gcpolicy import tune_as_server
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.models import Observation, Principal, Rows, floats_of, values_of
from lowalt.settings import load_settings
from lowalt.storage import UavRecord

CENTRE_LAT, CENTRE_LON = 29.65, 106.55
BATCH = 500
REGULATOR = Principal(0, "bench", "regulator")


@dataclass
class StaticRegistry:
    by_uav: Mapping[str, UavRecord] = field(default_factory=dict)
    alias_to_uav: Mapping[str, str] = field(default_factory=dict)


def fleet(n: int, seed: int = 7) -> tuple[StaticRegistry, list[tuple[float, float, bool]]]:
    """Registry (every aircraft registered, the heard-twice ones with an alias) and per aircraft
    (lat, lon, heard twice)."""
    rnd = random.Random(seed)
    records, aliases, spots = {}, {}, []
    for k in range(n):
        twice = rnd.random() < 0.4
        uav = f"U{k:05d}"
        records[uav] = UavRecord(uav, f"op{k % 50}", (f"SN{k:08d}",) if twice else ())
        if twice:
            aliases[f"SN{k:08d}"] = uav
        spots.append((CENTRE_LAT + rnd.uniform(-0.18, 0.18),
                      CENTRE_LON + rnd.uniform(-0.2, 0.2), twice))
    return StaticRegistry(records, aliases), spots


def second_of_reports(spots: list[tuple[float, float, bool]], t: float) -> list[Observation]:
    rows = []
    for k, (lat, lon, twice) in enumerate(spots):
        moved = lat + 12.0 * (t % 600) / M_PER_DEG
        rows.append(Observation(f"U{k:05d}", t + k * 1e-4, moved, lon, 120.0, 12.0, 0.0, 0.0,
                                60.0, "airborne", 10.0, 15.0, "sat/gateway/native", t))
        if twice:
            rows.append(Observation(f"SN{k:08d}", t + k * 1e-4 + 0.3, moved + 8 / M_PER_DEG, lon,
                                    121.0, 12.0, 0.0, 0.0, None, "airborne", 30.0, 45.0,
                                    "rx-1/gateway/f3411", t))
    return rows


# The columns of a stage call that other stages read too (the live picture: uav, t; the
# geofence stage: uav, lon, lat, alt_m, t, agl_m), built before fusion runs on the server.
SHARED_FLOATS = ("t", "lat", "lon", "alt_m", "agl_m")


def bench_fusion(n: int, seconds: int = 5, shared: bool = False) -> dict[str, Any]:
    """Fusion per observation: filing, cross-check and the refresh of once a second. With
    `shared`, each batch comes as the server hands it to the stages (`Rows`) with the columns
    other stages also read already built (untimed): what fusion adds on the server. Without,
    fusion builds every column itself (a plain list)."""
    registry, spots = fleet(n)
    picture = FusedPicture(Identities(registry))
    check = CrossCheck(picture, floor_m=100.0, k=2.0, default_acc_h_m=30.0)
    t0 = 1_764_000_000.0
    batches = [second_of_reports(spots, t0 + s) for s in range(seconds + 1)]
    for start in range(0, len(batches[0]), BATCH):  # warm-up: every aircraft exists
        picture.add(batches[0][start:start + BATCH])
    picture.refresh()
    add_s = check_s = refresh_s = 0.0
    observations = mismatches = fused = 0
    for rows in batches[1:]:
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            if shared:
                batch = Rows(batch)
                values_of(batch, "uav")
                for name in SHARED_FLOATS:
                    floats_of(batch, name)
            t1 = time.perf_counter()
            checked = picture.add(batch)
            t2 = time.perf_counter()
            _, present, _ = check.cross_check(check.pairs(checked))
            t3 = time.perf_counter()
            add_s += t2 - t1
            check_s += t3 - t2
            observations += len(batch)
            mismatches += len(present)
        t4 = time.perf_counter()
        fused += len(picture.refresh())  # once a second, as the feed and the monitor do
        refresh_s += time.perf_counter() - t4
    return {
        "aircraft": len(picture), "observations": observations,
        "file_us_per_obs": round(add_s / observations * 1e6, 2),
        "crosscheck_us_per_obs": round(check_s / observations * 1e6, 2),
        "refresh_ms_per_s": round(refresh_s / seconds * 1e3, 2),
        "fusion_us_per_obs": round((add_s + check_s + refresh_s) / observations * 1e6, 2),
        "fused_states_per_s": round(fused / (add_s + check_s + refresh_s)),
        "observations_per_s": round(observations / (add_s + check_s + refresh_s)),
        "false_mismatches": mismatches,
    }


async def bench_monitor(n: int, ticks: int = 10) -> dict[str, Any]:
    """Whole monitor ticks over the fused picture, as the server runs them: every second each
    aircraft reports (twice for the 40 % heard twice, in 500-row batches, untimed), then one
    tick (its refresh, columns, pair search, alert assessment). Median and slowest tick."""
    registry, spots = fleet(n)
    picture = FusedPicture(Identities(registry))
    manager = AlertManager(cast(AlertStore, _MemoryAlertStore()), Broadcaster(),
                           commit_delay_s=0.0)
    await manager.start()
    monitor = TrafficMonitor(LiveState(), manager, load_settings({}, {}), fused=picture)
    t0 = 1_764_000_000.0
    times = []
    try:
        for s in range(ticks + 2):
            rows = second_of_reports(spots, t0 + s)
            for start in range(0, len(rows), BATCH):
                picture.add(rows[start:start + BATCH])
            result = await monitor.tick(t0 + s + 1.0)
            await manager.flush()
            if s >= 2:  # the first two: every alert opens
                times.append(result.seconds)
    finally:
        await manager.close()
    return {"aircraft": n, "ticks": ticks, "tick_ms": round(statistics.median(times) * 1e3, 2),
            "tick_ms_max": round(max(times) * 1e3, 2), "fresh": result.aircraft,
            "conflicts": result.conflicts}


async def bench_fanout(n: int, clients: int, seconds: int = 5) -> dict[str, Any]:
    registry, spots = fleet(n)
    results: dict[str, Any] = {"aircraft": n, "clients": clients}
    for case in ("same_view", "distinct_views"):
        picture = FusedPicture(Identities(registry))
        t0 = time.time() - seconds - 2
        t_end = t0 + seconds + 1
        feed = TrafficFeed(picture, gone_after_s=60.0, max_clients=1000, buffer_bytes=1 << 30,
                           heartbeat_s=15.0, write_timeout_s=10.0, metrics=Metrics(),
                           clock=functools.partial(float, t_end))
        conns = []
        for c in range(clients):
            bbox = ((-180.0, -90.0, 180.0, 90.0) if case == "same_view"
                    else (CENTRE_LON - 0.2 - c * 1e-4, CENTRE_LAT - 0.18, CENTRE_LON + 0.2,
                          CENTRE_LAT + 0.18))
            client = feed.connect(REGULATOR, bbox, 1.0)
            assert client is not None
            conns.append(client)
        now = time.monotonic() + 1.0  # the views' first flushes are due
        rows = second_of_reports(spots, t0)
        picture.add(rows)
        feed.flush_due(now)  # the first flush: every client's snapshot
        for client in conns:
            await client.get(0)
        flush_s, queued = [], 0
        for s in range(1, seconds + 1):
            picture.add(second_of_reports(spots, t0 + s))
            picture.refresh()  # fusion: measured by bench_fusion, not here
            now += 1.0
            started = time.perf_counter()
            feed.flush_due(now)
            flush_s.append(time.perf_counter() - started)
            for client in conns:
                queued += sum(len(f.sse) for f in await client.get(0))
        results[case] = {
            "flush_ms_per_s": round(statistics.median(flush_s) * 1e3, 2),
            "mb_queued_per_s": round(queued / seconds / 1e6, 2),
        }
    return results


async def bench_feed_delay(n: int, seconds: int = 20) -> dict[str, Any]:
    registry, spots = fleet(n)
    picture = FusedPicture(Identities(registry))
    t0 = 1_764_000_000.0
    wall = [t0]
    feed = TrafficFeed(picture, gone_after_s=60.0, max_clients=10, buffer_bytes=1 << 30,
                       heartbeat_s=15.0, write_timeout_s=10.0, metrics=Metrics(),
                       clock=lambda: wall[0])
    client = feed.connect(REGULATOR, (-180.0, -90.0, 180.0, 90.0), 1.0)
    assert client is not None
    monotonic0 = time.monotonic() + 5.0  # past the view's first flush
    slices, warmup = 10, 5.0
    ages: list[float] = []
    seen: dict[str, list[float]] = {}
    sim, next_slice = 0.0, 0.0
    while sim < warmup + seconds:
        while next_slice <= sim:  # the slices due by now, fused as they are made
            part = round(next_slice * slices) % slices
            t = t0 + next_slice
            picture.add([
                Observation(f"U{k:05d}", t, lat + 12.0 * next_slice / M_PER_DEG, lon, 120.0,
                            12.0, 0.0, 0.0, 60.0, "airborne", 10.0, 15.0, "sat/gateway/native", t)
                for k, (lat, lon, _) in enumerate(spots) if k % slices == part])
            next_slice = round(next_slice + 1 / slices, 6)
        wall[0] = t0 + sim
        feed.flush_due(monotonic0 + sim)
        for flush in await client.get(0):
            if sim < warmup:
                continue
            for item in json.loads(flush.text):
                if "t" in item:
                    ages.append(sim - (item["t"] - t0))
                    seen.setdefault(item["uav"], []).append(sim)
        sim += 0.103
    gaps = [b - a for times in seen.values() for a, b in itertools.pairwise(times)]
    return {
        "aircraft": n, "seconds": seconds,
        "states_per_s": round(len(ages) / seconds),
        "age_p50_ms": round(percentile(ages, 0.5) * 1e3),
        "age_p99_ms": round(percentile(ages, 0.99) * 1e3),
        "age_max_ms": round(max(ages) * 1e3),
        "most_states_of_one_aircraft": max(map(len, seen.values())),
        "shortest_gap_s": round(min(gaps), 3),
    }


async def bench_e2e(n: int, clients: int, seconds: float) -> dict[str, Any]:
    with database("sqlite") as url, server(url) as srv:
        reg = srv.cli("token", "create", "--role", "regulator")
        gw = srv.cli("token", "create", "--role", "gateway")
        base = f"http://127.0.0.1:{srv.http_port}"
        ages: list[float] = []
        counts = [0] * clients
        sent = [0]
        measuring = asyncio.Event()
        _, spots = fleet(n)

        async def subscriber(k: int, session: aiohttp.ClientSession) -> None:
            async with session.get(f"{base}/v1/traffic/stream?rate_hz=1",
                                   headers={"Authorization": f"Bearer {reg}"}) as resp:
                buf = bytearray()
                async for chunk in resp.content.iter_any():  # events are ~1 MB lines
                    start = max(0, len(buf) - 1)
                    buf += chunk
                    end = buf.find(b"\n\n", start)
                    while end >= 0:
                        event, buf = bytes(buf[:end]), buf[end + 2:]
                        end = buf.find(b"\n\n")
                        arrived = time.time()
                        at = event.find(b"data: ")
                        if at < 0 or not measuring.is_set():
                            continue
                        if k == 0:  # one client parses and times every state
                            items = json.loads(event[at + 6:])
                            counts[k] += len(items)
                            ages.extend(arrived - i["t"] for i in items if "t" in i)
                        else:  # the others count states, to keep the load generator light
                            counts[k] += event.count(b'{"uav"')

        async def sender(stop_at: float) -> None:
            client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw, "sat")
            slices = 10  # each aircraft once a second, in ten frames a second
            reader = asyncio.create_task(acks(client))
            try:
                tick = time.monotonic()
                while tick < stop_at:
                    for part in range(slices):
                        t = time.time()
                        obs = [[f"U{k:05d}", t, lat + 12.0 * (t % 600) / M_PER_DEG, lon, 120.0,
                                12.0, 0.0, 0.0, 60.0]
                               for k, (lat, lon, _) in enumerate(spots) if k % slices == part]
                        client.send_obs(obs)
                        sent[0] += len(obs)
                        await client.drain()
                        tick += 1.0 / slices
                        await asyncio.sleep(max(0.0, tick - time.monotonic()))
            finally:
                reader.cancel()
                await client.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

        async def acks(client: GatewayClient) -> None:
            with contextlib.suppress(EOFError):
                while True:
                    await client.recv()

        async with aiohttp.ClientSession() as session:
            subs = [asyncio.create_task(subscriber(k, session)) for k in range(clients)]
            warmup = 5.0
            send = asyncio.create_task(sender(time.monotonic() + warmup + seconds))
            await asyncio.sleep(warmup)
            measuring.set()
            cpu_before = process_cpu_s(srv.proc.pid)
            await asyncio.sleep(seconds)
            cpu_s = process_cpu_s(srv.proc.pid) - cpu_before
            measuring.clear()
            await send
            for task in subs:
                task.cancel()
            await asyncio.gather(*subs, return_exceptions=True)
        return {
            "aircraft": n, "clients": clients, "seconds": seconds,
            "sent_per_s": round(sent[0] / (warmup + seconds)),
            "updates_per_client_per_s": round(statistics.mean(counts) / seconds),
            "age_p50_ms": round(percentile(ages, 0.5) * 1e3),
            "age_p99_ms": round(percentile(ages, 0.99) * 1e3),
            "age_max_ms": round(max(ages) * 1e3) if ages else math.nan,
            "server_cpu_percent": round(100 * cpu_s / seconds),
        }


def run(n: int = 5000, clients: int = 20, e2e_s: float = 0.0) -> dict[str, Any]:
    """Fusion per observation, feed fan-out per second, and (e2e_s > 0) the end-to-end run."""
    log(f"traffic: fusion and fan-out, {n:,} aircraft, {clients} clients")
    result: dict[str, Any] = {"fusion": bench_fusion(n),
                              "fusion_shared": bench_fusion(n, shared=True),
                              "monitor": asyncio.run(bench_monitor(n)),
                              "fanout": asyncio.run(bench_fanout(n, clients)),
                              "feed_delay": asyncio.run(bench_feed_delay(n))}
    if e2e_s > 0:
        log(f"traffic: end to end, {n:,} aircraft at 1 Hz, {clients} SSE clients, {e2e_s:g} s")
        result["e2e"] = asyncio.run(bench_e2e(n, clients, e2e_s))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--e2e", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    tune_as_server()  # lowalt/gcpolicy.py
    print(json.dumps(run(args.n, args.clients, args.e2e), indent=2))


if __name__ == "__main__":
    main()
