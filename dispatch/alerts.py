"""Alerts: conditions in, durable alert events out (API.md section 4).

Check stages describe what is true now as `Condition`s (or, on the hot paths, a `ConditionBatch`
of parallel columns); `AlertManager` turns them into alerts with the lifecycle
open -> updated* -> resolved, one open alert per `Condition.key`, and resolution delayed until
the condition has been absent for `clear_s` of observation time, so a UAV hovering on a boundary
does not flap.

An open alert sends `updated` only when it has news (times are observation times, measured from
the alert's last event):
- a severity change: always, at once;
- a material change, at most once per `update_min_s`: for the types in `MATERIAL`, a detail value
  listed there moves past its tolerance (`Material`: a pair's `cpa_m` or `cpa_v_m` falling by
  more than max(5 m, 20 %) or rising by more than max(5 m, 100 %), its `t_los_s` moving by more
  than 2 s beyond its own countdown; a zone hit's `distance_m` likewise, its `agl_m` by more
  than max(5 m, 20 %)); for other types, any change of detail;
- otherwise a refresh of position and detail, at most once per `refresh_s` (and only when
  something changed: the position, or a listed detail value, or for other types the detail).
Between events the newest condition is kept (`open_alerts`, and what a resolution reports).

A batch costs, for an open alert without news, a few array steps: the values its last event told
are kept in arrays indexed by a slot per open alert, so the tests above run in numpy over the
whole batch, and a `Condition` (with its detail) is built only for a row that opens, updates or
resolves an alert. A pass finds the open alerts of its evaluated UAVs in numpy too (one code
lookup per UAV, dispatch/filing.py), and the batch's rows find theirs among them
(`_slots_of_rows`); only rows not found there are looked up by key.

Every change is an `AlertEvent`. Events go to ONE writer task, which takes whatever is waiting
(after a group-commit window of a few ms), numbers it with the next `seq`s and commits it in one
transaction. Numbering and committing in one task makes seq order commit order: no reader can see
seq n+1 before n. Committed events then go to the `Broadcaster`, which wakes the feeds. Events of
`URGENT_TYPES` (emergencies) wait in a lane of their own that the writer empties first and without
the group-commit delay, so an emergency is never queued behind a batch of lesser events.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt
import orjson

from dispatch.filing import UavFiling
from lowalt.gcpolicy import collector_paused
from lowalt.metrics import Metrics

if TYPE_CHECKING:
    from dispatch.store import AlertStore

log = logging.getLogger("lowalt.alerts")

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
Bool = npt.NDArray[np.bool_]

ALERT_TYPES = frozenset({
    "geofence_breach", "geofence_approach", "altitude_limit", "separation_loss",
    "conflict_predicted", "off_route", "clearance_violation", "telemetry_lost",
    "unregistered_uav", "implausible_motion", "emergency", "position_mismatch",
    "clearance_suspended",
})
# Severity order: higher is more urgent ("emergency first" sorts on this).
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}
SEVERITIES = ("info", "warning", "critical")  # by rank
# Committed ahead of the waiting group and without its delay; listed first among open alerts.
URGENT_TYPES = frozenset({"emergency"})
EVENT_STATES = frozenset({"open", "updated", "resolved"})
AlertKey = tuple[str, str, str]


@dataclass(frozen=True)
class Material:
    """When a detail value has changed enough to tell at once: |new - expected| >
    max(abs_tol, rel_tol * |told|), where `told` is what the alert's last event said and
    `expected` is `told`, or for a countdown (a time until something) `told` less the observation
    time since, not below 0. With `rise_rel_tol`, a rise (for a distance: an easing) is measured
    against max(abs_tol, rise_rel_tol * |told|) instead. A value appearing or disappearing (NaN)
    is material."""

    abs_tol: float
    rel_tol: float = 0.0
    countdown: bool = False
    rise_rel_tol: float | None = None


METRES = Material(5.0, 0.2)
# A distance to a conflict or a zone: closing in by max(5 m, 20 %) is news; opening out (aircraft
# moving apart after their closest approach, a UAV turning away) only when it doubles.
CLEARANCE_M = Material(5.0, 0.2, rise_rel_tol=1.0)
COUNTDOWN_S = Material(2.0, countdown=True)
ANY_CHANGE = Material(0.0)
_ZONE: Mapping[str, Material] = {"distance_m": CLEARANCE_M, "agl_m": METRES}
_PAIR: Mapping[str, Material] = {
    "cpa_m": CLEARANCE_M, "cpa_v_m": CLEARANCE_M, "t_los_s": COUNTDOWN_S, "crewed": ANY_CHANGE,
}
# Per alert type, the detail values (in this order: a `ConditionBatch`'s `values` columns) whose
# material change is news. Types not listed: any change of detail is.
MATERIAL: Mapping[str, Mapping[str, Material]] = {
    "geofence_breach": _ZONE,
    "geofence_approach": _ZONE,
    "altitude_limit": {"agl_m": METRES, "max_agl_m": ANY_CHANGE, "ceiling_agl_m": ANY_CHANGE},
    "separation_loss": _PAIR,
    "conflict_predicted": _PAIR,
}
_MAX_VALUES = max(len(v) for v in MATERIAL.values())
_TYPE_LIST = tuple(sorted(ALERT_TYPES))  # codes fit the int8 `_type` array
_TYPE_CODE: Mapping[str, int] = {name: k for k, name in enumerate(_TYPE_LIST)}
ALERT_TYPE_CODE = _TYPE_CODE  # for `ConditionBatch(type_codes=...)`
_TYPE_OF = attrgetter("type")
_STATE_OF = attrgetter("state")
# Batches whose rows open alerts may point at are kept until there are more than _KEEP_BATCHES
# of them holding more than _KEEP_ROWS rows; then the oldest go, down to half the rows. Small
# batches come often at high ingest rates (commit groups of ~1,000 rows): kept by count alone,
# an alert's UAV would not be seen again before its batch went, and its condition was built
# for nothing.
_KEEP_BATCHES = 16
_KEEP_ROWS = 50_000
_MIX = np.uint64(0x9E37_79B9_7F4A_7C15)  # odd: spreads a (UAV, type) number over 64 bits


class Condition(NamedTuple):
    """Something true right now about a UAV (or a pair of UAVs), as a check stage sees it.

    A named tuple, like `Observation`: immutable, and built several times faster than a frozen
    dataclass (a tick that opens 30,000 pair alerts builds 30,000 of them).
    """

    type: str  # one of ALERT_TYPES
    uav: str
    severity: str  # "info" | "warning" | "critical"
    t: float  # observation (or tick) time it holds at, Unix s
    lat: float
    lon: float
    alt_m: float
    zone: str | None = None
    other_uav: str | None = None
    clearance: str | None = None
    detail: Mapping[str, Any] = MappingProxyType({})

    @property
    def key(self) -> AlertKey:
        return (self.type, self.uav, self.zone or self.other_uav or self.clearance or "")


def evaluated_times(uavs: Iterable[str], times: Iterable[float]) -> dict[str, list[float]]:
    """uav -> its evaluation times, ascending: `AlertManager.assess`'s evaluated_at for a pass
    that checked several observations of some UAVs."""
    at: dict[str, list[float]] = {}
    for uav, t in zip(uavs, times, strict=True):
        at.setdefault(uav, []).append(t)
    for values in at.values():
        values.sort()
    return at


def _jsonable(value: Any) -> Any:
    """json encoder fallback: numpy scalars and arrays, sets, other mappings, anything else as
    text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, Mapping):  # e.g. a Condition's default (read-only, empty) detail
        return dict(value)
    return str(value)


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def encode_json(value: Any) -> str:
    """Compact JSON text of value. orjson: an alert event's body costs about a tenth of the
    standard library's (its floats are most of it); the same numbers come back when read, and
    a NaN or infinity (never in an event: positions are validated finite) would be null."""
    return orjson.dumps(value, default=_jsonable, option=_JSON_OPTIONS).decode()


