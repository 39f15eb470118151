"""Refuses browser requests made for other web sites' pages (``butler.http.browsers``), before anything
else about them is looked at."""

from __future__ import annotations

from collections.abc import Awaitable

from butler.http.browsers import BrowserCheck
from butler.http.middleware import App, Context
from butler.http.routing import Reply


class BrowserGuard:
    def __init__(self, app: App, browsers: BrowserCheck) -> None:
        self.app = app
        self.browsers = browsers

    def __call__(self, context: Context) -> Awaitable[Reply]:
        self.browsers.check(context.request, context.method, context.path)
        return self.app(context)
