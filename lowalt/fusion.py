"""The fused picture: one state per aircraft, built from every source that reports it.

Identity: an observation keeps the identifier it was reported with (`uav`, stored unaltered).
`Identities` maps that identifier to a canonical aircraft through the registry: a registered
UAV's id is its own, each of its aliases (F3411 UAS ID / serial / session id, operator ids) maps
to it, and a 6-hex-digit alias (an ADS-B ICAO address) also matches "ICAO-<HEX>", the id the SBS
codec reports. Identifiers the registry does not know are aircraft of their own, unregistered.

Per aircraft and source (the observation's `source`, "<name>/<transport>/<format>"), a track,
the picture keeps the newest report, and its numbers in columns (`FusedPicture`); for an aircraft
heard under several source names (cross-checked, see geofence/fusion_stage.py) also a ring of the
newest `reports_per_source`. Older reports are read from storage (GET /v1/flights' recent
positions), so a live aircraft costs one report of memory per source, not a history. The fused
state (docs/ARCHITECTURE.md, "Fusion") takes the newest report of each source heard within
`window_s` of the newest report of all (time T), extrapolates each to T at its own velocity,
and averages them weighted by inverse variance, where a report's standard deviation is half its
95 % accuracy (a default when absent) plus a * age^2 / 2 for unmodelled manoeuvre: a source that
stops fades out smoothly as it ages.

Fusion is lazy: `add` (every committed batch) only files reports; `refresh` (each reader, before
it reads: the feed's flush, the monitor's tick, the API) fuses the aircraft that changed since.
A refresh writes columns only: the fused state of an aircraft heard by one source is its newest
report (a reference), a blend's fields go to a row of numbers; no state object is made until
one is read. Readers: `aircraft` (canonical id -> `Aircraft`, whose `state` is an Observation
with the canonical id, made on demand), `states_of` (many at once), `airborne` and `heard` (the
monitor's columns), and per-slot column arrays (`lat`, `lon`, `heard_t`, `version`, `epoch`,
`owner`, `present`, `ids`) that the traffic feed filters with numpy. Each aircraft holds one
slot while it exists; `epoch` changes when a slot is given to another aircraft, `version` on
every fused update.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, ne
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from aiohttp import web

from lowalt.gcpolicy import collector_paused
from lowalt.models import (
    OBSERVATION_INDEX,
    Observation,
    Rows,
    crewed_source,
    floats_of,
    int_column,
    values_of,
)
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
    """One aircraft of the fused picture. What it was heard saying is kept by the picture, per
    source (`FusedPicture.by_source`, the track columns); its fused state in the
    picture's columns, read as an Observation (`state`) on demand."""

    uav: str  # canonical id
    slot: int  # its slot in the picture's columns; also the track of its first source
    registered: bool
    operator: str | None
    picture: FusedPicture = field(repr=False)
    # Heard by several sources: the slots of their tracks, its own slot first; else ().
    tracks: tuple[int, ...] = ()
    several_names: bool = False  # heard under more than one source name: cross-checked

    @property
    def state(self) -> Observation | None:
        """The fused state (reading it refreshes the picture first): uav = the canonical id,
        t, source and received_at = the newest blended report's."""
        return self.picture.state_of(self.slot)

    @property
    def used(self) -> tuple[str, ...]:
        """The sources blended into `state`, newest first."""
        return self.picture.used_of(self.slot)

    @property
    def kind(self) -> str:
        """"crewed" for an unregistered aircraft heard by ADS-B (SBS), else "uav"."""
        return _kind(self.registered, self.state)

    def as_json(self) -> dict[str, Any]:
        """The traffic feed's state message (API.md section 7, docs/API.md)."""
        s = self.state
        assert s is not None
        return {
            "uav": self.uav, "t": s.t, "lat": round(s.lat, 7), "lon": round(s.lon, 7),
            "alt_m": round(s.alt_m, 2), "agl_m": _round(s.agl_m),
            "speed_mps": _round(s.speed_mps), "track_deg": _round(s.track_deg),
            "vspeed_mps": _round(s.vspeed_mps), "kind": _kind(self.registered, s),
            "sources": list(self.used), "status": s.status, "registered": self.registered,
            "acc_h_m": _round(s.acc_h_m, 1), "acc_v_m": _round(s.acc_v_m, 1),
        }


def _kind(registered: bool, state: Observation | None) -> str:
    return "crewed" if not registered and state is not None and state.crewed else "uav"


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


@dataclass(slots=True, frozen=True)
class Filed:
    """What `FusedPicture.add` filed of one batch for the cross-check: the batch's rows of
    aircraft heard under several source names (an object column), with their times, their
    history rings and their report numbers."""

    rows: Obj
    t: F64
    ring: I64
    number: I64
    compared: F64  # per row, the fields the cross-check compares (`COMPARED`)

    def __len__(self) -> int:
        return len(self.rows)


_NONE = np.zeros(0, dtype=np.int64)
Pair = tuple[str, Observation, Observation]  # canonical id, a report, another source's report


