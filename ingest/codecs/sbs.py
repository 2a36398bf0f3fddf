"""SBS-1 BaseStation text (ADS-B, "port 30003" as dump1090 and readsb serve it) into observations.

One record per line (LF or CRLF), 22 comma-separated fields; an empty field means "not in this
message". Only MSG records carry what is used here; SEL, ID, AIR, STA and CLK are skipped.

     #  field               unit, form                              becomes
     1  message type        MSG
     2  transmission type   1 identification, 2 surface position, 3 airborne position,
                            4 airborne velocity, 5 surveillance altitude, 6 surveillance id
                            (squawk), 7 air-to-air (ACAS), 8 all-call reply
     3  session id          -                                       ignored
     4  aircraft id         -                                       ignored
     5  hex ident           ICAO 24-bit address, 6 hex digits       icao, uav "ICAO-<HEX>"
     6  flight id           -                                       ignored
     7  date generated      YYYY/MM/DD, UTC                         t (with field 8)
     8  time generated      HH:MM:SS.sss, UTC
     9  date logged         -                                       ignored
    10  time logged         -                                       ignored
    11  callsign            up to 8 characters, space padded        callsign
    12  altitude            ft, barometric (1013.25 hPa)            alt_m = ft * 0.3048
    13  ground speed        kt                                      speed_mps = kt * 1852 / 3600
    14  track               deg true, over ground                   track_deg
    15  latitude            deg WGS84                               lat
    16  longitude           deg WGS84                               lon
    17  vertical rate       ft/min, up positive                     vspeed_mps = ft/min * 0.00508
    18  squawk              4 octal digits                          squawk
    19  alert               flag: squawk changed                    ignored
    20  emergency           flag                                    status "emergency"
    21  SPI                 flag: ident pressed                     ignored
    22  is on ground        flag                                    status "ground"
    Flags: 0 false, 1 or -1 true (BaseStation itself writes -1).

Decoders send each MSG type with a few of these fields (callsign in 1, position in 2/3, velocity
in 4, altitude in 5/6/7, squawk in 6), so state is merged per aircraft: any non-empty field
updates it (latitude and longitude from types 2 and 3 only), and every MSG,2/3 with a position
gives one observation from the merged state, timed by its generated date/time (the receive
time when that is absent or unreadable). A MSG,3 without position but with the on-ground flag
updates the status and gives no observation.

alt_m here is the barometric (pressure) altitude that ADS-B reports, not the geodetic altitude
of API.md section 1: the two differ by the day's pressure and the geoid, typically by tens of
metres. status is "emergency" for the emergency flag or squawk 7500/7700, "lost_link" for
squawk 7600 (radio failure), else "ground" or "airborne".
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FMT", "FPM_MPS", "FT_M", "KT_MPS", "AircraftState", "SbsTracker"]

FMT = "sbs"
FT_M = 0.3048
KT_MPS = 1852.0 / 3600.0
FPM_MPS = FT_M / 60.0

_FIELDS = 22
_TRANSMISSION_TYPES = frozenset("12345678")
_POSITION_TYPES = frozenset("23")
_POSITION_KINDS = {kind: kind in _POSITION_TYPES for kind in _TRANSMISSION_TYPES}
_SKIPPED_RECORDS = frozenset({"SEL", "ID", "AIR", "STA", "CLK"})
_HEX_DIGITS = "0123456789ABCDEF"
_OCTAL_DIGITS = "01234567"
_FLAGS = {"0": False, "1": True, "-1": True}
_FLAG_TEXTS: dict[str, bool | None] = {"": None, **_FLAGS}  # a flag field as it usually comes
# The last field of an unstripped line, as it usually comes (with the CR of CRLF or without).
_LAST_FLAG_TEXTS = {**_FLAG_TEXTS, **{text + "\r": flag for text, flag in _FLAG_TEXTS.items()}}
_EMERGENCY_SQUAWKS = {"7500": "emergency", "7600": "lost_link", "7700": "emergency"}
_UNIX_EPOCH = datetime.date(1970, 1, 1)
# "HH:MM" -> seconds from midnight to that minute, for every minute of the day.
_MINUTES_OF_DAY = {f"{h:02d}:{m:02d}": h * 3600 + m * 60 for h in range(24) for m in range(60)}
_MINUTE_PREFIXES = {hh_mm + ":": s for hh_mm, s in _MINUTES_OF_DAY.items()}  # "HH:MM:" -> s
_TWO_DIGITS = frozenset(f"{n:02d}" for n in range(100))
_INF = math.inf
_NO_ALTITUDE = "position without a known altitude: no observation"
_KNOWN_TEXTS = 4096  # per field


@dataclass(slots=True)
class AircraftState:
    """What is known of one aircraft, merged over its messages; None where never reported."""

    icao: str
    callsign: str | None = None
    lat: float | None = None
    lon: float | None = None
    alt_m: float | None = None
    speed_mps: float | None = None
    track_deg: float | None = None
    vspeed_mps: float | None = None
    squawk: str | None = None
    on_ground: bool | None = None
    emergency: bool = False
    last_seen_t: float = 0.0  # receive time of its last message, Unix s

    @property
    def status(self) -> str:
        if self.emergency:
            return "emergency"
        alarm = _EMERGENCY_SQUAWKS.get(self.squawk) if self.squawk is not None else None
        if alarm is not None:
            return alarm
        return "ground" if self.on_ground else "airborne"


class _BadLine(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Unusual(Exception):
    """A line the fast path of SbsTracker.feed leaves to the careful one."""


def _altitude_m(text: str) -> float:
    alt_m = float(text) * FT_M  # finite exactly when the feet are
    if not -_INF < alt_m < _INF:
        raise _Unusual
    return alt_m


def _speed_mps(text: str) -> float:
    speed_kt = float(text)
    if not 0.0 <= speed_kt < _INF:
        raise _Unusual
    return speed_kt * KT_MPS


def _track_deg(text: str) -> float:
    track_deg = float(text)
    if not 0.0 <= track_deg <= 360.0:
        raise _Unusual
    return track_deg % 360.0


def _vspeed_mps(text: str) -> float:
    vspeed_mps = float(text) * FPM_MPS  # finite exactly when the ft/min are
    if not -_INF < vspeed_mps < _INF:
        raise _Unusual
    return vspeed_mps


# Field text -> value in state units ("" -> None: not in the message), of the texts seen so far
# (decoders send few distinct altitudes, speeds, tracks and rates), so the fast path of
# SbsTracker.feed mostly looks values up. Shared by all trackers: the conversions are pure.
_ALTITUDES_M: dict[str, float | None] = {"": None}
_SPEEDS_MPS: dict[str, float | None] = {"": None}
_TRACKS_DEG: dict[str, float | None] = {"": None}
_VSPEEDS_MPS: dict[str, float | None] = {"": None}


def _known_value(
    known: dict[str, float | None], convert: Callable[[str], float], text: str
) -> float | None:
    """known[text], converting and keeping it (up to _KNOWN_TEXTS) if not yet known; a text
    `convert` refuses raises (_Unusual or ValueError) and is not kept."""
    if text in known:
        return known[text]
    value = convert(text)
    if len(known) >= _KNOWN_TEXTS:
        known.clear()
        known[""] = None
    known[text] = value
    return value


class SbsTracker:
    """Per-connection SBS state: feed text, get observations (API.md section 1, plus kind,
    format, icao, callsign, squawk) and per-line errors. The state of an aircraft not heard for
    `expire_s` (by receive time) is never merged into a new message, and is dropped from
    `aircraft` within a minute after that."""

    def __init__(self, expire_s: float = 300.0) -> None:
        self.aircraft: dict[str, AircraftState] = {}
        self.expire_s = expire_s
        self._last_expiry_t = -math.inf
        self._midnights: dict[str, float] = {}  # "YYYY/MM/DD" -> Unix s of its 00:00 UTC

    def feed(
        self, text: str, receive_t: float
    ) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
        """Observations from the lines of `text`, and (line number from 1, reason) for each bad
        line; a bad line changes no state and the other lines still decode."""
        self._expire(receive_t)
        observations: list[dict[str, object]] = []
        errors: list[tuple[int, str]] = []
        aircraft = self.aircraft
        expire_s = self.expire_s
        midnights = self._midnights
        altitudes_m, speeds_mps = _ALTITUDES_M, _SPEEDS_MPS
        tracks_deg, vspeeds_mps = _TRACKS_DEG, _VSPEEDS_MPS
        # The fast path below takes the usual well-formed MSG line as it comes and changes no
        # state before it has checked all of it; anything else (blank and other records, odd
        # spacing, bad or unusual fields) goes line-stripped to `_apply`, which checks field by
        # field and gives the precise error. Both decode a line they accept identically.
        for number, line in enumerate(text.split("\n"), 1):
            try:
                (record, kind, _, _, hex_ident, _, date, time, _, _, callsign, alt_text,
                 speed_text, track_text, lat_text, lon_text, vrate_text, squawk, _,
                 emergency_text, _, ground_text) = line.split(",")  # ValueError: not 22 fields
                if record != "MSG":
                    raise _Unusual
                position_kind = _POSITION_KINDS[kind]
                icao = hex_ident
                state = aircraft.get(icao)  # keys are valid upper-case idents
                if state is None and (len(icao) != 6 or icao.strip(_HEX_DIGITS)):
                    icao = hex_ident.upper()
                    if len(icao) != 6 or icao.strip(_HEX_DIGITS):
                        raise _Unusual
                    state = aircraft.get(icao)
                if callsign:
                    callsign = callsign.strip()
                try:  # None for an empty field
                    alt_m = altitudes_m[alt_text]
                    speed_mps = speeds_mps[speed_text]
                    track_deg = tracks_deg[track_text]
                    vspeed_mps = vspeeds_mps[vrate_text]
                except KeyError:  # a text not seen yet
                    alt_m = _known_value(altitudes_m, _altitude_m, alt_text)
                    speed_mps = _known_value(speeds_mps, _speed_mps, speed_text)
                    track_deg = _known_value(tracks_deg, _track_deg, track_text)
                    vspeed_mps = _known_value(vspeeds_mps, _vspeed_mps, vrate_text)
                has_position = False
                if lat_text or lon_text:
                    lat = float(lat_text)  # ValueError for an empty one: careful path
                    lon = float(lon_text)
                    if position_kind:
                        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                            raise _Unusual
                        has_position = True
                    elif not -_INF < lat + lon < _INF:  # checked, not used
                        raise _Unusual
                if squawk:
                    squawk = squawk.strip()
                    if len(squawk) > 4 or squawk.strip(_OCTAL_DIGITS):
                        raise _Unusual
                emergency = _FLAG_TEXTS[emergency_text]
                on_ground = _LAST_FLAG_TEXTS[ground_text]
            except (_Unusual, ValueError, KeyError):  # KeyError: a field not as it usually is
                line = line.strip()
                if not line:
                    continue
                try:
                    observation = self._apply(line, receive_t)
                except _BadLine as exc:
                    errors.append((number, exc.reason))
                else:
                    if observation is not None:
                        observations.append(observation)
                continue

            if state is None or receive_t - state.last_seen_t > expire_s:
                state = aircraft[icao] = AircraftState(icao)
            state.last_seen_t = receive_t  # as _merge, inline
            if callsign:
                state.callsign = callsign
            if alt_m is not None:
                state.alt_m = alt_m
            if speed_mps is not None:
                state.speed_mps = speed_mps
            if track_deg is not None:
                state.track_deg = track_deg
            if vspeed_mps is not None:
                state.vspeed_mps = vspeed_mps
            if squawk:
                state.squawk = squawk.zfill(4)
            if emergency is not None:
                state.emergency = emergency
            if on_ground is not None:
                state.on_ground = on_ground
            elif kind == "2":
                state.on_ground = True
            if not has_position:
                continue
            state.lat = lat
            state.lon = lon
            alt_m = state.alt_m
            if alt_m is None:
                errors.append((number, _NO_ALTITUDE))
                continue

            try:  # as _generated_t, to the last bit
                midnight = midnights[date]
                minute_s = _MINUTE_PREFIXES[time[:6]]
                if time[6:8] not in _TWO_DIGITS:
                    raise ValueError
                s = float(time[6:])
                t = midnight + (minute_s + s) if 0.0 <= s < 61.0 else receive_t
            except (KeyError, ValueError):  # a date not seen yet, or a time not as usual
                generated_t = self._generated_t(date, time)
                t = receive_t if generated_t is None else generated_t
            speed_mps = state.speed_mps
            track_deg = state.track_deg
            vspeed_mps = state.vspeed_mps
            if speed_mps is None or track_deg is None or vspeed_mps is None:
                observations.append(_observation(state, t))
                continue
            if state.emergency or state.squawk is not None:  # else as AircraftState.status
                status = state.status
            else:
                status = "ground" if state.on_ground else "airborne"
            obs: dict[str, object] = {  # as _observation makes it, in one go
                "uav": "ICAO-" + icao, "t": t, "lat": lat, "lon": lon, "alt_m": alt_m,
                "speed_mps": speed_mps, "track_deg": track_deg, "vspeed_mps": vspeed_mps,
                "status": status, "kind": "crewed", "format": FMT, "icao": icao,
            }
            if state.callsign is not None:
                obs["callsign"] = state.callsign
            if state.squawk is not None:
                obs["squawk"] = state.squawk
            observations.append(obs)
        return observations, errors

    def _apply(self, line: str, receive_t: float) -> dict[str, object] | None:
        fields = line.split(",")
        if fields[0] != "MSG":
            if fields[0] in _SKIPPED_RECORDS:
                return None
            raise _BadLine(f"unknown record type {fields[0][:16]!r}")
        if len(fields) != _FIELDS:
            raise _BadLine(f"expected {_FIELDS} fields, got {len(fields)}")
        (_, kind, _, _, hex_ident, _, date, time, _, _, callsign, alt_text, speed_text,
         track_text, lat_text, lon_text, vrate_text, squawk, _, emergency_text, _,
         ground_text) = fields
        if kind not in _TRANSMISSION_TYPES:
            raise _BadLine(f"field 2: transmission type {kind[:16]!r} is not 1..8")
        icao = hex_ident.upper()
        if len(icao) != 6 or icao.strip(_HEX_DIGITS):
            raise _BadLine(f"field 5: hex ident {hex_ident[:16]!r} is not 6 hex digits")

        callsign = callsign.strip()
        # Inline for the usual well-formed fields; on anything else the field-by-field
        # conversions below raise the precise error (or accept the line after all).
        try:
            alt_ft = float(alt_text) if alt_text else None
            speed_kt = float(speed_text) if speed_text else None
            track_deg = float(track_text) if track_text else None
            lat = float(lat_text) if lat_text else None
            lon = float(lon_text) if lon_text else None
            vrate_fpm = float(vrate_text) if vrate_text else None
            usual = math.isfinite((alt_ft or 0.0) + (speed_kt or 0.0) + (track_deg or 0.0)
                                  + (lat or 0.0) + (lon or 0.0) + (vrate_fpm or 0.0))
        except ValueError:
            usual = False
        if not usual:
            alt_ft = _number(fields, 11, "altitude")
            speed_kt = _number(fields, 12, "ground speed")
            track_deg = _number(fields, 13, "track")
            lat = _number(fields, 14, "latitude")
            lon = _number(fields, 15, "longitude")
            vrate_fpm = _number(fields, 16, "vertical rate")
        squawk = squawk.strip()
        emergency = (_FLAG_TEXTS[emergency_text] if emergency_text in _FLAG_TEXTS
                     else _flag(fields, 19, "emergency"))
        on_ground = (_FLAG_TEXTS[ground_text] if ground_text in _FLAG_TEXTS
                     else _flag(fields, 21, "is on ground"))
        if speed_kt is not None and speed_kt < 0.0:
            raise _BadLine(f"field 13: ground speed {speed_kt} is negative")
        if track_deg is not None:
            if not 0.0 <= track_deg <= 360.0:
                raise _BadLine(f"field 14: track {track_deg} outside 0..360")
            track_deg %= 360.0
        if squawk and (len(squawk) > 4 or squawk.strip(_OCTAL_DIGITS)):
            raise _BadLine(f"field 18: squawk {squawk[:16]!r} is not 4 octal digits")
        has_position = kind in _POSITION_TYPES and (lat is not None or lon is not None)
        if has_position:
            if lat is None or lon is None:
                raise _BadLine("fields 15-16: latitude and longitude must come together")
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
                raise _BadLine(f"fields 15-16: position ({lat}, {lon}) out of range")

        state = self.aircraft.get(icao)
        if state is None or receive_t - state.last_seen_t > self.expire_s:
            state = self.aircraft[icao] = AircraftState(icao)
        _merge(state, receive_t, kind, callsign, None if alt_ft is None else alt_ft * FT_M,
               None if speed_kt is None else speed_kt * KT_MPS, track_deg,
               None if vrate_fpm is None else vrate_fpm * FPM_MPS, squawk, emergency, on_ground)
        if not has_position:
            return None
        state.lat, state.lon = lat, lon
        if state.alt_m is None:
            raise _BadLine(_NO_ALTITUDE)
        t = self._generated_t(date, time)
        return _observation(state, receive_t if t is None else t)

    def _generated_t(self, date: str, time: str) -> float | None:
        midnight = self._midnights.get(date)
        if midnight is None:
            midnight = _midnight_unix_s(date)
            if midnight is None:
                return None
            if len(self._midnights) >= 8:
                self._midnights.clear()
            self._midnights[date] = midnight
        seconds = _seconds_of_day(time)
        return None if seconds is None else midnight + seconds

    def _expire(self, now: float) -> None:
        if now - self._last_expiry_t < 60.0:
            return
        self._last_expiry_t = now
        cutoff = now - self.expire_s
        for icao in [icao for icao, s in self.aircraft.items() if s.last_seen_t < cutoff]:
            del self.aircraft[icao]


def _merge(
    state: AircraftState, receive_t: float, kind: str, callsign: str, alt_m: float | None,
    speed_mps: float | None, track_deg: float | None, vspeed_mps: float | None, squawk: str,
    emergency: bool | None, on_ground: bool | None,
) -> None:
    """One message's fields (converted; None or "" where absent) into the aircraft's state."""
    state.last_seen_t = receive_t
    if callsign:
        state.callsign = callsign
    if alt_m is not None:
        state.alt_m = alt_m
    if speed_mps is not None:
        state.speed_mps = speed_mps
    if track_deg is not None:
        state.track_deg = track_deg
    if vspeed_mps is not None:
        state.vspeed_mps = vspeed_mps
    if squawk:
        state.squawk = squawk.zfill(4)
    if emergency is not None:
        state.emergency = emergency
    if on_ground is not None:
        state.on_ground = on_ground
    elif kind == "2":
        state.on_ground = True  # a surface position is on the ground


def _observation(state: AircraftState, t: float) -> dict[str, object]:
    obs: dict[str, object] = {
        "uav": "ICAO-" + state.icao,
        "t": t,
        "lat": state.lat,
        "lon": state.lon,
        "alt_m": state.alt_m,
    }
    if state.speed_mps is not None:
        obs["speed_mps"] = state.speed_mps
    if state.track_deg is not None:
        obs["track_deg"] = state.track_deg
    if state.vspeed_mps is not None:
        obs["vspeed_mps"] = state.vspeed_mps
    obs["status"] = state.status
    obs["kind"] = "crewed"
    obs["format"] = FMT
    obs["icao"] = state.icao
    if state.callsign is not None:
        obs["callsign"] = state.callsign
    if state.squawk is not None:
        obs["squawk"] = state.squawk
    return obs


def _number(fields: list[str], index: int, name: str) -> float | None:
    text = fields[index]
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _BadLine(f"field {index + 1}: {name} {text[:16]!r} is not a number") from None
    if not math.isfinite(value):
        raise _BadLine(f"field {index + 1}: {name} {text[:16]!r} is not finite")
    return value


def _flag(fields: list[str], index: int, name: str) -> bool | None:
    text = fields[index].strip()
    if not text:
        return None
    flag = _FLAGS.get(text)
    if flag is None:
        raise _BadLine(f"field {index + 1}: {name} flag {text[:16]!r} is not 0, 1 or -1")
    return flag


def _midnight_unix_s(date: str) -> float | None:
    """Unix s of 00:00 UTC on `date` (YYYY/MM/DD or YYYY-MM-DD), None if it is not one."""
    parts = date.replace("-", "/").split("/")
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        return None
    try:
        day = datetime.date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None
    return float((day - _UNIX_EPOCH).days * 86400)


def _seconds_of_day(time: str) -> float | None:
    """Seconds since midnight of HH:MM:SS[.fff], None if it is not one."""
    if len(time) < 8 or time[5] != ":":
        return None
    minute_s = _MINUTES_OF_DAY.get(time[:5])  # also checks the digits, the ":" and ranges
    if minute_s is None:
        return None
    seconds = time[6:]
    if not (seconds[:2].isascii() and seconds[:2].isdigit()):
        return None
    try:
        s = float(seconds)
    except ValueError:
        return None
    if not 0.0 <= s < 61.0:
        return None
    return minute_s + s
