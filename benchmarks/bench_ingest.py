"""Ingest: sustained observations/s with acks after commit, per transport and backend.

The server runs as its own process (`lowalt serve`, fresh storage for each run), the load from
this one. Gateway: several connections (1, 2, 4, 8 by default, a fresh server each), frames of
100 array-form observations from a fleet of 10,000 simulated UAVs flying circles, each connection
keeping a window of 8 frames in flight; observations/s, ack latency p50/p99 (frame sent -> its
ack read), server RSS and CPU. At the headline connection count (4), also the WebSocket (same
frames, binary MessagePack), HTTP with one observation per request (32 keep-alive connections, a
minimal HTTP/1.1 client so the client's own CPU stays small), and the naive design (one INSERT and
one commit per observation, from one connection); each on fresh storage (and a fresh server), so
every figure starts from an empty table.

F3411 over the gateway (API.md section 6), on fresh storage as well: the same fleet, connections,
frames and window, each item a Message Pack (Basic ID + Location) as a ground station relays it
(`F3411Fleet`); its observations/s beside the native gateway's, the ratio
F3411 / native, and the rows the server stored for it (must equal what it acked).

    .venv/bin/python -m benchmarks.bench_ingest [--backend sqlite postgres] [--seconds 30]
        [--connections 1 2 4 8] [--f3411-seconds S]

`memory_per_uav` (the `memory` part of `lowalt bench`): server RSS growth per live UAV, after 20
reports from each (steady state: more than any history the server keeps per UAV).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import asyncpg
import msgpack
import numpy as np

from benchmarks.harness import (
    Progress,
    ServerProcess,
    cpu_s,
    database,
    log,
    metric_samples,
    percentile,
    rss_kib,
    server,
)
from ingest.client import GatewayClient
from ingest.codecs import odid

HEADLINE_CONNECTIONS = 4


class _Link(Protocol):
    """One connection that carries data frames and brings back their acks."""

    async def send(self, payload: dict[str, Any]) -> None: ...

    async def recv(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class _GatewayLink:
    def __init__(self, client: GatewayClient) -> None:
        self.client = client

    @classmethod
    async def open(cls, port: int, token: str, name: str) -> _GatewayLink:
        return cls(await GatewayClient.connect("127.0.0.1", port, token, name))

    async def send(self, payload: dict[str, Any]) -> None:
        self.client.send(payload)
        await self.client.drain()

    async def recv(self) -> dict[str, Any]:
        return await self.client.recv()

    async def close(self) -> None:
        await self.client.close()


class _WsLink:
    def __init__(self, session: aiohttp.ClientSession,
                 ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session, self.ws = session, ws

    @classmethod
    async def open(cls, port: int, token: str) -> _WsLink:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/v1/telemetry/ws",
                                      headers={"Authorization": f"Bearer {token}"},
                                      max_msg_size=0)
        return cls(session, ws)

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_bytes(msgpack.packb(payload, use_bin_type=True))

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive()
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise EOFError(f"websocket: {msg.type.name} {msg.data!r}")
        frame: dict[str, Any] = msgpack.unpackb(msg.data, raw=False, strict_map_key=False)
        return frame

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


class Fleet:
    """A share of the fleet for one connection: UAV n = first + step * m flies a 300 m circle
    at 12 m/s around its own centre; frames take the share's UAVs round robin, so every report
    is plausible and the server's checks do their normal work."""

    key = "obs"  # the data frame's list that `frame` fills

    def __init__(self, first: int, step: int, uavs: int, frame_obs: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.ids = np.arange(first, uavs, step)
        self.names = [f"U{n:05d}" for n in self.ids]
        self.lat0 = 29.4 + rng.random(self.ids.size) * 0.4
        self.lon0 = 106.3 + rng.random(self.ids.size) * 0.5
        self.alt = 260.0 + (self.ids % 90)
        self.agl = 30.0 + (self.ids % 90)
        self.frame_obs = min(frame_obs, self.ids.size)
        self.tick = 0

    def frame(self, t: float | None = None) -> list[list[Any]]:
        """The next frame's array-form rows, all at time t (default: half a second ago)."""
        self.tick += 1
        if t is None:
            t = time.time() - 0.5
        k = (self.tick * self.frame_obs + np.arange(self.frame_obs)) % self.ids.size
        angle = t * 12.0 / 300.0 + self.ids[k]
        lat = (self.lat0[k] + 0.0027 * np.sin(angle)).tolist()
        lon = (self.lon0[k] + 0.0031 * np.cos(angle)).tolist()
        track = ((np.degrees(-angle) + 360.0) % 360.0).tolist()
        alt, agl = self.alt[k].tolist(), self.agl[k].tolist()
        names = self.names
        return [[names[i], t, lat[j], lon[j], alt[j], 12.0, track[j], 0.0, agl[j]]
                for j, i in enumerate(k.tolist())]


_LOC = 3 + odid.MESSAGE_SIZE  # the Location's offset in a pack of Basic ID + Location
_PACK_BYTES = 3 + 2 * odid.MESSAGE_SIZE
_AIRBORNE_AGL = 0x24  # Location byte 1: status airborne, height type agl, speed multiplier 0
# The Location fields that move, in place in a 53-byte pack (layout: ingest/codecs/odid.py).
_MOVING = np.dtype({"names": ["flags", "track", "lat", "lon", "tenths"],
                    "formats": ["u1", "u1", "<i4", "<i4", "<u2"],
                    "offsets": [_LOC + 1, _LOC + 2, _LOC + 5, _LOC + 9, _LOC + 21],
                    "itemsize": _PACK_BYTES})


class F3411Fleet(Fleet):
    """The same fleet as a ground station relays its broadcast Remote ID (API.md section 6):
    each item `{"t": receive time, "msg": Message Pack (Basic ID + Location), "src": the
    broadcaster's address}`. Each UAV's pack is encoded once with `odid.encode`; a frame copies
    its UAVs' packs and patches the Location fields that move (E/W bit, track, lat, lon,
    timestamp) with numpy, so the client's CPU stays near the native fleet's. The timestamp is
    tenths of a second past the hour: a UAV's advances by at least 0.1 s per report, so no
    (uav, t) repeats, and its position is computed at that instant."""

    key = "odid"

    def __init__(self, first: int, step: int, uavs: int, frame_obs: int, seed: int) -> None:
        super().__init__(first, step, uavs, frame_obs, seed)
        self.srcs = [f"02:00:00:00:{n >> 8 & 255:02x}:{n & 255:02x}" for n in self.ids.tolist()]
        self.packs = np.frombuffer(b"".join(
            odid.encode(self._pack(j, track_deg=0.0, t_tenths=0))
            for j in range(self.ids.size)), np.uint8).reshape(self.ids.size, _PACK_BYTES)
        self.last_tenths = np.zeros(self.ids.size, np.int64)
        self._check_layout()

    def _pack(self, j: int, *, track_deg: float, t_tenths: int, lat: float | None = None,
              lon: float | None = None) -> odid.MessagePack:
        basic = odid.BasicId(id_type="caa_registration", ua_type="helicopter_or_multirotor",
                             uas_id=self.names[j])
        location = odid.Location(
            status="airborne", height_type="agl", track_deg=track_deg, speed_mps=12.0,
            vspeed_mps=0.0, lat=float(self.lat0[j]) if lat is None else lat,
            lon=float(self.lon0[j]) if lon is None else lon, geodetic_alt_m=float(self.alt[j]),
            height_m=float(self.agl[j]), horiz_accuracy=10, vert_accuracy=4, speed_accuracy=3,
            timestamp_s_past_hour=t_tenths % 36000 / 10, timestamp_accuracy_s=0.1)
        return odid.MessagePack(messages=(basic, location))

    def _patched(self, k: np.ndarray, tenths: np.ndarray) -> np.ndarray:
        """Packs of the UAVs at indexes `k`, at Unix time `tenths` / 10 on their circles."""
        angle = tenths / 10.0 * 12.0 / 300.0 + self.ids[k]
        track = np.rint(np.degrees(-angle) % 360.0).astype(np.int64) % 360
        packs: np.ndarray = self.packs[k]  # a copy
        moving = packs.reshape(-1).view(_MOVING)
        moving["flags"] = _AIRBORNE_AGL | np.where(track >= 180, 0x02, 0)
        moving["track"] = track % 180
        moving["lat"] = np.rint((self.lat0[k] + 0.0027 * np.sin(angle)) * 1e7).astype(np.int32)
        moving["lon"] = np.rint((self.lon0[k] + 0.0031 * np.cos(angle)) * 1e7).astype(np.int32)
        moving["tenths"] = tenths % 36000
        return packs

    def _check_layout(self) -> None:
        """The patched bytes are what `odid.encode` writes for the same Location."""
        tenths = np.array([17_000_000_123], np.int64)
        got = self._patched(np.array([0]), tenths).tobytes()
        angle = 1_700_000_012.3 * 12.0 / 300.0 + int(self.ids[0])
        want = odid.encode(self._pack(
            0, track_deg=float(round(np.degrees(-angle) % 360.0) % 360), t_tenths=int(tenths[0]),
            lat=round((self.lat0[0] + 0.0027 * np.sin(angle)) * 1e7) / 1e7,
            lon=round((self.lon0[0] + 0.0031 * np.cos(angle)) * 1e7) / 1e7))
        if got != want:
            raise RuntimeError(f"F3411Fleet: patched pack {got.hex()} != encoded {want.hex()}")

    def frame(self) -> list[dict[str, Any]]:  # type: ignore[override]
        self.tick += 1
        received = time.time()
        k = (self.tick * self.frame_obs + np.arange(self.frame_obs)) % self.ids.size
        tenths = np.maximum(int((received - 0.5) * 10), self.last_tenths[k] + 1)
        self.last_tenths[k] = tenths
        raw, n, srcs = self._patched(k, tenths).tobytes(), _PACK_BYTES, self.srcs
        return [{"t": received, "msg": raw[j * n:(j + 1) * n], "src": srcs[i]}
                for j, i in enumerate(k.tolist())]


async def stream_load(
    open_link: Any, *, connections: int, seconds: float, frame_obs: int = 100,
    uavs: int = 10_000, window: int = 8, label: str = "gateway", server_pid: int | None = None,
    fleet_type: type[Fleet] = Fleet,
) -> dict[str, Any]:
    """Drive `connections` links (made by `await open_link(conn_no)`) for `seconds`, frames
    made by `fleet_type`."""
    latencies: list[float] = []
    acked = duplicates = rejected = 0
    links: list[_Link] = [await open_link(n) for n in range(connections)]
    stop_at = time.monotonic() + seconds
    progress = Progress(label, seconds)

    async def one(conn_no: int, link: _Link) -> None:
        nonlocal acked
        fleet = fleet_type(conn_no, connections, uavs, frame_obs, seed=conn_no)
        sent_at: dict[int, float] = {}
        inflight = asyncio.Semaphore(window)

        async def receiver() -> None:
            nonlocal acked, duplicates, rejected
            while True:
                ack = await link.recv()
                if "ack" not in ack:
                    if "error" in ack:
                        raise RuntimeError(f"server error frame: {ack}")
                    continue  # a pushed frame (clearance): not ours
                latencies.append(time.monotonic() - sent_at.pop(ack["ack"]))
                acked += ack["accepted"] + ack["duplicates"]
                duplicates += ack["duplicates"]
                rejected += len(ack["rejected"])
                inflight.release()

        recv_task = asyncio.create_task(receiver())
        seq = 0
        try:
            while time.monotonic() < stop_at:
                await inflight.acquire()
                if recv_task.done():
                    recv_task.result()
                seq += 1
                sent_at[seq] = time.monotonic()
                await link.send({"seq": seq, fleet.key: fleet.frame()})
                if conn_no == 0:
                    progress.update(acked)
            for _ in range(window):  # every permit back: every frame acked
                await asyncio.wait_for(inflight.acquire(), 120)
        finally:
            recv_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, EOFError):
                await recv_task
            await link.close()

    cpu_before = cpu_s(server_pid) if server_pid else 0.0
    client_before = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*(one(n, link) for n, link in enumerate(links)))
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "connections": connections, "observations": acked, "seconds": round(elapsed, 2),
        "obs_per_s": round(acked / elapsed), "duplicates": duplicates, "rejected": rejected,
        "ack_p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
        "ack_p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
        "client_cpu_percent": round(100 * (time.process_time() - client_before) / elapsed),
    }
    if server_pid:
        result["server_cpu_percent"] = round(100 * (cpu_s(server_pid) - cpu_before) / elapsed)
    return result


