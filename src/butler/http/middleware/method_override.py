"""``X-HTTP-Method-Override`` on a POST: Qlik's REST connector can only GET and POST, so load scripts reach
PUT and DELETE endpoints this way, as upstream Butler allows."""

from __future__ import annotations

from collections.abc import Awaitable

from butler.http.middleware import App, Context
from butler.http.routing import Reply


class MethodOverride:
    def __init__(self, app: App) -> None:
        self.app = app

    def __call__(self, context: Context) -> Awaitable[Reply]:
        if context.method == "POST":
            override = context.request.headers.get("X-HTTP-Method-Override")
            if override:
                context.method = override.strip().upper()
        return self.app(context)
