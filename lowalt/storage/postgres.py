"""PostgreSQL + PostGIS storage through an asyncpg pool.

COPY data is built with numpy for a whole group (lowalt/storage/pgcopy.py). A group the pipeline
knows to be new (`unseen`: each row newer than its UAV's live observation, so not stored yet)
goes with one binary COPY straight into the history, committed by itself: about half of
PostgreSQL's work per row of the checked way below (docs/BENCHMARKS.md). Should a key be there
after all (a UAV dropped from the live picture, another writer), the COPY fails whole on the
primary key and the group goes the checked way. That way: binary COPY into a
per-connection temporary staging table, then one `INSERT ... SELECT ... ON CONFLICT (uav, t) DO
NOTHING RETURNING uav, t` moves them into the history in the same transaction: the returned keys
say which rows were new, the rest were duplicates. Groups under `UNNEST_MAX_ROWS` (HTTP with one
observation per request makes many small groups) go instead as one statement whose parameters
are column arrays, `INSERT ... SELECT FROM unnest($1::text[], ...)`: one round trip instead of
five (begin, COPY, move, commit), twice the small-group rate on this machine, while COPY stays
ahead from about a thousand rows. `geom` is computed by PostgreSQL (a generated column,
migration 0008).
The history has its (uav, t) primary key and a BRIN index on t (retention); no GiST
index, since spatial questions are answered by the in-memory live picture (../shared/MEASURED.md).
The schema itself comes from the Alembic migrations in migrations/.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from lowalt.errors import StorageUnavailable
from lowalt.models import OBSERVATION_COLUMNS, Observation
from lowalt.storage.base import Store, TokenRecord, UavRecord, uav_record
from lowalt.storage.pgcopy import copy_data

_COLUMNS = ", ".join(OBSERVATION_COLUMNS)
_STAGING = """
CREATE TEMPORARY TABLE IF NOT EXISTS obs_staging (
    uav text, t float8, lat float8, lon float8, alt_m float8, speed_mps float8, track_deg float8,
    vspeed_mps float8, agl_m float8, status text, acc_h_m float8, acc_v_m float8, source text,
    received_at float8
) ON COMMIT DELETE ROWS
"""
_MOVE = f"""
INSERT INTO observations ({_COLUMNS})
SELECT {_COLUMNS} FROM obs_staging
ORDER BY uav, t
ON CONFLICT (uav, t) DO NOTHING
RETURNING uav, t
"""
UNNEST_MAX_ROWS = 1000
_ARRAY_TYPES = {"uav": "text", "status": "text", "source": "text"}  # the rest are float8
_INSERT_ARRAYS = f"""
INSERT INTO observations ({_COLUMNS})
SELECT {_COLUMNS}
FROM unnest({", ".join(f"${n}::{_ARRAY_TYPES.get(c, 'float8')}[]"
                       for n, c in enumerate(OBSERVATION_COLUMNS, 1))}) AS u({_COLUMNS})
