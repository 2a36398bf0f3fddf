"""Fusion, on both backends: the blend rule, identity association (registry aliases: F3411 UAS
ID, ADS-B ICAO address), the track of a canonical aircraft, raw observations stored unaltered,
continuity across sources (telemetry_lost only when every source is silent) and the cross-check
that raises position_mismatch."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient

from dispatch.service import DISPATCH
from geofence.service_app import CHECKS
from ingest.client import GatewayClient
from ingest.codecs.odid import BasicId, Location, MessagePack, encode
from lowalt.app import RUNTIME
from lowalt.auth import Registry
from lowalt.fusion import FUSED, M_PER_DEG, FusedPicture, Identities
from lowalt.models import Observation
from lowalt.settings import Settings
from lowalt.storage import Store, UavRecord
from tests.conftest import make_token, running
from tests.test_formats_e2e import sbs_line
from tests.test_traffic_feed import TrafficSse, auth

LAT, LON = 29.60, 106.50
M_PER_DEG_LON = M_PER_DEG * math.cos(math.radians(LAT))


def obs(uav: str, t: float, lat: float = LAT, lon: float = LON, *, source: str = "sat/http/native",
        **kw: Any) -> Observation:
    fields: dict[str, Any] = {"alt_m": 300.0, "speed_mps": None, "track_deg": None,
                              "vspeed_mps": None, "agl_m": None, "status": "airborne",
                              "acc_h_m": None, "acc_v_m": None, **kw}
    return Observation(uav=uav, t=t, lat=lat, lon=lon, source=source, received_at=t, **fields)


def native(uav: str, t: float, lat: float = LAT, lon: float = LON) -> dict[str, Any]:
    return {"uav": uav, "t": t, "lat": lat, "lon": lon, "alt_m": 300.0, "agl_m": 80.0,
            "speed_mps": 0.0, "track_deg": 0.0, "vspeed_mps": 0.0, "status": "airborne",
            "acc_h_m": 10.0}


def f3411(uas_id: str, t: float, lat: float = LAT, lon: float = LON) -> dict[str, Any]:
    """A gateway `odid` item: Basic ID + Location in one message pack, heard 0.2 s after t."""
    pack = MessagePack((
        BasicId(id_type="serial_number", ua_type="helicopter_or_multirotor", uas_id=uas_id),
        Location(status="airborne", height_type="agl", track_deg=0.0, speed_mps=0.0,
                 vspeed_mps=0.0, lat=lat, lon=lon, geodetic_alt_m=300.0, height_m=80.0,
                 horiz_accuracy=10, vert_accuracy=4, timestamp_s_past_hour=round(t % 3600, 1)),
    ))
    return {"t": t + 0.2, "msg": encode(pack)}


@asynccontextmanager
async def fused_server(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The whole server with its gateway; the monitor ticks only when a test calls tick()."""
    async with running(settings, monitor_tick_s=3600.0) as srv:
        yield srv.client


async def post(c: TestClient[Any, Any], token: str, *items: dict[str, Any]) -> None:
    r = await c.post("/v1/telemetry", json=list(items), headers=auth(token))
    assert r.status == 200, await r.text()
    assert (await r.json())["accepted"] == len(items)


async def gateway_send(c: TestClient[Any, Any], token: str, name: str, **payload: Any) -> None:
    gw = await GatewayClient.connect("127.0.0.1", c.app[RUNTIME].gateway_port, token, name)
    gw.send({"seq": 1, **payload})
    ack = await gw.recv_ack()
    assert ack["rejected"] == [], ack
    await gw.close()


async def settled(c: TestClient[Any, Any]) -> None:
    """Every committed batch has been through the check stages and its alerts committed."""
    # An answered POST or ack means its batch is committed and already queued for the stages.
    await c.app[RUNTIME].pipeline._stage_queue.join()
    assert await c.app[DISPATCH].manager.flush(10)


async def alerts(c: TestClient[Any, Any], token: str, **params: str) -> list[dict[str, Any]]:
    r = await c.get("/v1/alerts", params=params, headers=auth(token))
    assert r.status == 200
    events: list[dict[str, Any]] = (await r.json())["events"]
    return events


