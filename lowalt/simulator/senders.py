"""Sending simulated traffic to a server: wire formats, transports and the run loop.

Formats (API.md sections 2 and 6), built from scenario states at send time:
- native: observation maps with the section 1 keys only (or the compact array form);
- f3411: one Message Pack (0xF) of Basic ID + Location per observation, as a Remote ID receiver
  would relay it: `{"odid": [{"t": receive time, "msg": bytes, "src": the UAV's fake MAC}]}`;
  F3411 carries time in tenths of a second past the hour, so two reports of one UAV less than
  0.1 s apart become duplicates;
- sbs: an MSG,4 (velocity) and an MSG,3 (position) line per observation, in feet, knots and
  ft/min; aircraft without an ICAO address get one derived from their id (`icao_of`).

Transports: the gateway stream and the WebSocket (frames of up to FRAME_MAX_OBS observations,
at most `window` frames awaiting their ack) and HTTP (one POST per frame, native only).
Logistics clearances, when asked for, go over HTTP beside any transport (clearances.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgpack

from ingest.client import GatewayClient
from ingest.codecs.odid import BasicId, Location, MessagePack, encode
from ingest.codecs.sbs import FPM_MPS, FT_M, KT_MPS
from lowalt.errors import ConfigError

from .clearances import ClearanceAgent, ClearanceStats
from .scenario import SatelliteLink, Scenario, State

__all__ = [
    "FORMATS",
    "FRAME_MAX_OBS",
    "Summary",
    "Target",
    "encode_frame",
    "icao_of",
    "run_simulation",
]

log = logging.getLogger("lowalt.simulator")

FORMATS = ("native", "f3411", "sbs")
FRAME_MAX_OBS = 100
OBS_KEYS = ("uav", "t", "lat", "lon", "alt_m", "agl_m", "speed_mps", "track_deg", "vspeed_mps",
            "status")
ARRAY_KEYS = ("uav", "t", "lat", "lon", "alt_m", "speed_mps", "track_deg", "vspeed_mps", "agl_m")
ACK_TIMEOUT_S = 10.0  # at the end of a run, how long to wait for outstanding acks
RELEASE_EVERY_S = 0.1  # the link's late observations go out together, at most this often
_REASONS_KEPT = 5
_HEX = frozenset("0123456789ABCDEF")


@dataclass(frozen=True)
class Target:
    """Where to send: the gateway stream ("host:port"), or a WebSocket / HTTP URL (a bare
    http://host:port gets the standard path)."""

    transport: Literal["gateway", "ws", "http"]
    address: str

    @classmethod
    def parse(cls, *, gateway: str | None = None, http: str | None = None,
              ws: str | None = None) -> Target:
        given = [(k, v) for k, v in (("gateway", gateway), ("http", http), ("ws", ws)) if v]
        if len(given) > 1:
            raise ConfigError("give one of --gateway, --http, --ws")
        if not given or given[0][0] == "gateway":
            address = gateway or "127.0.0.1:7700"
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"gateway address {address!r}: expected HOST:PORT")
            return cls("gateway", address)
        kind, url = given[0]
        parts = urlsplit(url)
        schemes = ("http", "https") if kind == "http" else ("ws", "wss", "http", "https")
        if parts.scheme not in schemes or not parts.netloc:
            raise ConfigError(f"{kind} URL {url!r}: expected {schemes[0]}://HOST:PORT[/PATH]")
        if parts.path in ("", "/"):
            path = "/v1/telemetry" if kind == "http" else "/v1/telemetry/ws"
            url = urlunsplit(parts._replace(path=path))
        return cls("http" if kind == "http" else "ws", url)


@dataclass
class Summary:
    """What a run sent and what the server answered."""

    transport: str
    fmt: str
    generated: int = 0  # observations the scenario produced
    sent: int = 0  # observations handed to the transport (duplicate copies included)
    frames: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)  # the first few rejection reasons
    unacked: int = 0  # observations whose frames had no answer by the end
    lost: int = 0  # the satellite link's effects
    duplicated: int = 0
    reordered: int = 0
    errors: list[str] = field(default_factory=list)  # what ended the run early
    uavs: set[str] = field(default_factory=set)  # ids as the server sees them
    clearances: ClearanceStats | None = None  # when the logistics flights asked clearances
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def ack_p50_s(self) -> float | None:
        return statistics.median(self.latencies_s) if self.latencies_s else None

    def reject(self, n: int, reason: str) -> None:
        self.rejected += n
        if len(self.reasons) < _REASONS_KEPT:
            self.reasons.append(reason)

    def line(self) -> str:
        p50 = self.ack_p50_s
        text = (f"sent {self.sent} obs in {self.frames} frames ({self.transport}, {self.fmt}): "
                f"accepted {self.accepted}, duplicates {self.duplicates}, "
                f"rejected {self.rejected}")
        if self.reasons:
            text += " (" + "; ".join(self.reasons[:3]) + ")"
        if self.unacked:
            text += f", unacked {self.unacked}"
        text += f"; ack p50 {p50 * 1000:.1f} ms" if p50 is not None else "; no acks"
        text += (f"; link: lost {self.lost}, duplicated {self.duplicated}, "
                 f"reordered {self.reordered}")
        if self.clearances is not None:
            text += "; " + self.clearances.line()
        if self.errors:
            text += "; stopped: " + "; ".join(self.errors)
        return text


