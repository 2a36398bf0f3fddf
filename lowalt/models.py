"""Core records shared by every layer: observations, principals and commit results."""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt


class Observation(NamedTuple):
    """One validated report of one UAV at one instant (API.md section 1), as stored."""

    uav: str
    t: float  # measurement time, Unix s
    lat: float  # deg WGS84
    lon: float  # deg WGS84
    alt_m: float  # above the WGS84 ellipsoid
    speed_mps: float | None
    track_deg: float | None
    vspeed_mps: float | None
    agl_m: float | None
    status: str | None
    acc_h_m: float | None
    acc_v_m: float | None
    source: str  # "<gateway or token name>/<transport>/<format>"
    received_at: float  # Unix s, when the server decoded it

    @property
    def crewed(self) -> bool:
        """Heard as ADS-B (SBS format): a crewed aircraft, not a UAV."""
        return crewed_source(self.source)


def crewed_source(source: str) -> bool:
    """Whether observations from this source are crewed aircraft (`Observation.crewed`)."""
    return source.endswith("/sbs")


OBSERVATION_COLUMNS: tuple[str, ...] = Observation._fields
# An observation's fields by name: their positions, and C-level getters over rows (rows are
# tuples), so columns are read without per-row Python.
OBSERVATION_INDEX = {name: k for k, name in enumerate(OBSERVATION_COLUMNS)}
OBSERVATION_FIELD = {name: itemgetter(k) for k, name in enumerate(OBSERVATION_COLUMNS)}


class Rows(list[Observation]):
    """The rows of one check-stage call: a list whose columns (`floats_of`, `values_of`) are
    built once and shared by every stage that reads them, read-only. Reading fields from the
    rows' objects costs a pointer chase per row (the dearest part of a stage's column work on
    the server's heap), so the rows are transposed once, at the first column asked for, and
    each float column is built once. Not to be changed once a column has been read."""

    __slots__ = ("_columns", "_fields")

    def __init__(self, rows: Iterable[Observation] = ()) -> None:
        super().__init__(rows)
        self._columns: dict[str, npt.NDArray[np.float64]] = {}
        self._fields: list[tuple[Any, ...]] | None = None

    @classmethod
    def joined(cls, parts: Sequence[Sequence[Observation]]) -> Rows:
        """The rows of parts, in order, with what every part had built already: the fields,
        and the float columns that all of them hold (joined, not read from the rows again)."""
        rows = cls(itertools.chain.from_iterable(parts))
        if not parts or not all(type(part) is Rows for part in parts):
            return rows
        shared = cast(Sequence[Rows], parts)
        fields = [part._fields for part in shared]
        if all(f is not None for f in fields):
            built = cast(list[list[tuple[Any, ...]]], fields)
            rows._fields = [tuple(itertools.chain.from_iterable(column))
                            for column in zip(*built, strict=True)]
        names = set(shared[0]._columns).intersection(*(part._columns for part in shared[1:]))
        for name in names:
            rows.given(name, np.concatenate([part._columns[name] for part in shared]))
        return rows

    def part(self, start: int, stop: int) -> Rows:
        """rows[start:stop], with the fields and float columns built so far (sliced)."""
        rows = Rows(self[start:stop])
        if self._fields is not None:
            rows._fields = [column[start:stop] for column in self._fields]
        for name, column in self._columns.items():
            rows.given(name, column[start:stop])
        return rows

    def given(self, name: str, column: npt.NDArray[np.float64]) -> None:
        """Hand over a float column already built (by whoever made these rows)."""
        column.flags.writeable = False
        self._columns[name] = column

    def field(self, name: str) -> tuple[Any, ...]:
        """One field of every row, in row order."""
        if self._fields is None:
            self._fields = (list(zip(*self, strict=True)) if self
                            else [()] * len(OBSERVATION_COLUMNS))
        return self._fields[OBSERVATION_INDEX[name]]


def floats_of(rows: Sequence[Observation], name: str) -> npt.NDArray[np.float64]:
    """One numeric field of rows as a column (None: NaN); shared, read-only, for `Rows`."""
    if type(rows) is Rows:
        column = rows._columns.get(name)
        if column is None:
            column = float_column(rows.field(name))
            rows.given(name, column)
        return column
    return float_column(map(OBSERVATION_FIELD[name], rows))


def values_of(rows: Sequence[Observation], name: str) -> tuple[Any, ...]:
    """One field of rows as a tuple (built once for `Rows`)."""
    if type(rows) is Rows:
        return rows.field(name)
    return tuple(map(OBSERVATION_FIELD[name], rows))


def float_column(values: Iterable[float | None]) -> npt.NDArray[np.float64]:
    """values as a float64 array, None as NaN. `struct` packs Python numbers straight into the
    array at about half the cost per item of np.fromiter; it refuses None, and then fromiter
    (which maps None to NaN) does it."""
    items = values if isinstance(values, tuple) else tuple(values)
    column = np.empty(len(items))
    try:
        struct.pack_into(f"{len(items)}d", column.data, 0, *items)
    except struct.error:
        return np.fromiter(items, np.float64, len(items))
    return column


def int_column(values: Iterable[int]) -> npt.NDArray[np.int64]:
    """values as an int64 array (as `float_column`)."""
    items = values if isinstance(values, tuple) else tuple(values)
    column = np.empty(len(items), np.int64)
    struct.pack_into(f"{len(items)}q", column.data, 0, *items)
    return column

UAV_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")  # a UAV id or alias (API.md section 1)
STATUSES = frozenset({"ground", "airborne", "emergency", "lost_link"})
ROLES = ("admin", "regulator", "operator", "gateway")


@dataclass(frozen=True)
class Principal:
    """Who is calling: resolved once from a bearer token, then passed down."""

    token_id: int
    name: str
    role: str
    operator: str | None = None

    @property
    def reads_all(self) -> bool:
        return self.role in ("admin", "regulator")


@dataclass(frozen=True)
class BatchResult:
    """What happened to one submitted batch once it is committed."""

    accepted: int
    duplicates: int
    inserted: tuple[Observation, ...]
