"""The traffic feed's flush schedule, socketless (flushes driven with explicit monotonic times):
an aircraft's news goes out at the first flush once it is due, not at the next boundary of a
view-wide period; an aircraft reporting at rate_hz keeps a small, steady delay however late the
flushes run; its items stay at least a period less the slack apart, a joining client's
included."""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.traffic import TICK_S, TrafficClient, TrafficFeed
from lowalt.fusion import FusedPicture, Identities
from lowalt.metrics import Metrics
from lowalt.models import Observation, Principal
from lowalt.storage import UavRecord

REGULATOR = Principal(0, "test", "regulator")
WORLD = (-180.0, -90.0, 180.0, 90.0)
T0 = 1_764_000_000.0


@dataclass
class StaticRegistry:
    by_uav: Mapping[str, UavRecord] = field(default_factory=dict)
    alias_to_uav: Mapping[str, str] = field(default_factory=dict)


def obs(uav: str, t: float, lon: float = 106.5) -> Observation:
    return Observation(uav, t, 29.6, lon, 300.0, None, None, None, None, "airborne", None, None,
                       "sat/http/native", t)


class Feed:
    """A feed over its own picture, flushed at monotonic times `start + at` by `flush(at)`."""

    def __init__(self) -> None:
        self.picture = FusedPicture(Identities(StaticRegistry()))
        self.feed = TrafficFeed(self.picture, gone_after_s=60.0, max_clients=10,
                                buffer_bytes=1 << 20, heartbeat_s=15.0, write_timeout_s=10.0,
                                metrics=Metrics(), clock=lambda: T0 + 5.0)
        self.start = time.monotonic() + 10.0  # after every group's first due time

    def connect(self) -> TrafficClient:
        client = self.feed.connect(REGULATOR, WORLD, 1.0)
        assert client is not None
        return client

    def flush(self, at: float) -> None:
        self.feed.flush_due(self.start + at)


async def received(client: TrafficClient) -> list[list[dict[str, Any]]]:
    return [json.loads(f.text) for f in await client.get(0)]


def uavs(flushes: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[i.get("uav") or f"gone:{i['gone']}" for i in items] for items in flushes]


async def test_news_goes_out_at_the_next_tick_once_a_period_has_passed() -> None:
    f = Feed()
    client = f.connect()
    f.picture.add([obs("A-1", T0)])
    f.flush(0.0)
    assert uavs(await received(client)) == [["A-1"]]  # the snapshot
    f.picture.add([obs("B-1", T0 + 0.25)])
    f.flush(0.3)  # B-1 is new to the view: no need to wait for a view-wide period
    assert uavs(await received(client)) == [["B-1"]]
    f.picture.add([obs("A-1", T0 + 0.5, lon=106.6), obs("B-1", T0 + 0.7, lon=106.6)])
    f.flush(0.6)
    f.flush(0.97)
    assert await received(client) == []  # A-1 went out at 0.0, B-1 at 0.3: not due yet
    f.flush(1.08)  # a snapshot holds its aircraft back one period
    assert uavs(await received(client)) == [["A-1"]]
    f.flush(1.19)
    assert await received(client) == []
    f.flush(1.3)  # B-1: a period less the slack after its item of 0.3
    ((b,),) = await received(client)
    assert b["uav"] == "B-1" and b["t"] == T0 + 0.7


async def test_an_aircraft_reporting_every_tick_gets_rate_hz_updates() -> None:
    f = Feed()
    client = f.connect()
    at = 0.0
    sent: list[float] = []
    for k in range(40):  # 4 s of reports, one per tick
        at = k * (TICK_S + 0.001)  # (each flush just past the one before's next)
        f.picture.add([obs("FAST-1", T0 + at, lon=106.5 + k * 1e-4)])
        f.flush(at)
        sent += [at for items in await received(client) for i in items if i.get("uav")]
    assert 4 <= len(sent) <= 5  # in 3.9 s: the first, then a grid that starts 0.9 s after it
    assert all(b - a >= 1.0 - TICK_S - 1e-9 for a, b in itertools.pairwise(sent)), sent


async def test_a_steady_reporter_keeps_a_small_delay_though_flushes_run_late() -> None:
    """1 Hz reports, flushes every tick but each 5 ms later than the tick asked (a busy loop):
    a strict "a period since the last item" rule would add that lateness to the wait every
    second until the wait is a whole period; the grid keeps it within about a tick."""
    f = Feed()
    client = f.connect()
    sent: list[tuple[float, float]] = []  # (flush time, state t - T0)
    at, reported = 0.0, -1
    while at < 30.0:
        if math.floor(at - 0.05) > reported:  # a report fused 0.05 s into each second
            reported = math.floor(at - 0.05)
            f.picture.add([obs("STEADY-1", T0 + reported + 0.05, lon=106.5 + reported * 1e-4)])
        f.flush(at)
        sent += [(at, i["t"] - T0) for items in await received(client) for i in items]
        at += TICK_S + 0.005
    ages = [flushed - t for flushed, t in sent]
    assert len(sent) >= 29 and max(ages[1:]) < 2 * TICK_S + 0.01, ages
    assert all(b[0] - a[0] >= 1.0 - TICK_S for a, b in itertools.pairwise(sent)), sent


async def test_a_joining_client_gets_no_aircraft_twice_within_a_period() -> None:
    f = Feed()
    first = f.connect()
    f.picture.add([obs("A-1", T0)])
    f.flush(0.0)
    assert uavs(await received(first)) == [["A-1"]]
    f.picture.add([obs("A-1", T0 + 0.4, lon=106.6)])
    second = f.connect()
    f.flush(0.5)
    assert uavs(await received(second)) == [["A-1"]]  # its snapshot: the newest state
    assert await received(first) == []
    f.flush(1.0)  # A-1 would be due for `first`, but the snapshot holds the view back
    assert await received(first) == await received(second) == []
    f.flush(1.55)
    for client in (first, second):
        ((a,),) = await received(client)
        assert a["uav"] == "A-1" and a["t"] == T0 + 0.4


async def test_gone_waits_for_its_due_time_too() -> None:
    f = Feed()
    client = f.connect()
    f.picture.add([obs("A-1", T0)])
    f.flush(0.0)
    await received(client)
    f.picture.forget_silent(T0 + 1.0)  # leaves the picture
    f.flush(0.5)
    assert await received(client) == []
    f.flush(1.0)
    assert uavs(await received(client)) == [["gone:A-1"]]
