"""The geofence checker: an immutable snapshot of zones, asked about whole batches of observations.

Built once per change of the zone set (readers keep the snapshot they hold; a new one is swapped
in whole):
- the zone polygons in lon/lat degrees, prepared, for the breach test (boundary counts as inside);
- each polygon projected into a transverse Mercator frame about the zone's own central meridian
  (see `geofence.zones`), first densified to 0.005 degree edges so its chords and the degree
  polygon's edges part by under 1 cm (to latitude 60): its rings there as segments in chunks
  (`_RingSegments`), for distances in metres to the edge from outside, and the disc about the
  zone's centre that holds it (for a circle zone, the circle itself);
- each zone's bounding box grown by `approach_m` (+1 %, +1 m), turned into degrees with the
  fewest metres per degree found in the box, so no approach is missed; the boxes binned in a
  uniform grid (`_BoxGrid`), which finds the boxes holding each point of a batch in numpy alone
  (the pairs an STRtree query would find, without a point geometry per observation).

`check` finds the candidate (observation, zone) pairs of the whole batch in the grid and then
works on them with numpy masks and shapely's vectorised predicates, cheapest first: active window
and weekly schedule (a minute-of-week bitmap per scheduled zone), the altitude band (the height
array picked per pair by the zone's references), authorised UAVs, as one mask (a zone's numbers
for these steps, and for the next, are a row of a table: one gather per pair). The pairs keep
the grid's order, by observation then zone, to the end, so the hits need no sort (numpy's
fixed cost per call is much of a call's cost at the server's 1,000 reports). Then each pair's
distance to the zone's centre in the zone's frame, less the disc's radius: exact for a circle,
whose pairs are decided by it alone (inside at 0 or less: no GEOS, and nearer the geodesic
circle than its outline polygon), and a lower bound for a polygon, tested by point in polygon
(prepared, on the coordinates: `intersects_xy`; a ray-crossing count over the rings' chunks in
numpy took twice as long), except where the polygon's inner disc holds the point: a disc about
its centroid in its frame, up to the nearest ring less 2 cm (a quarter of the benchmark's
point-in-polygon tests, whose polygons' memory is cold when a batch comes). Outside a
polygon, those the bound leaves in reach get the nearest point of the polygon's rings in the
zone's frame, found in numpy by `_RingSegments` (exactly what GEOS's distance finds, about a
sixth faster than a point geometry and a GEOS call per pair on the benchmark's traffic; chunks
farther than the approach distance are not measured). That is the polygon's own nearest point,
without a containment test again: a point outside the degree polygon but inside the frame's
densified one is within a centimetre of the edge, and gets that distance, not 0: both round to
the 0.1 m an alert tells.
Distances are divided by the mean projection scale along the line, 1 + (x1^2 + x1 x2 + x2^2) /
6R^2, which keeps them within millimetres of the geodesic at 100 km. (A predicate query over
approach-buffered polygons was slower both to build, GEOS buffers, and to query, unprepared
point-in-polygon per candidate.)

Heights: a NaN height counts as inside every band (an unknown height cannot clear a zone). Times
must be finite.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple, TypeVar, cast

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import Point

from geofence.ceiling import CeilingZones
from geofence.zones import (
    MINUTES_PER_WEEK,
    REFERENCES,
    RESTRICTIONS,
    Zone,
    circle_outlines,
    minute_of_week,
    schedule_week_mask,
    tm_forward,
)
from lowalt.errors import ValidationError
from lowalt.runs import spans, within_runs

__all__ = ["ZoneHit", "ZoneHits", "ZoneIndex"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Geoms = npt.NDArray[np.object_]
_A = TypeVar("_A", bound=npt.NDArray[Any])

_DENSIFY_DEG = 0.005
_A_M = 6_378_137.0
_E2 = 6.694_379_990_14e-3
_SCALE_SLACK = 1e-3  # transverse Mercator lengths exceed true ones by x^2/2R^2, < 1e-3 here
_MIN_M_PER_DEG_LAT = 110_574.0  # meridian radius at the equator, per degree
_M_PER_DEG_LON_EQ = 111_319.49  # equatorial radius, per degree; times cos(lat) elsewhere
_GRID_ENTRIES_PER_BOX = 8  # at most this many cell listings per box, on average (see _BoxGrid)
_GRID_MAX_CELLS_PER_SIDE = 1 << 24  # keeps cell keys (column * rows + row) far inside int64
_GRID_DENSE_CELLS_PER_LISTING = 4  # a table of every cell when it costs at most this per listing
_CHUNK_SEGMENTS = 8  # ring segments per chunk of `_RingSegments`
_EDGE_M = 0.01  # the frame's rings and the degree polygon's edges part by less than this
# Columns of `ZoneIndex._filter_table` and `_frame_table`.
_F_START, _F_END, _F_LOWER, _F_UPPER, _F_LOWER_REF, _F_UPPER_REF, _F_SCHED_ROW = range(7)
(_G_LON0, _G_CENTRE_Y, _G_R2, _G_DISC, _G_APPROACH, _G_CIRCLE, _G_INNER_X, _G_INNER_Y,
 _G_INNER) = range(9)


class ZoneHit(NamedTuple):
    """An observation inside (`breach`) or within `approach_m` of (`approach`) a zone."""

    obs_index: int
    zone_id: str
    kind: Literal["breach", "approach"]
    distance_m: float  # 0 for a breach; horizontal distance to the zone's edge for an approach


class ZoneHits(NamedTuple):
    """`ZoneIndex.hits`: breaches and approaches as parallel arrays, ordered by observation then
    zone (`zone` is the zone's position in `ZoneIndex.zones`)."""

    obs: I64
    zone: I64
    breach: npt.NDArray[np.bool_]
    distance_m: F64  # 0 for a breach; horizontal distance to the zone's edge for an approach

    def take(self, rows: npt.NDArray[Any]) -> ZoneHits:
        """The hits at rows (indices or a mask)."""
        return ZoneHits(self.obs[rows], self.zone[rows], self.breach[rows], self.distance_m[rows])


def _frozen(a: _A) -> _A:
    a.flags.writeable = False
    return a


_ZERO = _frozen(np.zeros(1, dtype=np.int64))  # for concatenating before run starts
_TRUE = _frozen(np.ones(1, dtype=np.bool_))


def _in_sorted(values: I64, sorted_keys: I64) -> npt.NDArray[np.bool_]:
    """values in sorted_keys (sorted, not empty): a binary search per value, where np.isin
    would sort the keys again on every call."""
    at = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    found: npt.NDArray[np.bool_] = sorted_keys[at] == values
    return found


class _BoxGrid:
    """Axis-aligned boxes binned into square cells, for finding the boxes that hold each of many
    points with numpy alone (no point geometries, no tree walk per point).

    Each box is listed in every cell it overlaps; a point looks up its one cell (in the sorted
    keys of the occupied cells) and keeps the boxes listed there that hold it, edges included:
    the pairs an STRtree query of the points against the boxes finds. A point's cell is
    `floor((x - x0) / size)`, the same monotone rounding that gives a box's first and last cells,
    so a point on a box's edge is always in one of that box's cells. The cell size starts at the
    median box's longer side and doubles until there are at most `_GRID_ENTRIES_PER_BOX` listings
    per box (plus a few), so memory stays in proportion to the boxes however large or scattered.
    Boxes with NaN bounds (empty shapes) hold nothing.
    """

    __slots__ = ("_first", "_keys", "_listed", "_origin", "_rows", "_shape", "_size", "_starts")

    def __init__(self, bounds: F64, *, dense: bool | None = None) -> None:
        """bounds: (n, 4) of xmin, ymin, xmax, ymax, with xmin <= xmax and ymin <= ymax.
        dense: whether to keep a table of every cell (None: when the grid has few cells for
        its listings)."""
        bounds = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
        ids = np.flatnonzero(np.isfinite(bounds).all(axis=1))
        lo, hi = bounds[ids, :2], bounds[ids, 2:]
        n = ids.size
        self._origin = _frozen(lo.min(axis=0) if n else np.zeros(2))
        extent = float((hi.max(axis=0) - self._origin).max()) if n else 0.0
        side = np.maximum(hi[:, 0] - lo[:, 0], hi[:, 1] - lo[:, 1])
        size = max(float(np.median(side)) if n else 1.0, extent / _GRID_MAX_CELLS_PER_SIDE, 1e-9)
        while True:  # ends: once size > extent, a box overlaps at most 2 x 2 cells
            first, last = self._cell(lo, size), self._cell(hi, size)
            span = last - first + 1
            per_box = span[:, 0] * span[:, 1]
            if int(per_box.sum()) <= _GRID_ENTRIES_PER_BOX * n + 1024:
                break
            size *= 2.0
        self._size = size
        self._shape = _frozen(last.max(axis=0) + 1 if n else np.zeros(2, np.int64))
        self._rows = int(self._shape[1])
        owner = np.repeat(np.arange(n, dtype=np.int64), per_box)
        k = within_runs(per_box)
        key = ((first[owner, 0] + k // span[owner, 1]) * self._rows
               + first[owner, 1] + k % span[owner, 1])
        order = np.argsort(key, kind="stable")  # by cell, then box
        key = key[order]
        box = ids[owner[order]]
        # Each listing's box bounds and box number as a row, the rows of a cell together: a
        # point's candidates are one contiguous read, not a gather per bound per box (the
        # tables are cold when a batch comes, the server's other work having run between).
        self._listed: F64 = _frozen(np.column_stack([bounds[box], box]))
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else key
        self._keys: I64 = _frozen(key[starts])
        self._starts: I64 = _frozen(np.r_[starts, key.size].astype(np.int64))
        # A grid of few cells for its listings (a city's zones: about one cell per listing)
        # also gets every cell's first listing by cell number, `_first[cell] .. _first[cell +
        # 1]`: a point's boxes by two reads instead of a binary search over the occupied cells.
        cells = int(self._shape[0]) * self._rows
        if dense is None:
            dense = cells <= _GRID_DENSE_CELLS_PER_LISTING * key.size + 4096
        self._first: I64 | None = None
        if dense:
            self._first = _frozen(np.r_[0, np.cumsum(np.bincount(key, minlength=cells))])

    def _cell(self, xy: F64, size: float) -> I64:
        return np.floor((xy - self._origin) / size).astype(np.int64)

    def pairs(self, x: F64, y: F64) -> tuple[I64, I64]:
        """(point, box) for every box that holds a point, edges included, ordered by point."""
        cx = np.floor((x - self._origin[0]) / self._size)
        cy = np.floor((y - self._origin[1]) / self._size)
        on_grid = (cx >= 0) & (cx < self._shape[0]) & (cy >= 0) & (cy < self._shape[1])  # NaN: no
        point = np.flatnonzero(on_grid)
        key = cx[point].astype(np.int64) * self._rows + cy[point].astype(np.int64)
        if self._first is not None:
            start = self._first[key]
            count = self._first[key + 1] - start
        else:
            at = np.searchsorted(self._keys, key)
            listed = at < self._keys.size
            listed[listed] = self._keys[at[listed]] == key[listed]
            point, at = point[listed], at[listed]
            start, count = self._starts[at], self._starts[at + 1] - self._starts[at]
        obs = np.repeat(point, count)
        listed = self._listed[spans(start, count)]
        px, py = x[obs], y[obs]
        holds = np.flatnonzero((listed[:, 0] <= px) & (px <= listed[:, 2])
                               & (listed[:, 1] <= py) & (py <= listed[:, 3]))
        return obs[holds], listed[holds, 4].astype(np.int64)


class _RingSegments:
    """The polygons' rings in their frames as segments, in chunks of `_CHUNK_SEGMENTS` along a
    ring, each chunk with a disc that holds it: the nearest point of a zone's rings to many
    points at once, in numpy.

    For each (point, zone) pair: every chunk of the zone gives a lower bound on the distance
    (to its disc) and an upper one (to its first vertex, a point of the ring); only chunks whose
    lower bound is within both the smallest upper bound and `limit` have their segments
    measured. The nearest of those is the nearest of the ring (a chunk left out is farther than
    some point of the ring, or farther than `limit`): GEOS's distance, without a point geometry
    and a call per pair. Chunks and segments are rows of two tables, so gathering one reads one
    cache line, not five (0.65 -> 0.54 ms per 1,000 reports; GEOS 0.66).
    """

    __slots__ = ("_chunk_count", "_chunk_first", "_chunks", "_seg_count", "_seg_first",
                 "_segments")

    def __init__(self, rings: Geoms, ring_zone: I64, n_zones: int) -> None:
        """rings: LinearRings in frame metres; ring_zone: each ring's zone (ascending)."""
        coords, ring = shapely.get_coordinates(rings, return_index=True)
        ring = ring.astype(np.int64)
        joined = ring[:-1] == ring[1:]  # a segment from each point to the next of its ring
        zone = np.asarray(ring_zone, dtype=np.int64)[ring[:-1][joined]]
        a, b = coords[:-1][joined], coords[1:][joined]
        ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
        dx, dy = bx - ax, by - ay
        len2 = dx**2 + dy**2
        inv_len2 = np.divide(1.0, len2, out=np.zeros_like(len2), where=len2 > 0.0)
        # A row per segment (a table, so a gather reads one cache line per segment, not five):
        # its start, its direction, 1 / its length squared (0 for a point).
        self._segments = np.column_stack([ax, ay, dx, dy, inv_len2])
        # Chunks: runs of up to _CHUNK_SEGMENTS segments of one zone.
        per_zone = np.bincount(zone, minlength=n_zones)
        rank = within_runs(per_zone)
        first = np.flatnonzero((rank % _CHUNK_SEGMENTS) == 0)
        self._seg_first = first
        self._seg_count = np.diff(np.r_[first, zone.size])
        chunk_zone = zone[first]
        self._chunk_count = np.bincount(chunk_zone, minlength=n_zones)
        self._chunk_first = np.cumsum(self._chunk_count) - self._chunk_count
        # A row per chunk: the centre and radius of a disc that holds it (about its box, the
        # half diagonal rounded up a hair), and its first vertex (a point of the ring).
        self._chunks = np.empty((first.size, 5))
        if first.size:
            lo_x = np.minimum.reduceat(np.minimum(ax, bx), first)
            hi_x = np.maximum.reduceat(np.maximum(ax, bx), first)
            lo_y = np.minimum.reduceat(np.minimum(ay, by), first)
            hi_y = np.maximum.reduceat(np.maximum(ay, by), first)
            self._chunks[:, 0], self._chunks[:, 1] = (lo_x + hi_x) / 2.0, (lo_y + hi_y) / 2.0
            self._chunks[:, 2] = np.hypot(hi_x - lo_x, hi_y - lo_y) * (0.5 + 1e-12) + 1e-9
            self._chunks[:, 3], self._chunks[:, 4] = ax[first], ay[first]

    def nearest(self, zone: I64, px: F64, py: F64, limit: F64) -> tuple[F64, F64]:
        """For each pair (zone[i], (px[i], py[i])): the distance to the zone's rings and the x
        of their nearest point; inf and NaN where the distance is more than limit[i] (and for a
        zone without rings)."""
        n = zone.size
        dist, qx = np.full(n, np.inf), np.full(n, np.nan)
        count = self._chunk_count[zone]
        pair = np.repeat(np.arange(n), count)
        chunk = spans(self._chunk_first[zone], count)
        c = self._chunks[chunk]
        cx, cy = px[pair], py[pair]
        ux, uy = cx - c[:, 0], cy - c[:, 1]
        lower = np.sqrt(ux * ux + uy * uy) - c[:, 2]
        vx, vy = cx - c[:, 3], cy - c[:, 4]
        upper2 = vx * vx + vy * vy
        has = count > 0
        bound = np.full(n, -np.inf)
        bound[has] = np.minimum(
            np.sqrt(np.minimum.reduceat(upper2, (np.cumsum(count) - count)[has])), limit[has])
        keep = lower <= bound[pair]
        pair, chunk = pair[keep], chunk[keep]
        if not pair.size:
            return dist, qx
        n_seg = self._seg_count[chunk]
        g = self._segments[spans(self._seg_first[chunk], n_seg)]
        pair = np.repeat(pair, n_seg)
        sx, sy = px[pair] - g[:, 0], py[pair] - g[:, 1]  # from the segment's start
        t = np.clip((sx * g[:, 2] + sy * g[:, 3]) * g[:, 4], 0.0, 1.0)
        ex, ey = sx - t * g[:, 2], sy - t * g[:, 3]  # from the nearest point of the segment
        d2 = ex * ex + ey * ey
        # Pairs come in runs (ascending); each run's nearest: its smallest d2, the first such.
        starts = np.flatnonzero(pair[1:] != pair[:-1]) + 1
        smallest = np.repeat(np.minimum.reduceat(d2, np.concatenate([_ZERO, starts])),
                             np.diff(starts, prepend=0, append=d2.size))
        hit = np.flatnonzero(d2 == smallest)
        lead = hit[np.concatenate([_TRUE, pair[hit[1:]] != pair[hit[:-1]]])]
        at = pair[lead]
        dist[at], qx[at] = np.sqrt(d2[lead]), px[at] - ex[lead]
        beyond = dist > limit
        dist[beyond], qx[beyond] = np.inf, np.nan
        return dist, qx


class ZoneIndex:
    """An immutable snapshot of zones; see the module docstring."""

    __slots__ = (
        "_auth_codes",
        "_auth_keys",
        "_by_id",
        "_ceilings",
        "_filter_table",
        "_frame_table",
        "_grid",
        "_has_auth",
        "_id_array",
        "_id_ids",
        "_ids",
        "_polygons",
        "_restriction",
        "_sched_mask",
        "_segments",
        "_zones",
    )

    def __init__(self, zones: Iterable[Zone]) -> None:
        self._zones = tuple(zones)
        self._by_id: dict[str, int] = {}
        for k, zone in enumerate(self._zones):
            if zone.id in self._by_id:
                raise ValidationError(f"zones[{k}].id", f"duplicate zone id {zone.id!r}")
            self._by_id[zone.id] = k
        self._ids = [z.id for z in self._zones]
        n = len(self._zones)
        self._id_array: Geoms = _frozen(np.array(self._ids, dtype=object).reshape(n))
        self._id_ids = _frozen(np.array([id(z) for z in self._ids], dtype=np.int64).reshape(n))
        self._restriction: I64 = _frozen(
            np.array([RESTRICTIONS.index(z.restriction) for z in self._zones], np.int64)
        )

        polygons = np.empty(n, dtype=object)
        circles = np.array([isinstance(z.geometry, Point) for z in self._zones], np.bool_)
        shapes = np.flatnonzero(~circles)
        lon0 = np.empty(n, dtype=np.float64)
        lat0 = np.empty(n, dtype=np.float64)
        disc_m = np.empty(n, dtype=np.float64)  # circle radius, or polygon's bounding disc
        rings, ring_zone = np.empty(0, dtype=object), np.empty(0, dtype=np.int64)
        if shapes.size:
            polygons[shapes] = [self._zones[k].geometry for k in shapes.tolist()]
            bounds = shapely.bounds(polygons[shapes]).reshape(-1, 4)
            lon0[shapes] = (bounds[:, 0] + bounds[:, 2]) / 2.0
            lat0[shapes] = (bounds[:, 1] + bounds[:, 3]) / 2.0
            dense = shapely.segmentize(polygons[shapes], _DENSIFY_DEG)
            coords, owner = shapely.get_coordinates(dense, return_index=True)
            x, y = tm_forward(coords[:, 0], coords[:, 1], lon0[shapes][owner])
            metric = shapely.set_coordinates(dense, np.column_stack([x, y]))
            parts, part_of = shapely.get_parts(metric, return_index=True)
            rings, ring_of = shapely.get_rings(parts, return_index=True)
            ring_zone = shapes[part_of[ring_of]]
            _, centre_y = tm_forward(lon0[shapes], lat0[shapes], lon0[shapes])
            reach = np.hypot(x, y - centre_y[owner])
            starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
            disc_m[shapes] = np.maximum.reduceat(reach, starts)
            centroids = shapely.centroid(metric)
            inner_xy = np.column_stack([shapely.get_x(centroids), shapely.get_y(centroids)])
            inner_in = shapely.intersects_xy(metric, inner_xy[:, 0], inner_xy[:, 1])
        if circles.any():
            centres = [
                cast(Point, z.geometry) for z in self._zones if isinstance(z.geometry, Point)
            ]
            lon0[circles] = [c.x for c in centres]
            lat0[circles] = [c.y for c in centres]
            disc_m[circles] = [
                z.radius_m or 0.0 for z in self._zones if isinstance(z.geometry, Point)
            ]
            polygons[circles], _ = circle_outlines(
                lon0[circles], lat0[circles], disc_m[circles]
            )
        shapely.prepare(polygons)
        centre_y_m = tm_forward(lon0, lat0, lon0)[1]
        sin2 = np.sin(np.radians(lat0)) ** 2
        r2 = _A_M**2 * (1.0 - _E2) / (1.0 - _E2 * sin2) ** 2  # M * N
        self._polygons: Geoms = _frozen(polygons)
        self._segments = _RingSegments(rings, ring_zone, n)  # polygons' rings, in their frames
        # A polygon's inner disc, in its frame: about its centroid, up to its nearest ring
        # less twice the frame's centimetre (none when the centroid is outside): a point in it
        # is inside without a point-in-polygon test (`hits`).
        inner = np.zeros((n, 3))  # x, y, radius
        if shapes.size:
            held = shapes[inner_in]
            inner[shapes, :2] = inner_xy
            ring_m, _ = self._segments.nearest(held, inner[held, 0], inner[held, 1],
                                               np.full(held.size, np.inf))
            inner[held, 2] = np.maximum(ring_m - 2.0 * _EDGE_M, 0.0)
        bounds = shapely.bounds(polygons).reshape(n, 4)

        def column(values: Iterable[float | None], missing: float) -> F64:
            return np.array([missing if v is None else v for v in values], np.float64)

        approach_m = column((z.approach_m for z in self._zones), 0.0)
        lower_m = column((z.lower_m for z in self._zones), -np.inf)
        upper_m = column((z.upper_m for z in self._zones), np.inf)
        start = column((z.start for z in self._zones), -np.inf)
        end = column((z.end for z in self._zones), np.inf)
        lower_ref = [REFERENCES.index(z.reference) for z in self._zones]
        upper_ref = [REFERENCES.index(z.upper_ref) for z in self._zones]

        scheduled = [k for k, z in enumerate(self._zones) if z.schedule is not None]
        sched_row = np.full(n, -1, dtype=np.int64)
        sched_row[scheduled] = np.arange(len(scheduled))
        self._sched_mask = _frozen(
            np.array(
                [schedule_week_mask(self._zones[k].schedule or ()) for k in scheduled],
                dtype=np.bool_,
            ).reshape(len(scheduled), MINUTES_PER_WEEK)
        )

        self._auth_codes: dict[str, int] = {}
        keys = []
        for k, zone in enumerate(self._zones):
            for uav in zone.authorized:
                code = self._auth_codes.setdefault(uav, len(self._auth_codes))
                keys.append((k, code))
        self._has_auth = _frozen(np.array([bool(z.authorized) for z in self._zones], np.bool_))
        self._auth_keys = _frozen(
            np.unique(np.array([k * len(self._auth_codes) + c for k, c in keys], np.int64))
        )

        # A row per zone of what a pair needs, for one gather per pair (`hits`).
        self._filter_table = _frozen(np.column_stack([
            start, end, lower_m, upper_m, lower_ref, upper_ref, sched_row,
        ]).astype(np.float64).reshape(n, 7))
        self._frame_table = _frozen(np.column_stack([
            lon0, centre_y_m, r2, disc_m, approach_m, circles, inner,
        ]).astype(np.float64).reshape(n, 9))
        margin_m = approach_m * 1.01 + 1.0
        dlat = margin_m / _MIN_M_PER_DEG_LAT
        edge_lat = np.minimum(
            np.maximum(np.abs(bounds[:, 1] - dlat), np.abs(bounds[:, 3] + dlat)), 89.9
        )
        dlon = np.minimum(margin_m / (_M_PER_DEG_LON_EQ * np.cos(np.radians(edge_lat))), 360.0)
        self._grid = _BoxGrid(np.column_stack(
            [bounds[:, 0] - dlon, bounds[:, 1] - dlat, bounds[:, 2] + dlon, bounds[:, 3] + dlat]
        ))
        self._ceilings = CeilingZones(self._zones, self._polygons)

    @classmethod
    def empty(cls) -> ZoneIndex:
        """A snapshot without zones."""
        return cls(())

    @property
    def zones(self) -> tuple[Zone, ...]:
        return self._zones

    @property
    def ceilings(self) -> CeilingZones:
        """The zones that raise the AGL ceiling (geofence/ceiling.py)."""
        return self._ceilings

    @property
    def zone_ids(self) -> npt.NDArray[np.object_]:
        """The zones' ids, by position in `zones` (an object array, for gathering by hits)."""
        return self._id_array

    @property
    def zone_id_ids(self) -> I64:
        """`id()` of each of `zone_ids`' objects (alerts find their keys' refs by them:
        `ConditionBatch(ref_ids=...)`)."""
        return self._id_ids

    @property
    def restriction_codes(self) -> I64:
        """The zones' restrictions as positions in `geofence.zones.RESTRICTIONS`."""
        return self._restriction

    def __len__(self) -> int:
        return len(self._zones)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._by_id

    def get(self, zone_id: str) -> Zone | None:
        k = self._by_id.get(zone_id)
        return None if k is None else self._zones[k]

    def with_zone(self, zone: Zone) -> ZoneIndex:
        """A new snapshot with `zone` added, or replacing the zone of the same id."""
        return ZoneIndex([*(z for z in self._zones if z.id != zone.id), zone])

    def without_zone(self, zone_id: str) -> ZoneIndex:
        """A new snapshot without the zone `zone_id` (the same zones if it is absent)."""
        return ZoneIndex(z for z in self._zones if z.id != zone_id)

    def zones_containing(self, lon: float, lat: float) -> list[str]:
        """Ids of the zones whose horizontal shape covers the point (any height, any time)."""
        x, y = np.array([lon], np.float64), np.array([lat], np.float64)
        candidates = self._grid.pairs(x, y)[1]
        inside = candidates[shapely.intersects_xy(self._polygons[candidates], lon, lat)]
        return [self._ids[k] for k in np.sort(inside).tolist()]

    def check(
        self,
        lon: npt.ArrayLike,
        lat: npt.ArrayLike,
        agl_m: npt.ArrayLike,
        amsl_m: npt.ArrayLike,
        wgs84_m: npt.ArrayLike,
        t: npt.ArrayLike,
        uav: Sequence[str],
    ) -> list[ZoneHit]:
        """Breaches and approaches of a batch, ordered by observation then zone.

        A breach: zone active at `t`, `uav` not authorised, height inside the band, point inside
        the shape (edge included). An approach: the same but outside the shape and at most
        `approach_m` from it horizontally.
        """
        found = self.hits(lon, lat, agl_m, amsl_m, wgs84_m, t, uav)
        ids = self._ids
        kinds = ("approach", "breach")
        return list(
            map(
                partial(tuple.__new__, ZoneHit),
                zip(
                    found.obs.tolist(),
                    [ids[k] for k in found.zone.tolist()],
                    [kinds[b] for b in found.breach.tolist()],
                    found.distance_m.tolist(),
                    strict=True,
                ),
            )
        )

    def not_exempt(self, obs: I64, zone: I64, uav: Sequence[str]) -> Bool | None:
        """Of the pairs (observation obs[k], zone zone[k]), those whose UAV (`uav` by
        observation) is not among the zone's authorised UAVs, as a mask; None when all are."""
        with_auth = np.flatnonzero(self._has_auth[zone])
        if not with_auth.size:
            return None
        codes = np.fromiter(
            (self._auth_codes.get(uav[i], -1) for i in obs[with_auth].tolist()),
            dtype=np.int64,
            count=with_auth.size,
        )
        key = zone[with_auth] * len(self._auth_codes) + codes
        exempt = (codes >= 0) & _in_sorted(key, self._auth_keys)
        if not exempt.any():
            return None
        keep = np.ones(obs.size, dtype=np.bool_)
        keep[with_auth[exempt]] = False
        return keep

    def hits(
        self,
        lon: npt.ArrayLike,
        lat: npt.ArrayLike,
        agl_m: npt.ArrayLike,
        amsl_m: npt.ArrayLike,
        wgs84_m: npt.ArrayLike,
        t: npt.ArrayLike,
        uav: Sequence[str] | None,
    ) -> ZoneHits:
        """`check` as parallel arrays, for callers that go on in numpy. uav None: the zones'
        authorised UAVs are not applied (the caller applies `not_exempt` to the hits)."""
        lon_a = np.asarray(lon, dtype=np.float64).ravel()
        n = lon_a.size
        cols = [np.asarray(c, dtype=np.float64).ravel() for c in (lat, agl_m, amsl_m, wgs84_m, t)]
        for name, col in zip(("lat", "agl_m", "amsl_m", "wgs84_m", "t"), cols, strict=True):
            if col.size != n:
                raise ValueError(f"{name} has {col.size} rows, lon has {n}")
        if uav is not None and len(uav) != n:
            raise ValueError(f"uav has {len(uav)} rows, lon has {n}")
        lat_a, agl_a, amsl_a, wgs84_a, t_a = cols
        if n == 0 or not self._zones:
            none = np.empty(0, dtype=np.int64)
            return ZoneHits(none, none, np.empty(0, dtype=np.bool_), np.empty(0))

        obs, zone = self._grid.pairs(lon_a, lat_a)  # ordered by observation, then zone

        # Active window, weekly schedule and altitude band, as one mask over the pairs. Each
        # zone's numbers are one row of a table: a pair's are one gather.
        f = self._filter_table[zone]
        tt = t_a[obs]
        heights = np.stack([agl_a, amsl_a, wgs84_a])  # row order = REFERENCES
        keep = ((tt >= f[:, _F_START]) & (tt <= f[:, _F_END])
                & ~(heights[f[:, _F_LOWER_REF].astype(np.intp), obs] < f[:, _F_LOWER])
                & ~(heights[f[:, _F_UPPER_REF].astype(np.intp), obs] > f[:, _F_UPPER]))
        scheduled = np.flatnonzero(keep & (f[:, _F_SCHED_ROW] >= 0))
        if scheduled.size:
            rows = f[scheduled, _F_SCHED_ROW].astype(np.intp)
            keep[scheduled] = self._sched_mask[rows, minute_of_week(tt[scheduled])]
        obs, zone = obs[keep], zone[keep]

        if uav is not None and (allowed := self.not_exempt(obs, zone, uav)) is not None:
            obs, zone = obs[allowed], zone[allowed]

        # Every pair's distance in the zone's own frame, from the centre less the disc's radius:
        # exact for a circle (inside at 0 or less, no GEOS), a lower bound for a polygon.
        g = self._frame_table[zone]
        x, y = tm_forward(lon_a[obs], lat_a[obs], g[:, _G_LON0])
        r2 = g[:, _G_R2]
        centre_m = np.hypot(x, y - g[:, _G_CENTRE_Y])
        a_dist = centre_m / (1.0 + x * x / (6.0 * r2)) - g[:, _G_DISC]
        circle = g[:, _G_CIRCLE] > 0.0
        inside = circle & (a_dist <= 0.0)
        inside |= np.hypot(x - g[:, _G_INNER_X], y - g[:, _G_INNER_Y]) < g[:, _G_INNER]
        # A polygon holds a point only inside its bounding disc (to within a centimetre, the
        # frame's densified rings against the degree edges): GEOS for those pairs alone, less
        # those its inner disc holds.
        shapes = np.flatnonzero(~circle & ~inside & (a_dist <= 1.0))
        inside[shapes] = shapely.intersects_xy(  # prepared
            self._polygons[zone[shapes]], lon_a[obs[shapes]], lat_a[obs[shapes]])
        # Outside: the nearest point of the rings for the polygons the lower bound leaves in
        # reach.
        approach_m = g[:, _G_APPROACH]
        reach_m = approach_m * (1.0 + _SCALE_SLACK) + 1.0
        exact = np.flatnonzero(~inside & ~circle & (a_dist <= reach_m))
        if exact.size:
            # Outside the degree polygon: the nearest point of the frame's rings is the
            # polygon's (a point inside the frame's densified polygon is within a centimetre
            # of its edge, and that distance is what it gets).
            # Ground distance = frame distance / the frame's scale k = 1 + x^2 / 2R^2 averaged
            # along the path from the point's x (px) to its nearest edge point's (qx):
            # 1 + (px^2 + px qx + qx^2) / 6R^2, within millimetres of the geodesic at 100 km.
            px, py = x[exact], y[exact]
            frame_m, qx = self._segments.nearest(zone[exact], px, py, reach_m[exact])
            k_mean = 1.0 + (px * px + px * qx + qx * qx) / (6.0 * r2[exact])
            a_dist[exact] = np.where(np.isfinite(frame_m), frame_m / k_mean, np.inf)
        # The pairs keep their order (observation, then zone): breaches and approaches alike.
        hit = np.flatnonzero(inside | (a_dist <= approach_m))
        breach = inside[hit]
        return ZoneHits(obs[hit], zone[hit], breach,
                        np.where(breach, 0.0, np.maximum(a_dist[hit], 0.0)))
