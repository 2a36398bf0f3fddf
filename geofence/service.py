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
import dataclasses
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
import shapely

from dispatch.alerts import (
    ALERT_TYPE_CODE,
    SEVERITIES,
    SEVERITY_RANK,
    AlertManager,
    Condition,
    ConditionBatch,
    evaluated_times,
)
from geofence.ceiling import over_ceiling
from geofence.index import ZoneHits, ZoneIndex
from geofence.worker import WorkerUnavailable, ZoneWorker
from geofence.zones import (
    RESTRICTIONS,
    Zone,
    zone_from_feature,
    zone_to_feature,
    zones_from_trusted,
)
from lowalt.errors import ValidationError
from lowalt.live import LiveState
from lowalt.models import (
    OBSERVATION_FIELD,
    Observation,
    Principal,
    crewed_source,
    floats_of,
    values_of,
)
from lowalt.settings import Settings
from lowalt.storage import Store
from lowalt.storage.sqlite import add_missing_columns

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
F64 = np.ndarray[Any, np.dtype[np.float64]]
# By position in RESTRICTIONS: severity ranks of a breach and of an approach, and hit types.
_BREACH_RANK = np.array([SEVERITY_RANK[BREACH_SEVERITY[r]] for r in RESTRICTIONS])
_APPROACH_RANK = np.array([SEVERITY_RANK["info" if r == "advisory" else "warning"]
                           for r in RESTRICTIONS])
