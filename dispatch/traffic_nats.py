"""Fused traffic on NATS JetStream, partitioned by geographic cell (API.md section 7).

On when `nats_url` is set and `nats_traffic` is true. Every 1 / `traffic_nats_rate_hz` s the
publisher takes the fused picture's changes since its previous flush, found with numpy over the
picture's column arrays as the traffic feed does, and publishes, in this order per aircraft:

- `{"gone": uav}` on the cell it was last published on, when it left that cell, was silent for
  `traffic_gone_after_s`, or was removed from the picture;
- its state (the traffic feed's state JSON) on the cell it is in now.

Subjects are `<nats_traffic_subject_prefix>.<cell>` (default `lowalt.traffic.<cell>`), in the
stream `nats_traffic_stream` (default LOWALT_TRAFFIC, subjects `<prefix>.>`), created when
missing with a `MAX_AGE_S` retention: it is live data. A cell is `"<i>_<j>"`, the 0.1-degree
grid cell of the state's (7-decimal) position, see `cell_of`. One flush holds at most one state
per aircraft, so no aircraft is published more than `traffic_nats_rate_hz` times a second.

`Nats-Msg-Id` is `"<uav>:<t>"` for a state (`"<uav>:<t>:<n>"` when a state with the same `t`
was already published, e.g. a second source's report at the same instant), and
`"<uav>:<t>:gone"` for a gone (t: the aircraft's last published state): a flush retried after a
lost acknowledgement is stored once. An aircraft's messages count as sent only when JetStream
acknowledged all of them; otherwise they are redone at the next flush, with the newest state.

Outages: fused traffic is not queued. While NATS is unreachable each flush is skipped (counted,
logged once per 30 s); the picture's changes stay unsent, and the first flush after NATS returns
publishes each changed aircraft's newest state once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NoStreamResponseError, NotFoundError

from lowalt.fusion import F64, I64, FusedPicture, Obj
from lowalt.metrics import Metrics
from lowalt.settings import Settings

log = logging.getLogger("lowalt.traffic.nats")

MAX_AGE_S = 60.0  # the stream keeps a minute of traffic
CELL_DEG = 0.1
_ROWS, _COLS = 1800, 3600  # 0.1-degree rows (latitude) and columns (longitude)
_encode = json.JSONEncoder(separators=(",", ":")).encode


def cell_of(lat: float, lon: float) -> str:
    """The grid cell "<i>_<j>": i = floor((lat + 90) / 0.1) in 0..1799 (row, south to north),
    j = floor((lon + 180) / 0.1) in 0..3599 (column, west to east). A cell holds its south and
    west edges; lat 90 is in row 1799 and lon 180 in column 0. Indices are taken after rounding
    to 1e-6 of a cell (1 cm), so positions on an edge land in one cell whatever the float error.
    """
    i = min(max(math.floor(round((lat + 90.0) / CELL_DEG, 6)), 0), _ROWS - 1)
    j = math.floor(round((lon + 180.0) / CELL_DEG, 6)) % _COLS
    return f"{i}_{j}"


@dataclass(slots=True)
class _Slot:
    """What one picture slot's flush publishes, and what it sent once all are acknowledged."""

    slot: int
    msgs: list[tuple[str, bytes, str]]  # subject, payload, Nats-Msg-Id
    sent: tuple[int, int, str, str, float] | None  # version, epoch, uav, cell, t; None: gone


