"""Webhooks: durable, ordered, signed delivery of alert events to subscribers' URLs.

The event log is the outbox: each subscription keeps `delivered_seq` and one task of its own that
POSTs `{"events": [...]}` batches (up to `webhook_batch_events`) of the matching events after it,
in seq order, signed with `X-Lowalt-Signature: sha256=<hex HMAC-SHA256(secret, body)>`. Only a 2xx
moves the cursor (at least once: a receiver dedupes by seq). A failure is retried with exponential
backoff and full jitter; once the oldest undelivered event is older than `webhook_max_age_s`, the
next failure puts the subscription in `dead_letter` (shown, with `last_error`, by
GET /v1/subscriptions) until POST /v1/subscriptions/{id}/resume. Each task has its own HTTP
session and per-request timeout, so a slow or dead endpoint delays nobody else. Cursor and retry
state are stored after every attempt, so deliveries resume after a restart; the store of a
delivered batch's cursor runs while the next batch is POSTed (a restart may send that one batch
again). A worker reads the outbox `PAGE_BATCHES` batches at a time and sends each event's stored
JSON text as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from dispatch.alerts import ALERT_TYPES, Broadcaster
from dispatch.store import (
    AlertStore,
    EventQuery,
    NameTaken,
    OutboxEvent,
    Subscription,
    SubscriptionSpec,
)
from lowalt.api import BadRequest
from lowalt.audit import audit
from lowalt.auth import PRINCIPAL
from lowalt.errors import ConfigError
from lowalt.metrics import Metrics

log = logging.getLogger("lowalt.webhooks")

IDLE_WAIT_S = 5.0  # a worker re-reads the log at least this often even without a wake-up
PAGE_BATCHES = 10  # batches read from the outbox per query


def signature(secret: str, body: bytes) -> str:
    """The X-Lowalt-Signature value for body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def batch_body(events: Sequence[OutboxEvent]) -> bytes:
    return ('{"events":[' + ",".join(e.body for e in events) + "]}").encode("utf-8")


