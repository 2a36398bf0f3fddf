"""The collector policy while serving: survivors are frozen every period (so full collections
walk little), and reference cycles that died while frozen are still freed by the sweep."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable

from lowalt.gcpolicy import keep_frozen


async def until(probe: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)  # polling the collector: there is nothing to await


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def test_survivors_are_frozen_and_dead_frozen_cycles_swept() -> None:
    gc.unfreeze()
    node = _Node()
    ref = weakref.ref(node)
    task = asyncio.create_task(keep_frozen(freeze_every_s=0.01, sweep_every_s=0.5))
    try:
        await until(lambda: gc.get_freeze_count() > 0)  # the node among them
        del node
        gc.collect()  # a full collection does not see frozen objects
        assert ref() is not None
        await until(lambda: ref() is None)  # the sweep unfroze and collected it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.unfreeze()
