"""Durable alert state behind one interface, on the main store's SQLite file or PostgreSQL pool.

Tables (SQLite creates them itself; PostgreSQL gets them from migrations/versions/0002_alerts.py):
- `alerts`: one row per alert, written when it opens and when it resolves (state, severity and
  the event JSON as of its last event in that commit); a partial unique index on
  (type, uav, ref) WHERE state <> 'resolved' keeps one open alert per key in the database too.
  An update is an event only: its alert's newest event is the last in `alert_events` (one
  insert per update, not also an upsert; updates are most of a busy server's events).
- `alert_events`: one row per event, `seq` the primary key, with the event JSON (`body`) and the
  columns the feeds filter on. It is also the webhook and NATS outbox: each consumer keeps only
  the seq it has delivered up to.
- `subscriptions`: webhook targets with their delivery cursor, retry state and dead-letter state.
- `dispatch_cursors`: named cursors of other sinks (NATS).
"""

from __future__ import annotations

import abc
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dispatch.alerts import AlertEvent
from lowalt.errors import LowaltError, StorageUnavailable
from lowalt.storage import Store

EVENT_COLUMNS = (
    "seq", "alert_id", "state", "type", "severity", "uav", "other_uav", "t", "raised_at", "lat",
    "lon", "body",
)
ALERT_COLUMNS = ("alert_id", "type", "uav", "ref", "state", "severity", "opened_at", "last_seq",
                 "body")
SUBSCRIPTION_COLUMNS = (
    "id", "name", "url", "secret", "types", "source", "created_at", "delivered_seq", "attempts",
    "next_attempt_at", "state", "last_error", "active_since", "delivered_at",
)
_SUB_SELECT = f"SELECT {', '.join(SUBSCRIPTION_COLUMNS)} FROM subscriptions"

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id INTEGER PRIMARY KEY, type TEXT NOT NULL, uav TEXT NOT NULL, ref TEXT NOT NULL,
    state TEXT NOT NULL, severity TEXT NOT NULL, opened_at REAL NOT NULL,
    last_seq INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open ON alerts (type, uav, ref)
    WHERE state <> 'resolved';
CREATE TABLE IF NOT EXISTS alert_events (
    seq INTEGER PRIMARY KEY, alert_id INTEGER NOT NULL, state TEXT NOT NULL, type TEXT NOT NULL,
    severity TEXT NOT NULL, uav TEXT NOT NULL, other_uav TEXT, t REAL NOT NULL,
    raised_at REAL NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_events_type ON alert_events (type, seq);
CREATE INDEX IF NOT EXISTS alert_events_uav ON alert_events (uav, seq);
CREATE INDEX IF NOT EXISTS alert_events_other_uav ON alert_events (other_uav, seq)
    WHERE other_uav IS NOT NULL;
CREATE INDEX IF NOT EXISTS alert_events_alert ON alert_events (alert_id);
CREATE TABLE IF NOT EXISTS subscriptions (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE, url TEXT NOT NULL, secret TEXT NOT NULL,
    types TEXT NOT NULL DEFAULT '[]', source TEXT NOT NULL, created_at REAL NOT NULL,
    delivered_seq INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL,
    state TEXT NOT NULL DEFAULT 'active', last_error TEXT, active_since REAL NOT NULL,
    delivered_at REAL
);
CREATE TABLE IF NOT EXISTS dispatch_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""


class NameTaken(LowaltError):
    """A subscription with that name exists already."""


class LoadedState(NamedTuple):
    last_seq: int
    last_alert_id: int
    open_alerts: list[tuple[AlertEvent, float]]  # (last event, opened_at) of each open alert


@dataclass(frozen=True)
class EventQuery:
    """Which events a feed wants; None means no restriction. `since` is exclusive."""

    since: int = 0
    limit: int = 1000
    types: frozenset[str] | None = None
    states: frozenset[str] | None = None
    uavs: frozenset[str] | None = None  # the event's uav or other_uav is one of these
    visible_uavs: frozenset[str] | None = None  # the caller may see only these UAVs' events
    bbox: tuple[float, float, float, float] | None = None  # minlon, minlat, maxlon, maxlat

    def matches(self, e: AlertEvent) -> bool:
        """The same test as the SQL, for live events."""
        if e.seq <= self.since:
            return False
        if self.types is not None and e.type not in self.types:
            return False
        if self.states is not None and e.state not in self.states:
            return False
        for uavs in (self.uavs, self.visible_uavs):
            if uavs is not None and e.uav not in uavs and e.other_uav not in uavs:
                return False
        if self.bbox is not None:
            min_lon, min_lat, max_lon, max_lat = self.bbox
            if not (min_lon <= e.lon <= max_lon and min_lat <= e.lat <= max_lat):
                return False
        return True

    def sql(self, postgres: bool, columns: str = "body") -> tuple[str, list[Any]]:
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}" if postgres else "?"

        def among(column: str, values: frozenset[str]) -> str:
            if postgres:
                return f"{column} = ANY({arg(sorted(values))}::text[])"
            return f"{column} IN (SELECT value FROM json_each({arg(json.dumps(sorted(values)))}))"

        where = [f"seq > {arg(self.since)}"]
        if self.types is not None:
            where.append(among("type", self.types))
        if self.states is not None:
            where.append(among("state", self.states))
        for uavs in (self.uavs, self.visible_uavs):
            if uavs is not None:
                where.append(f"({among('uav', uavs)} OR {among('other_uav', uavs)})")
        if self.bbox is not None:
            min_lon, min_lat, max_lon, max_lat = self.bbox
            where.append(f"lon >= {arg(min_lon)} AND lon <= {arg(max_lon)} "
                         f"AND lat >= {arg(min_lat)} AND lat <= {arg(max_lat)}")
        sql = (f"SELECT {columns} FROM alert_events WHERE {' AND '.join(where)} "
               f"ORDER BY seq LIMIT {arg(self.limit)}")
        return sql, args


