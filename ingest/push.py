"""Frames the server pushes to telemetry connections: which open session carries which UAV.

A streaming session (gateway or WebSocket, `ingest.frames.FrameSession`) registers the UAVs of
the observations it submits and unregisters when its connection closes. `PushHub.push` hands a
payload to every session that carried the UAV; each writes it through its own `OrderedReplies`,
after the answers it already owes, in the connection's encoding (API.md section 2.2: a client
ignores keys it does not know). Pushing is best effort: a UAV with no open session gets nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class PushTarget(Protocol):
    """A session that can write a server-initiated frame to its peer."""

    def deliver(self, payload: Mapping[str, Any]) -> bool:
        """Queue payload for the peer; False when the connection can take nothing more."""


class PushHub:
    def __init__(self) -> None:
        # A UAV is carried by one session or a few: a tuple (48 B for one) rather than a set
        # (216 B), since this holds an entry for every live UAV.
        # The UAVs carried by one session alone all share that session's 1-tuple.
        self._sessions_of: dict[str, tuple[PushTarget, ...]] = {}
        # Per session, the UAVs it carries, each once (for `unregister`): a list, 8 B a UAV
        # where a set takes 30-40; `_sessions_of` tells whether one is there already.
        self._uavs_of: dict[PushTarget, list[str]] = {}
        self._alone: dict[PushTarget, tuple[PushTarget]] = {}

    def register(self, session: PushTarget, uavs: Iterable[str]) -> None:
        """Note that session carries uavs (repeats are cheap: a dict lookup per UAV)."""
        known = self._uavs_of.setdefault(session, [])
        alone = self._alone.setdefault(session, (session,))
        sessions_of = self._sessions_of
        for uav in uavs:
            others = sessions_of.get(uav)
            if others is None:
                sessions_of[uav] = alone
            elif others is alone or session in others:
                continue
            else:
                sessions_of[uav] = (*others, session)
            known.append(uav)

    def unregister(self, session: PushTarget) -> None:
        sessions_of = self._sessions_of
        self._alone.pop(session, None)
        for uav in self._uavs_of.pop(session, ()):
            rest = tuple(s for s in sessions_of.get(uav, ()) if s is not session)
            if rest:
                sessions_of[uav] = rest
            else:
                sessions_of.pop(uav, None)

    def sessions(self, uav: str) -> int:
        """How many open sessions carry uav."""
        return len(self._sessions_of.get(uav, ()))

    def push(self, uav: str, payload: Mapping[str, Any]) -> int:
        """Send payload on every open session that carried uav; how many took it."""
        return sum(1 for s in self._sessions_of.get(uav, ()) if s.deliver(payload))
