"""Every route x every role x own/other object: the status each must get, in one table, against
the real server on both backends.

The routes are listed from the app's router, so a route added without a row here (and without a
row in lowalt/access.py) fails this test. `own` objects belong to the operator token's operator
(op1), `other` ones to another operator (op2); for roles that see everything the two agree.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from dispatch.store import SubscriptionSpec
from dispatch.webhooks import WEBHOOKS
from ingest.client import GatewayClient
from lowalt import access
from lowalt.storage import UavRecord
from tests.conftest import Server

ROLES = ("admin", "regulator", "operator", "gateway", "none", "bad")
OWNER = {"own": "op1", "other": "op2"}
UAV = {"own": "OWN-1", "other": "OTHER-1"}


@dataclass
class Req:
    method: str
    path: str
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    kind: str = "http"  # http | ws


@dataclass
class World:
    server: Server
    tokens: dict[str, str | None]
    counter: itertools.count[int] = field(default_factory=itertools.count)
    sub_id: int = 0
    clearance: dict[str, str] = field(default_factory=dict)  # own/other -> id

    def n(self) -> int:
        return next(self.counter)

    async def zone(self) -> str:
        zone_id = f"Z-{self.n()}"
        r = await self.server.client.post("/v1/zones", json=zone_feature(zone_id),
                                          headers=auth(self.tokens["admin"]))
        assert r.status == 201, await r.text()
        return zone_id

    async def new_clearance(self, which: str) -> str:
        r = await self.server.client.post("/v1/clearances", json=self.clearance_body(which),
                                          headers=auth(self.tokens["admin"]))
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])

    def clearance_body(self, which: str) -> dict[str, Any]:
        lon = 106.2 + 0.01 * self.n()  # a place of its own: never in conflict
        return {"uav": UAV[which], "departure": time.time() + 600, "speed_mps": 12,
                "corridor_m": 30, "vertical_m": 15, "route": {
                    "type": "LineString", "coordinates": [[lon, 29.3, 100], [lon, 29.31, 100]]}}


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def zone_feature(zone_id: str) -> dict[str, Any]:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [100.0, 20.0]},
            "properties": {"id": zone_id, "restriction": "advisory", "radius_m": 50,
                           "lower_m": 0, "upper_m": 10, "reference": "agl"}}


def obs(which: str) -> dict[str, Any]:
    return {"uav": UAV[which], "t": time.time() - 1, "lat": 29.5, "lon": 106.5, "alt_m": 90.0}


Build = Callable[[World, str], Awaitable[Req]]


def fixed(method: str, path: str, kind: str = "http", **kw: Any) -> Build:
    async def build(w: World, which: str) -> Req:
        return Req(method, path.format(uav=UAV[which]), kind=kind, **kw)
    return build


async def b_post_telemetry(w: World, which: str) -> Req:
    return Req("POST", "/v1/telemetry", json=[obs(which)])


async def b_post_uav(w: World, which: str) -> Req:
    return Req("POST", "/v1/uavs", json={"uav": f"NEW-{w.n()}", "operator": OWNER[which]})


async def b_post_token(w: World, which: str) -> Req:
    return Req("POST", "/v1/tokens", json={"role": "gateway", "name": f"t{w.n()}"})


async def b_delete_token(w: World, which: str) -> Req:
    token_id = await w.server.runtime.store.insert_token(f"h{w.n()}", "x", "gateway", None,
                                                         None, 0.0)
    return Req("DELETE", f"/v1/tokens/{token_id}")


async def b_post_zone(w: World, which: str) -> Req:
    return Req("POST", "/v1/zones", json=zone_feature(f"P-{w.n()}"))


async def b_import_zone(w: World, which: str) -> Req:
    return Req("POST", "/v1/zones/import", json=zone_feature(f"I-{w.n()}"),
               params={"format": "geojson"})


async def b_delete_zone(w: World, which: str) -> Req:
    return Req("DELETE", f"/v1/zones/{await w.zone()}")


async def b_post_sub(w: World, which: str) -> Req:
    return Req("POST", "/v1/subscriptions", json={"url": "http://127.0.0.1:9/h", "secret": "s"})


async def b_delete_sub(w: World, which: str) -> Req:
    sub = await w.server.client.app[WEBHOOKS].create(
        SubscriptionSpec("http://127.0.0.1:9/h", "s", (), None))
    return Req("DELETE", f"/v1/subscriptions/{sub.id}")


async def b_sub(w: World, which: str) -> Req:
    return Req("GET", f"/v1/subscriptions/{w.sub_id}")


async def b_resume_sub(w: World, which: str) -> Req:
    return Req("POST", f"/v1/subscriptions/{w.sub_id}/resume")


async def b_post_clearance(w: World, which: str) -> Req:
    return Req("POST", "/v1/clearances", json=w.clearance_body(which))


async def b_get_clearance(w: World, which: str) -> Req:
    return Req("GET", f"/v1/clearances/{w.clearance[which]}")


async def b_delete_clearance(w: World, which: str) -> Req:
    return Req("DELETE", f"/v1/clearances/{await w.new_clearance(which)}")


async def b_resume_clearance(w: World, which: str) -> Req:
    return Req("POST", f"/v1/clearances/{w.clearance[which]}/resume")  # not suspended: 409


ADM, REG, OPR, GW = "admin", "regulator", "operator", "gateway"
PUBLIC = "public"


def allow(ok: int, *roles: str, own_only: int | None = None) -> dict[str, Any]:
    """ok for roles (admin always), 403 for the other roles, 401 without a valid token.
    own_only: an operator gets ok for its own object and this for another's."""
    expect: dict[str, Any] = {r: 403 for r in (ADM, REG, OPR, GW)}
    for role in (ADM, *roles):
        expect[role] = ok
    if own_only is not None:
        expect[OPR] = (ok, own_only)
    return expect


