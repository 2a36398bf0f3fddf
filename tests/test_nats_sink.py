"""The NATS JetStream sink against the NATS server on this machine (127.0.0.1:4222): events on
`<prefix>.<type>` with Nats-Msg-Id = seq, duplicates dropped by JetStream after a lost cursor,
and nothing lost across a NATS outage (a TCP proxy that the test takes down and up again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from dispatch.service import DISPATCH
from dispatch.store import alert_store_for
from lowalt.app import RUNTIME
from lowalt.settings import Settings
from lowalt.storage import create_store
from tests.conftest import NATS_HOST, NATS_PORT, NATS_URL
from tests.test_feeds import breach, eventually, manager_of, running


@pytest.fixture
def names(nats_up: None) -> Iterator[dict[str, str]]:
    """A stream and subject prefix of this test's own, deleted afterwards."""
    tag = uuid.uuid4().hex[:10]
    value = {"nats_stream": f"LOWALT_TEST_{tag}", "nats_subject_prefix": f"lowalt_test.{tag}"}
    yield value

    async def delete() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            with contextlib.suppress(NotFoundError):
                await nc.jetstream().delete_stream(value["nats_stream"])
        finally:
            await nc.close()

    asyncio.run(delete())


async def stream_messages(stream: str) -> int:
    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.messages)
    except NotFoundError:
        return 0
    finally:
        await nc.close()


async def wait_for_messages(stream: str, n: int) -> None:
    async def enough() -> bool:
        return await stream_messages(stream) >= n

    await eventually(enough)


async def read_stream(names: dict[str, str], n: int) -> list[Any]:
    nc = await nats.connect(NATS_URL)
    try:
        sub = await nc.jetstream().subscribe(f"{names['nats_subject_prefix']}.>",
                                             stream=names["nats_stream"], ordered_consumer=True)
        msgs = [await sub.next_msg(timeout=10) for _ in range(n)]
        await sub.unsubscribe()
        return msgs
    finally:
        await nc.close()


class TcpProxy:
    """A loopback TCP forwarder to NATS that the test can take down and bring back."""

    def __init__(self) -> None:
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, NATS_HOST, self.port,
                                                 reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.pipes):
                task.cancel()
            await asyncio.gather(*self.pipes, return_exceptions=True)
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.pipes.add(task)
        up_reader, up_writer = await asyncio.open_connection(NATS_HOST, NATS_PORT)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError):
                    await w.wait_closed()
            self.pipes.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def test_events_on_their_subjects_with_msg_id(
    settings: Settings, names: dict[str, str]
) -> None:
    async with running(settings, nats_url=NATS_URL, **names) as c:
        m = manager_of(c)
        await m.open_or_update(breach("N1", "Z1"))
        await m.open_or_update(breach("N2", "Z1", type="altitude_limit", severity="warning"))
        await m.resolve(("geofence_breach", "N1", "Z1"), 1_764_000_010.0)
        await wait_for_messages(names["nats_stream"], 3)
        metrics = c.app[RUNTIME].metrics
        await eventually(lambda: metrics.value("lowalt_nats_published_total") == 3)
    msgs = await read_stream(names, 3)
    prefix = names["nats_subject_prefix"]
    assert [m.subject for m in msgs] == [f"{prefix}.geofence_breach", f"{prefix}.altitude_limit",
                                         f"{prefix}.geofence_breach"]
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["1", "2", "3"]
    events = [json.loads(m.data) for m in msgs]
    assert [(e["seq"], e["state"], e["uav"]) for e in events] == [
        (1, "open", "N1"), (2, "open", "N2"), (3, "resolved", "N1")]


async def test_republished_events_are_deduplicated(
    settings: Settings, names: dict[str, str]
) -> None:
    """A cursor lost before it was stored (a crash) means events go out again: JetStream keeps
    one copy of each, by Nats-Msg-Id."""
    stream = names["nats_stream"]
    async with running(settings, nats_url=NATS_URL, **names) as c:
        m = manager_of(c)
        for k in range(5):
            await m.open_or_update(breach("D", f"Z{k}"))
        await wait_for_messages(stream, 5)
    store = create_store(settings)
    await store.open()
    try:
        await alert_store_for(store).save_cursor("nats", 0)
    finally:
        await store.close()
    async with running(settings, nats_url=NATS_URL, **names) as c:
        metrics = c.app[RUNTIME].metrics

        await eventually(lambda: metrics.value("lowalt_nats_duplicates_total") >= 5)
        await manager_of(c).open_or_update(breach("D", "Z9"))
        await wait_for_messages(stream, 6)
    assert await stream_messages(stream) == 6
    msgs = await read_stream(names, 6)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["1", "2", "3", "4", "5", "6"]


async def test_nothing_lost_across_a_nats_outage(
    settings: Settings, names: dict[str, str]
) -> None:
    stream = names["nats_stream"]
    async with proxy() as p:
        url = f"nats://{NATS_HOST}:{p.port}"
        async with running(settings, nats_url=url, **names) as c:
            m = manager_of(c)
            sink = c.app[DISPATCH].nats
            assert sink is not None
            await m.open_or_update(breach("O", "Z0"))
            await wait_for_messages(stream, 1)
            await p.stop()  # NATS unreachable
            for k in range(1, 6):
                await m.open_or_update(breach("O", f"Z{k}"))
            await m.flush(10)
            await asyncio.sleep(0.3)
            assert sink.delivered_seq == 1  # nothing acknowledged, the cursor stays
            await p.start()  # back on the same port
            await wait_for_messages(stream, 6)
            await eventually(lambda: sink.delivered_seq == 6)
    msgs = await read_stream(names, 6)
    assert [json.loads(m.data)["seq"] for m in msgs] == [1, 2, 3, 4, 5, 6]
