"""Fuzzing the live server: random bytes on the gateway port, random frames after a good hello,
random HTTP bodies on every POST route. None may crash the server, hang, answer 500, or disturb
another connection: a well-behaved gateway client keeps getting its acks all along, and every
observation acknowledged to it is stored.

The server runs on its own event loop in a thread, so hypothesis drives plain blocking sockets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.client import GatewayClient
from lowalt.app import RUNTIME, Runtime, create_app, start_http
from lowalt.settings import Settings, replace
from tests.conftest import make_token

T = TypeVar("T")
FUZZ = settings(deadline=None, database=None, max_examples=100,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_LEN = struct.Struct(">I")
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


class ThreadServer:
    """The whole server on loopback, on an event loop of its own, plus one honest gateway
    client that sends a frame every 20 ms and records what was acknowledged."""

    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.acked: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self) -> None:
        self.app = create_app(self.settings)
        self.runner = await start_http(self.app, self.settings)
        self.http_port = self.runner.addresses[0][1]
        self.runtime: Runtime = self.app[RUNTIME]
        self.admin = await make_token(self.runtime.store, "admin")
        self.gateway = await make_token(self.runtime.store, "gateway", name="fuzz")
        self._honest = asyncio.create_task(self._honest_client())

    async def _honest_client(self) -> None:
        client = await GatewayClient.connect("127.0.0.1", self.runtime.gateway_port,
                                             self.gateway, "honest")
        try:
            t0 = time.time() - 600.0
            while not self._stop.is_set():
                key = ("HONEST", t0 + len(self.acked) * 0.01)
                seq = client.send_obs([[key[0], key[1], 29.7, 106.6, 100.0]])
                ack = await asyncio.wait_for(client.recv(), 10.0)
                if ack != {"ack": seq, "accepted": 1, "duplicates": 0, "rejected": []}:
                    self.errors.append(f"unexpected answer {ack!r}")
                    return
                self.acked.append(key)
                await asyncio.sleep(0.02)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            await client.close()

    async def _finish(self) -> None:
        self._stop.set()
        await self._honest
        await self.runner.cleanup()

    def close(self) -> None:
        try:
            self.run(self._finish())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def stored(self, uav: str) -> set[tuple[str, float]]:
        rows = self.run(self.runtime.store.track(uav, 0, time.time() + 10, 100_000))
        return {(r.uav, r.t) for r in rows}


@pytest.fixture
def live(settings: Settings) -> Iterator[ThreadServer]:
    s = replace(settings, handshake_timeout_s=2.0, idle_timeout_s=5.0, max_frame_bytes=65536,
                max_body_bytes=65536, http_header_timeout_s=2.0, http_body_timeout_s=2.0)
    server = ThreadServer(s)
    try:
        yield server
        after_the_fuzz(server)
    finally:
        server.close()


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send data, half-close, and read until the server closes (a hang fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server hung up first (an oversize length): fine
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def frames_of(data: bytes) -> list[Any]:
    """The server's answer must be whole, well-formed frames of MessagePack maps."""
    out = []
    while data:
        assert len(data) >= 4
        (length,) = _LEN.unpack_from(data)
        body, data = data[4: 4 + length], data[4 + length:]
        assert len(body) == length
        out.append(msgpack.unpackb(body, raw=False, strict_map_key=False))
    assert all(isinstance(f, dict) for f in out)
    return out


def frame(payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def after_the_fuzz(live: ThreadServer) -> None:
    """The server answers, the honest client still gets acks, and all it was told is stored."""
    conn = http.client.HTTPConnection("127.0.0.1", live.http_port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
    conn.close()
    before = len(live.acked)
    deadline = time.monotonic() + 10
    while len(live.acked) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live.errors == []
    assert len(live.acked) >= before + 3
    acked = list(live.acked)
    assert set(acked) <= live.stored("HONEST")


scalars = (st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=20)
           | st.binary(max_size=30))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=5)
                      | st.dictionaries(st.text(max_size=10), c, max_size=5), max_leaves=20)
obs_item = (st.lists(scalars, max_size=10)
            | st.fixed_dictionaries({}, optional={
                k: scalars | st.floats(-200, 20000) for k in (
                    "uav", "t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "agl_m",
                    "status", "acc_h_m")}))
data_frames = st.one_of(
    values,
    st.fixed_dictionaries({"seq": INT64 | scalars}, optional={
        "obs": st.lists(obs_item, max_size=8) | values,
        "odid": st.lists(st.fixed_dictionaries({"t": scalars, "msg": st.binary(max_size=30)}),
                         max_size=4) | values,
        "sbs": st.text(max_size=200) | values,
    }),
)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_bytes_on_the_gateway_port(live: ThreadServer, data: bytes) -> None:
    frames = frames_of(exchange(live.runtime.gateway_port, data))
    assert len(frames) <= 1 and all(f.get("ok") is False for f in frames)  # never a session
    assert live.errors == []


@FUZZ
@given(payloads=st.lists(data_frames | st.binary(max_size=200), max_size=6),
       tail=st.binary(max_size=20))
def test_random_frames_after_a_good_hello(
    live: ThreadServer, payloads: list[Any], tail: bytes
) -> None:
    data = frame({"hello": 1, "token": live.gateway, "name": "fuzzed"})
    for p in payloads:
        data += _LEN.pack(len(p)) + p if isinstance(p, bytes) else frame(p)
    answer = frames_of(exchange(live.runtime.gateway_port, data + tail))
    assert answer[0] == {"ok": True}
    answers = answer[1:]
    assert len(answers) >= len(payloads)  # one answer per frame; maybe one for the tail
    assert all("ack" in f or "frame" in f for f in answers[:len(payloads)])
    assert all("ack" in f or "error" in f for f in answers)
    assert live.errors == []


POST_ROUTES = ("/v1/telemetry", "/v1/zones", "/v1/zones/import", "/v1/uavs", "/v1/tokens",
               "/v1/subscriptions", "/v1/clearances")


@FUZZ
@given(route=st.sampled_from(POST_ROUTES),
       content_type=st.sampled_from(["application/json", "application/msgpack", "text/plain"]),
       body=st.binary(max_size=3000) | values.map(lambda v: json.dumps(v, default=repr).encode()))
def test_random_http_bodies(live: ThreadServer, route: str, content_type: str,
                            body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", live.http_port, timeout=10)
    try:
        conn.request("POST", route, body=body, headers={
            "Authorization": f"Bearer {live.admin}", "Content-Type": content_type})
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    assert response.status < 500, (response.status, payload[:300])
    if response.status >= 400:
        assert "error" in json.loads(payload)
    assert live.errors == []


def test_oversize_lengths_and_truncated_frames(live: ThreadServer) -> None:
    """The edges random bytes rarely hit: a length past max_frame, a frame cut short."""
    hello = frame({"hello": 1, "token": live.gateway, "name": "edges"})
    answer = frames_of(exchange(live.runtime.gateway_port, _LEN.pack(65537) + b"x" * 100))
    assert answer == [{"ok": False, "error": "frame of 65537 bytes exceeds max_frame (65536)"}]
    answer = frames_of(exchange(live.runtime.gateway_port,
                                hello + frame({"seq": 1, "obs": []}) + _LEN.pack(65537)))
    assert answer == [{"ok": True}, {"ack": 1, "accepted": 0, "duplicates": 0, "rejected": []},
                      {"error": "frame of 65537 bytes exceeds max_frame (65536)"}]
    answer = frames_of(exchange(live.runtime.gateway_port, hello + _LEN.pack(50) + b"cut"))
    assert answer == [{"ok": True}]
