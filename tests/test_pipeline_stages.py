"""The check stages take a committed group in slices and hand the event loop back between calls
once they have held it for `stage_turn_s`: every row reaches every stage once, in commit order,
each UAV advancing once (at its newest row), and other tasks (acks, alert writes, feeds) run
between a big group's slices."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import numpy as np

from ingest.pipeline import Pipeline
from lowalt.live import LiveState
from lowalt.metrics import Metrics
from lowalt.models import Observation, Rows, floats_of, values_of
from lowalt.storage import Store

T0 = 1_700_000_000.0


class MemoryStore:
    """What the committer uses of a Store: every row is new."""

    async def insert_observations(self, rows: Sequence[Observation], *,
                                  unseen: bool = False) -> list[bool]:
        return [True] * len(rows)


class Recorder:
    name = "recorder"

    def __init__(self, turns: list[int]) -> None:
        self.turns = turns
        self.calls: list[tuple[list[Observation], list[Observation], int]] = []
        self.columns_right: list[bool] = []  # per call, of rows and of advanced

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        self.calls.append((list(rows), list(advanced), self.turns[0]))
        # The columns a call shares (some built at commit, sliced or joined since) must be its
        # rows' own (a failed assert here would only be logged by the pipeline).
        assert type(rows) is Rows and type(advanced) is Rows
        for part in (rows, advanced):
            plain = list(part)
            self.columns_right.append(
                all(np.array_equal(floats_of(part, name), floats_of(plain, name))
                    for name in ("t", "lat", "lon", "alt_m", "agl_m"))
                and values_of(part, "uav") == values_of(plain, "uav"))


def row(uav: str, t: float) -> Observation:
    return Observation(uav, t, 29.7, 106.6, 300.0, 5.0, 90.0, 0.0, 50.0, None, None, None,
                       "gw/gateway/native", t)


async def committed_through(rows: list[Observation], slice_obs: int,
                            turn_s: float = 0.0) -> Recorder:
    turns = [0]

    async def count_turns() -> None:
        while True:
            turns[0] += 1
            await asyncio.sleep(0)

    pipeline = Pipeline(cast(Store, MemoryStore()), LiveState(), Metrics(), commit_max_obs=10_000,
                        max_pending_obs=10_000, stage_slice_obs=slice_obs,
                        stage_turn_s=turn_s)
    recorder = Recorder(turns)
    pipeline.stages.append(recorder)
    counter = asyncio.create_task(count_turns())
    committer = asyncio.create_task(pipeline.run())
    try:
        result = await pipeline.submit(rows, retry=True)
        assert result.accepted == len(rows)
        assert await pipeline.drain(5.0)
    finally:
        for task in (committer, counter):
            task.cancel()
        await asyncio.gather(committer, counter, return_exceptions=True)
    assert recorder.columns_right == [True] * 2 * len(recorder.calls)
    return recorder


async def test_a_big_group_reaches_the_stages_in_slices_in_order() -> None:
    # U0..U9 report three times each, in a group of 2,500 rows: slices of 1,000, 1,000, 500.
    rows = [row(f"U{k % 10}", T0 + k) for k in range(2_500)]
    recorder = await committed_through(rows, 1_000)
    assert [len(part) for part, _, _ in recorder.calls] == [1_000, 1_000, 500]
    assert [r for part, _, _ in recorder.calls for r in part] == rows
    # As for the whole group: each UAV advances once, at its newest row (in the last slice).
    newest = {r.uav: r for r in rows}
    assert [adv for _, adv, _ in recorder.calls][:2] == [[], []]
    assert sorted(recorder.calls[2][1]) == sorted(newest.values())
    assert all(any(a is r for r in recorder.calls[2][0]) for a in recorder.calls[2][1])
    turns = [turn for _, _, turn in recorder.calls]
    assert turns[0] < turns[1] < turns[2]  # the loop ran other tasks between the slices


async def test_a_group_at_the_slice_size_is_one_call() -> None:
    rows = [row(f"U{k}", T0 + k) for k in range(1_000)]
    recorder = await committed_through(rows, 1_000)
    assert len(recorder.calls) == 1
    part, advanced, _ = recorder.calls[0]
    assert part == rows and advanced == rows


async def test_one_past_the_slice_size_is_two_calls() -> None:
    rows = [row(f"U{k}", T0 + k) for k in range(1_001)]
    recorder = await committed_through(rows, 1_000)
    assert [(len(p), len(a)) for p, a, _ in recorder.calls] == [(1_000, 1_000), (1, 1)]


async def test_stages_within_their_turn_keep_the_loop() -> None:
    rows = [row(f"U{k % 10}", T0 + k) for k in range(2_500)]
    recorder = await committed_through(rows, 1_000, turn_s=60.0)
    assert len({turn for _, _, turn in recorder.calls}) == 1


class BlockingRecorder(Recorder):
    """Holds its first call until released, as a stage busy with a big batch does."""

    def __init__(self) -> None:
        super().__init__([0])
        self.first_call = asyncio.Event()
        self.release = asyncio.Event()

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        await super().on_committed(rows, advanced)
        self.first_call.set()
        await self.release.wait()


async def test_groups_committed_while_the_stages_were_busy_go_on_together() -> None:
    """A stage's cost per call is paid once for the groups that queued behind a busy one (at
    high rates groups are small and many): the next call takes them all, up to a slice, in
    commit order, each UAV advancing once, at its newest row; draining still waits for all."""
    pipeline = Pipeline(cast(Store, MemoryStore()), LiveState(), Metrics(), commit_max_obs=100,
                        max_pending_obs=10_000, stage_slice_obs=250)
    recorder = BlockingRecorder()
    pipeline.stages.append(recorder)
    committer = asyncio.create_task(pipeline.run())
    groups = [[row(f"U{k % 60}", T0 + 100 * g + k) for k in range(100)] for g in range(5)]
    try:
        await pipeline.submit(groups[0], retry=True)
        await recorder.first_call.wait()
        for group in groups[1:]:  # four more groups commit while the stage is busy
            assert (await pipeline.submit(group, retry=True)).accepted == 100
        recorder.release.set()
        assert await pipeline.drain(5.0)
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
    # Three groups (300 rows) reach a slice of 250: one call of them, sliced 250 + 50; then
    # the last group alone.
    assert [len(rows) for rows, _, _ in recorder.calls] == [100, 250, 50, 100]
    assert recorder.columns_right == [True] * 8  # joined, then sliced
    assert [r for rows, _, _ in recorder.calls for r in rows] == [r for g in groups for r in g]
    together = groups[1] + groups[2] + groups[3]
    newest = {r.uav: r for r in together}
    advanced = recorder.calls[1][1] + recorder.calls[2][1]
    assert sorted(advanced) == sorted(newest.values())
    assert all(any(a is r for r in together) for a in advanced)


class KeyStore:
    """A store that remembers keys: a key seen before is a duplicate. Keeps what the pipeline
    said of each group (`unseen`), and fails a group said unseen that holds a stored key."""

    def __init__(self) -> None:
        self.keys: set[tuple[str, float]] = set()
        self.unseen: list[bool] = []

    async def insert_observations(self, rows: Sequence[Observation], *,
                                  unseen: bool = False) -> list[bool]:
        self.unseen.append(unseen)
        new = []
        for r in rows:
            new.append((r.uav, r.t) not in self.keys)
            self.keys.add((r.uav, r.t))
        assert all(new) or not unseen, "a group said unseen held a stored key"
        return new


async def test_each_submission_is_told_its_own_new_rows_and_duplicates() -> None:
    """Submissions committed in one group: all new (the fast path), a key in two submissions of
    the group (the first keeps it), a key stored before; each told its own counts and rows."""
    store = KeyStore()
    pipeline = Pipeline(cast(Store, store), LiveState(), Metrics(), commit_max_obs=10_000,
                        max_pending_obs=10_000)
    committer = asyncio.create_task(pipeline.run())
    try:
        a = [row("A", T0 + k) for k in range(3)]
        b = [row("B", T0 + k) for k in range(2)]
        first = await asyncio.gather(pipeline.submit(a, retry=True),
                                     pipeline.submit(b, retry=True))
        assert [(r.accepted, r.duplicates, r.inserted) for r in first] == [
            (3, 0, tuple(a)), (2, 0, tuple(b))]
        c = [row("C", T0), row("A", T0 + 1), row("C", T0 + 1)]  # A at T0 + 1: stored before
        d = [row("C", T0 + 1), row("D", T0)]  # C at T0 + 1: also in c, which came first
        second = await asyncio.gather(pipeline.submit(c, retry=True),
                                      pipeline.submit(d, retry=True))
        assert [(r.accepted, r.duplicates, r.inserted) for r in second] == [
            (2, 1, (c[0], c[2])), (1, 1, (d[1],))]
        assert pipeline.live.latest["C"] == c[2]
        # The first group was newer than the live picture everywhere (the store may write it
        # the short way); the second held A at T0 + 1, not newer than A's live T0 + 2.
        assert store.unseen == [True, False]
        e = [row("A", T0 + 3), row("E", T0)]
        assert (await pipeline.submit(e, retry=True)).accepted == 2
        assert store.unseen == [True, False, True]
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)


class SlowStore(KeyStore):
    """A KeyStore whose first write takes a while; keeps the stored copy of each key and how
    many writes ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = self.running = self.most_at_once = 0
        self.stored: dict[tuple[str, float], Observation] = {}

    async def insert_observations(self, rows: Sequence[Observation], *,
                                  unseen: bool = False) -> list[bool]:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(0.2 if self.calls == 1 else 0.0)
            new = await super().insert_observations(rows, unseen=unseen)
            for r, is_new in zip(rows, new, strict=True):
                if is_new:
                    self.stored[(r.uav, r.t)] = r
            return new
        finally:
            self.running -= 1