class OutboxEvent(NamedTuple):
    """A committed event as a sink sends it on: its JSON text, not decoded."""

    seq: int
    raised_at: float
    body: str


OUTBOX_COLUMNS = "seq, raised_at, body"


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a client or the config file asks for; types empty = every type."""

    url: str
    secret: str
    types: tuple[str, ...] = ()
    name: str | None = None


@dataclass(frozen=True)
class Subscription:
    id: int
    name: str | None
    url: str
    secret: str
    types: tuple[str, ...]
    source: str  # "api" | "config"
    created_at: float
    delivered_seq: int  # every matching event up to this seq has been delivered
    attempts: int = 0  # failed attempts at the oldest undelivered batch
    next_attempt_at: float | None = None
    state: str = "active"  # "active" | "dead_letter"
    last_error: str | None = None
    active_since: float = 0.0  # created or last resumed; the max-age clock starts no earlier
    delivered_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The public view: everything but the secret."""
        return {
            "id": self.id, "name": self.name, "url": self.url, "types": list(self.types),
            "source": self.source, "created_at": self.created_at,
            "delivered_seq": self.delivered_seq, "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at, "state": self.state,
            "last_error": self.last_error, "delivered_at": self.delivered_at,
        }


def _subscription(row: Sequence[Any]) -> Subscription:
    (sub_id, name, url, secret, types, source, created_at, delivered_seq, attempts,
     next_attempt_at, state, last_error, active_since, delivered_at) = row
    return Subscription(
        int(sub_id), name, url, secret, tuple(json.loads(types)), source, created_at,
        int(delivered_seq), int(attempts), next_attempt_at, state, last_error, active_since,
        delivered_at,
    )


def _event_row(e: AlertEvent) -> tuple[Any, ...]:
    return (e.seq, e.alert_id, e.state, e.type, e.severity, e.uav, e.other_uav, e.t, e.raised_at,
            e.lat, e.lon, e.body)


def _alert_rows(events: Sequence[AlertEvent]) -> list[tuple[Any, ...]]:
    """The `alerts` rows of the alerts that open or resolve in the batch, each as of its last
    event in the batch, in the order of those last events (updates alone write no row).

    That order keeps the one-open-per-key index satisfied: an alert resolved in the batch comes
    before any alert opened on the same key after it.
    """
    last: dict[int, AlertEvent] = {}
    changed: set[int] = set()
    for e in events:
        last.pop(e.alert_id, None)
        last[e.alert_id] = e
        if e.state != "updated":
            changed.add(e.alert_id)
    return [(e.alert_id, e.type, e.uav, e.key[2], "resolved" if e.state == "resolved" else "open",
             e.severity, e.raised_at, e.seq, e.body)
            for e in last.values() if e.alert_id in changed]


# The open alerts, each with its newest event (the last in alert_events; see the module
# docstring) and when it opened.
_OPEN_ALERTS_SQLITE = (  # alert_events_alert lists by (alert_id, rowid); rowid is seq
    "SELECT (SELECT body FROM alert_events e WHERE e.alert_id = a.alert_id "
    "ORDER BY e.seq DESC LIMIT 1), a.opened_at FROM alerts a "
    "WHERE a.state <> 'resolved' ORDER BY a.alert_id"
)
_OPEN_ALERTS_POSTGRES = (
    "SELECT e.body, a.opened_at FROM alerts a CROSS JOIN LATERAL (SELECT body FROM alert_events "
    "WHERE alert_id = a.alert_id ORDER BY seq DESC LIMIT 1) e "
    "WHERE a.state <> 'resolved' ORDER BY a.alert_id"
)


