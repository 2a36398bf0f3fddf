"""An acknowledgement means committed: `lowalt serve` runs as a real process, is killed with
SIGKILL right after acks, restarted, and every acknowledged observation is still there. SIGTERM
drains: what was received is committed and acknowledged, and the process exits 0 in its grace.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.client import GatewayClient
from lowalt.settings import load_settings
from lowalt.storage import create_store

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 20.0  # only to turn a hang into a failure
GRACE_S = 5.0
Key = tuple[str, float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lowalt(*args: str) -> str:
    """Run the CLI; its stdout."""
    done = subprocess.run([sys.executable, "-m", "lowalt.cli", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOWALT_") and k != "DATABASE_URL"}
    env["LOWALT_SHUTDOWN_GRACE_S"] = str(GRACE_S)
    return env


class ServerProcess:
    """`lowalt serve` in a child process, on free loopback ports, logging to a file."""

    def __init__(self, database_url: str, log_path: Path) -> None:
        self.database_url = database_url
        self.log_path = log_path
        self.http_port, self.gateway_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lowalt.cli", "serve", "--database", self.database_url,
                 "--http", f"127.0.0.1:{self.http_port}",
                 "--gateway", f"127.0.0.1:{self.gateway_port}"],
                cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
            )
        asyncio.run(self._wait_healthy())

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited at start:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not start:\n{self.log()}")
                await asyncio.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture
def server_process(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


def frame_rows(conn: int, seq: int, n: int, t0: float) -> list[list[Any]]:
    """n observations of connection `conn`, frame `seq`; every (uav, t) distinct."""
    return [[f"D{conn}-{i}", t0 + seq * 0.01, 29.7 + i * 1e-3, 106.6, 100.0 + seq]
            for i in range(n)]


async def stored_keys(database_url: str, uavs: set[str]) -> dict[Key, list[Any]]:
    """Read straight from the store: (uav, t) -> [lat, alt_m] of every stored observation."""
    settings = load_settings({"database_url": database_url}, {})
    store = create_store(settings)
    await store.open()
    try:
        out: dict[Key, list[Any]] = {}
        for uav in uavs:
            for row in await store.track(uav, 0.0, time.time() + 10, 1_000_000):
                out[(row.uav, row.t)] = [row.lat, row.alt_m]
        return out
    finally:
        await store.close()


async def track_api_keys(server: ServerProcess, token: str, uavs: set[str]) -> set[Key]:
    """Every stored (uav, t) of uavs, through GET /v1/uavs/{uav}/track."""
    keys: set[Key] = set()
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for uav in sorted(uavs):
            async with http.get(f"{server.url}/v1/uavs/{uav}/track",
                                params={"from": "0", "limit": "10000"}) as r:
                assert r.status == 200, await r.text()
                keys.update((p["uav"], p["t"]) for p in (await r.json())["track"])
    return keys


async def stream(
    server: ServerProcess, token: str, *, connections: int, frames: int, per_frame: int,
    kill_after_acks: int,
) -> tuple[dict[Key, list[Any]], set[str]]:
    """Send frames on several connections at once; SIGKILL the server as soon as
    kill_after_acks acks have arrived. Returns the acknowledged observations and every uav."""
    t0 = time.time() - 600.0
    clients = [await GatewayClient.connect("127.0.0.1", server.gateway_port, token, f"st{c}")
               for c in range(connections)]
    sent: list[dict[int, list[list[Any]]]] = [{} for _ in clients]
    acked: dict[Key, list[Any]] = {}
    acks = 0
    killed = asyncio.Event()

    async def send(c: int, client: GatewayClient) -> None:
        for _ in range(frames):
            rows = frame_rows(c, client.seq + 1, per_frame, t0)
            sent[c][client.send_obs(rows)] = rows
            try:
                await client.drain()
            except ConnectionError:
                assert killed.is_set(), "the server closed a connection on its own"
                return

    async def receive(c: int, client: GatewayClient) -> None:
        nonlocal acks
        expected = 1
        while expected <= frames:
            try:
                answer = await client.recv()
            except (EOFError, ConnectionError):
                assert killed.is_set(), "the server closed a connection on its own"
                return
            assert answer.get("ack") == expected, answer  # acks in seq order, no errors
            assert answer["accepted"] == per_frame, answer
            for row in sent[c][expected]:
                acked[(row[0], row[1])] = [row[2], row[4]]
            expected += 1
            acks += 1
            if acks == kill_after_acks:
                server.signal(signal.SIGKILL)
                killed.set()

    try:
        await asyncio.gather(*(send(c, cl) for c, cl in enumerate(clients)),
                             *(receive(c, cl) for c, cl in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    uavs = {f"D{c}-{i}" for c in range(connections) for i in range(per_frame)}
    return acked, uavs


@pytest.mark.parametrize("when", ["after_last_ack", "mid_stream"])
def test_sigkill_loses_nothing_acknowledged(
    server_process: ServerProcess, database_url: str, when: str
) -> None:
    connections, frames, per_frame = 4, 60, 25  # 6,000 observations in 240 frames
    gateway = lowalt("token", "create", "--role", "gateway", "--database", database_url).strip()
    regulator = lowalt("token", "create", "--role", "regulator", "--database", database_url)
    server_process.start()
    total = connections * frames
    kill_after = total if when == "after_last_ack" else total // 2
    acked, uavs = asyncio.run(stream(server_process, gateway, connections=connections,
                                     frames=frames, per_frame=per_frame,
                                     kill_after_acks=kill_after))
    assert server_process.wait(30) == -signal.SIGKILL
    assert len(acked) >= kill_after * per_frame  # acks already on their way count too

    server_process.start()  # the same database, after the crash
    found = asyncio.run(track_api_keys(server_process, regulator.strip(), uavs))
    missing = set(acked) - found
    assert not missing, f"{len(missing)} acknowledged observations lost, e.g. {min(missing)}"
    server_process.stop()
    rows = asyncio.run(stored_keys(database_url, uavs))
    assert all(rows[key] == value for key, value in acked.items())


def test_sigterm_drains_acks_what_it_stored_and_exits_0(
    server_process: ServerProcess, database_url: str
) -> None:
    """Frames are in flight when SIGTERM arrives: what the server took in is committed and
    acknowledged, what it did not is neither, and it exits 0 within its grace period."""
    token = lowalt("token", "create", "--role", "gateway", "--database", database_url).strip()
    server_process.start()
    connections, frames, per_frame = 3, 1500, 20  # more than the server reads before the signal
    t0 = time.time() - 600.0
    sent: list[dict[int, list[list[Any]]]] = [{} for _ in range(connections)]
    acked: set[Key] = set()

    async def receive(c: int, client: GatewayClient) -> None:
        expected = 2
        try:
            while True:
                try:
                    answer = await client.recv()
                except EOFError:
                    return  # the server closes after its final acks
                assert answer.get("ack") == expected, answer  # in order, and no error frames
                assert answer["accepted"] == per_frame, answer
                acked.update((r[0], r[1]) for r in sent[c][expected])
                expected += 1
        finally:
            await client.close()

    async def run() -> None:
        clients = [await GatewayClient.connect("127.0.0.1", server_process.gateway_port, token)
                   for _ in range(connections)]
        try:
            for c, client in enumerate(clients):  # one acked frame each: all are streaming
                rows = frame_rows(c, 1, per_frame, t0)
                sent[c][client.send_obs(rows)] = rows
                assert (await client.recv())["ack"] == 1
                acked.update((r[0], r[1]) for r in rows)
            for _ in range(frames - 1):
                for c, client in enumerate(clients):
                    rows = frame_rows(c, client.seq + 1, per_frame, t0)
                    sent[c][client.send_obs(rows)] = rows
            server_process.signal(signal.SIGTERM)  # without waiting for any ack
            await asyncio.gather(*(receive(c, client) for c, client in enumerate(clients)))
        finally:
            for client in clients:
                await client.close()

    asyncio.run(run())
    # It exits by itself with 0 (the drain is bounded by shutdown_grace_s; how fast is not a
    # test's business on a shared machine, only that it ends and loses nothing).
    assert server_process.wait(GRACE_S + 60) == 0, server_process.log()
    every_sent = {(r[0], r[1]) for per_conn in sent for rows in per_conn.values() for r in rows}
    stored = set(asyncio.run(stored_keys(database_url, {key[0] for key in every_sent})))
    assert acked <= stored, f"{len(acked - stored)} acknowledged observations not stored"
    assert stored == acked, f"{len(stored - acked)} observations stored but never acknowledged"
