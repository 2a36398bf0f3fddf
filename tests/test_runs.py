"""lowalt.runs: positions of runs laid end to end, against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from lowalt.runs import spans, within_runs


@pytest.mark.parametrize("seed", range(5))
def test_runs_match_a_loop_zero_length_runs_included(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, size=int(rng.integers(0, 40)))
    starts = rng.integers(-100, 100, size=lengths.size)
    assert within_runs(lengths).tolist() == [k for n in lengths.tolist() for k in range(n)]
    assert spans(starts, lengths).tolist() == [
        s + k for s, n in zip(starts.tolist(), lengths.tolist(), strict=True) for k in range(n)]
    assert within_runs(lengths).dtype == spans(starts, lengths).dtype == np.int64


def test_no_runs() -> None:
    assert within_runs(np.array([], np.int64)).size == 0
    assert spans(np.array([], np.int64), np.array([], np.int64)).size == 0
