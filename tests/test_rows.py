"""`Rows`: a stage call's rows whose columns are built once and shared, read-only."""

from __future__ import annotations

import numpy as np
import pytest

from lowalt.live import LiveState
from lowalt.models import Observation, Rows, floats_of, values_of


def _row(uav: str, t: float, agl_m: float | None = None) -> Observation:
    return Observation(uav, t, 29.5 + t / 1000, 106.5, 100.0, None, None, None, agl_m, None,
                       None, None, "gw/gateway/native", t)


def test_a_column_is_built_once_equals_the_rows_and_cannot_be_changed() -> None:
    plain = [_row(f"U{k}", float(k), agl_m=None if k % 2 else 5.0) for k in range(50)]
    rows = Rows(plain)
    lat = floats_of(rows, "lat")
    assert floats_of(rows, "lat") is lat  # shared by every reader
    assert np.array_equal(lat, floats_of(plain, "lat"))
    agl = floats_of(rows, "agl_m")
    assert np.isnan(agl[1::2]).all() and (agl[::2] == 5.0).all()  # None: NaN
    with pytest.raises(ValueError):
        lat[0] = 0.0  # one stage cannot change what the next one reads
    assert values_of(rows, "uav") is values_of(rows, "uav")
    assert values_of(rows, "uav") == values_of(plain, "uav") == tuple(r.uav for r in plain)
    assert floats_of(plain, "lat") is not floats_of(plain, "lat")  # a plain list: built anew


def test_the_live_picture_hands_its_advanced_rows_their_t() -> None:
    live = LiveState(vector_min_rows=1)
    rows = Rows([_row("A", 2.0), _row("B", 1.0), _row("A", 3.0), _row("A", 1.0)])
    advanced = live.update(rows)
    assert type(advanced) is Rows
    assert [(r.uav, r.t) for r in advanced] == [("B", 1.0), ("A", 3.0)]
    assert list(floats_of(advanced, "t")) == [1.0, 3.0]
    assert not floats_of(advanced, "t").flags.writeable


def test_joined_rows_keep_what_every_part_built_and_equal_rows_read_afresh() -> None:
    parts = [Rows([_row(f"U{k}", float(k), agl_m=None if k % 3 else 2.0) for k in range(a, b)])
             for a, b in ((0, 7), (7, 8), (8, 30))]
    for part in parts:
        floats_of(part, "lat")
        values_of(part, "uav")  # the fields transposed
    floats_of(parts[0], "agl_m")  # in one part only: not carried
    floats_of(parts[1], "agl_m")
    joined = Rows.joined(parts)
    plain = [row for part in parts for row in part]
    assert list(joined) == plain
    assert set(joined._columns) == {"lat"} and not joined._columns["lat"].flags.writeable
    assert joined._fields is not None  # carried, not transposed again
    for name in ("lat", "agl_m", "t"):
        assert np.array_equal(floats_of(joined, name), floats_of(plain, name), equal_nan=True)
    for name in ("uav", "source", "agl_m", "received_at"):
        assert values_of(joined, name) == values_of(plain, name)
    # A part without its fields transposed, or a plain list: the rows, nothing carried.
    fresh = Rows(parts[1])
    fresh.given("lat", floats_of(list(parts[1]), "lat"))  # a column, no fields
    bare = Rows.joined([parts[0], fresh])
    assert bare._fields is None and set(bare._columns) == {"lat"}
    mixed = Rows.joined([parts[0], list(parts[1])])
    assert list(mixed) == plain[:8] and not mixed._columns and mixed._fields is None
    assert list(Rows.joined([])) == []
