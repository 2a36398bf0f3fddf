"""Per-token limits: observations per second (a token bucket) and open telemetry connections.

The buckets are shared by every transport of one token (HTTP, WebSocket, gateway), so spreading
a load over transports or connections gains nothing. HTTP answers 429 with the wait; the streaming
transports wait instead (they stop reading their socket until the bucket has refilled), so what
a sender sent is only ever delayed, never dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


class TokenBucket:
    """`capacity` observations at most, refilled at `rate_per_s`; starts full."""

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self.rate_per_s, self.capacity = rate_per_s, capacity
        self.level, self.updated = capacity, now

    def take(self, n: float, now: float) -> float:
        """Take n now and return 0.0, or take nothing and return the seconds until n are there.

        n is capped at the capacity, so a request bigger than the bucket waits for a full one
        instead of forever.
        """
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = now
        n = min(n, self.capacity)
        if n <= self.level:
            self.level -= n
            return 0.0
        return (n - self.level) / self.rate_per_s


class RateLimits:
    """One bucket per token id."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s, self.burst = rate_per_s, burst
        self._buckets: dict[int, TokenBucket] = {}

    def take(self, token_id: int, n: int) -> float:
        """Take n observations from the token's bucket: 0.0, or the seconds to wait (nothing
        taken)."""
        if n <= 0 or math.isinf(self.rate_per_s):
            return 0.0
        now = time.monotonic()
        bucket = self._buckets.get(token_id)
        if bucket is None:
            bucket = self._buckets[token_id] = TokenBucket(self.rate_per_s, self.burst, now)
        return bucket.take(n, now)

    async def wait_for(self, token_id: int, n: int) -> None:
        """Take n observations from the token's bucket, first sleeping as long as needed."""
        wait_s = self.take(token_id, n)
        while wait_s > 0:
            await asyncio.sleep(wait_s)
            wait_s = self.take(token_id, n)


def retry_after_s(wait_s: float) -> int:
    """The whole seconds a client must wait for `wait_s` to pass (Retry-After, at least 1)."""
    return max(1, math.ceil(wait_s))


Closer = Callable[[str], None]  # ends one connection, giving the reason


@dataclass
class ConnectionLimits:
    """Open long-lived telemetry connections (gateway and WebSocket) per token id, with a way to
    end them all when the token is revoked."""

    max_per_token: int
    open: dict[int, set[Closer]] = field(default_factory=dict)

    def acquire(self, token_id: int, close: Closer) -> bool:
        """Count one more connection of the token; False (and nothing counted) at the limit."""
        conns = self.open.setdefault(token_id, set())
        if len(conns) >= self.max_per_token:  # not empty: max_per_token is positive
            return False
        conns.add(close)
        return True

    def release(self, token_id: int, close: Closer) -> None:
        conns = self.open.get(token_id)
        if conns is not None:
            conns.discard(close)
            if not conns:
                del self.open[token_id]

    def revoke(self, token_id: int, reason: str) -> None:
        """End every open connection of the token (it was revoked)."""
        for close in list(self.open.get(token_id, ())):
            close(reason)

    def refusal(self) -> str:
        return f"too many open connections for this token (limit {self.max_per_token})"


@dataclass
class Limits:
    """The per-token limits of one server."""

    rates: RateLimits
    connections: ConnectionLimits

    @classmethod
    def unlimited(cls) -> Limits:  # for an IngestContext built without a server (tests)
        return cls(RateLimits(math.inf, 2**62), ConnectionLimits(2**62))


LIMITS = web.AppKey("limits", Limits)
