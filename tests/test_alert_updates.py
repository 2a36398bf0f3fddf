"""When an open alert sends `updated` (dispatch/alerts.py): a severity change at once, a material
change at most once per update_min_s, anything else only as a refresh every refresh_s; the same
through `Condition`s and through `ConditionBatch` rows. Events go to an in-memory store."""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import dispatch.alerts as alerts_module
from dispatch.alerts import (
    MATERIAL,
    SEVERITY_RANK,
    AlertEvent,
    AlertManager,
    Broadcaster,
    Condition,
    ConditionBatch,
)
from dispatch.store import AlertStore, LoadedState
from lowalt.auth import Registry
from lowalt.errors import ConfigError
from lowalt.identity import UnregisteredCheck
from lowalt.models import Observation
from lowalt.settings import load_settings
from lowalt.storage import UavRecord
from lowalt.storage.sqlite import SqliteStore

T0 = 1_764_000_000.0
PAIR = frozenset({"conflict_predicted", "separation_loss"})
ZONE = frozenset({"geofence_breach", "geofence_approach"})


class MemoryStore:
    """Enough of an AlertStore: the events, in order."""

    def __init__(self) -> None:
        self.events: list[AlertEvent] = []

    async def load_state(self) -> LoadedState:
        return LoadedState(0, 0, [])

    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        self.events.extend(events)

    async def max_seq(self) -> int:
        return len(self.events)


@asynccontextmanager
async def manager(**kw: Any) -> AsyncIterator[tuple[AlertManager, MemoryStore]]:
    store = MemoryStore()
    kw = {"clear_s": 3.0, "update_min_s": 1.0, "refresh_s": 10.0, "commit_delay_s": 0.0, **kw}
    m = AlertManager(cast(AlertStore, store), Broadcaster(), **kw)
    await m.start()
    try:
        yield m, store
    finally:
        await m.close()


def pair(t: float, *, cpa_m: float = 100.0, t_los_s: float | None = None, cpa_v_m: float = 5.0,
         severity: str = "warning", lat: float = 29.7, uav: str = "A", other: str = "B",
         kind: str = "conflict_predicted", crewed: bool = False) -> Condition:
    if t_los_s is None:
        t_los_s = max(20.0 - (t - T0), 0.0)
    return Condition(kind, uav, severity, t, lat, 106.6, 80.0, other_uav=other, detail={
        "h_now_m": 300.0, "v_now_m": 3.0, "t_los_s": t_los_s, "cpa_s": t_los_s + 5.0,
        "cpa_m": cpa_m, "cpa_v_m": cpa_v_m, "crewed": crewed,
    })


def zone_hit(t: float, *, distance_m: float = 100.0, agl_m: float = 50.0, lat: float = 29.7,
             uav: str = "U1", kind: str = "geofence_approach") -> Condition:
    return Condition(kind, uav, "warning", t, lat, 106.6, 300.0, zone="Z1", detail={
        "zone_name": "z", "restriction": "prohibited", "agl_m": agl_m, "distance_m": distance_m,
    })


def as_batch(conditions: Sequence[Condition]) -> ConditionBatch:
    """The conditions as a batch, the way the check stages build one."""
    names = list(MATERIAL[conditions[0].type])
    return ConditionBatch(
        [c.type for c in conditions], [c.uav for c in conditions],
        [c.key[2] for c in conditions], [SEVERITY_RANK[c.severity] for c in conditions],
        [c.t for c in conditions], [c.lat for c in conditions], [c.lon for c in conditions],
        [c.alt_m for c in conditions],
        np.array([[float(c.detail[name]) for name in names] for c in conditions]).reshape(
            len(conditions), len(names)),
        lambda k: conditions[k],
    )


async def feed(m: AlertManager, types: frozenset[str], conditions: Sequence[Condition],
               path: str) -> None:
    evaluated: dict[str, float] = {}
    for c in conditions:
        for uav in (c.uav, c.other_uav):
            if uav is not None:
                evaluated[uav] = max(evaluated.get(uav, c.t), c.t)
    if path == "conditions":
        await m.assess(types, evaluated, conditions)
    elif path == "numbered":
        await m.assess(types, evaluated, batches=[numbered(as_batch(conditions), evaluated)]
                       if conditions else [])
    else:
        await m.assess(types, evaluated, batches=[as_batch(conditions)] if conditions else [])


def numbered(batch: ConditionBatch, evaluated: Mapping[str, float]) -> ConditionBatch:
    """batch with the numbers a stage may give for finding its rows' alerts (type codes, ids
    of the refs, each row's UAV's place in evaluated)."""
    place = {uav: k for k, uav in enumerate(evaluated)}
    return ConditionBatch(
        batch.types, batch.uav, batch.ref, batch.severity, batch.t, batch.lat, batch.lon,
        batch.alt_m, batch.values, batch.condition,
        type_codes=np.array([alerts_module.ALERT_TYPE_CODE[k] for k in batch.types], np.int64),
        ref_ids=np.array(list(map(id, batch.ref)), np.int64),
        uav_at=np.array([place.get(uav, -1) for uav in batch.uav], np.int64))


