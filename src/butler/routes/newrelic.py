"""New Relic: ``POST /v4/newrelic/event`` and ``POST /v4/newrelic/metric``, answered as upstream answers.

202 with New Relic's status text when the first account took it; no configured account: 200 and an empty
body; the event refused with another 2xx: that status; anything else: 500.
"""

from __future__ import annotations

from butler.http.errors import HttpError
from butler.http.routing import ApiRequest, Reply, Route, text_reply
from butler.newrelic import NewRelicApi
from butler.services import Services


def routes(services: Services) -> list[Route]:
    def api() -> NewRelicApi:
        assert services.new_relic is not None, "the feature opens it"
        return services.new_relic

    async def post_event(request: ApiRequest) -> Reply:
        body = request.body
        posted = await api().post_event(body["eventType"], body.get("timestamp"), body.get("attributes", []))
        if posted is None:
            return Reply(200)
        if posted.status in (200, 202):
            return text_reply(posted.reason, 202)
        if posted.status is not None and 200 <= posted.status < 300:
            raise HttpError(posted.status, f"New Relic answered {posted.status} {posted.reason}")
        raise HttpError(500, "Failed posting event to New Relic")

    async def post_metric(request: ApiRequest) -> Reply:
        body = request.body
        posted = await api().post_metric(
            body["name"], body["type"], body["value"], body.get("timestamp"), body.get("attributes", [])
        )
        if posted is None:
            return Reply(200)
        if posted.status == 202:
            return text_reply(posted.reason, 202)
        raise HttpError(500, "Failed posting metric to New Relic")

    return [
        Route("POST", "/v4/newrelic/event", post_event),
        Route("POST", "/v4/newrelic/metric", post_metric),
    ]
