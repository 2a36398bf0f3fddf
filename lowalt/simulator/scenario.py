"""Simulated low-altitude traffic over Chongqing, and the satellite link that delivers it.

`Scenario(seed, uavs, kinds, t0).states_at(t)` is the state of every aircraft reporting at Unix
time t, as observation maps (API.md section 1) with three more keys that senders drop: `kind`
("uav" or "crewed"), `traffic` (the part of the scenario) and `phase`. It is a pure function of
(seed, uavs, kinds, t0, t): each flight draws from its own `random.Random` seeded with a string
naming the seed and the flight, and nothing depends on earlier calls (plans are cached, not
accumulated).

The world:
- Positions are computed in metres east/north of Mingyue Lake (MINGYUE_LAKE) and turned into
  degrees with an equirectangular projection (under 0.3 % scale error across CITY_BOX).
- The ground is flat: alt_m = GROUND_WGS84_M + agl_m. GROUND_WGS84_M = 230 m stands for the
  terrain around Liangjiang (GROUND_AMSL_M, about 260 m above mean sea level) plus the local
  geoid offset (GEOID_UNDULATION_M, about -30 m), approximate constants; the simulated world is
  not a survey. A server that decides clearances for this world needs the same ground model
  (`ground_elevation_m` = 260, `geoid_undulation_m` = -30), or it takes every route as 230 m
  higher above ground than it is.
- Multirotor kinematics: straight legs flown with a trapezoidal speed profile (accelerate at a
  fixed rate to the leg's speed, cruise, brake to a stop at the waypoint) and turns made in
  place at waypoints, so heading never changes while moving and speed, climb rate and
  acceleration stay within the traffic's PERFORMANCE.

The traffic (`kinds`):
- city: `uavs` UAVs, each with a home pad at least 7 km from Jiangbei airport, repeating
  720 s cycles: ground, takeoff, 1-3 cruise legs with a hover at each waypoint, return,
  landing, ground. 30-120 m AGL, 3-20 m/s; waypoints within 3 km of home.
- logistics: a hub on Mingyue Lake with LOGISTICS_ROUTES lanes (2-5 km, 10-15 m/s), two UAVs
  per lane half a cycle apart: ground (loading), takeoff, cruise out at the lane's outbound
  height, hover 20 s at the drop, climb 20 m, return at that height, landing. With
  `clearances=True` a flight takes off only once `decide` has cleared it (see below).
- conflicts: a pair every CONFLICT_PERIOD_S, alternately head-on (parallel lanes 5-30 m apart)
  and crossing (60-120 deg), at the same height, scripted so that the pair loses separation
  (SEPARATION_H_M horizontally at the same height) exactly first_s["conflicts"] + k *
  CONFLICT_PERIOD_S seconds after t0. Each episode flies the next pair of a fleet of
  CONFLICT_FLEET pairs; each UAV reports from 10 s before its takeoff to 10 s after its landing.
- intruder: a UAV every INTRUDER_PERIOD_S (the next of INTRUDER_FLEET) that flies from 4.2 km
  south of Jiangbei to 800 m from it, hovers and goes home, entering the AIRPORT_RADIUS_M circle
  exactly first_s["intruder"] + k * INTRUDER_PERIOD_S seconds after t0.
- crewed: an ADS-B arrival every CREWED_PERIOD_S on a 3 deg glide path from 18 km out to
  Jiangbei's runway 02, touching down first_s["crewed"] + k * CREWED_PERIOD_S seconds after t0;
  uav "ICAO-<hex>" with an address from China's block (780000-7BFFFF).
`first_s` defaults to FIRST_S (60, 120 and 180 s); tests pass smaller ones for short runs.

Clearances (API.md section 5): `logistics_departures(t_from, t_to)` lists the planned takeoffs,
`logistics_route(slot, cycle, delay_s)` the route to ask for (`RouteFit`: the flight's waypoints,
and the departure and constant speed whose timeline strays least from the flight's own, hovers
and slow vertical legs included; at most LOGISTICS_FIT_S with the default plans), and
`decide(slot, cycle, delay_s)` records the answer: fly that cycle `delay_s` later than planned,
or (None) stay on the pad. Undecided cycles stay on the pad too, so a flight never departs
without a clearance and the flown track is the cleared route.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowalt.errors import ConfigError

__all__ = [
    "AIRPORT_RADIUS_M",
    "CITY_BOX",
    "CONFLICT_FIRST_S",
    "CONFLICT_FLEET",
    "CONFLICT_PERIOD_S",
    "CREWED_FIRST_S",
    "CREWED_PERIOD_S",
    "FIRST_S",
    "GEOID_UNDULATION_M",
    "GROUND_AMSL_M",
    "GROUND_WGS84_M",
    "INTRUDER_FIRST_S",
    "INTRUDER_FLEET",
    "INTRUDER_PERIOD_S",
    "JIANGBEI",
    "KINDS",
    "LOGISTICS_FIT_S",
    "LOGISTICS_ROUTES",
    "LOGISTICS_UAVS",
    "MINGYUE_LAKE",
    "PERFORMANCE",
    "SEPARATION_H_M",
    "SEPARATION_V_M",
    "TRAFFIC_OPERATORS",
    "Departure",
    "LinkStats",
    "Performance",
    "RouteFit",
    "SatelliteLink",
    "Scenario",
    "ScriptedConflict",
    "ScriptedIntrusion",
]

State = dict[str, Any]
F64 = np.ndarray[Any, np.dtype[np.float64]]
Vec = tuple[float, float, float]  # metres east, north of MINGYUE_LAKE; metres above ground

KINDS = ("city", "logistics", "conflicts", "intruder", "crewed")
MINGYUE_LAKE = (29.735, 106.585)  # lat, lon: the local plane's origin and the logistics hub
JIANGBEI = (29.719, 106.642)  # lat, lon of Chongqing Jiangbei airport (touchdown point here)
AIRPORT_RADIUS_M = 3000.0  # the circle around JIANGBEI the intruder enters
CITY_BOX = (29.45, 106.40, 29.75, 106.75)  # min lat, min lon, max lat, max lon
GROUND_AMSL_M = 260.0  # flat ground, metres above mean sea level ...
GEOID_UNDULATION_M = -30.0  # ... and the geoid's height above the WGS84 ellipsoid there, so
GROUND_WGS84_M = GROUND_AMSL_M + GEOID_UNDULATION_M  # alt_m = GROUND_WGS84_M + agl_m = 230 m
SEPARATION_H_M = 50.0  # the scripted pairs come closer than this ...
SEPARATION_V_M = 15.0  # ... at the same height (less than this apart vertically)

CITY_CYCLE_S = 720.0
LOGISTICS_CYCLE_S = 1200.0
CONFLICT_FIRST_S, CONFLICT_PERIOD_S = 60.0, 90.0
INTRUDER_FIRST_S, INTRUDER_PERIOD_S = 120.0, 720.0  # a flight reports for about 620 s
CREWED_FIRST_S, CREWED_PERIOD_S = 180.0, 120.0
FIRST_S = {"conflicts": CONFLICT_FIRST_S, "intruder": INTRUDER_FIRST_S, "crewed": CREWED_FIRST_S}
CONFLICT_FLEET = 100  # pairs: episode k flies pair k % CONFLICT_FLEET (reused after 2.5 h)
INTRUDER_FLEET = 20  # episode k flies intruder k % INTRUDER_FLEET (reused after 4 h)
# Who flies each part of the scenario (the demo registers the fleet to these operators).
TRAFFIC_OPERATORS = {"city": "cq-city", "logistics": "cq-logistics", "conflicts": "cq-survey",
                     "intruder": "cq-hobby"}

_M_PER_DEG_LAT = 6_371_008.8 * math.pi / 180.0
_M_PER_DEG_LON = _M_PER_DEG_LAT * math.cos(math.radians(MINGYUE_LAKE[0]))


@dataclass(frozen=True, slots=True)
class Performance:
    """What one kind of traffic can do; every state of that traffic stays within it."""

    max_speed_mps: float
    max_climb_mps: float
    max_descent_mps: float
    accel_mps2: float  # horizontal, speeding up and braking
    vaccel_mps2: float  # vertical
    max_agl_m: float


PERFORMANCE: dict[str, Performance] = {
    "city": Performance(20.0, 4.0, 3.0, 2.0, 1.0, 120.0),
    "logistics": Performance(15.0, 4.0, 3.0, 1.5, 1.0, 110.0),
    "conflicts": Performance(15.0, 3.0, 2.0, 2.0, 1.0, 100.0),
    "intruder": Performance(15.0, 3.0, 2.0, 2.0, 1.0, 110.0),
    "crewed": Performance(80.0, 0.0, 4.5, 0.0, 0.0, 1000.0),
}


@dataclass(frozen=True, slots=True)
class LogisticsRoute:
    name: str
    bearing_deg: float  # from the hub to the drop point
    distance_m: float
    out_agl_m: float  # outbound height; the return flies 20 m higher
    speed_mps: float


# All lanes leave westwards or southwards, away from Jiangbei (east-south-east of the lake).
LOGISTICS_ROUTES = (
    LogisticsRoute("MY-S", 165.0, 3600.0, 60.0, 12.0),
    LogisticsRoute("MY-SSW", 200.0, 4200.0, 70.0, 15.0),
    LogisticsRoute("MY-SW", 235.0, 3000.0, 80.0, 10.0),
    LogisticsRoute("MY-W", 270.0, 4800.0, 90.0, 14.0),
    LogisticsRoute("MY-NW", 320.0, 1800.0, 65.0, 11.0),
)
LOGISTICS_UAVS = tuple(f"CQ-LOG-{j + 1:02d}" for j in range(2 * len(LOGISTICS_ROUTES)))
LOGISTICS_FIT_S = 20.0  # a cleared flight strays at most this far from its route's timeline
_LOGISTICS_RETURN_CLIMB_M = 20.0
_LOGISTICS_HOVER_S = 20.0
_HUB_RING_M = 200.0  # pads sit on a ring around the hub, at their lane's bearing
_PAD_SPREAD_DEG = 17.5  # the second UAV of a lane: 61 m from the first pad

# Local-plane places of the scripted episodes (metres east, north of the lake).
# Six spots: an episode's flights report for at most 460 s, and a spot is reused only after
# 6 * CONFLICT_PERIOD_S = 540 s, so episodes never meet.
_CONFLICT_SPOTS = ((-8000.0, -6000.0), (3000.0, -12000.0), (-4000.0, -18000.0),
                   (8000.0, -22000.0), (-12000.0, -12000.0), (10000.0, -8000.0))
_CONFLICT_ARM_M = 1300.0  # each UAV of a pair flies this far before and after the spot
_INTRUDER_HOME_M = 4200.0  # from JIANGBEI
_INTRUDER_TARGET_M = 800.0
_RUNWAY_DEG = 20.0  # runway 02: arrivals fly this track
_GLIDE_DEG = 3.0
_APPROACH_M = 18000.0
_THRESHOLD_CROSSING_M = 15.0


def to_local(lat: float, lon: float) -> tuple[float, float]:
    """Metres east, north of MINGYUE_LAKE."""
    return ((lon - MINGYUE_LAKE[1]) * _M_PER_DEG_LON, (lat - MINGYUE_LAKE[0]) * _M_PER_DEG_LAT)


def to_latlon(east_m: float, north_m: float) -> tuple[float, float]:
    return (MINGYUE_LAKE[0] + north_m / _M_PER_DEG_LAT, MINGYUE_LAKE[1] + east_m / _M_PER_DEG_LON)


_AIRPORT = to_local(*JIANGBEI)
_BOX_MIN = to_local(CITY_BOX[0], CITY_BOX[1])
_BOX_MAX = to_local(CITY_BOX[2], CITY_BOX[3])


def _unit(bearing_deg: float) -> tuple[float, float]:
    rad = math.radians(bearing_deg)
    return (math.sin(rad), math.cos(rad))


def _offset(origin: tuple[float, float], bearing_deg: float, m: float) -> tuple[float, float]:
    ux, uy = _unit(bearing_deg)
    return (origin[0] + ux * m, origin[1] + uy * m)


# Kinematics


@dataclass(frozen=True, slots=True)
class _Segment:
    """One phase of a flight: still, or a straight move from rest to rest (a trapezoidal speed
    profile with `accel_mps2`; 0 means constant speed, entering and leaving at speed)."""

    phase: str
    t_start: float  # s after the flight's origin
    duration_s: float
    start: Vec
    end: Vec
    peak_mps: float  # speed along the path at its fastest; 0 for a still segment
    accel_mps2: float
    track_deg: float

    @property
    def length_m(self) -> float:
        return math.dist(self.start, self.end)

    @property
    def t_accel(self) -> float:
        return self.peak_mps / self.accel_mps2 if self.accel_mps2 > 0 else 0.0

    def along(self, dt: float) -> tuple[float, float]:
        """(distance from the start, speed along the path) `dt` s into the segment."""
        if self.peak_mps == 0.0:
            return 0.0, 0.0
        a, v, ta = self.accel_mps2, self.peak_mps, self.t_accel
        if a == 0.0:
            return v * dt, v
        if dt < ta:
            return 0.5 * a * dt * dt, a * dt
        left = self.duration_s - dt
        if left < ta:
            return self.length_m - 0.5 * a * left * left, a * left
        return 0.5 * v * ta + v * (dt - ta), v

    def time_at(self, s: float) -> float:
        """When the mover is `s` metres along (0 <= s <= length), in s into the segment."""
        a, v, ta = self.accel_mps2, self.peak_mps, self.t_accel
        if a == 0.0:
            return s / v
        d_accel = 0.5 * v * ta
        if s <= d_accel:
            return math.sqrt(2.0 * s / a)
        if s >= self.length_m - d_accel:
            return self.duration_s - math.sqrt(2.0 * (self.length_m - s) / a)
        return ta + (s - d_accel) / v


class _Plan:
    """Builds a flight's segments one after another from where the last one ended."""

    def __init__(self, start: Vec, track_deg: float) -> None:
        self.t = 0.0
        self.pos = start
        self.track_deg = track_deg % 360.0
        self.segments: list[_Segment] = []

    def hold(self, phase: str, duration_s: float) -> None:
        if duration_s > 0.0:
            self.segments.append(_Segment(phase, self.t, duration_s, self.pos, self.pos, 0.0, 0.0,
                                          self.track_deg))
            self.t += duration_s

    def move(self, phase: str, to: Vec, speed_mps: float, accel_mps2: float) -> _Segment:
        """Fly straight to `to` from rest to rest, at most `speed_mps` (constant speed along
        the path, not from rest, when `accel_mps2` is 0)."""
        length = math.dist(self.pos, to)
        dx, dy = to[0] - self.pos[0], to[1] - self.pos[1]
        if math.hypot(dx, dy) > 1e-9:
            self.track_deg = math.degrees(math.atan2(dx, dy)) % 360.0
        if accel_mps2 == 0.0:
            peak, duration = speed_mps, length / speed_mps
        else:
            peak = min(speed_mps, math.sqrt(length * accel_mps2))
            duration = peak / accel_mps2 + length / peak
        segment = _Segment(phase, self.t, duration, self.pos, to, peak, accel_mps2,
                           self.track_deg)
        self.segments.append(segment)
        self.t += duration
        self.pos = to
        return segment


