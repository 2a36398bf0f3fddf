"""The live picture: the newest observation of every UAV by `t`, indexed on a lon/lat grid.

Late satellite data never moves a UAV backwards: an observation replaces the live one only when
its `t` is newer. The grid (cells of `cell_deg` degrees, each holding its UAVs: a list while
they are few, a set past `_CELL_LIST_MAX`) answers bbox queries; an update moves a UAV between
cells only when it crosses a cell edge, so it costs a removal and an append, which keeps up with
ingest where an R-tree's delete + insert per report would not. A UAV's cell is that of its live
observation, so nothing per UAV is kept beyond it.

A batch of `vector_min_rows` or more is applied in columns: the UAVs' live observations by one
C-level lookup each, the rows that advance and the cells they leave and enter by numpy, and
Python work only for the UAVs that cross a cell edge (at 15 m/s a UAV crosses a 0.01 degree
cell about once a minute).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt

from lowalt.models import OBSERVATION_FIELD, Observation, Rows, float_column, floats_of, values_of

Cell = tuple[int, int]
F64 = npt.NDArray[np.float64]
_T = OBSERVATION_FIELD["t"]
_NAN = math.nan
_CELL_LIST_MAX = 64  # a cell's UAVs in a list up to this many, then in a set
# The live observation of a UAV not seen yet: older than any, in no cell (NaN position).
_NEVER = Observation("", -math.inf, _NAN, _NAN, _NAN, None, None, None, None, None, None, None,
                     "", _NAN)


class LiveState:
    def __init__(self, cell_deg: float = 0.01, vector_min_rows: int = 32) -> None:
        self.cell_deg = cell_deg
        self.vector_min_rows = vector_min_rows
        self.latest: dict[str, Observation] = {}
        # uav -> (lat, lon) of its operator, from F3411 System messages (shown in /v1/uavs).
        self.operator_positions: dict[str, tuple[float, float]] = {}
        # Cell -> its UAVs: a list while it holds a few (8 B a UAV, where a set takes 40-70),
        # a set past _CELL_LIST_MAX (a removal then costs no scan).
        self._cells: dict[Cell, list[str] | set[str]] = {}

    def __len__(self) -> int:
        return len(self.latest)

    def _cell(self, lon: float, lat: float) -> Cell:
        return (math.floor(lon / self.cell_deg), math.floor(lat / self.cell_deg))

    def update(self, rows: Iterable[Observation]) -> list[Observation]:
        """Apply committed rows; return those that became their UAV's live position (each
        UAV's newest row by t, the first of equal t, when newer than its live one), in the
        order of those rows in the batch."""
        if not isinstance(rows, list | tuple):
            rows = list(rows)
        if len(rows) >= self.vector_min_rows:
            return self._update_columns(rows)
        advanced: dict[str, Observation] = {}
        latest = self.latest
        for row in rows:
            current = latest.get(row.uav)
            if current is not None and current.t >= row.t:
                continue
            latest[row.uav] = row
            advanced.pop(row.uav, None)  # its place: its newest row's
            advanced[row.uav] = row
            cell = self._cell(row.lon, row.lat)
            old = None if current is None else self._cell(current.lon, current.lat)
            if old != cell:
                self._move(row.uav, old, cell)
        return list(advanced.values())

    def all_newer(self, rows: Sequence[Observation]) -> bool:
        """Whether every row is newer than its UAV's live observation. Such a row is not
        stored yet, as long as every stored row went through `update` or was loaded at start
        (those older than the acceptance window excepted, which validation refuses)."""
        if len(rows) < self.vector_min_rows:  # a few rows (HTTP): numpy would cost more
            get = self.latest.get
            return all(get(row.uav, _NEVER).t < row.t for row in rows)
        current = map(self.latest.get, values_of(rows, "uav"), repeat(_NEVER))
        return bool((floats_of(rows, "t") > float_column(map(_T, current))).all())

    def _update_columns(self, rows: Sequence[Observation]) -> list[Observation]:
        latest = self.latest
        uavs = values_of(rows, "uav")
        current = list(map(latest.get, uavs, repeat(_NEVER)))
        t = floats_of(rows, "t")
        newer = np.flatnonzero(t > float_column(map(_T, current)))
        if not newer.size:
            return []
        at = newer.tolist()
        chosen_uavs = list(map(uavs.__getitem__, at))
        if len(set(chosen_uavs)) < len(chosen_uavs):  # a UAV advanced by several rows
            order = newer[np.lexsort((-newer, t[newer]))]  # by t, of equal t the first last
            newest = dict(zip(map(uavs.__getitem__, order.tolist()), order.tolist(),
                              strict=True))
            at = sorted(newest.values())
            chosen_uavs = list(map(uavs.__getitem__, at))
        advanced = Rows(map(rows.__getitem__, at))
        advanced.given("t", t[at])
        before = list(map(current.__getitem__, at))
        latest.update(zip(chosen_uavs, advanced, strict=True))
        new_x, new_y = self._cells_of(advanced)
        old_x, old_y = self._cells_of(before)  # NaN for a UAV not seen before
        moved = np.flatnonzero((new_x != old_x) | (new_y != old_y))
        if moved.size:
            seen = np.isfinite(old_x[moved]).tolist()
            ox, oy = old_x[moved].tolist(), old_y[moved].tolist()
            for j, k in enumerate(moved.tolist()):
                old = (int(ox[j]), int(oy[j])) if seen[j] else None
                self._move(chosen_uavs[k], old, (int(new_x[k]), int(new_y[k])))
        return advanced

    def _cells_of(self, rows: Sequence[Observation]) -> tuple[F64, F64]:
        """The rows' cells as two float columns of whole numbers (NaN: no position)."""
        size = self.cell_deg
        return np.floor(floats_of(rows, "lon") / size), np.floor(floats_of(rows, "lat") / size)

    def _move(self, uav: str, old: Cell | None, cell: Cell) -> None:
        """Move uav from cell old (None: in none) to cell."""
        if old is not None:
            self._leave(old, uav)
        held = self._cells.get(cell)
        if held is None:
            self._cells[cell] = [uav]
        elif isinstance(held, list):
            held.append(uav)
            if len(held) > _CELL_LIST_MAX:
                self._cells[cell] = set(held)
        else:
            held.add(uav)

    def _leave(self, cell: Cell, uav: str) -> None:
        """Take uav out of cell (where it is), and the cell out of the grid once empty."""
        members = self._cells[cell]
        members.remove(uav)
        if not members:
            del self._cells[cell]

    def remove(self, uav: str) -> None:
        row = self.latest.pop(uav, None)
        self.operator_positions.pop(uav, None)
        if row is not None:
            self._leave(self._cell(row.lon, row.lat), uav)

    def in_bbox(
        self, min_lon: float, min_lat: float, max_lon: float, max_lat: float
    ) -> list[Observation]:
        """Live observations inside the box (edges included), ordered by uav."""
        x0, y0 = self._cell(min_lon, min_lat)
        x1, y1 = self._cell(max_lon, max_lat)
        if (x1 - x0 + 1) * (y1 - y0 + 1) <= len(self._cells):
            keys: Iterable[Cell] = (
                (x, y) for x in range(x0, x1 + 1) for y in range(y0, y1 + 1)
            )
        else:
            keys = [c for c in self._cells if x0 <= c[0] <= x1 and y0 <= c[1] <= y1]
        found: list[Observation] = []
        for key in keys:
            for uav in self._cells.get(key, ()):
                row = self.latest[uav]
                if min_lon <= row.lon <= max_lon and min_lat <= row.lat <= max_lat:
                    found.append(row)
        found.sort(key=lambda r: r.uav)
        return found