_AUTHORISATION_REQUIRED = RESTRICTIONS.index("authorization_required")
_HIT_TYPES = np.array(["geofence_approach", "geofence_breach"], dtype=object)
_HIT_TYPE_CODES = np.array([ALERT_TYPE_CODE[kind] for kind in _HIT_TYPES], dtype=np.int64)
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS zones (
    id TEXT PRIMARY KEY, restriction TEXT NOT NULL, updated_at REAL NOT NULL, properties TEXT,
    wkb BLOB, source_doc TEXT, feature TEXT NOT NULL
);
"""  # what a reload reads first: SQLite reaches a column after a long one through its overflow
# Rows written before `properties` and `wkb` existed have them NULL and are read from `feature`.
_SELECT = ("SELECT CASE WHEN properties IS NULL OR wkb IS NULL THEN feature END, source_doc, "
           "properties, wkb FROM zones ORDER BY id")


_new_condition = tuple.__new__  # a Condition from its fields in order, without kwargs


class StoredZone(NamedTuple):
    """A zone as read back: its properties JSON and geometry WKB, or (older rows) its feature."""

    feature: str | None  # GeoJSON Feature, only when properties or wkb is missing
    source_doc: str | None  # ED-269 feature JSON
    properties: str | None  # the Feature's properties JSON (`zone_to_feature`)
    wkb: bytes | None  # `Zone.geometry` (a circle's centre Point)


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


def _row(zone: Zone) -> tuple[str, str, str, str | None, str, bytes]:
    """(id, restriction, feature, source_doc, properties, wkb) to store."""
    source = json.dumps(dict(zone.source_doc)) if zone.source_doc is not None else None
    feature = zone_to_feature(zone)
    return (zone.id, zone.restriction, json.dumps(feature), source,
            json.dumps(feature["properties"]), shapely.to_wkb(zone.geometry))


class SqliteZoneStore(ZoneStore):
    def __init__(self, store: Any) -> None:
        self.store = store  # lowalt.storage.sqlite.SqliteStore

    async def setup(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.executescript(SQLITE_SCHEMA)
            # A database made before these existed: add them, then fill them in.
            add_missing_columns(conn, "zones", {"properties": "TEXT", "wkb": "BLOB"})
            old = conn.execute("SELECT feature FROM zones WHERE properties IS NULL OR wkb IS NULL")
            filled = [_row(zone_from_feature(json.loads(f), new_id=new_zone_id)) for (f,) in old]
            conn.executemany("UPDATE zones SET properties = ?, wkb = ? WHERE id = ?",
                             [(r[4], r[5], r[0]) for r in filled])

        await self.store.write(create)

    async def load(self) -> list[StoredZone]:
        rows = await self.store.read(lambda c: c.execute(_SELECT).fetchall())
        return [StoredZone(*r) for r in rows]

    async def insert(self, zones: Sequence[Zone]) -> None:
        now = time.time()

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for zone in zones:
                    conn.execute(
                        "INSERT INTO zones (id, restriction, feature, source_doc, properties, "
                        "wkb, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", (*_row(zone), now),
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
        """The table comes from migrations/versions/0003_zones.py and 0006_zone_wkb.py."""

    async def load(self) -> list[StoredZone]:
        async with self.store.connection() as conn:
            rows = await conn.fetch(_SELECT)
        return [StoredZone(*r) for r in rows]

    async def insert(self, zones: Sequence[Zone]) -> None:
        import asyncpg

        now = time.time()
        try:
            async with self.store.connection() as conn, conn.transaction():
                await conn.executemany(
                    "INSERT INTO zones (id, restriction, feature, source_doc, properties, wkb, "
                    "geom, updated_at) VALUES ($1, $2, $3, $4, $5, $6, "
                    "ST_GeomFromWKB($7, 4326), $8)",
                    [(*_row(z), shapely.to_wkb(z.polygon), now) for z in zones],
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
    """Stored zones back into Zones, in order. Validated when stored, so not again: properties
    parsed as written, geometries built from WKB in one call (about 10 us a zone, against 110 us
    for `zone_from_feature` on the stored Feature). Older rows go through the validator."""
    rows = list(rows)
    fast = [r for r in rows if r.feature is None]
    geometries = shapely.from_wkb(np.array([r.wkb for r in fast], dtype=object))
    properties = json.loads("[" + ",".join(cast(str, r.properties) for r in fast) + "]")
    trusted = iter(zones_from_trusted(properties, geometries.tolist()))
    zones = [next(trusted) if r.feature is None
             else zone_from_feature(json.loads(r.feature), new_id=new_zone_id) for r in rows]
    return [z if r.source_doc is None
            else dataclasses.replace(z, source_doc=StoredJson(r.source_doc))
            for z, r in zip(zones, rows, strict=True)]


class StoredJson(Mapping[str, Any]):
    """A JSON object parsed on first use: ED-269 source features, read only for an export."""

    __slots__ = ("_doc", "_text")

    def __init__(self, text: str) -> None:
        self._text: str | None = text
        self._doc: dict[str, Any] = {}

    def _parsed(self) -> dict[str, Any]:
        if self._text is not None:
            self._doc, self._text = json.loads(self._text), None
        return self._doc

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())


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
        # The stage's zone lookups in a second process once there are enough zones for it to
        # pay (geofence/worker.py); None: always in this process.
        self.worker = ZoneWorker() if settings.geofence_worker else None
        self._generation = 0
        self._index = ZoneIndex.empty()
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

    async def close(self) -> None:
        if self.worker is not None:
            await self.worker.close()

    @property
    def awaited_cpu_s(self) -> float:
        """The event loop's CPU time while this stage awaited the worker (the pipeline leaves it
        out of the stage's)."""
        return self.worker.awaited_cpu_s if self.worker is not None else 0.0

    @property
    def worker_ready(self) -> bool:
        """Whether the stage's next call goes to the worker."""
        return self.worker is not None and self.worker.ready_generation == self._generation

    @property
    def index(self) -> ZoneIndex:
        """The snapshot in effect. Setting it numbers it (a generation) and hands its zones to
        the worker, which is used for calls of that generation once it has built them."""
        return self._index

    @index.setter
    def index(self, index: ZoneIndex) -> None:
        self._index = index
        self._generation += 1
        if self.worker is not None and len(index) >= self.settings.geofence_worker_min_zones:
            self.worker.offer(self._generation, index.zones)

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
        """Every geofence condition the rows meet (zones and the national AGL ceiling); see
        `checked`."""
        zone_hits, found = self.checked(rows, index, at_t)
        return [*zone_hits.conditions(), *found]

    def checked(
        self, rows: Sequence[Observation], index: ZoneIndex, at_t: float | None = None
    ) -> tuple[ConditionBatch, list[Condition]]:
        """Every geofence condition the rows meet: zone breaches and approaches as one batch,
        the national AGL ceiling as conditions.

        Zones' active windows are taken at each row's `t`, or at `at_t` when given (a UAV known
        to be in the air now meets a zone that starts now). UAV geofences and the UAV ceiling do
        not apply to crewed aircraft (reports that came as ADS-B)."""
        zone_hits, found, _ = self._checked(rows, index, at_t)
        return zone_hits, found

    def _checked(
        self, rows: Sequence[Observation], index: ZoneIndex, at_t: float | None = None,
        rows_evaluated: bool = False, cols: _Columns | None = None,
        hits: ZoneHits | None = None,
    ) -> tuple[ConditionBatch, list[Condition], Sequence[str]]:
        """`checked`, and the UAVs of the rows checked (those not crewed), in order.
        rows_evaluated: the rows' UAVs are the `evaluated` of the `assess` the batch goes to,
        in order, each once (the batch then tells each hit's place there). cols: `_columns` of
        the rows, when made already; hits: the index's hits for them, when found already (by the
        worker)."""
        c = cols if cols is not None else self._columns(rows, at_t)
        rows_evaluated = rows_evaluated and len(c.rows) == len(rows)
        zone_hits = self._zone_hits(c, index, rows_evaluated, hits)
        found: list[Condition] = []
        over, ceilings = over_ceiling(index.ceilings, c.lon, c.lat, c.agl_m, c.alt_m, c.t, c.uav,
                                      self.settings.max_agl_m, self.authorised_by_clearance)
        for k, ceiling_m in zip(over, ceilings, strict=True):
            r = c.rows[k]
            found.append(Condition(
                type="altitude_limit", uav=r.uav, severity="critical", t=r.t, lat=r.lat,
                lon=r.lon, alt_m=r.alt_m,
                detail={"agl_m": round(float(c.agl_m[k]), 1),
                        "max_agl_m": self.settings.max_agl_m, "ceiling_agl_m": ceiling_m},
            ))
        return zone_hits, found, c.uav

    def _columns(self, rows: Sequence[Observation], at_t: float | None = None) -> _Columns:
        """The columns the checks read, of the rows not crewed."""
        rows = _uncrewed(rows)
        uav = values_of(rows, "uav")
        lon, lat, alt_m, row_t, sent_agl = (floats_of(rows, name)  # agl None: NaN
                                            for name in ("lon", "lat", "alt_m", "t", "agl_m"))
        amsl_m = alt_m - self.settings.geoid_undulation_m
        agl_m = np.where(np.isnan(sent_agl), amsl_m - self.ground.elevation_at(lon, lat), sent_agl)
        t = row_t if at_t is None else np.full(len(rows), at_t)
        return _Columns(rows, uav, lon, lat, agl_m, amsl_m, alt_m, t, row_t)

    def _zone_hits(
        self, c: _Columns, index: ZoneIndex, rows_evaluated: bool = False,
        found: ZoneHits | None = None,
    ) -> ConditionBatch:
        """The rows' zone breaches and approaches as a batch: severities, keys and the values
        that decide updates in numpy; a row's `Condition` (with the zone's detail) only when the
        alert manager asks for it."""
        if not len(index) or not c.rows:
            return ConditionBatch.empty()
        uav, lat, lon, alt_m, agl_m, row_t = c.uav, c.lat, c.lon, c.alt_m, c.agl_m, c.row_t
        if found is None:
            found = index.hits(lon, lat, agl_m, c.amsl_m, alt_m, c.t, uav)
        hits = self._without_cleared(found, c.rows, index)
        obs, breach = hits.obs, hits.breach
        restriction = index.restriction_codes[hits.zone]
        severity = np.where(breach, _BREACH_RANK[restriction], _APPROACH_RANK[restriction])
        kinds = _HIT_TYPES[breach.astype(np.intp)].tolist()
        agl_at_hit = agl_m[obs]
        hit_agl_m = np.round(agl_at_hit, 1)
        distance_m = np.round(hits.distance_m, 1)
        zones = index.zones
        hit_uav = list(map(uav.__getitem__, obs.tolist()))
        hit_t, hit_lat, hit_lon, hit_alt_m = row_t[obs], lat[obs], lon[obs], alt_m[obs]

        # Hit-sized columns only, not `rows`: the alert manager keeps a batch while an alert
        # points at it. Only the rows asked for are taken out of numpy (a call asks for a few
        # of the batch's rows: those that open or update an alert).
        def conditions(ks: Sequence[int]) -> list[Condition]:
            at = np.fromiter(ks, np.intp, len(ks))
            zone_pos, rank, hit_agl, distance, t_of, lat_of, lon_of, alt_of = (
                col[at].tolist() for col in (hits.zone, severity, agl_at_hit, hits.distance_m,
                                             hit_t, hit_lat, hit_lon, hit_alt_m))
            made = []
            for j, k in enumerate(ks):
                zone = zones[zone_pos[j]]
                made.append(_new_condition(Condition, (
                    kinds[k], hit_uav[k], SEVERITIES[rank[j]], t_of[j], lat_of[j], lon_of[j],
                    alt_of[j], zone.id, None, None,
                    {"zone_name": zone.name, "restriction": zone.restriction,
                     "lower_m": zone.lower_m, "upper_m": zone.upper_m,
                     "reference": zone.reference, "agl_m": round(hit_agl[j], 1),
                     "distance_m": round(distance[j], 1)})))
            return made

        return ConditionBatch(
            kinds, hit_uav, index.zone_ids[hits.zone].tolist(), severity, hit_t, hit_lat,
            hit_lon, hit_alt_m, np.column_stack([distance_m, hit_agl_m]),
            lambda k: conditions((k,))[0], conditions,
            type_codes=_HIT_TYPE_CODES[breach.astype(np.intp)],
            ref_ids=index.zone_id_ids[hits.zone], uav_at=obs if rows_evaluated else None,
        )

    def _without_cleared(
        self, hits: ZoneHits, rows: Sequence[Observation], index: ZoneIndex
    ) -> ZoneHits:
        """Drop breaches of authorisation-required zones that a granted corridor covers."""
        authorises = self.authorised_by_clearance
        if authorises is None:
            return hits
        asked = np.flatnonzero(
            hits.breach & (index.restriction_codes[hits.zone] == _AUTHORISATION_REQUIRED)
        )
        cleared = [k for k, i in zip(asked.tolist(), hits.obs[asked].tolist(), strict=True)
                   if authorises(rows[i].uav, rows[i].lon, rows[i].lat, rows[i].alt_m, rows[i].t)]
        if not cleared:
            return hits
        keep = np.ones(hits.obs.size, dtype=np.bool_)
        keep[cleared] = False
        return hits.take(keep)

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        uav, t = values_of(rows, "uav"), values_of(rows, "t")
        evaluated = dict(zip(uav, t, strict=True))  # crewed rows count as evaluated too
        index, generation = self.index, self._generation
        cols = self._columns(rows)
        hits = None
        worker = self.worker
        if self.worker_ready and cols.rows:
            assert worker is not None
            # The zone lookups in the worker's process; the loop serves ingest meanwhile.
            try:
                hits = await worker.hits(generation, np.stack(
                    [cols.lon, cols.lat, cols.agl_m, cols.amsl_m, cols.alt_m, cols.t]))
            except WorkerUnavailable:
                worker.fallbacks += 1  # this call in process, against the same snapshot
            else:
                keep = index.not_exempt(hits.obs, hits.zone, cols.uav)
                if keep is not None:
                    hits = hits.take(keep)
        # Each UAV once, in row order: a hit's row is its UAV's place in `evaluated`.
        zone_hits, present, _ = self._checked(rows, index,
                                              rows_evaluated=len(evaluated) == len(rows),
                                              cols=cols, hits=hits)
        at = evaluated_times(uav, t) if len(evaluated) < len(rows) else None
        if at is not None:  # a UAV more than once: its newest t
            evaluated.update((u, times[-1]) for u, times in at.items())
        await self.alerts.assess(GEOFENCE_TYPES, evaluated, present, batches=[zone_hits],
                                 evaluated_at=at)

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
        raised = self.checked(rows, index, at_t=now)[0].conditions()
        for condition in raised:
            await self.alerts.open_or_update(condition)
        return raised


class _Columns(NamedTuple):
    """`Geofence._columns`: the rows not crewed and their columns. t: the time zones' windows
    are taken at (the row's, or the call's `at_t`); row_t: the row's own."""

    rows: Sequence[Observation]
    uav: Sequence[str]
    lon: F64
    lat: F64
    agl_m: F64
    amsl_m: F64
    alt_m: F64
    t: F64
    row_t: F64


def _uncrewed(rows: Sequence[Observation]) -> Sequence[Observation]:
    """The rows not heard as ADS-B (`Observation.crewed`): `rows` itself when none was. The test
    is made once per distinct source, not once per row."""
    source = OBSERVATION_FIELD["source"]
    crewed = {s for s in set(map(source, rows)) if crewed_source(s)}
    return [r for r in rows if source(r) not in crewed] if crewed else rows


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
