"""Optional NATS JetStream sink: every alert event, in seq order, to `<prefix>.<type>`.

Each message carries the event JSON and the header `Nats-Msg-Id: <seq>`, so JetStream drops a
second copy of an event within the stream's duplicate window. The sink reads the event log from
its own stored cursor (`dispatch_cursors`, name "nats"), moved only after JetStream acknowledged
the batch: a NATS outage or a restart delays events, loses none, and the republished overlap is
de-duplicated by the server. The stream (`nats_stream`, subjects `<prefix>.>`) is created when
missing. The first start begins at the newest event; history before it is not published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from dispatch.alerts import Broadcaster
from dispatch.store import AlertStore, EventQuery
from lowalt.metrics import Metrics

log = logging.getLogger("lowalt.nats")

CURSOR = "nats"
BATCH_EVENTS = 500
IDLE_WAIT_S = 5.0


class NatsSink:
    def __init__(
        self,
        store: AlertStore,
        broadcaster: Broadcaster,
        *,
        url: str,
        stream: str,
        subject_prefix: str,
        metrics: Metrics,
        publish_timeout_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self.store, self.broadcaster = store, broadcaster
        self.url, self.stream, self.subject_prefix = url, stream, subject_prefix
        self.publish_timeout_s, self.retry_s = publish_timeout_s, retry_s
        self.metrics = metrics
        self.delivered_seq = 0
        self.connected = False
        self._last_error_log = 0.0
        metrics.counter("lowalt_nats_published_total", "Alert events acknowledged by JetStream.")
        metrics.counter("lowalt_nats_duplicates_total", "Events JetStream already had.")
        metrics.gauge("lowalt_nats_connected", "1 while connected to NATS.",
                      lambda: 1.0 if self.connected else 0.0)

    async def run(self) -> None:
        """Publish forever; survives NATS and storage outages. Cancel to stop."""
        self.delivered_seq = await self._load_cursor()
        while True:
            nc = NATS()
            try:
                await nc.connect(
                    self.url, name="lowalt-dispatch", allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=self.retry_s,  # type: ignore[arg-type]
                    connect_timeout=2, error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
                )
                self.connected = True
                js = nc.jetstream(timeout=self.publish_timeout_s)
                await self._ensure_stream(js)
                while not nc.is_closed:
                    try:
                        await self._publish_next(js)
                    except (TimeoutError, NatsError) as exc:
                        self._warn(f"publish failed, retrying from seq {self.delivered_seq}: "
                                   f"{exc!r}")
                        await asyncio.sleep(self.retry_s)
            except (TimeoutError, NatsError, OSError) as exc:
                self._warn(f"{exc!r}")
                await asyncio.sleep(self.retry_s)
            except Exception:
                log.exception("nats sink failed")
                await asyncio.sleep(self.retry_s)
            finally:
                self.connected = False
                if not nc.is_closed:
                    await nc.close()

    async def _load_cursor(self) -> int:
        while True:
            try:
                seq = await self.store.cursor(CURSOR)
                if seq is None:
                    seq = self.broadcaster.head
                    await self.store.save_cursor(CURSOR, seq)
                return seq
            except Exception as exc:
                self._warn(f"cannot read the NATS cursor: {exc}")
                await asyncio.sleep(self.retry_s)

    async def _ensure_stream(self, js: Any) -> None:
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(name=self.stream, subjects=[f"{self.subject_prefix}.>"])
            log.info("created JetStream stream %s", self.stream)

    async def _publish_next(self, js: Any) -> None:
        """Publish the next batch after the cursor, then store the cursor."""
        head = self.broadcaster.head
        events = await self.store.events(EventQuery(since=self.delivered_seq, limit=BATCH_EVENTS))
        if not events:
            if head > self.delivered_seq:  # nothing in between: skip the cursor ahead
                self.delivered_seq = head
            await self.broadcaster.wait_beyond(self.delivered_seq, IDLE_WAIT_S)
            return
        for e in events:
            ack = await js.publish(
                f"{self.subject_prefix}.{e.type}", e.body.encode("utf-8"),
                timeout=self.publish_timeout_s, stream=self.stream,
                headers={"Nats-Msg-Id": str(e.seq)},
            )
            if ack.duplicate:
                self.metrics.inc("lowalt_nats_duplicates_total")
            self.metrics.inc("lowalt_nats_published_total")
        await self.store.save_cursor(CURSOR, events[-1].seq)
        self.delivered_seq = events[-1].seq

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 30.0:  # an outage is one line per 30 s, not a flood
            self._last_error_log = now
            log.warning("nats %s: %s", self.url, message)

    async def _on_error(self, exc: Exception) -> None:
        self._warn(f"{exc!r}")

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True
