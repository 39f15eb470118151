"""Per-client-IP request limit over a fixed one-minute window, as upstream's ``--api-rate-limit``.

Upstream counts every request under the address of its own internal proxy, so its limit is shared by all
clients; here each client IP has its own budget. Counters of finished windows are dropped as they are met,
and all at once when a window ends, so memory stays bounded by the clients seen in one window.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from butler.http.errors import HttpError


@dataclass
class _Window:
    ends: float
    count: int = 0


class RateLimiter:
    #: Whether ``count`` asks another process (and is to be awaited rather than ``hit`` called).
    shared = False

    def __init__(self, max_requests: int, window_seconds: float = 60.0) -> None:
        self.max_requests = max_requests
        self.window_seconds = window_seconds
        self._windows: dict[str, _Window] = {}
        self._next_sweep = time.monotonic() + window_seconds

    def hit(self, client: str) -> dict[str, str]:
        """Count one request; return the ``x-ratelimit-*`` headers, or raise the 429 when over the limit."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._windows = {ip: w for ip, w in self._windows.items() if w.ends > now}
            self._next_sweep = now + self.window_seconds
        window = self._windows.get(client)
        if window is None or window.ends <= now:
            window = self._windows[client] = _Window(now + self.window_seconds)
        window.count += 1
        return self.answer(window.count, window.ends - now)

    async def count(self, client: str) -> dict[str, str]:
        """``hit``, for callers that can wait: a limiter shared by several Butlers counts in Redis."""
        return self.hit(client)

    def stats(self) -> dict[str, object]:
        return {"counted": "local"}

    def answer(self, count: int, seconds_left: float) -> dict[str, str]:
        """The headers for the ``count``-th request of a window ending in ``seconds_left``; the 429 beyond."""
        reset = str(max(1, math.ceil(seconds_left - 1e-6)))
        remaining = self.max_requests - count
        headers = {
            "x-ratelimit-limit": str(self.max_requests),
            "x-ratelimit-remaining": str(max(remaining, 0)),
            "x-ratelimit-reset": reset,
        }
        if remaining < 0:
            headers["retry-after"] = reset
            raise HttpError(429, f"Rate limit exceeded, retry in {_spoken(int(reset))}", headers=headers)
        return headers


def _spoken(seconds: int) -> str:
    """A wait as upstream's limiter words it (the ``ms`` package's long form: "1 minute", "10 seconds"),
    of the same whole seconds as ``retry-after``, so the message and the header agree."""
    unit, name = (60, "minute") if seconds >= 60 else (1, "second")
    return f"{round(seconds / unit)} {name}{'s' if seconds >= unit * 1.5 else ''}"
