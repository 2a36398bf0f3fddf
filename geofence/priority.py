"""Emergency and priority operations (API.md sections 4 and 5): rescue flights first, and
everyone affected told at once.

- `EmergencyCheck`, a check stage: a UAV whose newest report says `emergency` or `lost_link` has
  an `emergency` alert (critical; the alert writer commits it ahead of whatever is waiting); a
  newer report saying `airborne` or `ground` resolves it at once. A report without a status
  changes nothing.
- `split_for_priority`: the reasons a priority request is still denied for. Normal clearances
  never deny it (they are suspended); priority clearances and the AGL ceiling always do; zones do
  unless the caller may override them (regulators and admins), and are then only noted.
- `PriorityOps`: who may ask priority; the `clearance_suspended` alerts, pushes and audit records
  of priority decisions, suspensions and resumes; what a new zone does to the reserving
  clearances it would deny (normal ones suspended, priority ones told); suspended clearances
  made resumable when the priority clearance that took their airspace ends.

The decisions themselves are made in geofence/clearance_service.py under its one lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dispatch.alerts import AlertManager, Condition
from geofence.clearances import RESERVING, Reason, RouteRequest
from geofence.zones import Zone, zone_to_feature
from lowalt.audit import audit
from lowalt.errors import AuthError
from lowalt.live import LiveState
from lowalt.models import Observation, Principal
from lowalt.storage import Store

if TYPE_CHECKING:
    from geofence.clearance_service import Clearance, ClearanceService
    from lowalt.auth import Registry

log = logging.getLogger("lowalt.priority")

PRIORITIES = frozenset({"emergency"})
EMERGENCY_STATUSES = frozenset({"emergency", "lost_link"})
NORMAL_STATUSES = frozenset({"airborne", "ground"})
SUSPENDED_ALERT = "clearance_suspended"
ENDED = frozenset({"completed", "cancelled", "expired"})
OVERRIDERS = frozenset({"regulator", "admin"})  # their priority requests pass through zones
Push = Callable[[str, Mapping[str, Any]], int]


# -- emergencies -------------------------------------------------------------------------------
class EmergencyCheck:
    """Check stage: `emergency` alerts from the status UAVs report (module docstring)."""

    name = "emergency"

    def __init__(self, alerts: AlertManager) -> None:
        self.alerts = alerts
        self.in_emergency: set[str] = {a["uav"] for a in alerts.open_alerts()
                                       if a["type"] == "emergency"}

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        for r in advanced:  # each UAV's newest report: late data never reopens an emergency
            if r.status in EMERGENCY_STATUSES:
                self.in_emergency.add(r.uav)
                await self.alerts.open_or_update(Condition(
                    type="emergency", uav=r.uav, severity="critical", t=r.t, lat=r.lat,
                    lon=r.lon, alt_m=r.alt_m, detail={"status": r.status, "source": r.source},
                ))
            elif r.status in NORMAL_STATUSES and r.uav in self.in_emergency:
                self.in_emergency.discard(r.uav)
                await self.alerts.resolve(("emergency", r.uav, ""), r.t, {"status": r.status})


# -- priority decisions ------------------------------------------------------------------------
def split_for_priority(
    reasons: Sequence[Reason], is_priority: Callable[[str], bool], override_zones: bool
) -> tuple[list[Reason], list[Reason], list[Reason]]:
    """(denying, noted, taken) of a priority request's reasons (`clearances.decide`):
    denying: priority clearances met, the ceiling, zones unless overridden; noted: overridden
    zones, marked `"overridden": true`; taken: normal clearances met, marked `"suspended": true`
    (the request suspends them when it is granted)."""
    denying: list[Reason] = []
    noted: list[Reason] = []
    taken: list[Reason] = []
    for r in reasons:
        if "clearance" in r:
            if is_priority(r["clearance"]):
                denying.append(r)
            else:
                taken.append({**r, "suspended": True})
        elif "zone" in r and override_zones:
            noted.append({**r, "overridden": True})
        else:
            denying.append(r)
    return denying, noted, taken


class PriorityOps:
    """Priority requests, suspensions and what they tell; see the module docstring."""

    def __init__(
        self, service: ClearanceService, alerts: AlertManager, live: LiveState, store: Store,
        registry: Registry | None = None, push: Push | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service, self.alerts, self.live, self.store = service, alerts, live, store
        self.registry, self.push_to, self.clock = registry, push, clock

    async def start(self) -> None:
        """After a restart: suspensions whose priority clearance has ended become resumable."""
        live = self.service.live
        for c in list(live.values()):
            if c.state != "suspended" or c.resumable:
                continue
            cause = _priority_cause(c)
            if cause is None or cause not in live or live[cause].state not in RESERVING:
                await self.service.set_resumable(c.id)

    # -- who may ---------------------------------------------------------------------------
    def may_override_zones(self, principal: Principal, uav: str, operator: str | None) -> bool:
        """Whether principal's priority request for uav passes zones; AuthError(403) when it
        may not ask priority at all: an operator may for its own UAVs registered with
        `priority`, regulators and admins for any UAV."""
        if principal.role in OVERRIDERS:
            return True
        if principal.role == "operator" and principal.operator is not None \
                and operator == principal.operator:
            record = self.registry.by_uav.get(uav) if self.registry is not None else None
            if record is not None and record.priority:
                return False
            raise AuthError(f"uav {uav} is not registered for priority clearances", 403)
        if principal.role == "operator":
            raise AuthError(f"uav {uav} is not registered to this operator", 403)
        raise AuthError(f"role {principal.role!r} may not ask priority clearances", 403)

    # -- decisions -------------------------------------------------------------------------
    async def request(self, principal: Principal, route: RouteRequest, operator: str | None,
                      priority: str) -> Clearance:
        """Decide a priority request (AuthError 403 when principal may not ask one); suspend,
        tell and audit what it takes over."""
        override = self.may_override_zones(principal, route.uav, operator)
        decision = await self.service.decide_request(route, operator, priority=priority,
                                                     override_zones=override)
        granted = decision.clearance
        for c in decision.suspended:
            await self._alert_suspended(c, {"reason": "priority_clearance",
                                            "priority_clearance": granted.id,
                                            "at": c.reasons[0]["at"]})
        await audit(self.store, principal, "clearance.priority", granted.id, {
            "uav": route.uav, "operator": operator, "priority": priority,
            "state": granted.state, "reasons": list(granted.reasons),
            "suspended": [c.id for c in decision.suspended],
        })
        for c in decision.suspended:
            await audit(self.store, principal, "clearance.suspend", c.id, {
                "uav": c.uav, "operator": c.operator, "priority_clearance": granted.id,
                "at": c.reasons[0]["at"],
            })
        return granted

    async def resume(self, principal: Principal, clearance: Clearance
                     ) -> tuple[Clearance, list[Reason]]:
        """Decide a suspended clearance again (ClearanceService.resume), audited."""
        resumed, reasons = await self.service.resume(clearance)
        if not reasons:
            await self.on_change(resumed)
        await audit(self.store, principal, "clearance.resume", clearance.id, {
            "uav": clearance.uav, "state": resumed.state, "reasons": reasons,
        })
        return resumed, reasons

    # -- listeners ---------------------------------------------------------------------------
    async def on_change(self, c: Clearance) -> None:
        """A clearance changed state (ClearanceService.change_listeners)."""
        now = self.clock()
        if c.state != "suspended":
            await self.alerts.resolve((SUSPENDED_ALERT, c.uav, c.id), now,
                                      {"clearance_state": c.state})
        if c.priority is None or c.state not in ENDED:
            return
        for s in self.service.suspended_by(c.id):
            if await self.service.set_resumable(s.id) is not None:
                await self.alerts.resolve((SUSPENDED_ALERT, s.uav, s.id), now, {
                    "resumable": True, "priority_clearance": c.id, "priority_state": c.state,
                })

    async def on_zones_added(self, zones: Sequence[Zone], raised: Sequence[Condition],
                             by: Principal | None = None) -> None:
        """New zones (Geofence.zone_listeners): reserving clearances they would deny from now on
        get `{"clearance": ..., "zone": <Feature>}` (normal ones suspended, with an alert);
        airborne UAVs inside them (their `geofence_breach` just raised) get `{"zone": ...}`."""
        features = {z.id: zone_to_feature(z) for z in zones}
        told: set[tuple[str, str]] = set()
        for hit in await self.service.suspend_for_zones(zones):
            c, zone_id = hit.clearance, str(hit.zone["zone"])
            self._push(c.uav, {"clearance": c.to_json(), "zone": features[zone_id]})
            told.add((c.uav, zone_id))
            if not hit.suspended:
                continue
            await self._alert_suspended(c, {"reason": "zone_activated", "zone": zone_id,
                                            "restriction": hit.zone["restriction"],
                                            "at": hit.zone["at"]})
            await audit(self.store, by, "clearance.suspend", c.id, {
                "uav": c.uav, "operator": c.operator, "zone": zone_id, "at": hit.zone["at"],
            })
        for cond in raised:
            if cond.type == "geofence_breach" and cond.zone in features \
                    and (cond.uav, cond.zone) not in told:
                told.add((cond.uav, cond.zone))
                self._push(cond.uav, {"zone": features[cond.zone]})

    # -- telling -----------------------------------------------------------------------------
    async def _alert_suspended(self, c: Clearance, detail: dict[str, Any]) -> None:
        """`clearance_suspended` for c: critical while its UAV is in the air, else warning;
        at the UAV's live position, or where its route would be at the suspension's `at`."""
        now = self.clock()
        row = self.live.latest.get(c.uav)
        airborne = row is not None and row.status != "ground" \
            and now - row.t <= self.service.settings.lost_after_s
        if row is not None:
            lon, lat, alt_m = row.lon, row.lat, row.alt_m
        else:
            volume = self.service.volume(c.id)
            lon, lat, alt_m = (volume.expected_position(float(detail["at"]))
                               if volume is not None else c.request.coordinates[0])
        await self.alerts.open_or_update(Condition(
            type=SUSPENDED_ALERT, uav=c.uav, severity="critical" if airborne else "warning",
            t=now, lat=lat, lon=lon, alt_m=alt_m, clearance=c.id,
            detail={**detail, "operator": c.operator, "resumable": c.resumable},
        ))

    def _push(self, uav: str, frame: Mapping[str, Any]) -> None:
        if self.push_to is None:
            return
        try:
            self.push_to(uav, frame)
        except Exception:  # a push must never fail a decision
            log.exception("push to %s failed", uav)


def _priority_cause(c: Clearance) -> str | None:
    """The priority clearance that suspended c (None: a zone did)."""
    for r in c.reasons:
        if "priority_clearance" in r:
            return str(r["priority_clearance"])
    return None
