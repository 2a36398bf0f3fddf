"""Clearance routes (API.md section 5) and the wiring of the clearance service into the server.

Who may do what (the rows in lowalt/access.py, checked again here): operators request, see,
cancel and resume clearances for the UAVs registered to them (another operator's clearance
answers 404: its existence is private); regulators see, cancel and resume every clearance, and
request priority ones for any UAV; admins do everything, for any UAV; gateways nothing (403).
Priority requests (`"priority": "emergency"`) go to geofence/priority.py, which says who may.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from dispatch.service import DISPATCH
from geofence.clearance_service import (
    Clearance,
    ClearanceService,
    StateConflict,
    clearance_store_for,
)
from geofence.clearances import STATES, request_from_json
from geofence.http import GEOFENCE
from geofence.priority import PRIORITIES, PriorityOps
from lowalt.auth import PRINCIPAL, require_role
from lowalt.errors import AuthError, ValidationError
from lowalt.models import Principal

CLEARANCES = web.AppKey("clearances", ClearanceService)
PRIORITY = web.AppKey("priority", PriorityOps)
REQUESTERS = ("operator",)  # admin holds every role
PRIORITY_REQUESTERS = ("operator", "regulator")
READERS = ("operator", "regulator")
LIST_LIMIT = 1000


def _invalid(exc: ValidationError) -> web.Response:
    return web.json_response({"error": str(exc), "field": exc.field}, status=400)


def _visible(principal: Principal, c: Clearance) -> bool:
    return principal.reads_all or (
        principal.operator is not None and c.operator == principal.operator
    )


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"not valid JSON: {exc}",
                                                  "field": "body"}),
                                 content_type="application/json") from None


def _priority_of(body: dict[str, Any]) -> str | None:
    value = body.get("priority")
    if value is not None and value not in PRIORITIES:
        raise ValidationError("priority", f"must be one of {', '.join(sorted(PRIORITIES))}")
    return value


async def post_clearance(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    require_role(principal, PRIORITY_REQUESTERS)
    service = request.app[CLEARANCES]
    settings = service.settings
    body = await _json_body(request)
    try:
        route = request_from_json(body, now=time.time(),
                                  tolerance_s=settings.clearance_time_tolerance_s,
                                  max_horizon_s=settings.clearance_max_horizon_s)
        priority = _priority_of(body)
    except ValidationError as exc:
        return _invalid(exc)
    operator = service.registry_operator(route.uav)
    if priority is None:
        require_role(principal, REQUESTERS)  # regulators ask priority clearances only
    if principal.role == "operator" and (
        principal.operator is None or operator != principal.operator
    ):
        raise AuthError(f"uav {route.uav} is not registered to this operator", 403)
    try:
        if priority is None:
            clearance = await service.request(route, operator)
        else:
            clearance = await request.app[PRIORITY].request(principal, route, operator, priority)
    except ValidationError as exc:
        return _invalid(exc)
    return web.json_response(clearance.to_json(), status=201)


async def list_clearances(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    require_role(principal, READERS)
    state = request.query.get("state")
    if state is not None and state not in STATES:
        return _invalid(ValidationError("state", f"must be one of {', '.join(STATES)}"))
    uav = request.query.get("uav")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= LIST_LIMIT:
        return _invalid(ValidationError("limit", f"must be an integer 1..{LIST_LIMIT}"))
    found = await request.app[CLEARANCES].search(
        operator=principal.operator, all_operators=principal.reads_all, state=state, uav=uav,
        limit=limit,
    )
    if not principal.reads_all and principal.operator is None:
        found = []
    return web.json_response({"clearances": [c.to_json() for c in found]})


async def _visible_clearance(request: web.Request) -> Clearance:
    principal = request[PRINCIPAL]
    require_role(principal, READERS)
    clearance = await request.app[CLEARANCES].get(request.match_info["id"])
    if clearance is None or not _visible(principal, clearance):
        raise AuthError("no such clearance", 404)
    return clearance


async def get_clearance(request: web.Request) -> web.Response:
    return web.json_response((await _visible_clearance(request)).to_json())


async def delete_clearance(request: web.Request) -> web.Response:
    clearance = await _visible_clearance(request)
    try:
        cancelled = await request.app[CLEARANCES].cancel(clearance.id)
    except StateConflict as exc:
        return web.json_response({"error": str(exc), "state": exc.clearance.state}, status=409)
    if cancelled is None:
        raise AuthError("no such clearance", 404)
    return web.json_response(cancelled.to_json())


async def resume_clearance(request: web.Request) -> web.Response:
    """POST /v1/clearances/{id}/resume: decide a suspended clearance again; 200 with it granted,
    or 409 with the reasons it cannot be (it stays suspended)."""
    clearance = await _visible_clearance(request)
    try:
        resumed, reasons = await request.app[PRIORITY].resume(request[PRINCIPAL], clearance)
    except StateConflict as exc:
        return web.json_response({"error": str(exc), "state": exc.clearance.state}, status=409)
    if reasons:
        return web.json_response({"error": f"clearance {clearance.id} cannot resume now",
                                  "reasons": reasons, "clearance": resumed.to_json()},
                                 status=409)
    return web.json_response(resumed.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/clearances", post_clearance)
    app.router.add_get("/v1/clearances", list_clearances)
    app.router.add_get("/v1/clearances/{id}", get_clearance)
    app.router.add_delete("/v1/clearances/{id}", delete_clearance)
    app.router.add_post("/v1/clearances/{id}/resume", resume_clearance)


def setup_clearances(app: web.Application) -> None:
    """Routes, plus a cleanup_ctx (after the checks', before ingest's) that loads the reserved
    clearances, plugs the conformance stage into the pipeline, hooks priority operations to
    clearance changes and new zones, and sweeps expiries."""
    from lowalt.app import RUNTIME  # lowalt.app imports this module

    async def clearances_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        service = ClearanceService(
            clearance_store_for(rt.store), app[DISPATCH].manager, app[GEOFENCE], rt.settings,
            push=rt.ingest.push_hub.push, registry=rt.registry, metrics=rt.metrics,
        )
        await service.start()
        app[GEOFENCE].authorised_by_clearance = service.authorises
        priority = PriorityOps(service, app[DISPATCH].manager, rt.live, rt.store,
                               registry=rt.registry, push=rt.ingest.push_hub.push)
        service.change_listeners.append(priority.on_change)
        app[GEOFENCE].zone_listeners.append(priority.on_zones_added)
        await priority.start()
        rt.pipeline.stages.append(service)
        app[CLEARANCES] = service
        app[PRIORITY] = priority
        expiry = asyncio.create_task(service.run_expiry(), name="lowalt-clearance-expiry")
        yield
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry

    app.cleanup_ctx.append(clearances_ctx)
    add_routes(app)
