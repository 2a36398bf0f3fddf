"""Alerts: conditions in, durable alert events out (API.md section 4).

Check stages describe what is true now as `Condition`s; `AlertManager` turns them into alerts with
the lifecycle open -> updated* -> resolved, one open alert per `Condition.key`, `updated` events
throttled to one per `update_min_s` of observation time (a severity change always goes out) and
resolution delayed until the condition has been absent for `clear_s` of observation time, so a UAV
hovering on a boundary does not flap.

Every change is an `AlertEvent`. Events go to ONE writer task, which takes whatever is waiting
(after a group-commit window of a few ms), numbers it with the next `seq`s and commits it in one
transaction. Numbering and committing in one task makes seq order commit order: no reader can see
seq n+1 before n. Committed events then go to the `Broadcaster`, which wakes the feeds. Events of
`URGENT_TYPES` (emergencies) wait in a lane of their own that the writer empties first and without
the group-commit delay, so an emergency is never queued behind a batch of lesser events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lowalt.metrics import Metrics

if TYPE_CHECKING:
    from dispatch.store import AlertStore

log = logging.getLogger("lowalt.alerts")

ALERT_TYPES = frozenset({
    "geofence_breach", "geofence_approach", "altitude_limit", "separation_loss",
    "conflict_predicted", "off_route", "clearance_violation", "telemetry_lost",
    "unregistered_uav", "implausible_motion", "emergency", "position_mismatch",
    "clearance_suspended",
})
# Severity order: higher is more urgent ("emergency first" sorts on this).
SEVERITY_RANK: Mapping[str, int] = {"info": 0, "warning": 1, "critical": 2}
# Committed ahead of the waiting group and without its delay; listed first among open alerts.
URGENT_TYPES = frozenset({"emergency"})
EVENT_STATES = frozenset({"open", "updated", "resolved"})
AlertKey = tuple[str, str, str]


@dataclass(frozen=True)
class Condition:
    """Something true right now about a UAV (or a pair of UAVs), as a check stage sees it."""

    type: str  # one of ALERT_TYPES
    uav: str
    severity: str  # "info" | "warning" | "critical"
    t: float  # observation (or tick) time it holds at, Unix s
    lat: float
    lon: float
    alt_m: float
    zone: str | None = None
    other_uav: str | None = None
    clearance: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> AlertKey:
        return (self.type, self.uav, self.zone or self.other_uav or self.clearance or "")


def _jsonable(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays, sets and tuples, anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def encode_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_jsonable, allow_nan=False)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One change of one alert; `body` is its JSON text (API.md section 4) once seq is known."""

    seq: int
    alert_id: int
    state: str  # open | updated | resolved
    type: str
    severity: str
    uav: str
    other_uav: str | None
    zone: str | None
    clearance: str | None
    t: float
    raised_at: float  # server time the change was made, Unix s
    lat: float
    lon: float
    alt_m: float
    detail: Mapping[str, Any]
    body: str = ""

    @property
    def key(self) -> AlertKey:
        return (self.type, self.uav, self.zone or self.other_uav or self.clearance or "")

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "alert_id": self.alert_id, "state": self.state, "type": self.type,
            "severity": self.severity, "uav": self.uav, "other_uav": self.other_uav,
            "zone": self.zone, "clearance": self.clearance, "t": self.t,
            "raised_at": self.raised_at, "lat": self.lat, "lon": self.lon, "alt_m": self.alt_m,
            "detail": dict(self.detail),
        }

    def numbered(self, seq: int) -> AlertEvent:
        numbered = dataclasses.replace(self, seq=seq)
        return dataclasses.replace(numbered, body=encode_json(numbered.as_json()))

    @classmethod
    def from_body(cls, body: str) -> AlertEvent:
        d = json.loads(body)
        return cls(
            int(d["seq"]), int(d["alert_id"]), d["state"], d["type"], d["severity"], d["uav"],
            d["other_uav"], d["zone"], d["clearance"], float(d["t"]), float(d["raised_at"]),
            float(d["lat"]), float(d["lon"]), float(d["alt_m"]), d["detail"], body,
        )

    def condition(self) -> Condition:
        return Condition(
            self.type, self.uav, self.severity, self.t, self.lat, self.lon, self.alt_m,
            self.zone, self.other_uav, self.clearance, self.detail,
        )


