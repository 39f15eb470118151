"""The per-IP rate limit (``--api-rate-limit``): counts requests to the routes it applies to, and sends the
``x-ratelimit-*`` headers with whatever they are answered."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from butler.http.errors import HttpError
from butler.http.middleware import App, Context
from butler.http.ratelimit import RateLimiter
from butler.http.routing import Reply

log = logging.getLogger("butler.rest")


class RateLimit:
    def __init__(self, app: App, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    def __call__(self, context: Context) -> Awaitable[Reply]:
        assert context.route is not None
        if context.route.rate_limited:
            if self.limiter.shared:
                return self._counted_in_redis(context)
            try:
                context.add_headers(self.limiter.hit(context.client_ip))
            except HttpError:
                _exceeded(context)
                raise
        return self.app(context)

    async def _counted_in_redis(self, context: Context) -> Reply:
        try:
            context.add_headers(await self.limiter.count(context.client_ip))
        except HttpError:
            _exceeded(context)
            raise
        return await self.app(context)


def _exceeded(context: Context) -> None:
    log.warning("Rate limit exceeded: %s %s from %s", context.method, context.target, context.client_ip)
