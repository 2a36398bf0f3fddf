"""Section 1 rules, each at its limit and one past it; a bad item never fails its batch."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.validate import ItemError, Validator

NOW = 1_764_000_000.0
V = Validator(max_age_s=86400.0, max_future_s=5.0)


def obs(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"uav": "CQ-0007", "t": NOW - 1.0, "lat": 29.7, "lon": 106.6,
                            "alt_m": 400.0}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not ...}


def reason(item: Any) -> str:
    with pytest.raises(ItemError) as info:
        V.observation(item, NOW, "gw/gateway/native")
    return str(info.value)


def test_map_form_full() -> None:
    o = V.observation(obs(agl_m=80.0, speed_mps=12.5, track_deg=359.9, vspeed_mps=-1.0,
                          status="airborne", acc_h_m=3.0, acc_v_m=4.0), NOW, "gw/gateway/native")
    assert (o.uav, o.t, o.lat, o.lon, o.alt_m) == ("CQ-0007", NOW - 1.0, 29.7, 106.6, 400.0)
    assert (o.agl_m, o.speed_mps, o.track_deg, o.vspeed_mps) == (80.0, 12.5, 359.9, -1.0)
    assert (o.status, o.acc_h_m, o.acc_v_m) == ("airborne", 3.0, 4.0)
    assert o.source == "gw/gateway/native" and o.received_at == NOW


def test_array_form_positional_with_trailing_optional() -> None:
    o = V.observation(["U1", NOW, 29.7, 106.6, 100, 5.0, 90.0], NOW, "s/x/native")
    assert (o.uav, o.alt_m, o.speed_mps, o.track_deg, o.vspeed_mps, o.agl_m) == (
        "U1", 100.0, 5.0, 90.0, None, None)
    full = V.observation(["U1", NOW, 29.7, 106.6, 100, 5.0, 90.0, 1.0, 50.0], NOW, "s/x/native")
    assert full.agl_m == 50.0
    assert "array form needs 5 to 9" in reason(["U1", NOW, 29.7, 106.6])
    assert "array form needs 5 to 9" in reason(["U1", NOW, 29.7, 106.6, 1, 1, 1, 1, 1, 1])


@pytest.mark.parametrize(
    ("key", "ok", "bad"),
    [
        ("lat", [90.0, -90.0], [90.000001, -90.000001]),
        ("lon", [180.0, -180.0], [180.000001, -180.000001]),
        ("alt_m", [-500.0, 20000.0], [-500.01, 20000.01]),
        ("speed_mps", [0.0, 300.0], [-0.01, 300.01]),
        ("track_deg", [0.0, 359.999], [360.0, -0.1]),
        ("agl_m", [-500.0, 20000.0], [20000.5]),
        ("acc_h_m", [0.0], [-1.0]),
    ],
)
def test_ranges_at_the_limit_and_one_past(key: str, ok: list[float], bad: list[float]) -> None:
    for value in ok:
        assert getattr(V.observation(obs(**{key: value}), NOW, "s"), key) == value
    for value in bad:
        assert reason(obs(**{key: value})).startswith(f"{key}:")


def test_time_window() -> None:
    assert V.observation(obs(t=NOW - 86400.0), NOW, "s").t == NOW - 86400.0
    assert "older than max_age_s" in reason(obs(t=NOW - 86400.001))
    assert V.observation(obs(t=NOW + 5.0), NOW, "s").t == NOW + 5.0
    assert "in the future" in reason(obs(t=NOW + 5.001))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(bad: float) -> None:
    for key in ("t", "lat", "lon", "alt_m", "speed_mps", "vspeed_mps"):
        assert reason(obs(**{key: bad})) == f"{key}: not a finite number"


def test_missing_and_mistyped_required_keys() -> None:
    for key in ("uav", "t", "lat", "lon", "alt_m"):
        assert reason(obs(**{key: ...})) == f"{key}: missing"
    assert reason(obs(lat="29.7")) == "lat: expected a number, got str"
    assert reason(obs(t=True)) == "t: expected a number, got bool"
    assert reason("not an observation") == "expected a map or an array, got str"


def test_uav_identifier_rule() -> None:
    assert V.observation(obs(uav="a" * 64), NOW, "s").uav == "a" * 64
    assert V.observation(obs(uav="SN.1:x_y-z"), NOW, "s").uav == "SN.1:x_y-z"
    for bad in ["a" * 65, "", "has space", "中文", "x/y", 7]:
        assert reason(obs(uav=bad)).startswith("uav:")


def test_status_values() -> None:
    for status in ("ground", "airborne", "emergency", "lost_link"):
        assert V.observation(obs(status=status), NOW, "s").status == status
    assert reason(obs(status="flying")).startswith("status:")


def test_integers_are_accepted_as_numbers() -> None:
    o = V.observation(obs(lat=29, lon=106, alt_m=400, t=int(NOW)), NOW, "s")
    assert (o.lat, o.lon, o.t) == (29.0, 106.0, float(int(NOW)))
    assert isinstance(o.lat, float)


def test_batch_rejects_per_item_and_keeps_the_rest() -> None:
    items = [obs(), obs(lat=91.0), ["U2", NOW, 1.0, 2.0, 3.0], {"uav": "x"}, obs(uav="U3")]
    good, indexes, rejected = V.batch(items, NOW, "s")
    assert [g.uav for g in good] == ["CQ-0007", "U2", "U3"]
    assert indexes == [0, 2, 4]
    assert rejected == [(1, "lat: outside [-90, 90]"), (3, "t: missing")]


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-600, 21000), st.floats(NOW - 90000, NOW + 10),
)


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(st.one_of(
    st.lists(_values, min_size=4, max_size=10),
    st.tuples(st.sampled_from(["U1", "bad uav", "x" * 65]), st.floats(NOW - 90000, NOW + 10),
              st.floats(-91, 91), st.floats(-181, 181), st.floats(-600, 21000),
              st.floats(-1, 301), st.floats(-1, 361), st.floats(-50, 50),
              st.floats(-600, 21000)).map(list),
), max_size=20))
def test_batch_fast_path_agrees_with_the_rules(items: list[list[Any]]) -> None:
    """batch() accepts array items on a fast path: it must agree with observation() exactly."""
    assert_batch_agrees_with_observation(items)


_KEYS = ("uav", "t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps", "agl_m",
         "status", "acc_h_m", "acc_v_m", "format")


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(st.one_of(
    st.dictionaries(st.sampled_from(_KEYS), st.one_of(_values, st.sampled_from(
        ["airborne", "ground", "emergency", "flying", "U1"])), max_size=13),
    st.fixed_dictionaries(
        {"uav": st.sampled_from(["U1", "bad uav", "x" * 65]),
         "t": st.floats(NOW - 90000, NOW + 10), "lat": st.floats(-91, 91),
         "lon": st.floats(-181, 181), "alt_m": st.floats(-600, 21000)},
        optional={"speed_mps": st.floats(-1, 301), "track_deg": st.floats(-1, 361),
                  "vspeed_mps": st.floats(-50, 50), "agl_m": st.floats(-600, 21000),
                  "status": st.sampled_from(["airborne", "lost_link", "nope"]),
                  "acc_h_m": st.one_of(st.floats(-1, 100), st.just(math.inf)),
                  "acc_v_m": st.floats(-1, 100), "format": st.just("f3411")}),
), max_size=20))
def test_batch_fast_map_path_agrees_with_the_rules(items: list[dict[str, Any]]) -> None:
    """batch() accepts map items on a fast path too: it must agree with observation() exactly."""
    assert_batch_agrees_with_observation(items)


def assert_batch_agrees_with_observation(items: list[Any]) -> None:
    good, indexes, rejected = V.batch(items, NOW, "s")
    expected_good, expected_rejected = [], []
    for index, item in enumerate(items):
        try:
            expected_good.append((index, V.observation(item, NOW, "s")))
        except ItemError as exc:
            expected_rejected.append((index, str(exc)))
    assert list(zip(indexes, good, strict=True)) == expected_good
    assert rejected == expected_rejected
