"""Route clearances, pure: request limits, the 4D volume, deconfliction (indexed, naive and a
brute-force oracle), zones and the ceiling, conformance."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Point, Polygon

from geofence.clearances import (
    Heights,
    RouteRequest,
    Volume,
    VolumeIndex,
    ZoneScreen,
    build_volume,
    can_change,
    conformance,
    decide,
    naive_conflicts,
    request_from_json,
    zone_active_between,
)
from geofence.index import ZoneIndex
from geofence.zones import Zone, tm_forward, tm_inverse
from lowalt.errors import ValidationError

T0 = 1_800_000_000.0  # a Friday, 2027-01-15T08:00:00Z
TOL = 30.0
LAT = 29.60
M_PER_DEG_LAT = 110_852.0  # near 29.6 N
M_PER_DEG_LON = 96_900.0


def lon_at(x_m: float, lon0: float = 106.50) -> float:
    return lon0 + x_m / M_PER_DEG_LON


def lat_at(y_m: float, lat0: float = LAT) -> float:
    return lat0 + y_m / M_PER_DEG_LAT


def route(points: list[tuple[float, float, float]], *, departure: float = T0, speed: float = 10.0,
          corridor: float = 30.0, vertical: float = 15.0, uav: str = "U1") -> RouteRequest:
    return RouteRequest(uav, tuple(points), departure, speed, corridor, vertical)


def volume(req: RouteRequest, piece_s: float = 30.0) -> Volume:
    return build_volume(req, tolerance_s=TOL, piece_s=piece_s)


def east_west(y_m: float = 0.0, alt: float = 100.0, **kw: Any) -> RouteRequest:
    """2 km west to east through (106.50, 29.60) + y_m north."""
    return route([(lon_at(-1000), lat_at(y_m), alt), (lon_at(1000), lat_at(y_m), alt)], **kw)


def south_north(x_m: float = 0.0, alt: float = 100.0, **kw: Any) -> RouteRequest:
    return route([(lon_at(x_m), lat_at(-1000), alt), (lon_at(x_m), lat_at(1000), alt)], **kw)


def body(**changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "uav": "CQ-0007",
        "route": {"type": "LineString",
                  "coordinates": [[106.50, 29.60, 100.0], [106.51, 29.60, 100.0]]},
        "departure": T0 + 300, "speed_mps": 12, "corridor_m": 30, "vertical_m": 15,
    }
    b.update(changes)
    return b


def parse(b: Any) -> RouteRequest:
    return request_from_json(b, now=T0, tolerance_s=TOL, max_horizon_s=86400.0)


def field_of(b: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse(b)
    return info.value.field


# -- requests ----------------------------------------------------------------------------------
def test_request_parses_and_echoes() -> None:
    req = parse(body())
    assert req.uav == "CQ-0007" and req.speed_mps == 12.0 and len(req.coordinates) == 2
    assert req.to_json()["route"]["coordinates"][1] == [106.51, 29.60, 100.0]
    iso = parse(body(departure="2027-01-15T08:05:00Z"))
    assert iso.departure == T0 + 300


@pytest.mark.parametrize(("name", "ok", "bad"), [
    ("speed_mps", [0.5, 100], [0.49, 100.01, "fast", True]),
    ("corridor_m", [5, 2000], [4.99, 2000.1, None]),
    ("vertical_m", [2, 500], [1.99, 500.5, float("nan")]),
    ("departure", [T0 - TOL, T0 + 86400], [T0 - TOL - 1, T0 + 86401, "tomorrow", None]),
])
def test_numeric_limits_at_the_limit_and_one_past(name: str, ok: list[Any], bad: list[Any]
                                                  ) -> None:
    for value in ok:
        parse(body(**{name: value}))
    for value in bad:
        assert field_of(body(**{name: value})) == name


def test_route_limits_and_fields() -> None:
    def line(n: int) -> dict[str, Any]:
        return {"type": "LineString",
                "coordinates": [[106.5 + i * 1e-4, 29.6, 100.0] for i in range(n)]}

    parse(body(route=line(2)))
    parse(body(route=line(1000)))
    assert field_of(body(route=line(1))) == "route.coordinates"
    assert field_of(body(route=line(1001))) == "route.coordinates"
    assert field_of(body(route={"type": "Point", "coordinates": [1, 2]})) == "route.type"
    assert field_of(body(route=[1, 2])) == "route"
    bad_alt = line(3)
    bad_alt["coordinates"][1][2] = 20001
    assert field_of(body(route=bad_alt)) == "route.coordinates[1][2]"
    bad_lon = line(3)
    bad_lon["coordinates"][2][0] = 181
    assert field_of(body(route=bad_lon)) == "route.coordinates[2][0]"
    two_d = line(2)
    two_d["coordinates"][0] = [106.5, 29.6]
    assert field_of(body(route=two_d)) == "route.coordinates[0]"
    repeat = line(3)
    repeat["coordinates"][2] = list(repeat["coordinates"][1])
    assert field_of(body(route=repeat)) == "route.coordinates[2]"
    assert field_of(body(uav="bad uav")) == "uav"
    assert field_of([1]) == "body"


# -- the volume --------------------------------------------------------------------------------
def test_volume_times_pieces_and_tolerance() -> None:
    v = volume(east_west(speed=10.0))
    assert v.valid_from == T0
    assert v.valid_to - v.valid_from == pytest.approx(200.0, rel=2e-3)  # 2 km at 10 m/s
    assert len(v) == 7  # pieces of at most 30 s
    assert np.all(v.tb - v.ta <= 30.0 + 1e-9)
    assert v.t0[0] == T0 - TOL and v.t1[-1] == pytest.approx(v.valid_to + TOL)
    assert np.all(v.lo_m == 85.0) and np.all(v.hi_m == 115.0)
    # 3D path: a climb of 300 m over 400 m is 500 m long
    climb = volume(route([(lon_at(0), LAT, 0.0), (lon_at(400), LAT, 300.0)], speed=5.0))
    assert climb.valid_to - climb.valid_from == pytest.approx(100.0, rel=2e-3)
    vertical_only = volume(route([(106.5, LAT, 10.0), (106.5, LAT, 110.0)], speed=5.0))
    assert vertical_only.valid_to - T0 == pytest.approx(20.0)
    assert vertical_only.contains(106.5, lat_at(29.0), 60.0, T0 + 10)
    assert not vertical_only.contains(106.5, lat_at(31.0), 60.0, T0 + 10)


def test_corridor_polygon_holds_every_point_within_corridor_m() -> None:
    v = volume(east_west(corridor=30.0))
    polygon = v.corridor()
    for y_m in (29.9, -29.9):
        assert polygon.contains(Point(lon_at(0), lat_at(y_m)))
    assert polygon.contains(Point(lon_at(1029.8), LAT))  # round cap
    assert not polygon.contains(Point(lon_at(0), lat_at(30.5)))


def test_long_routes_are_capped_in_pieces() -> None:
    far = [(106.0 + 0.04 * i, 29.6, 100.0) for i in range(101)]  # ~390 km at 0.5 m/s
    v = volume(route(far, speed=0.5))
    assert len(v) <= 20_000


# -- volume against volume: the golden scenarios of issue 7 ------------------------------------
def conflicts(new: RouteRequest, *existing: RouteRequest) -> list[Any]:
    index = VolumeIndex((f"C{k}", volume(r)) for k, r in enumerate(existing))
    return index.conflicts(volume(new))


def test_crossing_at_the_same_time_is_named_with_when_and_where() -> None:
    first, second = east_west(), south_north()
    found = conflicts(second, first)
    assert [c.clearance for c in found] == ["C0"]
    c = found[0]
    # Both reach the crossing at T0 + 100 s; the first shared instant is within the windows.
    assert T0 < c.at < T0 + 100
    v1, v2 = volume(first), volume(second)
    assert v1.contains(c.lon, c.lat, c.alt_m, c.at) and v2.contains(c.lon, c.lat, c.alt_m, c.at)
    assert c.reason()["clearance"] == "C0" and c.reason()["at"] == c.at


def test_same_crossing_five_minutes_apart_is_clear() -> None:
    assert conflicts(south_north(departure=T0 + 300), east_west()) == []
    assert conflicts(east_west(departure=T0 + 600), east_west()) == []  # same corridor, later


def test_vertical_separation_and_parallel_corridors_are_clear() -> None:
    assert conflicts(south_north(alt=60.0), east_west(alt=100.0)) == []  # 45..75 vs 85..115
    assert conflicts(south_north(alt=71.0), east_west(alt=100.0)) != []  # 56..86 meets 85..115
    assert conflicts(east_west(y_m=200.0), east_west()) == []  # same time, 200 m apart
    assert conflicts(east_west(y_m=59.0), east_west()) != []  # 30 + 30 m corridors meet


def test_index_agrees_with_naive_on_random_traffic() -> None:
    rng = np.random.default_rng(7)
    existing = {f"C{k}": volume(random_route(rng)) for k in range(150)}
    index = VolumeIndex(existing.items())
    for _ in range(40):
        v = volume(random_route(rng))
        assert index.conflicts(v) == naive_conflicts(v, existing)


def test_index_remove_frees_the_airspace_and_survives_compaction() -> None:
    index = VolumeIndex()
    index.add("A", volume(east_west()))
    probe = volume(south_north())
    assert [c.clearance for c in index.conflicts(probe)] == ["A"]
    assert index.remove("A") and not index.remove("A")
    assert index.conflicts(probe) == []
    for k in range(300):  # enough churn to rebuild the tree several times
        index.add(f"X{k}", volume(east_west(y_m=5000.0 + k)))
        if k % 3:
            index.remove(f"X{k}")
    index.add("B", volume(east_west()))
    assert [c.clearance for c in index.conflicts(probe)] == ["B"]
    assert len(index) == 101


def random_route(rng: np.random.Generator) -> RouteRequest:
    n = int(rng.integers(2, 5))
    pts = [(lon_at(float(rng.uniform(-1500, 1500))), lat_at(float(rng.uniform(-1500, 1500))),
            float(rng.uniform(40, 120))) for _ in range(n)]
    return route(pts, departure=T0 + float(rng.uniform(-300, 300)),
                 speed=float(rng.uniform(5, 20)), corridor=float(rng.uniform(10, 80)),
                 vertical=float(rng.uniform(5, 20)))


# -- a brute-force oracle: sampled 4D points, an independent geometry --------------------------
class Oracle:
    """The volume's definition again, written plainly: point by point, loops, no shapely and no
    R-tree. Metres are the same transverse Mercator metres (the contract's frame)."""

    def __init__(self, req: RouteRequest, piece_s: float = 30.0) -> None:
        self.req = req
        self.lon0 = req.coordinates[0][0]
        xs, ys = self.xy([c[0] for c in req.coordinates], [c[1] for c in req.coordinates])
        pts = [(x, y, c[2]) for x, y, c in zip(xs, ys, req.coordinates, strict=True)]
        self.pieces: list[tuple[list[float], list[float], float, float]] = []
        t = req.departure
        for a, b in itertools.pairwise(pts):
            dur = math.dist(a, b) / req.speed_mps
            k = max(1, math.ceil(dur / piece_s - 1e-9))
            for j in range(k):
                pa = [a[i] + (b[i] - a[i]) * j / k for i in range(3)]
                pb = [a[i] + (b[i] - a[i]) * (j + 1) / k for i in range(3)]
                self.pieces.append((pa, pb, t + dur * j / k, t + dur * (j + 1) / k))
            t += dur

    def xy(self, lon: Any, lat: Any) -> tuple[list[float], list[float]]:
        x, y = tm_forward(lon, lat, self.lon0)
        return np.atleast_1d(x).tolist(), np.atleast_1d(y).tolist()

    def holds(self, lon: Any, lat: Any, alt: Any, t: Any, slack: float) -> list[bool]:
        """Whether each 4D point is in the volume, margins grown by slack (negative: shrunk)."""
        r = self.req
        grow = 1 + 0.01 * math.copysign(1, slack)
        out = []
        for x, y, z, tt in zip(*self.xy(lon, lat), np.atleast_1d(alt).tolist(),
                               np.atleast_1d(t).tolist(), strict=True):
            inside = False
            for a, b, ta, tb in self.pieces:
                if not ta - TOL - slack <= tt <= tb + TOL + slack:
                    continue
                if not (min(a[2], b[2]) - r.vertical_m - slack <= z
                        <= max(a[2], b[2]) + r.vertical_m + slack):
                    continue
                vx, vy = b[0] - a[0], b[1] - a[1]
                l2 = vx * vx + vy * vy
                u = 0.0 if l2 == 0 else min(1.0, max(0.0, ((x - a[0]) * vx + (y - a[1]) * vy) / l2))
                if math.hypot(x - a[0] - u * vx, y - a[1] - u * vy) <= r.corridor_m * grow + slack:
                    inside = True
                    break
            out.append(inside)
        return out

    def samples(self, rng: np.random.Generator, n: int) -> tuple[Any, Any, Any, Any]:
        """n random 4D points well inside the volume (every margin shrunk)."""
        r = self.req
        xs, ys, alts, ts = [], [], [], []
        for _ in range(n):
            a, b, ta, tb = self.pieces[int(rng.integers(len(self.pieces)))]
            f = float(rng.uniform())
            radius = (r.corridor_m * 0.96 - 0.6) * math.sqrt(rng.uniform())
            angle = rng.uniform(0.0, 2 * math.pi)
            xs.append(a[0] + (b[0] - a[0]) * f + radius * math.cos(angle))
            ys.append(a[1] + (b[1] - a[1]) * f + radius * math.sin(angle))
            lo, hi = min(a[2], b[2]) - r.vertical_m, max(a[2], b[2]) + r.vertical_m
            alts.append(float(rng.uniform(lo + 0.5, hi - 0.5)))
            ts.append(float(rng.uniform(ta - TOL + 0.5, tb + TOL - 0.5)))
        lon, lat = tm_inverse(np.array(xs), np.array(ys), self.lon0)
        return lon, lat, np.array(alts), np.array(ts)


def test_brute_force_oracle_agrees_with_the_engine_on_random_routes() -> None:
    rng = np.random.default_rng(2027)
    met = clear = 0
    for _ in range(120):
        a_req, b_req = random_route(rng), random_route(rng)
        a, b = Oracle(a_req), Oracle(b_req)
        found = VolumeIndex([("A", volume(a_req))]).conflicts(volume(b_req))
        reverse = VolumeIndex([("B", volume(b_req))]).conflicts(volume(a_req))
        assert bool(found) == bool(reverse)
        points = a.samples(rng, 1000)
        assert all(a.holds(*points, slack=-0.2))
        shared = b.holds(*points, slack=-0.5)
        if any(shared):  # the oracle saw a common 4D point: the engine must deny
            assert found, (a_req, b_req)
        if found:  # the engine's witness is in both volumes by the oracle's own reckoning
            c = found[0]
            assert a.holds(c.lon, c.lat, c.alt_m, c.at, slack=0.5) == [True]
            assert b.holds(c.lon, c.lat, c.alt_m, c.at, slack=0.5) == [True]
            met += 1
        else:
            clear += 1
    assert met > 10 and clear > 10  # both outcomes were exercised


# -- zones and the ceiling ---------------------------------------------------------------------
def zone(zid: str, restriction: str, **kw: Any) -> Zone:
    geometry = kw.pop("geometry", Point(106.50, LAT))
    radius = kw.pop("radius_m", 200.0 if isinstance(geometry, Point) else None)
    return Zone(id=zid, name=zid, restriction=restriction, geometry=geometry,  # type: ignore[arg-type]
                lower_m=kw.pop("lower_m", 0.0), upper_m=kw.pop("upper_m", None),
                radius_m=radius, **kw)


def reasons(req: RouteRequest, *zones: Zone, reserved: VolumeIndex | None = None,
            heights: Heights | None = None, max_agl_m: float = 120.0) -> list[dict[str, Any]]:
    return decide(volume(req), req.uav, zones=ZoneScreen(ZoneIndex(zones)),
                  reserved=reserved or VolumeIndex(), heights=heights or Heights(),
                  max_agl_m=max_agl_m)


def test_clear_route_is_granted() -> None:
    assert reasons(east_west(), zone("far", "prohibited", geometry=Point(106.6, 29.7))) == []


def test_prohibited_zone_is_named_with_when() -> None:
    found = reasons(east_west(), zone("jiangbei", "prohibited"))
    assert [r["zone"] for r in found] == ["jiangbei"]
    # the corridor meets the circle (200 m) 770 m along a 10 m/s route, at T0 + 77 s: `at` is
    # the start of the window (tolerance included) of the first piece that meets it
    assert T0 + 77 - 30 - TOL <= found[0]["at"] <= T0 + 77 - TOL
    assert found[0]["restriction"] == "prohibited"
    square = Polygon([(lon_at(-50), lat_at(-50)), (lon_at(50), lat_at(-50)),
                      (lon_at(50), lat_at(50)), (lon_at(-50), lat_at(50))])
    assert [r["zone"] for r in reasons(east_west(), zone("sq", "prohibited", geometry=square,
                                                          radius_m=None))] == ["sq"]


def test_authorisation_required_zone_denies_only_unauthorised_uavs() -> None:
    permit = zone("hospital", "authorization_required", authorized=frozenset({"MED-1"}))
    assert [r["zone"] for r in reasons(east_west(uav="U1"), permit)] == ["hospital"]
    assert reasons(east_west(uav="MED-1"), permit) == []
    assert reasons(east_west(), zone("adv", "advisory"), zone("cond", "conditional")) == []


def test_zone_time_window_schedule_and_band() -> None:
    later = zone("later", "prohibited", start=T0 + 3600, end=T0 + 7200)
    assert reasons(east_west(), later) == []
    assert [r["zone"] for r in reasons(east_west(departure=T0 + 3600), later)] == ["later"]
    # 2027-01-15 is a Friday; 08:00 UTC. A weekday 09:00-17:00 schedule is not active then ...
    office = zone("office", "prohibited", schedule=((frozenset({4}), 9 * 60, 17 * 60),))
    assert reasons(east_west(), office) == []
    # ... but a flight whose window runs into 09:00 meets it at 09:00 exactly
    hit = reasons(east_west(departure=T0 + 3600 - 70), office)
    assert [r["at"] for r in hit] == [T0 + 3600]
    high = zone("high", "prohibited", lower_m=150.0, upper_m=300.0)  # route band 85..115 AGL
    assert reasons(east_west(), high) == []
    assert reasons(east_west(alt=136.0), high, max_agl_m=1000) != []  # band top 151
    # references: the band in AMSL with a geoid of 40 m: WGS84 100 -> 60 AMSL
    amsl = zone("amsl", "prohibited", lower_m=0.0, upper_m=50.0, reference="amsl")
    assert reasons(east_west(), amsl) == []  # 85..115 AMSL
    assert reasons(east_west(), amsl, heights=Heights(geoid_undulation_m=40.0)) != []
    # AGL over raised ground: 100 m WGS84 over 60 m ground is 40 m AGL, inside 0..50
    agl = zone("agl", "prohibited", lower_m=0.0, upper_m=50.0, reference="agl")
    assert reasons(east_west(vertical=5.0), agl) == []
    ground = Heights(elevation_at=lambda lon, lat: np.full(np.shape(lon), 60.0))
    assert reasons(east_west(vertical=5.0), agl, heights=ground) != []


def test_zone_active_between_tries_whole_minutes() -> None:
    z = zone("s", "prohibited", schedule=((frozenset({4}), 9 * 60, 9 * 60 + 1),))
    assert zone_active_between(z, T0, T0 + 3599) is None
    assert zone_active_between(z, T0, T0 + 3600) == T0 + 3600
    assert zone_active_between(z, T0 + 3630, T0 + 3700) == T0 + 3630
    windowed = zone("w", "prohibited", start=T0 + 10, end=T0 + 20)
    assert zone_active_between(windowed, T0, T0 + 5) is None
    assert zone_active_between(windowed, T0, T0 + 15) == T0 + 10


def test_ceiling_is_the_top_of_the_band_above_ground() -> None:
    assert reasons(east_west(alt=105.0, vertical=15.0)) == []  # top 120: at the limit
    found = reasons(east_west(alt=105.5, vertical=15.0))
    assert found == [{"ceiling": 120.0, "agl_m": 120.5, "segment": 0, "at": T0 - TOL}]
    raised = Heights(geoid_undulation_m=10.0, elevation_at=lambda lon, lat: np.full(
        np.shape(lon), 50.0))
    assert reasons(east_west(alt=165.0, vertical=15.0), heights=raised) == []  # top 120 AGL
    assert reasons(east_west(alt=190.0, vertical=15.0), heights=raised)[0]["agl_m"] == 145.0


def test_every_reason_is_given() -> None:
    reserved = VolumeIndex([("other", volume(south_north(alt=120.0)))])
    found = reasons(east_west(alt=120.0), zone("z1", "prohibited"),
                    zone("z2", "authorization_required", geometry=Point(lon_at(700), LAT),
                         radius_m=100.0), reserved=reserved)
    keys = [next(iter(r)) for r in found]
    assert sorted(keys) == ["ceiling", "clearance", "zone", "zone"]
    assert {r.get("zone") for r in found} >= {"z1", "z2"}
    assert [r["clearance"] for r in found if "clearance" in r] == ["other"]


# -- conformance -------------------------------------------------------------------------------
def conform(v: Volume, x_m: float, y_m: float, alt: float, t: float,
            ground: bool = False) -> Any:
    c = conformance(v, [lon_at(x_m)], [lat_at(y_m)], [alt], [t], [ground])
    return type(c)(*(a[0] for a in c))


def test_conformance_distances_and_time() -> None:
    v = volume(east_west(corridor=30.0, vertical=15.0))
    on = conform(v, 0, 10, 104, T0 + 100)
    assert on.inside and on.distance_m == pytest.approx(10, abs=0.1) and on.vertical_m == 4
    assert on.early_s == 0 and on.late_s == 0
    assert on.along_m == pytest.approx(1000, rel=3e-3)
    drift = conform(v, 0, 60, 100, T0 + 100)
    assert not drift.inside and drift.distance_m == pytest.approx(60, abs=0.2)
    high = conform(v, 0, 0, 140, T0 + 100)
    assert not high.inside and high.vertical_m == pytest.approx(40)
    early = conform(v, -1000, 0, 100, T0 - TOL - 90)
    assert early.inside and early.early_s == pytest.approx(90)
    late = conform(v, 0, 0, 100, T0 + 100 + 30 + TOL + 20)
    assert late.late_s > 0
    assert float(v.expected_along_m(T0 + 50)) == pytest.approx(500)


def test_conformance_at_the_end() -> None:
    v = volume(east_west())
    assert conform(v, 1000, 5, 100, v.valid_to).at_end
    assert conform(v, 1000, 5, 0, v.valid_to + 60, ground=True).at_end  # landed there
    assert not conform(v, 1000, 5, 0, v.valid_to, ground=False).at_end  # low, not landed
    assert not conform(v, 900, 0, 100, v.valid_to).at_end
    # a route that ends where it started is not over at its departure
    out_and_back = volume(route([(lon_at(0), LAT, 100.0), (lon_at(1000), LAT, 100.0),
                                 (lon_at(0), lat_at(10), 100.0)]))
    assert not conform(out_and_back, 0, 0, 100, T0).at_end
    assert conform(out_and_back, 0, 0, 100, out_and_back.valid_to).at_end


def test_state_machine_keeps_room_for_suspension() -> None:
    assert can_change("granted", "active") and can_change("active", "completed")
    assert can_change("granted", "suspended") and can_change("suspended", "granted")
    assert not can_change("completed", "cancelled") and not can_change("denied", "granted")
    assert not can_change("granted", "completed")
