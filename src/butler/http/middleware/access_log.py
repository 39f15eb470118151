"""One ``info`` line per request: method (after any override), URL, status, duration, client, and the caller
once authentication named one (``token <name>``, ``certificate <subject>``)."""

from __future__ import annotations

from butler.http.errors import CLIENT_CLOSED, ClientGone
from butler.http.middleware import App, Context
from butler.http.routing import Reply
from butler.logs import RequestLog


class AccessLog:
    def __init__(self, app: App, request_log: RequestLog) -> None:
        self.app = app
        self.request_log = request_log

    async def __call__(self, context: Context) -> Reply:
        try:
            reply = await self.app(context)
        except ClientGone:
            # Nothing can be answered, and nothing failed on Butler's side: one request line, no traceback.
            self._write(context, CLIENT_CLOSED)
            raise
        self._write(context, reply.status)
        return reply

    def _write(self, context: Context, status: int) -> None:
        self.request_log.write(
            context.method, context.target, status, context.started, context.client_ip, context.caller
        )