# -- the blend rule (the picture alone) ------------------------------------------------------


def fuse(picture: FusedPicture, rows: list[Observation]) -> None:
    picture.add(rows)
    picture.refresh()


async def test_blend_weights_accuracy_and_recency(store: Store) -> None:
    picture = FusedPicture(Identities(Registry(store)))
    t = 1_764_000_000.0
    north_100m = LAT + 100 / M_PER_DEG
    fuse(picture, [obs("EQ", t, acc_h_m=10.0), obs("EQ", t, north_100m, source="rx/gw/f3411",
                                                 acc_h_m=10.0)])
    eq = picture.aircraft["EQ"]
    assert eq.state is not None and abs(eq.state.lat - (LAT + 50 / M_PER_DEG)) < 1e-9
    assert set(eq.used) == {"sat/http/native", "rx/gw/f3411"}
    acc_h_m = eq.state.acc_h_m
    assert acc_h_m is not None and abs(acc_h_m - 10 / math.sqrt(2)) < 1e-6  # sigma / sqrt(2)
    fuse(picture, [obs("ACC", t, acc_h_m=5.0), obs("ACC", t, north_100m, source="rx/gw/f3411",
                                                 acc_h_m=50.0)])
    acc = picture.aircraft["ACC"].state
    assert acc is not None and abs((acc.lat - LAT) * M_PER_DEG - 100 / 101) < 1e-6  # 100:1
    # A report 1 s older, flying north at 10 m/s, is moved to the newest report's time.
    fuse(picture, [obs("EXT", t - 1, speed_mps=10.0, track_deg=0.0, acc_h_m=10.0),
                 obs("EXT", t, LAT + 10 / M_PER_DEG, source="rx/gw/f3411", acc_h_m=10.0)])
    ext = picture.aircraft["EXT"].state
    assert ext is not None and ext.t == t
    assert abs((ext.lat - LAT) * M_PER_DEG - 10.0) < 1e-6
    assert ext.speed_mps is not None and abs(ext.speed_mps - 10.0) < 1e-9
    # A source that stops fades out as it ages (continuity), and is dropped past window_s.
    offsets = []
    for age in (0.0, 2.0, 5.0, 9.0, 11.0):
        fuse(picture, [obs("FADE", t + age, LAT + 100 / M_PER_DEG, source="rx/gw/f3411",
                         acc_h_m=10.0)])
        if age == 0.0:
            fuse(picture, [obs("FADE", t, acc_h_m=10.0)])
        fade = picture.aircraft["FADE"].state
        assert fade is not None
        offsets.append(100 - (fade.lat - LAT) * M_PER_DEG)
    assert abs(offsets[0] - 50) < 1e-6
    assert all(a > b for a, b in itertools.pairwise(offsets))
    assert offsets[3] < 1.0 and abs(offsets[4]) < 1e-6
    assert picture.aircraft["FADE"].used == ("rx/gw/f3411",)


async def test_a_state_read_is_current_and_a_reused_slot_shows_its_new_aircraft(
        store: Store) -> None:
    picture = FusedPicture(Identities(Registry(store)))
    t = 1_764_000_000.0
    picture.add([obs("ONE", t), obs("TWO", t),
                 obs("TWO", t, LAT + 1e-4, source="rx/gw/f3411")])
    one, two = picture.aircraft["ONE"], picture.aircraft["TWO"]
    before = two.state  # read before any refresh: the read fuses
    assert one.state is not None and before is not None and before.uav == "TWO"
    version = int(picture.version[two.slot])
    picture.add([obs("ONE", t + 1, LAT + 1e-3), obs("TWO", t + 1, LAT + 1e-3)])
    assert one.state is not None and one.state.t == t + 1 and one.state.lat == LAT + 1e-3
    assert two.state is not None and two.state.t == t + 1 and two.state != before
    assert int(picture.version[two.slot]) > version
    assert picture.states_of([one, two]) == [one.state, two.state]
    assert picture.forget_silent(t + 2) == 2
    freed = {one.slot, two.slot}
    picture.add([obs("NEW", t + 3)])  # takes a freed slot
    new = picture.aircraft["NEW"]
    assert new.slot in freed
    assert picture.states_of([new]) == [new.state]
    assert new.state is not None and new.state.uav == "NEW" and new.used == ("sat/http/native",)
    # Heard again by the same source after it was forgotten: an aircraft of its own again,
    # not filed into the track its slot had (now another aircraft's).
    picture.add([obs("ONE", t + 4, LAT + 2e-3), obs("TWO", t + 4, LAT + 3e-3)])
    again, new = picture.aircraft["ONE"], picture.aircraft["NEW"]
    assert again.state is not None and again.state.lat == LAT + 2e-3
    assert new.state is not None and new.state.uav == "NEW" and new.state.t == t + 3
    assert len({again.slot, new.slot, picture.aircraft["TWO"].slot}) == 3


