"""The geofence benchmark's zone layouts and the share of the fleet it reports them to catch
(benchmarks/bench_geofence.py): the figures the ingest cut is read beside must be right."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from benchmarks.bench_geofence import exposure, random_zones
from geofence.zones import Zone

FLEET_BOX = box(106.3, 29.4, 106.9, 29.9)  # where the ingest benchmark's fleet flies


def _zone(zone_id: str, geometry: object, **kw: object) -> Zone:
    fields: dict[str, object] = {"lower_m": None, "upper_m": None, **kw}
    return Zone(id=zone_id, name="", restriction="prohibited",
                geometry=geometry, **fields)  # type: ignore[arg-type]


def test_spread_moves_the_same_zones_apart_about_the_same_centre() -> None:
    dense = random_zones(300, np.random.default_rng(4))
    again = random_zones(300, np.random.default_rng(4), spread=1.0)
    spread = random_zones(300, np.random.default_rng(4), spread=3.0)
    assert all(a.geometry.equals_exact(b.geometry, 0.0) for a, b in zip(dense, again, strict=True))

    def centre(z: Zone) -> tuple[float, float]:
        c = z.geometry.centroid
        return c.x, c.y

    for d, s in zip(dense, spread, strict=True):
        # The same zone (shape, size, band, window), its centre 3x as far from the box's centre.
        assert (d.id, d.radius_m, d.lower_m, d.upper_m, d.start, d.schedule) == (
            s.id, s.radius_m, s.lower_m, s.upper_m, s.start, s.schedule)
        (dx, dy), (sx, sy) = centre(d), centre(s)
        if d.radius_m is None:  # a polygon drawn in metres: the same area on the ground
            assert shapely.get_num_coordinates(d.geometry) == shapely.get_num_coordinates(
                s.geometry)
            assert shapely.area(d.geometry) * np.cos(np.radians(dy)) == pytest.approx(
                shapely.area(s.geometry) * np.cos(np.radians(sy)), rel=1e-3)
        assert sx - 106.6 == pytest.approx(3.0 * (dx - 106.6), abs=1e-3)
        assert sy - 29.65 == pytest.approx(3.0 * (dy - 29.65), abs=1e-3)
    xs = [centre(z)[0] for z in spread]
    assert min(xs) < 106.3 - 0.2 and max(xs) > 106.9 + 0.2  # well outside the fleet's box


def test_exposure_counts_the_fleet_the_servers_check_catches() -> None:
    over_all = _zone("ALL", FLEET_BOX.buffer(0.05))
    assert exposure([over_all]) == {"reports_in_condition": 1.0, "hits_per_report": 1.0}
    # Twice over the whole fleet: every UAV once, two hits a report.
    twice = exposure([over_all, _zone("ALL2", FLEET_BOX.buffer(0.05))])
    assert twice == {"reports_in_condition": 1.0, "hits_per_report": 2.0}
    # Far away, above the fleet (it flies 30-120 m AGL), or not active now: nothing.
    assert exposure([_zone("FAR", Point(110.0, 35.0), radius_m=5_000.0)])["hits_per_report"] == 0
    assert exposure([_zone("HIGH", FLEET_BOX.buffer(0.05), lower_m=500.0)]) == {
        "reports_in_condition": 0.0, "hits_per_report": 0.0}
    assert exposure([_zone("PAST", FLEET_BOX.buffer(0.05), start=0.0, end=1.0)])[
        "reports_in_condition"] == 0.0
    # The west half of the box: about half the fleet (centres uniform over the box).
    west = exposure([_zone("WEST", box(106.0, 29.0, 106.55, 30.2))])
    assert 0.4 < west["reports_in_condition"] < 0.6
