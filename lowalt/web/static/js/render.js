// The canvas: base map (raster tiles when configured, else a plain background), graticule,
// zones, clearance corridors, the selected aircraft's track, aircraft, labels and a scale bar.
// invalidate() asks for a frame; however many changes arrive, at most one draw happens per
// animation frame. Aircraft are drawn in one path per colour, never one DOM node each.

import { zoneActive } from "./layers.js";

export const COLOURS = {
  background: "#0b1220",
  graticule: "rgba(132, 148, 178, 0.16)",
  graticuleText: "rgba(132, 148, 178, 0.75)",
  aircraft: ["#22d3ee", "#c084fc", "#94a3b8", "#ff4d4f"], // normal, crewed, lost, alerting
  outline: "rgba(3, 7, 18, 0.85)",
  zones: {
    prohibited: [239, 68, 68], authorization_required: [249, 115, 22],
    conditional: [234, 179, 8], advisory: [74, 222, 128],
  },
  corridor: [96, 165, 250],
  suspended: [148, 163, 184],
  track: "#fde047",
  selection: "#ffffff",
};
export const STATES = ["normal", "crewed", "lost", "alerting"];
const NORMAL = 0, CREWED = 1, LOST = 2, ALERTING = 3;
const LABEL_LIMIT = 400; // label every aircraft in view only when there are at most this many
const ID_LABEL_LIMIT = 150;
const CROWDED_LABELS = 60; // past LABEL_LIMIT only the selected and alerting are labelled, this many
const GRATICULE_STEPS = [30, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002,
  0.001, 0.0005];
const TILE_CACHE = 512;
// Aircraft go into paths of this many: one path of thousands of small shapes rasterises far
// slower (over 100 ms for 5,000 in software) than many short ones (about 10 ms).
const PATH_CHUNK = 32;

const rgba = ([r, g, b], a) => `rgba(${r}, ${g}, ${b}, ${a})`;

