"""EUROCAE ED-269 UAS geographical zones (JSON) in and out.

What is read (everything else in a feature is kept in `Zone.source_doc` and given back):

    {"title": str, "description": str, "features": [UASZoneVersion, ...]}   (or a bare list)
    UASZoneVersion
      identifier     str  -> Zone.id; geometry item n >= 2 gives "<identifier>#<n>"
      name           str  -> Zone.name
      restriction    PROHIBITED -> prohibited, REQ_AUTHORISATION -> authorization_required,
                     CONDITIONAL -> conditional, NO_RESTRICTION -> advisory
      applicability  [{permanent: YES|NO, startDateTime?, endDateTime?,
                       schedule?: [{day: [MON..SUN|ANY], startTime: "hh:mm[:ss[.s]]Z",
                                    endTime: ...}]}]
      geometry       [{uomDimensions: M|FT,
                       lowerLimit?, lowerVerticalReference: AGL|AMSL|WGS84,
                       upperLimit?, upperVerticalReference: AGL|AMSL|WGS84,
                       horizontalProjection: {type: Circle, center: [lon, lat], radius}
                                           | {type: Polygon, coordinates: [ring, ...]}}]
      extendedProperties.lowalt   written by `zones_to_ed269` only:
                     {approach_m?, authorized?, multipolygon?, ceiling_agl_m?}

How it maps onto `Zone` (the simplest faithful model):
- Each geometry item is its own Zone: items carry their own band, so merging would lose it. The
  exception is a feature lowalt itself wrote from a MultiPolygon zone (`multipolygon: true`).
- Limits are converted to metres (FT x 0.3048); a missing limit is no limit. The lower limit's
  reference is `Zone.reference`; the upper one's is `Zone.upper_reference` when it differs.
- Applicability: start/end are honoured whenever given (no offset = UTC); `permanent: NO` needs
  one of start, end or schedule. Several periods must share start and end (a Zone has one
  window; anything else is refused); their schedules are united, and a period without a schedule
  makes the zone active all through the window. Schedule times with an offset are moved to UTC,
  shifting their weekdays when they cross midnight; seconds are dropped.
- ED-269 has no field that authorises flight above the national AGL ceiling (`Zone.ceiling_agl_m`,
  metres AGL): it travels in `extendedProperties.lowalt.ceiling_agl_m`, read back on import.
- An invalid document is refused whole: the ValidationError's field is the path, e.g.
  "features[1].geometry[0].horizontalProjection.radius", and its reason names the identifier.

Export gives an imported zone's feature back verbatim when every zone it produced is still
present and unchanged; an unchanged survivor of a partly deleted feature is given back as that
feature cut down to its own item, renamed to its zone id; any other zone is written afresh.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from geofence.zones import (
    DEFAULT_APPROACH_M,
    REFERENCES,
    WEEKDAYS,
    Reference,
    Restriction,
    SchedulePeriod,
    Zone,
    check_band,
    check_circle,
    check_period,
    format_time,
    parse_time,
    polygon_from_rings,
    position_from_json,
)
from lowalt.errors import ValidationError

__all__ = ["FT_M", "zones_from_ed269", "zones_to_ed269"]

FT_M = 0.3048
_UNITS = {"M": 1.0, "FT": FT_M}
_RESTRICTION_IN: dict[str, Restriction] = {
    "PROHIBITED": "prohibited",
    "REQ_AUTHORISATION": "authorization_required",
    "CONDITIONAL": "conditional",
    "NO_RESTRICTION": "advisory",
}
_RESTRICTION_OUT = {v: k for k, v in _RESTRICTION_IN.items()}
_ID_RE = re.compile(r"[A-Za-z0-9._:#-]{1,64}")
_UAV_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_TIME_RE = re.compile(
    r"(?P<h>[01]\d|2[0-4]):(?P<m>[0-5]\d)(?::(?P<s>[0-5]\d)(?:\.\d+)?)?"
    r"(?P<tz>Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)?"
)
_Window = tuple[float | None, float | None]


def _fail(path: str, reason: str) -> ValidationError:
    return ValidationError(path, reason)


def _get_list(obj: Mapping[str, object], key: str, path: str) -> list[object]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise _fail(f"{path}.{key}", "must be a list")
    return value


def _limit_m(value: object, unit: float, path: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(path, "must be a finite number")
    return float(value) * unit


def _reference(value: object, path: str) -> Reference:
    if not isinstance(value, str) or value.lower() not in REFERENCES:
        raise _fail(path, "must be AGL, AMSL or WGS84")
    return cast(Reference, value.lower())


def _schedule_time(value: object, path: str) -> tuple[int, int]:
    """'hh:mm[:ss[.s]][Z|+hh:mm]' -> (minute of day, UTC offset in minutes)."""
    if not isinstance(value, str) or not (m := _TIME_RE.fullmatch(value)):
        raise _fail(path, "must be a time hh:mm[:ss]Z")
    minute = int(m["h"]) * 60 + int(m["m"])
    if minute > 1440 or (minute == 1440 and int(m["s"] or 0)):
        raise _fail(path, "after 24:00")
    tz = m["tz"]
    offset = 0
    if tz and tz != "Z":
        digits = tz[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:])) * (1 if tz[0] == "+" else -1)
    return minute, offset


def _daily_period(item: object, path: str) -> SchedulePeriod:
    if not isinstance(item, dict):
        raise _fail(path, "must be an object {day, startTime, endTime}")
    days = item.get("day")
    if not isinstance(days, list) or not days or any(d not in (*WEEKDAYS, "ANY") for d in days):
        raise _fail(f"{path}.day", "must be a non-empty list of MON..SUN or ANY")
    local_days = set(range(7)) if "ANY" in days else {WEEKDAYS.index(d) for d in days}
    start, start_off = _schedule_time(item.get("startTime"), f"{path}.startTime")
    end, end_off = _schedule_time(item.get("endTime"), f"{path}.endTime")
    if start >= 1440:
        raise _fail(f"{path}.startTime", "must be before 24:00")
    if start_off == 0 and end_off == 0:
        return check_period(frozenset(local_days), start, end, path)
    start_utc, end_utc = start - start_off, end - end_off
    length = (end_utc - start_utc) % 1440 or 1440
    shift = start_utc // 1440
    start_utc -= shift * 1440
    end_utc = start_utc if length == 1440 else (start_utc + length) % 1440
    utc_days = frozenset((d + shift) % 7 for d in local_days)
    return check_period(utc_days, start_utc, end_utc, path)


def _applicability(
    feature: Mapping[str, object], path: str
) -> tuple[float | None, float | None, tuple[SchedulePeriod, ...] | None]:
    periods = feature.get("applicability")
    if periods is None or periods == []:
        return None, None, None
    if not isinstance(periods, list):
        raise _fail(f"{path}.applicability", "must be a list")
    window: _Window | None = None
    schedule: list[SchedulePeriod] | None = []
    for k, period in enumerate(periods):
        ppath = f"{path}.applicability[{k}]"
        if not isinstance(period, dict):
            raise _fail(ppath, "must be an object")
        permanent = period.get("permanent", "YES")
        if permanent not in ("YES", "NO"):
            raise _fail(f"{ppath}.permanent", "must be YES or NO")
        start = end = None
        if period.get("startDateTime") is not None:
            start = parse_time(period["startDateTime"], f"{ppath}.startDateTime", naive_is_utc=True)
        if period.get("endDateTime") is not None:
            end = parse_time(period["endDateTime"], f"{ppath}.endDateTime", naive_is_utc=True)
        if start is not None and end is not None and end < start:
            raise _fail(f"{ppath}.endDateTime", "is before startDateTime")
        raw_schedule = period.get("schedule")
        if permanent == "NO" and start is None and end is None and not raw_schedule:
            raise _fail(ppath, "permanent NO needs startDateTime, endDateTime or schedule")
        if window is not None and window != (start, end):
            raise _fail(ppath, "periods with different start/end are not supported: split the zone")
        window = (start, end)
        if raw_schedule is None:
            schedule = None
            continue
        if not isinstance(raw_schedule, list) or not raw_schedule:
            raise _fail(f"{ppath}.schedule", "must be a non-empty list")
        items = [_daily_period(d, f"{ppath}.schedule[{i}]") for i, d in enumerate(raw_schedule)]
        if schedule is not None:
            schedule.extend(items)
    assert window is not None
    return window[0], window[1], None if schedule is None else tuple(schedule)


def _projection(value: object, unit: float, path: str) -> tuple[BaseGeometry, float | None]:
    if not isinstance(value, dict):
        raise _fail(path, "must be an object")
    kind = value.get("type")
    if kind == "Circle":
        lon, lat = position_from_json(value.get("center"), f"{path}.center")
        radius = _limit_m(value.get("radius"), unit, f"{path}.radius")
        if radius is None:
            raise _fail(f"{path}.radius", "required for a Circle")
        check_circle(lon, lat, radius, f"{path}.radius")
        return Point(lon, lat), radius
    if kind == "Polygon":
        coords = value.get("coordinates")
        if isinstance(coords, list) and coords and isinstance(coords[0], list):
            if coords[0] and not isinstance(coords[0][0], list):
                coords = [coords]  # a single ring written without the list of rings around it
        return polygon_from_rings(coords, f"{path}.coordinates"), None
    raise _fail(f"{path}.type", "must be Circle or Polygon")


def _extension(
    feature: Mapping[str, object], path: str
) -> tuple[float, frozenset[str], bool, float | None]:
    """What ED-269 has no field for: approach_m, authorized, multipolygon, ceiling_agl_m."""
    ext = feature.get("extendedProperties")
    if not isinstance(ext, dict) or not isinstance(ext.get("lowalt"), dict):
        return DEFAULT_APPROACH_M, frozenset(), False, None
    own = ext["lowalt"]
    epath = f"{path}.extendedProperties.lowalt"
    approach = _limit_m(own.get("approach_m", DEFAULT_APPROACH_M), 1.0, f"{epath}.approach_m")
    if approach is None or approach < 0.0:
        raise _fail(f"{epath}.approach_m", "must be a number >= 0")
    authorized = own.get("authorized", [])
    if not isinstance(authorized, list) or not all(
        isinstance(u, str) and _UAV_RE.fullmatch(u) for u in authorized
    ):
        raise _fail(f"{epath}.authorized", "must be a list of uav ids")
    multipolygon = own.get("multipolygon", False)
    if not isinstance(multipolygon, bool):
        raise _fail(f"{epath}.multipolygon", "must be true or false")
    ceiling = _limit_m(own.get("ceiling_agl_m"), 1.0, f"{epath}.ceiling_agl_m")
    if ceiling is not None and ceiling < 0.0:
        raise _fail(f"{epath}.ceiling_agl_m", "must be >= 0")
    return approach, frozenset(authorized), multipolygon, ceiling


def _zones_of_feature(feature: object, path: str) -> list[tuple[Zone, list[int]]]:
    """Zones of one UASZoneVersion, each with the geometry items it came from."""
    if not isinstance(feature, dict):
        raise _fail(path, "must be a UASZoneVersion object")
    ident = feature.get("identifier")
    if not isinstance(ident, str) or not _ID_RE.fullmatch(ident):
        raise _fail(f"{path}.identifier", "must be 1..64 of [A-Za-z0-9._:#-]")
    try:
        return _zones_of_checked(feature, ident, path)
    except ValidationError as exc:
        raise ValidationError(exc.field, f"{exc.reason} (zone {ident!r})") from None


def _zones_of_checked(
    feature: dict[str, object], ident: str, path: str
) -> list[tuple[Zone, list[int]]]:
    name = feature.get("name") or ""
    if not isinstance(name, str) or len(name) > 200:
        raise _fail(f"{path}.name", "must be text of at most 200 characters")
    restriction = feature.get("restriction")
    if restriction not in _RESTRICTION_IN:
        raise _fail(f"{path}.restriction", f"must be one of {', '.join(_RESTRICTION_IN)}")
    start, end, schedule = _applicability(feature, path)
    approach_m, authorized, multipolygon, ceiling_agl_m = _extension(feature, path)
    items = _get_list(feature, "geometry", path)
    if not items:
        raise _fail(f"{path}.geometry", "needs at least one airspace volume")

    volumes = []
    for j, item in enumerate(items):
        gpath = f"{path}.geometry[{j}]"
        if not isinstance(item, dict):
            raise _fail(gpath, "must be an object")
        uom = item.get("uomDimensions")
        if uom not in _UNITS:
            raise _fail(f"{gpath}.uomDimensions", "must be M or FT")
        unit = _UNITS[cast(str, uom)]
        lower = _limit_m(item.get("lowerLimit"), unit, f"{gpath}.lowerLimit")
        upper = _limit_m(item.get("upperLimit"), unit, f"{gpath}.upperLimit")
        lower_ref = upper_ref = None
        if item.get("lowerVerticalReference") is not None or lower is not None:
            lower_ref = _reference(
                item.get("lowerVerticalReference"), f"{gpath}.lowerVerticalReference"
            )
        if item.get("upperVerticalReference") is not None or upper is not None:
            upper_ref = _reference(
                item.get("upperVerticalReference"), f"{gpath}.upperVerticalReference"
            )
        reference: Reference = lower_ref or upper_ref or "agl"
        upper_reference = upper_ref if upper_ref not in (None, reference) else None
        check_band(lower, upper, reference, upper_reference, f"{gpath}.upperLimit")
        shape, radius = _projection(
            item.get("horizontalProjection"), unit, f"{gpath}.horizontalProjection"
        )
        volumes.append((shape, radius, lower, upper, reference, upper_reference))

    def make(
        zone_id: str, shape: BaseGeometry, radius: float | None, band: tuple[object, ...]
    ) -> Zone:
        lower, upper, reference, upper_reference = band
        return Zone(
            id=zone_id,
            name=name,
            restriction=_RESTRICTION_IN[restriction],
            geometry=shape,
            lower_m=cast(float | None, lower),
            upper_m=cast(float | None, upper),
            reference=cast(Reference, reference),
            start=start,
            end=end,
            schedule=schedule,
            approach_m=approach_m,
            authorized=authorized,
            radius_m=radius,
            upper_reference=cast(Reference | None, upper_reference),
            ceiling_agl_m=ceiling_agl_m,
            source_doc=feature,
        )

    if multipolygon:
        bands = {v[2:] for v in volumes}
        if len(bands) != 1 or any(not isinstance(v[0], Polygon) for v in volumes):
            raise _fail(f"{path}.geometry", "multipolygon items must be Polygons with one band")
        parts = MultiPolygon([cast(Polygon, v[0]) for v in volumes])
        if not parts.is_valid:
            raise _fail(f"{path}.geometry", "multipolygon items overlap")
        return [(make(ident, parts, None, volumes[0][2:]), list(range(len(volumes))))]
    return [
        (make(ident if j == 0 else f"{ident}#{j + 1}", v[0], v[1], v[2:]), [j])
        for j, v in enumerate(volumes)
    ]


def zones_from_ed269(doc: object) -> list[Zone]:
    """Every zone of an ED-269 document, or ValidationError for the first fault found."""
    if isinstance(doc, dict):
        features = doc.get("features")
        if not isinstance(features, list):
            raise _fail("features", "must be a list of UASZoneVersion")
    elif isinstance(doc, list):
        features = doc
    else:
        raise _fail("document", "must be an ED-269 object or a list of UASZoneVersion")
    zones: list[Zone] = []
    seen: dict[str, int] = {}
    for i, feature in enumerate(features):
        feature_copy = copy.deepcopy(feature)
        for zone, _ in _zones_of_feature(feature_copy, f"features[{i}]"):
            if zone.id in seen:
                raise _fail(
                    f"features[{i}].identifier",
                    f"zone id {zone.id!r} already used by features[{seen[zone.id]}]",
                )
            seen[zone.id] = i
            zones.append(zone)
    return zones


def _applicability_out(zone: Zone) -> list[dict[str, object]]:
    if zone.start is None and zone.end is None and zone.schedule is None:
        return [{"permanent": "YES"}]
    period: dict[str, object] = {
        "permanent": "YES" if zone.start is None and zone.end is None else "NO"
    }
    if zone.start is not None:
        period["startDateTime"] = format_time(zone.start)
    if zone.end is not None:
        period["endDateTime"] = format_time(zone.end)
    if zone.schedule is not None:
        period["schedule"] = [
            {
                "day": [WEEKDAYS[d] for d in sorted(days)],
                "startTime": f"{start // 60:02d}:{start % 60:02d}Z",
                "endTime": f"{end // 60:02d}:{end % 60:02d}Z",
            }
            for days, start, end in zone.schedule
        ]
    return [period]


def _volume_out(zone: Zone, projection: dict[str, object]) -> dict[str, object]:
    volume: dict[str, object] = {"uomDimensions": "M"}
    if zone.lower_m is not None:
        volume["lowerLimit"] = zone.lower_m
    volume["lowerVerticalReference"] = zone.reference.upper()
    if zone.upper_m is not None:
        volume["upperLimit"] = zone.upper_m
    volume["upperVerticalReference"] = zone.upper_ref.upper()
    volume["horizontalProjection"] = projection
    return volume


def _rings(poly: Polygon) -> list[list[list[float]]]:
    return [[list(c) for c in ring.coords] for ring in (poly.exterior, *poly.interiors)]


def _feature_out(zone: Zone, country: str) -> dict[str, object]:
    geometry = zone.geometry
    if isinstance(geometry, Point):
        projections: list[dict[str, object]] = [
            {"type": "Circle", "center": [geometry.x, geometry.y], "radius": zone.radius_m}
        ]
    else:
        parts = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
        projections = [{"type": "Polygon", "coordinates": _rings(p)} for p in parts]
    feature: dict[str, object] = {
        "identifier": zone.id,
        "country": country,
        "name": zone.name,
        "type": "COMMON",
        "restriction": _RESTRICTION_OUT[zone.restriction],
        "restrictionConditions": [],
        "region": 0,
        "reason": ["OTHER"],
        "otherReasonInfo": "",
        "regulationExemption": "NO",
        "message": "",
        "zoneAuthority": [
            {
                "name": "lowalt",
                "purpose": "AUTHORIZATION"
                if zone.restriction == "authorization_required"
                else "INFORMATION",
            }
        ],
        "applicability": _applicability_out(zone),
        "geometry": [_volume_out(zone, p) for p in projections],
    }
    own: dict[str, object] = {}
    if zone.approach_m != DEFAULT_APPROACH_M:
        own["approach_m"] = zone.approach_m
    if zone.authorized:
        own["authorized"] = sorted(zone.authorized)
    if isinstance(geometry, MultiPolygon):
        own["multipolygon"] = True
    if zone.ceiling_agl_m is not None:
        own["ceiling_agl_m"] = zone.ceiling_agl_m
    if own:
        feature["extendedProperties"] = {"lowalt": own}
    return feature


def zones_to_ed269(
    zones: Iterable[Zone], *, title: str = "lowalt UAS zones", country: str = "CHN"
) -> dict[str, object]:
    """An ED-269 document holding the zones (imported ones as they came, see the docstring)."""
    zone_list = list(zones)
    by_id: dict[str, Zone] = {}
    for k, zone in enumerate(zone_list):
        if zone.id in by_id:
            raise _fail(f"zones[{k}].id", f"duplicate zone id {zone.id!r}")
        by_id[zone.id] = zone
    features: list[dict[str, object]] = []
    done: set[str] = set()
    for zone in zone_list:
        if zone.id in done:
            continue
        if zone.source_doc is not None:
            features.extend(_source_features(zone.source_doc, by_id, done))
        if zone.id not in done:
            features.append(_feature_out(zone, country))
            done.add(zone.id)
    return {"title": title, "description": "Exported by lowalt", "features": features}


def _source_features(
    source: Mapping[str, object], by_id: Mapping[str, Zone], done: set[str]
) -> list[dict[str, object]]:
    """The source feature, or cut-down copies for its unchanged survivors; marks them done."""
    try:
        derived = _zones_of_feature(copy.deepcopy(dict(source)), "source_doc")
    except ValidationError:
        return []
    kept = [(z, items) for z, items in derived if by_id.get(z.id) == z and z.id not in done]
    if len(kept) == len(derived):
        done.update(z.id for z, _ in kept)
        return [copy.deepcopy(dict(source))]
    out = []
    volumes = cast(Sequence[object], source["geometry"])
    for zone, items in kept:
        feature = copy.deepcopy(dict(source))
        feature["identifier"] = zone.id
        feature["geometry"] = [copy.deepcopy(volumes[j]) for j in items]
        out.append(feature)
        done.add(zone.id)
    return out
