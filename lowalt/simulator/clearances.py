"""Logistics flights ask route clearances before they fly (API.md section 5).

`ClearanceAgent` runs beside the senders. LEAD_S before each planned logistics takeoff (at once
for those due sooner, but never less than LATEST_S before takeoff) it POSTs /v1/clearances with
the route the flight will fly (`Scenario.logistics_route`: waypoints, and the departure and
speed whose timeline the flight keeps to within LOGISTICS_FIT_S), CORRIDOR_M either side and
VERTICAL_M above and below, then tells the scenario (`Scenario.decide`):
- granted: the flight leaves as planned and flies the cleared route;
- denied: it stays on its pad and asks again for a departure RETRY_S later, up to RETRIES times
  while the later flight still ends within its cycle; denied every time, it stays on the pad
  until its next cycle;
- no answer (refused token, unregistered UAV, server down, REQUEST_TIMEOUT_S): it stays on the
  pad for the cycle; the reason is counted and logged.
Takeoffs already due within LATEST_S when the run starts are not asked for: those UAVs wait on
their pads for their next cycle. CORRIDOR_M and VERTICAL_M keep the fleet's own routes apart
(the two UAVs of a lane cross outbound and homebound 20 m apart vertically, neighbouring pads
are 61 m apart), so a fleet on its own is never denied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from lowalt.errors import ConfigError

from .scenario import Departure, RouteFit, Scenario

__all__ = ["CORRIDOR_M", "LEAD_S", "VERTICAL_M", "ClearanceAgent", "ClearanceStats"]

log = logging.getLogger("lowalt.simulator")

LEAD_S = 90.0  # ask this long before the planned takeoff
LATEST_S = 30.0  # never ask later than this before takeoff
RETRY_S = 60.0
RETRIES = 3
REQUEST_TIMEOUT_S = 20.0  # < LEAD_S - LATEST_S: an answer always comes before takeoff
CORRIDOR_M = 25.0
VERTICAL_M = 8.0
_ERRORS_KEPT = 5


@dataclass
class ClearanceStats:
    """What the logistics flights were told."""

    asked: int = 0  # requests sent
    granted: int = 0
    denied: int = 0  # denials (a flight asking again counts once per denial)
    grounded: int = 0  # flights kept on their pads for a whole cycle
    errors: list[str] = field(default_factory=list)  # the first few requests with no answer
    ids: list[str] = field(default_factory=list)  # the granted clearances, in order

    def line(self) -> str:
        text = (f"clearances: asked {self.asked}, granted {self.granted}, denied "
                f"{self.denied}, flights grounded {self.grounded}")
        if self.errors:
            text += " (" + "; ".join(self.errors[:3]) + ")"
        return text


class ClearanceAgent:
    """Asks the server at `api` (http://HOST:PORT) for the scenario's logistics clearances with
    `token` (an operator token of the logistics UAVs' operator, or an admin token)."""

    def __init__(self, api: str, token: str, scenario: Scenario) -> None:
        if not scenario.clearances:
            raise ConfigError("clearances: the scenario must be built with clearances=True")
        self.url = api.rstrip("/") + "/v1/clearances"
        self.headers = {"Authorization": f"Bearer {token}"}
        self.scenario = scenario
        self.stats = ClearanceStats()

    async def run(self) -> None:
        """Ask for every departure as it comes up, until cancelled."""
        asked: set[tuple[int, int]] = set()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                now = time.time()
                for departure in self.scenario.logistics_departures(now + LATEST_S,
                                                                    now + LEAD_S):
                    key = (departure.slot, departure.cycle)
                    if key not in asked:
                        asked.add(key)
                        await self._clear(session, departure)
                if len(asked) > 100:  # forget cycles long past
                    newest = max(c for _, c in asked)
                    asked = {k for k in asked if k[1] >= newest - 2}
                await asyncio.sleep(1.0)

    async def _clear(self, session: aiohttp.ClientSession, departure: Departure) -> None:
        for attempt in range(RETRIES + 1):
            delay_s = attempt * RETRY_S
            route = self.scenario.logistics_route(departure.slot, departure.cycle, delay_s)
            if route is None:
                break
            answer = await self._ask(session, departure.uav, route)
            if answer is None:
                break
            if answer.get("state") == "granted":
                self.stats.granted += 1
                self.stats.ids.append(str(answer.get("id")))
                self.scenario.decide(departure.slot, departure.cycle, delay_s)
                log.info("clearance %s granted: %s leaves at %.0f", answer.get("id"),
                         departure.uav, route.takeoff_t)
                return
            self.stats.denied += 1
            log.info("clearance denied for %s leaving at %.0f: %s", departure.uav,
                     route.takeoff_t, answer.get("reasons"))
        self.stats.grounded += 1
        self.scenario.decide(departure.slot, departure.cycle, None)
        log.info("%s stays on its pad this cycle: no clearance", departure.uav)

    async def _ask(self, session: aiohttp.ClientSession, uav: str,
                   route: RouteFit) -> dict[str, Any] | None:
        """The decision, or None (counted and logged) when there is none."""
        body = {
            "uav": uav,
            "route": {"type": "LineString", "coordinates": [list(c) for c in route.coordinates]},
            "departure": route.departure_t, "speed_mps": route.speed_mps,
            "corridor_m": CORRIDOR_M, "vertical_m": VERTICAL_M,
        }
        self.stats.asked += 1
        try:
            async with session.post(self.url, json=body, headers=self.headers) as r:
                if r.status == 201:
                    answer: dict[str, Any] = await r.json()
                    return answer
                reason = f"{uav}: HTTP {r.status} {(await r.text())[:120]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{uav}: {type(exc).__name__} {exc}"
        if len(self.stats.errors) < _ERRORS_KEPT:
            self.stats.errors.append(reason)
        log.warning("clearance request failed: %s", reason)
        return None
