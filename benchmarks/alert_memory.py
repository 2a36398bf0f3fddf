"""Python heap per open `unregistered_uav` alert: a real AlertManager and UnregisteredCheck,
100,000 unknown UAVs reporting three times each, tracemalloc before and after.

    .venv/bin/python -m benchmarks.alert_memory [--uavs 100000]

The events go to a store that drops them (what is measured is what the manager keeps), and the
registry knows no UAV. Prints bytes per alert and the ten lines that hold the most.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from collections.abc import Sequence
from typing import cast

from dispatch.alerts import AlertEvent, AlertManager, Broadcaster
from dispatch.store import AlertStore, LoadedState
from lowalt.auth import Registry
from lowalt.identity import UnregisteredCheck
from lowalt.models import Observation


class DroppingStore:
    async def load_state(self) -> LoadedState:
        return LoadedState(0, 0, [])

    async def append_events(self, events: Sequence[AlertEvent]) -> None:
        pass

    async def max_seq(self) -> int:
        return 0


class NobodyKnown:
    def __init__(self) -> None:
        self.by_uav: dict[str, object] = {}
        self.alias_to_uav: dict[str, str] = {}

    def is_known(self, uav: str) -> bool:
        return False


async def per_alert(uavs: int) -> tuple[float, list[tuple[float, str]]]:
    manager = AlertManager(cast(AlertStore, DroppingStore()), Broadcaster(), commit_delay_s=0.0,
                           max_pending_events=10 * uavs)
    await manager.start()
    check = UnregisteredCheck(cast(Registry, NobodyKnown()), manager)
    names = [f"M{n:06d}" for n in range(uavs)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for k in range(3):
        rows = [Observation(uav, 1.76e9 + k + i * 1e-5, 29.0 + i * 1e-6, 106.5 + k * 1e-5, 100.0,
                            10.0, 90.0, 0.0, 50.0, "airborne", 5.0, 7.0, "bench/gateway/native",
                            1.76e9 + k) for i, uav in enumerate(names)]
        for start in range(0, uavs, 1_000):
            await check.on_committed(rows[start:start + 1_000], [])
        await manager.flush()
        del rows
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    tracemalloc.stop()
    await manager.close()
    top = [(s.size_diff / uavs, str(s.traceback)) for s in stats[:10]]
    return sum(s.size_diff for s in stats) / uavs, top


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--uavs", type=int, default=100_000)
    args = parser.parse_args()
    total, top = asyncio.run(per_alert(args.uavs))
    print(f"{total:.0f} B per open unregistered alert (Python heap)")
    for size, where in top:
        print(f"{size:8.1f} B  {where}")


if __name__ == "__main__":
    main()