@dataclass(frozen=True, slots=True)
class _Flight:
    """A plan placed in time: it reports from `origin_t` until its last segment ends."""

    uav: str
    traffic: str
    kind: str
    origin_t: float
    segments: tuple[_Segment, ...]
    starts: tuple[float, ...]
    report_agl: bool = True

    @classmethod
    def of(cls, uav: str, traffic: str, plan: _Plan, origin_t: float, kind: str = "uav",
           report_agl: bool = True) -> _Flight:
        segments = tuple(plan.segments)
        return cls(uav, traffic, kind, origin_t, segments, tuple(s.t_start for s in segments),
                   report_agl)

    @property
    def end_t(self) -> float:
        last = self.segments[-1]
        return self.origin_t + last.t_start + last.duration_s

    def state_at(self, t: float) -> State | None:
        dt = t - self.origin_t
        if dt < 0.0 or t >= self.end_t:
            return None
        seg = self.segments[bisect.bisect_right(self.starts, dt) - 1]
        s, v = seg.along(dt - seg.t_start)
        (x0, y0, z0), (x1, y1, z1) = seg.start, seg.end
        length = seg.length_m
        if length > 0.0:
            f = s / length
            x, y, z = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f, z0 + (z1 - z0) * f
            speed = v * math.hypot(x1 - x0, y1 - y0) / length
            vspeed = v * (z1 - z0) / length
        else:
            x, y, z, speed, vspeed = x0, y0, z0, 0.0, 0.0
        lat, lon = to_latlon(x, y)
        state: State = {
            "uav": self.uav, "t": t, "lat": round(lat, 7), "lon": round(lon, 7),
            "alt_m": round(GROUND_WGS84_M + z, 2),
        }
        if self.report_agl:
            state["agl_m"] = round(z, 2)
        state.update({
            "speed_mps": round(speed, 2), "track_deg": round(seg.track_deg, 1) % 360.0,
            "vspeed_mps": round(vspeed, 2),
            "status": "ground" if seg.phase == "ground" else "airborne",
            "kind": self.kind, "traffic": self.traffic, "phase": seg.phase,
        })
        return state

    def time_along(self, segment: _Segment, s: float) -> float:
        """Unix time at which the flight is `s` metres along `segment`."""
        return self.origin_t + segment.t_start + segment.time_at(s)

    def route_fit(self) -> RouteFit:
        """The route of the flight's airborne part (first to last move) as a clearance asks it:
        waypoints where it stops, and the departure and constant speed along the 3D path that
        minimise the largest gap between the route's timeline and the flight's (a Chebyshev
        line fit of time against path length: hovers and slow vertical legs are absorbed)."""
        moving = [k for k, seg in enumerate(self.segments) if seg.peak_mps > 0.0]
        segments = self.segments[moving[0]:moving[-1] + 1]
        points = [segments[0].start, *(seg.end for seg in segments if seg.peak_mps > 0.0)]
        times: list[F64] = []
        lengths: list[F64] = []
        done_m = 0.0
        for seg in segments:
            dts = np.append(np.arange(0.0, seg.duration_s, 0.5), seg.duration_s)
            along = np.array([seg.along(dt)[0] for dt in dts]) if seg.peak_mps > 0.0 \
                else np.zeros(dts.size)
            times.append(self.origin_t + seg.t_start + dts)
            lengths.append(done_m + along)
            done_m += seg.length_m
        t, s = np.concatenate(times), np.concatenate(lengths)
        lo, hi = 0.0, 2.0 * float(t[-1] - t[0]) / done_m  # seconds per metre

        def spread(w: float) -> float:
            return float(np.ptp(t - w * s))

        for _ in range(100):  # the spread is convex in w
            a, b = lo + (hi - lo) / 3.0, hi - (hi - lo) / 3.0
            lo, hi = (lo, b) if spread(a) <= spread(b) else (a, hi)
        w = (lo + hi) / 2.0
        gap = t - w * s
        coordinates = []
        for x, y, z in points:
            lat, lon = to_latlon(x, y)
            coordinates.append((round(lon, 7), round(lat, 7), round(GROUND_WGS84_M + z, 2)))
        return RouteFit(tuple(coordinates), float(gap.max() + gap.min()) / 2.0, 1.0 / w,
                        float(np.ptp(gap)) / 2.0, float(t[0]), float(t[-1]))


