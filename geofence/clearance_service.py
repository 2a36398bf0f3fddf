"""Route clearances at run time: decided, persisted in both backends, delivered, monitored.

Decisions are serialised by one asyncio.Lock: the volume is built outside it, then under it the
request is checked against the zones, the ceiling and every reserved volume, written to storage,
and (when granted) put in the reserved index before the lock is let go. Two simultaneous requests
for the same airspace therefore cannot both be granted. Every state change (activation,
completion, cancellation, expiry) takes the same lock, writes storage first, then changes memory.

Memory holds the clearances that reserve airspace (`granted`, `active`) with their volumes;
storage holds every clearance, denied ones included, and is read for the rest. On start the
reserving clearances are loaded and their volumes rebuilt (with the current settings).

The check stage (`on_committed`) matches each committed observation of a UAV holding a
clearance to the clearance whose window (less `clearance_activation_lead_s` before it) holds
its time, then: granted -> active on the first one; completed at the end of the route; otherwise
`off_route` (outside the corridor horizontally or vertically) and `clearance_violation` (outside
the time window) conditions, reconciled by AlertManager.assess with its hysteresis and keyed by
the clearance. Reports with status `ground` activate and complete but raise nothing. The
conformance of the whole batch is one vectorised pass (`VolumeTable`, kept beside the monitored
volumes); only reports at the end of their route, off it or off its time are then looked at one
by one.

Priority operations (policy, alerts and audit in geofence/priority.py): a priority request is
decided under the same lock; the normal clearances it meets are suspended (storage, then memory)
before the lock is let go. New zones suspend the normal clearances they would deny
(`suspend_for_zones`). A suspended clearance is resumed only on request (`resume`), by deciding
it again. `change_listeners` hear of every transition made by `_change`.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

import numpy as np

from dispatch.alerts import AlertManager, Condition, evaluated_times
from geofence.clearances import (
    RESERVING,
    Heights,
    Reason,
    RouteRequest,
    Volume,
    VolumeIndex,
    VolumeTable,
    ZoneScreen,
    build_volume,
    can_change,
    decide,
)
from geofence.index import ZoneIndex
from geofence.priority import split_for_priority
from geofence.service import Geofence
from geofence.zones import Zone
from lowalt.auth import Registry
from lowalt.errors import LowaltError
from lowalt.metrics import Metrics
from lowalt.models import Observation
from lowalt.settings import Settings
from lowalt.storage import Store

log = logging.getLogger("lowalt.clearances")
CLEARANCE_TYPES = frozenset({"off_route", "clearance_violation"})
# Kept in memory and monitored; only RESERVING ones hold airspace. `suspended` is for priority
# operations (another change): monitored, reserving nothing, able to become granted again.
MONITORED = RESERVING | {"suspended"}
Push = Callable[[str, Mapping[str, Any]], int]
_LON, _LAT, _ALT, _T = (attrgetter(name) for name in ("lon", "lat", "alt_m", "t"))
_UAV = attrgetter("uav")
ChangeListener = Callable[["Clearance"], Awaitable[None]]
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS clearances (
    id TEXT PRIMARY KEY, uav TEXT NOT NULL, operator TEXT, state TEXT NOT NULL,
    valid_from REAL NOT NULL, valid_to REAL NOT NULL, lower_m REAL NOT NULL,
    upper_m REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS clearances_state ON clearances (state);
CREATE INDEX IF NOT EXISTS clearances_uav ON clearances (uav, created_at);
CREATE INDEX IF NOT EXISTS clearances_operator ON clearances (operator, created_at);
"""
_COLUMNS = ("id", "uav", "operator", "state", "valid_from", "valid_to", "lower_m", "upper_m",
            "created_at", "updated_at", "body")


class StateConflict(LowaltError):
    """A change the state machine does not allow (cancelling a completed clearance, ...)."""

    def __init__(self, clearance: Clearance, wanted: str) -> None:
        super().__init__(f"clearance {clearance.id} is {clearance.state}; cannot become {wanted}")
        self.clearance, self.wanted = clearance, wanted


