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
  collected; acyclic objects, nearly all of ours, are freed by reference counting as before.

On the geofence stage benchmark this took about 25 % off the per-observation cost (7.4 -> 5.6
µs, same run; freezing alone gives most of it). A much higher threshold (50,000) was a little
faster again but let garbage pile up between collections: +450 B of RSS per live UAV on the
memory benchmark, against none measurable at 5,000. Benchmarks that time in-process stages apply
the same policy, so they measure the code as the server runs it.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 5_000
OLDER_THRESHOLDS = (20, 100)


def tune_gc() -> None:
    """Apply the policy (idempotent): collect once, freeze what exists, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
