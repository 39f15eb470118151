"""``butler alert test``: a sample alert, built from a canned failed reload (or a Windows service that
stopped or started), sent through one channel now.

The channel's settings of that event are used as configured (templates, recipients, webhooks, accounts),
with its switches on, so that a channel can be tried before it is enabled. Nothing goes through the
outbox: the admin sees each recipient's answer at once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from butler import __version__
from butler.alerts.context import AlertFacts, AppOwner, ServiceFacts
from butler.alerts.dispatcher import Sender
from butler.alerts.http import HttpSender
from butler.alerts.model import Channel, DeliveryError, Message
from butler.alerts.service import BUILDERS, SERVICE_BUILDERS
from butler.alerts.smtp import SmtpSender
from butler.config.alerts import AlertSettings
from butler.errors import BadRequest
from butler.events.parsing import TaskEvent
from butler.events.task_outcomes import TaskOutcome
from butler.monitor_events import ServiceChange, ServiceDetails

EVENT = "reloadTaskFailure"
TASK_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
APP_ID = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
EXECUTION_ID = "1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
SCRIPT_LOG = [
    "20260115T103000.000+0100 Execution started.",
    "20260115T103000.010+0100 Qlik Sense Server Version 14.187.4",
    "20260115T103000.020+0100 Sales:",
    "20260115T103000.030+0100 LOAD * FROM [lib://DataFiles/sales.qvd] (qvd)",
    "20260115T103001.500+0100 Error: Cannot open file: 'lib://DataFiles/sales.qvd'",
    "20260115T103001.510+0100 Execution Failed",
]


def sample_facts() -> AlertFacts:
    """A reload of the app "Sales" that failed: the alert every channel is tried with."""
    event = TaskEvent(
        outcome="failed",
        message_type="/scheduler-reloadtask-failed/",
        host="sense1.corp.example",
        task_name="Butler test: reload of Sales",
        app_name="Sales",
        user="INTERNAL\\sa_scheduler",
        task_id=TASK_ID,
        app_id=APP_ID,
        timestamp="2026-01-15 10:30:01,510",
        level="ERROR",
        execution_id=EXECUTION_ID,
        message="Task finished with state FinishedFail (this is a test alert sent by butler alert test)",
    )
    owner = {
        "id": "5e6f7a8b-0000-4000-8000-000000000001",
        "userId": "admin",
        "userDirectory": "CORP",
        "name": "Admin",
    }
    task = {
        "id": TASK_ID,
        "name": event.task_name,
        "taskType": 0,
        "isManuallyTriggered": False,
        "isPartialReload": False,
        "maxRetries": 0,
        "modifiedByUserName": "CORP\\admin",
        "modifiedDate": "2026-01-10T08:00:00.000Z",
        "taskSessionTimeout": 1440,
        "tags": [{"name": "butler-test"}],
        "customProperties": [],
        "operational": {"nextExecution": "1753-01-01T00:00:00.000Z"},
    }
    app = {
        "id": APP_ID,
        "name": "Sales",
        "description": "A test alert: no app was reloaded",
        "owner": owner,
        "stream": {"name": "Everyone"},
        "published": True,
        "tags": [],
        "customProperties": [],
    }
    execution = {
        "id": "2d3e4f5a-0000-4000-8000-000000000002",
        "executingNodeName": "sense1.corp.example",
        "status": 8,
        "startTime": "2026-01-15T09:30:00.000Z",
        "stopTime": "2026-01-15T09:30:01.510Z",
        "duration": 1510,
        "details": [
            {
                "detailsType": 2,
                "message": "Changing task state from NeverStarted to Triggered",
                "detailCreatedDate": "2026-01-15T09:29:59.900Z",
            },
            {
                "detailsType": 2,
                "message": "Changing task state from Started to FinishedFail",
                "detailCreatedDate": "2026-01-15T09:30:01.510Z",
            },
        ],
    }
    outcome = TaskOutcome(event, task=task, app=app, execution_result=execution, script_log=list(SCRIPT_LOG))
    return AlertFacts(
        event=EVENT,
        outcome=outcome,
        execution=execution,
        script_log=list(SCRIPT_LOG),
        owner=AppOwner(name="Admin", user_id="admin", user_directory="CORP"),
        butler_version=__version__,
    )


def sample_change(event: str) -> ServiceChange:
    """The Engine service of host sense1 that stopped (``serviceStopped``) or started."""
    stopped = event == "serviceStopped"
    return ServiceChange(
        host="sense1.corp.example",
        service_name="QlikSenseEngineService",
        friendly_name="Engine",
        status="STOPPED" if stopped else "RUNNING",
        previous="RUNNING" if stopped else "STOPPED",
        details=ServiceDetails(
            display_name="Qlik Sense Engine Service (this is a test alert sent by butler alert test)",
            start_type="Automatic",
            exe_path='"C:\\Program Files\\Qlik\\Sense\\Engine\\Engine.exe" -service',
            dependencies=("QlikSenseRepositoryService",),
        ),
    )


def _chat_switched_on(
    settings: AlertSettings, channel: Literal["slack", "teams"], event: str
) -> AlertSettings:
    chat = settings.slack if channel == "slack" else settings.teams
    replace = dataclasses.replace
    chat = replace(chat, enable=True, events={**chat.events, event: replace(chat.event(event), enable=True)})
    return replace(settings, **{channel: chat})


def service_switched_on(
    settings: AlertSettings, channel: Channel, to: str | None, event: str
) -> AlertSettings:
    """``settings`` with ``channel`` and its service alerts on; ``to`` the only e-mail recipient."""
    replace = dataclasses.replace
    if channel == "email":
        email = settings.email
        mail = email.services[event] if to is None else replace(email.services[event], recipients=(to,))
        return replace(settings, email=replace(email, enable=True, services={**email.services, event: mail}))
    if channel in ("slack", "teams"):
        return _chat_switched_on(settings, channel, event)
    if channel == "webhook":
        return replace(settings, webhook=replace(settings.webhook, enable=True))
    relic = settings.new_relic
    monitor = relic.service_monitor
    monitor = replace(
        monitor,
        event=replace(monitor.event, enable=True),
        log=replace(monitor.log, enable=True),
        running=True,
        stopped=True,
    )
    return replace(settings, new_relic=replace(relic, enable=True, service_monitor=monitor))


def switched_on(settings: AlertSettings, channel: Channel, to: str | None) -> AlertSettings:
    """``settings`` with ``channel`` and its reloadTaskFailure alerts on; ``to`` the only e-mail recipient."""
    replace = dataclasses.replace
    if channel == "email":
        email = settings.email
        event = replace(email.event(EVENT), enable=True)
        if to is not None:
            event = replace(
                event, recipients=(to,), owner_alert=False, enable_by_cp=False, recipients_cp_name=""
            )
        return replace(settings, email=replace(email, enable=True, events={**email.events, EVENT: event}))
    if channel in ("slack", "teams"):
        return _chat_switched_on(settings, channel, EVENT)
    if channel == "webhook":
        return replace(settings, webhook=replace(settings.webhook, enable=True))
    if channel == "signl4":
        signl4 = settings.signl4
        event_on = replace(signl4.event(EVENT), enable=True, include_all=True)
        return replace(
            settings, signl4=replace(signl4, enable=True, events={**signl4.events, EVENT: event_on})
        )
    relic = settings.new_relic
    relic_event = relic.event(EVENT)
    relic_event = replace(
        relic_event, event=replace(relic_event.event, enable=True), log=replace(relic_event.log, enable=True)
    )
    return replace(
        settings, new_relic=replace(relic, enable=True, events={**relic.events, EVENT: relic_event})
    )


@dataclass(frozen=True)
class SampleResult:
    """What one recipient answered: ``answer`` when it took the message, else ``error``."""

    message: Message
    answer: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.message.target, "answer": self.answer, "error": self.error}


async def send_sample(
    settings: AlertSettings, channel: Channel, to: str | None = None, event: str = EVENT
) -> list[SampleResult]:
    """Build the sample alert of ``event`` (reloadTaskFailure, serviceStopped or serviceStarted) for
    ``channel`` and send it to each of its recipients now.

    Raises BadRequest when the channel has no such alert or its configuration gives it nowhere to go.
    """
    if event == EVENT:
        messages = BUILDERS[channel](sample_facts(), switched_on(settings, channel, to))
    else:
        if channel not in SERVICE_BUILDERS:
            raise BadRequest(f"{channel} has no Windows service alerts")
        facts = ServiceFacts(sample_change(event), __version__)
        messages = SERVICE_BUILDERS[channel](facts, service_switched_on(settings, channel, to, event))
    if not messages:
        raise BadRequest(_nowhere(channel, event))
    delivery = settings.delivery
    sender: Sender = (
        SmtpSender(settings.email.smtp, delivery.smtp_timeout_seconds)
        if channel == "email"
        else HttpSender(delivery.http_timeout_seconds)
    )
    results = []
    try:
        for number, message in enumerate(messages):
            try:
                answer = await sender.send(message.payload, f"butler-test-{number}")
            except DeliveryError as exc:
                results.append(SampleResult(message, error=exc.message))
            else:
                results.append(SampleResult(message, answer=answer))
    finally:
        await sender.close()
    return results


def _nowhere(channel: Channel, event: str) -> str:
    if event != EVENT:
        return {
            "email": f"no recipient: give --to ADDRESS or set emailNotification.{event}.recipients",
            "slack": f"set slackNotification.{event}.webhookURL",
            "teams": f"set teamsNotification.{event}.webhookURL",
            "webhook": "webhookNotification.serviceMonitor.webhooks lists no webhook",
            "newrelic": "no New Relic account to send to: set thirdPartyToolsCredentials.newRelic and "
            "incidentTool.newRelic.serviceMonitor.destination.event.sendToAccount",
        }[channel]
    return {
        "email": "no recipient: give --to ADDRESS or set emailNotification.reloadTaskFailure.recipients",
        "slack": "set slackNotification.reloadTaskFailure.webhookURL",
        "teams": "set teamsNotification.reloadTaskFailure.webhookURL",
        "webhook": "webhookNotification.reloadTaskFailure.webhooks lists no webhook",
        "signl4": "set incidentTool.signl4.url",
        "newrelic": "no New Relic account to send to: set thirdPartyToolsCredentials.newRelic and "
        "incidentTool.newRelic.reloadTaskFailure.destination.event.sendToAccount.always.account",
    }[channel]


__all__ = [
    "SampleResult",
    "sample_change",
    "sample_facts",
    "send_sample",
    "service_switched_on",
    "switched_on",
]
