"""Logging set-up: upstream Butler's level names, one compact line (or JSON object) per event.

The REST server writes a line for every request; at 20,000 requests/s the standard library's per-record
work (a LogRecord, a lock, a write and flush per line) would cost more than serving the request. So all
log lines go through one buffer that is written out every 50 ms. A request only leaves a tuple there;
the lines are formatted together when the buffer is written, which costs far less than formatting each
one between requests. Ordering is kept: every line, request or not, passes through the same buffer.
Warnings and errors, and lines logged with no event loop running, are written at once.

With file logging on, each batch is also handed to ``LogFiles``, whose own thread writes it to the day's
file, so that a slow disk (a network share, a virus scanner) never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import orjson

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
#: ``text``: ``<time> <level>: <message>`` lines as upstream writes them; ``json``: one object a line.
LOG_FORMATS = ("text", "json")


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


class Event:
    """A line logged through ``logging``, kept until its batch is formatted."""

    __slots__ = ("created", "exception", "level", "logger", "message")

    def __init__(self, created: float, level: str, logger: str, message: str, exception: str | None) -> None:
        self.created = created
        self.level = level
        self.logger = logger
        self.message = message
        self.exception = exception


#: A request line: wall time, method, URL, status, milliseconds, client IP, logger name, and the caller
#: (``token <name>`` or ``certificate <subject>``) when authentication named one.
Request = tuple[float, str, str, int, float, str, str, str | None]


def _request(method: str, target: str, status: int, milliseconds: float, ip: str, caller: str | None) -> str:
    """A request line's message, in every format."""
    by = f" {caller}" if caller else ""
    return f"{method} {target} {status} {milliseconds:.2f}ms {ip}{by}"


def _text(items: list[Event | Request], stamp: Callable[[float], str]) -> str:
    parts = []
    for item in items:
        if isinstance(item, Event):
            exception = f"\n{item.exception}" if item.exception else ""
            parts.append(f"{stamp(item.created)} {item.level}: {item.message}{exception}\n")
        else:
            wall, method, target, status, milliseconds, ip, _, caller = item
            message = _request(method, target, status, milliseconds, ip, caller)
            parts.append(f"{stamp(wall)} info: {message}\n")
    return "".join(parts)


def _json(items: list[Event | Request], stamp: Callable[[float], str]) -> str:
    parts = []
    for item in items:
        entry: dict[str, object]
        if isinstance(item, Event):
            entry = {
                "time": stamp(item.created),
                "level": item.level,
                "logger": item.logger,
                "message": item.message,
            }
            if item.exception:
                entry["exception"] = item.exception
        else:
            wall, method, target, status, milliseconds, ip, logger, caller = item
            entry = {
                "time": stamp(wall),
                "level": "info",
                "logger": logger,
                "message": _request(method, target, status, milliseconds, ip, caller),
                "method": method,
                "url": target,
                "status": status,
                "durationMs": round(milliseconds, 2),
                "clientIp": ip,
            }
            if caller:
                entry["caller"] = caller
        parts.append(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE).decode())
    return "".join(parts)


_FORMATTERS = {"text": _text, "json": _json}


class LogBuffer:
    """Lines waiting to be written to one stream (and the log files, if any), flushed within
    FLUSH_INTERVAL seconds."""

    def __init__(self, stream: TextIO, log_format: str = "text", files: LogFiles | None = None) -> None:
        self.stream = stream
        self.files = files
        self.clock = _Clock()
        self._format = _FORMATTERS[log_format]
        self._lines: list[Event | Request] = []
        self._flush_scheduled = False

    def add(self, line: Event | Request, urgent: bool = False) -> None:
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
        if self.files is not None:
            # Trouble of the files' thread is told here, where lines are written in order.
            self._lines.extend(
                Event(time.time(), "warn", "butler.logs", text, None) for text in self.files.problems()
            )
        if not self._lines:
            return
        text = self._format(self._lines, self.clock.stamp)
        self._lines.clear()
        if self.files is not None:
            self.files.write(text)
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not take the service down


