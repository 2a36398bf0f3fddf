"""The traffic monitor: conflicts every tick, lost telemetry, implausible motion.

Every `monitor_tick_s` the monitor takes the live picture's airborne UAVs with fresh positions
(reported within their `lost_after_s`), hands them to the vectorised conflict detector (which
extrapolates each to the tick from its own `t`), and reports the pairs found to the alert manager
as one condition batch (arrays; a pair's `Condition` is built only when its alert opens, updates
or resolves), which keeps one alert per pair and resolves it with hysteresis. The same tick
raises `telemetry_lost` for airborne UAVs silent past their expected interval (per gateway:
`[gateways.<name>] lost_after_s = 30` in the config file, for satellite links) and resolves it as
soon as the UAV reports again. `implausible_motion` is checked on every committed batch: a UAV
whose consecutive reports imply a speed beyond what any UAV flies (after allowing for the
reported position accuracy) is flagged. With a fused picture (lowalt/fusion.py) the aircraft are
the fused ones, by canonical id, and an aircraft is fresh while ANY of its sources is.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from dispatch.alerts import MATERIAL, AlertManager, Condition, ConditionBatch
from geofence.conflicts import (
    CONFLICT_PREDICTED,
    SEPARATION_LOSS,
    ConflictParams,
    detect_conflict_arrays,
)
from lowalt.fusion import FusedPicture, StateColumns
from lowalt.live import LiveState
from lowalt.models import Observation, floats_of, values_of
from lowalt.settings import Settings

log = logging.getLogger("lowalt.monitor")

CONFLICT_TYPES = frozenset({"separation_loss", "conflict_predicted"})
MOTION_TYPES = frozenset({"implausible_motion"})
EARTH_RADIUS_M = 6_371_008.8
DEFAULT_ACCURACY_M = 10.0
_KEPT = ("t", "lat", "lon", "alt_m", "acc_h_m")  # of each UAV's previous report (MotionCheck)
T = TypeVar("T")
TICK_SLICE = 2_000  # aircraft sorted into fresh and silent per turn of the event loop
LOST_SLICE = 250  # telemetry_lost alerts opened or resolved per turn of the event loop


@dataclass
class TickResult:
    tick_t: float
    aircraft: int
    conflicts: int
    lost: int
    seconds: float


class _Stopwatch:
    """Time since creation, less the time spent in `pause` (other tasks' turns)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.paused = 0.0
        self.steps = 0

    async def pause(self) -> None:
        """Let the event loop run its other tasks once."""
        started = time.perf_counter()
        await asyncio.sleep(0)
        self.paused += time.perf_counter() - started

    async def slices(self, items: list[T], size: int) -> AsyncIterator[list[T]]:
        """items, size at a time, pausing between slices."""
        for start in range(0, len(items), size):
            if start:
                await self.pause()
            yield items[start : start + size]

    async def step(self, every: int) -> None:
        """Count a step of work; pause after every `every` of them."""
        self.steps += 1
        if self.steps % every == 0:
            await self.pause()

    def seconds(self) -> float:
        return time.perf_counter() - self.started - self.paused


class TrafficMonitor:
    def __init__(
        self, live: LiveState, alerts: AlertManager, settings: Settings,
        clock: Callable[[], float] = time.time, fused: FusedPicture | None = None,
    ) -> None:
        self.live, self.alerts, self.settings, self.clock = live, alerts, settings, clock
        self.params = ConflictParams(
            h_m=settings.separation_h_m, v_m=settings.separation_v_m,
            crewed_h_m=settings.crewed_separation_h_m, crewed_v_m=settings.crewed_separation_v_m,
            lookahead_s=settings.lookahead_s,
        )
        gateways = settings.extra.get("gateways", {})
        self.lost_after_by_gateway: dict[str, float] = {
            name: float(table["lost_after_s"])
            for name, table in (gateways.items() if isinstance(gateways, Mapping) else [])
            if isinstance(table, Mapping) and "lost_after_s" in table
        }
        self._lost_after_by_source: dict[str, float] = {}  # source -> lost_after_s, cached
        self.lost: set[str] = set()
        # When set, the monitor works on fused aircraft: one row per canonical aircraft, silent
        # only when every one of its sources is.
        self.fused = fused

    def lost_after_s(self, row: Observation) -> float:
        return self.lost_after_of(row.source)

    def lost_after_of(self, source: str) -> float:
        """Seconds of silence after which a source's aircraft is lost: its gateway's
        `lost_after_s` when configured, else the setting."""
        limit = self._lost_after_by_source.get(source)
        if limit is None:
            if len(self._lost_after_by_source) >= 10_000:
                self._lost_after_by_source.clear()
            limit = self._lost_after_by_source[source] = self.lost_after_by_gateway.get(
                source.split("/", 1)[0], self.settings.lost_after_s)
        return limit

    async def tick(self, tick_t: float | None = None) -> TickResult:
        """One tick. Without fusion, the rows are sorted into fresh and silent `TICK_SLICE` at
        a time, the event loop taking its turn between slices, over a snapshot taken at the
        start; with it, the fused picture's columns are, at once (`FusedPicture.airborne`,
        `heard`). telemetry_lost changes go `LOST_SLICE` at a time, so ingest is never held for
        a whole pass. `seconds` counts the tick's own work (and its wait for the pair search),
        not the other tasks run between its slices."""
        watch = _Stopwatch()
        now = self.clock() if tick_t is None else tick_t
        silent: list[Observation] = []
        if self.fused is None:
            fresh_rows: list[Observation] = []
            limits, lost_after_s = self._lost_after_by_source, self.lost_after_s
            async for rows in watch.slices(list(self.live.latest.values()), TICK_SLICE):
                for row in rows:
                    if row.status == "ground":
                        continue
                    limit = limits.get(row.source)
                    if limit is None:
                        limit = lost_after_s(row)
                    (fresh_rows if now - row.t <= limit else silent).append(row)
            fresh = StateColumns.from_rows(fresh_rows)
        else:
            picture = self.fused
            airborne = picture.airborne()
            heard = picture.heard(airborne.slots, now, self.lost_after_of)
            fresh = airborne.take(np.flatnonzero(heard))
            quiet = np.flatnonzero(~heard).tolist()
            lost, uavs, slots = self.lost, airborne.uavs, airborne.slots
            silent = [s for s in map(picture.state_of, (int(slots[k]) for k in quiet
                                                        if uavs[k] not in lost))
                      if s is not None]
        # The pair search runs on a worker thread (numpy releases the GIL for most of it), so a
        # tick over tens of thousands of aircraft does not stall ingest on the event loop.
        conflicts = await asyncio.to_thread(self._conflicts, fresh, now)
        evaluated = dict.fromkeys(fresh.uavs, now)
        await self.alerts.assess(CONFLICT_TYPES, evaluated, batches=[conflicts])
        await self._telemetry_lost(fresh, silent, now, watch)
        return TickResult(now, len(fresh), len(conflicts), len(self.lost), watch.seconds())

    def _conflicts(self, fresh: StateColumns, now: float) -> ConditionBatch:
        """The conflicting pairs among the fresh aircraft as one condition batch; a pair's
        `uav` is the one whose id sorts first, its position the condition's."""
        if len(fresh) < 2:
            return ConditionBatch.empty()
        lat, lon, alt_m, crewed = fresh.lat, fresh.lon, fresh.alt_m, fresh.crewed
        p = detect_conflict_arrays(lat, lon, alt_m, fresh.t, fresh.speed_mps, fresh.track_deg,
                                   fresh.vspeed_mps, crewed, now, self.params)
        names = np.array(fresh.uavs, dtype=object)
        swap = names[p.i] > names[p.j]
        first, second = np.where(swap, p.j, p.i), np.where(swap, p.i, p.j)
        uav, other = names[first].tolist(), names[second].tolist()
        kinds = np.array([CONFLICT_PREDICTED, SEPARATION_LOSS], dtype=object)[
            p.lost_now.astype(np.intp)].tolist()
        pair_crewed = crewed[first] | crewed[second]
        told = {"cpa_m": np.round(p.cpa_m, 1), "cpa_v_m": np.round(p.cpa_v_m, 1),
                "t_los_s": np.round(p.t_los_s, 1), "crewed": pair_crewed.astype(np.float64)}
        values = np.column_stack([told[name] for name in MATERIAL[SEPARATION_LOSS]])
        pair_lat, pair_lon, pair_alt_m = lat[first], lon[first], alt_m[first]
        lists: list[list[Any]] = []  # the columns as Python lists, made on first use
        new_tuple = tuple.__new__

        # The builder keeps pair-sized columns only, never `rows`: the alert manager holds a
        # batch while an alert points at it, and a tick's rows are every aircraft's state.
        def conditions(ks: Sequence[int]) -> list[Condition]:
            if not lists:  # detail rounded as `values` is (numpy), to 0.1 m or s
                lists.extend(col.tolist() for col in (
                    pair_lat, pair_lon, pair_alt_m, p.lost_now, np.round(p.h_now_m, 1),
                    np.round(p.v_now_m, 1), told["t_los_s"], np.round(p.cpa_s, 1),
                    told["cpa_m"], told["cpa_v_m"], pair_crewed))
            (a_lat, a_lon, a_alt_m, lost_now, h_now, v_now, t_los, cpa_s, cpa_m, cpa_v,
             pair_is_crewed) = lists
            # tuple.__new__: the named tuple without its Python-level constructor (a dense
            # hub's first tick builds 30,000 of these at once).
            return [
                new_tuple(Condition, (
                    kinds[k], uav[k], "critical" if lost_now[k] else "warning", now, a_lat[k],
                    a_lon[k], a_alt_m[k], None, other[k], None, {
                        "h_now_m": h_now[k], "v_now_m": v_now[k], "t_los_s": t_los[k],
                        "cpa_s": cpa_s[k], "cpa_m": cpa_m[k], "cpa_v_m": cpa_v[k],
                        "crewed": pair_is_crewed[k],
                    },
                ))
                for k in ks
            ]

        def condition(k: int) -> Condition:
            return conditions((k,))[0]

        return ConditionBatch(
            kinds, uav, other, np.where(p.lost_now, 2, 1), np.full(len(uav), now),
            pair_lat, pair_lon, pair_alt_m, values, condition, conditions,
        )

    async def _telemetry_lost(
        self, fresh: StateColumns, silent: list[Observation], now: float, watch: _Stopwatch
    ) -> None:
        """Resolve telemetry_lost for the fresh, open it for the newly silent; the event loop
        takes a turn after every `LOST_SLICE` alerts (a sky going quiet at once opens
        thousands)."""
        back = [k for k, uav in enumerate(fresh.uavs) if uav in self.lost] if self.lost else []
        for k in back:
            uav = fresh.uavs[k]
            self.lost.discard(uav)
            await self.alerts.resolve(("telemetry_lost", uav, ""), now,
                                      {"silent_s": round(now - float(fresh.t[k]), 1)})
            await watch.step(LOST_SLICE)
        for row in silent:
            if row.uav not in self.lost:
                self.lost.add(row.uav)
                await self.alerts.open_or_update(Condition(
                    type="telemetry_lost", uav=row.uav, severity="warning", t=row.t,
                    lat=row.lat, lon=row.lon, alt_m=row.alt_m,
                    detail={"last_report_t": row.t, "expected_interval_s": self.lost_after_s(row),
                            "source": row.source},
                ))
                await watch.step(LOST_SLICE)

    async def run(self) -> None:
        """Tick forever at monitor_tick_s; a failing tick is logged, never fatal."""
        period = self.settings.monitor_tick_s
        while True:
            started = time.monotonic()
            try:
                result = await self.tick()
                if result.seconds > period:
                    log.warning("monitor tick took %.3f s for %d aircraft", result.seconds,
                                result.aircraft)
            except Exception:
                log.exception("monitor tick failed")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))


