"""The regulators' live map page (issue 11).

End to end in headless Chromium (Debian's package, driven by Playwright): the server and the
simulator run in this process, the page logs in with a regulator token and must show the
aircraft, put an airport intrusion in its alert panel within 3 s of the intruding report's
acknowledgement, and select the intruder when that alert is clicked; once over the live traffic
WebSocket and once over the GET /v1/uavs polling the page falls back to while that route answers
404. Screenshots go to test-output/. Then the page's routes without a browser.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from lowalt.app import RUNTIME, create_app
from lowalt.errors import ConfigError
from lowalt.settings import Settings, replace
from lowalt.simulator import (
    AIRPORT_RADIUS_M,
    JIANGBEI,
    SatelliteLink,
    Scenario,
    Target,
    run_simulation,
)
from lowalt.simulator.scenario import INTRUDER_FIRST_S
from lowalt.web.map import check_tile_url, content_security_policy
from tests.conftest import Server, make_token

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, Route

IN_CI = os.environ.get("CI") == "true"
CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1440, "height": 900}
ALERT_WITHIN_S = 3.0

ZONES: list[dict[str, Any]] = [
    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [JIANGBEI[1], JIANGBEI[0]]},
     "properties": {"id": "jiangbei-ctr", "name": "Jiangbei airport", "restriction": "prohibited",
                    "radius_m": AIRPORT_RADIUS_M, "lower_m": 0, "upper_m": None,
                    "reference": "agl", "approach_m": 500}},
    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[
        [106.555, 29.548], [106.592, 29.548], [106.592, 29.568], [106.555, 29.568],
        [106.555, 29.548]]]},
     "properties": {"id": "yuzhong-cbd", "name": "Yuzhong CBD",
                    "restriction": "authorization_required", "lower_m": 0, "upper_m": 150,
                    "reference": "agl"}},
    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [106.47, 29.62]},
     "properties": {"id": "stadium", "name": "Stadium event", "restriction": "conditional",
                    "radius_m": 1500, "lower_m": 0, "upper_m": 300, "reference": "amsl"}},
    {"type": "Feature", "geometry": {"type": "Point", "coordinates": [106.60, 29.50]},
     "properties": {"id": "hospital-pad", "name": "Hospital helipad", "restriction": "advisory",
                    "radius_m": 800, "lower_m": 0, "upper_m": 120, "reference": "agl"}},
]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metres_from_jiangbei(lat: float, lon: float) -> float:
    phi1, phi2 = math.radians(JIANGBEI[0]), math.radians(lat)
    dphi, dlambda = phi2 - phi1, math.radians(lon - JIANGBEI[1])
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} missing (scripts/ensure-chromium.sh installs it)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium under Playwright; absent: skip, or fail under CI=true."""
    reason = browser_missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason + " (CI=true: the browser tests must run)")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def open_page(browser: Browser, server: Server, token: str, feed: str,
                    errors: list[str]) -> Page:
    page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    if feed == "poll":  # as on a server without the traffic WebSocket

        async def not_found(route: Route) -> None:
            await route.fulfill(status=404, content_type="application/json",
                                body='{"error": "not found"}')

        await page.route("**/v1/traffic/ws*", not_found)
    await page.goto(str(server.client.make_url("/")))
    await page.fill("#login-token", token)
    await page.click("#login-submit")
    await page.wait_for_function("() => window.lowaltMap !== undefined")
    return page


async def post(server: Server, token: str, obs: list[dict[str, Any]]) -> None:
    r = await server.client.post("/v1/telemetry", json=obs, headers=auth(token))
    assert r.status == 200, await r.text()
    assert (await r.json())["rejected"] == []


def intruder(lead_s: float) -> tuple[Scenario, str]:
    """The scenario's airport intruder, entering the circle lead_s from now; and its uav."""
    scenario = Scenario(5, 0, ("intruder",), time.time() - INTRUDER_FIRST_S + lead_s)
    [intrusion] = scenario.intrusions(scenario.t0 + INTRUDER_FIRST_S)
    return scenario, intrusion.uav


