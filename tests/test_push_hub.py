"""PushHub: a push reaches every open session that carried the UAV, once each, and none after
its connection closed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.push import PushHub


class Session:
    def __init__(self, open_: bool = True) -> None:
        self.got: list[Mapping[str, Any]] = []
        self.open = open_

    def deliver(self, payload: Mapping[str, Any]) -> bool:
        if self.open:
            self.got.append(payload)
        return self.open


def test_push_reaches_each_session_that_carried_the_uav_once() -> None:
    hub, a, b, c = PushHub(), Session(), Session(), Session()
    hub.register(a, ["U1", "U2"])
    hub.register(a, ["U1"])  # again: no second entry
    hub.register(b, ["U1"])
    hub.register(c, ["U3"])
    hub.register(a, ["U2", "U1", "U2"])  # carried already, alone or with another: no entry
    hub.register(b, ["U1", "U1"])
    assert hub._uavs_of == {a: ["U1", "U2"], b: ["U1"], c: ["U3"]}  # each UAV once
    assert (hub.sessions("U1"), hub.sessions("U2"), hub.sessions("U9")) == (2, 1, 0)
    assert hub.push("U1", {"n": 1}) == 2
    assert a.got == [{"n": 1}] and b.got == [{"n": 1}] and c.got == []
    assert hub.push("U9", {"n": 2}) == 0

    hub.unregister(a)
    assert (hub.sessions("U1"), hub.sessions("U2")) == (1, 0)
    assert hub.push("U1", {"n": 3}) == 1 and a.got == [{"n": 1}] and b.got[-1] == {"n": 3}
    hub.unregister(b)
    hub.unregister(b)  # twice is harmless
    assert hub.push("U1", {"n": 4}) == 0 and hub.sessions("U3") == 1
    hub.unregister(c)
    assert hub._sessions_of == {} and hub._uavs_of == {} and hub._alone == {}


def test_the_uavs_of_one_session_share_one_entry() -> None:
    """An entry per live UAV: those carried by one session alone share its 1-tuple."""
    hub, a, b = PushHub(), Session(), Session()
    hub.register(a, [f"U{k}" for k in range(1_000)])
    hub.register(b, ["U0"])
    assert len({id(hub._sessions_of[f"U{k}"]) for k in range(1, 1_000)}) == 1
    assert hub.push("U0", {"n": 1}) == 2 and hub.push("U5", {"n": 2}) == 1
    assert a.got == [{"n": 1}, {"n": 2}] and b.got == [{"n": 1}]


def test_a_session_that_takes_nothing_more_is_not_counted() -> None:
    hub, full, ok = PushHub(), Session(open_=False), Session()
    hub.register(full, ["U1"])
    hub.register(ok, ["U1"])
    assert hub.push("U1", {"n": 1}) == 1 and ok.got == [{"n": 1}]
