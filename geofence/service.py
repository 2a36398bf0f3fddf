"""Zones at run time: persisted in both backends, served as an immutable ZoneIndex snapshot, and
checked against every committed observation (the geofence check stage).

A change (create, import, delete) is written to storage first, then the new snapshot replaces the
old one before the request is answered, so every observation committed after the answer is
checked against it. A new zone is also checked at once against the live picture, so airborne UAVs
already inside a temporary (incident) zone are told without waiting for their next report; then
the `zone_listeners` (the clearance service's priority operations) hear of it, before the answer.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import numpy as np
import shapely

from dispatch.alerts import AlertManager, Condition
from geofence.index import ZoneHit, ZoneIndex
from geofence.zones import Zone, zone_from_feature, zone_to_feature
from lowalt.errors import ValidationError
from lowalt.live import LiveState
from lowalt.models import Observation, Principal
from lowalt.settings import Settings
from lowalt.storage import Store

log = logging.getLogger("lowalt.geofence")
# Told of zones just put in effect, with the conditions the live check raised for them.
ZoneListener = Callable[
    [Sequence[Zone], Sequence[Condition], Principal | None], Awaitable[None]
]
GEOFENCE_TYPES = frozenset({"geofence_breach", "geofence_approach", "altitude_limit"})
BREACH_SEVERITY = {
    "prohibited": "critical", "authorization_required": "critical", "conditional": "warning",
    "advisory": "info",
}
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS zones (
    id TEXT PRIMARY KEY, restriction TEXT NOT NULL, feature TEXT NOT NULL, source_doc TEXT,
    updated_at REAL NOT NULL
);
"""
StoredZone = tuple[str, str | None]  # (feature JSON, source_doc JSON or None)


class ZoneExists(ValidationError):
    def __init__(self, zone_id: str) -> None:
        super().__init__("properties.id", f"zone {zone_id!r} exists already")


def new_zone_id() -> str:
    return "z-" + uuid.uuid4().hex[:12]


# -- storage -----------------------------------------------------------------------------------
class ZoneStore(abc.ABC):
    @abc.abstractmethod
    async def setup(self) -> None: ...

    @abc.abstractmethod
    async def load(self) -> list[StoredZone]: ...

    @abc.abstractmethod
    async def insert(self, zones: Sequence[Zone]) -> None:
        """All or none; ZoneExists when an id is taken."""

    @abc.abstractmethod
    async def delete(self, zone_id: str) -> bool: ...

    @abc.abstractmethod
    async def signature(self) -> tuple[int, float]:
        """(count, newest update): changes when another process changes the zones."""


def _row(zone: Zone) -> tuple[str, str, str, str | None]:
    source = json.dumps(zone.source_doc) if zone.source_doc is not None else None
    return zone.id, zone.restriction, json.dumps(zone_to_feature(zone)), source


class SqliteZoneStore(ZoneStore):
    def __init__(self, store: Any) -> None:
        self.store = store  # lowalt.storage.sqlite.SqliteStore

    async def setup(self) -> None:
        await self.store.write(lambda c: c.executescript(SQLITE_SCHEMA))

    async def load(self) -> list[StoredZone]:
        rows: list[StoredZone] = await self.store.read(
            lambda c: c.execute("SELECT feature, source_doc FROM zones ORDER BY id").fetchall()
        )
        return rows

    async def insert(self, zones: Sequence[Zone]) -> None:
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for zone in zones:
                    conn.execute(
                        "INSERT INTO zones (id, restriction, feature, source_doc, updated_at) "
                        "VALUES (?, ?, ?, ?, ?)", (*_row(zone), now),
                    )
                conn.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK")
                taken = [z.id for z in zones if conn.execute(
                    "SELECT 1 FROM zones WHERE id = ?", (z.id,)).fetchone()]
                raise ZoneExists(taken[0] if taken else "?") from exc
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self.store.write(write)

    async def delete(self, zone_id: str) -> bool:
        count: int = await self.store.write(
            lambda c: c.execute("DELETE FROM zones WHERE id = ?", (zone_id,)).rowcount
        )
        return count == 1

    async def signature(self) -> tuple[int, float]:
        row = await self.store.read(
            lambda c: c.execute("SELECT count(*), coalesce(max(updated_at), 0) FROM zones")
            .fetchone()
        )
        return int(row[0]), float(row[1])


