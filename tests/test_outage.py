"""A database outage loses nothing that was acknowledged (PostGIS only).

A fault-injecting TCP proxy sits between the server and PostgreSQL (as asyncpg's own tests do).
Cut, it drops every connection and refuses new ones; restored, it forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ingest.client import GatewayClient
from lowalt.settings import load_settings
from tests.conftest import Server, running, truncate_postgres

WAIT_S = 15.0  # only to turn a hang into a failure
QUIET_S = 2.0  # how long "no ack arrives" is watched


class FaultProxy:
    """Forwards TCP to upstream until cut; while cut, drops connections and refuses new ones."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_off = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._links.discard(link)
            for w in link:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()

    def cut(self) -> None:
        """Drop every connection at once, as a crashed database or a cut network does."""
        self.cut_off = True
        for link in list(self._links):
            for w in link:
                w.transport.abort()

    def restore(self) -> None:
        self.cut_off = False

    async def close(self) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(pg_url)
    p = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def server(pg_url: str, proxy: FaultProxy) -> AsyncIterator[Server]:
    """The whole server in this process, its database behind the proxy."""
    await truncate_postgres(pg_url)
    settings = load_settings({
        "database_url": via(pg_url, proxy.port), "http": "127.0.0.1:0",
        "gateway": "127.0.0.1:0",
    }, {})
    try:
        async with running(settings) as srv:
            yield srv
    finally:
        proxy.restore()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def rows(uav: str, n: int, t0: float) -> list[list[Any]]:
    return [[uav, t0 + i, 29.7, 106.6, 100.0] for i in range(n)]


async def stored(pg_url: str, uav_prefix: str) -> set[tuple[str, float]]:
    """What is in the database, read directly (not through the proxy)."""
    conn = await asyncpg.connect(pg_url)
    try:
        records = await conn.fetch("SELECT uav, t FROM observations WHERE uav LIKE $1",
                                   uav_prefix + "%")
    finally:
        await conn.close()
    return {(r[0], r[1]) for r in records}