# Formats


def icao_of(uav: str) -> str:
    """The 24-bit address (6 hex digits) an aircraft uses in SBS: its own for "ICAO-xxxxxx",
    else one derived from its id."""
    if uav.startswith("ICAO-") and len(uav) == 11 and set(uav[5:].upper()) <= _HEX:
        return uav[5:].upper()
    return hashlib.blake2b(uav.encode(), digest_size=3).hexdigest().upper()


def _mac_of(uav: str) -> str:
    """A fake, locally administered BLE MAC address for the UAV's broadcasts."""
    raw = bytearray(hashlib.blake2b(uav.encode(), digest_size=6).digest())
    raw[0] = (raw[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in raw)


def _odid_pack(state: State) -> bytes:
    crewed = state.get("kind") == "crewed"
    basic = BasicId(id_type="caa_registration",
                    ua_type="aeroplane" if crewed else "helicopter_or_multirotor",
                    uas_id=state["uav"])
    location = Location(
        status=state.get("status", "airborne"), height_type="agl",
        track_deg=state["track_deg"] % 360.0, speed_mps=state["speed_mps"],
        vspeed_mps=state["vspeed_mps"], lat=state["lat"], lon=state["lon"],
        geodetic_alt_m=state["alt_m"], height_m=state.get("agl_m"),
        horiz_accuracy=10, vert_accuracy=4, speed_accuracy=3,
        timestamp_s_past_hour=round(state["t"] % 3600.0, 1), timestamp_accuracy_s=0.1,
    )
    return encode(MessagePack(messages=(basic, location)))


def _sbs_lines(state: State) -> str:
    when = datetime.fromtimestamp(state["t"], UTC)
    day, clock = when.strftime("%Y/%m/%d"), when.strftime("%H:%M:%S.%f")[:-3]
    head = ["MSG", "", "1", "1", icao_of(state["uav"]), "1", day, clock, day, clock, ""]
    velocity = head.copy()
    velocity[1] = "4"
    velocity += ["", f"{state['speed_mps'] / KT_MPS:.1f}", f"{state['track_deg']:.1f}", "", "",
                 f"{state['vspeed_mps'] / FPM_MPS:.0f}", "", "", "", "", ""]
    position = head.copy()
    position[1] = "3"
    on_ground = "-1" if state.get("status") == "ground" else "0"
    position += [f"{state['alt_m'] / FT_M:.0f}", "", "", f"{state['lat']:.5f}",
                 f"{state['lon']:.5f}", "", "", "0", "0", "0", on_ground]
    return ",".join(velocity) + "\r\n" + ",".join(position) + "\r\n"


def wire_id(state: State, fmt: str) -> str:
    """The uav id the server will store for this state in this format."""
    return "ICAO-" + icao_of(state["uav"]) if fmt == "sbs" else str(state["uav"])


def encode_frame(fmt: str, states: list[State], now: float, *,
                 array_form: bool = False) -> dict[str, Any]:
    """A data frame's payload (without seq) carrying `states` in `fmt`."""
    if fmt == "native":
        if array_form:
            rows = [[s.get(k) for k in ARRAY_KEYS] for s in states]
            return {"obs": [row[:-1] if row[-1] is None else row for row in rows]}
        return {"obs": [{k: s[k] for k in OBS_KEYS if k in s} for s in states]}
    if fmt == "f3411":
        return {"odid": [{"t": now, "msg": _odid_pack(s), "src": _mac_of(s["uav"])}
                         for s in states]}
    if fmt == "sbs":
        return {"sbs": "".join(_sbs_lines(s) for s in states)}
    raise ConfigError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")


# Transports


class _Sender:
    """A transport: `send` one frame's payload (waiting while the window is full), `close`
    after waiting for the answers still owed."""

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    async def open(self) -> None:
        raise NotImplementedError

    async def send(self, payload: dict[str, Any], n_obs: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _StreamSender(_Sender):
    """Windowed frames with acks in seq order (gateway stream and WebSocket)."""

    def __init__(self, summary: Summary, window: int) -> None:
        super().__init__(summary)
        self.window = window
        self.seq = 0
        self._inflight: deque[tuple[int, float, int]] = deque()  # seq, sent at, observations
        self._changed = asyncio.Event()
        self._failed: str | None = None
        self._reader: asyncio.Task[None] | None = None

    async def _write(self, payload: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _read_frames(self) -> None:
        """Read answers until the peer closes; call `_answer` for each."""
        raise NotImplementedError

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def _start_reader(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="lowalt-sim-acks")

    async def _read_loop(self) -> None:
        try:
            await self._read_frames()
            self._failed = self._failed or "the server closed the connection"
        except (OSError, EOFError, aiohttp.ClientError) as exc:
            self._failed = f"connection lost: {exc}"
        finally:
            self._changed.set()

    def _answer(self, frame: dict[str, Any]) -> None:
        if "ack" not in frame and "error" not in frame:
            return  # pushed frames (clearances) are not answers
        if not self._inflight:
            self.summary.reject(0, f"unexpected answer {frame!r:.80}")
            return
        _, sent_at, n_obs = self._inflight.popleft()
        self.summary.latencies_s.append(time.monotonic() - sent_at)
        if "ack" in frame:
            self.summary.accepted += int(frame.get("accepted", 0))
            self.summary.duplicates += int(frame.get("duplicates", 0))
            rejected = frame.get("rejected") or []
            for _, reason in rejected:
                self.summary.reject(1, str(reason))
        else:
            self.summary.reject(n_obs, f"frame refused: {frame['error']}")
        self._changed.set()

    async def _wait(self, done: Callable[[], bool]) -> None:
        while not done():
            if self._failed is not None:
                raise ConnectionError(self._failed)
            self._changed.clear()
            await self._changed.wait()

    async def send(self, payload: dict[str, Any], n_obs: int) -> None:
        await self._wait(lambda: len(self._inflight) < self.window)
        self.seq += 1
        self._inflight.append((self.seq, time.monotonic(), n_obs))
        await self._write({"seq": self.seq, **payload})
        self.summary.frames += 1
        self.summary.sent += n_obs

    async def close(self) -> None:
        try:
            if self._failed is None:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(self._wait(lambda: not self._inflight), ACK_TIMEOUT_S)
        finally:
            self.summary.unacked += sum(n for _, _, n in self._inflight)
            self._inflight.clear()
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            await self._shutdown()


class GatewaySender(_StreamSender):
    def __init__(self, summary: Summary, address: str, token: str, *, name: str = "lowalt-sim",
                 window: int = 32) -> None:
        super().__init__(summary, window)
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.token, self.name = token, name
        self.client: GatewayClient | None = None

    async def open(self) -> None:
        self.client = await GatewayClient.connect(self.host, self.port, self.token, self.name)
        self._start_reader()

    async def _write(self, payload: dict[str, Any]) -> None:
        assert self.client is not None
        self.client.send(payload)
        await self.client.drain()

    async def _read_frames(self) -> None:
        assert self.client is not None
        while True:
            self._answer(await self.client.recv_ack())

    async def _shutdown(self) -> None:
        if self.client is not None:
            await self.client.close()


class WebSocketSender(_StreamSender):
    def __init__(self, summary: Summary, url: str, token: str, *, window: int = 32) -> None:
        super().__init__(summary, window)
        self.url, self.token = url, token
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()
        try:
            self.ws = await self.session.ws_connect(
                self.url, headers={"Authorization": f"Bearer {self.token}"})
        except aiohttp.WSServerHandshakeError as exc:
            await self.session.close()
            raise ConnectionError(f"websocket refused: {exc.status} {exc.message}") from None
        except BaseException:
            await self.session.close()
            raise
        self._start_reader()

    async def _write(self, payload: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(msgpack.packb(payload, use_bin_type=True))

    async def _read_frames(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self._answer(msgpack.unpackb(msg.data, raw=False, strict_map_key=False))
            elif msg.type != aiohttp.WSMsgType.TEXT:
                break

    async def _shutdown(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()


class HttpSender(_Sender):
    """POST /v1/telemetry, one request at a time; 503 is retried after its Retry-After."""

    RETRIES = 5

    def __init__(self, summary: Summary, url: str, token: str) -> None:
        super().__init__(summary)
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self.session = aiohttp.ClientSession()

    async def send(self, payload: dict[str, Any], n_obs: int) -> None:
        assert self.session is not None
        body = msgpack.packb(payload["obs"], use_bin_type=True)
        self.summary.frames += 1
        self.summary.sent += n_obs
        for _ in range(self.RETRIES):
            try:
                retry_after_s = await self._post(body, n_obs)
            except aiohttp.ClientError as exc:
                raise ConnectionError(f"HTTP request failed: {exc}") from None
            if retry_after_s is None:
                return
            await asyncio.sleep(min(retry_after_s, 5.0))
        self.summary.reject(n_obs, f"HTTP 503 {self.RETRIES} times: storage unavailable")

    async def _post(self, body: bytes, n_obs: int) -> float | None:
        """One POST, its answer counted; the Retry-After to wait when it was a 503."""
        assert self.session is not None
        started = time.monotonic()
        async with self.session.post(self.url, data=body, headers=self.headers) as r:
            if r.status == 200:
                answer = await r.json()
                self.summary.latencies_s.append(time.monotonic() - started)
                self.summary.accepted += answer["accepted"]
                self.summary.duplicates += answer["duplicates"]
                for item in answer["rejected"]:
                    self.summary.reject(1, str(item["error"]))
                return None
            text = (await r.text())[:200]
            if r.status in (401, 403, 404):
                raise ConnectionError(f"HTTP {r.status} from {self.url}: {text}")
            if r.status != 503:
                self.summary.reject(n_obs, f"HTTP {r.status}: {text}")
                return None
            try:
                return float(r.headers.get("Retry-After", "1"))
            except ValueError:
                return 1.0

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def open_sender(target: Target, token: str, fmt: str, summary: Summary) -> _Sender:
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r}: choose from {', '.join(FORMATS)}")
    if target.transport == "gateway":
        return GatewaySender(summary, target.address, token)
    if target.transport == "ws":
        return WebSocketSender(summary, target.address, token)
    if fmt != "native":
        raise ConfigError(f"HTTP carries native observations only, not {fmt}")
    return HttpSender(summary, target.address, token)


# The run


async def _sleep_until(t: float, stop: asyncio.Event | None) -> None:
    delay = t - time.time()
    if delay <= 0.0:
        return
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def run_simulation(
    target: Target, token: str, fmt: str, scenario: Scenario, link: SatelliteLink,
    duration_s: float | None, rate_hz: float, stop_event: asyncio.Event | None = None, *,
    array_form: bool = False, progress: Callable[[Summary], None] | None = None,
    progress_every_s: float = 10.0, clearances: ClearanceAgent | None = None,
) -> Summary:
    """Send the scenario's states every 1/rate_hz s (on the grid t0 + k / rate_hz, wall clock)
    through `link` to `target` for `duration_s` (None: until `stop_event`), then deliver what
    the link still holds, wait for the acks and return what happened. A connection lost on the
    way ends the run early with the reason in `Summary.errors`. With `clearances` (an agent for
    this scenario) the logistics flights ask their clearances meanwhile."""
    if not (math.isfinite(rate_hz) and rate_hz > 0.0):
        raise ConfigError("rate_hz must be a positive number")
    summary = Summary(target.transport, fmt)
    if clearances is not None:
        summary.clearances = clearances.stats
    sender = open_sender(target, token, fmt, summary)
    await sender.open()
    asking = None if clearances is None else asyncio.create_task(
        clearances.run(), name="lowalt-sim-clearances")
    period_s = 1.0 / rate_hz
    start = time.time()
    end = math.inf if duration_s is None else start + duration_s
    k = max(0, math.ceil((start - scenario.t0) * rate_hz))
    next_progress = start + progress_every_s
    released_t = -math.inf

    async def send(states: list[State]) -> None:
        for i in range(0, len(states), FRAME_MAX_OBS):
            chunk = states[i:i + FRAME_MAX_OBS]
            summary.uavs.update(wire_id(s, fmt) for s in chunk)
            payload = encode_frame(fmt, chunk, time.time(), array_form=array_form)
            await sender.send(payload, len(chunk))

    try:
        while stop_event is None or not stop_event.is_set():
            tick_t = scenario.t0 + k * period_s
            due_t = link.next_due()
            wake_t = tick_t
            if due_t is not None:
                wake_t = min(tick_t, max(due_t, released_t + RELEASE_EVERY_S))
            if wake_t >= end:
                break
            await _sleep_until(wake_t, stop_event)
            if stop_event is not None and stop_event.is_set():
                break
            now = time.time()
            if now >= tick_t:
                states = scenario.states_at(tick_t)
                summary.generated += len(states)
                for state in states:
                    link.deliver(state, now)
                k += 1
            released_t = now
            await send(link.due(now))
            if progress is not None and now >= next_progress:
                next_progress = now + progress_every_s
                _copy_link(summary, link)
                progress(summary)
        await send(link.flush())
    except ConnectionError as exc:
        summary.errors.append(str(exc))
    finally:
        if asking is not None:
            asking.cancel()
            for result in await asyncio.gather(asking, return_exceptions=True):
                if isinstance(result, Exception):
                    summary.errors.append(f"clearances: {result}")
        await sender.close()
        _copy_link(summary, link)
    return summary


def _copy_link(summary: Summary, link: SatelliteLink) -> None:
    summary.lost = link.stats.lost
    summary.duplicated = link.stats.duplicated
    summary.reordered = link.stats.reordered