async def told(m: AlertManager, store: MemoryStore) -> list[tuple[str, float]]:
    assert await m.flush(5)
    return [(e.state, e.t) for e in store.events]


@pytest.mark.parametrize("path", ["conditions", "batch", "numbered"])
async def test_pair_updates_only_with_news(path: str) -> None:
    async with manager() as (m, store):
        steps = [  # t_los_s counts down from 20 at T0 unless said otherwise
            (pair(T0), "open"),
            (pair(T0 + 1, cpa_m=104.0, lat=29.701), None),  # cpa 4 m closer: within 20 %
            (pair(T0 + 2, cpa_m=70.0), "updated"),  # 34 m: material
            (pair(T0 + 2.5, cpa_m=40.0), None),  # material, but within update_min_s
            (pair(T0 + 3, cpa_m=40.0), "updated"),  # still material against 70: now it goes
            (pair(T0 + 4, cpa_m=42.0, cpa_v_m=8.0), None),  # 2 m, 3 m: small
            (pair(T0 + 5.5, cpa_m=40.0, t_los_s=13.0), None),  # 1.5 s sooner than its countdown
            (pair(T0 + 6, cpa_m=40.0, t_los_s=10.0), "updated"),  # 4 s sooner
            (pair(T0 + 6.2, cpa_m=40.0, t_los_s=9.8, severity="critical"), "updated"),  # at once
            (pair(T0 + 7.2, cpa_m=40.0, t_los_s=9.0, severity="critical", crewed=True), "updated"),
            (pair(T0 + 7.5, cpa_m=41.0, t_los_s=8.5, severity="critical", crewed=True,
                  lat=29.71), None),  # moved, small changes: kept for the refresh
            (pair(T0 + 17.5, cpa_m=41.0, t_los_s=0.0, severity="critical", crewed=True,
                  lat=29.72), "updated"),  # refresh_s since the last event, and it moved
            (pair(T0 + 29, cpa_m=41.0, t_los_s=0.0, severity="critical", crewed=True,
                  lat=29.72), None),  # nothing changed at all: no refresh either
        ]
        expected = []
        for c, state in steps:
            await feed(m, PAIR, [c], path)
            if state is not None:
                expected.append((state, c.t))
            assert m.open_alerts()[0]["t"] == c.t  # the newest condition is always known
            assert m.open_alerts()[0]["lat"] == c.lat
        assert await told(m, store) == expected
        updated = [e for e in store.events if e.state == "updated"]
        assert [e.detail["cpa_m"] for e in updated] == [70.0, 40.0, 40.0, 40.0, 40.0, 41.0]
        assert updated[-1].lat == 29.72
        # Gone: resolved after clear_s, with the newest condition.
        await m.assess(PAIR, {"A": T0 + 30}, [])
        await m.assess(PAIR, {"B": T0 + 33}, [])
        assert await told(m, store) == [*expected, ("resolved", T0 + 33)]
        assert store.events[-1].detail["cpa_m"] == 41.0 and store.events[-1].lat == 29.72


@pytest.mark.parametrize("path", ["conditions", "batch", "numbered"])
async def test_zone_updates_only_with_news(path: str) -> None:
    async with manager() as (m, store):
        steps = [
            (zone_hit(T0), "open"),
            (zone_hit(T0 + 1, distance_m=85.0, agl_m=54.0, lat=29.7001), None),  # 15 m, 4 m
            (zone_hit(T0 + 2, distance_m=75.0), "updated"),  # 25 m of 100: material
            (zone_hit(T0 + 3, distance_m=75.0, agl_m=61.0), "updated"),  # 11 m of 50: material
            (zone_hit(T0 + 4, distance_m=78.0, agl_m=59.0, lat=29.7002), None),
            (zone_hit(T0 + 13, distance_m=78.0, agl_m=59.0, lat=29.7003), "updated"),  # refresh
            (zone_hit(T0 + 13.5, kind="geofence_breach", distance_m=0.0), "open"),  # another key
        ]
        expected = []
        for c, state in steps:
            await feed(m, ZONE, [c], path)
            if state is not None:
                expected.append((state, c.t))
        assert await told(m, store) == expected
        assert len(m.open_alerts()) == 2  # the approach is absent, not yet for clear_s


@pytest.mark.parametrize("path", ["conditions", "batch", "numbered"])
async def test_easing_is_news_only_when_the_distance_doubles(path: str) -> None:
    """cpa_m falling by max(5 m, 20 %) is news; rising (the pair moving apart) only by
    max(5 m, 100 %); the same for a zone approach's distance_m."""
    async with manager() as (m, store):
        for t, cpa_m in ((0, 40.0), (1, 75.0), (2, 79.0), (3, 85.0), (4, 60.0), (5, 80.0)):
            await feed(m, PAIR, [pair(T0 + t, cpa_m=cpa_m, t_los_s=0.0,
                                      kind="separation_loss", severity="critical")], path)
        for t, distance_m in ((0, 10.0), (1, 19.0), (2, 21.0), (3, 35.0), (4, 15.0)):
            await feed(m, ZONE, [zone_hit(T0 + t, distance_m=distance_m)], path)
        assert [(e.type, e.state, e.t) for e in await _events(m, store)] == [
            ("separation_loss", "open", T0), ("separation_loss", "updated", T0 + 3),
            ("separation_loss", "updated", T0 + 4), ("geofence_approach", "open", T0),
            ("geofence_approach", "updated", T0 + 2), ("geofence_approach", "updated", T0 + 4)]