async def http_load(port: int, token: str, *, seconds: float, concurrency: int = 32,
                    server_pid: int | None = None) -> dict[str, Any]:
    """POST /v1/telemetry with one JSON observation per request, on keep-alive connections."""
    done = 0
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    t0 = time.time() - 1800.0
    progress = Progress("http", seconds, "req")

    async def worker(n: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST /v1/telemetry HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n")
        i = 0
        try:
            while time.monotonic() < stop_at:
                i += 1
                body = json.dumps({"uav": f"H{n:03d}", "t": t0 + i * 0.01, "lat": 29.6,
                                   "lon": 106.5, "alt_m": 80.0}).encode()
                started = time.monotonic()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if b" 200 " not in status_line:
                    raise RuntimeError(f"HTTP answer {status_line!r}")
                latencies.append(time.monotonic() - started)
                done += 1
                if n == 0:
                    progress.update(done)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    cpu_before = cpu_s(server_pid) if server_pid else 0.0
    client_cpu_before = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.monotonic() - started
    result: dict[str, Any] = {
        "concurrency": concurrency, "requests": done, "req_per_s": round(done / elapsed),
        "p50_ms": round(percentile(latencies, 0.5) * 1e3, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 1),
        # The load generator's own CPU: near 100 % it, not the server, sets the rate.
        "client_cpu_percent": round(100 * (time.process_time() - client_cpu_before) / elapsed),
    }
    if server_pid:
        result["server_cpu_percent"] = round(100 * (cpu_s(server_pid) - cpu_before) / elapsed)
    return result


async def naive_inserts(database_url: str, seconds: float) -> dict[str, Any]:
    """One INSERT and one commit per observation: the design the pipeline replaces."""
    n = 0
    t0 = time.time() - 7200.0
    started = time.monotonic()
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # as the server's store
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
                "INSERT INTO observations (uav, t, lat, lon, alt_m, source, received_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) "  # geom: computed by PostgreSQL
                "ON CONFLICT DO NOTHING", f"N{n % 100}", t0 + n, 29.6, 106.5, 80.0, "naive", 0.0,
            )
            n += 1
        await pg.close()
    elapsed = time.monotonic() - started
    return {"observations": n, "seconds": round(elapsed, 2), "obs_per_s": round(n / elapsed)}