@dataclass(slots=True, frozen=True)
class Pairs:
    """Pairs of reports of one aircraft by two of its source names (`FusedPicture.pairs`), in
    columns: per pair the aircraft's canonical id and each report's compared fields (`COMPARED`:
    `a` of the filed report, `b` of the kept one); the reports themselves on demand (`pair`),
    so a check reads no report object unless it must tell about it."""

    uavs: list[str]
    a: F64
    b: F64
    _rows: Obj  # per pair, the filed report
    _kept: Obj
    _kept_index: list[int]

    def __len__(self) -> int:
        return len(self.uavs)

    def pair(self, k: int) -> Pair:
        kept = self._kept[self._kept_index[k]]
        assert kept is not None  # entries in pairs are reports
        row: Observation = self._rows[k]
        return self.uavs[k], row, kept

    def __iter__(self) -> Iterator[Pair]:
        return map(self.pair, range(len(self)))


# The columns of a track's newest report, in Observation's field order (status excepted; its
# rank is the last column).
_F = ("t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps", "agl_m", "acc_h_m",
      "acc_v_m")
F_T, F_LAT, F_LON, F_ALT, F_SPEED, F_TRACK, F_VSPEED, F_AGL, F_ACC_H, F_ACC_V, F_RANK = range(11)
_T = OBSERVATION_INDEX["t"]
# The columns of a blended state beside lat and lon (`FusedPicture._st_f`).
_ST = ("alt_m", "speed_mps", "track_deg", "vspeed_mps", "agl_m", "acc_h_m", "acc_v_m", "rank")
_ST_INDEX = np.arange(len(_ST))
_SLOT, _UAV_OF, _CREWED_OF = attrgetter("slot"), attrgetter("uav"), attrgetter("crewed")
_T_OF, _SOURCE_OF = attrgetter("t"), attrgetter("source")
_RECEIVED_OF = attrgetter("received_at")
_KEY_SOURCES, _KEY_BITS = 3, 20  # `_used_sources`: source combinations as one integer
_TRACK_KEY = 1 << 24  # (aircraft slot, source code) -> one int: slot * _TRACK_KEY + code
# What the cross-check compares of two reports, as columns of `Pairs.a` / `Pairs.b`; the
# history rings keep them (t apart) beside each kept report.
COMPARED = ("t", "lat", "lon", "speed_mps", "track_deg", "acc_h_m")
_COMPARED_F = np.array([F_T, F_LAT, F_LON, F_SPEED, F_TRACK, F_ACC_H])
_NO_ROWS: Obj = np.zeros(0, dtype=object)
NOTHING_FILED = Filed(_NO_ROWS, np.zeros(0), _NONE, _NONE, np.zeros((0, len(COMPARED))))
NO_PAIRS = Pairs([], np.zeros((0, len(COMPARED))), np.zeros((0, len(COMPARED))), _NO_ROWS,
                 _NO_ROWS, [])


@dataclass(slots=True, frozen=True)
class StateColumns:
    """States of many aircraft as columns (unknown values NaN), for readers that compute over
    all of them: `FusedPicture.airborne`, or `from_rows`."""

    uavs: list[str]
    t: F64
    lat: F64
    lon: F64
    alt_m: F64
    speed_mps: F64
    track_deg: F64
    vspeed_mps: F64
    crewed: Bool
    slots: I64  # the picture's slots (from_rows: row positions)

    def __len__(self) -> int:
        return len(self.uavs)

    @classmethod
    def from_rows(cls, rows: Sequence[Observation]) -> StateColumns:
        t, lat, lon, alt_m, speed_mps, track_deg, vspeed_mps = (floats_of(rows, name) for name in (
            "t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps"))
        return cls(list(map(_UAV_OF, rows)), t, lat, lon, alt_m, speed_mps, track_deg,
                   vspeed_mps, np.fromiter(map(_CREWED_OF, rows), np.bool_, len(rows)),
                   np.arange(len(rows)))

    def take(self, idx: I64) -> StateColumns:
        return StateColumns(
            list(map(self.uavs.__getitem__, idx.tolist())), self.t[idx], self.lat[idx],
            self.lon[idx], self.alt_m[idx], self.speed_mps[idx], self.track_deg[idx],
            self.vspeed_mps[idx], self.crewed[idx], self.slots[idx],
        )