@pytest.mark.parametrize("path", ["conditions", "batch", "numbered"])
async def test_late_data_is_ignored(path: str) -> None:
    async with manager() as (m, store):
        await feed(m, PAIR, [pair(T0 + 5)], path)
        await feed(m, PAIR, [pair(T0 + 1, cpa_m=10.0, severity="critical")], path)
        assert await told(m, store) == [("open", T0 + 5)]
        assert m.open_alerts()[0]["t"] == T0 + 5


@pytest.mark.parametrize("path", ["conditions", "batch", "numbered"])
async def test_a_pass_of_several_reports_is_judged_at_the_newest(path: str) -> None:
    """One pass holding a UAV's reports in a zone at some t and out at later t (a frame of
    several reports, or groups checked together): the alert is updated from the earlier ones
    and its hysteresis runs from the first report after the last sighting, judged at the
    newest. Without evaluated_at the pass is one instant: the alert stays open."""
    async def assess(m: AlertManager, rows: list[Condition], times: list[float] | None) -> None:
        at = {"U1": times} if times else None
        newest = times[-1] if times else rows[-1].t
        if path == "conditions":
            await m.assess(ZONE, {"U1": newest}, rows, evaluated_at=at)
        elif path == "numbered":
            await m.assess(ZONE, {"U1": newest}, batches=[numbered(as_batch(rows), {"U1": 0})],
                           evaluated_at=at)
        else:
            await m.assess(ZONE, {"U1": newest}, batches=[as_batch(rows)], evaluated_at=at)

    async with manager() as (m, store):
        await assess(m, [zone_hit(T0)], None)
        # In at T0 + 1 and T0 + 2, out at T0 + 3 and T0 + 6: clear for 3 s since T0 + 3.
        await assess(m, [zone_hit(T0 + 1), zone_hit(T0 + 2)], [T0 + 1, T0 + 2, T0 + 3, T0 + 6])
        assert [(e.state, e.t) for e in await _events(m, store)] == [
            ("open", T0), ("resolved", T0 + 6)]
    async with manager() as (m, store):
        await assess(m, [zone_hit(T0)], None)
        # Out at T0 + 3 and T0 + 5.5: 2.5 s since the first report without it, not yet ...
        await assess(m, [zone_hit(T0 + 1), zone_hit(T0 + 2)], [T0 + 1, T0 + 2, T0 + 3, T0 + 5.5])
        assert m.open_alerts() != []
        await m.assess(ZONE, {"U1": T0 + 6})  # ... and resolved at 3 s
        assert [(e.state, e.t) for e in await _events(m, store)] == [
            ("open", T0), ("resolved", T0 + 6)]
    async with manager() as (m, store):
        await assess(m, [zone_hit(T0)], None)
        # Not seen at all in a pass of T0 + 1 ... T0 + 4: absent since T0 + 1.
        await m.assess(ZONE, {"U1": T0 + 4}, evaluated_at={"U1": [T0 + 1, T0 + 2, T0 + 4]})
        assert [(e.state, e.t) for e in await _events(m, store)] == [
            ("open", T0), ("resolved", T0 + 4)]
    async with manager() as (m, store):
        await assess(m, [zone_hit(T0)], None)
        await m.assess(ZONE, {"U1": T0 + 10}, [zone_hit(T0 + 1), zone_hit(T0 + 2)])
        assert [e.state for e in await _events(m, store)] == ["open"]


async def test_batch_with_a_key_twice_takes_its_rows_in_order() -> None:
    async with manager() as (m, store):
        rows = [pair(T0), pair(T0, uav="C", other="D"), pair(T0 + 1, cpa_m=10.0),
                pair(T0 + 1.5, severity="critical")]
        await m.assess(PAIR, {"A": T0 + 1.5, "C": T0}, batches=[as_batch(rows)])
        assert [(e.state, e.uav, e.t) for e in await _events(m, store)] == [
            ("open", "A", T0), ("open", "C", T0), ("updated", "A", T0 + 1),
            ("updated", "A", T0 + 1.5)]
        assert [a["severity"] for a in m.open_alerts()] == ["critical", "warning"]


