"""Embedded storage: one SQLite file in WAL mode, written from one thread off the event loop.

Writes go through a single writer thread (SQLite allows one writer); reads use a second
connection on their own thread, so a read never waits for a commit (WAL readers see the last
committed state). `synchronous=FULL` makes a returned commit durable against power loss too.

Observations are keyed (t, uav) in a WITHOUT ROWID table, with an index on (uav, t) for the
per-UAV reads. Reports arrive roughly in time order, so the rows (about 120 B each) go in at one
end of the table and a commit writes a few table pages to the WAL; only the index's small
entries land all over it. Keyed (uav, t) (schema version 1), every commit rewrote about one
table page per UAV in the group, and a growing table slowed ingest down: 10,000 UAVs, groups of
1,000 rows, 25 s in, 32,000 against 43,700 rows/s (docs/BENCHMARKS.md). A file made with
version 1 keeps its layout (and its index on t): both are read and written the same way.

Checkpoints (copying the WAL into the database file) run on a connection and thread of their
own every `CHECKPOINT_EVERY_S`, in PASSIVE mode, which never blocks the writer. Left to the
writer (SQLite's automatic checkpoint every 1,000 WAL pages), every few seconds one commit also
copied and synced thousands of pages, and every report and alert event waiting behind it waited
for that too. The writer keeps an automatic checkpoint only as a backstop, at
`BACKSTOP_CHECKPOINT_PAGES`, should the background one fall behind.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

from lowalt.errors import StorageUnavailable
from lowalt.models import OBSERVATION_COLUMNS, Observation
from lowalt.storage.base import Store, TokenRecord, UavRecord, uav_record

T = TypeVar("T")
log = logging.getLogger("lowalt.storage")

CHECKPOINT_EVERY_S = 0.5
BACKSTOP_CHECKPOINT_PAGES = 20_000  # 80 MB of WAL at 4 KiB pages

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    uav TEXT NOT NULL, t REAL NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL,
    alt_m REAL NOT NULL, speed_mps REAL, track_deg REAL, vspeed_mps REAL, agl_m REAL,
    status TEXT, acc_h_m REAL, acc_v_m REAL, source TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (t, uav)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, role TEXT NOT NULL,
    operator TEXT, expires_at REAL, revoked INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uavs (
    uav TEXT PRIMARY KEY, operator TEXT NOT NULL, aliases TEXT NOT NULL DEFAULT '[]',
    priority INTEGER NOT NULL DEFAULT 0, serial TEXT, model TEXT, uav_class TEXT,
    max_speed_mps REAL, updated_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""

_COLUMNS = ", ".join(OBSERVATION_COLUMNS)
_IDS_PER_QUERY = 500
_T_UAV = itemgetter(OBSERVATION_COLUMNS.index("t"), OBSERVATION_COLUMNS.index("uav"))
_TOKEN_COLUMNS = "id, name, role, operator, expires_at, revoked, created_at"
_INSERT = (
    f"INSERT OR IGNORE INTO observations ({_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(OBSERVATION_COLUMNS))})"
)


def add_missing_columns(conn: sqlite3.Connection, table: str, columns: Mapping[str, str]) -> None:
    """Add those of columns (name -> type and constraints) that table lacks: a database file
    made by an older version of the schema."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def observations_index(conn: sqlite3.Connection) -> str:
    """The statement that creates the observations table's second index: on (uav, t) when
    the table is keyed (t, uav), on t for a version-1 file keyed (uav, t) (module docstring)."""
    key = {row[1]: row[5] for row in conn.execute("PRAGMA table_info(observations)")}
    if key.get("t") == 1:
        return "CREATE INDEX IF NOT EXISTS observations_uav_t ON observations (uav, t)"
    return "CREATE INDEX IF NOT EXISTS observations_t ON observations (t)"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class _Checkpointer:
    """PASSIVE checkpoints every every_s on a connection and thread of their own (module
    docstring), until closed."""

    def __init__(self, path: str, every_s: float) -> None:
        self._conn = _connect(path)
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the writer's backstop still bounds the WAL
                log.warning("sqlite: background checkpoint failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()


class SqliteStore(Store):
    def __init__(self, path: str, checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.path = path
        self.checkpoint_every_s = checkpoint_every_s
        self._checkpointer: _Checkpointer | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None

    async def _run(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the writer thread (other subsystems' tables use this)."""
        return await self._run(self._writer, lambda: fn(self._w()))

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the reader thread; sees the last committed state."""
        return await self._run(self._reader, lambda: fn(self._r()))

    def _w(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise StorageUnavailable("sqlite: store is not open")
        return self._wconn

    def _r(self) -> sqlite3.Connection:
        if self._rconn is None:
            raise StorageUnavailable("sqlite: store is not open")
        return self._rconn

    async def open(self) -> None:
        def setup() -> None:
            parent = Path(self.path).parent
            parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path)
            conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES}")
            conn.executescript(SCHEMA)
            conn.execute(observations_index(conn))
            add_missing_columns(conn, "uavs", {"updated_at": "REAL NOT NULL DEFAULT 0"})
            if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            self._wconn = conn

        await self._run(self._writer, setup)

        def setup_reader() -> None:
            self._rconn = _connect(self.path)

        await self._run(self._reader, setup_reader)
        self._checkpointer = await asyncio.to_thread(
            _Checkpointer, self.path, self.checkpoint_every_s)

    async def close(self) -> None:
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
            self._checkpointer = None
        def shut(conn: sqlite3.Connection | None) -> Callable[[], None]:
            return lambda: conn.close() if conn is not None else None

        await self._run(self._writer, shut(self._wconn))
        await self._run(self._reader, shut(self._rconn))
        self._wconn = self._rconn = None
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    async def ping(self) -> None:
        await self._run(self._reader, lambda: self._r().execute("SELECT 1").fetchone())

    async def insert_observations(
        self, rows: Sequence[Observation], *, unseen: bool = False
    ) -> list[bool]:
        def write() -> list[bool]:
            conn = self._w()
            conn.execute("BEGIN IMMEDIATE")
            try:
                # All at once (binding in C, no cursor per row); `total_changes` tells whether
                # every row went in. When some did not (duplicates, rare), the group is undone
                # to the savepoint and redone row by row to learn which, in the same
                # transaction.
                before = conn.total_changes
                conn.execute("SAVEPOINT group_rows")
                conn.executemany(_INSERT, rows)
                if conn.total_changes - before == len(rows):
                    inserted = [True] * len(rows)
                else:
                    conn.execute("ROLLBACK TO group_rows")
                    execute = conn.execute
                    inserted = [execute(_INSERT, row).rowcount == 1 for row in rows]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return inserted

        return await self._run(self._writer, write)

    async def track(self, uav: str, t_from: float, t_to: float, limit: int) -> list[Observation]:
        sql = (
            f"SELECT {_COLUMNS} FROM observations WHERE uav = ? AND t >= ? AND t <= ? "
            "ORDER BY t LIMIT ?"
        )
        rows = await self._run(
            self._reader, lambda: self._r().execute(sql, (uav, t_from, t_to, limit)).fetchall()
        )
        return [Observation(*row) for row in rows]

    async def track_many(
        self, uavs: Sequence[str], t_from: float, t_to: float, limit: int
    ) -> list[Observation]:
        ids = list(dict.fromkeys(uavs))
        if not ids:
            return []
        sql = (
            f"SELECT {_COLUMNS} FROM observations WHERE uav IN ({', '.join('?' * len(ids))}) "
            "AND t >= ? AND t <= ? ORDER BY t, uav LIMIT ?"
        )
        params = (*ids, t_from, t_to, limit)
        rows = await self._run(
            self._reader, lambda: self._r().execute(sql, params).fetchall()
        )
        return [Observation(*row) for row in rows]

    async def newest_many(
        self, uavs: Sequence[str], t_from: float, per_uav: int
    ) -> list[Observation]:
        ids = list(dict.fromkeys(uavs))

        def read() -> list[Any]:
            found: list[Any] = []
            for start in range(0, len(ids), _IDS_PER_QUERY):  # bound the query's parameters
                part = ids[start : start + _IDS_PER_QUERY]
                found += self._r().execute(
                    f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, row_number() OVER "
                    "(PARTITION BY uav ORDER BY t DESC) AS k FROM observations "
                    f"WHERE uav IN ({', '.join('?' * len(part))}) AND t >= ?) WHERE k <= ?",
                    (*part, t_from, per_uav),
                ).fetchall()
            return sorted(found, key=_T_UAV)

        rows = await self._run(self._reader, read) if ids else []
        return [Observation(*row) for row in rows]

    async def latest_observations(self, t_min: float) -> list[Observation]:
        cols = ", ".join(f"o.{c}" for c in OBSERVATION_COLUMNS)
        sql = (
            f"SELECT {cols} FROM observations o JOIN (SELECT uav, max(t) AS t FROM observations "
            "WHERE t >= ? GROUP BY uav) m ON o.uav = m.uav AND o.t = m.t"
        )
        rows = await self._run(self._reader, lambda: self._r().execute(sql, (t_min,)).fetchall())
        return [Observation(*row) for row in rows]

    async def delete_observations_before(self, t: float) -> int:
        def delete() -> int:
            total = 0
            while True:  # in slices, so the writer is never held for long
                cur = self._w().execute(
                    "DELETE FROM observations WHERE (uav, t) IN (SELECT uav, t FROM observations "
                    "WHERE t < ? LIMIT 10000)",
                    (t,),
                )
                total += cur.rowcount
                if cur.rowcount < 10000:
                    return total

        return await self._run(self._writer, delete)

    async def insert_token(
        self, token_hash: str, name: str, role: str, operator: str | None,
        expires_at: float | None, created_at: float,
    ) -> int:
        def insert() -> int:
            cur = self._w().execute(
                "INSERT INTO tokens (hash, name, role, operator, expires_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, name, role, operator, expires_at, created_at),
            )
            return int(cur.lastrowid or 0)

        return await self._run(self._writer, insert)

    async def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = await self._tokens("WHERE hash = ?", (token_hash,))
        return rows[0] if rows else None

    async def token_by_id(self, token_id: int) -> TokenRecord | None:
        rows = await self._tokens("WHERE id = ?", (token_id,))
        return rows[0] if rows else None

    async def list_tokens(self) -> list[TokenRecord]:
        return await self._tokens("ORDER BY id", ())

    async def _tokens(self, where: str, args: tuple[Any, ...]) -> list[TokenRecord]:
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens {where}"
        rows = await self._run(self._reader, lambda: self._r().execute(sql, args).fetchall())
        return [TokenRecord(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6]) for r in rows]

    async def revoke_token_id(self, token_id: int) -> bool:
        def revoke() -> bool:
            cur = self._w().execute(
                "UPDATE tokens SET revoked = 1 WHERE id = ? AND revoked = 0", (token_id,)
            )
            return cur.rowcount == 1

        return await self._run(self._writer, revoke)

    async def revoke_token(self, token_hash: str) -> bool:
        def revoke() -> bool:
            cur = self._w().execute(
                "UPDATE tokens SET revoked = 1 WHERE hash = ? AND revoked = 0", (token_hash,)
            )
            return cur.rowcount == 1

        return await self._run(self._writer, revoke)

    async def upsert_uav(self, record: UavRecord) -> None:
        def upsert() -> None:
            self._w().execute(
                "INSERT INTO uavs (uav, operator, aliases, priority, serial, model, uav_class, "
                "max_speed_mps, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (uav) DO UPDATE SET "
                "operator = excluded.operator, aliases = excluded.aliases, "
                "priority = excluded.priority, serial = excluded.serial, model = excluded.model, "
                "uav_class = excluded.uav_class, max_speed_mps = excluded.max_speed_mps, "
                "updated_at = excluded.updated_at",
                (
                    record.uav, record.operator, json.dumps(list(record.aliases)),
                    int(record.priority), record.serial, record.model, record.uav_class,
                    record.max_speed_mps, time.time(),
                ),
            )

        await self._run(self._writer, upsert)

    async def uavs(self) -> list[UavRecord]:
        return await self._uavs("ORDER BY uav", ())

    async def uavs_fingerprint(self) -> tuple[int, float]:
        sql = "SELECT count(*), coalesce(max(updated_at), 0) FROM uavs"
        rows, newest = await self._run(self._reader, lambda: self._r().execute(sql).fetchone())
        return int(rows), float(newest)

    async def uav(self, uav: str) -> UavRecord | None:
        rows = await self._uavs("WHERE uav = ?", (uav,))
        return rows[0] if rows else None

    async def _uavs(self, where: str, args: tuple[Any, ...]) -> list[UavRecord]:
        sql = (
            "SELECT uav, operator, aliases, priority, serial, model, uav_class, max_speed_mps "
            f"FROM uavs {where}"
        )
        rows = await self._run(self._reader, lambda: self._r().execute(sql, args).fetchall())
        return list(map(uav_record, rows))
