"""Reads a request's parameters, query and body and checks them against the route's schemas, so that a
handler gets only what its ``openapi.yaml`` entry allows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_plus

from aiohttp.web_request import BaseRequest

from butler.http.errors import HttpError
from butler.http.middleware import App, Context
from butler.http.routing import ApiRequest, Reply

#: Methods whose requests carry a body Butler reads.
BODY_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
_SENT_AS_TEXT = (
    " (the body was sent as Content-Type: text/plain, which is read as text; "
    "send JSON with Content-Type: application/json)"
)


def parse_query(query: str) -> dict[str, Any]:
    """Decode a query string as Node's ``querystring`` does: ``+`` is a space, repeated keys make a list."""
    result: dict[str, Any] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        if "%" in pair or "+" in pair:
            key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        else:
            key, value = raw_key, raw_value
        if key in result:
            previous = result[key]
            result[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            result[key] = value
    return result


class Validation:
    """``read_body`` reads and decodes a body (the server's, which knows the connection's limits)."""

    def __init__(self, app: App, read_body: Callable[[BaseRequest], Awaitable[Any]]) -> None:
        self.app = app
        self.read_body = read_body

    def __call__(self, context: Context) -> Awaitable[Reply]:
        route = context.route
        assert route is not None
        params = context.params
        if route.params_check is not None:
            params = route.params_check(params)
        query = parse_query(context.query) if context.query else {}
        if route.query_check is not None:
            query = route.query_check(query)
        if route.body_check is not None and context.method in BODY_METHODS:
            return self._with_body(context, route.body_check, query, params)
        self._checked(context, query, params, None)
        return self.app(context)

    async def _with_body(
        self, context: Context, check: Callable[[Any], Any], query: dict[str, Any], params: dict[str, str]
    ) -> Reply:
        body = await self.read_body(context.request)
        try:
            checked = check(body)
        except HttpError as exc:
            # A text/plain body is text, as upstream reads it; its 400 says why a JSON body was not taken.
            if isinstance(body, str) and exc.message.startswith("body must be "):
                raise HttpError(
                    exc.status, exc.message + _SENT_AS_TEXT, code=exc.code, headers=exc.headers
                ) from None
            raise
        self._checked(context, query, params, checked)
        return await self.app(context)

    @staticmethod
    def _checked(context: Context, query: dict[str, Any], params: dict[str, str], body: Any) -> None:
        context.input = ApiRequest(
            context.method, context.path, query, params, body, context.request.headers, context.client_ip
        )