_new_event = tuple.__new__  # a named tuple from its fields in order, without kwargs


class AlertEvent(NamedTuple):
    """One change of one alert; `body` is its JSON text (API.md section 4) once seq is known.
    A named tuple for the same reason as `Condition`."""

    seq: int
    alert_id: int
    state: str  # open | updated | resolved
    type: str
    severity: str
    uav: str
    other_uav: str | None
    zone: str | None
    clearance: str | None
    t: float
    raised_at: float  # server time the change was made, Unix s
    lat: float
    lon: float
    alt_m: float
    detail: Mapping[str, Any]
    body: str = ""

    @property
    def key(self) -> AlertKey:
        return (self.type, self.uav, self.zone or self.other_uav or self.clearance or "")

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "alert_id": self.alert_id, "state": self.state, "type": self.type,
            "severity": self.severity, "uav": self.uav, "other_uav": self.other_uav,
            "zone": self.zone, "clearance": self.clearance, "t": self.t,
            "raised_at": self.raised_at, "lat": self.lat, "lon": self.lon, "alt_m": self.alt_m,
            "detail": dict(self.detail),
        }

    def numbered(self, seq: int) -> AlertEvent:
        """This event with its seq and body (the writer numbers every event: one step)."""
        (_, alert_id, state, kind, severity, uav, other_uav, zone, clearance, t, raised_at,
         lat, lon, alt_m, detail, _) = self
        body = encode_json({
            "seq": seq, "alert_id": alert_id, "state": state, "type": kind,
            "severity": severity, "uav": uav, "other_uav": other_uav, "zone": zone,
            "clearance": clearance, "t": t, "raised_at": raised_at, "lat": lat, "lon": lon,
            "alt_m": alt_m, "detail": detail,
        })
        return _new_event(AlertEvent, (seq, alert_id, state, kind, severity, uav, other_uav,
                                       zone, clearance, t, raised_at, lat, lon, alt_m, detail,
                                       body))

    @classmethod
    def from_body(cls, body: str) -> AlertEvent:
        d = orjson.loads(body)
        return cls(
            int(d["seq"]), int(d["alert_id"]), d["state"], d["type"], d["severity"], d["uav"],
            d["other_uav"], d["zone"], d["clearance"], float(d["t"]), float(d["raised_at"]),
            float(d["lat"]), float(d["lon"]), float(d["alt_m"]), d["detail"], body,
        )

    def condition(self) -> Condition:
        return Condition(
            self.type, self.uav, self.severity, self.t, self.lat, self.lon, self.alt_m,
            self.zone, self.other_uav, self.clearance, self.detail,
        )