class PostgresZoneStore(ZoneStore):
    def __init__(self, store: Any) -> None:
        self.store = store  # lowalt.storage.postgres.PostgresStore

    async def setup(self) -> None:
        """The table comes from migrations/versions/0003_zones.py."""

    async def load(self) -> list[StoredZone]:
        async with self.store.connection() as conn:
            rows = await conn.fetch("SELECT feature, source_doc FROM zones ORDER BY id")
        return [(r[0], r[1]) for r in rows]

    async def insert(self, zones: Sequence[Zone]) -> None:
        import asyncpg

        now = time.time()
        try:
            async with self.store.connection() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO zones (id, restriction, feature, source_doc, geom, updated_at) "
                    "VALUES ($1, $2, $3, $4, ST_GeomFromText($5, 4326), $6)",
                    [(*_row(z), z.polygon.wkt, now) for z in zones],
                )
        except asyncpg.UniqueViolationError as exc:
            detail = str(exc.detail or "")
            taken = [z.id for z in zones if f"=({z.id})" in detail]
            raise ZoneExists(taken[0] if taken else "?") from exc

    async def delete(self, zone_id: str) -> bool:
        async with self.store.connection() as conn:
            status = await conn.execute("DELETE FROM zones WHERE id = $1", zone_id)
        return bool(status.endswith(" 1"))

    async def signature(self) -> tuple[int, float]:
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                "SELECT count(*), coalesce(max(updated_at), 0) FROM zones"
            )
        return int(row[0]), float(row[1])


def zone_store_for(store: Store) -> ZoneStore:
    from lowalt.storage.postgres import PostgresStore
    from lowalt.storage.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteZoneStore(store)
    if isinstance(store, PostgresStore):
        return PostgresZoneStore(store)
    raise TypeError(f"no zone store for {type(store).__name__}")


def zones_from_stored(rows: Iterable[StoredZone]) -> list[Zone]:
    zones = []
    for feature, source in rows:
        zone = zone_from_feature(json.loads(feature), new_id=new_zone_id)
        if source is not None:
            zone = _with_source(zone, json.loads(source))
        zones.append(zone)
    return zones


def _with_source(zone: Zone, source: Any) -> Zone:
    import dataclasses

    return dataclasses.replace(zone, source_doc=source)


