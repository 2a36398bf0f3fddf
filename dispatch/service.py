"""Wiring: `Dispatch` owns the alert manager, its store, the broadcast, webhooks and the NATS sink.

`setup_dispatch(app)` registers the routes and a cleanup_ctx that builds Dispatch from the
running server (app[RUNTIME]) and stores it as app[DISPATCH]; check stages reach the manager as
app[DISPATCH].manager. Shutdown: on_shutdown ends the feeds (so long-lived SSE/WS requests
finish), then the cleanup commits pending events and stops the workers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from dispatch import feeds, webhooks
from dispatch.alerts import AlertManager, Broadcaster
from dispatch.feeds import FEED, AlertFeed
from dispatch.nats_sink import NatsSink
from dispatch.store import AlertStore, alert_store_for
from dispatch.webhooks import WEBHOOKS, WebhookDispatcher, config_specs

if TYPE_CHECKING:
    from lowalt.app import Runtime

log = logging.getLogger("lowalt.dispatch")


class Dispatch:
    """Everything dispatch/ runs; `start` then `close`."""

    def __init__(self, rt: Runtime) -> None:
        s = rt.settings
        self.settings = s
        self.store: AlertStore = alert_store_for(rt.store)
        self.broadcaster = Broadcaster()
        self.manager = AlertManager(
            self.store, self.broadcaster, clear_s=s.alert_clear_s,
            update_min_s=s.alert_update_min_s, refresh_s=s.alert_refresh_s,
            commit_delay_s=s.alert_commit_delay_s,
            max_pending_events=s.alert_max_pending_events, metrics=rt.metrics,
        )
        self.feed = AlertFeed(
            self.store, self.broadcaster, self.manager, rt.registry,
            max_clients=s.feed_max_clients, queue_events=s.feed_queue_events,
            heartbeat_s=s.feed_heartbeat_s, write_timeout_s=s.feed_write_timeout_s,
            metrics=rt.metrics,
        )
        self.webhooks = WebhookDispatcher(
            self.store, self.broadcaster, max_age_s=s.webhook_max_age_s,
            timeout_s=s.webhook_timeout_s, retry_base_s=s.webhook_retry_base_s,
            retry_max_s=s.webhook_retry_max_s, batch_events=s.webhook_batch_events,
            metrics=rt.metrics,
        )
        self.nats: NatsSink | None = None
        if s.nats_url:
            self.nats = NatsSink(
                self.store, self.broadcaster, url=s.nats_url, stream=s.nats_stream,
                subject_prefix=s.nats_subject_prefix, metrics=rt.metrics,
            )
        self._nats_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        specs = config_specs(self.settings.extra)  # ConfigError before anything starts
        await self.store.setup()
        await self.manager.start()
        await self.webhooks.start(specs)
        if self.nats is not None:
            self._nats_task = asyncio.create_task(self.nats.run(), name="lowalt-nats-sink")

    def stop_feeds(self) -> None:
        self.feed.close()

    async def close(self) -> None:
        """Commit what is pending, then stop feeds, webhook workers and the NATS sink."""
        await self.manager.close(self.settings.shutdown_grace_s)
        self.feed.close()
        await self.webhooks.close()
        if self._nats_task is not None:
            self._nats_task.cancel()
            await asyncio.gather(self._nats_task, return_exceptions=True)
            self._nats_task = None


DISPATCH = web.AppKey("dispatch", Dispatch)


def setup_dispatch(app: web.Application) -> None:
    """Register the alert routes and the Dispatch lifecycle on app."""
    from lowalt.app import RUNTIME  # not at import time: lowalt.app imports this module

    async def dispatch_ctx(app: web.Application) -> AsyncIterator[None]:
        dispatch = Dispatch(app[RUNTIME])
        await dispatch.start()
        app[DISPATCH] = dispatch
        app[FEED] = dispatch.feed
        app[WEBHOOKS] = dispatch.webhooks
        yield
        await dispatch.close()

    async def end_feeds(app: web.Application) -> None:
        dispatch = app.get(DISPATCH)
        if dispatch is not None:
            dispatch.stop_feeds()

    app.cleanup_ctx.append(dispatch_ctx)
    app.on_shutdown.append(end_feeds)
    feeds.add_routes(app)
    webhooks.add_routes(app)
