"""The zone worker (geofence/worker.py): a real child process holding the zones, the same hits as
in process, generations, failures (exit, error, no answer), and the server using it end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from benchmarks.bench_geofence import random_points, random_zones
from geofence import http
from geofence.index import ZoneHits, ZoneIndex
from geofence.worker import WorkerUnavailable, ZoneWorker
from geofence.zones import Zone
from lowalt.settings import Settings
from tests.conftest import Server, running
from tests.test_geofence_e2e import JIANGBEI, alerts, auth, eventually, obs, send


async def until(check: Callable[[], Any], timeout_s: float = 30.0) -> None:
    """Poll until check() is true (the worker's state changes in the background)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def ready(worker: ZoneWorker, generation: int, zones: list[Zone]) -> None:
    worker.offer(generation, zones)
    await until(lambda: worker.ready_generation == generation)


def columns(p: dict[str, Any], rows: slice) -> np.ndarray[Any, np.dtype[np.float64]]:
    h = p["heights"]
    return np.stack([p["lon"][rows], p["lat"][rows], h["agl"][rows], h["amsl"][rows],
                     h["wgs84"][rows], p["t"][rows]])


def as_tuples(found: ZoneHits) -> list[tuple[int, int, bool, float]]:
    return list(zip(found.obs.tolist(), found.zone.tolist(), found.breach.tolist(),
                    found.distance_m.tolist(), strict=True))


async def test_worker_hits_are_the_in_process_hits() -> None:
    """Random zones (circles, polygons, windows, schedules, authorised UAVs) and points: the
    worker's hits, with the authorised UAVs applied here, are the index's own, pair for pair."""
    zones = random_zones(1_000, np.random.default_rng(7))
    # A tenth of the zones authorise UAV-1 (among others): a quarter of the points are UAV-1's.
    zones = [dataclasses.replace(z, authorized=z.authorized | {"UAV-1"}) if z.authorized else z
             for z in zones]
    index = ZoneIndex(zones)
    p = random_points(20_000, np.random.default_rng(8))
    p["uav"] = [f"UAV-{i}" for i in np.random.default_rng(9).integers(0, 4, 20_000)]
    worker = ZoneWorker()
    try:
        await ready(worker, 1, zones)
        exempted = 0
        for start in range(0, 20_000, 2_500):
            rows = slice(start, start + 2_500)
            cols, uav = columns(p, rows), p["uav"][rows]
            got = await worker.hits(1, cols)
            keep = index.not_exempt(got.obs, got.zone, uav)
            if keep is not None:
                exempted += int((~keep).sum())
                got = got.take(keep)
            want = index.hits(*cols, uav)
            assert as_tuples(got) == as_tuples(want)
            assert want.obs.size > 50  # the points do meet zones
        assert exempted > 0  # and some UAVs were let through by their authorisation
        assert worker.calls == 8 and worker.fallbacks == 0
    finally:
        await worker.close()
    assert not worker.running


async def test_only_the_generation_the_worker_holds_is_answered() -> None:
    zones = random_zones(50, np.random.default_rng(1))
    p = random_points(500, np.random.default_rng(2))
    worker = ZoneWorker()
    try:
        await ready(worker, 1, zones)
        with pytest.raises(WorkerUnavailable):  # not offered: the caller checks in process
            await worker.hits(2, columns(p, slice(None)))
        fewer = zones[:10]
        await ready(worker, 2, fewer)
        got = await worker.hits(2, columns(p, slice(None)))
        assert as_tuples(got) == as_tuples(ZoneIndex(fewer).hits(*columns(p, slice(None)), None))
        with pytest.raises(WorkerUnavailable):  # an older generation is gone from it
            await worker.hits(1, columns(p, slice(None)))
    finally:
        await worker.close()


async def test_a_worker_that_exits_is_started_again_with_the_newest_zones() -> None:
    zones = random_zones(50, np.random.default_rng(1))
    p = random_points(500, np.random.default_rng(2))
    worker = ZoneWorker(restart_after_s=0.05)
    try:
        await ready(worker, 1, zones)
        assert worker._process is not None
        worker._process.kill()
        await until(lambda: worker.ready_generation is None)  # told by its pipe's end
        with pytest.raises(WorkerUnavailable):
            await worker.hits(1, columns(p, slice(None)))
        await until(lambda: worker.ready_generation == 1)  # restarted, with generation 1
        assert worker.restarts == 1
        got = await worker.hits(1, columns(p, slice(None)))
        assert as_tuples(got) == as_tuples(ZoneIndex(zones).hits(*columns(p, slice(None)), None))
    finally:
        await worker.close()


async def test_a_failed_call_restarts_the_worker() -> None:
    zones = random_zones(20, np.random.default_rng(1))
    worker = ZoneWorker(restart_after_s=0.05)
    try:
        await ready(worker, 1, zones)
        first = worker._process
        with pytest.raises(WorkerUnavailable, match="error"):
            await worker.hits(1, np.zeros((5, 3)))  # five columns, not six: it raises there
        await until(lambda: worker.ready_generation == 1)
        assert worker._process is not first and worker.restarts == 1
    finally:
        await worker.close()


# A child that builds nothing and answers every offer at once, but never a call.
_SILENT = """
import pickle, struct, sys
out = sys.stdout.buffer
while True:
    head = sys.stdin.buffer.read(4)
    if len(head) < 4:
        break
    message = pickle.loads(sys.stdin.buffer.read(struct.unpack(">I", head)[0]))
    if message[0] == "zones":
        body = pickle.dumps(("ready", message[1]))
        out.write(struct.pack(">I", len(body)) + body)
        out.flush()
"""


async def test_a_worker_that_does_not_answer_is_killed() -> None:
    worker = ZoneWorker(timeout_s=0.3, restart_after_s=60.0,
                        command=[sys.executable, "-c", _SILENT])
    try:
        await ready(worker, 1, [])
        process = worker._process
        assert process is not None
        started = time.monotonic()
        with pytest.raises(WorkerUnavailable, match="timed out"):
            await worker.hits(1, np.zeros((6, 3)))
        assert 0.3 <= time.monotonic() - started < 5.0
        assert await asyncio.wait_for(process.wait(), 5.0) != 0  # killed
        assert worker.ready_generation is None and not worker.running
    finally:
        await worker.close()


def _geofence(server: Server) -> Any:
    return server.client.app[http.GEOFENCE]


async def test_server_checks_through_the_worker_and_without_it(settings: Settings) -> None:
    """With the worker from the first zone on: the stage's calls go to it once it holds the
    zones; a zone added is in effect from its answer on (checked in process until the worker
    has it); a killed worker changes no alert."""
    async with running(settings, geofence_worker=True, geofence_worker_min_zones=1) as server:
        geofence = _geofence(server)
        worker = geofence.worker
        assert worker is not None
        worker.restart_after_s = 0.05
        reg, gw = await server.token("regulator"), await server.token("gateway")
        zone = {**JIANGBEI, "properties": {**JIANGBEI["properties"], "authorized": ["FRIEND"]}}
        assert (await server.client.post("/v1/zones", json=zone,
                                         headers=auth(reg))).status == 201
        await until(lambda: geofence.worker_ready)
        now = time.time() - 60
        await send(server, gw, obs("IN", now, 29.719, 106.642),
                   obs("FRIEND", now, 29.719, 106.642),  # authorised: no alert
                   obs("NEAR", now, 29.719 + 0.0295, 106.642), obs("OUT", now, 29.60, 106.40))
        events = await eventually(lambda: alerts(server, reg))
        assert {(e["uav"], e["type"]) for e in events} == {
            ("IN", "geofence_breach"), ("NEAR", "geofence_approach")}
        assert worker.calls >= 1 and worker.fallbacks == 0

        # A new zone: observations committed after the answer meet it, worker ready or not.
        second = {**JIANGBEI, "geometry": {"type": "Point", "coordinates": [106.40, 29.60]},
                  "properties": {**JIANGBEI["properties"], "id": "second", "radius_m": 500}}
        assert (await server.client.post("/v1/zones", json=second,
                                         headers=auth(reg))).status == 201
        await send(server, gw, obs("OUT", now + 1, 29.60, 106.40))
        await eventually(lambda: alerts(server, reg, uav="OUT"))

        assert worker._process is not None
        worker._process.kill()
        await send(server, gw, obs("LATE", now + 2, 29.719, 106.642))
        await eventually(lambda: alerts(server, reg, uav="LATE"))
        await until(lambda: geofence.worker_ready)  # back, with both zones
        calls = worker.calls
        await send(server, gw, obs("AGAIN", now + 3, 29.60, 106.40))
        events = await eventually(lambda: alerts(server, reg, uav="AGAIN"))
        assert [(e["type"], e["zone"]) for e in events] == [("geofence_breach", "second")]
        assert worker.calls > calls and worker.restarts == 1
        r = await server.client.get("/metrics", headers=auth(reg))
        assert "lowalt_zone_worker_ready 1\n" in await r.text()
    assert not worker.running  # stopped with the server


async def test_no_worker_below_its_zone_count_or_unless_on(settings: Settings) -> None:
    async with running(settings, geofence_worker=True, geofence_worker_min_zones=2) as server:
        geofence = _geofence(server)
        reg = await server.token("regulator")
        assert (await server.client.post("/v1/zones", json=JIANGBEI,
                                         headers=auth(reg))).status == 201
        await asyncio.sleep(0.2)
        assert not geofence.worker.running and not geofence.worker_ready
    async with running(settings, geofence_worker_min_zones=0) as server:  # off by default
        assert _geofence(server).worker is None


def test_worker_child_exits_at_the_end_of_its_input() -> None:
    import subprocess
    proc = subprocess.run([sys.executable, "-m", "geofence.worker"], input=b"", timeout=60,
                          capture_output=True, env={**os.environ})
    assert proc.returncode == 0 and proc.stdout == b""


async def test_closing_answers_a_call_in_flight() -> None:
    """A call awaiting the worker when it is closed (server shutdown) is let go at once, to be
    checked in process, not held until the call's timeout."""
    worker = ZoneWorker(timeout_s=30.0, command=[sys.executable, "-c", _SILENT])
    try:
        await ready(worker, 1, [])
        call = asyncio.create_task(worker.hits(1, np.zeros((6, 3))))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await worker.close()
        with pytest.raises(WorkerUnavailable, match="gone"):
            await call
        assert time.monotonic() - started < 10.0
    finally:
        await worker.close()


async def test_zones_the_worker_cannot_build_leave_the_calls_in_process() -> None:
    zones = random_zones(20, np.random.default_rng(1))
    worker = ZoneWorker()
    try:
        await ready(worker, 1, zones)
        worker.offer(2, [zones[0], zones[0]])  # the same id twice: ZoneIndex refuses them
        await until(lambda: worker.ready_generation is None)
        with pytest.raises(WorkerUnavailable):
            await worker.hits(1, np.zeros((6, 3)))  # not the generation it was last offered
        assert worker.running and worker.restarts == 0  # not a failure of the worker itself
        await ready(worker, 3, zones[:5])
        got = await worker.hits(3, np.zeros((6, 3)))
        assert got.obs.size == 0
    finally:
        await worker.close()


async def test_the_child_outlives_signals_to_its_group_and_ends_with_its_input() -> None:
    """Ctrl-C or a service manager's SIGTERM reach the worker with the server; it stays until
    the server closes it (and ends when its input does)."""
    import signal

    zones = random_zones(5, np.random.default_rng(1))
    worker = ZoneWorker()
    try:
        await ready(worker, 1, zones)
        process = worker._process
        assert process is not None
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert worker.running
        await worker.hits(1, np.zeros((6, 3)))  # still answers
    finally:
        await worker.close()
    assert process.returncode == 0


def test_an_offer_without_an_event_loop_starts_nothing() -> None:
    worker = ZoneWorker()
    worker.offer(1, random_zones(3, np.random.default_rng(1)))
    assert not worker.running and worker.ready_generation is None
