"""Butler's own status: ping, enabled endpoints and the health check."""

from __future__ import annotations

import time
from typing import Any

from butler.http.routing import ApiRequest, Reply, Route, json_reply
from butler.services import Services


def routes(services: Services) -> list[Route]:
    ping = json_reply({"response": "Butler reporting for duty", "butlerVersion": services.version})
    v2_ping = json_reply({"response": "Butler reporting for duty"})
    enabled = json_reply(services.settings.endpoints.enabled_leaf_names())

    async def butler_ping(request: ApiRequest) -> Reply:
        return ping

    async def v2_butler_ping(request: ApiRequest) -> Reply:
        return v2_ping

    async def enabled_endpoints(request: ApiRequest) -> Reply:
        return enabled

    return [
        Route("GET", "/v4/butlerping", butler_ping),
        Route("GET", "/v4/configfile/endpointsenabled", enabled_endpoints),
        Route("GET", "/v2/butlerPing", v2_butler_ping),
        Route("GET", "/v2/butlerping", v2_butler_ping),
        health_route(services),
    ]


def health_route(services: Services) -> Route:
    """``GET /health``: served by the REST API and, when enabled, by the Docker health-check listener."""

    async def health(request: ApiRequest) -> Reply:
        uptime = round(time.monotonic() - services.started, 1)
        status = {"status": "ok", "version": services.version, "uptimeSeconds": uptime}
        status["instance"] = _instance(services)
        if services.events is not None:
            status["udpEvents"] = services.events.stats()
        if services.mqtt is not None:
            status["mqtt"] = services.mqtt.stats()
        if services.influx is not None:
            status["influxDb"] = services.influx.stats()
        if services.alerts is not None:
            status["alerts"] = services.alerts.stats()
        elif services.alerts_off is not None:
            status["alerts"] = {"off": services.alerts_off}
        if services.audit is not None:
            status["audit"] = services.audit.stats()
        if services.monitors is not None and services.monitors.runners:
            status["monitors"] = services.monitors.stats()
        if services.leases is not None:
            status["instances"] = services.leases.stats()
        if services.scheduler is not None:
            scheduler = services.scheduler.stats()
            status["scheduler"] = scheduler
            if scheduler["problemCount"]:
                # Still 200, so that a load balancer keeps sending; the admin sees which file and line.
                status["status"] = "degraded"
        return json_reply(status)

    return Route("GET", "/health", health, rate_limited=False)


def _instance(services: Services) -> dict[str, Any]:
    """Which Butler this is among those sharing a Redis, and what it shares with them there."""
    from butler.events.sharing import INSTANCE_ID

    settings = services.settings
    shares: list[str] = []
    if settings.key_value.backend == "redis":
        shares.append("keyValueStore")
        if services.alerts is not None:
            shares.append("alertOutbox")
        if services.scheduler is not None:
            shares.append("scheduleFires")
    sharing = services.events.sharing if services.events is not None else None
    answer: dict[str, Any] = {"id": INSTANCE_ID, "shares": shares}
    if sharing is not None:
        shares.extend(sharing.stats()["shares"])
        # False while Redis cannot be reached: task events are then handled by every Butler that gets them.
        answer["shared"] = sharing.available
        if not sharing.available:
            answer["redisError"] = sharing.last_error
    return answer
