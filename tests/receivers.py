"""Local HTTP servers standing in for Slack, Teams, Signl4, New Relic and webhook receivers, for the alert
tests: each records what it got and answers as a test tells it to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    """A local HTTP server standing in for Slack, Teams or a webhook: records what it got, answers as told."""

    answers: list[Answer] = field(default_factory=list)
    got: list[tuple[float, dict[str, str], Any]] = field(default_factory=list)
    #: The path and query string of each request, in the order of ``got``.
    paths: list[str] = field(default_factory=list)
    #: The Idempotency-Key of each request answered with a 2xx.
    taken: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else dict(request.query)
        self.got.append((time.monotonic(), dict(request.headers), body))
        self.paths.append(request.path_qs)
        answer = self.answers.pop(0) if self.answers else ok
        response = await answer(request)
        if 200 <= response.status < 300:
            self.taken.append(request.headers.get("Idempotency-Key", ""))
        return response


async def ok(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def status(code: int, headers: dict[str, str] | None = None) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text=f"answer {code}", headers=headers)

    return answer


def hang(seconds: float) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.Response(text="late")

    return answer


@pytest.fixture
async def receivers() -> AsyncIterator[Callable[[], Awaitable[Receiver]]]:
    runners: list[web.AppRunner] = []

    async def start() -> Receiver:
        receiver = Receiver()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", receiver.handle)
        # A receiver left hanging must not hold the test up at cleanup.
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()
