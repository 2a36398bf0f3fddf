"""Socketless tests of the gateway framing: bytes go into GatewayProtocol, frames come out.

The protocol runs over the real pipeline and a real SQLite store; only the socket is replaced by
a transport that records what the protocol writes and asks of it (pause, resume, close).
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ingest.frames import OrderedReplies
from ingest.gateway import GatewayProtocol, encode_frame
from lowalt.app import Runtime, build_runtime, shutdown_runtime, start_ingest
from lowalt.settings import Settings, load_settings
from tests.conftest import make_token

MAX_FRAME = 4096
MAX_OBS = 20
WAIT_S = 10.0  # only to turn a hang into a failure


class FakeTransport(asyncio.Transport):
    """Records writes and flow-control calls; close() reports connection_lost like a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: GatewayProtocol | None = None
        self.written = bytearray()
        self.calls: list[str] = []  # "pause" / "resume", in order
        self.reading = True
        self.eof_written = False
        self.closed = False
        self._changed = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.written += data
        self._changed.set()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Send FIN; the peer reads to the end and closes its side in turn."""
        self.eof_written = True
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.eof_received)

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while paused"
        self.reading = False
        self.calls.append("pause")
        self._changed.set()

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True
        self.calls.append("resume")
        self._changed.set()

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._changed.set()
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def frames(self) -> list[dict[str, Any]]:
        """Every complete frame written so far."""
        out, pos, buf = [], 0, bytes(self.written)
        while len(buf) - pos >= 4:
            (length,) = struct.unpack_from(">I", buf, pos)
            if len(buf) - pos - 4 < length:
                break
            out.append(msgpack.unpackb(buf[pos + 4 : pos + 4 + length], strict_map_key=False))
            pos += 4 + length
        return out

    async def wait_until(self, done: Callable[[], bool]) -> None:
        async def poll() -> None:
            while not done():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(poll(), WAIT_S)

    async def wait_frames(self, n: int) -> list[dict[str, Any]]:
        await self.wait_until(lambda: len(self.frames()) >= n)
        return self.frames()


Connect = Callable[..., Awaitable[tuple[GatewayProtocol, FakeTransport]]]


@pytest.fixture
def overrides() -> dict[str, Any]:
    """Settings a test changes (parametrize `overrides` to change them)."""
    return {}


@pytest.fixture
def settings(tmp_path: Path, overrides: dict[str, Any]) -> Settings:
    return load_settings({
        "database_url": f"sqlite:///{tmp_path / 'lowalt.db'}", "http": "127.0.0.1:0",
        "gateway": "127.0.0.1:0", "max_frame_bytes": MAX_FRAME, "max_obs_per_batch": MAX_OBS,
        **overrides,
    }, {})


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = await build_runtime(settings)
    await start_ingest(rt, with_gateway=False)
    try:
        yield rt
    finally:
        await shutdown_runtime(rt)


@pytest.fixture
async def token(runtime: Runtime) -> str:
    return await make_token(runtime.store, "gateway", name="station")


@pytest.fixture
async def connect(runtime: Runtime) -> AsyncIterator[Connect]:
    """Make protocols on fake transports; every one is disconnected and settled afterwards."""
    made: list[tuple[GatewayProtocol, FakeTransport]] = []

    async def factory(**overrides: Any) -> tuple[GatewayProtocol, FakeTransport]:
        s = runtime.settings
        kwargs: dict[str, Any] = {
            "max_frame_bytes": s.max_frame_bytes,
            "conn_max_inflight_obs": s.conn_max_inflight_obs,
            "handshake_timeout_s": s.handshake_timeout_s, "idle_timeout_s": s.idle_timeout_s,
            "connections": runtime.gateway_connections, **overrides,
        }
        proto = GatewayProtocol(runtime.ingest, runtime.auth, **kwargs)
        transport = FakeTransport()
        transport.protocol = proto
        proto.connection_made(transport)
        made.append((proto, transport))
        return proto, transport

    yield factory
    for proto, transport in made:
        transport.close()
        await asyncio.sleep(0)  # connection_lost runs
        tasks = [t for t in (proto._task, *proto._background) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


def hello(token: str, name: str = "station") -> bytes:
    return encode_frame({"hello": 1, "token": token, "name": name})


def obs_rows(n: int, uav: str = "P1", t0: float | None = None) -> list[list[Any]]:
    t0 = time.time() - 100.0 if t0 is None else t0
    return [[uav, t0 + i * 0.01, 29.7, 106.6, 120.0] for i in range(n)]


def data(seq: int, rows: list[Any], **extra: Any) -> bytes:
    return encode_frame({"seq": seq, "obs": rows, **extra})


def raw_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


async def open_session(connect: Connect, token: str, **overrides: Any) -> tuple[
        GatewayProtocol, FakeTransport]:
    proto, transport = await connect(**overrides)
    proto.data_received(hello(token))
    assert await transport.wait_frames(1) == [{"ok": True}]
    return proto, transport


# -- hello ---------------------------------------------------------------------------------

async def test_hello_ok(connect: Connect, token: str) -> None:
    proto, transport = await open_session(connect, token)
    assert not transport.closed and proto.session is not None
    assert proto.session.source == "station/gateway"


async def test_hello_bad_token_answers_and_closes(connect: Connect) -> None:
    proto, transport = await connect()
    proto.data_received(hello("lwt_not-a-token"))
    await transport.wait_until(lambda: transport.closed)
    assert transport.frames() == [{"ok": False, "error": "unknown or revoked token"}]


async def test_first_frame_must_be_hello(connect: Connect, token: str) -> None:
    proto, transport = await connect()
    proto.data_received(data(1, obs_rows(1)) + hello(token))
    await transport.wait_until(lambda: transport.closed)
    (answer,) = transport.frames()
    assert answer["ok"] is False and "first frame must be" in answer["error"]


async def test_hello_from_a_reader_role_is_refused(
        runtime: Runtime, connect: Connect) -> None:
    regulator = await make_token(runtime.store, "regulator")
    proto, transport = await connect()
    proto.data_received(hello(regulator))
    await transport.wait_until(lambda: transport.closed)
    assert transport.frames() == [
        {"ok": False, "error": "role 'regulator' may not send telemetry"}]


# -- framing -------------------------------------------------------------------------------

async def test_frames_split_byte_by_byte(runtime: Runtime, connect: Connect, token: str) -> None:
    proto, transport = await connect()
    stream = hello(token) + data(1, obs_rows(3, "SPLIT")) + data(2, obs_rows(2, "SPLIT2"))
    for i in range(len(stream)):
        proto.data_received(stream[i : i + 1])
    frames = await transport.wait_frames(3)
    assert frames == [
        {"ok": True},
        {"ack": 1, "accepted": 3, "duplicates": 0, "rejected": []},
        {"ack": 2, "accepted": 2, "duplicates": 0, "rejected": []},
    ]
    stored = await runtime.store.track("SPLIT", 0, time.time(), 100)
    assert len(stored) == 3 and stored[0].source == "station/gateway/native"


async def test_many_frames_in_one_read_ack_in_order(connect: Connect, token: str) -> None:
    proto, transport = await connect()
    t0 = time.time() - 100.0
    n = 150  # more frames than the protocol queues before it pauses reading
    frames = b"".join(data(s, obs_rows(2, f"M{s}", t0)) for s in range(1, n + 1))
    proto.data_received(hello(token) + frames)
    answers = await transport.wait_frames(n + 1)
    assert answers[0] == {"ok": True}
    assert [a["ack"] for a in answers[1:]] == list(range(1, n + 1))
    assert all(a["accepted"] == 2 for a in answers[1:])
    await transport.wait_until(lambda: transport.reading)  # paused while queued, then resumed
    assert transport.calls[:2] == ["pause", "resume"]


@pytest.mark.parametrize("garbage", [
    b"\xc1garbage",  # 0xc1 is never used in MessagePack
    b"\x93\x01\x02",  # an array of 3 with only 2 items
    b"\x01\x02",  # one value, then extra bytes
    b"",  # an empty frame
])
async def test_garbage_then_a_good_frame(connect: Connect, token: str, garbage: bytes) -> None:
    proto, transport = await open_session(connect, token)
    proto.data_received(data(7, obs_rows(1, "G0")) + raw_frame(garbage) + data(8, obs_rows(2)))
    frames = await transport.wait_frames(4)
    assert frames[1] == {"ack": 7, "accepted": 1, "duplicates": 0, "rejected": []}
    assert frames[2]["frame"] == 2 and "not valid MessagePack" in frames[2]["error"]
    assert frames[3] == {"ack": 8, "accepted": 2, "duplicates": 0, "rejected": []}
    assert not transport.closed


@pytest.mark.parametrize(("payload", "error"), [
    ({"obs": [["X", 1.0, 0.0, 0.0, 0.0]]}, "seq: missing or not an integer"),
    ({"seq": "3", "obs": []}, "seq: missing or not an integer"),
    ({"seq": True, "obs": []}, "seq: missing or not an integer"),
    ([1, 2, 3], "frame must be a map"),
])
async def test_frame_without_seq_is_answered_and_connection_stays(
        connect: Connect, token: str, payload: Any, error: str) -> None:
    proto, transport = await open_session(connect, token)
    proto.data_received(encode_frame(payload) + data(1, obs_rows(1)))
    frames = await transport.wait_frames(3)
    assert frames[1] == {"error": error, "frame": 1}
    assert frames[2] == {"ack": 1, "accepted": 1, "duplicates": 0, "rejected": []}
    assert not transport.closed


async def test_peer_half_close_gets_every_ack_then_close(connect: Connect, token: str) -> None:
    proto, transport = await open_session(connect, token)
    proto.data_received(data(1, obs_rows(2, "HC1")) + data(2, obs_rows(2, "HC2")))
    proto.eof_received()  # the sender is done sending, and waits for its acks
    await transport.wait_until(lambda: transport.closed)
    assert [f.get("ack") for f in transport.frames()] == [None, 1, 2]


# -- limits --------------------------------------------------------------------------------

def frame_of_exact_size(seq: int, size: int) -> bytes:
    """A data frame whose MessagePack body is exactly `size` bytes (padded by an unknown key)."""
    rows = obs_rows(3, "EXACT")
    for pad in range(size):
        body = msgpack.packb({"seq": seq, "obs": rows, "pad": "x" * pad})
        if len(body) == size:
            return raw_frame(body)
    raise AssertionError(f"cannot build a frame of {size} bytes")


async def test_frame_at_max_frame_is_accepted(connect: Connect, token: str) -> None:
    proto, transport = await open_session(connect, token)
    frame = frame_of_exact_size(1, MAX_FRAME)
    assert len(frame) == 4 + MAX_FRAME
    proto.data_received(frame)
    frames = await transport.wait_frames(2)
    assert frames[1] == {"ack": 1, "accepted": 3, "duplicates": 0, "rejected": []}
    assert not transport.closed


async def test_length_over_max_frame_errors_then_closes(connect: Connect, token: str) -> None:
    proto, transport = await open_session(connect, token)
    proto.data_received(data(1, obs_rows(1)))
    proto.data_received(struct.pack(">I", MAX_FRAME + 1))  # the header alone decides
    await transport.wait_until(lambda: transport.closed)
    frames = transport.frames()
    assert frames[1] == {"ack": 1, "accepted": 1, "duplicates": 0, "rejected": []}  # owed first
    assert frames[2] == {"error": f"frame of {MAX_FRAME + 1} bytes exceeds max_frame ({MAX_FRAME})"}
    assert len(frames) == 3
    assert transport.eof_written  # FIN after the answers, so the peer reads them before the end


async def test_oversize_hello_is_refused(connect: Connect) -> None:
    proto, transport = await connect()
    proto.data_received(struct.pack(">I", MAX_FRAME + 1) + b"\x80" * 100)
    await transport.wait_until(lambda: transport.closed)
    assert transport.frames() == [
        {"ok": False, "error": f"frame of {MAX_FRAME + 1} bytes exceeds max_frame ({MAX_FRAME})"}]


async def test_obs_per_frame_at_limit_and_one_past(
        runtime: Runtime, connect: Connect, token: str) -> None:
    proto, transport = await open_session(connect, token)
    proto.data_received(data(1, obs_rows(MAX_OBS, "LIM")))
    proto.data_received(data(2, obs_rows(MAX_OBS + 1, "OVER")))
    proto.data_received(data(3, obs_rows(1, "AFTER")))
    frames = await transport.wait_frames(4)
    assert frames[1] == {"ack": 1, "accepted": MAX_OBS, "duplicates": 0, "rejected": []}
    assert frames[2] == {
        "error": f"obs: {MAX_OBS + 1} observations exceed the limit of {MAX_OBS} per frame",
        "frame": 2, "seq": 2,
    }
    assert frames[3]["ack"] == 3
    assert await runtime.store.track("OVER", 0, time.time(), 100) == []


# -- backpressure --------------------------------------------------------------------------

async def test_pauses_reading_while_commits_lag_and_resumes_after(
        runtime: Runtime, connect: Connect, token: str) -> None:
    """A connection with more than conn_max_inflight_obs awaiting commit stops being read."""
    proto, transport = await open_session(connect, token, conn_max_inflight_obs=5)
    # Hold SQLite's write lock from another connection: commits wait, as a slow disk would.
    blocker = sqlite3.connect(runtime.settings.sqlite_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        proto.data_received(data(1, obs_rows(3, "BP1")))
        proto.data_received(data(2, obs_rows(3, "BP2")))
        await transport.wait_until(lambda: not transport.reading)
        assert proto.session is not None and proto.session.inflight_obs == 6
        for _ in range(20):  # nothing commits, so the protocol stays paused
            await asyncio.sleep(0.01)
        assert transport.calls == ["pause"] and len(transport.frames()) == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    frames = await transport.wait_frames(3)
    assert [f["ack"] for f in frames[1:]] == [1, 2]
    await transport.wait_until(lambda: transport.reading)
    assert transport.calls == ["pause", "resume"]
    proto.data_received(data(3, obs_rows(1, "BP3")))
    assert (await transport.wait_frames(4))[3]["ack"] == 3


@pytest.mark.parametrize("overrides", [{"max_pending_obs": 4, "commit_max_obs": 4}])
async def test_pauses_when_the_pipeline_is_full(
        runtime: Runtime, connect: Connect, token: str) -> None:
    """max_pending_obs bounds the pipeline queue across connections."""
    proto, transport = await open_session(connect, token)
    blocker = sqlite3.connect(runtime.settings.sqlite_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        proto.data_received(data(1, obs_rows(5, "FULL")))
        proto.data_received(data(2, obs_rows(1, "FULL2")))
        await transport.wait_until(lambda: not transport.reading)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    frames = await transport.wait_frames(3)
    assert [f["ack"] for f in frames[1:]] == [1, 2]
    await transport.wait_until(lambda: transport.reading)



async def test_answers_owed_to_a_closed_connection_are_dropped_cleanly() -> None:
    """Closing a connection's replies without flushing closes the waits for acks it still
    held (no coroutine left never awaited), and writes nothing more."""

    written: list[Any] = []
    replies = OrderedReplies(written.append)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def ack(n: int) -> dict[str, Any]:
        await gate
        return {"ack": n}

    waits = [ack(1), ack(2), ack(3)]
    for w in waits:
        replies.push(w)
    await asyncio.sleep(0.01)  # the first is being awaited, the others wait in the queue
    await replies.close(flush=False)
    assert [inspect.getcoroutinestate(w) for w in waits] == [inspect.CORO_CLOSED] * 3
    assert written == []
