"""Zones (geofences) in 3D and time: the model, GeoJSON Feature parsing and serialisation.

A `Zone` is a horizontal shape in WGS84 lon/lat degrees, an altitude band and an activity window.

Horizontal shape: a Polygon or MultiPolygon (edges straight in lon/lat, boundary inside the zone),
or a Point with `radius_m`, whose `polygon` is the geodesic circle: vertices placed on the WGS84
ellipsoid by a transverse Mercator projection centred on the circle, as many as keep every point
of the outline within 0.1 m of the true circle. Shapes that span more than 180 degrees of
longitude (i.e. cross the antimeridian), and circles reaching a pole, are refused: split them.

Band: `lower_m <= height <= upper_m`, both ends included; None is no limit on that side.
`reference` (`agl`, `amsl`, `wgs84`) is what `lower_m` is measured from, and `upper_m` too unless
`upper_reference` names another (ED-269 zones often run from 0 m AGL to a ceiling AMSL).

Time: active when `start <= t <= end` (Unix s, None = open) and, if `schedule` is set, inside one
of its weekly UTC periods `(weekdays, start_min, end_min)`: weekdays 0=Monday..6=Sunday, minutes
of the day; the period covers `[start_min, end_min)` on each weekday, running past midnight into
the next day when `end_min <= start_min` (equal means 24 h).

GeoJSON properties beyond API.md section 3 (optional, written only when used):
`upper_reference`, `schedule` as `[{"days": ["MON", ...], "start": "08:00", "end": "18:00"}]`
in UTC, and `ceiling_agl_m`: inside the shape, while active, the AGL ceiling for UAVs (all, or
only the `authorized` ones when listed) is raised to this height (geofence/ceiling.py).

Stored zones are read back with `zones_from_trusted` (properties as `zone_to_feature` wrote them,
geometries already built), which repeats none of the validation they passed on the way in.

Local metric frame (`tm_forward`, `tm_inverse`): transverse Mercator on WGS84 (Krueger series to
n^4, sub-millimetre) with scale 1 on a central meridian chosen per zone; the scale error at x
metres from that meridian is x^2 / (2 R^2): 3e-5 (3 mm per 100 m) at 50 km.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from lowalt.errors import ValidationError

__all__ = [
    "DEFAULT_APPROACH_M",
    "MINUTES_PER_WEEK",
    "REFERENCES",
    "RESTRICTIONS",
    "WEEKDAYS",
    "SchedulePeriod",
    "Zone",
    "check_band",
    "check_circle",
    "check_period",
    "circle_outlines",
    "circle_polygons",
    "format_time",
    "geometry_to_json",
    "minute_of_week",
    "parse_time",
    "polygon_from_rings",
    "position_from_json",
    "schedule_week_mask",
    "tm_forward",
    "tm_inverse",
    "zone_from_feature",
    "zone_to_feature",
    "zones_from_trusted",
]

F64 = npt.NDArray[np.float64]
_T = TypeVar("_T", bound=str)
Restriction = Literal["prohibited", "authorization_required", "conditional", "advisory"]
Reference = Literal["agl", "amsl", "wgs84"]
SchedulePeriod = tuple[frozenset[int], int, int]  # (weekdays 0=Mon..6=Sun, start_min, end_min) UTC

RESTRICTIONS: tuple[Restriction, ...] = (
    "prohibited",
    "authorization_required",
    "conditional",
    "advisory",
)
REFERENCES: tuple[Reference, ...] = ("agl", "amsl", "wgs84")
WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
DEFAULT_APPROACH_M = 100.0
MAX_RADIUS_M = 500_000.0
MINUTES_PER_WEEK = 7 * 1440

_ID_RE = re.compile(r"[A-Za-z0-9._:#-]{1,64}")
_UAV_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_HHMM_RE = re.compile(r"([01]\d|2[0-4]):([0-5]\d)")
_MAX_NAME = 200
_CIRCLE_TOLERANCE_M = 0.1
_CHUNK = 16_384

# WGS84 and the Krueger n-series coefficients of the transverse Mercator projection.
_A_M = 6_378_137.0
_F = 1.0 / 298.257_223_563
_N = _F / (2.0 - _F)
_E2 = _F * (2.0 - _F)
_RECT_A = _A_M / (1.0 + _N) * (1.0 + _N**2 / 4.0 + _N**4 / 64.0)
_ALPHA = (
    _N / 2 - 2 * _N**2 / 3 + 5 * _N**3 / 16 + 41 * _N**4 / 180,
    13 * _N**2 / 48 - 3 * _N**3 / 5 + 557 * _N**4 / 1440,
    61 * _N**3 / 240 - 103 * _N**4 / 140,
    49561 * _N**4 / 161280,
)
_BETA = (
    _N / 2 - 2 * _N**2 / 3 + 37 * _N**3 / 96 - _N**4 / 360,
    _N**2 / 48 + _N**3 / 15 - 437 * _N**4 / 1440,
    17 * _N**3 / 480 - 37 * _N**4 / 840,
    4397 * _N**4 / 161280,
)
_DELTA = (
    2 * _N - 2 * _N**2 / 3 - 2 * _N**3 + 116 * _N**4 / 45,
    7 * _N**2 / 3 - 8 * _N**3 / 5 - 227 * _N**4 / 45,
    56 * _N**3 / 15 - 136 * _N**4 / 35,
    4279 * _N**4 / 630,
)
_E = math.sqrt(_E2)


def _krueger(xi: F64, eta: F64, coef: Sequence[float]) -> tuple[F64, F64]:
    """Real and imaginary parts of sum_j coef[j-1] sin(2j (xi + i eta)), by Clenshaw."""
    s2, c2 = np.sin(2.0 * xi), np.cos(2.0 * xi)
    sh2, ch2 = np.sinh(2.0 * eta), np.cosh(2.0 * eta)
    ar, ai = 2.0 * c2 * ch2, -2.0 * s2 * sh2  # 2 cos(2z)
    br, bi = ar * coef[-1] + coef[-2], ai * coef[-1]  # y_{J-1}; y_J = coef[-1]
    pr, pi = np.full_like(xi, coef[-1]), np.zeros_like(xi)
    for a in reversed(coef[:-2]):
        br, bi, pr, pi = a + ar * br - ai * bi - pr, ar * bi + ai * br - pi, br, bi
    sr, si = s2 * ch2, c2 * sh2  # sin(2z)
    return br * sr - bi * si, br * si + bi * sr


def _chunked(
    core: Callable[[F64, F64, F64], tuple[F64, F64]],
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    c: npt.ArrayLike,
) -> tuple[F64, F64]:
    """Apply an elementwise kernel in cache-sized chunks (large temporaries cost page faults)."""
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and isinstance(c, np.ndarray)
            and a.ndim == 1 and a.dtype == b.dtype == c.dtype == np.float64
            and a.shape == b.shape == c.shape and a.size <= _CHUNK):
        return core(a, b, c)  # one chunk of like arrays (a batch's pairs): nothing to prepare
    arrays = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, c)))
    shape = arrays[0].shape
    a_f, b_f, c_f = (v.ravel() for v in arrays)
    out1, out2 = np.empty(a_f.size), np.empty(a_f.size)
    for s in range(0, a_f.size, _CHUNK):
        out1[s : s + _CHUNK], out2[s : s + _CHUNK] = core(
            a_f[s : s + _CHUNK], b_f[s : s + _CHUNK], c_f[s : s + _CHUNK]
        )
    return out1.reshape(shape), out2.reshape(shape)


def tm_forward(
    lon_deg: npt.ArrayLike, lat_deg: npt.ArrayLike, lon0_deg: npt.ArrayLike
) -> tuple[F64, F64]:
    """Transverse Mercator (x east, y north from the equator, metres) about meridian lon0."""
    return _chunked(_tm_forward, lon_deg, lat_deg, lon0_deg)


def tm_inverse(x_m: npt.ArrayLike, y_m: npt.ArrayLike, lon0_deg: npt.ArrayLike) -> tuple[F64, F64]:
    """Inverse of `tm_forward`: (lon, lat) degrees."""
    return _chunked(_tm_inverse, x_m, y_m, lon0_deg)


def _tm_forward(lon_deg: F64, lat_deg: F64, lon0_deg: F64) -> tuple[F64, F64]:
    lat = np.radians(lat_deg)
    dlon = np.radians(lon_deg - lon0_deg)
    sin_lat = np.sin(lat)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # poles: tau = +-inf
        tau = np.sinh(np.arctanh(sin_lat) - _E * np.arctanh(_E * sin_lat))
        xi_p = np.arctan2(tau, np.cos(dlon))
        eta_p = np.arctanh(np.sin(dlon) / np.sqrt(1.0 + tau * tau))
    d_xi, d_eta = _krueger(xi_p, eta_p, _ALPHA)
    return _RECT_A * (eta_p + d_eta), _RECT_A * (xi_p + d_xi)


def _tm_inverse(x_m: F64, y_m: F64, lon0_deg: F64) -> tuple[F64, F64]:
    xi = y_m / _RECT_A
    eta = x_m / _RECT_A
    d_xi, d_eta = _krueger(xi, eta, _BETA)
    xi_p, eta_p = xi - d_xi, eta - d_eta
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    lat = chi.copy()
    for j, d in enumerate(_DELTA, start=1):
        lat += d * np.sin(2 * j * chi)
    lon = lon0_deg + np.degrees(np.arctan2(np.sinh(eta_p), np.cos(xi_p)))
    return lon, np.degrees(lat)


def _circle_vertex_count(radius_m: F64) -> npt.NDArray[np.int64]:
    """Vertices so the outline stays within the tolerance of the circle (chord sagitta halved)."""
    n = np.ceil(np.pi * np.sqrt(radius_m / (4.0 * _CIRCLE_TOLERANCE_M)))
    return np.clip(n, 16, 4096).astype(np.int64)


def circle_outlines(
    lon: npt.ArrayLike, lat: npt.ArrayLike, radius_m: npt.ArrayLike
) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.object_]]:
    """Polygons approximating geodesic circles, in degrees and in metres (`tm_forward` about
    each centre's meridian), vectorised over the three arrays.

    Vertices sit at 2/(1+cos(pi/n)) times the radius, so vertices and chord midpoints miss the
    circle by the same small amount. Radii are measured in the projection about the centre's own
    meridian, lengthened by the projection's scale x^2/2R^2 integrated along the radius.
    """
    lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    r_a = np.atleast_1d(np.asarray(radius_m, dtype=np.float64))
    if lon_a.size == 0:
        return np.empty(0, dtype=object), np.empty(0, dtype=object)
    n = _circle_vertex_count(r_a)
    owner = np.repeat(np.arange(lon_a.size), n)
    first = np.cumsum(n) - n
    k = np.arange(owner.size) - first[owner]
    theta = 2.0 * np.pi * k / n[owner]
    r_v = r_a[owner] * 2.0 / (1.0 + np.cos(np.pi / n[owner]))
    sin_lat0 = np.sin(np.radians(lat_a))
    w = 1.0 - _E2 * sin_lat0**2
    r2 = (_A_M**2 * (1.0 - _E2) / w**2)[owner]  # Gaussian radius squared: M * N
    r_tm = r_v + r_v**3 * np.sin(theta) ** 2 / (6.0 * r2)
    x0, y0 = tm_forward(lon_a, lat_a, lon_a)
    vx = x0[owner] + r_tm * np.sin(theta)
    vy = y0[owner] + r_tm * np.cos(theta)
    vlon, vlat = tm_inverse(vx, vy, lon_a[owner])
    ring_of = np.repeat(np.arange(lon_a.size), n + 1)
    outlines = []
    for a, b in ((vlon, vlat), (vx, vy)):
        coords = np.column_stack([a, b])
        closed = np.insert(coords, (first + n), coords[first], axis=0)  # repeat first vertex
        rings = shapely.linearrings(closed, indices=ring_of)
        outlines.append(cast(npt.NDArray[np.object_], shapely.polygons(rings)))
    return outlines[0], outlines[1]


def circle_polygons(
    lon: npt.ArrayLike, lat: npt.ArrayLike, radius_m: npt.ArrayLike
) -> npt.NDArray[np.object_]:
    """The degree polygons of `circle_outlines`."""
    return circle_outlines(lon, lat, radius_m)[0]


def minute_of_week(t: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Minutes since Monday 00:00 UTC for Unix times (1970-01-01 was a Thursday)."""
    minutes = np.floor_divide(np.nan_to_num(np.asarray(t, dtype=np.float64)), 60.0)
    return ((minutes.astype(np.int64) + 3 * 1440) % MINUTES_PER_WEEK).astype(np.int64)


def _period_length(start_min: int, end_min: int) -> int:
    return end_min - start_min if end_min > start_min else 1440 - start_min + end_min


def schedule_week_mask(schedule: Sequence[SchedulePeriod]) -> npt.NDArray[np.bool_]:
    """The 10080 minutes of the UTC week, True where the schedule is active."""
    mask = np.zeros(MINUTES_PER_WEEK, dtype=np.bool_)
    for days, start_min, end_min in schedule:
        span = np.arange(_period_length(start_min, end_min))
        for day in days:
            mask[(day * 1440 + start_min + span) % MINUTES_PER_WEEK] = True
    return mask


@dataclass(frozen=True)
class Zone:
    """One geofence; see the module docstring for what each field means."""

    id: str
    name: str
    restriction: Restriction
    geometry: BaseGeometry  # Polygon | MultiPolygon | Point (with radius_m), lon/lat degrees
    lower_m: float | None
    upper_m: float | None
    reference: Reference = "agl"
    start: float | None = None
    end: float | None = None
    schedule: tuple[SchedulePeriod, ...] | None = None
    approach_m: float = DEFAULT_APPROACH_M
    authorized: frozenset[str] = frozenset()
    radius_m: float | None = None
    upper_reference: Reference | None = None  # None: same as `reference`
    ceiling_agl_m: float | None = None  # AGL ceiling inside the zone while active (if higher)
    source_doc: Mapping[str, object] | None = field(
        default=None, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        if isinstance(self.geometry, Point):
            if self.radius_m is None or not self.radius_m > 0.0:
                raise ValueError(f"zone {self.id}: a Point zone needs radius_m > 0")
        elif not isinstance(self.geometry, Polygon | MultiPolygon):
            raise ValueError(f"zone {self.id}: geometry must be Polygon, MultiPolygon or Point")

    @property
    def upper_ref(self) -> Reference:
        """What `upper_m` is measured from."""
        return self.upper_reference or self.reference

    @cached_property
    def polygon(self) -> Polygon | MultiPolygon:
        """The horizontal shape as an areal geometry (the circle's polygon for a Point zone)."""
        if isinstance(self.geometry, Point):
            poly = circle_polygons(self.geometry.x, self.geometry.y, self.radius_m or 0.0)[0]
            return cast(Polygon, poly)
        return cast(Polygon | MultiPolygon, self.geometry)

    def active_at(self, t: float) -> bool:
        """Whether the zone applies at Unix time t (window and weekly schedule)."""
        if self.start is not None and not t >= self.start:
            return False
        if self.end is not None and not t <= self.end:
            return False
        if self.schedule is None:
            return True
        minute = int(minute_of_week(t))
        for days, start_min, end_min in self.schedule:
            length = _period_length(start_min, end_min)
            if any((minute - day * 1440 - start_min) % MINUTES_PER_WEEK < length for day in days):
                return True
        return False


# --- validation helpers, shared with the ED-269 importer -------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: object, path: str) -> float:
    if not _is_number(value):
        raise ValidationError(path, "must be a number")
    result = float(cast(float, value))
    if not math.isfinite(result):
        raise ValidationError(path, "must be finite")
    return result


def position_from_json(value: object, path: str) -> tuple[float, float]:
    """A [lon, lat] or [lon, lat, alt] position; the altitude is dropped."""
    if not isinstance(value, list | tuple) or len(value) not in (2, 3):
        raise ValidationError(path, "must be [lon, lat] or [lon, lat, alt]")
    lon = _number(value[0], f"{path}[0]")
    lat = _number(value[1], f"{path}[1]")
    if len(value) == 3:
        _number(value[2], f"{path}[2]")
    if not -180.0 <= lon <= 180.0:
        raise ValidationError(f"{path}[0]", f"longitude {lon} outside [-180, 180]")
    if not -90.0 <= lat <= 90.0:
        raise ValidationError(f"{path}[1]", f"latitude {lat} outside [-90, 90]")
    return lon, lat


def _ring_from_json(value: object, path: str) -> list[tuple[float, float]]:
    if not isinstance(value, list | tuple):
        raise ValidationError(path, "must be a list of positions")
    if len(value) < 4:
        raise ValidationError(path, f"a ring needs at least 4 positions, got {len(value)}")
    ring = [position_from_json(p, f"{path}[{i}]") for i, p in enumerate(value)]
    if ring[0] != ring[-1]:
        raise ValidationError(path, "ring is not closed (first position != last)")
    return ring


def _check_extent(geom: BaseGeometry, path: str) -> None:
    minx, _, maxx, _ = geom.bounds
    if maxx - minx > 180.0:
        raise ValidationError(
            path, "spans more than 180 degrees of longitude; split it at the antimeridian"
        )


def polygon_from_rings(value: object, path: str) -> Polygon:
    """A GeoJSON Polygon's coordinates (shell, then holes), checked for validity."""
    if not isinstance(value, list | tuple) or not value:
        raise ValidationError(path, "must be a non-empty list of rings")
    rings = [_ring_from_json(r, f"{path}[{i}]") for i, r in enumerate(value)]
    poly = Polygon(rings[0], rings[1:])
    reason = shapely.is_valid_reason(poly)
    if reason != "Valid Geometry":
        raise ValidationError(path, f"invalid polygon: {reason}")
    _check_extent(poly, path)
    return poly


def parse_time(value: object, path: str, *, naive_is_utc: bool = False) -> float:
    """ISO 8601 text (with an offset or Z, unless naive_is_utc) or Unix seconds -> Unix seconds."""
    if _is_number(value):
        return _number(value, path)
    if not isinstance(value, str):
        raise ValidationError(path, "must be an ISO 8601 time or Unix seconds")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(path, f"not an ISO 8601 time: {value!r}") from None
    if when.tzinfo is None:
        if not naive_is_utc:
            raise ValidationError(path, "needs a UTC offset or Z")
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_time(t: float) -> str:
    """Unix seconds -> ISO 8601 UTC with a Z."""
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _parse_hhmm(value: object, path: str) -> int:
    if not isinstance(value, str) or not (m := _HHMM_RE.fullmatch(value)):
        raise ValidationError(path, "must be HH:MM (UTC)")
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    if minutes > 1440:
        raise ValidationError(path, "after 24:00")
    return minutes


def check_period(days: frozenset[int], start_min: int, end_min: int, path: str) -> SchedulePeriod:
    """Validate one weekly period (see the module docstring)."""
    if not days:
        raise ValidationError(path, "needs at least one weekday")
    if start_min >= 1440:
        raise ValidationError(path, "start must be before 24:00")
    return days, start_min, end_min


def _schedule_from_json(value: object, path: str) -> tuple[SchedulePeriod, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValidationError(path, "must be a list of {days, start, end}")
    periods = []
    for i, item in enumerate(value):
        ipath = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(ipath, "must be an object {days, start, end}")
        days = item.get("days")
        if not isinstance(days, list) or not all(d in WEEKDAYS for d in days):
            raise ValidationError(f"{ipath}.days", f"must be a list of {', '.join(WEEKDAYS)}")
        day_set = frozenset(WEEKDAYS.index(d) for d in days)
        start_min = _parse_hhmm(item.get("start"), f"{ipath}.start")
        end_min = _parse_hhmm(item.get("end"), f"{ipath}.end")
        periods.append(check_period(day_set, start_min, end_min, ipath))
    return tuple(periods)


def _schedule_to_json(schedule: Sequence[SchedulePeriod]) -> list[dict[str, object]]:
    return [
        {
            "days": [WEEKDAYS[d] for d in sorted(days)],
            "start": f"{start_min // 60:02d}:{start_min % 60:02d}",
            "end": f"{end_min // 60:02d}:{end_min % 60:02d}",
        }
        for days, start_min, end_min in schedule
    ]


def check_circle(lon: float, lat: float, radius_m: float, path: str) -> None:
    """Refuse a radius out of range, or a circle that reaches a pole or the antimeridian."""
    if not 0.0 < radius_m <= MAX_RADIUS_M:
        raise ValidationError(path, f"must be > 0 and <= {MAX_RADIUS_M:g} m")
    dlat = radius_m / 110_000.0 * 1.01
    if abs(lat) + dlat >= 89.0:
        raise ValidationError(path, "circle reaches too close to a pole")
    dlon = dlat / math.cos(math.radians(abs(lat) + dlat))
    if not (-180.0 < lon - dlon and lon + dlon < 180.0):
        raise ValidationError(path, "circle crosses the antimeridian")


def _choice(value: object, options: Sequence[_T], path: str) -> _T:
    if value not in options:
        raise ValidationError(path, f"must be one of {', '.join(options)}")
    return cast(_T, value)


def check_band(
    lower_m: float | None,
    upper_m: float | None,
    reference: Reference,
    upper_reference: Reference | None,
    path: str,
) -> None:
    """lower <= upper when both are measured from the same reference."""
    if lower_m is not None and upper_m is not None and upper_reference in (None, reference):
        if lower_m > upper_m:
            raise ValidationError(path, f"upper limit {upper_m} is below lower limit {lower_m}")


def zone_from_feature(feature: object, *, new_id: Callable[[], str]) -> Zone:
    """Validate a GeoJSON Feature (API.md section 3) into a Zone; `new_id` names an unnamed one."""
    if not isinstance(feature, dict):
        raise ValidationError("feature", "must be a GeoJSON Feature object")
    if feature.get("type") != "Feature":
        raise ValidationError("type", "must be 'Feature'")
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise ValidationError("properties", "must be an object")

    zone_id = props.get("id", feature.get("id"))
    if zone_id is None:
        zone_id = new_id()
    if not isinstance(zone_id, str) or not _ID_RE.fullmatch(zone_id):
        raise ValidationError("properties.id", "must be 1..64 of [A-Za-z0-9._:#-]")
    name = props.get("name", "")
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise ValidationError("properties.name", f"must be text of at most {_MAX_NAME} characters")
    restriction = _choice(props.get("restriction"), RESTRICTIONS, "properties.restriction")

    lower_m = upper_m = None
    if props.get("lower_m") is not None:
        lower_m = _number(props["lower_m"], "properties.lower_m")
    if props.get("upper_m") is not None:
        upper_m = _number(props["upper_m"], "properties.upper_m")
    if "reference" in props or lower_m is not None or upper_m is not None:
        reference = _choice(props.get("reference"), REFERENCES, "properties.reference")
    else:
        reference = "agl"
    upper_reference = None
    if props.get("upper_reference") is not None:
        upper_reference = _choice(
            props["upper_reference"], REFERENCES, "properties.upper_reference"
        )
        if upper_reference == reference:
            upper_reference = None
    check_band(lower_m, upper_m, reference, upper_reference, "properties.upper_m")

    start = end = None
    if props.get("start") is not None:
        start = parse_time(props["start"], "properties.start")
    if props.get("end") is not None:
        end = parse_time(props["end"], "properties.end")
    if start is not None and end is not None and end < start:
        raise ValidationError("properties.end", "is before start")
    schedule = _schedule_from_json(props.get("schedule"), "properties.schedule")

    approach_m = DEFAULT_APPROACH_M
    if props.get("approach_m") is not None:
        approach_m = _number(props["approach_m"], "properties.approach_m")
        if approach_m < 0.0:
            raise ValidationError("properties.approach_m", "must be >= 0")

    ceiling_agl_m = None
    if props.get("ceiling_agl_m") is not None:
        ceiling_agl_m = _number(props["ceiling_agl_m"], "properties.ceiling_agl_m")
        if ceiling_agl_m < 0.0:
            raise ValidationError("properties.ceiling_agl_m", "must be >= 0")

    authorized = props.get("authorized")
    if authorized is None:
        authorized = []
    if not isinstance(authorized, list):
        raise ValidationError("properties.authorized", "must be a list of uav ids")
    for i, uav in enumerate(authorized):
        if not isinstance(uav, str) or not _UAV_RE.fullmatch(uav):
            raise ValidationError(f"properties.authorized[{i}]", "not a valid uav id")

    geometry, radius_m = _geometry_from_json(feature.get("geometry"), props.get("radius_m"))
    return Zone(
        id=zone_id,
        name=name,
        restriction=restriction,
        geometry=geometry,
        lower_m=lower_m,
        upper_m=upper_m,
        reference=reference,
        start=start,
        end=end,
        schedule=schedule,
        approach_m=approach_m,
        authorized=frozenset(cast(list[str], authorized)),
        radius_m=radius_m,
        upper_reference=upper_reference,
        ceiling_agl_m=ceiling_agl_m,
    )


def zones_from_trusted(
    properties: Sequence[Mapping[str, Any]], geometries: Sequence[BaseGeometry]
) -> list[Zone]:
    """Zones from the properties `zone_to_feature` wrote and their geometries (a Point's centre
    for a circle), without validating again: for zones stored after `zone_from_feature`."""
    zones = []
    for props, geometry in zip(properties, geometries, strict=True):
        start, end, schedule = props["start"], props["end"], props.get("schedule")
        zones.append(Zone(
            id=props["id"],
            name=props["name"],
            restriction=props["restriction"],
            geometry=geometry,
            lower_m=props["lower_m"],
            upper_m=props["upper_m"],
            reference=props["reference"],
            start=None if start is None else datetime.fromisoformat(start).timestamp(),
            end=None if end is None else datetime.fromisoformat(end).timestamp(),
            schedule=None if schedule is None else _schedule_from_json(schedule, "schedule"),
            approach_m=props["approach_m"],
            authorized=frozenset(props["authorized"]),
            radius_m=props.get("radius_m"),
            upper_reference=props.get("upper_reference"),
            ceiling_agl_m=props.get("ceiling_agl_m"),
        ))
    return zones


def _geometry_from_json(value: object, radius: object) -> tuple[BaseGeometry, float | None]:
    if not isinstance(value, dict):
        raise ValidationError("geometry", "must be a GeoJSON geometry object")
    kind = value.get("type")
    coords = value.get("coordinates")
    if kind == "Point":
        lon, lat = position_from_json(coords, "geometry.coordinates")
        if radius is None:
            raise ValidationError("properties.radius_m", "required for a Point zone")
        radius_m = _number(radius, "properties.radius_m")
        check_circle(lon, lat, radius_m, "properties.radius_m")
        return Point(lon, lat), radius_m
    if radius is not None:
        raise ValidationError("properties.radius_m", "only for a Point zone")
    if kind == "Polygon":
        return polygon_from_rings(coords, "geometry.coordinates"), None
    if kind == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise ValidationError("geometry.coordinates", "must be a non-empty list of polygons")
        parts = [polygon_from_rings(p, f"geometry.coordinates[{i}]") for i, p in enumerate(coords)]
        multi = MultiPolygon(parts)
        reason = shapely.is_valid_reason(multi)
        if reason != "Valid Geometry":
            raise ValidationError("geometry.coordinates", f"invalid multipolygon: {reason}")
        _check_extent(multi, "geometry.coordinates")
        return multi, None
    raise ValidationError("geometry.type", "must be Polygon, MultiPolygon or Point")


def _rings_json(poly: Polygon) -> list[list[list[float]]]:
    return [[list(c) for c in ring.coords] for ring in (poly.exterior, *poly.interiors)]


def geometry_to_json(geometry: BaseGeometry) -> dict[str, object]:
    """GeoJSON geometry (lists, not tuples, so it compares equal to parsed JSON)."""
    if isinstance(geometry, Point):
        return {"type": "Point", "coordinates": [geometry.x, geometry.y]}
    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": _rings_json(geometry)}
    if isinstance(geometry, MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [_rings_json(p) for p in geometry.geoms]}
    raise TypeError(f"unsupported geometry {geometry.geom_type}")


def zone_to_feature(zone: Zone) -> dict[str, object]:
    """The zone as a GeoJSON Feature with the properties of API.md section 3."""
    props: dict[str, object] = {
        "id": zone.id,
        "name": zone.name,
        "restriction": zone.restriction,
        "lower_m": zone.lower_m,
        "upper_m": zone.upper_m,
        "reference": zone.reference,
        "start": None if zone.start is None else format_time(zone.start),
        "end": None if zone.end is None else format_time(zone.end),
        "approach_m": zone.approach_m,
        "authorized": sorted(zone.authorized),
    }
    if zone.upper_reference is not None:
        props["upper_reference"] = zone.upper_reference
    if zone.radius_m is not None:
        props["radius_m"] = zone.radius_m
    if zone.schedule is not None:
        props["schedule"] = _schedule_to_json(zone.schedule)
    if zone.ceiling_agl_m is not None:
        props["ceiling_agl_m"] = zone.ceiling_agl_m
    return {
        "type": "Feature",
        "id": zone.id,
        "geometry": geometry_to_json(zone.geometry),
        "properties": props,
    }
