"""Zones: GeoJSON parsing names the faulty field, round trips are exact, circles lie on the
geodesic (checked against Vincenty's inverse formula), windows and weekly schedules apply."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, Polygon

from geofence.zones import (
    MAX_RADIUS_M,
    REFERENCES,
    Zone,
    circle_polygons,
    schedule_week_mask,
    tm_forward,
    tm_inverse,
    zone_from_feature,
    zone_to_feature,
)
from lowalt.errors import ValidationError

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday
SQUARE = [[[106.5, 29.5], [106.6, 29.5], [106.6, 29.6], [106.5, 29.6], [106.5, 29.5]]]


def vincenty_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Geodesic distance on WGS84 by Vincenty's inverse formula (an independent oracle)."""
    a, f = 6_378_137.0, 1 / 298.257_223_563
    b = a * (1 - f)
    big_l = math.radians(lon2 - lon1)
    u1 = math.atan((1 - f) * math.tan(math.radians(lat1)))
    u2 = math.atan((1 - f) * math.tan(math.radians(lat2)))
    su1, cu1, su2, cu2 = math.sin(u1), math.cos(u1), math.sin(u2), math.cos(u2)
    lam = big_l
    for _ in range(200):
        sl, cl = math.sin(lam), math.cos(lam)
        ss = math.hypot(cu2 * sl, cu1 * su2 - su1 * cu2 * cl)
        if ss == 0.0:
            return 0.0
        cs = su1 * su2 + cu1 * cu2 * cl
        sigma = math.atan2(ss, cs)
        sa = cu1 * cu2 * sl / ss
        c2a = 1 - sa * sa
        c2m = cs - 2 * su1 * su2 / c2a if c2a else 0.0
        c = f / 16 * c2a * (4 + f * (4 - 3 * c2a))
        previous = lam
        lam = big_l + (1 - c) * f * sa * (sigma + c * ss * (c2m + c * cs * (-1 + 2 * c2m * c2m)))
        if abs(lam - previous) < 1e-13:
            break
    u_sq = c2a * (a * a - b * b) / (b * b)
    big_a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
    big_b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
    ds = (
        big_b
        * ss
        * (
            c2m
            + big_b
            / 4
            * (cs * (-1 + 2 * c2m * c2m) - big_b / 6 * c2m * (-3 + 4 * ss * ss) * (-3 + 4 * c2m**2))
        )
    )
    return b * big_a * (sigma - ds)


def feature(geometry: dict[str, Any] | None = None, **props: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "z1", "restriction": "prohibited"}
    base.update(props)
    return {
        "type": "Feature",
        "geometry": geometry or {"type": "Polygon", "coordinates": copy.deepcopy(SQUARE)},
        "properties": base,
    }


def no_id() -> str:
    raise AssertionError("new_id called for a feature that has an id")


def parse(f: object) -> Zone:
    return zone_from_feature(f, new_id=no_id)


# --- hypothesis strategies, shared with the ED-269 and index tests ----------------------------

M_PER_DEG_LAT = 110_900.0


def _star(
    draw: st.DrawFn, lon: float, lat: float, size_m: float
) -> tuple[list[tuple[float, float]], float]:
    """A ring star-shaped about (lon, lat), so always simple; returns it and the radius of a
    disc about the centre that it contains."""
    k = draw(st.integers(3, 24))
    gaps = np.array(draw(st.lists(st.floats(0.2, 1.0), min_size=k, max_size=k)))
    angles = np.cumsum(gaps / gaps.sum() * 2 * math.pi)
    if np.max(np.diff(np.r_[0.0, angles])) > math.pi / 2:
        angles = np.linspace(0, 2 * math.pi, k, endpoint=False) + angles[0] / k
    max_gap = float(np.max(np.diff(np.r_[angles, angles[0] + 2 * math.pi])))
    radii = np.array(draw(st.lists(st.floats(0.5, 1.0), min_size=k, max_size=k))) * size_m
    m_per_deg_lon = 111_320.0 * math.cos(math.radians(lat))
    ring = [
        (lon + r * math.sin(a) / m_per_deg_lon, lat + r * math.cos(a) / M_PER_DEG_LAT)
        for a, r in zip(angles, radii, strict=True)
    ]
    return [*ring, ring[0]], float(radii.min() * math.cos(max_gap / 2))


