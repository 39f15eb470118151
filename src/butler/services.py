"""The services Butler's features share: each opened at most once, in one order, and closed by one exit stack.

A feature names the services it needs (``butler.app.FEATURES``); ``open_services`` opens those, in the order
of ``OPENERS`` so that a service finds the ones it builds on already open, and registers each close on the
caller's ``AsyncExitStack``. Closing the stack closes them newest first: event listening before the MQTT
and QRS clients it uses, the QRS client last but for the key-value store. Every listener is handed the same
``Services``, so the REST API and the health-check listener report the same state.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from butler import __version__
from butler.alerts.outbox import OutboxUnavailable
from butler.apps import AppService
from butler.config import Settings
from butler.config.settings import EngineSettings, QrsSettings
from butler.events.service import SenseEvents
from butler.kvstore import KeyValueStore, StoreUnavailable, open_store
from butler.mqtt import MqttClient
from butler.mqtt_tasks import MqttTaskStarts
from butler.newrelic import NewRelicApi
from butler.qlik.qrs import QrsClient
from butler.qlik.repository import QrsRepository
from butler.qlik.tls import CertificateError
from butler.slack import SlackWebhook
from butler.task_start import TaskStarter

if TYPE_CHECKING:
    from butler.alerts.service import AlertService
    from butler.audit import AuditLog
    from butler.influx import InfluxWriter
    from butler.influx.task_outcomes import TaskOutcomePoints
    from butler.leases import Leases
    from butler.metrics import Metrics
    from butler.monitors.setup import Monitors
    from butler.scheduler.service import SchedulerService

log = logging.getLogger("butler")


class StartupError(Exception):
    """Butler cannot start as configured; the message says why."""


@dataclass
class Services:
    """The settings and the open services of one Butler; a service is ``None`` when no enabled feature needs
    it or its configuration leaves it off."""

    settings: Settings
    key_values: KeyValueStore | None = None
    qrs: QrsClient | None = None
    #: The monitors' own QRS client: they call as sa_repository, whoever configQRS's headers name.
    monitors_qrs: QrsClient | None = None
    task_starter: TaskStarter | None = None
    mqtt: MqttClient | None = None
    slack: SlackWebhook | None = None
    new_relic: NewRelicApi | None = None
    apps: AppService | None = None
    alerts: AlertService | None = None
    scheduler: SchedulerService | None = None
    #: Why the alerts are off although a channel is on (the outbox cannot be written).
    alerts_off: str | None = None
    events: SenseEvents | None = None
    influx: InfluxWriter | None = None
    monitors: Monitors | None = None
    #: ``Butler.prometheus``: other modules add their figures with ``metrics.register`` (butler.metrics).
    metrics: Metrics | None = None
    #: ``Butler.auditLog``: state-changing and refused calls.
    audit: AuditLog | None = None
    #: The monitors' leases, shared with other Butlers on the same Redis (butler.leases).
    leases: Leases | None = None
    version: str = __version__
    started: float = field(default_factory=time.monotonic)


Opener = Callable[[Services, AsyncExitStack], Awaitable[None]]


async def _key_values(services: Services, exits: AsyncExitStack) -> None:
    settings = services.settings.key_value
    try:
        store = await open_store(settings)
    except StoreUnavailable as exc:
        raise StartupError(str(exc)) from exc
    exits.push_async_callback(store.close)
    services.key_values = store
    log.info("key-value store: %s", settings.backend)


async def _leases(services: Services, exits: AsyncExitStack) -> None:
    from butler.leases import Leases

    settings = services.settings
    shared = settings.key_value.backend == "redis"
    leases = Leases(
        settings.key_value.redis_url if shared else None,
        settings.key_value.redis_prefix.removesuffix("kv:"),
        takeover_seconds=settings.instances.takeover_seconds,
        instance_id=settings.instances.instance_id,
    )
    exits.push_async_callback(leases.close)
    services.leases = leases


async def _metrics(services: Services, exits: AsyncExitStack) -> None:
    # Imported only when enabled: the Prometheus client adds a twentieth of a second to start-up.
    from butler.kvstore.counted import CountedStore
    from butler.metrics import Metrics

    services.metrics = Metrics(services)
    # Before the services that use the store take it, so their calls are counted too.
    if services.key_values is not None:
        services.key_values = CountedStore(services.key_values)


async def _task_starter(services: Services, exits: AsyncExitStack) -> None:
    settings = services.settings
    try:
        qrs = QrsClient(settings.qrs, settings.certificates)
    except CertificateError as exc:
        raise StartupError(str(exc)) from exc
    exits.push_async_callback(qrs.close)
    services.qrs = qrs
    services.task_starter = TaskStarter(QrsRepository(qrs), settings.start_task_filter, services.key_values)
    _warn_if_unverified("configQRS", "QRS", settings.qrs)


async def _mqtt(services: Services, exits: AsyncExitStack) -> None:
    settings = services.settings.mqtt
    if not settings.enable:
        return
    mqtt = MqttClient(settings)
    if services.task_starter is not None:
        mqtt.on_message = MqttTaskStarts(services.task_starter, mqtt, services.audit).on_message
    else:
        log.warning("MQTT task starts are off: Butler.cert is not set, so Qlik Sense cannot be reached")
    exits.push_async_callback(mqtt.stop)
    services.mqtt = mqtt
    mqtt.start()


async def _apps(services: Services, exits: AsyncExitStack) -> None:
    settings = services.settings
    try:
        apps = AppService(settings.engine, settings.certificates, services.task_starter)
    except CertificateError as exc:
        raise StartupError(str(exc)) from exc
    exits.push_async_callback(apps.close)
    services.apps = apps
    _warn_if_unverified("configEngine", "the Engine", settings.engine)


async def _events(services: Services, exits: AsyncExitStack) -> None:
    settings = services.settings
    udp = settings.udp
    alerts = services.alerts
    full_logs = alerts.full_logs() if alerts is not None else frozenset()
    points = _influx_points(services)
    if points is not None:
        full_logs |= points.full_logs()
    sharing = None
    if settings.key_value.backend == "redis":
        # Several Butlers on this Redis, each sent every datagram: each task event handled by one of them.
        from butler.events.sharing import EventSharing, events_prefix

        task_events = udp.task_events
        takeover = settings.instances.takeover_seconds
        sharing = EventSharing(
            settings.key_value.redis_url,
            events_prefix(settings.key_value.redis_prefix),
            takeover_seconds=takeover,
            # Without deduplication, "done" need only outlive the other Butlers' look at an expired claim.
            done_seconds=max(task_events.dedup_seconds if task_events.dedup else 0, takeover + 60),
        )
    events = SenseEvents(udp, services.qrs, services.mqtt, settings.mqtt.events, full_logs, sharing)
    if alerts is not None:
        alerts.subscribe(events.bus)
    if points is not None:
        points.subscribe(events.bus)
    # Closed even when it fails half-way: the first UDP port may be open when the second cannot be had.
    exits.push_async_callback(events.stop)
    services.events = events
    try:
        await events.start()
    except OSError as exc:
        raise StartupError(
            f"Butler.udpServerConfig: cannot listen for events on {udp.host}: {exc.strerror or exc}"
        ) from exc


async def _scheduler(services: Services, exits: AsyncExitStack) -> None:
    from butler.scheduler.claims import fire_claims
    from butler.scheduler.service import SchedulerService
    from butler.scheduler.store import ScheduleFile

    settings = services.settings.scheduler
    scheduler = SchedulerService(
        ScheduleFile(settings.file),
        services.task_starter,
        compat=settings.compat,
        history=settings.history,
        claims=fire_claims(services.settings),
        on_failure=services.alerts.start_failed if services.alerts is not None else None,
    )
    await scheduler.open(load_file=settings.enable)
    exits.push_async_callback(scheduler.close)
    services.scheduler = scheduler


async def _alerts(services: Services, exits: AsyncExitStack) -> None:
    # Imported only when an alert channel is on: templates, SMTP and MIME cost start-up time and memory.
    from butler.alerts.setup import open_alerts

    repository = QrsRepository(services.qrs) if services.qrs is not None else None
    try:
        services.alerts = await open_alerts(services.settings, repository, services.version, exits)
    except OutboxUnavailable as exc:
        # Every other feature goes on; /health and /v4/alerts say why no alert will be sent.
        services.alerts_off = str(exc)


async def _influx(services: Services, exits: AsyncExitStack) -> None:
    # Imported only when InfluxDB is on, as the alerts are.
    from butler.influx import InfluxWriter, open_client

    settings = services.settings.influx
    client = open_client(settings)
    writer = InfluxWriter(
        client,
        static_tags=dict(settings.static_tags),
        buffer_size=settings.buffer_size,
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
    )
    exits.push_async_callback(writer.close)
    services.influx = writer
    writer.start()
    log.info("InfluxDB: points go to %s", client.target)


def _influx_points(services: Services) -> TaskOutcomePoints | None:
    """Task outcomes to InfluxDB, when it is on."""
    if services.influx is None:
        return None
    from butler.influx.task_outcomes import TaskOutcomePoints

    return TaskOutcomePoints(services.influx, services.settings.influx)


async def _slack(services: Services, exits: AsyncExitStack) -> None:
    webhook = services.settings.slack_webhook
    if not webhook:
        return
    slack = SlackWebhook(webhook)
    exits.push_async_callback(slack.close)
    services.slack = slack


async def _monitors(services: Services, exits: AsyncExitStack) -> None:
    from butler.monitors.sense import SA_REPOSITORY, QrsSense
    from butler.monitors.setup import Monitors

    settings = services.settings
    try:
        site = None
        if settings.certificates.client_cert is not None:
            # As upstream: the monitors ask QRS as sa_repository, whoever configQRS's headers name.
            qrs = QrsClient(dataclasses.replace(settings.qrs, headers=SA_REPOSITORY), settings.certificates)
            exits.push_async_callback(qrs.close)
            services.monitors_qrs = qrs
            site = QrsSense(qrs)
        monitors = Monitors.open(
            settings,
            site=site,
            publisher=services.mqtt,
            alerts=services.alerts,
            influx=services.influx,
            version=services.version,
            started=services.started,
            leases=services.leases,
        )
    except CertificateError as exc:
        raise StartupError(str(exc)) from exc
    exits.push_async_callback(monitors.stop)
    services.monitors = monitors
    if services.metrics is not None:
        from butler.monitors.metrics import MonitorFigures

        services.metrics.register(MonitorFigures(monitors))
    if services.leases is not None:
        # Asked for before the at-start checks, so that those run on the one Butler that took each lease.
        await services.leases.start()
    monitors.start()


async def _new_relic(services: Services, exits: AsyncExitStack) -> None:
    api = NewRelicApi(services.settings.alerts.new_relic)
    exits.push_async_callback(api.close)
    services.new_relic = api


async def _audit(services: Services, exits: AsyncExitStack) -> None:
    import asyncio

    from butler.audit import AuditLog

    settings = services.settings.audit
    audit = AuditLog(settings.file, settings.max_bytes, settings.keep)
    audit.start()
    # Closed last: the records of everything closing before it are written.
    exits.push_async_callback(asyncio.to_thread, audit.close)
    services.audit = audit
    log.info("audit log: %s", settings.file)


#: Every service by the name features use for it, in the order they are opened: each after those it uses.
OPENERS: dict[str, Opener] = {
    # First, so that it closes last and the services opened after it can record.
    "audit": _audit,
    # Next, so that it closes before the audit log: the monitors stop before their leases are released.
    "leases": _leases,
    "key_values": _key_values,
    # After the key-value store, whose calls it counts; before the rest, so that their openers can register
    # collectors.
    "metrics": _metrics,
    "task_starter": _task_starter,
    "mqtt": _mqtt,
    "apps": _apps,
    # Before everything that writes points to it, so that it closes after them and takes their last.
    "influx": _influx,
    # Before the scheduler and events: both hand alerts over, and close before the alerts do.
    "alerts": _alerts,
    "scheduler": _scheduler,
    "events": _events,
    "slack": _slack,
    "monitors": _monitors,
    "new_relic": _new_relic,
}


async def open_services(services: Services, needed: Collection[str], exits: AsyncExitStack) -> None:
    """Open the ``needed`` services into ``services``, registering each close on ``exits``."""
    unknown = set(needed) - OPENERS.keys()
    if unknown:
        raise LookupError(f"no such service: {', '.join(sorted(unknown))}")
    for name, opener in OPENERS.items():
        if name in needed:
            await opener(services, exits)


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
