"""Alert latency end to end: observation sent -> its alert event read from the SSE feed, while a
fleet crosses the zone.

A server (`lowalt serve`, fresh storage) with one prohibited zone, a 1 km circle at Jiangbei
airport (29.719 N, 106.642 E), under a load of 20,000 observations/s (`--background`) over the
gateway, every UAV reporting once a second, in frames of 100, paced:
- a crossing share (`--crossing-share`, default 10 %) flies at 20 m/s around concentric rings
  (1,300 to 2,700 m, 200 m apart) centred 2 km east of the zone's centre, so every ring runs
  through the zone: breach and approach alerts open, update and resolve all through the run.
  UAVs of a ring are evenly spaced and take six altitude levels 16 m apart, so the crossing
  fleet itself raises no separation or conflict alerts;
- the rest flies 300 m circles spread over the city (benchmarks.bench_ingest.Fleet).
A probe sends, every 0.25 s on its own gateway connection, one report of a new UAV inside the
zone; a regulator follows `GET /v1/alerts/stream?type=geofence_breach,geofence_approach`.
Latency: wall time from the probe's send to the arrival of the `open` event naming its UAV
(client and server share one clock). The probe's ack latency, the crossing fleet's geofence
events per second (by state), the server's CPU and the load acked per second (below the load
sent: the server is falling behind, and latency is mostly queueing) are given beside it.

    .venv/bin/python -m benchmarks.bench_alerts [--backend sqlite postgres] [--seconds 20]
        [--background 20000] [--crossing-share 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import time
from collections import Counter
from typing import Any

import aiohttp
import numpy as np

from benchmarks.bench_ingest import Fleet
from benchmarks.harness import Progress, cpu_s, database, log, percentile, server
from ingest.client import GatewayClient

ZONE_LAT, ZONE_LON = 29.719, 106.642
ZONE_RADIUS_M = 1000.0
ZONE = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [ZONE_LON, ZONE_LAT]},
        "properties": {"id": "jiangbei-bench", "name": "Jiangbei (bench)",
                       "radius_m": ZONE_RADIUS_M, "restriction": "prohibited", "lower_m": 0,
                       "upper_m": None, "reference": "agl"}}
FRAME_OBS = 100
M_PER_DEG_LAT = 111_320.0


class CrossingFleet:
    """UAVs on concentric rings centred `offset_m` east of the zone's centre, counter-clockwise
    at `speed_mps`; ring radii from `offset_m - 700` to `offset_m + 700` m, so each ring's arc
    through the zone is 10 to 15 % of its length. Frames take the UAVs round robin."""

    def __init__(self, uavs: int, frame_obs: int, speed_mps: float = 20.0,
                 offset_m: float = 2000.0, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        radii = np.arange(offset_m - 700.0, offset_m + 701.0, 200.0)
        share = np.floor(uavs * radii / radii.sum()).astype(np.int64)
        share[-1] += uavs - share.sum()
        self.radius_m = np.repeat(radii, share)
        offset = rng.random(radii.size)  # each ring's UAVs start at its own angle
        self.phase = np.concatenate([
            2 * np.pi * (offset[k] + np.arange(n) / max(n, 1)) for k, n in enumerate(share)])
        slot = np.concatenate([np.arange(n) for n in share])
        self.agl = 30.0 + 16.0 * (slot % 6)  # 16 m apart: over the 15 m vertical separation
        self.alt = 250.0 + self.agl
        self.names = [f"X{n:05d}" for n in range(uavs)]
        self.speed_mps = speed_mps
        self.centre_lat = ZONE_LAT
        self.centre_lon = ZONE_LON + offset_m / (M_PER_DEG_LAT * math.cos(math.radians(ZONE_LAT)))
        self.frame_obs = min(frame_obs, uavs)
        self.tick = 0

    def frame(self) -> list[list[Any]]:
        self.tick += 1
        t = time.time()
        k = (self.tick * self.frame_obs + np.arange(self.frame_obs)) % len(self.names)
        r = self.radius_m[k]
        angle = self.phase[k] + t * self.speed_mps / r
        north, east = r * np.sin(angle), r * np.cos(angle)
        lat = (self.centre_lat + north / M_PER_DEG_LAT).tolist()
        lon = (self.centre_lon
               + east / (M_PER_DEG_LAT * math.cos(math.radians(self.centre_lat)))).tolist()
        track = ((np.degrees(np.arctan2(-np.sin(angle), np.cos(angle))) + 360.0) % 360.0).tolist()
        alt, agl, names = self.alt[k].tolist(), self.agl[k].tolist(), self.names
        return [[names[i], t, lat[j], lon[j], alt[j], self.speed_mps, track[j], 0.0, agl[j]]
                for j, i in enumerate(k.tolist())]


async def _paced(srv: Any, gw: str, name: str, fleet: Any, obs_per_s: int, sent: list[int],
                 acked: list[int], stop: asyncio.Event) -> None:
    """Send `fleet`'s frames at `obs_per_s` over one gateway connection until stop; count the
    observations sent and acked."""
    if obs_per_s <= 0:
        return
    client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw, name)
    acks = asyncio.create_task(_count_acks(client, acked))
    try:
        frames_per_s = max(1.0, obs_per_s / fleet.frame_obs)
        tick = time.monotonic()
        while not stop.is_set():
            rows = fleet.frame()
            client.send_obs(rows)
            sent[0] += len(rows)
            await client.drain()
            tick += 1.0 / frames_per_s
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
    finally:
        acks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await acks
        await client.close()


async def _measure(srv: Any, gw: str, reg: str, seconds: float, background_obs_per_s: int,
                   probe_every_s: float, crossing_share: float) -> dict[str, Any]:
    base = f"http://127.0.0.1:{srv.http_port}"
    auth = {"Authorization": f"Bearer {reg}"}
    crossing_uavs = round(background_obs_per_s * crossing_share)
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    ack_latency: list[float] = []
    crossing_events: Counter[tuple[str, str]] = Counter()  # (type, state) in the window
    counting = [False]
    sent_background, sent_crossing, acked = [0], [0], [0]
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/zones", json=ZONE, headers=auth) as r:
            if r.status != 201:
                raise RuntimeError(f"zone not created: {r.status} {await r.text()}")
        ready = asyncio.Event()

        async def follow() -> None:
            async with session.get(
                f"{base}/v1/alerts/stream?type=geofence_breach,geofence_approach",
                headers=auth, timeout=aiohttp.ClientTimeout(total=None),
            ) as resp:
                ready.set()
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    arrived = time.time()
                    event = json.loads(line[6:])
                    uav, state = event.get("uav"), event.get("state")
                    if uav in sent_at:
                        if state == "open" and event.get("type") == "geofence_breach" \
                                and uav not in latency:
                            latency[uav] = arrived - sent_at[uav]
                    elif counting[0] and uav.startswith("X"):
                        crossing_events[(event["type"], state)] += 1

        async def probe() -> None:
            client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw, "probe")
            progress = Progress("alerts probe", seconds, "probes")
            try:
                k = 0
                stop_at = time.monotonic() + seconds
                while time.monotonic() < stop_at:
                    k += 1
                    uav = f"PROBE-{k:05d}"
                    t = time.time()
                    sent_at[uav] = t
                    client.send_obs([[uav, t, ZONE_LAT + 0.001, ZONE_LON, 280.0, 5.0, 90.0,
                                      0.0, 80.0]])
                    await client.drain()
                    ack = await client.recv_ack()
                    if "ack" not in ack:
                        raise RuntimeError(f"probe refused: {ack}")
                    ack_latency.append(time.time() - t)
                    progress.update(k)
                    await asyncio.sleep(max(0.0, t + probe_every_s - time.time()))
                await asyncio.sleep(2.0)  # the last events
            finally:
                await client.close()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(ready.wait(), 10)
        background = Fleet(0, 1, background_obs_per_s - crossing_uavs, FRAME_OBS, seed=3)
        loaders = [
            asyncio.create_task(_paced(srv, gw, "background", background,
                                       background_obs_per_s - crossing_uavs, sent_background,
                                       acked, stop)),
            asyncio.create_task(_paced(srv, gw, "crossing", CrossingFleet(crossing_uavs,
                                                                          FRAME_OBS),
                                       crossing_uavs, sent_crossing, acked, stop)),
        ]
        await asyncio.sleep(5.0)  # every UAV has reported: the first-report alerts are out
        cpu_before, started = cpu_s(srv.proc.pid), time.monotonic()
        count_before, acked_before = sent_background[0] + sent_crossing[0], acked[0]
        counting[0] = True
        await probe()
        counting[0] = False
        elapsed = time.monotonic() - started
        server_cpu = 100 * (cpu_s(srv.proc.pid) - cpu_before) / elapsed
        load_rate = (sent_background[0] + sent_crossing[0] - count_before) / elapsed
        acked_rate = (acked[0] - acked_before) / elapsed
        stop.set()
        await asyncio.gather(*loaders)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    values = list(latency.values())
    by_state = Counter[str]()
    for (_, state), n in crossing_events.items():
        by_state[state] += n
    return {
        "probes": len(sent_at), "alerts_received": len(values),
        "background_obs_per_s": round(load_rate),
        "background_acked_obs_per_s": round(acked_rate),  # below the above: the server lags
        "crossing_uavs": crossing_uavs,
        "crossing_events_per_s": round(sum(crossing_events.values()) / elapsed, 1),
        "crossing_events_per_s_by_state": {s: round(n / elapsed, 1)
                                           for s, n in sorted(by_state.items())},
        "crossing_events_by_type_state": {f"{t}/{s}": n
                                          for (t, s), n in sorted(crossing_events.items())},
        "p50_ms": round(percentile(values, 0.5) * 1e3, 1),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 1),
        "max_ms": round(max(values) * 1e3, 1) if values else float("nan"),
        "slowest_ms": [round(v * 1e3, 1) for v in sorted(values)[-5:]],
        "probe_ack_p50_ms": round(percentile(ack_latency, 0.5) * 1e3, 1),
        "probe_ack_p99_ms": round(percentile(ack_latency, 0.99) * 1e3, 1),
        "probe_ack_slowest_ms": [round(v * 1e3, 1) for v in sorted(ack_latency)[-5:]],
        "server_cpu_percent": round(server_cpu),
    }


async def _count_acks(client: GatewayClient, acked: list[int]) -> None:
    with contextlib.suppress(EOFError):
        while True:
            frame = await client.recv()
            if "ack" in frame:
                acked[0] += frame.get("accepted", 0) + frame.get("duplicates", 0)


def run(backends: list[str], seconds: float = 20.0, background_obs_per_s: int = 20_000,
        probe_every_s: float = 0.25, crossing_share: float = 0.1) -> dict[str, Any]:
    """Per backend: alert latency p50/p99 under the load, with a share of it crossing the zone."""
    if not 0.0 <= crossing_share < 1.0:
        raise ValueError("crossing_share: expected 0 <= share < 1")
    out: dict[str, Any] = {"params": {"seconds": seconds, "probe_every_s": probe_every_s,
                                      "background_target_obs_per_s": background_obs_per_s,
                                      "crossing_share": crossing_share}}
    for backend in backends:
        log(f"alerts {backend}: probes for {seconds:g} s under {background_obs_per_s:,} obs/s, "
            f"{crossing_share:.0%} of the fleet crossing the zone")
        with database(backend) as url, server(url) as srv:
            gw = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            reg = srv.cli("token", "create", "--role", "regulator", "--name", "bench-reader")
            out[backend] = asyncio.run(_measure(srv, gw, reg, seconds, background_obs_per_s,
                                                probe_every_s, crossing_share))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"],
                        choices=("sqlite", "postgres"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--background", type=int, default=20_000, metavar="OBS_PER_S",
                        help="the whole load, crossing share included")
    parser.add_argument("--crossing-share", type=float, default=0.1, metavar="SHARE",
                        help="share of the fleet flying through the zone (0 to <1)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.backend, args.seconds, args.background,
                         crossing_share=args.crossing_share), indent=2))


if __name__ == "__main__":
    main()
