// Zones (GET /v1/zones, GeoJSON) and clearance corridors (GET /v1/clearances), turned once
// into rings of world coordinates for drawing and hit testing.

import { worldX, worldY, EARTH_RADIUS_M } from "./view.js";

const CIRCLE_VERTICES = 96;

function ringToWorld(coords) {
  const ring = new Float64Array(coords.length * 2);
  coords.forEach(([lon, lat], i) => {
    ring[2 * i] = worldX(lon);
    ring[2 * i + 1] = worldY(lat);
  });
  return ring;
}

/** A circle as a ring: the points at radius_m from the centre (great-circle destinations). */
function circleRing(lon, lat, radiusM) {
  const ring = new Float64Array(CIRCLE_VERTICES * 2);
  const d = radiusM / EARTH_RADIUS_M;
  const phi1 = (lat * Math.PI) / 180;
  const lambda1 = (lon * Math.PI) / 180;
  for (let i = 0; i < CIRCLE_VERTICES; i++) {
    const theta = (2 * Math.PI * i) / CIRCLE_VERTICES;
    const phi2 = Math.asin(Math.sin(phi1) * Math.cos(d)
      + Math.cos(phi1) * Math.sin(d) * Math.cos(theta));
    const lambda2 = lambda1 + Math.atan2(Math.sin(theta) * Math.sin(d) * Math.cos(phi1),
      Math.cos(d) - Math.sin(phi1) * Math.sin(phi2));
    ring[2 * i] = worldX((lambda2 * 180) / Math.PI);
    ring[2 * i + 1] = worldY((phi2 * 180) / Math.PI);
  }
  return ring;
}

function boxOf(rings) {
  const box = [Infinity, Infinity, -Infinity, -Infinity];
  for (const ring of rings) {
    for (let i = 0; i < ring.length; i += 2) {
      box[0] = Math.min(box[0], ring[i]);
      box[1] = Math.min(box[1], ring[i + 1]);
      box[2] = Math.max(box[2], ring[i]);
      box[3] = Math.max(box[3], ring[i + 1]);
    }
  }
  return box;
}

/** Zones from a FeatureCollection; a feature that cannot be drawn is skipped. */
export function prepareZones(collection) {
  const zones = [];
  for (const feature of collection?.features ?? []) {
    const g = feature.geometry;
    const p = feature.properties ?? {};
    let rings = [];
    if (g?.type === "Polygon") rings = g.coordinates.map(ringToWorld);
    else if (g?.type === "MultiPolygon") rings = g.coordinates.flat().map(ringToWorld);
    else if (g?.type === "Point" && Number.isFinite(p.radius_m)) {
      rings = [circleRing(g.coordinates[0], g.coordinates[1], p.radius_m)];
    }
    if (!rings.length) continue;
    zones.push({
      id: p.id ?? feature.id, name: p.name ?? "", restriction: p.restriction ?? "advisory",
      lower_m: p.lower_m ?? 0, upper_m: p.upper_m ?? null, reference: p.reference ?? "agl",
      upper_reference: p.upper_reference ?? null, start: p.start ? Date.parse(p.start) : null,
      end: p.end ? Date.parse(p.end) : null, schedule: p.schedule ?? null,
      authorized: p.authorized ?? [], rings, box: boxOf(rings),
    });
  }
  // Draw the least restrictive first, so the most restrictive lies on top.
  const rank = { advisory: 0, conditional: 1, authorization_required: 2, prohibited: 3 };
  zones.sort((a, b) => (rank[a.restriction] ?? 0) - (rank[b.restriction] ?? 0));
  return zones;
}

export function zoneActive(zone, nowMs) {
  return (zone.start === null || nowMs >= zone.start) && (zone.end === null || nowMs < zone.end);
}

function ringContains(ring, x, y) {
  let inside = false;
  for (let i = 0, j = ring.length - 2; i < ring.length; j = i, i += 2) {
    const xi = ring[i], yi = ring[i + 1], xj = ring[j], yj = ring[j + 1];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** The zones whose area holds the world point (mx, my), most restrictive first. */
export function zonesAt(zones, mx, my) {
  const found = [];
  for (const z of zones) {
    if (mx < z.box[0] || mx > z.box[2] || my < z.box[1] || my > z.box[3]) continue;
    let inside = false;
    for (const ring of z.rings) if (ringContains(ring, mx, my)) inside = !inside; // even-odd
    if (inside) found.push(z);
  }
  return found.reverse();
}

const REF = { agl: "AGL", amsl: "AMSL", wgs84: "WGS84" };

/** "0–120 m AGL", "50 m AMSL – unlimited". */
export function bandText(zone) {
  const lower = `${Math.round(zone.lower_m)} m`;
  const upperRef = zone.upper_reference ?? zone.reference;
  if (zone.upper_m === null) return `${lower} ${REF[zone.reference] ?? zone.reference} – unlimited`;
  const upper = `${Math.round(zone.upper_m)} m`;
  if (upperRef === zone.reference) return `${lower}–${upper} ${REF[zone.reference] ?? zone.reference}`;
  return `${lower} ${REF[zone.reference]} – ${upper} ${REF[upperRef] ?? upperRef}`;
}

const DRAWN_CLEARANCES = new Set(["granted", "active", "suspended"]);

/**
 * Corridors from GET /v1/clearances: {"clearances": [...]} or a bare list; each needs a
 * GeoJSON LineString `route`. Only granted, active and suspended ones are kept.
 */
export function prepareClearances(body) {
  const items = Array.isArray(body) ? body : body?.clearances ?? body?.items ?? [];
  const corridors = [];
  for (const c of items) {
    const coords = c?.route?.type === "LineString" ? c.route.coordinates : null;
    if (!coords || coords.length < 2 || !DRAWN_CLEARANCES.has(c.state)) continue;
    corridors.push({
      id: c.id, uav: c.uav, state: c.state, corridor_m: Number(c.corridor_m) || 30,
      vertical_m: c.vertical_m ?? null, line: ringToWorld(coords),
      alts: coords.map((p) => (p.length > 2 ? p[2] : null)),
      valid_from: c.valid_from ?? null, valid_to: c.valid_to ?? null,
    });
  }
  return corridors;
}

/** The corridors whose centre line passes within their half-width of (mx, my). */
export function corridorsAt(corridors, mx, my, metresPerWorld) {
  const found = [];
  for (const c of corridors) {
    const limit = c.corridor_m / metresPerWorld;
    for (let i = 0; i + 3 < c.line.length; i += 2) {
      if (segmentDistance(mx, my, c.line[i], c.line[i + 1], c.line[i + 2], c.line[i + 3]) <= limit) {
        found.push(c);
        break;
      }
    }
  }
  return found;
}

function segmentDistance(px, py, ax, ay, bx, by) {
  const dx = bx - ax, dy = by - ay;
  const len2 = dx * dx + dy * dy;
  const f = len2 > 0 ? Math.max(0, Math.min(1, ((px - ax) * dx + (py - ay) * dy) / len2)) : 0;
  return Math.hypot(px - ax - f * dx, py - ay - f * dy);
}