@st.composite
def zone_shapes(draw: st.DrawFn, lon: float, lat: float) -> tuple[Any, float | None]:
    kind = draw(st.sampled_from(["circle", "polygon", "holed", "multi"]))
    size_m = draw(st.floats(20.0, 2_000.0))
    if kind == "circle":
        return Point(lon, lat), size_m
    shell, inner_m = _star(draw, lon, lat, size_m)
    if kind == "polygon":
        return Polygon(shell), None
    if kind == "holed":
        h = 0.5 * inner_m
        dlon = h / (111_320.0 * math.cos(math.radians(lat)))
        dlat = h / M_PER_DEG_LAT
        hole = [(lon - dlon, lat - dlat), (lon + dlon, lat - dlat), (lon, lat + dlat)]
        return Polygon(shell, [[*hole, hole[0]]]), None
    offset = 2.5 * size_m / (111_320.0 * math.cos(math.radians(lat)))
    other, _ = _star(draw, lon + offset, lat, size_m)
    return MultiPolygon([Polygon(shell), Polygon(other)]), None


@st.composite
def zones(draw: st.DrawFn, zone_id: str = "z1", whole_seconds: bool = True) -> Zone:
    """Random valid zones around Chongqing (lon 106.6, lat 29.7)."""
    lon = draw(st.floats(106.55, 106.65))
    lat = draw(st.floats(29.65, 29.75))
    geometry, radius_m = draw(zone_shapes(lon, lat))
    limits = st.none() | st.floats(-50.0, 500.0)
    lower_m, upper_m = draw(limits), draw(limits)
    reference = draw(st.sampled_from(REFERENCES))
    upper_reference = draw(st.none() | st.sampled_from([r for r in REFERENCES if r != reference]))
    if upper_reference is None and lower_m is not None and upper_m is not None:
        lower_m, upper_m = min(lower_m, upper_m), max(lower_m, upper_m)
    times = st.integers(-3 * 86400, 3 * 86400).map(lambda s: T0 + s)
    if not whole_seconds:
        times = st.floats(T0 - 3 * 86400, T0 + 3 * 86400)
    start, end = draw(st.none() | times), draw(st.none() | times)
    if start is not None and end is not None and end < start:
        start, end = end, start
    period = st.tuples(
        st.frozensets(st.integers(0, 6), min_size=1),
        st.integers(0, 1439),
        st.integers(0, 1440),
    )
    schedule = draw(st.none() | st.lists(period, min_size=1, max_size=3).map(tuple))
    return Zone(
        id=zone_id,
        name=draw(st.text(max_size=20)),
        restriction=draw(
            st.sampled_from(["prohibited", "authorization_required", "conditional", "advisory"])
        ),
        geometry=geometry,
        lower_m=lower_m,
        upper_m=upper_m,
        reference=reference,
        start=start,
        end=end,
        schedule=schedule,
        approach_m=draw(st.floats(0.0, 500.0)),
        authorized=draw(st.frozensets(st.sampled_from(["u1", "u2", "u3"]))),
        radius_m=radius_m,
        upper_reference=upper_reference,
    )


# --- parsing ----------------------------------------------------------------------------------