async def test_groups_commit_at_once_yet_the_first_copy_of_a_key_wins() -> None:
    """Two groups commit at once (PostgreSQL's default); a submission holding a key of a group
    still committing waits for it, so the copy sent first is stored and the later one is told
    it is a duplicate, even when the later group would have finished first."""
    store = SlowStore()
    pipeline = Pipeline(cast(Store, store), LiveState(), Metrics(), commit_max_obs=2,
                        max_pending_obs=10_000, commit_concurrency=2)
    committer = asyncio.create_task(pipeline.run())
    try:
        first = pipeline.submit([row("A", T0), row("B", T0)], retry=True)  # the slow write
        await asyncio.sleep(0.05)
        other = pipeline.submit([row("C", T0)], retry=True)  # no key in common: at once
        again = pipeline.submit([row("A", T0)._replace(lat=1.0)], retry=True)
        results = await asyncio.gather(first, other, again)
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
    assert [(r.accepted, r.duplicates) for r in results] == [(2, 0), (1, 0), (0, 1)]
    assert store.most_at_once == 2
    assert store.stored[("A", T0)].lat == 29.7
    assert not pipeline._committing


class SignallingRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__([0])
        self.called = asyncio.Event()

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        await super().on_committed(rows, advanced)
        self.called.set()


