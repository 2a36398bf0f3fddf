"""Turn decoded items (maps or positional arrays) into validated Observations.

Every rule of API.md section 1 lives here, once, for all transports. A bad item yields a reason
string and never disturbs the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lowalt.models import STATUSES, UAV_RE, Observation

ARRAY_KEYS = ("uav", "t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps", "agl_m")


class ItemError(Exception):
    """One item is invalid; the message is the reason returned to the sender."""


def _number(value: Any, key: str) -> float:
    if type(value) is float:
        if value - value != 0.0:  # NaN or infinity, without a function call
            raise ItemError(f"{key}: not a finite number")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ItemError(f"{key}: expected a number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result):
        raise ItemError(f"{key}: not a finite number")
    return result


def _optional(value: Any, key: str) -> float | None:
    return None if value is None else _number(value, key)


class Validator:
    """Validates items against the acceptance window around `now`."""

    def __init__(self, max_age_s: float, max_future_s: float) -> None:
        self.max_age_s = max_age_s
        self.max_future_s = max_future_s

    def observation(self, item: Any, now: float, source: str) -> Observation:
        """A validated Observation, or ItemError with the reason."""
        if isinstance(item, Mapping):
            get = item.get
            values = [get(k) for k in ARRAY_KEYS]
            status = get("status")
            acc_h, acc_v = get("acc_h_m"), get("acc_v_m")
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
            if not 5 <= len(item) <= len(ARRAY_KEYS):
                raise ItemError(f"array form needs 5 to {len(ARRAY_KEYS)} items, got {len(item)}")
            values = list(item) + [None] * (len(ARRAY_KEYS) - len(item))
            status = acc_h = acc_v = None
        else:
            raise ItemError(f"expected a map or an array, got {type(item).__name__}")
        uav, t, lat, lon, alt_m, speed, track, vspeed, agl = values
        if uav is None:
            raise ItemError("uav: missing")
        if not isinstance(uav, str) or not UAV_RE.match(uav):
            raise ItemError("uav: must be 1..64 of [A-Za-z0-9._:-]")
        for key, value in (("t", t), ("lat", lat), ("lon", lon), ("alt_m", alt_m)):
            if value is None:
                raise ItemError(f"{key}: missing")
        t = _number(t, "t")
        lat = _number(lat, "lat")
        lon = _number(lon, "lon")
        alt_m = _number(alt_m, "alt_m")
        if not -90.0 <= lat <= 90.0:
            raise ItemError("lat: outside [-90, 90]")
        if not -180.0 <= lon <= 180.0:
            raise ItemError("lon: outside [-180, 180]")
        if not -500.0 <= alt_m <= 20000.0:
            raise ItemError("alt_m: outside [-500, 20000]")
        if t < now - self.max_age_s:
            raise ItemError(f"t: older than max_age_s ({self.max_age_s:g} s)")
        if t > now + self.max_future_s:
            raise ItemError(f"t: more than {self.max_future_s:g} s in the future")
        speed = _optional(speed, "speed_mps")
        if speed is not None and not 0.0 <= speed <= 300.0:
            raise ItemError("speed_mps: outside [0, 300]")
        track = _optional(track, "track_deg")
        if track is not None and not 0.0 <= track < 360.0:
            raise ItemError("track_deg: outside [0, 360)")
        vspeed = _optional(vspeed, "vspeed_mps")
        agl = _optional(agl, "agl_m")
        if agl is not None and not -500.0 <= agl <= 20000.0:
            raise ItemError("agl_m: outside [-500, 20000]")
        if status is not None and status not in STATUSES:
            raise ItemError(f"status: expected one of {', '.join(sorted(STATUSES))}")
        acc_h = _optional(acc_h, "acc_h_m")
        acc_v = _optional(acc_v, "acc_v_m")
        for key, acc in (("acc_h_m", acc_h), ("acc_v_m", acc_v)):
            if acc is not None and acc < 0.0:
                raise ItemError(f"{key}: must not be negative")
        return Observation(
            uav, t, lat, lon, alt_m, speed, track, vspeed, agl, status, acc_h, acc_v, source, now
        )

    def batch(
        self, items: Sequence[Any], now: float, source: str
    ) -> tuple[list[Observation], list[int], list[tuple[int, str]]]:
        """Valid observations with their item indexes, and (index, reason) per rejected item."""
        good: list[Observation] = []
        indexes: list[int] = []
        rejected: list[tuple[int, str]] = []
        check = self.observation
        fast, fast_map = self._fast_array, self._fast_map
        t_min, t_max = now - self.max_age_s, now + self.max_future_s
        for index, item in enumerate(items):
            kind = type(item)
            row = (fast(item, t_min, t_max, now, source) if kind is list
                   else fast_map(item, t_min, t_max, now, source) if kind is dict else None)
            if row is not None:
                good.append(row)
                indexes.append(index)
                continue
            try:
                good.append(check(item, now, source))
                indexes.append(index)
            except ItemError as exc:
                rejected.append((index, str(exc)))
        return good, indexes, rejected

    @staticmethod
    def _fast_array(
        item: list[Any], t_min: float, t_max: float, now: float, source: str
    ) -> Observation | None:
        """The common array-form item of floats, accepted in one expression; None sends the item
        to `observation`, which applies the same rules one by one and names what failed."""
        n = len(item)
        if n == 9:
            uav, t, lat, lon, alt_m, speed, track, vspeed, agl = item
        elif n == 7:
            uav, t, lat, lon, alt_m, speed, track = item
            vspeed = agl = None
        elif n == 5:
            uav, t, lat, lon, alt_m = item
            speed = track = vspeed = agl = None
        else:
            return None
        return _accept(uav, t, lat, lon, alt_m, speed, track, vspeed, agl, None, None, None,
                       t_min, t_max, now, source)

    @staticmethod
    def _fast_map(
        item: dict[str, Any], t_min: float, t_max: float, now: float, source: str
    ) -> Observation | None:
        """The same for a map-form item of floats (JSON maps, the F3411 and SBS codecs' output);
        None sends it to `observation`. Keys other than the observation's are ignored there too."""
        get = item.get
        uav, t, lat, lon, alt_m = get("uav"), get("t"), get("lat"), get("lon"), get("alt_m")
        speed, track, vspeed, agl = get("speed_mps"), get("track_deg"), get("vspeed_mps"), get(
            "agl_m")
        status, acc_h, acc_v = get("status"), get("acc_h_m"), get("acc_v_m")
        return _accept(uav, t, lat, lon, alt_m, speed, track, vspeed, agl, status, acc_h, acc_v,
                       t_min, t_max, now, source)


def _accept(
    uav: Any, t: Any, lat: Any, lon: Any, alt_m: Any, speed: Any, track: Any, vspeed: Any,
    agl: Any, status: Any, acc_h: Any, acc_v: Any, t_min: float, t_max: float, now: float,
    source: str,
) -> Observation | None:
    """The fast paths' one test: floats within every rule of `Validator.observation`, accepted in
    one expression; None for anything else, which `observation` then checks rule by rule."""
    F = float
    if not (
        type(t) is F and type(lat) is F and type(lon) is F and type(alt_m) is F
        and t_min <= t <= t_max and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0
        and -500.0 <= alt_m <= 20000.0
        and (speed is None or (type(speed) is F and 0.0 <= speed <= 300.0))
        and (track is None or (type(track) is F and 0.0 <= track < 360.0))
        and (vspeed is None or (type(vspeed) is F and -1e9 < vspeed < 1e9))
        and (agl is None or (type(agl) is F and -500.0 <= agl <= 20000.0))
        and (status is None or (type(status) is str and status in STATUSES))
        and (acc_h is None or (type(acc_h) is F and 0.0 <= acc_h < 1e300))
        and (acc_v is None or (type(acc_v) is F and 0.0 <= acc_v < 1e300))
        and type(uav) is str and UAV_RE.match(uav) is not None
    ):
        return None
    return Observation(uav, t, lat, lon, alt_m, speed, track, vspeed, agl, status, acc_h, acc_v,
                       source, now)
