"""Opening the alerts: which channels are on, which of them can work, their senders, the outbox.

A channel is on when its master switch is. Before it is used, what would make every one of its alerts
fail is checked: the SMTP host, the templates of the enabled events, the custom properties named in the
config (they must exist in QRS), a webhook's CA file. A channel that fails a check is switched off with
a warning naming the key and what to fix, and ``/health`` shows why; the other channels and every other
feature go on (upstream stopped Butler). A QRS that cannot be asked at start-up switches
nothing off.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from pathlib import Path

from butler.alerts.dispatcher import Dispatcher, RetryPolicy, Sender
from butler.alerts.http import HttpSender
from butler.alerts.model import CHANNELS, EVENTS, Channel, DeliveryError
from butler.alerts.outbox import Outbox, OutboxUnavailable, SqliteOutbox
from butler.alerts.outbox_redis import RedisOutbox, alerts_prefix
from butler.alerts.service import CHAT_EVENTS, AlertService
from butler.alerts.smtp import SmtpSender
from butler.alerts.templates import TemplateError, load_template
from butler.config import Settings
from butler.config.alerts import AlertSettings
from butler.qlik.qrs import QrsError
from butler.qlik.repository import QrsRepository

log = logging.getLogger("butler.alerts")

_SECTIONS: dict[Channel, str] = {
    "email": "emailNotification",
    "slack": "slackNotification",
    "teams": "teamsNotification",
    "webhook": "webhookNotification",
    "signl4": "incidentTool.signl4",
    "newrelic": "incidentTool.newRelic",
}


async def open_alerts(
    settings: Settings, repository: QrsRepository | None, version: str, exits: AsyncExitStack
) -> AlertService | None:
    """The alert service, its dispatcher started and both closed by ``exits``; None when no channel is on.
    Raises OutboxUnavailable when the outbox cannot be opened (logged)."""
    alerts = settings.alerts
    on = frozenset(channel for channel in CHANNELS if channel in alerts.channels_on())
    if not on:
        return None
    if not settings.udp.enable:
        # Task outcomes arrive only as the log appenders' UDP events: without them no task ever alerts.
        log.warning(
            "alerts are on (%s) but Butler.udpServerConfig.enable is false: Butler hears of no task outcome, "
            "so no task alert will be sent; enable it and point Sense's log appenders at Butler",
            ", ".join(sorted(on)),
        )
    problems = _local_problems(alerts, on)
    problems |= {
        c: p
        for c, p in (await _custom_property_problems(alerts, on, repository)).items()
        if c not in problems
    }
    for channel, problem in problems.items():
        log.warning("%s alerts are off: %s", channel, problem)
    for problem in _service_template_problems(alerts, on - problems.keys()):
        log.warning("%s; service alerts get Butler's basic message instead", problem)
    usable = on - problems.keys()
    delivery = alerts.delivery
    senders: dict[Channel, Sender] = {}
    for channel in usable:
        senders[channel] = (
            SmtpSender(alerts.email.smtp, delivery.smtp_timeout_seconds)
            if channel == "email"
            else HttpSender(delivery.http_timeout_seconds)
        )
    outbox = open_outbox(settings)
    dispatcher = Dispatcher(
        outbox,
        senders,
        RetryPolicy(delivery.first_retry_seconds, delivery.max_retry_seconds, delivery.deadline_seconds),
        # A sender's own timeouts come first; this only stops one that hangs despite them.
        send_timeout=max(delivery.http_timeout_seconds, delivery.smtp_timeout_seconds) * 2,
        disabled=problems,
    )
    try:
        await dispatcher.start()
    except OutboxUnavailable as exc:
        log.error("alerts are off: %s", exc)
        await dispatcher.stop()
        raise
    exits.push_async_callback(dispatcher.stop)
    smtp = senders.get("email")
    if isinstance(smtp, SmtpSender):
        check = asyncio.get_running_loop().create_task(_check_smtp(smtp, dispatcher))
        exits.push_async_callback(_cancelled, check)
    service = AlertService(alerts, dispatcher, repository, version, usable)
    service.start()
    exits.push_async_callback(service.close)
    log.info("alerts on: %s", ", ".join(sorted(usable)) or "none usable")
    return service


async def _check_smtp(sender: SmtpSender, dispatcher: Dispatcher) -> None:
    """An SMTP server that cannot be reached or refuses Butler's login is said at start-up, not at the first
    failed reload. The channel stays on: its mails wait in the outbox until the server can be reached."""
    try:
        await sender.check()
    except DeliveryError as exc:
        problem = f"emailNotification.smtp: {exc.message}"
        dispatcher.warnings["email"] = problem
        log.warning("email alerts: %s; mails wait in the outbox until it works", problem)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def open_outbox(settings: Settings) -> Outbox:
    """The outbox in the store Butler already has: Redis when the key-value store is there (Butlers sharing
    one Redis share the outbox too), else a SQLite file beside the key-value store's."""
    key_value, keep = settings.key_value, settings.alerts.delivery.keep_seconds
    if key_value.backend == "redis":
        return RedisOutbox(key_value.redis_url, alerts_prefix(key_value.redis_prefix), keep)
    return SqliteOutbox(outbox_path(settings), keep)


def outbox_path(settings: Settings) -> Path:
    """The outbox file: beside the key-value store's SQLite file."""
    return settings.key_value.sqlite_path.with_name("butler-alerts.sqlite")


