"""The `unregistered_uav` check stage on its own (both backends' registries): batches of known
UAVs pass over it, an unknown one opens one alert, and a check that starts with the alert
already open (after a restart) resolves it once the UAV is registered."""

from __future__ import annotations

from typing import cast

from benchmarks.bench_conflicts import _MemoryAlertStore
from dispatch.alerts import AlertManager, Broadcaster
from dispatch.store import AlertStore
from lowalt.auth import Registry
from lowalt.identity import ALERT, UnregisteredCheck
from lowalt.models import Observation
from lowalt.storage import Store, UavRecord

T = 1_764_000_000.0


def report(uav: str, t: float, source: str = "gw/gateway/native") -> Observation:
    return Observation(uav, t, 29.6, 106.5, 120.0, None, None, None, None, "airborne", None, None,
                       source, t)


async def test_unknown_uavs_alert_once_and_a_restarted_check_resolves_on_registration(
        store: Store) -> None:
    registry = Registry(store)
    await registry.register(UavRecord("KNOWN", "op1", ("SN-KNOWN",)))
    manager = AlertManager(cast(AlertStore, _MemoryAlertStore()), Broadcaster(),
                           commit_delay_s=0.0)
    await manager.start()
    try:
        check = UnregisteredCheck(registry, manager)
        rows = [report("KNOWN", T), report("SN-KNOWN", T + 0.5), report("STRANGER", T),
                report("STRANGER", T + 1), report("ICAO-ABCDEF", T, "adsb/gateway/sbs")]
        await check.on_committed(rows, rows)
        await check.on_committed(rows, rows)  # still open: no second alert
        await manager.flush()
        opened = [(a["uav"], a["t"]) for a in manager.open_alerts() if a["type"] == ALERT]
        assert opened == [("STRANGER", T + 1)]  # its newest report; known and crewed: none
        await registry.register(UavRecord("STRANGER", "op2", ()))
        restarted = UnregisteredCheck(registry, manager)  # knows nothing of the open alert
        later = [report("KNOWN", T + 2), report("STRANGER", T + 2)]
        await restarted.on_committed(later, later)
        await manager.flush()
        assert not manager.is_open((ALERT, "STRANGER", ""))
    finally:
        await manager.close()