_UPSERT_ALERT = (
    "INSERT INTO alerts ({cols}) VALUES ({values}) ON CONFLICT (alert_id) DO UPDATE SET "
    "state = excluded.state, severity = excluded.severity, last_seq = excluded.last_seq, "
    "body = excluded.body"
)
_UPSERT_CONFIG_SUB = (
    "INSERT INTO subscriptions (name, url, secret, types, source, created_at, delivered_seq, "
    "active_since) VALUES ({values}) ON CONFLICT (name) DO UPDATE SET url = excluded.url, "
    "secret = excluded.secret, types = excluded.types, source = excluded.source"
)
_SAVE_SUB = (
    "UPDATE subscriptions SET delivered_seq = {0}, attempts = {1}, next_attempt_at = {2}, "
    "state = {3}, last_error = {4}, active_since = {5}, delivered_at = {6} WHERE id = {7}"
)


class AlertStore(abc.ABC):
    """Alert storage; every method may raise StorageUnavailable."""

    @abc.abstractmethod
    async def setup(self) -> None:
        """Make sure the tables exist."""

    @abc.abstractmethod
    async def load_state(self) -> LoadedState: ...

    @abc.abstractmethod
    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        """Commit numbered events and their alerts' new state in one transaction."""

    @abc.abstractmethod
    async def max_seq(self) -> int: ...

    @abc.abstractmethod
    async def events(self, query: EventQuery) -> list[AlertEvent]:
        """Committed events matching query, by seq."""

    async def outbox(self, query: EventQuery) -> list[OutboxEvent]:
        """The same events as `events`, undecoded: what a sink needs to send them on."""
        return [OutboxEvent(e.seq, e.raised_at, e.body) for e in await self.events(query)]

    @abc.abstractmethod
    async def subscriptions(self) -> list[Subscription]: ...

    @abc.abstractmethod
    async def subscription(self, sub_id: int) -> Subscription | None: ...

    @abc.abstractmethod
    async def add_subscription(
        self, spec: SubscriptionSpec, delivered_seq: int, now: float
    ) -> Subscription:
        """A new API subscription delivering events after delivered_seq; NameTaken on a clash."""

    @abc.abstractmethod
    async def sync_config_subscriptions(
        self, specs: Sequence[SubscriptionSpec], delivered_seq: int, now: float
    ) -> None:
        """Upsert the config file's subscriptions by name (keeping their cursors); delete the
        config subscriptions no longer in it. New ones start after delivered_seq."""

    @abc.abstractmethod
    async def delete_subscription(self, sub_id: int) -> bool: ...

    @abc.abstractmethod
    async def save_subscription(self, sub: Subscription) -> None:
        """Persist a subscription's delivery state (cursor, retries, dead letter)."""

    @abc.abstractmethod
    async def cursor(self, name: str) -> int | None: ...

    @abc.abstractmethod
    async def save_cursor(self, name: str, seq: int) -> None: ...


def alert_store_for(store: Store) -> AlertStore:
    """The alert store sharing the main store's database."""
    from lowalt.storage.postgres import PostgresStore
    from lowalt.storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteAlertStore(store)
    if isinstance(store, PostgresStore):
        return PostgresAlertStore(store)
    raise TypeError(f"no alert store for {type(store).__name__}")


