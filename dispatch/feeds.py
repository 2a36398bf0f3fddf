"""The alert feeds (API.md section 4): a paged list, Server-Sent Events and a WebSocket.

Every feed is `AlertFeed.follow`: subscribe to the live broadcast FIRST, then replay the backlog
from storage page by page, then serve live events, dropping those with seq <= the last one sent.
Subscribing before reading means nothing committed during the replay can fall between the two;
the seq filter means nothing is sent twice. Each client's live buffer holds at most
`feed_queue_events` events: while replaying, an overflow just means "replay further from storage";
once live, a client that overflows it is disconnected with a reason and resumes with
`Last-Event-ID` (or `since`), so a slow client costs bounded memory.

Operators see the events of the UAVs registered to their operator (as `uav` or `other_uav`);
regulators and admins see everything; gateways get 403. Who may open which route is decided by the
route table (lowalt/access.py); which events a reader sees, by `Registry.may_read` here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncGenerator

from aiohttp import WSCloseCode, WSMsgType, web

from dispatch.alerts import ALERT_TYPES, EVENT_STATES, AlertEvent, AlertManager, Broadcaster
from dispatch.sse import open_event_stream, say_disconnect
from dispatch.store import AlertStore, EventQuery
from lowalt.api import BadRequest, parse_bbox
from lowalt.auth import PRINCIPAL, Registry
from lowalt.metrics import Metrics
from lowalt.models import Principal

log = logging.getLogger("lowalt.feeds")

LIST_LIMIT_DEFAULT = 1000
LIST_LIMIT_MAX = 10_000
REPLAY_PAGE = 1000
WS_SINCE_WAIT_S = 0.5  # how long a WebSocket client has to send {"since": n} first


class SlowConsumer(Exception):
    """A live client fell more than its buffer behind; it should resume after `last`."""

    def __init__(self, last: int) -> None:
        super().__init__(f"slow consumer: resume after seq {last}")
        self.last = last


class AlertFeed:
    """What the feeds read: stored events, the live broadcast, and who may see what."""

    def __init__(
        self,
        store: AlertStore,
        broadcaster: Broadcaster,
        manager: AlertManager,
        registry: Registry,
        *,
        max_clients: int,
        queue_events: int,
        heartbeat_s: float,
        write_timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.store, self.broadcaster, self.manager = store, broadcaster, manager
        self.registry = registry
        self.max_clients, self.queue_events = max_clients, queue_events
        self.heartbeat_s, self.write_timeout_s = heartbeat_s, write_timeout_s
        self.metrics = metrics
        self.clients = 0
        metrics.gauge("lowalt_alert_feed_clients", "Open SSE and WebSocket alert feed clients.",
                      lambda: float(self.clients))
        metrics.counter("lowalt_alert_feed_slow_total", "Feed clients dropped for falling behind.")

    def visible_uavs(self, principal: Principal) -> frozenset[str] | None:
        """The UAVs whose events principal may read; None = all."""
        if principal.reads_all:
            return None
        may_read = self.registry.may_read
        return frozenset(uav for uav in self.registry.by_uav if may_read(principal, uav))

    def may_see(self, principal: Principal, e: AlertEvent) -> bool:
        may_read = self.registry.may_read
        return may_read(principal, e.uav) or (
            e.other_uav is not None and may_read(principal, e.other_uav)
        )

    async def follow(
        self, principal: Principal, query: EventQuery, since: int
    ) -> AsyncGenerator[list[AlertEvent], None]:
        """Every event after since that principal may see and query selects, once, in seq order.

        Yields lists of events; an empty list means "nothing for a while" (time for a heartbeat).
        Returns when the broadcaster closes (shutdown); raises SlowConsumer on a live overflow.
        """
        broadcaster = self.broadcaster
        sub = broadcaster.subscribe(self.queue_events)
        last = since
        live = dataclasses.replace(query, since=0, visible_uavs=None)
        try:
            while True:
                head = self.manager.committed_seq
                page = await self.store.events(dataclasses.replace(
                    query, since=last, limit=REPLAY_PAGE, visible_uavs=self.visible_uavs(principal),
                ))
                if page:
                    last = page[-1].seq
                    yield page
                if len(page) == REPLAY_PAGE:
                    continue
                last = max(last, head)  # nothing else up to head matches
                if not sub.overflowed:
                    break
                broadcaster.unsubscribe(sub)  # it overflowed during the replay: replay on
                sub = broadcaster.subscribe(self.queue_events)
            while True:
                batch = await sub.get(self.heartbeat_s)
                if sub.overflowed:
                    self.metrics.inc("lowalt_alert_feed_slow_total")
                    raise SlowConsumer(last)
                if not batch and sub.closed:
                    return
                events = [e for e in batch
                          if e.seq > last and live.matches(e) and self.may_see(principal, e)]
                if batch:
                    last = max(last, batch[-1].seq)
                yield events
        finally:
            broadcaster.unsubscribe(sub)

    def close(self) -> None:
        """Shutdown: every follower returns, so its connection ends."""
        self.broadcaster.close()


FEED = web.AppKey("alert_feed", AlertFeed)


def _int_arg(raw: str, name: str, lo: int, hi: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: expected an integer") from None
    if value < lo or (hi is not None and value > hi):
        raise BadRequest(f"{name}: must be {lo}..{hi}" if hi is not None
                         else f"{name}: must be at least {lo}")
    return value


def _list_arg(request: web.Request, name: str) -> frozenset[str] | None:
    raw = [v for value in request.query.getall(name, []) for v in value.split(",") if v]
    return frozenset(raw) if raw else None


def parse_filters(request: web.Request) -> EventQuery:
    """since, limit, type, state, uav, bbox from the query string (400 on a bad one)."""
    q = request.query
    types, states = _list_arg(request, "type"), _list_arg(request, "state")
    if types is not None and not types <= ALERT_TYPES:
        raise BadRequest(f"type: unknown {', '.join(sorted(types - ALERT_TYPES))}")
    if states is not None and not states <= EVENT_STATES:
        raise BadRequest("state: expected open, updated or resolved")
    return EventQuery(
        since=_int_arg(q["since"], "since", 0) if "since" in q else 0,
        limit=(_int_arg(q["limit"], "limit", 1, LIST_LIMIT_MAX) if "limit" in q
               else LIST_LIMIT_DEFAULT),
        types=types, states=states, uavs=_list_arg(request, "uav"),
        bbox=parse_bbox(q["bbox"]) if "bbox" in q else None,
    )


def resume_point(request: web.Request) -> int | None:
    """Last-Event-ID (a reconnecting EventSource sends it) wins over ?since=; None = from now."""
    raw = request.headers.get("Last-Event-ID")
    if raw is not None and raw.strip():
        return _int_arg(raw.strip(), "Last-Event-ID", 0)
    if "since" in request.query:
        return _int_arg(request.query["since"], "since", 0)
    return None


def _busy() -> web.Response:
    return web.json_response({"error": "too many alert feed clients"}, status=503,
                             headers={"Retry-After": "5"})


async def list_alerts(request: web.Request) -> web.Response:
    """GET /v1/alerts -> {"events": [...], "next": seq}; pass `next` as `since` to go on."""
    principal = request[PRINCIPAL]
    feed = request.app[FEED]
    query = dataclasses.replace(parse_filters(request),
                                visible_uavs=feed.visible_uavs(principal))
    head = feed.manager.committed_seq
    events = await feed.store.events(query)
    next_seq = events[-1].seq if events else query.since
    if len(events) < query.limit:
        next_seq = max(next_seq, head)  # nothing else up to head matches: skip past it
    body = '{"events":[' + ",".join(e.body for e in events) + '],"next":' + str(next_seq) + "}"
    return web.Response(text=body, content_type="application/json")


async def open_alerts(request: web.Request) -> web.Response:
    """GET /v1/alerts/open: the alerts open now, most severe first."""
    principal = request[PRINCIPAL]
    feed = request.app[FEED]
    visible = feed.visible_uavs(principal)
    alerts = [a for a in feed.manager.open_alerts()
              if visible is None or a["uav"] in visible or a["other_uav"] in visible]
    return web.json_response({"alerts": alerts})


def sse_frame(e: AlertEvent) -> bytes:
    return f"id: {e.seq}\nevent: {e.type}\ndata: {e.body}\n\n".encode()


async def alert_stream(request: web.Request) -> web.StreamResponse:
    """GET /v1/alerts/stream: Server-Sent Events, resumable with Last-Event-ID."""
    principal = request[PRINCIPAL]
    feed = request.app[FEED]
    query = parse_filters(request)
    since = resume_point(request)
    if feed.clients >= feed.max_clients:
        return _busy()
    if since is None:
        since = feed.manager.committed_seq
    feed.clients += 1
    resp = web.StreamResponse()
    try:
        resp, write = await open_event_stream(request, feed.write_timeout_s)
        last_write = time.monotonic()
        async with contextlib.aclosing(feed.follow(principal, query, since)) as batches:
            try:
                async for events in batches:
                    if events:
                        await write(b"".join(sse_frame(e) for e in events))
                    elif time.monotonic() - last_write < feed.heartbeat_s:
                        continue
                    else:
                        await write(b": keepalive\n\n")
                    last_write = time.monotonic()
            except SlowConsumer as exc:
                await say_disconnect(resp, {"reason": str(exc), "last_event_id": exc.last})
    except (ConnectionError, TimeoutError) as exc:  # the client went away or stopped reading
        log.debug("alert stream closed: %r", exc)
    finally:
        feed.clients -= 1
    return resp


async def alert_ws(request: web.Request) -> web.StreamResponse:
    """GET /v1/alerts/ws: the same events as JSON text messages; {"since": n} may come first."""
    principal = request[PRINCIPAL]
    feed = request.app[FEED]
    query = parse_filters(request)
    since = resume_point(request)
    if feed.clients >= feed.max_clients:
        return _busy()
    feed.clients += 1
    ws = web.WebSocketResponse(heartbeat=feed.heartbeat_s)
    try:
        await ws.prepare(request)
        if since is None:
            since = feed.manager.committed_seq  # events raised while we wait are replayed
            asked = await _first_since(ws)
            if asked is not None:
                since = asked
        if ws.closed:
            return ws
        pump = asyncio.create_task(_ws_pump(ws, feed, principal, query, since))
        reader = asyncio.create_task(_ws_drain(ws))
        done, _ = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in (pump, reader):
            task.cancel()
        results = await asyncio.gather(pump, reader, return_exceptions=True)
        if isinstance(results[0], SlowConsumer):
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER,
                           message=f"slow consumer; resume with since={results[0].last}".encode())
        elif pump in done and not isinstance(results[0], BaseException):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        else:
            await ws.close()
    except (ConnectionError, TimeoutError) as exc:
        log.debug("alert websocket closed: %r", exc)
    finally:
        feed.clients -= 1
    return ws


async def _first_since(ws: web.WebSocketResponse) -> int | None:
    try:
        msg = await ws.receive(timeout=WS_SINCE_WAIT_S)
    except TimeoutError:
        return None
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        body = json.loads(msg.data)
    except ValueError:
        body = None
    since = body.get("since") if isinstance(body, dict) else None
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        await ws.send_str(json.dumps({"error": 'expected {"since": <seq>} as the first message'}))
        return None
    return since


async def _ws_pump(
    ws: web.WebSocketResponse, feed: AlertFeed, principal: Principal, query: EventQuery,
    since: int,
) -> None:
    async with contextlib.aclosing(feed.follow(principal, query, since)) as batches:
        async for events in batches:
            for e in events:
                await asyncio.wait_for(ws.send_str(e.body), feed.write_timeout_s)


async def _ws_drain(ws: web.WebSocketResponse) -> None:
    """Read (and ignore) client messages, so pings, pongs and the close are handled."""
    async for _ in ws:
        pass


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/alerts", list_alerts)
    app.router.add_get("/v1/alerts/open", open_alerts)
    app.router.add_get("/v1/alerts/stream", alert_stream)
    app.router.add_get("/v1/alerts/ws", alert_ws)
