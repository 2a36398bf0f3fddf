"""Conflict detection: golden scenarios with hand-computed answers, and the grid against oracles.

Scenarios are laid out in metres east/north of a centre and placed symmetrically, so the mean
position (the projection centre) is the centre itself and the distances are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geofence import conflicts
from geofence.conflicts import (
    ConflictPair,
    ConflictParams,
    detect_conflicts,
    detect_conflicts_naive,
)
from lowalt.errors import ConfigError

LAT0, LON0 = 29.65, 106.55
TICK_T = 1_000.0
E2 = 6.69437999014e-3
_W = 1.0 - E2 * math.sin(math.radians(LAT0)) ** 2
NORTH_M_PER_DEG = math.radians(1.0) * 6378137.0 * (1.0 - E2) / _W**1.5
EAST_M_PER_DEG = math.radians(1.0) * 6378137.0 / math.sqrt(_W) * math.cos(math.radians(LAT0))
EAST, NORTH, WEST = 90.0, 0.0, 270.0


@dataclass
class Ac:
    """One aircraft of a scenario, in metres from the centre."""

    east_m: float
    north_m: float
    alt_m: float = 100.0
    speed_mps: float = 0.0
    track_deg: float = 0.0
    vspeed_mps: float = 0.0
    crewed: bool = False
    age_s: float = 0.0


def picture(*aircraft: Ac) -> dict[str, Any]:
    """Keyword arguments for the detectors, ticking at TICK_T."""
    return {
        "lat": np.array([LAT0 + a.north_m / NORTH_M_PER_DEG for a in aircraft]),
        "lon": np.array([LON0 + a.east_m / EAST_M_PER_DEG for a in aircraft]),
        "alt_m": np.array([a.alt_m for a in aircraft]),
        "t": np.array([TICK_T - a.age_s for a in aircraft]),
        "speed_mps": np.array([a.speed_mps for a in aircraft]),
        "track_deg": np.array([a.track_deg for a in aircraft]),
        "vspeed_mps": np.array([a.vspeed_mps for a in aircraft]),
        "crewed": np.array([a.crewed for a in aircraft], dtype=bool),
        "tick_t": TICK_T,
    }


def both(params: ConflictParams, *aircraft: Ac) -> list[ConflictPair]:
    """Run the grid detector and the all-pairs reference; they must agree exactly."""
    data = picture(*aircraft)
    found = detect_conflicts(**data, params=params)
    assert found == detect_conflicts_naive(**data, params=params)
    return found


def assert_pair(pair: ConflictPair, kind: str, **expected: float) -> None:
    """The pair of aircraft 0 and 1, of `kind`, with the expected figures."""
    assert (pair.i, pair.j, pair.kind) == (0, 1, kind)
    for name, value in expected.items():
        assert getattr(pair, name) == pytest.approx(value, rel=1e-9, abs=1e-6), name


DEFAULT = ConflictParams()


def test_head_on_predicted_with_time_to_loss_and_cpa() -> None:
    # 500 m apart closing at 20 m/s: 50 m reached after 450 / 20 = 22.5 s, closest at 25 s.
    (pair,) = both(
        DEFAULT,
        Ac(-250.0, 0.0, speed_mps=10.0, track_deg=EAST),
        Ac(250.0, 0.0, speed_mps=10.0, track_deg=WEST),
    )
    assert_pair(
        pair,
        "conflict_predicted",
        h_now_m=500.0,
        v_now_m=0.0,
        t_los_s=22.5,
        cpa_s=25.0,
        cpa_m=0.0,
        cpa_v_m=0.0,
    )


def test_lookahead_at_the_limit_and_one_past_it() -> None:
    # Vertical-only geometry keeps the arithmetic exact: within 15 m from (40 - 15) / 2 = 12.5 s.
    climbing = (Ac(0.0, 0.0, alt_m=100.0), Ac(0.0, 0.0, alt_m=60.0, vspeed_mps=2.0))
    assert both(ConflictParams(lookahead_s=12.5), *climbing) == []
    (pair,) = both(ConflictParams(lookahead_s=12.6), *climbing)
    assert_pair(pair, "conflict_predicted", t_los_s=12.5, cpa_s=0.0, cpa_v_m=40.0)


def test_head_on_clips_cpa_to_the_lookahead() -> None:
    (pair,) = both(
        ConflictParams(lookahead_s=22.6),
        Ac(-250.0, 0.0, speed_mps=10.0, track_deg=EAST),
        Ac(250.0, 0.0, speed_mps=10.0, track_deg=WEST),
    )
    assert_pair(pair, "conflict_predicted", t_los_s=22.5, cpa_s=22.6, cpa_m=48.0)


def test_crossing_at_right_angles() -> None:
    # Both reach (150, 150) at t = 30 s; distance is sqrt(2) * |300 - 10 t|, so 50 m at
    # t = 30 - 5 / sqrt(2).
    (pair,) = both(
        ConflictParams(lookahead_s=40.0),
        Ac(-150.0, 150.0, speed_mps=10.0, track_deg=EAST),
        Ac(150.0, -150.0, speed_mps=10.0, track_deg=NORTH),
    )
    assert_pair(
        pair,
        "conflict_predicted",
        h_now_m=300.0 * math.sqrt(2.0),
        t_los_s=30.0 - 5.0 / math.sqrt(2.0),
        cpa_s=30.0,
        cpa_m=0.0,
    )


def test_overtaking() -> None:
    (pair,) = both(
        DEFAULT,
        Ac(-100.0, 0.0, speed_mps=15.0, track_deg=EAST),
        Ac(100.0, 0.0, speed_mps=5.0, track_deg=EAST),
    )
    assert_pair(pair, "conflict_predicted", t_los_s=15.0, cpa_s=20.0, cpa_m=0.0)


def test_parallel_tracks_never_conflict() -> None:
    assert (
        both(
            DEFAULT,
            Ac(0.0, -50.0, speed_mps=12.0, track_deg=EAST),
            Ac(0.0, 50.0, speed_mps=12.0, track_deg=EAST),
        )
        == []
    )


def test_parallel_tracks_inside_the_minimum_stay_lost() -> None:
    (pair,) = both(
        DEFAULT,
        Ac(0.0, -20.0, speed_mps=12.0, track_deg=EAST),
        Ac(0.0, 20.0, speed_mps=12.0, track_deg=EAST),
    )
    assert_pair(
        pair,
        "separation_loss",
        h_now_m=40.0,
        t_los_s=0.0,
        cpa_s=0.0,
        cpa_m=40.0,
        cpa_v_m=0.0,
    )


def test_diverging_after_a_near_miss() -> None:
    assert (
        both(
            DEFAULT,
            Ac(-30.0, 0.0, speed_mps=10.0, track_deg=WEST),
            Ac(30.0, 0.0, speed_mps=10.0, track_deg=EAST),
        )
        == []
    )


def test_vertical_separation_saves_the_head_on_pair() -> None:
    assert (
        both(
            DEFAULT,
            Ac(-250.0, 0.0, alt_m=100.0, speed_mps=10.0, track_deg=EAST),
            Ac(250.0, 0.0, alt_m=115.0, speed_mps=10.0, track_deg=WEST),
        )
        == []
    )


def test_vertical_minimum_at_the_limit_and_one_past_it() -> None:
    assert both(DEFAULT, Ac(0.0, 0.0, alt_m=100.0), Ac(0.0, 0.0, alt_m=115.0)) == []
    (pair,) = both(DEFAULT, Ac(0.0, 0.0, alt_m=100.0), Ac(0.0, 0.0, alt_m=114.9))
    assert_pair(pair, "separation_loss", h_now_m=0.0, v_now_m=14.9)


def test_horizontal_minimum_at_the_limit_and_one_past_it() -> None:
    # Reported on the same spot; the northbound one has since flown 5 m/s * age, exactly.
    def after(age_s: float) -> list[ConflictPair]:
        moved = Ac(0.0, 0.0, speed_mps=5.0, track_deg=NORTH, age_s=age_s)
        return both(DEFAULT, Ac(0.0, 0.0), moved)

    assert after(10.0) == []
    (pair,) = after(9.98)
    assert_pair(pair, "separation_loss", h_now_m=49.9, cpa_s=0.0, cpa_m=49.9)


def test_climbing_under_a_hovering_aircraft() -> None:
    # Same spot; 40 m below, climbing 2 m/s: within 15 m from 12.5 s to 27.5 s.
    (pair,) = both(
        DEFAULT,
        Ac(0.0, 0.0, alt_m=100.0),
        Ac(0.0, 0.0, alt_m=60.0, vspeed_mps=2.0),
    )
    assert_pair(
        pair,
        "conflict_predicted",
        h_now_m=0.0,
        v_now_m=40.0,
        t_los_s=12.5,
        cpa_s=0.0,
        cpa_m=0.0,
        cpa_v_m=40.0,
    )


def test_crewed_aircraft_widen_the_minima() -> None:
    pair_of = (Ac(-100.0, 0.0, alt_m=100.0), Ac(100.0, 0.0, alt_m=150.0))
    assert both(DEFAULT, *pair_of) == []
    pair_of[1].crewed = True
    (pair,) = both(DEFAULT, *pair_of)
    assert_pair(pair, "separation_loss", h_now_m=200.0, v_now_m=50.0)
    pair_of[1].alt_m = 200.0  # 100 m apart: the crewed vertical minimum is not broken
    assert both(DEFAULT, *pair_of) == []


def test_late_report_is_extrapolated_to_the_tick() -> None:
    # Reported 10 s ago 100 m west, flying east at 10 m/s: at the tick it is at the origin.
    (pair,) = both(
        DEFAULT,
        Ac(-100.0, 0.0, speed_mps=10.0, track_deg=EAST, age_s=10.0),
        Ac(30.0, 0.0),
    )
    assert_pair(pair, "separation_loss", h_now_m=30.0, t_los_s=0.0, cpa_s=3.0, cpa_m=0.0)


def test_unknown_velocity_is_hovering() -> None:
    nan = math.nan
    (pair,) = both(
        DEFAULT,
        Ac(-250.0, 0.0, speed_mps=nan, track_deg=EAST, vspeed_mps=nan),
        Ac(250.0, 0.0, speed_mps=20.0, track_deg=WEST),
        Ac(0.0, 3_000.0, speed_mps=50.0, track_deg=nan, vspeed_mps=nan),  # no track: hovering
        Ac(0.0, -3_000.0),
    )
    assert_pair(pair, "conflict_predicted", t_los_s=22.5, cpa_s=25.0, cpa_m=0.0)


def test_identical_positions() -> None:
    (pair,) = both(DEFAULT, Ac(10.0, 10.0), Ac(10.0, 10.0))
    assert_pair(
        pair,
        "separation_loss",
        h_now_m=0.0,
        v_now_m=0.0,
        t_los_s=0.0,
        cpa_s=0.0,
        cpa_m=0.0,
        cpa_v_m=0.0,
    )


def test_rows_without_position_are_skipped_and_indices_kept() -> None:
    data = picture(Ac(-10.0, 0.0), Ac(500.0, 0.0), Ac(10.0, 0.0), Ac(600.0, 0.0))
    data["lat"][1] = math.nan
    data["t"][3] = math.nan
    found = detect_conflicts(**data, params=DEFAULT)
    assert found == detect_conflicts_naive(**data, params=DEFAULT)
    assert [(p.i, p.j) for p in found] == [(0, 2)]


def test_output_sorted_by_pair() -> None:
    cluster = [Ac(float(k % 3), float(k // 3)) for k in range(9)]
    found = both(DEFAULT, *cluster)
    assert [(p.i, p.j) for p in found] == [(i, j) for i in range(9) for j in range(i + 1, 9)]


def test_empty_and_single() -> None:
    assert both(DEFAULT) == []
    assert both(DEFAULT, Ac(0.0, 0.0)) == []


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="lookahead_s"):
        ConflictParams(lookahead_s=-1.0)
    with pytest.raises(ConfigError, match="h_m"):
        ConflictParams(h_m=math.nan)
    data = picture(Ac(0.0, 0.0), Ac(1.0, 0.0))
    data["crewed"] = np.array([False])
    with pytest.raises(ValueError, match="crewed"):
        detect_conflicts(**data, params=DEFAULT)


# --- Property tests -------------------------------------------------------------------------


def clustered_traffic(
    seed: int,
    n: int,
    n_clusters: int,
    spread_m: float,
    far: float,
    max_speed_mps: float,
    unknown: float,
    crewed: float,
) -> dict[str, Any]:
    """Clusters (spread 0 stacks aircraft on one spot), a fraction far away, some late reports."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-2_000.0, 2_000.0, size=(n_clusters, 2))
    xy = centres[rng.integers(0, n_clusters, n)] + rng.normal(0.0, spread_m, size=(n, 2))
    is_far = rng.random(n) < far
    xy[is_far] = rng.uniform(-300_000.0, 300_000.0, size=(int(is_far.sum()), 2))
    alt = rng.choice([30.0, 60.0, 100.0], n) + rng.normal(0.0, 10.0, n) * (rng.random(n) < 0.7)
    speed = rng.uniform(0.0, max_speed_mps, n)
    track = rng.choice([0.0, 90.0, 180.0, 270.0], n) * (rng.random(n) < 0.2)
    track = np.where(track > 0.0, track, rng.uniform(0.0, 360.0, n))
    vspeed = rng.uniform(-4.0, 4.0, n) * (rng.random(n) < 0.3)
    for col in (speed, track, vspeed):
        col[rng.random(n) < unknown] = np.nan
    return {
        "lat": LAT0 + xy[:, 1] / NORTH_M_PER_DEG,
        "lon": LON0 + xy[:, 0] / EAST_M_PER_DEG,
        "alt_m": alt,
        "t": TICK_T - rng.uniform(0.0, 3.0, n) * (1.0 + 10.0 * (rng.random(n) < 0.1)),
        "speed_mps": speed,
        "track_deg": track,
        "vspeed_mps": vspeed,
        "crewed": rng.random(n) < crewed,
        "tick_t": TICK_T,
    }