EVERYONE = {PUBLIC: True}

TABLE: dict[tuple[str, str], tuple[Build, dict[str, Any]]] = {
    ("GET", "/healthz"): (fixed("GET", "/healthz"), EVERYONE),
    ("GET", "/"): (fixed("GET", "/"), EVERYONE),
    ("GET", "/static"): (fixed("GET", "/static/map.css"), EVERYONE),
    ("GET", "/readyz"): (fixed("GET", "/readyz"), allow(200, REG, OPR, GW)),
    ("GET", "/metrics"): (fixed("GET", "/metrics"), allow(200, REG, OPR, GW)),
    ("GET", "/v1/map/config"): (fixed("GET", "/v1/map/config"), allow(200, REG, OPR)),
    ("POST", "/v1/telemetry"): (b_post_telemetry, allow(200, OPR, GW)),  # other: rejected per item
    ("GET", "/v1/telemetry/ws"): (fixed("GET", "/v1/telemetry/ws", "ws"), allow(101, OPR, GW)),
    ("GET", "/v1/uavs"): (fixed("GET", "/v1/uavs"), allow(200, REG, OPR)),
    ("GET", "/v1/uavs/{uav}/track"): (fixed("GET", "/v1/uavs/{uav}/track"),
                                      allow(200, REG, OPR, own_only=404)),
    ("GET", "/v1/flights"): (
        fixed("GET", "/v1/flights", params={"view": "29.5,106.5,29.52,106.52"}),
        allow(200, REG, OPR)),
    ("GET", "/v1/traffic/stream"): (fixed("GET", "/v1/traffic/stream"), allow(200, REG, OPR)),
    ("GET", "/v1/traffic/ws"): (fixed("GET", "/v1/traffic/ws", "ws"), allow(101, REG, OPR)),
    ("POST", "/v1/uavs"): (b_post_uav, allow(201, REG)),
    ("PATCH", "/v1/uavs/{uav}"): (fixed("PATCH", "/v1/uavs/{uav}", json={"model": "M"}),
                                  allow(200, REG)),
    ("GET", "/v1/registry/uavs"): (fixed("GET", "/v1/registry/uavs"), allow(200, REG, OPR)),
    ("GET", "/v1/registry/uavs/{uav}"): (fixed("GET", "/v1/registry/uavs/{uav}"),
                                         allow(200, REG, OPR, own_only=404)),
    ("POST", "/v1/tokens"): (b_post_token, allow(201)),
    ("GET", "/v1/tokens"): (fixed("GET", "/v1/tokens"), allow(200)),
    ("DELETE", "/v1/tokens/{id}"): (b_delete_token, allow(204)),
    ("GET", "/v1/audit"): (fixed("GET", "/v1/audit"), allow(200)),
    ("POST", "/v1/zones"): (b_post_zone, allow(201, REG)),
    ("POST", "/v1/zones/import"): (b_import_zone, allow(201, REG)),
    ("GET", "/v1/zones"): (fixed("GET", "/v1/zones"), allow(200, REG, OPR, GW)),
    ("GET", "/v1/zones/{zone_id}"): (fixed("GET", "/v1/zones/Z-0"), allow(200, REG, OPR, GW)),
    ("DELETE", "/v1/zones/{zone_id}"): (b_delete_zone, allow(200, REG)),
    ("GET", "/v1/alerts"): (fixed("GET", "/v1/alerts"), allow(200, REG, OPR)),
    ("GET", "/v1/alerts/open"): (fixed("GET", "/v1/alerts/open"), allow(200, REG, OPR)),
    ("GET", "/v1/alerts/stream"): (fixed("GET", "/v1/alerts/stream"), allow(200, REG, OPR)),
    ("GET", "/v1/alerts/ws"): (fixed("GET", "/v1/alerts/ws", "ws"), allow(101, REG, OPR)),
    ("POST", "/v1/subscriptions"): (b_post_sub, allow(201, REG)),
    ("GET", "/v1/subscriptions"): (fixed("GET", "/v1/subscriptions"), allow(200, REG)),
    ("GET", "/v1/subscriptions/{id}"): (b_sub, allow(200, REG)),
    ("DELETE", "/v1/subscriptions/{id}"): (b_delete_sub, allow(204, REG)),
    ("POST", "/v1/subscriptions/{id}/resume"): (b_resume_sub, allow(200, REG)),
    ("POST", "/v1/clearances"): (b_post_clearance, allow(201, OPR, own_only=403)),
    ("GET", "/v1/clearances"): (fixed("GET", "/v1/clearances"), allow(200, REG, OPR)),
    ("GET", "/v1/clearances/{id}"): (b_get_clearance, allow(200, REG, OPR, own_only=404)),
    ("DELETE", "/v1/clearances/{id}"): (b_delete_clearance, allow(200, REG, OPR, own_only=404)),
    ("POST", "/v1/clearances/{id}/resume"): (b_resume_clearance,
                                             allow(409, REG, OPR, own_only=404)),
}


