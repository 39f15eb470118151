"""Butler's error envelope: ``{"statusCode": n, "error": "<reason phrase>", "message": "..."}``.

Errors raised by the HTTP layer itself (validation, body parsing) carry a ``code`` as well, as upstream's
Fastify adds one; callers' scripts match on status and message, so both are kept exactly.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


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