async def test_history_is_kept_only_for_aircraft_heard_under_several_names(store: Store) -> None:
    picture = FusedPicture(Identities(Registry(store)), reports_per_source=16)
    t = 1_764_000_000.0
    for k in range(20):  # one name ("sat") by two transports; two names ("sat" and "rx")
        fuse(picture, [obs("ONE", t + k), obs("ONE", t + k + 0.5, source="sat/gateway/native"),
                       obs("TWO", t + k), obs("TWO", t + k + 0.5, source="rx/gw/f3411")])
    fuse(picture, [obs("ONE", t + 3.25), obs("TWO", t + 10.25)])  # late satellite reports
    one, two = picture.aircraft["ONE"], picture.aircraft["TWO"]
    kept = {source: [r.t for r in reports] for source, reports in picture.by_source(one).items()}
    assert kept == {"sat/http/native": [t + 19], "sat/gateway/native": [t + 19.5]}
    assert one.state is not None and one.state.t == t + 19.5
    kept_two = picture.by_source(two)
    assert [r.t for r in kept_two["rx/gw/f3411"]] == [t + k + 0.5 for k in range(4, 20)]
    assert [r.t for r in kept_two["sat/http/native"]] == (
        [t + k for k in range(5, 11)] + [t + 10.25] + [t + k for k in range(11, 20)])


async def test_registration_merges_an_alias_heard_before(store: Store) -> None:
    registry = Registry(store)
    picture = FusedPicture(Identities(registry))
    t = 1_764_000_000.0
    fuse(picture, [obs("SN-X", t, source="rx/gw/f3411"), obs("CQ-X", t + 0.5)])
    assert sorted(picture.aircraft) == ["CQ-X", "SN-X"]
    assert picture.aircraft["CQ-X"].registered is False
    old_slot = picture.aircraft["SN-X"].slot
    await registry.register(UavRecord("CQ-X", "op1", ("SN-X",)))
    fuse(picture, [])
    (merged,) = picture.aircraft.values()
    assert merged.uav == "CQ-X" and merged.registered and merged.operator == "op1"
    assert set(merged.used) == {"rx/gw/f3411", "sat/http/native"}
    assert not picture.present[old_slot] or picture.ids[old_slot] == "CQ-X"
    assert picture.operator_code("op1") == picture.owner[merged.slot]


async def test_identities_follow_registry_changes_only(store: Store) -> None:
    registry = Registry(store)
    await store.upsert_uav(UavRecord("CQ-A", "op1", ("SN-A", "780a27")))
    await store.upsert_uav(UavRecord("CQ-B", "op2", ("CQ-A",)))  # claims a registered id
    await registry.refresh()
    identities = Identities(registry)
    assert identities.sync() is True
    assert [identities.resolve(u) for u in ("SN-A", "ICAO-780A27", "780a27", "CQ-A", "CQ-B",
                                            "other")] == ["CQ-A"] * 4 + ["CQ-B", "other"]
    assert identities.operator_of.get("CQ-A") == "op1" and "CQ-B" in identities.operator_of
    assert identities.operator_of.get("SN-A") is None
    tables = registry.by_uav, registry.alias_to_uav
    await registry.refresh()  # storage unchanged: the same tables, nothing to rebuild
    assert (registry.by_uav, registry.alias_to_uav) == tables
    assert registry.by_uav is tables[0] and identities.sync() is False
    await store.upsert_uav(UavRecord("CQ-B", "op3", ("CQ-A",)))  # a new owner only
    await registry.refresh()
    assert registry.by_uav is not tables[0]
    assert identities.sync() is True and identities.operator_of["CQ-B"] == "op3"


