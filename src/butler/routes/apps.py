"""Apps through the Engine: ``/v4/apps/list``, ``/v4/app/{appId}/dump``, ``/v4/app/{appId}/reload``, their
aliases and the old ``/v2/senseListApps`` and ``/v2/senseAppDump``."""

from __future__ import annotations

from typing import Any

from butler.http.routing import JSON_HEADERS, ApiRequest, Reply, Route, json_reply
from butler.services import Services


def routes(services: Services) -> list[Route]:
    apps = services.apps
    if apps is None:  # the endpoints are switched off
        return []

    async def list_apps(request: ApiRequest) -> Reply:
        return json_reply(await apps.list_apps())

    async def dump_app(app_id: str) -> Reply:
        return Reply(200, await apps.dump(app_id), headers=JSON_HEADERS)

    async def dump(request: ApiRequest) -> Reply:
        return await dump_app(request.params["appId"])

    async def v2_dump(request: ApiRequest) -> Reply:
        return await dump_app(request.query["appId"])

    async def reload(request: ApiRequest) -> Reply:
        app_id = request.params["appId"]
        body: dict[str, Any] = request.body
        mode = body.get("reloadMode", 0)
        outcome = await apps.reload(
            app_id,
            mode if 0 <= mode <= 2 else 0,
            body.get("partialReload") is True,
            _ids(body.get("startQSEoWTaskOnSuccess")),
            _ids(body.get("startQSEoWTaskOnFailure")),
            bool(request.query.get("wait")),
        )
        return json_reply(outcome, 201)

    return [
        Route("GET", "/v4/apps/list", list_apps),
        Route("GET", "/v4/senselistapps", list_apps),
        Route("GET", "/v2/senseListApps", list_apps),
        Route("GET", "/v4/app/{appId}/dump", dump),
        Route("GET", "/v4/senseappdump/{appId}", dump),
        Route("GET", "/v2/senseAppDump", v2_dump),
        Route("PUT", "/v4/app/{appId}/reload", reload),
    ]


def _ids(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]
