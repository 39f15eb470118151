"""Active users: ``/v4/activeusercount``, ``/v4/activeusers`` and the seed's ``/v2`` routes.

The v4 answers are upstream v6's count shape (``{"response": n}``) and a list of users with their
directory, proxy hosts and times; ``?proxyHost=`` narrows both to one proxy. The v2 routes answer as
Butler's original documentation prints: ``5`` and ``["userA","userB","userC"]``.
"""

from __future__ import annotations

from typing import Any

from butler.events.active_users import ActiveUsers
from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services


def routes(services: Services) -> list[Route]:
    events = services.events

    def active() -> ActiveUsers:
        if events is None:
            raise HttpError(
                503,
                "Active users are counted from Sense's proxy session events: "
                "set Butler.udpServerConfig.enable to true and point the proxy's log appender at Butler",
            )
        return events.users

    async def count(request: ApiRequest) -> Reply:
        host = request.query.get("proxyHost")
        answer: dict[str, Any] = {"response": active().count(host)}
        if host is None:
            answer["perProxyHost"] = active().counts_per_host()
        return json_reply(answer)

    async def users(request: ApiRequest) -> Reply:
        return json_reply(active().users(request.query.get("proxyHost")))

    async def v2_count(request: ApiRequest) -> Reply:
        return json_reply(active().count())

    async def v2_users(request: ApiRequest) -> Reply:
        return json_reply(active().user_ids())

    return [
        Route("GET", "/v4/activeusercount", count),
        Route("GET", "/v4/activeusers", users),
        Route("GET", "/v2/activeUserCount", v2_count),
        Route("GET", "/v2/activeUsers", v2_users),
    ]
