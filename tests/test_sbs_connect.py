"""`lowalt sbs-connect` (ingest/sbs_connect.py): a live SBS-1 feed reaches lowalt and each side
reconnects after a drop, re-sending what lowalt had not acked; and the F3411 read API's view
limit and recent positions (GET /v1/flights)."""

from __future__ import annotations

import asyncio
import math
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgpack

from ingest.sbs_connect import SbsConnector, backoff_s
from lowalt.fusion import M_PER_DEG
from tests.conftest import Server
from tests.test_formats_e2e import sbs_line

LAT, LON = 29.60, 106.50
_LEN = struct.Struct(">I")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class FeedServer:
    """A port-30003 stand-in: streams a MSG,3 line (with altitude) for `icao`, timed now, every
    20 ms to each client, until closed."""

    def __init__(self, icao: str) -> None:
        self.icao = icao
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        result: int = self.server.sockets[0].getsockname()[1]
        return result

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while not writer.is_closing():
                when = datetime.now(UTC)
                writer.write((sbs_line(3, self.icao, when, alt_ft="1000", lat=f"{LAT:.5f}",
                                       lon=f"{LON:.5f}") + "\r\n").encode())
                await writer.drain()
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@asynccontextmanager
async def running(connector: SbsConnector) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def until(probe: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_backoff_doubles_with_jitter_between_base_and_cap() -> None:
    assert backoff_s(0, rand=lambda: 0.0) == backoff_s(0, rand=lambda: 1.0) == 0.5
    assert (backoff_s(3, rand=lambda: 0.0), backoff_s(3, rand=lambda: 1.0)) == (2.0, 4.0)
    assert (backoff_s(99, rand=lambda: 0.0), backoff_s(99, rand=lambda: 1.0)) == (15.0, 30.0)
    assert all(0.5 <= backoff_s(k) <= 30.0 for k in range(40))


def test_batches_stay_until_answered() -> None:
    c = SbsConnector(("h", 1), ("h", 2), "t", max_lines=2, window=2)
    c.add_lines(["a", "b", "c"])
    c.seal()
    c.seal()  # nothing new: no empty batch
    assert c.unacked == {1: "a\r\nb\r\n", 2: "c\r\n"}
    c.answered({"ack": 1, "accepted": 1, "duplicates": 0, "rejected": [[0, "sbs: x"]]})
    c.answered({"error": "too big", "seq": 2})
    c.answered({"ack": 7})  # not ours: ignored
    assert c.unacked == {}
    counts = c.counters
    assert (counts.frames_acked, counts.frames_refused, counts.accepted, counts.rejected) == (
        1, 1, 1, 1)


async def test_feed_reaches_lowalt_and_both_sides_reconnect(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")

    async def heard(icao: str) -> bool:
        r = await server.client.get("/v1/uavs", headers=auth(reg))
        rows = [u for u in (await r.json())["uavs"] if u["uav"] == f"ICAO-{icao}"]
        assert all(u["source"] == "feeder/gateway/sbs" for u in rows)
        return bool(rows) and rows[0]["t"] > time.time() - 5

    feed = FeedServer("780A27")
    port = await feed.start()
    connector = SbsConnector(("127.0.0.1", port), ("127.0.0.1", server.gateway_port), gw,
                             name="feeder", flush_s=0.05, backoff_base_s=0.05,
                             backoff_cap_s=0.2)
    async with running(connector):
        await until(lambda: heard("780A27"))
        # The feed goes away and comes back on the same port.
        await feed.close()
        await asyncio.sleep(0.3)
        feed = FeedServer("780B11")
        await feed.start(port)
        await until(lambda: heard("780B11"))
        assert connector.counters.feed_connects >= 2
        # lowalt closes the gateway connection: the connector reconnects and goes on.
        for conn in list(server.runtime.gateway_connections):
            assert conn.transport is not None
            conn.transport.close()
        feed.icao = "780C22"
        await until(lambda: heard("780C22"))
        assert connector.counters.gateway_connects >= 2
    await feed.close()
    assert connector.counters.accepted > 0 and connector.counters.rejected == 0


async def test_unacked_batches_are_sent_again_after_a_gateway_drop() -> None:
    """A gateway that takes frames and drops the connection without acking: the next
    connection gets the same batches again, and once acked they are gone."""
    frames: list[list[dict[str, Any]]] = []

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got: list[dict[str, Any]] = []
        frames.append(got)
        try:
            while True:
                body = await reader.readexactly(_LEN.unpack(await reader.readexactly(4))[0])
                frame = msgpack.unpackb(body)
                if "hello" in frame:
                    reply: dict[str, Any] = {"ok": True}
                else:
                    got.append(frame)
                    if len(frames) == 1:
                        if len(got) == 2:
                            break  # dropped with two batches unacked
                        continue
                    reply = {"ack": frame["seq"], "accepted": 1, "duplicates": 0, "rejected": []}
                writer.write(_LEN.pack(len(packed := msgpack.packb(reply))) + packed)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(gateway, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    connector = SbsConnector(("127.0.0.1", 9), ("127.0.0.1", port), "t", max_lines=1,
                             backoff_base_s=0.05, backoff_cap_s=0.1)
    connector.add_lines(["MSG,1", "MSG,2"])
    async with running(connector):
        await until(lambda: asyncio.sleep(0, not connector.unacked and len(frames) >= 2))
        connector.add_lines(["MSG,3"])
        await until(lambda: asyncio.sleep(0, not connector.unacked))
    srv.close()
    await srv.wait_closed()
    assert frames[0] == [{"seq": 1, "sbs": "MSG,1\r\n"}, {"seq": 2, "sbs": "MSG,2\r\n"}]
    assert frames[1] == frames[0] + [{"seq": 3, "sbs": "MSG,3\r\n"}]
    assert connector.counters.frames_resent == 2 and connector.counters.frames_acked == 3


def test_cli_bad_address_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lowalt.cli", "sbs-connect", "no-port-here", "--token", "t"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1
    assert done.stderr.startswith("lowalt: sbs-connect: feed address")


# -- GET /v1/flights: the F3411 view limit and recent positions --------------------------------


def view_north(diagonal_m: float) -> str:
    """A view whose diagonal runs north along a meridian, exactly diagonal_m long."""
    return f"{LAT},{LON},{LAT + diagonal_m / M_PER_DEG},{LON}"


async def test_flights_view_limit_is_7_km_diagonal(server: Server) -> None:
    reg = await server.token("regulator")
    r = await server.client.get("/v1/flights", params={"view": view_north(6_999.0)},
                                headers=auth(reg))
    assert r.status == 200
    r = await server.client.get("/v1/flights", params={"view": view_north(7_001.0)},
                                headers=auth(reg))
    assert r.status == 413
    assert await r.json() == {"error": "view too large: diagonal 7.001 km exceeds 7 km"}


async def test_flights_recent_positions_last_60_s_at_most_10_oldest_first(
    server: Server,
) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = math.floor(time.time())

    def native(uav: str, t: float, k: int) -> dict[str, Any]:
        return {"uav": uav, "t": t, "lat": LAT + k * 1e-4, "lon": LON, "alt_m": 300.0}

    busy = [native("CQ-R1", now - 1 - 3 * k, k) for k in range(25)]  # now-1 .. now-73
    sparse = [native("CQ-R2", now - dt, k) for k, dt in enumerate((90, 70, 30, 10))]
    r = await server.client.post("/v1/telemetry", json=busy + sparse, headers=auth(gw))
    assert r.status == 200 and (await r.json())["accepted"] == 29
    flights: dict[str, Any] = {}

    async def both() -> bool:
        r = await server.client.get("/v1/flights", params={"view": view_north(1000.0)},
                                    headers=auth(reg))
        flights.update({f["id"]: f for f in (await r.json())["flights"]})
        return {"CQ-R1", "CQ-R2"} <= set(flights)

    await until(both)
    recent = flights["CQ-R1"]["recent_positions"]
    assert [p["time"] for p in recent] == [
        {"value": float(now - 1 - 3 * k), "format": "UnixSeconds"} for k in range(9, -1, -1)]
    assert recent[-1]["position"] == {"lat": LAT, "lng": LON, "alt": 300.0}
    assert [p["time"]["value"] for p in flights["CQ-R2"]["recent_positions"]] == [
        now - 30, now - 10]
    assert flights["CQ-R2"]["recent_positions"][0]["position"]["lat"] == LAT + 2e-4
