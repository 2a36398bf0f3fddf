"""The live traffic feed (API.md section 7): the fused state of every aircraft in view, at most
`rate_hz` updates per aircraft per second, over Server-Sent Events and a WebSocket.

Clients with the same view (bbox, rate_hz, and who may see what: everything, or one operator's
UAVs) share a `ViewGroup`. The rate limit is per aircraft, not per view: one task flushes each
group every `TICK_S` (or 1/rate_hz s, if shorter), and a flush carries each aircraft that has
news (entered the view or changed: its state; left it or silent for `gone_after_s`:
`{"gone": uav}`) and is due. Each aircraft's items keep to a grid of one period (1/rate_hz s):
its next item is due one period after the grid point of its last, and an item sent more than
`slack` (a tick, at most half a period) past its grid point moves the grid to `slack` before its
own time. So an aircraft reporting at rate_hz goes out within about a tick of its report being
fused, instead of drifting through a whole period of waiting (a strict "one period since the
last item" rule adds each flush's lateness to the wait, every period); its items are at least
period - slack apart, and no more than rate_hz a second on average. The diff is found with numpy
over the fused picture's column arrays, encoded once as one JSON array and queued, the same
bytes, for every client of the group. An aircraft's state JSON is encoded once per fused update
and cached for every group. A client that joins (or changes view) gets the whole view at its
group's next flush instead of the diff, plus a `gone` for what it saw in its old view and not
the new; the group then holds every aircraft of that snapshot back for a whole period, so the
new client gets none of them again sooner.

Each client has a bounded buffer (`buffer_bytes`). A client that overflows it is dropped with a
reason (SSE `event: disconnect`, WebSocket close 1013); it reconnects and starts from a new
snapshot. Operators see their own UAVs, regulators and admins everything, gateways get 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from dispatch.sse import open_event_stream, say_disconnect
from lowalt.api import BadRequest, parse_bbox
from lowalt.auth import PRINCIPAL, require_role
from lowalt.fusion import F64, I64, FusedPicture, Obj
from lowalt.metrics import Metrics
from lowalt.models import Principal

log = logging.getLogger("lowalt.traffic")

MAX_RATE_HZ = 10.0
MIN_RATE_HZ = 0.1
DEFAULT_RATE_HZ = 1.0
IDLE_TICK_S = 0.1  # the flusher looks for new groups at least this often
TICK_S = 0.1  # a view's flushes; an aircraft's news waits about this long past its due time
Bbox = tuple[float, float, float, float]
ViewKey = tuple[Bbox, float, str | None]


@dataclass(eq=False)
class Flush:
    """One message for the clients of a group: a JSON array of updates and gones."""

    text: str
    _sse: bytes | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"event: traffic\ndata: " + self.text.encode() + b"\n\n"
        return self._sse


class TrafficClient:
    """One connection's bounded queue of flushes, and its place among the groups."""

    def __init__(self, principal: Principal, limit_bytes: int) -> None:
        self.principal = principal
        self.limit_bytes = limit_bytes
        self.group: ViewGroup | None = None
        self.known: set[str] | None = None  # what it saw in its previous view, until resynced
        self.not_before = 0.0  # monotonic: its next message not before (a view change)
        self.last_flush = -math.inf
        self.dropped: str | None = None
        self.closed = False
        self._buf: deque[Flush] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()

    def push(self, flush: Flush) -> None:
        if self.dropped is not None or self.closed:
            return
        self._bytes += len(flush.text)
        if self._bytes > self.limit_bytes:
            self.dropped = (f"slow consumer: more than {self.limit_bytes} bytes of traffic "
                            "waiting; reconnect for a fresh snapshot")
            self._buf.clear()
            self._bytes = 0
        else:
            self._buf.append(flush)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self, timeout_s: float) -> list[Flush]:
        """What is queued, waiting up to timeout_s for something; [] on timeout."""
        if not self._buf and self.dropped is None and not self.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        flushes = list(self._buf)
        self._buf.clear()
        self._bytes = 0
        return flushes


