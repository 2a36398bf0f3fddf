"""The one ingest pipeline: group commit across connections, then ack, then the check stages.

Transports hand validated observations to `Pipeline.submit`, which returns a future resolved once
the observations are committed. One committer task takes every waiting submission (up to
`commit_max_obs` observations), drops duplicate (uav, t) keys inside the group, writes the group in
one transaction, and resolves the futures in submission order, so each connection's acks follow
its frame order. Committed rows then update the live picture and go, through a bounded queue, to
the check stages (geofence, traffic monitor, ...), which never delay an acknowledgement. The
stages take a committed group in slices of at most `stage_slice_obs` rows and hand the event loop
back between stage calls once they have held it for `stage_turn_s`, so a group of thousands of
rows (or a backlog of groups) holds acks, alert writes and feeds for one slice's work at most.
Groups that committed while the stages were busy go on together, up to a slice: each stage's
fixed cost per call is then paid once for all of them. For the same reason the stages start at
most once per `stage_interval_s` (20 ms): at high rates of small groups (HTTP with one
observation per request) the groups of the interval go on together; a group that comes after a
quiet spell goes on at once. Stages that raise alerts judge a call holding several reports of a
UAV at its newest (`AlertManager.assess(evaluated_at=...)`).
The default slice is a whole default commit group: slices of 1,000 cost 25-40 % more server CPU
per observation with 10,000 zones loaded (the stages' fixed cost per call), for no alert latency
gain that could be told from noise on this 2-core machine.

When storage is unavailable, submissions made with `retry=True` (the streaming transports) stay
queued and are retried until they commit, so their acks are withheld; those with `retry=False`
(HTTP) fail at once with StorageUnavailable so the client can be told 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter
from typing import Protocol

from lowalt.errors import StorageUnavailable
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.models import BatchResult, Observation, Rows
from lowalt.storage import Store

log = logging.getLogger("lowalt.pipeline")
_UAV, _T = attrgetter("uav"), attrgetter("t")
_Key = tuple[str, float]


def _keys(rows: Sequence[Observation]) -> set[_Key]:
    """The rows' (uav, t) keys, built in C."""
    return set(zip(map(_UAV, rows), map(_T, rows), strict=True))


class CheckStage(Protocol):
    """Runs on every committed batch, after its acks; geofence/ and dispatch/ plug in here."""

    name: str

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        """rows: every newly stored observation; advanced: those that moved a UAV's live state."""


@dataclass(eq=False)
class _Submission:
    rows: Sequence[Observation]
    future: asyncio.Future[BatchResult]
    retry: bool
    enqueued_at: float = field(default_factory=time.monotonic)