async def test_groups_within_the_stage_interval_go_on_together() -> None:
    """The stages start at most once per stage_interval_s: a group after a quiet spell goes on
    at once, the groups committed within the interval after it go on together in one call."""
    pipeline = Pipeline(cast(Store, MemoryStore()), LiveState(), Metrics(), commit_max_obs=100,
                        max_pending_obs=10_000, stage_interval_s=0.5)
    recorder = SignallingRecorder()
    pipeline.stages.append(recorder)
    committer = asyncio.create_task(pipeline.run())
    groups = [[row(f"U{g}", T0 + g)] for g in range(4)]
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await pipeline.submit(groups[0], retry=True)
        await recorder.called.wait()
        assert loop.time() - started < 0.4  # the first group did not wait for the interval
        for group in groups[1:]:  # three groups, each committed on its own
            assert (await pipeline.submit(group, retry=True)).accepted == 1
        assert await pipeline.drain(5.0)
        assert loop.time() - started >= 0.5
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
    assert [part for part, _, _ in recorder.calls] == [groups[0], groups[1] + groups[2] + groups[3]]


class Burner:
    """A stage that spends cpu_s of its thread's CPU time per call (or fails after it)."""

    def __init__(self, name: str, cpu_s: float, fail: bool = False) -> None:
        self.name, self.cpu_s, self.fail = name, cpu_s, fail

    def burn(self) -> None:
        import time

        until = time.thread_time() + self.cpu_s
        while time.thread_time() < until:
            pass

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        self.burn()
        if self.fail:
            raise RuntimeError("stage bug")


