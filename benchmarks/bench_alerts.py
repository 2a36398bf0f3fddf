"""Alert latency end to end: observation sent -> its alert event read from the SSE feed.

A server (`lowalt serve`, fresh storage) with one prohibited zone, a 1 km circle at Jiangbei
airport (29.719 N, 106.642 E), under a background load: a fleet of 10,000 UAVs reporting once a
second each over the gateway (10,000 observations/s in frames of 100, paced), outside the zone
but for a few. A probe sends, every 0.25 s on its own gateway connection, one report of a new UAV
inside the zone; a regulator follows `GET /v1/alerts/stream?type=geofence_breach`. Latency: wall
time from the probe's send to the arrival of the `open` event naming its UAV (client and server
share one clock). The probe's ack latency is given beside it.

    .venv/bin/python -m benchmarks.bench_alerts [--backend sqlite postgres] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp

from benchmarks.bench_ingest import Fleet
from benchmarks.harness import Progress, cpu_s, database, log, percentile, server
from ingest.client import GatewayClient

ZONE_LAT, ZONE_LON = 29.719, 106.642
ZONE = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [ZONE_LON, ZONE_LAT]},
        "properties": {"id": "jiangbei-bench", "name": "Jiangbei (bench)", "radius_m": 1000,
                       "restriction": "prohibited", "lower_m": 0, "upper_m": None,
                       "reference": "agl"}}


async def _measure(srv: Any, gw: str, reg: str, seconds: float, background_obs_per_s: int,
                   probe_every_s: float) -> dict[str, Any]:
    base = f"http://127.0.0.1:{srv.http_port}"
    auth = {"Authorization": f"Bearer {reg}"}
    sent_at: dict[str, float] = {}
    latency: dict[str, float] = {}
    ack_latency: list[float] = []
    background = [0]
    stop = asyncio.Event()

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/zones", json=ZONE, headers=auth) as r:
            if r.status != 201:
                raise RuntimeError(f"zone not created: {r.status} {await r.text()}")
        ready = asyncio.Event()

        async def follow() -> None:
            async with session.get(f"{base}/v1/alerts/stream?type=geofence_breach",
                                   headers=auth, timeout=aiohttp.ClientTimeout(total=None)
                                   ) as resp:
                ready.set()
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    arrived = time.time()
                    event = json.loads(line[6:])
                    uav = event.get("uav")
                    if event.get("state") == "open" and uav in sent_at and uav not in latency:
                        latency[uav] = arrived - sent_at[uav]

        async def load() -> None:
            frames_per_s = max(1, background_obs_per_s // 100)
            fleet = Fleet(0, 1, background_obs_per_s, 100, seed=3)
            client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, gw, "background")
            acks = asyncio.create_task(_drain(client))
            try:
                tick = time.monotonic()
                while not stop.is_set():
                    rows = fleet.frame()
                    client.send_obs(rows)
                    background[0] += len(rows)
                    await client.drain()
                    tick += 1.0 / frames_per_s
                    await asyncio.sleep(max(0.0, tick - time.monotonic()))
            finally:
                acks.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acks
                await client.close()

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
        loader = asyncio.create_task(load())
        await asyncio.sleep(3.0)  # the background fleet reaches steady state
        cpu_before, started = cpu_s(srv.proc.pid), time.monotonic()
        count_before = background[0]
        await probe()
        elapsed = time.monotonic() - started
        server_cpu = 100 * (cpu_s(srv.proc.pid) - cpu_before) / elapsed
        background_rate = (background[0] - count_before) / elapsed
        stop.set()
        await loader
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    values = list(latency.values())
    return {
        "probes": len(sent_at), "alerts_received": len(values),
        "background_obs_per_s": round(background_rate),
        "p50_ms": round(percentile(values, 0.5) * 1e3, 1),
        "p99_ms": round(percentile(values, 0.99) * 1e3, 1),
        "max_ms": round(max(values) * 1e3, 1) if values else float("nan"),
        "probe_ack_p50_ms": round(percentile(ack_latency, 0.5) * 1e3, 1),
        "server_cpu_percent": round(server_cpu),
    }


async def _drain(client: GatewayClient) -> None:
    with contextlib.suppress(EOFError):
        while True:
            await client.recv()


def run(backends: list[str], seconds: float = 20.0, background_obs_per_s: int = 10_000,
        probe_every_s: float = 0.25) -> dict[str, Any]:
    """Per backend: alert latency p50/p99 under the background load."""
    out: dict[str, Any] = {"params": {"seconds": seconds, "probe_every_s": probe_every_s,
                                      "background_target_obs_per_s": background_obs_per_s}}
    for backend in backends:
        log(f"alerts {backend}: probes for {seconds:g} s under "
            f"{background_obs_per_s:,} obs/s of background")
        with database(backend) as url, server(url) as srv:
            gw = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            reg = srv.cli("token", "create", "--role", "regulator", "--name", "bench-reader")
            out[backend] = asyncio.run(_measure(srv, gw, reg, seconds, background_obs_per_s,
                                                probe_every_s))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"],
                        choices=("sqlite", "postgres"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--background", type=int, default=10_000, metavar="OBS_PER_S")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.backend, args.seconds, args.background), indent=2))


if __name__ == "__main__":
    main()