ORDER BY uav, t
ON CONFLICT (uav, t) DO NOTHING
RETURNING uav, t
"""
# Errors that mean "the database is not there right now", as opposed to a bug in a query.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
)


async def _keep_session(conn: Any) -> None:
    """A connection goes back to the pool without asyncpg's reset query (a round trip after
    every use, before a commit's acks could go out: 2-9 % of gateway ingest). Nothing here
    changes session state (no SET, LISTEN, advisory lock or cursor outlives its use; the
    staging table is the session's own, emptied by each COPY's transaction); a transaction
    left open is still rolled back by asyncpg before this runs."""


async def _init_connection(conn: Any) -> None:
    await conn.execute(_STAGING)


class PostgresStore(Store):
    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 8) -> None:
        self.dsn = dsn
        self.min_size, self.max_size = min_size, max_size
        self._pool: Any = None

    @property
    def pool(self) -> Any:
        """The asyncpg pool; StorageUnavailable if closed. Prefer `connection()`."""
        return self._pool_or_raise()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection for other subsystems' tables: losing the database inside the
        block raises StorageUnavailable (answered 503 / retried), never a raw driver error."""
        try:
            async with self._pool_or_raise().acquire() as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    def _pool_or_raise(self) -> Any:
        if self._pool is None:
            raise StorageUnavailable("postgres: store is not open")
        return self._pool

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, init=_init_connection,
                command_timeout=60, reset=_keep_session,
            )
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.connection() as conn:
            return list(await conn.fetch(sql, *args))

    async def _execute(self, sql: str, *args: Any) -> str:
        async with self.connection() as conn:
            return str(await conn.execute(sql, *args))

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def insert_observations(
        self, rows: Sequence[Observation], *, unseen: bool = False
    ) -> list[bool]:
        if not rows:
            return []
        try:
            if len(rows) < UNNEST_MAX_ROWS:
                async with self._pool_or_raise().acquire() as conn:
                    returned = await conn.fetch(_INSERT_ARRAYS, *zip(*rows, strict=True))
            else:
                columns, data = copy_data(rows)
                async with self._pool_or_raise().acquire() as conn:
                    if unseen:
                        try:
                            await conn.copy_to_table("observations", source=data,
                                                     columns=columns, format="binary")
                            return [True] * len(rows)
                        except asyncpg.UniqueViolationError:
                            pass  # nothing went in: the checked way tells which rows are new
                    async with conn.transaction():
                        await conn.copy_to_table("obs_staging", source=data, columns=columns,
                                                 format="binary")
                        returned = await conn.fetch(_MOVE)
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"postgres: {exc}") from exc
        if len(returned) == len(rows):  # every row went in (so no key was there twice)
            return [True] * len(rows)
        new_keys = {(r[0], r[1]) for r in returned}
        # A key twice in rows (the pipeline drops those; a direct caller may not) went in once:
        # its first row is the new one.
        inserted = []
        for row in rows:
            key = (row.uav, row.t)
            inserted.append(key in new_keys)
            new_keys.discard(key)
        return inserted

    async def track(self, uav: str, t_from: float, t_to: float, limit: int) -> list[Observation]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM observations WHERE uav = $1 AND t >= $2 AND t <= $3 "
            "ORDER BY t LIMIT $4",
            uav, t_from, t_to, limit,
        )
        return [Observation(*row) for row in rows]

    async def track_many(
        self, uavs: Sequence[str], t_from: float, t_to: float, limit: int
    ) -> list[Observation]:
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM observations WHERE uav = ANY($1::text[]) AND t >= $2 "
            "AND t <= $3 ORDER BY t, uav LIMIT $4",
            list(uavs), t_from, t_to, limit,
        )
        return [Observation(*row) for row in rows]

    async def newest_many(
        self, uavs: Sequence[str], t_from: float, per_uav: int
    ) -> list[Observation]:
        rows = await self._fetch(  # one index range scan per id, (uav, t) backwards
            f"SELECT {_COLUMNS} FROM unnest($1::text[]) AS ids(id) CROSS JOIN LATERAL "
            f"(SELECT {_COLUMNS} FROM observations WHERE uav = ids.id AND t >= $2 "
            "ORDER BY t DESC LIMIT $3) AS newest ORDER BY t, uav",
            list(dict.fromkeys(uavs)), t_from, per_uav,
        )
        return [Observation(*row) for row in rows]

    async def latest_observations(self, t_min: float) -> list[Observation]:
        rows = await self._fetch(
            f"SELECT DISTINCT ON (uav) {_COLUMNS} FROM observations WHERE t >= $1 "
            "ORDER BY uav, t DESC",
            t_min,
        )
        return [Observation(*row) for row in rows]

    async def delete_observations_before(self, t: float) -> int:
        total = 0
        while True:  # in slices, so no transaction holds locks for long
            status = await self._execute(
                "DELETE FROM observations WHERE ctid = ANY(ARRAY("
                "SELECT ctid FROM observations WHERE t < $1 LIMIT 50000))",
                t,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < 50000:
                return total

    async def insert_token(
        self, token_hash: str, name: str, role: str, operator: str | None,
        expires_at: float | None, created_at: float,
    ) -> int:
        rows = await self._fetch(
            "INSERT INTO tokens (hash, name, role, operator, expires_at, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            token_hash, name, role, operator, expires_at, created_at,
        )
        return int(rows[0][0])

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = await self._tokens("WHERE hash = $1", token_hash)
        return rows[0] if rows else None

    async def token_by_id(self, token_id: int) -> TokenRecord | None:
        rows = await self._tokens("WHERE id = $1", token_id)
        return rows[0] if rows else None

    async def list_tokens(self) -> list[TokenRecord]:
        return await self._tokens("ORDER BY id")

    async def _tokens(self, where: str, *args: Any) -> list[TokenRecord]:
        rows = await self._fetch(
            "SELECT id, name, role, operator, expires_at, revoked, created_at FROM tokens "
            + where, *args,
        )
        return [TokenRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    async def revoke_token_id(self, token_id: int) -> bool:
        status = await self._execute(
            "UPDATE tokens SET revoked = true WHERE id = $1 AND NOT revoked", token_id
        )
        return status.endswith(" 1")

    async def revoke_token(self, token_hash: str) -> bool:
        status = await self._execute(
            "UPDATE tokens SET revoked = true WHERE hash = $1 AND NOT revoked", token_hash
        )
        return status.endswith(" 1")

    async def upsert_uav(self, record: UavRecord) -> None:
        await self._execute(
            "INSERT INTO uavs (uav, operator, aliases, priority, serial, model, uav_class, "
            "max_speed_mps, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (uav) DO UPDATE "
            "SET operator = excluded.operator, aliases = excluded.aliases, "
            "priority = excluded.priority, serial = excluded.serial, model = excluded.model, "
            "uav_class = excluded.uav_class, max_speed_mps = excluded.max_speed_mps, "
            "updated_at = excluded.updated_at",
            record.uav, record.operator, json.dumps(list(record.aliases)), record.priority,
            record.serial, record.model, record.uav_class, record.max_speed_mps, time.time(),
        )

    async def uavs_fingerprint(self) -> tuple[int, float]:
        rows = await self._fetch("SELECT count(*), coalesce(max(updated_at), 0) FROM uavs")
        return int(rows[0][0]), float(rows[0][1])

    async def uavs(self) -> list[UavRecord]:
        return await self._uavs("ORDER BY uav")

    async def uav(self, uav: str) -> UavRecord | None:
        rows = await self._uavs("WHERE uav = $1", uav)
        return rows[0] if rows else None

    async def _uavs(self, where: str, *args: Any) -> list[UavRecord]:
        rows = await self._fetch(
            "SELECT uav, operator, aliases, priority, serial, model, uav_class, max_speed_mps "
            "FROM uavs " + where, *args,
        )
        return list(map(uav_record, rows))
