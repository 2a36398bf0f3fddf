"""Identity wiring: the registry, token and audit routes, and the `unregistered_uav` check.

A gateway may relay any UAV (API.md section 8); one that is neither registered nor a registered
UAV's alias raises `unregistered_uav` (warning) once, on its first stored observation. Once it is
registered, its next observation resolves the alert. Observations that came in SBS format are
crewed aircraft (ADS-B), not UAVs, and are not checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from itertools import compress, repeat
from operator import eq, or_
from types import MappingProxyType
from typing import Any

from aiohttp import web

from dispatch.alerts import AlertManager, Condition
from dispatch.service import DISPATCH
from lowalt import admin, audit
from lowalt.auth import Registry
from lowalt.limits import LIMITS
from lowalt.models import Observation, values_of

ALERT = "unregistered_uav"
MAX_SHARED_DETAILS = 4096  # sources are few (gateway names x transports x formats)


class UnregisteredCheck:
    """A check stage: raises `unregistered_uav` for UAVs the registry does not know."""

    name = "unregistered"

    def __init__(self, registry: Registry, manager: AlertManager) -> None:
        self.registry, self.manager = registry, manager
        # Per source, the one read-only detail its alerts share (not a dict per UAV).
        self._details: dict[str, Mapping[str, Any]] = {}

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        # The rows that may change an alert: a UAV the registry does not know (by id or
        # alias) with no alert open, or a known one with its alert open; found by C-level
        # lookups, not a step per row (at steady state, none).
        uavs = values_of(rows, "uav")
        by_uav, aliases = (self.registry.by_uav.__contains__,
                           self.registry.alias_to_uav.__contains__)
        known = map(or_, map(by_uav, uavs), map(aliases, uavs))
        opened = self.manager.are_open(zip(repeat(ALERT), uavs, repeat("")))
        look = list(compress(range(len(uavs)), map(eq, known, opened)))
        newest: dict[str, Observation] = {}
        for row in map(rows.__getitem__, look):
            if not row.crewed:
                seen = newest.get(row.uav)
                if seen is None or row.t > seen.t:
                    newest[row.uav] = row
        is_known, is_open = self.registry.is_known, self.manager.is_open
        for uav, row in newest.items():
            key = (ALERT, uav, "")
            if is_known(uav):
                if is_open(key):
                    await self.manager.resolve(key, row.t, {"registered": True})
            elif not is_open(key):
                await self.manager.open_or_update(Condition(
                    ALERT, uav, "warning", row.t, row.lat, row.lon, row.alt_m,
                    detail=self._detail(row.source),
                ))

    def _detail(self, source: str) -> Mapping[str, Any]:
        detail = self._details.get(source)
        if detail is None:
            if len(self._details) >= MAX_SHARED_DETAILS:
                self._details.clear()
            detail = self._details[source] = MappingProxyType({"source": source})
        return detail


def setup_identity(app: web.Application) -> None:
    """Add the routes, and the check stage once dispatch runs (call after setup_dispatch)."""
    from lowalt.app import RUNTIME  # lowalt.app imports this module

    async def identity_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        rt.pipeline.stages.append(UnregisteredCheck(rt.registry, app[DISPATCH].manager))
        app[LIMITS] = rt.ingest.limits
        await audit.audit_log_for(rt.store).ready()
        yield

    app.cleanup_ctx.append(identity_ctx)
    admin.add_routes(app)
    audit.add_routes(app)