@dataclass(eq=False)
class ViewGroup:
    """The clients that share one view, and what they have been sent, by picture slot."""

    key: ViewKey
    next_flush: float  # monotonic
    clients: set[TrafficClient] = field(default_factory=set)
    joining: list[TrafficClient] = field(default_factory=list)
    sent_version: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sent_epoch: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sent_id: Obj = field(default_factory=lambda: np.zeros(0, dtype=object))
    due_at: F64 = field(default_factory=lambda: np.zeros(0))  # monotonic, its next item

    @property
    def period_s(self) -> float:
        return 1.0 / self.key[1]

    @property
    def tick_s(self) -> float:
        return min(TICK_S, self.period_s)

    @property
    def slack_s(self) -> float:
        """How late past its grid point an item may go and keep the grid."""
        return min(TICK_S, self.period_s / 2)

    def sent(self, idx: np.ndarray[Any, np.dtype[np.intp]], now: float) -> None:
        """Items of slots idx went out at now: each one's next is due a period on its grid."""
        self.due_at[idx] = np.maximum(self.due_at[idx], now - self.slack_s) + self.period_s

    def fit(self, n: int) -> None:
        extra = n - len(self.sent_version)
        if extra > 0:
            self.sent_version = np.concatenate(
                [self.sent_version, np.full(extra, -1, dtype=np.int64)])
            self.sent_epoch = np.concatenate([self.sent_epoch, np.zeros(extra, dtype=np.int64)])
            self.sent_id = np.concatenate([self.sent_id, np.full(extra, None, dtype=object)])
            self.due_at = np.concatenate([self.due_at, np.full(extra, -np.inf)])

    def known_ids(self) -> set[str]:
        return set(self.sent_id[self.sent_version >= 0].tolist())


