"""Running one monitor's check on its later.js schedule, and what ``/health`` says about it.

A check runs at start-up when the monitor does so upstream, then at each fire of its schedule; the next
fire is computed when a check ends, so a check that takes longer than the interval skips the fires it
overlapped instead of piling up. A check that fails is logged as an error the first time, then once per
``QUIET_SECONDS`` while it keeps failing with the same message (the count is in ``/health``), and once when
it works again, so an endpoint that is down for a day leaves a few lines, not thousands.

Butlers sharing a Redis hold one lease per monitor (butler.leases): at each fire only the holder checks,
the others count the fire as ``skipped``; a check's fencing token is kept with its outcome. A check still
running when its lease ends (not renewed in time: Redis away, or this Butler too slow) is cancelled and
counted as ``abandoned``, since another Butler may take the lease and check meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from butler.errors import ButlerError
from butler.leases import Lease
from butler.monitors.later import Schedule
from butler.stopping import cancel_and_wait

log = logging.getLogger("butler")

#: While a check keeps failing the same way, its error is logged again at most this often.
QUIET_SECONDS = 3600.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def _iso(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Periodic:
    """Runs ``check`` at start-up (if ``at_start``) and at each fire of ``schedule``."""

    def __init__(
        self,
        name: str,
        schedule: Schedule,
        check: Callable[[], Awaitable[None]],
        *,
        at_start: bool,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        lease: Lease | None = None,
    ) -> None:
        self.name = name
        self.schedule = schedule
        self.check = check
        self.at_start = at_start
        self.clock = clock
        self.sleep = sleep
        self.lease = lease
        self.skipped = 0  # fires left to the lease's holder
        self.abandoned = 0  # checks cancelled when the lease ended under them
        self.fencing_token: int | None = None  # of the last check made
        self.runs = 0
        self.failures = 0
        self.failing = 0  # failures in a row
        self.last_run: float | None = None
        self.last_error: str | None = None
        self.next_run: float | None = None
        self._logged_error: tuple[str, float] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"monitor {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        if self.at_start:
            await self.run_once()
        while True:
            due = self.schedule.next_after(self.clock())
            self.next_run = due
            # Woken early (the loop's clock and the wall clock drift apart): sleep the rest.
            while (left := due - self.clock()) > 0:
                await self.sleep(left)
            await self.run_once()

    async def run_once(self) -> None:
        """One check, its failure logged as the module says; never raises but for cancellation."""
        lease = self.lease
        if lease is not None and not lease.held:
            self.skipped += 1
            return
        self.fencing_token = lease.token if lease is not None and not lease.local else None
        self.last_run = self.clock()
        try:
            if lease is not None and not lease.local:
                await self._while_held(lease)
            else:
                await self.check()
        except _LeaseEnded:
            self.abandoned += 1
            log.warning(
                "%s: check stopped, its lease (fencing token %s) ended before it did",
                self.name,
                self.fencing_token,
            )
        except Exception as exc:  # a monitor's fault must not end its schedule
            self._failed(exc)
        else:
            if self.failing:
                log.info("%s works again after %d failed checks", self.name, self.failing)
            self.failing = 0
            self.last_error = None
            self._logged_error = None
        finally:
            self.runs += 1

    async def _while_held(self, lease: Lease) -> None:
        """The check, cancelled if the lease it started under ends first (renewals extend it meanwhile)."""
        token = lease.token
        check = asyncio.ensure_future(self.check())
        try:
            while True:
                left = lease.valid_until - lease.clock()
                if left > 0:
                    await asyncio.wait({check}, timeout=left)
                if check.done():
                    return check.result()
                if not lease.held or lease.token != token:
                    await cancel_and_wait([check])
                    raise _LeaseEnded
        finally:
            if not check.done():  # this run itself was cancelled
                await cancel_and_wait([check])

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self.failing += 1
        message = str(exc) or type(exc).__name__
        self.last_error = message
        now = time.monotonic()
        logged = self._logged_error
        if logged is None or logged[0] != message or now - logged[1] >= QUIET_SECONDS:
            again = f" ({self.failing} checks in a row)" if self.failing > 1 else ""
            log.error("%s failed%s: %s", self.name, again, message, exc_info=_unexpected(exc))
            self._logged_error = (message, now)

    def stats(self) -> dict[str, Any]:
        return {
            "frequency": self.schedule.text,
            "runs": self.runs,  # checks done, failed ones included
            "skipped": self.skipped,
            "abandoned": self.abandoned,
            "fencingToken": self.fencing_token,
            "failures": self.failures,
            "failingInARow": self.failing,
            "lastRun": _iso(self.last_run) if self.last_run is not None else None,
            "nextRun": _iso(self.next_run) if self.next_run is not None else None,
            "lastError": self.last_error,
        }


class _LeaseEnded(Exception):
    """The lease a check started under ended before the check did."""


def _unexpected(exc: Exception) -> bool:
    """Whether a failure is Butler's own fault (a traceback helps) rather than an outside system's."""
    return not isinstance(exc, ButlerError | OSError | TimeoutError)


__all__ = ["Periodic"]
