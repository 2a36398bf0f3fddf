"""ZoneIndex.check agrees with a naive per-point, per-zone shapely loop on random zones and
observations, and gets the edge cases right: boundaries, open bands, references, windows,
authorised UAVs, and distances in metres against Vincenty's geodesic."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.affinity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, Polygon

from geofence.index import ZoneHit, ZoneIndex, _BoxGrid
from geofence.zones import Zone
from lowalt.errors import ValidationError
from tests.test_zones import T0, vincenty_m, zones

_A_M = 6_378_137.0
_E2 = 6.694_379_990_14e-3
TOLERANCE_M = 0.25  # circles are polygons within 0.1 m of the circle; frames differ by cm


def local_distance_m(polygon: Any, lon: float, lat: float) -> float:
    """Distance from the point to the shape in an equirectangular frame at the point itself.

    The frame is an affine map of lon/lat, so the shape's edges stay straight, and it is exact
    at the point: good to millimetres for the few hundred metres an approach spans.
    """
    phi = math.radians(lat)
    w = math.sqrt(1.0 - _E2 * math.sin(phi) ** 2)
    kx = _A_M / w * math.cos(phi) * math.pi / 180.0
    ky = _A_M * (1.0 - _E2) / w**3 * math.pi / 180.0
    coords = [[(x - lon) * kx, (y - lat) * ky] for x, y in polygon.exterior.coords]
    holes = [[[(x - lon) * kx, (y - lat) * ky] for x, y in h.coords] for h in polygon.interiors]
    return float(Polygon(coords, holes).distance(Point(0.0, 0.0)))


def naive_check(
    zone_list: list[Zone],
    lon: np.ndarray,
    lat: np.ndarray,
    heights: dict[str, np.ndarray],
    t: np.ndarray,
    uav: list[str],
) -> dict[tuple[int, str], tuple[str, float]]:
    """The oracle: every point against every zone, one shapely call at a time."""
    hits: dict[tuple[int, str], tuple[str, float]] = {}
    for i in range(lon.size):
        point = Point(lon[i], lat[i])
        for zone in zone_list:
            if not zone.active_at(float(t[i])) or uav[i] in zone.authorized:
                continue
            if zone.lower_m is not None and heights[zone.reference][i] < zone.lower_m:
                continue
            if zone.upper_m is not None and heights[zone.upper_ref][i] > zone.upper_m:
                continue
            if zone.polygon.intersects(point):
                hits[i, zone.id] = ("breach", 0.0)
                continue
            parts = getattr(zone.polygon, "geoms", [zone.polygon])
            distance_m = min(local_distance_m(p, lon[i], lat[i]) for p in parts)
            if distance_m <= zone.approach_m + TOLERANCE_M:
                hits[i, zone.id] = ("approach", distance_m)
    return hits


def run_check(index: ZoneIndex, **obs: Any) -> list[ZoneHit]:
    n = len(obs["lon"])
    agl = np.asarray(obs.get("agl", [50.0] * n), dtype=np.float64)
    return index.check(
        np.asarray(obs["lon"], dtype=np.float64),
        np.asarray(obs["lat"], dtype=np.float64),
        agl,
        np.asarray(obs.get("amsl", agl + 200.0), dtype=np.float64),
        np.asarray(obs.get("wgs84", agl + 170.0), dtype=np.float64),
        np.asarray(obs.get("t", [T0] * n), dtype=np.float64),
        obs.get("uav", ["u9"] * n),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Zone], dict[str, Any]]:
    zone_list = [
        draw(zones(zone_id=f"z{k}", whole_seconds=False)) for k in range(draw(st.integers(1, 6)))
    ]
    n = draw(st.integers(1, 40))
    lon, lat = [], []
    for _ in range(n):
        zone = draw(st.sampled_from(zone_list))
        x0, y0 = zone.polygon.centroid.x, zone.polygon.centroid.y
        reach_deg = draw(st.sampled_from([0.002, 0.01, 0.03]))
        lon.append(x0 + draw(st.floats(-reach_deg, reach_deg)))
        lat.append(y0 + draw(st.floats(-reach_deg, reach_deg)))
    agl = np.array(draw(st.lists(st.floats(-60.0, 600.0), min_size=n, max_size=n)))
    obs = {
        "lon": np.array(lon),
        "lat": np.array(lat),
        "agl": agl,
        "amsl": agl + draw(st.floats(-100.0, 300.0)),
        "wgs84": agl + draw(st.floats(-100.0, 300.0)),
        "t": np.array(
            draw(st.lists(st.floats(T0 - 4 * 86400, T0 + 4 * 86400), min_size=n, max_size=n))
        ),
        "uav": draw(st.lists(st.sampled_from(["u1", "u2", "u3", "u4"]), min_size=n, max_size=n)),
    }
    return zone_list, obs


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_check_agrees_with_the_naive_loop(scenario: tuple[list[Zone], dict[str, Any]]) -> None:
    zone_list, obs = scenario
    index = ZoneIndex(zone_list)
    fast = run_check(index, **obs)
    assert [(h.obs_index, index.zones.index(index.get(h.zone_id))) for h in fast] == sorted(
        (h.obs_index, index.zones.index(index.get(h.zone_id))) for h in fast
    )
    got = {(h.obs_index, h.zone_id): (h.kind, h.distance_m) for h in fast}
    heights = {"agl": obs["agl"], "amsl": obs["amsl"], "wgs84": obs["wgs84"]}
    want = naive_check(zone_list, obs["lon"], obs["lat"], heights, obs["t"], obs["uav"])
    for key in got.keys() | want.keys():
        zone = index.get(key[1])
        assert zone is not None
        if key not in got:  # only an approach right at the limit may be missed
            kind, distance_m = want[key]
            assert kind == "approach" and distance_m > zone.approach_m - TOLERANCE_M, key
            continue
        if key not in want:
            pytest.fail(f"{key} reported {got[key]} but the naive loop found nothing")
        assert got[key][0] == want[key][0], key
        assert got[key][1] == pytest.approx(want[key][1], abs=TOLERANCE_M), key
        assert got[key][1] <= zone.approach_m


# --- edge cases -------------------------------------------------------------------------------

SQUARE = Polygon([(106.5, 29.7), (106.6, 29.7), (106.6, 29.8), (106.5, 29.8)])


def square_zone(**kwargs: Any) -> Zone:
    base: dict[str, Any] = {
        "id": "sq",
        "name": "",
        "restriction": "prohibited",
        "geometry": SQUARE,
        "lower_m": 0.0,
        "upper_m": 120.0,
        "reference": "agl",
    }
    base.update(kwargs)
    return Zone(**base)


def kinds(hits: list[ZoneHit]) -> list[tuple[int, str, str]]:
    return [(h.obs_index, h.zone_id, h.kind) for h in hits]


def test_boundary_counts_as_inside() -> None:
    index = ZoneIndex([square_zone()])
    hits = run_check(index, lon=[106.55, 106.5, 106.6, 106.55], lat=[29.7, 29.75, 29.8, 29.75])
    assert kinds(hits) == [(i, "sq", "breach") for i in range(4)]
    assert all(h.distance_m == 0.0 for h in hits)


def test_approach_distance_is_geodesic() -> None:
    index = ZoneIndex([square_zone(approach_m=100.0)])
    m_per_deg_lat = vincenty_m(106.55, 29.7, 106.55, 29.699)  # per 0.001 degree
    lats = [29.7 - 50.0 / m_per_deg_lat * 0.001, 29.7 - 99.0 / m_per_deg_lat * 0.001, 29.698]
    hits = run_check(index, lon=[106.55] * 3, lat=lats)
    assert kinds(hits) == [(0, "sq", "approach"), (1, "sq", "approach")]
    assert hits[0].distance_m == pytest.approx(50.0, abs=0.01)
    assert hits[1].distance_m == pytest.approx(99.0, abs=0.01)


def _nearest_on_meridian_m(lon_e: float, lat0: float, lat1: float, lon: float, lat: float) -> float:
    """Shortest Vincenty distance from a point to a meridian segment (golden-section search)."""
    lo, hi = lat0, lat1
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if vincenty_m(lon, lat, lon_e, a) < vincenty_m(lon, lat, lon_e, b):
            hi = b
        else:
            lo = a
    return vincenty_m(lon, lat, lon_e, (lo + hi) / 2)


@pytest.mark.parametrize("dlon", [0.003, 0.1, 0.52, 1.0])
def test_distance_within_1_m_at_50_km_and_beyond(dlon: float) -> None:
    zone = square_zone(approach_m=200_000.0, upper_m=None)
    circle = square_zone(id="c", geometry=Point(106.55, 29.75), radius_m=5000.0, approach_m=2e5)
    lon, lat = 106.6 + dlon, 29.71
    hits = {
        h.zone_id: h.distance_m for h in run_check(ZoneIndex([zone, circle]), lon=[lon], lat=[lat])
    }
    assert hits["sq"] == pytest.approx(
        _nearest_on_meridian_m(106.6, 29.7, 29.8, lon, lat), abs=0.05
    )
    assert hits["c"] == pytest.approx(vincenty_m(106.55, 29.75, lon, lat) - 5000.0, abs=0.15)


def test_altitude_band_is_inclusive_and_open_ends() -> None:
    index = ZoneIndex(
        [
            square_zone(),
            square_zone(id="open-top", upper_m=None, lower_m=100.0),
            square_zone(id="open-bottom", lower_m=None, upper_m=-10.0),
        ]
    )
    hits = run_check(index, lon=[106.55] * 5, lat=[29.75] * 5, agl=[0.0, 120.0, 120.001, 1e4, -500])
    assert kinds(hits) == [
        (0, "sq", "breach"),
        (1, "sq", "breach"),
        (1, "open-top", "breach"),
        (2, "open-top", "breach"),
        (3, "open-top", "breach"),
        (4, "open-bottom", "breach"),
    ]


def test_references_pick_their_height() -> None:
    index = ZoneIndex(
        [
            square_zone(id="agl", upper_m=120.0, reference="agl"),
            square_zone(id="amsl", upper_m=300.0, reference="amsl"),
            square_zone(id="wgs84", upper_m=300.0, reference="wgs84"),
            square_zone(id="mixed", lower_m=0.0, upper_m=600.0, upper_reference="amsl"),
        ]
    )
    hits = run_check(
        index,
        lon=[106.55, 106.55],
        lat=[29.75] * 2,
        agl=[100.0, 130.0],
        amsl=[400, 250],
        wgs84=[290, 610],
    )
    assert kinds(hits) == [
        (0, "agl", "breach"),
        (0, "wgs84", "breach"),
        (0, "mixed", "breach"),
        (1, "amsl", "breach"),
        (1, "mixed", "breach"),
    ]


def test_nan_height_is_inside_every_band() -> None:
    hits = run_check(ZoneIndex([square_zone()]), lon=[106.55], lat=[29.75], agl=[math.nan])
    assert kinds(hits) == [(0, "sq", "breach")]


def test_inactive_zone_is_not_hit() -> None:
    index = ZoneIndex([square_zone(start=T0, end=T0 + 3600)])
    times = [T0 - 0.5, T0, T0 + 3600, T0 + 3600.5]
    hits = run_check(index, lon=[106.55] * 4, lat=[29.75] * 4, t=times)
    assert kinds(hits) == [(1, "sq", "breach"), (2, "sq", "breach")]


def test_schedule_applies() -> None:
    index = ZoneIndex([square_zone(schedule=((frozenset({3}), 8 * 60, 9 * 60),))])  # Thu 8-9
    times = [
        T0 + 7.99 * 3600,
        T0 + 8 * 3600,
        T0 + 8.99 * 3600,
        T0 + 9 * 3600,
        T0 + 7 * 86400 + 8.5 * 3600,
    ]
    hits = run_check(index, lon=[106.55] * 5, lat=[29.75] * 5, t=times)
    assert [h.obs_index for h in hits] == [1, 2, 4]


def test_authorised_uav_is_not_hit() -> None:
    index = ZoneIndex([square_zone(authorized=frozenset({"CQ-0007"})), square_zone(id="other")])
    hits = run_check(index, lon=[106.55] * 2, lat=[29.75] * 2, uav=["CQ-0007", "CQ-0008"])
    assert kinds(hits) == [(0, "other", "breach"), (1, "sq", "breach"), (1, "other", "breach")]


def test_zero_approach_buffer_gives_no_approach() -> None:
    index = ZoneIndex([square_zone(approach_m=0.0)])
    assert run_check(index, lon=[106.55], lat=[29.6999]) == []


def test_zones_containing() -> None:
    small = square_zone(id="small", geometry=Point(106.55, 29.75), radius_m=100.0)
    index = ZoneIndex([square_zone(), small])
    assert index.zones_containing(106.55, 29.75) == ["sq", "small"]
    assert index.zones_containing(106.51, 29.71) == ["sq"]
    assert index.zones_containing(106.7, 29.75) == []
    assert ZoneIndex.empty().zones_containing(106.55, 29.75) == []


def test_empty_index_and_empty_batch() -> None:
    assert run_check(ZoneIndex.empty(), lon=[106.55], lat=[29.75]) == []
    assert run_check(ZoneIndex([square_zone()]), lon=[], lat=[]) == []
    assert len(ZoneIndex.empty()) == 0


def test_snapshot_helpers() -> None:
    index = ZoneIndex([square_zone()])
    bigger = index.with_zone(square_zone(id="b"))
    assert [z.id for z in bigger.zones] == ["sq", "b"] and len(index) == 1
    replaced = bigger.with_zone(square_zone(id="sq", upper_m=10.0))
    assert [z.id for z in replaced.zones] == ["b", "sq"]
    new = replaced.get("sq")
    assert new is not None and new.upper_m == 10.0
    assert "b" in bigger and "b" not in bigger.without_zone("b")
    assert bigger.get("nope") is None


def test_duplicate_ids_and_bad_shapes_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"zones\[1\]\.id"):
        ZoneIndex([square_zone(), square_zone()])
    index = ZoneIndex([square_zone()])
    with pytest.raises(ValueError, match="lat has 2 rows"):
        index.check(
            np.zeros(1), np.zeros(2), np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), ["u"]
        )
    with pytest.raises(ValueError, match="uav has 0 rows"):
        index.check(*(np.zeros(1),) * 6, [])


def test_index_of_10000_zones_answers_like_each_zone() -> None:
    """Build time is benchmarked (benchmarks/bench_geofence.py); here 10,000 zones are all found."""
    rng = np.random.default_rng(7)
    zone_list = []
    for k in range(10_000):
        lon, lat = rng.uniform(106.3, 106.9), rng.uniform(29.4, 29.9)
        size = rng.uniform(0.0005, 0.005)
        if k % 2:
            zone_list.append(square_zone(id=f"c{k}", geometry=Point(lon, lat), radius_m=size * 1e5))
            continue
        angle = np.linspace(0, 2 * np.pi, int(rng.integers(20, 200)), endpoint=False)
        ring = np.column_stack([lon + size * np.cos(angle), lat + size * np.sin(angle)])
        zone_list.append(square_zone(id=f"p{k}", geometry=Polygon(ring)))
    index = ZoneIndex(zone_list)
    assert len(index) == 10_000
    for zone in zone_list[::997]:
        centre = zone.polygon.representative_point()
        assert zone.id in index.zones_containing(centre.x, centre.y)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n_boxes=st.integers(0, 40), n_points=st.integers(0, 60))
def test_box_grid_finds_exactly_the_boxes_holding_each_point(
    data: st.DataObject, n_boxes: int, n_points: int
) -> None:
    """The grid's (point, box) pairs are those of a brute-force test, edges and corners
    included, for boxes of very different sizes; NaN points and empty (NaN) boxes hold
    nothing."""
    coord = st.floats(-5.0, 5.0, allow_nan=False)
    boxes = []
    for _ in range(n_boxes):
        if n_boxes > 30 and data.draw(st.booleans(), label="empty"):
            boxes.append([math.nan] * 4)
            continue
        x0, y0 = data.draw(coord), data.draw(coord)
        w, h = data.draw(st.floats(0.0, 10.0)), data.draw(st.floats(0.0, 0.5))
        boxes.append([x0, y0, x0 + w, y0 + h])
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    points = []
    for _ in range(n_points):  # some on a box's edge or corner, some anywhere, some NaN
        kind = data.draw(st.sampled_from(["any", "corner", "edge", "nan"]))
        if kind in ("corner", "edge") and len(boxes) and np.isfinite(b[0]).all():
            row = b[data.draw(st.integers(0, len(boxes) - 1))]
            if not np.isfinite(row).all():
                row = b[0]
            x = row[data.draw(st.sampled_from([0, 2]))]
            y = row[data.draw(st.sampled_from([1, 3]))] if kind == "corner" else data.draw(
                st.floats(float(row[1]), float(row[3])))
            points.append((x, y))
        elif kind == "nan":
            points.append((math.nan, data.draw(coord)))
        else:
            points.append((data.draw(coord), data.draw(coord)))
    p = np.array(points, dtype=np.float64).reshape(-1, 2)
    x, y = p[:, 0].copy(), p[:, 1].copy()
    expected = {(i, j) for i in range(len(p)) for j in range(len(b))
                if b[j, 0] <= x[i] <= b[j, 2] and b[j, 1] <= y[i] <= b[j, 3]}
    grids = [_BoxGrid(b, dense=False)]  # a search of the occupied cells
    if int(np.prod(grids[0]._shape)) <= 1 << 22:  # and a table of every cell, where it fits
        grids.append(_BoxGrid(b, dense=True))  # (boxes of no size give cells of 1e-9 or so)
    for grid in grids:
        obs, box = grid.pairs(x, y)
        found = set(zip(obs.tolist(), box.tolist(), strict=True))
        assert found == expected
        # By point, then box: `ZoneIndex.hits` keeps this order to the end instead of sorting.
        assert list(zip(obs.tolist(), box.tolist(), strict=True)) == sorted(found)
        assert len(found) == obs.size  # each pair once


@pytest.mark.parametrize("seed", range(4))
def test_ring_segments_find_what_geos_finds(seed: int) -> None:
    """The nearest point of a zone's rings (polygons with holes, multipolygons, rings of 3 to
    400 segments: one chunk or many), against GEOS: the same distance to within 1e-9 m, the
    nearest point on the rings, and inf exactly where GEOS says farther than the limit."""
    from geofence.index import _RingSegments

    rng = np.random.default_rng(seed)
    polygons = []
    for k in range(60):
        cx, cy = rng.uniform(-5e4, 5e4, 2)
        n = int(rng.choice([3, 8, 9, 40, 400]))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(200.0, 1_000.0, n)
        shell = np.column_stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)])
        hole = [[(cx - 50, cy - 50), (cx + 50, cy - 50), (cx + 50, cy + 50), (cx - 50, cy + 50)]]
        polygon = Polygon(shell, hole if k % 3 == 0 else None)
        if k % 5 == 0:
            polygon = MultiPolygon([polygon, shapely.affinity.translate(polygon, 5_000.0)])
        polygons.append(shapely.make_valid(polygon))
    metric = np.array(polygons, dtype=object)
    parts, part_of = shapely.get_parts(metric, return_index=True)
    rings, ring_of = shapely.get_rings(parts, return_index=True)
    segments = _RingSegments(rings, part_of[ring_of], len(polygons))
    zone = rng.integers(0, len(polygons), 5_000)
    centre = shapely.centroid(metric[zone])
    px = shapely.get_x(centre) + rng.uniform(-3_000, 3_000, zone.size)
    py = shapely.get_y(centre) + rng.uniform(-3_000, 3_000, zone.size)
    limit = rng.choice([0.0, 100.0, 1_000.0, np.inf], zone.size)
    dist, qx = segments.nearest(zone, px, py, limit)
    geos = shapely.distance(shapely.boundary(metric[zone]), shapely.points(px, py))
    within = geos <= limit
    assert within.any() and (~within).any()
    assert np.allclose(dist[within], geos[within], rtol=0, atol=1e-9)
    assert np.isinf(dist[~within]).all() and np.isnan(qx[~within]).all()
    # The nearest point is GEOS's (ties between two equally near points have measure zero).
    lines = shapely.shortest_line(shapely.boundary(metric[zone[within]]),
                                  shapely.points(px[within], py[within]))
    geos_qx = shapely.get_coordinates(lines).reshape(-1, 2, 2)[:, 0, 0]
    assert np.allclose(qx[within], geos_qx, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_inner_disc_holds_only_inside_points(seed: int) -> None:
    """Points a polygon's inner disc (about its centroid) decides without GEOS are inside it:
    stars, concave shapes, a hole beside the centroid, a multipolygon. Every point farther than
    5 cm from an edge (in degrees' local metres) is a breach exactly when the degree polygon
    covers it, with most points near the inner discs' rims, where a disc too large would
    show."""
    rng = np.random.default_rng(seed)
    lon_c, lat_c = 106.55, 29.6
    m_lon, m_lat = 111_320.0 * math.cos(math.radians(lat_c)), 110_900.0
    shapes: list[Any] = []
    for k in range(40):
        cx, cy = lon_c + rng.uniform(-0.2, 0.2), lat_c + rng.uniform(-0.2, 0.2)
        n = int(rng.integers(5, 60))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        size = rng.uniform(30.0, 800.0)
        radius = size * (1.0 + 0.6 * np.sin(int(rng.integers(2, 7)) * angle + rng.uniform(0, 6)))
        shell = np.column_stack([cx + radius * np.sin(angle) / m_lon,
                                 cy + radius * np.cos(angle) / m_lat])
        polygon: Any = Polygon(shell)
        if k % 4 == 1:  # a hole a little off the centroid
            c = polygon.centroid
            hole = Point(c.x + size * 0.1 / m_lon, c.y).buffer(size * 0.05 / m_lon)
            polygon = polygon.difference(hole)
        if k % 5 == 2:
            polygon = MultiPolygon([polygon, shapely.affinity.translate(polygon, 0.05)])
        polygon = shapely.make_valid(polygon)
        if polygon.geom_type in ("Polygon", "MultiPolygon") and not polygon.is_empty:
            shapes.append(polygon)
    zone_list = [square_zone(id=f"p{k}", geometry=g, approach_m=0.0)
                 for k, g in enumerate(shapes)]
    index = ZoneIndex(zone_list)
    lon, lat, owner = [], [], []
    for j, g in enumerate(shapes):
        c = g.centroid
        x0, y0, x1, y1 = g.bounds
        for _ in range(200):  # about the centroid, out to the shape's size
            r = rng.uniform(0.0, 1.0) * max((x1 - x0) * m_lon, (y1 - y0) * m_lat) / 2.0
            a = rng.uniform(0, 2 * np.pi)
            lon.append(c.x + r * math.sin(a) / m_lon)
            lat.append(c.y + r * math.cos(a) / m_lat)
            owner.append(j)
    breached = {(h.obs_index, h.zone_id) for h in run_check(index, lon=lon, lat=lat)
                if h.kind == "breach"}
    points = shapely.points(lon, lat)
    geoms = np.array(shapes, dtype=object)[owner]
    covered = shapely.covers(geoms, points)
    # A lower bound of the metres to the nearest edge (the smaller scale for both axes).
    edge_m = shapely.distance(shapely.boundary(geoms), points) * min(m_lon, m_lat)
    clear = edge_m > 0.05
    assert clear.sum() > 5_000 and covered[clear].sum() > 1_000
    for i in np.flatnonzero(clear).tolist():
        assert ((i, f"p{owner[i]}") in breached) == covered[i], (i, owner[i])
