"""State-based conflict detection over the live picture: pure numpy, no I/O.

Every aircraft is extrapolated at constant velocity from its own report time `t` to the tick, in
a local tangent plane (east `x`, north `y`, up `z`, metres) centred on the mean position. A pair
is a `separation_loss` when, at the tick, horizontal distance < H and vertical distance < V; it is
`conflict_predicted` when the open time intervals in which each of those holds overlap inside
[0, lookahead_s]. H and V are the crewed minima when either aircraft is crewed.

Projection: equirectangular on the WGS84 ellipsoid (meridional and prime-vertical radii taken at
the mean latitude). The scale error of a short baseline at distance D from the centre is about
(D / 6371 km) * tan(lat0): 0.2 % at 20 km from the centre at lat 29.65 deg, i.e. 0.1 m on a 50 m
separation minimum. Meridians stay parallel to `y`, so `track_deg` needs no rotation.

Broad phase (`detect_conflicts`): each aircraft's look-ahead path is a segment; its box grown by
half a separation minimum must overlap the other's box for the pair to meet at any instant. Boxes
go into a uniform numpy grid (sort by cell key, all pairs within a cell, each overlapping pair kept
once, in the cell holding the low corner of the two boxes' intersection). Cells are sized from the
boxes actually present, so slow dense traffic gets small cells. The narrow phase (`_pair_kernel`)
is shared with the all-pairs reference `detect_conflicts_naive`, so both give identical floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from lowalt.errors import ConfigError
from lowalt.runs import within_runs

__all__ = [
    "ConflictArrays",
    "ConflictPair",
    "ConflictParams",
    "detect_conflict_arrays",
    "detect_conflicts",
    "detect_conflicts_naive",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

SEPARATION_LOSS = "separation_loss"
CONFLICT_PREDICTED = "conflict_predicted"

_WGS84_A_M = 6_378_137.0
_WGS84_E2 = 6.694_379_990_14e-3
_PAIR_BLOCK = 200_000  # pairs handled per block: bounds transient memory to about 50 MB
_NAIVE_BLOCK = 1_000_000  # the all-pairs reference's block (its speed is compared against)
_MAX_ENTRIES_PER_AIRCRAFT = 8  # grid (aircraft, cell) entries allowed on average before coarsening


@dataclass(frozen=True)
class ConflictParams:
    """Separation minima and look-ahead for one detection pass."""

    h_m: float = 50.0  # horizontal separation minimum UAV-UAV
    v_m: float = 15.0  # vertical separation minimum UAV-UAV
    crewed_h_m: float = 500.0  # when either aircraft is crewed
    crewed_v_m: float = 100.0
    lookahead_s: float = 30.0
    # Advisory only: the search radius is bounded by the fastest aircraft actually present, so a
    # report faster than this still gets an exact answer (it is flagged elsewhere as implausible).
    max_speed_mps: float = 100.0

    def __post_init__(self) -> None:
        for name in ("h_m", "v_m", "crewed_h_m", "crewed_v_m", "lookahead_s", "max_speed_mps"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"conflict {name} must be finite and >= 0, got {value!r}")


class ConflictPair(NamedTuple):
    """One pair in conflict; `i < j` index the input arrays, times are seconds from the tick."""

    i: int
    j: int
    kind: str  # SEPARATION_LOSS | CONFLICT_PREDICTED
    h_now_m: float
    v_now_m: float
    t_los_s: float  # 0 when lost now
    cpa_s: float  # closest horizontal approach, clipped to [0, lookahead_s]
    cpa_m: float
    cpa_v_m: float


@dataclass(frozen=True)
class _State:
    """Aircraft with a usable position, at the tick, in the local plane."""

    index: I64  # row in the caller's arrays
    x: F64
    y: F64
    z: F64
    vx: F64
    vy: F64
    vz: F64
    crewed: Bool


def _state_at_tick(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    alt_m: npt.ArrayLike,
    t: npt.ArrayLike,
    speed_mps: npt.ArrayLike,
    track_deg: npt.ArrayLike,
    vspeed_mps: npt.ArrayLike,
    crewed: npt.ArrayLike,
    tick_t: float,
) -> _State:
    """Project and extrapolate; rows without a finite position or time are left out."""
    lat_a = np.asarray(lat, dtype=np.float64).ravel()
    n = lat_a.size
    cols = {
        "lon": np.asarray(lon, dtype=np.float64).ravel(),
        "alt_m": np.asarray(alt_m, dtype=np.float64).ravel(),
        "t": np.asarray(t, dtype=np.float64).ravel(),
        "speed_mps": np.asarray(speed_mps, dtype=np.float64).ravel(),
        "track_deg": np.asarray(track_deg, dtype=np.float64).ravel(),
        "vspeed_mps": np.asarray(vspeed_mps, dtype=np.float64).ravel(),
    }
    crewed_a = np.asarray(crewed, dtype=np.bool_).ravel()
    for name, col in (*cols.items(), ("crewed", crewed_a)):
        if col.size != n:
            raise ValueError(f"{name} has {col.size} rows, lat has {n}")
    lon_a, alt_a, t_a = cols["lon"], cols["alt_m"], cols["t"]
    ok = np.isfinite(lat_a) & np.isfinite(lon_a) & np.isfinite(alt_a) & np.isfinite(t_a)
    index = np.flatnonzero(ok).astype(np.int64)
    lat_a, lon_a, alt_a, t_a = lat_a[index], lon_a[index], alt_a[index], t_a[index]
    speed = cols["speed_mps"][index]
    track = np.radians(cols["track_deg"][index])
    vspeed = cols["vspeed_mps"][index]

    lon0 = lat0 = 0.0
    if index.size:  # centre: mean position, continuous across the antimeridian
        lon0 = float(lon_a[0] + ((lon_a - lon_a[0] + 180.0) % 360.0 - 180.0).mean())
        lat0 = float(lat_a.mean())
    dlon = (lon_a - lon0 + 180.0) % 360.0 - 180.0
    sin0 = math.sin(math.radians(lat0))
    w = 1.0 - _WGS84_E2 * sin0 * sin0
    north_m_per_rad = _WGS84_A_M * (1.0 - _WGS84_E2) / w**1.5
    east_m_per_rad = _WGS84_A_M / math.sqrt(w) * math.cos(math.radians(lat0))

    horizontal_known = np.isfinite(speed) & np.isfinite(track)
    speed = np.where(horizontal_known, speed, 0.0)
    track = np.where(horizontal_known, track, 0.0)
    vx = speed * np.sin(track)
    vy = speed * np.cos(track)
    vz = np.where(np.isfinite(vspeed), vspeed, 0.0)
    dt = tick_t - t_a
    return _State(
        index=index,
        x=np.radians(dlon) * east_m_per_rad + vx * dt,
        y=np.radians(lat_a - lat0) * north_m_per_rad + vy * dt,
        z=alt_a + vz * dt,
        vx=vx,
        vy=vy,
        vz=vz,
        crewed=crewed_a[index],
    )


class _Hits(NamedTuple):
    """Conflicting pairs from one block, as parallel arrays (indices into the state)."""

    i: I64
    j: I64
    lost_now: Bool
    h_now_m: F64
    v_now_m: F64
    t_los_s: F64
    cpa_s: F64
    cpa_m: F64
    cpa_v_m: F64


def _pair_kernel(s: _State, i: I64, j: I64, params: ConflictParams) -> _Hits:
    """Exact test of pairs (i < j, state indices); returns the ones in conflict."""
    lookahead_s = params.lookahead_s
    crewed = s.crewed[i] | s.crewed[j]
    h_min = np.where(crewed, params.crewed_h_m, params.h_m)
    v_min = np.where(crewed, params.crewed_v_m, params.v_m)
    dx = s.x[j] - s.x[i]
    dy = s.y[j] - s.y[i]
    dz = s.z[j] - s.z[i]
    dvx = s.vx[j] - s.vx[i]
    dvy = s.vy[j] - s.vy[i]
    dvz = s.vz[j] - s.vz[i]
    with np.errstate(over="ignore", invalid="ignore"):  # only reachable with absurd magnitudes
        h_now = np.sqrt(dx * dx + dy * dy)
        v_now = np.abs(dz)
        lost_now = (h_now < h_min) & (v_now < v_min)

        # Horizontal: |d + dv*tau| < H  <=>  a*tau^2 + 2*b*tau + c < 0.
        a = dvx * dvx + dvy * dvy
        b = dx * dvx + dy * dvy
        c = h_now * h_now - h_min * h_min
        moving = a > 0.0
        disc = b * b - a * c
        h_any = np.where(moving, disc > 0.0, c < 0.0)
        root = np.sqrt(np.maximum(disc, 0.0))
        q = -(b + np.copysign(root, b))  # numerically stable pair of roots: q/a and c/q
        q = np.where(q == 0.0, 1.0, q)
        a_safe = np.where(moving, a, 1.0)
        r1 = q / a_safe
        r2 = c / q
        h_lo = np.where(moving, np.minimum(r1, r2), -np.inf)
        h_hi = np.where(moving, np.maximum(r1, r2), np.inf)

        # Vertical: |dz + dvz*tau| < V.
        climbing = dvz != 0.0
        dvz_safe = np.where(climbing, dvz, 1.0)
        s1 = (-v_min - dz) / dvz_safe
        s2 = (v_min - dz) / dvz_safe
        v_any = np.where(climbing, True, v_now < v_min)
        v_lo = np.where(climbing, np.minimum(s1, s2), -np.inf)
        v_hi = np.where(climbing, np.maximum(s1, s2), np.inf)

        start = np.maximum(np.maximum(h_lo, v_lo), 0.0)
        end = np.minimum(np.minimum(h_hi, v_hi), lookahead_s)
        hit = lost_now | (h_any & v_any & (start < end))

    k = np.flatnonzero(hit)
    dx, dy, dz, dvx, dvy, dvz = dx[k], dy[k], dz[k], dvx[k], dvy[k], dvz[k]
    a, b, moving = a[k], b[k], moving[k]
    with np.errstate(over="ignore", invalid="ignore"):
        cpa_s = np.where(moving, np.clip(-b / np.where(moving, a, 1.0), 0.0, lookahead_s), 0.0)
        cx = dx + dvx * cpa_s
        cy = dy + dvy * cpa_s
        cpa_m = np.sqrt(cx * cx + cy * cy)
        cpa_v = np.abs(dz + dvz * cpa_s)
    lost_k = lost_now[k]
    return _Hits(
        i=i[k],
        j=j[k],
        lost_now=lost_k,
        h_now_m=h_now[k],
        v_now_m=v_now[k],
        t_los_s=np.where(lost_k, 0.0, start[k]),
        cpa_s=cpa_s,
        cpa_m=cpa_m,
        cpa_v_m=cpa_v,
    )


class ConflictArrays(NamedTuple):
    """Pairs in conflict as parallel arrays, sorted by (i, j); `i < j` index the input arrays,
    times are seconds from the tick (the fields of `ConflictPair`, `lost_now` for its kind)."""

    i: I64
    j: I64
    lost_now: Bool  # SEPARATION_LOSS, else CONFLICT_PREDICTED
    h_now_m: F64
    v_now_m: F64
    t_los_s: F64
    cpa_s: F64
    cpa_m: F64
    cpa_v_m: F64

    def pairs(self) -> list[ConflictPair]:
        kinds = np.array([CONFLICT_PREDICTED, SEPARATION_LOSS], dtype=object)[
            self.lost_now.astype(np.intp)
        ].tolist()
        columns = (self.i.tolist(), self.j.tolist(), kinds, *(col.tolist() for col in self[3:]))
        return list(map(ConflictPair, *columns))


def _to_arrays(s: _State, blocks: list[_Hits]) -> ConflictArrays:
    """Merge block results, map back to input rows, sort by (i, j)."""
    if not blocks:
        none_i, none_f = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        return ConflictArrays(none_i, none_i, np.empty(0, dtype=np.bool_), *(none_f,) * 6)
    cat = _Hits(*(np.concatenate(parts) for parts in zip(*blocks, strict=True)))
    i, j = s.index[cat.i], s.index[cat.j]
    order = np.lexsort((j, i))
    return ConflictArrays(
        i[order], j[order], cat.lost_now[order], cat.h_now_m[order], cat.v_now_m[order],
        cat.t_los_s[order], cat.cpa_s[order], cat.cpa_m[order], cat.cpa_v_m[order],
    )


def _to_pairs(s: _State, blocks: list[_Hits]) -> list[ConflictPair]:
    return _to_arrays(s, blocks).pairs()


def detect_conflicts_naive(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    alt_m: npt.ArrayLike,
    t: npt.ArrayLike,
    speed_mps: npt.ArrayLike,
    track_deg: npt.ArrayLike,
    vspeed_mps: npt.ArrayLike,
    crewed: npt.ArrayLike,
    tick_t: float,
    params: ConflictParams,
) -> list[ConflictPair]:
    """All-pairs O(N^2) reference: every pair through the exact test, in row blocks."""
    s = _state_at_tick(lat, lon, alt_m, t, speed_mps, track_deg, vspeed_mps, crewed, tick_t)
    n = s.index.size
    rows = max(1, _NAIVE_BLOCK // max(n, 1))
    blocks = []
    for first in range(0, n, rows):
        i_rows = np.arange(first, min(first + rows, n), dtype=np.int64)
        ii, jj = np.nonzero(np.arange(n)[None, :] > i_rows[:, None])
        blocks.append(_pair_kernel(s, i_rows[ii], jj.astype(np.int64), params))
    return _to_pairs(s, blocks)


@dataclass(frozen=True)
class _Boxes:
    """Per-aircraft grid cell range of its look-ahead box, plus the box for the overlap test."""

    lo: F64  # (n, 3) box minimum x, y, z
    hi: F64  # (n, 3) box maximum
    c0: I64  # (n, 2) first cell x, y
    c1: I64  # (n, 2) last cell x, y


def _lookahead_boxes(s: _State, params: ConflictParams) -> _Boxes:
    """Path boxes grown so that two aircraft closer than their minimum have overlapping boxes.

    Needs at least one aircraft. Velocities are assumed physical (implausible ones are flagged
    upstream); one large enough to overflow float64 over the look-ahead is not supported.
    """
    half_h = params.h_m / 2.0
    half_v = params.v_m / 2.0
    grow_h = np.where(s.crewed, max(params.crewed_h_m - half_h, params.crewed_h_m / 2.0), half_h)
    grow_v = np.where(s.crewed, max(params.crewed_v_m - half_v, params.crewed_v_m / 2.0), half_v)
    pos = np.stack((s.x, s.y, s.z), axis=1)
    end = pos + np.stack((s.vx, s.vy, s.vz), axis=1) * params.lookahead_s
    # Slack far above float rounding in the exact test, so the filter never drops a true hit.
    slack = 1e-3 + 1e-9 * float(np.abs(pos).max(initial=0.0) + np.abs(end).max(initial=0.0))
    grow = np.stack((grow_h, grow_h, grow_v), axis=1) + slack
    lo = np.minimum(pos, end) - grow
    hi = np.maximum(pos, end) + grow

    # Cell about the typical box side (so slow, dense traffic gets small cells), never so small
    # that cell keys overflow; coarsened while boxes would cover too many cells.
    origin = lo[:, :2].min(axis=0)
    span = float((hi[:, :2].max(axis=0) - origin).max())
    typical = float(np.quantile((hi - lo)[:, :2].max(axis=1), 0.75))
    cell_m = max(typical, span / 2.0**30, 1e-3)
    while True:
        c0 = np.floor((lo[:, :2] - origin) / cell_m).astype(np.int64)
        c1 = np.floor((hi[:, :2] - origin) / cell_m).astype(np.int64)
        entries = int(np.prod(c1 - c0 + 1, axis=1).sum())
        if entries <= _MAX_ENTRIES_PER_AIRCRAFT * s.x.size:
            return _Boxes(lo=lo, hi=hi, c0=c0, c1=c1)
        cell_m *= 2.0


def _candidate_blocks(boxes: _Boxes) -> Iterator[tuple[I64, I64]]:
    """Pairs (i < j) whose boxes overlap, each once, in blocks of bounded size."""
    n = boxes.c0.shape[0]
    counts = np.prod(boxes.c1 - boxes.c0 + 1, axis=1)
    owner = np.repeat(np.arange(n, dtype=np.int64), counts)
    # Rank of each entry within its aircraft's cell range, unravelled to (cell x, cell y).
    rank = within_runs(counts)
    ny_own = (boxes.c1[:, 1] - boxes.c0[:, 1] + 1)[owner]
    cell_x = boxes.c0[owner, 0] + rank // ny_own
    cell_y = boxes.c0[owner, 1] + rank % ny_own
    key = cell_x * (int(boxes.c1[:, 1].max(initial=0)) + 1) + cell_y
    del rank, ny_own  # this generator's locals live through all its blocks: the peak per tick
    # Entries by cell, and within a cell by the bottom of their box.
    order = np.lexsort((boxes.lo[owner, 2], key))
    owner, cell_x, cell_y, key = owner[order], cell_x[order], cell_y[order], key[order]
    del order
    # Per-entry copies in cell order, so pair gathers stay local in memory.
    e_lo = [np.ascontiguousarray(boxes.lo[owner, d]) for d in range(3)]
    e_hi = [np.ascontiguousarray(boxes.hi[owner, d]) for d in range(3)]
    e_c0 = [boxes.c0[owner, d] for d in range(2)]

    # Entry p pairs with the later entries of its cell whose bottom is not above its top: a
    # sweep in height, done as one search over the bottoms lifted by cell (cell g's lie in
    # [g * lift, (g + 1) * lift)). Rounding of the lift is monotone, so no overlapping pair is
    # missed; the few it may add are settled by the exact tests.
    m = key.size
    group_start = np.searchsorted(key, key, side="left")
    group_end = np.searchsorted(key, key, side="right").astype(np.int64)
    z_floor = float(e_lo[2].min(initial=0.0))
    lift = float(e_hi[2].max(initial=0.0)) - z_floor + 1.0
    group = np.cumsum(group_start == np.arange(m)) - 1
    lifted = (e_lo[2] - z_floor) + group * lift
    # An entry's own top lifts to at least its bottom (monotone rounding): reach > its index.
    reach = np.searchsorted(lifted, (e_hi[2] - z_floor) + group * lift, side="right")
    later = np.minimum(group_end, reach) - np.arange(m, dtype=np.int64) - 1
    cum = np.cumsum(later)
    del key, group_start, group_end, group, lifted, reach
    first = 0
    while first < m:
        base = int(cum[first - 1]) if first else 0
        last = min(max(int(np.searchsorted(cum, base + _PAIR_BLOCK, side="right")), first + 1), m)
        p_count = later[first:last]
        total = int(p_count.sum())
        if total:
            p = np.repeat(np.arange(first, last, dtype=np.int64), p_count)
            starts = np.cumsum(p_count) - p_count
            q = p + 1 + np.arange(total, dtype=np.int64) - np.repeat(starts, p_count)
            for d in range(2):  # heights overlap already (the sweep)
                keep = (e_lo[d][p] <= e_hi[d][q]) & (e_lo[d][q] <= e_hi[d][p])
                p, q = p[keep], q[keep]
            # Keep the pair only in the cell holding the low corner of the boxes' intersection.
            keep = (np.maximum(e_c0[0][p], e_c0[0][q]) == cell_x[p]) & (
                np.maximum(e_c0[1][p], e_c0[1][q]) == cell_y[p]
            )
            a, b = owner[p[keep]], owner[q[keep]]
            yield np.minimum(a, b), np.maximum(a, b)
        first = last


def detect_conflicts(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    alt_m: npt.ArrayLike,
    t: npt.ArrayLike,
    speed_mps: npt.ArrayLike,
    track_deg: npt.ArrayLike,
    vspeed_mps: npt.ArrayLike,
    crewed: npt.ArrayLike,
    tick_t: float,
    params: ConflictParams,
    *,
    stats: dict[str, int] | None = None,
) -> list[ConflictPair]:
    """Pairs that have lost separation or will within the look-ahead; sorted by (i, j).

    `stats`, when given, receives counters of the pass (`aircraft`, `candidate_pairs`).
    """
    return detect_conflict_arrays(
        lat, lon, alt_m, t, speed_mps, track_deg, vspeed_mps, crewed, tick_t, params, stats=stats
    ).pairs()


def detect_conflict_arrays(
    lat: npt.ArrayLike,
    lon: npt.ArrayLike,
    alt_m: npt.ArrayLike,
    t: npt.ArrayLike,
    speed_mps: npt.ArrayLike,
    track_deg: npt.ArrayLike,
    vspeed_mps: npt.ArrayLike,
    crewed: npt.ArrayLike,
    tick_t: float,
    params: ConflictParams,
    *,
    stats: dict[str, int] | None = None,
) -> ConflictArrays:
    """`detect_conflicts` as parallel arrays, for callers that go on in numpy."""
    s = _state_at_tick(lat, lon, alt_m, t, speed_mps, track_deg, vspeed_mps, crewed, tick_t)
    blocks = []
    candidates = 0
    if s.index.size > 1:
        for i, j in _candidate_blocks(_lookahead_boxes(s, params)):
            candidates += i.size
            blocks.append(_pair_kernel(s, i, j, params))
    if stats is not None:
        stats["aircraft"] = int(s.index.size)
        stats["candidate_pairs"] = candidates
    return _to_arrays(s, blocks)