async def test_batch_and_conditions_share_one_alert() -> None:
    """A stage may open an alert by a batch and update it by a condition (and back)."""
    async with manager() as (m, store):
        await m.assess(PAIR, {"A": T0}, batches=[as_batch([pair(T0)])])
        await m.open_or_update(pair(T0 + 1, cpa_m=104.0))  # small: nothing
        await m.open_or_update(pair(T0 + 2, cpa_m=50.0))  # material
        await m.assess(PAIR, {"A": T0 + 3}, batches=[as_batch([pair(T0 + 3, cpa_m=52.0)])])
        await m.assess(PAIR, {"A": T0 + 4}, batches=[as_batch([pair(T0 + 4, cpa_m=20.0)])])
        assert [(e.state, e.t) for e in await _events(m, store)] == [
            ("open", T0), ("updated", T0 + 2), ("updated", T0 + 4)]


async def test_many_batches_keep_the_newest_condition_of_a_silent_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches are let go of while alerts still need their rows: the condition is kept."""
    monkeypatch.setattr(alerts_module, "_KEEP_ROWS", 20)
    async with manager(clear_s=1_000.0) as (m, store):
        await m.assess(PAIR, {"A": T0, "B": T0}, batches=[as_batch([pair(T0 + 0.5, lat=29.75)])])
        for k in range(1, 60):  # A and B stop being seen; C-D go on, one batch a tick
            t = T0 + k
            await m.assess(PAIR, {"C": t, "D": t}, batches=[as_batch([
                pair(t, uav="C", other="D", lat=29.6 + k * 1e-4)])])
        assert len(m._batches) <= 16 and m._kept_rows <= 20
        assert m._kept_rows == sum(map(len, m._batches.values()))
        alerts = {a["uav"]: a for a in m.open_alerts()}
        assert (alerts["A"]["lat"], alerts["A"]["t"]) == (29.75, T0 + 0.5)
        assert alerts["C"]["lat"] == pytest.approx(29.6 + 59 * 1e-4)
        await m.resolve(("conflict_predicted", "A", "B"), T0 + 70)
        resolved = (await _events(m, store))[-1]
        assert (resolved.state, resolved.lat) == ("resolved", 29.75)


async def test_alerts_resolved_together_report_their_newest_batch_rows() -> None:
    """Alerts that resolve in one pass, pointing at rows of several batches (no event since
    their news-less sightings), each report its own newest row: position, time and detail."""
    async with manager(clear_s=2.0) as (m, store):
        uavs = ["U1", "U2", "U3"]
        await m.assess(ZONE, dict.fromkeys(uavs, T0), batches=[as_batch(
            [zone_hit(T0, uav=u) for u in uavs])])
        # A little nearer (no event, the batch row is newest): U1 and U2 in one batch, U3 in
        # another.
        for group in (uavs[:2], uavs[2:]):
            t = T0 + 0.5
            await m.assess(ZONE, dict.fromkeys(group, t), batches=[as_batch(
                [zone_hit(t, uav=uav, lat=29.7 + (k + 1) * 1e-6, distance_m=99.0 - k)
                 for k, uav in enumerate(uavs) if uav in group])])
        await m.assess(ZONE, dict.fromkeys(uavs, T0 + 1.0), batches=[])  # gone from here on
        await m.assess(ZONE, dict.fromkeys(uavs, T0 + 3.0), batches=[])
        resolved = [e for e in await _events(m, store) if e.state == "resolved"]
    assert [(e.uav, e.t, e.lat, e.detail["distance_m"]) for e in resolved] == [
        (uav, T0 + 3.0, 29.7 + (k + 1) * 1e-6, 99.0 - k) for k, uav in enumerate(uavs)]


async def test_small_batches_are_kept_by_rows_so_no_condition_is_built_for_nothing() -> None:
    """At high ingest rates batches are small and many (commit groups of ~1,000 rows): while
    the rows they hold are few, they stay, and an alert whose UAV is seen again in a later batch
    never has its condition built in between (each costs a Condition and a detail dict)."""
    built: list[int] = []

    def counted(conditions: Sequence[Condition]) -> ConditionBatch:
        plain = as_batch(conditions)
        return ConditionBatch(plain.types, plain.uav, plain.ref, plain.severity, plain.t,
                              plain.lat, plain.lon, plain.alt_m, plain.values,
                              lambda k: built.append(k) or conditions[k])

    async with manager(clear_s=1_000.0) as (m, store):
        uavs = [f"U{k:02d}" for k in range(40)]
        await m.assess(ZONE, dict.fromkeys(uavs, T0), batches=[
            counted([zone_hit(T0, uav=u) for u in uavs])])
        opened = len(built)
        for rnd in range(1, 4):  # each UAV in a batch of its own, a little nearer each round
            for k, uav in enumerate(uavs):
                t = T0 + rnd + k / 100
                await m.assess(ZONE, {uav: t}, batches=[
                    counted([zone_hit(t, uav=uav, lat=29.7 + rnd * 1e-6)])])
        assert opened == 40 and len(built) == 40  # no news, no let-go: nothing built since
        assert len(m._batches) > 40 and m._kept_rows == len(m._batches)
        assert {a["lat"] for a in m.open_alerts()} == {29.7 + 3e-6}
        assert [e.state for e in await _events(m, store)] == ["open"] * 40


class _Rows:
    """Stands for the rows a check stage's batch builder reads (weakly referable)."""

    def __init__(self, conditions: Sequence[Condition]) -> None:
        self.conditions = list(conditions)


