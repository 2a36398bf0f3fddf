"""Who may do what: one table for every HTTP route, consulted by the middleware, and the named
rules the other entry points (the gateway hello) use.

A row is (method, route pattern) -> `Rule`: the roles allowed (admin holds every role) and how the
object a request touches is checked against the caller (`owner`):

- `none`: the role decides alone.
- `path_uav`: the `{uav}` in the path (or the UAV it is an alias of) must be registered to the
  caller's operator; otherwise 404, because another operator's UAV's existence is private.
  Regulators and admins pass.
- `filtered`: the handler answers with the caller's own UAVs only (`Registry.may_read`).
- `items`: each submitted observation of a UAV not registered to the caller is rejected on its
  own, with a reason (`Registry.may_send`); gateways may send any UAV.
- `handler`: the handler looks the object up and checks it against the caller (clearances).

A route with no row is refused to everyone (403): a new route must be given a row here, and
tests/test_access_matrix.py fails until it has one in its table too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lowalt.auth import Registry
from lowalt.errors import AuthError
from lowalt.fusion import identity_of
from lowalt.models import ROLES, Principal

ADMIN, REGULATOR, OPERATOR, GATEWAY = ROLES
OWNERS = frozenset({"none", "path_uav", "filtered", "items", "handler"})


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    owner: str = "none"
    public: bool = False  # no token needed
    query_token: bool = False  # the token may come as ?access_token= (browser streams)

    def __post_init__(self) -> None:
        assert self.owner in OWNERS, self.owner

    def allows(self, role: str) -> bool:
        return self.public or role == ADMIN or role in self.roles


def _rule(*roles: str, owner: str = "none", query_token: bool = False) -> Rule:
    return Rule(frozenset(roles), owner, query_token=query_token)


PUBLIC = Rule(frozenset(ROLES), public=True)
ANY_ROLE = _rule(*ROLES)
ADMIN_ONLY = _rule(ADMIN)
MANAGE = _rule(REGULATOR)  # zones, subscriptions, the registry
READ = _rule(REGULATOR, OPERATOR, owner="filtered")
READ_STREAM = _rule(REGULATOR, OPERATOR, owner="filtered", query_token=True)
READ_UAV = _rule(REGULATOR, OPERATOR, owner="path_uav")
SEND_TELEMETRY = _rule(OPERATOR, GATEWAY, owner="items")  # HTTP, WebSocket and the gateway hello
CLEARANCE = _rule(OPERATOR, REGULATOR, owner="handler")  # regulators: priority requests only
CLEARANCE_READ = _rule(REGULATOR, OPERATOR, owner="handler")

ROUTES: Mapping[tuple[str, str], Rule] = {
    # Operations (section 9).
    ("GET", "/healthz"): PUBLIC,
    # The regulators' map page (lowalt/web): the page and its files are public; what it shows
    # is read with the token it logs in with.
    ("GET", "/"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/v1/map/config"): _rule(REGULATOR, OPERATOR),
    ("GET", "/readyz"): ANY_ROLE,
    ("GET", "/metrics"): ANY_ROLE,
    # Telemetry (section 2).
    ("POST", "/v1/telemetry"): SEND_TELEMETRY,
    ("GET", "/v1/telemetry/ws"): SEND_TELEMETRY,
    # Reading traffic (section 7).
    ("GET", "/v1/uavs"): READ,
    ("GET", "/v1/uavs/{uav}/track"): READ_UAV,
    ("GET", "/v1/flights"): READ,
    ("GET", "/v1/traffic/stream"): READ_STREAM,
    ("GET", "/v1/traffic/ws"): READ_STREAM,
    # The registry and tokens (section 8).
    ("POST", "/v1/uavs"): MANAGE,
    ("PATCH", "/v1/uavs/{uav}"): MANAGE,
    ("GET", "/v1/registry/uavs"): READ,
    ("GET", "/v1/registry/uavs/{uav}"): READ_UAV,
    ("POST", "/v1/tokens"): ADMIN_ONLY,
    ("GET", "/v1/tokens"): ADMIN_ONLY,
    ("DELETE", "/v1/tokens/{id}"): ADMIN_ONLY,
    ("GET", "/v1/audit"): ADMIN_ONLY,
    # Zones (section 3): every role reads them.
    ("POST", "/v1/zones"): MANAGE,
    ("POST", "/v1/zones/import"): MANAGE,
    ("GET", "/v1/zones"): ANY_ROLE,
    ("GET", "/v1/zones/{zone_id}"): ANY_ROLE,
    ("DELETE", "/v1/zones/{zone_id}"): MANAGE,
    # Alerts (section 4).
    ("GET", "/v1/alerts"): READ,
    ("GET", "/v1/alerts/open"): READ,
    ("GET", "/v1/alerts/stream"): READ_STREAM,
    ("GET", "/v1/alerts/ws"): READ_STREAM,
    ("POST", "/v1/subscriptions"): MANAGE,
    ("GET", "/v1/subscriptions"): MANAGE,
    ("GET", "/v1/subscriptions/{id}"): MANAGE,
    ("DELETE", "/v1/subscriptions/{id}"): MANAGE,
    ("POST", "/v1/subscriptions/{id}/resume"): MANAGE,
    # Clearances (section 5): operators for their own UAVs, regulators read and cancel.
    ("POST", "/v1/clearances"): CLEARANCE,
    ("GET", "/v1/clearances"): READ,
    ("GET", "/v1/clearances/{id}"): CLEARANCE_READ,
    ("DELETE", "/v1/clearances/{id}"): CLEARANCE_READ,
    ("POST", "/v1/clearances/{id}/resume"): CLEARANCE_READ,
}


def rule_for(method: str, pattern: str) -> Rule | None:
    """The row for a route (HEAD is GET); None when the route has none."""
    return ROUTES.get(("GET" if method == "HEAD" else method, pattern))


def authorize(
    principal: Principal, rule: Rule, path_params: Mapping[str, str], registry: Registry
) -> None:
    """AuthError 403 when the role may not use the route, 404 for another operator's UAV."""
    if not rule.allows(principal.role):
        allowed = sorted(rule.roles | {ADMIN})
        raise AuthError(
            f"role {principal.role!r} may not do this (needs {' or '.join(allowed)})", 403
        )
    if rule.owner == "path_uav":
        uav, _ = identity_of(registry, path_params["uav"])  # an alias names its UAV
        if not registry.may_read(principal, uav):
            raise AuthError("not found", 404)
