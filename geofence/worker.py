"""Zone checks in a second process: the geofence stage's index lookups off the event loop.

The ingest server's event loop is one thread; with 10,000 zones, `ZoneIndex.hits` (grid, filters,
point in polygon, ring distances) is most of the geofence stage's cost on it. A `ZoneWorker` runs
a child process (`python -m geofence.worker`) that holds its own `ZoneIndex` of the same zones:
the stage sends a call's columns, awaits the hits and the loop serves ingest meanwhile, so the
check runs on another core.

Exactness. The zones the worker holds are one generation of the service's index: the service
sends them, numbered, each time its index changes, and the worker answers `ready` once it has
built them. A call goes to the worker only when the generation it was taken from is the one the
worker said it holds, and names it: a worker that holds another answers `stale`. Otherwise (the
worker building, not started, gone, failed, too slow) the caller checks in its own process
against its own index. So the answers are the same as in process, whichever side gives them,
and a zone change is in effect from the answer to its request on, as without a worker.

Failures. A worker that exits, answers with an error or takes longer than `timeout_s` is killed
and started again after `restart_after_s` (with the newest zones); until then calls are checked
in process. Its stderr is the server's, for its tracebacks.

Wire: each way, frames of a 4-byte big-endian length and a pickle (only between this process and
the child it started). To the worker: ("zones", generation, zones), ("hits", generation, columns),
where columns is a (6, n) float64 array: lon, lat, agl_m, amsl_m, wgs84_m, t (the UAVs are not
sent: the worker leaves the zones' authorised UAVs to the caller). From it:
("ready", generation), ("unbuilt", generation, text) (the zones could not be built: it holds
none), ("hits", obs, zone, breach, distance_m), ("stale", generation), ("error", text).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
import time
import traceback
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from geofence.index import ZoneHits, ZoneIndex
from geofence.zones import Zone

log = logging.getLogger("lowalt.geofence.worker")

_LENGTH = struct.Struct(">I")
_F64 = np.dtype(np.float64)


class WorkerUnavailable(Exception):
    """The worker cannot answer this call: check it in process."""


def frame(message: tuple[Any, ...]) -> bytes:
    """A message as it goes on the pipe."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class ZoneWorker:
    """The parent's side: starts the child, hands it zones and calls, reads its answers."""

    def __init__(self, timeout_s: float = 10.0, restart_after_s: float = 5.0,
                 command: Sequence[str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.restart_after_s = restart_after_s
        self.command = list(command or (sys.executable, "-m", "geofence.worker"))
        self.ready_generation: int | None = None
        self.calls = 0  # calls the worker answered
        self.fallbacks = 0  # calls offered to it that were checked in process instead
        self.restarts = 0
        # This thread's CPU time while calls awaited their answers (what the loop did
        # meanwhile; not the calls' cost).
        self.awaited_cpu_s = 0.0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._starting: asyncio.Task[None] | None = None
        self._waiting: collections.deque[asyncio.Future[tuple[Any, ...]]] = collections.deque()
        self._zones: tuple[int, Sequence[Zone]] | None = None  # the newest offered
        self._closed = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the child (and hand it the newest zones offered, if any)."""
        if self._closed or self.running:
            return
        self._process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read(self._process), name="lowalt-zone-worker")
        if self._zones is not None:
            self._send(("zones", *self._zones))

    def offer(self, generation: int, zones: Sequence[Zone]) -> None:
        """Hand the worker a generation of zones (it builds them while calls go on in process);
        the first offer starts it."""
        self._zones = (generation, tuple(zones))
        if self.running:
            self._send(("zones", generation, self._zones[1]))
        elif not self._closed and all(task is None or task.done()
                                      for task in (self._starting, self._restart)):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script's set-up): started by an offer in one
                return
            self._starting = loop.create_task(self._start_logged(),
                                              name="lowalt-zone-worker-start")

    async def _start_logged(self) -> None:
        try:
            await self.start()
        except OSError:
            log.exception("zone worker did not start; checking in process")

    async def hits(self, generation: int,
                   columns: np.ndarray[Any, np.dtype[np.float64]]) -> ZoneHits:
        """The worker's `ZoneIndex.hits` of generation `generation` for the (6, n) columns (lon,
        lat, agl_m, amsl_m, wgs84_m, t), without the zones' authorised UAVs applied (the UAVs
        stay here: the caller applies `ZoneIndex.not_exempt`); WorkerUnavailable when it
        cannot give them."""
        if not self.running or self.ready_generation != generation:
            raise WorkerUnavailable("not ready")
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._send(("hits", generation, columns))
        cpu_s = time.thread_time()
        try:
            async with asyncio.timeout(self.timeout_s):
                answer = await asyncio.shield(future)
        except TimeoutError:
            log.error("zone worker: no answer in %.1f s; restarting it", self.timeout_s)
            self._failed()
            raise WorkerUnavailable("timed out") from None
        finally:
            self.awaited_cpu_s += time.thread_time() - cpu_s
        kind = answer[0]
        if kind == "hits":
            self.calls += 1
            return ZoneHits(*answer[1:])
        if kind == "error":
            log.error("zone worker failed a call; restarting it:\n%s", answer[1])
            self._failed()
        # "stale": the zones changed between the offer and this call
        raise WorkerUnavailable(kind)

    def _send(self, message: tuple[Any, ...]) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        try:
            process.stdin.write(frame(message))
        except (ConnectionError, RuntimeError):  # the child is gone: the reader will say so
            self._failed()

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        try:
            while True:
                head = await stdout.readexactly(_LENGTH.size)
                answer = pickle.loads(await stdout.readexactly(_LENGTH.unpack(head)[0]))
                if answer[0] == "ready":
                    self.ready_generation = answer[1]
                    continue
                if answer[0] == "unbuilt":  # calls stay in process until the next zones
                    self.ready_generation = None
                    log.error("zone worker could not build zones %d:\n%s", answer[1], answer[2])
                    continue
                if self._waiting:
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            if process is self._process and not self._closed:
                log.error("zone worker exited (code %s); checking in process until it restarts",
                          await process.wait())
                self._failed()

    def _failed(self) -> None:
        """Stop using the worker: kill it, fail what waits, restart after a pause."""
        process, self._process = self._process, None
        self.ready_generation = None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        self._release_waiting()
        if not self._closed and (self._restart is None or self._restart.done()):
            self._restart = asyncio.get_running_loop().create_task(
                self._restart_later(), name="lowalt-zone-worker-restart")

    def _release_waiting(self) -> None:
        """Answer every call in flight with "gone" (its caller checks it in process)."""
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(("gone",))

    async def _restart_later(self) -> None:
        await asyncio.sleep(self.restart_after_s)
        self.restarts += 1
        await self._start_logged()

    async def close(self) -> None:
        self._closed = True
        for task in (self._starting, self._restart, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        process, self._process = self._process, None
        self.ready_generation = None
        self._release_waiting()  # a call in flight is checked in process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # the child exits at the end of its input
            try:
                async with asyncio.timeout(5.0):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


# -- the child ---------------------------------------------------------------------------------
def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child's loop: read frames from `requests` until their end, answer on `answers`."""
    index = ZoneIndex.empty()
    generation: int | None = None

    def answer(message: tuple[Any, ...]) -> None:
        answers.write(frame(message))
        answers.flush()

    while True:
        head = requests.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack(head)
        body = requests.read(size)
        if len(body) < size:
            return
        message = pickle.loads(body)
        if message[0] == "zones":
            generation = None  # until these are built: calls are answered "stale"
            try:
                index = ZoneIndex(message[2])
            except Exception:
                answer(("unbuilt", message[1], traceback.format_exc()))
                continue
            generation = message[1]
            answer(("ready", generation))
            continue
        try:
            if message[1] != generation:
                answer(("stale", message[1]))
            else:
                lon, lat, agl_m, amsl_m, wgs84_m, t = message[2]
                found = index.hits(lon, lat, agl_m, amsl_m, wgs84_m, t, None)
                answer(("hits", found.obs, found.zone, found.breach, found.distance_m))
        except Exception:
            answer(("error", traceback.format_exc()))


def main() -> None:
    # The parent owns this process's life: it ends when its input does (the parent closed the
    # pipe or is gone). Ctrl-C at a terminal and a service manager's SIGTERM reach the whole
    # process group; the parent then drains and closes this in its own time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The answers go on the stdout the parent reads; anything else printed goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