@dataclass(frozen=True, slots=True)
class RouteFit:
    """What a flight asks a clearance for: waypoints [lon, lat, alt_m] from takeoff to landing,
    flown from `departure_t` at `speed_mps` along the 3D path by the route's timeline, from
    which the flight's own strays at most `max_deviation_s`."""

    coordinates: tuple[tuple[float, float, float], ...]
    departure_t: float
    speed_mps: float
    max_deviation_s: float
    takeoff_t: float
    landing_t: float


@dataclass(frozen=True, slots=True)
class Departure:
    """A logistics flight planned to take off at `takeoff_t` (before any delay)."""

    uav: str
    slot: int  # which logistics UAV: LOGISTICS_UAVS[slot]
    cycle: int
    takeoff_t: float


# Scripted events


@dataclass(frozen=True, slots=True)
class ScriptedConflict:
    """Two UAVs at the same height whose horizontal distance falls below SEPARATION_H_M at
    `loss_t` and is smallest (`cpa_m`) at `cpa_t`."""

    uav_a: str
    uav_b: str
    geometry: str  # "head_on" or "crossing"
    loss_t: float
    cpa_t: float
    cpa_m: float
    agl_m: float


@dataclass(frozen=True, slots=True)
class ScriptedIntrusion:
    """A UAV inside the AIRPORT_RADIUS_M circle around JIANGBEI from `entry_t` to `exit_t`."""

    uav: str
    entry_t: float
    exit_t: float


