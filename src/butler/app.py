"""Assembling Butler from its settings: the REST API's routes, its listeners, and the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from butler.apps import AppService
from butler.config import Settings
from butler.config.settings import EngineSettings, QrsSettings
from butler.events.service import SenseEvents
from butler.http.browsers import BrowserCheck
from butler.http.docs import DOCS_PATH, ApiDocument, DocumentationSite, load_openapi
from butler.http.ratelimit import RateLimiter
from butler.http.routing import Router
from butler.http.server import Listener, RestApi, tls_context
from butler.kvstore import KeyValueStore, StoreUnavailable, open_store
from butler.mqtt import MqttClient
from butler.mqtt_tasks import MqttTaskStarts
from butler.qlik.qrs import QrsClient
from butler.qlik.repository import QrsRepository
from butler.qlik.tls import CertificateError
from butler.routes import (
    RouteContext,
    active_users,
    apps,
    base_conversion,
    butler_status,
    files,
    key_value,
    messaging,
    task_start,
)
from butler.slack import SlackWebhook
from butler.task_start import TaskStarter

log = logging.getLogger("butler")

#: Route modules, one per feature.
ROUTE_MODULES = (
    butler_status,
    base_conversion,
    key_value,
    task_start,
    messaging,
    files,
    apps,
    active_users,
)

#: Requests per minute per client IP when ``--api-rate-limit`` is not given (upstream's default).
DEFAULT_RATE_LIMIT = 100


class StartupError(Exception):
    """Butler cannot start as configured; the message says why."""


def build_router(context: RouteContext, document: ApiDocument) -> Router:
    """Register every route whose enable flag is on, with its validators from the API document."""
    router = Router()
    flags = context.settings.endpoints
    for module in ROUTE_MODULES:
        for route in module.routes(context):
            document.bind(route)
            if route.flag is None or flags.enabled(route.flag):
                router.add(route)
    for route in DocumentationSite(document, router.routes).routes():
        router.add(route)
    return router


@dataclass
class Butler:
    """A configured Butler: ``start`` opens its listeners, ``stop`` closes them."""

    settings: Settings
    rate_limit: int = DEFAULT_RATE_LIMIT
    listeners: list[Listener] = field(default_factory=list)
    key_values: KeyValueStore | None = None
    qrs: QrsClient | None = None
    task_starter: TaskStarter | None = None
    mqtt: MqttClient | None = None
    slack: SlackWebhook | None = None
    apps: AppService | None = None
    events: SenseEvents | None = None

    def build_api(self) -> RestApi:
        context = RouteContext(
            self.settings,
            key_values=self.key_values,
            task_starter=self.task_starter,
            mqtt=self.mqtt,
            slack=self.slack,
            apps=self.apps,
            events=self.events,
        )
        router = build_router(context, ApiDocument(load_openapi()))
        limiter = RateLimiter(self.rate_limit) if self.rate_limit > 0 else None
        browsers = BrowserCheck(self.settings.rest.allowed_origins, open_paths=(DOCS_PATH,))
        return RestApi(router, limiter, browsers)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # what did start is stopped again: no listener or connection is left over
            raise

    async def _start(self) -> None:
        if self.settings.endpoints.enabled("createDir") and self.settings.files.create_dir is None:
            log.warning(
                "POST /v4/createdir can create folders anywhere Butler may write; "
                "Butler.createDirApprovedDirectories limits it"
            )
        if self.settings.endpoints.enabled("keyValueStore"):
            try:
                self.key_values = await open_store(self.settings.key_value)
            except StoreUnavailable as exc:
                raise StartupError(str(exc)) from exc
            log.info("key-value store: %s", self.settings.key_value.backend)
        mqtt_settings = self.settings.mqtt
        udp = self.settings.udp
        # MQTT task starts and task-event enrichment need QRS too, but set-ups without certificates are
        # fine without them.
        has_certificates = self.settings.certificates.client_cert is not None
        mqtt_starts = mqtt_settings.enable and has_certificates
        if (
            self.settings.endpoints.enabled("senseStartTask")
            or mqtt_starts
            or (udp.enable and has_certificates)
        ):
            try:
                self.qrs = QrsClient(self.settings.qrs, self.settings.certificates)
            except CertificateError as exc:
                raise StartupError(str(exc)) from exc
            self.task_starter = TaskStarter(
                QrsRepository(self.qrs), self.settings.start_task_filter, self.key_values
            )
            _warn_if_unverified("configQRS", "QRS", self.settings.qrs)
        if mqtt_settings.enable:
            self.mqtt = MqttClient(mqtt_settings)
            if self.task_starter is not None:
                self.mqtt.on_message = MqttTaskStarts(self.task_starter, self.mqtt).on_message
            else:
                log.warning(
                    "MQTT task starts are off: Butler.cert is not set, so Qlik Sense cannot be reached"
                )
            self.mqtt.start()
        flags = self.settings.endpoints
        if any(flags.enabled(f) for f in ("senseListApps", "senseAppDump", "senseAppReload")):
            try:
                self.apps = AppService(self.settings.engine, self.settings.certificates, self.task_starter)
            except CertificateError as exc:
                raise StartupError(str(exc)) from exc
            _warn_if_unverified("configEngine", "the Engine", self.settings.engine)
        if udp.enable:
            self.events = SenseEvents(udp, self.qrs, self.mqtt, mqtt_settings.events)
            try:
                await self.events.start()
            except OSError as exc:
                raise StartupError(
                    f"Butler.udpServerConfig: cannot listen for events on {udp.host}: {exc.strerror or exc}"
                ) from exc
        if self.settings.slack_webhook and self.settings.endpoints.enabled("slackPostMessage"):
            self.slack = SlackWebhook(self.settings.slack_webhook)
        rest = self.settings.rest
        if rest.enable:
            listener = Listener(self.build_api(), rest.host, rest.port, self._tls_context(), rest.limits)
            await self._open(listener, "REST API")
        else:
            log.warning("Butler.restServerConfig.enable is false: the REST API is not started")
        health = self.settings.health_check
        if health.enable:
            router = Router()
            context = RouteContext(self.settings, mqtt=self.mqtt, events=self.events)
            router.add(butler_status.health_route(context))
            health_api = RestApi(router, browsers=BrowserCheck(rest.allowed_origins))
            health_listener = Listener(health_api, rest.host, health.port, limits=rest.limits)
            await self._open(health_listener, "health check")

    async def stop(self) -> None:
        for listener in reversed(self.listeners):
            await listener.stop()
        self.listeners.clear()
        if self.events is not None:
            await self.events.stop()
            self.events = None
        if self.key_values is not None:
            await self.key_values.close()
            self.key_values = None
        if self.mqtt is not None:
            await self.mqtt.stop()
            self.mqtt = None
        if self.slack is not None:
            await self.slack.close()
            self.slack = None
        if self.apps is not None:
            await self.apps.close()
            self.apps = None
        if self.qrs is not None:
            await self.qrs.close()
            self.qrs = None

    async def _open(self, listener: Listener, what: str) -> None:
        try:
            await listener.start()
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {listener.host}:{listener.port} for the {what}: {exc.strerror or exc}"
            ) from exc
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
            return tls_context(str(tls.cert), str(tls.key), str(tls.ca) if tls.ca else None)
        except (OSError, ssl.SSLError) as exc:
            ca = f" and CA {tls.ca}" if tls.ca else ""
            what = f"certificate {tls.cert} with key {tls.key}{ca}"
            raise StartupError(f"Butler.restServerConfig.tls: cannot load {what}: {exc}") from exc


def _warn_if_unverified(section: str, service: str, settings: QrsSettings | EngineSettings) -> None:
    if settings.use_ssl and not settings.reject_unauthorized:
        log.warning(
            "Butler.%s.rejectUnauthorized is false: the certificate of %s at %s:%d is not verified, so "
            "whoever can intercept the connection can pose as Qlik Sense; true verifies it against "
            "Butler.cert.clientCertCA",
            section,
            service,
            settings.host,
            settings.port,
        )


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
