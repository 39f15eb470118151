"""Waiting in a test for something that happens in the background, with a bound that fails the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    condition: Callable[[], object], seconds: float = 10, why: Callable[[], object] = lambda: ""
) -> None:
    """Return once ``condition()`` is true; fail with ``why()`` when it is not within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, why()
        await asyncio.sleep(0.01)
