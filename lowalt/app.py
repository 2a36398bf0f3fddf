"""The server: wires storage, the pipeline, transports and the APIs into one aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dispatch.service import setup_dispatch
from geofence.service_app import setup_checks
from ingest.frames import IngestContext
from ingest.gateway import GatewayProtocol
from ingest.http import INGEST, RETRY_AFTER, WS_MAX_BYTES, post_telemetry, telemetry_ws
from ingest.pipeline import Pipeline
from ingest.validate import Validator
from lowalt import api
from lowalt.auth import PRINCIPAL, Authenticator, Registry, bearer
from lowalt.errors import AuthError, StorageUnavailable
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.migrate import migrate
from lowalt.settings import Settings
from lowalt.storage import Store, create_store

log = logging.getLogger("lowalt")
PUBLIC_PATHS = frozenset({"/healthz"})
# Browsers cannot set headers on EventSource or WebSocket: these GET routes also take the token
# as `?access_token=` (documented in docs/API.md).
QUERY_TOKEN_PATHS = frozenset({"/v1/alerts/stream", "/v1/alerts/ws", "/v1/traffic/stream",
                               "/v1/traffic/ws"})
REGISTRY_REFRESH_S = 5.0


@dataclass
class Runtime:
    """Everything the running server owns; built by `runtime_ctx`, reachable as app[RUNTIME]."""

    settings: Settings
    store: Store
    metrics: Metrics
    live: LiveState
    registry: Registry
    auth: Authenticator
    pipeline: Pipeline
    ingest: IngestContext
    gateway_server: asyncio.Server | None = None
    gateway_connections: set[GatewayProtocol] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ingest_task: asyncio.Task[None] | None = None

    @property
    def gateway_port(self) -> int:
        assert self.gateway_server is not None
        port: int = self.gateway_server.sockets[0].getsockname()[1]
        return port


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)
AUTH = web.AppKey("auth", Authenticator)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Resolve the bearer token once per request; map our errors to JSON answers."""
    try:
        if request.path not in PUBLIC_PATHS:
            token = bearer(request.headers.get("Authorization"))
            if token is None and request.path in QUERY_TOKEN_PATHS:
                token = request.query.get("access_token")
            request[PRINCIPAL] = await request.app[AUTH].principal(token)
        return await handler(request)
    except AuthError as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        status = exc.status
        message = exc.reason if status != 404 else "not found"
        return web.json_response({"error": message}, status=status, headers=headers)
    except StorageUnavailable as exc:
        return web.json_response(
            {"error": f"storage unavailable: {exc}"}, status=503,
            headers={"Retry-After": str(request.app[SETTINGS].retry_after_s)},
        )


