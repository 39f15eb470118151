"""Butler's error envelope: ``{"statusCode": n, "error": "<reason phrase>", "message": "..."}``.

Errors raised by the HTTP layer itself (validation, body parsing) carry a ``code`` as well, as upstream's
Fastify adds one; callers' scripts match on status and message, so both are kept exactly.

This is also the one place where the errors of services and clients (``butler.errors``) become answers:
``from_butler_error`` gives each node of that tree its status.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from butler.errors import (
    AccessDenied,
    BadRequest,
    ButlerError,
    Conflict,
    NotFound,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)

#: Logged for a request whose client went away before it was complete (nginx's "client closed request").
CLIENT_CLOSED = 499


class ClientGone(Exception):
    """The client closed its connection before its request was complete."""


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class HttpError(Exception):
    """An answer other than success. Raise it from a handler; the server turns it into the envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.error = error or reason(status)

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"statusCode": self.status}
        if self.code:
            body["code"] = self.code
        body["error"] = self.error
        body["message"] = self.message
        return body


class RouteNotFound(HttpError):
    """No route for this method and URL (also what a disabled endpoint answers)."""

    def __init__(self, method: str, url: str) -> None:
        super().__init__(404, f"Route {method}:{url} not found")

    def envelope(self) -> dict[str, Any]:
        # Upstream's own not-found body has its keys in this order.
        return {"message": self.message, "error": self.error, "statusCode": self.status}


def validation_error(message: str) -> HttpError:
    return HttpError(400, message, code="FST_ERR_VALIDATION")


#: The status of each node of Butler's error tree, checked in this order: what went wrong (a timeout, a thing
#: not found) before whose fault it was, since a class may be both (the Engine's AppNotFound is an
#: UpstreamError that is NotFound).
STATUSES: tuple[tuple[type[ButlerError], int], ...] = (
    (UpstreamTimeout, 504),
    (NotFound, 404),
    (AccessDenied, 403),
    (Conflict, 409),
    (BadRequest, 400),
    (Unavailable, 503),
    (UpstreamError, 502),
)
#: Where a service's located input is in a REST request: the services take what the body carries.
INPUT_LOCATION = "body"

_status_of: dict[type[ButlerError], int | None] = {}


def status_of(kind: type[ButlerError]) -> int | None:
    """The status answering errors of ``kind``; None for a ButlerError outside every node, a fault of
    Butler's own."""
    if kind not in _status_of:
        _status_of[kind] = next((status for node, status in STATUSES if issubclass(kind, node)), None)
    return _status_of[kind]


def from_butler_error(exc: ButlerError) -> HttpError | None:
    """The answer to a service's or client's error, in Butler's envelope; None for a fault of Butler's."""
    status = status_of(type(exc))
    if status is None:
        return None
    return HttpError(status, exc.located(INPUT_LOCATION) if isinstance(exc, BadRequest) else str(exc))
