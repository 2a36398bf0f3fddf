"""Shared fixtures: both storage backends for real (a fresh PostGIS database and a SQLite file),
and a running server on loopback ports.

PostgreSQL comes from LOWALT_TEST_DATABASE_URL (default: the machine's local server). Without it,
PostGIS tests skip locally; under CI=true they fail, so a missing database can never pass CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from lowalt.app import RUNTIME, Runtime, create_app
from lowalt.auth import hash_token, new_token
from lowalt.migrate import upgrade_postgres
from lowalt.settings import Settings, load_settings, replace
from lowalt.storage import Store, create_store

ADMIN_URL = os.environ.get("LOWALT_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"
BACKENDS = ["sqlite", "postgres"]
GOLDEN = Path(__file__).parent / "golden"  # copies of ../shared/testdata
NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"


@pytest.fixture(scope="session")
def nats_up() -> None:
    """The machine's NATS JetStream server; skipped locally when absent, a failure under CI."""
    try:
        socket.create_connection((NATS_HOST, NATS_PORT), timeout=2).close()
    except OSError as exc:
        message = f"NATS unavailable at {NATS_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the NATS tests must run)")
        pytest.skip(message)


def _replace_db(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database with PostGIS and the Alembic schema, for the whole session."""
    name = f"lowalt_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL unavailable at {ADMIN_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the PostGIS tests must run)")
        pytest.skip(message)
    url = _replace_db(ADMIN_URL, name)
    try:
        upgrade_postgres(url)
    except Exception as exc:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        message = f"cannot migrate a PostGIS database: {exc}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def truncate_postgres(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename NOT IN ('alembic_version', 'spatial_ref_sys')"
        )
        if tables:
            names = ", ".join(f'"{r[0]}"' for r in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'lowalt.db'}"
    url: str = request.getfixturevalue("pg_url")
    asyncio.run(truncate_postgres(url))
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings({
        "database_url": database_url, "http": "127.0.0.1:0", "gateway": "127.0.0.1:0",
        "retention_interval_s": 3600.0,
    }, {})


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = create_store(settings)
    await s.open()
    yield s
    await s.close()


async def make_token(store: Store, role: str, operator: str | None = None,
                     name: str | None = None) -> str:
    token = new_token()
    await store.insert_token(hash_token(token), name or role, role, operator, None, 0.0)
    return token


@dataclass
class Server:
    client: TestClient[Any, Any]
    runtime: Runtime

    @property
    def gateway_port(self) -> int:
        return self.runtime.gateway_port

    async def token(self, role: str, operator: str | None = None, name: str | None = None) -> str:
        return await make_token(self.runtime.store, role, operator, name)


@contextlib.asynccontextmanager
async def running(settings: Settings, **changes: Any) -> AsyncIterator[Server]:
    """The whole server, in this process, on loopback ports, with settings changed as given."""
    app = create_app(replace(settings, **changes) if changes else settings)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Server(client, app[RUNTIME])
    finally:
        await client.close()


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    """The whole server, in this process, on loopback ports."""
    async with running(settings) as srv:
        yield srv