def test_polygon_feature_parses_every_property() -> None:
    zone = parse(
        feature(
            name="Jiangbei CTR",
            restriction="authorization_required",
            lower_m=0,
            upper_m=120.5,
            reference="amsl",
            start="2026-01-01T08:00:00+08:00",
            end="2026-01-02T00:00:00Z",
            approach_m=250,
            authorized=["CQ-0007", "CQ-0008"],
            schedule=[{"days": ["MON", "SUN"], "start": "08:00", "end": "24:00"}],
        )
    )
    assert zone.id == "z1"
    assert zone.name == "Jiangbei CTR"
    assert zone.restriction == "authorization_required"
    assert zone.geometry.equals(Polygon(SQUARE[0]))
    assert (zone.lower_m, zone.upper_m, zone.reference, zone.upper_ref) == (
        0.0,
        120.5,
        "amsl",
        "amsl",
    )
    assert (zone.start, zone.end) == (T0, T0 + 86400)
    assert zone.schedule == ((frozenset({0, 6}), 480, 1440),)
    assert zone.approach_m == 250.0
    assert zone.authorized == frozenset({"CQ-0007", "CQ-0008"})
    assert zone.radius_m is None and zone.source_doc is None


def test_defaults_and_new_id() -> None:
    f = feature()
    del f["properties"]["id"]
    zone = zone_from_feature(f, new_id=lambda: "assigned-1")
    assert zone.id == "assigned-1"
    assert (zone.lower_m, zone.upper_m, zone.reference) == (None, None, "agl")
    assert (zone.start, zone.end, zone.schedule) == (None, None, None)
    assert zone.approach_m == 100.0 and zone.authorized == frozenset()
    f["id"] = "top-level"
    assert zone_from_feature(f, new_id=no_id).id == "top-level"


def test_point_feature_is_a_circle_zone() -> None:
    zone = parse(
        feature({"type": "Point", "coordinates": [106.6417, 29.7192, 300.0]}, radius_m=5000)
    )
    assert zone.geometry.equals(Point(106.6417, 29.7192))
    assert zone.radius_m == 5000.0
    assert zone.polygon.contains(Point(106.6417, 29.7192))
    assert zone.polygon.bounds[2] - zone.polygon.bounds[0] == pytest.approx(0.1035, abs=1e-3)


def test_differing_references() -> None:
    zone = parse(feature(lower_m=0, upper_m=600, reference="agl", upper_reference="amsl"))
    assert (zone.reference, zone.upper_reference, zone.upper_ref) == ("agl", "amsl", "amsl")
    same = parse(feature(lower_m=0, upper_m=600, reference="agl", upper_reference="agl"))
    assert same.upper_reference is None
    # different references cannot be compared: a floor above the ceiling's number is allowed
    assert parse(feature(lower_m=500, upper_m=100, reference="agl", upper_reference="amsl"))


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(f: dict[str, Any]) -> None:
        target: Any = f
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return apply


_DELETE = object()
P = "properties"
G = "geometry"
BOWTIE = [[[106.5, 29.5], [106.6, 29.6], [106.6, 29.5], [106.5, 29.6], [106.5, 29.5]]]
ACROSS_180 = [[[179.9, 0.0], [-179.9, 0.0], [-179.9, 1.0], [179.9, 1.0], [179.9, 0.0]]]
OTHER_SQUARE = [[[106.55, 29.55], [106.7, 29.55], [106.7, 29.7], [106.55, 29.7], [106.55, 29.55]]]