def new_clearance_id() -> str:
    return "c-" + uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Clearance:
    """One clearance as served: the request, the decision and its state."""

    id: str
    request: RouteRequest
    operator: str | None  # the UAV's operator when requested (who may see it)
    state: str
    reasons: tuple[Reason, ...]
    valid_from: float
    valid_to: float
    created_at: float
    updated_at: float
    priority: str | None = None  # "emergency": granted over normal clearances
    resumable: bool = False  # suspended, and what suspended it is over: `resume` may grant it

    @property
    def uav(self) -> str:
        return self.request.uav

    def to_json(self) -> dict[str, Any]:
        body = {
            "id": self.id, "state": self.state, "reasons": list(self.reasons),
            "valid_from": self.valid_from, "valid_to": self.valid_to, **self.request.to_json(),
            "created_at": self.created_at, "updated_at": self.updated_at,
            "priority": self.priority,
        }
        if self.state == "suspended":
            body["resumable"] = self.resumable
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any], operator: str | None) -> Clearance:
        request = RouteRequest(
            uav=body["uav"],
            coordinates=tuple((float(c[0]), float(c[1]), float(c[2]))
                              for c in body["route"]["coordinates"]),
            departure=float(body["departure"]), speed_mps=float(body["speed_mps"]),
            corridor_m=float(body["corridor_m"]), vertical_m=float(body["vertical_m"]),
        )
        return cls(body["id"], request, operator, body["state"], tuple(body["reasons"]),
                   float(body["valid_from"]), float(body["valid_to"]),
                   float(body["created_at"]), float(body["updated_at"]),
                   body.get("priority"), bool(body.get("resumable", False)))


class Decision(NamedTuple):
    """A decided request and the clearances it suspended (priority requests only)."""

    clearance: Clearance
    suspended: list[Clearance]


class ZoneSuspension(NamedTuple):
    """A reserving clearance that a new zone would deny from now on (`zone`: the reason)."""

    clearance: Clearance  # suspended now, or unchanged when it is a priority clearance
    zone: Reason
    suspended: bool


def _row(c: Clearance, volume: Volume) -> tuple[Any, ...]:
    return (c.id, c.uav, c.operator, c.state, c.valid_from, c.valid_to,
            float(volume.lo_m.min()), float(volume.hi_m.max()), c.created_at, c.updated_at,
            json.dumps(c.to_json()))


# -- storage -----------------------------------------------------------------------------------
class ClearanceStore(abc.ABC):
    stores_corridor = False  # whether insert wants the corridor geometry

    @abc.abstractmethod
    async def setup(self) -> None: ...

    @abc.abstractmethod
    async def insert(self, c: Clearance, volume: Volume, corridor_wkt: str | None) -> None: ...

    @abc.abstractmethod
    async def update(self, c: Clearance) -> None:
        """Store the new state (and updated_at, body) of c."""

    @abc.abstractmethod
    async def get(self, cid: str) -> Clearance | None: ...

    @abc.abstractmethod
    async def in_states(self, states: Sequence[str]) -> list[Clearance]: ...

    @abc.abstractmethod
    async def search(self, *, operator: str | None, all_operators: bool, state: str | None,
                     uav: str | None, limit: int) -> list[Clearance]:
        """Newest first; only `operator`'s unless all_operators."""


