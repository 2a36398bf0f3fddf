"""Webhook deliveries per second, end to end: alert events raised by a server (`lowalt serve`,
fresh storage) POSTed to a receiver on loopback in this process, which checks every HMAC
signature, counts distinct seqs (and duplicates) and notes each event's arrival.

The events come through the server's normal path: `--zones` prohibited zones stacked over the
city and a fleet (benchmarks.bench_ingest.Fleet) whose every report is inside all of them, so one
report of each of `--uavs` UAVs over the gateway raises uavs x zones `geofence_breach` opens (and
one `unregistered_uav` per UAV): gateway -> store -> geofence -> alert writer -> outbox.

- Drain: every subscription's first POST is held at the receiver while the burst is raised and
  committed; then one subscription's gate opens and the time to receive every committed event
  gives events/s for one subscription; then `--subscriptions` more open together (per
  subscription and in total). Server CPU over each drain, and per event delivered (a figure
  that depends less on what else the machine runs).
- Naive baseline, same receiver, same run: a server of its own with `webhook_batch_events = 1`
  (one POST per event, the cursor stored after each) drains a burst of a tenth the size.
- Live: with every gate open, `--live-rate` events/s for `--live-seconds` (UAVs reporting once a
  second in ten frames spread over the second, each report's height changed so that it updates
  its alerts); lag = arrival at the receiver - the event's `raised_at` (one clock), p50 / p99 /
  max.

    .venv/bin/python -m benchmarks.bench_webhooks [--backend sqlite postgres] [--uavs 5000]
        [--zones 20] [--subscriptions 4] [--live-seconds 10] [--live-rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.bench_ingest import Fleet
from benchmarks.harness import cpu_s, database, log, metric_samples, percentile, server
from ingest.client import GatewayClient

SECRET = "bench-secret"
BOX = (106.25, 29.35, 106.85, 29.85)  # minlon, minlat, maxlon, maxlat: around the fleet's area
FRAME_OBS = 100
HOLD_TIMEOUT_S = 900  # webhook_timeout_s for the bench server: a held POST must not time out


def stacked_zones(count: int) -> list[dict[str, Any]]:
    """`count` identical prohibited zones over BOX (GeoJSON features for POST /v1/zones)."""
    w, s, e, n = BOX
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
             "properties": {"id": f"stack-{k:03d}", "name": f"Stack {k}",
                            "restriction": "prohibited", "lower_m": 0, "upper_m": None,
                            "reference": "agl"}} for k in range(count)]


class Sink:
    """What one subscription's receiver path has seen."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.seen: set[int] = set()
        self.posts = 0
        self.duplicates = 0
        self.held = 0
        self.target = 0  # done once every seq in 1..target has arrived
        self.below_target = 0
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.lag_from = 0  # events after this seq: their lag is noted
        self.lags: list[float] = []

    def expect(self, target: int) -> None:
        self.target = target
        self.below_target = sum(1 for s in self.seen if s <= target)
        self.done.clear()
        self._check(time.monotonic())

    def record(self, events: list[dict[str, Any]]) -> None:
        now, wall = time.monotonic(), time.time()
        self.posts += 1
        for e in events:
            seq = e["seq"]
            if seq in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(seq)
            if seq <= self.target:
                self.below_target += 1
            if self.lag_from and seq > self.lag_from:
                self.lags.append(wall - e["raised_at"])
        self._check(now)

    def _check(self, now: float) -> None:
        if self.target and self.below_target >= self.target and not self.done.is_set():
            self.done_at = now
            self.done.set()


class Receiver:
    """POST /hook/{name}: checks the signature, waits at the sink's gate, records the events."""

    def __init__(self) -> None:
        self.sinks: dict[str, Sink] = {}
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None
        self.base = ""

    def sink(self, name: str) -> Sink:
        self.sinks[name] = Sink(name)
        return self.sinks[name]

    async def handle(self, request: web.Request) -> web.Response:
        sink = self.sinks.get(request.match_info["name"])
        if sink is None:
            return web.Response(status=404)
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Lowalt-Signature", ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if not sink.gate.is_set():
            sink.held += 1
            await sink.gate.wait()
        sink.record(json.loads(body)["events"])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook/{name}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        for sink in self.sinks.values():
            sink.gate.set()
        if self.runner is not None:
            await self.runner.cleanup()