INVALID = [
    (_set(["type"], "FeatureCollection"), "type"),
    (_set([G], _DELETE), "geometry"),
    (_set([G, "type"], "LineString"), "geometry.type"),
    (_set([G, "coordinates"], []), "geometry.coordinates"),
    (_set([G, "coordinates", 0], SQUARE[0][:3]), "geometry.coordinates[0]"),
    (_set([G, "coordinates", 0, 4], [106.5, 29.50001]), "geometry.coordinates[0]"),
    (_set([G, "coordinates"], BOWTIE), "geometry.coordinates"),
    (_set([G, "coordinates", 0, 1], [180.000001, 29.5]), "geometry.coordinates[0][1][0]"),
    (_set([G, "coordinates", 0, 2], [106.6, 90.000001]), "geometry.coordinates[0][2][1]"),
    (_set([G, "coordinates", 0, 1], [106.6, -90.1]), "geometry.coordinates[0][1][1]"),
    (_set([G, "coordinates", 0, 1], ["106.6", 29.5]), "geometry.coordinates[0][1][0]"),
    (_set([G, "coordinates", 0, 1], [True, 29.5]), "geometry.coordinates[0][1][0]"),
    (_set([G, "coordinates", 0, 1], [math.nan, 29.5]), "geometry.coordinates[0][1][0]"),
    (_set([G, "coordinates", 0, 1], [106.6]), "geometry.coordinates[0][1]"),
    (_set([G, "coordinates"], ACROSS_180), "geometry.coordinates"),
    (
        _set([G], {"type": "MultiPolygon", "coordinates": [SQUARE, OTHER_SQUARE]}),
        "geometry.coordinates",
    ),
    (
        _set([G], {"type": "MultiPolygon", "coordinates": [SQUARE, [[[1, 2]]]]}),
        "geometry.coordinates[1][0]",
    ),
    (_set([G], {"type": "Point", "coordinates": [106.6, 29.7]}), "properties.radius_m"),
    (_set([P, "radius_m"], 100), "properties.radius_m"),
    (_set([P, "restriction"], "forbidden"), "properties.restriction"),
    (_set([P, "restriction"], _DELETE), "properties.restriction"),
    (_set([P, "lower_m"], 10), "properties.reference"),
    (_set([P, "reference"], "qnh"), "properties.reference"),
    (_set([P, "upper_reference"], "qfe"), "properties.upper_reference"),
    (_set([P, "lower_m"], "10"), "properties.lower_m"),
    (_set([P, "upper_m"], math.inf), "properties.upper_m"),
    (_set([P, "id"], "has space"), "properties.id"),
    (_set([P, "id"], "x" * 65), "properties.id"),
    (_set([P, "name"], 5), "properties.name"),
    (_set([P, "start"], "2026-01-01T00:00:00"), "properties.start"),
    (_set([P, "start"], "yesterday"), "properties.start"),
    (_set([P, "end"], T0 - 1), "properties.end"),
    (_set([P, "approach_m"], -0.001), "properties.approach_m"),
    (_set([P, "authorized"], ["CQ-1", "bad id"]), "properties.authorized[1]"),
    (_set([P, "authorized"], "CQ-1"), "properties.authorized"),
    (
        _set([P, "schedule"], [{"days": ["MON", "FUN"], "start": "08:00", "end": "09:00"}]),
        "properties.schedule[0].days",
    ),
    (
        _set([P, "schedule"], [{"days": [], "start": "08:00", "end": "09:00"}]),
        "properties.schedule[0]",
    ),
    (
        _set([P, "schedule"], [{"days": ["MON"], "start": "24:00", "end": "09:00"}]),
        "properties.schedule[0]",
    ),
    (
        _set([P, "schedule"], [{"days": ["MON"], "start": "08:00", "end": "24:01"}]),
        "properties.schedule[0].end",
    ),
    (_set([P], []), "properties"),
]


