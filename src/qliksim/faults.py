"""Faults the control API can inject into the simulated services: latency, error statuses, dropped
connections. (A service that is down is handled by stopping its listener; see server.py.)

Each call to a service takes the faults it gets with ``take``: the next of the settings queued for single
calls (``next``), or else the standing settings. Shares (``ratio``, ``drop``) are drawn from one random
generator, seeded with ``Faults(seed)`` or ``seed`` in an update, so that a test sees the same faults in
the same order every run.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

SERVICES = ("qrs", "engine")


@dataclass
class FaultSettings:
    latency_ms: float = 0.0
    status: int | None = None  # answer this status instead of the real answer
    ratio: float = 1.0  # share of calls that get ``status``
    drop: float = 0.0  # share of calls whose connection is cut without an answer
    down: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    def __init__(self, seed: int | None = None) -> None:
        self.settings = {service: FaultSettings() for service in SERVICES}
        self.queued: dict[str, deque[FaultSettings]] = {service: deque() for service in SERVICES}
        self.injected = {service: 0 for service in SERVICES}
        self._random = random.Random(seed)

    def update(self, service: str, values: dict[str, Any]) -> FaultSettings:
        """Change the standing settings of ``service``. ``seed`` reseeds the random generator; ``next`` is
        a list of settings for the next calls, one each, in order (what an entry leaves out is no fault),
        replacing any still queued."""
        values = dict(values)
        seed = values.pop("seed", None)
        queued = values.pop("next", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed must be an integer")
        if queued is not None and not isinstance(queued, list):
            raise ValueError("next must be a list of fault settings, one per call")
        merged = self._checked(self.settings[service], values)
        calls = [self._checked(FaultSettings(), one) for one in queued or []]
        if any(one.down for one in calls):
            raise ValueError("down applies to the service, not to single calls")
        self.settings[service] = merged
        if queued is not None:
            self.queued[service] = deque(calls)
        if seed is not None:
            self._random.seed(seed)
        return merged

    @staticmethod
    def _checked(base: FaultSettings, values: Any) -> FaultSettings:
        if not isinstance(values, dict):
            raise ValueError("fault settings are a JSON object")
        current = base.as_dict()
        unknown = set(values) - set(current)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        merged = FaultSettings(**(current | values))
        if merged.status is not None and not 100 <= int(merged.status) <= 599:
            raise ValueError("status must be an HTTP status code")
        if not (0 <= merged.ratio <= 1 and 0 <= merged.drop <= 1) or merged.latency_ms < 0:
            raise ValueError("ratio and drop are shares from 0 to 1; latency_ms is not negative")
        return merged

    def reset(self) -> None:
        self.settings = {service: FaultSettings() for service in SERVICES}
        self.queued = {service: deque() for service in SERVICES}

    def take(self, service: str) -> FaultSettings:
        """The faults of one call to ``service``."""
        queued = self.queued[service]
        return queued.popleft() if queued else self.settings[service]

    @staticmethod
    async def delay(settings: FaultSettings) -> None:
        if settings.latency_ms:
            await asyncio.sleep(settings.latency_ms / 1000)

    def should_drop(self, service: str, settings: FaultSettings) -> bool:
        hit = settings.drop > 0 and self._random.random() < settings.drop
        if hit:
            self.injected[service] += 1
        return hit

    def forced_status(self, service: str, settings: FaultSettings) -> int | None:
        if settings.status is None or self._random.random() >= settings.ratio:
            return None
        self.injected[service] += 1
        return int(settings.status)

    def middleware(self, service: str) -> Any:
        @web.middleware
        async def inject(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            settings = self.take(service)
            await self.delay(settings)
            if self.should_drop(service, settings):
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            status = self.forced_status(service, settings)
            if status is not None:
                return web.Response(status=status, text=f"Simulated fault: HTTP {status}")
            return await handler(request)

        return inject