class Bench:
    """One server: its HTTP session, tokens and the receiver."""

    def __init__(self, srv: Any, session: aiohttp.ClientSession, rx: Receiver) -> None:
        self.srv, self.session, self.rx = srv, session, rx
        self.base = f"http://127.0.0.1:{srv.http_port}"
        self.gw = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
        self.reg = srv.cli("token", "create", "--role", "regulator", "--name", "bench-reader")
        self.auth = {"Authorization": f"Bearer {self.reg}"}

    async def post(self, path: str, body: Any) -> Any:
        async with self.session.post(self.base + path, json=body, headers=self.auth) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"POST {path}: {r.status} {await r.text()}")
            return await r.json()

    async def subscribe(self, name: str) -> Sink:
        sink = self.rx.sink(name)
        await self.post("/v1/subscriptions",
                        {"url": f"{self.rx.base}/{name}", "secret": SECRET, "name": name})
        return sink

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(self.base + "/metrics", headers=self.auth) as r:
            text = await r.text()
        out: dict[str, float] = {}
        for name, _, value in metric_samples(text):
            if name.startswith("lowalt_alert_events"):
                out[name] = out.get(name, 0.0) + value
        return out

    async def committed(self, at_least: int, timeout_s: float = 600.0) -> int:
        """Wait until at least `at_least` events are committed and none is pending; the count."""
        deadline = time.monotonic() + timeout_s
        last, still = -1, 0
        while time.monotonic() < deadline:
            m = await self.metrics()
            total = int(m.get("lowalt_alert_events_total", 0))
            pending = m.get("lowalt_alert_events_pending", 0)
            still = still + 1 if total == last else 0
            if total >= at_least and pending == 0 and still >= 3:
                return total
            last = total
            await asyncio.sleep(0.2)
        raise RuntimeError(f"only {last:,} of {at_least:,} alert events committed")

    async def burst(self, uavs: int) -> float:
        """One report of each of `uavs` UAVs, as fast as the gateway acks; seconds taken."""
        fleet = Fleet(0, 1, uavs, FRAME_OBS, seed=5)
        client = await GatewayClient.connect("127.0.0.1", self.srv.gateway_port, self.gw,
                                             "burst")
        started = time.monotonic()
        try:
            frames = -(-uavs // fleet.frame_obs)
            for _ in range(frames):
                client.send_obs(fleet.frame())
            await client.drain()
            for _ in range(frames):
                ack = await client.recv_ack()
                if "ack" not in ack:
                    raise RuntimeError(f"burst refused: {ack}")
        finally:
            await client.close()
        return time.monotonic() - started


async def _drain(b: Bench, sinks: list[Sink], target: int) -> dict[str, Any]:
    """Open the sinks' gates; time until each has every seq up to target."""
    for s in sinks:
        s.expect(target)
    posts_before = sum(s.posts for s in sinks)
    cpu_before, started = cpu_s(b.srv.proc.pid), time.monotonic()
    for s in sinks:
        s.gate.set()
    await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sinks)), 900)
    elapsed = max(s.done_at for s in sinks) - started
    cpu = cpu_s(b.srv.proc.pid) - cpu_before
    posts = sum(s.posts for s in sinks) - posts_before
    return {
        "subscriptions": len(sinks), "events": target,
        "events_per_s_per_subscription": [round(target / (s.done_at - started)) for s in sinks],
        "events_per_s_total": round(len(sinks) * target / elapsed),
        "seconds": round(elapsed, 2), "posts": posts,
        "events_per_post": round(len(sinks) * target / max(posts, 1), 1),
        "server_cpu_percent": round(100 * cpu / elapsed),
        "server_cpu_us_per_event": round(1e6 * cpu / (len(sinks) * target), 1),
    }


async def _live(b: Bench, sinks: list[Sink], zones: int, seconds: float,
                events_per_s: int) -> dict[str, Any]:
    """UAVs reporting once a second, spread over the second in ten frames; reports of one UAV
    are 1.01 s apart in t and alternate between 40 and 60 m AGL (a material change), so each
    updates all its alerts."""
    uavs = max(10, events_per_s // zones) // 10 * 10
    per_frame = uavs // 10
    fleet = Fleet(0, 1, uavs, per_frame, seed=11)
    fleet.names = [f"L{n:05d}" for n in range(uavs)]
    client = await GatewayClient.connect("127.0.0.1", b.srv.gateway_port, b.gw, "live")
    first = int((await b.metrics()).get("lowalt_alert_events_total", 0))
    step_s = 1.01 / 10

    async def send(rows: list[list[Any]], t: float, agl_m: float) -> None:
        for row in rows:
            row[1], row[4], row[8] = t, 250.0 + agl_m, agl_m
        client.send_obs(rows)
        await client.drain()
        ack = await client.recv_ack()
        if "ack" not in ack:
            raise RuntimeError(f"live report refused: {ack}")

    try:
        t0 = time.time() - 1.0
        for j in range(10):  # the opens: not timed
            await send(fleet.frame(), t0 + j * step_s, 40.0)
        opened = await b.committed(first + per_frame * 10 * zones)
        for s in sinks:
            s.expect(opened)
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sinks)), 120)
        for s in sinks:
            s.lag_from = opened
        started = time.monotonic()
        k = 10
        while time.monotonic() - started < seconds:
            k += 1
            await asyncio.sleep(max(0.0, started + (k - 10) * step_s - time.monotonic()))
            await send(fleet.frame(), t0 + k * step_s, 40.0 + 20.0 * ((k // 10) % 2))
        elapsed = time.monotonic() - started
        last = await b.committed(opened + 1)
        for s in sinks:
            s.expect(last)
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in sinks)), 120)
    finally:
        await client.close()
    lags = [lag for s in sinks for lag in s.lags]
    return {
        "subscriptions": len(sinks), "uavs": per_frame * 10, "events": last - opened,
        "events_per_s": round((last - opened) / elapsed),
        "lag_p50_ms": round(percentile(lags, 0.5) * 1e3, 1),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1e3, 1),
        "lag_max_ms": round(max(lags) * 1e3, 1) if lags else float("nan"),
    }


