"""``GET /v4/audit``: the audit log, newest first (an addition to upstream's API)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime

from butler.audit import AuditQuery
from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services

_RESULT = re.compile(r"[1-5]([0-9]{2}|xx)")


def _time(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise HttpError(
            400, f"querystring/{name} must be an ISO 8601 time, such as 2026-11-29T08:00:00Z"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def routes(services: Services) -> list[Route]:
    async def list_audit(request: ApiRequest) -> Reply:
        audit = services.audit
        if audit is None:
            raise HttpError(503, "The audit log is off: set Butler.auditLog.enable to true")
        query = request.query
        result = query.get("result")
        if result is not None and not _RESULT.fullmatch(result):
            raise HttpError(
                400, "querystring/result must be a status such as 404 or a status class such as 4xx"
            )
        status_class = int(result[0]) if result is not None and result.endswith("xx") else None
        selection = AuditQuery(
            since=_time("since", query.get("since")),
            until=_time("until", query.get("until")),
            caller=query.get("caller"),
            operation=query.get("operation"),
            status=int(result) if result is not None and status_class is None else None,
            status_class=status_class,
            limit=int(query.get("limit", 100)),
        )
        try:
            return json_reply(await asyncio.to_thread(audit.read, selection))
        except OSError as exc:
            raise HttpError(503, f"The audit log cannot be read: {exc.strerror or exc}") from None

    return [Route("GET", "/v4/audit", list_audit)]
