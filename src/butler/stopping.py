"""Stopping the background tasks of a service, for sure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], again_after: float = 1.0) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    A cancel can be lost on its way: one that arrives while a task is inside code that catches
    cancellations for its own timeouts. The alert outbox's worker, stopped while it called Redis, was seen
    to go on to wait for its next delivery, and a single cancel-and-wait then waited for ever (half the
    runs of its test on a slow machine). A task still running ``again_after`` seconds after its cancel is
    cancelled again, until it ends.
    """
    waiting = list(tasks)
    pending = {task for task in waiting if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in waiting:
        if not task.cancelled():
            task.exception()  # looked at, so that a failure is not reported as never retrieved


async def every(seconds: float, stopping: asyncio.Event, action: Callable[[], Awaitable[None]]) -> None:
    """Await ``action()`` every ``seconds`` until ``stopping`` is set.

    Stopped between calls, never cancelled in one: a Redis command cut off half-way can leave its
    connection waiting for an answer that the next command then reads.
    """
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
            return
        await action()
