// Live aircraft: one store, fed either by the traffic WebSocket (API.md section 7) or, while
// that route answers 404, by polling GET /v1/uavs?bbox= once a second. Both paths end in
// Traffic.apply(), so the drawing code cannot tell them apart. Updates only touch plain
// objects in a Map; the renderer picks them up on its next animation frame.

import { worldX, worldY } from "./view.js";

const FIELDS = ["t", "lat", "lon", "alt_m", "agl_m", "speed_mps", "track_deg", "vspeed_mps",
  "status"];

export class Traffic {
  constructor() {
    /** @type {Map<string, object>} uav -> aircraft */
    this.byId = new Map();
    this.version = 0; // bumped on every change; the renderer redraws when it moves
    this.listeners = new Set();
  }

  get size() {
    return this.byId.size;
  }

  get(uav) {
    return this.byId.get(uav);
  }

  /** Apply one message or a batch: fused states, and {"gone": uav}. Returns states applied. */
  apply(message) {
    const items = Array.isArray(message) ? message : [message];
    let applied = 0;
    for (const item of items) {
      if (!item || typeof item !== "object") continue;
      if (typeof item.gone === "string") {
        if (this.byId.delete(item.gone)) this.version++;
      } else if (typeof item.uav === "string" && Number.isFinite(item.lat)
                 && Number.isFinite(item.lon) && Number.isFinite(item.t)) {
        this.upsert(item);
        applied++;
      }
    }
    if (applied) for (const listener of this.listeners) listener();
    return applied;
  }

  upsert(state) {
    let ac = this.byId.get(state.uav);
    if (ac && state.t < ac.t) return; // a late copy: the live position is the newest by t
    if (!ac) {
      ac = { uav: state.uav };
      this.byId.set(state.uav, ac);
    }
    for (const key of FIELDS) ac[key] = state[key] ?? null;
    const source = typeof state.source === "string" ? state.source : null;
    ac.sources = Array.isArray(state.sources) ? state.sources : source ? [source] : [];
    // The traffic feed says `kind`; /v1/uavs does not, but crewed traffic arrives as SBS.
    ac.kind = state.kind === "crewed" || state.kind === "uav" ? state.kind
      : ac.sources.some((s) => s.endsWith("/sbs")) ? "crewed" : "uav";
    ac.mx = worldX(ac.lon);
    ac.my = worldY(ac.lat);
    this.version++;
  }

  /** Drop every aircraft for which keep(ac) is false. */
  retain(keep) {
    for (const [uav, ac] of this.byId) {
      if (!keep(ac)) {
        this.byId.delete(uav);
        this.version++;
      }
    }
  }
}

const inside = (bbox, lon, lat) =>
  lon >= bbox[0] && lon <= bbox[2] && lat >= bbox[1] && lat <= bbox[3];
const contains = (outer, inner) =>
  inner[0] >= outer[0] && inner[1] >= outer[1] && inner[2] <= outer[2] && inner[3] <= outer[3];
const fixed = (bbox) => bbox.map((v) => v.toFixed(5)).join(",");

const WS_PATH = "/v1/traffic/ws";
const PROBE_EVERY_MS = 30_000; // while polling, how often to look for the traffic WebSocket
const RESUBSCRIBE_DELAY_MS = 400;

/**
 * Keeps `traffic` up to date for an area: the view plus a margin. Modes: "ws" (the live
 * traffic WebSocket), "poll" (GET /v1/uavs while the WebSocket route answers 404 or is down).
 */
export class TrafficFeed {
  /** keep(ac): aircraft to hold on to when the area changes (the selected one). */
  constructor(api, traffic, { rateHz = 1, pollIntervalS = 1, onStatus = () => {},
    keep = () => false } = {}) {
    this.keep = keep;
    this.api = api;
    this.traffic = traffic;
    this.rateHz = rateHz;
    this.pollMs = pollIntervalS * 1000;
    this.onStatus = onStatus;
    this.mode = "idle";
    this.area = [-180, -85, 180, 85]; // what we asked for
    this.wanted = this.area; // what the view needs
    this.ws = null;
    this.timers = new Set();
    this.stopped = false;
    this.pollBusy = false;
    this.wsFailures = 0;
    this.resubscribeTimer = null;
  }

