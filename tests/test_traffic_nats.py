"""Fused traffic on NATS JetStream, against the NATS server on this machine (127.0.0.1:4222):
states on `<prefix>.<cell>`, a `gone` on the cell an aircraft left or went silent in, at most
traffic_nats_rate_hz states per aircraft, and live data skipped (not queued) during an outage.
Without NATS the tests skip locally and fail under CI=true."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from dispatch.traffic_nats import MAX_AGE_S, TRAFFIC_NATS, cell_of
from lowalt.settings import Settings, replace
from tests.conftest import NATS_HOST, NATS_URL, Server, running
from tests.test_feeds import eventually
from tests.test_geofence_e2e import send
from tests.test_nats_sink import proxy
from tests.test_traffic_feed import report

STATE_KEYS = {"uav", "t", "lat", "lon", "alt_m", "agl_m", "speed_mps", "track_deg", "vspeed_mps",
              "kind", "sources", "status", "registered", "acc_h_m", "acc_v_m"}



@pytest.fixture
def names(nats_up: None) -> Iterator[dict[str, str]]:
    """Streams and subject prefixes of this test's own (alerts and traffic), deleted after."""
    tag = uuid.uuid4().hex[:10]
    value = {
        "nats_stream": f"LOWALT_TEST_{tag}_A", "nats_subject_prefix": f"lowalt_test.{tag}.alerts",
        "nats_traffic_stream": f"LOWALT_TEST_{tag}_T",
        "nats_traffic_subject_prefix": f"lowalt_test.{tag}.traffic",
    }
    yield value

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            for stream in (value["nats_stream"], value["nats_traffic_stream"]):
                with contextlib.suppress(NotFoundError):
                    await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(delete())


@pytest.fixture
def settings(settings: Settings, names: dict[str, str]) -> Settings:
    """The `server` fixture's settings, with the traffic publisher on."""
    return replace(settings, nats_url=NATS_URL, nats_traffic=True, **names)


@dataclass
class Msg:
    cell: str
    data: dict[str, Any]
    msg_id: str
    at: float  # JetStream's timestamp, epoch seconds


class TrafficReader:
    """An ordered JetStream consumer on `<prefix>.>` of the traffic stream."""

    def __init__(self, names: dict[str, str]) -> None:
        self.prefix = names["nats_traffic_subject_prefix"]
        self.stream = names["nats_traffic_stream"]
        self.msgs: list[Msg] = []
        self._cursor = 0
        self._nc: Any = None
        self._sub: Any = None

    async def start(self) -> None:
        self._nc = await nats.connect(NATS_URL)
        js = self._nc.jetstream()

        async def exists() -> bool:
            try:
                await js.stream_info(self.stream)
                return True
            except NotFoundError:
                return False

        await eventually(exists)  # created by the publisher
        self._sub = await js.subscribe(f"{self.prefix}.>", stream=self.stream,
                                       ordered_consumer=True)

    async def close(self) -> None:
        await self._sub.unsubscribe()
        await self._nc.close()

    async def next(self, timeout_s: float = 10.0) -> Msg:
        m = await self._sub.next_msg(timeout=timeout_s)
        assert m.subject.startswith(self.prefix + ".")
        msg = Msg(m.subject[len(self.prefix) + 1:], json.loads(m.data), m.headers["Nats-Msg-Id"],
                  m.metadata.timestamp.timestamp())
        self.msgs.append(msg)
        return msg

    async def until(self, wanted: Callable[[Msg], bool], timeout_s: float = 10.0) -> Msg:
        """The next message, after the one `until` returned last, that satisfies wanted."""
        async with asyncio.timeout(timeout_s):
            while True:
                while self._cursor < len(self.msgs):
                    msg = self.msgs[self._cursor]
                    self._cursor += 1
                    if wanted(msg):
                        return msg
                await self.next(timeout_s)

    async def drain(self, quiet_s: float) -> None:
        """Read until nothing comes for quiet_s."""
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                await self.next(quiet_s)


@contextlib.asynccontextmanager
async def reader(names: dict[str, str]) -> AsyncIterator[TrafficReader]:
    r = TrafficReader(names)
    await r.start()
    try:
        yield r
    finally:
        await r.close()


def state_of(uav: str) -> Callable[[Msg], bool]:
    return lambda m: m.data.get("uav") == uav


def test_cells() -> None:
    assert cell_of(29.65, 106.55) == "1196_2865"
    assert cell_of(29.6, 106.5) == "1196_2865"  # edges belong to the cell north-east of them
    assert cell_of(-0.05, -0.05) == "899_1799"
    assert cell_of(90.0, 180.0) == "1799_0" and cell_of(-90.0, -180.0) == "0_0"


