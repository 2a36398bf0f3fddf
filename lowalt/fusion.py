"""The fused picture: one state per aircraft, built from every source that reports it.

Identity: an observation keeps the identifier it was reported with (`uav`, stored unaltered).
`Identities` maps that identifier to a canonical aircraft through the registry: a registered
UAV's id is its own, each of its aliases (F3411 UAS ID / serial / session id, operator ids) maps
to it, and a 6-hex-digit alias (an ADS-B ICAO address) also matches "ICAO-<HEX>", the id the SBS
codec reports. Identifiers the registry does not know are aircraft of their own, unregistered.

Per aircraft and source (the observation's `source`, "<name>/<transport>/<format>") the picture
keeps the newest report; for an aircraft heard under several source names (cross-checked, see
geofence/fusion_stage.py) the newest `reports_per_source`, sorted by `t`. Older reports are read
from storage (GET /v1/flights' recent positions), so a live aircraft costs one report of memory
per source, not a history. The fused state (docs/ARCHITECTURE.md,
"Fusion") takes the newest report of each source heard within `window_s` of the newest report of
all (time T), extrapolates each to T at its own velocity, and averages them weighted by inverse
variance, where a report's standard deviation is half its 95 % accuracy (a default when absent)
plus a * age^2 / 2 for unmodelled manoeuvre: a source that stops fades out smoothly as it ages.

Fusion is lazy: `add` (every committed batch) only files reports; `refresh` (each reader, before
it reads: the feed's flush, the monitor's tick, the API) fuses the aircraft that changed since.
Readers: `aircraft` (canonical id -> `Aircraft`, whose `state` is an Observation with the
canonical id), and per-slot column arrays (`lat`, `lon`, `heard_t`, `version`, `epoch`, `owner`,
`present`, `ids`) that the traffic feed filters with numpy. Each aircraft holds one slot while it
exists; `epoch` changes when a slot is given to another aircraft, `version` on every fused update.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from aiohttp import web

from lowalt.gcpolicy import collector_paused
from lowalt.models import OBSERVATION_INDEX, Observation, float_column, floats_of, int_column
from lowalt.settings import Settings
from lowalt.storage import UavRecord

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Obj = npt.NDArray[np.object_]

EARTH_RADIUS_M = 6_371_008.8
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0
ICAO_PREFIX = "ICAO-"
_HEX6 = re.compile(r"[0-9A-Fa-f]{6}")
# The fused status is the most urgent one any source in the blend reports.
STATUS_RANK: dict[str | None, int] = {
    None: 0, "ground": 1, "airborne": 2, "lost_link": 3, "emergency": 4,
}
RANK_STATUS: dict[int, str | None] = {rank: status for status, rank in STATUS_RANK.items()}
MIN_ACC_M = 1.0  # a reported accuracy of 0 would take all the weight
Partners = Mapping[str, tuple[tuple[str, list[Observation]], ...]]
NO_PARTNERS: Partners = MappingProxyType({})
_LAST = itemgetter(-1)
_SLOT, _SOURCES, _UAVS = attrgetter("slot"), attrgetter("sources"), attrgetter("uav")
# The numeric fields the blend reads, in the order `_blend` unpacks them.
_BLENDED = ("t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps", "acc_h_m",
            "acc_v_m", "agl_m")


def source_name(source: str) -> str:
    """The gateway or token name of a source "<name>/<transport>/<format>"."""
    return source.split("/", 1)[0]


def reported_ids(uav: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """Every identifier a registered UAV's reports may carry: its id, its aliases and, for an
    alias that is an ICAO address (6 hex digits), the SBS codec's "ICAO-<HEX>"."""
    ids = [uav]
    for alias in aliases:
        ids.append(alias)
        if _HEX6.fullmatch(alias):
            ids.append(ICAO_PREFIX + alias.upper())
    return tuple(dict.fromkeys(ids))


class RegistryView(Protocol):
    """What identity needs of lowalt.auth.Registry: its tables, swapped whole on change."""

    @property
    def by_uav(self) -> Mapping[str, UavRecord]: ...

    @property
    def alias_to_uav(self) -> Mapping[str, str]: ...


