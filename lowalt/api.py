"""The read API (API.md section 7) and the operations endpoints (section 9)."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from aiohttp import web

from lowalt.auth import PRINCIPAL, Registry
from lowalt.errors import AuthError, StorageUnavailable
from lowalt.fusion import FUSED, distance_m, identity_of
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.models import Observation, Principal
from lowalt.storage import Store

STORE = web.AppKey("store", Store)
LIVE = web.AppKey("live", LiveState)
REGISTRY = web.AppKey("registry", Registry)
METRICS = web.AppKey("metrics", Metrics)
TRACK_LIMIT = 10_000
VIEW_MAX_DIAGONAL_M = 7_000.0  # F3411 NetMaxDisplayAreaDiagonal
RECENT_POSITIONS_S = 60.0  # F3411 NetMaxNearRealTimeDataPeriod
RECENT_POSITIONS_MAX = 10


class BadRequest(web.HTTPBadRequest):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def parse_floats(raw: str, n: int, name: str) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",")]
    except ValueError:
        raise BadRequest(f"{name}: expected {n} comma-separated numbers") from None
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise BadRequest(f"{name}: expected {n} comma-separated numbers")
    return values


def parse_bbox(raw: str | None) -> tuple[float, float, float, float]:
    """bbox=minlon,minlat,maxlon,maxlat (the whole world when absent)."""
    if raw is None:
        return (-180.0, -90.0, 180.0, 90.0)
    min_lon, min_lat, max_lon, max_lat = parse_floats(raw, 4, "bbox")
    if min_lon > max_lon or min_lat > max_lat:
        raise BadRequest("bbox: expected minlon,minlat,maxlon,maxlat with min <= max")
    return (min_lon, min_lat, max_lon, max_lat)


def observation_json(row: Observation) -> dict[str, Any]:
    return row._asdict()


def visible(registry: Registry, principal: Principal, rows: list[Observation]) -> list[Observation]:
    if principal.reads_all:
        return rows
    return [r for r in rows if registry.may_read(principal, r.uav)]


async def get_uavs(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    bbox = parse_bbox(request.query.get("bbox"))
    live = request.app[LIVE]
    rows = visible(request.app[REGISTRY], principal, live.in_bbox(*bbox))
    uavs = []
    for r in rows:
        item = observation_json(r)
        operator = live.operator_positions.get(r.uav)
        if operator is not None:  # from F3411 System messages
            item["operator_lat"], item["operator_lon"] = operator
        uavs.append(item)
    return web.json_response({"uavs": uavs})


async def get_track(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    # An alias or a registered id: the track of the whole aircraft, every identifier it is
    # reported with (docs/API.md, "Fusion and live traffic").
    uav, ids = identity_of(request.app[REGISTRY], request.match_info["uav"])
    if not request.app[REGISTRY].may_read(principal, uav):
        raise AuthError(f"uav {uav} is not yours", 404)
    now = time.time()
    t_from = _float_arg(request, "from", now - 3600.0)
    t_to = _float_arg(request, "to", now + 60.0)
    limit = int(_float_arg(request, "limit", TRACK_LIMIT))
    if not 1 <= limit <= TRACK_LIMIT:
        raise BadRequest(f"limit: must be 1..{TRACK_LIMIT}")
    store = request.app[STORE]
    if len(ids) == 1:
        rows = await store.track(uav, t_from, t_to, limit)
    else:
        rows = await store.track_many(ids, t_from, t_to, limit)
    return web.json_response({"uav": uav, "track": [observation_json(r) for r in rows]})


def _float_arg(request: web.Request, name: str, default: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    return parse_floats(raw, 1, name)[0]


async def get_flights(request: web.Request) -> web.Response:
    """F3411 network remote-ID shaped view: `view=lat1,lon1,lat2,lon2`."""
    principal = request[PRINCIPAL]
    raw = request.query.get("view")
    if raw is None:
        raise BadRequest("view: required, lat1,lon1,lat2,lon2")
    lat1, lon1, lat2, lon2 = parse_floats(raw, 4, "view")
    diagonal_m = float(distance_m(np.array(lat1), np.array(lon1), np.array(lat2), np.array(lon2)))
    if diagonal_m > VIEW_MAX_DIAGONAL_M:  # F3411 answers 413 "Area too large"
        raise web.HTTPRequestEntityTooLarge(
            max_size=int(VIEW_MAX_DIAGONAL_M), actual_size=int(diagonal_m),
            text=json.dumps({"error": f"view too large: diagonal {diagonal_m / 1000:.3f} km "
                             f"exceeds {VIEW_MAX_DIAGONAL_M / 1000:g} km"}),
            content_type="application/json")
    box = (min(lon1, lon2), min(lat1, lat2), max(lon1, lon2), max(lat1, lat2))
    fused = request.app.get(FUSED)
    blended: set[str] = set()
    now = time.time()
    if fused is None:
        rows = request.app[LIVE].in_bbox(*box)
    else:  # the fused state, one flight per canonical aircraft
        aircraft = fused.in_bbox(*box)
        rows = [state for state in fused.states_of(aircraft) if state is not None]
        blended = {a.uav for a in aircraft if len(a.used) > 1}
    registry = request.app[REGISTRY]
    rows = visible(registry, principal, rows)
    recent = await _recent_reports(request.app[STORE], registry, [r.uav for r in rows], now)
    flights = [
        {
            "id": r.uav,
            "aircraft_type": "NotDeclared",
            "current_state": {
                "timestamp": {"value": r.t, "format": "UnixSeconds"},
                "operational_status": _f3411_status(r.status),
                "position": {
                    "lat": r.lat, "lng": r.lon, "alt": r.alt_m,
                    "accuracy_h": r.acc_h_m, "accuracy_v": r.acc_v_m,
                    "extrapolated": r.uav in blended,
                },
                "track": r.track_deg, "speed": r.speed_mps, "vertical_speed": r.vspeed_mps,
                "height": {"distance": r.agl_m, "reference": "TakeoffLocation"}
                if r.agl_m is not None else None,
            },
            "simulated": False,
            "recent_positions": [
                {"time": {"value": p.t, "format": "UnixSeconds"},
                 "position": {"lat": p.lat, "lng": p.lon, "alt": p.alt_m}}
                for p in recent.get(r.uav, ())
            ],
        }
        for r in rows
    ]
    return web.json_response({"timestamp": now, "flights": flights})


async def _recent_reports(
    store: Store, registry: Registry, uavs: list[str], now: float
) -> dict[str, list[Observation]]:
    """Per aircraft of uavs: its newest RECENT_POSITIONS_MAX stored reports under any of its
    identifiers within RECENT_POSITIONS_S of now, oldest first, one per t."""
    canonical_of: dict[str, str] = {}
    for uav in uavs:
        for reported in identity_of(registry, uav)[1]:
            canonical_of.setdefault(reported, uav)
    by_t: dict[str, dict[float, Observation]] = {}
    for row in await store.newest_many(list(canonical_of), now - RECENT_POSITIONS_S,
                                       RECENT_POSITIONS_MAX):
        by_t.setdefault(canonical_of[row.uav], {})[row.t] = row
    return {uav: [reports[t] for t in sorted(reports)[-RECENT_POSITIONS_MAX:]]
            for uav, reports in by_t.items()}


def _f3411_status(status: str | None) -> str:
    return {
        "ground": "Ground", "airborne": "Airborne", "emergency": "Emergency",
        "lost_link": "RemoteIDSystemFailure",
    }.get(status or "", "Undeclared")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[STORE].ping()
    except StorageUnavailable as exc:
        return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[METRICS].render(), content_type="text/plain",
                        charset="utf-8")