async def fly(server: Server, token: str, scenario: Scenario, uav: str,
              acked: dict[float, float]) -> None:
    """Send uav's reports every 0.5 s, one POST each, until it is 1 s past 50 m inside the
    airport circle; acked[t] = when the report of time t was acknowledged (monotonic s)."""
    inside_since = None
    while inside_since is None or time.monotonic() - inside_since < 1.0:
        state = scenario.state_of(uav, time.time())
        assert state is not None
        await post(server, token, [state])
        acked[state["t"]] = time.monotonic()
        if inside_since is None and \
                metres_from_jiangbei(state["lat"], state["lon"]) < AIRPORT_RADIUS_M - 50.0:
            inside_since = time.monotonic()
        await asyncio.sleep(0.5)


@pytest.mark.browser
@pytest.mark.parametrize("backend", ["sqlite"])  # the page reads the API; storage is not its part
@pytest.mark.parametrize("feed", ["ws", "poll"])
async def test_live_map_shows_traffic_and_an_intrusion(server: Server, browser: Browser,
                                                       feed: str) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    for zone in ZONES:
        r = await server.client.post("/v1/zones", json=zone, headers=auth(reg))
        assert r.status == 201, await r.text()
    corridor = {"uav": "CQ-LOG-CLEARED", "departure": time.time() + 600, "speed_mps": 12,
                "corridor_m": 30, "vertical_m": 15,
                "route": {"type": "LineString",
                          "coordinates": [[106.585, 29.735, 80.0], [106.60, 29.745, 80.0]]}}
    r = await server.client.post("/v1/clearances", json=corridor,
                                 headers=auth(await server.token("admin")))
    assert r.status == 201 and (await r.json())["state"] == "granted", await r.text()
    stop = asyncio.Event()
    t0 = time.time() - 150.0  # scripted episodes already in the air
    gateway = Target.parse(gateway=f"127.0.0.1:{server.gateway_port}")
    traffic = [  # UAVs in the native format, crewed arrivals as ADS-B (SBS)
        asyncio.create_task(run_simulation(
            gateway, gw, fmt, Scenario(11, uavs, kinds, t0), SatelliteLink(11), None, 1.0,
            stop))
        for fmt, uavs, kinds in (("native", 12, ("city", "logistics", "conflicts")),
                                 ("sbs", 0, ("crewed",)))
    ]
    errors: list[str] = []
    try:
        page = await open_page(browser, server, reg, feed, errors)
        await page.wait_for_function("() => lowaltMap.aircraftCount() >= 12", timeout=15_000)
        # The first snapshot (GET /v1/uavs) is drawn before the feed has chosen its mode.
        await page.wait_for_function("() => lowaltMap.feedMode() !== 'idle'", timeout=15_000)
        assert await page.evaluate("lowaltMap.feedMode()") == feed
        await page.wait_for_function("() => lowaltMap.kinds().crewed >= 1")
        assert await page.evaluate("lowaltMap.zoneCount()") == len(ZONES)
        assert await page.evaluate("lowaltMap.corridorCount()") == 1  # the granted clearance
        await page.wait_for_function("() => lowaltMap.inView() >= 12")
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / f"map-overview-{feed}.png"))

        acked: dict[float, float] = {}
        scripted, uav = intruder(lead_s=3.0)
        flight = asyncio.create_task(fly(server, gw, scripted, uav, acked))
        row = f'#alerts li[data-type="geofence_breach"][data-uav="{uav}"]'
        await page.wait_for_selector(row, timeout=15_000)
        shown = time.monotonic()
        await flight
        r = await server.client.get("/v1/alerts", params={
            "type": "geofence_breach", "uav": uav, "state": "open"}, headers=auth(reg))
        [opened] = (await r.json())["events"]
        # The report that raised the alert (its t is the alert's) was acknowledged this long
        # before the alert was in the panel.
        shown_after_s = shown - acked[opened["t"]]
        assert 0.0 < shown_after_s <= ALERT_WITHIN_S, shown_after_s
        await page.wait_for_function(f"() => lowaltMap.stateOf({uav!r}) === 'alerting'")

        await page.click(row)
        await page.wait_for_function(
            f"() => lowaltMap.selected() === {uav!r}"
            f" && document.getElementById('details-uav').textContent === {uav!r}"
            " && !document.getElementById('details').hidden")
        await page.wait_for_function("() => lowaltMap.view().zoom >= 13")
        assert await page.is_visible(f"#alerts li.selected[data-uav='{uav}']")
        # The intruder is in the middle of the map now, inside the airport zone: hovering
        # there names it and shows the zone's altitude band.
        box = await page.locator("#map").bounding_box()
        assert box is not None
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await page.mouse.move(centre[0] - 20, centre[1] - 20)
        await page.mouse.move(*centre)
        tooltip = await page.inner_text("#tooltip")
        assert "Jiangbei airport" in tooltip and "0 m AGL – unlimited" in tooltip, tooltip
        await page.wait_for_function(
            "() => document.getElementById('details-fields').textContent.includes('points')")
        await page.screenshot(path=str(OUTPUT / f"map-intrusion-{feed}.png"))
        assert errors == []
    finally:
        stop.set()
        summaries = await asyncio.gather(*traffic)
    for summary in summaries:
        assert summary.errors == [] and summary.rejected == 0, summary.reasons