async def test_states_by_cell_and_gone_on_leaving_a_cell(
    server: Server, names: dict[str, str]
) -> None:
    gw = await server.token("gateway")
    await send(server, gw, report("CELL-A", 29.65, 106.55), report("CELL-B", 29.75, 106.75))
    async with reader(names) as r:
        a = await r.until(state_of("CELL-A"))
        assert a.cell == "1196_2865" and set(a.data) == STATE_KEYS
        assert a.data["sources"] == ["gateway/http/native"] and a.data["lat"] == 29.65
        assert a.msg_id == f"CELL-A:{a.data['t']!r}"
        b = await r.until(state_of("CELL-B"))
        assert b.cell == "1197_2867"
        # CELL-A crosses into the next column: gone on the old cell, then its state on the new.
        await send(server, gw, report("CELL-A", 29.65, 106.65))
        gone = await r.until(lambda m: "gone" in m.data)
        assert (gone.cell, gone.data) == ("1196_2865", {"gone": "CELL-A"})
        moved = await r.until(state_of("CELL-A"))
        assert moved.cell == "1196_2866" and moved.data["lon"] == 106.65
        # An aircraft silent for traffic_gone_after_s (60 s) is gone from its cell.
        await send(server, gw, report("OLD-1", 29.6, 106.5, t=time.time() - 57.0))
        await r.until(state_of("OLD-1"))
        silent = await r.until(lambda m: "gone" in m.data, timeout_s=15)
        assert (silent.cell, silent.data) == ("1196_2865", {"gone": "OLD-1"})
        assert silent.msg_id.startswith("OLD-1:") and silent.msg_id.endswith(":gone")
    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().stream_info(names["nats_traffic_stream"])
    finally:
        await nc.close()
    assert info.config.subjects == [f"{names['nats_traffic_subject_prefix']}.>"]
    assert info.config.max_age == MAX_AGE_S
    metrics = server.runtime.metrics
    assert metrics.value("lowalt_traffic_nats_published_total") >= 6


async def test_rate_limit_per_aircraft(server: Server, names: dict[str, str]) -> None:
    """Reports at 5 Hz for 3 s: at most one state per second of them (traffic_nats_rate_hz=1)."""
    gw = await server.token("gateway")
    async with reader(names) as r:
        started = time.monotonic()
        for k in range(16):
            await send(server, gw, report("FAST-1", 29.6, 106.5 + k * 1e-5))
            await asyncio.sleep(max(0.0, started + (k + 1) * 0.2 - time.monotonic()))
        sending_s = time.monotonic() - started
        await r.drain(2.5)
    states = [m for m in r.msgs if m.data.get("uav") == "FAST-1"]
    assert 2 <= len(states) <= math.floor(sending_s) + 2, (sending_s, len(states))
    gaps = [b.at - a.at for a, b in itertools.pairwise(states)]
    assert all(gap >= 0.8 for gap in gaps), gaps
    assert states[-1].data["lon"] == round(106.5 + 15 * 1e-5, 7)  # the newest goes out
    assert len({m.msg_id for m in states}) == len(states)


async def test_outage_skips_and_resumes(settings: Settings, names: dict[str, str]) -> None:
    async with proxy() as p:
        async with running(settings, nats_url=f"nats://{NATS_HOST}:{p.port}") as srv:
            metrics = srv.runtime.metrics
            publisher = srv.client.app[TRAFFIC_NATS]
            gw = await srv.token("gateway")
            async with reader(names) as r:
                await send(srv, gw, report("OUT-1", 29.6, 106.5))
                await r.until(state_of("OUT-1"))
                await eventually(lambda: metrics.value("lowalt_traffic_nats_published_total") == 1)
                await p.stop()  # NATS unreachable
                await eventually(lambda: not publisher.connected)
                skipped = metrics.value("lowalt_traffic_nats_skipped_total")
                for k in range(1, 6):
                    await send(srv, gw, report("OUT-1", 29.6, 106.5 + k * 1e-4))
                    await asyncio.sleep(0.3)
                assert metrics.value("lowalt_traffic_nats_skipped_total") > skipped
                await p.start()  # back on the same port: the newest state goes out
                newest = round(106.5 + 5e-4, 7)
                await r.until(lambda m: m.data.get("lon") == newest, timeout_s=15)
                await r.drain(1.5)
            after = [m for m in r.msgs[1:] if m.data.get("uav") == "OUT-1"]
            assert 1 <= len(after) <= 2, [m.data["lon"] for m in after]  # not the whole backlog