class Pipeline:
    def __init__(
        self,
        store: Store,
        live: LiveState,
        metrics: Metrics,
        *,
        commit_max_obs: int,
        max_pending_obs: int,
        retry_delay_s: float = 0.5,
        commit_concurrency: int = 1,
        stage_queue_batches: int = 256,
        stage_slice_obs: int = 5_000,
        stage_turn_s: float = 0.005,
        stage_interval_s: float = 0.02,
    ) -> None:
        self.store, self.live, self.metrics = store, live, metrics
        self.commit_max_obs = commit_max_obs
        self.max_pending_obs = max_pending_obs
        self.retry_delay_s = retry_delay_s
        self.commit_concurrency = commit_concurrency
        self.stage_slice_obs = stage_slice_obs
        self.stage_turn_s = stage_turn_s
        self.stage_interval_s = stage_interval_s
        self.stages: list[CheckStage] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first submission
        self.available = True
        self._queue: deque[_Submission] = deque()
        self._pending_obs = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._committing: set[_Key] = set()  # keys of the groups committing now (if several)
        self._stage_queue: asyncio.Queue[tuple[list[Observation], list[Observation]]] = (
            asyncio.Queue(stage_queue_batches)
        )
        metrics.counter("lowalt_observations_accepted_total", "Observations stored.")
        metrics.counter("lowalt_observations_duplicate_total", "Observations already stored.")
        metrics.counter("lowalt_observations_rejected_total", "Observations rejected, by reason.")
        metrics.counter("lowalt_commits_total", "Storage transactions committed.")
        metrics.counter("lowalt_commit_failures_total", "Storage transactions that failed.")
        metrics.counter("lowalt_stage_errors_total", "Check-stage failures, by stage.")
        metrics.counter("lowalt_stage_cpu_seconds_total",
                        "CPU time of the event loop's thread in each check stage, by stage.")
        metrics.counter("lowalt_stage_observations_total",
                        "Observations each check stage was given, by stage.")
        metrics.histogram("lowalt_commit_seconds", "Time to commit one group of observations.")
        metrics.histogram("lowalt_ack_seconds", "Time from submission to commit.")
        metrics.gauge("lowalt_pending_observations", "Observations waiting to commit.",
                      lambda: float(self._pending_obs))
        metrics.gauge("lowalt_stage_queue_batches", "Committed batches waiting for checks.",
                      lambda: float(self._stage_queue.qsize()))
        metrics.gauge("lowalt_storage_available", "1 when the last write succeeded.",
                      lambda: 1.0 if self.available else 0.0)

    @property
    def pending_obs(self) -> int:
        return self._pending_obs

    def has_room(self, n: int = 0) -> bool:
        return self._pending_obs + n <= self.max_pending_obs

    async def wait_for_room(self) -> None:
        while not self.has_room():
            self._room.clear()
            await self._room.wait()

    def submit(self, rows: Sequence[Observation], *, retry: bool) -> asyncio.Future[BatchResult]:
        """Queue rows for the next commit; the future resolves after it (or fails)."""
        if self._closing:
            raise StorageUnavailable("server is shutting down")
        if not retry and not self.available:
            raise StorageUnavailable("storage is unavailable")
        loop = self._loop
        if loop is None:  # asyncio.get_running_loop costs a getpid system call each time
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        if not rows:
            future.set_result(BatchResult(0, 0, ()))
            return future
        self._queue.append(_Submission(rows, future, retry))
        self._pending_obs += len(rows)
        self._idle.clear()
        self._wakeup.set()
        return future

    def _take_group(self) -> tuple[list[_Submission], set[_Key] | None]:
        """The next group, in submission order, and (when groups commit at once) its keys.

        While other groups commit, the group ends before the first submission holding a key
        of theirs (empty when that is the first): it waits for them, so the copy that came
        first is the one stored and the later one is told it is a duplicate, as when groups
        commit one at a time."""
        group: list[_Submission] = []
        count = 0
        queue, limit = self._queue, self.commit_max_obs
        keys: set[_Key] | None = None if self.commit_concurrency == 1 else set()
        while queue and (not group or count + len(queue[0].rows) <= limit):
            if keys is not None:
                mine = _keys(queue[0].rows)
                if not mine.isdisjoint(self._committing):
                    break
                keys |= mine
            sub = queue.popleft()
            group.append(sub)
            count += len(sub.rows)
        if keys is not None:
            self._committing |= keys
        return group, keys

    def _release(self, group: Sequence[_Submission]) -> None:
        self._pending_obs -= sum(len(s.rows) for s in group)
        if self.has_room():
            self._room.set()

    async def run(self) -> None:
        """The committer loop; runs until cancelled.

        Up to `commit_concurrency` groups commit at once, so one group's round trip to the
        database overlaps the next group's. Acks stay in frame order: each connection writes its
        answers in order (OrderedReplies), whatever order the groups finish in; a key is never
        in two groups at once (`_take_group`), so its first copy is the one stored.
        """
        stage_task = asyncio.create_task(self._run_stages(), name="lowalt-stages")
        commits: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(commits) >= self.commit_concurrency:
                    await asyncio.wait(commits, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not self._queue:
                    if commits:
                        self._wakeup.clear()
                        waiter = asyncio.ensure_future(self._wakeup.wait())
                        try:
                            await asyncio.wait([*commits, waiter],
                                               return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            waiter.cancel()
                        continue
                    self._idle.set()
                    self._wakeup.clear()
                    if self.available:
                        await self._wakeup.wait()
                    else:
                        await self._probe()
                    continue
                if not self.available and commits:
                    await asyncio.wait(commits)  # while down, retry one group at a time
                    continue
                group, keys = self._take_group()
                if not group:  # its first submission waits for a key being committed
                    await asyncio.wait(commits, return_when=asyncio.FIRST_COMPLETED)
                    continue
                task = asyncio.create_task(self._commit(group, keys))
                commits.add(task)
                task.add_done_callback(commits.discard)
        finally:
            for task in commits:
                task.cancel()
            stage_task.cancel()
            await asyncio.gather(stage_task, *commits, return_exceptions=True)

    async def _probe(self) -> None:
        """Storage is down and nothing waits to be retried: check it every retry_delay_s, since
        HTTP submissions are refused (503) until `available` is true again."""
        try:
            await asyncio.wait_for(self._wakeup.wait(), self.retry_delay_s)
            return  # a submission arrived: its commit is the probe
        except TimeoutError:
            pass
        try:
            await self.store.ping()
        except StorageUnavailable:
            return
        except Exception:  # a bug in ping must not stop the committer
            log.exception("storage probe failed")
            return
        log.warning("storage available again")
        self.available = True

    async def _commit(self, group: list[_Submission], keys: set[_Key] | None = None) -> None:
        """Commit a group (whose keys, when given, are held in `_committing` until done)."""
        try:
            await self._commit_group(group, keys)
        finally:
            if keys is not None:
                self._committing -= keys

    async def _commit_group(self, group: list[_Submission], keys: set[_Key] | None) -> None:
        unique: list[Observation] = []
        owners: list[int] = []
        duplicates = [0] * len(group)
        for sub in group:
            unique += sub.rows
        if keys is None:
            keys = _keys(unique)
        if len(keys) == len(unique):
            owners = list(chain.from_iterable(  # the usual case: no key twice in the group
                repeat(n, len(sub.rows)) for n, sub in enumerate(group)))
        else:
            unique = []
            seen: set[tuple[str, float]] = set()
            for n, sub in enumerate(group):
                for row in sub.rows:
                    key = (row.uav, row.t)
                    if key in seen:
                        duplicates[n] += 1
                    else:
                        seen.add(key)
                        unique.append(row)
                        owners.append(n)
        unique = Rows(unique)  # its columns serve the live picture and the stages too
        started = time.monotonic()
        try:
            inserted = await self.store.insert_observations(
                unique, unseen=self.live.all_newer(unique))
        except StorageUnavailable as exc:
            self.metrics.inc("lowalt_commit_failures_total")
            if self.available:
                log.warning("storage unavailable, holding acks: %s", exc)
            self.available = False
            retry = [s for s in group if s.retry and not s.future.done()]
            for sub in group:
                if not sub.retry and not sub.future.done():
                    sub.future.set_exception(StorageUnavailable(str(exc)))
            self._release([s for s in group if s not in retry])
            self._queue.extendleft(reversed(retry))
            await asyncio.sleep(self.retry_delay_s)
            return
        except Exception as exc:  # a bug, not an outage: fail this group, keep serving
            log.exception("commit failed")
            self.metrics.inc("lowalt_commit_failures_total")
            for sub in group:
                if not sub.future.done():
                    sub.future.set_exception(exc)
            self._release(group)
            return
        now = time.monotonic()
        if not self.available:
            log.warning("storage available again")
        self.available = True
        self.metrics.inc("lowalt_commits_total")
        self.metrics.observe("lowalt_commit_seconds", now - started)
        fresh: list[Sequence[Observation]] = []
        if all(inserted) and not any(duplicates):  # every row of every submission is new
            accepted = [len(sub.rows) for sub in group]
            fresh += (sub.rows for sub in group)
            new_rows: list[Observation] = unique
        else:
            accepted = [0] * len(group)
            kept: list[list[Observation]] = [[] for _ in group]
            new_rows = []
            for row, owner, is_new in zip(unique, owners, inserted, strict=True):
                if is_new:
                    accepted[owner] += 1
                    kept[owner].append(row)
                    new_rows.append(row)
                else:
                    duplicates[owner] += 1
            fresh += kept
        self.metrics.inc("lowalt_observations_accepted_total", sum(accepted))
        self.metrics.inc("lowalt_observations_duplicate_total", sum(duplicates))
        self._release(group)
        for n, sub in enumerate(group):
            self.metrics.observe("lowalt_ack_seconds", now - sub.enqueued_at)
            if not sub.future.done():
                sub.future.set_result(BatchResult(accepted[n], duplicates[n], tuple(fresh[n])))
        if new_rows:
            new_rows = new_rows if type(new_rows) is Rows else Rows(new_rows)
            advanced = self.live.update(new_rows)
            if self.stages:
                await self._stage_queue.put((new_rows, advanced))

    async def _run_stages(self) -> None:
        """Every stage on every committed group, a slice at a time; the event loop gets a turn
        whenever the stages have held it for `stage_turn_s` (a stage's await need not yield,
        and a waiting batch is taken without one)."""
        turn_ends = time.monotonic() + self.stage_turn_s
        queue = self._stage_queue
        next_start = 0.0
        while True:
            if queue.empty():
                rows, advanced = await queue.get()
                wait_s = next_start - time.monotonic()
                if wait_s > 0:  # the stages started a moment ago: let the next groups gather
                    await asyncio.sleep(wait_s)
                turn_ends = time.monotonic() + self.stage_turn_s
            else:
                rows, advanced = queue.get_nowait()
            next_start = time.monotonic() + self.stage_interval_s
            taken = 1
            if len(rows) < self.stage_slice_obs and not queue.empty():
                # Groups that waited while the stages were busy go on together, up to a slice:
                # a stage's cost per call is paid once for all of them, so a backlog shrinks
                # faster the longer it is (small groups come often at high rates).
                groups = [rows]
                size = len(rows)
                newest = {row.uav: row for row in advanced}  # a later group's row is newer
                while size < self.stage_slice_obs and not queue.empty():
                    more, more_advanced = queue.get_nowait()
                    taken += 1
                    groups.append(more)
                    size += len(more)
                    newest.update((row.uav, row) for row in more_advanced)
                rows = Rows.joined(groups)  # with the columns the groups built at commit
                advanced = list(newest.values())
            for part, part_advanced in _slices(rows, advanced, self.stage_slice_obs):
                # Columns built once, shared by the stages (those LiveState built come along).
                part = part if type(part) is Rows else Rows(part)
                part_advanced = part_advanced if type(part_advanced) is Rows else Rows(
                    part_advanced)
                for stage in self.stages:
                    # The thread's CPU time: what the stage cost the loop (plus whatever ran
                    # while it awaited, which stages do only when the alert queue is full),
                    # less what ran while it awaited another process (`awaited_cpu_s`).
                    cpu_s = time.thread_time() - getattr(stage, "awaited_cpu_s", 0.0)
                    try:
                        await stage.on_committed(part, part_advanced)
                    except Exception:
                        log.exception("check stage %s failed", stage.name)
                        self.metrics.inc("lowalt_stage_errors_total", stage=stage.name)
                    self.metrics.inc(
                        "lowalt_stage_cpu_seconds_total",
                        time.thread_time() - cpu_s - getattr(stage, "awaited_cpu_s", 0.0),
                        stage=stage.name)
                    self.metrics.inc("lowalt_stage_observations_total", len(part),
                                     stage=stage.name)
                    if time.monotonic() >= turn_ends:
                        await asyncio.sleep(0)
                        turn_ends = time.monotonic() + self.stage_turn_s
            for _ in range(taken):
                queue.task_done()

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking submissions; wait until every queued one is committed and checked."""
        self._closing = True
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
                await self._stage_queue.join()
        except TimeoutError:
            return False
        return True


def _slices(
    rows: list[Observation], advanced: list[Observation], size: int
) -> Iterator[tuple[list[Observation], list[Observation]]]:
    """rows in slices of at most size, each with the rows of `advanced` it holds (the same
    objects, so a UAV reported twice in the group still advances once, at its newest row)."""
    if len(rows) <= size:
        yield rows, advanced
        return
    newest = set(map(id, advanced))
    for start in range(0, len(rows), size):
        part = (rows.part(start, start + size) if type(rows) is Rows
                else rows[start : start + size])
        yield part, [row for row in part if id(row) in newest]