export class Renderer {
  /**
   * model: { traffic, book, zones(), corridors(), selected(), track() -> [{mx, my}], hover(),
   *          now() (server clock, s), heightOf(ac) -> [metres, estimated], config,
   *          afterFrame() }
   */
  constructor(canvas, view, model) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.view = view;
    this.model = model;
    this.pending = false;
    this.frames = 0;
    this.drawMs = [];
    this.inView = 0;
    this.tiles = new Map();
    this.tilesDrawn = 0;
    this.capacity = 0;
    this.ensure(1024);
    this.frame = this.frame.bind(this);
  }

  ensure(n) {
    if (n <= this.capacity) return;
    this.capacity = Math.max(n, this.capacity * 2);
    this.xs = new Float32Array(this.capacity);
    this.ys = new Float32Array(this.capacity);
    this.states = new Uint8Array(this.capacity);
    this.refs = new Array(this.capacity);
  }

  invalidate() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(this.frame);
  }

  frame(now) {
    this.pending = false;
    const animating = this.view.step(now);
    this.draw();
    if (animating) this.invalidate();
    this.model.afterFrame?.();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const { clientWidth: w, clientHeight: h } = this.canvas;
    this.canvas.width = Math.round(w * dpr);
    this.canvas.height = Math.round(h * dpr);
    this.dpr = dpr;
    this.view.resize(w, h);
    this.invalidate();
  }

  /** The state index (NORMAL, CREWED, LOST, ALERTING) of an aircraft, or -1 to hide it. */
  classify(ac, nowS) {
    const { lost_after_s: lostS = 5, hide_after_s: hideS = 300 } = this.model.config;
    const age = nowS - ac.t;
    if (age > hideS) return -1;
    const alert = this.model.book.stateOf(ac.uav);
    if (alert === "alerting" || ac.status === "emergency") return ALERTING;
    if (alert === "lost" || age > lostS || ac.status === "lost_link") return LOST;
    return ac.kind === "crewed" ? CREWED : NORMAL;
  }

  stateName(ac) {
    const i = this.classify(ac, this.model.now());
    return i < 0 ? "gone" : STATES[i];
  }

  draw() {
    const started = performance.now();
    const { ctx, view } = this;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = COLOURS.background;
    ctx.fillRect(0, 0, view.width, view.height);
    if (this.model.config.tile_url) this.drawTiles();
    this.drawGraticule();
    this.drawZones();
    this.drawCorridors();
    this.drawTrack();
    this.drawAircraft();
    this.drawScale();
    this.frames++;
    this.drawMs.push(performance.now() - started);
    if (this.drawMs.length > 120) this.drawMs.shift();
  }

  // Base map

  tile(z, x, y) {
    const key = `${z}/${x}/${y}`;
    let img = this.tiles.get(key);
    if (img) {
      this.tiles.delete(key); // most recently used last
      this.tiles.set(key, img);
      return img;
    }
    img = new Image();
    img.decoding = "async";
    img.onload = () => this.invalidate();
    img.src = this.model.config.tile_url.replace("{z}", z).replace("{x}", x).replace("{y}", y)
      .replace("{s}", "abc"[(x + y) % 3]).replace("{r}", "");
    this.tiles.set(key, img);
    while (this.tiles.size > TILE_CACHE) this.tiles.delete(this.tiles.keys().next().value);
    return img;
  }

  drawTiles() {
    const { ctx, view } = this;
    const z = Math.max(0, Math.min(19, Math.round(view.zoom)));
    const n = 2 ** z;
    const size = view.scale / n;
    const [x0, y0] = view.worldAt(0, 0);
    const [x1, y1] = view.worldAt(view.width, view.height);
    ctx.globalAlpha = 0.8;
    this.tilesDrawn = 0;
    for (let ty = Math.max(0, Math.floor(y0 * n)); ty <= Math.min(n - 1, Math.floor(y1 * n)); ty++) {
      for (let tx = Math.floor(x0 * n); tx <= Math.floor(x1 * n); tx++) {
        const img = this.tile(z, ((tx % n) + n) % n, ty);
        if (img.complete && img.naturalWidth > 0) {
          ctx.drawImage(img, view.sx(tx / n), view.sy(ty / n), size + 0.5, size + 0.5);
          this.tilesDrawn++;
        }
      }
    }
    ctx.globalAlpha = 1;
  }

  drawGraticule() {
    const { ctx, view } = this;
    const [west, south, east, north] = view.bounds();
    const degPerPx = 360 / view.scale;
    const step = GRATICULE_STEPS.find((s) => s / degPerPx < 160) ?? 0.0005;
    const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
    ctx.strokeStyle = COLOURS.graticule;
    ctx.lineWidth = 1;
    ctx.beginPath();
    const lons = [], lats = [];
    for (let lon = Math.ceil(west / step) * step; lon <= east; lon += step) {
      const x = Math.round(view.sx((lon + 180) / 360)) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, view.height);
      lons.push([x, lon]);
    }
    for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
      const phi = (lat * Math.PI) / 180;
      const my = (1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2;
      const y = Math.round(view.sy(my)) + 0.5;
      ctx.moveTo(0, y);
      ctx.lineTo(view.width, y);
      lats.push([y, lat]);
    }
    ctx.stroke();
    ctx.fillStyle = COLOURS.graticuleText;
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "top";
    const deg = (v, pos, neg) => `${Math.abs(v).toFixed(decimals)}°${v >= 0 ? pos : neg}`;
    for (const [x, lon] of lons) ctx.fillText(deg(lon, "E", "W"), x + 3, 3);
    ctx.textBaseline = "bottom";
    for (const [y, lat] of lats) ctx.fillText(deg(lat, "N", "S"), 3, y - 2);
  }

  // Zones and corridors

  tracePath(flat, close) {
    const { ctx, view } = this;
    const s = view.scale, ox = view.width / 2 - view.cx * s, oy = view.height / 2 - view.cy * s;
    ctx.moveTo(flat[0] * s + ox, flat[1] * s + oy);
    for (let i = 2; i < flat.length; i += 2) ctx.lineTo(flat[i] * s + ox, flat[i + 1] * s + oy);
    if (close) ctx.closePath();
  }

  visibleBox(box) {
    const { view } = this;
    const [x0, y0] = view.worldAt(0, 0);
    const [x1, y1] = view.worldAt(view.width, view.height);
    return box[2] >= x0 && box[0] <= x1 && box[3] >= y0 && box[1] <= y1;
  }

  drawZones() {
    const { ctx, view } = this;
    const nowMs = this.model.now() * 1000;
    const hover = new Set(this.model.hover());
    const labels = [];
    for (const zone of this.model.zones()) {
      if (!this.visibleBox(zone.box)) continue;
      const colour = COLOURS.zones[zone.restriction] ?? COLOURS.zones.advisory;
      const active = zoneActive(zone, nowMs);
      ctx.beginPath();
      for (const ring of zone.rings) this.tracePath(ring, true);
      ctx.fillStyle = rgba(colour, active ? (hover.has(zone) ? 0.3 : 0.16) : 0.05);
      ctx.fill("evenodd");
      ctx.setLineDash(active ? [] : [6, 4]);
      ctx.lineWidth = hover.has(zone) ? 2.5 : 1.5;
      ctx.strokeStyle = rgba(colour, active ? 0.9 : 0.5);
      ctx.stroke();
      ctx.setLineDash([]);
      const w = (zone.box[2] - zone.box[0]) * view.scale;
      if (w > 90 && zone.name) labels.push([zone, colour]);
    }
    ctx.font = "600 11px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const [zone, colour] of labels) {
      const x = view.sx((zone.box[0] + zone.box[2]) / 2);
      const y = view.sy((zone.box[1] + zone.box[3]) / 2);
      ctx.fillStyle = rgba(colour, 0.85);
      ctx.fillText(zone.name, x, y);
    }
    ctx.textAlign = "start";
  }

  drawCorridors() {
    const { ctx, view } = this;
    const mpp = view.metresPerPixel();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const c of this.model.corridors()) {
      const colour = c.state === "suspended" ? COLOURS.suspended : COLOURS.corridor;
      ctx.beginPath();
      this.tracePath(c.line, false);
      ctx.lineWidth = Math.max(3, (2 * c.corridor_m) / mpp);
      ctx.strokeStyle = rgba(colour, 0.22);
      ctx.stroke();
      ctx.lineWidth = 1.25;
      ctx.setLineDash(c.state === "active" ? [] : [5, 4]);
      ctx.strokeStyle = rgba(colour, 0.9);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.lineCap = "butt";
  }

  drawTrack() {
    const track = this.model.track();
    if (!track.length) return;
    const { ctx, view } = this;
    ctx.beginPath();
    ctx.moveTo(view.sx(track[0].mx), view.sy(track[0].my));
    for (const p of track) ctx.lineTo(view.sx(p.mx), view.sy(p.my));
    const ac = this.model.selected();
    if (ac) ctx.lineTo(view.sx(ac.mx), view.sy(ac.my));
    ctx.strokeStyle = COLOURS.track;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
    if (view.zoom >= 14) {
      ctx.fillStyle = COLOURS.track;
      ctx.beginPath();
      for (const p of track) {
        ctx.moveTo(view.sx(p.mx) + 2, view.sy(p.my));
        ctx.arc(view.sx(p.mx), view.sy(p.my), 2, 0, 2 * Math.PI);
      }
      ctx.fill();
    }
  }

  // Aircraft

  drawAircraft() {
    const { ctx, view } = this;
    const traffic = this.model.traffic;
    this.ensure(traffic.size);
    const { xs, ys, states, refs } = this;
    const s = view.scale, ox = view.width / 2 - view.cx * s, oy = view.height / 2 - view.cy * s;
    const w = view.width + 20, h = view.height + 20;
    const nowS = this.model.now();
    let n = 0;
    for (const ac of traffic.byId.values()) {
      const x = ac.mx * s + ox, y = ac.my * s + oy;
      if (x < -20 || x > w || y < -20 || y > h) continue;
      const state = this.classify(ac, nowS);
      if (state < 0) continue;
      xs[n] = x;
      ys[n] = y;
      states[n] = state;
      refs[n] = ac;
      n++;
    }
    this.inView = n;
    const size = view.zoom < 9 ? 5 : view.zoom < 12 ? 6.5 : 8;
    ctx.lineWidth = 1;
    ctx.strokeStyle = COLOURS.outline;
    for (let state = 0; state < STATES.length; state++) {
      ctx.fillStyle = COLOURS.aircraft[state];
      let inPath = 0;
      ctx.beginPath();
      for (let i = 0; i < n; i++) {
        if (states[i] !== state) continue;
        const ac = refs[i];
        const r = ac.kind === "crewed" ? size * 1.35 : size;
        if (ac.track_deg === null || ac.status === "ground") {
          ctx.moveTo(xs[i] + r * 0.45, ys[i]);
          ctx.arc(xs[i], ys[i], r * 0.45, 0, 2 * Math.PI);
        } else {
          const a = (ac.track_deg * Math.PI) / 180;
          const sin = Math.sin(a), cos = Math.cos(a);
          // A dart pointing along the track: nose, right wing, notch, left wing.
          ctx.moveTo(xs[i] + sin * r, ys[i] - cos * r);
          ctx.lineTo(xs[i] + (-sin * 0.7 + cos * 0.6) * r, ys[i] + (cos * 0.7 + sin * 0.6) * r);
          ctx.lineTo(xs[i] - sin * 0.35 * r, ys[i] + cos * 0.35 * r);
          ctx.lineTo(xs[i] + (-sin * 0.7 - cos * 0.6) * r, ys[i] + (cos * 0.7 - sin * 0.6) * r);
          ctx.closePath();
        }
        if (++inPath === PATH_CHUNK) {
          ctx.fill();
          ctx.stroke();
          ctx.beginPath();
          inPath = 0;
        }
      }
      if (inPath) {
        ctx.fill();
        ctx.stroke();
      }
    }
    this.drawLabels(n, size);
    const selected = this.model.selected();
    if (selected) {
      ctx.beginPath();
      ctx.arc(view.sx(selected.mx), view.sy(selected.my), size + 7, 0, 2 * Math.PI);
      ctx.strokeStyle = COLOURS.selection;
      ctx.lineWidth = 2;
      ctx.stroke();
    }
  }

  drawLabels(n, size) {
    const { ctx, xs, ys, states, refs } = this;
    const all = n <= LABEL_LIMIT || this.view.zoom >= 15;
    const ids = n <= ID_LABEL_LIMIT || this.view.zoom >= 16;
    const selected = this.model.selected();
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.lineWidth = 3;
    ctx.lineJoin = "round";
    ctx.strokeStyle = "rgba(3, 7, 18, 0.9)";
    const label = (i, withId) => {
      const ac = refs[i];
      const [metres, estimated] = this.model.heightOf(ac);
      const alt = `${estimated ? "~" : ""}${Math.round(metres)}m`;
      const x = xs[i] + size + 4;
      const lines = withId ? [[ac.uav, ys[i] - 6], [alt, ys[i] + 6]] : [[alt, ys[i]]];
      ctx.fillStyle = COLOURS.aircraft[states[i]];
      for (const [text, y] of lines) {
        ctx.strokeText(text, x, y);
        ctx.fillText(text, x, y);
      }
    };
    let drawn = 0;
    let selectedAt = -1;
    const most = all ? LABEL_LIMIT : CROWDED_LABELS;
    for (let i = 0; i < n; i++) {
      const ac = refs[i];
      if (ac === selected) {
        selectedAt = i;
      } else if (drawn < most && (states[i] === ALERTING
                 || (all && (ac.status !== "ground" || this.view.zoom >= 15)))) {
        label(i, ids || states[i] === ALERTING);
        drawn++;
      }
    }
    if (selectedAt >= 0) label(selectedAt, true); // always, and on top
  }

  // Overlay

  drawScale() {
    const { ctx, view } = this;
    const mpp = view.metresPerPixel();
    const maxM = mpp * 120;
    const pow = 10 ** Math.floor(Math.log10(maxM));
    const metres = [5, 2, 1].map((k) => k * pow).find((m) => m <= maxM) ?? pow;
    const px = metres / mpp;
    const x = 14, y = view.height - 18;
    ctx.strokeStyle = "rgba(3, 7, 18, 0.9)";
    ctx.lineWidth = 4;
    const bar = () => {
      ctx.beginPath();
      ctx.moveTo(x, y - 6);
      ctx.lineTo(x, y);
      ctx.lineTo(x + px, y);
      ctx.lineTo(x + px, y - 6);
      ctx.stroke();
    };
    bar();
    ctx.strokeStyle = "#dbe4f3";
    ctx.lineWidth = 1.5;
    bar();
    const label = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    ctx.fillStyle = "#dbe4f3";
    ctx.fillText(label, x + 4, y - 3);
    if (this.model.config.tile_url) {
      ctx.fillStyle = "rgba(219, 228, 243, 0.6)";
      ctx.font = "10px system-ui, sans-serif";
      const host = tileHost(this.model.config.tile_url);
      ctx.fillText(`base map: ${host}`, x, y - 20);
    }
  }

  /** The aircraft drawn nearest to screen point (x, y), within `radius` pixels. */
  pick(x, y, radius = 12) {
    let best = null, bestD = radius * radius;
    for (let i = 0; i < this.inView; i++) {
      const d = (this.xs[i] - x) ** 2 + (this.ys[i] - y) ** 2;
      if (d <= bestD) {
        bestD = d;
        best = this.refs[i];
      }
    }
    return best;
  }

  frameStats() {
    const sorted = [...this.drawMs].sort((a, b) => a - b);
    const q = (f) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(f * sorted.length))] : 0);
    return { frames: this.frames, median_ms: q(0.5), p95_ms: q(0.95), max_ms: q(1) };
  }
}

function tileHost(url) {
  try {
    return new URL(url.replace(/\{[a-z]\}/g, "0"), location.origin).host;
  } catch {
    return url;
  }
}