class TrafficFeed:
    def __init__(
        self,
        picture: FusedPicture,
        *,
        gone_after_s: float,
        max_clients: int,
        buffer_bytes: int,
        heartbeat_s: float,
        write_timeout_s: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.picture = picture
        self.gone_after_s = gone_after_s
        self.max_clients, self.buffer_bytes = max_clients, buffer_bytes
        self.heartbeat_s, self.write_timeout_s = heartbeat_s, write_timeout_s
        self.metrics = metrics
        self.clock = clock
        self.groups: dict[ViewKey, ViewGroup] = {}
        self.clients = 0
        self.closed = False
        self._bodies: Obj = np.zeros(0, dtype=object)
        self._body_version: I64 = np.zeros(0, dtype=np.int64)
        self._wake = asyncio.Event()
        metrics.gauge("lowalt_traffic_clients", "Open SSE and WebSocket traffic feed clients.",
                      lambda: float(self.clients))
        metrics.gauge("lowalt_traffic_views", "Distinct traffic feed views (shared flushes).",
                      lambda: float(len(self.groups)))
        metrics.counter("lowalt_traffic_slow_total", "Traffic clients dropped for falling behind.")
        metrics.counter("lowalt_traffic_encoded_total", "Aircraft states encoded for the feed.")
        metrics.histogram("lowalt_traffic_flush_seconds", "Time to flush every due view once.")

    # -- clients ----------------------------------------------------------------------------

    def connect(self, principal: Principal, bbox: Bbox, rate_hz: float) -> TrafficClient | None:
        """A new client in the view; None when max_clients are connected already."""
        if self.clients >= self.max_clients or self.closed:
            return None
        self.clients += 1
        client = TrafficClient(principal, self.buffer_bytes)
        self._join(client, bbox, rate_hz)
        return client

    def change_view(self, client: TrafficClient, bbox: Bbox, rate_hz: float) -> None:
        old = client.group
        if old is not None and old.key == self._key(client.principal, bbox, rate_hz):
            return
        if old is not None and client not in old.joining:
            client.known = old.known_ids()
        self._leave(client)
        client.not_before = client.last_flush + 1.0 / rate_hz
        self._join(client, bbox, rate_hz)

    def disconnect(self, client: TrafficClient) -> None:
        self._leave(client)
        client.close()
        self.clients -= 1

    def _key(self, principal: Principal, bbox: Bbox, rate_hz: float) -> ViewKey:
        return (bbox, rate_hz, None if principal.reads_all else (principal.operator or ""))

    def _join(self, client: TrafficClient, bbox: Bbox, rate_hz: float) -> None:
        key = self._key(client.principal, bbox, rate_hz)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = ViewGroup(key, time.monotonic())
            self._wake.set()
        group.joining.append(client)
        client.group = group

    def _leave(self, client: TrafficClient) -> None:
        group = client.group
        if group is None:
            return
        group.clients.discard(client)
        if client in group.joining:
            group.joining.remove(client)
        if not group.clients and not group.joining:
            del self.groups[group.key]
        client.group = None

    def close(self) -> None:
        """Shutdown: every client's stream ends."""
        self.closed = True
        for group in list(self.groups.values()):
            for client in [*group.clients, *group.joining]:
                client.close()
        self._wake.set()

    # -- flushing ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush every group when due; runs until cancelled."""
        while not self.closed:
            try:
                self.flush_due(time.monotonic())
            except Exception:
                log.exception("traffic flush failed")
            now = time.monotonic()
            wait = min([IDLE_TICK_S, *(g.next_flush - now for g in self.groups.values())])
            self._wake.clear()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)

    def flush_due(self, now: float) -> int:
        """Flush the groups that are due at monotonic time now; return how many."""
        due = [g for g in self.groups.values() if g.next_flush <= now]
        if not due:
            return 0
        started = time.perf_counter()
        self.picture.sync()
        self.picture.refresh()
        wall = self.clock()
        for group in due:
            self._flush(group, now, wall)
            group.next_flush = now + group.tick_s
        self.metrics.observe("lowalt_traffic_flush_seconds", time.perf_counter() - started)
        return len(due)

    def in_view(self, key: ViewKey, wall: float) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which picture slots the view shows now."""
        p = self.picture
        n = p.slots_used
        (min_lon, min_lat, max_lon, max_lat), _, operator = key
        lat, lon = p.lat[:n], p.lon[:n]
        mask = (p.present[:n] & (p.heard_t[:n] >= wall - self.gone_after_s)
                & (lon >= min_lon) & (lon <= max_lon) & (lat >= min_lat) & (lat <= max_lat))
        if operator is not None:
            code = p.operator_code(operator) if operator else None
            mask &= p.owner[:n] == (-2 if code is None else code)
        return mask

    def _flush(self, group: ViewGroup, now: float, wall: float) -> None:
        p = self.picture
        n = p.slots_used
        group.fit(n)
        view = self.in_view(group.key, wall)
        version, epoch = p.version[:n], p.epoch[:n]
        sent_version, sent_epoch = group.sent_version[:n], group.sent_epoch[:n]
        had = sent_version >= 0
        replaced = had & (sent_epoch != epoch)
        due = group.due_at[:n] <= now
        gone_idx = np.flatnonzero(had & (~view | replaced) & due)
        update_idx = np.flatnonzero(view & ((sent_version != version) | replaced) & due)
        gone = group.sent_id[gone_idx].tolist()
        group.sent_version[gone_idx] = -1
        group.sent_id[gone_idx] = None
        group.sent(gone_idx, now)
        group.sent_version[update_idx] = version[update_idx]
        group.sent_epoch[update_idx] = epoch[update_idx]
        group.sent_id[update_idx] = p.ids[update_idx]
        group.sent(update_idx, now)
        if group.clients and (gone or len(update_idx)):
            diff = Flush(_array([_gone(uav) for uav in gone] + self._bodies_of(update_idx)))
            for client in group.clients:
                client.push(diff)
                client.last_flush = now
        ready = [c for c in group.joining if c.not_before <= now]
        if ready:
            snapshot_idx = np.flatnonzero(view)
            # Held back for the group: the next item of these comes a period after the snapshot
            # (the others of the group get theirs later than they would, once per join).
            group.due_at[snapshot_idx] = now + group.period_s
            bodies = self._bodies_of(snapshot_idx)
            snapshot = Flush(_array(bodies))
            ids: set[str] | None = None
            for client in ready:
                group.joining.remove(client)
                group.clients.add(client)
                client.last_flush = now
                if not client.known:
                    client.push(snapshot)
                    continue
                if ids is None:
                    ids = set(p.ids[snapshot_idx].tolist())
                left = sorted(client.known - ids)
                client.known = None
                client.push(Flush(_array([_gone(uav) for uav in left] + bodies)))

    def _bodies_of(self, idx: np.ndarray[Any, np.dtype[np.intp]]) -> list[str]:
        """The state JSON of the aircraft in slots idx, encoding those changed since cached."""
        p = self.picture
        if len(self._bodies) < p.capacity:
            extra = p.capacity - len(self._bodies)
            self._bodies = np.concatenate([self._bodies, np.full(extra, None, dtype=object)])
            self._body_version = np.concatenate(
                [self._body_version, np.full(extra, -1, dtype=np.int64)])
        stale = idx[self._body_version[idx] != p.version[idx]]
        if len(stale):
            by_slot = p.by_slot
            for slot in stale.tolist():
                aircraft = by_slot[slot]
                if aircraft is not None:
                    self._bodies[slot] = _encode(aircraft.as_json())
            self._body_version[stale] = p.version[stale]
            self.metrics.inc("lowalt_traffic_encoded_total", len(stale))
        bodies: list[str] = self._bodies[idx].tolist()
        return bodies


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _gone(uav: str) -> str:
    return '{"gone":' + json.dumps(uav) + "}"


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


TRAFFIC = web.AppKey("traffic_feed", TrafficFeed)


# -- HTTP -----------------------------------------------------------------------------------


def parse_rate(raw: Any) -> float:
    """rate_hz: a number in [MIN_RATE_HZ, MAX_RATE_HZ]; BadRequest otherwise."""
    try:
        rate = float(raw)
    except (TypeError, ValueError):
        raise BadRequest("rate_hz: expected a number") from None
    if isinstance(raw, bool) or not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise BadRequest(f"rate_hz: must be {MIN_RATE_HZ:g}..{MAX_RATE_HZ:g}")
    return rate


def _view_of(request: web.Request) -> tuple[Bbox, float]:
    q = request.query
    rate = parse_rate(q["rate_hz"]) if "rate_hz" in q else DEFAULT_RATE_HZ
    return parse_bbox(q.get("bbox")), rate


def _reader(request: web.Request) -> Principal:
    principal = request[PRINCIPAL]
    require_role(principal, ("regulator", "operator"))
    return principal


def _busy() -> web.Response:
    return web.json_response({"error": "too many traffic feed clients"}, status=503,
                             headers={"Retry-After": "5"})


async def traffic_stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/traffic/stream?bbox=&rate_hz=: one `traffic` event (a JSON array) per flush."""
    principal = _reader(request)
    bbox, rate = _view_of(request)
    feed = request.app[TRAFFIC]
    client = feed.connect(principal, bbox, rate)
    if client is None:
        return _busy()
    resp = web.StreamResponse()
    try:
        resp, write = await open_event_stream(request, feed.write_timeout_s)
        last_write = time.monotonic()
        while True:
            flushes = await client.get(feed.heartbeat_s)
            if client.dropped is not None:
                feed.metrics.inc("lowalt_traffic_slow_total")
                await say_disconnect(resp, {"reason": client.dropped})
                break
            if flushes:
                await write(b"".join(f.sse for f in flushes))
            elif client.closed:
                break
            elif time.monotonic() - last_write >= feed.heartbeat_s:
                await write(b": keepalive\n\n")
            else:
                continue
            last_write = time.monotonic()
    except (ConnectionError, TimeoutError) as exc:  # the client went away or stopped reading
        log.debug("traffic stream closed: %r", exc)
    finally:
        feed.disconnect(client)
    return resp


