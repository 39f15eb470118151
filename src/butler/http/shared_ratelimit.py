"""The REST rate limit counted in Redis, so that Butlers behind one load balancer share each client's budget.

Each client's window is a Redis counter that expires with the window, created by its first request: the
same fixed window as ``RateLimiter``, whichever Butler a request reaches. While Redis cannot be reached each
Butler counts on its own (``RateLimiter.hit``), which ``/health`` says, rather than refuse every request.
"""

from __future__ import annotations

import logging

from butler.errors import Unavailable
from butler.http.ratelimit import RateLimiter
from butler.redis_edge import RedisEdge

log = logging.getLogger("butler.rest")

#: KEYS: the client's counter. ARGV: window ms. Returns the count and the window's time left in ms.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); left = tonumber(ARGV[1]) end
return {count, left}
"""


class SharedRateLimiter(RateLimiter):
    """A ``RateLimiter`` whose ``count`` keeps the windows in Redis, keys below ``prefix``."""

    shared = True

    def __init__(
        self, max_requests: int, redis: RedisEdge, prefix: str, window_seconds: float = 60.0
    ) -> None:
        super().__init__(max_requests, window_seconds)
        self.redis = redis
        self.prefix = prefix
        #: Why the requests are counted locally, while Redis cannot be reached.
        self.problem: str | None = None

    async def count(self, client: str) -> dict[str, str]:
        window_ms = str(max(1, round(self.window_seconds * 1000)))
        try:
            count, left = await self.redis.call(
                self.redis.client.eval(_COUNT, 1, f"{self.prefix}{client}", window_ms)
            )
        except Unavailable as exc:
            if self.problem is None:
                log.error("the rate limit cannot reach Redis, so each Butler counts on its own: %s", exc)
            self.problem = str(exc)
            return self.hit(client)
        if self.problem is not None:
            log.info("Redis answers again: the rate limit is shared again")
            self.problem = None
        return self.answer(int(count), int(left) / 1000)

    def stats(self) -> dict[str, object]:
        return {"counted": "local" if self.problem else "redis", "problem": self.problem}


__all__ = ["SharedRateLimiter"]
