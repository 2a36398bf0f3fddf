"""Bearer tokens and the one place where roles and ownership are checked.

Tokens are random (256 bits), shown once, and stored only as their SHA-256 (a slow hash adds
nothing for secrets of that entropy). Resolved tokens are cached for `cache_ttl_s`, so a
revocation made by another process (the CLI) takes effect within that time.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Iterable

from aiohttp import web

from lowalt.errors import AuthError, StorageUnavailable
from lowalt.models import Principal
from lowalt.storage import Store, UavRecord

TOKEN_PREFIX = "lwt_"
PRINCIPAL = web.RequestKey("principal", Principal)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(header: str | None) -> str | None:
    """The token from an `Authorization: Bearer ...` header value."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Authenticator:
    def __init__(self, store: Store, cache_ttl_s: float = 5.0) -> None:
        self.store = store
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def principal(self, token: str | None) -> Principal:
        """The caller behind a token; AuthError(401) when missing, unknown, revoked or expired."""
        if not token:
            raise AuthError("missing bearer token", 401)
        digest = hash_token(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            record = await self.store.token_by_hash(digest)
        except StorageUnavailable:
            if cached is not None:  # the database is away: keep serving known callers
                return cached[1]
            raise
        if record is None or record.revoked:
            self._cache.pop(digest, None)
            raise AuthError("unknown or revoked token", 401)
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthError("token expired", 401)
        principal = Principal(record.token_id, record.name, record.role, record.operator)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self.cache_ttl_s, principal)
        return principal

    def forget(self, token_id: int) -> None:
        """Drop a revoked token from the cache, so it stops working at once in this process."""
        self._cache = {d: c for d, c in self._cache.items() if c[1].token_id != token_id}


AUTH = web.AppKey("auth", Authenticator)


def require_role(principal: Principal, roles: Iterable[str]) -> None:
    """AuthError(403) unless the principal holds one of roles (admin holds every role)."""
    allowed = set(roles)
    if principal.role != "admin" and principal.role not in allowed:
        raise AuthError(
            f"role {principal.role!r} may not do this (needs {' or '.join(sorted(allowed))})", 403
        )


class Registry:
    """UAV -> operator (and aliases), kept in memory and refreshed from storage."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.by_uav: dict[str, UavRecord] = {}
        self.alias_to_uav: dict[str, str] = {}
        self._fingerprint: tuple[int, float] | None = None  # storage's, at the last reload
        self.lock = asyncio.Lock()  # serialises read-modify-write changes (PATCH)

    async def refresh(self) -> None:
        """Reload from storage if it changed since the last reload (its fingerprint: one
        small query, not every row every few seconds). Unchanged, the tables stay the same
        objects, so readers that follow them (fusion's `Identities`) rebuild nothing."""
        fingerprint = await self.store.uavs_fingerprint()
        if fingerprint == self._fingerprint:
            return
        by_uav = {r.uav: r for r in await self.store.uavs()}
        self._fingerprint = fingerprint  # a change since the fingerprint: seen next time
        if by_uav != self.by_uav:
            self._set(by_uav)

    def _set(self, by_uav: dict[str, UavRecord]) -> None:
        """New tables (never changed in place: readers follow them by identity)."""
        aliases = {a: r.uav for r in by_uav.values() for a in r.aliases}
        self.by_uav, self.alias_to_uav = by_uav, aliases

    async def register(self, record: UavRecord) -> None:
        await self.store.upsert_uav(record)
        by_uav = {uav: r for uav, r in self.by_uav.items() if uav != record.uav}
        by_uav[record.uav] = record  # last: on an alias two UAVs claim, its claim wins
        self._set(by_uav)

    def is_known(self, uav: str) -> bool:
        """Whether uav is a registered UAV or one of a registered UAV's aliases."""
        return uav in self.by_uav or uav in self.alias_to_uav

    def operator_of(self, uav: str) -> str | None:
        record = self.by_uav.get(uav)
        return record.operator if record else None

    def may_send(self, principal: Principal, uav: str) -> bool:
        """Whether principal may send telemetry for uav: gateways any, operators their own."""
        if principal.role in ("gateway", "admin"):
            return True
        if principal.role == "operator":
            return principal.operator is not None and self.operator_of(uav) == principal.operator
        return False

    def may_read(self, principal: Principal, uav: str) -> bool:
        if principal.reads_all:
            return True
        return principal.role == "operator" and self.operator_of(uav) == principal.operator
