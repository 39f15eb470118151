"""The status page: ``GET /status`` (HTML, ``?fragment=true`` its body alone, which the page refreshes itself
with) and ``GET /status/data`` (the same snapshot as JSON); with authentication on, a browser logs in at
``/status/login`` and out with ``POST /status/logout``. On when ``Butler.statusPage.enable`` is true."""

from __future__ import annotations

from butler import __version__
from butler.auth import SESSION_COOKIE
from butler.http.errors import HttpError
from butler.http.middleware.authentication import sent_token
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services

#: How long a browser stays logged in to the status page (seconds); the token's own expiry and a revoke
#: end it sooner.
SESSION_SECONDS = 12 * 3600


def routes(services: Services) -> list[Route]:
    # Imported only when the page is on: it builds on the alert templates' module.
    from butler.status_page import (
        CONTENT_SECURITY_POLICY,
        LOGIN_CONTENT_SECURITY_POLICY,
        StatusPage,
        login_page,
    )

    page = StatusPage(services)
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        # The page holds the config, masked as it is: caches keep no copy of it.
        "Cache-Control": "no-store",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Frame-Options": "DENY",
    }
    login_headers = {**headers, "Content-Security-Policy": LOGIN_CONTENT_SECURITY_POLICY}
    login_html = login_page(__version__).encode()
    rest = services.settings.rest
    cookie = f"{SESSION_COOKIE}={{}}; Path=/; HttpOnly; SameSite=Strict; Max-Age={{}}"
    if rest.tls.enable:
        cookie += "; Secure"

    async def status(request: ApiRequest) -> Reply:
        data = page.data()
        html = page.fragment(data) if request.query.get("fragment") else page.page(data)
        return Reply(200, html.encode(), headers=headers)

    async def status_data(request: ApiRequest) -> Reply:
        return json_reply(page.data())

    async def login_form(request: ApiRequest) -> Reply:
        return Reply(200, login_html, headers=login_headers)

    async def login(request: ApiRequest) -> Reply:
        # The token has passed the chain's check by now (admin scope); the cookie carries it to the
        # page's routes, where it is checked again on every call.
        if not rest.auth.enable:
            return Reply(204)  # nothing to log in to: the page is open
        token = sent_token(request.headers, rest.auth.token_header)
        if token is None:  # a client certificate, not a token, passed the check
            raise HttpError(400, "Send the token as 'Authorization: Bearer <token>' to log in")
        set_cookie = cookie.format(token, SESSION_SECONDS)
        return Reply(204, headers={"Set-Cookie": set_cookie, "Cache-Control": "no-store"})

    async def logout(request: ApiRequest) -> Reply:
        return Reply(204, headers={"Set-Cookie": cookie.format("", 0)})

    return [
        Route("GET", "/status", status),
        Route("GET", "/status/data", status_data),
        Route("GET", "/status/login", login_form),
        Route("POST", "/status/login", login),
        Route("POST", "/status/logout", logout),
    ]
