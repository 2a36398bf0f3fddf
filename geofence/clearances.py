"""Route clearances in 4D: the volume a route reserves, what it meets, and conformance to it.

Pure: no I/O, no clock. `geofence/clearance_service.py` persists and serves what this computes.

Route: a polyline of [lon, lat, alt_m] (alt_m above the WGS84 ellipsoid, like an observation's),
flown from `departure` at `speed_mps` along the 3D path, so segment k is flown during
[t_k, t_k+1] with t_k = departure + (3D path length up to point k) / speed_mps.

Volume: every segment is cut into pieces of at most `piece_s` seconds of flight (so a long
segment does not reserve its whole corridor for its whole duration), and each piece reserves
- horizontally: its centreline buffered by `corridor_m`, built in a transverse Mercator frame
  about the route's central meridian (`geofence.zones.tm_forward`) and stored in lon/lat degrees.
  The buffer polygon is circumscribed (radius / cos(pi / 32), quad_segs 8): it holds every point
  within `corridor_m` and at most 0.5 % more, so a conflict is never missed;
- vertically: [min(alt at its ends) - vertical_m, max(alt at its ends) + vertical_m], WGS84 m;
- in time: [time at its start - tolerance_s, time at its end + tolerance_s].
All intervals are closed.

Decisions (`decide`) give every reason a request is denied:
- `{"zone": id, ...}`: a piece meets a prohibited or authorization_required zone the UAV is not
  authorised for (`Zone.authorized`), with the zone active at some instant of the piece's window
  (`Zone.active_at`, tried at each whole minute, where schedules change) and the zone's band met
  by the piece's band converted into the zone's references (agl, amsl, wgs84);
- `{"ceiling": m, ...}`: the top of a piece's band is more than the ceiling in force above
  ground: `max_agl_m`, or more where zones raise it for the whole piece (geofence/ceiling.py);
- `{"clearance": id, "at": t, ...}`: a piece overlaps a piece of a reserved volume in space
  (polygons intersect, bands overlap) and in time; `at` is the first instant they share, `where`
  a point [lon, lat, alt_m] they share then.
Existing volumes sit in a 3D R-tree over (lon, lat, t) (`VolumeIndex`); `naive_conflicts` is the
same test against every volume, for the benchmark and the tests.

Conformance (`conformance`): a position at time t is on route when some piece holds it in space
(horizontal distance from the centreline <= corridor_m, vertical distance from the piece's
altitudes <= vertical_m); among those the piece whose time window fits best says whether it is
early or late. Off route, the piece nearest relative to the corridor's size gives the distances.
`conformance` is the reference for one volume; `VolumeTable` keeps many volumes' pieces in flat
arrays and places a whole batch, each position against its own volume, in one vectorised pass
with the same figures (bit for bit): what the check stage uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
import shapely
from rtree import index as rtree_index
from shapely.geometry import Point

from geofence.ceiling import CeilingZones
from geofence.index import ZoneIndex
from geofence.zones import (
    Reference,
    Zone,
    circle_polygons,
    parse_time,
    tm_forward,
    tm_inverse,
)
from lowalt.errors import ValidationError
from lowalt.runs import within_runs

__all__ = [
    "RESERVING",
    "STATES",
    "Conformance",
    "Heights",
    "RouteRequest",
    "Volume",
    "VolumeConflict",
    "VolumeIndex",
    "VolumeTable",
    "ZoneScreen",
    "build_volume",
    "can_change",
    "ceiling_reason",
    "conformance",
    "decide",
    "naive_conflicts",
    "pair_conflict",
    "request_from_json",
    "zone_active_between",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]
Geoms = npt.NDArray[np.object_]
Reason = dict[str, Any]

# Limits of a request (API.md section 5; docs/API.md).
MIN_POINTS, MAX_POINTS = 2, 1000
SPEED_MPS = (0.5, 100.0)
CORRIDOR_M = (5.0, 2000.0)
VERTICAL_M = (2.0, 500.0)
ALT_M = (-500.0, 20000.0)
MAX_LON_SPAN_DEG = 5.0
MAX_PIECES = 20_000
DENYING = ("prohibited", "authorization_required")

# States. `suspended` belongs to priority operations (another issue); the machine allows it.
STATES = ("granted", "denied", "active", "completed", "cancelled", "expired", "suspended")
RESERVING = frozenset({"granted", "active"})
TERMINAL = frozenset({"denied", "completed", "cancelled", "expired"})
_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "granted": frozenset({"active", "cancelled", "expired", "suspended"}),
    "active": frozenset({"completed", "cancelled", "expired", "suspended"}),
    "suspended": frozenset({"granted", "active", "cancelled", "expired"}),
}

_UAV_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_QUAD_SEGS = 8
_CIRCUMSCRIBE = 1.0 / math.cos(math.pi / (4 * _QUAD_SEGS))
_EPS_M = 1e-6
_PAIR_BLOCK = 1_000_000  # rows x pieces handled at once in conformance and pair tests
_TABLE_BLOCK = 4096  # (position, piece) pairs per VolumeTable pass: temporaries stay in L2


def can_change(old: str, new: str) -> bool:
    """Whether the state machine allows old -> new."""
    return new in _TRANSITIONS.get(old, frozenset())


# -- requests ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteRequest:
    """A validated clearance request (API.md section 5)."""

    uav: str
    coordinates: tuple[tuple[float, float, float], ...]  # [lon, lat, alt_m WGS84]
    departure: float  # Unix s
    speed_mps: float
    corridor_m: float  # horizontal half-width
    vertical_m: float  # vertical half-height

    def to_json(self) -> dict[str, Any]:
        return {
            "uav": self.uav,
            "route": {"type": "LineString", "coordinates": [list(c) for c in self.coordinates]},
            "departure": self.departure, "speed_mps": self.speed_mps,
            "corridor_m": self.corridor_m, "vertical_m": self.vertical_m,
        }


def _number(value: object, path: str, bounds: tuple[float, float] | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(path, "must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise ValidationError(path, "must be finite")
    if bounds is not None and not bounds[0] <= result <= bounds[1]:
        raise ValidationError(path, f"must be in [{bounds[0]:g}, {bounds[1]:g}], got {result:g}")
    return result


def request_from_json(
    body: object, *, now: float, tolerance_s: float, max_horizon_s: float
) -> RouteRequest:
    """Validate a POST /v1/clearances body; ValidationError names the offending field.

    `departure` must lie in [now - tolerance_s, now + max_horizon_s] (Unix s or ISO 8601)."""
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    uav = body.get("uav")
    if not isinstance(uav, str) or not _UAV_RE.fullmatch(uav):
        raise ValidationError("uav", "must be 1..64 of [A-Za-z0-9._:-]")
    route = body.get("route")
    if not isinstance(route, dict):
        raise ValidationError("route", "must be a GeoJSON LineString object")
    if route.get("type") != "LineString":
        raise ValidationError("route.type", "must be 'LineString'")
    raw = route.get("coordinates")
    if not isinstance(raw, list) or not MIN_POINTS <= len(raw) <= MAX_POINTS:
        raise ValidationError(
            "route.coordinates", f"must be a list of {MIN_POINTS}..{MAX_POINTS} positions"
        )
    coords: list[tuple[float, float, float]] = []
    for i, pos in enumerate(raw):
        path = f"route.coordinates[{i}]"
        if not isinstance(pos, list) or len(pos) != 3:
            raise ValidationError(path, "must be [lon, lat, alt_m]")
        lon = _number(pos[0], f"{path}[0]", (-180.0, 180.0))
        lat = _number(pos[1], f"{path}[1]", (-85.0, 85.0))
        alt_m = _number(pos[2], f"{path}[2]", ALT_M)
        if coords and coords[-1] == (lon, lat, alt_m):
            raise ValidationError(path, "repeats the previous position")
        coords.append((lon, lat, alt_m))
    lons = [c[0] for c in coords]
    if max(lons) - min(lons) > MAX_LON_SPAN_DEG:
        raise ValidationError("route.coordinates",
                              f"spans more than {MAX_LON_SPAN_DEG:g} degrees of longitude")
    if "departure" not in body:
        raise ValidationError("departure", "required")
    departure = parse_time(body["departure"], "departure")
    if not math.isfinite(departure):
        raise ValidationError("departure", "must be finite")
    if departure < now - tolerance_s:
        raise ValidationError("departure", f"more than {tolerance_s:g} s in the past")
    if departure > now + max_horizon_s:
        raise ValidationError("departure", f"more than {max_horizon_s:g} s ahead")
    return RouteRequest(
        uav=uav, coordinates=tuple(coords), departure=departure,
        speed_mps=_number(body.get("speed_mps"), "speed_mps", SPEED_MPS),
        corridor_m=_number(body.get("corridor_m"), "corridor_m", CORRIDOR_M),
        vertical_m=_number(body.get("vertical_m"), "vertical_m", VERTICAL_M),
    )


# -- the volume --------------------------------------------------------------------------------
def _frozen(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Volume:
    """The 4D volume of one route; arrays are per piece unless named per point."""

    corridor_m: float
    vertical_m: float
    tolerance_s: float
    lon0: float  # central meridian of the metric frame
    y0: float  # northing subtracted in the metric frame
    # per route point
    t_nom: F64  # nominal time at each point
    s_m: F64  # 3D path length up to each point
    lon: F64
    lat: F64
    alt_m: F64
    # per piece: ends in the metric frame (a -> b), nominal times, path lengths, route segment
    ax: F64
    ay: F64
    az: F64
    bx: F64
    by: F64
    bz: F64
    ta: F64
    tb: F64
    sa: F64
    sb: F64
    segment: I64
    end_lon: F64  # (P, 3): lon of piece start, middle, end
    end_lat: F64
    polygons: Geoms  # corridor of each piece, lon/lat degrees
    bounds: F64  # (P, 4) of the polygons
    lo_m: F64  # band, WGS84 m
    hi_m: F64
    t0: F64  # window including the tolerance
    t1: F64

    @property
    def valid_from(self) -> float:
        return float(self.t_nom[0])

    @property
    def valid_to(self) -> float:
        return float(self.t_nom[-1])

    def __len__(self) -> int:
        return int(self.ax.size)

    def project(self, lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[F64, F64]:
        """Positions into this volume's metric frame."""
        x, y = tm_forward(lon, lat, self.lon0)
        return x, y - self.y0

    def corridor(self) -> Any:
        """The union of the piece corridors (lon/lat degrees)."""
        return shapely.union_all(self.polygons)

    def expected_along_m(self, t: npt.ArrayLike) -> F64:
        """Where along the path (m) the UAV should be at t, clamped to the route."""
        return np.interp(np.asarray(t, dtype=np.float64), self.t_nom, self.s_m)

    def expected_position(self, t: float) -> tuple[float, float, float]:
        """[lon, lat, alt_m] on the centreline at time t (clamped to the route)."""
        return (float(np.interp(t, self.t_nom, self.lon)),
                float(np.interp(t, self.t_nom, self.lat)),
                float(np.interp(t, self.t_nom, self.alt_m)))

    def contains(self, lon: float, lat: float, alt_m: float, t: float) -> bool:
        """Whether the 4D point lies in the volume (exact distances, not the polygons)."""
        c = conformance(self, [lon], [lat], [alt_m], [t], [False])
        return bool(c.inside[0] and c.early_s[0] == 0.0 and c.late_s[0] == 0.0)


