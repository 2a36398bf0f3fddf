"""MotionCheck.implausible against a plain per-report reference (math, one pair at a time)."""

from __future__ import annotations

import math
import random
from typing import Any, cast

import pytest

from dispatch.alerts import AlertManager
from geofence.monitor import DEFAULT_ACCURACY_M, EARTH_RADIUS_M, MotionCheck
from lowalt.models import Observation
from lowalt.settings import load_settings


def _reference(previous: dict[str, Observation], rows: list[Observation], max_speed: float,
               max_vspeed: float) -> list[tuple[str, float, float, float, float]]:
    """(uav, t, implied speed, implied vertical speed, distance) of each implausible row: each row
    against its UAV's newest report before the batch; then every row becomes the previous."""
    found = []
    before = dict(previous)
    for row in rows:
        p = before.get(row.uav)
        if p is not None:
            phi0, phi1 = math.radians(p.lat), math.radians(row.lat)
            h = (math.sin((phi1 - phi0) / 2) ** 2 + math.cos(phi0) * math.cos(phi1)
                 * math.sin(math.radians(row.lon - p.lon) / 2) ** 2)
            dist = 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(max(h, 0.0), 1.0)))
            acc0 = p.acc_h_m or DEFAULT_ACCURACY_M
            acc1 = row.acc_h_m or DEFAULT_ACCURACY_M
            dt = row.t - p.t
            if dt > 0:
                speed = max(dist - acc0 - acc1, 0.0) / dt
                vspeed = max(abs(row.alt_m - p.alt_m) - 2 * DEFAULT_ACCURACY_M, 0.0) / dt
                if speed > max_speed or vspeed > max_vspeed:
                    found.append((row.uav, row.t, speed, vspeed, dist))
        previous[row.uav] = row
    return found


def _row(
    uav: str, t: float, lat: float, lon: float, alt_m: float, acc: float | None
) -> Observation:
    return Observation(uav, t, lat, lon, alt_m, None, None, None, None, "airborne", acc, None,
                       "gw/gateway/native", t)


@pytest.mark.parametrize("seed", range(20))
def test_implausible_matches_the_reference(seed: int) -> None:
    rnd = random.Random(seed)
    settings = load_settings({}, {})
    check = MotionCheck(cast(AlertManager, None), settings)
    previous: dict[str, Observation] = {}
    uavs = [f"U{k}" for k in range(12)]
    flagged = 0
    for _ in range(15):
        rows = []
        for _ in range(rnd.randint(0, 30)):  # some UAVs twice in a batch, some not at all
            uav = rnd.choice(uavs)
            last = previous.get(uav)
            t = (last.t if last else 1_764_000_000.0) + rnd.choice([-1.0, 0.0, 0.5, 1.0, 2.0])
            jump_m = rnd.choice([1.0, 20.0, 150.0, 2_000.0])
            lat = (last.lat if last else 29.6) + rnd.uniform(-1, 1) * jump_m / 111_000
            lon = (last.lon if last else 106.5) + rnd.uniform(-1, 1) * jump_m / 96_000
            alt = (last.alt_m if last else 100.0) + rnd.choice([0.0, 5.0, 80.0, -300.0])
            rows.append(_row(uav, t, lat, lon, alt, rnd.choice([None, 0.0, 3.0, 50.0])))
        want = _reference(previous, rows, settings.max_plausible_speed_mps,
                          settings.max_plausible_vspeed_mps)
        got = check.implausible(rows)
        assert [(c.uav, c.t) for c in got] == [(w[0], w[1]) for w in want]
        for c, (_, _, speed, vspeed, dist) in zip(got, want, strict=True):
            detail: dict[str, Any] = dict(c.detail)
            assert detail["implied_speed_mps"] == pytest.approx(speed, abs=0.051)
            assert detail["implied_vspeed_mps"] == pytest.approx(vspeed, abs=0.051)
            assert detail["distance_m"] == pytest.approx(dist, abs=0.051)
        flagged += len(got)
        # Each UAV's previous report is its newest so far (its last row of the batch).
        for uav in uavs:
            last, kept = previous.get(uav), check.previous(uav)
            if last is None:
                assert kept is None
                continue
            assert kept is not None
            acc = kept.pop("acc_h_m")
            assert kept == {"t": last.t, "lat": last.lat, "lon": last.lon, "alt_m": last.alt_m}
            assert math.isnan(acc) if last.acc_h_m is None else acc == last.acc_h_m
    assert flagged > 0  # the scenarios do reach the limits