params_strategy = st.builds(
    ConflictParams,
    h_m=st.sampled_from([0.0, 5.0, 50.0, 300.0]),
    v_m=st.sampled_from([0.0, 15.0, 40.0]),
    crewed_h_m=st.sampled_from([30.0, 500.0, 2_000.0]),
    crewed_v_m=st.sampled_from([10.0, 100.0]),
    lookahead_s=st.sampled_from([0.0, 1.0, 30.0, 120.0]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 400),
    n_clusters=st.integers(1, 6),
    spread_m=st.sampled_from([0.0, 1.0, 20.0, 200.0, 2_000.0]),
    far=st.sampled_from([0.0, 0.05, 0.5]),
    max_speed_mps=st.sampled_from([0.0, 3.0, 20.0, 120.0]),
    unknown=st.sampled_from([0.0, 0.2]),
    crewed=st.sampled_from([0.0, 0.02, 0.3]),
    params=params_strategy,
    small_blocks=st.booleans(),
)
def test_grid_equals_all_pairs(
    seed: int,
    n: int,
    n_clusters: int,
    spread_m: float,
    far: float,
    max_speed_mps: float,
    unknown: float,
    crewed: float,
    params: ConflictParams,
    small_blocks: bool,
) -> None:
    data = clustered_traffic(seed, n, n_clusters, spread_m, far, max_speed_mps, unknown, crewed)
    with pytest.MonkeyPatch.context() as patch:
        if small_blocks:  # many tiny blocks: exercises the splitting of candidate pairs
            patch.setattr(conflicts, "_PAIR_BLOCK", 37)
        found = detect_conflicts(**data, params=params)
        reference = detect_conflicts_naive(**data, params=params)
    assert found == reference


