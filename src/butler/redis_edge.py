"""Redis for the parts of Butler that keep state there (the key-value store, the alert outbox, the
scheduler's claims of fires): one way to connect, and Redis's errors turned into the caller's own
``Unavailable`` at the edge, so that a Redis that is away is reported, never a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

T = TypeVar("T")

#: KEYS: claims or leases. ARGV: the holder's value, a time in ms. Extends each key that still holds the
#: value (so one taken over by another is left alone); 1 for those extended, 0 for the others.
EXTEND_IF_HELD = """
local kept = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    kept[i] = 1
  else
    kept[i] = 0
  end
end
return kept
"""

#: KEYS: a claim or lease. ARGV: the holder's value. Deletes the key only if it still holds the value, in
#: one step: between a read and a delete of its own, the key could expire and be taken by another.
DELETE_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisEdge:
    """A client of the Redis at ``url``; ``failure`` makes the caller's exception from Redis's."""

    def __init__(self, url: str, failure: Callable[[Exception], Exception]) -> None:
        self.client: redis.Redis = redis.Redis.from_url(url, decode_responses=True)
        self.failure = failure

    async def call(self, operation: Awaitable[T]) -> T:
        """The result of ``operation`` (a command or a pipeline's execute); the caller's exception when
        Redis cannot be reached or refused it."""
        try:
            return await operation
        except (RedisError, OSError) as exc:
            raise self.failure(exc) from exc

    async def close(self) -> None:
        await self.client.aclose()


__all__ = ["DELETE_IF_HELD", "EXTEND_IF_HELD", "RedisEdge"]
