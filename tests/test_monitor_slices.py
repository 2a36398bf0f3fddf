"""A monitor tick over many aircraft lets the event loop run between its slices, yet finds what
one unbroken pass finds, and its `seconds` count its own work, not the other tasks'."""

from __future__ import annotations

import asyncio
import time
from typing import cast

from benchmarks.bench_conflicts import _MemoryAlertStore, city_traffic, live_rows
from dispatch.alerts import AlertManager, Broadcaster
from dispatch.store import AlertStore
from geofence.monitor import TICK_SLICE, TrafficMonitor
from lowalt.live import LiveState
from lowalt.settings import load_settings


async def test_a_sliced_tick_finds_what_one_pass_finds_and_times_its_own_work() -> None:
    n = 2 * TICK_SLICE + 500  # three slices
    data = city_traffic(n, seed=11)
    rows = live_rows(data)
    tick_t = float(data["tick_t"])
    silent_ids = set(range(0, n, 7))  # every 7th aircraft last heard a minute before the tick
    rows = [r._replace(t=tick_t - 60.0) if k in silent_ids else r for k, r in enumerate(rows)]
    live = LiveState()
    live.update(rows)
    settings = load_settings({}, {})
    manager = AlertManager(cast(AlertStore, _MemoryAlertStore()), Broadcaster(),
                           commit_delay_s=0.0)
    await manager.start()
    turns: list[float] = []

    async def busy_neighbour() -> None:  # another task that holds the loop 20 ms a turn
        while True:
            started = time.perf_counter()
            while time.perf_counter() - started < 0.02:
                pass
            turns.append(started)
            await asyncio.sleep(0)

    neighbour = asyncio.create_task(busy_neighbour())
    try:
        await asyncio.sleep(0)
        monitor = TrafficMonitor(live, manager, settings)
        started = time.perf_counter()
        turns.clear()
        result = await monitor.tick(tick_t)
        elapsed = time.perf_counter() - started
    finally:
        neighbour.cancel()
        await asyncio.gather(neighbour, return_exceptions=True)
        await manager.close()
    silent = {r.uav for r in rows if tick_t - r.t > monitor.lost_after_s(r)}
    assert {rows[k].uav for k in silent_ids} <= silent
    assert result.aircraft == n - len(silent)
    assert monitor.lost == silent
    # The neighbour's turns between the three slices (20 ms or more each) are not the tick's.
    assert len(turns) >= 2
    assert elapsed - result.seconds >= 2 * 0.02
