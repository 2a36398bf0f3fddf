"""Zone routes (API.md section 3): CRUD, ED-269 import and export. Who may call them is decided
by the route table (lowalt/access.py); changes go to the audit log."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from geofence.ed269 import zones_from_ed269, zones_to_ed269
from geofence.service import Geofence, zones_from_request
from geofence.zones import zone_to_feature
from lowalt.audit import audit
from lowalt.auth import PRINCIPAL
from lowalt.errors import ValidationError

GEOFENCE = web.AppKey("geofence", Geofence)


def _invalid(exc: ValidationError, status: int = 400) -> web.Response:
    return web.json_response({"error": str(exc), "field": exc.field}, status=status)


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"not valid JSON: {exc}"}),
                                 content_type="application/json") from None


async def post_zone(request: web.Request) -> web.Response:
    body = await _json_body(request)
    geofence = request.app[GEOFENCE]
    try:
        zones = zones_from_request(body)
        await geofence.add(zones, by=request[PRINCIPAL])
    except ValidationError as exc:
        return _invalid(exc, 409 if "exists already" in exc.reason else 400)
    await audit(request.app, request[PRINCIPAL], "zone.create", ",".join(z.id for z in zones),
                {"zones": [z.id for z in zones]})
    if len(zones) == 1:
        return web.json_response(zone_to_feature(zones[0]), status=201)
    return web.json_response(
        {"type": "FeatureCollection", "features": [zone_to_feature(z) for z in zones]},
        status=201,
    )


async def import_zones(request: web.Request) -> web.Response:
    fmt = request.query.get("format", "ed269")
    body = await _json_body(request)
    try:
        if fmt == "ed269":
            zones = zones_from_ed269(body)
        elif fmt == "geojson":
            zones = zones_from_request(body)
        else:
            raise ValidationError("format", "expected ed269 or geojson")
        await request.app[GEOFENCE].add(zones, by=request[PRINCIPAL])
    except ValidationError as exc:
        return _invalid(exc, 409 if "exists already" in exc.reason else 400)
    await audit(request.app, request[PRINCIPAL], "zone.import", ",".join(z.id for z in zones),
                {"format": fmt, "zones": [z.id for z in zones]})
    return web.json_response({"imported": [z.id for z in zones]}, status=201)


async def list_zones(request: web.Request) -> web.Response:
    zones = list(request.app[GEOFENCE].index.zones)
    fmt = request.query.get("format", "geojson")
    if fmt == "ed269":
        return web.json_response(zones_to_ed269(zones))
    if fmt != "geojson":
        return web.json_response({"error": "format: expected geojson or ed269"}, status=400)
    return web.json_response(
        {"type": "FeatureCollection", "features": [zone_to_feature(z) for z in zones]}
    )


async def get_zone(request: web.Request) -> web.Response:
    zone = request.app[GEOFENCE].index.get(request.match_info["zone_id"])
    if zone is None:
        return web.json_response({"error": "no such zone"}, status=404)
    return web.json_response(zone_to_feature(zone))


async def delete_zone(request: web.Request) -> web.Response:
    zone_id = request.match_info["zone_id"]
    if not await request.app[GEOFENCE].delete(zone_id):
        return web.json_response({"error": "no such zone"}, status=404)
    await audit(request.app, request[PRINCIPAL], "zone.delete", zone_id)
    return web.json_response({"deleted": zone_id})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/zones", post_zone)
    app.router.add_post("/v1/zones/import", import_zones)
    app.router.add_get("/v1/zones", list_zones)
    app.router.add_get("/v1/zones/{zone_id}", get_zone)
    app.router.add_delete("/v1/zones/{zone_id}", delete_zone)
