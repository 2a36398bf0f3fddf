"""An independent oracle for the geofence engine: PostGIS itself, on geography.

Random zones (circles and polygons, holed and multi, around Chongqing) and random points, many
close to and on both sides of the zone edges and of the approach limit, some far. For every
(point, zone) pair PostGIS answers on geography:
- breach: ST_Covers(polygon, point), and for a circle zone also ST_DWithin(centre, point, radius),
  the exact geodesic circle (both must agree with each other and with the engine);
- approach: not a breach and ST_DWithin(polygon, point, approach_m);
- distance: ST_Distance(polygon, point) (and |centre, point| - radius for a circle), which the
  engine's approach distance must match within 1 m.
ZoneIndex.check must agree on every pair farther than 0.5 m from a boundary: the zone's edge,
decided by PostGIS (ST_Distance to ST_Boundary, and | |centre, point| - radius | for a circle),
and the approach limit (|distance - approach_m|). Zones have no altitude band, time window or
authorised UAV, so only the horizontal geometry decides.

Polygon edges: the engine draws them straight in lon/lat, geography as great-circle arcs; the two
part by about L^2 tan(lat) / 8R for an edge of length L (0.15 m for the 3.5 km edges drawn here),
inside the 0.5 m margin.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from geofence.index import ZoneHit, ZoneIndex
from geofence.zones import Zone, geometry_to_json, zone_from_feature, zone_to_feature
from tests.test_zones import M_PER_DEG_LAT, T0, zone_shapes

pytestmark = pytest.mark.postgres

MARGIN_M = 0.5  # points nearer than this to a boundary are not compared
DISTANCE_TOLERANCE_M = 1.0

ORACLE_SQL = """
WITH z AS (
    SELECT id, ST_GeomFromWKB(wkb, 4326) AS g, radius, approach,
           ST_SetSRID(ST_MakePoint(clon, clat), 4326)::geography AS c
    FROM unnest($1::text[], $2::bytea[], $3::float8[], $4::float8[], $5::float8[], $6::float8[])
        AS t(id, wkb, clon, clat, radius, approach)
), p AS (
    SELECT i - 1 AS i, ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography AS pt
    FROM unnest($7::float8[], $8::float8[]) WITH ORDINALITY AS t(lon, lat, i)
)
SELECT p.i, z.id, z.radius, z.approach,
       ST_Covers(z.g::geography, p.pt) AS covers,
       ST_DWithin(z.g::geography, p.pt, z.approach) AS within_approach,
       ST_Distance(z.g::geography, p.pt) AS distance,
       ST_Distance(ST_Boundary(z.g)::geography, p.pt) AS edge_distance,
       ST_DWithin(z.c, p.pt, z.radius) AS in_circle,
       ST_Distance(z.c, p.pt) AS centre_distance