def parse_spec(raw: Any, *, name_required: bool = False) -> SubscriptionSpec:
    """A subscription from a request body or a config table; ValueError says what is wrong."""
    if not isinstance(raw, Mapping):
        raise ValueError("expected an object with url, secret and types")
    url, secret = raw.get("url"), raw.get("secret")
    types, name = raw.get("types", []), raw.get("name")
    if not isinstance(url, str):
        raise ValueError("url: required string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url: expected an http:// or https:// URL, got {url!r}")
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret: required non-empty string")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ValueError("types: expected a list of alert types")
    unknown = sorted(set(types) - ALERT_TYPES)
    if unknown:
        raise ValueError(f"types: unknown {', '.join(unknown)}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError("name: expected a non-empty string")
    if name_required and name is None:
        raise ValueError("name: required for a subscription in the config file")
    return SubscriptionSpec(url, secret, tuple(sorted(set(types))), name)


def config_specs(extra: Mapping[str, Any]) -> list[SubscriptionSpec]:
    """`[[subscriptions]]` tables of the config file; ConfigError on a bad one."""
    raw = extra.get("subscriptions", [])
    if not isinstance(raw, list):
        raise ConfigError("subscriptions: expected [[subscriptions]] tables")
    specs = []
    for n, table in enumerate(raw):
        try:
            specs.append(parse_spec(table, name_required=True))
        except ValueError as exc:
            raise ConfigError(f"subscriptions[{n}]: {exc}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError("subscriptions: names must be unique")
    return specs


class _StateWriter:
    """One subscription's state saves, one at a time and in order. `save(wait=False)` returns
    once the previous save is done, leaving this one running; a failed save is logged, and the
    next one writes newer state over it."""

    def __init__(self, store: AlertStore, sub_id: int) -> None:
        self.store, self.sub_id = store, sub_id
        self._pending: asyncio.Task[None] | None = None

    async def save(self, sub: Subscription, *, wait: bool) -> None:
        await self.settle()
        self._pending = asyncio.create_task(self.store.save_subscription(sub))
        if wait:
            await self.settle()

    async def settle(self) -> None:
        """Wait for the save in flight (a cancelled caller leaves it to finish)."""
        task = self._pending
        if task is None:
            return
        await asyncio.wait([task])  # the save itself is not cancelled with the caller
        self._pending = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhook %d: state not stored: %s", self.sub_id, task.exception())


class WebhookDispatcher:
    """Owns one delivery task per active subscription."""

    def __init__(
        self,
        store: AlertStore,
        broadcaster: Broadcaster,
        *,
        max_age_s: float,
        timeout_s: float,
        retry_base_s: float,
        retry_max_s: float,
        batch_events: int,
        metrics: Metrics,
    ) -> None:
        self.store, self.broadcaster = store, broadcaster
        self.max_age_s, self.timeout_s = max_age_s, timeout_s
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.batch_events = batch_events
        self.metrics = metrics
        self._workers: dict[int, asyncio.Task[None]] = {}
        metrics.counter("lowalt_webhook_deliveries_total", "Webhook POSTs, by result.")
        metrics.counter("lowalt_webhook_events_total", "Events delivered by webhook.")
        metrics.counter("lowalt_webhook_dead_letters_total", "Subscriptions put in dead_letter.")
        metrics.gauge("lowalt_webhook_workers", "Running webhook delivery tasks.",
                      lambda: float(len(self._workers)))

    async def start(self, config: Sequence[SubscriptionSpec]) -> None:
        """Upsert the config file's subscriptions, then start a worker for each active one."""
        await self.store.sync_config_subscriptions(config, self.broadcaster.head, time.time())
        for sub in await self.store.subscriptions():
            if sub.state == "active":
                self._start(sub)

    async def close(self) -> None:
        workers = list(self._workers.values())
        self._workers.clear()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def create(self, spec: SubscriptionSpec) -> Subscription:
        """A new subscription; it gets the events committed after now."""
        sub = await self.store.add_subscription(spec, self.broadcaster.head, time.time())
        self._start(sub)
        return sub

    async def delete(self, sub_id: int) -> bool:
        await self._stop(sub_id)
        return await self.store.delete_subscription(sub_id)

    async def resume(self, sub_id: int) -> Subscription | None:
        """Put a dead-lettered subscription back to work from its cursor, with a fresh max age."""
        sub = await self.store.subscription(sub_id)
        if sub is None:
            return None
        if sub.state != "active" or sub_id not in self._workers:
            await self._stop(sub_id)
            sub = dataclasses.replace(sub, state="active", attempts=0, next_attempt_at=None,
                                      active_since=time.time())
            await self.store.save_subscription(sub)
            self._start(sub)
        return sub

    def _start(self, sub: Subscription) -> None:
        task = asyncio.create_task(self._deliver(sub), name=f"lowalt-webhook-{sub.id}")
        self._workers[sub.id] = task
        task.add_done_callback(lambda t: self._forget(sub.id, t))

    def _forget(self, sub_id: int, task: asyncio.Task[None]) -> None:
        if self._workers.get(sub_id) is task:
            del self._workers[sub_id]

    async def _stop(self, sub_id: int) -> None:
        task = self._workers.pop(sub_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _deliver(self, sub: Subscription) -> None:
        """One subscription's delivery loop: until cancelled or dead-lettered."""
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        types = frozenset(sub.types) or None
        scanned = sub.delivered_seq  # may run ahead of the cursor over events of other types
        page: list[OutboxEvent] = []  # read, not yet delivered, in seq order
        state = _StateWriter(self.store, sub.id)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                if sub.next_attempt_at is not None:  # a retry was due when we stopped
                    await asyncio.sleep(max(0.0, sub.next_attempt_at - time.time()))
                while True:
                    try:
                        if not page:
                            head = self.broadcaster.head
                            page = await self.store.outbox(EventQuery(
                                since=scanned, limit=self.batch_events * PAGE_BATCHES,
                                types=types,
                            ))
                            if not page:
                                await state.settle()
                                scanned = max(scanned, head)
                                await self.broadcaster.wait_beyond(scanned, IDLE_WAIT_S)
                                continue
                        batch = page[:self.batch_events]
                        sub, delay = await self._attempt(session, state, sub, batch)
                        if sub.state != "active":
                            return
                        if delay is None:
                            scanned = sub.delivered_seq
                            del page[:len(batch)]
                        else:
                            await asyncio.sleep(delay)
                    except Exception as exc:  # storage away or a bug: log, wait, go on
                        log.warning("webhook %d: %s", sub.id, exc)
                        await asyncio.sleep(self.retry_base_s)
        finally:
            await state.settle()

    async def _attempt(
        self, session: aiohttp.ClientSession, state: _StateWriter, sub: Subscription,
        events: Sequence[OutboxEvent],
    ) -> tuple[Subscription, float | None]:
        """POST one batch; the new state and, after a failure, how long to wait. A delivered
        batch's cursor is left saving; failure state is saved before this returns."""
        error = await self._post(session, sub, events)
        now = time.time()
        if error is None:
            self.metrics.inc("lowalt_webhook_deliveries_total", result="ok")
            self.metrics.inc("lowalt_webhook_events_total", len(events))
            sub = dataclasses.replace(
                sub, delivered_seq=events[-1].seq, attempts=0, next_attempt_at=None,
                last_error=None, delivered_at=now,
            )
            await state.save(sub, wait=False)
            return sub, None
        self.metrics.inc("lowalt_webhook_deliveries_total", result="error")
        attempts = sub.attempts + 1
        deadline = max(events[0].raised_at, sub.active_since) + self.max_age_s
        if now >= deadline:
            self.metrics.inc("lowalt_webhook_dead_letters_total")
            log.warning("webhook %d (%s): dead letter after %d attempts: %s", sub.id, sub.url,
                        attempts, error)
            sub = dataclasses.replace(sub, attempts=attempts, next_attempt_at=None,
                                      state="dead_letter", last_error=error)
            await state.save(sub, wait=True)
            return sub, None
        backoff = min(self.retry_max_s, self.retry_base_s * 2 ** min(attempts - 1, 30))
        delay = min(backoff * random.uniform(0.5, 1.0), deadline - now)  # a last try at the end
        sub = dataclasses.replace(sub, attempts=attempts, next_attempt_at=now + delay,
                                  last_error=error)
        await state.save(sub, wait=True)
        return sub, delay

    async def _post(
        self, session: aiohttp.ClientSession, sub: Subscription, events: Sequence[OutboxEvent]
    ) -> str | None:
        """None after a 2xx, otherwise what went wrong."""
        body = batch_body(events)
        headers = {
            "Content-Type": "application/json",
            "X-Lowalt-Signature": signature(sub.secret, body),
            "X-Lowalt-Seq-Range": f"{events[0].seq}-{events[-1].seq}",
            "X-Lowalt-Subscription": str(sub.id),
        }
        try:
            async with session.post(sub.url, data=body, headers=headers,
                                    allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except TimeoutError:
            return f"no answer within {self.timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"


WEBHOOKS = web.AppKey("webhooks", WebhookDispatcher)


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadRequest("body: not valid JSON") from None


def _sub_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise web.HTTPNotFound(text='{"error": "not found"}', content_type="application/json")
    return int(raw)


def _not_found() -> web.Response:
    return web.json_response({"error": "not found"}, status=404)


async def post_subscription(request: web.Request) -> web.Response:
    try:
        spec = parse_spec(await _body(request))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    try:
        sub = await request.app[WEBHOOKS].create(spec)
    except NameTaken as exc:
        return web.json_response({"error": str(exc)}, status=409)
    await audit(request.app, request[PRINCIPAL], "subscription.create", str(sub.id),
                {"name": sub.name, "url": sub.url, "types": list(sub.types)})
    return web.json_response(sub.as_json(), status=201)


async def get_subscriptions(request: web.Request) -> web.Response:
    subs = await request.app[WEBHOOKS].store.subscriptions()
    return web.json_response({"subscriptions": [s.as_json() for s in subs]})


async def get_subscription(request: web.Request) -> web.Response:
    sub = await request.app[WEBHOOKS].store.subscription(_sub_id(request))
    return web.json_response(sub.as_json()) if sub is not None else _not_found()


async def delete_subscription(request: web.Request) -> web.Response:
    sub_id = _sub_id(request)
    if not await request.app[WEBHOOKS].delete(sub_id):
        return _not_found()
    await audit(request.app, request[PRINCIPAL], "subscription.delete", str(sub_id))
    return web.Response(status=204)


async def resume_subscription(request: web.Request) -> web.Response:
    sub = await request.app[WEBHOOKS].resume(_sub_id(request))
    if sub is None:
        return _not_found()
    await audit(request.app, request[PRINCIPAL], "subscription.resume", str(sub.id))
    return web.json_response(sub.as_json())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/subscriptions", post_subscription)
    app.router.add_get("/v1/subscriptions", get_subscriptions)
    app.router.add_get("/v1/subscriptions/{id}", get_subscription)
    app.router.add_delete("/v1/subscriptions/{id}", delete_subscription)
    app.router.add_post("/v1/subscriptions/{id}/resume", resume_subscription)
