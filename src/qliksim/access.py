"""The access log of the simulated services: every request to QRS and every Engine upgrade, with its status.

Each request is logged (one line, at info) and kept among the most recent ones, which the control API
shows, so that a test can see what a client was answered, a 404 it caused included.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from aiohttp import web

log = logging.getLogger("qliksim.access")

RECENT = 500  # requests kept


class RequestLog:
    def __init__(self, size: int = RECENT) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=size)

    def record(self, service: str, request: web.BaseRequest, status: int | None) -> None:
        """``status`` None: no answer was sent, the connection was cut (a ``drop`` fault, a client gone)."""
        shown = "dropped" if status is None else status
        client = request.remote or ""
        self.recent.append(
            {
                "service": service,
                "method": request.method,
                "path": request.path,
                "status": shown,
                "client": client,
            }
        )
        log.info("%s %s %s %s %s", service, request.method, request.path, shown, client)