@pytest.mark.browser
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_live_map_keeps_up_with_5000_aircraft(server: Server, browser: Browser) -> None:
    """5,000 aircraft reporting once a second: all on the map, and frames stay cheap."""
    reg, gw = await server.token("regulator"), await server.token("gateway")
    n, side = 5000, 71
    errors: list[str] = []

    def states(t: float) -> list[dict[str, Any]]:
        return [{"uav": f"LOAD-{i:04d}", "t": t,
                 "lat": 29.45 + 0.30 * (i // side) / side + 0.0001 * (t % 60),
                 "lon": 106.40 + 0.35 * (i % side) / side, "alt_m": 330.0, "agl_m": 100.0,
                 "speed_mps": 12.0, "track_deg": (i * 37) % 360, "status": "airborne"}
                for i in range(n)]

    await post(server, gw, states(time.time()))
    page = await open_page(browser, server, reg, "ws", errors)
    await page.wait_for_function(f"() => lowaltMap.aircraftCount() === {n}", timeout=15_000)
    box = await page.locator("#map").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    async def updates(seconds: int) -> None:
        for _ in range(seconds):
            started = time.monotonic()
            await post(server, gw, states(time.time()))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    async def drag(seconds: float) -> None:  # every frame of a drag redraws all 5,000
        await page.mouse.move(x, y)
        await page.mouse.down()
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            k += 1
            await page.mouse.move(x + 40 * math.sin(k / 5), y + 40 * math.cos(k / 5))
        await page.mouse.up()

    frames_per_s = "new Promise(done => { let n = 0; const t0 = performance.now();" \
        " const tick = t => { n++; if (t - t0 < 3000) requestAnimationFrame(tick);" \
        " else done(n * 1000 / (t - t0)); }; requestAnimationFrame(tick); })"
    fps, _, _ = await asyncio.gather(page.evaluate(frames_per_s), updates(4), drag(3.0))
    stats = await page.evaluate("lowaltMap.frameStats()")
    assert await page.evaluate("lowaltMap.aircraftCount()") == n
    assert stats["frames"] >= 30, stats
    assert stats["median_ms"] < 50.0, stats  # drawing 5,000 in software, on two cores
    assert fps >= 15.0, (fps, stats)  # the page still answers the mouse while dragging
    await page.mouse.dblclick(x, y)  # back to where the data is, give or take
    await page.wait_for_function(f"() => lowaltMap.inView() > {n // 10}")
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "map-5000.png"))
    assert errors == []


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    """A 1x1 PNG of one colour: a stand-in tile."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb))) + chunk(b"IEND", b""))


@pytest.mark.browser
@pytest.mark.parametrize("backend", ["sqlite"])
async def test_live_map_draws_a_base_map_when_configured(settings: Settings,
                                                          browser: Browser) -> None:
    """map_tile_url set: the page loads tiles from that (other) origin and draws them; and a
    wrong token is refused at the login form."""
    requested: list[str] = []

    async def tile(request: web.Request) -> web.Response:
        requested.append(request.path)
        return web.Response(body=solid_png((40, 90, 60)), content_type="image/png")

    tiles_app = web.Application()
    tiles_app.router.add_get("/{z}/{x}/{y}.png", tile)
    tiles: TestClient[Any, Any] = TestClient(TestServer(tiles_app))
    await tiles.start_server()
    url = str(tiles.make_url("/")).rstrip("/") + "/{z}/{x}/{y}.png"
    app = create_app(replace(settings, map_tile_url=url))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        reg = await make_token(app[RUNTIME].store, "regulator")
        page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
        await page.goto(str(client.make_url("/")))
        await page.fill("#login-token", "not-a-token")
        await page.click("#login-submit")
        await page.wait_for_function(
            "() => document.getElementById('login-error').textContent.includes('not valid')")
        await page.fill("#login-token", reg)
        await page.click("#login-submit")
        await page.wait_for_function("() => window.lowaltMap && lowaltMap.tilesDrawn() > 0")
        assert requested and all(p.endswith(".png") for p in requested)
        assert await page.evaluate("sessionStorage.getItem('lowalt.token')") == reg
        await page.reload()  # the session keeps its token: no login form this time
        await page.wait_for_function("() => window.lowaltMap && lowaltMap.tilesDrawn() > 0")
        assert not await page.is_visible("#login")
        OUTPUT.mkdir(exist_ok=True)
        await page.screenshot(path=str(OUTPUT / "map-tiles.png"))
        await page.click("#logout")
        await page.wait_for_selector("#login", state="visible")
        assert await page.evaluate("sessionStorage.getItem('lowalt.token')") is None
    finally:
        await client.close()
        await tiles.close()


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_page_and_static_files_are_public_the_rest_is_not(server: Server) -> None:
    c = server.client
    r = await c.get("/")
    assert r.status == 200 and r.content_type == "text/html"
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-cache"
    assert 'src="/static/js/main.js"' in await r.text()
    for path in ("/static/js/main.js", "/static/js/render.js", "/static/map.css"):
        r = await c.get(path)
        assert r.status == 200, path
        assert r.content_type in ("text/javascript", "application/javascript", "text/css"), path
    for path in ("/static/../lowalt/app.py", "/static/%2e%2e/map.py", "/static/..%2fmap.py",
                 "/static/nothing.js"):
        r = await c.get(path)  # outside the static folder, or nothing there: never a file
        assert r.status in (401, 403, 404), (path, r.status)
    r = await c.get("/static/../v1/uavs")  # normalised to /v1/uavs: needs a token
    assert r.status == 401
    r = await c.get("/v1/map/config")
    assert r.status == 401
    r = await c.get("/v1/map/config", headers=auth(await server.token("gateway")))
    assert r.status == 403
    r = await c.get("/v1/map/config", headers=auth(await server.token("regulator")))
    body = await r.json()
    assert r.status == 200
    assert body["tile_url"] is None and body["lost_after_s"] == 5.0
    assert "geofence_breach" in body["alert_types"]
    assert abs(body["server_time"] - time.time()) < 5.0


@pytest.mark.parametrize("backend", ["sqlite"])
def test_map_tile_url_is_checked_at_start(settings: Settings) -> None:
    check_tile_url(None)
    check_tile_url("https://tiles.example.org/{z}/{x}/{y}.png")
    check_tile_url("/tiles/{z}/{x}/{y}.png")
    for bad in ("ftp://tiles.example.org/{z}/{x}/{y}.png", "https://tiles.example.org/{z}/{x}",
                "tiles/{z}/{x}/{y}.png"):
        with pytest.raises(ConfigError, match="map_tile_url"):
            check_tile_url(bad)
    with pytest.raises(ConfigError, match="map_tile_url"):
        create_app(replace(settings, map_tile_url="nonsense"))
    tiled = replace(settings, map_tile_url="https://tiles.example.org/{z}/{x}/{y}.png")
    assert "img-src 'self' data: https://tiles.example.org;" in content_security_policy(tiled)