def build_volume(req: RouteRequest, *, tolerance_s: float, piece_s: float) -> Volume:
    """The 4D volume of a validated request; see the module docstring."""
    coords = np.asarray(req.coordinates, dtype=np.float64)
    lon, lat, z = coords[:, 0], coords[:, 1], coords[:, 2]
    lon0 = float((lon.min() + lon.max()) / 2.0)
    x, y = tm_forward(lon, lat, lon0)
    y0 = float(y[0])
    y = y - y0
    dx, dy, dz = np.diff(x), np.diff(y), np.diff(z)
    length = np.sqrt(dx * dx + dy * dy + dz * dz)
    flat = np.flatnonzero(length <= 0.0)
    if flat.size:
        raise ValidationError(f"route.coordinates[{int(flat[0]) + 1}]",
                              "repeats the previous position")
    duration = length / req.speed_mps
    t_nom = req.departure + np.concatenate([[0.0], np.cumsum(duration)])
    s_m = np.concatenate([[0.0], np.cumsum(length)])
    step_s = max(piece_s, float(duration.sum()) / MAX_PIECES * 1.001)
    k = np.maximum(1, np.ceil(duration / step_s - 1e-9)).astype(np.int64)
    seg = np.repeat(np.arange(k.size), k)
    j = within_runs(k)
    f0, f1 = j / k[seg], (j + 1) / k[seg]

    def lerp(v: F64, f: F64) -> F64:
        return v[seg] + (v[seg + 1] - v[seg]) * f

    ax, ay, az, ta, sa = (lerp(v, f0) for v in (x, y, z, t_nom, s_m))
    bx, by, bz, tb, sb = (lerp(v, f1) for v in (x, y, z, t_nom, s_m))
    n = seg.size
    degenerate = np.hypot(bx - ax, by - ay) <= 0.0
    centre = np.empty(n, dtype=object)
    pts = np.column_stack([np.stack([ax, bx], 1).ravel(), np.stack([ay, by], 1).ravel()])
    if (~degenerate).any():
        keep = np.flatnonzero(~degenerate)
        rows = np.stack([2 * keep, 2 * keep + 1], 1).ravel()
        centre[keep] = shapely.linestrings(pts[rows], indices=np.repeat(np.arange(keep.size), 2))
    if degenerate.any():
        centre[degenerate] = shapely.points(ax[degenerate], ay[degenerate])
    metric = shapely.buffer(centre, req.corridor_m * _CIRCUMSCRIBE, quad_segs=_QUAD_SEGS)
    poly_xy = shapely.get_coordinates(metric)
    plon, plat = tm_inverse(poly_xy[:, 0], poly_xy[:, 1] + y0, lon0)
    polygons = shapely.set_coordinates(metric, np.column_stack([plon, plat]))
    mx, my = (ax + bx) / 2.0, (ay + by) / 2.0
    elon, elat = tm_inverse(np.stack([ax, mx, bx], 1), np.stack([ay, my, by], 1) + y0, lon0)
    return Volume(
        corridor_m=req.corridor_m, vertical_m=req.vertical_m, tolerance_s=tolerance_s,
        lon0=lon0, y0=y0,
        t_nom=_frozen(t_nom), s_m=_frozen(s_m), lon=_frozen(lon.copy()), lat=_frozen(lat.copy()),
        alt_m=_frozen(z.copy()),
        ax=_frozen(ax), ay=_frozen(ay), az=_frozen(az), bx=_frozen(bx), by=_frozen(by),
        bz=_frozen(bz), ta=_frozen(ta), tb=_frozen(tb), sa=_frozen(sa), sb=_frozen(sb),
        segment=_frozen(seg), end_lon=_frozen(elon), end_lat=_frozen(elat),
        polygons=_frozen(polygons), bounds=_frozen(shapely.bounds(polygons).reshape(n, 4)),
        lo_m=_frozen(np.minimum(az, bz) - req.vertical_m),
        hi_m=_frozen(np.maximum(az, bz) + req.vertical_m),
        t0=_frozen(ta - tolerance_s), t1=_frozen(tb + tolerance_s),
    )