# -- heights -----------------------------------------------------------------------------------
class GroundModel:
    """Ground elevation above the geoid (AMSL) under a point; a constant unless replaced."""

    def __init__(self, elevation_m: float) -> None:
        self.elevation_m = elevation_m

    def elevation_at(
        self, lon: np.ndarray[Any, np.dtype[np.float64]], lat: np.ndarray[Any, np.dtype[np.float64]]
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.full(lon.shape, self.elevation_m)


# -- the service and its check stage -----------------------------------------------------------
class Geofence:
    """Zones, their index snapshot, and the check run on every committed observation."""

    name = "geofence"

    def __init__(
        self, store: ZoneStore, alerts: AlertManager, live: LiveState, settings: Settings,
        ground: GroundModel | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.alerts, self.live, self.settings = store, alerts, live, settings
        self.ground = ground or GroundModel(settings.ground_elevation_m)
        self.clock = clock
        self.index = ZoneIndex.empty()
        self.zone_listeners: list[ZoneListener] = []
        # (uav, lon, lat, alt_m, t) -> whether a clearance authorises the UAV there; set by the
        # clearance service: inside a granted corridor, an authorisation-required zone is no
        # breach.
        self.authorised_by_clearance: Callable[[str, float, float, float, float], bool] | None = (
            None
        )
        self._lock = asyncio.Lock()
        self._signature: tuple[int, float] = (0, 0.0)

    async def start(self) -> None:
        await self.store.setup()
        await self.reload()

    async def reload(self) -> None:
        """Load zones from storage (start-up, and when another process changed them)."""
        async with self._lock:
            self._signature = await self.store.signature()
            self.index = ZoneIndex(zones_from_stored(await self.store.load()))

    async def reload_if_changed(self) -> None:
        if await self.store.signature() != self._signature:
            await self.reload()

    async def add(self, zones: Sequence[Zone], by: Principal | None = None) -> None:
        """Store zones atomically and put them in effect; ZoneExists if an id is taken.
        `by` (None: the command line) is passed to the listeners for their audit records."""
        async with self._lock:
            ids = [z.id for z in zones]
            taken = [i for i in ids if i in self.index] or [i for i in ids if ids.count(i) > 1]
            if taken:
                raise ZoneExists(taken[0])
            await self.store.insert(zones)
            self.index = ZoneIndex([*self.index.zones, *zones])
            self._signature = await self.store.signature()
        raised = await self._check_live(zones)
        for listener in self.zone_listeners:
            try:
                await listener(zones, raised, by)
            except Exception:  # the zones are stored and in effect: that answer stands
                log.exception("zone listener failed")

    async def delete(self, zone_id: str) -> bool:
        async with self._lock:
            if not await self.store.delete(zone_id):
                return False
            self.index = self.index.without_zone(zone_id)
            self._signature = await self.store.signature()
        return True

    def conditions(
        self, rows: Sequence[Observation], index: ZoneIndex, at_t: float | None = None
    ) -> list[Condition]:
        """Every geofence condition the rows meet (zones and the national AGL ceiling).

        Zones' active windows are taken at each row's `t`, or at `at_t` when given (a UAV known
        to be in the air now meets a zone that starts now). UAV geofences and the UAV ceiling do
        not apply to crewed aircraft (reports that came as ADS-B)."""
        rows = [r for r in rows if not r.crewed]
        n = len(rows)
        lon = np.fromiter((r.lon for r in rows), np.float64, n)
        lat = np.fromiter((r.lat for r in rows), np.float64, n)
        alt_m = np.fromiter((r.alt_m for r in rows), np.float64, n)
        sent_agl = np.array([r.agl_m for r in rows], dtype=np.float64)
        amsl_m = alt_m - self.settings.geoid_undulation_m
        agl_m = np.where(np.isnan(sent_agl), amsl_m - self.ground.elevation_at(lon, lat), sent_agl)
        t = np.fromiter((r.t for r in rows), np.float64, n) if at_t is None else np.full(n, at_t)
        found: list[Condition] = []
        if len(index):
            hits = index.check(lon, lat, agl_m, amsl_m, alt_m, t, [r.uav for r in rows])
            hits = self._without_cleared(hits, rows, index)
            found.extend(self._zone_condition(rows[h.obs_index], h, index,
                                              float(agl_m[h.obs_index])) for h in hits)
        for k in np.flatnonzero(agl_m > self.settings.max_agl_m).tolist():
            r = rows[k]
            found.append(Condition(
                type="altitude_limit", uav=r.uav, severity="critical", t=r.t, lat=r.lat,
                lon=r.lon, alt_m=r.alt_m,
                detail={"agl_m": round(float(agl_m[k]), 1), "max_agl_m": self.settings.max_agl_m},
            ))
        return found

    def _without_cleared(
        self, hits: list[ZoneHit], rows: Sequence[Observation], index: ZoneIndex
    ) -> list[ZoneHit]:
        """Drop breaches of authorisation-required zones that a granted corridor covers."""
        authorises = self.authorised_by_clearance
        if authorises is None:
            return hits
        kept = []
        for h in hits:
            zone = index.get(h.zone_id)
            r = rows[h.obs_index]
            if (h.kind == "breach" and zone is not None
                    and zone.restriction == "authorization_required"
                    and authorises(r.uav, r.lon, r.lat, r.alt_m, r.t)):
                continue
            kept.append(h)
        return kept

    @staticmethod
    def _zone_condition(row: Observation, hit: ZoneHit, index: ZoneIndex,
                        agl_m: float) -> Condition:
        zone = index.get(hit.zone_id)
        assert zone is not None
        breach = hit.kind == "breach"
        severity = BREACH_SEVERITY[zone.restriction]
        if not breach:
            severity = "info" if zone.restriction == "advisory" else "warning"
        return Condition(
            type="geofence_breach" if breach else "geofence_approach", uav=row.uav,
            severity=severity, t=row.t, lat=row.lat, lon=row.lon, alt_m=row.alt_m, zone=zone.id,
            detail={"zone_name": zone.name, "restriction": zone.restriction,
                    "lower_m": zone.lower_m, "upper_m": zone.upper_m,
                    "reference": zone.reference, "agl_m": round(agl_m, 1),
                    "distance_m": round(hit.distance_m, 1)},
        )

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        present = self.conditions(rows, self.index)
        evaluated: dict[str, float] = {}
        for r in rows:
            if r.t > evaluated.get(r.uav, -1.0):
                evaluated[r.uav] = r.t
        await self.alerts.assess(GEOFENCE_TYPES, evaluated, present)

    async def _check_live(self, zones: Sequence[Zone]) -> list[Condition]:
        """Tell airborne UAVs already inside new zones at once (temporary incident zones);
        the conditions raised."""
        if not zones:  # an empty collection or import: no bounds to look in
            return []
        now = self.clock()
        index = ZoneIndex(list(zones))
        box = shapely.bounds(shapely.union_all([z.polygon for z in zones]))
        margin = 0.02  # degrees: covers approach buffers of ~2 km
        rows = [r for r in self.live.in_bbox(box[0] - margin, box[1] - margin, box[2] + margin,
                                             box[3] + margin)
                if r.status != "ground" and now - r.t <= self.settings.max_age_s]
        if not rows:
            return []
        raised = [c for c in self.conditions(rows, index, at_t=now) if c.type != "altitude_limit"]
        for condition in raised:
            await self.alerts.open_or_update(condition)
        return raised


def zones_from_request(body: Any) -> list[Zone]:
    """A Feature or FeatureCollection body into zones (validated; ids assigned when absent)."""
    if isinstance(body, dict) and body.get("type") == "FeatureCollection":
        features = body.get("features")
        if not isinstance(features, list):
            raise ValidationError("features", "must be a list of Features")
        zones = []
        for n, feature in enumerate(features):
            try:
                zones.append(zone_from_feature(feature, new_id=new_zone_id))
            except ValidationError as exc:
                raise ValidationError(f"features[{n}].{exc.field}", exc.reason) from None
        return zones
    return [zone_from_feature(body, new_id=new_zone_id)]
