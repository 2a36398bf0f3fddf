"""The alert lifecycle and its durable log, on both backends: one open alert per key, updates
with news only, hysteresis, seq strictly increasing with no gap a reader can see, and restarts
that keep open alerts open and go on counting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from dispatch.alerts import AlertEvent, AlertManager, Broadcaster, Condition
from dispatch.store import AlertStore, EventQuery, alert_store_for
from lowalt.settings import Settings
from lowalt.storage import Store, create_store

BREACH = frozenset({"geofence_breach"})
PAIR = frozenset({"separation_loss"})
T0 = 1_764_000_000.0


def cond(uav: str = "U1", t: float = T0, *, type: str = "geofence_breach",
         severity: str = "critical", lat: float = 29.70, lon: float = 106.60,
         alt_m: float = 120.0, **kw: Any) -> Condition:
    if type.startswith("geofence") and "zone" not in kw:
        kw["zone"] = "Z1"
    return Condition(type=type, uav=uav, severity=severity, t=t, lat=lat, lon=lon, alt_m=alt_m,
                     **kw)


@asynccontextmanager
async def running_manager(store: Store, **kw: Any) -> AsyncIterator[AlertManager]:
    alert_store = alert_store_for(store)
    await alert_store.setup()
    kw.setdefault("commit_delay_s", 0.001)
    manager = AlertManager(alert_store, Broadcaster(), **kw)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


async def all_events(manager: AlertManager) -> list[AlertEvent]:
    assert await manager.flush(10)
    return await manager.store.events(EventQuery(limit=100_000))


async def test_lifecycle_updates_and_hysteresis(store: Store) -> None:
    """Updates only with news (see tests/test_alert_updates.py for the rule itself);
    hysteresis; one alert per key at a time."""
    async with running_manager(store, clear_s=3.0, update_min_s=1.0, refresh_s=10.0) as m:
        await m.assess(BREACH, {"U1": T0}, [cond(t=T0)])
        await m.assess(BREACH, {"U1": T0 + 0.5}, [cond(t=T0 + 0.5, lat=29.701)])  # moved: kept
        await m.assess(BREACH, {"U1": T0 + 1.0}, [cond(t=T0 + 1.0, lat=29.702)])  # not yet news
        assert m.open_alerts()[0]["lat"] == 29.702  # the newest position is known all the same
        await m.assess(BREACH, {"U1": T0 + 1.2},  # a severity change goes out at once
                       [cond(t=T0 + 1.2, lat=29.702, severity="warning")])
        await m.assess(BREACH, {"U1": T0 + 1.5},  # nothing changed: no event
                       [cond(t=T0 + 1.5, lat=29.702, severity="warning")])
        for k in range(10):  # hovering on the boundary: in, out, in, out ... never resolves
            t = T0 + 2 + k
            present = [cond(t=t, lat=29.702, severity="warning")] if k % 2 else []
            await m.assess(BREACH, {"U1": t}, present)
        for t in (T0 + 12, T0 + 13, T0 + 14):  # gone, but for less than clear_s
            await m.assess(BREACH, {"U1": t}, [])
        assert [a["uav"] for a in m.open_alerts()] == ["U1"]
        await m.assess(BREACH, {"U1": T0 + 15}, [])  # gone for clear_s: resolved
        assert m.open_alerts() == []
        await m.assess(BREACH, {"U1": T0 + 20}, [cond(t=T0 + 20)])  # a new breach: a new alert
        events = await all_events(m)
    assert [(e.seq, e.state) for e in events] == [
        (1, "open"), (2, "updated"), (3, "resolved"), (4, "open")]
    first, second = events[0].alert_id, events[3].alert_id
    assert {e.alert_id for e in events[:3]} == {first} and second != first
    assert (events[1].lat, events[1].t, events[1].severity) == (29.702, T0 + 1.2, "warning")
    resolved = events[2]
    assert (resolved.t, resolved.severity, resolved.zone) == (T0 + 15, "warning", "Z1")
    assert resolved.as_json() == {
        "seq": 3, "alert_id": first, "state": "resolved", "type": "geofence_breach",
        "severity": "warning", "uav": "U1", "other_uav": None, "zone": "Z1", "clearance": None,
        "t": T0 + 15, "raised_at": resolved.raised_at, "lat": 29.702, "lon": 106.6,
        "alt_m": 120.0, "detail": {},
    }
    assert AlertEvent.from_body(resolved.body) == resolved


def test_event_body_is_the_event_as_json() -> None:
    """The writer's body (orjson) says exactly what `as_json` says, read back by the standard
    library: numpy numbers, sets, read-only mappings and non-ASCII names included, and reads
    back as the same event."""
    detail = {"zone_name": "机场净空区 Zone", "agl_m": np.float64(101.3), "count": np.int64(3),
              "uavs": {"B", "A"}, "limits": MappingProxyType({"max_agl_m": 120.0}), 7: "seven"}
    event = AlertEvent(0, 12, "open", "geofence_breach", "critical", "U-é", None, "Z1", None,
                       T0 + 0.125, T0 + 0.5, 29.700000000000003, 106.6, 1e-07, detail)
    numbered = event.numbered(41)
    assert numbered[:-1] == (41, *event[1:-1]) and numbered.detail is detail
    assert json.loads(numbered.body) == {
        **{k: v for k, v in numbered.as_json().items() if k != "detail"},
        "detail": {"zone_name": "机场净空区 Zone", "agl_m": 101.3, "count": 3,
                   "uavs": ["A", "B"], "limits": {"max_agl_m": 120.0}, "7": "seven"},
    }
    assert json.loads(numbered.body)["lat"] == 29.700000000000003  # every digit that counts
    again = AlertEvent.from_body(numbered.body)
    assert again[:-2] == numbered[:-2] and again.body == numbered.body


async def test_scope_of_assess(store: Store) -> None:
    """assess resolves only its own types, for evaluated UAVs; a pair counts via either UAV."""
    async with running_manager(store, clear_s=0.0) as m:
        await m.open_or_update(cond("U1"))
        await m.open_or_update(cond("U2"))
        await m.open_or_update(cond("U1", type="altitude_limit", severity="warning"))
        await m.open_or_update(cond("A", type="separation_loss", other_uav="B",
                                    detail={"h_now_m": 20.0}))
        await m.assess(BREACH, {"U1": T0 + 1}, [])  # U2 not evaluated, altitude_limit not ours
        assert sorted((a["type"], a["uav"]) for a in m.open_alerts()) == [
            ("altitude_limit", "U1"), ("geofence_breach", "U2"), ("separation_loss", "A")]
        await m.assess(PAIR, {"B": T0 + 1}, [])  # evaluated through its other UAV
        await m.resolve(("altitude_limit", "U1", ""), T0 + 2, {"why": "landed"})
        await m.resolve(("altitude_limit", "U1", ""), T0 + 3)  # not open: nothing
        assert [a["uav"] for a in m.open_alerts()] == ["U2"]
        events = await all_events(m)
    assert [(e.type, e.uav, e.state) for e in events[4:]] == [
        ("geofence_breach", "U1", "resolved"), ("separation_loss", "A", "resolved"),
        ("altitude_limit", "U1", "resolved")]
    assert events[5].other_uav == "B" and events[5].detail == {"h_now_m": 20.0}
    assert events[6].detail == {"why": "landed"}
    with pytest.raises(ValueError, match="unknown alert type"):
        await m.open_or_update(cond(type="nonsense"))


@pytest.mark.parametrize("later_first", [False, True])
async def test_a_pair_alert_is_absent_from_the_later_of_its_uavs_evaluations(
        store: Store, later_first: bool) -> None:
    """A pair alert not seen is judged at the later of its two UAVs' evaluation times (in
    whichever order they were evaluated): its hysteresis starts there, and a later pass that
    evaluates one UAV only runs on from it."""
    async with running_manager(store, clear_s=5.0) as m:
        await m.open_or_update(cond("A", t=T0, type="separation_loss", other_uav="B"))
        evaluated = {"A": T0 + 1, "B": T0 + 5}  # absent from T0 + 5, not T0 + 1
        if later_first:
            evaluated = dict(reversed(evaluated.items()))
        await m.assess(PAIR, evaluated, [])
        await m.assess(PAIR, {"A": T0 + 7}, [])  # 2 s absent: kept
        assert [a["uav"] for a in m.open_alerts()] == ["A"]
        await m.assess(PAIR, {"B": T0 + 10}, [])  # 5 s: resolved, at B's time
        assert m.open_alerts() == []
        events = await all_events(m)
    assert [(e.state, e.t) for e in events] == [("open", T0), ("resolved", T0 + 10)]


async def test_a_pair_alert_absent_in_a_pass_of_several_reports_starts_at_its_later_uav(
        store: Store) -> None:
    """A pass that evaluated one UAV of a pair several times: the pair's hysteresis still
    starts at the later of its UAVs' newest evaluations, not at that UAV's first one."""
    async with running_manager(store, clear_s=5.0) as m:
        await m.open_or_update(cond("A", t=T0, type="separation_loss", other_uav="B"))
        await m.assess(PAIR, {"A": T0 + 4, "B": T0 + 2}, [],
                       evaluated_at={"A": [T0 + 1, T0 + 4]})  # absent from T0 + 4
        await m.assess(PAIR, {"A": T0 + 8.5}, [])  # 4.5 s: kept
        assert [a["uav"] for a in m.open_alerts()] == ["A"]
        await m.assess(PAIR, {"B": T0 + 9}, [])  # 5 s: resolved
        assert m.open_alerts() == []


async def test_one_open_alert_per_key(store: Store) -> None:
    async with running_manager(store) as m:
        async def report(uav: str, zone: str) -> None:
            for k in range(20):
                await m.open_or_update(cond(uav, T0 + k, zone=zone, lat=29.7 + k * 1e-4))
                await asyncio.sleep(0)

        await asyncio.gather(*(report(uav, zone) for uav in ("U1", "U2") for zone in ("Z1", "Z2")
                               for _ in range(3)))
        events = await all_events(m)
        open_now = m.open_alerts()
    assert sorted((a["uav"], a["zone"]) for a in open_now) == [
        ("U1", "Z1"), ("U1", "Z2"), ("U2", "Z1"), ("U2", "Z2")]
    opens = [e for e in events if e.state == "open"]
    assert sorted((e.uav, e.zone) for e in opens) == sorted((a["uav"], a["zone"])
                                                            for a in open_now)
    assert len({e.alert_id for e in events}) == 4
    state = await alert_store_for(store).load_state()
    assert sorted(e.key for e, _ in state.open_alerts) == sorted(
        ("geofence_breach", a["uav"], a["zone"]) for a in open_now)


async def test_seq_has_no_gap_a_reader_can_see(store: Store) -> None:
    """Concurrent producers; a reader polling storage and a live subscriber only ever see
    1, 2, 3, ... in order."""
    producers, per_producer = 8, 60
    total = producers * (per_producer + per_producer // 5)  # every call below makes an event
    async with running_manager(store, commit_delay_s=0.0) as m:
        live = m.broadcaster.subscribe(10 * total)

        async def produce(p: int) -> None:
            for k in range(per_producer):
                await m.open_or_update(cond(f"P{p}", T0 + k, zone=f"Z{k}"))
                if k % 5 == 4:
                    await m.resolve(("geofence_breach", f"P{p}", f"Z{k - 1}"), T0 + k)
                if k % 3 == 0:
                    await asyncio.sleep(0)

        async def read_storage() -> list[int]:
            seen: list[int] = []
            while not seen or seen[-1] < total:
                page = await m.store.events(EventQuery(since=seen[-1] if seen else 0, limit=50))
                got = [e.seq for e in page]
                start = seen[-1] + 1 if seen else 1
                assert got == list(range(start, start + len(got)))  # never a hole
                seen += got
                await asyncio.sleep(0.001)
            return seen

        reader = asyncio.create_task(read_storage())
        try:
            await asyncio.gather(*(produce(p) for p in range(producers)))
            assert await m.flush(10)
            assert m.committed_seq == total
            assert await asyncio.wait_for(reader, 20) == list(range(1, total + 1))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        live_seqs = [e.seq for e in await live.get(0)]
        assert live_seqs == list(range(1, total + 1))


async def test_restart_keeps_open_alerts_and_continues_seq(
    store: Store, settings: Settings
) -> None:
    async with running_manager(store) as m:
        await m.open_or_update(cond("U1", zone="Z1"))
        await m.open_or_update(cond("U2", zone="Z2"))
        await m.open_or_update(cond("A", type="separation_loss", other_uav="B"))
        await m.resolve(("geofence_breach", "U2", "Z2"), T0 + 1)
        await m.flush(10)  # the refresh below commits on its own
        await m.open_or_update(cond("U1", T0 + 10, zone="Z1", lat=29.8))  # a refresh
        await m.flush(10)
        before = m.open_alerts()
        last_seq = m.committed_seq
    assert last_seq == 5
    # An update is an event only (its `alerts` row is as the alert opened): a start reads each
    # open alert's newest event from the event log.
    loaded = {e.uav: e for e, _ in (await alert_store_for(store).load_state()).open_alerts}
    assert (loaded["U1"].seq, loaded["U1"].state, loaded["U1"].lat) == (5, "updated", 29.8)
    store2 = create_store(settings)  # what a restarted process opens
    await store2.open()
    try:
        async with running_manager(store2) as m2:
            assert m2.committed_seq == last_seq
            assert [{k: v for k, v in a.items() if k != "opened_at"} for a in m2.open_alerts()] \
                == [{k: v for k, v in a.items() if k != "opened_at"} for a in before]
            ids = {a["uav"]: a["alert_id"] for a in before}
            # Moved, alert_refresh_s after its last event: an update of the same alert.
            await m2.open_or_update(cond("U1", T0 + 20, zone="Z1", lat=29.9))
            await m2.open_or_update(cond("U2", T0 + 5, zone="Z2"))  # resolved before: a new one
            await m2.assess(PAIR, {"A": T0 + 3}, [cond("A", T0 + 3, type="separation_loss",
                                                       other_uav="B")])  # unchanged: no event
            after = [e for e in await all_events(m2) if e.seq > last_seq]
    finally:
        await store2.close()
    assert [(e.seq, e.uav, e.state) for e in after] == [
        (6, "U1", "updated"), (7, "U2", "open")]
    assert after[0].alert_id == ids["U1"]
    assert after[1].alert_id > max(ids.values())


async def test_pending_events_are_committed_on_close(store: Store) -> None:
    alert_store: AlertStore = alert_store_for(store)
    await alert_store.setup()
    m = AlertManager(alert_store, Broadcaster(), commit_delay_s=0.05)
    await m.start()
    for k in range(30):
        await m.open_or_update(cond(f"C{k}"))
    assert await m.close(10)
    assert await alert_store.max_seq() == 30