async def _batched(srv: Any, uavs: int, zones: int, subscriptions: int, live_seconds: float,
                   live_rate: int, tag: str, rx: Receiver) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        b = Bench(srv, session, rx)
        await b.post("/v1/zones", {"type": "FeatureCollection", "features": stacked_zones(zones)})
        solo = await b.subscribe(f"{tag}-solo")
        group = [await b.subscribe(f"{tag}-group-{k}") for k in range(subscriptions)]
        raise_s = await b.burst(uavs)
        committed = await b.committed(uavs * zones)
        log(f"  burst: {committed:,} events raised and committed; draining")
        one = await _drain(b, [solo], committed)
        several = await _drain(b, group, committed) if group else None
        live = await _live(b, [solo, *group], zones, live_seconds, live_rate) \
            if live_seconds > 0 else None
    return {"burst_events": committed, "burst_send_s": round(raise_s, 2),
            "one_subscription": one, "several_subscriptions": several, "live": live}


async def _naive(srv: Any, uavs: int, zones: int, tag: str, rx: Receiver) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        b = Bench(srv, session, rx)
        await b.post("/v1/zones", {"type": "FeatureCollection", "features": stacked_zones(zones)})
        sink = await b.subscribe(f"{tag}-naive")
        await b.burst(uavs)
        committed = await b.committed(uavs * zones)
        log(f"  naive burst: {committed:,} events; draining one POST per event")
        return await _drain(b, [sink], committed)


def run(backends: list[str], uavs: int = 5_000, zones: int = 20, subscriptions: int = 4,
        live_seconds: float = 10.0, live_rate: int = 2_000,
        naive_share: float = 0.1) -> dict[str, Any]:
    """Per backend: webhook drain rates (one and several subscriptions), the naive one POST per
    event baseline and their ratio, and live delivery lag."""
    out: dict[str, Any] = {"params": {
        "uavs": uavs, "zones": zones, "subscriptions": subscriptions,
        "live_seconds": live_seconds, "live_target_events_per_s": live_rate,
        "naive_uavs": max(1, round(uavs * naive_share))}}
    env = {"LOWALT_WEBHOOK_TIMEOUT_S": str(HOLD_TIMEOUT_S)}

    async def with_receiver(
        fn: Callable[[Receiver], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        rx = Receiver()
        await rx.start()
        try:
            result = await fn(rx)
        finally:
            await rx.stop()
        result["duplicates"] = sum(s.duplicates for s in rx.sinks.values())
        result["bad_signatures"] = rx.bad_signatures
        return result

    for backend in backends:
        log(f"webhooks {backend}: {uavs:,} UAVs x {zones} zones, 1 + {subscriptions} "
            "subscriptions")
        with database(backend) as url, server(url, env) as srv:
            result = asyncio.run(with_receiver(functools.partial(
                _batched, srv, uavs, zones, subscriptions, live_seconds, live_rate, backend)))
        naive_uavs = out["params"]["naive_uavs"]
        log(f"webhooks {backend}: naive baseline, webhook_batch_events = 1, "
            f"{naive_uavs:,} UAVs x {zones} zones")
        with database(backend) as url, \
                server(url, {**env, "LOWALT_WEBHOOK_BATCH_EVENTS": "1"}) as srv:
            naive = asyncio.run(with_receiver(
                functools.partial(_naive, srv, naive_uavs, zones, backend)))
        result["naive_one_post_per_event"] = naive
        result["ratio_batched_vs_naive"] = round(
            result["one_subscription"]["events_per_s_total"] / naive["events_per_s_total"], 1)
        out[backend] = result
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"],
                        choices=("sqlite", "postgres"))
    parser.add_argument("--uavs", type=int, default=5_000)
    parser.add_argument("--zones", type=int, default=20)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--live-rate", type=int, default=2_000, metavar="EVENTS_PER_S")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.backend, args.uavs, args.zones, args.subscriptions,
                         args.live_seconds, args.live_rate), indent=2))


if __name__ == "__main__":
    main()