def identity_of(registry: RegistryView, uav: str) -> tuple[str, tuple[str, ...]]:
    """(canonical id, every identifier of that aircraft) for a reported or canonical id."""
    canonical = uav if uav in registry.by_uav else registry.alias_to_uav.get(uav)
    if canonical is None and uav.startswith(ICAO_PREFIX):
        hex_id = uav[len(ICAO_PREFIX):]
        canonical = registry.alias_to_uav.get(hex_id) or registry.alias_to_uav.get(hex_id.lower())
    record = registry.by_uav.get(canonical) if canonical is not None else None
    if record is None:
        return uav, (uav,)
    return record.uav, reported_ids(record.uav, record.aliases)


class Identities:
    """Reported identifier -> canonical aircraft, rebuilt when the registry's tables change."""

    def __init__(self, registry: RegistryView) -> None:
        self.registry = registry
        # Reported id -> canonical id, for the ids that are not their own aircraft (aliases);
        # a registered id maps to itself by its absence.
        self.canonical_of: dict[str, str] = {}
        self.operator_of: Mapping[str, str] = {}  # canonical (registered) id -> operator
        self._seen: tuple[Mapping[str, UavRecord], object] | None = None

    def sync(self) -> bool:
        """Follow the registry (it swaps its dicts on every change); True when the mapping or
        an owner actually changed."""
        reg = self.registry
        seen = self._seen
        if seen is not None and reg.by_uav is seen[0] and reg.alias_to_uav is seen[1]:
            return False
        self._seen = (reg.by_uav, reg.alias_to_uav)
        canonical_of: dict[str, str] = {}
        for record in reg.by_uav.values():
            for reported in reported_ids(record.uav, record.aliases)[1:]:
                canonical_of.setdefault(reported, record.uav)
        for uav in reg.by_uav.keys() & canonical_of.keys():
            del canonical_of[uav]  # a registered id is always its own aircraft
        owners_changed = _owners(seen[0] if seen else {}) != _owners(reg.by_uav)
        changed = canonical_of != self.canonical_of or owners_changed
        self.canonical_of, self.operator_of = canonical_of, _Operators(reg.by_uav)
        return changed

    def resolve(self, uav: str) -> str:
        return self.canonical_of.get(uav, uav)


@dataclass(slots=True, eq=False)
class Aircraft:
    """One aircraft of the fused picture."""

    uav: str  # canonical id
    slot: int
    registered: bool
    operator: str | None
    # Heard by one source (nearly every aircraft): its newest report, and `sources` None; by
    # several: `report` None and, per source, its reports sorted by t. One report field instead
    # of a dict and a list per aircraft: about 250 B less for every live UAV.
    report: Observation | None = None
    sources: dict[str, list[Observation]] | None = None
    state: Observation | None = None  # fused; uav = canonical, source = newest source's
    used: tuple[str, ...] = ()  # the sources blended into `state`, newest first
    # With several source names (then cross-checked): per source, the (source, reports) of
    # the sources under other names. Else one shared empty mapping (no allocation per aircraft).
    partners: Partners = field(default_factory=lambda: NO_PARTNERS)
    several_names: bool = False

    @property
    def kind(self) -> str:
        """"crewed" for an unregistered aircraft heard by ADS-B (SBS), else "uav"."""
        crewed = not self.registered and self.state is not None and self.state.crewed
        return "crewed" if crewed else "uav"

    def newest_reports(self) -> list[Observation]:
        if self.sources is None:
            return [] if self.report is None else [self.report]
        return [reports[-1] for reports in self.sources.values()]

    def by_source(self) -> dict[str, list[Observation]]:
        """Per source, the reports kept (t-sorted): `sources`, or a new one-entry dict."""
        if self.sources is not None:
            return self.sources
        return {} if self.report is None else {self.report.source: [self.report]}

    def as_json(self) -> dict[str, Any]:
        """The traffic feed's state message (API.md section 7, docs/API.md)."""
        s = self.state
        assert s is not None
        return {
            "uav": self.uav, "t": s.t, "lat": round(s.lat, 7), "lon": round(s.lon, 7),
            "alt_m": round(s.alt_m, 2), "agl_m": _round(s.agl_m),
            "speed_mps": _round(s.speed_mps), "track_deg": _round(s.track_deg),
            "vspeed_mps": _round(s.vspeed_mps), "kind": self.kind, "sources": list(self.used),
            "status": s.status, "registered": self.registered,
            "acc_h_m": _round(s.acc_h_m, 1), "acc_v_m": _round(s.acc_v_m, 1),
        }