class SqliteClearanceStore(ClearanceStore):
    def __init__(self, store: Any) -> None:
        self.store = store  # lowalt.storage.sqlite.SqliteStore

    async def setup(self) -> None:
        await self.store.write(lambda c: c.executescript(SQLITE_SCHEMA))

    async def insert(self, c: Clearance, volume: Volume, corridor_wkt: str | None) -> None:
        row = _row(c, volume)
        sql = (f"INSERT INTO clearances ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(_COLUMNS))})")
        await self.store.write(lambda conn: conn.execute(sql, row))

    async def update(self, c: Clearance) -> None:
        args = (c.state, c.updated_at, json.dumps(c.to_json()), c.id)
        await self.store.write(lambda conn: conn.execute(
            "UPDATE clearances SET state = ?, updated_at = ?, body = ? WHERE id = ?", args))

    async def get(self, cid: str) -> Clearance | None:
        row = await self.store.read(lambda conn: conn.execute(
            "SELECT body, operator FROM clearances WHERE id = ?", (cid,)).fetchone())
        return None if row is None else Clearance.from_json(json.loads(row[0]), row[1])

    async def in_states(self, states: Sequence[str]) -> list[Clearance]:
        marks = ", ".join("?" * len(states))

        def fetch(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(f"SELECT body, operator FROM clearances WHERE state IN ({marks}) "
                                "ORDER BY created_at", tuple(states)).fetchall()

        return [Clearance.from_json(json.loads(b), op) for b, op in await self.store.read(fetch)]

    async def search(self, *, operator: str | None, all_operators: bool, state: str | None,
                     uav: str | None, limit: int) -> list[Clearance]:
        where, args = _filters(operator, all_operators, state, uav, lambda n: "?")
        sql = (f"SELECT body, operator FROM clearances{where} "
               f"ORDER BY created_at DESC, id LIMIT {int(limit)}")
        rows = await self.store.read(lambda conn: conn.execute(sql, args).fetchall())
        return [Clearance.from_json(json.loads(b), op) for b, op in rows]


def _filters(operator: str | None, all_operators: bool, state: str | None, uav: str | None,
             mark: Callable[[int], str]) -> tuple[str, tuple[Any, ...]]:
    terms: list[str] = []
    args: list[Any] = []
    for column, value, wanted in (("operator", operator, not all_operators),
                                  ("state", state, state is not None),
                                  ("uav", uav, uav is not None)):
        if wanted:
            args.append(value)
            terms.append(f"{column} = {mark(len(args))}")
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(args)


class PostgresClearanceStore(ClearanceStore):
    stores_corridor = True

    def __init__(self, store: Any) -> None:
        self.store = store  # lowalt.storage.postgres.PostgresStore

    async def setup(self) -> None:
        """The table comes from migrations/versions/0004_clearances.py."""

    async def insert(self, c: Clearance, volume: Volume, corridor_wkt: str | None) -> None:
        wkt = corridor_wkt if corridor_wkt is not None else volume.corridor().wkt
        async with self.store.connection() as conn:
            await conn.execute(
                f"INSERT INTO clearances ({', '.join(_COLUMNS)}, corridor) VALUES ($1, $2, $3, "
                "$4, $5, $6, $7, $8, $9, $10, $11, ST_Multi(ST_GeomFromText($12, 4326)))",
                *_row(c, volume), wkt,
            )

    async def update(self, c: Clearance) -> None:
        async with self.store.connection() as conn:
            await conn.execute(
                "UPDATE clearances SET state = $1, updated_at = $2, body = $3 WHERE id = $4",
                c.state, c.updated_at, json.dumps(c.to_json()), c.id,
            )

    async def get(self, cid: str) -> Clearance | None:
        async with self.store.connection() as conn:
            row = await conn.fetchrow("SELECT body, operator FROM clearances WHERE id = $1", cid)
        return None if row is None else Clearance.from_json(json.loads(row[0]), row[1])

    async def in_states(self, states: Sequence[str]) -> list[Clearance]:
        async with self.store.connection() as conn:
            rows = await conn.fetch("SELECT body, operator FROM clearances "
                                    "WHERE state = ANY($1::text[]) ORDER BY created_at",
                                    list(states))
        return [Clearance.from_json(json.loads(r[0]), r[1]) for r in rows]

    async def search(self, *, operator: str | None, all_operators: bool, state: str | None,
                     uav: str | None, limit: int) -> list[Clearance]:
        where, args = _filters(operator, all_operators, state, uav, lambda n: f"${n}")
        async with self.store.connection() as conn:
            rows = await conn.fetch(f"SELECT body, operator FROM clearances{where} "
                                    f"ORDER BY created_at DESC, id LIMIT {int(limit)}", *args)
        return [Clearance.from_json(json.loads(r[0]), r[1]) for r in rows]


def clearance_store_for(store: Store) -> ClearanceStore:
    from lowalt.storage.postgres import PostgresStore
    from lowalt.storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteClearanceStore(store)
    if isinstance(store, PostgresStore):
        return PostgresClearanceStore(store)
    raise TypeError(f"no clearance store for {type(store).__name__}")


# -- the service -------------------------------------------------------------------------------
class ClearanceService:
    """Decisions, state, delivery and the conformance check stage; see the module docstring."""

    name = "clearances"

    def __init__(
        self, store: ClearanceStore, alerts: AlertManager, geofence: Geofence, settings: Settings,
        push: Push | None = None, registry: Registry | None = None,
        metrics: Metrics | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.alerts, self.geofence, self.settings = store, alerts, geofence, settings
        self.registry = registry
        self.push_to = push
        self.clock = clock
        self.tolerance_s = settings.clearance_time_tolerance_s
        self.reserved = VolumeIndex()
        self.live: dict[str, Clearance] = {}  # MONITORED: granted, active (suspended)
        self._volumes: dict[str, Volume] = {}
        self._table = VolumeTable()  # the same volumes, flattened for the check stage
        self._by_uav: dict[str, list[str]] = {}
        self._lock = asyncio.Lock()
        self._screen: ZoneScreen | None = None
        self.change_listeners: list[ChangeListener] = []
        self.metrics = metrics or Metrics()
        self.metrics.counter("lowalt_clearance_decisions_total", "Clearance requests decided.")
        self.metrics.counter("lowalt_clearance_changes_total", "Clearance state changes.")
        self.metrics.gauge("lowalt_clearances_reserved", "Clearances holding airspace.",
                           lambda: float(len(self.reserved)))

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.setup()
        loaded = await self.store.in_states(sorted(MONITORED))
        volumes = []
        for c in loaded:
            volume = self.volume_of(c.request)
            self._remember(c, volume)
            if c.state in RESERVING:
                volumes.append((c.id, volume))
        self.reserved = VolumeIndex(volumes)
        log.info("clearances: %d reserving airspace", len(volumes))

    async def run_expiry(self) -> None:
        """Every clearance_expiry_interval_s, expire what is past valid_to + tolerance."""
        while True:
            await asyncio.sleep(self.settings.clearance_expiry_interval_s)
            try:
                await self.expire_due(self.clock())
            except Exception:
                log.exception("clearance expiry failed")

    # -- decisions ---------------------------------------------------------------------------
    def registry_operator(self, uav: str) -> str | None:
        """The operator the UAV is registered to now (None: unregistered or no registry)."""
        return None if self.registry is None else self.registry.operator_of(uav)

    def volume_of(self, request: RouteRequest) -> Volume:
        return build_volume(request, tolerance_s=self.tolerance_s,
                            piece_s=self.settings.clearance_piece_s)

    @property
    def heights(self) -> Heights:
        return Heights(self.settings.geoid_undulation_m, self.geofence.ground.elevation_at)

    def zone_screen(self) -> ZoneScreen:
        """The denying zones of the geofence's current snapshot (rebuilt when it changes)."""
        zones: ZoneIndex = self.geofence.index
        if self._screen is None or self._screen.source is not zones:
            self._screen = ZoneScreen(zones)
        return self._screen

    async def request(self, request: RouteRequest, operator: str | None) -> Clearance:
        """Decide a validated request (ValidationError for a route that cannot be flown)."""
        return (await self.decide_request(request, operator)).clearance

    async def decide_request(
        self, request: RouteRequest, operator: str | None, *, priority: str | None = None,
        override_zones: bool = False,
    ) -> Decision:
        """Decide a validated request. With `priority`, the normal clearances it meets do not
        deny it: when nothing else does, it is granted and they are suspended, and its reasons
        list what it took over (geofence/priority.py: `split_for_priority`)."""
        volume = self.volume_of(request)
        corridor = None
        if self.store.stores_corridor:
            corridor = (await asyncio.to_thread(volume.corridor)).wkt
        suspended: list[Clearance] = []
        async with self._lock:
            reasons = decide(volume, request.uav, zones=self.zone_screen(),
                             reserved=self.reserved, heights=self.heights,
                             max_agl_m=self.settings.max_agl_m)
            denied = bool(reasons)
            taken: list[Reason] = []
            if priority is not None:
                denying, noted, taken = split_for_priority(
                    reasons, lambda cid: self._priority_of(cid) is not None, override_zones)
                denied = bool(denying)
                reasons = denying if denied else [*noted, *taken]
            now = self.clock()
            clearance = Clearance(
                new_clearance_id(), request, operator, "denied" if denied else "granted",
                tuple(reasons), volume.valid_from, volume.valid_to, now, now, priority,
            )
            await self.store.insert(clearance, volume, corridor)
            if not denied:
                self._remember(clearance, volume)
                self.reserved.add(clearance.id, volume)
                for reason in taken:
                    cause = {"priority_clearance": clearance.id, "at": reason["at"]}
                    changed = await self._suspend_locked(reason["clearance"], cause,
                                                         resumable=False)
                    if changed is not None:
                        suspended.append(changed)
        self.metrics.inc("lowalt_clearance_decisions_total", state=clearance.state)
        self._push(clearance)
        for changed in suspended:
            self.metrics.inc("lowalt_clearance_changes_total", state="suspended")
            self._push(changed)
        return Decision(clearance, suspended)

    def volume(self, cid: str) -> Volume | None:
        """The volume of a monitored clearance (granted, active, suspended)."""
        return self._volumes.get(cid)

    def _priority_of(self, cid: str) -> str | None:
        c = self.live.get(cid)
        return None if c is None else c.priority

    def suspended_by(self, priority_id: str) -> list[Clearance]:
        """The suspended clearances that the priority clearance priority_id took over."""
        return [c for c in self.live.values() if c.state == "suspended"
                and any(r.get("priority_clearance") == priority_id for r in c.reasons)]

    async def suspend_for_zones(self, zones: Sequence[Zone]) -> list[ZoneSuspension]:
        """Every reserving clearance that new zones would deny from now on. Normal ones are
        suspended (resumable at once: `resume` decides them again); priority ones are only
        returned. Not pushed here: the caller's frame names the zone too."""
        now = self.clock()
        ahead = [dataclasses.replace(z, start=now if z.start is None else max(z.start, now))
                 for z in zones]
        screen = ZoneScreen(ZoneIndex(ahead))
        if not screen.zones:
            return []
        box = np.array([z.polygon.bounds for z in screen.zones], np.float64)
        lo, hi = box[:, :2].min(axis=0), box[:, 2:].max(axis=0)
        found: list[ZoneSuspension] = []
        async with self._lock:
            for cid, c in list(self.live.items()):
                if c.state not in RESERVING or c.valid_to + self.tolerance_s < now:
                    continue
                volume = self._volumes[cid]
                b = volume.bounds
                if (b[:, 0].min() > hi[0] or b[:, 2].max() < lo[0] or b[:, 1].min() > hi[1]
                        or b[:, 3].max() < lo[1]):
                    continue
                reasons = screen.reasons(volume, c.uav, self.heights)
                if not reasons:
                    continue
                zone = reasons[0]
                if c.priority is not None:
                    found.append(ZoneSuspension(c, zone, False))
                    continue
                cause = {"zone": zone["zone"], "at": zone["at"]}
                changed = await self._suspend_locked(cid, cause, resumable=True)
                if changed is not None:
                    found.append(ZoneSuspension(changed, zone, True))
        for z in found:
            if z.suspended:
                self.metrics.inc("lowalt_clearance_changes_total", state="suspended")
        return found

    async def _suspend_locked(self, cid: str, cause: Reason, *, resumable: bool
                              ) -> Clearance | None:
        """Suspend a reserving clearance (the decision lock is held): storage, then memory."""
        current = self.live.get(cid)
        if current is None or not can_change(current.state, "suspended"):
            return None
        changed = dataclasses.replace(current, state="suspended", reasons=(cause,),
                                      resumable=resumable, updated_at=self.clock())
        await self.store.update(changed)
        self.live[cid] = changed
        self.reserved.remove(cid)
        return changed

    async def set_resumable(self, cid: str) -> Clearance | None:
        """Mark a suspended clearance resumable (what suspended it is over); pushed."""
        async with self._lock:
            current = self.live.get(cid)
            if current is None or current.state != "suspended" or current.resumable:
                return None
            changed = dataclasses.replace(current, resumable=True, updated_at=self.clock())
            await self.store.update(changed)
            self.live[cid] = changed
        self._push(changed)
        return changed

    async def resume(self, clearance: Clearance) -> tuple[Clearance, list[Reason]]:
        """Decide a suspended clearance again, as a new request would be: granted (no reasons)
        when its airspace is free, otherwise unchanged with the reasons. While it is not
        resumable, its suspension is the reason. StateConflict unless it is suspended."""
        async with self._lock:
            current = self.live.get(clearance.id)
            if current is None or current.state != "suspended":
                raise StateConflict(current or clearance, "granted")
            if not current.resumable:
                return current, list(current.reasons)
            volume = self._volumes[current.id]
            reasons = decide(volume, current.uav, zones=self.zone_screen(),
                             reserved=self.reserved, heights=self.heights,
                             max_agl_m=self.settings.max_agl_m)
            if reasons:
                return current, reasons
            changed = dataclasses.replace(current, state="granted", reasons=(), resumable=False,
                                          updated_at=self.clock())
            await self.store.update(changed)
            self.live[current.id] = changed
            self.reserved.add(current.id, volume)
        self.metrics.inc("lowalt_clearance_changes_total", state="granted")
        self._push(changed)
        return changed, []

    async def get(self, cid: str) -> Clearance | None:
        return self.live.get(cid) or await self.store.get(cid)

    async def search(self, *, operator: str | None, all_operators: bool, state: str | None,
                     uav: str | None, limit: int) -> list[Clearance]:
        return await self.store.search(operator=operator, all_operators=all_operators,
                                       state=state, uav=uav, limit=limit)

    async def cancel(self, cid: str) -> Clearance | None:
        """Cancel (None when there is no such clearance; StateConflict when it has ended)."""
        current = await self.get(cid)
        if current is None:
            return None
        changed = await self._change(cid, "cancelled", current)
        if changed is None:
            latest = await self.get(cid)
            raise StateConflict(latest or current, "cancelled")
        await self._end_alerts(changed, self.clock())
        return changed

    async def expire_due(self, now: float) -> list[Clearance]:
        """Expire the clearances whose valid_to + tolerance has passed."""
        due = [c.id for c in self.live.values() if c.valid_to + self.tolerance_s < now]
        expired = []
        for cid in due:
            changed = await self._change(cid, "expired")
            if changed is not None:
                await self._end_alerts(changed, now)
                expired.append(changed)
        return expired

    def authorises(self, uav: str, lon: float, lat: float, alt_m: float, t: float) -> bool:
        """Whether a granted or active clearance of uav holds this 4D point (inside its corridor
        and time window): such a flight is authorised in authorisation-required zones."""
        for cid in self._by_uav.get(uav, ()):
            c = self.live.get(cid)
            if c is not None and c.state in RESERVING and self._volumes[cid].contains(
                lon, lat, alt_m, t
            ):
                return True
        return False

    # -- state changes -----------------------------------------------------------------------
    def _remember(self, c: Clearance, volume: Volume) -> None:
        self.live[c.id] = c
        if self._volumes.get(c.id) is not volume:
            self._table.add(c.id, volume)
        self._volumes[c.id] = volume
        ids = self._by_uav.setdefault(c.uav, [])
        if c.id not in ids:
            ids.append(c.id)

    def _forget(self, c: Clearance) -> None:
        self.live.pop(c.id, None)
        self._volumes.pop(c.id, None)
        self._table.remove(c.id)
        self.reserved.remove(c.id)
        ids = self._by_uav.get(c.uav)
        if ids is not None and c.id in ids:
            ids.remove(c.id)
            if not ids:
                del self._by_uav[c.uav]

    async def _change(self, cid: str, state: str, stored: Clearance | None = None, *,
                      only_from: str | None = None) -> Clearance | None:
        """Apply a transition if the state machine allows it now (and, given `only_from`, the
        clearance is still in that state: what the caller saw before waiting for the lock);
        storage first, then memory, then the push. None when it does not apply (any more)."""
        async with self._lock:
            current = self.live.get(cid)
            if current is None and stored is not None:
                current = await self.store.get(cid)
            if current is None or not can_change(current.state, state):
                return None
            if only_from is not None and current.state != only_from:
                return None
            changed = dataclasses.replace(current, state=state, updated_at=self.clock())
            await self.store.update(changed)
            if state not in MONITORED:
                self._forget(changed)
            else:
                self.live[cid] = changed
                if state not in RESERVING:
                    self.reserved.remove(cid)
                elif cid not in self.reserved:
                    self.reserved.add(cid, self._volumes[cid])
        self.metrics.inc("lowalt_clearance_changes_total", state=state)
        self._push(changed)
        for listener in self.change_listeners:
            try:
                await listener(changed)
            except Exception:  # a listener must never fail a state change
                log.exception("clearance listener failed on %s", cid)
        return changed

    async def _end_alerts(self, c: Clearance, t: float) -> None:
        for kind in sorted(CLEARANCE_TYPES):
            await self.alerts.resolve((kind, c.uav, c.id), t, {"clearance_state": c.state})

    def _push(self, c: Clearance) -> None:
        if self.push_to is None:
            return
        try:
            self.push_to(c.uav, {"clearance": c.to_json()})
        except Exception:  # a push must never fail a decision or a check
            log.exception("push of clearance %s failed", c.id)

    # -- the check stage ---------------------------------------------------------------------
    def _clearance_for(self, uav: str, t: float) -> str | None:
        """The clearance a report at t belongs to: its window (less the activation lead) holds
        t; active ones first, then the one whose window is nearest."""
        lead, tol = self.settings.clearance_activation_lead_s, self.tolerance_s
        best: tuple[int, float, str] | None = None
        for cid in self._by_uav.get(uav, ()):
            c = self.live[cid]
            if not c.valid_from - tol - lead <= t <= c.valid_to + tol:
                continue
            gap = max(c.valid_from - t, t - c.valid_to, 0.0)
            key = (0 if c.state == "active" else 1, gap, cid)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        by_uav = self._by_uav
        if not by_uav:
            return
        mine = [r for r in rows if r.uav in by_uav]
        if not mine:
            return
        mine.sort(key=_T)
        mine.sort(key=_UAV)  # stable: by UAV, then time (faster than one sort on both)
        matched: list[Observation] = []
        cids: list[str] = []
        live, lead, tol = self.live, self.settings.clearance_activation_lead_s, self.tolerance_s
        for r in mine:
            ids = by_uav[r.uav]
            if len(ids) == 1:  # the usual case, decided as _clearance_for does
                c = live[ids[0]]
                cid = ids[0] if c.valid_from - tol - lead <= r.t <= c.valid_to + tol else None
            else:
                cid = self._clearance_for(r.uav, r.t)
            if cid is not None:
                matched.append(r)
                cids.append(cid)
        if not matched:
            return
        n = len(matched)
        ground = np.fromiter((r.status == "ground" for r in matched), np.bool_, n)
        conf = self._table.conformance(
            cids, np.fromiter(map(_LON, matched), np.float64, n),
            np.fromiter(map(_LAT, matched), np.float64, n),
            np.fromiter(map(_ALT, matched), np.float64, n),
            np.fromiter(map(_T, matched), np.float64, n), ground,
        )
        # Only these reports need a look one by one: the end of a route, off it, off its time.
        notable = conf.at_end | (~ground & (~conf.inside | (conf.early_s > 0.0)
                                             | (conf.late_s > 0.0)))
        ks = np.flatnonzero(notable)
        noted: dict[str, list[_Notable]] = {}
        for k, *figures in zip(ks.tolist(), *(a[ks].tolist() for a in conf[:7]), strict=True):
            noted.setdefault(cids[k], []).append(_Notable(matched[k], *figures))
        present: list[Condition] = []
        for cid in dict.fromkeys(cids):  # clearances in the order their first report came
            clearance, volume = live.get(cid), self._volumes.get(cid)
            if clearance is None or volume is None:
                continue
            if clearance.state == "granted":
                # Only from granted: a priority request may suspend it while this waits for
                # the lock, and a report must not turn that into active.
                await self._change(cid, "active", only_from="granted")
            notes = noted.get(cid)
            if notes is not None:
                present.extend(await self._conform(cid, volume, notes))
        evaluated = {r.uav: r.t for r in matched}  # sorted: the last one is the latest
        at = (evaluated_times(map(_UAV, matched), map(_T, matched))
              if len(evaluated) < len(matched) else None)
        await self.alerts.assess(CLEARANCE_TYPES, evaluated, present, evaluated_at=at)

    async def _conform(self, cid: str, volume: Volume, notes: list[_Notable]
                       ) -> list[Condition]:
        """The conditions of a clearance's notable reports, in time order; the first one at
        the end of the route completes the clearance instead."""
        found: list[Condition] = []
        for note in notes:
            r = note.report
            if note.at_end:
                ended = await self._change(cid, "completed")
                if ended is not None:
                    await self._end_alerts(ended, r.t)
                return []
            if r.status == "ground":
                continue
            if not note.inside:
                found.append(_condition("off_route", r, cid, {
                    "distance_m": round(note.distance_m, 1),
                    "vertical_m": round(note.vertical_m, 1),
                    "corridor_m": volume.corridor_m, "vertical_limit_m": volume.vertical_m,
                }))
            if note.early_s > 0.0 or note.late_s > 0.0:
                key = "early_s" if note.early_s > 0.0 else "late_s"
                found.append(_condition("clearance_violation", r, cid, {
                    key: round(max(note.early_s, note.late_s), 1),
                    "along_m": round(note.along_m, 1),
                    "expected_along_m": round(float(volume.expected_along_m(r.t)), 1),
                }))
        return found if cid in self.live else []  # cancelled meanwhile: nothing to say


class _Notable(NamedTuple):
    """A report the check stage looks at one by one, with its `Conformance` figures (the first
    seven fields, in their order)."""

    report: Observation
    distance_m: float
    vertical_m: float
    early_s: float
    late_s: float
    inside: bool
    at_end: bool
    along_m: float


def _condition(kind: str, r: Observation, cid: str, detail: dict[str, Any]) -> Condition:
    return Condition(type=kind, uav=r.uav, severity="warning", t=r.t, lat=r.lat, lon=r.lon,
                     alt_m=r.alt_m, clearance=cid, detail=detail)