def expected(expect: dict[str, Any], role: str, which: str) -> int:
    if expect.get(PUBLIC):
        return 200
    if role in ("none", "bad"):
        return 401
    value = expect[role]
    if isinstance(value, tuple):
        return int(value[0] if which == "own" else value[1])
    return int(value)


def app_routes(server: Server) -> set[tuple[str, str]]:
    app = server.client.app
    assert app is not None
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


async def call(server: Server, req: Req, token: str | None) -> int:
    if req.kind == "ws":
        try:
            ws = await server.client.ws_connect(req.path, headers=auth(token))
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101
    resp = await server.client.request(req.method, req.path, json=req.json, params=req.params,
                                       headers=auth(token))
    status = resp.status
    resp.close()  # a stream answers its headers and then never ends
    return status


@pytest.fixture
async def world(server: Server) -> World:
    rt = server.runtime
    await rt.registry.register(UavRecord("OWN-1", "op1"))
    await rt.registry.register(UavRecord("OTHER-1", "op2"))
    tokens: dict[str, str | None] = {
        "admin": await server.token("admin"), "regulator": await server.token("regulator"),
        "operator": await server.token("operator", "op1"), "gateway": await server.token("gateway"),
        "none": None, "bad": "lwt_not-a-token",
    }
    w = World(server, tokens)
    r = await server.client.post("/v1/telemetry", json=[obs("own"), obs("other")],
                                 headers=auth(tokens["gateway"]))
    assert (await r.json())["accepted"] == 2
    assert await w.zone() == "Z-0"
    sub = await server.client.app[WEBHOOKS].create(
        SubscriptionSpec("http://127.0.0.1:9/h", "s", (), None))
    w.sub_id = sub.id
    w.clearance = {which: await w.new_clearance(which) for which in ("own", "other")}
    return w