def _owners(by_uav: Mapping[str, UavRecord]) -> dict[str, str]:
    return {uav: record.operator for uav, record in by_uav.items()}


class _Operators(Mapping[str, str]):
    """Registered id -> operator, read through the registry's own records (no table of its
    own: one entry per registered UAV is memory the live picture does not need twice)."""

    __slots__ = ("_by_uav",)

    def __init__(self, by_uav: Mapping[str, UavRecord]) -> None:
        self._by_uav = by_uav

    def __getitem__(self, uav: str) -> str:
        return self._by_uav[uav].operator

    def __contains__(self, uav: object) -> bool:
        return uav in self._by_uav

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_uav)

    def __len__(self) -> int:
        return len(self._by_uav)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class FusedPicture:
    def __init__(
        self,
        identities: Identities,
        *,
        window_s: float = 10.0,
        reports_per_source: int = 16,
        default_acc_h_m: float = 30.0,
        default_acc_v_m: float = 45.0,
        manoeuvre_mps2: float = 2.0,
        capacity: int = 1024,
    ) -> None:
        self.identities = identities
        self.window_s = window_s
        self.reports_per_source = reports_per_source
        self.default_acc_h_m, self.default_acc_v_m = default_acc_h_m, default_acc_v_m
        self.manoeuvre_mps2 = manoeuvre_mps2
        self.aircraft: dict[str, Aircraft] = {}
        # New reports since the last refresh: aircraft with several sources, and of those with
        # one, the newest report (their next state) by canonical id.
        self._dirty: dict[str, Aircraft] = {}
        self._dirty_one: dict[str, Observation] = {}
        self._used_tuples, self._used_one = _Interned(), _OneSource()
        self._version = 0
        self._free: list[int] = []
        self._next_slot = 0
        self._operator_codes: dict[str, int] = {}
        self.capacity = 0
        self.lat: F64 = np.zeros(0)
        self.lon: F64 = np.zeros(0)
        self.heard_t: F64 = np.zeros(0)  # t of the fused state (newest report of any source)
        self.version: I64 = np.zeros(0, dtype=np.int64)
        self.epoch: I64 = np.zeros(0, dtype=np.int64)
        self.owner: I64 = np.zeros(0, dtype=np.int64)  # operator code, -1 unregistered
        self.present: Bool = np.zeros(0, dtype=bool)
        self.ids: Obj = np.zeros(0, dtype=object)
        self.by_slot: list[Aircraft | None] = []
        self._grow(capacity)
        identities.sync()

    def __len__(self) -> int:
        return len(self.aircraft)

    @property
    def slots_used(self) -> int:
        """Slots below this index may hold an aircraft: the column arrays' live prefix."""
        return self._next_slot

    def operator_code(self, operator: str) -> int | None:
        return self._operator_codes.get(operator)

    # -- writing ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Follow registry changes: ownership, and aircraft whose id became an alias."""
        if self.identities.sync():
            self._rekey()

    def add(self, rows: Iterable[Observation]) -> list[tuple[Aircraft, Observation]]:
        """Take committed rows (any order). The fused states of the aircraft whose newest
        report changed are computed at the next `refresh`. Returns, in order, the rows of
        aircraft heard under more than one source name, with their aircraft: what the
        cross-check compares."""
        self.sync()
        if not isinstance(rows, list | tuple):
            rows = list(rows)
        resolve = self.identities.canonical_of.get
        aircraft = self.aircraft
        limit = self.reports_per_source
        touched, touched_one = self._dirty, self._dirty_one
        checked: list[tuple[Aircraft, Observation]] = []
        joined = False  # an aircraft got its second source name: rows before it count too
        for row in rows:
            uav = row.uav
            uav = resolve(uav, uav)
            a = aircraft.get(uav) or self._new(uav)
            sources = a.sources
            if sources is None:  # one source so far
                one = a.report
                if one is None or one.source == row.source:
                    if one is None or row.t > one.t:  # else late: one source keeps no history
                        a.report = touched_one[uav] = row  # its state at the next refresh
                    continue
                a.report, a.sources = None, (sources := {one.source: [one]})
            reports = sources.get(row.source)
            if reports is None:
                sources[row.source] = [row]
                touched_one.pop(uav, None)  # no longer its only source
                a.partners = _partners(sources)
                if a.partners and not a.several_names:
                    a.several_names = joined = True
            elif row.t > reports[-1].t:
                if a.several_names:  # history, for the cross-check
                    reports.append(row)
                    if len(reports) > limit:
                        del reports[0]
                else:
                    reports[-1] = row
            else:  # late: kept for the cross-check; the fused state uses newest reports only
                if a.several_names:
                    _insert_late(reports, row, limit)
                    checked.append((a, row))
                continue
            touched[uav] = a
            if a.several_names:
                checked.append((a, row))
        if joined:
            checked = [(a, row) for row in rows
                       if (a := aircraft[resolve(row.uav, row.uav)]).several_names]
        return checked

    def refresh(self) -> list[Aircraft]:
        """Fuse the aircraft with new reports since the last refresh; return them. Readers call
        it first: the cost is paid once per read tick, not per report."""
        if not self._dirty and not self._dirty_one:
            return []
        ones, several = self._dirty_one, self._dirty  # `_remove` takes an aircraft out of them
        self._dirty_one, self._dirty = {}, {}
        with collector_paused():
            return self._refresh(ones, list(several.values()))

    def forget_silent(self, before_t: float) -> int:
        """Drop aircraft whose newest report is older than before_t; return how many."""
        old = [a for a in self.aircraft.values() if a.state is not None and a.state.t < before_t]
        for a in old:
            self._remove(a)
        return len(old)

    def _new(self, uav: str) -> Aircraft:
        if self._free:
            slot = self._free.pop()
        else:
            slot = self._next_slot
            self._next_slot += 1
            if slot >= self.capacity:
                self._grow(2 * self.capacity)
        operator = self.identities.operator_of.get(uav)
        a = Aircraft(uav, slot, operator is not None, operator)
        self.aircraft[uav] = a
        self.by_slot[slot] = a
        self.epoch[slot] += 1
        self.present[slot] = True
        self.heard_t[slot] = -np.inf  # not in any view until its first refresh
        self.ids[slot] = uav
        self.owner[slot] = self._code(operator)
        return a

    def _remove(self, a: Aircraft) -> None:
        del self.aircraft[a.uav]
        self._dirty.pop(a.uav, None)
        self._dirty_one.pop(a.uav, None)
        self.by_slot[a.slot] = None
        self.present[a.slot] = False
        self._free.append(a.slot)

    def _code(self, operator: str | None) -> int:
        if operator is None:
            return -1
        return self._operator_codes.setdefault(operator, len(self._operator_codes))

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        self.lat = np.concatenate([self.lat, np.zeros(extra)])
        self.lon = np.concatenate([self.lon, np.zeros(extra)])
        self.heard_t = np.concatenate([self.heard_t, np.full(extra, -np.inf)])
        self.version = np.concatenate([self.version, np.zeros(extra, dtype=np.int64)])
        self.epoch = np.concatenate([self.epoch, np.zeros(extra, dtype=np.int64)])
        self.owner = np.concatenate([self.owner, np.full(extra, -1, dtype=np.int64)])
        self.present = np.concatenate([self.present, np.zeros(extra, dtype=bool)])
        self.ids = np.concatenate([self.ids, np.full(extra, None, dtype=object)])
        self.by_slot.extend([None] * extra)
        self.capacity = capacity

    def _rekey(self) -> None:
        """The registry changed: update ownership, and merge aircraft whose id became an alias."""
        resolve, operator_of = self.identities.resolve, self.identities.operator_of
        merged: dict[str, Aircraft] = {}
        for uav, a in list(self.aircraft.items()):
            canonical = resolve(uav)
            if canonical != uav:
                self._remove(a)
                target = self.aircraft.get(canonical) or self._new(canonical)
                into = target.by_source()
                for source, reports in a.by_source().items():
                    mine = into.setdefault(source, [])
                    for row in reports:
                        _insert_late(mine, row, self.reports_per_source)
                target.report, target.sources = None, into  # back to one report below if one
                merged[canonical] = target
                continue
            operator = operator_of.get(uav)
            if operator != a.operator:
                a.operator, a.registered = operator, operator is not None
                self.owner[a.slot] = self._code(operator)
                merged[uav] = a  # registered/kind changed: a new version for the feeds
        for a in merged.values():
            sources = a.by_source()
            a.partners = _partners(sources)
            a.several_names = bool(a.partners)
            if not a.several_names:  # the newest report per source is all it keeps
                for source, reports in sources.items():
                    sources[source] = reports[-1:]
            if len(sources) == 1:
                (reports,) = sources.values()
                a.report, a.sources = reports[-1], None
            elif sources:
                a.report, a.sources = None, sources
            a.registered = a.uav in operator_of
            a.operator = operator_of.get(a.uav)
            self.owner[a.slot] = self._code(a.operator)
        for a in merged.values():
            if a.report is not None:
                self._dirty_one[a.uav] = a.report
            elif a.sources:
                self._dirty_one.pop(a.uav, None)
                self._dirty[a.uav] = a

    # -- fusion -----------------------------------------------------------------------------

    def _refresh(self, ones: dict[str, Observation], several: list[Aircraft]) -> list[Aircraft]:
        """Fuse the changed aircraft: `ones` (canonical id -> newest report) have one source,
        `several` more. An aircraft with one source in the window takes that source's newest
        report as it is; the others are blended together, vectorised over all of them. Returns
        the aircraft fused."""
        singles = list(map(self.aircraft.__getitem__, ones))
        changed = singles + several
        rows = list(ones.values())  # the singles' states (under their canonical id)
        blended: list[Aircraft] = []
        if several:
            newest = _Columns(_newest_reports(several))
            used, used_counts = self._used(newest.floats("t"),
                                           int_column(map(len, map(_SOURCES, several))))
            one = used_counts == 1  # the other sources are past the window
            if one.any():
                in_one = np.repeat(one, used_counts)
                singles += _pick(several, one)
                rows += map(newest.rows.__getitem__, used[in_one].tolist())
                used, used_counts = used[~in_one], used_counts[~one]
                several = _pick(several, ~one)
            if several:
                blended = several
                blend = self._blend(blended, newest, used, used_counts)
        one_source = self._used_one
        for a, row in zip(singles, rows, strict=True):
            a.state = row if row.uav == a.uav else row._replace(uav=a.uav)  # reported by an alias
            a.used = one_source[row.source]
        n_single = len(singles)
        first = self._version + 1
        self._version += n_single + len(blended)
        if n_single:
            slots = int_column(map(_SLOT, singles))
            self.lat[slots] = floats_of(rows, "lat")
            self.lon[slots] = floats_of(rows, "lon")
            self.heard_t[slots] = floats_of(rows, "t")
            self.version[slots] = np.arange(first, first + n_single, dtype=np.int64)
        if blended:
            slots = int_column(map(_SLOT, blended))
            self.heard_t[slots], self.lat[slots], self.lon[slots] = blend
            self.version[slots] = np.arange(first + n_single, self._version + 1, dtype=np.int64)
        return changed

    def _used(self, t: F64, counts: I64) -> tuple[I64, I64]:
        """The reports to blend, given the times `t` of each aircraft's newest report per source
        (`counts` per aircraft, in order): indexes into `t`, per aircraft newest first (ties keep
        their order), within `window_s` of the aircraft's newest; and how many per aircraft."""
        g = np.repeat(np.arange(len(counts)), counts)
        if (counts == 2).all():  # the usual case: two sources each; the newer of each pair first
            older_first = t[1::2] > t[0::2]  # a tie keeps the pair's order
            order = np.arange(t.size)
            order[0::2] += older_first
            order[1::2] -= older_first
            t_newest = t[order[0::2]]
        else:
            starts = _starts(counts)
            t_newest = np.maximum.reduceat(t, starts)
            order = np.lexsort((-t, g))  # stable: by aircraft, then newest first
        used = order[(t_newest[g] - t <= self.window_s)[order]]
        return used, np.bincount(g[used], minlength=len(counts)).astype(np.int64)

    def _blend(
        self, blended: list[Aircraft], newest: _Columns, used: I64, counts: I64
    ) -> tuple[F64, F64, F64]:
        """Inverse-variance blend of each aircraft's used reports (`used`: indexes into
        `newest`, `counts` per aircraft), vectorised over all of them; sets each aircraft's
        `state` and `used`, returns the fused (t, lat, lon) columns. Each aircraft's reports
        come newest first; the first gives T and the longitude origin."""
        n, size = len(blended), len(used)
        g = np.repeat(np.arange(n), counts)
        starts = _starts(counts)
        t, lat, lon, alt, speed, track, vspeed, acc_h, acc_v, agl = (
            newest.floats(name)[used] for name in _BLENDED)
        acc_h = np.maximum(np.where(np.isnan(acc_h), self.default_acc_h_m, acc_h), MIN_ACC_M)
        acc_v = np.maximum(np.where(np.isnan(acc_v), self.default_acc_v_m, acc_v), MIN_ACC_M)
        t_fused = t[starts]
        dt = t_fused[g] - t
        lat_x, lon_x, alt_x, ve, vn, has_v, has_vs = extrapolate(
            lat, lon, alt, speed, track, vspeed, dt
        )
        grow = 0.5 * self.manoeuvre_mps2 * dt * dt
        w = 1.0 / (acc_h / 2.0 + grow) ** 2
        wv = 1.0 / (acc_v / 2.0 + grow) ** 2
        sw, swv = np.bincount(g, w, n), np.bincount(g, wv, n)
        lon0 = lon_x[starts]
        dlon = (lon_x - lon0[g] + 180.0) % 360.0 - 180.0
        lat_f = np.bincount(g, w * lat_x, n) / sw
        lon_f = (lon0 + np.bincount(g, w * dlon, n) / sw + 180.0) % 360.0 - 180.0
        alt_f = np.bincount(g, wv * alt_x, n) / swv
        w_vel, w_vs = w * has_v, wv * has_vs
        s_vel, s_vs = np.bincount(g, w_vel, n), np.bincount(g, w_vs, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            ve_f = np.bincount(g, w_vel * np.where(has_v, ve, 0.0), n) / s_vel
            vn_f = np.bincount(g, w_vel * np.where(has_v, vn, 0.0), n) / s_vel
            vs_f = np.bincount(g, w_vs * np.where(has_vs, vspeed, 0.0), n) / s_vs
        speed_f = np.hypot(ve_f, vn_f)
        track_f = np.degrees(np.arctan2(ve_f, vn_f)) % 360.0
        acc_h_f, acc_v_f = 2.0 / np.sqrt(sw), 2.0 / np.sqrt(swv)
        # agl_m follows the fused altitude from the newest report that has one.
        has_agl = ~np.isnan(agl)
        first_agl = np.minimum.reduceat(np.where(has_agl, np.arange(size), size), starts)
        got_agl = first_agl < size
        first_agl = np.where(got_agl, first_agl, starts)
        agl_f = agl[first_agl] + alt_f - alt_x[first_agl]
        firsts = used[starts].tolist()  # each aircraft's newest report, as indexes into `newest`
        # status: the most urgent one; without a ranked one, the newest report's.
        top = np.maximum.reduceat(newest.status_ranks()[used], starts)
        status = list(map(RANK_STATUS.__getitem__, top.tolist()))
        unranked = np.flatnonzero(top == 0).tolist()
        if unranked:
            first_status = newest.fields[OBSERVATION_INDEX["status"]]
            for k in unranked:
                status[k] = first_status[firsts[k]]
        moving = s_vel > 0
        # t, source and received_at are the newest report's own objects (no new floats).
        t_of, source, received_at = (newest.fields[OBSERVATION_INDEX[name]]
                                     for name in ("t", "source", "received_at"))
        states = _observations(zip(
            map(_UAVS, blended), map(t_of.__getitem__, firsts), lat_f.tolist(), lon_f.tolist(),
            alt_f.tolist(), _or_none(speed_f, moving), _or_none(track_f, moving),
            _or_none(vs_f, s_vs > 0), _or_none(agl_f, got_agl), status, acc_h_f.tolist(),
            acc_v_f.tolist(), map(source.__getitem__, firsts),
            map(received_at.__getitem__, firsts), strict=True,
        ))
        shared = map(self._used_tuples.__getitem__,
                     _groups(list(map(source.__getitem__, used.tolist())), starts, counts))
        for a, state, sources in zip(blended, states, shared, strict=True):
            a.state, a.used = state, sources
        return t_fused, lat_f, lon_f

    # -- reading ----------------------------------------------------------------------------

    def in_bbox(
        self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
    ) -> list[Aircraft]:
        """Aircraft whose fused position is inside the box (edges included), ordered by id."""
        self.refresh()
        n = self._next_slot
        lat, lon = self.lat[:n], self.lon[:n]
        mask = (self.present[:n] & (lon >= min_lon) & (lon <= max_lon) & (lat >= min_lat)
                & (lat <= max_lat))
        found = [self.by_slot[i] for i in np.flatnonzero(mask).tolist()]
        return sorted((a for a in found if a is not None), key=lambda a: a.uav)


def extrapolate(
    lat: F64, lon: F64, alt: F64, speed: F64, track: F64, vspeed: F64, dt: F64
) -> tuple[F64, F64, F64, F64, F64, Bool, Bool]:
    """Positions moved dt seconds at constant velocity (locally flat Earth; unknown velocity:
    not moved). Returns lat, lon, alt, east and north speed, and which rows had a velocity /
    a vertical speed."""
    rad = np.radians(track)
    ve, vn = speed * np.sin(rad), speed * np.cos(rad)
    has_v = np.isfinite(ve) & np.isfinite(vn)
    has_vs = np.isfinite(vspeed)
    ve0, vn0 = np.where(has_v, ve, 0.0), np.where(has_v, vn, 0.0)
    coslat = np.maximum(np.cos(np.radians(lat)), 1e-6)
    lat_x = lat + vn0 * dt / M_PER_DEG
    lon_x = lon + ve0 * dt / (M_PER_DEG * coslat)
    alt_x = alt + np.where(has_vs, vspeed, 0.0) * dt
    return lat_x, lon_x, alt_x, ve, vn, has_v, has_vs


def distance_m(lat1: F64, lon1: F64, lat2: F64, lon2: F64) -> F64:
    """Great-circle distance (haversine, spherical Earth)."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    h = (np.sin((phi2 - phi1) / 2) ** 2
         + np.cos(phi1) * np.cos(phi2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2)
    result: F64 = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
    return result


def _t_of(row: Observation) -> float:
    return row.t


class _Columns:
    """Reports with their fields as columns: one C-level transpose of them all; a numeric
    column becomes an array on first use."""

    __slots__ = ("_floats", "fields", "rows")

    def __init__(self, rows: list[Observation]) -> None:
        self.rows = rows
        self.fields: list[tuple[Any, ...]] = (
            list(zip(*rows, strict=True)) if rows else [()] * len(Observation._fields))
        self._floats: dict[str, F64] = {}

    def floats(self, name: str) -> F64:
        """A numeric field as a column (None: NaN)."""
        column = self._floats.get(name)
        if column is None:
            column = float_column(self.fields[OBSERVATION_INDEX[name]])
            self._floats[name] = column
        return column

    def status_ranks(self) -> I64:
        return int_column(map(STATUS_RANK.get, self.fields[OBSERVATION_INDEX["status"]], repeat(0)))


def _starts(counts: I64) -> I64:
    """Where each of consecutive runs of `counts[k]` items begins."""
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def _groups(items: list[str], starts: I64, counts: I64) -> Iterator[tuple[str, ...]]:
    """Consecutive runs of items as tuples: `counts[k]` of them from `starts[k]`, per k."""
    size = int(counts[0])
    if (counts == size).all():  # the usual case: as many per run (every run is `size` long)
        return zip(*(items[j::size] for j in range(size)), strict=True)
    ends = (starts + counts).tolist()
    return map(tuple, map(items.__getitem__, map(slice, starts.tolist(), ends)))


def _or_none(values: F64, keep: Bool) -> list[float | None]:
    """values as Python floats, None where not keep."""
    result: list[float | None]
    if keep.all():
        result = values.tolist()
    else:
        out = values.astype(object)
        out[~keep] = None
        result = out.tolist()
    return result


def _observations(fields: Iterable[tuple[Any, ...]]) -> list[Observation]:
    """Observations from tuples of all their fields, as `Observation._make` builds them but
    without a Python-level call per row."""
    return cast(list[Observation], list(map(tuple.__new__, repeat(Observation), fields)))


# `Aircraft.used` tuples are shared, one per combination of sources: a refresh then leaves no
# new objects behind but the blended states (less work for the garbage collector).
USED_TUPLES_LIMIT = 10_000


class _Interned(dict[tuple[str, ...], tuple[str, ...]]):
    """used -> the shared tuple equal to it (looked up with a C-level map)"""

    def __missing__(self, used: tuple[str, ...]) -> tuple[str, ...]:
        if len(self) > USED_TUPLES_LIMIT:
            self.clear()
        self[used] = used
        return used


class _OneSource(dict[str, tuple[str, ...]]):
    """source -> (source,)"""

    def __missing__(self, source: str) -> tuple[str, ...]:
        if len(self) > USED_TUPLES_LIMIT:
            self.clear()
        self[source] = used = (source,)
        return used


def _pick(items: Sequence[Aircraft], mask: Bool) -> list[Aircraft]:
    return list(map(items.__getitem__, np.flatnonzero(mask).tolist()))


def _newest_reports(aircraft: Iterable[Aircraft]) -> list[Observation]:
    """The newest report of each source of each aircraft, in order."""
    return list(map(_LAST, chain.from_iterable(map(dict.values, map(_SOURCES, aircraft)))))


def _partners(sources: Mapping[str, list[Observation]]) -> Partners:
    """Per source, the other sources under another source name, with their reports; the
    shared empty mapping when all carry one name."""
    names = {source: source_name(source) for source in sources}
    if len(set(names.values())) < 2:
        return NO_PARTNERS
    return {mine: tuple((source, reports) for source, reports in sources.items()
                        if names[source] != names[mine])
            for mine in sources}


def _insert_late(reports: list[Observation], row: Observation, limit: int) -> None:
    """Insert row by t (a repeated t from the same source keeps the first); keep the newest
    `limit`."""
    i = bisect.bisect_left(reports, row.t, key=_t_of)
    if i < len(reports) and reports[i].t == row.t:
        return
    reports.insert(i, row)
    if len(reports) > limit:
        del reports[0]


def nearest_report(reports: list[Observation], t: float) -> Observation | None:
    """The report of a t-sorted list nearest in time to t (of two equally near, the earlier)."""
    return nearest_of(reports, t) if reports else None


def nearest_of(reports: list[Observation], t: float) -> Observation:
    """`nearest_report` of a list that is not empty."""
    last = reports[-1]
    if t >= last.t:  # the usual cases first: t at or past the newest, or just before it
        return last
    if len(reports) > 1 and t >= (before := reports[-2]).t:
        return last if last.t - t < t - before.t else before
    i = bisect.bisect_left(reports, t, key=_t_of)  # < len(reports) - 1 here
    if i == 0:
        return reports[0]
    before, after = reports[i - 1], reports[i]
    return after if after.t - t < t - before.t else before


def fused_picture(
    registry: RegistryView, settings: Settings, seed: Iterable[Observation] = ()
) -> FusedPicture:
    """The server's picture, configured from settings, seeded (e.g. with the live picture)."""
    picture = FusedPicture(
        Identities(registry), window_s=settings.fusion_window_s,
        reports_per_source=settings.fusion_reports_per_source,
        default_acc_h_m=settings.fusion_default_acc_h_m,
        default_acc_v_m=settings.fusion_default_acc_v_m,
        manoeuvre_mps2=settings.fusion_manoeuvre_mps2,
    )
    picture.add(seed)
    picture.refresh()
    return picture


FUSED = web.AppKey("fused", FusedPicture)