class SqliteAlertStore(AlertStore):
    """On the main SQLite file: writes on its writer thread, reads on its reader thread."""

    def __init__(self, store: Any) -> None:
        self.store = store  # a lowalt.storage.sqlite.SqliteStore

    async def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self.store.write(fn)

    async def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        rows: list[Any] = await self.store.read(lambda c: c.execute(sql, args).fetchall())
        return rows

    async def _transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run(conn: sqlite3.Connection) -> Any:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        return await self._write(run)

    async def setup(self) -> None:
        await self._write(lambda c: c.executescript(SQLITE_SCHEMA))

    async def load_state(self) -> LoadedState:
        (last_seq,), = await self._read("SELECT coalesce(max(seq), 0) FROM alert_events")
        (last_alert_id,), = await self._read("SELECT coalesce(max(alert_id), 0) FROM alerts")
        rows = await self._read(_OPEN_ALERTS_SQLITE)
        return LoadedState(int(last_seq), int(last_alert_id),
                           [(AlertEvent.from_body(r[0]), float(r[1])) for r in rows])

    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        event_sql = (f"INSERT INTO alert_events ({', '.join(EVENT_COLUMNS)}) "
                     f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")
        alert_sql = _UPSERT_ALERT.format(cols=", ".join(ALERT_COLUMNS),
                                         values=", ".join("?" * len(ALERT_COLUMNS)))
        event_rows = [_event_row(e) for e in events]
        alert_rows = _alert_rows(events)

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(event_sql, event_rows)
            conn.executemany(alert_sql, alert_rows)

        await self._transaction(write)

    async def max_seq(self) -> int:
        (seq,), = await self._read("SELECT coalesce(max(seq), 0) FROM alert_events")
        return int(seq)

    async def events(self, query: EventQuery) -> list[AlertEvent]:
        sql, args = query.sql(postgres=False)
        return [AlertEvent.from_body(r[0]) for r in await self._read(sql, args)]

    async def outbox(self, query: EventQuery) -> list[OutboxEvent]:
        sql, args = query.sql(postgres=False, columns=OUTBOX_COLUMNS)
        return [OutboxEvent._make(r) for r in await self._read(sql, args)]

    async def subscriptions(self) -> list[Subscription]:
        return [_subscription(r) for r in await self._read(f"{_SUB_SELECT} ORDER BY id")]

    async def subscription(self, sub_id: int) -> Subscription | None:
        rows = await self._read(f"{_SUB_SELECT} WHERE id = ?", (sub_id,))
        return _subscription(rows[0]) if rows else None

    async def add_subscription(
        self, spec: SubscriptionSpec, delivered_seq: int, now: float
    ) -> Subscription:
        def insert(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO subscriptions (name, url, secret, types, source, created_at, "
                "delivered_seq, active_since) VALUES (?, ?, ?, ?, 'api', ?, ?, ?)",
                (spec.name, spec.url, spec.secret, json.dumps(list(spec.types)), now,
                 delivered_seq, now),
            )
            return int(cur.lastrowid or 0)

        try:
            sub_id = await self._write(insert)
        except sqlite3.IntegrityError:
            raise NameTaken(f"a subscription named {spec.name!r} exists") from None
        sub = await self.subscription(sub_id)
        assert sub is not None
        return sub

    async def sync_config_subscriptions(
        self, specs: Sequence[SubscriptionSpec], delivered_seq: int, now: float
    ) -> None:
        sql = _UPSERT_CONFIG_SUB.format(values="?, ?, ?, ?, 'config', ?, ?, ?")
        names = json.dumps([s.name for s in specs])

        def sync(conn: sqlite3.Connection) -> None:
            for s in specs:
                conn.execute(sql, (s.name, s.url, s.secret, json.dumps(list(s.types)), now,
                                   delivered_seq, now))
            conn.execute(
                "DELETE FROM subscriptions WHERE source = 'config' "
                "AND name NOT IN (SELECT value FROM json_each(?))", (names,),
            )

        await self._transaction(sync)

    async def delete_subscription(self, sub_id: int) -> bool:
        deleted: bool = await self._write(
            lambda c: c.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,)).rowcount == 1
        )
        return deleted

    async def save_subscription(self, sub: Subscription) -> None:
        sql = _SAVE_SUB.format(*("?" * 8))
        args = (sub.delivered_seq, sub.attempts, sub.next_attempt_at, sub.state, sub.last_error,
                sub.active_since, sub.delivered_at, sub.id)
        await self._write(lambda c: c.execute(sql, args))

    async def cursor(self, name: str) -> int | None:
        rows = await self._read("SELECT seq FROM dispatch_cursors WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else None

    async def save_cursor(self, name: str, seq: int) -> None:
        await self._write(lambda c: c.execute(
            "INSERT INTO dispatch_cursors (name, seq) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq", (name, seq),
        ))


class PostgresAlertStore(AlertStore):
    """On the main asyncpg pool; the schema comes from the Alembic migrations."""

    def __init__(self, store: Any) -> None:
        self.store = store  # a lowalt.storage.postgres.PostgresStore

    async def _run(self, fn: Callable[[Any], Any]) -> Any:
        async with self.store.connection() as conn:
            return await fn(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._run(lambda conn: conn.fetch(sql, *args))
        return rows

    async def _execute(self, sql: str, *args: Any) -> str:
        return str(await self._run(lambda conn: conn.execute(sql, *args)))

    async def setup(self) -> None:
        (row,) = await self._fetch("SELECT to_regclass('alert_events') IS NOT NULL")
        if not row[0]:
            raise StorageUnavailable("postgres: no alert tables; run `lowalt migrate`")

    async def load_state(self) -> LoadedState:
        (seq,) = await self._fetch("SELECT coalesce(max(seq), 0) FROM alert_events")
        (alert_id,) = await self._fetch("SELECT coalesce(max(alert_id), 0) FROM alerts")
        rows = await self._fetch(_OPEN_ALERTS_POSTGRES)
        return LoadedState(int(seq[0]), int(alert_id[0]),
                           [(AlertEvent.from_body(r[0]), float(r[1])) for r in rows])

    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        alert_sql = _UPSERT_ALERT.format(
            cols=", ".join(ALERT_COLUMNS),
            values=", ".join(f"${i}" for i in range(1, len(ALERT_COLUMNS) + 1)),
        )
        event_rows = [_event_row(e) for e in events]
        alert_rows = _alert_rows(events)

        async def write(conn: Any) -> None:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "alert_events", records=event_rows, columns=EVENT_COLUMNS
                )
                await conn.executemany(alert_sql, alert_rows)

        await self._run(write)

    async def max_seq(self) -> int:
        (row,) = await self._fetch("SELECT coalesce(max(seq), 0) FROM alert_events")
        return int(row[0])

    async def events(self, query: EventQuery) -> list[AlertEvent]:
        sql, args = query.sql(postgres=True)
        return [AlertEvent.from_body(r[0]) for r in await self._fetch(sql, *args)]

    async def outbox(self, query: EventQuery) -> list[OutboxEvent]:
        sql, args = query.sql(postgres=True, columns=OUTBOX_COLUMNS)
        return [OutboxEvent._make(r) for r in await self._fetch(sql, *args)]

    async def subscriptions(self) -> list[Subscription]:
        return [_subscription(r) for r in await self._fetch(f"{_SUB_SELECT} ORDER BY id")]

    async def subscription(self, sub_id: int) -> Subscription | None:
        rows = await self._fetch(f"{_SUB_SELECT} WHERE id = $1", sub_id)
        return _subscription(rows[0]) if rows else None

    async def add_subscription(
        self, spec: SubscriptionSpec, delivered_seq: int, now: float
    ) -> Subscription:
        import asyncpg

        try:
            rows = await self._fetch(
                f"INSERT INTO subscriptions (name, url, secret, types, source, created_at, "
                f"delivered_seq, active_since) VALUES ($1, $2, $3, $4, 'api', $5, $6, $5) "
                f"RETURNING {', '.join(SUBSCRIPTION_COLUMNS)}",
                spec.name, spec.url, spec.secret, json.dumps(list(spec.types)), now,
                delivered_seq,
            )
        except asyncpg.UniqueViolationError:
            raise NameTaken(f"a subscription named {spec.name!r} exists") from None
        return _subscription(rows[0])

    async def sync_config_subscriptions(
        self, specs: Sequence[SubscriptionSpec], delivered_seq: int, now: float
    ) -> None:
        sql = _UPSERT_CONFIG_SUB.format(values="$1, $2, $3, $4, 'config', $5, $6, $5")
        rows = [(s.name, s.url, s.secret, json.dumps(list(s.types)), now, delivered_seq)
                for s in specs]
        names = [s.name for s in specs]

        async def sync(conn: Any) -> None:
            async with conn.transaction():
                if rows:
                    await conn.executemany(sql, rows)
                await conn.execute(
                    "DELETE FROM subscriptions WHERE source = 'config' "
                    "AND NOT (name = ANY($1::text[]))", names,
                )

        await self._run(sync)

    async def delete_subscription(self, sub_id: int) -> bool:
        status = await self._execute("DELETE FROM subscriptions WHERE id = $1", sub_id)
        return status == "DELETE 1"

    async def save_subscription(self, sub: Subscription) -> None:
        await self._execute(
            _SAVE_SUB.format(*(f"${i}" for i in range(1, 9))),
            sub.delivered_seq, sub.attempts, sub.next_attempt_at, sub.state, sub.last_error,
            sub.active_since, sub.delivered_at, sub.id,
        )

    async def cursor(self, name: str) -> int | None:
        rows = await self._fetch("SELECT seq FROM dispatch_cursors WHERE name = $1", name)
        return int(rows[0][0]) if rows else None

    async def save_cursor(self, name: str, seq: int) -> None:
        await self._execute(
            "INSERT INTO dispatch_cursors (name, seq) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq", name, seq,
        )
