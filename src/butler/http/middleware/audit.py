"""Records state-changing calls and refused calls in the audit log (``butler.audit``).

Placed after the access log and the request metrics, around the error envelope: it sees the status
actually answered, refusals of every later step included (the browser guard's 403, authentication's 401
and 403, the rate limit's 429, validation's 400), and once the answer is known so are the route (set by
``Routing``) and the caller (set by authentication). Read-only calls that succeed, and 404s of unknown
paths, are not recorded.

Only names are taken from a request: route parameters, the query and body fields that say what a call is
about (task ids, namespace and key, file paths, topic, schedule). Values of key-value pairs and message
texts are recorded by their size, and headers never: a record holds no token, password or message.
"""

from __future__ import annotations

from typing import Any

import orjson

from butler.audit import AuditLog, bounded, named_fields, size_of, started_of, task_items
from butler.http.errors import CLIENT_CLOSED, ClientGone
from butler.http.middleware import App, Context
from butler.http.routing import Reply

#: GET operations of upstream's v2 API that change something.
CHANGING_GETS = frozenset(
    {"v2SenseStartTask", "v2MqttPublishMessage", "v2SlackPostMessage", "v2CreateDir", "v2CreateDirQvd"}
)
CHANGING_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
#: Refusals recorded for any route, read-only ones included.
REFUSALS = frozenset({401, 403, 429})


def target_of(context: Context) -> dict[str, Any]:
    target: dict[str, Any] = {}
    named_fields(target, context.params)
    request = context.input
    if request is None:
        return target
    named_fields(target, request.query)
    body = request.body
    if isinstance(body, list):
        target.update(task_items(body))
    elif isinstance(body, dict):
        named_fields(target, body)
        if isinstance(body.get("items"), list):
            target.update(task_items(body["items"]))
    elif isinstance(body, str) and body:
        target["bodyBytes"] = size_of(body)
    return target


def _outcome(reply: Reply | None) -> Any:
    """The task ids started, or the error's message; nothing else of an answer."""
    if reply is None or not isinstance(reply.body, bytes) or len(reply.body) > 256 * 1024:
        return None
    try:
        answer = orjson.loads(reply.body) if reply.body else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if reply.status >= 400 and isinstance(answer.get("message"), str):
        return bounded(answer["message"])
    return started_of(answer)


class Audit:
    def __init__(self, app: App, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, context: Context) -> Reply:
        try:
            reply = await self.app(context)
        except ClientGone:
            # The change may have been made although nobody heard of it.
            self._record(context, CLIENT_CLOSED, None)
            raise
        self._record(context, reply.status, reply)
        return reply

    def _record(self, context: Context, status: int, reply: Reply | None) -> None:
        route = context.route
        if route is None:
            if status not in REFUSALS:
                return
            operation = f"{context.method} {bounded(context.path)}"
        else:
            operation = route.operation or f"{context.method} {route.path}"
            changing = context.method in CHANGING_METHODS or operation in CHANGING_GETS
            if not changing and status not in REFUSALS:
                return
        self.audit.record(
            operation,
            caller=context.caller,
            ip=context.client_ip,
            status=status,
            target=target_of(context) if route is not None else None,
            outcome=_outcome(reply),
        )