def gateway_run(url: str, connections: int, seconds: float, *, frame_obs: int = 100,
                uavs: int = 10_000, window: int = 8, label: str = "gateway",
                extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """One server on `url` (with `extra_env` in its environment), gateway load only: the
    figures of `stream_load` plus RSS."""
    with server(url, extra_env) as srv:
        token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
        return _gateway_on(srv, token, connections, seconds, frame_obs=frame_obs, uavs=uavs,
                           window=window, label=label)


def _gateway_on(srv: Any, token: str, connections: int, seconds: float, *, frame_obs: int,
                uavs: int, window: int, label: str,
                fleet_type: type[Fleet] = Fleet) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        return await stream_load(
            lambda n: _GatewayLink.open(srv.gateway_port, token, f"bench-{n}"),
            connections=connections, seconds=seconds, frame_obs=frame_obs, uavs=uavs,
            window=window, label=label, server_pid=srv.proc.pid, fleet_type=fleet_type)

    before = asyncio.run(stage_totals(srv.http_port, token))
    before_worker = asyncio.run(zone_worker_totals(srv.http_port, token))
    result = asyncio.run(go())
    after = asyncio.run(stage_totals(srv.http_port, token))
    result["server_rss_mib"] = round(rss_kib(srv.proc.pid) / 1024, 1)
    result["server_cpu_us_per_obs"] = round(
        result["server_cpu_percent"] / 100 * result["seconds"] / max(1, result["observations"])
        * 1e6, 2)
    # Each check stage's CPU per observation in this run (the server's own counters).
    result["stage_cpu_us_per_obs"] = {
        stage: round((cpu_s - before.get(stage, (0.0, 0.0))[0]) / n * 1e6, 2)
        for stage, (cpu_s, total) in after.items()
        if (n := total - before.get(stage, (0.0, 0.0))[1]) > 0}
    # The zone worker's counts in this run (calls answered, fallbacks, restarts), if it ran.
    worker = asyncio.run(zone_worker_totals(srv.http_port, token))
    if worker:
        result["zone_worker"] = {name: value - before_worker.get(name, 0.0)
                                 for name, value in worker.items()} | {"ready": worker["ready"]}
    return result


async def _metrics_page(http_port: int, token: str) -> str:
    """The server's /metrics, as text."""
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{http_port}/metrics", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        r.raise_for_status()
        return await r.text()


async def stage_totals(http_port: int, token: str) -> dict[str, tuple[float, float]]:
    """Per check stage, the CPU seconds it has cost the server's event loop so far and the
    observations it was given (`lowalt_stage_cpu_seconds_total`, `..._observations_total` of
    the server's /metrics)."""
    text = await _metrics_page(http_port, token)
    totals: dict[str, dict[str, float]] = {"lowalt_stage_cpu_seconds_total": {},
                                           "lowalt_stage_observations_total": {}}
    for name, labels, value in metric_samples(text):
        if name in totals and "stage" in labels:
            totals[name][labels["stage"]] = value
    seconds, observations = totals.values()
    return {stage: (seconds.get(stage, 0.0), n) for stage, n in observations.items()}


async def zone_worker_totals(http_port: int, token: str) -> dict[str, float]:
    """The zone worker's gauges of the server's /metrics (`lowalt_zone_worker_*`, without the
    prefix); empty when the server runs without one."""
    text = await _metrics_page(http_port, token)
    return {name.removeprefix("lowalt_zone_worker_"): value
            for name, _, value in metric_samples(text) if name.startswith("lowalt_zone_worker_")}


async def stored_rows(database_url: str, source_suffix: str) -> int:
    """Observations in storage whose source ends with `source_suffix` (e.g. "/f3411")."""
    pattern = f"%{source_suffix}"
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            (n,) = conn.execute("SELECT count(*) FROM observations WHERE source LIKE ?",
                                (pattern,)).fetchone()
        finally:
            conn.close()
        return int(n)
    pg = await asyncpg.connect(database_url)
    try:
        return int(await pg.fetchval(
            "SELECT count(*) FROM observations WHERE source LIKE $1", pattern))
    finally:
        await pg.close()


def run(backends: Sequence[str], seconds: float = 30.0,
        connections: Sequence[int] = (1, 2, 4, 8), frame_obs: int = 100, uavs: int = 10_000,
        window: int = 8, ws_seconds: float = 10.0, http_seconds: float = 10.0,
        naive_seconds: float = 10.0, f3411_seconds: float | None = None) -> dict[str, Any]:
    """Per backend: gateway at each connection count; at the headline count also WebSocket,
    F3411 over the gateway (`f3411_seconds`, default `seconds`), HTTP and the naive design, each
    on fresh storage and a fresh server; the ratios."""
    headline = HEADLINE_CONNECTIONS if HEADLINE_CONNECTIONS in connections else connections[-1]
    f3411_seconds = seconds if f3411_seconds is None else f3411_seconds
    out: dict[str, Any] = {
        "params": {"seconds": seconds, "connections": list(connections), "frame_obs": frame_obs,
                   "uavs": uavs, "window": window, "headline_connections": headline,
                   "f3411_seconds": f3411_seconds},
    }
    for backend in backends:
        sweep: list[dict[str, Any]] = []
        row: dict[str, Any] = {}
        for c in connections:
            log(f"ingest {backend}: gateway, {c} connection(s), {seconds:g} s")
            with database(backend) as url, server(url) as srv:
                token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
                gw = _gateway_on(srv, token, c, seconds, frame_obs=frame_obs, uavs=uavs,
                                 window=window, label=f"{backend} gateway x{c}")
            sweep.append(gw)
            if c == headline:
                row["gateway"] = gw
        # Each of the others at the headline count on fresh storage and a fresh server too, so
        # every figure (and the F3411 / native ratio) starts from the same empty table: a
        # later run on the same file would pay for the rows of the runs before it (SQLite's
        # inserts into a bigger, uav-ordered table dirty more pages per commit).
        log(f"ingest {backend}: websocket, {headline} connection(s), {ws_seconds:g} s")
        with database(backend) as url, server(url) as srv:
            token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            row["websocket"] = asyncio.run(stream_load(
                lambda n, s=srv, tok=token: _WsLink.open(s.http_port, tok),
                connections=headline, seconds=ws_seconds, frame_obs=frame_obs, uavs=uavs,
                window=window, label=f"{backend} websocket x{headline}",
                server_pid=srv.proc.pid))
        log(f"ingest {backend}: F3411 gateway, {headline} connection(s), {f3411_seconds:g} s")
        with database(backend) as url, server(url) as srv:
            token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            f3411 = _gateway_on(srv, token, headline, f3411_seconds, frame_obs=frame_obs,
                                uavs=uavs, window=window, label=f"{backend} F3411 x{headline}",
                                fleet_type=F3411Fleet)
            f3411["stored"] = asyncio.run(stored_rows(url, "/f3411"))
        accepted = f3411["observations"] - f3411["duplicates"]
        if f3411["stored"] != accepted or f3411["rejected"]:
            raise RuntimeError(f"F3411 gateway: {accepted} accepted, "
                               f"{f3411['rejected']} rejected, {f3411['stored']} stored")
        row["f3411_gateway"] = f3411
        log(f"ingest {backend}: HTTP, one observation per request, {http_seconds:g} s")
        with database(backend) as url, server(url) as srv:
            token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            row["http_one_obs_per_request"] = asyncio.run(
                http_load(srv.http_port, token, seconds=http_seconds, server_pid=srv.proc.pid))
        log(f"ingest {backend}: naive, one INSERT + commit per observation, "
            f"{naive_seconds:g} s")
        with database(backend) as url:
            row["naive_one_insert_per_obs"] = asyncio.run(naive_inserts(url, naive_seconds))
        row["gateway_by_connections"] = sweep
        naive = row["naive_one_insert_per_obs"]["obs_per_s"]
        row["ratio_gateway_vs_naive"] = round(row["gateway"]["obs_per_s"] / max(1, naive), 1)
        row["ratio_http_vs_naive"] = round(
            row["http_one_obs_per_request"]["req_per_s"] / max(1, naive), 1)
        row["ratio_f3411_vs_native"] = round(
            row["f3411_gateway"]["obs_per_s"] / max(1, row["gateway"]["obs_per_s"]), 2)
        out[backend] = row
    return out


# -- memory per live UAV ---------------------------------------------------------------------


async def _fill(client: GatewayClient, names: Sequence[str], *, frame_obs: int = 500,
                spread: bool = True) -> None:
    """One fresh report of each name (`spread`: each at its own place; else all at one)."""
    for start in range(0, len(names), frame_obs):
        now = time.time() - 0.5
        rows = []
        for k in range(start, min(len(names), start + frame_obs)):
            lat, lon = ((29.0 + (k % 320) * 3e-3, 106.0 + (k // 320) * 3e-3) if spread
                        else (29.5, 106.5))
            rows.append([names[k], now + (0.0 if spread else k * 1e-5), lat, lon, 300.0,
                         5.0, 90.0, 0.0, 60.0])
        client.send_obs(rows)
        ack = await client.recv_ack()
        if "ack" not in ack:
            raise RuntimeError(f"server error frame: {ack}")


def _register(url: str, names: Sequence[str]) -> None:
    """Put names in the registry table (SQLite) before the server starts and loads it."""
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    with conn:
        conn.executemany("INSERT INTO uavs (uav, operator) VALUES (?, 'bench')",
                         [(n,) for n in names])
    conn.close()


def memory_per_uav(
    uavs: int = 100_000, registered: bool = True, rounds: int = 20
) -> dict[str, Any]:
    """Server RSS growth per live UAV (SQLite), in steady state: RSS after `rounds` reports
    from each of `uavs` distinct UAVs (more than any per-UAV history the server keeps: fusion
    keeps up to 16 per source for an aircraft heard under several names) minus RSS after as
    many reports from 100 UAVs (same buffers, same code paths). `registered`: the UAVs are in
    the registry (else each also holds an open `unregistered_uav` alert). lost_after_s is
    raised so no `telemetry_lost` opens meanwhile."""
    names = [f"M{n:06d}" for n in range(uavs)]
    few = [f"W{n % 100:03d}" for n in range(uavs)]
    with database("sqlite") as url:
        if registered:
            _register(url, names + sorted(set(few)))
        with server(url, {"LOWALT_LOST_AFTER_S": "3600"}) as srv:
            token = srv.cli("token", "create", "--role", "gateway", "--name", "bench")
            base, after, fill_s = asyncio.run(_measure(srv, token, few, names, rounds))
    return {"backend": "sqlite", "uavs": uavs, "registered": registered,
            "reports_per_uav": rounds, "rss_base_mib": round(base / 1024, 1),
            "rss_after_mib": round(after / 1024, 1), "fill_s": round(fill_s, 1),
            "bytes_per_live_uav": round((after - base) * 1024 / uavs)}


async def _measure(srv: ServerProcess, token: str, few: Sequence[str], names: Sequence[str],
                   rounds: int) -> tuple[int, int, float]:
    """RSS (KiB) after `rounds` reports of `few`, and again after `rounds` reports of `names`,
    and the seconds the second fill took. Each fill goes over one gateway connection that
    stays open until its RSS is read, as a gateway's does (the server keeps a push entry per
    UAV for each open session)."""
    async def fill(which: Sequence[str], spread: bool) -> tuple[int, float]:
        client = await GatewayClient.connect("127.0.0.1", srv.gateway_port, token, "memory")
        try:
            started = time.monotonic()
            for k in range(rounds):  # each round later than the one before: every report new
                if spread:
                    log(f"memory: round {k + 1} of {rounds}")
                await _fill(client, which, spread=spread)
            took = time.monotonic() - started
            await asyncio.sleep(2.0)
            return rss_kib(srv.proc.pid), took
        finally:
            await client.close()

    base, _ = await fill(few, False)
    after, fill_s = await fill(names, True)
    return base, after, fill_s


def memory_run(uavs: int = 100_000, rounds: int = 20) -> dict[str, Any]:
    """The `memory` part: registered fleet (the headline) and unregistered."""
    log(f"memory: {uavs:,} registered UAVs, {rounds} reports each")
    registered = memory_per_uav(uavs, registered=True, rounds=rounds)
    log(f"memory: {uavs:,} unregistered UAVs, {rounds} reports each")
    return {"registered": registered,
            "unregistered": memory_per_uav(uavs, registered=False, rounds=rounds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "postgres"],
                        choices=("sqlite", "postgres"))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--f3411-seconds", type=float, metavar="S",
                        help="F3411 gateway run (default: --seconds)")
    parser.add_argument("--memory", type=int, default=0, metavar="UAVS",
                        help="also measure memory per live UAV with this many UAVs")
    parser.add_argument("--memory-rounds", type=int, default=20, metavar="N",
                        help="reports per UAV in the memory measurement")
    args = parser.parse_args(argv)
    result = run(args.backend, args.seconds, args.connections,
                 f3411_seconds=args.f3411_seconds)
    if args.memory:
        result["memory"] = memory_run(args.memory, args.memory_rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