  later(ms, fn) {
    const id = setTimeout(() => {
      this.timers.delete(id);
      if (!this.stopped) fn();
    }, ms);
    this.timers.add(id);
    return id;
  }

  /** The view shows `view` (degrees); ask for `area` (a margin around it) when it left ours. */
  setArea(view, area) {
    this.wanted = area;
    if (this.mode === "idle") return;
    const tooBig = (this.area[2] - this.area[0]) > 8 * Math.max(area[2] - area[0], 1e-6);
    if (contains(this.area, view) && !tooBig) return;
    if (this.resubscribeTimer !== null) {
      clearTimeout(this.resubscribeTimer);
      this.timers.delete(this.resubscribeTimer);
    }
    this.resubscribeTimer = this.later(RESUBSCRIBE_DELAY_MS, () => {
      this.resubscribeTimer = null;
      this.resubscribe();
    });
  }

  async start(area) {
    this.area = this.wanted = area;
    this.traffic.retain((ac) => inside(area, ac.lon, ac.lat) || this.keep(ac));
    if (await this.wsAvailable()) {
      this.openSocket();
    } else {
      this.startPolling();
      this.later(PROBE_EVERY_MS, () => this.retrySocket());
    }
  }

  stop() {
    this.stopped = true;
    for (const id of this.timers) clearTimeout(id);
    this.timers.clear();
    if (this.ws) this.ws.close(1000);
    this.ws = null;
    this.mode = "idle";
  }

  async wsAvailable() {
    const status = await this.api.status(WS_PATH, { bbox: fixed(this.area) });
    return status !== 404 && status !== 0;
  }

  resubscribe() {
    this.area = this.wanted;
    const area = this.area;
    // Aircraft outside the new area will get no "gone" from the new subscription.
    this.traffic.retain((ac) => inside(area, ac.lon, ac.lat) || this.keep(ac));
    if (this.mode === "ws") {
      this.closeSocket();
      this.openSocket();
    }
  }

  // WebSocket

  openSocket() {
    const url = this.api.streamUrl(WS_PATH, { bbox: fixed(this.area), rate_hz: this.rateHz }, true);
    const ws = new WebSocket(url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsFailures = 0;
      this.mode = "ws";
      this.stopPolling();
      this.onStatus("ws", "live (WebSocket)");
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      this.traffic.apply(message);
    };
    ws.onclose = () => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      this.wsFailures = opened ? 1 : this.wsFailures + 1;
      // Poll while the socket is away, and try it again with a growing pause.
      this.startPolling();
      this.later(Math.min(30_000, 1000 * 2 ** (this.wsFailures - 1)), () => this.retrySocket());
    };
  }

  closeSocket() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
  }

  async retrySocket() {
    if (this.ws) return;
    if (await this.wsAvailable()) this.openSocket();
    else this.later(PROBE_EVERY_MS, () => this.retrySocket());
  }

  // Polling GET /v1/uavs

  startPolling() {
    if (this.mode === "poll") return;
    this.mode = "poll";
    this.onStatus("poll", "polling /v1/uavs");
    this.pollOnce();
  }

  stopPolling() {
    if (this.mode === "poll") this.mode = "idle";
  }

  async pollOnce() {
    if (this.mode !== "poll" || this.pollBusy) return;
    this.pollBusy = true;
    const started = performance.now();
    const area = this.area;
    try {
      const body = await this.api.get("/v1/uavs", { bbox: fixed(area) });
      if (this.mode === "poll") {
        // A snapshot of the area: whatever it does not list has left it.
        const seen = new Set();
        for (const row of body.uavs) seen.add(row.uav);
        this.traffic.retain((ac) => seen.has(ac.uav) || !inside(area, ac.lon, ac.lat));
        this.traffic.apply(body.uavs);
        this.onStatus("poll", "polling /v1/uavs");
      }
    } catch (error) {
      this.onStatus("error", `aircraft: ${error.message}`);
    } finally {
      this.pollBusy = false;
    }
    const wait = Math.max(0, this.pollMs - (performance.now() - started));
    if (this.mode === "poll") this.later(wait, () => this.pollOnce());
  }
}
