"""Ingest benchmark: sustained observations/s with acks after commit, ack latency, server RSS.

The server runs as its own process (`lowalt serve`), the load from this one: several gateway
connections, frames of array-form observations from a fleet of simulated UAVs, each connection
keeping a window of frames in flight. In the same run, the naive design (one INSERT and commit per
observation) runs against the same backend for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from ingest.client import GatewayClient

PG_ADMIN = os.environ.get("LOWALT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    gateway_port: int
    database_url: str

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "lowalt.cli", *args, "--database", self.database_url],
            check=True, capture_output=True, timeout=120,
        )
        return out.stdout.decode().strip()


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh, empty database for one benchmark run."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    name = f"lowalt_bench_{os.getpid()}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_pg_admin(drop, f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_pg_admin(drop))


async def _pg_admin(*sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def server(database_url: str, extra_env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    http_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "LOWALT_LOG_LEVEL": "WARNING", **(extra_env or {})}
    subprocess.run([sys.executable, "-m", "lowalt.cli", "migrate", "--database", database_url],
                   check=True, capture_output=True, timeout=120, env=env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowalt.cli", "serve", "--database", database_url,
         "--http", f"127.0.0.1:{http_port}", "--gateway", f"127.0.0.1:{gateway_port}"],
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", gateway_port), timeout=0.5
            ):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        yield ServerProcess(proc, http_port, gateway_port, database_url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _gateway_load(
    port: int, token: str, *, connections: int, seconds: float, frame_obs: int, uavs: int,
    window: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    acked = 0
    stop_at = time.monotonic() + seconds

    async def one(conn_no: int) -> None:
        nonlocal acked
        client = await GatewayClient.connect("127.0.0.1", port, token, f"bench-{conn_no}")
        rnd = random.Random(conn_no)
        share = uavs // connections  # this connection's UAVs: n = conn_no + connections * m
        centres = {
            conn_no + connections * m: (29.4 + rnd.random() * 0.4, 106.3 + rnd.random() * 0.5)
            for m in range(share)
        }
        sent_at: dict[int, float] = {}
        tick = 0

        def frame() -> list[list[Any]]:
            """The next report of frame_obs UAVs, round robin: each flies its own circle at
            12 m/s, so every report is plausible and the checks do their normal work."""
            nonlocal tick
            tick += 1
            t = time.time() - 0.5  # each UAV reports about once a second, like real traffic
            rows = []
            for k in range(frame_obs):
                n = conn_no + connections * ((tick * frame_obs + k) % share)
                lat0, lon0 = centres[n]
                angle = (t * 12.0 / 300.0) + n  # 300 m radius, 12 m/s
                rows.append([
                    f"U{n:05d}", t, lat0 + 0.0027 * math.sin(angle),
                    lon0 + 0.0031 * math.cos(angle), 260.0 + (n % 90), 12.0,
                    (math.degrees(-angle) + 360.0) % 360.0, 0.0, 30.0 + (n % 90),
                ])
            return rows

        async def receiver() -> None:
            nonlocal acked
            while True:
                ack = await client.recv()
                if "ack" not in ack:
                    raise RuntimeError(f"server error frame: {ack}")
                latencies.append(time.monotonic() - sent_at.pop(ack["ack"]))
                acked += ack["accepted"] + ack["duplicates"]
                inflight.release()

        inflight = asyncio.Semaphore(window)
        recv_task = asyncio.create_task(receiver())
        try:
            while time.monotonic() < stop_at:
                await inflight.acquire()
                seq = client.send_obs(frame())
                sent_at[seq] = time.monotonic()
                await client.drain()
            for _ in range(window):  # every permit back: every frame acked
                await inflight.acquire()
        finally:
            recv_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, EOFError):
                await recv_task
            await client.close()

    started = time.monotonic()
    await asyncio.gather(*(one(n) for n in range(connections)))
    elapsed = time.monotonic() - started
    return {
        "observations": acked, "seconds": round(elapsed, 2),
        "obs_per_s": round(acked / elapsed),
        "ack_p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
    }


async def _http_load(port: int, token: str, *, seconds: float, concurrency: int) -> dict[str, Any]:
    done = 0
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}
    t0 = time.time() - 1800.0

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            body = {"uav": f"H{n:03d}", "t": t0 + i * 0.01, "lat": 29.6, "lon": 106.5,
                    "alt_m": 80.0}
            started = time.monotonic()
            async with session.post(f"http://127.0.0.1:{port}/v1/telemetry", json=body,
                                    headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
            latencies.append(time.monotonic() - started)
            done += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(n, session) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"requests": done, "req_per_s": round(done / elapsed),
            "p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1)}


async def _naive(database_url: str, seconds: float) -> dict[str, Any]:
    """One INSERT and one commit per observation: the design the pipeline replaces."""
    n = 0
    t0 = time.time() - 7200.0
    started = time.monotonic()
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        while time.monotonic() - started < seconds:
            conn.execute(
                "INSERT INTO observations (uav, t, lat, lon, alt_m, source, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"N{n % 100}", t0 + n, 29.6, 106.5, 80.0, "naive", 0.0),
            )
            n += 1
        conn.close()
    else:
        pg = await asyncpg.connect(database_url)
        while time.monotonic() - started < seconds:
            await pg.execute(
                "INSERT INTO observations (uav, t, lat, lon, alt_m, source, received_at, geom) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, ST_SetSRID(ST_MakePoint($4, $3), 4326)) "
                "ON CONFLICT DO NOTHING", f"N{n % 100}", t0 + n, 29.6, 106.5, 80.0, "naive", 0.0,
            )
            n += 1
        await pg.close()
    elapsed = time.monotonic() - started
    return {"observations": n, "obs_per_s": round(n / elapsed)}


def run(backends: list[str], seconds: float = 30.0, connections: int = 4, frame_obs: int = 100,
        uavs: int = 10_000, window: int = 8, http_seconds: float = 10.0,
        naive_seconds: float = 5.0) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for backend in backends:
        with database(backend) as url, server(url) as srv:
            token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            gw = asyncio.run(_gateway_load(srv.gateway_port, token, connections=connections,
                                           seconds=seconds, frame_obs=frame_obs, uavs=uavs,
                                           window=window))
            gw["server_rss_mib"] = round(rss_kib(srv.proc.pid) / 1024, 1)
            http = asyncio.run(_http_load(srv.http_port, token, seconds=http_seconds,
                                          concurrency=32))
            naive = asyncio.run(_naive(url, naive_seconds))
        results.append({
            "backend": backend, "gateway": gw, "http_one_obs_per_request": http,
            "naive_one_insert_per_obs": naive,
            "ratio_gateway_vs_naive": round(gw["obs_per_s"] / max(1, naive["obs_per_s"]), 1),
            "connections": connections, "frame_obs": frame_obs, "uavs": uavs,
        })
    return results


async def _fill(port: int, token: str, uavs: int, frame_obs: int = 500) -> None:
    client = await GatewayClient.connect("127.0.0.1", port, token, "memory")
    now = time.time() - 1.0
    try:
        for start in range(0, uavs, frame_obs):
            client.send_obs([
                [f"M{n:06d}", now, 29.0 + (n % 320) * 3e-3, 106.0 + (n // 320) * 3e-3, 300.0,
                 5.0, 90.0, 0.0, 60.0]
                for n in range(start, min(uavs, start + frame_obs))
            ])
            ack = await client.recv_ack()
            if "ack" not in ack:
                raise RuntimeError(f"server error frame: {ack}")
    finally:
        await client.close()


def memory_per_uav(backend: str = "sqlite", uavs: int = 100_000) -> dict[str, Any]:
    """Server RSS growth per live UAV: RSS after one report from each of `uavs` distinct UAVs
    minus RSS after the same number of reports from 100 UAVs (same buffers, same code paths)."""
    with database(backend) as url, server(url) as srv:
        token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
        asyncio.run(_fill_few(srv.gateway_port, token, uavs))
        time.sleep(2.0)
        base = rss_kib(srv.proc.pid)
        asyncio.run(_fill(srv.gateway_port, token, uavs))
        time.sleep(2.0)
        after = rss_kib(srv.proc.pid)
    return {"backend": backend, "uavs": uavs, "rss_base_mib": round(base / 1024, 1),
            "rss_after_mib": round(after / 1024, 1),
            "bytes_per_live_uav": round((after - base) * 1024 / uavs)}


async def _fill_few(port: int, token: str, reports: int) -> None:
    client = await GatewayClient.connect("127.0.0.1", port, token, "warmup")
    t0 = time.time() - 60.0
    try:
        for start in range(0, reports, 500):
            client.send_obs([[f"W{n % 100:03d}", t0 + n * 1e-4, 29.5, 106.5, 300.0, 5.0, 90.0,
                              0.0, 60.0] for n in range(start, min(reports, start + 500))])
            await client.recv_ack()
    finally:
        await client.close()
