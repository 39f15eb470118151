"""The status page: ``GET /status`` (HTML, ``?fragment=true`` its body alone, which the page refreshes itself
with) and ``GET /status/data`` (the same snapshot as JSON). On when ``Butler.statusPage.enable`` is true."""

from __future__ import annotations

from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services


def routes(services: Services) -> list[Route]:
    # Imported only when the page is on: it builds on the alert templates' module.
    from butler.status_page import CONTENT_SECURITY_POLICY, StatusPage

    page = StatusPage(services)
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        # The page holds the config, masked as it is: caches keep no copy of it.
        "Cache-Control": "no-store",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
    }

    async def status(request: ApiRequest) -> Reply:
        data = page.data()
        html = page.fragment(data) if request.query.get("fragment") else page.page(data)
        return Reply(200, html.encode(), headers=headers)

    async def status_data(request: ApiRequest) -> Reply:
        return json_reply(page.data())

    return [
        Route("GET", "/status", status),
        Route("GET", "/status/data", status_data),
    ]