class TrafficNatsPublisher:
    def __init__(
        self,
        picture: FusedPicture,
        *,
        url: str,
        stream: str,
        subject_prefix: str,
        rate_hz: float,
        gone_after_s: float,
        metrics: Metrics,
        publish_timeout_s: float = 5.0,
        retry_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.picture = picture
        self.url, self.stream, self.subject_prefix = url, stream, subject_prefix
        self.period_s = 1.0 / rate_hz
        self.gone_after_s = gone_after_s
        self.metrics = metrics
        self.publish_timeout_s, self.retry_s = publish_timeout_s, retry_s
        self.clock = clock
        self.connected = False
        self._stream_ok = False
        self._last_warn = -math.inf
        self.sent_version: I64 = np.zeros(0, dtype=np.int64)
        self.sent_epoch: I64 = np.zeros(0, dtype=np.int64)
        self.sent_t: F64 = np.zeros(0)
        self.sent_id: Obj = np.zeros(0, dtype=object)
        self.sent_cell: Obj = np.zeros(0, dtype=object)
        metrics.counter("lowalt_traffic_nats_published_total",
                        "Traffic messages (states and gones) acknowledged by JetStream.")
        metrics.counter("lowalt_traffic_nats_skipped_total",
                        "Traffic flushes skipped or failed while NATS was unreachable.")
        metrics.gauge("lowalt_traffic_nats_connected", "1 while the traffic publisher is "
                      "connected to NATS.", lambda: 1.0 if self.connected else 0.0)

    @classmethod
    def from_settings(
        cls, picture: FusedPicture, s: Settings, metrics: Metrics
    ) -> TrafficNatsPublisher | None:
        """The publisher the settings ask for; None unless nats_url and nats_traffic are set."""
        if not (s.nats_url and s.nats_traffic):
            return None
        return cls(picture, url=s.nats_url, stream=s.nats_traffic_stream,
                   subject_prefix=s.nats_traffic_subject_prefix, rate_hz=s.traffic_nats_rate_hz,
                   gone_after_s=s.traffic_gone_after_s, metrics=metrics)

    async def run(self) -> None:
        """Publish forever, one flush per period; survives NATS outages. Cancel to stop."""
        while True:
            nc = NATS()
            try:
                await nc.connect(
                    self.url, name="lowalt-traffic", allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=self.retry_s,  # type: ignore[arg-type]
                    connect_timeout=2, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                )
                self.connected = True
                js = nc.jetstream(timeout=self.publish_timeout_s)
                self._stream_ok = False
                while not nc.is_closed:
                    started = time.monotonic()
                    if nc.is_connected:
                        await self._flush_once(js)
                    else:
                        self._skip("NATS unreachable: traffic flush skipped")
                    await asyncio.sleep(max(0.0, started + self.period_s - time.monotonic()))
            except (TimeoutError, NatsError, OSError) as exc:
                self._skip(f"{exc!r}")
                await asyncio.sleep(self.retry_s)
            except Exception:
                log.exception("traffic NATS publisher failed")
                await asyncio.sleep(self.retry_s)
            finally:
                self.connected = False
                if not nc.is_closed:
                    await nc.close()

    async def _flush_once(self, js: Any) -> None:
        try:
            if not self._stream_ok:
                await self._ensure_stream(js)
            await self.flush(js)
        except NoStreamResponseError:  # the stream went away (deleted, NATS restarted)
            self._stream_ok = False
            self._skip("no stream answered: creating it again")
        except (TimeoutError, NatsError) as exc:
            self._skip(f"traffic flush failed: {exc!r}")

    async def _ensure_stream(self, js: Any) -> None:
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[f"{self.subject_prefix}.>"],
                                max_age=MAX_AGE_S)
            log.info("created JetStream stream %s", self.stream)
        self._stream_ok = True

    async def flush(self, js: Any) -> int:
        """Publish what changed since the last flush; return the messages acknowledged."""
        slots = self.collect(self.clock())
        msgs = [m for s in slots for m in s.msgs]
        if not msgs:
            return 0
        acked = await self._publish(js, msgs)
        k = done = 0
        for s in slots:
            ok = all(acked[k:k + len(s.msgs)])
            k += len(s.msgs)
            if ok:
                done += len(s.msgs)
                self._mark(s)
        self.metrics.inc("lowalt_traffic_nats_published_total", done)
        if done < len(msgs):
            self._skip(f"{len(msgs) - done} of {len(msgs)} traffic messages not acknowledged")
        return done

    def collect(self, wall: float) -> list[_Slot]:
        """The messages of every slot that changed since what was sent (module docstring)."""
        p = self.picture
        p.sync()
        p.refresh()
        n = p.slots_used
        self._fit(n)
        version, epoch = p.version[:n], p.epoch[:n]
        live = p.present[:n] & (p.heard_t[:n] >= wall - self.gone_after_s)
        had = self.sent_version[:n] >= 0
        replaced = had & (self.sent_epoch[:n] != epoch)
        todo = np.flatnonzero((had & ~live) | (live & ((self.sent_version[:n] != version)
                                                       | replaced)))
        out: list[_Slot] = []
        prefix = self.subject_prefix
        for slot in todo.tolist():
            msgs: list[tuple[str, bytes, str]] = []
            old_uav, old_cell = self.sent_id[slot], self.sent_cell[slot]
            old_t = float(self.sent_t[slot])
            a = p.by_slot[slot] if live[slot] else None
            if a is None or a.state is None:
                out.append(_Slot(slot, [_gone(prefix, old_uav, old_cell, old_t)], None))
                continue
            body = a.as_json()
            cell = cell_of(body["lat"], body["lon"])
            same_aircraft = had[slot] and not replaced[slot]
            if had[slot] and (not same_aircraft or cell != old_cell):
                msgs.append(_gone(prefix, old_uav, old_cell, old_t))
            t = float(body["t"])
            msg_id = f"{a.uav}:{t!r}"
            if same_aircraft and t == old_t:
                msg_id += f":{int(version[slot])}"
            msgs.append((f"{prefix}.{cell}", _encode(body).encode(), msg_id))
            out.append(_Slot(slot, msgs, (int(version[slot]), int(epoch[slot]), a.uav, cell, t)))
        return out

    async def _publish(self, js: Any, msgs: list[tuple[str, bytes, str]]) -> list[bool]:
        """Pipelined publishes in order; which of them JetStream acknowledged in time."""
        futures: list[asyncio.Future[Any]] = []
        try:
            for subject, payload, msg_id in msgs:
                futures.append(await js.publish_async(
                    subject, payload, wait_stall=self.publish_timeout_s, stream=self.stream,
                    headers={"Nats-Msg-Id": msg_id},
                ))
            await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True),
                                   self.publish_timeout_s)
        except NoStreamResponseError:
            raise
        except (TimeoutError, NatsError, OSError) as exc:
            self._skip(f"traffic publish failed: {exc!r}")
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()
        acked = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        if any(isinstance(f.exception(), NoStreamResponseError)
               for f in futures if f.done() and not f.cancelled()):
            raise NoStreamResponseError
        return acked + [False] * (len(msgs) - len(futures))

    def _mark(self, s: _Slot) -> None:
        if s.sent is None:
            self.sent_version[s.slot] = -1
            self.sent_id[s.slot] = self.sent_cell[s.slot] = None
            return
        version, epoch, uav, cell, t = s.sent
        self.sent_version[s.slot], self.sent_epoch[s.slot] = version, epoch
        self.sent_id[s.slot], self.sent_cell[s.slot], self.sent_t[s.slot] = uav, cell, t

    def _fit(self, n: int) -> None:
        extra = n - len(self.sent_version)
        if extra > 0:
            self.sent_version = np.concatenate(
                [self.sent_version, np.full(extra, -1, dtype=np.int64)])
            self.sent_epoch = np.concatenate([self.sent_epoch, np.zeros(extra, dtype=np.int64)])
            self.sent_t = np.concatenate([self.sent_t, np.zeros(extra)])
            self.sent_id = np.concatenate([self.sent_id, np.full(extra, None, dtype=object)])
            self.sent_cell = np.concatenate([self.sent_cell, np.full(extra, None, dtype=object)])

    def _skip(self, message: str) -> None:
        self.metrics.inc("lowalt_traffic_nats_skipped_total")
        now = time.monotonic()
        if now - self._last_warn >= 30.0:  # an outage is one line per 30 s, not a flood
            self._last_warn = now
            log.warning("nats %s: %s", self.url, message)

    async def _on_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_warn >= 30.0:
            self._last_warn = now
            log.warning("nats %s: %r", self.url, exc)

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True


def _gone(prefix: str, uav: str, cell: str, t: float) -> tuple[str, bytes, str]:
    return f"{prefix}.{cell}", _encode({"gone": uav}).encode(), f"{uav}:{t!r}:gone"


TRAFFIC_NATS = web.AppKey("traffic_nats", TrafficNatsPublisher)