class FusedPicture:
    """The fused picture (module docstring), held in columns.

    Every (aircraft, source) is a track. Tracks live in slots, as aircraft do: an aircraft's
    own slot is the track of the first source that reported it, and each further source takes
    a slot of its own (not `present`, so no reader sees it). Per slot: the track's owner and
    source, its newest report (the object, and its numeric fields as one row of `_tk_f`, so a
    refresh reads no report again), and, for an aircraft heard under several source names, a
    ring of its newest `reports_per_source` reports (times, report numbers, objects) that the
    cross-check searches. Filing a batch is vectorised: one pass to find each row's track,
    numpy for the newest per track and the ring updates; only a new aircraft or a new source
    of one runs Python per row."""

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
        self._used_tuples, self._used_one = _Interned(), _OneSource()
        self._version = 0
        self._free: list[int] = []
        self._next_slot = 0
        self._operator_codes: dict[str, int] = {}
        self._sources: list[str] = []  # source code -> source
        self._source_codes: dict[str, int] = {}
        self._name_of: list[int] = []  # source code -> source-name code
        self._name_codes: dict[str, int] = {}
        self._crewed: Bool = np.zeros(0, dtype=bool)  # source code -> ADS-B (crewed) source
        self._limits: tuple[Callable[[str], float], F64] | None = None  # `heard`'s, cached
        # Tracks of aircraft with several, by slot * _TRACK_KEY + source code.
        self._track_of: dict[int, int] = {}
        # Alias -> its aircraft, once heard; emptied when an aircraft is removed or the registry
        # changes, so it never names an aircraft that is gone.
        self._heard_as: dict[str, Aircraft] = {}
        # Per source, reported id -> its track, once filed: one lookup per row finds it (a
        # table per source, so no key object per entry). Entries of removed aircraft go with
        # them; all go when the registry changes.
        self._track_by: defaultdict[str, dict[str, int]] = defaultdict(dict)
        self._any_dirty = False
        self._report_number = 0
        self.capacity = 0
        # Per slot, the aircraft's view (readers filter these with numpy):
        self.lat: F64 = np.zeros(0)
        self.lon: F64 = np.zeros(0)
        self.heard_t: F64 = np.zeros(0)  # t of the fused state (newest report of any source)
        self.version: I64 = np.zeros(0, dtype=np.int64)
        self.epoch: I64 = np.zeros(0, dtype=np.int64)
        self.owner: I64 = np.zeros(0, dtype=np.int64)  # operator code, -1 unregistered
        self.present: Bool = np.zeros(0, dtype=bool)
        self.ids: Obj = np.zeros(0, dtype=object)
        self.by_slot: list[Aircraft | None] = []
        # ... and the track's (module docstring):
        self._tk_owner = np.zeros(0, dtype=np.int32)  # the aircraft's slot, -1 free
        self._tk_code = np.zeros(0, dtype=np.int32)  # source code, -1 free
        self._tk_ring = np.zeros(0, dtype=np.int32)  # history ring, -1 none
        self._tk_f: F64 = np.zeros((0, len(_F) + 1))  # newest report's fields, t -inf: none
        self._tk_row: Obj = np.zeros(0, dtype=object)  # newest report, None: none
        self._ntracks = np.zeros(0, dtype=np.int32)  # per aircraft slot
        self._dirty: Bool = np.zeros(0, dtype=bool)  # per aircraft slot: to fuse at refresh
        self._tk_one: Obj = np.zeros(0, dtype=object)  # (its source,): `used` of it alone
        # ... and the aircraft's fused state (`state_of`): the track whose newest report is
        # the state, or for a blend the track of the newest blended report (-1: none yet);
        # whether blended, and then its fields (`_ST`, NaN for None); the sources used.
        self._st_track = np.zeros(0, dtype=np.int32)
        self._st_blend: Bool = np.zeros(0, dtype=bool)
        self._st_f: F64 = np.zeros((0, len(_ST)))
        self._st_used: Obj = np.zeros(0, dtype=object)
        # History rings: per ring, reports_per_source entries (t -inf: empty), and per ring
        # the rings of the same aircraft under other source names (-1 padded).
        self._ring_t: F64 = np.zeros((0, reports_per_source))
        self._ring_no: I64 = np.zeros((0, reports_per_source), dtype=np.int64)
        self._ring_f: F64 = np.zeros((0, reports_per_source, len(COMPARED) - 1))  # t apart
        self._ring_rows: Obj = np.zeros(0, dtype=object)
        self._ring_partners: I64 = np.zeros((0, 1), dtype=np.int64)
        self._ring_track: I64 = np.zeros(0, dtype=np.int64)
        self._ring_free: list[int] = []
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

    # -- reading an aircraft's reports ---------------------------------------------------------

    def tracks_of(self, a: Aircraft) -> tuple[int, ...]:
        return a.tracks or (a.slot,)

    def by_source(self, a: Aircraft) -> dict[str, list[Observation]]:
        """Per source, the reports kept (t-sorted): the history ring of an aircraft heard under
        several source names, else the newest report."""
        out: dict[str, list[Observation]] = {}
        for k in self.tracks_of(a):
            h = int(self._tk_ring[k])
            if h >= 0:
                order = np.argsort(self._ring_t[h], kind="stable")
                ring = self._ring_rows[h * self.reports_per_source:
                                       (h + 1) * self.reports_per_source]
                reports = [r for r in ring[order].tolist() if r is not None]
            else:
                row = self._tk_row[k]
                reports = [] if row is None else [row]
            if reports:
                out[self._sources[self._tk_code[k]]] = reports
        return out

    # -- writing ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Follow registry changes: ownership, and aircraft whose id became an alias."""
        if self.identities.sync():
            self._rekey()

    def add(self, rows: Iterable[Observation]) -> Filed:
        """Take committed rows (any order). The fused states of the aircraft whose newest
        report changed are computed at the next `refresh`. Returns what the cross-check reads
        (`pairs`): the rows of aircraft heard under more than one source name."""
        self.sync()
        if not isinstance(rows, list | tuple):
            rows = list(rows)
        if not rows:
            return NOTHING_FILED
        return self._file(rows)

    def _file(self, rows: Sequence[Observation]) -> Filed:
        n = len(rows)
        if type(rows) is not Rows:  # transposed once: cheaper than a pass per column
            rows = Rows(rows)
        k = self._track_ids(values_of(rows, "uav"), values_of(rows, "source"))
        t = floats_of(rows, "t")
        number = np.arange(self._report_number, self._report_number + n, dtype=np.int64)
        self._report_number += n
        objects = np.fromiter(rows, object, n)
        # The newest row of each track in the batch (the first of equal t), if newer than the
        # track's: its new newest report.
        k_sorted = np.sort(k)
        if (k_sorted[1:] == k_sorted[:-1]).any():  # a track more than once in the batch
            order = np.lexsort((-np.arange(n), t, k))
            k_sorted = k[order]
            last = np.ones(n, dtype=bool)
            np.not_equal(k_sorted[1:], k_sorted[:-1], out=last[:-1])
            newest = order[last]
        else:
            newest = np.arange(n)
        newer = newest[t[newest] > self._tk_f[k[newest], F_T]]
        block = np.empty((n, len(_F) + 1))
        block[:, F_T] = t
        for column, name in enumerate(_F[1:], 1):
            block[:, column] = floats_of(rows, name)
        if newer.size:
            kn = k[newer]
            block[:, F_RANK] = int_column(map(STATUS_RANK.get, values_of(rows, "status"),
                                              repeat(0)))
            self._tk_f[kn] = block[newer]
            self._tk_row[kn] = objects[newer]
            self._dirty[self._tk_owner[kn]] = True
            self._any_dirty = True
        ring = self._tk_ring[k]
        in_rings = np.flatnonzero(ring >= 0)
        if not in_rings.size:
            return NOTHING_FILED
        filed = Filed(objects[in_rings], t[in_rings], ring[in_rings].astype(np.int64),
                      number[in_rings], block[np.ix_(in_rings, _COMPARED_F)])
        self._into_rings(filed)
        return filed

    def _track_ids(self, uavs: Sequence[str], sources: Sequence[str]) -> I64:
        """Each row's track (slot), given its reported id and source: one C-level lookup per
        row by (id, source); the pairs not filed before go the longer way (`_find_tracks`)."""
        tables = map(self._track_by.__getitem__, sources)
        k = int_column(map(dict.get, tables, uavs, repeat(-1)))
        miss = np.flatnonzero(k < 0)
        if miss.size:
            at = miss.tolist()
            missed_uavs = list(map(uavs.__getitem__, at))
            missed_sources = list(map(sources.__getitem__, at))
            k[miss] = self._find_tracks(missed_uavs, missed_sources)
            for uav, source, track in zip(missed_uavs, missed_sources, k[miss].tolist(),
                                          strict=True):
                self._track_by[source][uav] = track
        return k

    def _find_tracks(self, uavs: Sequence[str], sources: Sequence[str]) -> I64:
        """Each row's track, given its reported id and source; creates the aircraft and tracks
        not seen before. A C-level lookup per row by the reported id; an alias goes on to
        `_heard_as` (the aircraft of aliases heard before) or the registry."""
        slots = int_column(map(getattr, map(self.aircraft.get, uavs), repeat("slot"),
                               repeat(-1)))
        unseen = np.flatnonzero(slots < 0)
        if unseen.size:  # aliases (or new aircraft)
            aliases = map(self._heard_as.get, map(uavs.__getitem__, unseen.tolist()))
            slots[unseen] = int_column(map(getattr, aliases, repeat("slot"), repeat(-1)))
        code = int_column(map(self._source_codes.get, sources, repeat(-1)))
        unknown = np.flatnonzero((slots < 0) | (code < 0))
        if unknown.size:
            self._resolve(uavs, sources, unknown.tolist(), slots, code)
        k = slots.copy()
        other = np.flatnonzero(self._tk_code[slots] != code)  # not the first source's track
        if other.size:
            keys = (slots[other] * _TRACK_KEY + code[other]).tolist()
            tracks: list[int | None] = list(map(self._track_of.get, keys))
            if None in tracks:
                for j, track in enumerate(tracks):
                    if track is None:
                        i = int(other[j])
                        a = self.by_slot[int(slots[i])]
                        assert a is not None
                        tracks[j] = self._track_of.get(keys[j]) or self._new_track(a, int(code[i]))
            k[other] = cast(list[int], tracks)
        return k

    def _resolve(self, uavs: Sequence[str], sources: Sequence[str], rows: list[int],
                 slots: I64, code: I64) -> None:
        """Slots and source codes (in place) of the rows not found at once: a new source, an
        alias, a new aircraft."""
        canonical_of, aircraft, heard_as = (self.identities.canonical_of, self.aircraft,
                                            self._heard_as)
        for i in rows:
            source_code = int(code[i])
            if source_code < 0:
                code[i] = source_code = self._source_code(sources[i])
            if slots[i] >= 0:
                continue
            uav = uavs[i]
            a = heard_as.get(uav)  # an alias heard earlier in this batch
            if a is None:
                canonical = canonical_of.get(uav, uav)
                a = aircraft.get(canonical) or self._new(canonical, source_code)
                if canonical != uav:
                    heard_as[uav] = a
            slots[i] = a.slot

    def _into_rings(self, filed: Filed) -> None:
        """File rows into their history rings: each ring keeps its newest `reports_per_source`
        reports by t (of equal t, the one filed first), in no order. A row takes an empty
        entry or the oldest one if it is newer; rows of one ring are taken in batch order, one
        round per row, vectorised over the rings."""
        ring = filed.ring
        order = np.argsort(ring, kind="stable")
        sorted_ring = ring[order]
        again = sorted_ring[1:] == sorted_ring[:-1]
        if again.any():  # a ring takes several rows: one round per row, in batch order
            first = np.ones(len(order), dtype=bool)
            first[1:] = ~again
            starts = np.flatnonzero(first)
            rank = np.empty(len(order), dtype=np.int64)  # the row's place among its ring's
            rank[order] = np.arange(len(order)) - np.repeat(starts, np.diff(starts, append=len(
                order)))
            rounds = [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)]
        else:  # the usual case: each ring takes one row
            rounds = [np.arange(len(order))]
        size = self.reports_per_source
        kept = self._ring_rows
        for now in rounds:
            h, t = ring[now], filed.t[now]
            ring_t = self._ring_t[h]
            oldest = ring_t.argmin(axis=1)
            goes = (t > ring_t[np.arange(len(h)), oldest]) & ~(ring_t == t[:, None]).any(axis=1)
            h, oldest, now = h[goes], oldest[goes], now[goes]
            self._ring_t[h, oldest] = filed.t[now]
            self._ring_no[h, oldest] = filed.number[now]
            self._ring_f[h, oldest] = filed.compared[now, 1:]
            kept[h * size + oldest] = filed.rows[now]

    def pairs(self, filed: Filed, max_dt_s: float) -> Pairs:
        """Each filed row with the nearest-in-time kept report of every other source name of
        its aircraft (of two equally near, the earlier) when less than max_dt_s apart; each
        pair once, in columns."""
        if not len(filed):
            return NO_PAIRS
        partners = self._ring_partners[filed.ring]
        row, column = np.nonzero(partners >= 0)
        other = partners[row, column]
        t = filed.t[row]
        ring_t = self._ring_t[other]
        d = np.abs(ring_t - t[:, None])
        nearest = np.where(d == d.min(axis=1)[:, None], ring_t, np.inf).argmin(axis=1)
        q = np.arange(len(other))
        other_t = ring_t[q, nearest]
        close = np.abs(other_t - t) < max_dt_s
        row, other, nearest = row[close], other[close], nearest[close]
        mine, theirs = filed.number[row], self._ring_no[other, nearest]
        lo, hi = np.minimum(mine, theirs), np.maximum(mine, theirs)
        order = np.lexsort((np.arange(len(lo)), hi, lo))
        once = np.ones(len(order), dtype=bool)
        once[1:] = (lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])
        picked = np.sort(order[once])
        row, other, nearest = row[picked], other[picked], nearest[picked]
        owners = self._tk_owner[self._ring_track[other]]
        b = np.empty((len(row), len(COMPARED)))
        b[:, 0] = self._ring_t[other, nearest]
        b[:, 1:] = self._ring_f[other, nearest]
        return Pairs(self.ids[owners].tolist(), filed.compared[row], b, filed.rows[row],
                     self._ring_rows,
                     (other * self.reports_per_source + nearest).tolist())

    def refresh(self) -> I64:
        """Fuse the aircraft with new reports since the last refresh; return their slots.
        Every read of states does it first (the feed's flush, the monitor's tick, `state`): the
        cost is paid once per read, not per report."""
        if not self._any_dirty:
            return _NONE
        self._any_dirty = False
        dirty = np.flatnonzero(self._dirty[:self._next_slot])
        self._dirty[dirty] = False
        with collector_paused():
            return self._refresh(dirty)

    def forget_silent(self, before_t: float) -> int:
        """Drop aircraft whose newest report is older than before_t; return how many."""
        n = self._next_slot
        old = list(map(self.by_slot.__getitem__, np.flatnonzero(
            self.present[:n] & (self.heard_t[:n] < before_t) & (self.heard_t[:n] > -np.inf)
        ).tolist()))
        for a in old:
            assert a is not None
            self._remove(a)
        if old:
            self._heard_as.clear()
            owner = self._tk_owner
            for source, tracks in list(self._track_by.items()):
                kept = {uav: k for uav, k in tracks.items() if owner[k] >= 0}
                if kept:
                    self._track_by[source] = kept
                else:
                    del self._track_by[source]
        return len(old)

    def _source_code(self, source: str) -> int:
        code = self._source_codes.get(source)
        if code is None:
            code = self._source_codes[source] = len(self._sources)
            self._sources.append(source)
            self._crewed = np.append(self._crewed, crewed_source(source))
            name = source_name(source)
            self._name_of.append(self._name_codes.setdefault(name, len(self._name_codes)))
        return code

    def _slot(self) -> int:
        if self._free:
            return self._free.pop()
        slot = self._next_slot
        self._next_slot += 1
        if slot >= self.capacity:  # by a quarter: ~300 B a slot, an entry of every live UAV
            self._grow(self.capacity + max(self.capacity // 4, 1024))
        return slot

    def _new(self, uav: str, code: int) -> Aircraft:
        slot = self._slot()
        operator = self.identities.operator_of.get(uav)
        a = Aircraft(uav, slot, operator is not None, operator, self)
        self._st_track[slot] = -1  # no state until its first refresh
        self._st_used[slot] = None
        self.aircraft[uav] = a
        self.by_slot[slot] = a
        self.epoch[slot] += 1
        self.present[slot] = True
        self.heard_t[slot] = -np.inf  # not in any view until its first refresh
        self.ids[slot] = uav
        self.owner[slot] = self._code(operator)
        self._open_track(slot, slot, code)
        self._ntracks[slot] = 1
        return a

    def _open_track(self, slot: int, owner: int, code: int) -> None:
        self._tk_owner[slot], self._tk_code[slot], self._tk_ring[slot] = owner, code, -1
        self._tk_f[slot, F_T] = -np.inf
        self._tk_row[slot] = None
        self._tk_one[slot] = self._used_one[self._sources[code]]

    def _new_track(self, a: Aircraft, code: int) -> int:
        """A further source of the aircraft: a track in a slot of its own."""
        tracks = self.tracks_of(a)
        if len(tracks) == 1:
            self._track_of[a.slot * _TRACK_KEY + int(self._tk_code[a.slot])] = a.slot
        slot = self._slot()
        self._open_track(slot, a.slot, code)
        self._track_of[a.slot * _TRACK_KEY + code] = slot
        a.tracks = (*tracks, slot)
        self._ntracks[a.slot] = len(a.tracks)
        names = {self._name_of[c] for c in self._tk_code[list(a.tracks)].tolist()}
        if len(names) > 1:
            self._open_rings(a)
        return slot

    def _open_rings(self, a: Aircraft) -> None:
        """The aircraft is heard under several source names: a history ring for each of its
        tracks (seeded with the newest report), and each ring's partners."""
        a.several_names = True
        size = self.reports_per_source
        for k in a.tracks:
            if self._tk_ring[k] >= 0:
                continue
            h = self._ring_free.pop() if self._ring_free else self._grow_rings()
            self._tk_ring[k] = h
            self._ring_track[h] = k
            self._ring_t[h] = -np.inf
            self._ring_no[h] = -1
            row = self._tk_row[k]
            if row is not None:
                self._ring_t[h, -1] = row.t
                self._ring_no[h, -1] = self._report_number
                self._ring_f[h, -1] = self._tk_f[k, _COMPARED_F[1:]]
                self._report_number += 1
                self._ring_rows[h * size + size - 1] = row
        rings = [(int(self._tk_ring[k]), self._name_of[int(self._tk_code[k])]) for k in a.tracks]
        width = len(rings) - 1
        if width > self._ring_partners.shape[1]:
            extra = np.full((len(self._ring_partners), width - self._ring_partners.shape[1]), -1,
                            dtype=np.int64)
            self._ring_partners = np.concatenate([self._ring_partners, extra], axis=1)
        for h, name in rings:
            others = [g for g, other in rings if other != name]
            self._ring_partners[h] = -1
            self._ring_partners[h, :len(others)] = others

    def _grow_rings(self) -> int:
        h = len(self._ring_track)
        grown = max(64, 2 * h)
        size = self.reports_per_source
        self._ring_t = np.concatenate([self._ring_t, np.full((grown - h, size), -np.inf)])
        self._ring_no = np.concatenate(
            [self._ring_no, np.full((grown - h, size), -1, dtype=np.int64)])
        self._ring_f = np.concatenate(
            [self._ring_f, np.zeros((grown - h, size, self._ring_f.shape[2]))])
        self._ring_partners = np.concatenate(
            [self._ring_partners,
             np.full((grown - h, self._ring_partners.shape[1]), -1, dtype=np.int64)])
        self._ring_track = np.concatenate(
            [self._ring_track, np.full(grown - h, -1, dtype=np.int64)])
        self._ring_rows = np.concatenate(
            [self._ring_rows, np.full((grown - h) * size, None, dtype=object)])
        self._ring_free.extend(range(grown - 1, h, -1))
        return h

    def _remove(self, a: Aircraft) -> None:
        del self.aircraft[a.uav]
        size = self.reports_per_source
        for k in self.tracks_of(a):
            self._track_of.pop(a.slot * _TRACK_KEY + int(self._tk_code[k]), None)
            h = int(self._tk_ring[k])
            if h >= 0:
                self._ring_rows[h * size:(h + 1) * size] = None
                self._ring_t[h] = -np.inf
                self._ring_partners[h] = -1
                self._ring_track[h] = -1
                self._ring_free.append(h)
            self._tk_owner[k] = self._tk_code[k] = self._tk_ring[k] = -1
            self._tk_row[k] = None
            self._dirty[k] = False
            if k != a.slot:
                self._free.append(k)
        self._ntracks[a.slot] = 0
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
        self._tk_owner = np.concatenate([self._tk_owner, np.full(extra, -1, dtype=np.int32)])
        self._tk_code = np.concatenate([self._tk_code, np.full(extra, -1, dtype=np.int32)])
        self._tk_ring = np.concatenate([self._tk_ring, np.full(extra, -1, dtype=np.int32)])
        self._tk_f = np.concatenate([self._tk_f, np.full((extra, len(_F) + 1), -np.inf)])
        self._tk_row = np.concatenate([self._tk_row, np.full(extra, None, dtype=object)])
        self._ntracks = np.concatenate([self._ntracks, np.zeros(extra, dtype=np.int32)])
        self._dirty = np.concatenate([self._dirty, np.zeros(extra, dtype=bool)])
        self._tk_one = np.concatenate([self._tk_one, np.full(extra, None, dtype=object)])
        self._st_track = np.concatenate([self._st_track, np.full(extra, -1, dtype=np.int32)])
        self._st_blend = np.concatenate([self._st_blend, np.zeros(extra, dtype=bool)])
        self._st_f = np.concatenate([self._st_f, np.full((extra, len(_ST)), np.nan)])
        self._st_used = np.concatenate([self._st_used, np.full(extra, None, dtype=object)])
        self.capacity = capacity

    def _rekey(self) -> None:
        """The registry changed: update ownership, and merge aircraft whose id became an alias
        (their kept reports are filed again under the canonical id)."""
        resolve, operator_of = self.identities.resolve, self.identities.operator_of
        refile: list[Observation] = []
        self._heard_as.clear()
        self._track_by.clear()
        for uav, a in list(self.aircraft.items()):
            if resolve(uav) != uav:
                refile += chain.from_iterable(self.by_source(a).values())
                self._remove(a)
                continue
            operator = operator_of.get(uav)
            if operator != a.operator:
                a.operator, a.registered = operator, operator is not None
                self.owner[a.slot] = self._code(operator)
                self._dirty[a.slot] = self._any_dirty = True  # a new version for the feeds
        if refile:
            refile.sort(key=itemgetter(_T))
            self._file(refile)

    # -- fusion -----------------------------------------------------------------------------

    def _refresh(self, dirty: I64) -> I64:
        """Fuse the aircraft in slots `dirty`. An aircraft with one source in the window takes
        that source's newest report as it is; the others are blended together, vectorised
        over all of them. Returns `dirty`."""
        several = self._ntracks[dirty] > 1
        single_owner, single_track = dirty[~several], dirty[~several]
        n_blend = 0
        if several.any():
            owners = dirty[several]
            n = self._next_slot
            mark = np.zeros(n + 1, dtype=bool)  # the last: free tracks' owner -1
            mark[owners] = True
            tracks = np.flatnonzero(mark[self._tk_owner[:n]])
            tracks = tracks[np.argsort(self._tk_owner[tracks], kind="stable")]
            counts = np.bincount(self._tk_owner[tracks], minlength=n)[owners].astype(np.int64)
            used, used_counts = self._used(self._tk_f[tracks, F_T], counts)
            used = tracks[used]
            one = used_counts == 1  # the other sources are past the window
            if one.any():
                in_one = np.repeat(one, used_counts)
                single_owner = np.concatenate([single_owner, owners[one]])
                single_track = np.concatenate([single_track, used[in_one]])
                used, used_counts, owners = used[~in_one], used_counts[~one], owners[~one]
            if owners.size:
                n_blend = owners.size
                blend = self._blend(owners, used, used_counts)
        n_single = len(single_owner)
        first = self._version + 1
        self._version += n_single + n_blend
        if n_single:
            self._st_track[single_owner] = single_track
            self._st_blend[single_owner] = False
            self._st_used[single_owner] = self._tk_one[single_track]
            f = self._tk_f[single_track]
            self.lat[single_owner] = f[:, F_LAT]
            self.lon[single_owner] = f[:, F_LON]
            self.heard_t[single_owner] = f[:, F_T]
            self.version[single_owner] = np.arange(first, first + n_single, dtype=np.int64)
        if n_blend:
            slots = owners
            self.heard_t[slots], self.lat[slots], self.lon[slots] = blend
            self.version[slots] = np.arange(first + n_single, self._version + 1, dtype=np.int64)
        return dirty

    # -- reading the fused state ------------------------------------------------------------

    def state_of(self, slot: int) -> Observation | None:
        """The fused state of the aircraft in `slot` (`Aircraft.state`), made from the columns
        (refreshed first)."""
        if self._any_dirty:
            self.refresh()
        k = int(self._st_track[slot])
        if k < 0:
            return None
        row: Observation = self._tk_row[k]
        uav = self.ids[slot]
        if not self._st_blend[slot]:
            return row if row.uav == uav else row._replace(uav=uav)
        alt, speed, track, vspeed, agl, acc_h, acc_v, rank = self._st_f[slot].tolist()
        return Observation(
            uav, row.t, float(self.lat[slot]), float(self.lon[slot]), alt, _none_if_nan(speed),
            _none_if_nan(track), _none_if_nan(vspeed), _none_if_nan(agl),
            RANK_STATUS[int(rank)] or row.status, acc_h, acc_v, row.source, row.received_at,
        )

    def states_of(self, aircraft: Sequence[Aircraft]) -> list[Observation | None]:
        """The fused states of many aircraft at once (each as `Aircraft.state`), built in bulk:
        what a reader of every aircraft (the monitor's tick) takes instead of `state` one by
        one."""
        self.refresh()
        slots = int_column(map(_SLOT, aircraft))
        tracks = self._st_track[slots]
        states: list[Observation | None] = self._tk_row[tracks].tolist()
        for k in np.flatnonzero(tracks < 0).tolist():  # no state yet (-1 picked the last)
            states[k] = None
        blend = np.flatnonzero(self._st_blend[slots])
        if blend.size:
            at = slots[blend]
            newest = cast(list[Observation], list(map(states.__getitem__, blend.tolist())))
            alt, speed, track, vspeed, agl, acc_h, acc_v, rank = self._st_f[at].T
            status = [RANK_STATUS[r] or row.status
                      for r, row in zip(rank.astype(np.int64).tolist(), newest, strict=True)]
            made = map(tuple.__new__, repeat(Observation), zip(
                self.ids[at].tolist(), map(_T_OF, newest), self.lat[at].tolist(),
                self.lon[at].tolist(), alt.tolist(), _nan_none(speed), _nan_none(track),
                _nan_none(vspeed), _nan_none(agl), status, acc_h.tolist(), acc_v.tolist(),
                map(_SOURCE_OF, newest), map(_RECEIVED_OF, newest), strict=True))
            deque(map(states.__setitem__, blend.tolist(), made), 0)
        # A state reported under an alias carries the canonical id.
        ids = self.ids[slots].tolist()
        uavs = map(getattr, states, repeat("uav"), repeat(None))
        for k in compress(range(len(states)), map(ne, uavs, ids)):
            state = states[k]
            if state is not None:
                states[k] = state._replace(uav=ids[k])
        return states

    def airborne(self) -> StateColumns:
        """The fused states (after a refresh) of every aircraft not on the ground, as columns
        (the monitor's tick reads these, and no state object)."""
        self.refresh()
        n = self._next_slot
        slots = np.flatnonzero(self.present[:n] & (self._st_track[:n] >= 0))
        track = self._st_track[slots]
        blend = self._st_blend[slots][:, None]
        own = self._tk_f[track]  # a single source's state is its newest report
        mixed = self._st_f[slots]
        alt, speed, course, vspeed = np.where(
            blend, mixed[:, _ST_INDEX[:4]], own[:, [F_ALT, F_SPEED, F_TRACK, F_VSPEED]]).T
        rank = np.where(blend[:, 0], mixed[:, _ST.index("rank")], own[:, F_RANK])
        up = np.flatnonzero(rank != STATUS_RANK["ground"])
        slots = slots[up]
        return StateColumns(
            self.ids[slots].tolist(), self.heard_t[slots], self.lat[slots], self.lon[slots],
            alt[up], speed[up], course[up], vspeed[up], self._crewed[self._tk_code[track[up]]],
            slots,
        )

    def heard(self, slots: I64, now: float, lost_after_of: Callable[[str], float]) -> Bool:
        """Per aircraft slot: whether any of its sources reported within that source's
        lost_after_of(source) seconds before now."""
        if self._limits is None or self._limits[0] != lost_after_of or len(
                self._limits[1]) != len(self._sources):
            self._limits = lost_after_of, np.array(
                [lost_after_of(source) for source in self._sources], dtype=np.float64)
        limits = self._limits[1]
        n = self._next_slot
        owner, code = self._tk_owner[:n], self._tk_code[:n]
        live = np.flatnonzero(owner >= 0)
        recent = live[now - self._tk_f[live, F_T] <= limits[code[live]]]
        heard = np.zeros(n, dtype=bool)
        heard[owner[recent]] = True
        return heard[slots]

    def used_of(self, slot: int) -> tuple[str, ...]:
        used: tuple[str, ...] | None = self._st_used[slot]
        return () if used is None else used

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

    def _blend(self, slots: I64, used: I64, counts: I64) -> tuple[F64, F64, F64]:
        """Inverse-variance blend of the used tracks (`used`, `counts` per aircraft) of the
        aircraft in `slots`, vectorised over all of them; sets their fused state columns and
        returns the fused (t, lat, lon) columns. Each aircraft's tracks come newest first; the
        first gives T and the longitude origin."""
        n, size = len(slots), len(used)
        g = np.repeat(np.arange(n), counts)
        starts = _starts(counts)
        t, lat, lon, alt, speed, track, vspeed, agl, acc_h, acc_v, rank = self._tk_f[used].T
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
        # The state: these columns, the newest report's t, source and received_at (`state_of`).
        moving = s_vel > 0
        nan = np.nan
        # status: the most urgent one; without a ranked one (0), the newest report's.
        self._st_f[slots] = np.column_stack([
            alt_f, np.where(moving, speed_f, nan), np.where(moving, track_f, nan),
            np.where(s_vs > 0, vs_f, nan), np.where(got_agl, agl_f, nan), acc_h_f, acc_v_f,
            np.maximum.reduceat(rank, starts),
        ])
        self._st_track[slots] = used[starts]
        self._st_blend[slots] = True
        self._st_used[slots] = self._used_sources(self._tk_code[used].astype(np.int64), g,
                                                  starts, counts)
        return t_fused, lat_f, lon_f

    def _used_sources(self, codes: I64, g: I64, starts: I64, counts: I64) -> Obj:
        """Per aircraft, the shared tuple of its used sources: `codes` (source codes, `counts`
        per aircraft `g` from `starts`, in order). Up to three sources of up to 2^20 codes are
        one integer key per aircraft, and a tuple is looked up per distinct key, not per
        aircraft; beyond that, per aircraft."""
        n = len(counts)
        if int(counts.max()) > _KEY_SOURCES or len(self._sources) >= 1 << _KEY_BITS:
            sources = list(map(self._sources.__getitem__, codes.tolist()))
            return np.fromiter(map(self._used_tuples.__getitem__,
                                   _groups(sources, starts, counts)), object, n)
        place = np.zeros((n, _KEY_SOURCES), dtype=np.int64)  # code + 1 per place, 0: none
        place[g, np.arange(len(codes)) - starts[g]] = codes + 1
        key = place[:, 0]
        for j in range(1, _KEY_SOURCES):
            key = (key << _KEY_BITS) | place[:, j]
        distinct, which = np.unique(key, return_inverse=True)
        mask = (1 << _KEY_BITS) - 1
        table = np.fromiter((self._used_tuples[tuple(
            self._sources[code - 1] for code in (
                (k >> (_KEY_BITS * (_KEY_SOURCES - 1 - j))) & mask for j in range(_KEY_SOURCES))
            if code)] for k in distinct.tolist()), object, len(distinct))
        used: Obj = table[which]
        return used

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


def _nan_none(values: F64) -> list[float | None]:
    """values as Python floats, NaN as None."""
    missing = np.isnan(values)
    if not missing.any():
        return cast(list[float | None], values.tolist())
    out = values.astype(object)
    out[missing] = None
    return cast(list[float | None], out.tolist())


def _none_if_nan(value: float) -> float | None:
    return None if value != value else value


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