@pytest.mark.parametrize(("mutate", "field"), INVALID)
def test_invalid_feature_names_the_field(
    mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    f = feature(start=T0)
    mutate(f)
    with pytest.raises(ValidationError) as caught:
        parse(f)
    assert caught.value.field == field, caught.value
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("value", [None, 5, "Feature", [1, 2]])
def test_not_an_object(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        parse(value)
    assert caught.value.field == "feature"


@pytest.mark.parametrize(
    ("radius_m", "ok"), [(MAX_RADIUS_M, True), (MAX_RADIUS_M + 1, False), (0.0, False), (-1, False)]
)
def test_radius_limits(radius_m: float, ok: bool) -> None:
    f = feature({"type": "Point", "coordinates": [106.6, 29.7]}, radius_m=radius_m)
    if ok:
        assert parse(f).radius_m == radius_m
    else:
        with pytest.raises(ValidationError, match=r"properties\.radius_m"):
            parse(f)


@pytest.mark.parametrize(
    ("lon", "lat", "reason"), [(179.99, 10.0, "antimeridian"), (106.0, 88.99, "pole")]
)
def test_circle_across_antimeridian_or_pole_is_refused(lon: float, lat: float, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        parse(feature({"type": "Point", "coordinates": [lon, lat]}, radius_m=5000))


def test_coordinate_limits_are_inclusive() -> None:
    edge = [[[179.0, 89.0], [180.0, 89.0], [180.0, 90.0], [179.0, 90.0], [179.0, 89.0]]]
    assert parse(feature({"type": "Polygon", "coordinates": edge})).geometry.bounds == (
        179.0,
        89.0,
        180.0,
        90.0,
    )
    assert parse(feature(approach_m=0)).approach_m == 0.0


def test_polygon_with_hole_and_multipolygon() -> None:
    hole = [[106.52, 29.52], [106.53, 29.52], [106.53, 29.53], [106.52, 29.52]]
    holed = parse(feature({"type": "Polygon", "coordinates": [*SQUARE, hole]}))
    assert not holed.polygon.contains(Point(106.527, 29.521))
    far = [[[106.8, 29.5], [106.9, 29.5], [106.9, 29.6], [106.8, 29.5]]]
    multi = parse(feature({"type": "MultiPolygon", "coordinates": [SQUARE, far]}))
    assert isinstance(multi.polygon, MultiPolygon) and len(multi.polygon.geoms) == 2


# --- round trips ------------------------------------------------------------------------------


def test_feature_round_trip_through_json() -> None:
    f = feature(
        name="n",
        lower_m=0,
        upper_m=600,
        reference="agl",
        upper_reference="amsl",
        start="2026-01-01T00:00:00Z",
        end="2026-01-01T12:30:00.250000Z",
        schedule=[{"days": ["SAT"], "start": "22:00", "end": "02:00"}],
        authorized=["b", "a"],
    )
    zone = parse(f)
    out = zone_to_feature(zone)
    assert out["properties"]["start"] == "2026-01-01T00:00:00Z"
    assert out["properties"]["end"] == "2026-01-01T12:30:00.250000Z"
    assert out["properties"]["authorized"] == ["a", "b"]
    again = parse(json.loads(json.dumps(out)))
    assert again == zone
    assert hash(again) == hash(zone)


@settings(max_examples=150, deadline=None)
@given(zones())
def test_round_trip_property(zone: Zone) -> None:
    assert parse(json.loads(json.dumps(zone_to_feature(zone)))) == zone


# --- geometry ---------------------------------------------------------------------------------


def test_tm_projection_golden_values() -> None:
    # WGS84 meridian quadrant: 10 001 965.729 m
    x, y = tm_forward(106.6, 90.0, 106.6)
    assert (float(x), float(y)) == pytest.approx((0.0, 10_001_965.7293), abs=1e-3)
    lon = np.random.default_rng(0).uniform(100.0, 113.0, 1000)
    lat = np.random.default_rng(1).uniform(-70.0, 70.0, 1000)
    back_lon, back_lat = tm_inverse(*tm_forward(lon, lat, 106.6), 106.6)
    assert np.abs(back_lon - lon).max() < 1e-9 and np.abs(back_lat - lat).max() < 1e-9


@pytest.mark.parametrize("offset_deg", [0.0, 0.5])
def test_tm_distances_match_the_geodesic(offset_deg: float) -> None:
    """At the central meridian scale is 1; 0.5 degrees (48 km) off it, 1 + x^2/2R^2."""
    lon, lat = 106.6 + offset_deg, 29.7
    x1, y1 = tm_forward(lon, lat, 106.6)
    x2, y2 = tm_forward(lon + 0.01, lat + 0.01, 106.6)
    scale = 1.0 + float(x1) ** 2 / (2 * 6_371_000.0**2)
    expected = vincenty_m(lon, lat, lon + 0.01, lat + 0.01) * scale
    assert math.hypot(float(x2 - x1), float(y2 - y1)) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("radius_m", [10.0, 300.0, 5_000.0, 50_000.0])
def test_circle_radius_on_the_geodesic(radius_m: float) -> None:
    lon, lat = 106.6417, 29.7192
    ring = np.array(circle_polygons(lon, lat, radius_m)[0].exterior.coords)
    assert np.array_equal(ring[0], ring[-1])
    vertices = [vincenty_m(lon, lat, a, b) - radius_m for a, b in ring]
    middles = [vincenty_m(lon, lat, a, b) - radius_m for a, b in (ring[1:] + ring[:-1]) / 2]
    assert max(map(abs, vertices)) <= 0.105
    assert max(map(abs, middles)) <= 0.105


def test_zone_polygon_matches_batch_circles() -> None:
    zone = parse(feature({"type": "Point", "coordinates": [106.6, 29.7]}, radius_m=1234.5))
    batch = circle_polygons([106.5, 106.6], [29.6, 29.7], [10.0, 1234.5])
    assert zone.polygon.equals_exact(batch[1], 0.0)


# --- time -------------------------------------------------------------------------------------


def _zone(**kwargs: Any) -> Zone:
    base: dict[str, Any] = {
        "id": "z",
        "name": "",
        "restriction": "prohibited",
        "geometry": Polygon(SQUARE[0]),
        "lower_m": None,
        "upper_m": None,
    }
    base.update(kwargs)
    return Zone(**base)


def test_window_is_inclusive() -> None:
    zone = _zone(start=T0, end=T0 + 3600)
    assert [zone.active_at(T0 + dt) for dt in (-0.001, 0, 1800, 3600, 3600.001)] == [
        False,
        True,
        True,
        True,
        False,
    ]
    assert _zone(start=T0).active_at(T0 + 1e9) and _zone(end=T0).active_at(0.0)


def test_weekly_schedule() -> None:
    weekdays = frozenset(range(5))
    zone = _zone(schedule=((weekdays, 8 * 60, 18 * 60),))
    thursday = T0
    assert not zone.active_at(thursday + 8 * 3600 - 1)
    assert zone.active_at(thursday + 8 * 3600)
    assert zone.active_at(thursday + 18 * 3600 - 1)
    assert not zone.active_at(thursday + 18 * 3600)
    assert not zone.active_at(thursday + 2 * 86400 + 12 * 3600)  # Saturday noon


def test_schedule_runs_past_midnight_and_wraps_the_week() -> None:
    zone = _zone(schedule=((frozenset({6}), 22 * 60, 2 * 60),))  # Sunday 22:00 to Monday 02:00
    sunday = T0 + 3 * 86400
    assert zone.active_at(sunday + 23 * 3600)
    assert zone.active_at(sunday + 86400 + 3600)  # Monday 01:00
    assert not zone.active_at(sunday + 86400 + 2 * 3600)
    assert not zone.active_at(sunday + 3 * 3600)
    full_day = _zone(schedule=((frozenset({3}), 300, 300),))  # equal ends: 24 h from 05:00
    assert full_day.active_at(T0 + 86400 + 4 * 3600) and not full_day.active_at(T0 + 4 * 3600)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.frozensets(st.integers(0, 6), min_size=1), st.integers(0, 1439), st.integers(0, 1440)
        ),
        min_size=1,
        max_size=3,
    ),
    st.floats(0.0, 4e9),
)
def test_week_mask_agrees_with_active_at(
    schedule: list[tuple[frozenset[int], int, int]], t: float
) -> None:
    zone = _zone(schedule=tuple(schedule))
    minute = (int(t // 60) + 3 * 1440) % (7 * 1440)
    assert bool(schedule_week_mask(schedule)[minute]) == zone.active_at(t)


def test_zone_needs_radius_for_a_point() -> None:
    with pytest.raises(ValueError, match="radius_m"):
        _zone(geometry=Point(106.6, 29.7))
