"""Data frames of the streaming transports (gateway and WebSocket), decoded into acks.

A `FrameSession` holds one connection's state: who it is, its frame counter and the stateful
decoders of standard formats. `handle` turns one decoded frame payload into either an immediate
answer (an error frame) or a future ack that resolves once the frame's observations commit.
Answers are written strictly in frame order by the transport (see `OrderedReplies`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ingest.codecs.odid import OdidAssembler
from ingest.codecs.sbs import SbsTracker
from ingest.pipeline import Pipeline
from ingest.push import PushHub
from ingest.validate import Validator
from lowalt.auth import Registry
from lowalt.limits import Limits
from lowalt.metrics import Metrics
from lowalt.models import BatchResult, Observation, Principal

Reply = dict[str, Any]


@dataclass
class IngestContext:
    """What every transport needs, built once by the app."""

    pipeline: Pipeline
    validator: Validator
    registry: Registry
    metrics: Metrics
    max_obs_per_batch: int
    limits: Limits = field(default_factory=Limits.unlimited)  # per-token rate and connections
    push_hub: PushHub = field(default_factory=PushHub)  # open sessions by UAV (ingest/push.py)


def frame_items(payload: Any) -> int:
    """How many observations a data frame carries (what the per-token rate limit counts)."""
    if not isinstance(payload, dict):
        return 0
    count = sum(len(v) for v in (payload.get("obs"), payload.get("odid")) if isinstance(v, list))
    sbs = payload.get("sbs")
    return count + (sbs.count("\n") if isinstance(sbs, str) else 0)


def filter_owned(
    registry: Registry, principal: Principal, rows: list[Observation], indexes: list[int],
    rejected: list[tuple[int, str]],
) -> list[Observation]:
    """Drop rows the principal may not send, adding a reason for each to rejected."""
    if principal.role in ("gateway", "admin"):
        return rows
    kept: list[Observation] = []
    for row, index in zip(rows, indexes, strict=True):
        if registry.may_send(principal, row.uav):
            kept.append(row)
        else:
            rejected.append((index, f"uav: {row.uav} is not registered to this operator"))
    rejected.sort()
    return kept


def count_rejections(metrics: Metrics, rejected: list[tuple[int, str]]) -> None:
    for _, reason in rejected:
        metrics.inc("lowalt_observations_rejected_total", reason=reason.split(":", 1)[0])


class FrameSession:
    def __init__(self, ctx: IngestContext, principal: Principal, source: str) -> None:
        self.ctx = ctx
        self.principal = principal
        self.source = source  # "<name>/<transport>"
        self.frames = 0
        self.inflight_obs = 0
        self._odid: OdidAssembler | None = None
        self._sbs: SbsTracker | None = None
        self.on_settled: Callable[[], None] | None = None
        self.replies: OrderedReplies | None = None  # set by the transport: pushes go there
        self.closed = False

    def handle(self, payload: Any) -> Reply | Awaitable[Reply]:
        """Answer one decoded data frame (counted from 1 on this connection)."""
        self.frames += 1
        if not isinstance(payload, dict):
            return {"error": "frame must be a map", "frame": self.frames}
        seq = payload.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            return {"error": "seq: missing or not an integer", "frame": self.frames}
        lists = {key: payload.get(key, []) for key in ("obs", "odid")}
        sbs_text = payload.get("sbs", "")
        for key, items in lists.items():
            if not isinstance(items, list):
                return {"error": f"{key}: must be a list", "frame": self.frames, "seq": seq}
        if not isinstance(sbs_text, str):
            return {"error": "sbs: must be a string of lines", "frame": self.frames, "seq": seq}
        count = frame_items(payload)
        if count > self.ctx.max_obs_per_batch:
            return {
                "error": f"obs: {count} observations exceed the limit of "
                f"{self.ctx.max_obs_per_batch} per frame",
                "frame": self.frames, "seq": seq,
            }
        now = time.time()
        rows, indexes, rejected = self.ctx.validator.batch(
            lists["obs"], now, f"{self.source}/native"
        )
        rows = filter_owned(self.ctx.registry, self.principal, rows, indexes, rejected)
        if lists["odid"]:
            odid_rows = self._decoded("odid", *self.odid.feed(lists["odid"]), now, rejected)
            known = self.odid.operator_positions
            operators = self.ctx.pipeline.live.operator_positions
            for row in odid_rows:
                if row.uav in known:
                    operators[row.uav] = known[row.uav]
            rows += odid_rows
        if sbs_text:
            rows += self._decoded("sbs", *self.sbs.feed(sbs_text, now), now, rejected)
        count_rejections(self.ctx.metrics, rejected)
        if rows and self.replies is not None:
            self.ctx.push_hub.register(self, {r.uav for r in rows})
        future = self.ctx.pipeline.submit(rows, retry=True)
        self.inflight_obs += len(rows)
        future.add_done_callback(lambda _: self._settled(len(rows)))
        return self._ack(seq, self.frames, future, rejected)

    def deliver(self, payload: Mapping[str, Any]) -> bool:
        """Queue a server-initiated frame after the answers owed (ingest/push.py)."""
        if self.replies is None or self.closed:
            return False
        self.replies.push(dict(payload))
        return True

    def close(self) -> None:
        """The connection is gone: take no more pushes."""
        self.closed = True
        self.ctx.push_hub.unregister(self)

    @property
    def odid(self) -> OdidAssembler:
        if self._odid is None:
            self._odid = OdidAssembler()
        return self._odid

    @property
    def sbs(self) -> SbsTracker:
        if self._sbs is None:
            self._sbs = SbsTracker()
        return self._sbs

    def _decoded(
        self, fmt: str, items: list[dict[str, object]], errors: list[tuple[int, str]],
        now: float, rejected: list[tuple[int, str]],
    ) -> list[Observation]:
        """Validate a codec's observations; its errors join `rejected` as (index, "fmt: ...")."""
        rejected.extend((i, f"{fmt}: {reason}") for i, reason in errors)
        source = f"{self.source}/{'f3411' if fmt == 'odid' else fmt}"
        rows, indexes, bad = self.ctx.validator.batch(items, now, source)
        rejected.extend((-1, f"{fmt}: {items[i].get('uav')}: {reason}") for i, reason in bad)
        return filter_owned(self.ctx.registry, self.principal, rows, indexes, [])

    def _settled(self, n: int) -> None:
        self.inflight_obs -= n
        if self.on_settled is not None:
            self.on_settled()

    async def _ack(
        self, seq: int, frame: int, future: asyncio.Future[BatchResult],
        rejected: list[tuple[int, str]],
    ) -> Reply:
        try:
            result = await future
        except Exception as exc:  # storage refused the frame for a reason other than an outage
            return {"error": f"not stored: {exc}", "frame": frame, "seq": seq}
        return {
            "ack": seq, "accepted": result.accepted, "duplicates": result.duplicates,
            "rejected": [[i, reason] for i, reason in rejected],
        }


class OrderedReplies:
    """Writes answers in the order their frames arrived, whatever order they complete in."""

    def __init__(self, write: Callable[[Reply], Awaitable[None] | None]) -> None:
        self._write = write
        self._queue: asyncio.Queue[Reply | Awaitable[Reply] | None] = asyncio.Queue()
        self.inflight = 0
        self._task = asyncio.create_task(self._run(), name="lowalt-replies")

    def push(self, reply: Reply | Awaitable[Reply]) -> None:
        self.inflight += 1
        self._queue.put_nowait(reply)

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            reply = item if isinstance(item, dict) else await item
            self.inflight -= 1
            result = self._write(reply)
            if result is not None:
                await result

    async def close(self, flush: bool) -> None:
        """Stop; with flush, first write every answer still owed."""
        if flush:
            self._queue.put_nowait(None)
            await asyncio.gather(self._task, return_exceptions=True)
        else:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Answers nobody will read (the connection is gone): their frames still commit, since
        # the pipeline holds them; only the waits for the acks are dropped.
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if inspect.iscoroutine(item):
                item.close()
