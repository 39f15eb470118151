"""Logging set-up: upstream Butler's level names, one compact line per event.

The REST server writes a line for every request; at 20,000 requests/s the standard library's per-record
work (a LogRecord, a lock, a write and flush per line) would cost more than serving the request. So all
log lines go through one buffer that is written out every 50 ms. A request only leaves a tuple there;
the lines are formatted together when the buffer is written, which costs far less than formatting each
one between requests. Ordering is kept: every line, request or not, passes through the same buffer.
Warnings and errors, and lines logged with no event loop running, are written at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

#: Upstream (winston) level names and the standard levels they map to.
LEVELS = {
    "silly": 5,
    "debug": logging.DEBUG,
    "verbose": 15,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {number: name for name, number in LEVELS.items()} | {logging.CRITICAL: "error"}


class _Clock:
    """``2026-11-24T03:10:00.123Z``, UTC like upstream's log lines.

    Under load many lines fall in the same millisecond, and all in the same second: both parts are reused
    while they are current.
    """

    def __init__(self) -> None:
        self._millisecond = -1
        self._second = -1
        self._prefix = ""
        self._stamp = ""

    def stamp(self, now: float) -> str:
        millisecond = int(now * 1000)
        if millisecond != self._millisecond:
            self._millisecond = millisecond
            second, fraction = divmod(millisecond, 1000)
            if second != self._second:
                self._second = second
                self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = f"{self._prefix}.{fraction:03d}Z"
        return self._stamp


FLUSH_INTERVAL = 0.05
#: URLs longer than this are cut short in request lines.
MAX_LOGGED_URL = 1000


class Throttle:
    """Whether a warning that a flood of the same trouble would repeat may be logged again: at most once per
    ``interval`` seconds for each kind, so that the flood is one line, not thousands (the counts are
    elsewhere, in ``GET /health``)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def ready(self, kind: str = "") -> bool:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            return False
        self._last[kind] = now
        return True


class LogBuffer:
    """Lines waiting to be written to one stream, flushed within FLUSH_INTERVAL seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.clock = _Clock()
        # Finished lines, and request tuples (wall time, method, URL, status, milliseconds, client IP).
        self._lines: list[str | tuple[float, str, str, int, float, str]] = []
        self._flush_scheduled = False

    def add(self, line: str | tuple[float, str, str, int, float, str], urgent: bool = False) -> None:
        self._lines.append(line)
        if urgent:
            self.flush()
            return
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._lines:
            return
        stamp = self.clock.stamp
        parts = []
        for item in self._lines:
            if isinstance(item, str):
                parts.append(item)
            else:
                wall, method, target, status, milliseconds, ip = item
                parts.append(f"{stamp(wall)} info: {method} {target} {status} {milliseconds:.2f}ms {ip}\n")
        text = "".join(parts)
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not take the service down


class BufferedHandler(logging.Handler):
    """A logging handler writing ``<time> <level>: <message>`` lines through a LogBuffer."""

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _NAMES.get(record.levelno, record.levelname.lower())
            line = f"{self.buffer.clock.stamp(record.created)} {level}: {record.getMessage()}\n"
            if record.exc_info:
                line += logging.Formatter().formatException(record.exc_info) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.buffer.add(line, urgent=record.levelno >= logging.WARNING)

    def flush(self) -> None:
        self.buffer.flush()


class RequestLog:
    """One ``info`` line per REST request: method, URL, status, duration and client IP."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        # Request times are taken from perf_counter; the offset turns them into wall-clock time. It is
        # re-read every minute so that clock adjustments show up in the log.
        self._wall_offset = time.time() - time.perf_counter()
        self._offset_expires = time.perf_counter() + 60

    def write(self, method: str, target: str, status: int, started: float, client_ip: str) -> None:
        """Log a request that began at ``started`` (a ``time.perf_counter()`` value) and ends now."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        if now > self._offset_expires:
            self._wall_offset = time.time() - now
            self._offset_expires = now + 60
        milliseconds = (now - started) * 1000
        buffer = _buffer
        if buffer is None:
            self._logger.info("%s %s %d %.2fms %s", method, target, status, milliseconds, client_ip)
            return
        if len(target) > MAX_LOGGED_URL:
            target = f"{target[:MAX_LOGGED_URL]}...({len(target) - MAX_LOGGED_URL} more characters)"
        buffer.add((self._wall_offset + now, method, target, status, milliseconds, client_ip))


_buffer: LogBuffer | None = None


def setup_logging(level: str, stream: TextIO | None = None) -> None:
    """Send Butler's logs to ``stream`` (standard error by default) at ``level`` (an upstream level name)."""
    global _buffer
    _buffer = LogBuffer(stream or sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [BufferedHandler(_buffer)]
    root.setLevel(LEVELS[level])
    # aiohttp's own access log would duplicate the request lines written by Butler.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