def test_every_route_has_a_rule_and_a_row(server: Server) -> None:
    routes = app_routes(server)
    assert sorted(routes - set(TABLE)) == [], "routes without a row in this test's TABLE"
    assert sorted(set(TABLE) - routes) == [], "rows for routes that do not exist"
    assert sorted(r for r in routes if access.rule_for(*r) is None) == [], \
        "routes without a rule in lowalt/access.py ROUTES (refused to everyone)"


async def test_access_matrix(world: World) -> None:
    failures = []
    for (method, pattern), (build, expect) in sorted(TABLE.items()):
        if (method, pattern) not in app_routes(world.server):
            continue  # reported by test_every_route_has_a_rule_and_a_row
        for role, which in itertools.product(ROLES, ("own", "other")):
            req = await build(world, which)
            got = await call(world.server, req, world.tokens[role])
            want = expected(expect, role, which)
            if got != want:
                failures.append(f"{method} {pattern} as {role} ({which}): {got}, expected {want}")
    assert failures == []


async def test_operator_observations_of_other_uavs_are_rejected_per_item(world: World) -> None:
    """The `items` rule on all three transports: the batch goes on, the item gets a reason."""
    op = world.tokens["operator"]
    reason = "uav: OTHER-1 is not registered to this operator"
    r = await world.server.client.post("/v1/telemetry", json=[obs("own"), obs("other")],
                                       headers=auth(op))
    body = await r.json()
    assert (body["accepted"], body["rejected"]) == (1, [{"index": 1, "error": reason}])
    async with world.server.client.ws_connect("/v1/telemetry/ws", headers=auth(op)) as ws:
        await ws.send_json({"seq": 1, "obs": [obs("other"), obs("own")]})
        ack = await ws.receive_json()
    assert ack["rejected"] == [[0, reason]]
    assert op is not None
    client = await GatewayClient.connect("127.0.0.1", world.server.gateway_port, op)
    try:
        client.send_obs([obs("other")])
        assert (await client.recv_ack())["rejected"] == [[0, reason]]
    finally:
        await client.close()


@pytest.mark.parametrize(("role", "answer"), [
    ("admin", {"ok": True}), ("operator", {"ok": True}), ("gateway", {"ok": True}),
    ("regulator", {"ok": False, "error": "role 'regulator' may not send telemetry"}),
    ("bad", {"ok": False, "error": "unknown or revoked token"}),
    ("none", {"ok": False, "error": "hello: token and name must be strings"}),
])
async def test_gateway_hello_follows_the_same_rule(
    world: World, role: str, answer: dict[str, Any]
) -> None:
    client = await GatewayClient.connect("127.0.0.1", world.server.gateway_port, "", hello=False)
    try:
        client.send({"hello": 1, "token": world.tokens[role], "name": "station"})
        assert await client.recv() == answer
    finally:
        await client.close()
