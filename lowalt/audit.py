"""The audit log of administrative actions: who did what to which object, and when.

Any subsystem records an action with `await audit(app_or_runtime, principal, action, target,
detail)` once the action has taken effect. Actions are dotted names (`token.create`,
`zone.delete`, `clearance.grant`, ...); `target` names the object (a token id, a zone id, a UAV);
`detail` is a small JSON object and must never hold a secret. A record that cannot be stored
(storage away) is logged at ERROR with its whole content instead, and the action still stands:
an answer already decided is not turned into an error that would make the client repeat it.

Storage: the `audit_log` table, created here on SQLite and by Alembic revision 0005 on
PostgreSQL. Admins read it with `GET /v1/audit?since=<id>&limit=`.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import sqlite3
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from lowalt.errors import StorageUnavailable
from lowalt.models import Principal
from lowalt.storage import Store

log = logging.getLogger("lowalt.audit")

LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10_000
COLUMNS = ("id", "at", "actor", "actor_token_id", "role", "action", "target", "detail")
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, actor_token_id INTEGER,
    role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float  # Unix s, server time of the action
    actor: str  # the token's name, or "cli" for the command line
    actor_token_id: int | None
    role: str
    action: str
    target: str
    detail: Mapping[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": self.at, "actor": self.actor,
                "actor_token_id": self.actor_token_id, "role": self.role,
                "action": self.action, "target": self.target, "detail": dict(self.detail)}


def _record(row: Any) -> AuditRecord:
    return AuditRecord(int(row[0]), float(row[1]), row[2], row[3], row[4], row[5], row[6],
                       json.loads(row[7]))


class AuditLog(abc.ABC):
    """The audit table on the main store's database."""

    def __init__(self) -> None:
        self._ready = False
        self._setup_lock = asyncio.Lock()

    async def ready(self) -> None:
        """Make sure the table is there (once per store)."""
        if self._ready:
            return
        async with self._setup_lock:
            if not self._ready:
                await self._setup()
                self._ready = True

    @abc.abstractmethod
    async def _setup(self) -> None: ...

    @abc.abstractmethod
    async def append(self, row: tuple[Any, ...]) -> int:
        """Store (at, actor, actor_token_id, role, action, target, detail JSON); its id."""

    @abc.abstractmethod
    async def records(self, since: int, limit: int) -> list[AuditRecord]:
        """Records with id > since, oldest first."""


class SqliteAuditLog(AuditLog):
    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store  # a lowalt.storage.sqlite.SqliteStore

    async def _setup(self) -> None:
        await self.store.write(lambda c: c.executescript(SQLITE_SCHEMA))

    async def append(self, row: tuple[Any, ...]) -> int:
        sql = f"INSERT INTO audit_log ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * 7)})"

        def insert(conn: sqlite3.Connection) -> int:
            return int(conn.execute(sql, row).lastrowid or 0)

        result: int = await self.store.write(insert)
        return result

    async def records(self, since: int, limit: int) -> list[AuditRecord]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE id > ? ORDER BY id LIMIT ?"
        rows: list[Any] = await self.store.read(
            lambda c: c.execute(sql, (since, limit)).fetchall()
        )
        return [_record(r) for r in rows]


class PostgresAuditLog(AuditLog):
    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store  # a lowalt.storage.postgres.PostgresStore

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        async with self.store.connection() as conn:
            return await fn(conn)

    async def _setup(self) -> None:
        sql = "SELECT to_regclass('audit_log') IS NOT NULL"
        exists = await self._run(lambda c: c.fetchval(sql))
        if not exists:
            raise StorageUnavailable("postgres: no audit_log table; run `lowalt migrate`")

    async def append(self, row: tuple[Any, ...]) -> int:
        sql = (f"INSERT INTO audit_log ({', '.join(COLUMNS[1:])}) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id")
        return int(await self._run(lambda c: c.fetchval(sql, *row)))

    async def records(self, since: int, limit: int) -> list[AuditRecord]:
        sql = f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
        rows = await self._run(lambda c: c.fetch(sql, since, limit))
        return [_record(r) for r in rows]


_LOGS: weakref.WeakKeyDictionary[Store, AuditLog] = weakref.WeakKeyDictionary()


def audit_log_for(store: Store) -> AuditLog:
    """The audit log on store's database (one per store)."""
    from lowalt.storage.postgres import PostgresStore
    from lowalt.storage.sqlite import SqliteStore

    audit_log = _LOGS.get(store)
    if audit_log is None:
        if isinstance(store, SqliteStore):
            audit_log = SqliteAuditLog(store)
        elif isinstance(store, PostgresStore):
            audit_log = PostgresAuditLog(store)
        else:
            raise TypeError(f"no audit log for {type(store).__name__}")
        _LOGS[store] = audit_log
    return audit_log


class HasStore(Protocol):
    @property
    def store(self) -> Store: ...


def _store_of(where: web.Application | HasStore | Store) -> Store:
    if isinstance(where, Store):
        return where
    if isinstance(where, web.Application):
        from lowalt.app import RUNTIME  # lowalt.app wires this module in

        return where[RUNTIME].store
    return where.store


async def audit(
    app_or_runtime: web.Application | HasStore | Store,
    principal: Principal | None,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record that principal (None: the command line) did action to target."""
    actor = principal.name if principal is not None else "cli"
    row = (
        time.time(), actor, principal.token_id if principal is not None else None,
        principal.role if principal is not None else "cli", action, str(target),
        json.dumps(dict(detail or {}), sort_keys=True, default=str),
    )
    try:
        audit_log = audit_log_for(_store_of(app_or_runtime))
        await audit_log.ready()
        await audit_log.append(row)
    except Exception as exc:  # the action stands; the record goes to the log instead
        log.error("audit record not stored (%s): %s", exc, json.dumps(row, default=str))


def _int_arg(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"{name}: must be {lo}..{hi}"}),
                                 content_type="application/json")
    return value


async def get_audit(request: web.Request) -> web.Response:
    """GET /v1/audit?since=<id>&limit= -> {"records": [...], "next": id} (admin only)."""
    since = _int_arg(request, "since", 0, 0, 2**62)
    limit = _int_arg(request, "limit", LIST_LIMIT_DEFAULT, 1, LIST_LIMIT_MAX)
    audit_log = audit_log_for(_store_of(request.app))
    await audit_log.ready()
    records = await audit_log.records(since, limit)
    return web.json_response({"records": [r.as_json() for r in records],
                              "next": records[-1].id if records else since})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/audit", get_audit)