class LogFiles:
    """Daily log files ``butler.YYYY-MM-DD.log`` in one folder, as upstream names them, dated in UTC like
    the lines they hold; files of days more than ``retention_days`` ago are deleted (0: none are).

    A day's file is opened under its own name and the next day's file is simply another name, so nothing is
    ever renamed (Windows cannot rename a file that is open). Writing, switching and deleting run in a
    thread of their own; what goes wrong there is kept for ``problems`` rather than raised, so that a full
    disk costs log lines, never the service. ``clock`` (seconds since the epoch) picks the day.
    """

    NAME = re.compile(r"^butler\.(\d{4}-\d{2}-\d{2})\.log$")

    def __init__(self, directory: Path, retention_days: int, clock: Callable[[], float] = time.time) -> None:
        """Open today's file; OSError when the folder cannot be made or the file cannot be written."""
        self.directory = directory
        self.retention_days = retention_days
        self.clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._day = _utc_day(clock())
        self._file = self._open(self._day)
        self._failing = False
        self._problems: collections.deque[str] = collections.deque(maxlen=100)
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="butler-log-files", daemon=True)
        self._thread.start()

    def path(self, day: str) -> Path:
        return self.directory / f"butler.{day}.log"

    def write(self, text: str) -> None:
        self._queue.put(text)

    def problems(self) -> list[str]:
        found = []
        while self._problems:
            found.append(self._problems.popleft())
        return found

    def close(self) -> None:
        """Write what is queued and close the file."""
        self._queue.put(None)
        self._thread.join(10)

    def _open(self, day: str) -> TextIO:
        # newline="" keeps "\n" on Windows too, so that a file reads the same wherever it was written.
        return self.path(day).open("a", encoding="utf-8", newline="")

    def _run(self) -> None:
        self._remove_expired()
        stop = False
        while not stop:
            batches = [self._queue.get()]
            while not self._queue.empty():  # whatever piled up meanwhile goes in the same write
                batches.append(self._queue.get())
            stop = None in batches
            self._write("".join(batch for batch in batches if batch is not None))
        self._close()

    def _write(self, text: str) -> None:
        day = _utc_day(self.clock())
        if day != self._day:
            self._switch(day)
        if not text:
            return
        try:
            self._file.write(text)
            self._file.flush()
            self._failing = False
        except (OSError, ValueError) as exc:
            self._problem(f"log lines not written to {self.path(self._day)}: {exc}")

    def _switch(self, day: str) -> None:
        try:
            new = self._open(day)
        except OSError as exc:
            self._problem(f"log file {self.path(day)} cannot be opened: {exc}")
            return
        self._close()
        self._file, self._day = new, day
        self._failing = False
        self._remove_expired()

    def _close(self) -> None:
        # The lines it still held are lost, and were reported when their write failed.
        with contextlib.suppress(OSError):
            self._file.close()

    def _remove_expired(self) -> None:
        if self.retention_days <= 0:
            return
        oldest = datetime.date.fromisoformat(self._day) - datetime.timedelta(days=self.retention_days)
        try:
            entries = list(self.directory.iterdir())
        except OSError as exc:
            self._problems.append(f"old log files in {self.directory} not looked for: {exc}")
            return
        for entry in entries:
            match = self.NAME.match(entry.name)
            if match is None:
                continue
            try:
                expired = datetime.date.fromisoformat(match.group(1)) < oldest
            except ValueError:
                continue  # named like a log file, but not dated: not Butler's
            if not expired:
                continue
            try:
                entry.unlink()
            except OSError as exc:  # open in another program (Windows), or already gone
                self._problems.append(f"old log file {entry} not removed: {exc}")

    def _problem(self, text: str) -> None:
        """Told once until writing works again, not once per batch."""
        if not self._failing:
            self._failing = True
            self._problems.append(text)


def _utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class BufferedHandler(logging.Handler):
    """A logging handler passing each record to a LogBuffer."""

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _NAMES.get(record.levelno, record.levelname.lower())
            exception = logging.Formatter().formatException(record.exc_info) if record.exc_info else None
            event = Event(record.created, level, record.name, record.getMessage(), exception)
        except Exception:
            self.handleError(record)
            return
        self.buffer.add(event, urgent=record.levelno >= logging.WARNING)

    def flush(self) -> None:
        self.buffer.flush()


class RequestLog:
    """One ``info`` line per REST request: method, URL, status, duration, client IP and, when authentication
    named one, the caller."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._name = logger.name
        # Request times are taken from perf_counter; the offset turns them into wall-clock time. It is
        # re-read every minute so that clock adjustments show up in the log.
        self._wall_offset = time.time() - time.perf_counter()
        self._offset_expires = time.perf_counter() + 60

    def write(
        self, method: str, target: str, status: int, started: float, client_ip: str, caller: str | None = None
    ) -> None:
        """Log a request that began at ``started`` (a ``time.perf_counter()`` value) and ends now."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        now = time.perf_counter()
        if now > self._offset_expires:
            self._wall_offset = time.time() - now
            self._offset_expires = now + 60
        milliseconds = (now - started) * 1000
        if caller is not None and not caller.isprintable():
            # A client certificate's subject is the caller's own text: a line break in it would write a
            # line of its making into the log.
            caller = caller.encode("unicode_escape").decode("ascii")
        buffer = _buffer
        if buffer is None:
            self._logger.info("%s", _request(method, target, status, milliseconds, client_ip, caller))
            return
        if len(target) > MAX_LOGGED_URL:
            target = f"{target[:MAX_LOGGED_URL]}...({len(target) - MAX_LOGGED_URL} more characters)"
        buffer.add(
            (self._wall_offset + now, method, target, status, milliseconds, client_ip, self._name, caller)
        )


_buffer: LogBuffer | None = None


def setup_logging(
    level: str, stream: TextIO | None = None, log_format: str = "text", files: LogFiles | None = None
) -> None:
    """Send Butler's logs to ``stream`` (standard error by default), and to ``files`` if given, at ``level``
    (an upstream level name), in ``log_format`` (one of LOG_FORMATS)."""
    global _buffer
    _buffer = LogBuffer(stream or sys.stderr, log_format, files)
    root = logging.getLogger()
    root.handlers[:] = [BufferedHandler(_buffer)]
    root.setLevel(LEVELS[level])
    # aiohttp's own access log would duplicate the request lines written by Butler.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def close_logging() -> None:
    """Write out what is buffered and close the log files."""
    if _buffer is None:
        return
    _buffer.flush()
    if _buffer.files is not None:
        _buffer.files.close()
