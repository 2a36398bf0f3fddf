"""The garbage-collector policy of a running server.

The hot paths (validation, the check stages, the monitor tick, fusion) allocate many short-lived
container objects, and CPython's default young-generation threshold (700 allocations) then runs a
collection every few hundred observations, each one also walking whatever survived into older
generations. A server holds a large, long-lived heap (zones and their index, the registry, the
live picture) that cycles rarely touch. So, once started:

- `gc.freeze()` moves everything that exists after start-up into the permanent generation, so no
  collection walks it again;
- the young threshold is raised to `YOUNG_THRESHOLD` allocations, and full collections are
  made rarer (`OLDER_THRESHOLDS`: a generation-1 collection every 20 young ones, a full one
  every 100 of those, and CPython's own rule still waits until a quarter of the old heap is
  new). A full collection walks the whole live heap: 177-251 ms with 20,000 live UAVs, a pause
  every few seconds at the default thresholds, which set the alert feed's p99 (419-426 ms at
  20,000 obs/s against 313-335 ms with these; docs/BENCHMARKS.md). Reference cycles are still
  collected; acyclic objects, nearly all of ours, are freed by reference counting as before;
- while serving, `keep_frozen` freezes again every `FREEZE_EVERY_S` (after a young collection),
  so a full collection walks only what survived since the last freeze. Most of the heap is
  the state of every live UAV (its newest reports are tracked `Observation`s: CPython never
  untracks a tuple subclass); with 20,000 UAVs, when fusion still kept 16 reports per source,
  a full collection over all of it took 160-220 ms, over one second's survivors about 23 ms. Frozen
  objects are still freed by reference counting when dropped; only reference cycles that die
  after being frozen wait for the sweep: every `SWEEP_EVERY_S` the whole heap is unfrozen and
  collected once (the one long pause left, once in ten minutes).

On the geofence stage benchmark this took about 25 % off the per-observation cost (7.4 -> 5.6
µs, same run; freezing alone gives most of it). A much higher threshold (50,000) was a little
faster again but let garbage pile up between collections: +450 B of RSS per live UAV on the
memory benchmark, against none measurable at 5,000. Benchmarks that time in-process stages apply
the same policy, so they measure the code as the server runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator

YOUNG_THRESHOLD = 5_000
OLDER_THRESHOLDS = (20, 100)
FREEZE_EVERY_S = 1.0
SWEEP_EVERY_S = 600.0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector held off for a burst of allocations that all survive it (a fusion
    refresh's new states, the alerts a dense hub's first tick opens): each collection the burst
    would trigger walks what the burst already made, to free nothing. One collection afterwards
    costs a fraction."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def tune_gc() -> None:
    """Apply the policy (idempotent): collect once, freeze what exists, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


async def keep_frozen(
    freeze_every_s: float = FREEZE_EVERY_S, sweep_every_s: float = SWEEP_EVERY_S
) -> None:
    """Freeze the survivors every freeze_every_s, sweep the whole heap every sweep_every_s;
    runs until cancelled (module docstring)."""
    loop = asyncio.get_running_loop()
    sweep_at = loop.time() + sweep_every_s
    while True:
        await asyncio.sleep(freeze_every_s)
        if loop.time() >= sweep_at:
            gc.unfreeze()
            gc.collect()
            sweep_at = loop.time() + sweep_every_s
        else:
            gc.collect(1)  # young cycles that are garbage already are not frozen
        gc.freeze()
