// The live map page: log in with a token, then wire the view, the feeds, the renderer and the
// panels together. window.lowaltMap is a small read-only hook for tests and the curious.

import { Api, HttpError } from "./api.js";
import { AlertBook, AlertPanel, AlertStream, escapeHtml } from "./alerts.js";
import { Details } from "./details.js";
import { bandText, corridorsAt, prepareClearances, prepareZones, zoneActive, zonesAt }
  from "./layers.js";
import { Renderer } from "./render.js";
import { Traffic, TrafficFeed } from "./traffic.js";
import { View, worldX, worldY, EARTH_RADIUS_M } from "./view.js";

const TOKEN_KEY = "lowalt.token";
const VIEW_KEY = "lowalt.view";
const NOTICE_KEY = "lowalt.notice";
const ZONES_EVERY_MS = 15_000;
const CLEARANCES_EVERY_MS = 15_000;
const $ = (id) => document.getElementById(id);

function setStatus(id, level, text) {
  const el = $(id);
  el.className = `status ${level}`;
  el.textContent = text;
}

// Login

function askToken(message = "") {
  const dialog = $("login");
  $("login-error").textContent = message;
  if (!dialog.open) dialog.showModal();
  $("login-token").focus();
}

function logout(notice = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  if (notice) sessionStorage.setItem(NOTICE_KEY, notice);
  location.reload(); // closes every stream and timer of the old session
}

async function login(token) {
  const api = new Api(token);
  let config;
  try {
    config = await api.get("/v1/map/config");
  } catch (error) {
    if (error instanceof HttpError && error.status === 401) throw new Error("That token is not valid.");
    if (error instanceof HttpError && error.status === 403) {
      throw new Error("This token's role cannot read traffic.");
    }
    throw new Error(`Cannot reach the server: ${error.message}`);
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  api.onUnauthorized = () => logout("The session's token was refused: log in again.");
  return [api, config];
}

function boot() {
  $("login").addEventListener("cancel", (e) => e.preventDefault()); // no way around it
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = $("login-token").value.trim();
    if (!token) return;
    $("login-submit").disabled = true;
    try {
      const [api, config] = await login(token);
      $("login").close();
      $("login-token").value = "";
      run(api, config);
    } catch (error) {
      $("login-error").textContent = error.message;
    } finally {
      $("login-submit").disabled = false;
    }
  });
  const notice = sessionStorage.getItem(NOTICE_KEY) ?? "";
  sessionStorage.removeItem(NOTICE_KEY);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    askToken(notice);
    return;
  }
  login(token).then(([api, config]) => run(api, config), (error) => {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken(error.message);
  });
}

// The session

function robustBox(points) {
  // The box of the aircraft, leaving out strays far from the rest (one report from another
  // city must not zoom the first view out to the whole country).
  if (!points.length) return null;
  const range = (values) => {
    const sorted = values.slice().sort((a, b) => a - b);
    const q = (f) => sorted[Math.round(f * (sorted.length - 1))];
    const spread = Math.max(q(0.9) - q(0.1), 1e-6);
    return [q(0.1) - 2 * spread, q(0.9) + 2 * spread];
  };
  const [x0, x1] = range(points.map((p) => p[0]));
  const [y0, y1] = range(points.map((p) => p[1]));
  const box = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of points) {
    if (x < x0 || x > x1 || y < y0 || y > y1) continue;
    box[0] = Math.min(box[0], x);
    box[1] = Math.min(box[1], y);
    box[2] = Math.max(box[2], x);
    box[3] = Math.max(box[3], y);
  }
  return box;
}

function union(a, b) {
  if (!a) return b;
  if (!b) return a;
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
}