FROM z CROSS JOIN p
"""


@dataclass
class Oracle:
    """One asyncpg connection on a private event loop, asked synchronously per example."""

    loop: asyncio.AbstractEventLoop
    conn: asyncpg.Connection

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.loop.run_until_complete(self.conn.fetch(sql, *args))


@pytest.fixture(scope="module")
def oracle(pg_url: str) -> Iterator[Oracle]:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg_url))
    try:
        yield Oracle(loop, conn)
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def make_zone(zone_id: str, geometry: Any, radius_m: float | None, approach_m: float) -> Zone:
    """Through the GeoJSON parser, as a zone arrives over HTTP: no band, window or exemptions."""
    props: dict[str, Any] = {"id": zone_id, "restriction": "prohibited", "approach_m": approach_m}
    if radius_m is not None:
        props["radius_m"] = radius_m
    feature = {"type": "Feature", "geometry": geometry_to_json(geometry), "properties": props}
    return zone_from_feature(feature, new_id=lambda: zone_id)


def engine_check(zone_list: list[Zone], lon: list[float], lat: list[float]) -> list[ZoneHit]:
    n = len(lon)
    height = np.full(n, 50.0)
    return ZoneIndex(zone_list).check(
        np.asarray(lon), np.asarray(lat), height, height, height, np.full(n, T0), ["u9"] * n
    )


def postgis(oracle: Oracle, zone_list: list[Zone], lon: list[float], lat: list[float]) -> Any:
    centres = [z.geometry if isinstance(z.geometry, Point) else None for z in zone_list]
    rows = oracle.fetch(
        ORACLE_SQL,
        [z.id for z in zone_list],
        [shapely.to_wkb(z.polygon) for z in zone_list],
        [None if c is None else c.x for c in centres],
        [None if c is None else c.y for c in centres],
        [z.radius_m for z in zone_list],
        [z.approach_m for z in zone_list],
        lon,
        lat,
    )
    return {(r["i"], r["id"]): r for r in rows}


def compare(
    oracle: Oracle, zone_list: list[Zone], lon: list[float], lat: list[float]
) -> tuple[int, int]:
    """Assert the engine agrees with PostGIS on every pair clear of a boundary; returns the
    numbers of pairs compared and skipped."""
    hits = engine_check(zone_list, lon, lat)
    got = {(h.obs_index, h.zone_id): h for h in hits}
    want = postgis(oracle, zone_list, lon, lat)
    assert got.keys() <= want.keys()
    by_id = {z.id: z for z in zone_list}
    compared = skipped = 0
    for (i, zone_id), row in sorted(want.items()):
        hit = got.get((i, zone_id))
        circle = row["radius"] is not None
        to_circle: float = row["centre_distance"] - row["radius"] if circle else math.nan
        where = (
            f"zone {zone_to_feature(by_id[zone_id])}\npoint {i}: ({lon[i]!r}, {lat[i]!r})\n"
            f"engine {hit}\npostgis covers={row['covers']} in_circle={row['in_circle']} "
            f"within_approach={row['within_approach']} distance={row['distance']} "
            f"edge_distance={row['edge_distance']} centre_distance={row['centre_distance']}"
        )
        if row["edge_distance"] < MARGIN_M or (circle and abs(to_circle) < MARGIN_M):
            skipped += 1
            continue
        compared += 1
        if circle:  # Zone.polygon and the geodesic circle agree away from the edge
            assert row["covers"] == row["in_circle"], where
        if row["covers"]:
            assert hit is not None and hit.kind == "breach", where
            assert hit.distance_m == 0.0, where
            continue
        assert hit is None or hit.kind == "approach", where
        distances = [row["distance"]] + ([to_circle] if circle else [])
        at_limit = any(abs(d - row["approach"]) < MARGIN_M for d in distances)
        if not at_limit:
            assert (hit is not None) == row["within_approach"], where
            if circle:
                assert row["within_approach"] == (to_circle <= row["approach"]), where
        if hit is not None:
            for d in distances:
                assert abs(hit.distance_m - d) <= DISTANCE_TOLERANCE_M, where
    return compared, skipped


# --- random zones and points ------------------------------------------------------------------


def offset(lon: float, lat: float, distance_m: float, azimuth: float) -> tuple[float, float]:
    """A point roughly `distance_m` from (lon, lat) towards `azimuth` (radians from north);
    PostGIS measures where it really is."""
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(lat))
    return (
        lon + distance_m * math.sin(azimuth) / m_per_deg_lon,
        lat + distance_m * math.cos(azimuth) / M_PER_DEG_LAT,
    )


def rings(zone: Zone) -> list[Any]:
    parts = getattr(zone.polygon, "geoms", [zone.polygon])
    return [ring for p in parts for ring in (p.exterior, *p.interiors)]


@st.composite
def oracle_zones(draw: st.DrawFn, zone_id: str) -> Zone:
    lon = draw(st.floats(106.3, 106.9))
    lat = draw(st.floats(29.4, 29.9))
    big_circle = st.floats(2_000.0, 6_000.0).map(lambda r: (Point(lon, lat), r))
    geometry, radius_m = draw(zone_shapes(lon, lat) | big_circle)
    approach_m = draw(st.floats(0.0, 500.0) | st.floats(500.0, 3_000.0))
    return make_zone(zone_id, geometry, radius_m, approach_m)


@st.composite
def oracle_points(draw: st.DrawFn, zone: Zone) -> tuple[float, float]:
    mode = draw(st.sampled_from(["edge", "edge", "edge", "vertex", "approach", "near", "far"]))
    azimuth = draw(st.floats(0.0, 2 * math.pi))
    centre = zone.geometry if isinstance(zone.geometry, Point) else zone.polygon.centroid
    if mode in ("near", "far"):
        reach_m = draw(st.floats(0.0, 3 * zone.approach_m + 3_000.0 if mode == "near" else 40_000))
        return offset(centre.x, centre.y, reach_m, azimuth)
    ring = draw(st.sampled_from(rings(zone)))
    if mode == "vertex":
        x, y = draw(st.sampled_from(list(ring.coords)))
    else:
        on_edge = ring.interpolate(draw(st.floats(0.0, 1.0)), normalized=True)
        x, y = on_edge.x, on_edge.y
    if mode == "approach":  # about approach_m out, away from the centre
        out = math.atan2((x - centre.x) * math.cos(math.radians(y)), y - centre.y)
        out += draw(st.floats(-0.3, 0.3))
        return offset(x, y, zone.approach_m + draw(st.floats(-3.0, 3.0)), out)
    distance_m = draw(st.floats(0.0, 3.0) | st.floats(0.5, 30.0) | st.floats(30.0, 300.0))
    return offset(x, y, distance_m, azimuth)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Zone], list[float], list[float]]:
    zone_list = [draw(oracle_zones(f"z{k}")) for k in range(draw(st.integers(1, 4)))]
    lon, lat = [], []
    for _ in range(draw(st.integers(1, 60))):
        x, y = draw(oracle_points(draw(st.sampled_from(zone_list))))
        lon.append(x)
        lat.append(y)
    return zone_list, lon, lat


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_engine_agrees_with_postgis_geography(
    oracle: Oracle, scenario: tuple[list[Zone], list[float], list[float]]
) -> None:
    zone_list, lon, lat = scenario
    compare(oracle, zone_list, lon, lat)


# --- golden cases -----------------------------------------------------------------------------


def projected(oracle: Oracle, lon: float, lat: float, distance_m: float, azimuth_deg: float) -> Any:
    """The point `distance_m` along the geodesic from (lon, lat) at an azimuth (ST_Project)."""
    (row,) = oracle.fetch(
        "SELECT ST_X(q::geometry) AS lon, ST_Y(q::geometry) AS lat FROM ST_Project("
        "ST_SetSRID(ST_MakePoint($1, $2), 4326)::geography, $3, radians($4)) AS q",
        lon,
        lat,
        distance_m,
        azimuth_deg,
    )
    return row["lon"], row["lat"]


@pytest.mark.parametrize("azimuth_deg", [0.0, 37.0, 90.0, 181.0, 271.5])
def test_1_m_inside_and_outside_a_5_km_circle(oracle: Oracle, azimuth_deg: float) -> None:
    zone = make_zone("c5k", Point(106.55, 29.75), 5_000.0, 100.0)
    inside = projected(oracle, 106.55, 29.75, 4_999.0, azimuth_deg)
    outside = projected(oracle, 106.55, 29.75, 5_001.0, azimuth_deg)
    lon, lat = [inside[0], outside[0]], [inside[1], outside[1]]
    assert compare(oracle, [zone], lon, lat) == (2, 0)
    hits = engine_check([zone], lon, lat)
    assert [(h.obs_index, h.kind) for h in hits] == [(0, "breach"), (1, "approach")]
    assert hits[1].distance_m == pytest.approx(1.0, abs=0.2)


SQUARE = Polygon([(106.5, 29.7), (106.6, 29.7), (106.6, 29.8), (106.5, 29.8)])


@pytest.mark.parametrize(
    ("start", "azimuth_deg"),
    [((106.6, 29.75), 90.0), ((106.6, 29.8), 45.0), ((106.5, 29.7), 225.0)],
)
def test_distance_50_km_from_a_polygon(
    oracle: Oracle, start: tuple[float, float], azimuth_deg: float
) -> None:
    zone = make_zone("sq", SQUARE, None, 60_000.0)
    lon, lat = projected(oracle, *start, 50_000.0, azimuth_deg)
    assert compare(oracle, [zone], [lon], [lat]) == (1, 0)
    (hit,) = engine_check([zone], [lon], [lat])
    (row,) = postgis(oracle, [zone], [lon], [lat]).values()
    assert hit.kind == "approach"
    assert row["distance"] == pytest.approx(50_000.0, abs=1.0)
    assert hit.distance_m == pytest.approx(row["distance"], abs=DISTANCE_TOLERANCE_M)