class Subscriber:
    """One feed client's bounded buffer of live events.

    When a publish would take it past `limit` events, the buffer is dropped and `overflowed` set:
    the client is told to resume from storage, and memory stays bounded.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._buf: deque[AlertEvent] = deque()
        self._wake = asyncio.Event()

    def push(self, events: Sequence[AlertEvent]) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._buf) + len(events) > self.limit:
            self.overflowed = True
            self._buf.clear()
        else:
            self._buf.extend(events)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self, timeout_s: float | None) -> list[AlertEvent]:
        """What is buffered, waiting up to timeout_s for something; [] on timeout."""
        if not self._buf and not self.overflowed and not self.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        events = list(self._buf)
        self._buf.clear()
        return events


class Broadcaster:
    """Fan-out of committed events to live feed clients; `head` is the last committed seq."""

    def __init__(self) -> None:
        self.head = 0
        self.closed = False
        self._subscribers: set[Subscriber] = set()
        self._tick = asyncio.Event()

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, limit: int) -> Subscriber:
        sub = Subscriber(limit)
        if self.closed:
            sub.close()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, events: Sequence[AlertEvent]) -> None:
        if not events:
            return
        self.head = events[-1].seq
        for sub in self._subscribers:
            sub.push(events)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def wait_beyond(self, seq: int, timeout_s: float) -> None:
        """Return once an event after seq is committed, on close, or after timeout_s."""
        if self.head > seq or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tick.wait(), timeout_s)

    def close(self) -> None:
        self.closed = True
        for sub in self._subscribers:
            sub.close()
        self._tick.set()


class ConditionBatch:
    """Conditions of one check as parallel columns, for `AlertManager.assess(batches=...)`.

    Row k is the condition `build(k)`, whose key is (types[k], uav[k], ref[k]) (`ref`: the zone,
    other UAV or clearance, or ""), whose severity has rank severity[k], at t[k] and
    (lat, lon, alt_m)[k], and whose detail holds values[k, j] under the j-th name of
    `MATERIAL[types[k]]` (a batch takes only types listed there, all with the same names).
    `build` is called only for rows that open, update or resolve an alert, or when the newest
    condition is asked for; `build_many(rows)`, when given, builds several at once (the same
    conditions as `build`, in order).
    """

    __slots__ = ("_build", "_build_many", "alt_m", "lat", "lon", "ref", "ref_ids", "severity",
                 "t", "type_codes", "types", "uav", "uav_at", "values")

    def __init__(
        self, types: Sequence[str], uav: Sequence[str], ref: Sequence[str],
        severity: npt.ArrayLike, t: npt.ArrayLike, lat: npt.ArrayLike, lon: npt.ArrayLike,
        alt_m: npt.ArrayLike, values: npt.ArrayLike, build: Callable[[int], Condition],
        build_many: Callable[[Sequence[int]], list[Condition]] | None = None, *,
        type_codes: I64 | None = None, ref_ids: I64 | None = None, uav_at: I64 | None = None,
    ) -> None:
        self.types, self.uav, self.ref = types, uav, ref
        # Optional, for finding the rows' open alerts in numpy (`AlertManager._slots_of_rows`),
        # when the stage has them at hand: each row's type as its `type_code`, `id()` of each
        # ref, and each row's UAV as its position in the `evaluated` of the same `assess`.
        self.type_codes, self.ref_ids, self.uav_at = type_codes, ref_ids, uav_at
        self.severity = np.asarray(severity, dtype=np.int64).ravel()
        self.t = np.asarray(t, dtype=np.float64).ravel()
        self.lat = np.asarray(lat, dtype=np.float64).ravel()
        self.lon = np.asarray(lon, dtype=np.float64).ravel()
        self.alt_m = np.asarray(alt_m, dtype=np.float64).ravel()
        n = len(uav)
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 2:
            self.values = self.values.reshape(n, -1 if n else 0)
        self._build, self._build_many = build, build_many
        for name, col in (("types", types), ("ref", ref), ("severity", self.severity),
                          ("t", self.t), ("lat", self.lat), ("lon", self.lon),
                          ("alt_m", self.alt_m), ("values", self.values),
                          *((name, col) for name, col in (("type_codes", type_codes),
                                                         ("ref_ids", ref_ids),
                                                         ("uav_at", uav_at))
                            if col is not None)):
            if len(col) != n:
                raise ValueError(f"{name} has {len(col)} rows, uav has {n}")

    @classmethod
    def empty(cls) -> ConditionBatch:
        def none(k: int) -> Condition:
            raise IndexError(k)

        return cls([], [], [], [], [], [], [], [], np.empty((0, 0)), none)

    def __len__(self) -> int:
        return len(self.uav)

    def condition(self, k: int) -> Condition:
        return self._build(k)

    def conditions(self, rows: Sequence[int] | None = None) -> list[Condition]:
        """The conditions of rows (default: all), in that order."""
        ks = range(len(self.uav)) if rows is None else rows
        if self._build_many is not None:
            return self._build_many(ks)
        return list(map(self._build, ks))


def _material(
    rules: Sequence[Material], new: F64, told: F64, dt: F64
) -> tuple[Bool, Bool]:
    """Per row: (changed materially, changed at all) of values (n, len(rules)) against those
    told dt seconds ago."""
    material = np.zeros(dt.size, dtype=np.bool_)
    changed = np.zeros(dt.size, dtype=np.bool_)
    for j, rule in enumerate(rules):
        a, b = new[:, j], told[:, j]
        both_nan = np.isnan(a) & np.isnan(b)
        changed |= (a != b) & ~both_nan
        expected = np.maximum(b - dt, 0.0) if rule.countdown else b
        fall = np.maximum(rule.abs_tol, rule.rel_tol * np.abs(b))
        rise = fall if rule.rise_rel_tol is None else np.maximum(
            rule.abs_tol, rule.rise_rel_tol * np.abs(b))
        change = a - expected
        material |= ~((change <= rise) & (change >= -fall)) & ~both_nan
    return material, changed


def _detail_values(c: Condition) -> F64:
    """The `MATERIAL` values of c's detail, NaN where missing or not a number."""
    out = np.full(_MAX_VALUES, np.nan)
    for j, name in enumerate(MATERIAL.get(c.type, ())):
        value = c.detail.get(name)
        if isinstance(value, int | float):
            out[j] = float(value)
    return out


class _OpenAlert:
    """What an open alert keeps besides its slot's array entries (see AlertManager)."""

    __slots__ = ("detail_told", "key", "latest", "other_uav", "uav")

    def __init__(self, c: Condition, key: AlertKey) -> None:
        self.key, self.uav, self.other_uav = key, c.uav, c.other_uav
        # The newest condition, unless the slot points at a batch row; None when it is the one
        # the last event told and the slot's arrays and `detail_told` rebuild it exactly
        # (`AlertManager._tell`): an alert that never changes, like an unregistered UAV's,
        # then keeps no condition (about 220 B with its numbers).
        self.latest: Condition | None = c
        # Types without MATERIAL values: the detail of the last event.
        self.detail_told: Mapping[str, Any] | None = None if c.type in MATERIAL else c.detail