def oracle(data: dict[str, Any], p: ConflictParams) -> dict[tuple[int, int], tuple[Any, ...]]:
    """Independent scalar brute force: projection, extrapolation and intervals per pair."""
    rows = range(len(data["lat"]))
    lat0 = math.fsum(data["lat"]) / len(rows)
    lon0 = math.fsum(data["lon"]) / len(rows)
    w = 1.0 - E2 * math.sin(math.radians(lat0)) ** 2
    north_m = math.radians(1.0) * 6378137.0 * (1.0 - E2) / w**1.5
    east_m = math.radians(1.0) * 6378137.0 / math.sqrt(w) * math.cos(math.radians(lat0))
    state = []
    for k in rows:
        speed, track = float(data["speed_mps"][k]), float(data["track_deg"][k])
        if math.isnan(speed) or math.isnan(track):
            speed = track = 0.0
        vz = float(data["vspeed_mps"][k])
        vz = 0.0 if math.isnan(vz) else vz
        vx = speed * math.sin(math.radians(track))
        vy = speed * math.cos(math.radians(track))
        dt = TICK_T - float(data["t"][k])
        state.append(
            (
                (float(data["lon"][k]) - lon0) * east_m + vx * dt,
                (float(data["lat"][k]) - lat0) * north_m + vy * dt,
                float(data["alt_m"][k]) + vz * dt,
                vx,
                vy,
                vz,
                bool(data["crewed"][k]),
            )
        )
    out = {}
    big = p.lookahead_s + 1.0
    for i in rows:
        for j in range(i + 1, len(rows)):
            xi, yi, zi, vxi, vyi, vzi, ci = state[i]
            xj, yj, zj, vxj, vyj, vzj, cj = state[j]
            h_min = p.crewed_h_m if ci or cj else p.h_m
            v_min = p.crewed_v_m if ci or cj else p.v_m
            dx, dy, dz = xj - xi, yj - yi, zj - zi
            ux, uy, uz = vxj - vxi, vyj - vyi, vzj - vzi
            h_now, v_now = math.sqrt(dx * dx + dy * dy), abs(dz)
            a, b, c = ux * ux + uy * uy, dx * ux + dy * uy, dx * dx + dy * dy - h_min * h_min
            if a == 0.0:
                h_iv = (-big, big) if c < 0.0 else None
            elif b * b - a * c > 0.0:
                root = math.sqrt(b * b - a * c)
                h_iv = ((-b - root) / a, (-b + root) / a)
            else:
                h_iv = None
            if uz == 0.0:
                v_iv = (-big, big) if v_now < v_min else None
            else:
                lo, hi = sorted(((-v_min - dz) / uz, (v_min - dz) / uz))
                v_iv = (lo, hi)
            lost = h_now < h_min and v_now < v_min
            start = end = 0.0
            if h_iv and v_iv:
                start = max(h_iv[0], v_iv[0], 0.0)
                end = min(h_iv[1], v_iv[1], p.lookahead_s)
            if lost or start < end:
                tc = min(max(-b / a, 0.0), p.lookahead_s) if a > 0.0 else 0.0
                out[i, j] = (
                    "separation_loss" if lost else "conflict_predicted",
                    h_now,
                    v_now,
                    0.0 if lost else start,
                    tc,
                    math.hypot(dx + ux * tc, dy + uy * tc),
                    abs(dz + uz * tc),
                )
    return out


