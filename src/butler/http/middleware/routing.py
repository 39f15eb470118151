"""Finds the route for the request's method and path; HEAD is answered by GET routes."""

from __future__ import annotations

from collections.abc import Awaitable

from butler.http.errors import RouteNotFound
from butler.http.middleware import App, Context
from butler.http.routing import Reply, Router


class Routing:
    def __init__(self, app: App, router: Router) -> None:
        self.app = app
        self.router = router

    def __call__(self, context: Context) -> Awaitable[Reply]:
        method = context.method
        match = self.router.match("GET" if method == "HEAD" else method, context.path)
        if match is None:
            raise RouteNotFound(method, context.target)
        context.route, context.params = match
        return self.app(context)