async def test_each_stage_counts_its_cpu_time_and_observations() -> None:
    metrics = Metrics()
    pipeline = Pipeline(cast(Store, MemoryStore()), LiveState(), metrics, commit_max_obs=10_000,
                        max_pending_obs=10_000, stage_slice_obs=1_000)
    pipeline.stages += [Burner("cheap", 0.0), Burner("costly", 0.03), Burner("broken", 0.01, True)]
    committer = asyncio.create_task(pipeline.run())
    try:
        rows = [row(f"U{k % 50}", T0 + k) for k in range(2_500)]  # three slices
        assert (await pipeline.submit(rows, retry=True)).accepted == 2_500
        assert await pipeline.drain(5.0)
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)

    def cpu(stage: str) -> float:
        return metrics.value("lowalt_stage_cpu_seconds_total", stage=stage)

    assert 0.09 <= cpu("costly") < 0.5 and 0.03 <= cpu("broken") < cpu("costly")
    assert cpu("cheap") < 0.03
    for stage in ("cheap", "costly", "broken"):
        assert metrics.value("lowalt_stage_observations_total", stage=stage) == 2_500
    assert metrics.value("lowalt_stage_errors_total", stage="broken") == 3
    assert "lowalt_stage_cpu_seconds_total{stage=\"costly\"}" in metrics.render()


class Awaiting:
    """A stage that spends `own_s` of CPU itself, then awaits another process's answer
    (`awaited_cpu_s` counts this thread's CPU meanwhile), during which the loop runs a task
    that burns `others_s`."""

    name = "awaiting"

    def __init__(self, own_s: float, others_s: float) -> None:
        self.own_s, self.others_s, self.awaited_cpu_s = own_s, others_s, 0.0

    async def on_committed(
        self, rows: Sequence[Observation], advanced: Sequence[Observation]
    ) -> None:
        import time

        Burner("own", self.own_s).burn()
        other = asyncio.create_task(asyncio.to_thread(lambda: None))  # a turn of the loop
        started = time.thread_time()
        await asyncio.sleep(0)
        Burner("others", self.others_s).burn()  # as another task would, while this awaits
        await other
        self.awaited_cpu_s += time.thread_time() - started


async def test_a_stage_cpu_leaves_out_what_ran_while_it_awaited_another_process() -> None:
    metrics = Metrics()
    pipeline = Pipeline(cast(Store, MemoryStore()), LiveState(), metrics, commit_max_obs=10_000,
                        max_pending_obs=10_000, stage_slice_obs=1_000)
    stage = Awaiting(own_s=0.01, others_s=0.05)
    pipeline.stages.append(stage)
    committer = asyncio.create_task(pipeline.run())
    try:
        assert (await pipeline.submit([row("U", T0)], retry=True)).accepted == 1
        assert await pipeline.drain(5.0)
    finally:
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
    assert stage.awaited_cpu_s >= 0.05
    assert 0.01 <= metrics.value("lowalt_stage_cpu_seconds_total", stage="awaiting") < 0.04