# -- in the running server -------------------------------------------------------------------


async def test_alias_association_track_and_raw_rows(settings: Settings) -> None:
    async with fused_server(settings) as c:
        rt = c.app[RUNTIME]
        await rt.registry.register(UavRecord("CQ-F1", "op1", ("SN-F1-0001",)))
        await rt.registry.register(UavRecord("HELI-9", "op2", ("7c1234",)))
        reg, op1 = await make_token(rt.store, "regulator"), await make_token(rt.store, "operator",
                                                                            "op1")
        sat = await make_token(rt.store, "gateway", name="sat")
        rx = await make_token(rt.store, "gateway", name="rid-rx")
        t0 = math.floor(time.time()) - 5.0
        east_20m = LON + 20 / M_PER_DEG_LON
        async with c.get("/v1/traffic/stream?rate_hz=10", headers=auth(reg)) as resp:
            feed = TrafficSse(resp)
            assert await feed.flush() == []
            sent = [native("CQ-F1", t0 + k) for k in range(3)]
            await post(c, sat, *sent)
            await gateway_send(c, rx, "rid-rx",
                               odid=[f3411("SN-F1-0001", t0 + k + 0.5, LAT, east_20m)
                                     for k in range(3)])
            when = datetime.fromtimestamp(t0 + 2, UTC)
            await gateway_send(c, rx, "adsb-rx", sbs="\r\n".join([
                sbs_line(3, "7C1234", when, alt_ft="1000", lat="29.61000", lon="106.51000"),
                sbs_line(3, "780A27", when, alt_ft="3000", lat="29.62000", lon="106.52000"),
            ]) + "\r\n")
            one = await feed.until(lambda i: i.get("uav") == "CQ-F1" and len(i["sources"]) == 2)
            assert set(one["sources"]) == {"sat/http/native", "rid-rx/gateway/f3411"}
            assert one["registered"] is True and one["kind"] == "uav"
            assert LON < one["lon"] < east_20m  # a blend of the two
            heli = await feed.until(lambda i: i.get("uav") == "HELI-9")
            assert heli["sources"] == ["adsb-rx/gateway/sbs"] and heli["registered"] is True
            crewed = await feed.until(lambda i: i.get("uav") == "ICAO-780A27")
            assert crewed["registered"] is False and crewed["kind"] == "crewed"
        assert not any(i.get("uav") == "SN-F1-0001" for i in feed.items())
        picture = c.app[FUSED]
        assert sorted(picture.aircraft) == ["CQ-F1", "HELI-9", "ICAO-780A27"]
        # The track of the canonical id (or of its alias) holds both sources' reports.
        for path_id in ("CQ-F1", "SN-F1-0001"):
            r = await c.get(f"/v1/uavs/{path_id}/track", params={"from": str(t0 - 1)},
                            headers=auth(op1))
            body = await r.json()
            assert body["uav"] == "CQ-F1"
            assert [(p["uav"], p["source"]) for p in body["track"]] == [
                ("CQ-F1", "sat/http/native"), ("SN-F1-0001", "rid-rx/gateway/f3411")] * 3
        # Raw observations are stored exactly as reported.
        stored = await rt.store.track("CQ-F1", t0 - 1, t0 + 10, 100)
        keys = ("uav", "t", "lat", "lon", "alt_m", "agl_m", "speed_mps", "track_deg",
                "vspeed_mps", "status", "acc_h_m")
        assert [{k: getattr(row, k) for k in keys} for row in stored] == [
            {k: s[k] for k in keys} for s in sent]
        broadcast = await rt.store.track("SN-F1-0001", t0 - 1, t0 + 10, 100)
        assert [round(row.t, 1) for row in broadcast] == [t0 + 0.5, t0 + 1.5, t0 + 2.5]
        assert all(abs(row.lon - east_20m) < 1e-7 and abs(row.lat - LAT) < 1e-7
                   for row in broadcast)
        r = await c.get("/v1/flights", params={"view": "29.595,106.495,29.625,106.525"},
                        headers=auth(reg))
        flights = {f["id"]: f for f in (await r.json())["flights"]}
        assert sorted(flights) == ["CQ-F1", "HELI-9", "ICAO-780A27"]
        assert flights["CQ-F1"]["current_state"]["position"]["extrapolated"] is True


