"""The UAV registry and token endpoints (API.md section 8). Who may call them is decided by the
route table (lowalt/access.py); every change is written to the audit log."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from lowalt.api import REGISTRY, STORE, BadRequest
from lowalt.audit import audit
from lowalt.auth import AUTH, PRINCIPAL, Registry, hash_token, new_token
from lowalt.fusion import identity_of
from lowalt.limits import LIMITS
from lowalt.models import ROLES, UAV_RE
from lowalt.storage import TokenRecord, UavRecord

MAX_ALIASES = 16
MAX_SPEED_MPS = 300.0  # the observation limit (API.md section 1)
TEXT_LIMITS = {"operator": 64, "serial": 64, "model": 128, "class": 32, "name": 64}
UAV_FIELDS = frozenset({"uav", "operator", "serial", "model", "class", "max_speed_mps", "aliases",
                        "priority"})
TOKEN_FIELDS = frozenset({"role", "operator", "name", "expires_in_s"})


class Conflict(web.HTTPConflict):
    def __init__(self, message: str) -> None:
        super().__init__(text=json.dumps({"error": message}), content_type="application/json")


def not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


async def _object(request: web.Request, fields: frozenset[str]) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body: expected an object")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadRequest(f"{unknown[0]}: unknown field (expected {', '.join(sorted(fields))})")
    return body


def _text(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    """A printable string of 1..TEXT_LIMITS[key] characters; None when absent or null."""
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key}: required")
        return None
    limit = TEXT_LIMITS[key]
    if not isinstance(value, str) or not value.strip() or len(value) > limit \
            or not value.isprintable():
        raise BadRequest(f"{key}: expected 1..{limit} printable characters")
    return value


# -- the registry ------------------------------------------------------------------------------

def uav_json(r: UavRecord) -> dict[str, Any]:
    return {"uav": r.uav, "operator": r.operator, "serial": r.serial, "model": r.model,
            "class": r.uav_class, "max_speed_mps": r.max_speed_mps, "aliases": list(r.aliases),
            "priority": r.priority}


def uav_record(body: Mapping[str, Any]) -> UavRecord:
    """A registry record from the JSON fields (API names); BadRequest names the bad field."""
    uav = body.get("uav")
    if not isinstance(uav, str) or not UAV_RE.match(uav):
        raise BadRequest("uav: required, 1..64 of [A-Za-z0-9._:-]")
    operator = _text(body, "operator", required=True)
    assert operator is not None
    aliases = body.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and UAV_RE.match(a)
                                                for a in aliases):
        raise BadRequest("aliases: expected a list of ids of 1..64 of [A-Za-z0-9._:-]")
    if len(aliases) > MAX_ALIASES:
        raise BadRequest(f"aliases: at most {MAX_ALIASES}")
    if len(set(aliases)) != len(aliases) or uav in aliases:
        raise BadRequest("aliases: must be distinct and differ from uav")
    priority = body.get("priority", False)
    if not isinstance(priority, bool):
        raise BadRequest("priority: expected true or false")
    speed = body.get("max_speed_mps")
    if speed is not None:
        if isinstance(speed, bool) or not isinstance(speed, int | float) \
                or not math.isfinite(speed) or not 0 < speed <= MAX_SPEED_MPS:
            raise BadRequest(f"max_speed_mps: expected a number in (0, {MAX_SPEED_MPS:g}]")
        speed = float(speed)
    return UavRecord(uav, operator, tuple(aliases), priority, _text(body, "serial"),
                     _text(body, "model"), _text(body, "class"), speed)


def check_identifiers(registry: Registry, record: UavRecord) -> None:
    """Conflict unless the record's id and aliases name no other UAV."""
    owner = registry.alias_to_uav.get(record.uav)
    if owner is not None and owner != record.uav:
        raise Conflict(f"uav: {record.uav} is an alias of {owner}")
    for alias in record.aliases:
        if alias in registry.by_uav:
            raise Conflict(f"aliases: {alias} is a registered UAV")
        owner = registry.alias_to_uav.get(alias)
        if owner is not None and owner != record.uav:
            raise Conflict(f"aliases: {alias} is already an alias of {owner}")


async def _register(request: web.Request, record: UavRecord) -> None:
    registry = request.app[REGISTRY]
    check_identifiers(registry, record)
    await registry.register(record)


async def post_uav(request: web.Request) -> web.Response:
    """POST /v1/uavs: register or re-register (replace) a UAV."""
    record = uav_record(await _object(request, UAV_FIELDS))
    registry = request.app[REGISTRY]
    async with registry.lock:
        await registry.refresh()  # see what the CLI registered meanwhile
        await _register(request, record)
    await audit(request.app, request[PRINCIPAL], "uav.register", record.uav, uav_json(record))
    return web.json_response(uav_json(record), status=201)