class MotionCheck:
    """Check stage: flags reports whose implied speed from the previous one is impossible.

    Each UAV's previous report is kept as a slot of columns (t, lat, lon, alt_m, acc_h_m), so a
    batch is compared and written back in numpy; per row, only the dict lookup of its slot."""

    name = "motion"

    def __init__(self, alerts: AlertManager, settings: Settings) -> None:
        self.alerts = alerts
        self.max_speed_mps = settings.max_plausible_speed_mps
        self.max_vspeed_mps = settings.max_plausible_vspeed_mps
        self._slot_of: dict[str, int] = {}
        self._last = np.empty((0, len(_KEPT)), dtype=np.float64)  # per slot: _KEPT

    def previous(self, uav: str) -> dict[str, float] | None:
        """The UAV's newest report so far, as `_KEPT` values (None: none yet)."""
        slot = self._slot_of.get(uav)
        if slot is None:
            return None
        return dict(zip(_KEPT, self._last[slot].tolist(), strict=True))

    def implausible(self, rows: Sequence[Observation]) -> list[Condition]:
        """The rows whose speed from the UAV's previous report is beyond any UAV's (each row
        against the newest report before this batch); every row becomes its UAV's previous (a
        UAV's last row in the batch stays)."""
        uavs = values_of(rows, "uav")
        n = len(uavs)
        if not n:
            return []
        slot_of = self._slot_of
        slots = np.fromiter(map(slot_of.get, uavs, itertools.repeat(-1)), np.int64, n)
        seen = np.flatnonzero(slots >= 0)  # rows whose UAV reported before this batch
        if seen.size < n:  # first reports: a slot per new UAV
            for k in np.flatnonzero(slots < 0).tolist():
                slots[k] = slot_of.setdefault(uavs[k], len(slot_of))
            if len(slot_of) > self._last.shape[0]:
                grown = np.empty((max(len(slot_of), 2 * self._last.shape[0], 1024), len(_KEPT)))
                grown[: self._last.shape[0]] = self._last
                self._last = grown
        now = np.column_stack([floats_of(rows, name) for name in _KEPT])
        before = self._last[slots[seen]]
        # Every row becomes its UAV's previous: the last row of each UAV in the batch.
        last_slots, from_end = np.unique(slots[::-1], return_index=True)
        self._last[last_slots] = now[n - 1 - from_end]
        if not seen.size:
            return []
        after = now[seen]
        t0, lat0, lon0, z0, acc0 = before.T
        t1, lat1, lon1, z1, acc1 = after.T
        a = DEFAULT_ACCURACY_M
        acc0 = np.where(np.isnan(acc0) | (acc0 == 0.0), a, acc0)  # unknown (or 0): the default
        acc1 = np.where(np.isnan(acc1) | (acc1 == 0.0), a, acc1)
        phi0, phi1 = np.radians(lat0), np.radians(lat1)
        h = (np.sin((phi1 - phi0) / 2) ** 2
             + np.cos(phi0) * np.cos(phi1) * np.sin(np.radians(lon1 - lon0) / 2) ** 2)
        dist_m = 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))
        dt_s = t1 - t0
        with np.errstate(divide="ignore", invalid="ignore"):
            h_speed = np.maximum(dist_m - acc0 - acc1, 0.0) / dt_s
            v_speed = np.maximum(np.abs(z1 - z0) - 2 * a, 0.0) / dt_s
        bad = (dt_s > 0) & ((h_speed > self.max_speed_mps) | (v_speed > self.max_vspeed_mps))
        found = []
        for k in np.flatnonzero(bad).tolist():
            c = rows[int(seen[k])]
            p_t, p_lat, p_lon, p_alt = before[k, :4].tolist()
            found.append(Condition(
                type="implausible_motion", uav=c.uav, severity="warning", t=c.t, lat=c.lat,
                lon=c.lon, alt_m=c.alt_m,
                detail={"implied_speed_mps": round(float(h_speed[k]), 1),
                        "implied_vspeed_mps": round(float(v_speed[k]), 1),
                        "distance_m": round(float(dist_m[k]), 1), "dt_s": round(float(dt_s[k]), 3),
                        "previous": {"t": p_t, "lat": p_lat, "lon": p_lon, "alt_m": p_alt}},
            ))
        return found

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        present = self.implausible(advanced)
        evaluated = dict(zip(values_of(advanced, "uav"), floats_of(advanced, "t").tolist(),
                             strict=True))
        await self.alerts.assess(MOTION_TYPES, evaluated, present)
