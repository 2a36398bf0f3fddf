"""The fused picture against a plain recompute: whatever the order of reports and however
refreshes fall between them, the incremental, vectorised fusion gives each aircraft the state the
fusion rule (docs/ARCHITECTURE.md, "Fusion") gives it computed from scratch, one aircraft at a
time; and the cross-check finds the pairs and mismatches a direct search finds."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.fusion_stage import MAX_DT_S, CrossCheck
from lowalt.fusion import (
    M_PER_DEG,
    MIN_ACC_M,
    STATUS_RANK,
    Aircraft,
    FusedPicture,
    Identities,
    distance_m,
    source_name,
)
from lowalt.models import Observation
from lowalt.storage import UavRecord

PROPERTY = settings(database=None, deadline=None, max_examples=100)
T0 = 1_764_000_000.0
WINDOW_S, ACC_H_M, ACC_V_M, MANOEUVRE_MPS2 = 10.0, 30.0, 45.0, 2.0
SOURCES = ("sat/http/native", "rx/gateway/f3411", "sat/gateway/native", "adsb/gateway/sbs")
IDS = ("CQ-1", "SN-1", "CQ-2", "ICAO-7C1234", "LONE")


@dataclass
class StaticRegistry:
    by_uav: Mapping[str, UavRecord] = field(default_factory=dict)
    alias_to_uav: Mapping[str, str] = field(default_factory=dict)


REGISTRY = StaticRegistry(
    {"CQ-1": UavRecord("CQ-1", "op1", ("SN-1",)), "CQ-2": UavRecord("CQ-2", "op2", ("7c1234",))},
    {"SN-1": "CQ-1", "7c1234": "CQ-2"},
)
CANONICAL = {"CQ-1": "CQ-1", "SN-1": "CQ-1", "CQ-2": "CQ-2", "ICAO-7C1234": "CQ-2",
             "LONE": "LONE"}

maybe = st.none() | st.floats(0.0, 40.0)
reports = st.builds(
    lambda uav, source, dt, dlat, lon, alt, speed, track, vspeed, agl, status, acc_h, acc_v:
        Observation(uav, T0 + dt, 29.6 + dlat, lon, alt, speed, track, vspeed, agl, status,
                    acc_h, acc_v, source, T0 + dt),
    st.sampled_from(IDS), st.sampled_from(SOURCES), st.integers(0, 300).map(lambda k: k / 10),
    st.floats(-0.01, 0.01),
    st.sampled_from((106.5, 179.9995, -179.9995)).flatmap(  # and across the antimeridian
        lambda lon: st.floats(-0.0004, 0.0004).map(lambda d: lon + d)),
    st.floats(0.0, 500.0),
    maybe, st.none() | st.floats(0.0, 359.9), st.none() | st.floats(-5.0, 5.0),
    st.none() | st.floats(0.0, 200.0), st.sampled_from((None, "airborne", "ground", "emergency",
                                                        "lost_link")),
    st.none() | st.floats(0.0, 60.0), st.none() | st.floats(0.0, 60.0),
)
# Batches of reports; after each, maybe a refresh.
histories = st.lists(st.tuples(st.lists(reports, max_size=12), st.booleans()), max_size=8)


def expected_state(uav: str, newest: list[Observation]) -> tuple[Observation, tuple[str, ...]]:
    """The fusion rule, one aircraft, from its newest report per source (in filing order)."""
    used = sorted(newest, key=lambda r: r.t, reverse=True)
    t_fused = used[0].t
    used = [r for r in used if t_fused - r.t <= WINDOW_S]
    if len(used) == 1:
        return used[0]._replace(uav=uav), (used[0].source,)
    sw = swv = s_lat = s_dlon = s_alt = s_vel = s_ve = s_vn = s_vs = s_vsw = 0.0
    lon0 = None
    moved_alt = []
    for r in used:
        dt = t_fused - r.t
        moving = r.speed_mps is not None and r.track_deg is not None
        ve = r.speed_mps * math.sin(math.radians(r.track_deg)) if moving else 0.0  # type: ignore[operator, arg-type]
        vn = r.speed_mps * math.cos(math.radians(r.track_deg)) if moving else 0.0  # type: ignore[operator, arg-type]
        coslat = max(math.cos(math.radians(r.lat)), 1e-6)
        lat = r.lat + vn * dt / M_PER_DEG
        lon = r.lon + ve * dt / (M_PER_DEG * coslat)
        alt = r.alt_m + (r.vspeed_mps or 0.0) * dt
        moved_alt.append(alt)
        grow = 0.5 * MANOEUVRE_MPS2 * dt * dt
        acc_h = max(ACC_H_M if r.acc_h_m is None else r.acc_h_m, MIN_ACC_M)
        acc_v = max(ACC_V_M if r.acc_v_m is None else r.acc_v_m, MIN_ACC_M)
        w, wv = 1 / (acc_h / 2 + grow) ** 2, 1 / (acc_v / 2 + grow) ** 2
        lon0 = lon if lon0 is None else lon0
        sw, swv = sw + w, swv + wv
        s_lat += w * lat
        s_dlon += w * ((lon - lon0 + 180.0) % 360.0 - 180.0)
        s_alt += wv * alt
        if moving:
            s_vel, s_ve, s_vn = s_vel + w, s_ve + w * ve, s_vn + w * vn
        if r.vspeed_mps is not None:
            s_vsw, s_vs = s_vsw + wv, s_vs + wv * r.vspeed_mps
    assert lon0 is not None
    alt_f = s_alt / swv
    agl = next((r.agl_m + alt_f - a for r, a in zip(used, moved_alt, strict=True)
                if r.agl_m is not None), None)
    status = used[0].status
    for r in used:
        if STATUS_RANK.get(r.status, 0) > STATUS_RANK.get(status, 0):
            status = r.status
    speed = track = None
    if s_vel > 0:
        speed = math.hypot(s_ve / s_vel, s_vn / s_vel)
        track = math.degrees(math.atan2(s_ve / s_vel, s_vn / s_vel)) % 360.0
    state = Observation(
        uav, t_fused, s_lat / sw, (lon0 + s_dlon / sw + 180.0) % 360.0 - 180.0, alt_f, speed,
        track, s_vs / s_vsw if s_vsw > 0 else None, agl, status, 2 / math.sqrt(sw),
        2 / math.sqrt(swv), used[0].source, used[0].received_at,
    )
    return state, tuple(r.source for r in used)


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_fused_as_recomputed(picture: FusedPicture, newest: dict[str, dict[str, Observation]]
                               ) -> None:
    assert sorted(picture.aircraft) == sorted(newest)
    for uav, by_source in newest.items():
        a = picture.aircraft[uav]
        state, used = expected_state(uav, list(by_source.values()))
        assert a.state is not None and a.used == used, uav
        assert all(same(x, y) for x, y in zip(a.state, state, strict=True)), (a.state, state)
        assert (picture.lat[a.slot], picture.lon[a.slot], picture.heard_t[a.slot]) == (
            a.state.lat, a.state.lon, a.state.t)
    everyone = list(picture.aircraft.values())
    assert picture.states_of(everyone) == [a.state for a in everyone]  # in bulk, the same


@PROPERTY
@given(histories)
def test_incremental_refresh_matches_a_full_recompute(history: list[tuple[list[Observation],
                                                                          bool]]) -> None:
    picture = FusedPicture(Identities(REGISTRY), window_s=WINDOW_S, capacity=2)
    newest: dict[str, dict[str, Observation]] = {}  # canonical -> source -> newest (first of t)
    versions: dict[str, int] = {}
    for batch, refresh in history:
        picture.add(batch)
        for row in batch:
            mine = newest.setdefault(CANONICAL[row.uav], {})
            if row.source not in mine or row.t > mine[row.source].t:
                mine[row.source] = row
        if refresh:
            changed = set(picture.ids[picture.refresh()].tolist())
            assert_fused_as_recomputed(picture, newest)
            now = {uav: int(picture.version[a.slot]) for uav, a in picture.aircraft.items()}
            assert {uav for uav, v in now.items() if v != versions.get(uav)} == changed
            versions = now
    picture.refresh()
    assert_fused_as_recomputed(picture, newest)
    assert len(set(picture.version[a.slot] for a in picture.aircraft.values())) == len(newest)


@PROPERTY
@given(histories)
def test_cross_check_finds_what_a_direct_search_finds(history: list[tuple[list[Observation],
                                                                         bool]]) -> None:
    picture = FusedPicture(Identities(REGISTRY), window_s=WINDOW_S)
    check = CrossCheck(picture, floor_m=100.0, k=2.0, default_acc_h_m=ACC_H_M)
    for batch, _ in history:
        checked = picture.add(batch)
        pairs = check.pairs(checked)
        expected: dict[tuple[str, int, int], tuple[Observation, Observation]] = {}
        for row in batch:
            a: Aircraft = picture.aircraft[CANONICAL[row.uav]]
            for source, kept in picture.by_source(a).items():
                if source_name(source) == source_name(row.source):
                    continue
                other = min(kept, key=lambda r: abs(r.t - row.t))  # the earlier on a tie
                if abs(other.t - row.t) < MAX_DT_S:
                    expected.setdefault(pair_key(a.uav, row, other), (row, other))
        got = {pair_key(uav, x, y) for uav, x, y in pairs}
        assert len(got) == len(pairs) and got == expected.keys()
        evaluated, present, at = check.cross_check(pairs)
        worst: dict[str, float] = {}
        want_t: dict[str, float] = {}
        want_at: dict[str, list[float]] = {}
        for uav, x, y in pairs:
            t = max(x.t, y.t)
            want_t[uav] = max(want_t.get(uav, -math.inf), t)
            want_at.setdefault(uav, []).append(t)
            (lat1, lon1), (lat2, lon2) = (np.array(_moved(r, t)) for r in (x, y))
            dist = float(distance_m(lat1, lon1, lat2, lon2))
            acc = [ACC_H_M if r.acc_h_m is None else r.acc_h_m for r in (x, y)]
            threshold = max(100.0, 2.0 * math.hypot(*acc))
            if dist > threshold * (1 + 1e-9):
                worst[uav] = max(worst.get(uav, 0.0), dist / threshold)
            elif dist >= threshold * (1 - 1e-9):
                worst.setdefault(uav, math.nan)  # on the edge: either is right
        assert evaluated == want_t
        assert at == ({u: sorted(ts) for u, ts in want_at.items()} if len(want_t) < len(pairs)
                      else None)
        found = {c.uav for c in present}
        assert {u for u, r in worst.items() if not math.isnan(r)} <= found <= set(worst)


def pair_key(uav: str, x: Observation, y: Observation) -> tuple[str, int, int]:
    """A pair of reports, either way round."""
    first, second = sorted((x, y), key=lambda r: r.source)
    return uav, id(first), id(second)


def _moved(r: Observation, t: float) -> tuple[float, float]:
    if r.speed_mps is None or r.track_deg is None:
        return r.lat, r.lon
    dt = t - r.t
    ve = r.speed_mps * math.sin(math.radians(r.track_deg))
    vn = r.speed_mps * math.cos(math.radians(r.track_deg))
    coslat = max(math.cos(math.radians(r.lat)), 1e-6)
    return r.lat + vn * dt / M_PER_DEG, r.lon + ve * dt / (M_PER_DEG * coslat)


@settings(database=None, deadline=None, max_examples=200)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0, 5.0, 11.0, 30.0]), min_size=1,
                         max_size=4), min_size=1, max_size=12))
def test_reports_to_blend_are_each_aircraft_newest_first_within_the_window(
    times: list[list[float]],
) -> None:
    """`_used`, with its shortcut for two sources each, against the plain definition: per
    aircraft, its reports within window_s of its newest, newest first, ties in their order."""
    picture = FusedPicture(Identities(REGISTRY), window_s=10.0)
    for groups in (times, [g[:2] + [g[0]] * (2 - len(g[:2])) for g in times]):  # as given; twos
        t = np.array([x for g in groups for x in g])
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        used, used_counts = picture._used(t, counts)
        expected, start = [], 0
        for g in groups:
            ranked = sorted(range(len(g)), key=lambda k: -g[k])  # stable: ties keep order
            expected.append([start + k for k in ranked if max(g) - g[k] <= 10.0])
            start += len(g)
        assert used.tolist() == [k for e in expected for k in e]
        assert used_counts.tolist() == [len(e) for e in expected]