async def patch_uav(request: web.Request) -> web.Response:
    """PATCH /v1/uavs/{uav}: change the fields given; null clears an optional one."""
    uav = request.match_info["uav"]
    changes = await _object(request, UAV_FIELDS)
    if changes.get("uav", uav) != uav:
        raise BadRequest("uav: cannot be changed; register the new id instead")
    registry = request.app[REGISTRY]
    async with registry.lock:
        await registry.refresh()
        current = await request.app[STORE].uav(uav)
        if current is None:
            return not_found()
        record = uav_record({**uav_json(current), **changes})
        await _register(request, record)
    await audit(request.app, request[PRINCIPAL], "uav.patch", uav, changes)
    return web.json_response(uav_json(record))


async def list_uav_registry(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    registry = request.app[REGISTRY]
    records = sorted(registry.by_uav.values(), key=lambda r: r.uav)
    return web.json_response({"uavs": [uav_json(r) for r in records
                                       if registry.may_read(principal, r.uav)]})


async def get_uav_record(request: web.Request) -> web.Response:
    """GET /v1/registry/uavs/{uav}: the record; an alias gives its UAV's."""
    registry = request.app[REGISTRY]
    record = registry.by_uav.get(identity_of(registry, request.match_info["uav"])[0])
    return web.json_response(uav_json(record)) if record is not None else not_found()


# -- tokens ------------------------------------------------------------------------------------

def token_json(r: TokenRecord, now: float) -> dict[str, Any]:
    """A token's metadata; the token itself and its hash are never shown."""
    return {"id": r.token_id, "name": r.name, "role": r.role, "operator": r.operator,
            "created_at": r.created_at, "expires_at": r.expires_at, "revoked": r.revoked,
            "expired": r.expires_at is not None and r.expires_at <= now}


async def post_token(request: web.Request) -> web.Response:
    """POST /v1/tokens: a new token, shown in this answer only."""
    body = await _object(request, TOKEN_FIELDS)
    role = body.get("role")
    if role not in ROLES:
        raise BadRequest(f"role: expected one of {', '.join(ROLES)}")
    operator = _text(body, "operator", required=role == "operator")
    if operator is not None and role != "operator":
        raise BadRequest("operator: only operator tokens act for an operator")
    name = _text(body, "name") or operator or role
    if "/" in name:
        raise BadRequest("name: must not contain '/'")
    expires_in = body.get("expires_in_s")
    if expires_in is not None and (isinstance(expires_in, bool)
                                   or not isinstance(expires_in, int | float)
                                   or not math.isfinite(expires_in) or expires_in <= 0):
        raise BadRequest("expires_in_s: expected a positive number of seconds")
    now = time.time()
    expires_at = now + float(expires_in) if expires_in is not None else None
    token = new_token()
    token_id = await request.app[STORE].insert_token(hash_token(token), name, role, operator,
                                                    expires_at, now)
    record = TokenRecord(token_id, name, role, operator, expires_at, False, now)
    await audit(request.app, request[PRINCIPAL], "token.create", str(token_id),
                {"name": name, "role": role, "operator": operator, "expires_at": expires_at})
    answer = {**token_json(record, now), "token": token}
    return web.json_response(answer, status=201, headers={"Cache-Control": "no-store"})


async def list_tokens(request: web.Request) -> web.Response:
    now = time.time()
    return web.json_response(
        {"tokens": [token_json(r, now) for r in await request.app[STORE].list_tokens()]}
    )


async def delete_token(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{id}: revoke; 204 also when it was revoked already. The token's open
    gateway and WebSocket connections end (after the acks they are owed, on the gateway)."""
    raw = request.match_info["id"]
    if not raw.isdigit() or len(raw) > 18:
        return not_found()
    token_id = int(raw)
    store = request.app[STORE]
    record = await store.token_by_id(token_id)
    if record is None:
        return not_found()
    was_active = await store.revoke_token_id(token_id)
    request.app[AUTH].forget(token_id)
    request.app[LIMITS].connections.revoke(token_id, "token revoked")
    await audit(request.app, request[PRINCIPAL], "token.revoke", str(token_id),
                {"name": record.name, "role": record.role, "was_active": was_active})
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/uavs", post_uav)
    app.router.add_patch("/v1/uavs/{uav}", patch_uav)
    app.router.add_get("/v1/registry/uavs", list_uav_registry)
    app.router.add_get("/v1/registry/uavs/{uav}", get_uav_record)
    app.router.add_post("/v1/tokens", post_token)
    app.router.add_get("/v1/tokens", list_tokens)
    app.router.add_delete("/v1/tokens/{id}", delete_token)
