"""Faults the control API can inject into the simulated services: latency, error statuses, dropped
connections. (A service that is down is handled by stopping its listener; see server.py.)"""

from __future__ import annotations

import asyncio
import random
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
        self.injected = {service: 0 for service in SERVICES}
        self._random = random.Random(seed)

    def update(self, service: str, values: dict[str, Any]) -> FaultSettings:
        current = self.settings[service].as_dict()
        unknown = set(values) - set(current)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        merged = FaultSettings(**(current | values))
        if merged.status is not None and not 100 <= int(merged.status) <= 599:
            raise ValueError("status must be an HTTP status code")
        if not (0 <= merged.ratio <= 1 and 0 <= merged.drop <= 1) or merged.latency_ms < 0:
            raise ValueError("ratio and drop are shares from 0 to 1; latency_ms is not negative")
        self.settings[service] = merged
        return merged

    def reset(self) -> None:
        self.settings = {service: FaultSettings() for service in SERVICES}

    async def delay(self, service: str) -> None:
        latency = self.settings[service].latency_ms
        if latency:
            await asyncio.sleep(latency / 1000)

    def should_drop(self, service: str) -> bool:
        drop = self.settings[service].drop
        hit = drop > 0 and self._random.random() < drop
        if hit:
            self.injected[service] += 1
        return hit

    def forced_status(self, service: str) -> int | None:
        settings = self.settings[service]
        if settings.status is None or self._random.random() >= settings.ratio:
            return None
        self.injected[service] += 1
        return int(settings.status)

    def middleware(self, service: str) -> Any:
        @web.middleware
        async def inject(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            await self.delay(service)
            if self.should_drop(service):
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            status = self.forced_status(service)
            if status is not None:
                return web.Response(status=status, text=f"Simulated fault: HTTP {status}")
            return await handler(request)

        return inject
