"""Core records shared by every layer: observations, principals and commit results."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple


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
