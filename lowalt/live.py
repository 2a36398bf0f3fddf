"""The live picture: the newest observation of every UAV by `t`, indexed on a lon/lat grid.

Late satellite data never moves a UAV backwards: an observation replaces the live one only when
its `t` is newer. The grid (cells of `cell_deg` degrees) answers bbox queries; an update moves a
UAV between cells only when it crosses a cell edge, so it costs two dict operations, which keeps
up with ingest where an R-tree's delete + insert per report would not. A UAV points at its
cell's member set (which knows its cell), so the grid holds no object per UAV.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lowalt.models import Observation

Cell = tuple[int, int]


class _Members(set[str]):
    """The UAVs in one grid cell; shared by each of them as its `_cell_of` entry."""

    __slots__ = ("cell",)

    def __init__(self, cell: Cell) -> None:
        super().__init__()
        self.cell = cell


class LiveState:
    def __init__(self, cell_deg: float = 0.01) -> None:
        self.cell_deg = cell_deg
        self.latest: dict[str, Observation] = {}
        # uav -> (lat, lon) of its operator, from F3411 System messages (shown in /v1/uavs).
        self.operator_positions: dict[str, tuple[float, float]] = {}
        self._cell_of: dict[str, _Members] = {}
        self._cells: dict[Cell, _Members] = {}

    def __len__(self) -> int:
        return len(self.latest)

    def _cell(self, lon: float, lat: float) -> Cell:
        return (math.floor(lon / self.cell_deg), math.floor(lat / self.cell_deg))

    def update(self, rows: Iterable[Observation]) -> list[Observation]:
        """Apply committed rows; return those that became their UAV's live position."""
        advanced: dict[str, Observation] = {}
        latest, cell_of, cells = self.latest, self._cell_of, self._cells
        for row in rows:
            current = latest.get(row.uav)
            if current is not None and current.t >= row.t:
                continue
            latest[row.uav] = row
            advanced[row.uav] = row
            cell = self._cell(row.lon, row.lat)
            old = cell_of.get(row.uav)
            if old is None or old.cell != cell:
                if old is not None:
                    old.discard(row.uav)
                    if not old:
                        del cells[old.cell]
                members = cells.get(cell)
                if members is None:
                    members = cells[cell] = _Members(cell)
                members.add(row.uav)
                cell_of[row.uav] = members
        return list(advanced.values())

    def remove(self, uav: str) -> None:
        self.latest.pop(uav, None)
        self.operator_positions.pop(uav, None)
        members = self._cell_of.pop(uav, None)
        if members is not None:
            members.discard(uav)
            if not members:
                del self._cells[members.cell]

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