@dataclass(frozen=True, slots=True)
class _Episode:
    flights: tuple[_Flight, ...]
    event: ScriptedConflict | ScriptedIntrusion | None


def _rng(*parts: object) -> random.Random:
    return random.Random(":".join(str(p) for p in parts))


def _city_uav(i: int) -> str:
    return f"CQ-CITY-{i + 1:04d}"


def _conflict_uav(k: int, side: str) -> str:
    return f"CQ-CONF-{k % CONFLICT_FLEET + 1:03d}{side}"


def _intruder_uav(k: int) -> str:
    return f"CQ-INTR-{k % INTRUDER_FLEET + 1:03d}"


def _logistics_phase_s(j: int) -> float:
    """How far into its cycle logistics UAV j is at t0: lanes 140 s apart, copies 600 s."""
    return (j % len(LOGISTICS_ROUTES)) * 140.0 + (j // len(LOGISTICS_ROUTES)) * 600.0


def _first_within(p0: tuple[float, float], w: tuple[float, float], r: float) -> tuple[float, float]:
    """For relative position p0 + w * tau: (first tau at distance r, tau of closest approach)."""
    a = w[0] * w[0] + w[1] * w[1]
    b = 2.0 * (p0[0] * w[0] + p0[1] * w[1])
    c = p0[0] * p0[0] + p0[1] * p0[1] - r * r
    return (-b - math.sqrt(b * b - 4.0 * a * c)) / (2.0 * a), -b / (2.0 * a)


class Scenario:
    """The traffic model; `states_at(t)` is everything reporting at Unix time t."""

    def __init__(self, seed: int, uavs: int, kinds: Iterable[str], t0: float, *,
                 first_s: Mapping[str, float] | None = None, clearances: bool = False) -> None:
        """`uavs` city UAVs; `kinds` from KINDS; `t0` (Unix s) is when the scripted events'
        clock starts, usually the start of the run; `first_s` overrides FIRST_S (when the first
        scripted episode of a kind happens, s after t0); with `clearances` a logistics flight
        takes off only once `decide` has cleared it."""
        self.seed = seed
        self.uavs = uavs
        self.kinds = tuple(dict.fromkeys(kinds))
        self.t0 = t0
        self.clearances = clearances
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"scenario: unknown kind(s) {', '.join(sorted(unknown))} "
                              f"(choose from {', '.join(KINDS)})")
        if uavs < 0:
            raise ConfigError("scenario: uavs must be 0 or more")
        self.first_s = {**FIRST_S, **(first_s or {})}
        if set(self.first_s) != set(FIRST_S) or not all(
                math.isfinite(v) and v >= 0.0 for v in self.first_s.values()):
            raise ConfigError(f"scenario: first_s takes {', '.join(FIRST_S)}: 0 or more seconds")
        self._homes = [self._city_home(i) for i in range(uavs)] if "city" in self.kinds else []
        self._cycles: dict[tuple[str, int], tuple[int, _Flight]] = {}
        self._episodes: dict[tuple[str, int], _Episode] = {}
        self._plans: dict[tuple[int, int, float | None], _Flight | None] = {}
        self._decisions: dict[tuple[int, int], float | None] = {}

    # The states

    def states_at(self, t: float) -> list[State]:
        states: list[State] = []
        for flight in self.flights_at(t):
            state = flight.state_at(t)
            if state is not None:
                states.append(state)
        return states

    def state_of(self, uav: str, t: float) -> State | None:
        return next((s for s in self.states_at(t) if s["uav"] == uav), None)

    def flights_at(self, t: float) -> list[_Flight]:
        flights: list[_Flight] = []
        tau = t - self.t0
        if "logistics" in self.kinds:
            for j in range(len(LOGISTICS_UAVS)):
                cycle = math.floor((tau + _logistics_phase_s(j)) / LOGISTICS_CYCLE_S)
                delay_s = self._decisions.get((j, cycle)) if self.clearances else 0.0
                flight = self._logistics_plan(j, cycle, delay_s)
                assert flight is not None  # decide() takes only delays that fit the cycle
                flights.append(flight)
        if "city" in self.kinds:
            for i in range(self.uavs):
                phase_s = _rng(self.seed, "city", i, "phase").uniform(0.0, CITY_CYCLE_S)
                flights.append(self._cycle("city", i, tau, phase_s, CITY_CYCLE_S,
                                           self._city_flight))
        episodic = (("conflicts", CONFLICT_PERIOD_S, self._conflict_episode),
                    ("intruder", INTRUDER_PERIOD_S, self._intruder_episode),
                    ("crewed", CREWED_PERIOD_S, self._crewed_episode))
        for kind, period_s, build in episodic:
            if kind in self.kinds:
                for episode in self._episodes_near(kind, tau, self.first_s[kind], period_s,
                                                   build):
                    flights.extend(f for f in episode.flights if f.origin_t <= t < f.end_t)
        return flights

    def conflicts(self, until_t: float) -> list[ScriptedConflict]:
        """The scripted separation losses from t0 up to `until_t`."""
        return [e for e in self._events("conflicts", until_t, self.first_s["conflicts"],
                                        CONFLICT_PERIOD_S, self._conflict_episode)
                if isinstance(e, ScriptedConflict)]

    def intrusions(self, until_t: float) -> list[ScriptedIntrusion]:
        """The scripted airport intrusions that begin from t0 up to `until_t`."""
        return [e for e in self._events("intruder", until_t, self.first_s["intruder"],
                                        INTRUDER_PERIOD_S, self._intruder_episode)
                if isinstance(e, ScriptedIntrusion)]

    def fleet(self) -> dict[str, str]:
        """Every UAV id the scenario can fly, with its traffic (crewed arrivals are aircraft,
        not UAVs, and not listed)."""
        ids: dict[str, str] = {}
        if "city" in self.kinds:
            ids.update((_city_uav(i), "city") for i in range(self.uavs))
        if "logistics" in self.kinds:
            ids.update((uav, "logistics") for uav in LOGISTICS_UAVS)
        if "conflicts" in self.kinds:
            ids.update((_conflict_uav(k, side), "conflicts")
                       for k in range(CONFLICT_FLEET) for side in "AB")
        if "intruder" in self.kinds:
            ids.update((_intruder_uav(k), "intruder") for k in range(INTRUDER_FLEET))
        return ids

    # Logistics flights and their clearances

    def logistics_departures(self, t_from: float, t_to: float) -> list[Departure]:
        """The logistics takeoffs planned (before any delay) in [t_from, t_to), in time order."""
        if "logistics" not in self.kinds:
            return []
        found = []
        for j, uav in enumerate(LOGISTICS_UAVS):
            phase_s = _logistics_phase_s(j)
            first = math.floor((t_from - self.t0 + phase_s) / LOGISTICS_CYCLE_S)
            last = math.floor((t_to - self.t0 + phase_s) / LOGISTICS_CYCLE_S)
            for cycle in range(first, last + 1):
                flight = self._logistics_plan(j, cycle, 0.0)
                assert flight is not None
                takeoff_t = flight.origin_t + flight.segments[1].t_start
                if t_from <= takeoff_t < t_to:
                    found.append(Departure(uav, j, cycle, takeoff_t))
        return sorted(found, key=lambda d: (d.takeoff_t, d.slot))

    def logistics_route(self, slot: int, cycle: int, delay_s: float = 0.0) -> RouteFit | None:
        """The route a logistics flight asks for when it leaves `delay_s` later than planned;
        None when so late a flight would not end within its cycle."""
        flight = self._logistics_plan(slot, cycle, delay_s)
        return None if flight is None else flight.route_fit()

    def decide(self, slot: int, cycle: int, delay_s: float | None) -> None:
        """A logistics flight is cleared to leave `delay_s` later than planned (None: it stays
        on its pad for the cycle). Only for delays `logistics_route` gave a route for."""
        if delay_s is not None and self._logistics_plan(slot, cycle, delay_s) is None:
            raise ConfigError(f"scenario: a {delay_s:g} s delay does not fit the cycle")
        if len(self._decisions) > 4096:  # forget cycles long flown
            newest = max(c for _, c in self._decisions)
            self._decisions = {k: v for k, v in self._decisions.items() if k[1] >= newest - 4}
        self._decisions[(slot, cycle)] = delay_s

    def _logistics_plan(self, j: int, cycle: int, delay_s: float | None) -> _Flight | None:
        key = (j, cycle, delay_s)
        if key not in self._plans:
            if len(self._plans) > 512:
                self._plans.clear()
            origin_t = self.t0 + cycle * LOGISTICS_CYCLE_S - _logistics_phase_s(j)
            self._plans[key] = self._logistics_flight(j, cycle, origin_t, delay_s)
        return self._plans[key]

    # Persistent traffic: one plan per cycle of a fixed length

    def _cycle(self, traffic: str, i: int, tau: float, phase_s: float, cycle_s: float,
               build: Callable[[int, int, float], _Flight]) -> _Flight:
        cycle = math.floor((tau + phase_s) / cycle_s)
        cached = self._cycles.get((traffic, i))
        if cached is not None and cached[0] == cycle:
            return cached[1]
        flight = build(i, cycle, self.t0 + cycle * cycle_s - phase_s)
        self._cycles[(traffic, i)] = (cycle, flight)
        return flight

    def _city_home(self, i: int) -> tuple[float, float]:
        rng = _rng(self.seed, "city", i, "home")
        margin = 3500.0  # waypoints stay within 3 km of home, so within the box
        while True:
            home = (rng.uniform(_BOX_MIN[0] + margin, _BOX_MAX[0] - margin),
                    rng.uniform(_BOX_MIN[1] + margin, _BOX_MAX[1] - margin))
            if math.dist(home, _AIRPORT) >= 7000.0:  # 3 km reach + 1 km from the circle
                return home

    def _city_flight(self, i: int, cycle: int, origin_t: float) -> _Flight:
        perf = PERFORMANCE["city"]
        rng = _rng(self.seed, "city", i, cycle)
        home = self._homes[i]
        agl = rng.uniform(30.0, perf.max_agl_m)
        speed = rng.uniform(3.0, perf.max_speed_mps)
        climb = rng.uniform(1.5, perf.max_climb_mps)
        descent = rng.uniform(1.0, perf.max_descent_mps)
        legs = rng.randint(1, 3)
        # Worst case: 60 s wait + 81.5 s takeoff + 121 s landing + 3 * 40 s hover + 4 legs *
        # v/a accelerating = 422.5 s; outbound <= 140 s of cruise, the return no longer.
        outbound_m = speed * 140.0
        plan = _Plan((home[0], home[1], 0.0), rng.uniform(0.0, 360.0))
        plan.hold("ground", rng.uniform(5.0, 60.0))
        plan.move("takeoff", (home[0], home[1], agl), climb, perf.vaccel_mps2)
        x, y = home
        for _ in range(legs):
            x, y = _offset((x, y), rng.uniform(0.0, 360.0),
                           max(50.0, rng.uniform(0.2, 1.0) * outbound_m / legs))
            reach = math.dist((x, y), home)
            if reach > 3000.0:  # pull back towards home: never a longer leg
                x = home[0] + (x - home[0]) * 3000.0 / reach
                y = home[1] + (y - home[1]) * 3000.0 / reach
            plan.move("cruise", (x, y, agl), speed, perf.accel_mps2)
            plan.hold("hover", rng.uniform(5.0, 40.0))
        plan.move("return", (home[0], home[1], agl), speed, perf.accel_mps2)
        plan.move("landing", (home[0], home[1], 0.0), descent, perf.vaccel_mps2)
        plan.hold("ground", CITY_CYCLE_S - plan.t)
        return _Flight.of(_city_uav(i), "city", plan, origin_t)

    def _logistics_flight(self, j: int, cycle: int, origin_t: float,
                          delay_s: float | None) -> _Flight | None:
        """Cycle `cycle` of logistics UAV j, leaving `delay_s` late (None: on its pad all
        cycle); None when the delayed flight would not end within the cycle."""
        perf = PERFORMANCE["logistics"]
        route = LOGISTICS_ROUTES[j % len(LOGISTICS_ROUTES)]
        copy = j // len(LOGISTICS_ROUTES)
        rng = _rng(self.seed, "logistics", j, cycle)
        pad = _offset((0.0, 0.0), route.bearing_deg + copy * _PAD_SPREAD_DEG, _HUB_RING_M)
        drop = _offset((0.0, 0.0), route.bearing_deg, route.distance_m)
        out_agl = route.out_agl_m
        back_agl = out_agl + _LOGISTICS_RETURN_CLIMB_M
        plan = _Plan((pad[0], pad[1], 0.0), route.bearing_deg)
        loading_s = rng.uniform(40.0, 80.0)
        if delay_s is None:
            plan.hold("ground", LOGISTICS_CYCLE_S)
            return _Flight.of(LOGISTICS_UAVS[j], "logistics", plan, origin_t)
        plan.hold("ground", loading_s + delay_s)
        plan.move("takeoff", (pad[0], pad[1], out_agl), perf.max_climb_mps, perf.vaccel_mps2)
        plan.move("cruise", (drop[0], drop[1], out_agl), route.speed_mps, perf.accel_mps2)
        plan.hold("hover", _LOGISTICS_HOVER_S)
        plan.move("climb", (drop[0], drop[1], back_agl), perf.max_climb_mps, perf.vaccel_mps2)
        plan.move("return", (pad[0], pad[1], back_agl), route.speed_mps, perf.accel_mps2)
        plan.move("landing", (pad[0], pad[1], 0.0), perf.max_descent_mps, perf.vaccel_mps2)
        if plan.t > LOGISTICS_CYCLE_S:
            return None
        plan.hold("ground", LOGISTICS_CYCLE_S - plan.t)
        return _Flight.of(LOGISTICS_UAVS[j], "logistics", plan, origin_t)

    # Episodes: scripted flights, one set every period

    def _episodes_near(self, kind: str, tau: float, first_s: float, period_s: float,
                       build: Callable[[int], _Episode]) -> list[_Episode]:
        span_s = 900.0  # every episode's flights report within this of its scripted instant
        k_lo = max(0, math.ceil((tau - first_s - span_s) / period_s))
        k_hi = math.floor((tau - first_s + span_s) / period_s)
        if len(self._episodes) > 256:
            self._episodes.clear()
        episodes: list[_Episode] = []
        for k in range(k_lo, k_hi + 1):
            episode = self._episodes.get((kind, k))
            if episode is None:
                episode = self._episodes[(kind, k)] = build(k)
            episodes.append(episode)
        return episodes

    def _events(self, kind: str, until_t: float, first_s: float, period_s: float,
                build: Callable[[int], _Episode]) -> list[ScriptedConflict | ScriptedIntrusion]:
        if kind not in self.kinds:
            return []
        last = math.floor((until_t - self.t0 - first_s) / period_s)
        return [e for k in range(max(0, last + 1))
                if (e := build(k).event) is not None]

    def _scripted_t(self, first_s: float, period_s: float, k: int) -> float:
        return self.t0 + first_s + k * period_s

    @staticmethod
    def _one_way(start: tuple[float, float], bearing_deg: float, length_m: float, agl: float,
                 speed: float, perf: Performance) -> tuple[_Plan, _Segment]:
        """Ground 10 s, takeoff, one straight cruise leg, hover 10 s, landing, ground 10 s."""
        end = _offset(start, bearing_deg, length_m)
        plan = _Plan((start[0], start[1], 0.0), bearing_deg)
        plan.hold("ground", 10.0)
        plan.move("takeoff", (start[0], start[1], agl), perf.max_climb_mps, perf.vaccel_mps2)
        leg = plan.move("cruise", (end[0], end[1], agl), speed, perf.accel_mps2)
        plan.hold("hover", 10.0)
        plan.move("landing", (end[0], end[1], 0.0), perf.max_descent_mps, perf.vaccel_mps2)
        plan.hold("ground", 10.0)
        return plan, leg

    def _conflict_episode(self, k: int) -> _Episode:
        perf = PERFORMANCE["conflicts"]
        rng = _rng(self.seed, "conflicts", k)
        spot = _CONFLICT_SPOTS[k % len(_CONFLICT_SPOTS)]
        bearing_a = rng.uniform(0.0, 360.0)
        agl = rng.uniform(50.0, perf.max_agl_m)
        speed_a = rng.uniform(8.0, perf.max_speed_mps)
        arm = _CONFLICT_ARM_M
        if k % 2 == 0:
            geometry = "head_on"
            bearing_b = bearing_a + 180.0
            speed_b = rng.uniform(8.0, perf.max_speed_mps)
            lateral = rng.uniform(5.0, 30.0) / 2.0  # each lane this far from the spot
            centre_a = _offset(spot, bearing_a + 90.0, lateral)
            centre_b = _offset(spot, bearing_a - 90.0, lateral)
            lag_b = 0.0  # B passes abeam the spot when A does
        else:
            geometry = "crossing"
            bearing_b = bearing_a + rng.choice((-1.0, 1.0)) * rng.uniform(60.0, 120.0)
            speed_b = rng.uniform(8.0, perf.max_speed_mps)
            centre_a = centre_b = spot
            lag_b = rng.uniform(0.5, 2.0)  # B crosses the spot this much after A
        # Relative motion near the spot, with A over its centre at tau = 0.
        ua, ub = _unit(bearing_a), _unit(bearing_b)
        va = (ua[0] * speed_a, ua[1] * speed_a)
        vb = (ub[0] * speed_b, ub[1] * speed_b)
        b0 = (centre_b[0] - vb[0] * lag_b, centre_b[1] - vb[1] * lag_b)  # B when A is over centre
        p0 = (centre_a[0] - b0[0], centre_a[1] - b0[1])
        w = (va[0] - vb[0], va[1] - vb[1])
        tau_loss, tau_cpa = _first_within(p0, w, SEPARATION_H_M)
        cpa_m = math.hypot(p0[0] + w[0] * tau_cpa, p0[1] + w[1] * tau_cpa)
        # Place A's passage so that the loss falls exactly on the scripted instant.
        loss_t = self._scripted_t(self.first_s["conflicts"], CONFLICT_PERIOD_S, k)
        pass_a = loss_t - tau_loss
        flights = []
        for uav, centre, bearing, speed, pass_t in (
            (_conflict_uav(k, "A"), centre_a, bearing_a, speed_a, pass_a),
            (_conflict_uav(k, "B"), centre_b, bearing_b, speed_b, pass_a + lag_b),
        ):
            plan, leg = self._one_way(_offset(centre, bearing, -arm), bearing, 2.0 * arm, agl,
                                      speed, perf)
            origin = pass_t - (leg.t_start + leg.time_at(arm))
            flights.append(_Flight.of(uav, "conflicts", plan, origin))
        event = ScriptedConflict(flights[0].uav, flights[1].uav, geometry, loss_t,
                                 pass_a + tau_cpa, cpa_m, agl)
        return _Episode(tuple(flights), event)

    def _intruder_episode(self, k: int) -> _Episode:
        perf = PERFORMANCE["intruder"]
        rng = _rng(self.seed, "intruder", k)
        bearing = rng.uniform(150.0, 230.0)  # from the airport: south of it
        home = _offset(_AIRPORT, bearing, _INTRUDER_HOME_M)
        target = _offset(_AIRPORT, bearing, _INTRUDER_TARGET_M)
        agl = rng.uniform(80.0, perf.max_agl_m)
        speed = rng.uniform(10.0, perf.max_speed_mps)
        uav = _intruder_uav(k)
        plan = _Plan((home[0], home[1], 0.0), bearing + 180.0)
        plan.hold("ground", 10.0)
        plan.move("takeoff", (home[0], home[1], agl), perf.max_climb_mps, perf.vaccel_mps2)
        inbound = plan.move("cruise", (target[0], target[1], agl), speed, perf.accel_mps2)
        plan.hold("hover", 30.0)
        outbound = plan.move("return", (home[0], home[1], agl), speed, perf.accel_mps2)
        plan.move("landing", (home[0], home[1], 0.0), perf.max_descent_mps, perf.vaccel_mps2)
        plan.hold("ground", 10.0)
        entry_t = self._scripted_t(self.first_s["intruder"], INTRUDER_PERIOD_S, k)
        inside_after_m = _INTRUDER_HOME_M - AIRPORT_RADIUS_M
        origin = entry_t - (inbound.t_start + inbound.time_at(inside_after_m))
        flight = _Flight.of(uav, "intruder", plan, origin)
        exit_t = flight.time_along(outbound, AIRPORT_RADIUS_M - _INTRUDER_TARGET_M)
        return _Episode((flight,), ScriptedIntrusion(uav, entry_t, exit_t))

    def _crewed_episode(self, k: int) -> _Episode:
        rng = _rng(self.seed, "crewed", k)
        digest = hashlib.blake2b(f"{self.seed}:crewed:{k}".encode(), digest_size=3).digest()
        icao = 0x780000 + int.from_bytes(digest, "big") % 0x40000
        ground_speed = rng.uniform(68.0, 80.0)
        slope = math.tan(math.radians(_GLIDE_DEG))
        start = _offset(_AIRPORT, _RUNWAY_DEG + 180.0, _APPROACH_M)
        plan = _Plan((start[0], start[1], _THRESHOLD_CROSSING_M + _APPROACH_M * slope),
                     _RUNWAY_DEG)
        plan.move("approach", (_AIRPORT[0], _AIRPORT[1], _THRESHOLD_CROSSING_M),
                  ground_speed * math.hypot(1.0, slope), 0.0)
        touchdown_t = self._scripted_t(self.first_s["crewed"], CREWED_PERIOD_S, k)
        flight = _Flight.of(f"ICAO-{icao:06X}", "crewed", plan, touchdown_t - plan.t,
                            kind="crewed", report_agl=False)
        return _Episode((flight,), None)


