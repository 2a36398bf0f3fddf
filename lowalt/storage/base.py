"""The storage interface every backend implements, and the records it returns."""

from __future__ import annotations

import abc
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from lowalt.models import Observation


@dataclass(frozen=True)
class TokenRecord:
    token_id: int
    name: str
    role: str
    operator: str | None
    expires_at: float | None
    revoked: bool
    created_at: float = 0.0


class UavRecord(NamedTuple):
    """A registered UAV. A named tuple: the registry holds one per UAV (less memory than a
    dataclass instance), and comparing two registries is a C-level comparison."""

    uav: str
    operator: str
    aliases: tuple[str, ...] = ()
    priority: bool = False
    serial: str | None = None
    model: str | None = None
    uav_class: str | None = None
    max_speed_mps: float | None = None


def uav_record(row: Sequence[Any]) -> UavRecord:
    """A `uavs` row (uav, operator, aliases JSON, priority, serial, model, uav_class,
    max_speed_mps), as both backends select it; operator names are interned (one string per
    operator, not per UAV)."""
    return UavRecord(row[0], sys.intern(row[1]), tuple(json.loads(row[2])), bool(row[3]),
                     row[4], row[5], row[6], row[7])


class Store(abc.ABC):
    """Durable state. Every method may raise StorageUnavailable when the database is away."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when storage answers; raise StorageUnavailable otherwise."""

    @abc.abstractmethod
    async def insert_observations(
        self, rows: Sequence[Observation], *, unseen: bool = False
    ) -> list[bool]:
        """Commit rows (distinct (uav, t) keys) in one transaction; True where a row was new.

        unseen: the caller believes no row is stored yet (each is newer than its UAV's live
        observation); a store may then write them the short way, and must still tell every
        duplicate if the belief was wrong."""

    @abc.abstractmethod
    async def track(
        self, uav: str, t_from: float, t_to: float, limit: int
    ) -> list[Observation]:
        """Stored observations of one UAV with t_from <= t <= t_to, oldest first."""

    @abc.abstractmethod
    async def track_many(
        self, uavs: Sequence[str], t_from: float, t_to: float, limit: int
    ) -> list[Observation]:
        """Stored observations of any of uavs (one aircraft's identifiers) with
        t_from <= t <= t_to, oldest first (ties by uav)."""

    @abc.abstractmethod
    async def newest_many(
        self, uavs: Sequence[str], t_from: float, per_uav: int
    ) -> list[Observation]:
        """The newest per_uav stored observations of each of uavs with t >= t_from, oldest
        first (ties by uav)."""

    @abc.abstractmethod
    async def latest_observations(self, t_min: float) -> list[Observation]:
        """The newest observation of every UAV that has one with t >= t_min."""

    @abc.abstractmethod
    async def delete_observations_before(self, t: float) -> int:
        """Retention: delete observations measured before t; return how many."""

    @abc.abstractmethod
    async def insert_token(
        self, token_hash: str, name: str, role: str, operator: str | None,
        expires_at: float | None, created_at: float,
    ) -> int: ...

    @abc.abstractmethod
    async def token_by_hash(self, token_hash: str) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def revoke_token(self, token_hash: str) -> bool: ...

    @abc.abstractmethod
    async def token_by_id(self, token_id: int) -> TokenRecord | None: ...

    @abc.abstractmethod
    async def list_tokens(self) -> list[TokenRecord]:
        """Every token's metadata (never its hash), oldest first."""

    @abc.abstractmethod
    async def revoke_token_id(self, token_id: int) -> bool:
        """Revoke by id; True when the token was active until now."""

    @abc.abstractmethod
    async def upsert_uav(self, record: UavRecord) -> None: ...

    @abc.abstractmethod
    async def uavs(self) -> list[UavRecord]: ...

    @abc.abstractmethod
    async def uavs_fingerprint(self) -> tuple[int, float]:
        """(rows, newest `updated_at`) of the registry: equal while nothing changed it."""

    @abc.abstractmethod
    async def uav(self, uav: str) -> UavRecord | None: ...
