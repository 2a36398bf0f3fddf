// The details panel of the selected aircraft: its live state and its open alerts.

import { escapeHtml } from "./alerts.js";

const fmt = (v, digits = 0, unit = "") =>
  (v === null || v === undefined || !Number.isFinite(v) ? "—" : `${v.toFixed(digits)}${unit}`);

export class Details {
  constructor(root, onClose) {
    this.root = root;
    this.title = root.querySelector("#details-uav");
    this.fields = root.querySelector("#details-fields");
    this.alerts = root.querySelector("#details-alerts");
    root.querySelector("#details-close").addEventListener("click", onClose);
  }

  show(uav) {
    this.title.textContent = uav;
    this.root.hidden = false;
  }

  hide() {
    this.root.hidden = true;
    this.title.textContent = "";
  }

  /**
   * ac: the live aircraft or null; state: its colour state; alerts: its open alerts;
   * height: [metres above ground, estimated?]; nowS: the server's clock; trackPoints: shown.
   */
  update(ac, state, alerts, height, nowS, trackPoints) {
    const rows = [];
    if (ac) {
      const [agl, estimated] = height;
      rows.push(
        ["State", state],
        ["Kind", ac.kind === "crewed" ? "crewed aircraft" : "UAV"],
        ["Status", ac.status ?? "—"],
        ["Position", `${ac.lat.toFixed(5)}, ${ac.lon.toFixed(5)}`],
        ["Height", `${fmt(agl, 0, " m")} AGL${estimated ? " (from alt_m)" : ""}`],
        ["Altitude", `${fmt(ac.alt_m, 0, " m")} WGS84`],
        ["Speed", ac.speed_mps === null ? "—"
          : `${fmt(ac.speed_mps, 1, " m/s")} (${fmt(ac.speed_mps * 3.6, 0, " km/h")})`],
        ["Track", fmt(ac.track_deg, 0, "°")],
        ["Vertical", fmt(ac.vspeed_mps, 1, " m/s")],
        ["Last report", `${fmt(Math.max(0, nowS - ac.t), 1, " s")} ago`],
        ["Sources", ac.sources.length ? ac.sources.join(", ") : "—"],
        ["Track shown", `${trackPoints} ${trackPoints === 1 ? "point" : "points"}`],
      );
    } else {
      rows.push(["State", "no live position in view"]);
    }
    this.fields.innerHTML = rows
      .map(([k, v]) => `<dt>${escapeHtml(k)}</dt><dd>${escapeHtml(v)}</dd>`).join("");
    const me = this.title.textContent;
    this.alerts.innerHTML = alerts
      .map((a) => `<li class="${escapeHtml(a.severity)}">⚠ ${escapeHtml(a.type)}`
        + `${a.zone ? ` · zone ${escapeHtml(a.zone)}` : ""}`
        + `${a.other_uav ? ` · with ${escapeHtml(a.other_uav === me ? a.uav : a.other_uav)}` : ""}`
        + "</li>").join("");
  }
}
