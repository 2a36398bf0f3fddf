"""The collector policy while serving: survivors are frozen every period (so full collections
walk little), and reference cycles that died while frozen are still freed by the sweep."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable

import pytest

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


_WHERE_A_BLOCK_GOES = """
import ctypes, sys
from lowalt.gcpolicy import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 3 << 20
libc.free(libc.malloc(size))  # glibc's own rule: freeing a mapped block raises the threshold
block = libc.malloc(size)
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        low, high = (int(x, 16) for x in line.split()[0].split("-"))
        print("heap" if low <= block < high else "mapped")
        break
else:
    print("mapped")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_tune_malloc_keeps_big_blocks_mapped_after_one_was_freed() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    where = {
        how: subprocess.run([sys.executable, "-c", _WHERE_A_BLOCK_GOES, how], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
        for how in ("default", "tuned")
    }
    assert where == {"default": "heap", "tuned": "mapped"}
    # A threshold set in the environment is glibc's to apply, not overridden.
    script = "from lowalt.gcpolicy import tune_malloc; print(tune_malloc())"
    told = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**env, "MALLOC_MMAP_THRESHOLD_": "131072"}, check=True)
    assert told.stdout.strip() == "False"