# The satellite link


@dataclass
class LinkStats:
    offered: int = 0  # observations given to the link
    lost: int = 0  # never delivered
    duplicated: int = 0  # delivered a second time
    reordered: int = 0  # held back so that later ones overtake them
    delivered: int = 0  # copies handed out by due()/flush(), duplicates included


class SatelliteLink:
    """Delivers observations the way a satellite relay does: late (a normal delay of
    `delay_mean_s` with standard deviation `delay_jitter_s`, never negative), in bursts (held
    until the next multiple of `burst_s` of Unix time), out of order (a fraction `reorder` held
    `reorder_hold_s` longer), twice (a fraction `duplicate`, the copy with its own delay) or
    never (a fraction `loss`). Every observation draws the same five numbers from the link's own
    RNG, so the outcome depends only on the seed and the order of `deliver` calls."""

    def __init__(self, seed: int = 0, *, delay_mean_s: float = 0.0, delay_jitter_s: float = 0.0,
                 burst_s: float = 0.0, reorder: float = 0.0, duplicate: float = 0.0,
                 loss: float = 0.0, reorder_hold_s: float = 2.0) -> None:
        for name, p in (("reorder", reorder), ("duplicate", duplicate), ("loss", loss)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"satellite link: {name} must be a probability in 0..1")
        for name, s in (("delay_mean_s", delay_mean_s), ("delay_jitter_s", delay_jitter_s),
                        ("burst_s", burst_s), ("reorder_hold_s", reorder_hold_s)):
            if not (math.isfinite(s) and s >= 0.0):
                raise ConfigError(f"satellite link: {name} must be 0 or more seconds")
        self.delay_mean_s, self.delay_jitter_s = delay_mean_s, delay_jitter_s
        self.burst_s, self.reorder_hold_s = burst_s, reorder_hold_s
        self.reorder, self.duplicate, self.loss = reorder, duplicate, loss
        self.stats = LinkStats()
        self._rng = _rng(seed, "link")
        self._queue: list[tuple[float, int, State]] = []
        self._count = 0

    def __len__(self) -> int:
        return len(self._queue)

    def deliver(self, obs: State, now: float) -> None:
        """Hand one observation to the link at time `now`."""
        rng = self._rng
        lost = rng.random() < self.loss
        twice = rng.random() < self.duplicate
        late = rng.random() < self.reorder
        delays = (rng.gauss(self.delay_mean_s, self.delay_jitter_s),
                  rng.gauss(self.delay_mean_s, self.delay_jitter_s))
        self.stats.offered += 1
        if lost:
            self.stats.lost += 1
            return
        hold = 0.0
        if late:
            self.stats.reordered += 1
            hold = self.reorder_hold_s
        self._push(now + max(0.0, delays[0]) + hold, obs)
        if twice:
            self.stats.duplicated += 1
            self._push(now + max(0.0, delays[1]), obs)

    def _push(self, due_t: float, obs: State) -> None:
        if self.burst_s > 0.0:
            due_t = math.ceil(due_t / self.burst_s) * self.burst_s
        self._count += 1
        heapq.heappush(self._queue, (due_t, self._count, obs))

    def next_due(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def due(self, now: float) -> list[State]:
        """Every observation due by `now`, in delivery order."""
        out: list[State] = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        self.stats.delivered += len(out)
        return out

    def flush(self) -> list[State]:
        """Everything still held, in delivery order (the end of a run)."""
        return self.due(math.inf)
