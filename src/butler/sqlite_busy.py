"""SQLite files that several processes share (Butlers of one host, the ``butler token`` command): SQLite's
own busy timeout does not cover every step. Switching a new file to WAL, or recovering its log, answers
"database is locked" at once when another process is doing the same, as three Butlers firing their first
schedules at the same moment were seen to. Such steps are asked again for a while."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How long a step is asked again while the file is busy.
BUSY_SECONDS = 5.0


def when_free(step: Callable[[], T], seconds: float = BUSY_SECONDS) -> T:
    """``step()``, asked again every 20 ms for up to ``seconds`` while SQLite says the file is locked or busy;
    for steps that are safe to repeat. Blocks: call it off the event loop, or where a block is acceptable."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


__all__ = ["BUSY_SECONDS", "when_free"]