async function run(api, config) {
  $("logout").hidden = false;
  $("logout").addEventListener("click", () => logout());
  const clockOffset = config.server_time - Date.now() / 1000;
  const now = () => Date.now() / 1000 + clockOffset;
  const ground = (config.geoid_undulation_m ?? 0) + (config.ground_elevation_m ?? 0);
  const heightOf = (ac) => (ac.agl_m !== null ? [ac.agl_m, false] : [ac.alt_m - ground, true]);

  const view = new View();
  const traffic = new Traffic();
  const book = new AlertBook();
  let zones = [];
  let corridors = [];
  let hover = [];
  let selectedId = null;
  let track = []; // the selected aircraft's recent positions, oldest first: {t, mx, my}
  let clearancesAvailable = true;

  const saved = JSON.parse(sessionStorage.getItem(VIEW_KEY) ?? "null");
  if (saved) {
    view.set(saved.cx, saved.cy, saved.zoom);
    view.moved = true;
  }

  const canvas = $("map");
  const details = new Details($("details"), () => select(null));
  const panel = new AlertPanel($("alerts"), $("alert-count"), (event) => {
    if (event) select(event.uav, { fly: true, lat: event.lat, lon: event.lon });
  });
  const selected = () => (selectedId === null ? null : traffic.get(selectedId) ?? null);

  let lastView = "";
  let lastDetails = 0;
  let lastCounts = "";
  let seenVersion = -1;
  const renderer = new Renderer(canvas, view, {
    traffic, book, config, now, heightOf, selected,
    zones: () => zones,
    corridors: () => corridors,
    track: () => track,
    hover: () => hover,
    afterFrame() {
      const key = `${view.cx.toFixed(7)},${view.cy.toFixed(7)},${view.zoom.toFixed(3)}`;
      if (key !== lastView) {
        lastView = key;
        feed.setArea(view.bounds(), view.bounds(1));
        sessionStorage.setItem(VIEW_KEY, JSON.stringify({ cx: view.cx, cy: view.cy, zoom: view.zoom }));
      }
      const t = performance.now();
      const counts = `${traffic.size} aircraft · ${renderer.inView} in view`;
      if (counts !== lastCounts) $("counts").textContent = lastCounts = counts;
      panel.setOpenCount(book.open.size);
      const ac = selected();
      if (ac && (!track.length || track[track.length - 1].t < ac.t)) {
        track.push({ t: ac.t, mx: ac.mx, my: ac.my });
      }
      if (selectedId !== null && (t - lastDetails > 1000 || seenVersion !== traffic.version)) {
        lastDetails = t;
        seenVersion = traffic.version;
        details.update(ac, ac ? renderer.stateName(ac) : "—", book.about(selectedId),
          ac ? heightOf(ac) : [null, false], now(), track.length);
      }
    },
  });
  const redraw = () => renderer.invalidate();
  traffic.listeners.add(redraw);

  const feed = new TrafficFeed(api, traffic, {
    rateHz: config.traffic_rate_hz, pollIntervalS: config.poll_interval_s,
    keep: (ac) => ac.uav === selectedId,
    onStatus: (mode, text) => setStatus("feed-status", mode === "error" ? "bad" : "ok",
      mode === "error" ? text : `aircraft: ${text}`),
  });

  // Selection

  async function loadTrack(uav) {
    try {
      const body = await api.get(`/v1/uavs/${encodeURIComponent(uav)}/track`, {
        from: (now() - config.track_window_s).toFixed(1), limit: 5000,
      });
      if (selectedId !== uav) return;
      const points = body.track.map((o) => ({ t: o.t, mx: worldX(o.lon), my: worldY(o.lat) }));
      const newer = track.filter((p) => !points.length || p.t > points[points.length - 1].t);
      track = points.concat(newer);
      redraw();
    } catch (error) {
      if (!(error instanceof HttpError && error.status === 404)) console.warn("track:", error);
    }
  }

  function select(uav, { fly = false, lat = null, lon = null } = {}) {
    selectedId = uav;
    track = [];
    panel.select(uav);
    lastDetails = 0;
    if (uav === null) {
      details.hide();
      redraw();
      return;
    }
    details.show(uav);
    const ac = traffic.get(uav);
    if (fly && (ac || (Number.isFinite(lat) && Number.isFinite(lon)))) {
      const mx = ac ? ac.mx : worldX(lon), my = ac ? ac.my : worldY(lat);
      view.flyTo(mx, my, Math.max(view.zoom, 13));
    }
    loadTrack(uav);
    redraw();
  }

  // Zones and clearances

  async function loadZones() {
    try {
      zones = prepareZones(await api.get("/v1/zones"));
      redraw();
    } catch (error) {
      console.warn("zones:", error);
    }
  }

  async function loadClearances() {
    if (!clearancesAvailable) return;
    try {
      corridors = prepareClearances(await api.get("/v1/clearances"));
      redraw();
    } catch (error) {
      if (error instanceof HttpError && [403, 404, 405].includes(error.status)) {
        clearancesAvailable = false; // not on this server: skip quietly
      }
    }
  }

  // Alerts

  const knownZone = (id) => zones.some((z) => z.id === id);
  let snapshotTaken = false;
  const stream = new AlertStream(api, config.alert_types, {
    onEvent(event) {
      book.apply(event);
      panel.push(event);
      if (event.zone && event.type.startsWith("geofence") && !knownZone(event.zone)) loadZones();
      lastDetails = 0;
      redraw();
    },
    async onOpen() {
      if (snapshotTaken) return; // the stream resumes by itself from here
      snapshotTaken = true;
      try {
        const body = await api.get("/v1/alerts/open");
        book.loadSnapshot(body.alerts);
        for (const alert of body.alerts) if (book.open.has(alert.alert_id)) panel.push(alert);
        redraw();
      } catch (error) {
        console.warn("open alerts:", error);
      }
    },
    onStatus: (level, text) => setStatus("alert-status", level, text),
  });

  // Pointer and keyboard

  let drag = null;
  const tooltip = $("tooltip");
  const local = (e) => {
    const r = canvas.getBoundingClientRect();
    return [e.clientX - r.left, e.clientY - r.top];
  };

  function showTooltip(x, y) {
    const [mx, my] = view.worldAt(x, y);
    const metresPerWorld = 2 * Math.PI * EARTH_RADIUS_M * Math.cos(Math.atan(Math.sinh(Math.PI * (1 - 2 * my))));
    hover = zonesAt(zones, mx, my);
    const lanes = corridorsAt(corridors, mx, my, metresPerWorld);
    const ac = renderer.pick(x, y);
    canvas.classList.toggle("pointing", ac !== null);
    const parts = [];
    if (ac) {
      const [h, est] = heightOf(ac);
      parts.push(`<div class="zone"><b>${escapeHtml(ac.uav)}</b> · ${renderer.stateName(ac)}<br>`
        + `${est ? "~" : ""}${Math.round(h)} m AGL · ${Math.round(ac.alt_m)} m WGS84</div>`);
    }
    const nowMs = now() * 1000;
    for (const z of hover) {
      const when = zoneActive(z, nowMs) ? "" : " · <span class=muted>inactive now</span>";
      parts.push(`<div class="zone"><b>${escapeHtml(z.name || z.id)}</b>`
        + ` <span class="muted">${escapeHtml(z.id)}</span><br>${escapeHtml(z.restriction)}${when}`
        + `<br>band ${escapeHtml(bandText(z))}</div>`);
    }
    for (const c of lanes) {
      parts.push(`<div class="zone"><b>clearance ${escapeHtml(String(c.id))}</b> · `
        + `${escapeHtml(c.uav ?? "")} · ${escapeHtml(c.state)}<br>corridor ±${c.corridor_m} m`
        + `${c.vertical_m !== null ? `, ±${c.vertical_m} m vertical` : ""}</div>`);
    }
    if (parts.length) {
      tooltip.innerHTML = parts.join("");
      tooltip.hidden = false;
      const maxX = view.width - tooltip.offsetWidth - 8;
      tooltip.style.left = `${Math.min(x + 14, maxX)}px`;
      tooltip.style.top = `${Math.min(y + 14, view.height - tooltip.offsetHeight - 8)}px`;
    } else {
      tooltip.hidden = true;
    }
    const lat = Math.atan(Math.sinh(Math.PI * (1 - 2 * my))) * 180 / Math.PI;
    $("cursor").textContent = `${lat.toFixed(5)}°, ${(mx * 360 - 180).toFixed(5)}°`;
    redraw();
  }

  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    const [x, y] = local(e);
    drag = { x, y, startX: x, startY: y, moved: false };
  });
  canvas.addEventListener("pointermove", (e) => {
    const [x, y] = local(e);
    if (drag) {
      if (!drag.moved && Math.hypot(x - drag.startX, y - drag.startY) > 4) {
        drag.moved = true;
        canvas.classList.add("dragging");
        tooltip.hidden = true;
      }
      if (drag.moved) {
        view.panBy(x - drag.x, y - drag.y);
        drag.x = x;
        drag.y = y;
        redraw();
      }
    } else {
      showTooltip(x, y);
    }
  });
  canvas.addEventListener("pointerup", (e) => {
    const [x, y] = local(e);
    if (drag && !drag.moved) {
      const ac = renderer.pick(x, y);
      if (ac) select(ac.uav);
    }
    drag = null;
    canvas.classList.remove("dragging");
  });
  canvas.addEventListener("pointerleave", () => {
    if (!drag) tooltip.hidden = true;
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [x, y] = local(e);
    const pixels = e.deltaMode === 1 ? e.deltaY * 40 : e.deltaY;
    view.zoomAt(x, y, Math.max(-1, Math.min(1, -pixels / 250)));
    redraw();
  }, { passive: false });
  canvas.addEventListener("dblclick", (e) => {
    const [x, y] = local(e);
    view.zoomAt(x, y, 1);
    redraw();
  });
  window.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    const step = 80;
    const keys = {
      "+": () => view.zoomAt(view.width / 2, view.height / 2, 1),
      "=": () => view.zoomAt(view.width / 2, view.height / 2, 1),
      "-": () => view.zoomAt(view.width / 2, view.height / 2, -1),
      ArrowLeft: () => view.panBy(step, 0), ArrowRight: () => view.panBy(-step, 0),
      ArrowUp: () => view.panBy(0, step), ArrowDown: () => view.panBy(0, -step),
      Escape: () => select(null),
    };
    if (keys[e.key]) {
      keys[e.key]();
      redraw();
    }
  });
  new ResizeObserver(() => renderer.resize()).observe(canvas);
  renderer.resize();

  // Start: zones and a first look at the traffic decide the first view, then the feeds run.

  window.lowaltMap = Object.freeze({
    aircraftCount: () => traffic.size,
    inView: () => renderer.inView,
    openAlerts: () => book.open.size,
    feedMode: () => feed.mode,
    selected: () => selectedId,
    stateOf: (uav) => (traffic.get(uav) ? renderer.stateName(traffic.get(uav)) : null),
    kinds: () => {
      const counts = { uav: 0, crewed: 0 };
      for (const ac of traffic.byId.values()) counts[ac.kind]++;
      return counts;
    },
    zoneCount: () => zones.length,
    corridorCount: () => corridors.length,
    view: () => ({ lat: Math.atan(Math.sinh(Math.PI * (1 - 2 * view.cy))) * 180 / Math.PI,
      lon: view.cx * 360 - 180, zoom: view.zoom }),
    frameStats: () => renderer.frameStats(),
    tilesDrawn: () => renderer.tilesDrawn,
  });

  setStatus("feed-status", "warn", "aircraft: connecting");
  stream.start();
  await Promise.all([loadZones(), loadClearances()]);
  if (!view.moved) {
    let first = [];
    try {
      first = (await api.get("/v1/uavs")).uavs;
    } catch (error) {
      console.warn("uavs:", error);
    }
    traffic.apply(first);
    const zoneBox = zones.reduce((box, z) => union(box, z.box), null);
    const box = union(zoneBox, robustBox(first.map((o) => [worldX(o.lon), worldY(o.lat)])));
    if (box) view.fit(box, 30, 14);
  }
  await feed.start(view.bounds(1));
  setInterval(redraw, 1000); // lost-telemetry colours age with the clock
  setInterval(loadZones, ZONES_EVERY_MS);
  setInterval(loadClearances, CLEARANCES_EVERY_MS);
  redraw();
}

boot();
