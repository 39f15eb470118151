"""Alerts: ``GET /v4/alerts`` (recent alerts and how each delivery went) and
``POST /v4/alerts/{id}/retry`` (send a dead letter again). Additions to upstream's API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services

if TYPE_CHECKING:
    from butler.alerts.service import AlertService


def routes(services: Services) -> list[Route]:
    def service() -> AlertService:
        if services.alerts_off is not None:
            raise HttpError(503, f"Alerts are off: {services.alerts_off}")
        if services.alerts is None:
            raise HttpError(
                503,
                "No alert channel is on: enable emailNotification, slackNotification, teamsNotification, "
                "webhookNotification or incidentTool in the config file",
            )
        return services.alerts

    async def list_alerts(request: ApiRequest) -> Reply:
        query = request.query
        alerts = service().recent(
            state=query.get("state"),
            task_id=query.get("taskId"),
            channel=query.get("channel"),
            limit=int(query.get("limit", 100)),
        )
        return json_reply(alerts)

    async def retry(request: ApiRequest) -> Reply:
        retried = await service().dispatcher.retry(request.params["id"])
        answer: dict[str, Any] = {"retried": [d.summary() for d in retried]}
        return json_reply(answer, 202)

    return [
        Route("GET", "/v4/alerts", list_alerts),
        Route("POST", "/v4/alerts/{id}/retry", retry),
    ]
