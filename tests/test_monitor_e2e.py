"""Traffic monitor in the running server: conflicts, lost telemetry, implausible motion."""

from __future__ import annotations

import time
from typing import Any

from geofence.service_app import CHECKS
from tests.conftest import Server
from tests.test_geofence_e2e import alerts, eventually, send

M_PER_DEG_LAT = 110_850.0  # near lat 29.6


def flying(uav: str, t: float, lat: float, lon: float, track_deg: float, speed_mps: float,
           alt_m: float = 300.0) -> dict[str, Any]:
    return {"uav": uav, "t": t, "lat": lat, "lon": lon, "alt_m": alt_m, "agl_m": 80.0,
            "speed_mps": speed_mps, "track_deg": track_deg, "vspeed_mps": 0.0,
            "status": "airborne"}


async def test_separation_loss_and_predicted_conflict(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time()
    d = 600.0 / M_PER_DEG_LAT
    await send(server, gw,
               flying("A1", now - 1, 29.60, 106.50, 0.0, 5.0),
               flying("A2", now - 1, 29.60 + 30 / M_PER_DEG_LAT, 106.50, 180.0, 5.0),  # 30 m
               flying("B1", now - 1, 29.65, 106.50, 0.0, 10.0),
               flying("B2", now - 1, 29.65 + d, 106.50, 180.0, 10.0),  # 600 m, closing 20 m/s
               flying("C1", now - 1, 29.70, 106.50, 0.0, 10.0),
               flying("C2", now - 1, 29.70 + 30 / M_PER_DEG_LAT, 106.50, 0.0, 10.0,
                      alt_m=360.0))  # 30 m apart but 60 m above: separated
    checks = server.client.app[CHECKS]  # type: ignore[union-attr]
    result = await checks.monitor.tick(now)
    assert result.aircraft == 6
    events = await eventually(lambda: alerts(server, reg))
    by_type = {e["type"]: e for e in events}
    loss = by_type["separation_loss"]
    assert (loss["uav"], loss["other_uav"], loss["severity"]) == ("A1", "A2", "critical")
    assert abs(loss["detail"]["h_now_m"] - 20.0) < 1.0  # 30 m, closing 10 m/s for 1 s
    predicted = by_type["conflict_predicted"]
    assert (predicted["uav"], predicted["other_uav"]) == ("B1", "B2")
    # 600 m apart at t - 1 s, closing at 20 m/s: 580 m at the tick, H = 50 m.
    assert abs(predicted["detail"]["t_los_s"] - (580 - 50) / 20) < 0.2
    assert abs(predicted["detail"]["cpa_s"] - 29.0) < 0.2
    assert predicted["detail"]["cpa_m"] < 1.0
    assert not any("C1" in (e["uav"], e["other_uav"]) for e in events)
    # The same pair on the next tick updates (or keeps) its alert; it never opens a second one.
    await checks.monitor.tick(now + 1.5)
    events = await alerts(server, reg, type="separation_loss")
    assert len({e["alert_id"] for e in events}) == 1


async def test_telemetry_lost_then_resolved_when_it_reports(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time()
    await send(server, gw, flying("QUIET", now - 10, 29.6, 106.5, 0, 0),
               {**flying("PARKED", now - 60, 29.61, 106.5, 0, 0), "status": "ground"})
    checks = server.client.app[CHECKS]  # type: ignore[union-attr]
    await checks.monitor.tick(now)
    (lost,) = await eventually(lambda: alerts(server, reg, type="telemetry_lost"))
    assert lost["uav"] == "QUIET" and lost["detail"]["expected_interval_s"] == 5.0
    await send(server, gw, flying("QUIET", now, 29.6, 106.5, 0, 0))
    await checks.monitor.tick(now + 0.5)
    events = await eventually(lambda: _states(alerts(server, reg, type="telemetry_lost")))
    assert [e["state"] for e in events] == ["open", "resolved"]


async def _states(pending: Any) -> list[dict[str, Any]] | None:
    events: list[dict[str, Any]] = await pending
    return events if len(events) == 2 else None


async def test_implausible_motion(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time() - 10
    await send(server, gw, flying("JUMPY", now, 29.60, 106.50, 0, 10))
    await send(server, gw, flying("JUMPY", now + 1, 29.61, 106.50, 0, 10))  # 1.1 km in 1 s
    await send(server, gw, flying("STEADY", now, 29.60, 106.60, 0, 10))
    await send(server, gw, flying("STEADY", now + 1, 29.60 + 10 / M_PER_DEG_LAT, 106.60, 0, 10))
    (event,) = await eventually(lambda: alerts(server, reg, type="implausible_motion"))
    assert event["uav"] == "JUMPY"
    assert event["detail"]["implied_speed_mps"] > 1000


async def test_a_stale_uav_is_lost_not_in_conflict(server: Server) -> None:
    """Issue 5's "one UAV stale": a UAV silent past its interval is not extrapolated into a
    conflict (its position is unknown); it is reported as telemetry_lost instead."""
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time()
    await send(server, gw,
               flying("FRESH", now - 1, 29.60, 106.50, 0.0, 5.0),
               flying("STALE", now - 20, 29.60 + 20 / M_PER_DEG_LAT, 106.50, 180.0, 0.0))
    checks = server.client.app[CHECKS]  # type: ignore[union-attr]
    result = await checks.monitor.tick(now)
    assert (result.aircraft, result.conflicts, result.lost) == (1, 0, 1)
    (lost,) = await eventually(lambda: alerts(server, reg, type="telemetry_lost"))
    assert lost["uav"] == "STALE"
    assert await alerts(server, reg, type="separation_loss") == []