# -- volume against volume ---------------------------------------------------------------------
class VolumeConflict(NamedTuple):
    """Another reserved volume met: first shared instant and a 4D point shared then."""

    clearance: str
    at: float
    lon: float
    lat: float
    alt_m: float

    def reason(self) -> Reason:
        return {"clearance": self.clearance, "at": self.at,
                "where": [round(self.lon, 7), round(self.lat, 7), round(self.alt_m, 1)]}


def _witness(
    owner: str, a: Volume, i: int, poly_b: Any, lo_b: float, hi_b: float, t0_b: float
) -> VolumeConflict:
    shared = shapely.intersection(a.polygons[i], poly_b)
    if shapely.is_empty(shared):  # touching within rounding: take the closest points
        shared = shapely.shortest_line(a.polygons[i], poly_b)
    point = shapely.get_coordinates(shapely.point_on_surface(shared))[0]
    alt = (max(float(a.lo_m[i]), lo_b) + min(float(a.hi_m[i]), hi_b)) / 2.0
    return VolumeConflict(owner, max(float(a.t0[i]), t0_b), float(point[0]), float(point[1]), alt)


def _earliest(
    owners: Sequence[str], q: I64, other: I64, at: F64
) -> dict[str, tuple[float, int, int]]:
    """owner -> (first shared instant, piece of the new volume, piece of the other)."""
    best: dict[str, tuple[float, int, int]] = {}
    for k in np.lexsort((other, q, at)).tolist():
        owner = owners[k]
        if owner not in best:
            best[owner] = (float(at[k]), int(q[k]), int(other[k]))
    return best