async def test_continuity_across_sources(settings: Settings) -> None:
    """The satellite link stops and the broadcast goes on: no telemetry_lost. Both stop: one
    telemetry_lost, for the canonical aircraft."""
    async with fused_server(settings) as c:
        rt = c.app[RUNTIME]
        await rt.registry.register(UavRecord("CQ-C1", "op1", ("SN-C1-0001",)))
        reg = await make_token(rt.store, "regulator")
        sat = await make_token(rt.store, "gateway", name="sat")
        rx = await make_token(rt.store, "gateway", name="rid-rx")
        now = math.floor(time.time())
        t0 = now - 20.0
        await post(c, sat, *[native("CQ-C1", t0 + k) for k in range(11)])  # until now - 10
        await gateway_send(c, rx, "rid-rx",
                           odid=[f3411("SN-C1-0001", t0 + k + 0.5) for k in range(20)])
        await settled(c)
        monitor = c.app[CHECKS].monitor
        result = await monitor.tick(now)
        assert result.aircraft == 1 and result.lost == 0
        await settled(c)
        assert await alerts(c, reg, type="telemetry_lost") == []
        result = await monitor.tick(now + 10)  # the broadcast is silent too now
        assert result.lost == 1
        await settled(c)
        (lost,) = await alerts(c, reg, type="telemetry_lost")
        assert lost["uav"] == "CQ-C1" and lost["detail"]["source"] == "rid-rx/gateway/f3411"
        # Without the fused picture the satellite silence alone would have raised it:
        assert now - rt.live.latest["CQ-C1"].t > rt.settings.lost_after_s


async def test_position_mismatch(settings: Settings) -> None:
    """Two independent sources 500 m apart: position_mismatch with both; agreeing again: resolved.
    30 m apart: nothing."""
    async with fused_server(settings) as c:
        rt = c.app[RUNTIME]
        reg = await make_token(rt.store, "regulator")
        sat = await make_token(rt.store, "gateway", name="sat")
        rx = await make_token(rt.store, "gateway", name="rx")
        t0 = math.floor(time.time()) - 30.0
        north_500m, north_30m, north_5m = (LAT + d / M_PER_DEG for d in (500, 30, 5))
        for k in range(10):
            apart = north_500m if k < 3 else north_5m
            await post(c, sat, native("CQ-M1", t0 + k), native("CQ-M2", t0 + k, lon=106.55))
            await post(c, rx, native("CQ-M1", t0 + k + 0.3, apart),
                       native("CQ-M2", t0 + k + 0.3, north_30m, 106.55))
        await settled(c)
        events = await alerts(c, reg, type="position_mismatch")
        assert [e["state"] for e in events if e["state"] != "updated"] == ["open", "resolved"]
        opened = events[0]
        assert opened["uav"] == "CQ-M1"
        detail = opened["detail"]
        assert [s["source"] for s in detail["sources"]] == ["rx/http/native", "sat/http/native"]
        assert abs(detail["sources"][0]["lat"] - north_500m) < 1e-9
        assert abs(detail["distance_m"] - 500) < 2 and detail["threshold_m"] == 100.0
        assert events[-1]["t"] >= t0 + 3.3 + rt.settings.alert_clear_s  # hysteresis
        assert all(e["uav"] != "CQ-M2" for e in events)