class Subscriber:
    """One feed client's bounded buffer of live events.

    When a publish would take it past `limit` events, the buffer is dropped and `overflowed` set:
    the client is told to resume from storage, and memory stays bounded.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.overflowed = False
        self.closed = False
        self._buf: deque[AlertEvent] = deque()
        self._wake = asyncio.Event()

    def push(self, events: Sequence[AlertEvent]) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._buf) + len(events) > self.limit:
            self.overflowed = True
            self._buf.clear()
        else:
            self._buf.extend(events)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self, timeout_s: float | None) -> list[AlertEvent]:
        """What is buffered, waiting up to timeout_s for something; [] on timeout."""
        if not self._buf and not self.overflowed and not self.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        events = list(self._buf)
        self._buf.clear()
        return events


class Broadcaster:
    """Fan-out of committed events to live feed clients; `head` is the last committed seq."""

    def __init__(self) -> None:
        self.head = 0
        self.closed = False
        self._subscribers: set[Subscriber] = set()
        self._tick = asyncio.Event()

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, limit: int) -> Subscriber:
        sub = Subscriber(limit)
        if self.closed:
            sub.close()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, events: Sequence[AlertEvent]) -> None:
        if not events:
            return
        self.head = events[-1].seq
        for sub in self._subscribers:
            sub.push(events)
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def wait_beyond(self, seq: int, timeout_s: float) -> None:
        """Return once an event after seq is committed, on close, or after timeout_s."""
        if self.head > seq or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tick.wait(), timeout_s)

    def close(self) -> None:
        self.closed = True
        for sub in self._subscribers:
            sub.close()
        self._tick.set()


@dataclass
class _OpenAlert:
    alert_id: int
    opened_at: float  # raised_at of its open event
    emitted: Condition  # what its last event said
    latest: Condition  # the newest condition seen (may be newer than emitted: throttled)
    absent_since: float | None = None  # evaluation t at which its condition was first missing


class AlertManager:
    """Keeps the open alerts and turns conditions into events; see the module docstring."""

    def __init__(
        self,
        store: AlertStore,
        broadcaster: Broadcaster,
        *,
        clear_s: float = 3.0,
        update_min_s: float = 1.0,
        commit_delay_s: float = 0.002,
        max_pending_events: int = 100_000,
        max_batch_events: int = 2_000,
        retry_delay_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        self.store, self.broadcaster = store, broadcaster
        self.clear_s, self.update_min_s = clear_s, update_min_s
        self.commit_delay_s = commit_delay_s
        self.max_pending_events = max_pending_events
        self.max_batch_events = max_batch_events
        self.retry_delay_s = retry_delay_s
        self.metrics = metrics or Metrics()
        self._open: dict[AlertKey, _OpenAlert] = {}
        self._keys_of_uav: dict[str, set[AlertKey]] = {}  # uav (or other_uav) -> open keys
        self._alert_id = 0
        self._seq = 0
        self._queue: deque[AlertEvent] = deque()
        self._urgent: deque[AlertEvent] = deque()  # URGENT_TYPES: committed first, at once
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        m = self.metrics
        m.counter("lowalt_alert_events_total", "Alert events committed, by state.")
        m.counter("lowalt_alert_events_dropped_total", "Alert events raised after shutdown.")
        m.counter("lowalt_alert_commit_failures_total", "Alert event commits that failed.")
        m.histogram("lowalt_alert_commit_seconds", "Time to commit one group of alert events.")
        m.gauge("lowalt_alerts_open", "Open alerts.", lambda: float(len(self._open)))
        m.gauge("lowalt_alert_events_pending", "Alert events waiting to commit.",
                lambda: float(len(self._queue) + len(self._urgent)))

    @property
    def committed_seq(self) -> int:
        """The seq of the newest committed event (0 when there is none)."""
        return self._seq

    async def start(self) -> None:
        """Load open alerts and the last seq from storage, then start the writer."""
        state = await self.store.load_state()
        self._seq, self._alert_id = state.last_seq, state.last_alert_id
        self.broadcaster.head = self._seq
        for event, opened_at in state.open_alerts:
            c = event.condition()
            self._add(_OpenAlert(event.alert_id, opened_at, c, c))
        self._writer = asyncio.create_task(self._write_loop(), name="lowalt-alert-writer")

    async def close(self, timeout_s: float = 10.0) -> bool:
        """Stop taking events, commit what is waiting (up to timeout_s), stop the writer."""
        self._closed = True
        flushed = await self.flush(timeout_s)
        if not flushed:
            log.warning("shutdown: %d alert events not committed in time",
                        len(self._queue) + len(self._urgent))
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        return flushed

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every event raised so far is committed and broadcast."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- the API check stages call ------------------------------------------------------------

    async def assess(
        self, types: frozenset[str], evaluated: Mapping[str, float], present: Sequence[Condition]
    ) -> None:
        """Reconcile the open alerts of `types` for the `evaluated` UAVs with what is `present`.

        evaluated: uav -> t of the observation or tick just checked; present: every condition of
        those types true now for those UAVs. Pair alerts count as evaluated when either UAV is.
        """
        for c in present:
            self._observe(c)
        present_keys = {c.key for c in present}
        candidates = {key for uav in evaluated for key in self._keys_of_uav.get(uav, ())
                      if key[0] in types and key not in present_keys}
        for key in sorted(candidates):
            alert = self._open[key]
            c = alert.latest
            t_uav = evaluated.get(c.uav)
            t_other = evaluated.get(c.other_uav) if c.other_uav is not None else None
            if t_uav is None and t_other is None:
                continue
            t = max(x for x in (t_uav, t_other) if x is not None)
            if alert.absent_since is None:
                alert.absent_since = t
            if t - alert.absent_since >= self.clear_s:
                self._resolve(key, alert, t, None)
        await self._wait_for_room()

    async def open_or_update(self, c: Condition) -> None:
        """Open an alert for c.key, or update the open one (throttled like `assess`)."""
        self._observe(c)
        await self._wait_for_room()

    async def resolve(
        self, key: tuple[str, str, str], t: float, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Resolve the open alert for key now (no hysteresis); nothing when none is open."""
        alert = self._open.get(key)
        if alert is not None:
            self._resolve(key, alert, t, detail)
        await self._wait_for_room()

    def open_alerts(self) -> list[dict[str, Any]]:
        """The open alerts, most severe first (emergencies first of all), each with its newest
        known position."""
        ranked: list[tuple[int, bool, int, dict[str, Any]]] = []
        for alert in self._open.values():
            c = alert.latest
            ranked.append((-SEVERITY_RANK[c.severity], c.type not in URGENT_TYPES, alert.alert_id, {
                "alert_id": alert.alert_id, "state": "open", "type": c.type,
                "severity": c.severity, "uav": c.uav, "other_uav": c.other_uav, "zone": c.zone,
                "clearance": c.clearance, "t": c.t, "opened_at": alert.opened_at, "lat": c.lat,
                "lon": c.lon, "alt_m": c.alt_m, "detail": dict(c.detail),
            }))
        ranked.sort(key=lambda r: r[:3])
        return [r[3] for r in ranked]

    # -- lifecycle -------------------------------------------------------------------------------

    def _observe(self, c: Condition) -> None:
        if c.type not in ALERT_TYPES:
            raise ValueError(f"unknown alert type {c.type!r}")
        if c.severity not in SEVERITY_RANK:
            raise ValueError(f"unknown severity {c.severity!r}")
        alert = self._open.get(c.key)
        if alert is None:
            self._alert_id += 1
            event = self._emit(self._alert_id, "open", c, c.t, c.detail)
            self._add(_OpenAlert(self._alert_id, event.raised_at, c, c))
            return
        if c.t < alert.emitted.t:  # older than what was said already: late data, no news
            return
        alert.absent_since = None
        alert.latest = c
        last = alert.emitted
        if c.severity != last.severity or (
            (c.lat, c.lon, c.alt_m, c.detail) != (last.lat, last.lon, last.alt_m, last.detail)
            and c.t - last.t >= self.update_min_s
        ):
            self._emit(alert.alert_id, "updated", c, c.t, c.detail)
            alert.emitted = c

    def _resolve(
        self, key: AlertKey, alert: _OpenAlert, t: float, detail: Mapping[str, Any] | None
    ) -> None:
        c = alert.latest
        self._emit(alert.alert_id, "resolved", c, t, c.detail if detail is None else detail)
        del self._open[key]
        for uav in (c.uav, c.other_uav):
            keys = self._keys_of_uav.get(uav or "")
            if uav is not None and keys is not None:
                keys.discard(key)
                if not keys:
                    del self._keys_of_uav[uav]

    def _add(self, alert: _OpenAlert) -> None:
        c = alert.emitted
        self._open[c.key] = alert
        for uav in (c.uav, c.other_uav):
            if uav is not None:
                self._keys_of_uav.setdefault(uav, set()).add(c.key)

    def _emit(
        self, alert_id: int, state: str, c: Condition, t: float, detail: Mapping[str, Any]
    ) -> AlertEvent:
        event = AlertEvent(
            0, alert_id, state, c.type, c.severity, c.uav, c.other_uav, c.zone, c.clearance,
            float(t), time.time(), float(c.lat), float(c.lon), float(c.alt_m), dict(detail),
        )
        if self._closed:
            self.metrics.inc("lowalt_alert_events_dropped_total")
            log.warning("alert event after shutdown dropped: %s %s %s", state, c.type, c.uav)
            return event
        (self._urgent if c.type in URGENT_TYPES else self._queue).append(event)
        self._idle.clear()
        self._wakeup.set()
        return event

    async def _wait_for_room(self) -> None:
        while len(self._queue) >= self.max_pending_events and not self._closed:
            self._room.clear()
            await self._room.wait()

    # -- the writer ------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        queue, urgent = self._queue, self._urgent
        while True:
            if not queue and not urgent:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not urgent and self.commit_delay_s > 0:
                await asyncio.sleep(self.commit_delay_s)
            # Seq is given here, so an urgent event taken ahead still keeps seq = commit order.
            lane = urgent if urgent else queue
            n = min(len(lane), self.max_batch_events)
            first = self._seq + 1
            events = [e.numbered(first + i) for i, e in enumerate(itertools.islice(lane, n))]
            await self._commit(events)
            for _ in range(n):
                lane.popleft()
            self._seq = events[-1].seq
            self.broadcaster.publish(events)  # same step as the seq update: feeds rely on it
            for event in events:
                self.metrics.inc("lowalt_alert_events_total", state=event.state)
            if len(queue) < self.max_pending_events:
                self._room.set()

    async def _commit(self, events: list[AlertEvent]) -> None:
        """Commit events, retrying until they are in; a lost answer is settled by max(seq)."""
        while True:
            started = time.monotonic()
            try:
                await self.store.append_events(events)
                self.metrics.observe("lowalt_alert_commit_seconds", time.monotonic() - started)
                return
            except Exception as exc:
                self.metrics.inc("lowalt_alert_commit_failures_total")
                log.warning("alert events %d..%d not committed, retrying: %s",
                            events[0].seq, events[-1].seq, exc)
            await asyncio.sleep(self.retry_delay_s)
            try:
                if await self.store.max_seq() >= events[-1].seq:
                    return  # the failure was in the answer, not the commit
            except Exception as exc:
                log.debug("max_seq after failed commit: %s", exc)