def pair_conflict(a: Volume, b: Volume, b_id: str) -> VolumeConflict | None:
    """Whether volume a meets volume b (all piece pairs, no index), and where first."""
    na, nb = len(a), len(b)
    step = max(1, _PAIR_BLOCK // max(nb, 1))
    found: list[tuple[float, int, int]] = []
    for s in range(0, na, step):
        rows = np.arange(s, min(na, s + step))[:, None]
        ok = ((a.t0[rows] <= b.t1) & (b.t0 <= a.t1[rows]) & (a.lo_m[rows] <= b.hi_m)
              & (b.lo_m <= a.hi_m[rows])
              & (a.bounds[rows, 0] <= b.bounds[:, 2]) & (b.bounds[:, 0] <= a.bounds[rows, 2])
              & (a.bounds[rows, 1] <= b.bounds[:, 3]) & (b.bounds[:, 1] <= a.bounds[rows, 3]))
        qi, bj = np.nonzero(ok)
        qi = qi + s
        hit = shapely.intersects(a.polygons[qi], b.polygons[bj])
        qi, bj = qi[hit], bj[hit]
        if qi.size:
            at = np.maximum(a.t0[qi], b.t0[bj])
            k = int(np.lexsort((bj, qi, at))[0])
            found.append((float(at[k]), int(qi[k]), int(bj[k])))
    if not found:
        return None
    _, i, j = min(found)
    return _witness(b_id, a, i, b.polygons[j], float(b.lo_m[j]), float(b.hi_m[j]),
                    float(b.t0[j]))


def naive_conflicts(volume: Volume, others: Mapping[str, Volume]) -> list[VolumeConflict]:
    """The reference: `volume` against every other volume, one pair at a time, no index."""
    found = [c for cid, other in others.items()
             if (c := pair_conflict(volume, other, cid)) is not None]
    return sorted(found, key=lambda c: (c.at, c.clearance))


class VolumeIndex:
    """Reserved volumes in one 3D R-tree over (lon, lat, t) boxes of their pieces.

    Mutated in place (add, remove); the clearance service only touches it under its decision
    lock, so no query sees a half-made change. Removed pieces leave holes in the attribute
    arrays until the next compaction (when holes outnumber live pieces)."""

    def __init__(self, volumes: Iterable[tuple[str, Volume]] = ()) -> None:
        self._volumes: dict[str, Volume] = {}
        self._pieces: dict[str, I64] = {}
        self._build(list(volumes))

    def _build(self, volumes: list[tuple[str, Volume]]) -> None:
        self._volumes = dict(volumes)
        total = sum(len(v) for _, v in volumes)
        cap = max(1024, total)
        self._owner: list[str | None] = []
        self._alive = np.zeros(cap, np.bool_)
        self._poly: Geoms = np.empty(cap, dtype=object)
        self._box = np.zeros((cap, 6), np.float64)  # minlon, minlat, t0, maxlon, maxlat, t1
        self._lo = np.zeros(cap, np.float64)
        self._hi = np.zeros(cap, np.float64)
        self._n = 0
        self._dead = 0
        self._pieces = {}
        for cid, volume in volumes:
            self._append(cid, volume)
        props = rtree_index.Property(dimension=3, leaf_capacity=64, index_capacity=64,
                                     fill_factor=0.8)
        if self._n:
            boxes = self._box[: self._n]
            stream = ((k, tuple(boxes[k].tolist()), None) for k in range(self._n))
            self._tree = rtree_index.Index(stream, properties=props, interleaved=True)
        else:
            self._tree = rtree_index.Index(properties=props, interleaved=True)

    def _append(self, cid: str, volume: Volume) -> I64:
        n, m = self._n, len(volume)
        if n + m > self._alive.size:
            cap = max(n + m, 2 * self._alive.size)
            self._alive = np.concatenate([self._alive, np.zeros(cap - self._alive.size, bool)])
            poly = np.empty(cap, dtype=object)
            poly[:n] = self._poly[:n]
            self._poly = poly
            self._box = np.concatenate([self._box, np.zeros((cap - self._box.shape[0], 6))])
            self._lo = np.concatenate([self._lo, np.zeros(cap - self._lo.size)])
            self._hi = np.concatenate([self._hi, np.zeros(cap - self._hi.size)])
        ids = np.arange(n, n + m, dtype=np.int64)
        self._alive[ids] = True
        self._poly[ids] = volume.polygons
        b = volume.bounds
        self._box[ids] = np.column_stack([b[:, 0], b[:, 1], volume.t0, b[:, 2], b[:, 3],
                                          volume.t1])
        self._lo[ids], self._hi[ids] = volume.lo_m, volume.hi_m
        self._owner.extend([cid] * m)
        self._n = n + m
        self._pieces[cid] = ids
        self._volumes[cid] = volume
        return ids

    def __len__(self) -> int:
        return len(self._volumes)

    def __contains__(self, cid: object) -> bool:
        return cid in self._volumes

    def volumes(self) -> dict[str, Volume]:
        return dict(self._volumes)

    def add(self, cid: str, volume: Volume) -> None:
        if cid in self._volumes:
            raise ValueError(f"clearance {cid} is indexed already")
        for k in self._append(cid, volume).tolist():
            self._tree.insert(k, tuple(self._box[k].tolist()))

    def remove(self, cid: str) -> bool:
        ids = self._pieces.pop(cid, None)
        if ids is None:
            return False
        del self._volumes[cid]
        for k in ids.tolist():
            self._tree.delete(k, tuple(self._box[k].tolist()))
            self._owner[k] = None
            self._poly[k] = None
        self._alive[ids] = False
        self._dead += ids.size
        if self._dead > max(1024, self._n - self._dead):
            self._build(list(self._volumes.items()))
        return True

    def conflicts(self, volume: Volume, *, exclude: str | None = None) -> list[VolumeConflict]:
        """Every indexed volume that `volume` meets, earliest first."""
        if not self._volumes or not len(volume):
            return []
        b = volume.bounds
        mins = np.column_stack([b[:, 0], b[:, 1], volume.t0])
        maxs = np.column_stack([b[:, 2], b[:, 3], volume.t1])
        ids, counts = self._tree.intersection_v(mins, maxs)  # type: ignore[no-untyped-call]
        ids = ids.astype(np.int64)
        q = np.repeat(np.arange(len(volume)), counts.astype(np.int64))
        ok = (self._alive[ids] & (volume.lo_m[q] <= self._hi[ids])
              & (self._lo[ids] <= volume.hi_m[q]))
        q, ids = q[ok], ids[ok]
        if not q.size:
            return []
        shapely.prepare(volume.polygons)
        hit = shapely.intersects(volume.polygons[q], self._poly[ids])
        q, ids = q[hit], ids[hit]
        owners = [cast(str, self._owner[k]) for k in ids.tolist()]
        at = np.maximum(volume.t0[q], self._box[ids, 2])
        found = []
        for owner, (_, i, k) in _earliest(owners, q, ids, at).items():
            if owner == exclude:
                continue
            found.append(_witness(owner, volume, i, self._poly[k], float(self._lo[k]),
                                  float(self._hi[k]), float(self._box[k, 2])))
        return sorted(found, key=lambda c: (c.at, c.clearance))


# -- volume against zones and the ceiling ------------------------------------------------------
@dataclass(frozen=True)
class Heights:
    """How WGS84 altitudes become AMSL and AGL: geoid undulation and a ground model (AMSL)."""

    geoid_undulation_m: float = 0.0
    elevation_at: Callable[[F64, F64], F64] | None = None

    def ground_range(self, volume: Volume) -> tuple[F64, F64]:
        """Lowest and highest ground (AMSL) under each piece (its ends and middle)."""
        if self.elevation_at is None:
            zero = np.zeros(len(volume))
            return zero, zero
        g = np.asarray(self.elevation_at(volume.end_lon, volume.end_lat), np.float64)
        g = g.reshape(len(volume), 3)
        return g.min(axis=1), g.max(axis=1)


def _offsets(ref: Reference, geoid: float, g_lo: F64, g_hi: F64) -> tuple[F64, F64]:
    """(smallest, largest) value of WGS84 alt - height-in-ref under a piece."""
    if ref == "wgs84":
        zero = np.zeros_like(g_lo)
        return zero, zero
    if ref == "amsl":
        flat = np.full_like(g_lo, geoid)
        return flat, flat
    return geoid + g_lo, geoid + g_hi


def zone_active_between(zone: Zone, t0: float, t1: float) -> float | None:
    """The first instant in [t0, t1] at which `zone` is active (`Zone.active_at`), or None.

    Activity changes only at `start`, `end` and whole minutes (schedules), so those are tried."""
    lo = t0 if zone.start is None else max(t0, zone.start)
    hi = t1 if zone.end is None else min(t1, zone.end)
    if lo > hi:
        return None
    if zone.active_at(lo):
        return lo
    if zone.schedule is None:
        return None
    minute = math.floor(lo / 60.0) * 60.0 + 60.0
    for _ in range(7 * 1440 + 1):
        if minute > hi:
            return None
        if zone.active_at(minute):
            return minute
        minute += 60.0
    return None


class ZoneScreen:
    """The zones of one ZoneIndex snapshot that deny a route (prohibited, authorization
    required), in an STRtree over their `Zone.polygon`s (circles included)."""

    def __init__(self, zones: ZoneIndex) -> None:
        self.source = zones
        self.zones = [z for z in zones.zones if z.restriction in DENYING]
        polygons = np.empty(len(self.zones), dtype=object)
        circles = [k for k, z in enumerate(self.zones) if isinstance(z.geometry, Point)]
        shapes = [k for k, z in enumerate(self.zones) if not isinstance(z.geometry, Point)]
        polygons[shapes] = [self.zones[k].polygon for k in shapes]
        if circles:  # all at once, as ZoneIndex does (Zone.polygon would go one by one)
            centres = [cast(Point, self.zones[k].geometry) for k in circles]
            polygons[circles] = circle_polygons([c.x for c in centres], [c.y for c in centres],
                                                [self.zones[k].radius_m or 0.0 for k in circles])
        shapely.prepare(polygons)
        self._polygons = polygons
        self._tree = shapely.STRtree(polygons)

    def reasons(self, volume: Volume, uav: str, heights: Heights,
                ground: tuple[F64, F64] | None = None) -> list[Reason]:
        """One reason per zone the volume meets, at its first instant."""
        if not self.zones or not len(volume):
            return []
        piece, zk = self._tree.query(volume.polygons, predicate="intersects")
        if not piece.size:
            return []
        g_lo, g_hi = ground if ground is not None else heights.ground_range(volume)
        found: dict[str, Reason] = {}
        for i, k in zip(piece.tolist(), zk.tolist(), strict=True):
            zone = self.zones[k]
            if uav in zone.authorized:
                continue
            if not self._band_met(zone, volume, i, heights.geoid_undulation_m, g_lo, g_hi):
                continue
            at = zone_active_between(zone, float(volume.t0[i]), float(volume.t1[i]))
            if at is None or (zone.id in found and found[zone.id]["at"] <= at):
                continue
            found[zone.id] = {"zone": zone.id, "restriction": zone.restriction,
                              "name": zone.name, "segment": int(volume.segment[i]), "at": at}
        return sorted(found.values(), key=lambda r: (r["at"], r["zone"]))

    @staticmethod
    def _band_met(zone: Zone, v: Volume, i: int, geoid: float, g_lo: F64, g_hi: F64) -> bool:
        """Some altitude of piece i is at or above the zone's lower limit and at or below its
        upper limit, each in its own reference (over the ground range under the piece)."""
        low = float(v.lo_m[i])
        high = float(v.hi_m[i])
        if zone.lower_m is not None:
            off_lo, _ = _offsets(zone.reference, geoid, g_lo[i : i + 1], g_hi[i : i + 1])
            low = max(low, zone.lower_m + float(off_lo[0]))
        if zone.upper_m is not None:
            _, off_hi = _offsets(zone.upper_ref, geoid, g_lo[i : i + 1], g_hi[i : i + 1])
            high = min(high, zone.upper_m + float(off_hi[0]))
        return low <= high


def ceiling_reason(volume: Volume, heights: Heights, max_agl_m: float,
                   ground: tuple[F64, F64] | None = None, *, uav: str = "",
                   ceilings: CeilingZones | None = None) -> Reason | None:
    """The point of the volume furthest above the AGL ceiling in force there, when it exceeds
    it: max_agl_m, or higher where `ceilings` zones authorise uav for a whole piece."""
    g_lo, _ = ground if ground is not None else heights.ground_range(volume)
    top_agl = volume.hi_m - heights.geoid_undulation_m - g_lo
    limit = np.full(len(volume), max_agl_m)
    high = np.flatnonzero(top_agl > max_agl_m)
    if ceilings is not None and high.size:
        limit[high] = ceilings.piece_ceilings(volume.polygons[high], volume.t0[high],
                                              volume.t1[high], uav, max_agl_m)
    worst = int(np.argmax(top_agl - limit))
    if not top_agl[worst] > limit[worst]:
        return None
    return {"ceiling": float(limit[worst]), "agl_m": round(float(top_agl[worst]), 1),
            "segment": int(volume.segment[worst]), "at": float(volume.t0[worst])}


def decide(volume: Volume, uav: str, *, zones: ZoneScreen | None, reserved: VolumeIndex,
           heights: Heights, max_agl_m: float) -> list[Reason]:
    """Every reason to deny the volume (empty: grant): zones, ceiling, reserved volumes."""
    ground = heights.ground_range(volume)
    reasons: list[Reason] = []
    if zones is not None:
        reasons.extend(zones.reasons(volume, uav, heights, ground))
    ceiling = ceiling_reason(volume, heights, max_agl_m, ground, uav=uav,
                             ceilings=None if zones is None else zones.source.ceilings)
    if ceiling is not None:
        reasons.append(ceiling)
    reasons.extend(c.reason() for c in reserved.conflicts(volume))
    return reasons


# -- conformance -------------------------------------------------------------------------------
class Conformance(NamedTuple):
    """Per position: where it is relative to the volume (see `conformance`)."""

    distance_m: F64  # horizontal distance from the chosen piece's centreline
    vertical_m: F64  # vertical distance outside the chosen piece's altitudes (0 within)
    early_s: F64  # how far before the chosen piece's window (tolerance included)
    late_s: F64  # how far after it
    inside: Bool  # within corridor_m and vertical_m of some piece
    at_end: Bool  # at the end of the route: see `conformance`
    along_m: F64  # path length to the point nearest on the chosen piece
    piece: I64


def conformance(
    volume: Volume, lon: npt.ArrayLike, lat: npt.ArrayLike, alt_m: npt.ArrayLike,
    t: npt.ArrayLike, on_ground: npt.ArrayLike,
) -> Conformance:
    """Where positions are relative to the volume.

    On route (`inside`): some piece holds the position within corridor_m horizontally and
    vertical_m vertically; of those, the one whose time window (tolerance included) is nearest
    gives early_s/late_s (0 inside the window). Off route: the piece with the smallest excess
    relative to the corridor's size. `at_end`: within corridor_m horizontally of the last point,
    within vertical_m of its altitude or on the ground, and the piece whose corridor holds the
    position with the best-fitting window belongs to the last segment (so a route ending where
    it started does not end at its departure)."""
    px, py = volume.project(lon, lat)
    pz = np.asarray(alt_m, np.float64).ravel()
    pt = np.asarray(t, np.float64).ravel()
    ground = np.asarray(on_ground, np.bool_).ravel()
    px, py = px.ravel(), py.ravel()
    n, m = px.size, len(volume)
    out = {name: np.zeros(n) for name in ("dist", "vert", "early", "late", "along")}
    inside = np.zeros(n, np.bool_)
    piece = np.zeros(n, np.int64)
    vx, vy = volume.bx - volume.ax, volume.by - volume.ay
    l2 = vx * vx + vy * vy
    inv = np.divide(1.0, l2, out=np.zeros_like(l2), where=l2 > 0.0)
    zlo, zhi = np.minimum(volume.az, volume.bz), np.maximum(volume.az, volume.bz)
    w0, w1 = volume.t0, volume.t1
    corridor, vertical = volume.corridor_m + _EPS_M, volume.vertical_m + _EPS_M
    last_seg = int(volume.segment[-1])
    end_dist = np.hypot(px - volume.bx[-1], py - volume.by[-1])
    end_vert = np.abs(pz - volume.bz[-1])
    at_end = (end_dist <= corridor) & ((end_vert <= vertical) | ground)
    rows = np.arange(n)
    step = max(1, _PAIR_BLOCK // max(m, 1))
    for s in range(0, n, step):
        r = rows[s : s + step]
        ex, ey = px[r, None] - volume.ax, py[r, None] - volume.ay
        u = np.clip((ex * vx + ey * vy) * inv, 0.0, 1.0)
        dh = np.hypot(ex - u * vx, ey - u * vy)
        z = pz[r, None]
        dv = np.maximum(zlo - z, 0.0) + np.maximum(z - zhi, 0.0)
        tt = pt[r, None]
        early, late = np.maximum(w0 - tt, 0.0), np.maximum(tt - w1, 0.0)
        off_time = early + late
        in_h = dh <= corridor
        in_space = in_h & (dv <= vertical)
        any_in = in_space.any(axis=1)
        excess = np.maximum(dh / corridor, dv / vertical)
        # Ties go to the later piece (reversed argmin), so progress is never understated.
        key_in = np.where(in_space, off_time, np.inf)[:, ::-1]
        key_out = excess[:, ::-1]
        best = m - 1 - np.where(any_in, np.argmin(key_in, axis=1), np.argmin(key_out, axis=1))
        key_end = np.where(in_h, off_time, np.inf)[:, ::-1]
        end_piece = m - 1 - np.argmin(key_end, axis=1)
        at_end[r] &= volume.segment[end_piece] == last_seg
        k = (np.arange(r.size), best)
        out["dist"][r], out["vert"][r] = dh[k], dv[k]
        out["early"][r], out["late"][r] = early[k], late[k]
        out["along"][r] = volume.sa[best] + u[k] * (volume.sb[best] - volume.sa[best])
        inside[r], piece[r] = any_in, best
    return Conformance(out["dist"], out["vert"], out["early"], out["late"], inside, at_end,
                       out["along"], piece)



class VolumeTable:
    """Many volumes flattened for conformance of a whole batch in one vectorised pass.

    Each volume's pieces sit in flat per-piece arrays (a contiguous range per volume, appended
    on `add`); per-volume constants sit in slot arrays. `remove` leaves holes until compaction
    (when holes outnumber live pieces). `conformance` pairs every position with each piece of its
    own volume and reduces per position: the same figures as `conformance`, bit for bit."""

    _PIECE = ("ax", "ay", "vx", "vy", "inv", "zlo", "zhi", "t0", "t1")  # rows of _piece
    _SLOT = ("lon0", "y0", "corridor", "vertical", "end_x", "end_y", "end_z")

    def __init__(self, volumes: Iterable[tuple[str, Volume]] = ()) -> None:
        volumes = list(volumes)
        self._slot: dict[str, int] = {}  # id -> slot, in the order added
        cap = max(1024, sum(len(v) for _, v in volumes))
        self._piece = np.zeros((len(self._PIECE), cap))  # one gather (np.take) per batch
        self._sa, self._sb = np.zeros(cap), np.zeros(cap)
        self._segment = np.zeros(cap, np.int64)
        slots = max(64, len(volumes))
        self._per_slot = {name: np.zeros(slots) for name in self._SLOT}
        self._start = np.zeros(slots, np.int64)
        self._count = np.zeros(slots, np.int64)
        self._last_segment = np.zeros(slots, np.int64)
        self._n = self._slots = self._dead = 0
        for cid, volume in volumes:
            self.add(cid, volume)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, cid: object) -> bool:
        return cid in self._slot

    def add(self, cid: str, volume: Volume) -> None:
        """Append a volume (replacing any under the same id)."""
        if cid in self._slot:
            self.remove(cid)
        n, m, k = self._n, len(volume), self._slots
        if n + m > self._segment.size:
            cap = max(n + m, 2 * self._segment.size)
            piece = np.zeros((len(self._PIECE), cap))
            piece[:, :n] = self._piece[:, :n]
            self._piece = piece
            self._sa, self._sb, self._segment = (
                _grown(a, cap) for a in (self._sa, self._sb, self._segment))
        if k == self._start.size:
            self._per_slot = {name: _grown(a, 2 * k) for name, a in self._per_slot.items()}
            self._start, self._count, self._last_segment = (
                _grown(a, 2 * k) for a in (self._start, self._count, self._last_segment))
        vx, vy = volume.bx - volume.ax, volume.by - volume.ay  # as `conformance` derives them
        l2 = vx * vx + vy * vy
        derived = {
            "ax": volume.ax, "ay": volume.ay, "vx": vx, "vy": vy,
            "inv": np.divide(1.0, l2, out=np.zeros_like(l2), where=l2 > 0.0),
            "zlo": np.minimum(volume.az, volume.bz), "zhi": np.maximum(volume.az, volume.bz),
            "t0": volume.t0, "t1": volume.t1,
        }
        for row, name in enumerate(self._PIECE):
            self._piece[row, n : n + m] = derived[name]
        self._sa[n : n + m], self._sb[n : n + m] = volume.sa, volume.sb
        self._segment[n : n + m] = volume.segment
        constants = {
            "lon0": volume.lon0, "y0": volume.y0, "corridor": volume.corridor_m + _EPS_M,
            "vertical": volume.vertical_m + _EPS_M, "end_x": volume.bx[-1],
            "end_y": volume.by[-1], "end_z": volume.bz[-1],
        }
        for name, value in constants.items():
            self._per_slot[name][k] = value
        self._start[k], self._count[k], self._last_segment[k] = n, m, volume.segment[-1]
        self._n, self._slots = n + m, k + 1
        self._slot[cid] = k

    def remove(self, cid: str) -> bool:
        slot = self._slot.pop(cid, None)
        if slot is None:
            return False
        self._dead += int(self._count[slot])
        if self._dead > max(1024, self._n - self._dead):
            self._compact()
        return True

    def _compact(self) -> None:
        """Close the holes: live pieces and slots moved down, in order (array work only)."""
        slots = np.fromiter(self._slot.values(), np.int64, len(self._slot))
        count = self._count[slots]
        start = np.cumsum(count) - count
        pieces = np.repeat(self._start[slots] - start, count) + np.arange(int(count.sum()))
        n, k = pieces.size, slots.size
        self._piece = np.concatenate([self._piece[:, pieces],
                                      np.zeros((len(self._PIECE), max(1024, 2 * n) - n))], 1)
        self._sa, self._sb, self._segment = (_grown(a[pieces], max(1024, 2 * n))
                                             for a in (self._sa, self._sb, self._segment))
        size = max(64, 2 * k)
        self._per_slot = {name: _grown(a[slots], size) for name, a in self._per_slot.items()}
        self._last_segment = _grown(self._last_segment[slots], size)
        self._start, self._count = _grown(start, size), _grown(count, size)
        self._slot = dict(zip(self._slot, range(k), strict=True))
        self._n, self._slots, self._dead = n, k, 0

    def conformance(
        self, cids: Sequence[str], lon: npt.ArrayLike, lat: npt.ArrayLike,
        alt_m: npt.ArrayLike, t: npt.ArrayLike, on_ground: npt.ArrayLike,
    ) -> Conformance:
        """Position i against the volume of cids[i] (KeyError when it is not in the table),
        exactly as `conformance(volume, ...)` places it."""
        n = len(cids)
        slots = np.fromiter(map(self._slot.__getitem__, cids), np.int64, n)
        const = {name: a[slots] for name, a in self._per_slot.items()}
        px, py = tm_forward(np.asarray(lon, np.float64).ravel(),
                            np.asarray(lat, np.float64).ravel(), const["lon0"])
        py = py - const["y0"]
        pz = np.asarray(alt_m, np.float64).ravel()
        pt = np.asarray(t, np.float64).ravel()
        ground = np.asarray(on_ground, np.bool_).ravel()
        corridor, vertical = const["corridor"], const["vertical"]
        end_dist = np.hypot(px - const["end_x"], py - const["end_y"])
        end_vert = np.abs(pz - const["end_z"])
        at_end = (end_dist <= corridor) & ((end_vert <= vertical) | ground)
        out = {name: np.zeros(n) for name in ("dist", "vert", "early", "late", "along")}
        inside = np.zeros(n, np.bool_)
        piece = np.zeros(n, np.int64)
        start, count = self._start[slots], self._count[slots]
        done = np.cumsum(count)
        s = 0
        while s < n:  # blocks of at most _TABLE_BLOCK pairs (or one position)
            e = max(s + 1, int(np.searchsorted(done, done[s] - count[s] + _TABLE_BLOCK, "right")))
            r = slice(s, e)
            block = self._block(px[r], py[r], pz[r], pt[r], corridor[r], vertical[r],
                                start[r], count[r])
            for name, values in zip(("dist", "vert", "early", "late", "along"), block[:5],
                                    strict=True):
                out[name][r] = values
            inside[r], piece[r] = block[5], block[6]
            at_end[r] &= self._segment[start[r] + block[7]] == self._last_segment[slots[r]]
            s = e
        return Conformance(out["dist"], out["vert"], out["early"], out["late"], inside, at_end,
                           out["along"], piece)

    def _block(self, px: F64, py: F64, pz: F64, pt: F64, corridor: F64, vertical: F64,
               start: I64, count: I64) -> tuple[F64, F64, F64, F64, F64, Bool, I64, I64]:
        """Every (position, piece of its volume) pair of a block, reduced per position: distance,
        vertical, early, late, along, inside, chosen piece, piece deciding `at_end`."""
        first = np.cumsum(count) - count  # each position's first pair
        local = within_runs(count)  # its piece
        g = np.repeat(start, count) + local
        ax, ay, vx, vy, inv, zlo, zhi, t0, t1 = np.take(self._piece, g, axis=1)
        ex, ey = np.repeat(px, count) - ax, np.repeat(py, count) - ay
        u = np.clip((ex * vx + ey * vy) * inv, 0.0, 1.0)
        dh = np.hypot(ex - u * vx, ey - u * vy)
        z = np.repeat(pz, count)
        dv = np.maximum(zlo - z, 0.0) + np.maximum(z - zhi, 0.0)
        tt = np.repeat(pt, count)
        early, late = np.maximum(t0 - tt, 0.0), np.maximum(tt - t1, 0.0)
        off_time = early + late
        corridor_p, vertical_p = np.repeat(corridor, count), np.repeat(vertical, count)
        in_h = dh <= corridor_p
        in_space = in_h & (dv <= vertical_p)
        any_in = np.logical_or.reduceat(in_space, first)
        excess = np.maximum(dh / corridor_p, dv / vertical_p)
        key = np.where(np.repeat(any_in, count), np.where(in_space, off_time, np.inf), excess)
        best = _last_argmin(key, first, count, local)
        end_piece = _last_argmin(np.where(in_h, off_time, np.inf), first, count, local)
        k = first + best
        gk = g[k]
        sa, sb = self._sa, self._sb
        along = sa[gk] + u[k] * (sb[gk] - sa[gk])
        return dh[k], dv[k], early[k], late[k], along, any_in, best, end_piece


def _grown(a: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    grown = np.zeros(size, a.dtype)
    grown[: a.size] = a
    return grown


def _last_argmin(key: F64, first: I64, count: I64, local: I64) -> I64:
    """Per segment (`count` keys from `first`), the local index of its smallest key; ties go to
    the last, as `conformance`'s reversed argmin does."""
    low = np.minimum.reduceat(key, first)
    return np.maximum.reduceat(np.where(key == np.repeat(low, count), local, -1), first)
