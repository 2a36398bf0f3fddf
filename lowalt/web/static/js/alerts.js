// Alerts: which are open (to colour aircraft), the SSE stream that feeds them, and the panel
// that lists them newest first. Panel changes are queued and written once per animation frame.

const KNOWN_TYPES = [
  "geofence_breach", "geofence_approach", "altitude_limit", "separation_loss",
  "conflict_predicted", "off_route", "clearance_violation", "telemetry_lost", "unregistered_uav",
  "implausible_motion", "emergency", "position_mismatch", "clearance_suspended",
];
const PANEL_ROWS = 200;
const QUIET_TYPES = new Set(["unregistered_uav"]); // listed, but do not colour the aircraft

/** The open alerts, by alert_id and by the aircraft they concern. */
export class AlertBook {
  constructor() {
    this.open = new Map(); // alert_id -> newest event
    this.byUav = new Map(); // uav -> Set(alert_id)
    this.resolved = new Set(); // ids seen resolved on the stream (a later snapshot is older)
    this.version = 0;
  }

  apply(event) {
    const id = event.alert_id;
    this.forget(id);
    if (event.state === "resolved") {
      this.resolved.add(id);
    } else {
      this.open.set(id, event);
      for (const uav of [event.uav, event.other_uav]) {
        if (!uav) continue;
        if (!this.byUav.has(uav)) this.byUav.set(uav, new Set());
        this.byUav.get(uav).add(id);
      }
    }
    this.version++;
  }

  /** GET /v1/alerts/open, taken after the stream was opened: fills in what it has not said. */
  loadSnapshot(alerts) {
    for (const alert of alerts) {
      if (!this.open.has(alert.alert_id) && !this.resolved.has(alert.alert_id)) this.apply(alert);
    }
  }

  forget(id) {
    const old = this.open.get(id);
    if (!old) return;
    this.open.delete(id);
    for (const uav of [old.uav, old.other_uav]) {
      const ids = uav && this.byUav.get(uav);
      if (!ids) continue;
      ids.delete(id);
      if (ids.size === 0) this.byUav.delete(uav);
    }
  }

  /** The open alerts about uav, most recent first. */
  about(uav) {
    const ids = this.byUav.get(uav);
    if (!ids) return [];
    return [...ids].map((id) => this.open.get(id)).sort((a, b) => b.t - a.t);
  }

  /**
   * How uav's open alerts colour it: "alerting" for any airspace alert, "lost" when lost
   * telemetry is all there is, null otherwise. `unregistered_uav` is about paperwork, not the
   * airspace: it is listed (panel, details) but does not colour the aircraft.
   */
  stateOf(uav) {
    const ids = this.byUav.get(uav);
    if (!ids) return null;
    let lost = false;
    for (const id of ids) {
      const type = this.open.get(id).type;
      if (type === "telemetry_lost") lost = true;
      else if (!QUIET_TYPES.has(type)) return "alerting";
    }
    return lost ? "lost" : null;
  }
}

/**
 * GET /v1/alerts/stream as an EventSource. The browser resumes with Last-Event-ID by itself;
 * when the server refuses the stream outright (the source closes), it is reopened with
 * ?since=<last seq> after a pause, so nothing is lost either way.
 */
export class AlertStream {
  constructor(api, types, { onEvent, onOpen = () => {}, onStatus = () => {} }) {
    this.api = api;
    this.types = [...new Set([...KNOWN_TYPES, ...(types || [])])];
    this.onEvent = onEvent;
    this.onOpen = onOpen;
    this.onStatus = onStatus;
    this.lastSeq = null;
    this.source = null;
    this.retry = null;
    this.stopped = false;
  }

  start() {
    const params = this.lastSeq === null ? {} : { since: this.lastSeq };
    const source = new EventSource(this.api.streamUrl("/v1/alerts/stream", params));
    this.source = source;
    const handle = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      if (typeof event.seq === "number") this.lastSeq = event.seq;
      this.onEvent(event);
    };
    for (const type of this.types) source.addEventListener(type, handle);
    source.onmessage = handle; // an event without a type, should the server ever send one
    source.onopen = () => {
      this.onStatus("ok", "alerts: live");
      this.onOpen();
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && !this.stopped) {
        this.onStatus("bad", "alerts: reconnecting");
        this.retry = setTimeout(() => this.start(), 3000);
      } else {
        this.onStatus("warn", "alerts: reconnecting");
      }
    };
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retry);
    if (this.source) this.source.close();
  }
}

const two = (n) => String(n).padStart(2, "0");
function clock(t) {
  const d = new Date(t * 1000);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

const whenOf = (event) => event.raised_at ?? event.opened_at ?? event.t;
const olderFirst = (a, b) =>
  (a.seq !== undefined && b.seq !== undefined ? a.seq - b.seq : whenOf(a) - whenOf(b));

function describe(event) {
  const parts = [];
  const b = (text) => `<b>${escapeHtml(text)}</b>`;
  parts.push(b(event.uav));
  if (event.other_uav) parts.push(`× ${b(event.other_uav)}`);
  if (event.zone) parts.push(`zone ${b(event.zone)}`);
  if (event.clearance) parts.push(`clearance ${b(String(event.clearance))}`);
  if (Number.isFinite(event.alt_m)) parts.push(`${Math.round(event.alt_m)} m`);
  return parts.join(" ");
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The alert list: one row per alert, moved to the top whenever it changes. */
export class AlertPanel {
  constructor(list, counter, onPick) {
    this.list = list;
    this.counter = counter;
    this.rows = new Map(); // alert_id -> <li>
    this.pending = new Map(); // alert_id -> newest event not yet shown
    this.scheduled = false;
    this.selectedUav = null;
    list.addEventListener("click", (e) => {
      const row = e.target.closest("li[data-alert]");
      if (row) onPick(this.events.get(Number(row.dataset.alert)));
    });
    this.events = new Map(); // alert_id -> newest event shown
  }

  push(event) {
    this.pending.set(event.alert_id, event);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    const fresh = [...this.pending.values()].sort(olderFirst);
    this.pending.clear();
    for (const event of fresh) {
      let row = this.rows.get(event.alert_id);
      if (!row) {
        row = document.createElement("li");
        row.dataset.alert = String(event.alert_id);
        this.rows.set(event.alert_id, row);
      }
      this.events.set(event.alert_id, event);
      row.className = `${event.severity} ${event.state}`
        + (event.uav === this.selectedUav ? " selected" : "");
      row.dataset.type = event.type;
      row.dataset.uav = event.uav;
      row.dataset.state = event.state;
      const when = whenOf(event);
      row.innerHTML = `<span class="sev"></span><span class="type">${escapeHtml(event.type)}`
        + `</span><span class="when">${clock(when)}</span>`
        + `<span class="what">${describe(event)}</span>`;
      row.title = `${event.severity} · ${event.state} · alert ${event.alert_id}`;
      this.list.prepend(row); // newest first
    }
    while (this.rows.size > PANEL_ROWS) {
      const last = this.list.lastElementChild;
      const id = Number(last.dataset.alert);
      last.remove();
      this.rows.delete(id);
      this.events.delete(id);
    }
  }

  setOpenCount(n) {
    const text = `${n} open`;
    if (this.counter.textContent !== text) this.counter.textContent = text;
  }

  select(uav) {
    this.selectedUav = uav;
    for (const [id, row] of this.rows) {
      row.classList.toggle("selected", this.events.get(id)?.uav === uav);
    }
  }
}
