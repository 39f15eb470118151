"""``GET /metrics``: Butler's metrics in Prometheus's text format (``butler.metrics``)."""

from __future__ import annotations

import logging

from butler.config import Settings
from butler.http.routing import ApiRequest, Reply, Route
from butler.metrics import CONTENT_TYPE, Metrics
from butler.services import Services

log = logging.getLogger("butler")


def warn_unserved(settings: Settings) -> None:
    """At start-up: say when nothing would serve /metrics."""
    if settings.prometheus.port is None and not settings.rest.enable:
        log.warning(
            "Butler.prometheus.enable is true but GET /metrics is served nowhere: the REST API is off and "
            "Butler.prometheus.port is null; a port serves it on its own"
        )


def routes(services: Services) -> list[Route]:
    """The route on the REST API's listener, when no port of its own is set."""
    if services.metrics is None or services.settings.prometheus.port is not None:
        return []
    return [metrics_route(services.metrics)]


def metrics_route(metrics: Metrics) -> Route:
    """Also served alone by the metrics port; not rate limited, as Prometheus scrapes it on a schedule."""

    async def scrape(request: ApiRequest) -> Reply:
        return Reply(200, await metrics.exposition(), content_type=CONTENT_TYPE)

    return Route("GET", "/metrics", scrape, rate_limited=False)
