"""Both backends keep the same promises: (uav, t) uniqueness, tracks, latest, retention, tokens."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from lowalt.auth import Registry
from lowalt.models import Observation
from lowalt.storage import Store, UavRecord
from lowalt.storage.postgres import PostgresStore
from lowalt.storage.sqlite import SqliteStore
from tests.conftest import truncate_postgres

T0 = 1_764_000_000.0


def row(uav: str, t: float, lat: float = 29.7, **kw: object) -> Observation:
    base = dict(uav=uav, t=t, lat=lat, lon=106.6, alt_m=100.0, speed_mps=None, track_deg=None,
                vspeed_mps=None, agl_m=None, status=None, acc_h_m=None, acc_v_m=None,
                source="gw/gateway/native", received_at=t + 0.5)
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("pad", "unseen"), [(0, False), (1500, False), (1500, True)],
                         ids=["arrays", "copy", "copy straight in, then checked"])
async def test_insert_reports_new_rows_and_duplicates(store: Store, pad: int,
                                                      unseen: bool) -> None:
    """Which rows were new, told row by row, on each PostgreSQL write path (padded past
    UNNEST_MAX_ROWS: COPY). With `unseen` the caller wrongly believes no row is stored: the
    COPY straight into the history meets a stored key, and the group goes the checked way."""
    def padded(rows: list[Observation], at: float) -> list[Observation]:
        return rows + [row(f"P{k}", at) for k in range(pad)]

    first = [row("A", T0), row("A", T0 + 1), row("B", T0)]
    assert await store.insert_observations(padded(first, T0), unseen=unseen) == [True] * (
        3 + pad)
    again = [row("A", T0 + 1, lat=1.0), row("A", T0 + 2), row("B", T0)]
    assert await store.insert_observations(padded(again, T0 + 1), unseen=unseen) == [
        False, True, False] + [True] * pad
    track = await store.track("A", T0 - 10, T0 + 10, 100)
    assert [r.t for r in track] == [T0, T0 + 1, T0 + 2]
    assert track[1].lat == 29.7  # the first copy stays; a duplicate never overwrites
    # Twice within one call: stored once, the first row reported new, the second a duplicate.
    twice = [row("D", T0), row("D", T0, lat=2.0), row("D", T0 + 1)]
    assert await store.insert_observations(padded(twice, T0 + 2), unseen=unseen) == [
        True, False, True] + [True] * pad
    assert [r.t for r in await store.track("D", T0 - 10, T0 + 10, 100)] == [T0, T0 + 1]
    # Only duplicates: none new.
    assert await store.insert_observations(padded(again, T0 + 1), unseen=unseen) == [
        False] * (3 + pad)
    assert len(await store.track_many([f"P{k}" for k in range(pad)], T0, T0 + 2, 10**6)) == (
        3 * pad)


@pytest.mark.parametrize("unseen", [False, True])
@pytest.mark.parametrize("size", [3, 1500])  # arrays, COPY
async def test_postgis_point_of_every_stored_row(pg_url: str, size: int,
                                                 unseen: bool) -> None:
    """Every stored observation has its PostGIS point (computed by the database from lon and
    lat, migration 0008), whichever way it was written."""
    await truncate_postgres(pg_url)
    store = PostgresStore(pg_url)
    await store.open()
    try:
        rows = [row(f"G{k}", T0 + k, lat=29.5 + k * 1e-4, lon=106.25 - k * 1e-4)
                for k in range(size)]
        assert await store.insert_observations(rows, unseen=unseen) == [True] * size
        conn = await asyncpg.connect(pg_url)
        try:
            found = await conn.fetch(
                "SELECT uav, ST_X(geom) AS x, ST_Y(geom) AS y, ST_SRID(geom) AS srid "
                "FROM observations")
        finally:
            await conn.close()
    finally:
        await store.close()
    assert sorted((r["uav"], r["x"], r["y"], r["srid"]) for r in found) == sorted(
        (r.uav, r.lon, r.lat, 4326) for r in rows)


@pytest.mark.parametrize("size", [500, 3000])  # both PostgreSQL write paths
async def test_groups_committing_at_once_with_the_same_keys_store_each_once(
    store: Store, size: int
) -> None:
    """The pipeline commits two groups at once on PostgreSQL; a satellite duplicate can sit in
    both, in any order. Each key is stored once, reported new by exactly one of the two, and
    neither group fails (rows go in key order, so two writers never wait on each other)."""
    for round_ in range(3):
        rows = [row(f"U{k % 97}", T0 + round_ * 10_000 + k) for k in range(size)]
        forward, backward = await asyncio.gather(
            store.insert_observations(rows), store.insert_observations(rows[::-1]))
        assert [a + b for a, b in zip(forward, backward[::-1], strict=True)] == [1] * size
    stored = await store.track_many([f"U{k}" for k in range(97)], T0, T0 + 40_000, 10**6)
    assert len(stored) == 3 * size


@pytest.mark.parametrize("size", [1, 3, 999, 1000, 2500])  # both PostgreSQL write paths
async def test_all_columns_round_trip(store: Store, size: int) -> None:
    full = [row("C", T0 + 0.123456 + k, speed_mps=12.5, track_deg=359.5, vspeed_mps=-2.0,
                agl_m=80.0, status="emergency", acc_h_m=3.0, acc_v_m=10.0,
                source="op1/http/f3411") for k in range(size)]
    full[-1] = full[-1]._replace(status=None, agl_m=None, speed_mps=None)  # NULLs in arrays
    assert await store.insert_observations(full) == [True] * size
    assert await store.track("C", T0, T0 + size + 1, size + 1) == full
    half = [*full[size // 2:], row("C", T0 - 1)]
    assert await store.insert_observations(half) == [False] * len(full[size // 2:]) + [True]
    assert await store.insert_observations([]) == []


async def test_track_window_order_and_limit(store: Store) -> None:
    await store.insert_observations([row("A", T0 + i) for i in (5, 1, 3, 2, 4)])
    assert [r.t for r in await store.track("A", T0 + 2, T0 + 4, 100)] == [T0 + 2, T0 + 3, T0 + 4]
    assert [r.t for r in await store.track("A", T0, T0 + 10, 2)] == [T0 + 1, T0 + 2]
    assert await store.track("nobody", T0, T0 + 10, 10) == []


async def test_newest_many_per_uav_since_oldest_first(store: Store) -> None:
    await store.insert_observations([row("A", T0 + i) for i in (5, 1, 3, 2, 4)]
                                    + [row("B", T0 + i) for i in (3, 9)] + [row("C", T0 + 8)])
    got = await store.newest_many(["A", "B", "A", "nobody"], T0 + 2, 2)
    assert [(r.uav, r.t) for r in got] == [("B", T0 + 3), ("A", T0 + 4), ("A", T0 + 5),
                                           ("B", T0 + 9)]  # by t, then uav; no C
    assert [r.t for r in await store.newest_many(["A"], T0 + 5, 10)] == [T0 + 5]
    assert await store.newest_many(["A"], T0 + 6, 10) == []
    assert await store.newest_many([], T0, 10) == []


async def test_newest_many_over_more_ids_than_one_query_holds(store: Store) -> None:
    ids = [f"U{n:04d}" for n in range(1_234)]
    await store.insert_observations([row(uav, T0 + k) for uav in ids for k in range(3)])
    got = await store.newest_many(ids, T0, 2)
    assert len(got) == 2 * len(ids)
    assert {(r.uav, r.t) for r in got} == {(uav, T0 + k) for uav in ids for k in (1, 2)}
    assert [r.t for r in got] == sorted(r.t for r in got)


async def test_latest_is_newest_by_t_not_by_arrival(store: Store) -> None:
    await store.insert_observations([row("A", T0 + 10, lat=10.0), row("B", T0, lat=20.0)])
    await store.insert_observations([row("A", T0 + 5, lat=5.0)])  # late satellite report
    latest = {r.uav: r for r in await store.latest_observations(T0 - 100)}
    assert latest["A"].lat == 10.0 and latest["B"].lat == 20.0
    assert {r.uav for r in await store.latest_observations(T0 + 1)} == {"A"}


async def test_retention_deletes_only_older(store: Store) -> None:
    await store.insert_observations([row("A", T0 + i) for i in range(10)])
    assert await store.delete_observations_before(T0 + 4) == 4
    assert [r.t for r in await store.track("A", 0, T0 + 100, 100)] == [T0 + i for i in range(4, 10)]


async def test_tokens(store: Store) -> None:
    token_id = await store.insert_token("h1", "gw", "gateway", None, None, T0)
    rec = await store.token_by_hash("h1")
    assert rec is not None and rec.token_id == token_id and rec.role == "gateway"
    assert not rec.revoked
    assert await store.token_by_hash("other") is None
    assert await store.revoke_token("h1") is True
    assert await store.revoke_token("h1") is False
    rec = await store.token_by_hash("h1")
    assert rec is not None and rec.revoked


async def test_uav_registry_upsert(store: Store) -> None:
    await store.upsert_uav(UavRecord("U1", "op1", ("SN123", "780A27")))
    await store.upsert_uav(UavRecord("U2", "op2"))
    await store.upsert_uav(UavRecord("U1", "op3", (), True))
    records = {r.uav: r for r in await store.uavs()}
    assert records["U1"] == UavRecord("U1", "op3", (), True)
    assert records["U2"].operator == "op2"


async def test_registry_fingerprint_changes_with_every_upsert(store: Store) -> None:
    empty = await store.uavs_fingerprint()
    assert empty == (0, 0.0)
    await store.upsert_uav(UavRecord("U1", "op1"))
    one = await store.uavs_fingerprint()
    assert one[0] == 1 and one != empty
    assert await store.uavs_fingerprint() == one  # unchanged: the same
    await asyncio.sleep(0.01)
    await store.upsert_uav(UavRecord("U1", "op2"))  # an update: same count, newer time
    updated = await store.uavs_fingerprint()
    assert updated[0] == 1 and updated[1] > one[1]


async def test_registry_refresh_reads_rows_only_after_a_change(store: Store) -> None:
    calls = 0
    read_uavs = store.uavs

    async def counted() -> list[UavRecord]:
        nonlocal calls
        calls += 1
        return await read_uavs()

    store.uavs = counted  # type: ignore[method-assign]
    registry = Registry(store)
    await store.upsert_uav(UavRecord("U1", "op1"))
    await registry.refresh()
    await registry.refresh()
    assert calls == 1 and registry.operator_of("U1") == "op1"
    await asyncio.sleep(0.01)
    await store.upsert_uav(UavRecord("U1", "op2"))  # as the CLI does, from another process
    await registry.refresh()
    assert calls == 2 and registry.operator_of("U1") == "op2"


def test_a_sqlite_database_from_before_updated_at_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(  # the registry table as migration 0001 made it
        "CREATE TABLE uavs (uav TEXT PRIMARY KEY, operator TEXT NOT NULL, aliases TEXT NOT NULL "
        "DEFAULT '[]', priority INTEGER NOT NULL DEFAULT 0, serial TEXT, model TEXT, "
        "uav_class TEXT, max_speed_mps REAL);"
        "INSERT INTO uavs (uav, operator) VALUES ('OLD', 'op');")
    conn.close()

    async def check() -> None:
        store = SqliteStore(str(path))
        await store.open()
        try:
            assert await store.uavs_fingerprint() == (1, 0.0)
            await store.upsert_uav(UavRecord("NEW", "op"))
            assert {r.uav for r in await store.uavs()} == {"OLD", "NEW"}
            assert (await store.uavs_fingerprint())[1] > 0
        finally:
            await store.close()

    asyncio.run(check())


def _plan(path: Path, sql: str, args: tuple[object, ...]) -> str:
    conn = sqlite3.connect(path)
    try:
        return " / ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    finally:
        conn.close()


def test_sqlite_keeps_observations_in_time_order_and_reads_a_uav_by_its_index(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new.db"

    async def fill() -> None:
        store = SqliteStore(str(path))
        await store.open()
        try:
            # Arrival order is not key order: the table's own order is (t, uav).
            await store.insert_observations([row("B", T0 + 1), row("A", T0 + 2), row("A", T0)])
            assert [r.t for r in await store.track("A", T0 - 1, T0 + 9, 10)] == [T0, T0 + 2]
        finally:
            await store.close()

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    key = {r[1]: r[5] for r in conn.execute("PRAGMA table_info(observations)")}
    # A scan of the table itself (lat is in no index), so in its key's order.
    stored = [r[:2] for r in conn.execute("SELECT uav, t, lat FROM observations NOT INDEXED")]
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(observations)")}
    (version,) = conn.execute("SELECT version FROM schema_version").fetchone()
    conn.close()
    assert (key["t"], key["uav"], version) == (1, 2, 2)
    assert stored == [("A", T0), ("B", T0 + 1), ("A", T0 + 2)]
    assert "observations_uav_t" in indexes and "observations_t" not in indexes
    plan = _plan(path, "SELECT * FROM observations WHERE uav = ? AND t >= ? AND t <= ?",
                 ("A", T0, T0 + 9))
    assert "USING INDEX observations_uav_t (uav=? AND t>? AND t<?)" in plan
    plan = _plan(path, "DELETE FROM observations WHERE t < ?", (T0,))
    assert "USING PRIMARY KEY (t<?)" in plan


def test_a_sqlite_database_keyed_by_uav_keeps_its_layout_and_works(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(  # observations as schema version 1 made them
        "CREATE TABLE observations (uav TEXT NOT NULL, t REAL NOT NULL, lat REAL NOT NULL, "
        "lon REAL NOT NULL, alt_m REAL NOT NULL, speed_mps REAL, track_deg REAL, "
        "vspeed_mps REAL, agl_m REAL, status TEXT, acc_h_m REAL, acc_v_m REAL, "
        "source TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (uav, t)) WITHOUT ROWID;"
        "CREATE INDEX observations_t ON observations (t);"
        "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        "INSERT INTO schema_version VALUES (1);")
    conn.close()

    async def use() -> None:
        store = SqliteStore(str(path))
        await store.open()
        try:
            assert await store.insert_observations([row("A", T0), row("A", T0)]) == [True, False]
            assert await store.insert_observations([row("A", T0 + 1)]) == [True]
            assert [r.t for r in await store.track("A", T0 - 1, T0 + 9, 10)] == [T0, T0 + 1]
            assert await store.delete_observations_before(T0 + 1) == 1
        finally:
            await store.close()

    asyncio.run(use())
    conn = sqlite3.connect(path)
    indexes = {r[1] for r in conn.execute("PRAGMA index_list(observations)")}
    versions = conn.execute("SELECT version FROM schema_version").fetchall()
    conn.close()
    assert "observations_uav_t" not in indexes and "observations_t" in indexes  # no extra index
    assert versions == [(1,)]


def test_sqlite_checkpoints_in_the_background_not_in_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"

    async def write_then_wait() -> tuple[int, int, int]:
        store = SqliteStore(str(path), checkpoint_every_s=0.05)
        await store.open()
        try:
            before = path.stat().st_size
            # Far below the writer's own (backstop) checkpoint: without the background one,
            # these rows would stay in the WAL and the database file would not grow.
            await store.insert_observations([row(f"U{k:04d}", T0 + k) for k in range(3_000)])
            wal = (path.parent / (path.name + "-wal")).stat().st_size
            # Until the rows are in the file (up to 30 s; usually within 0.1 s): a checkpoint
            # writes its pages one by one, so a file seen a little larger can be one caught
            # mid-way (32 KiB of 360 once, in CI).
            for _ in range(600):
                await asyncio.sleep(0.05)
                if path.stat().st_size > before + 40 * 4096:
                    break
            return before, path.stat().st_size, wal
        finally:
            await store.close()

    before, after, wal = asyncio.run(write_then_wait())
    assert wal > 50 * 4096 and after > before + 40 * 4096
    conn = sqlite3.connect(path)
    (n,) = conn.execute("SELECT count(*) FROM observations").fetchone()
    conn.close()
    assert n == 3_000


async def test_a_pooled_connection_comes_back_without_its_callers_transaction(
    pg_url: str,
) -> None:
    """The pool skips asyncpg's reset query (postgres.py `_keep_session`), yet a transaction
    a caller left open is rolled back before the connection is used again, and the staging
    table is empty for the next COPY."""
    await truncate_postgres(pg_url)
    store = PostgresStore(pg_url, min_size=1, max_size=1)  # one connection: the same each time
    await store.open()
    try:
        async with store.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO uavs (uav, operator) VALUES ('left-open', 'op')")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        async with store.connection() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM uavs") == 0
        rows = [row(f"S{k}", T0 + k) for k in range(1500)]  # the staging (COPY) path
        assert await store.insert_observations(rows) == [True] * 1500
        assert await store.insert_observations(rows) == [False] * 1500
        async with store.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM obs_staging") == 0
    finally:
        await store.close()
