"""The check stages' condition batches say what their conditions say: each row's key, severity,
time, position and `MATERIAL` values agree with the `Condition` it builds, so the alert manager's
array tests decide on what the events will carry."""

from __future__ import annotations

import gc
from typing import Any, cast

import numpy as np

from benchmarks.bench_conflicts import city_traffic, live_rows
from benchmarks.bench_geofence import T0, random_zones
from dispatch.alerts import (
    ALERT_TYPE_CODE,
    MATERIAL,
    SEVERITY_RANK,
    AlertManager,
    Condition,
    ConditionBatch,
)
from geofence.conflicts import ConflictParams, detect_conflicts
from geofence.index import ZoneIndex
from geofence.monitor import TrafficMonitor
from geofence.service import Geofence, ZoneStore
from lowalt.fusion import StateColumns
from lowalt.live import LiveState
from lowalt.models import Observation
from lowalt.settings import load_settings


def assert_rows_match(batch: ConditionBatch) -> None:
    assert len(batch) > 0
    for k in range(len(batch)):
        c = batch.condition(k)
        assert c.key == (batch.types[k], batch.uav[k], batch.ref[k])
        assert SEVERITY_RANK[c.severity] == batch.severity[k]
        assert (c.t, c.lat, c.lon, c.alt_m) == (
            batch.t[k], batch.lat[k], batch.lon[k], batch.alt_m[k])
        told = [float(c.detail[name]) for name in MATERIAL[c.type]]
        assert told == batch.values[k].tolist()
    # Built several at once (as the alert manager asks for opens and updates), row by row
    # alike, in the order asked, each with a detail of its own.
    every = [batch.condition(k) for k in range(len(batch))]
    assert batch.conditions() == every
    picked = list(range(len(batch)))[::-2]
    many = batch.conditions(picked)
    assert many == [every[k] for k in picked]
    assert all(type(c) is Condition for c in [*every, *many])
    assert len({id(c.detail) for c in many}) == len(many)
    # The numbers a batch may carry for finding its alerts say the same as its columns.
    if batch.type_codes is not None:
        assert batch.type_codes.tolist() == [ALERT_TYPE_CODE[kind] for kind in batch.types]
    if batch.ref_ids is not None:
        assert batch.ref_ids.tolist() == list(map(id, batch.ref))


def test_geofence_batch_matches_its_conditions() -> None:
    rng = np.random.default_rng(3)
    zones = random_zones(300, rng)
    n = 3_000
    rows = [Observation(f"U{k % 700}", T0 + 3600.0 + k, float(lat), float(lon), 250.0 + agl,
                        10.0, 0.0, 0.0, float(agl), None, None, None, "gw/native", T0)
            for k, (lat, lon, agl) in enumerate(zip(rng.uniform(29.4, 29.9, n),
                                                    rng.uniform(106.3, 106.9, n),
                                                    rng.uniform(0.0, 200.0, n), strict=True))]
    geofence = Geofence(cast(ZoneStore, None), cast(AlertManager, None), LiveState(),
                        load_settings({}, {}))
    index = ZoneIndex(zones)
    batch, _ = geofence.checked(rows, index)
    assert_rows_match(batch)
    assert batch.type_codes is not None and batch.ref_ids is not None
    assert batch.uav_at is None  # not asked for
    # Rows that are the evaluated UAVs in order, each once: each hit tells its UAV's row;
    # not with a crewed row among them (crewed rows are not checked but are evaluated).
    once = rows[:700]
    aligned, _, _ = geofence._checked(once, index, rows_evaluated=True)
    assert aligned.uav_at is not None and len(aligned) > 0
    assert [once[k].uav for k in aligned.uav_at.tolist()] == list(aligned.uav)
    crewed = [*once, once[0]._replace(uav="ABC123", source="gw/sbs")]
    assert geofence._checked(crewed, index, rows_evaluated=True)[0].uav_at is None
    agl, alt = np.array([r.agl_m for r in rows]), np.array([r.alt_m for r in rows])
    hits = index.check([r.lon for r in rows], [r.lat for r in rows], agl, alt, alt,
                       [r.t for r in rows], [r.uav for r in rows])  # geoid undulation 0
    assert hits
    assert [(c.uav, c.zone, c.type) for c in batch.conditions()] == [
        (rows[h.obs_index].uav, h.zone_id, f"geofence_{h.kind}") for h in hits]


def test_monitor_batch_matches_its_conditions_and_the_detector() -> None:
    data = city_traffic(3_000, hub_side_m=2_000.0)
    rows = live_rows(data)
    monitor = TrafficMonitor(LiveState(), cast(AlertManager, None), load_settings({}, {}))
    batch = monitor._conflicts(StateColumns.from_rows(rows), float(data["tick_t"]))
    assert_rows_match(batch)
    pairs = detect_conflicts(**data, params=ConflictParams())
    assert sorted((c.uav, c.other_uav, c.type) for c in batch.conditions()) == sorted(
        (*sorted((rows[p.i].uav, rows[p.j].uav)), p.kind) for p in pairs)


def _reachable(root: object, depth: int) -> list[Any]:
    """Objects reachable from root in at most `depth` references (breadth first)."""
    seen: dict[int, Any] = {}
    level = [root]
    for _ in range(depth):
        nxt = []
        for obj in level:
            for ref in gc.get_referents(obj):
                if id(ref) not in seen:
                    seen[id(ref)] = ref
                    nxt.append(ref)
        level = nxt
    return list(seen.values())


def test_monitor_batch_keeps_no_aircraft_state() -> None:
    """The alert manager keeps a batch while an alert points at one of its rows; a monitor
    batch must then hold its pairs' columns, not the tick's rows (every aircraft's state: it
    held 2-3 old reports of every UAV in memory, docs/BENCHMARKS.md)."""
    data = city_traffic(10_000)  # city-wide: a few pairs among many aircraft
    rows = live_rows(data)
    monitor = TrafficMonitor(LiveState(), cast(AlertManager, None), load_settings({}, {}))
    batch = monitor._conflicts(StateColumns.from_rows(rows), float(data["tick_t"]))
    assert 0 < len(batch) < len(rows)
    held = _reachable(batch, 6)
    assert not [obj for obj in held if isinstance(obj, Observation)]
    assert not [obj for obj in held if isinstance(obj, list) and len(obj) == len(rows)]
    assert_rows_match(batch)  # and the conditions are still right


def test_geofence_batch_keeps_no_observations() -> None:
    rng = np.random.default_rng(5)
    zones = random_zones(100, rng)
    rows = [Observation(f"U{k}", T0 + 3600.0, float(lat), float(lon), 100.0, 10.0, 0.0, 0.0,
                        50.0, None, None, None, "gw/native", T0)
            for k, (lat, lon) in enumerate(zip(rng.uniform(29.4, 29.9, 2_000),
                                               rng.uniform(106.3, 106.9, 2_000), strict=True))]
    geofence = Geofence(cast(ZoneStore, None), cast(AlertManager, None), LiveState(),
                        load_settings({}, {}))
    batch, _ = geofence.checked(rows, ZoneIndex(zones))
    assert 0 < len(batch) < len(rows)
    assert not [obj for obj in _reachable(batch, 6) if isinstance(obj, Observation)]
    assert_rows_match(batch)
