"""Conformance of a whole batch in one pass (`VolumeTable`) against the per-volume reference
(`conformance`): the same figures bit for bit, and the same check-stage outcome
(`ClearanceService.on_committed`) as grouping reports per clearance and checking each group."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.bench_clearances import MemoryClearanceStore
from dispatch.alerts import Condition
from geofence.clearance_service import (
    CLEARANCE_TYPES,
    Clearance,
    ClearanceService,
    _condition,
)
from geofence.clearances import (
    Conformance,
    RouteRequest,
    VolumeTable,
    build_volume,
    conformance,
)
from lowalt.models import Observation
from lowalt.settings import Settings

T0 = 1_800_000_000.0
TOL = 30.0
LON0, LAT0 = 106.50, 29.60
M_PER_DEG_LAT = 110_852.0
M_PER_DEG_LON = 96_900.0


def _route(uav: str, points_m: Sequence[tuple[float, float, float]], *, departure: float = T0,
           speed: float = 10.0, corridor: float = 30.0, vertical: float = 15.0) -> RouteRequest:
    coords = tuple((LON0 + x / M_PER_DEG_LON, LAT0 + y / M_PER_DEG_LAT, z)
                   for x, y, z in points_m)
    return RouteRequest(uav, coords, departure, speed, corridor, vertical)


def _assert_same(got: Conformance, want: Conformance, rows: Any) -> None:
    """The figures of `got` at `rows` are exactly `want`."""
    for name, g, w in zip(Conformance._fields, got, want, strict=True):
        assert np.array_equal(g[rows], w), name


# -- the batch figures against the per-volume reference ------------------------------------------
# Whole metres, so no two points are within rounding of each other; a vertical leg is allowed.
point_m = st.tuples(st.integers(-3000, 3000), st.integers(-3000, 3000), st.integers(20, 140))
route_st = st.fixed_dictionaries({
    "points": st.lists(point_m, min_size=2, max_size=6, unique=True),
    "speed": st.floats(2.0, 30.0), "corridor": st.floats(5.0, 80.0),
    "vertical": st.floats(2.0, 30.0), "departure": st.floats(T0 - 600.0, T0 + 600.0),
})
# A report: which route, when (as a fraction of the flight, or exactly at a route point), and how
# far from the centreline (often exactly on it, so ties between pieces are common).
report_st = st.tuples(
    st.integers(0, 5),
    st.one_of(st.floats(-0.2, 1.2), st.integers(0, 5)),
    st.one_of(st.just((0.0, 0.0, 0.0)),
              st.tuples(st.floats(-120, 120), st.floats(-120, 120), st.floats(-40, 40))),
    st.one_of(st.just(0.0), st.floats(-200.0, 200.0)),
    st.booleans(),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(route_st, min_size=1, max_size=6), st.lists(report_st, min_size=1, max_size=60),
       st.floats(0.5, 60.0), st.integers(0, 3))
def test_batch_equals_per_volume(routes: list[dict[str, Any]], reports: list[Any],
                                 piece_s: float, churn: int) -> None:
    """Any routes and reports: each report gets from the batch pass exactly the figures that
    `conformance` gives it against its own volume (with holes and a replaced volume too)."""
    volumes = {}
    for k, r in enumerate(routes):
        req = _route(f"U{k}", r["points"], departure=r["departure"], speed=r["speed"],
                     corridor=r["corridor"], vertical=r["vertical"])
        volumes[f"c{k}"] = build_volume(req, tolerance_s=TOL, piece_s=piece_s)
    table = VolumeTable()
    for k in range(churn):  # holes left by removed volumes, and a volume replaced
        table.add(f"gone{k}", volumes[f"c{k % len(volumes)}"])
    for cid, v in volumes.items():
        table.add(cid, volumes["c0"] if churn and cid == "c0" else v)
        table.add(cid, v)
    for k in range(churn):
        assert table.remove(f"gone{k}")
    assert not table.remove("never")
    cids, lon, lat, alt, t, ground = [], [], [], [], [], []
    for which, when, (dx, dy, dz), dt, on_ground in reports:
        cid = f"c{which % len(volumes)}"
        v = volumes[cid]
        if isinstance(when, int):
            at = float(v.t_nom[min(when, v.t_nom.size - 1)])
        else:
            at = v.valid_from + (v.valid_to - v.valid_from) * when
        x, y, z = v.expected_position(at)
        cids.append(cid)
        lon.append(x + dx / M_PER_DEG_LON)
        lat.append(y + dy / M_PER_DEG_LAT)
        alt.append(z + dz)
        t.append(at + dt)
        ground.append(on_ground)
    got = table.conformance(cids, lon, lat, alt, t, ground)
    arrays = [np.asarray(a) for a in (lon, lat, alt, t, ground)]
    for cid, v in volumes.items():
        rows = [i for i, c in enumerate(cids) if c == cid]
        if rows:
            _assert_same(got, conformance(v, *(a[rows] for a in arrays)), rows)
    for i in range(len(cids)):  # one at a time too: a row's figures do not depend on the others
        _assert_same(got, conformance(volumes[cids[i]], *(a[i : i + 1] for a in arrays)), [i])


def test_a_volume_larger_than_a_pass_and_compaction() -> None:
    """A volume with more pieces than one pass takes (20,000), many reports; then enough volumes
    removed that the table compacts itself, with the same figures after."""
    long_req = _route("LONG", [(-10_000, 0, 100), (10_000, 0, 100)], speed=10.0)
    long = build_volume(long_req, tolerance_s=TOL, piece_s=0.1)
    assert len(long) > 10_000
    short = build_volume(_route("S", [(0, -500, 80), (0, 500, 90)]), tolerance_s=TOL,
                         piece_s=1.0)
    table = VolumeTable([("long", long), ("short", short)])
    rng = np.random.default_rng(5)
    n = 200
    which = rng.integers(0, 2, n)
    cids = ["long" if w == 0 else "short" for w in which]
    x = rng.uniform(-11_000, 11_000, n)
    y = rng.normal(0.0, 40.0, n)
    lon, lat = LON0 + x / M_PER_DEG_LON, LAT0 + y / M_PER_DEG_LAT
    alt = rng.uniform(70.0, 130.0, n)
    t = T0 + rng.uniform(-100.0, 2100.0, n)
    ground = rng.random(n) < 0.3

    def check() -> None:
        got = table.conformance(cids, lon, lat, alt, t, ground)
        for cid, v in (("long", long), ("short", short)):
            rows = np.flatnonzero(which == (0 if cid == "long" else 1))
            _assert_same(got, conformance(v, lon[rows], lat[rows], alt[rows], t[rows],
                                          ground[rows]), rows)

    check()
    for k in range(2):
        table.add(f"extra{k}", long)
    assert table.remove("extra0") and table.remove("extra1")  # holes outnumber live: compacts
    assert len(table) == 2 and "long" in table and "extra0" not in table
    check()
    with pytest.raises(KeyError):
        table.conformance(["extra0"], lon[:1], lat[:1], alt[:1], t[:1], ground[:1])


# -- the check stage against grouping reports per clearance ---------------------------------------
class _Alerts:
    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, float], list[Condition]]] = []

    async def assess(self, types: frozenset[str], evaluated: Mapping[str, float],
                     present: Sequence[Condition],
                     evaluated_at: Mapping[str, Sequence[float]] | None = None) -> None:
        assert types == CLEARANCE_TYPES
        self.calls.append((dict(evaluated), list(present)))

    async def resolve(self, key: Any, t: float, detail: Mapping[str, Any]) -> None:
        pass


class _PerClearance(ClearanceService):
    """The check stage as it was: reports grouped per clearance, `conformance` per group."""

    async def on_committed(self, rows: Sequence[Observation],
                           advanced: Sequence[Observation]) -> None:
        mine = sorted((r for r in rows if r.uav in self._by_uav), key=lambda r: (r.uav, r.t))
        groups: dict[str, list[Observation]] = {}
        for r in mine:
            cid = self._clearance_for(r.uav, r.t)
            if cid is not None:
                groups.setdefault(cid, []).append(r)
        present: list[Condition] = []
        evaluated: dict[str, float] = {}
        for cid, obs in groups.items():
            present.extend(await self._group(cid, obs))
            uav = obs[0].uav
            evaluated[uav] = max(evaluated.get(uav, obs[-1].t), obs[-1].t)
        if evaluated:
            await self.alerts.assess(CLEARANCE_TYPES, evaluated, present)

    async def _group(self, cid: str, obs: list[Observation]) -> list[Condition]:
        volume, clearance = self._volumes.get(cid), self.live.get(cid)
        if volume is None or clearance is None:
            return []
        ground = np.array([r.status == "ground" for r in obs])
        conf = conformance(volume, [r.lon for r in obs], [r.lat for r in obs],
                           [r.alt_m for r in obs], [r.t for r in obs], ground)
        if clearance.state == "granted":
            await self._change(cid, "active")
        found: list[Condition] = []
        for k, r in enumerate(obs):
            if conf.at_end[k]:
                ended = await self._change(cid, "completed")
                if ended is not None:
                    await self._end_alerts(ended, r.t)
                return []
            if ground[k]:
                continue
            if not conf.inside[k]:
                found.append(_condition("off_route", r, cid, {
                    "distance_m": round(float(conf.distance_m[k]), 1),
                    "vertical_m": round(float(conf.vertical_m[k]), 1),
                    "corridor_m": volume.corridor_m, "vertical_limit_m": volume.vertical_m}))
            if conf.early_s[k] > 0.0 or conf.late_s[k] > 0.0:
                key = "early_s" if conf.early_s[k] > 0.0 else "late_s"
                found.append(_condition("clearance_violation", r, cid, {
                    key: round(float(max(conf.early_s[k], conf.late_s[k])), 1),
                    "along_m": round(float(conf.along_m[k]), 1),
                    "expected_along_m": round(float(volume.expected_along_m(r.t)), 1)}))
        return found if cid in self.live else []


async def _stage(kind: type[ClearanceService], clearances: Sequence[Clearance]
                 ) -> tuple[ClearanceService, _Alerts]:
    alerts = _Alerts()
    service = kind(MemoryClearanceStore(clearances), cast(Any, alerts), cast(Any, None),
                   Settings(clearance_time_tolerance_s=TOL, clearance_piece_s=20.0,
                            clearance_activation_lead_s=300.0))
    await service.start()
    return service, alerts


def _clearances(rng: np.random.Generator) -> list[Clearance]:
    """UAVs with one clearance, some with two (one after the other, or overlapping)."""
    found = []
    for k in range(12):
        uav = f"U{k % 8}"
        heading = rng.uniform(0.0, 2 * math.pi)
        length = rng.uniform(300.0, 2500.0)
        x0, y0 = rng.uniform(-2000, 2000, 2)
        points = [(x0, y0, 100.0), (x0 + length * math.sin(heading),
                                    y0 + length * math.cos(heading), rng.uniform(60, 120))]
        if rng.random() < 0.5:
            points.append((points[0][0], points[0][1] + 10.0, 100.0))  # back to the start
        dep = T0 + rng.uniform(-300.0, 900.0)
        req = _route(uav, points, departure=dep, speed=rng.uniform(5.0, 20.0),
                     corridor=rng.uniform(10.0, 60.0), vertical=rng.uniform(5.0, 20.0))
        v = build_volume(req, tolerance_s=TOL, piece_s=20.0)
        state = "granted" if rng.random() < 0.5 else "active"
        found.append(Clearance(f"c{k:02d}", req, None, state, (), v.valid_from, v.valid_to,
                               T0, T0))
    return found


def _reports(rng: np.random.Generator, clearances: Sequence[Clearance], n: int
             ) -> list[Observation]:
    rows = []
    for _ in range(n):
        c = clearances[int(rng.integers(len(clearances)))]
        v = build_volume(c.request, tolerance_s=TOL, piece_s=20.0)
        t = c.valid_from + (c.valid_to - c.valid_from) * rng.uniform(-0.1, 1.05)
        if rng.random() < 0.15:
            t = c.valid_to  # at the end of the route (it completes)
        lon, lat, alt = v.expected_position(t)
        if rng.random() < 0.2:
            lat += rng.normal(0.0, 100.0) / M_PER_DEG_LAT
        if rng.random() < 0.1:
            alt += rng.normal(0.0, 40.0)
        if rng.random() < 0.1:
            t += rng.choice([-1.0, 1.0]) * rng.uniform(0.0, 400.0)
        status = "ground" if rng.random() < 0.1 else "airborne"
        rows.append(Observation(c.uav, float(t), lat, lon, alt, None, None, None, None, status,
                                None, None, "test/http/native", float(t)))
    return rows


@pytest.mark.parametrize("seed", range(6))
async def test_check_stage_matches_per_clearance_groups(seed: int) -> None:
    rng = np.random.default_rng(seed)
    clearances = _clearances(rng)
    fast, fast_alerts = await _stage(ClearanceService, clearances)
    slow, slow_alerts = await _stage(_PerClearance, clearances)
    for _ in range(4):
        batch = _reports(rng, clearances, int(rng.integers(1, 60)))
        await fast.on_committed(batch, [])
        await slow.on_committed(batch, [])
        assert fast_alerts.calls == slow_alerts.calls
        assert {c.id: c.state for c in fast.live.values()} == {
            c.id: c.state for c in slow.live.values()}
    assert fast_alerts.calls and any(present for _, present in fast_alerts.calls)


async def test_a_clearance_cancelled_while_the_stage_waits_says_nothing() -> None:
    """A clearance cancelled while the stage activates it (a listener cancels it) raises no
    condition for its reports and does not fail the batch; the other clearances are checked."""
    req = _route("GONE", [(0, 0, 100), (1000, 0, 100)])
    other = _route("STAY", [(0, 500, 100), (1000, 500, 100)])
    clearances = [Clearance(cid, r, None, "granted", (), T0, T0 + 100.0, T0, T0)
                  for cid, r in (("c-gone", req), ("c-stay", other))]
    service, alerts = await _stage(ClearanceService, clearances)

    async def cancel_on_activation(c: Clearance) -> None:
        if c.id == "c-gone" and c.state == "active":
            await service.cancel(c.id)

    service.change_listeners.append(cancel_on_activation)
    off = [Observation(r.uav, T0 + 50.0, LAT0 + 300 / M_PER_DEG_LAT, LON0 + 500 / M_PER_DEG_LON,
                       100.0, None, None, None, None, "airborne", None, None, "t", T0)
           for r in (req, other)]
    await service.on_committed(off, [])
    assert "c-gone" not in service.live and service.live["c-stay"].state == "active"
    (evaluated, present), = alerts.calls
    assert evaluated == {"GONE": T0 + 50.0, "STAY": T0 + 50.0}
    assert [(c.type, c.clearance) for c in present] == [("off_route", "c-stay")]