def _local_problems(settings: AlertSettings, on: frozenset[Channel]) -> dict[Channel, str]:
    """What keeps a channel from working that the config file and the disk can tell."""
    problems: dict[Channel, str] = {}
    if "email" in on:
        email = settings.email
        if not email.smtp.host:
            problems["email"] = "emailNotification.smtp.host is not set"
        for event in EVENTS:
            options = email.event(event)
            if "email" in problems or not options.enable:
                continue
            directory = options.body_directory
            path = (directory / f"{options.html_template}.handlebars") if directory else None
            problem = _template_problem(path, f"emailNotification.{event}.bodyFileDirectory/htmlTemplateFile")
            if problem:
                problems["email"] = problem
    for channel in ("slack", "teams"):
        if channel not in on:
            continue
        chat = settings.slack if channel == "slack" else settings.teams
        for event in sorted(CHAT_EVENTS):
            chat_event = chat.event(event)
            if channel in problems or not chat_event.enable or chat_event.message_type != "formatted":
                continue
            problem = _template_problem(
                chat_event.template_file, f"{_SECTIONS[channel]}.{event}.templateFile"
            )
            if problem:
                problems[channel] = problem
    if "webhook" in on:
        for event in sorted(settings.webhook.events):
            for index, hook in enumerate(settings.webhook.event(event).webhooks):
                if hook.cert_enable and (hook.cert_ca is None or not hook.cert_ca.is_file()):
                    key = f"webhookNotification.{event}.webhooks[{index}].cert.certCA"
                    problems.setdefault("webhook", f"{key}: no such file: {hook.cert_ca}")
    if "newrelic" in on and not settings.new_relic.accounts:
        problems["newrelic"] = "thirdPartyToolsCredentials.newRelic lists no account to send to"
    return problems


def _service_template_problems(settings: AlertSettings, usable: frozenset[Channel]) -> list[str]:
    """Templates of service alerts that cannot be used. Unlike a task event's, such a template does not
    switch its channel off: upstream's template file lists service settings with placeholder paths, and
    a service alert falls back to the basic message."""
    found: list[str | None] = []
    for event in ("serviceStopped", "serviceStarted"):
        options = settings.email.services[event]
        if "email" in usable and options.recipients:
            directory = options.body_directory
            path = (directory / f"{options.html_template}.handlebars") if directory else None
            found.append(
                _template_problem(path, f"emailNotification.{event}.bodyFileDirectory/htmlTemplateFile")
            )
        for channel in ("slack", "teams"):
            chat = (settings.slack if channel == "slack" else settings.teams).event(event)
            if channel in usable and chat.webhook_url and chat.message_type == "formatted":
                found.append(
                    _template_problem(chat.template_file, f"{_SECTIONS[channel]}.{event}.templateFile")
                )
    return [problem for problem in found if problem]


def _template_problem(path: Path | None, key: str) -> str | None:
    if path is None:
        return f"{key} is not set"
    try:
        load_template(path)
    except TemplateError as exc:
        return f"{key}: {exc}"
    return None


async def _custom_property_problems(
    settings: AlertSettings, on: frozenset[Channel], repository: QrsRepository | None
) -> dict[Channel, str]:
    """Custom properties named in the config that do not exist in QRS.

    One that switches alerts on for a task (e-mail's ``alertEnableByCustomProperty``, New Relic's
    ``byCustomProperty``) can never be set, so the channel would never alert: it is switched off. One whose
    values add recipients only adds none: that is a warning.
    """
    wanted: dict[str, tuple[Channel, str, bool]] = {}  # name: channel, key, whether it is needed
    if "email" in on:
        for event in EVENTS:
            options = settings.email.event(event)
            if not options.enable:
                continue
            key = f"emailNotification.{event}"
            if options.enable_by_cp and options.enable_cp_name:
                name, path = options.enable_cp_name, f"{key}.alertEnableByCustomProperty.customPropertyName"
                wanted[name] = ("email", path, True)
            if options.recipients_cp_name:
                name, path = (
                    options.recipients_cp_name,
                    f"{key}.alertEnabledByEmailAddress.customPropertyName",
                )
                wanted.setdefault(name, ("email", path, False))
    if "newrelic" in on:
        for event in ("reloadTaskFailure", "reloadTaskAborted"):
            relic = settings.new_relic.event(event)
            for kind, destination in (("event", relic.event), ("log", relic.log)):
                if destination.enable and destination.cp_enable and destination.cp_name:
                    path = f"incidentTool.newRelic.{event}.destination.{kind}.sendToAccount.byCustomProperty"
                    wanted[destination.cp_name] = ("newrelic", f"{path}.customPropertyName", True)
    if not wanted or repository is None:
        return {}
    try:
        existing = await repository.custom_property_names(sorted(wanted))
    except (QrsError, TimeoutError) as exc:
        log.warning("custom properties of the alert settings not checked: QRS could not be asked: %s", exc)
        return {}
    problems: dict[Channel, str] = {}
    for name, (channel, key, needed) in wanted.items():
        if name in existing:
            continue
        problem = f"{key}: custom property '{name}' does not exist in Qlik Sense; create it in the QMC"
        if needed:
            problems.setdefault(channel, problem)
        else:
            log.warning("%s alerts: %s (until then it adds no recipients)", channel, problem)
    return problems


__all__ = ["open_alerts", "open_outbox", "outbox_path"]