class Inbox:
    """Everything the gateway sends on one connection, read by a background task."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.frames: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            self.frames.append(await self.client.recv())
            self._arrived.set()

    async def wait_for(self, n: int) -> list[dict[str, Any]]:
        async def until() -> None:
            while len(self.frames) < n:
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(until(), WAIT_S)
        return self.frames

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


async def test_outage_withholds_acks_then_delivers_them(
    server: Server, proxy: FaultProxy, pg_url: str
) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    t0 = time.time() - 600.0
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw)
    inbox = Inbox(client)
    answers = inbox.frames
    try:
        client.send_obs(rows("OUT-A", 10, t0))
        await inbox.wait_for(1)
        assert answers[0] == {"ack": 1, "accepted": 10, "duplicates": 0, "rejected": []}
        r = await server.client.post("/v1/telemetry", json=rows("OUT-H0", 1, t0),
                                     headers=auth(gw))  # the token is now known
        assert r.status == 200

        proxy.cut()
        for i in range(5):
            client.send_obs(rows(f"OUT-B{i}", 20, t0))
        await asyncio.sleep(QUIET_S)
        assert answers[1:] == [], "an ack arrived while the database was away"

        r = await server.client.post("/v1/telemetry", json=rows("OUT-H1", 3, t0),
                                     headers=auth(gw))
        assert r.status == 503 and r.headers["Retry-After"] == "2"
        r = await server.client.get("/readyz", headers=auth(reg))
        assert r.status == 503
        assert answers[1:] == []

        proxy.restore()
        await inbox.wait_for(6)
        assert [a["ack"] for a in answers] == [1, 2, 3, 4, 5, 6]  # withheld, then in seq order
        assert all(a["accepted"] + a["duplicates"] == 20 for a in answers[1:])
        keys = await stored(pg_url, "OUT-")
        for i in range(5):
            assert {k for k in keys if k[0] == f"OUT-B{i}"} == {
                (f"OUT-B{i}", t0 + n) for n in range(20)}
        assert not any(k[0] == "OUT-H1" for k in keys), "a 503 answer stored its observations"

        r = await server.client.post("/v1/telemetry", json=rows("OUT-H2", 2, t0),
                                     headers=auth(gw))
        assert r.status == 200 and (await r.json())["accepted"] == 2
        r = await server.client.get("/readyz", headers=auth(reg))
        assert r.status == 200
    finally:
        await inbox.close()


async def test_http_only_traffic_recovers_after_an_outage(
    server: Server, proxy: FaultProxy, pg_url: str
) -> None:
    """With no stream retrying, nothing else tells the server the database is back."""
    gw = await server.token("gateway")
    t0 = time.time() - 600.0
    r = await server.client.post("/v1/telemetry", json=rows("HTTP-0", 1, t0), headers=auth(gw))
    assert r.status == 200
    proxy.cut()
    for i in range(3):
        r = await server.client.post("/v1/telemetry", json=rows(f"HTTP-X{i}", 1, t0),
                                     headers=auth(gw))
        assert r.status == 503 and "Retry-After" in r.headers
    proxy.restore()

    async def until_accepted() -> int:
        attempt = 0
        while True:
            attempt += 1
            r = await server.client.post("/v1/telemetry", json=rows("HTTP-1", 1, t0 + attempt),
                                         headers=auth(gw))
            if r.status == 200:
                return attempt
            assert r.status == 503
            await asyncio.sleep(0.1)

    await asyncio.wait_for(until_accepted(), WAIT_S)
    keys = await stored(pg_url, "HTTP-")
    assert not any(k[0].startswith("HTTP-X") for k in keys)
    assert len([k for k in keys if k[0] == "HTTP-1"]) == 1


async def test_outage_during_a_commit_loses_nothing_acknowledged(
    server: Server, proxy: FaultProxy, pg_url: str
) -> None:
    """Cut while frames stream: every ack that arrives is in the database afterwards."""
    gw = await server.token("gateway")
    t0 = time.time() - 3600.0
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw)
    inbox = Inbox(client)
    sent: dict[int, list[list[Any]]] = {}
    try:
        for i in range(200):
            batch = rows(f"CUT-{i % 10}", 10, t0 + i * 10)
            sent[client.send_obs(batch)] = batch
            if i == 100:
                proxy.cut()
            if i % 20 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.5)
        proxy.restore()
        answers = await inbox.wait_for(200)
    finally:
        await inbox.close()
    assert [a["ack"] for a in answers] == list(range(1, 201))
    # A commit cut mid-way may have landed: its retry then finds duplicates, never a loss.
    assert all(a["accepted"] + a["duplicates"] == 10 and not a["rejected"] for a in answers)
    keys = await stored(pg_url, "CUT-")
    expected = {(r[0], r[1]) for batch in sent.values() for r in batch}
    assert keys == expected


async def test_every_subsystem_answers_503_not_500_while_the_database_is_away(
    server: Server, proxy: FaultProxy
) -> None:
    """Zones, clearances, alerts and the audit log share the outage mapping of the store."""
    reg, adm = await server.token("regulator"), await server.token("admin")
    zone = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [106.5, 29.6]},
            "properties": {"id": "z-out", "restriction": "prohibited", "radius_m": 100}}
    proxy.cut()
    try:
        r = await server.client.post("/v1/zones", json=zone, headers=auth(reg))
        assert r.status == 503, await r.text()
        assert "Retry-After" in r.headers
        r = await server.client.get("/v1/alerts", headers=auth(reg))
        assert r.status == 503, await r.text()
        r = await server.client.get("/v1/audit", headers=auth(adm))
        assert r.status == 503, await r.text()
    finally:
        proxy.restore()

    async def until_ok() -> None:
        while True:
            r = await server.client.post("/v1/zones", json=zone, headers=auth(reg))
            if r.status == 201:
                return
            assert r.status == 503
            await asyncio.sleep(0.1)

    await asyncio.wait_for(until_ok(), WAIT_S)
