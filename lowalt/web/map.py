"""The regulators' live map page (issue 11): `/`, its files under `/static/`, GET /v1/map/config.

The page is plain ES modules and canvas 2D in `static/` (no build step, nothing from a CDN).
`/` and `/static/` are public (lowalt/access.py); everything the page reads is fetched with the
token it logs in with. GET /v1/map/config tells the page the optional raster tile URL
(`map_tile_url`), when an aircraft counts as lost, the server's clock and the alert types the
SSE stream names its events by.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from dispatch.alerts import ALERT_TYPES
from lowalt.auth import PRINCIPAL
from lowalt.errors import ConfigError
from lowalt.settings import Settings

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/"
HIDE_AFTER_S = 300.0  # an aircraft silent this long leaves the map (lost from lost_after_s)
POLL_INTERVAL_S = 1.0  # GET /v1/uavs period while /v1/traffic/ws is not there
TRAFFIC_RATE_HZ = 1.0
TRACK_WINDOW_S = 900.0  # how much history a selected aircraft's track shows
_TILE_KEYS = ("{z}", "{x}", "{y}")

MAP_SETTINGS = web.AppKey("map_settings", Settings)


def tile_origin(url: str | None) -> str | None:
    """The origin the page loads tiles from (for its Content-Security-Policy); None = same."""
    if not url:
        return None
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def check_tile_url(url: str | None) -> None:
    """ConfigError unless url is an http(s) or same-origin XYZ template with {z}, {x}, {y}."""
    if not url:
        return
    parts = urlsplit(url)
    absolute = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not (absolute or (not parts.scheme and url.startswith("/"))) or not all(
        key in url for key in _TILE_KEYS
    ):
        raise ConfigError(
            f"map_tile_url: expected http(s)://HOST/.../{{z}}/{{x}}/{{y}}.png, got {url!r}"
        )


def content_security_policy(settings: Settings) -> str:
    img = " ".join(filter(None, ("'self' data:", tile_origin(settings.map_tile_url))))
    return (f"default-src 'self'; img-src {img}; connect-src 'self'; script-src 'self'; "
            "style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


async def index(request: web.Request) -> web.FileResponse:
    settings = request.app[MAP_SETTINGS]
    return web.FileResponse(STATIC_DIR / "index.html", headers={
        "Content-Security-Policy": content_security_policy(settings),
        "Referrer-Policy": "no-referrer",
    })


async def map_config(request: web.Request) -> web.Response:
    """GET /v1/map/config: what the page needs besides the API itself (lowalt/access.py
    lets regulators and operators read it)."""
    s = request.app[MAP_SETTINGS]
    return web.json_response({
        "tile_url": s.map_tile_url,
        "server_time": time.time(),
        "lost_after_s": s.lost_after_s,
        "ground_elevation_m": s.ground_elevation_m,
        "geoid_undulation_m": s.geoid_undulation_m,
        "hide_after_s": HIDE_AFTER_S,
        "poll_interval_s": POLL_INTERVAL_S,
        "traffic_rate_hz": TRAFFIC_RATE_HZ,
        "track_window_s": TRACK_WINDOW_S,
        "alert_types": sorted(ALERT_TYPES),
        "role": request[PRINCIPAL].role,
    })


async def _revalidate(request: web.Request, response: web.StreamResponse) -> None:
    """The page and its modules are small: have browsers revalidate them (304s) on every load,
    so an upgraded server never runs with a stale mix of modules."""
    if request.path == "/" or request.path.startswith(STATIC_PREFIX):
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"


def setup_map(app: web.Application) -> None:
    """Register `/`, `/static/` and GET /v1/map/config on app (after its settings are set)."""
    from lowalt.app import SETTINGS  # not at import time: lowalt.app imports this module

    settings = app[SETTINGS]
    check_tile_url(settings.map_tile_url)
    app[MAP_SETTINGS] = settings
    app.on_response_prepare.append(_revalidate)
    app.router.add_get("/", index)
    app.router.add_static(STATIC_PREFIX, STATIC_DIR)
    app.router.add_get("/v1/map/config", map_config)
