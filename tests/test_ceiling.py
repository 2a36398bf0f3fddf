"""The national AGL ceiling and what raises it (geofence/ceiling.py): zones with `ceiling_agl_m`
in flight and in clearance decisions, clearance corridors in flight, validation, persistence in
both backends (the fast reload path included) and ED-269."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any, cast

import pytest
from shapely.geometry import Point, box

from dispatch.alerts import AlertManager, Condition
from geofence.ceiling import Authorises
from geofence.clearances import Heights, VolumeIndex, ZoneScreen, decide
from geofence.ed269 import zones_from_ed269, zones_to_ed269
from geofence.http import GEOFENCE
from geofence.index import ZoneIndex
from geofence.service import (
    Geofence,
    StoredZone,
    ZoneStore,
    zone_store_for,
    zones_from_stored,
)
from geofence.zones import Zone, zone_from_feature, zone_to_feature
from lowalt.errors import ValidationError
from lowalt.live import LiveState
from lowalt.migrate import upgrade_postgres
from lowalt.models import Observation
from lowalt.settings import Settings, load_settings
from lowalt.storage import create_store
from tests.conftest import ADMIN_URL, Server, _admin, _replace_db, running
from tests.test_clearances import LAT, T0, east_west, lat_at, lon_at, volume
from tests.test_geofence_e2e import auth

SETTINGS = load_settings({}, {})  # max_agl_m 120, ground and geoid 0: AGL = alt_m


def ceiling_zone(zid: str = "test-field", ceiling: float | None = 200.0, **kw: Any) -> Zone:
    """An advisory circle of 1.5 km about (106.50, 29.60) raising the ceiling."""
    return Zone(id=zid, name=zid, restriction=kw.pop("restriction", "advisory"),
                geometry=kw.pop("geometry", Point(106.50, LAT)),
                radius_m=kw.pop("radius_m", 1500.0), lower_m=None, upper_m=None,
                ceiling_agl_m=ceiling, **kw)


def report(uav: str, agl_m: float, x_m: float = 0.0, y_m: float = 0.0, t: float = T0,
           ) -> Observation:
    return Observation(uav, t, lat_at(y_m), lon_at(x_m), agl_m, None, None, None, agl_m,
                       "airborne", None, None, "test/http/native", t)


def limits(zones: list[Zone], *rows: Observation, authorises: Authorises | None = None,
           ) -> dict[str, float]:
    """uav -> the ceiling named by its altitude_limit condition."""
    geofence = Geofence(cast(ZoneStore, None), cast(AlertManager, None), LiveState(), SETTINGS)
    geofence.authorised_by_clearance = authorises
    found: list[Condition] = geofence.conditions(rows, ZoneIndex(zones))
    return {c.uav: c.detail["ceiling_agl_m"] for c in found if c.type == "altitude_limit"}


# -- in flight -----------------------------------------------------------------------------------
def test_zone_raises_the_ceiling_inside_only() -> None:
    zones = [ceiling_zone()]
    assert limits(zones, report("IN", 150.0), report("EDGE", 200.0, x_m=1400.0),
                  report("OVER", 200.1), report("OUT", 150.0, x_m=2000.0),
                  report("LOW-OUT", 120.0, x_m=2000.0)) == {"OVER": 200.0, "OUT": 120.0}
    assert limits([], report("IN", 150.0)) == {"IN": 120.0}


def test_the_highest_covering_zone_counts_and_a_lower_one_never_lowers() -> None:
    zones = [ceiling_zone("a", 200.0), ceiling_zone("b", 300.0, radius_m=500.0),
             ceiling_zone("c", 50.0, radius_m=100.0)]
    assert limits(zones, report("B", 290.0), report("A", 290.0, x_m=1000.0),
                  report("C", 110.0)) == {"A": 200.0}


def test_polygon_zone_and_band_do_not_matter() -> None:
    square = box(lon_at(-100), lat_at(-100), lon_at(100), lat_at(100))
    zone = ceiling_zone(geometry=square, radius_m=None, restriction="conditional")
    zone = dataclasses.replace(zone, lower_m=0.0, upper_m=50.0)
    assert limits([zone], report("IN", 180.0), report("OUT", 180.0, x_m=150.0)) == {"OUT": 120.0}


def test_inactive_zone_does_not_authorise() -> None:
    later = ceiling_zone(start=T0 + 60.0)
    ended = ceiling_zone(end=T0 - 1.0)
    friday_8am = T0  # 2027-01-15T08:00:00Z
    weekends = ceiling_zone(schedule=((frozenset({5, 6}), 0, 0),))
    mornings = ceiling_zone(schedule=((frozenset({4}), 7 * 60, 9 * 60),))
    for zone in (later, ended, weekends):
        assert limits([zone], report("U", 150.0, t=friday_8am)) == {"U": 120.0}, zone
    assert limits([mornings], report("U", 150.0, t=friday_8am)) == {}
    assert limits([later], report("U", 150.0, t=T0 + 60.0)) == {}


def test_zone_listing_uavs_raises_it_for_them_only() -> None:
    zones = [ceiling_zone(authorized=frozenset({"SURVEY-1"}))]
    assert limits(zones, report("SURVEY-1", 150.0), report("OTHER", 150.0)) == {"OTHER": 120.0}


def test_clearance_corridor_authorises_and_only_there() -> None:
    asked: list[tuple[str, float, float, float, float]] = []

    def authorises(uav: str, lon: float, lat: float, alt_m: float, t: float) -> bool:
        asked.append((uav, lon, lat, alt_m, t))
        return uav == "CLEARED" and abs(lat - LAT) < 1e-4

    found = limits([], report("CLEARED", 150.0), report("CLEARED", 150.0, y_m=500.0),
                   report("OTHER", 150.0), report("LOW", 100.0), authorises=authorises)
    assert found == {"CLEARED": 120.0, "OTHER": 120.0}
    assert sorted(a[0] for a in asked) == ["CLEARED", "CLEARED", "OTHER"]  # over 120 m only


def test_crewed_and_unknown_heights_are_never_limited() -> None:
    crewed = report("ADSB", 900.0)._replace(source="feed/sbs/sbs")
    unknown = report("NAN", float("nan"))._replace(alt_m=float("nan"))
    assert limits([], crewed, unknown) == {}


# -- clearance decisions ---------------------------------------------------------------------------
def decision(*zones: Zone, alt: float = 150.0, uav: str = "U1") -> list[dict[str, Any]]:
    req = east_west(alt=alt, uav=uav)  # 2 km, 200 s from T0, band top alt + 15 m
    return decide(volume(req), uav, zones=ZoneScreen(ZoneIndex(zones)),
                  reserved=VolumeIndex(), heights=Heights(), max_agl_m=120.0)


def test_route_above_the_ceiling_is_granted_only_where_zones_raise_it() -> None:
    assert decision(ceiling_zone()) == []
    assert decision(ceiling_zone(ceiling=165.0)) == []  # band top 165: at the limit
    low = decision(ceiling_zone(ceiling=164.9))
    assert [(r["ceiling"], r["agl_m"]) for r in low] == [(164.9, 165.0)]
    bare = decision()
    assert [(r["ceiling"], r["agl_m"]) for r in bare] == [(120.0, 165.0)]


def test_the_whole_piece_must_be_covered_by_zones_together() -> None:
    west = ceiling_zone("west", geometry=Point(lon_at(-600), LAT), radius_m=700.0)
    east = ceiling_zone("east", geometry=Point(lon_at(600), LAT), radius_m=700.0)
    half = decision(west)
    assert half and half[0]["ceiling"] == 120.0
    assert decision(west, east) == []


def test_zone_must_be_active_all_through_and_for_the_uav() -> None:
    assert decision(ceiling_zone(end=T0 + 100.0))  # ends mid-flight
    assert decision(ceiling_zone(start=T0))  # the window opens tolerance_s before departure
    assert decision(ceiling_zone(start=T0 - 60.0, end=T0 + 300.0)) == []
    listed = ceiling_zone(authorized=frozenset({"U1"}))
    assert decision(listed) == []
    assert decision(listed, uav="U2")


# -- validation, persistence, ED-269 ---------------------------------------------------------------
FIELD: dict[str, Any] = {
    "type": "Feature", "geometry": {"type": "Point", "coordinates": [106.50, 29.60]},
    "properties": {"id": "test-field", "name": "Test field", "restriction": "advisory",
                   "radius_m": 1500, "ceiling_agl_m": 200},
}


def with_ceiling(value: Any) -> dict[str, Any]:
    return {**FIELD, "properties": {**FIELD["properties"], "ceiling_agl_m": value}}


@pytest.mark.parametrize("value", [-0.1, "200", True, [200], float("inf")])
def test_bad_ceiling_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(ValidationError) as err:
        zone_from_feature(with_ceiling(value), new_id=str)
    assert err.value.field == "properties.ceiling_agl_m"


def test_ceiling_feature_round_trip() -> None:
    zone = zone_from_feature(with_ceiling(0), new_id=str)
    assert zone.ceiling_agl_m == 0.0
    again = zone_from_feature(zone_to_feature(zone), new_id=str)
    assert again == zone
    plain = zone_to_feature(ceiling_zone(ceiling=None))["properties"]
    assert "ceiling_agl_m" not in cast(dict[str, Any], plain)


def test_ceiling_in_ed269_extension() -> None:
    zone = zone_from_feature(FIELD, new_id=str)
    doc = zones_to_ed269([zone])
    feature = cast(list[dict[str, Any]], doc["features"])[0]
    assert feature["extendedProperties"]["lowalt"]["ceiling_agl_m"] == 200.0
    assert zones_from_ed269(doc)[0].ceiling_agl_m == 200.0
    feature["extendedProperties"]["lowalt"]["ceiling_agl_m"] = -5
    with pytest.raises(ValidationError) as err:
        zones_from_ed269(doc)
    assert err.value.field == "features[0].extendedProperties.lowalt.ceiling_agl_m"


async def test_http_round_trip_restart_and_errors(settings: Settings) -> None:
    async with running(settings) as server:
        reg = await server.token("regulator")
        r = await server.client.post("/v1/zones", json=FIELD, headers=auth(reg))
        assert r.status == 201, await r.text()
        assert (await r.json())["properties"]["ceiling_agl_m"] == 200.0
        for value, status in ((-1, 400), ("high", 400), (None, 201)):
            body = with_ceiling(value)
            body["properties"] = {**body["properties"], "id": f"z{status}"}
            r = await server.client.post("/v1/zones", json=body, headers=auth(reg))
            assert r.status == status, await r.text()
            if status == 400:
                assert (await r.json())["field"] == "properties.ceiling_agl_m"
        r = await server.client.get("/v1/zones", params={"format": "ed269"}, headers=auth(reg))
        ed269 = {f["identifier"]: f for f in (await r.json())["features"]}
        assert ed269["test-field"]["extendedProperties"]["lowalt"]["ceiling_agl_m"] == 200.0
    async with running(settings) as server:  # reloaded from storage
        r = await server.client.get("/v1/zones/test-field", headers=auth(reg))
        assert (await r.json())["properties"]["ceiling_agl_m"] == 200.0
        index = server.client.app[GEOFENCE].index
        assert [z.id for z in index.ceilings.zones] == ["test-field"]
        assert limits(list(index.zones), report("IN", 150.0), report("OUT", 150.0, x_m=2000.0)
                      ) == {"OUT": 120.0}


async def test_clearance_granted_through_a_ceiling_zone_authorises_its_corridor(
    server: Server,
) -> None:
    adm = await server.token("admin")
    geofence = server.client.app[GEOFENCE]
    assert (await server.client.post("/v1/zones", json=FIELD, headers=auth(adm))).status == 201
    now = time.time()
    coords = [[lon_at(-1000), LAT, 150.0], [lon_at(1000), LAT, 150.0]]
    ask = {"uav": "SURVEY-1", "route": {"type": "LineString", "coordinates": coords},
           "departure": now, "speed_mps": 10, "corridor_m": 30, "vertical_m": 15}
    r = await server.client.post("/v1/clearances", json=ask, headers=auth(adm))
    granted = await r.json()
    assert granted["state"] == "granted", granted
    # The zone goes; the granted corridor still authorises the flight above 120 m.
    assert (await server.client.delete("/v1/zones/test-field", headers=auth(adm))).status == 200
    mid = now + 100.0  # half way along the 2 km at 10 m/s
    rows = [report("SURVEY-1", 150.0, t=mid), report("SURVEY-1", 150.0, y_m=300.0, t=mid),
            report("OTHER", 150.0, t=mid)]
    found = geofence.conditions(rows, geofence.index)
    limited = [(c.uav, c.lat) for c in found if c.type == "altitude_limit"]
    assert limited == [("SURVEY-1", rows[1].lat), ("OTHER", rows[2].lat)]
    r = await server.client.post("/v1/clearances", json={**ask, "uav": "SURVEY-2"},
                                 headers=auth(adm))
    denied = await r.json()
    assert denied["state"] == "denied"
    assert [(x.get("ceiling"), x.get("agl_m")) for x in denied["reasons"]
            if "ceiling" in x] == [(120.0, 165.0)]


# -- the stored forms ------------------------------------------------------------------------------
def _old_row(zone: Zone) -> tuple[str, str, str, None, float]:
    return zone.id, zone.restriction, json.dumps(zone_to_feature(zone)), None, 1.0


async def test_stored_zones_reload_as_added(settings: Settings) -> None:
    square = box(lon_at(-100), lat_at(-100), lon_at(100), lat_at(100))
    zones = [ceiling_zone("a", schedule=((frozenset({0, 4}), 60, 30),), start=T0, end=T0 + 9.5),
             ceiling_zone("b", geometry=square, radius_m=None, authorized=frozenset({"X"}),
                          ceiling=None),
             zone_from_feature(FIELD, new_id=str)]
    store = create_store(settings)
    await store.open()
    try:
        zone_store = zone_store_for(store)
        await zone_store.setup()
        await zone_store.insert(zones)
        rows = await zone_store.load()
        assert all(r.feature is None and r.wkb and r.properties for r in rows)
        assert zones_from_stored(rows) == sorted(zones, key=lambda z: z.id)
    finally:
        await store.close()


def test_rows_without_the_fast_columns_are_validated_in_order() -> None:
    zones = [ceiling_zone("a"), ceiling_zone("b", ceiling=150.0), ceiling_zone("c")]
    fast = zones_from_stored([])
    assert fast == []
    from geofence.service import _row

    rows = [StoredZone(None, None, *_row(zones[0])[4:]),
            StoredZone(json.dumps(zone_to_feature(zones[1])), None, None, None),
            StoredZone(None, json.dumps({"identifier": "c"}), *_row(zones[2])[4:])]
    loaded = zones_from_stored(rows)
    assert loaded == zones
    assert dict(loaded[2].source_doc or {}) == {"identifier": "c"}


def test_sqlite_database_from_before_gets_the_columns_filled(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    zones = [ceiling_zone("a"), zone_from_feature(FIELD, new_id=str)]
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE zones (id TEXT PRIMARY KEY, restriction TEXT NOT NULL, "
                     "feature TEXT NOT NULL, source_doc TEXT, updated_at REAL NOT NULL)")
        conn.executemany("INSERT INTO zones VALUES (?, ?, ?, ?, ?)", [_old_row(z) for z in zones])
    conn.close()

    async def reload() -> list[StoredZone]:
        store = create_store(load_settings({"database_url": f"sqlite:///{path}"}, {}))
        await store.open()
        try:
            zone_store = zone_store_for(store)
            await zone_store.setup()
            return await zone_store.load()
        finally:
            await store.close()

    rows = asyncio.run(reload())
    assert all(r.feature is None for r in rows)
    assert zones_from_stored(rows) == zones


def test_postgres_migration_fills_the_columns(pg_url: str) -> None:
    name = f"lowalt_test_mig_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = _replace_db(ADMIN_URL, name)
    zones = [ceiling_zone("a"), zone_from_feature(FIELD, new_id=str)]
    try:
        upgrade_postgres(url, "0005")

        async def insert_old() -> None:
            import asyncpg

            conn = await asyncpg.connect(url)
            try:
                await conn.executemany(
                    "INSERT INTO zones (id, restriction, feature, source_doc, geom, updated_at) "
                    "VALUES ($1, $2, $3, $4, ST_GeomFromText('POINT(0 0)', 4326), $5)",
                    [_old_row(z) for z in zones])
            finally:
                await conn.close()

        asyncio.run(insert_old())
        upgrade_postgres(url)

        async def load() -> list[StoredZone]:
            store = create_store(load_settings({"database_url": url}, {}))
            await store.open()
            try:
                return await zone_store_for(store).load()
            finally:
                await store.close()

        rows = asyncio.run(load())
        assert all(r.feature is None for r in rows)
        assert zones_from_stored(rows) == zones
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
