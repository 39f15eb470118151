"""Leases in Redis, so that work that must be done once is done by one of several Butlers at a time.

A lease is a Redis key holding its holder's instance id and a fencing token; the token comes from a counter
of the lease's own that only grows, so whatever a holder wrote can be told from what an earlier holder
wrote. Every ``renew_seconds`` (a third of the lease) each Butler asks for each of its leases: the holder's
lease is extended, a free one is taken, one held by another is left alone. Taking, extending and
releasing are each one Lua script, so two Butlers never both think they took a lease.

A holder acts only while its own clock says the lease is still valid, counted from the moment it *sent* the
request that took or extended it: Redis cannot have expired the key before then. A holder that cannot
reach Redis therefore stops acting before another can take over. With the lease at three quarters of
``takeover_seconds`` and the others asking every quarter, a lease whose holder died is taken within
``takeover_seconds``.

Without Redis (a Butler alone) every lease is held, always, with token 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from butler.errors import Unavailable
from butler.redis_edge import DELETE_IF_HELD, RedisEdge
from butler.stopping import every

if TYPE_CHECKING:
    from butler.http.ratelimit import RateLimiter

log = logging.getLogger("butler")

#: KEYS: lease, fence. ARGV: instance id, lease ms. Takes a free lease or extends our own; returns the token
#: we hold (0 if none), the holder's value and the time left, so that one call also tells /health who holds.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if not current then
  local token = redis.call('INCR', KEYS[2])
  current = ARGV[1] .. ' ' .. token
  redis.call('SET', KEYS[1], current, 'PX', ARGV[2])
elseif string.sub(current, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ' ' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {current, redis.call('PTTL', KEYS[1])}
"""


def lease_times(takeover_seconds: float) -> tuple[float, float]:
    """How long a lease (or a claim held as one) lasts, and how often it is asked for: three quarters and a
    quarter of ``takeover_seconds``, so that one whose holder died is taken within ``takeover_seconds``."""
    return takeover_seconds * 0.75, takeover_seconds / 4


class LeaseUnavailable(Unavailable):
    """Redis cannot be asked about a lease."""


def _unreachable(exc: Exception) -> Exception:
    return LeaseUnavailable(f"cannot reach Redis for the leases: {exc}")


def _iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Lease:
    """One lease as this Butler last saw it."""

    name: str
    #: The fencing token of our hold; None while another holds it (or nobody could be asked).
    token: int | None = None
    #: Monotonic instant up to which we may act on our hold.
    valid_until: float = 0.0
    holder: str | None = None
    holder_token: int | None = None
    #: Wall-clock expiry of the holder's lease, as Redis said at the last ask.
    expires_at: float | None = None
    local: bool = False
    clock: Callable[[], float] = time.monotonic

    @property
    def held(self) -> bool:
        """Whether this Butler may act now as the lease's one holder."""
        return self.local or (self.token is not None and self.clock() < self.valid_until)

    def stats(self, instance: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": instance if self.local else self.holder,
            "fencingToken": 0 if self.local else self.holder_token,
            "expiresAt": None if self.local or self.expires_at is None else _iso(self.expires_at),
            "mine": self.held,
        }


class Leases:
    """The leases of one Butler: ``lease(name)`` before ``start``; ``close`` releases those held."""

    def __init__(
        self,
        redis_url: str | None,
        prefix: str = "butler:",
        *,
        takeover_seconds: float = 15.0,
        instance_id: str | None = None,
    ) -> None:
        self.instance = instance_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.prefix = prefix
        self.takeover_seconds = takeover_seconds
        self.lease_seconds, self.renew_seconds = lease_times(takeover_seconds)
        self.leases: dict[str, Lease] = {}
        self.redis = RedisEdge(redis_url, _unreachable) if redis_url else None
        #: Why the last ask of Redis failed, while it fails.
        self.problem: str | None = None
        #: The REST rate limit, which counts in the same Redis; listed with the leases in /health.
        self.rate_limiter: RateLimiter | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def shared(self) -> bool:
        return self.redis is not None

    def lease(self, name: str) -> Lease:
        lease = self.leases.get(name)
        if lease is None:
            lease = self.leases[name] = Lease(name, local=self.redis is None)
        return lease

    async def start(self) -> None:
        """Asks for every lease once (so a Butler alone holds them from the start), then keeps asking."""
        if self.redis is None or self._task is not None:
            return
        await self.renew_all()
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="leases")

    async def _keep(self) -> None:
        await every(self.renew_seconds, self._stopping, self.renew_all)

    async def renew_all(self) -> None:
        for lease in list(self.leases.values()):
            try:
                await self.renew(lease)
            except LeaseUnavailable as exc:
                if self.problem is None:
                    log.error("%s; leases held are given up when they end", exc)
                self.problem = str(exc)
                return
        if self.problem is not None:
            log.info("Redis answers again: the leases are asked for again")
        self.problem = None

    async def renew(self, lease: Lease) -> None:
        """Take ``lease`` if free, extend it if ours, and note who holds it."""
        assert self.redis is not None
        sent = lease.clock()
        client = self.redis.client
        key, fence = self._keys(lease.name)
        lease_ms = max(1, round(self.lease_seconds * 1000))
        value, left = await self.redis.call(
            client.eval(_ACQUIRE, 2, key, fence, self.instance, str(lease_ms))
        )
        holder, _, token = str(value).rpartition(" ")
        lease.holder, lease.holder_token = holder, int(token)
        lease.expires_at = time.time() + int(left) / 1000
        if holder == self.instance:
            if lease.token != int(token):
                log.info("lease %s taken by this Butler (%s), fencing token %s", lease.name, holder, token)
            lease.token = int(token)
            lease.valid_until = sent + self.lease_seconds
        else:
            if lease.token is not None:
                log.warning("lease %s lost to %s", lease.name, holder)
            lease.token = None

    async def release(self, lease: Lease) -> None:
        if self.redis is None or lease.token is None:
            return
        key, _ = self._keys(lease.name)
        value = f"{self.instance} {lease.token}"
        lease.token = None
        await self.redis.call(self.redis.client.eval(DELETE_IF_HELD, 1, key, value))

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}lease:{name}", f"{self.prefix}fence:{name}"

    async def close(self) -> None:
        """Stops asking and releases the leases held, so another Butler takes them at its next ask."""
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self.redis is not None:
            for lease in self.leases.values():
                # A Redis that does not answer delays the stop by a lease at most: it expires then anyway.
                with contextlib.suppress(LeaseUnavailable, TimeoutError):
                    await asyncio.wait_for(self.release(lease), self.lease_seconds)
            await self.redis.close()

    def stats(self) -> dict[str, Any]:
        """For ``/health``: this instance, and who holds each lease as last seen."""
        return {
            "instanceId": self.instance,
            "shared": self.shared,
            "takeoverSeconds": self.takeover_seconds,
            "redisProblem": self.problem,
            "leases": [lease.stats(self.instance) for lease in self.leases.values()],
            "rateLimit": self.rate_limiter.stats() if self.rate_limiter is not None else None,
        }


__all__ = ["Lease", "LeaseUnavailable", "Leases", "lease_times"]