def holding_batch(conditions: Sequence[Condition]) -> tuple[ConditionBatch, weakref.ref[_Rows]]:
    """A batch whose builder holds an object, and a weak reference that tells when the batch
    (the only holder) is let go of."""
    rows = _Rows(conditions)
    plain = as_batch(conditions)
    batch = ConditionBatch(plain.types, plain.uav, plain.ref, plain.severity, plain.t,
                           plain.lat, plain.lon, plain.alt_m, plain.values,
                           lambda k: rows.conditions[k])
    return batch, weakref.ref(rows)


async def test_a_batch_is_kept_only_while_an_alert_points_at_it() -> None:
    """A tick's batch holds what its builder reads (a monitor tick: every aircraft's state):
    the manager must not keep it unless an open alert's newest condition is one of its rows."""
    async with manager(clear_s=1_000.0) as (m, store):
        opening, opened_ref = holding_batch([pair(T0)])
        await m.assess(PAIR, {"A": T0, "B": T0}, batches=[opening])
        del opening
        assert opened_ref() is None  # the open built its condition: nothing points at the batch
        updating, updated_ref = holding_batch([pair(T0 + 1, lat=29.71)])
        await m.assess(PAIR, {"A": T0 + 1, "B": T0 + 1}, batches=[updating])
        del updating
        assert updated_ref() is not None  # the alert's newest condition is its row 0
        other, other_ref = holding_batch([pair(T0 + 2, uav="C", other="D")])
        await m.assess(PAIR, {"C": T0 + 2, "D": T0 + 2}, batches=[other])
        del other
        assert other_ref() is None
        assert updated_ref() is not None
        alerts = {a["uav"]: a for a in m.open_alerts()}  # builds A's newest condition
        assert (alerts["A"]["t"], alerts["A"]["lat"]) == (T0 + 1, 29.71)
        assert [(e.state, e.uav) for e in await _events(m, store)] == [
            ("open", "A"), ("open", "C")]


@pytest.mark.parametrize("evaluated_n", [10, 40, 200])
async def test_absent_alerts_resolve_however_many_uavs_are_evaluated(evaluated_n: int) -> None:
    """Fewer, as many, or more UAVs evaluated than alerts open (the manager finds the absent
    alerts from the UAVs or from the alerts): exactly those evaluated resolve after clear_s."""
    async with manager(clear_s=3.0) as (m, store):
        rows = [zone_hit(T0, uav=f"U{j:03d}") for j in range(100)]
        await m.assess(ZONE, {}, batches=[as_batch(rows)])
        for dt in (1.0, 4.0):
            evaluated = {f"U{j:03d}": T0 + dt for j in range(0, 2 * evaluated_n, 2)}
            await m.assess(ZONE, evaluated, batches=[])
        resolved = [e.uav for e in await _events(m, store) if e.state == "resolved"]
        assert resolved == sorted(f"U{j:03d}" for j in range(0, min(2 * evaluated_n, 100), 2))
        assert len(m.open_alerts()) == 100 - len(resolved)


async def test_many_open_alerts_grow_the_slots() -> None:
    async with manager(clear_s=0.0) as (m, store):
        rows = [pair(T0, uav=f"U{k:04d}", other=f"V{k:04d}") for k in range(3_000)]
        await m.assess(PAIR, {}, batches=[as_batch(rows)])
        await m.assess(PAIR, {f"U{k:04d}": T0 + 1 for k in range(0, 3_000, 2)},
                       batches=[as_batch(rows[1::2])])
        assert len(m.open_alerts()) == 1_500
        rows = [pair(T0 + 2, uav=f"W{k:04d}", other="X") for k in range(2_000)]
        await m.assess(PAIR, {}, batches=[as_batch(rows)])
        events = await _events(m, store)
        assert [e.state for e in events].count("open") == 5_000
        assert [e.state for e in events].count("resolved") == 1_500
        assert len({e.alert_id for e in events}) == 5_000
        assert len(m.open_alerts()) == 3_500


def test_a_batch_must_be_of_types_with_material_values() -> None:
    c = Condition("emergency", "U1", "critical", T0, 29.7, 106.6, 80.0)
    batch = ConditionBatch(["emergency"], ["U1"], [""], [2], [T0], [29.7], [106.6], [80.0],
                           np.empty((1, 0)), lambda k: c)
    m = AlertManager(cast(AlertStore, MemoryStore()), Broadcaster())
    with pytest.raises(ValueError, match="MATERIAL"):
        m._observe_batch(batch, 1, {}, None)
    with pytest.raises(ValueError, match="rows"):
        ConditionBatch(["emergency"], ["U1", "U2"], [""], [2], [T0], [29.7], [106.6], [80.0],
                       np.empty((2, 0)), lambda k: c)


async def _events(m: AlertManager, store: MemoryStore) -> list[AlertEvent]:
    assert await m.flush(5)
    return store.events


