"""Routes and the router: the map from method and path to a handler.

Paths match as upstream Butler matches them: case-sensitive, a trailing slash is significant, ``{name}``
segments capture one URL-decoded segment of at most 100 characters, and a static path wins over a
parameterised one. HEAD is answered by every GET route.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any
from urllib.parse import unquote

from butler.http.errors import HttpError
from butler.json_encoding import encode_json

MAX_PARAM_LENGTH = 100


@dataclass(slots=True)
class ApiRequest:
    """What a handler sees of a request, after validation."""

    method: str
    path: str
    query: dict[str, Any]
    params: dict[str, str]
    body: Any
    headers: Mapping[str, str]
    client_ip: str


@dataclass(slots=True)
class Reply:
    """A handler's answer. ``body`` is sent as it is; ``content_type`` goes into ``headers``.

    A body given as a list of pieces is sent piece by piece, waiting for the client to take each: a large
    answer is then never copied whole, neither joined nor into the socket's send buffer.

    Replies may be built once and returned for every request, so nothing changes them after construction.
    """

    status: int
    body: bytes | list[bytes] = b""
    content_type: InitVar[str | None] = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self, content_type: str | None) -> None:
        if content_type:
            self.headers = {**self.headers, "Content-Type": content_type}


JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


# Shared by the replies built below; safe because replies are never changed.
JSON_HEADERS = {"Content-Type": JSON_TYPE}
TEXT_HEADERS = {"Content-Type": TEXT_TYPE}


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(status, encode_json(data), headers=JSON_HEADERS)


def text_reply(text: str, status: int = 200) -> Reply:
    return Reply(status, text.encode(), headers=TEXT_HEADERS)


Handler = Callable[[ApiRequest], Awaitable[Reply]]


@dataclass
class Route:
    """One endpoint. ``flag`` names its ``Butler.restServerEndpointsEnable`` switch (None: always on).

    ``rate_limited`` is False for the few surfaces that monitoring and browsers poll (health, API docs).
    ``documented`` is False for the API-docs pages themselves, which are not part of the API.
    ``scope`` is what a caller must hold when authentication is on (None: open to all, as ``/health``);
    ``session`` that the status page's login cookie may carry the token here (``x-session-cookie``).
    Errors of the services a handler calls are answered by the chain (``butler.http.errors``), so handlers
    need no try blocks for them.
    """

    method: str
    path: str
    handler: Handler
    flag: str | None = None
    rate_limited: bool = True
    documented: bool = True
    scope: str | None = None
    session: bool = False
    query_check: Callable[[Any], Any] | None = None
    params_check: Callable[[Any], Any] | None = None
    body_check: Callable[[Any], Any] | None = None
    #: The OpenAPI operationId, which the audit log names calls by.
    operation: str | None = None


@dataclass
class _Pattern:
    route: Route
    regex: re.Pattern[str]
    names: tuple[str, ...]


def _compile(route: Route) -> _Pattern:
    names = []
    pieces = []
    for segment in route.path.split("/"):
        if segment.startswith("{"):
            names.append(segment[1:-1])
            pieces.append("([^/]*)")
        else:
            pieces.append(re.escape(segment))
    return _Pattern(route, re.compile("/".join(pieces)), tuple(names))


class Router:
    """Finds the route of a method and path: static paths by one dictionary look-up, paths with
    parameters by pattern, static segments first (as upstream's router does)."""

    def __init__(self) -> None:
        self._static: dict[tuple[str, str], Route] = {}
        self._dynamic: dict[str, list[_Pattern]] = {}
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        self.routes.append(route)
        if "{" not in route.path:
            self._static[(route.method, route.path)] = route
            return
        patterns = self._dynamic.setdefault(route.method, [])
        patterns.append(_compile(route))
        # More static segments first, so /v4/schedules/startall wins over /v4/schedules/{id}.
        patterns.sort(key=lambda p: -sum(1 for s in p.route.path.split("/") if not s.startswith("{")))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        route = self._static.get((method, path))
        if route is not None:
            return route, {}
        for pattern in self._dynamic.get(method, ()):
            found = pattern.regex.fullmatch(path)
            if found is None:
                continue
            params = {}
            for name, raw in zip(pattern.names, found.groups(), strict=True):
                value = unquote(raw) if "%" in raw else raw
                if len(value) > MAX_PARAM_LENGTH:
                    raise HttpError(
                        414,
                        f"'{path}' is exceeding the max param length",
                        code="FST_ERR_MAX_PARAM_LENGTH",
                        error="Bad Request",
                    )
                params[name] = value
            return pattern.route, params
        return None
