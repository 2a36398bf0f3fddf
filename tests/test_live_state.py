"""The live picture's promises: newest by `t` per UAV, late data never moves a UAV back, and
a bbox query finds exactly the live positions inside the box, however UAVs moved between cells."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lowalt.live import LiveState
from lowalt.models import Observation

UAVS = [f"U{n}" for n in range(12)]


def row(uav: str, t: float, lat: float, lon: float) -> Observation:
    return Observation(uav, t, lat, lon, 100.0, None, None, None, None, None, None, None,
                       "gw/gateway/native", t)


# Coordinates near cell edges (cells of 0.01 deg) and on both sides of 0.
coordinate = st.integers(-300, 300).map(lambda k: k * 0.0025)
step = st.tuples(st.sampled_from(UAVS), st.integers(0, 40).map(float), coordinate, coordinate,
                 st.booleans())
box = st.tuples(coordinate, coordinate, coordinate, coordinate).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=60), boxes=st.lists(box, min_size=1, max_size=5))
def test_bbox_finds_exactly_the_newest_positions_inside(
        steps: list[tuple[str, float, float, float, bool]],
        boxes: list[tuple[float, float, float, float]]) -> None:
    live = LiveState(cell_deg=0.01)
    newest: dict[str, Observation] = {}  # the model: a plain dict, newest by t
    for uav, t, lat, lon, removed in steps:
        if removed:
            live.remove(uav)
            newest.pop(uav, None)
            continue
        obs = row(uav, t, lat, lon)
        advanced = live.update([obs])
        if uav not in newest or newest[uav].t < t:
            newest[uav] = obs
            assert advanced == [obs]
        else:
            assert advanced == []  # late or repeated: the UAV does not move back
    assert live.latest == newest
    assert_picture(live, newest, boxes)


def assert_picture(live: LiveState, newest: dict[str, Observation],
                   boxes: list[tuple[float, float, float, float]]) -> None:
    """Each box finds exactly the newest positions inside it; no cell is left behind empty,
    and every UAV is in exactly its own cell."""
    for min_lon, min_lat, max_lon, max_lat in boxes:
        expected = sorted(
            (o for o in newest.values()
             if min_lon <= o.lon <= max_lon and min_lat <= o.lat <= max_lat),
            key=lambda o: o.uav)
        assert live.in_bbox(min_lon, min_lat, max_lon, max_lat) == expected
    assert all(live._cells.values())
    assert sum(len(m) for m in live._cells.values()) == len(newest)
    for uav, obs in newest.items():
        assert uav in live._cells[live._cell(obs.lon, obs.lat)]


def test_a_batch_keeps_each_uavs_newest_and_returns_it_once() -> None:
    live = LiveState()
    a1, a2, b1 = row("A", 1.0, 29.5, 106.5), row("A", 2.0, 29.6, 106.6), row("B", 5.0, 29.5, 106.5)
    assert live.update([a2, a1, b1]) == [a2, b1]
    assert live.in_bbox(106.55, 29.55, 106.65, 29.65) == [a2]
    assert live.update([a1]) == []
    assert live.in_bbox(106.45, 29.45, 106.55, 29.55) == [b1]


batch_step = st.tuples(st.sampled_from(UAVS), st.integers(0, 12).map(float), coordinate,
                       coordinate)


@pytest.mark.parametrize("vector_min_rows", [1, 1_000_000], ids=["columns", "row by row"])
@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(batch_step, max_size=25), max_size=8),
       boxes=st.lists(box, min_size=1, max_size=3))
def test_batches_apply_as_their_rows_one_at_a_time(
        vector_min_rows: int, batches: list[list[tuple[str, float, float, float]]],
        boxes: list[tuple[float, float, float, float]]) -> None:
    """A batch (several rows of one UAV, equal t, late rows) leaves the picture each row would
    leave applied one at a time, and returns each UAV that moved once, at its newest row (the
    first of equal t), in the order of those rows; with the batch applied in columns or row by
    row."""
    live = LiveState(cell_deg=0.01, vector_min_rows=vector_min_rows)
    newest: dict[str, Observation] = {}
    for batch in batches:
        rows = [row(uav, t, lat, lon) for uav, t, lat, lon in batch]
        before = dict(newest)
        for obs in rows:  # the model: one row at a time, replaced only by a newer t
            if obs.uav not in newest or newest[obs.uav].t < obs.t:
                newest[obs.uav] = obs
        moved = {uav: obs for uav, obs in newest.items() if before.get(uav) is not obs}
        expected = sorted(moved.values(), key=lambda o: next(
            k for k, r in enumerate(rows) if r is o))
        assert live.all_newer(rows) == all(
            r.uav not in before or before[r.uav].t < r.t for r in rows)
        advanced = live.update(rows)
        assert [id(o) for o in advanced] == [id(o) for o in expected]
        assert live.latest == newest
        assert all(live.latest[uav] is obs for uav, obs in newest.items())
    assert_picture(live, newest, boxes)


@settings(max_examples=60, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, 149), st.integers(0, 2), st.booleans()),
                      min_size=100, max_size=600))
def test_crowded_cells_move_between_list_and_set_and_stay_exact(
        moves: list[tuple[int, int, bool]]) -> None:
    """150 UAVs among three cells: a cell holds a list while small and a set past
    `_CELL_LIST_MAX`, and either way each UAV is in exactly its own cell, once."""
    live = LiveState(cell_deg=0.01)
    newest: dict[str, Observation] = {}
    for k in range(150):  # all in cell 0 first: past the list's limit
        newest[f"C{k}"] = row(f"C{k}", 1.0, 0.005, 0.005)
        live.update([newest[f"C{k}"]])
    assert isinstance(live._cells[(0, 0)], set)
    for step, (k, cell, removed) in enumerate(moves, start=2):
        uav = f"C{k}"
        if removed:
            live.remove(uav)
            newest.pop(uav, None)
            continue
        newest[uav] = row(uav, float(step), 0.005, 0.005 + 0.01 * cell)
        live.update([newest[uav]])
    assert_picture(live, newest, [(-1.0, -1.0, 1.0, 1.0), (0.0, 0.0, 0.012, 0.012)])