async def traffic_ws(request: web.Request) -> web.StreamResponse:
    """GET /v1/traffic/ws?bbox=&rate_hz=: one text message (a JSON array) per flush; the client
    may send {"bbox": [minlon, minlat, maxlon, maxlat], "rate_hz": r} to change its view."""
    principal = _reader(request)
    bbox, rate = _view_of(request)
    feed = request.app[TRAFFIC]
    client = feed.connect(principal, bbox, rate)
    if client is None:
        return _busy()
    ws = web.WebSocketResponse(heartbeat=feed.heartbeat_s)
    try:
        await ws.prepare(request)
        pump = asyncio.create_task(_ws_pump(ws, feed, client))
        reader = asyncio.create_task(_ws_read(ws, feed, client))
        await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in (pump, reader):
            task.cancel()
        await asyncio.gather(pump, reader, return_exceptions=True)
        if client.dropped is not None:
            feed.metrics.inc("lowalt_traffic_slow_total")
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                           message=client.dropped[:120].encode())
        elif client.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        else:
            await ws.close()
    except (ConnectionError, TimeoutError) as exc:
        log.debug("traffic websocket closed: %r", exc)
    finally:
        feed.disconnect(client)
    return ws


async def _ws_pump(ws: web.WebSocketResponse, feed: TrafficFeed, client: TrafficClient) -> None:
    while client.dropped is None and not client.closed:
        for flush in await client.get(feed.heartbeat_s):
            if client.dropped is not None:
                return
            await asyncio.wait_for(ws.send_str(flush.text), feed.write_timeout_s)


async def _ws_read(ws: web.WebSocketResponse, feed: TrafficFeed, client: TrafficClient) -> None:
    """View changes from the client; errors go back through its queue (one writer)."""
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            bbox, rate = _view_change(msg.data, client)
        except BadRequest as exc:
            client.push(Flush(exc.text or '{"error":"bad view"}'))
            continue
        feed.change_view(client, bbox, rate)


def _view_change(text: str, client: TrafficClient) -> tuple[Bbox, float]:
    try:
        body = json.loads(text)
    except ValueError:
        raise BadRequest("expected JSON {\"bbox\": [...], \"rate_hz\": r}") from None
    if not isinstance(body, dict) or not {"bbox", "rate_hz"} & set(body):
        raise BadRequest("expected {\"bbox\": [minlon, minlat, maxlon, maxlat], \"rate_hz\": r}")
    group = client.group
    bbox, rate = group.key[:2] if group is not None else ((-180.0, -90.0, 180.0, 90.0), 1.0)
    if "bbox" in body:
        raw = body["bbox"]
        if not isinstance(raw, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in raw
        ):
            raise BadRequest("bbox: expected [minlon, minlat, maxlon, maxlat]")
        bbox = parse_bbox(",".join(repr(float(v)) for v in raw))
    if "rate_hz" in body:
        rate = parse_rate(body["rate_hz"])
    return bbox, rate


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/traffic/stream", traffic_stream)
    app.router.add_get("/v1/traffic/ws", traffic_ws)
