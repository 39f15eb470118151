"""Assembling Butler from its settings: which features are on, the services they share, the REST API's
routes, its listeners, and the run loop.

A feature is declared once, in ``FEATURES``: its routes module, the enable flags of its routes (or the setting
that turns it on), the services it needs and a start-up check. ``Butler.start`` opens the services the enabled
features need and then the listeners, registering every close on one ``AsyncExitStack``; ``Butler.stop``
closes that stack, so listeners stop first and services after them, newest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial

from butler.auth.tokens import open_token_store
from butler.config import ENDPOINT_FLAGS, Settings
from butler.http.browsers import BrowserCheck
from butler.http.docs import DOCS_PATH, ApiDocument, DocumentationSite, load_openapi
from butler.http.middleware.authentication import Authentication
from butler.http.ratelimit import RateLimiter
from butler.http.routing import Route, Router
from butler.http.server import Listener, RestApi, tls_context
from butler.routes import (
    active_users,
    alerts,
    apps,
    audit,
    base_conversion,
    butler_status,
    files,
    key_value,
    messaging,
    metrics,
    monitors,
    newrelic,
    scheduler,
    status_page,
    task_start,
)
from butler.services import Services, StartupError, open_services

__all__ = ["DEFAULT_RATE_LIMIT", "FEATURES", "Butler", "Feature", "StartupError", "build_router", "run"]

log = logging.getLogger("butler")

#: Requests per minute per client IP when ``--api-rate-limit`` is not given (upstream's default).
DEFAULT_RATE_LIMIT = 100


@dataclass(frozen=True)
class Feature:
    """What one feature serves and needs.

    It is on when any of ``flags`` is true, when ``when`` says so for features no endpoint flag turns on,
    and always when it has neither. The enable flag ``openapi.yaml`` gives each of its routes must be among
    ``flags`` (``build_router`` refuses it otherwise). While on, the ``services`` it names (keys of
    ``butler.services.OPENERS``) are opened and ``check`` runs at start-up.
    """

    routes: Callable[[Services], list[Route]] | None = None
    flags: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    when: Callable[[Settings], bool] | None = None
    check: Callable[[Settings], None] | None = None

    def on(self, settings: Settings) -> bool:
        if self.when is not None:
            return self.when(settings)
        return not self.flags or any(settings.endpoints.enabled(flag) for flag in self.flags)


def _mqtt_on(settings: Settings) -> bool:
    return settings.mqtt.enable


def _udp_on(settings: Settings) -> bool:
    return settings.udp.enable


SCHEDULER_FLAGS = tuple(flag for flag in ENDPOINT_FLAGS if flag.startswith("scheduler."))


def _scheduler_on(settings: Settings) -> bool:
    return settings.scheduler.enable or any(settings.endpoints.enabled(flag) for flag in SCHEDULER_FLAGS)


def _alerts_on(settings: Settings) -> bool:
    return bool(settings.alerts.channels_on())


def _metrics_on(settings: Settings) -> bool:
    return settings.prometheus.enable


def _qlik_reachable(on: Callable[[Settings], bool]) -> Callable[[Settings], bool]:
    """``on``, for the parts that need Qlik Sense: set-ups without client certificates run without them."""
    return lambda settings: on(settings) and settings.certificates.client_cert is not None


#: Every feature, one line each. Their routes are registered in this order.
FEATURES = (
    # Butlers sharing one Redis: the leases, and the Redis the rate limits count in. Alone, a Butler holds
    # every lease and counts by itself, which needs nothing opened.
    Feature(when=lambda settings: settings.key_value.backend == "redis", services=("leases",)),
    Feature(butler_status.routes, flags=("butlerping", "apiListEnabledEndpoints")),
    Feature(base_conversion.routes, flags=("base62ToBase16", "base16ToBase62")),
    Feature(key_value.routes, flags=("keyValueStore",), services=("key_values",)),
    Feature(task_start.routes, flags=("senseStartTask",), services=("task_starter",)),
    Feature(messaging.mqtt_routes, flags=("mqttPublishMessage",)),
    Feature(messaging.slack_routes, flags=("slackPostMessage",), services=("slack",)),
    Feature(
        newrelic.routes,
        flags=("newRelic.postNewRelicEvent", "newRelic.postNewRelicMetric"),
        services=("new_relic",),
    ),
    Feature(
        files.routes,
        flags=("fileCopy", "fileMove", "fileDelete", "createDir", "createDirQVD"),
        check=files.warn_unlimited,
    ),
    Feature(apps.routes, flags=("senseListApps", "senseAppDump", "senseAppReload"), services=("apps",)),
    Feature(active_users.routes, flags=("activeUserCount", "activeUsers")),
    # Schedules: the routes whenever a scheduler flag is on (as upstream), the file read when enabled.
    Feature(scheduler.routes, flags=SCHEDULER_FLAGS, services=("scheduler",)),
    Feature(when=_scheduler_on, services=("scheduler",)),
    Feature(when=_qlik_reachable(_scheduler_on), services=("task_starter",)),
    # Alerts on task outcomes; QRS, when it can be reached, for the app owners and custom properties.
    Feature(alerts.routes, when=_alerts_on, services=("alerts",)),
    Feature(when=_qlik_reachable(_alerts_on), services=("task_starter",)),
    # MQTT: events and messages published, task starts received.
    Feature(when=_mqtt_on, services=("mqtt",)),
    Feature(when=_qlik_reachable(_mqtt_on), services=("task_starter",)),
    # Points to InfluxDB, written by the features that have something to store.
    Feature(when=lambda settings: settings.influx.enable, services=("influx",)),
    # Events from Sense over UDP, task outcomes enriched from QRS.
    Feature(when=_udp_on, services=("events",)),
    Feature(when=_qlik_reachable(_udp_on), services=("task_starter",)),
    # Periodic monitors (services, version, licences, heartbeat, uptime); the licence releases they made.
    Feature(monitors.routes, flags=("licenseReleases",), services=("monitors",)),
    Feature(when=monitors.on, services=("monitors",)),
    # The audit log: written whenever it is on, read through its route.
    Feature(when=lambda settings: settings.audit.enable, services=("audit",)),
    Feature(audit.routes, flags=("audit",)),
    # GET /status, a page for people, showing what the services above report.
    Feature(status_page.routes, when=lambda settings: settings.status_page.enable),
    # GET /metrics, on the REST API's port or one of its own (Butler._start).
    Feature(metrics.routes, when=_metrics_on, services=("metrics",), check=metrics.warn_unserved),
)


def build_router(services: Services, document: ApiDocument) -> Router:
    """Register every route whose enable flag is on, with its validators from the API document."""
    router = Router()
    flags = services.settings.endpoints
    for feature in FEATURES:
        # A feature turned on by a setting serves nothing while off; others serve their flagged routes.
        if feature.routes is None or (feature.when is not None and not feature.when(services.settings)):
            continue
        for route in feature.routes(services):
            document.bind(route)
            if route.flag is not None and route.flag not in feature.flags:
                raise LookupError(
                    f"{route.method} {route.path}: flag {route.flag} is not among its feature's"
                )
            if route.flag is None or flags.enabled(route.flag):
                router.add(route)
    site = DocumentationSite(document, router.routes, services.settings.rest.auth.token_header)
    for route in site.routes():
        router.add(route)
    return router


@dataclass
class Butler:
    """A configured Butler: ``start`` opens its services and listeners, ``stop`` closes them."""

    settings: Settings
    rate_limit: int = DEFAULT_RATE_LIMIT
    listeners: list[Listener] = field(default_factory=list)
    services: Services = field(init=False)
    _exits: AsyncExitStack = field(init=False, default_factory=AsyncExitStack)

    def __post_init__(self) -> None:
        self.services = Services(self.settings)

    def build_api(self) -> RestApi:
        router = build_router(self.services, ApiDocument(load_openapi()))
        limiter = self._rate_limiter()
        browsers = BrowserCheck(self.settings.rest.allowed_origins, open_paths=(DOCS_PATH,))
        requests = self.services.metrics.requests if self.services.metrics is not None else None
        auth = self.settings.rest.auth
        authentication = None
        if auth.enable:
            if auth.certificates and not self.settings.rest.tls.enable:
                log.warning("Butler.restServerConfig.auth.certificates are not used: TLS is off")
            kv = self.settings.key_value
            tokens = open_token_store(kv.backend, kv.sqlite_path, kv.redis_url, kv.redis_prefix)
            self._exits.push_async_callback(tokens.close)
            authentication = partial(
                Authentication,
                tokens=tokens,
                header=auth.token_header,
                certificates=auth.certificates,
                limiter_for=self._token_limiter,
            )
        return RestApi(router, limiter, browsers, requests, self.services.audit, authentication)

    def _token_limiter(self, max_requests: int) -> RateLimiter:
        """The limiter of tokens allowed ``max_requests`` a minute: shared through Redis when there is one."""
        leases = self.services.leases
        if leases is None or leases.redis is None:
            return RateLimiter(max_requests)
        from butler.http.shared_ratelimit import SharedRateLimiter

        # Beside the per-IP windows but apart from them: a token's name could be an address.
        return SharedRateLimiter(max_requests, leases.redis, f"{leases.prefix}ratelimit:token:")

    def _rate_limiter(self) -> RateLimiter | None:
        leases = self.services.leases
        if self.rate_limit <= 0:
            return None
        if leases is None or leases.redis is None:
            return RateLimiter(self.rate_limit)
        from butler.http.shared_ratelimit import SharedRateLimiter

        limiter = SharedRateLimiter(self.rate_limit, leases.redis, f"{leases.prefix}ratelimit:")
        leases.rate_limiter = limiter
        return limiter

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # what did start is stopped again: no listener or connection is left over
            raise

    async def _start(self) -> None:
        enabled = [feature for feature in FEATURES if feature.on(self.settings)]
        for feature in enabled:
            if feature.check is not None:
                feature.check(self.settings)
        needed = {service for feature in enabled for service in feature.services}
        await open_services(self.services, needed, self._exits)
        rest = self.settings.rest
        if rest.enable:
            listener = Listener(self.build_api(), rest.host, rest.port, self._tls_context(), rest.limits)
            await self._open(listener, "REST API")
        else:
            log.warning("Butler.restServerConfig.enable is false: the REST API is not started")
        health = self.settings.health_check
        if health.enable:
            await self._open_alone(
                butler_status.health_route(self.services), rest.host, health.port, "health check"
            )
        prometheus = self.settings.prometheus
        if self.services.metrics is not None and prometheus.port is not None:
            route = metrics.metrics_route(self.services.metrics)
            await self._open_alone(route, prometheus.host or rest.host, prometheus.port, "metrics")

    async def stop(self) -> None:
        try:
            await self._exits.aclose()
        finally:
            self.listeners.clear()
            self.services = Services(self.settings)

    async def _open_alone(self, route: Route, host: str, port: int, what: str) -> None:
        """A plain-HTTP listener serving ``route`` alone, with the REST API's connection limits."""
        router = Router()
        router.add(route)
        rest = self.settings.rest
        api = RestApi(router, browsers=BrowserCheck(rest.allowed_origins))
        await self._open(Listener(api, host, port, limits=rest.limits), what)

    async def _open(self, listener: Listener, what: str) -> None:
        try:
            await listener.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {listener.host}:{listener.port} for the {what}: {exc.strerror or exc}"
            ) from exc
        self._exits.push_async_callback(listener.stop)
        self.listeners.append(listener)
        log.info("%s listening on %s", what, listener.url)

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.settings.rest.tls
        if not tls.enable:
            return None
        assert tls.cert is not None and tls.key is not None  # checked when the config was loaded
        for name, path in (("cert", tls.cert), ("key", tls.key), ("ca", tls.ca)):
            if path is not None and not path.is_file():
                raise StartupError(f"Butler.restServerConfig.tls.{name}: file not found: {path}")
        try:
            context = tls_context(str(tls.cert), str(tls.key), str(tls.ca) if tls.ca else None)
        except (OSError, ssl.SSLError) as exc:
            ca = f" and CA {tls.ca}" if tls.ca else ""
            what = f"certificate {tls.cert} with key {tls.key}{ca}"
            raise StartupError(f"Butler.restServerConfig.tls: cannot load {what}: {exc}") from exc
        auth = self.settings.rest.auth
        if auth.enable and auth.certificates:
            if tls.ca is None:
                raise StartupError(
                    "Butler.restServerConfig.auth.certificates needs Butler.restServerConfig.tls.ca, "
                    "the CA that signs the client certificates"
                )
            # Asked for, not required: callers with tokens need no certificate.
            context.verify_mode = ssl.CERT_OPTIONAL
        return context


async def run(butler: Butler, started: Callable[[], None] | None = None) -> None:
    """Start Butler, call ``started`` once it listens, and serve until SIGINT or SIGTERM."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
            loop.add_signal_handler(sig, stopping.set)
    await butler.start()
    if started is not None:
        started()
    # Start-up objects live as long as the process: keep the garbage collector from re-scanning them.
    gc.freeze()
    try:
        await stopping.wait()
    finally:
        log.info("Butler stopping")
        await butler.stop()
