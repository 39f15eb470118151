"""The steps every REST request goes through, as a chain of small middlewares.

Each middleware is built around the next one (``Middleware(app, ...)``) and is called with the request's
``Context``; it may answer itself (by returning a Reply or raising), change the context, or pass it on with
``await self.app(context)``. ``RestApi`` builds the chain once, in this order:

1. ``AccessLog``: one log line per request, with its status and duration (499 for a client gone);
2. ``RequestMetrics``: the request counted by route template, method and status, with its duration (when
   ``Butler.prometheus`` is on);
3. ``Audit``: state-changing and refused calls recorded, with the status answered (when
   ``Butler.auditLog`` is on);
4. ``ErrorEnvelope``: every error below becomes an answer in Butler's envelope, a fault a logged 500;
5. ``MethodOverride``: ``X-HTTP-Method-Override`` on a POST (Qlik's REST connector can only GET and POST);
6. ``BrowserGuard``: refuses browser requests made for other web sites' pages;
7. ``Routing``: finds the route, or the 404;
8. ``RateLimit``: the per-IP limit, for the routes it applies to (requests refused by the next step count);
9. ``Authentication``: the caller's token or client certificate and the route's scope (when
   ``Butler.restServerConfig.auth`` is on), with each token's own rate limit;
10. ``Validation``: parameters, query and body read and checked against the route's schemas;

and at its end ``dispatch`` calls the route's handler. A step that needs something done after the answer
(a log line, an error turned into an answer) awaits the next; one that only checks or adds to the context is
a plain function returning the next step's awaitable: every request passes all of them, and a coroutine per
step would cost the hottest endpoints a few per cent of their throughput.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any

from aiohttp.web_request import BaseRequest

from butler.http.routing import ApiRequest, Reply, Route

if TYPE_CHECKING:
    from butler.http.middleware.authentication import Verified

App = Callable[["Context"], Awaitable[Reply]]


class Connection:
    """What the steps keep of a kept-alive connection between its requests (the server's connection handler
    derives from this and holds the slots)."""

    __slots__ = ()
    #: The token last verified on the connection (``Authentication``).
    credential: Verified | None


class Context:
    """One request on its way through the chain: what the steps learnt of it so far."""

    __slots__ = (
        "caller",
        "client_ip",
        "headers",
        "input",
        "method",
        "params",
        "path",
        "query",
        "request",
        "route",
        "started",
        "target",
    )

    def __init__(self, request: BaseRequest, started: float) -> None:
        self.request = request
        self.started = started
        self.method: str = request.method
        #: The URL as sent, query included: what the log shows and the 404 names.
        self.target: str = request.raw_path
        path, _, query = self.target.partition("?")
        self.path = path
        self.query = query
        self.client_ip: str = request.remote or ""
        #: Who called, once authenticated: ``token <name>`` or ``certificate <subject>``; None without
        #: authentication (the audit log then names the client's address).
        self.caller: str | None = None
        self.route: Route | None = None
        self.params: dict[str, str] = {}
        #: What a handler sees, once validated.
        self.input: ApiRequest | None = None
        #: Headers added to whatever the answer is (the rate limit's counts).
        self.headers: dict[str, str] | None = None

    def add_headers(self, headers: dict[str, Any]) -> None:
        self.headers = headers if self.headers is None else {**self.headers, **headers}


def dispatch(context: Context) -> Awaitable[Reply]:
    """The end of the chain: the route's handler, with the validated request."""
    assert context.route is not None and context.input is not None
    return context.route.handler(context.input)


def build_chain(app: App, *middlewares: Callable[[App], App]) -> App:
    """``app`` wrapped in ``middlewares``, the first of them outermost."""
    for middleware in reversed(middlewares):
        step = middleware(app)
        # Each request calls every step: a bound method is called faster than an object, whose __call__
        # is looked up on every call.
        app = step if isinstance(step, FunctionType | MethodType) else step.__call__  # type: ignore[operator]
    return app


__all__ = ["App", "Context", "build_chain", "dispatch"]