aircraft_strategy = st.tuples(
    st.floats(-400.0, 400.0),  # east_m
    st.floats(-400.0, 400.0),  # north_m
    st.floats(0.0, 150.0),  # alt_m
    st.one_of(st.just(math.nan), st.floats(0.0, 30.0)),  # speed_mps
    st.floats(0.0, 360.0),  # track_deg
    st.one_of(st.just(math.nan), st.floats(-5.0, 5.0)),  # vspeed_mps
    st.booleans(),  # crewed
    st.floats(0.0, 20.0),  # age_s
)


@settings(max_examples=200, deadline=None)
@given(st.lists(aircraft_strategy, min_size=2, max_size=14), params_strategy)
def test_all_pairs_matches_scalar_oracle(
    rows: list[tuple[Any, ...]], params: ConflictParams
) -> None:
    data = picture(*(Ac(*row) for row in rows))
    found = detect_conflicts_naive(**data, params=params)
    assert found == detect_conflicts(**data, params=params)
    expected = oracle(data, params)
    assert {(p.i, p.j): p.kind for p in found} == {k: v[0] for k, v in expected.items()}
    for pair in found:
        want = expected[pair.i, pair.j]
        assert tuple(pair[3:]) == pytest.approx(want[1:], rel=1e-6, abs=1e-6)