async def _every(period_s: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await job()
        except StorageUnavailable as exc:
            log.warning("%s: storage unavailable: %s", name, exc)
        except Exception:
            log.exception("%s failed", name)


async def build_runtime(settings: Settings) -> Runtime:
    """Open storage (migrating it), rebuild the live picture and registry; start housekeeping.

    The committer is not started here: `start_ingest` does that once every check stage is
    plugged in, so no committed batch goes unchecked.
    """
    if settings.backend == "postgres":
        await migrate(settings)
    store = create_store(settings)
    await store.open()
    metrics = Metrics()
    live = LiveState()
    registry = Registry(store)
    await registry.refresh()
    live.update(await store.latest_observations(time.time() - settings.max_age_s))
    pipeline = Pipeline(
        store, live, metrics, commit_max_obs=settings.commit_max_obs,
        max_pending_obs=settings.max_pending_obs,
    )
    ingest = IngestContext(
        pipeline, Validator(settings.max_age_s, settings.max_future_s), registry, metrics,
        settings.max_obs_per_batch,
    )
    rt = Runtime(settings, store, metrics, live, registry, Authenticator(store), pipeline, ingest)
    metrics.gauge("lowalt_live_uavs", "UAVs in the live picture.", lambda: float(len(live)))
    metrics.gauge("lowalt_gateway_connections", "Open gateway connections.",
                  lambda: float(len(rt.gateway_connections)))
    retention_s = settings.retention_days * 86400.0
    rt.tasks.append(asyncio.create_task(_every(
        settings.retention_interval_s,
        lambda: store.delete_observations_before(time.time() - retention_s), "retention",
    )))
    rt.tasks.append(asyncio.create_task(_every(REGISTRY_REFRESH_S, registry.refresh, "registry")))
    return rt


async def start_ingest(rt: Runtime, *, with_gateway: bool = True) -> None:
    """Start committing, then open the gateway port."""
    rt.ingest_task = asyncio.create_task(rt.pipeline.run(), name="lowalt-committer")
    if with_gateway:
        await start_gateway(rt)


async def start_gateway(rt: Runtime) -> None:
    s = rt.settings
    loop = asyncio.get_running_loop()
    rt.gateway_server = await loop.create_server(
        lambda: GatewayProtocol(
            rt.ingest, rt.auth, max_frame_bytes=s.max_frame_bytes,
            conn_max_inflight_obs=s.conn_max_inflight_obs,
            handshake_timeout_s=s.handshake_timeout_s, idle_timeout_s=s.idle_timeout_s,
            connections=rt.gateway_connections,
        ),
        s.gateway_host, s.gateway_port, reuse_address=True,
    )


async def stop_ingest(rt: Runtime) -> None:
    """Drain: stop accepting, commit, check and ack what was received, close connections."""
    grace = rt.settings.shutdown_grace_s
    if rt.gateway_server is not None:
        rt.gateway_server.close()
    conns = list(rt.gateway_connections)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.stop_reading() for c in conns)), grace)
    if not await rt.pipeline.drain(grace):
        log.warning("shutdown: %d observations not committed in time", rt.pipeline.pending_obs)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.finish() for c in conns)), grace)
    if rt.ingest_task is not None:
        rt.ingest_task.cancel()
        await asyncio.gather(rt.ingest_task, return_exceptions=True)


async def close_runtime(rt: Runtime) -> None:
    for task in rt.tasks:
        task.cancel()
    await asyncio.gather(*rt.tasks, return_exceptions=True)
    await rt.store.close()


async def shutdown_runtime(rt: Runtime) -> None:
    """Everything `stop_ingest` and `close_runtime` do, for callers without the app."""
    await stop_ingest(rt)
    await close_runtime(rt)


def create_app(settings: Settings, *, with_gateway: bool = True) -> web.Application:
    app = web.Application(middlewares=[auth_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[RETRY_AFTER] = settings.retry_after_s
    app[WS_MAX_BYTES] = settings.max_ws_message_bytes

    async def runtime_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = await build_runtime(settings)
        app[RUNTIME] = rt
        app[AUTH] = rt.auth
        app[INGEST] = rt.ingest
        app[api.STORE] = rt.store
        app[api.LIVE] = rt.live
        app[api.REGISTRY] = rt.registry
        app[api.METRICS] = rt.metrics
        yield
        await close_runtime(rt)

    async def ingest_ctx(app: web.Application) -> AsyncIterator[None]:
        rt = app[RUNTIME]
        await start_ingest(rt, with_gateway=with_gateway)
        yield
        await stop_ingest(rt)

    # Start in this order, stop in the reverse: storage, dispatch, checks, then ingest, so a
    # draining shutdown commits, checks and alerts everything received before storage closes.
    app.cleanup_ctx.append(runtime_ctx)
    setup_dispatch(app)
    setup_checks(app)
    app.cleanup_ctx.append(ingest_ctx)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post("/v1/telemetry", post_telemetry)
    app.router.add_get("/v1/telemetry/ws", telemetry_ws)
    app.router.add_get("/v1/uavs", api.get_uavs)
    app.router.add_post("/v1/uavs", api.post_uav)
    app.router.add_get("/v1/registry/uavs", api.list_uav_registry)
    app.router.add_get("/v1/uavs/{uav}/track", api.get_track)
    app.router.add_get("/v1/flights", api.get_flights)
    return app


async def serve(settings: Settings, *, ready: Callable[[Runtime], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True)
    await site.start()
    rt = app[RUNTIME]
    log.info("lowalt listening: http %s, gateway %s, storage %s", settings.http,
             settings.gateway, settings.backend)
    if ready is not None:
        ready(rt)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining")
    await runner.cleanup()
