"""Open alerts filed by UAV: for each UAV named by an open alert (as its `uav` or `other_uav`),
the alerts' slots, found for a whole batch of UAVs at once.

`AlertManager.assess` asks, on every pass, which open alerts the evaluated UAVs hold (to find the
ones whose condition was not seen). Asked per UAV of a Python mapping, that cost a dict lookup
and half a dozen C-level passes over Python objects per evaluated UAV (`isinstance`, tuple
unpacking), each touching a heap object of its own: about 1.3 us per observation on the server
with half the fleet in a zone condition, a twentieth of all its CPU. Here each UAV gets a code
(one dict lookup per UAV asked for, the only per-UAV Python step), and the slots of a code form
a doubly linked list kept in numpy arrays, so a batch's slots come out by a few array steps per
list position (`walk`).

A node is one filing of a slot: node `2 * slot` under the alert's `uav`, node `2 * slot + 1`
under its `other_uav` (pair alerts). `_head[code]` is the code's first node (-1: none), and
`_next`, `_prev` link the nodes of a code. A UAV left with no node gives its code back.
Memory: 16 B per slot (two int32 links for each of its two nodes), 4 B per code, and the dict
entry and int of each filed UAV's code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

__all__ = ["UavFiling"]

_FEW = 8  # fewer nodes than this are filed one by one (numpy's fixed cost per call is more)


def _widened(links: I32, size: int) -> I32:
    """links in an array of size entries, the new ones -1 (no node)."""
    wider = np.full(size, -1, dtype=np.int32)
    wider[: links.size] = links
    return wider


class UavFiling:
    """Slots filed under UAVs; see the module docstring."""

    __slots__ = ("_free_codes", "_head", "_next", "_prev", "code_of")

    def __init__(self, slot_capacity: int = 0) -> None:
        self.code_of: dict[str, int] = {}
        self._free_codes: list[int] = []
        self._head: I32 = np.full(1024, -1, dtype=np.int32)
        self._next: I32 = np.full(2 * slot_capacity, -1, dtype=np.int32)
        self._prev: I32 = np.full(2 * slot_capacity, -1, dtype=np.int32)

    def __len__(self) -> int:
        """UAVs with at least one slot filed."""
        return len(self.code_of)

    def __contains__(self, uav: object) -> bool:
        return uav in self.code_of

    def grow(self, slot_capacity: int) -> None:
        """Room for slots below slot_capacity (never shrinks)."""
        if 2 * slot_capacity > self._next.size:
            self._next = _widened(self._next, 2 * slot_capacity)
            self._prev = _widened(self._prev, 2 * slot_capacity)

    def _code(self, uav: str) -> int:
        code = self.code_of.get(uav)
        if code is not None:
            return code
        if self._free_codes:
            code = self._free_codes.pop()
        else:
            code = len(self.code_of)  # every code below it is in use
            if code >= self._head.size:
                self._head = _widened(self._head, 2 * self._head.size)
        self.code_of[uav] = code
        return code

    def file(self, uavs: Sequence[str], nodes: Sequence[int]) -> None:
        """File each node (2 * slot + side, not filed yet) under the UAV beside it. Linked in
        numpy: the new nodes of a code are chained in order and put before its old ones."""
        nxt, prv = self._next, self._prev
        if len(nodes) < _FEW:  # one alert opened at a time (open_or_update): scalar steps
            for uav, new in zip(uavs, nodes, strict=True):
                at = self._code(uav)  # may grow _head
                old = int(self._head[at])
                nxt[new], prv[new], self._head[at] = old, -1, new
                if old >= 0:
                    prv[old] = new
            return
        code = np.fromiter(map(self._code, uavs), np.int64, len(uavs))
        node = np.asarray(nodes, dtype=np.int64)
        order = np.argsort(code, kind="stable")
        code, node = code[order], node[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ends = np.r_[starts[1:], code.size] - 1
        nxt[node[:-1]] = node[1:]  # within a code's run; each run's last is set below
        prv[node[1:]] = node[:-1]  # each run's first is set below
        codes = code[starts]
        heads = self._head[codes].astype(np.int64)
        nxt[node[ends]] = heads
        prv[node[starts]] = -1
        had = heads >= 0
        prv[heads[had]] = node[ends][had]
        self._head[codes] = node[starts]

    def unfile(self, uav: str, node: int) -> None:
        """Take node from under uav (where `file` put it); a UAV left with none goes."""
        code = self.code_of[uav]
        before, after = int(self._prev[node]), int(self._next[node])
        if before >= 0:
            self._next[before] = after
        else:
            self._head[code] = after
        if after >= 0:
            self._prev[after] = before
        self._next[node] = self._prev[node] = -1
        if self._head[code] < 0:
            del self.code_of[uav]
            self._free_codes.append(code)

    def codes(self, uavs: Iterable[str], n: int) -> I64:
        """The codes of n UAVs (-1: nothing filed under it), by one C-level lookup each."""
        return np.fromiter(map(self.code_of.get, uavs, repeat(-1)), np.int64, n)

    def walk(self, codes: I64) -> tuple[I64, I64]:
        """(node, owner): every node filed under each code, owner its position in codes
        (codes < 0 hold none). Nodes of one code come in filing order, newest first."""
        owner = np.flatnonzero(codes >= 0)
        node = self._head[codes[owner]].astype(np.int64)
        nodes, owners = [], []
        while True:
            filed = node >= 0
            if not filed.all():
                owner, node = owner[filed], node[filed]
            if not node.size:
                break
            nodes.append(node)
            owners.append(owner)
            node = self._next[node].astype(np.int64)
        if not nodes:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(nodes), np.concatenate(owners)

    def slots_of(self, uav: str) -> set[int]:
        """The slots filed under uav (none when nothing is)."""
        code = self.code_of.get(uav)
        if code is None:
            return set()
        node, _ = self.walk(np.array([code], np.int64))
        return set((node >> 1).tolist())
