// The map view: Web Mercator (EPSG:3857), so raster XYZ tiles line up when configured.
// World coordinates mx, my run 0..1 west to east and north to south; at zoom z the world is
// TILE * 2^z pixels wide. Everything drawn is stored in world coordinates once, when it
// arrives, so a frame is only an affine transform away.

export const TILE = 256;
export const MAX_LAT = 85.0511287798;
export const EARTH_RADIUS_M = 6378137;
export const MIN_ZOOM = 1;
export const MAX_ZOOM = 20;

export function worldX(lon) {
  return (lon + 180) / 360;
}

export function worldY(lat) {
  const phi = (Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI) / 180;
  return (1 - Math.log(Math.tan(phi) + 1 / Math.cos(phi)) / Math.PI) / 2;
}

export function lonOf(mx) {
  return mx * 360 - 180;
}

export function latOf(my) {
  return (Math.atan(Math.sinh(Math.PI * (1 - 2 * my))) * 180) / Math.PI;
}

const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
const easeInOut = (f) => (f < 0.5 ? 2 * f * f : 1 - (-2 * f + 2) ** 2 / 2);

export class View {
  constructor() {
    this.cx = worldX(106.55); // Chongqing until the data says otherwise
    this.cy = worldY(29.6);
    this.zoom = 10;
    this.width = 1;
    this.height = 1;
    this.animation = null;
    this.moved = false; // the user has panned or zoomed: no more automatic fitting
  }

  get scale() {
    return TILE * 2 ** this.zoom;
  }

  resize(width, height) {
    this.width = Math.max(1, width);
    this.height = Math.max(1, height);
  }

  sx(mx) {
    return (mx - this.cx) * this.scale + this.width / 2;
  }

  sy(my) {
    return (my - this.cy) * this.scale + this.height / 2;
  }

  /** World coordinates under a screen point. */
  worldAt(x, y) {
    const s = this.scale;
    return [this.cx + (x - this.width / 2) / s, this.cy + (y - this.height / 2) / s];
  }

  /** The visible area in degrees: [west, south, east, north]. */
  bounds(marginFraction = 0) {
    const mw = (this.width / this.scale) * (0.5 + marginFraction);
    const mh = (this.height / this.scale) * (0.5 + marginFraction);
    return [
      clamp(lonOf(this.cx - mw), -180, 180),
      clamp(latOf(clamp(this.cy + mh, 0, 1)), -90, 90),
      clamp(lonOf(this.cx + mw), -180, 180),
      clamp(latOf(clamp(this.cy - mh, 0, 1)), -90, 90),
    ];
  }

  metresPerPixel() {
    const lat = (latOf(this.cy) * Math.PI) / 180;
    return (2 * Math.PI * EARTH_RADIUS_M * Math.cos(lat)) / this.scale;
  }

  set(cx, cy, zoom) {
    this.zoom = clamp(zoom, MIN_ZOOM, MAX_ZOOM);
    this.cx = clamp(cx, 0, 1);
    this.cy = clamp(cy, 0, 1);
  }

  panBy(dx, dy) {
    this.animation = null;
    this.moved = true;
    this.set(this.cx - dx / this.scale, this.cy - dy / this.scale, this.zoom);
  }

  /** Zoom by dz levels keeping the world point under (x, y) where it is. */
  zoomAt(x, y, dz) {
    this.animation = null;
    this.moved = true;
    const [mx, my] = this.worldAt(x, y);
    const zoom = clamp(this.zoom + dz, MIN_ZOOM, MAX_ZOOM);
    const s = TILE * 2 ** zoom;
    this.set(mx - (x - this.width / 2) / s, my - (y - this.height / 2) / s, zoom);
  }

  /** Show the world box [minX, minY, maxX, maxY] with padding (pixels) around it. */
  fit(box, padding = 40, maxZoom = 15) {
    const [x0, y0, x1, y1] = box;
    const w = Math.max(x1 - x0, 1e-9);
    const h = Math.max(y1 - y0, 1e-9);
    const zx = Math.log2((this.width - 2 * padding) / (w * TILE));
    const zy = Math.log2((this.height - 2 * padding) / (h * TILE));
    this.set((x0 + x1) / 2, (y0 + y1) / 2, Math.min(zx, zy, maxZoom));
  }

  /** Animate to (mx, my) at zoom over ms; `step(now)` advances it. */
  flyTo(mx, my, zoom, ms = 600) {
    this.moved = true;
    this.animation = {
      from: [this.cx, this.cy, this.zoom], to: [mx, my, clamp(zoom, MIN_ZOOM, MAX_ZOOM)],
      start: performance.now(), ms,
    };
  }

  /** Advance an animation; true while one is running. */
  step(now) {
    const a = this.animation;
    if (!a) return false;
    const f = Math.min(1, (now - a.start) / a.ms);
    const e = easeInOut(f);
    const zoom = a.from[2] + (a.to[2] - a.from[2]) * e;
    this.set(a.from[0] + (a.to[0] - a.from[0]) * e, a.from[1] + (a.to[1] - a.from[1]) * e, zoom);
    if (f >= 1) this.animation = null;
    return this.animation !== null;
  }
}
