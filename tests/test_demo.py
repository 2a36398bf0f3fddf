"""`lowalt serve --demo` as a user runs it: its zones, its fleet registered to its operators (so
no `unregistered_uav`), and logistics flights whose clearances are granted and activated."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from lowalt.simulator import demo_fleet
from lowalt.simulator.scenario import LOGISTICS_UAVS
from tests.test_geofence_e2e import auth, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def demo(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The demo server running in its own process: (base URL, tokens by banner name)."""
    proc = await asyncio.create_subprocess_exec(  # port 0: the banner says where it listens
        sys.executable, "-m", "lowalt.cli", "serve", "--demo", "--database",
        f"sqlite:///{tmp_path / 'demo.db'}", "--http", "127.0.0.1:0", "--gateway",
        f"127.0.0.1:{free_port()}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        tokens: dict[str, str] = {}
        async with asyncio.timeout(60):
            while "metrics" not in tokens:
                line = (await proc.stdout.readline()).decode()
                assert line, "the demo exited"
                name, _, rest = line.strip().partition(":")
                if rest:
                    tokens[name.replace(" token", "")] = rest.split()[0]
        base = tokens["live map"].rstrip("/")
        assert base.startswith("http://127.0.0.1:") and not base.endswith(":0"), base
        yield base, tokens
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_demo_registers_its_fleet_and_flies_cleared_logistics(tmp_path: Path) -> None:
    async with demo(tmp_path) as (base, tokens), aiohttp.ClientSession(base) as http:
        regulator = auth(tokens["regulator"])

        async def get(path: str, **params: str) -> Any:
            async with http.get(path, params=params, headers=regulator) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        registry = await get("/v1/registry/uavs", limit="1000")
        fleet = {u["uav"]: u["operator"] for u in demo_fleet()}
        assert {u["uav"]: u["operator"] for u in registry["uavs"]} == fleet
        zones = {z["properties"]["id"]: z["properties"] for z in (await get("/v1/zones"))[
            "features"]}
        assert set(zones) == {"demo-jiangbei-ctr", "demo-mingyue-lake"}
        assert set(zones["demo-mingyue-lake"]["authorized"]) == set(LOGISTICS_UAVS)

        # The first logistics flight (74 s after the start with the demo's seed) asks at once.
        async def first_clearance_active() -> bool:
            found = (await get("/v1/clearances", uav="CQ-LOG-01"))["clearances"]
            return [c["state"] for c in found] == ["active"]

        await eventually(first_clearance_active, timeout_s=30.0)
        # Then a report of an unknown UAV: once its alert is out, the demo's reports before it
        # have all been checked, and none of them was unregistered.
        async with http.post("/v1/telemetry", headers=auth(tokens["gateway"]), json={
                "uav": "STRANGER", "t": time.time(), "lat": 29.5, "lon": 106.45,
                "alt_m": 230.0, "status": "ground"}) as r:
            assert r.status == 200

        async def unregistered() -> list[str] | None:
            events = (await get("/v1/alerts", since="0", type="unregistered_uav"))["events"]
            uavs = [e["uav"] for e in events]
            return uavs if "STRANGER" in uavs else None

        assert await eventually(unregistered, timeout_s=30.0) == ["STRANGER"]
        live = {u["uav"] for u in (await get("/v1/uavs"))["uavs"]}
        assert len(live & set(fleet)) > 30  # the fleet was reporting meanwhile
