"""The monitors' REST side: ``GET /v4/licenses/releases``, the access allocations licence release
released or, in a dry run, would have released (an addition to upstream's API)."""

from __future__ import annotations

from typing import Any

from butler.config import Settings
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services


def on(settings: Settings) -> bool:
    """Whether any monitor is enabled."""
    return settings.monitors.any_on


def routes(services: Services) -> list[Route]:
    settings = services.settings.monitors.release

    async def releases(request: ApiRequest) -> Reply:
        release = services.monitors.release if services.monitors is not None else None
        answer: dict[str, Any] = {
            "enabled": release is not None,
            "dryRun": settings.dry_run,
            "lastRun": release.last_run if release is not None else None,
            "releases": release.releases() if release is not None else [],
        }
        limit = request.query.get("limit")
        if limit is not None:
            answer["releases"] = answer["releases"][: int(limit)]
        return json_reply(answer)

    return [Route("GET", "/v4/licenses/releases", releases, flag="licenseReleases")]
