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

The C allocator (glibc) is set up too, by `tune_malloc`, before anything else: a fixed mmap
threshold of `MMAP_THRESHOLD_BYTES`. glibc's default raises its threshold to the size of each
mmapped block freed, so once the first big table was freed, every later dict table and array of
a few MiB (the per-UAV dicts of 100,000 live UAVs, each with room to grow; the pair arrays of a
monitor tick) came from the heap, where the room a table had not used yet was memory that an
earlier, freed table had touched: resident. Mapped on their own, untouched room costs nothing and
a freed block goes back to the system. RSS per live UAV (100,000, 20 reports each, `lowalt bench
memory`): registered 1,762 -> 1,385 B, unregistered 2,318 -> 1,910 B. At 128 KiB (unregistered
1,786 B) every 100,000-long column of a monitor tick was mapped and unmapped again (tick
+45 %). `MALLOC_MMAP_THRESHOLD_` in the environment, glibc's own setting, is left to win.

On the geofence stage benchmark this took about 25 % off the per-observation cost (7.4 -> 5.6
µs, same run; freezing alone gives most of it). A much higher threshold (50,000) was a little
faster again but let garbage pile up between collections: +450 B of RSS per live UAV on the
memory benchmark, against none measurable at 5,000. Benchmarks that time in-process stages apply
the same policy, so they measure the code as the server runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
from collections.abc import Iterator

YOUNG_THRESHOLD = 5_000
OLDER_THRESHOLDS = (20, 100)
FREEZE_EVERY_S = 1.0
SWEEP_EVERY_S = 600.0
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


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


def tune_malloc(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at threshold_bytes (module docstring); True when set. False
    without glibc's mallopt (another C library or system), or when MALLOC_MMAP_THRESHOLD_ is in
    the environment (glibc applied it at start)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))


def tune_gc() -> None:
    """Apply the policy (idempotent): collect once, freeze what exists, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


def tune_as_server() -> None:
    """Both policies in the server's order (allocator, then collector): what in-process
    benchmarks apply so they time what the server runs."""
    tune_malloc()
    tune_gc()


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