def test_refresh_setting() -> None:
    assert load_settings({}, {}).alert_refresh_s == 10.0
    assert load_settings({}, {"LOWALT_ALERT_REFRESH_S": "30"}).alert_refresh_s == 30.0
    with pytest.raises(ConfigError, match="alert_refresh_s: must be positive"):
        load_settings({}, {"LOWALT_ALERT_REFRESH_S": "0"})


def test_filing_links_slots_under_their_uavs_and_walks_them_for_many_at_once() -> None:
    from dispatch.filing import UavFiling

    rng = np.random.default_rng(7)
    filing = UavFiling(slot_capacity=256)
    model: dict[str, set[int]] = {}
    free = list(range(256))
    rng.shuffle(free)
    uavs = [f"U{k}" for k in range(6)]
    for step in range(400):
        if free and (rng.random() < 0.5 or not model):
            # Slots one at a time (filed by scalar steps) or many at once (in numpy), some UAVs
            # given several (a hub's pairs), some nodes side 1.
            batch_uavs, nodes = [], []
            for _ in range(int(rng.choice([1, 3, 12, 30]))):
                if not free:
                    break
                slot = free.pop()
                sides = [0, 1] if rng.random() < 0.3 else [0]
                named = rng.choice(uavs, len(sides), replace=False)
                for side, uav in zip(sides, named, strict=True):
                    batch_uavs.append(str(uav))
                    nodes.append(2 * slot + side)
                    model.setdefault(str(uav), set()).add(2 * slot + side)
            filing.file(batch_uavs, nodes)
        else:
            uav = sorted(model)[int(rng.integers(0, len(model)))]
            node = sorted(model[uav])[int(rng.integers(0, len(model[uav])))]
            filing.unfile(uav, node)
            model[uav].discard(node)
            if not model[uav]:
                del model[uav]
            if not any(node // 2 == n // 2 for held in model.values() for n in held):
                free.append(node // 2)
        assert set(filing.code_of) == set(model), step
        asked = [*uavs, "nobody", uavs[0]]  # one never filed, one asked twice
        walked, owner = filing.walk(filing.codes(asked, len(asked)))
        assert sorted(zip(owner.tolist(), walked.tolist(), strict=True)) == sorted(
            (k, n) for k, uav in enumerate(asked) for n in model.get(uav, ())), step
        for uav in uavs:
            assert filing.slots_of(uav) == {n // 2 for n in model.get(uav, ())}
    assert len(filing) == len(model)
    filing.grow(4096)  # keeps what is filed
    for uav in uavs:
        assert filing.slots_of(uav) == {n // 2 for n in model.get(uav, ())}
    # Past the first 1,024 codes, one at a time and many at once (the code table grows).
    for k in range(1_500):
        filing.file([f"V{k}"], [2 * (256 + k)])
    filing.file([f"W{k}" for k in range(1_500)], [2 * (2048 + k) for k in range(1_500)])
    asked = [f"V{k}" for k in range(1_500)] + [f"W{k}" for k in range(1_500)]
    walked, owner = filing.walk(filing.codes(asked, len(asked)))
    assert sorted(zip(owner.tolist(), (walked // 2).tolist(), strict=True)) == [
        *((k, 256 + k) for k in range(1_500)), *((1_500 + k, 2048 + k) for k in range(1_500))]


def _assert_filed_as_the_open_alerts_name(m: AlertManager) -> None:
    """Each UAV's filed slots are exactly the open alerts that name it (as uav or other_uav)."""
    naming: dict[str, set[int]] = {}
    for key, slot in m._slot_of.items():
        alert = m._by_slot[slot]
        assert alert is not None and alert.key == key
        for uav in {alert.uav, alert.other_uav} - {None}:
            naming.setdefault(cast(str, uav), set()).add(slot)
        assert bool(m._paired[slot]) == (alert.other_uav is not None)
    assert {u: m._filing.slots_of(u) for u in m._filing.code_of} == naming
    # The open alerts counted by type (`assess` skips a pass whose types have none open).
    by_type = Counter(alerts_module._TYPE_CODE[key[0]] for key in m._slot_of)
    assert m._open_of_type.tolist() == [by_type[k] for k in range(len(alerts_module._TYPE_LIST))]


async def test_filed_slots_follow_the_open_alerts_and_find_pairs_by_either_uav() -> None:
    async with manager(clear_s=0.0) as (m, store):
        # 6,000 UAVs in pairs (past the first 1,024 slots), and 1,000 pairs sharing one UAV.
        rows = [pair(T0, uav=f"U{k:04d}", other=f"V{k:04d}") for k in range(3_000)]
        rows += [pair(T0, uav=f"W{k:04d}", other="X") for k in range(1_000)]
        await m.assess(PAIR, {}, batches=[as_batch(rows)])
        await m.open_or_update(zone_hit(T0, uav="U0001"))  # U0001: two alerts, one a pair
        _assert_filed_as_the_open_alerts_name(m)
        # Only the other UAV of every second U-V pair evaluated (and not in conflict): those
        # pairs resolve; a UAV with no alert evaluated changes nothing.
        await m.assess(PAIR, {**{f"V{k:04d}": T0 + 1 for k in range(0, 3_000, 2)},
                              "nobody": T0 + 1})
        _assert_filed_as_the_open_alerts_name(m)
        assert "V0000" not in m._filing and "V0001" in m._filing
        # X evaluated (it holds a set of slots): every W-X pair resolves.
        await m.assess(PAIR, {"X": T0 + 2})
        _assert_filed_as_the_open_alerts_name(m)
        assert "X" not in m._filing
        # U0001 evaluated: its pair resolves, its zone alert (another type) stays.
        await m.assess(PAIR, {"U0001": T0 + 3})
        assert held_alerts(m) == {("geofence_approach", "U0001")} | {
            ("conflict_predicted", f"U{k:04d}") for k in range(3, 3_000, 2)}
        _assert_filed_as_the_open_alerts_name(m)
        await m.assess(PAIR, {f"U{k:04d}": T0 + 4 for k in range(3_000)})
        await m.resolve(zone_hit(T0, uav="U0001").key, T0 + 4)
        assert not m.open_alerts() and not m._filing
        # The slots again, for alerts of one UAV each: nothing of the pairs left on them.
        await m.assess(ZONE, {}, batches=[as_batch(
            [zone_hit(T0 + 5, uav=f"Z{k:04d}") for k in range(4_000)])])
        _assert_filed_as_the_open_alerts_name(m)
        events = await _events(m, store)
    assert [e.state for e in events].count("resolved") == 4_001


def held_alerts(m: AlertManager) -> set[tuple[str, str]]:
    return {(a["type"], a["uav"]) for a in m.open_alerts()}


async def test_an_alert_whose_condition_was_told_keeps_none_and_rebuilds_it_exactly() -> None:
    source = {"source": "gw/gateway/native"}
    c = Condition("unregistered_uav", "U1", "warning", T0 + 0.1234567891, 29.123456789012,
                  106.5, 321.25, detail=source)
    async with manager() as (m, store):
        await m.open_or_update(c)
        alert = m._by_slot[m._slot_of[c.key]]
        assert alert is not None and alert.latest is None  # no Condition (nor its floats) kept
        (shown,) = m.open_alerts()
        assert (shown["t"], shown["lat"], shown["lon"], shown["alt_m"], shown["severity"],
                shown["zone"], shown["detail"]) == (c.t, c.lat, c.lon, c.alt_m, "warning", None,
                                                    source)
        later = c._replace(t=c.t + 1, lat=c.lat + 1e-6)  # no news yet: kept as it is
        await m.open_or_update(later)
        assert alert.latest is later and m.open_alerts()[0]["lat"] == later.lat
        worse = later._replace(t=c.t + 2, severity="critical")  # told at once, then let go
        await m.open_or_update(worse)
        assert alert.latest is None and m.open_alerts()[0]["severity"] == "critical"
        await m.resolve(c.key, c.t + 3)
        events = await _events(m, store)
    assert [(e.state, e.severity, e.t) for e in events] == [
        ("open", "warning", c.t), ("updated", "critical", worse.t),
        ("resolved", "critical", c.t + 3)]
    assert (events[-1].lat, events[-1].lon, events[-1].alt_m, dict(events[-1].detail)) == (
        worse.lat, worse.lon, worse.alt_m, source)
    # A condition with a zone (or pair, or clearance) is kept: the key does not say which.
    async with manager() as (m, _):
        hit = Condition("clearance_violation", "U1", "warning", T0, 29.7, 106.6, 80.0,
                        zone="Z1", detail={"why": "x"})
        await m.open_or_update(hit)
        alert = m._by_slot[m._slot_of[hit.key]]
        assert alert is not None and alert.latest is hit


async def test_unregistered_uavs_of_one_source_share_one_detail(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "r.db"))
    await store.open()
    registry = Registry(store)
    await registry.register(UavRecord("KNOWN", "op1"))
    try:
        async with manager() as (m, events):
            check = UnregisteredCheck(registry, m)
            rows = [obs(uav, T0 + k, "gw/gateway/native") for k, uav in enumerate(
                ["S1", "S2", "KNOWN", "S1"])] + [obs("S3", T0, "op/http/native")]
            await check.on_committed(rows, rows)
            details = {a["uav"]: m._latest(m._slot_of[("unregistered_uav", a["uav"], "")]).detail
                       for a in m.open_alerts()}
            assert sorted(details) == ["S1", "S2", "S3"]  # once each, the registered one not
            assert details["S1"] is details["S2"] and details["S3"] == {"source": "op/http/native"}
            await registry.register(UavRecord("S2", "op1"))
            await check.on_committed([obs("S2", T0 + 9, "gw/gateway/native")], [])
            told = [(e.state, e.uav, dict(e.detail)) for e in await _events(m, events)]
    finally:
        await store.close()
    assert told == [("open", "S1", {"source": "gw/gateway/native"}),
                    ("open", "S2", {"source": "gw/gateway/native"}),
                    ("open", "S3", {"source": "op/http/native"}),
                    ("resolved", "S2", {"registered": True})]


def obs(uav: str, t: float, source: str) -> Observation:
    return Observation(uav, t, 29.7, 106.6, 80.0, None, None, None, None, None, None, None,
                       source, t)


async def test_a_batch_finds_its_alerts_by_the_ref_objects_their_keys_hold_else_by_key() -> None:
    def hits(t: float, uavs: Sequence[str], refs: Sequence[str]) -> list[Condition]:
        return [Condition("geofence_approach", u, "warning", t, 29.7, 106.6, 300.0, zone=r,
                          detail={"zone_name": "z", "restriction": "prohibited", "agl_m": 50.0,
                                  "distance_m": 100.0})
                for u, r in zip(uavs, refs, strict=True)]

    def filed(m: AlertManager, evaluated: Mapping[str, float]) -> tuple[Any, Any]:
        return m._filing.walk(m._filing.codes(evaluated, len(evaluated)))

    async with manager() as (m, store):
        zones = [f"Z{k}" for k in range(4)]
        uavs = ["U0", "U0", "U1", "U2"]  # U0 in two zones
        evaluated = dict.fromkeys(uavs, T0)
        await m.assess(ZONE, evaluated, batches=[as_batch(hits(T0, uavs, zones))])
        await m.open_or_update(pair(T0, uav="U1", other="U2"))  # U2 holds it as other_uav
        await m.open_or_update(Condition("unregistered_uav", "U0", "warning", T0, 29.7, 106.6,
                                         300.0))
        opened = {c.key: m._slot_of[c.key] for c in hits(T0, uavs, zones)}
        # The same zone objects: every row finds its alert in numpy, in row order.
        later = hits(T0 + 1, [*uavs, "U9"], [*zones, zones[0]])  # U9 not evaluated
        slots = m._slots_of_rows(as_batch(later), ZONE, evaluated, filed(m, evaluated))
        assert slots.tolist() == [*(opened[c.key] for c in later[:4]), -1]
        # Equal ids that are other objects: not found here, found by key in assess (no alert
        # opens twice), and so is a row whose UAV was not evaluated.
        copies = ["".join(["Z", str(k)]) for k in range(4)]
        assert copies == zones and not any(a is b for a, b in zip(copies, zones, strict=True))
        again = hits(T0 + 2, uavs, copies)
        assert (m._slots_of_rows(as_batch(again), ZONE, evaluated, filed(m, evaluated)) == -1).all()
        await m.assess(ZONE, evaluated, batches=[as_batch(again)])
        await m.assess(ZONE, {}, batches=[as_batch(hits(T0 + 2.5, ["U0"], [zones[1]]))])
        assert {m._slot_of[c.key] for c in again} == set(opened.values())
        # A stage that gives its refs' ids (the same objects each pass): an alert found by key
        # takes the row's ref object, and is found in numpy from the next pass on.
        await m.assess(ZONE, evaluated, batches=[numbered(as_batch(again), evaluated)])
        assert (m._slots_of_rows(as_batch(again), ZONE, evaluated, filed(m, evaluated))
                == [opened[c.key] for c in again]).all()
        assert all(m._alert(opened[c.key]).key[2] is c.zone for c in again)
        # A pair is found only under its own uav, not under its other_uav with the same ref.
        p = pair(T0, uav="U1", other="U2")
        held_ref = m._alert(m._slot_of[p.key]).key[2]
        rows = as_batch([p, pair(T0, uav="U2", other=held_ref)])
        pairs = m._slots_of_rows(rows, PAIR, {"U1": T0, "U2": T0}, filed(m, {"U1": T0, "U2": T0}))
        assert pairs.tolist() == [m._slot_of[p.key], -1]
        # Two keys whose mixed numbers are equal are still told apart: a U1 row whose ref id
        # is made to mix to U0's alert in Z0 does not take that alert.
        ntypes, code = len(alerts_module._TYPE_LIST), alerts_module._TYPE_CODE["geofence_approach"]
        slot = opened[hits(T0, ["U0"], [zones[0]])[0].key]
        def mixed(who: int) -> Any:  # arrays: numpy wraps their products silently
            return np.array([who], np.uint64) * alerts_module._MIX

        mix = mixed(0 * ntypes + code) ^ m._ref_id[[slot]].astype(np.uint64)  # U0: first
        forged = (mix ^ mixed(1 * ntypes + code)).astype(np.int64)  # U1: second
        plain = as_batch(hits(T0 + 3, ["U1"], [zones[0]]))
        crafted = ConditionBatch(plain.types, plain.uav, plain.ref, plain.severity, plain.t,
                                 plain.lat, plain.lon, plain.alt_m, plain.values,
                                 plain.condition, ref_ids=forged)
        assert m._slots_of_rows(crafted, ZONE, evaluated, filed(m, evaluated)).tolist() == [-1]
        events = await _events(m, store)
    assert [e.state for e in events].count("open") == 6  # 4 zones, the pair, unregistered
