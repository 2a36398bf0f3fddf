"""The server: wires storage, the pipeline, transports and the APIs into one aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from dispatch.service import setup_dispatch
from geofence.clearance_http import setup_clearances
from geofence.fusion_stage import setup_traffic
from geofence.service_app import setup_checks
from ingest.frames import IngestContext
from ingest.gateway import GatewayProtocol
from ingest.http import INGEST, RETRY_AFTER, WS_MAX_BYTES, post_telemetry, telemetry_ws
from ingest.pipeline import Pipeline
from ingest.validate import Validator
from lowalt import access, api
from lowalt.auth import AUTH, PRINCIPAL, Authenticator, Registry, bearer
from lowalt.errors import AuthError, ListenError, StorageUnavailable
from lowalt.gcpolicy import keep_frozen, tune_gc
from lowalt.identity import setup_identity
from lowalt.limits import ConnectionLimits, Limits, RateLimits
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.migrate import migrate
from lowalt.settings import Settings, server_ssl_context
from lowalt.storage import Store, create_store
from lowalt.web import setup_map

log = logging.getLogger("lowalt")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
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
    tls: ssl.SSLContext | None = None  # both listeners', when tls_cert_file is set
    gateway_server: asyncio.Server | None = None
    gateway_connections: set[GatewayProtocol] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ingest_task: asyncio.Task[None] | None = None
    http_port: int = 0  # the bound HTTP port (settings may say 0: any free one), once listening

    @property
    def gateway_port(self) -> int:
        assert self.gateway_server is not None
        port: int = self.gateway_server.sockets[0].getsockname()[1]
        return port


RUNTIME = web.AppKey("runtime", Runtime)
SETTINGS = web.AppKey("settings", Settings)


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Resolve the bearer token once per request and check it against the route table
    (lowalt/access.py); read the body within http_body_timeout_s; map our errors to JSON."""
    try:
        match = request.match_info
        pattern = match.route.resource.canonical if match.route.resource is not None else ""
        matched = match.http_exception is None  # else the router answers 404 / 405 (after auth)
        rule = access.rule_for(request.method, pattern) if matched else None
        if rule is None or not rule.public:
            token = bearer(request.headers.get("Authorization"))
            if token is None and rule is not None and rule.query_token:
                token = request.query.get("access_token")
            principal = await request.app[AUTH].principal(token)
            request[PRINCIPAL] = principal
            if matched:
                if rule is None:
                    raise AuthError(f"no access rule for {request.method} {pattern}", 403)
                access.authorize(principal, rule, match, request.app[api.REGISTRY])
        if request.method in BODY_METHODS and request.body_exists:
            if request.content.is_eof():  # all of it came with the headers: no wait to bound
                await request.read()
                return await handler(request)
            timeout_s = request.app[SETTINGS].http_body_timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    await request.read()  # cached for the handler; over client_max_size: 413
            except TimeoutError:
                return web.json_response(
                    {"error": f"request body not received within {timeout_s:g} s"}, status=408,
                    headers={"Connection": "close"},
                )
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
        commit_concurrency=settings.commit_groups_at_once,
        stage_interval_s=settings.stage_interval_s,
    )
    limits = Limits(RateLimits(settings.rate_obs_per_s, settings.rate_burst_obs),
                    ConnectionLimits(settings.conn_max_per_token))
    ingest = IngestContext(
        pipeline, Validator(settings.max_age_s, settings.max_future_s), registry, metrics,
        settings.max_obs_per_batch, limits,
    )
    rt = Runtime(settings, store, metrics, live, registry, Authenticator(store), pipeline, ingest,
                 server_ssl_context(settings))
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
    try:
        rt.gateway_server = await _create_gateway_server(rt, loop)
    except OSError as exc:
        raise ListenError(f"cannot listen for the gateway on {s.gateway}: "
                          f"{_bind_reason(exc)}") from None


def _bind_reason(exc: OSError) -> str:
    """'address already in use' rather than the event loop's whole sentence."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


async def _create_gateway_server(rt: Runtime, loop: asyncio.AbstractEventLoop) -> asyncio.Server:
    s = rt.settings
    return await loop.create_server(
        lambda: GatewayProtocol(
            rt.ingest, rt.auth, max_frame_bytes=s.max_frame_bytes,
            conn_max_inflight_obs=s.conn_max_inflight_obs,
            handshake_timeout_s=s.handshake_timeout_s, idle_timeout_s=s.idle_timeout_s,
            connections=rt.gateway_connections,
        ),
        s.gateway_host, s.gateway_port, reuse_address=True, ssl=rt.tls,
        ssl_handshake_timeout=s.handshake_timeout_s if rt.tls is not None else None,
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
    setup_clearances(app)
    setup_identity(app)
    setup_traffic(app)
    setup_map(app)
    app.cleanup_ctx.append(ingest_ctx)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_post("/v1/telemetry", post_telemetry)
    app.router.add_get("/v1/telemetry/ws", telemetry_ws)
    app.router.add_get("/v1/uavs", api.get_uavs)
    app.router.add_get("/v1/uavs/{uav}/track", api.get_track)
    app.router.add_get("/v1/flights", api.get_flights)
    return app


async def serve(settings: Settings, *, ready: Callable[[Runtime], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and exit."""
    app = create_app(settings)
    runner = await start_http(app, settings)
    tune_gc()  # after start-up: zones, index and registry go to the permanent generation
    freezer = asyncio.create_task(keep_frozen(), name="lowalt-gc-freeze")
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
    freezer.cancel()
    await asyncio.gather(freezer, return_exceptions=True)
    await runner.cleanup()


async def start_http(app: web.Application, settings: Settings) -> web.AppRunner:
    """Start app and its HTTP listener: TLS when configured; a connection that has not sent a
    whole request header within http_header_timeout_s of opening (or of its previous answer)
    is closed, which bounds slowloris clients and idle keep-alive connections alike. A body
    left unread by an answer (408, 413, 401, ...) is drained for at most http_body_timeout_s
    before the connection closes, so the client can read the answer."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           keepalive_timeout=settings.http_header_timeout_s,
                           lingering_time=settings.http_body_timeout_s)
    try:
        await runner.setup()
    except BaseException:
        await app.cleanup()  # stop what the start-up contexts entered before the failure
        raise
    site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_address=True,
                       ssl_context=app[RUNTIME].tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen for HTTP on {settings.http}: {_bind_reason(exc)}") \
            from None
    app[RUNTIME].http_port = runner.addresses[0][1]
    return runner
