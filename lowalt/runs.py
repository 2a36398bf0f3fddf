"""Runs laid end to end in one flat array (a variable number of entries per item): positions
computed with numpy alone, for the vectorised hot paths (COPY data, the zone grid, the conflict
grid, clearance volumes)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


def within_runs(lengths: npt.ArrayLike) -> I64:
    """For runs of `lengths` entries laid end to end: each entry's position in its run
    (0 .. lengths[i] - 1 for run i, in order)."""
    n = np.asarray(lengths, dtype=np.int64)
    return np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)


def spans(starts: npt.ArrayLike, lengths: npt.ArrayLike) -> I64:
    """The positions starts[i] .. starts[i] + lengths[i] - 1 of every i, in order."""
    n = np.asarray(lengths, dtype=np.int64)
    return np.repeat(np.asarray(starts, dtype=np.int64), n) + within_runs(n)
