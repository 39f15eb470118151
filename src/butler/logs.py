"""Logging set-up: upstream Butler's level names, one compact line per event.

The REST server writes a line for every request, so formatting is kept cheap: the timestamp text is
rebuilt once per second, not per record.
"""

from __future__ import annotations

import logging
import sys
import time

#: Upstream (winston) level names and the standard levels they map to.
LEVELS = {
    "silly": 5,
    "debug": logging.DEBUG,
    "verbose": 15,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {5: "silly", logging.DEBUG: "debug", 15: "verbose", logging.INFO: "info", logging.WARNING: "warn",
          logging.ERROR: "error", logging.CRITICAL: "error"}


class CompactFormatter(logging.Formatter):
    """``2026-11-24T03:10:00.123Z info: message``, in UTC like upstream's log lines."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        level = _NAMES.get(record.levelno, record.levelname.lower())
        line = f"{self._prefix}.{int((created - second) * 1000):03d}Z {level}: {record.getMessage()}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(level: str) -> None:
    """Send Butler's logs to standard error at ``level`` (an upstream level name)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CompactFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # aiohttp's own access log would duplicate the request lines written by Butler.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