class AlertManager:
    """Keeps the open alerts and turns conditions into events; see the module docstring.

    Each open alert has a slot; per slot, arrays hold its id and when it opened, what its last
    event told (t, severity, position, `MATERIAL` values), since when its condition has been
    absent (NaN: present), the last `assess` pass that saw it, and where its newest condition is
    (a batch row, or `_OpenAlert.latest` when the batch is -1).
    """

    def __init__(
        self,
        store: AlertStore,
        broadcaster: Broadcaster,
        *,
        clear_s: float = 3.0,
        update_min_s: float = 1.0,
        refresh_s: float = 10.0,
        commit_delay_s: float = 0.002,
        max_pending_events: int = 100_000,
        max_batch_events: int = 2_000,
        retry_delay_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self.store, self.broadcaster = store, broadcaster
        self.clear_s, self.update_min_s, self.refresh_s = clear_s, update_min_s, refresh_s
        self.commit_delay_s = commit_delay_s
        self.max_pending_events = max_pending_events
        self.max_batch_events = max_batch_events
        self.retry_delay_s = retry_delay_s
        self.metrics = metrics or Metrics()
        self._slot_of: dict[AlertKey, int] = {}
        self._by_slot: list[_OpenAlert | None] = []
        # The open alerts' slots by UAV (each alert under its uav and, for a pair, its other
        # uav): found for a whole pass's evaluated UAVs in numpy (dispatch/filing.py).
        self._filing = UavFiling()
        self._allocate_arrays(1024)
        self._free = list(range(1023, -1, -1))  # free slots, lowest last
        self._pass = 0  # numbers assess passes, for `_seen`
        self._batches: dict[int, ConditionBatch] = {}
        self._kept_rows = 0  # rows of `_batches`
        self._batch_no = 0
        self._alert_id = 0
        self._seq = 0
        self._open_of_type = np.zeros(len(_TYPE_LIST), dtype=np.int64)  # by `_type` code
        self._queue: deque[AlertEvent] = deque()
        self._urgent: deque[AlertEvent] = deque()  # URGENT_TYPES: committed first, at once
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        m = self.metrics
        m.counter("lowalt_alert_events_total", "Alert events committed, by state.")
        m.counter("lowalt_alert_events_dropped_total", "Alert events raised after shutdown.")
        m.counter("lowalt_alert_commit_failures_total", "Alert event commits that failed.")
        m.histogram("lowalt_alert_commit_seconds", "Time to commit one group of alert events.")
        m.gauge("lowalt_alerts_open", "Open alerts.", lambda: float(len(self._slot_of)))
        m.gauge("lowalt_alert_events_pending", "Alert events waiting to commit.",
                lambda: float(len(self._queue) + len(self._urgent)))

    def _allocate_arrays(self, capacity: int) -> None:
        """(Re)size the per-slot arrays to capacity, keeping what they hold."""
        def grown(name: str, fill: float, dtype: type[Any], width: int = 0) -> Any:
            new = np.full((capacity, width) if width else capacity, fill, dtype=dtype)
            old: npt.NDArray[Any] | None = getattr(self, name, None)
            if old is not None:
                new[: old.shape[0]] = old
            return new

        self._alert_ids: I64 = grown("_alert_ids", 0, np.int64)
        self._opened_at: F64 = grown("_opened_at", np.nan, np.float64)  # server time, Unix s
        self._told_t: F64 = grown("_told_t", np.inf, np.float64)
        self._told_severity: I8 = grown("_told_severity", -1, np.int8)  # in SEVERITIES
        self._told_position: F64 = grown("_told_position", np.nan, np.float64, 3)
        self._told_values: F64 = grown("_told_values", np.nan, np.float64, _MAX_VALUES)
        self._absent_since: F64 = grown("_absent_since", np.nan, np.float64)
        self._seen: I64 = grown("_seen", -1, np.int64)
        self._seen_t: F64 = grown("_seen_t", np.nan, np.float64)  # newest t seen in the pass
        self._type: I8 = grown("_type", -1, np.int8)  # index in _TYPE_LIST; -1: a free slot
        self._latest_batch: I64 = grown("_latest_batch", -1, np.int64)
        self._latest_row: I32 = grown("_latest_row", -1, np.int32)  # in a batch
        self._paired: Bool = grown("_paired", False, np.bool_)  # has an other_uav
        self._ref_id: I64 = grown("_ref_id", 0, np.int64)  # id() of the ref its key holds
        self._by_slot.extend([None] * (capacity - len(self._by_slot)))
        self._filing.grow(capacity)

    @property
    def committed_seq(self) -> int:
        """The seq of the newest committed event (0 when there is none)."""
        return self._seq

    async def start(self) -> None:
        """Load open alerts and the last seq from storage, then start the writer."""
        state = await self.store.load_state()
        self._seq, self._alert_id = state.last_seq, state.last_alert_id
        self.broadcaster.head = self._seq
        for event, opened_at in state.open_alerts:
            self._add(event.alert_id, opened_at, event.condition())
        self._writer = asyncio.create_task(self._write_loop(), name="lowalt-alert-writer")

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Stop taking events, commit what is waiting (up to timeout_s), stop the writer."""
        self._closed = True
        flushed = await self.flush(timeout_s)
        if not flushed:
            log.warning("shutdown: %d alert events not committed in time",
                        len(self._queue) + len(self._urgent))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        return flushed

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every event raised so far is committed and broadcast."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- the API check stages call ------------------------------------------------------------

    async def assess(
        self, types: frozenset[str], evaluated: Mapping[str, float],
        present: Sequence[Condition] = (), *, batches: Sequence[ConditionBatch] = (),
        evaluated_at: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """Reconcile the open alerts of `types` for the `evaluated` UAVs with what is `present`
        (as conditions, or as rows of `batches`).

        evaluated: uav -> t of the observation or tick just checked; present: every condition of
        those types true now for those UAVs. Pair alerts count as evaluated when either UAV is.

        evaluated_at: given when the pass checked several observations of a UAV (a frame of
        several reports, groups checked together): uav -> the t of each, ascending (a UAV
        evaluated once may be left out), `evaluated` holding the newest and `present` the
        conditions of all of them. A condition seen only at earlier ones (in a zone at t, out
        at t + 1) is absent at the newest: it updates its alert, whose hysteresis then runs
        from the first evaluation after its last sighting; one not seen at all in the pass
        has been absent since the first evaluation of the pass.
        """
        self._pass += 1
        this_pass = self._pass
        seen, seen_t = self._seen, self._seen_t
        for c in present:
            self._observe(c)
            slot = self._slot_of[c.key]
            if seen[slot] != this_pass or c.t > seen_t[slot]:
                seen_t[slot] = c.t
            seen[slot] = this_pass
        # The open alerts filed under the evaluated UAVs (node, position in `evaluated`): where
        # a batch's rows find their alerts, and where absent ones are looked for.
        # None when no alert of `types` was open as the pass began: then none can be absent (those
        # it opens are seen in it).
        in_types = self._open_types_mask(types) if evaluated else None
        filed: tuple[I64, I64] | None = None
        if evaluated and (any(map(len, batches)) or in_types is not None):
            filed = self._filing.walk(self._filing.codes(evaluated, len(evaluated)))
        for batch in batches:
            self._observe_batch(batch, this_pass, evaluated, filed)
        if evaluated_at is not None:
            self._resolve_stale(types, evaluated, this_pass, evaluated_at)
        if in_types is not None and filed is not None:
            self._resolve_absent(in_types, evaluated, this_pass, evaluated_at or {}, filed)
        if len(self._batches) > _KEEP_BATCHES and self._kept_rows > _KEEP_ROWS:
            self._let_go_of_batches()
        await self._wait_for_room()

    def _see(self, slots: I64, t: F64, this_pass: int) -> None:
        """Mark slots seen in this pass at times t (the newest of the pass is kept)."""
        before = np.where(self._seen[slots] == this_pass, self._seen_t[slots], -np.inf)
        self._seen[slots] = this_pass
        self._seen_t[slots] = np.maximum(before, t)

    def _resolve_stale(
        self, types: frozenset[str], evaluated: Mapping[str, float], this_pass: int,
        evaluated_at: Mapping[str, Sequence[float]],
    ) -> None:
        """`assess(evaluated_at=...)`: alerts of `types` seen in this pass only before their
        UAV's newest evaluation start (or finish) their hysteresis from the first evaluation
        after that sighting."""
        in_types = self._open_types_mask(types)
        if in_types is None:
            return
        used = len(self._by_slot)
        seen = np.flatnonzero(in_types[self._type[:used]] & (self._seen[:used] == this_pass))
        by_slot, evaluated_t = self._by_slot, evaluated.get
        slots, times, starts = [], [], []
        for slot, seen_t in zip(seen.tolist(), self._seen_t[seen].tolist(), strict=True):
            alert = by_slot[slot]
            assert alert is not None
            t = max((x for x in (evaluated_t(alert.uav), evaluated_t(alert.other_uav or ""))
                     if x is not None), default=None)
            if t is not None and t > seen_t:
                slots.append(slot)
                times.append(t)
                at_t = evaluated_at.get(alert.uav, ())
                k = bisect.bisect_right(at_t, seen_t)
                starts.append(at_t[k] if k < len(at_t) else t)
        if not slots:
            return
        at = np.array(slots, dtype=np.int64)
        # Seen only as late data (no news), an alert keeps the absence it already had.
        since = np.fmin(self._absent_since[at], np.array(starts, dtype=np.float64))
        self._absent_since[at] = since
        done = np.flatnonzero(np.array(times) - since >= self.clear_s).tolist()
        for k in sorted(done, key=lambda k: self._alert(slots[k]).key):
            self._resolve(slots[k], times[k], None)

    async def open_or_update(self, c: Condition) -> None:
        """Open an alert for c.key, or update the open one (by the rules of `assess`)."""
        self._observe(c)
        await self._wait_for_room()

    async def resolve(
        self, key: tuple[str, str, str], t: float, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Resolve the open alert for key now (no hysteresis); nothing when none is open."""
        slot = self._slot_of.get(key)
        if slot is not None:
            self._resolve(slot, t, detail)
        await self._wait_for_room()

    def open_alerts(self) -> list[dict[str, Any]]:
        """The open alerts, most severe first (emergencies first of all), each with its newest
        known position."""
        ranked: list[tuple[int, bool, int, dict[str, Any]]] = []
        for slot in self._slot_of.values():
            alert_id = int(self._alert_ids[slot])
            c = self._latest(slot)
            ranked.append((-SEVERITY_RANK[c.severity], c.type not in URGENT_TYPES, alert_id, {
                "alert_id": alert_id, "state": "open", "type": c.type,
                "severity": c.severity, "uav": c.uav, "other_uav": c.other_uav, "zone": c.zone,
                "clearance": c.clearance, "t": c.t,
                "opened_at": float(self._opened_at[slot]), "lat": c.lat,
                "lon": c.lon, "alt_m": c.alt_m, "detail": dict(c.detail),
            }))
        ranked.sort(key=lambda r: r[:3])
        return [r[3] for r in ranked]

    # -- lifecycle -------------------------------------------------------------------------------

    def _observe(self, c: Condition) -> None:
        if c.type not in ALERT_TYPES:
            raise ValueError(f"unknown alert type {c.type!r}")
        if c.severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {c.severity!r}")
        slot = self._slot_of.get(c.key)
        if slot is None:
            self._alert_id += 1
            event = self._emit(self._alert_id, "open", c, c.t, c.detail)
            self._add(self._alert_id, event.raised_at, c)
            return
        dt = c.t - float(self._told_t[slot])
        if dt < 0.0:  # older than what was said already: late data, no news
            return
        alert = self._alert(slot)
        self._absent_since[slot] = np.nan
        alert.latest = c
        self._latest_batch[slot] = -1
        moved = (c.lat, c.lon, c.alt_m) != tuple(self._told_position[slot].tolist())
        rules = MATERIAL.get(c.type)
        if rules is None:
            material = changed = c.detail != alert.detail_told
        else:
            m = len(rules)
            mat, chg = _material(tuple(rules.values()), _detail_values(c)[None, :m],
                                 self._told_values[slot: slot + 1, :m], np.array([dt]))
            material, changed = bool(mat[0]), bool(chg[0])
        if (SEVERITY_RANK[c.severity] != self._told_severity[slot]
                or (material and dt >= self.update_min_s)
                or ((changed or moved) and dt >= max(self.refresh_s, self.update_min_s))):
            self._emit(int(self._alert_ids[slot]), "updated", c, c.t, c.detail)
            self._tell(slot, c)

    def _observe_batch(
        self, batch: ConditionBatch, this_pass: int, evaluated: Mapping[str, float],
        filed: tuple[I64, I64] | None,
    ) -> None:
        n = len(batch)
        if n == 0:
            return
        kinds = set(batch.types)
        unknown = kinds - ALERT_TYPES
        if unknown:
            raise ValueError(f"unknown alert type {sorted(unknown)[0]!r}")
        names = {tuple(MATERIAL.get(kind, ())) for kind in kinds}
        if len(names) != 1 or not all(kind in MATERIAL for kind in kinds) \
                or batch.values.shape[1] != len(next(iter(names))):
            raise ValueError(f"a batch's types must share their MATERIAL values: {sorted(kinds)}")
        rules = tuple(MATERIAL[next(iter(kinds))].values())
        if not (batch.severity.min() >= 0 and batch.severity.max() < len(SEVERITIES)):
            raise ValueError("severity rank out of range")
        self._batch_no += 1
        batch_no = self._batch_no
        slots = self._slots_of_rows(batch, kinds, evaluated, filed)
        # Rows not found among the evaluated UAVs' alerts: by their keys, a dict lookup each.
        missing = np.flatnonzero(slots < 0).tolist()
        keys: dict[int, AlertKey] = {k: (batch.types[k], batch.uav[k], batch.ref[k])
                                     for k in missing}
        if missing:
            slots[missing] = np.fromiter(map(self._slot_of.get, keys.values(),
                                             itertools.repeat(-1)), np.int64, len(missing))
            if batch.ref_ids is not None:  # a stage whose refs are the same objects each pass
                for k, slot in zip(missing, slots[missing].tolist(), strict=True):
                    if slot >= 0:
                        self._rekey(slot, keys[k])
        known = slots[slots >= 0]
        new = np.flatnonzero(slots < 0).tolist()
        if (known.size < 2 or np.bincount(known).max() == 1) \
                and len({keys[k] for k in new}) == len(new):
            pointed = self._observe_rows(batch, batch_no, rules, np.arange(n), slots, keys,
                                         this_pass)
        else:
            # The same key more than once: take the rows in rounds (each key's first row, then
            # its second ...), so each key's rows still go in order.
            keys = dict(enumerate(zip(batch.types, batch.uav, batch.ref, strict=True)))
            count: dict[AlertKey, int] = {}
            occurrence = np.empty(n, dtype=np.int64)
            for k, key in keys.items():
                occurrence[k] = count[key] = count.get(key, -1) + 1
            pointed = False
            for r in range(int(occurrence.max()) + 1):
                rows = np.flatnonzero(occurrence == r)
                slots = np.fromiter(map(self._slot_of.get, [keys[k] for k in rows.tolist()],
                                        itertools.repeat(-1)), np.int64, rows.size)
                pointed |= self._observe_rows(batch, batch_no, rules, rows, slots, keys,
                                              this_pass)
        if pointed:  # kept while an alert points at a row; else its rows go now
            self._batches[batch_no] = batch
            self._kept_rows += n

    def _rekey(self, slot: int, key: AlertKey) -> None:
        """Hold key (equal to the slot's) as the slot's key: its ref object then finds the
        alert in numpy on the next pass (`_slots_of_rows`). For alerts whose ref is another,
        equal object (loaded at start, or raised before a zone reload from storage)."""
        alert = self._alert(slot)
        if alert.key[2] is key[2]:
            return
        del self._slot_of[alert.key]
        self._slot_of[key] = slot
        alert.key = key
        self._ref_id[slot] = id(key[2])

    def _slots_of_rows(
        self, batch: ConditionBatch, kinds: Iterable[str], evaluated: Mapping[str, float],
        filed: tuple[I64, I64] | None,
    ) -> I64:
        """Per row of batch, the slot of its key's open alert where it is found in numpy among
        `filed` (the alerts filed under the evaluated UAVs, `assess`); -1 elsewhere.

        A row matches the alert filed under its UAV (as the alert's `uav`) with its type and
        with its ref as the very object the alert's key holds (zone ids come from the zone
        index, the same objects each pass): exact, without a key tuple and a dict lookup per
        row (a hit's lookup in the big dict cost about as much as finding it in the zones). A
        row whose ref is an equal but other object is not matched here; the caller looks it
        up by its key."""
        n = len(batch)
        slots = np.full(n, -1, dtype=np.int64)
        if filed is None:
            return slots
        node, owner = filed
        cand = node >> 1
        of_batch = np.zeros(len(_TYPE_LIST) + 1, dtype=np.bool_)  # free slots' -1: last
        of_batch[[_TYPE_CODE[kind] for kind in kinds]] = True
        use = ((node & 1) == 0) & of_batch[self._type[cand]]  # filed as uav, of these types
        cand, owner = cand[use], owner[use]
        if not cand.size:
            return slots
        at = batch.uav_at
        if at is None:
            position = dict(zip(evaluated, range(len(evaluated)), strict=True))
            at = np.fromiter(map(position.get, batch.uav, itertools.repeat(-1)), np.int64, n)
        code = batch.type_codes
        if code is None:
            code = np.fromiter(map(_TYPE_CODE.__getitem__, batch.types), np.int64, n)
        ref = batch.ref_ids
        if ref is None:
            ref = np.fromiter(map(id, batch.ref), np.int64, n)
        # (UAV, type) and ref as one number each, looked up among the alerts' by a binary
        # search; a mix that two keys share is told apart by comparing both parts after.
        ntypes = len(_TYPE_LIST)
        who_c = owner * ntypes + self._type[cand]
        who_r = at * ntypes + code  # a UAV not evaluated (-1): below every alert's
        ref_c = self._ref_id[cand]
        mix_c = who_c.astype(np.uint64) * _MIX ^ ref_c.astype(np.uint64)
        mix_r = who_r.astype(np.uint64) * _MIX ^ ref.astype(np.uint64)
        order = np.argsort(mix_c)
        found = order[np.minimum(np.searchsorted(mix_c[order], mix_r), cand.size - 1)]
        same = (mix_c[found] == mix_r) & (who_c[found] == who_r) & (ref_c[found] == ref)
        slots[same] = cand[found[same]]
        return slots

    def _observe_rows(
        self, batch: ConditionBatch, batch_no: int, rules: Sequence[Material], rows: I64,
        slots: I64, keys: Mapping[int, AlertKey], this_pass: int,
    ) -> bool:
        """Rows of a batch with distinct keys, and the slots of their open alerts (-1: none);
        keys: of (at least) the rows without a slot. True when an open alert now points at a
        row of the batch for its newest condition (the batch must be kept)."""
        known = slots >= 0
        new_rows = rows[~known]
        rows, slots = rows[known], slots[known]
        t = batch.t[rows]
        self._see(slots, t, this_pass)
        dt = t - self._told_t[slots]
        current = dt >= 0.0  # else late data: no news
        rows, slots, t, dt = rows[current], slots[current], t[current], dt[current]
        self._absent_since[slots] = np.nan
        self._latest_batch[slots] = batch_no
        self._latest_row[slots] = rows
        m = len(rules)
        material, changed = _material(rules, batch.values[rows], self._told_values[slots, :m], dt)
        position = self._told_position[slots]
        changed |= ((batch.lat[rows] != position[:, 0]) | (batch.lon[rows] != position[:, 1])
                    | (batch.alt_m[rows] != position[:, 2]))
        news = ((batch.severity[rows] != self._told_severity[slots])
                | (material & (dt >= self.update_min_s))
                | (changed & (dt >= max(self.refresh_s, self.update_min_s))))
        pointed = bool(slots.size)
        rows, slots = rows[news], slots[news]
        if not rows.size and not new_rows.size:
            return pointed
        # Opens and updates go out in row order.
        every = np.concatenate([new_rows, rows])
        every_slot = np.concatenate([np.full(new_rows.size, -1, dtype=np.int64), slots])
        order = np.argsort(every, kind="stable")
        with collector_paused():  # all of it lives on: a collection would free nothing
            ks = every[order].tolist()
            ordered_slots = every_slot[order]
            slot_list = ordered_slots.tolist()
            conditions = batch.conditions(ks)
            # Alert ids: the opened ones numbered in row order, the updated ones their own.
            id_column = self._alert_ids[np.maximum(ordered_slots, 0)]
            first_new = self._alert_id + 1
            self._alert_id += new_rows.size
            id_column[ordered_slots < 0] = np.arange(first_new, self._alert_id + 1)
            ids = id_column.tolist()
            raised_at = time.time()
            # The detail is the condition's own: a batch builds a fresh one per condition, and
            # neither the kept condition nor the event is ever changed.
            events = [
                _new_event(AlertEvent, (
                    0, alert_id, "updated" if slot >= 0 else "open", kind, severity, uav, other,
                    zone, clearance, float(t), raised_at, float(lat), float(lon), float(alt_m),
                    detail, ""))
                for alert_id, slot, (kind, uav, severity, t, lat, lon, alt_m, zone, other,
                                     clearance, detail)
                in zip(ids, slot_list, conditions, strict=True)
            ]
            opened = self._take_slots([
                (alert_id, c, keys[k])
                for alert_id, slot, c, k in zip(ids, slot_list, conditions, ks, strict=True)
                if slot < 0
            ], raised_at) if new_rows.size else []
        self._enqueue(events)
        if opened:
            at = np.array(opened, dtype=np.int64)
            self._see(at, batch.t[new_rows], this_pass)
            self._absent_since[at] = np.nan
            self._latest_batch[at] = -1
            self._told_values[at] = np.nan
            rows, slots = np.concatenate([new_rows, rows]), np.concatenate([at, slots])
        if rows.size:
            self._told_t[slots] = batch.t[rows]
            self._told_severity[slots] = batch.severity[rows]
            self._told_position[slots] = np.column_stack(
                [batch.lat[rows], batch.lon[rows], batch.alt_m[rows]])
            self._told_values[slots, :m] = batch.values[rows]
        return pointed

    def _open_types_mask(self, types: frozenset[str]) -> Bool | None:
        """`types` as a mask over `_type` codes (its last entry, for free slots' -1, False);
        None when no alert of those types is open (a pass then has nothing to resolve)."""
        codes = [_TYPE_CODE[kind] for kind in types if kind in _TYPE_CODE]
        if not self._open_of_type[codes].any():
            return None
        in_types = np.zeros(len(_TYPE_LIST) + 1, dtype=np.bool_)
        in_types[codes] = True
        return in_types

    def _resolve_absent(
        self, in_types: Bool, evaluated: Mapping[str, float], this_pass: int,
        evaluated_at: Mapping[str, Sequence[float]], filed: tuple[I64, I64],
    ) -> None:
        """Start, or finish, the hysteresis of open alerts of the pass's types (in_types, an
        `_open_types_mask`) whose UAV (or other UAV) was evaluated and whose condition was not
        seen in this pass."""
        # The slots filed under the evaluated UAVs when the pass began (those opened since
        # were seen), each with the position of its UAV in `evaluated`.
        n = len(evaluated)
        t_eval = np.fromiter(evaluated.values(), np.float64, n)
        node, owner = filed
        slots = node >> 1
        absent_here = in_types[self._type[slots]] & (self._seen[slots] != this_pass)
        slots, owner = slots[absent_here], owner[absent_here]
        if not slots.size:
            return
        # Each absent alert's time of evaluation: its UAV's, or for a pair the later of its two
        # UAVs' (a pair is filed under both). Its hysteresis starts there, or at the pass's
        # first evaluation of its UAV when the pass evaluated that UAV several times (a Python
        # step for those UAVs only; a pair's starts at its time of evaluation all the same).
        order = np.argsort(slots, kind="stable")
        slots, owner = slots[order], owner[order]
        first = np.flatnonzero(np.concatenate([[True], slots[1:] != slots[:-1]]))
        at = slots[first]  # the slots, each once, in order
        t_now = np.maximum.reduceat(t_eval[owner], first)
        starts = t_now
        if evaluated_at:
            first_eval = t_eval.copy()
            firsts = list(map(evaluated_at.get, evaluated))
            for k in itertools.compress(range(n), firsts):
                first_eval[k] = firsts[k][0]  # type: ignore[index]
            # A slot filed more than once is a pair's, which starts at t_now.
            starts = np.where(self._paired[at], t_now, first_eval[owner[first]])
        since = self._absent_since[at]
        since = np.where(np.isnan(since), starts, since)
        self._absent_since[at] = since
        done = np.flatnonzero(t_now - since >= self.clear_s).tolist()
        absent_slots, times_now = at.tolist(), t_now.tolist()
        self._build_latest([absent_slots[k] for k in done])
        for k in sorted(done, key=lambda k: self._alert(absent_slots[k]).key):
            self._resolve(absent_slots[k], times_now[k], None)

    def _resolve(self, slot: int, t: float, detail: Mapping[str, Any] | None) -> None:
        alert = self._alert(slot)
        c = self._latest(slot)
        self._emit(int(self._alert_ids[slot]), "resolved", c, t,
                   c.detail if detail is None else detail)
        del self._slot_of[alert.key]
        self._filing.unfile(alert.uav, 2 * slot)
        if alert.other_uav is not None and alert.other_uav != alert.uav:
            self._filing.unfile(alert.other_uav, 2 * slot + 1)
        self._by_slot[slot] = None
        self._open_of_type[self._type[slot]] -= 1
        self._type[slot] = -1
        self._latest_batch[slot] = -1
        self._seen[slot] = -1
        self._free.append(slot)

    def _add(self, alert_id: int, opened_at: float, c: Condition) -> None:
        """A new open alert whose last event said c."""
        (slot,) = self._take_slots([(alert_id, c, c.key)], opened_at)
        self._seen[slot] = -1
        self._absent_since[slot] = np.nan
        self._latest_batch[slot] = -1
        self._tell(slot, c)

    def _take_slots(
        self, new: Sequence[tuple[int, Condition, AlertKey]], opened_at: float
    ) -> list[int]:
        """Slots for new open alerts (alert id, condition, key), in order, with their keys and
        UAVs filed (their arrays not set). Filed in one numpy step for all of them: a dense
        hub's first tick opens tens of thousands of pair alerts at once."""
        free = self._free
        while len(free) < len(new):
            old = len(self._by_slot)
            capacity = old + max(old // 4, 1024)  # a quarter more: unused room is memory held
            self._allocate_arrays(capacity)
            free[:0] = range(capacity - 1, old - 1, -1)  # the lowest stay last
        slots = free[-len(new):][::-1] if new else []
        del free[len(free) - len(new):]
        by_slot, slot_of = self._by_slot, self._slot_of
        uavs: list[str] = []
        nodes: list[int] = []
        for slot, (_, c, key) in zip(slots, new, strict=True):
            by_slot[slot] = _OpenAlert(c, key)
            slot_of[key] = slot
            uavs.append(c.uav)
            nodes.append(2 * slot)
            other = c.other_uav
            if other is not None and other != c.uav:
                uavs.append(other)
                nodes.append(2 * slot + 1)
        self._filing.file(uavs, nodes)
        self._paired[slots] = [c.other_uav is not None for _, c, _ in new]
        self._ref_id[slots] = [id(key[2]) for _, _, key in new]
        codes = [_TYPE_CODE[c.type] for _, c, _ in new]
        self._type[slots] = codes
        self._open_of_type += np.bincount(codes, minlength=self._open_of_type.size)
        self._alert_ids[slots] = [alert_id for alert_id, _, _ in new]
        self._opened_at[slots] = opened_at
        return slots

    def _tell(self, slot: int, c: Condition) -> None:
        """Record that the slot's last event said c."""
        self._told_t[slot] = c.t
        self._told_severity[slot] = SEVERITY_RANK[c.severity]
        self._told_position[slot] = (c.lat, c.lon, c.alt_m)
        self._told_values[slot] = _detail_values(c)
        alert = self._alert(slot)
        if alert.detail_told is not None:
            alert.detail_told = c.detail
            if (alert.latest is c and c.zone is None and c.other_uav is None
                    and c.clearance is None):
                alert.latest = None  # `_latest` rebuilds it from what was told

    def is_open(self, key: AlertKey) -> bool:
        """Whether an alert is open for key."""
        return key in self._slot_of

    def are_open(self, keys: Iterable[AlertKey]) -> Iterator[bool]:
        """`is_open` of each key, by a C-level lookup each (for checks over whole batches)."""
        return map(self._slot_of.__contains__, keys)

    def _alert(self, slot: int) -> _OpenAlert:
        alert = self._by_slot[slot]
        assert alert is not None
        return alert

    def _build_latest(self, slots: Sequence[int]) -> None:
        """`_latest` for many slots: those pointing at batch rows get their conditions built,
        a batch's rows at once (`ConditionBatch.conditions`)."""
        if not slots:
            return
        at = np.array(slots, dtype=np.int64)
        at = at[self._latest_batch[at] >= 0]
        batch_of = self._latest_batch[at]
        for batch_no in np.unique(batch_of).tolist():
            of_batch = at[batch_of == batch_no]
            built = self._batches[batch_no].conditions(self._latest_row[of_batch].tolist())
            for slot, c in zip(of_batch.tolist(), built, strict=True):
                self._alert(slot).latest = c
            self._latest_batch[of_batch] = -1

    def _latest(self, slot: int) -> Condition:
        """The newest condition of an open alert, built from its batch row when it has one, or
        from what its last event told (`_OpenAlert.latest`)."""
        alert = self._alert(slot)
        batch_no = int(self._latest_batch[slot])
        if batch_no >= 0:
            alert.latest = self._batches[batch_no].condition(int(self._latest_row[slot]))
            self._latest_batch[slot] = -1
        if alert.latest is not None:
            return alert.latest
        assert alert.detail_told is not None
        lat, lon, alt_m = self._told_position[slot].tolist()
        return Condition(
            _TYPE_LIST[int(self._type[slot])], alert.uav,
            SEVERITIES[int(self._told_severity[slot])], float(self._told_t[slot]), lat, lon,
            alt_m, detail=alert.detail_told,
        )

    def _let_go_of_batches(self) -> None:
        """Keep the newest batches holding up to half of `_KEEP_ROWS` rows (at least the newest
        batch); alerts still pointing at older ones (their UAV has not been seen since) get
        their newest condition built now."""
        newest_first = sorted(self._batches, reverse=True)
        kept, oldest_kept = 0, newest_first[0]
        for batch_no in newest_first:
            kept += len(self._batches[batch_no].uav)
            if kept > _KEEP_ROWS // 2:
                break
            oldest_kept = batch_no
        self._build_latest(np.flatnonzero((self._latest_batch >= 0)
                                          & (self._latest_batch < oldest_kept)).tolist())
        for batch_no in [b for b in self._batches if b < oldest_kept]:
            self._kept_rows -= len(self._batches.pop(batch_no).uav)

    def _emit(
        self, alert_id: int, state: str, c: Condition, t: float, detail: Mapping[str, Any]
    ) -> AlertEvent:
        event = self._event(alert_id, state, c, t, detail, time.time())
        self._enqueue((event,))
        return event

    @staticmethod
    def _event(
        alert_id: int, state: str, c: Condition, t: float, detail: Mapping[str, Any],
        raised_at: float,
    ) -> AlertEvent:
        return AlertEvent(
            0, alert_id, state, c.type, c.severity, c.uav, c.other_uav, c.zone, c.clearance,
            float(t), raised_at, float(c.lat), float(c.lon), float(c.alt_m), dict(detail),
        )

    def _enqueue(self, events: Sequence[AlertEvent]) -> None:
        """Hand events to the writer, in order (urgent ones to their own lane)."""
        if not events:
            return
        if self._closed:
            for e in events:
                self.metrics.inc("lowalt_alert_events_dropped_total")
                log.warning("alert event after shutdown dropped: %s %s %s", e.state, e.type, e.uav)
            return
        queue, urgent = self._queue, self._urgent
        if URGENT_TYPES.isdisjoint(map(_TYPE_OF, events)):
            queue.extend(events)
        else:
            for e in events:
                (urgent if e.type in URGENT_TYPES else queue).append(e)
        self._idle.clear()
        self._wakeup.set()

    async def _wait_for_room(self) -> None:
        while len(self._queue) >= self.max_pending_events and not self._closed:
            self._room.clear()
            await self._room.wait()

    # -- the writer ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        queue, urgent = self._queue, self._urgent
        while True:
            if not queue and not urgent:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not urgent and self.commit_delay_s > 0:
                await asyncio.sleep(self.commit_delay_s)
            # Seq is given here, so an urgent event taken ahead still keeps seq = commit order.
            lane = urgent if urgent else queue
            n = min(len(lane), self.max_batch_events)
            first = self._seq + 1
            events = [e.numbered(first + i) for i, e in enumerate(itertools.islice(lane, n))]
            await self._commit(events)
            for _ in range(n):
                lane.popleft()
            self._seq = events[-1].seq
            self.broadcaster.publish(events)  # same step as the seq update: feeds rely on it
            for state, count in Counter(map(_STATE_OF, events)).items():
                self.metrics.inc("lowalt_alert_events_total", count, state=state)
            if len(queue) < self.max_pending_events:
                self._room.set()

    async def _commit(self, events: list[AlertEvent]) -> None:
        """Commit events, retrying until they are in; a lost answer is settled by max(seq)."""
        while True:
            started = time.monotonic()
            try:
                await self.store.append_events(events)
                self.metrics.observe("lowalt_alert_commit_seconds", time.monotonic() - started)
                return
            except Exception as exc:
                self.metrics.inc("lowalt_alert_commit_failures_total")
                log.warning("alert events %d..%d not committed, retrying: %s",
                            events[0].seq, events[-1].seq, exc)
            await asyncio.sleep(self.retry_delay_s)
            try:
                if await self.store.max_seq() >= events[-1].seq:
                    return  # the failure was in the answer, not the commit
            except Exception as exc:
                log.debug("max_seq after failed commit: %s", exc)
