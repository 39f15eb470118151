"""Windows service and server licence alerts, end to end: ``AlertService`` builds the messages, the outbox
keeps them and the dispatcher delivers them to a real SMTP server and real local HTTP receivers standing in
for Slack, Teams, outgoing webhooks and New Relic."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import butler
from butler.alerts.dispatcher import Dispatcher, RetryPolicy, Sender
from butler.alerts.http import HttpSender
from butler.alerts.model import Channel
from butler.alerts.outbox import SqliteOutbox
from butler.alerts.service import AlertService
from butler.alerts.setup import open_alerts
from butler.alerts.smtp import SmtpSender
from butler.config import parse_config
from butler.config.alerts import AlertSettings
from butler.monitor_events import ServerLicense, ServiceChange, ServiceDetails
from tests.conftest import base_config, write_config
from tests.receivers import Receiver, status
from tests.test_alert_context import alert_settings
from tests.test_alert_email import Mailbox, Server, parse
from tests.test_alerts import butler_command
from tests.test_templates import Reference, handlebars_js  # noqa: F401 (the handlebars.js reference)
from tests.waiting import eventually

TEMPLATES = Path(butler.__file__).resolve().parent / "alert_templates"
FAST = RetryPolicy(first=0.05, longest=0.2, deadline=30)
VERSION = "9.9.9"
EXE = '"C:\\Program Files\\Qlik\\Sense\\Engine\\Engine.exe" -service'
STOPPED = ServiceChange(
    host="sense1.corp.local",
    service_name="QlikSenseEngineService",
    friendly_name="Engine",
    status="STOPPED",
    previous="RUNNING",
    details=ServiceDetails(
        display_name="Qlik Sense Engine Service & Co",
        start_type="Automatic",
        exe_path=EXE,
        dependencies=("QlikSenseRepositoryService",),
    ),
)
STARTED = dataclasses.replace(STOPPED, status="RUNNING", previous="STOPPED")
# As upstream's template has them: its Teams service templates give JSON only with the last one present.
GENERIC_URLS = [
    {
        "id": "butler_docs",
        "linkText": "Butler docs",
        "comment": "",
        "url": "https://butler.example/docs?a=1&b=2",
    },
    {
        "id": "ptarmiganlabs_com",
        "linkText": "Ptarmigan Labs",
        "comment": "Home",
        "url": "https://ptarmiganlabs.com",
    },
]


def context(change: ServiceChange) -> dict[str, Any]:
    """The template fields of alerts.md §4.4, as the test expects them."""
    return {
        "host": "sense1.corp.local",
        "serviceStatus": change.status,
        "servicePrevStatus": change.previous,
        "serviceName": "QlikSenseEngineService",
        "serviceDisplayName": "Qlik Sense Engine Service & Co",
        "serviceFriendlyName": "Engine",
        "serviceStartType": "Automatic",
        "serviceExePath": EXE,
        "genericUrls": GENERIC_URLS,
        "qlikSenseQMC": "https://sense.corp.local/qmc",
        "qlikSenseHub": "https://sense.corp.local/hub",
        "butlerVersion": VERSION,
    }


@dataclasses.dataclass
class Site:
    """The receivers of one test."""

    smtp: Server
    slack: Receiver
    teams: Receiver
    hook: Receiver
    hook_get: Receiver
    relic: Receiver


@pytest.fixture
async def site(receivers: Callable[[], Awaitable[Receiver]]) -> AsyncIterator[Site]:
    smtp = Server(Mailbox())
    await smtp.start()
    started = [await receivers() for _ in range(5)]
    yield Site(smtp, *started)
    await smtp.stop()


def email_event(template: str, subject: str, **more: Any) -> dict[str, Any]:
    return {
        "rateLimit": 60,
        "priority": "normal",
        "subject": subject,
        "bodyFileDirectory": str(TEMPLATES / "email"),
        "htmlTemplateFile": template,
        "fromAddress": "Qlik Sense <qliksense-noreply@corp.example>",
        "recipients": ["ops@corp.example", "not an address"],
        **more,
    }


def email_section(port: int, stopped: str = "❌ ", started: str = "✅ ") -> dict[str, Any]:
    """An ``emailNotification`` section mailing both service alerts through the SMTP server at ``port``
    (plain, no login), their subjects upstream's after the marks ``stopped`` and ``started``."""
    return {
        "enable": True,
        "smtp": {
            "host": "127.0.0.1",
            "port": port,
            "secure": False,
            "tls": {"ignoreTLS": True, "requireTLS": False},
            "auth": {"enable": False},
        },
        "serviceStopped": email_event(
            "service-stopped", stopped + 'Windows service stopped on host {{host}}: "{{serviceDisplayName}}"'
        ),
        "serviceStarted": email_event(
            "service-started", started + 'Windows service started on host {{host}}: "{{serviceDisplayName}}"'
        ),
    }


def chat_event(url: str, channel: str, event: str, message_type: str = "formatted") -> dict[str, Any]:
    return {
        "webhookURL": url,
        "messageType": message_type,
        "basicMsgTemplate": f'Windows service {event}: "{{{{serviceName}}}}" on host "{{{{host}}}}"',
        "rateLimit": 60,
        "templateFile": str(TEMPLATES / channel / f"service-{event}.handlebars"),
    }


def settings(tmp_path: Path, site: Site, **sections: Any) -> AlertSettings:
    return alert_settings(tmp_path, **{**sections_of(site), **sections})


def sections_of(site: Site) -> dict[str, Any]:
    """The alert sections of a config file sending every service alert to ``site``."""
    slack_extra = {"channel": "qliksense-service-alert", "fromUser": "Qlik Sense", "iconEmoji": ":ghost:"}
    document: dict[str, Any] = {
        "qlikSenseUrls": {"qmc": "https://sense.corp.local/qmc", "hub": "https://sense.corp.local/hub"},
        "genericUrls": GENERIC_URLS,
        "emailNotification": email_section(site.smtp.port),
        "slackNotification": {
            "enable": True,
            "serviceStopped": {**chat_event(site.slack.url, "slack", "stopped"), **slack_extra},
            "serviceStarted": {**chat_event(site.slack.url, "slack", "started", "basic"), **slack_extra},
        },
        "teamsNotification": {
            "enable": True,
            "serviceStopped": chat_event(site.teams.url, "teams", "stopped"),
            "serviceStarted": chat_event(site.teams.url, "teams", "started"),
        },
        "webhookNotification": {
            "enable": True,
            "serviceMonitor": {
                "rateLimit": 60,
                "webhooks": [
                    {"description": "post", "webhookURL": site.hook.url, "httpMethod": "post"},
                    {"description": "get", "webhookURL": site.hook_get.url, "httpMethod": "GET"},
                ],
            },
        },
        "incidentTool": {
            "newRelic": {
                "enable": True,
                "url": {"event": site.relic.url.removesuffix("/hook"), "log": site.relic.url},
                "serviceMonitor": {
                    "destination": {
                        "event": {
                            "enable": True,
                            "sendToAccount": ["Prod", "Unknown"],
                            "attribute": {
                                "static": [{"name": "event-specific-attribute", "value": "abc 123"}],
                                "dynamic": {"serviceDisplayName": False},
                            },
                        },
                        "log": {
                            "enable": True,
                            "sendToAccount": ["Prod"],
                            "attribute": {"static": [{"name": "log-specific-attribute", "value": "def 456"}]},
                        },
                    },
                    "monitorServiceState": {"running": {"enable": True}, "stopped": {"enable": True}},
                    "sharedSettings": {
                        "rateLimit": 60,
                        "header": [{"name": "X-My-Header", "value": "Header value 2"}],
                        "attribute": {"static": [{"name": "service", "value": "butler"}]},
                    },
                },
            }
        },
        "thirdPartyToolsCredentials": {
            "newRelic": [{"accountName": "Prod", "insertApiKey": "NRII-secret", "accountId": 1234567}]
        },
    }
    return document


@pytest.fixture
async def alerting(tmp_path: Path) -> AsyncIterator[Callable[[AlertSettings], Awaitable[AlertService]]]:
    started: list[Dispatcher] = []

    async def start(alerts: AlertSettings) -> AlertService:
        lanes: dict[Channel, Sender] = {
            "email": SmtpSender(alerts.email.smtp, 5),
            "slack": HttpSender(5),
            "teams": HttpSender(5),
            "webhook": HttpSender(5),
            "newrelic": HttpSender(5),
        }
        outbox = SqliteOutbox(tmp_path / f"outbox-{len(started)}.sqlite", 3600)
        dispatcher = Dispatcher(outbox, lanes, FAST, 6, rng=random.Random(7))
        await dispatcher.start()
        started.append(dispatcher)
        return AlertService(alerts, dispatcher, None, VERSION, frozenset(lanes))

    yield start
    for dispatcher in started:
        await dispatcher.stop()


async def settled(service: AlertService, count: int) -> list[dict[str, Any]]:
    """The deliveries once ``count`` of them are no longer pending."""

    def deliveries() -> list[dict[str, Any]]:
        return [d for alert in service.recent() for d in alert["deliveries"]]

    await eventually(
        lambda: len(deliveries()) == count and all(d["state"] != "pending" for d in deliveries()),
        10,
        lambda: json.dumps(deliveries(), indent=1),
    )
    return deliveries()


def reference(handlebars_js: Reference, template: str, change: ServiceChange) -> str:  # noqa: F811
    [rendered] = handlebars_js([((TEMPLATES / template).read_text(encoding="utf-8"), context(change))])
    return rendered["out"]


def webhook_fields(change: ServiceChange) -> dict[str, Any]:
    return {
        "event": "Windows service monitor",
        "host": "sense1.corp.local",
        "serviceStatus": change.status,
        "serviceName": "QlikSenseEngineService",
        "serviceDisplayName": "Qlik Sense Engine Service & Co",
        "serviceStartType": "Automatic",
        "prevState": change.previous,
        "currState": change.status,
        "stateChanged": True,
    }


def webhook_query(change: ServiceChange) -> dict[str, str]:
    return {
        "event": "Windows service monitor",
        "host": "sense1.corp.local",
        "servicestatus": change.status,
        "servicename": "QlikSenseEngineService",
        "servicedisplayname": "Qlik Sense Engine Service & Co",
        "servicestarttype": "Automatic",
        "prevstate": change.previous,
        "currstate": change.status,
        "statechanged": "true",
    }


def new_relic_bodies(change: ServiceChange) -> tuple[list[Any], list[Any]]:
    event = {
        "service": "butler",
        "event-specific-attribute": "abc 123",
        "serviceHost": "sense1.corp.local",
        "serviceName": "QlikSenseEngineService",
        "serviceState": change.status,
        "eventType": "qs_serviceStateEvent",
    }
    attributes = {
        "service": "butler",
        "log-specific-attribute": "def 456",
        "serviceHost": "sense1.corp.local",
        "serviceName": "QlikSenseEngineService",
        "serviceDisplayName": "Qlik Sense Engine Service & Co",
        "serviceState": change.status,
        "logtype": "qs_serviceStateLog",
    }
    message = (
        f'Windows service "Qlik Sense Engine Service & Co" on host "sense1.corp.local" is {change.status}.'
    )
    return [event], [{"common": {"attributes": attributes}, "logs": [{"message": message}]}]


async def mailed_everywhere(
    alerting: Callable[[AlertSettings], Awaitable[AlertService]],
    tmp_path: Path,
    site: Site,
    change: ServiceChange,
    handlebars_js: Reference,  # noqa: F811
) -> tuple[AlertService, EmailMessage]:
    """``change`` alerted to every channel of ``site``: each of the 7 messages delivered, and the one mail,
    from the configured sender to the one valid recipient, with handlebars.js's rendering of the body."""
    service = await alerting(settings(tmp_path, site))
    await service.service_changed(change)
    deliveries = await settled(service, 7)
    assert {d["state"] for d in deliveries} == {"delivered"}, deliveries

    [(sender, recipients, raw)] = site.smtp.mailbox.received
    mail = parse(raw)
    assert (sender, recipients) == ("qliksense-noreply@corp.example", ["ops@corp.example"])
    html = mail.get_body(("html",))
    assert html is not None
    # Lines travel with CRLF over SMTP.
    body = html.get_content().replace("\r\n", "\n")
    state = {"STOPPED": "stopped", "RUNNING": "started"}[change.status]
    assert body == reference(handlebars_js, f"email/service-{state}.handlebars", change)
    return service, mail


async def test_a_stopped_service_reaches_every_channel_exactly(
    tmp_path: Path,
    site: Site,
    alerting: Callable[[AlertSettings], Awaitable[AlertService]],
    handlebars_js: Reference,  # noqa: F811
) -> None:
    service, mail = await mailed_everywhere(alerting, tmp_path, site, STOPPED, handlebars_js)
    # Upstream's subject; `&` shown as such in a header (upstream showed `&amp;`).
    assert (
        mail["Subject"]
        == '❌ Windows service stopped on host sense1.corp.local: "Qlik Sense Engine Service & Co"'
    )
    assert mail["X-Priority"] == "3 (Normal)"
    html = mail.get_body(("html",))
    assert html is not None
    assert "Qlik Sense Engine Service &amp; Co" in html.get_content()

    [(_, _, slack)] = site.slack.got
    formatted = json.loads(reference(handlebars_js, "slack/service-stopped.handlebars", STOPPED))
    envelope = {"username": "Qlik Sense", "channel": "qliksense-service-alert", "icon_emoji": ":ghost:"}
    assert slack == {**envelope, **formatted}
    [(_, _, teams)] = site.teams.got
    assert teams == json.loads(reference(handlebars_js, "teams/service-stopped.handlebars", STOPPED))

    [(_, headers, posted)] = site.hook.got
    assert posted == webhook_fields(STOPPED) and headers["Content-Type"] == "application/json"
    [(_, _, query)] = site.hook_get.got
    assert query == webhook_query(STOPPED)

    event, log = new_relic_bodies(STOPPED)
    got = dict(zip(site.relic.paths, site.relic.got, strict=True))
    assert set(got) == {"/v1/accounts/1234567/events", "/hook"}
    for path, body in (("/v1/accounts/1234567/events", event), ("/hook", log)):
        _, headers, sent = got[path]
        assert sent == body
        assert (headers["Api-Key"], headers["X-My-Header"]) == ("NRII-secret", "Header value 2")

    [alert] = service.recent()
    assert {k: alert[k] for k in ("event", "host", "serviceName")} == {
        "event": "serviceStopped",
        "host": "sense1.corp.local",
        "serviceName": "QlikSenseEngineService",
    }


async def test_a_started_service_gets_the_started_messages(
    tmp_path: Path,
    site: Site,
    alerting: Callable[[AlertSettings], Awaitable[AlertService]],
    handlebars_js: Reference,  # noqa: F811
) -> None:
    _, mail = await mailed_everywhere(alerting, tmp_path, site, STARTED, handlebars_js)
    assert (
        mail["Subject"]
        == '✅ Windows service started on host sense1.corp.local: "Qlik Sense Engine Service & Co"'
    )

    # Slack's started message is configured basic: the rendered basicMsgTemplate and two buttons.
    [(_, _, slack)] = site.slack.got
    assert slack == {
        "username": "Qlik Sense",
        "channel": "qliksense-service-alert",
        "icon_emoji": ":ghost:",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": 'Windows service started: "QlikSenseEngineService" on host "sense1.corp.local"',
                },
            },
            {"type": "divider"},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "emoji": True, "text": title},
                        "style": "primary",
                        "url": url,
                    }
                    for title, url in (
                        ("Open QMC", "https://sense.corp.local/qmc"),
                        ("Open Hub", "https://sense.corp.local/hub"),
                    )
                ],
            },
        ],
    }
    [(_, _, teams)] = site.teams.got
    assert teams == json.loads(reference(handlebars_js, "teams/service-started.handlebars", STARTED))
    assert [body for _, _, body in site.hook.got] == [webhook_fields(STARTED)]
    assert [body for _, _, body in site.hook_get.got] == [webhook_query(STARTED)]
    event, log = new_relic_bodies(STARTED)
    assert sorted(map(json.dumps, (body for _, _, body in site.relic.got))) == sorted(
        map(json.dumps, (event, log))
    )


async def test_rate_limits_are_per_service_and_per_state(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    service = await alerting(settings(tmp_path, site))
    await service.service_changed(STOPPED)
    await settled(service, 7)
    await service.service_changed(STOPPED)  # within every channel's 60 s: nothing goes out
    deliveries = await settled(service, 14)
    assert sorted(d["state"] for d in deliveries).count("rateLimited") == 7
    # The start right after the stop is told (upstream's one limiter for both swallowed it), and so is
    # another service's stop.
    await service.service_changed(STARTED)
    other = dataclasses.replace(STOPPED, service_name="QlikSenseProxyService")
    await service.service_changed(other)
    deliveries = await settled(service, 28)
    assert [d["state"] for d in deliveries].count("delivered") == 21
    assert len(site.smtp.mailbox.received) == 3
    assert len(site.slack.got) == len(site.teams.got) == len(site.hook.got) == 3
    assert [body["currState"] for _, _, body in site.hook.got] == ["STOPPED", "RUNNING", "STOPPED"]
    assert [body["serviceName"] for _, _, body in site.hook.got][-1] == "QlikSenseProxyService"
    # Other states are limited per state too: one pending state does not silence the next.
    for state in ("STOP_PENDING", "START_PENDING"):
        await service.service_changed(dataclasses.replace(STOPPED, status=state))
    deliveries = await settled(service, 36)
    assert [body["currState"] for _, _, body in site.hook.got][-2:] == ["STOP_PENDING", "START_PENDING"]


async def test_a_failing_receiver_is_retried_until_it_takes_the_message(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    site.slack.answers = [status(500), status(503)]
    site.hook.answers = [status(429, {"Retry-After": "0"})]
    service = await alerting(settings(tmp_path, site))
    await service.service_changed(STOPPED)
    deliveries = await settled(service, 7)
    by_channel = {(d["channel"], d["target"]): d for d in deliveries}
    slack = next(d for (channel, _), d in by_channel.items() if channel == "slack")
    assert (slack["state"], slack["attempts"]) == ("delivered", 3)
    assert len(site.slack.got) == 3
    assert len({headers["Idempotency-Key"] for _, headers, _ in site.slack.got}) == 1
    assert len(site.hook.got) == 2 and site.hook.got[0][2] == site.hook.got[1][2]
    assert service.stats()["channels"]["slack"]["retried"] == 2


async def test_a_refused_message_is_a_dead_letter_that_can_be_sent_again(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    site.teams.answers = [status(404)]
    service = await alerting(settings(tmp_path, site))
    await service.service_changed(STOPPED)
    deliveries = await settled(service, 7)
    [teams] = [d for d in deliveries if d["channel"] == "teams"]
    assert teams["state"] == "dead" and "404" in teams["lastError"]
    await service.dispatcher.retry(teams["id"])
    deliveries = await settled(service, 7)
    assert [d["state"] for d in deliveries if d["channel"] == "teams"] == ["delivered"]
    assert len(site.teams.got) == 2


async def test_state_switches_channel_choice_and_other_states(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    alerts = settings(tmp_path, site)
    monitor = dataclasses.replace(alerts.new_relic.service_monitor, running=False)
    alerts = dataclasses.replace(
        alerts, new_relic=dataclasses.replace(alerts.new_relic, service_monitor=monitor)
    )
    service = await alerting(alerts)
    await service.service_changed(STARTED)  # New Relic is not told about running services
    deliveries = await settled(service, 5)
    assert "newrelic" not in {d["channel"] for d in deliveries} and not site.relic.got
    # The monitor's alert destinations choose among the channels.
    await service.service_changed(dataclasses.replace(STOPPED, host="sense2"), channels={"webhook"})
    deliveries = await settled(service, 7)
    assert [d["channel"] for d in service.recent()[0]["deliveries"]] == ["webhook", "webhook"]
    # A state other than stopped or running: webhooks and New Relic only (nothing else has settings for it).
    pending = dataclasses.replace(STOPPED, status="STOP_PENDING", previous="RUNNING")
    await service.service_changed(pending)
    deliveries = await settled(service, 11)
    assert {d["channel"] for d in service.recent()[0]["deliveries"]} == {"webhook", "newrelic"}
    [log] = [
        body for path, (_, _, body) in zip(site.relic.paths, site.relic.got, strict=True) if path == "/hook"
    ]
    assert log[0]["logs"] == [
        {
            "message": 'Windows service "Qlik Sense Engine Service & Co" on host "sense1.corp.local" '
            'is in state "STOP_PENDING".'
        }
    ]


async def test_a_broken_template_gives_the_basic_message_with_a_note(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    broken = tmp_path / "broken.handlebars"
    broken.write_text("{{#if}", encoding="utf-8")
    alerts = settings(tmp_path, site)
    stopped = dataclasses.replace(alerts.slack.events["serviceStopped"], template_file=broken)
    email = dataclasses.replace(alerts.email.services["serviceStopped"], html_template="missing")
    alerts = dataclasses.replace(
        alerts,
        slack=dataclasses.replace(alerts.slack, events={**alerts.slack.events, "serviceStopped": stopped}),
        email=dataclasses.replace(alerts.email, services={**alerts.email.services, "serviceStopped": email}),
    )
    service = await alerting(alerts)
    await service.service_changed(STOPPED)
    deliveries = await settled(service, 7)
    assert {d["state"] for d in deliveries} == {"delivered"}
    [(_, _, slack)] = site.slack.got
    assert slack["blocks"][0]["text"]["text"] == (
        'Windows service stopped: "QlikSenseEngineService" on host "sense1.corp.local"'
    )
    assert "could not be rendered" in slack["blocks"][-1]["elements"][0]["text"]
    mail = parse(site.smtp.mailbox.received[0][2])
    body = mail.get_body(("plain",))
    assert body is not None and "Qlik Sense Engine Service & Co" in body.get_content()
    assert "missing.handlebars could not be used" in body.get_content()


# --- server licence -------------------------------------------------------------------------------------


def license_settings(tmp_path: Path, site: Site) -> AlertSettings:
    return settings(
        tmp_path,
        site,
        webhookNotification={
            "enable": True,
            "qlikSenseServerLicenseMonitor": {
                "rateLimit": 60,
                "webhooks": [
                    {"webhookURL": site.hook.url, "httpMethod": "PUT"},
                    {"webhookURL": site.hook_get.url, "httpMethod": "get"},
                ],
            },
            "qlikSenseServerLicenseExpiryAlert": {
                "rateLimit": 60,
                "webhooks": [{"webhookURL": site.relic.url, "httpMethod": "POST"}],
            },
        },
    )


async def test_server_licence_webhooks_have_upstreams_bodies_and_rate_limits(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    service = await alerting(license_settings(tmp_path, site))
    soon = ServerLicense(expired=False, expiry_date="2025-12-31", days_until_expiry=45)
    await service.server_license_status(soon)
    await service.server_license_alert(soon)
    await settled(service, 3)
    assert [body for _, _, body in site.hook.got] == [
        {
            "event": "server license status",
            "licenseExpired": False,
            "expiryDateStr": "2025-12-31",
            "daysUntilExpiry": 45,
        }
    ]
    assert site.hook.got[0][1]["Content-Type"] == "application/json"
    assert [body for _, _, body in site.hook_get.got] == [
        {
            "event": "server license status",
            "licenseExpired": "false",
            "expiryDateStr": "2025-12-31",
            "daysUntilExpiry": "45",
        }
    ]
    assert [body for _, _, body in site.relic.got] == [
        {
            "event": "server license about to expire alert",
            "licenseExpired": False,
            "expiryDateStr": "2025-12-31",
            "daysUntilExpiry": 45,
        }
    ]
    # Within the 60 s: the status is not sent again, and neither is an alert, whichever its kind.
    expired = ServerLicense(expired=True, expiry_date="2025-12-31", days_until_expiry=-3)
    await service.server_license_status(expired)
    await service.server_license_alert(expired)
    deliveries = await settled(service, 6)
    assert [d["state"] for d in deliveries].count("rateLimited") == 3
    assert len(site.hook.got) == len(site.hook_get.got) == len(site.relic.got) == 1


async def test_an_expired_licence_alert_says_so(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    service = await alerting(license_settings(tmp_path, site))
    await service.server_license_alert(
        ServerLicense(expired=True, expiry_date="2025-12-31", days_until_expiry=-3)
    )
    await settled(service, 1)
    assert [body for _, _, body in site.relic.got] == [
        {
            "event": "server license has expired alert",
            "licenseExpired": True,
            "expiryDateStr": "2025-12-31",
            "daysUntilExpiry": -3,
        }
    ]
    assert service.recent()[0]["event"] == "qlikSenseServerLicenseExpiryAlert"


async def test_nothing_is_sent_when_the_channels_are_off(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    alerts = settings(tmp_path, site)
    off = dataclasses.replace(
        alerts,
        email=dataclasses.replace(alerts.email, enable=False),
        slack=dataclasses.replace(alerts.slack, enable=False),
        teams=dataclasses.replace(alerts.teams, enable=False),
        webhook=dataclasses.replace(alerts.webhook, enable=False),
        new_relic=dataclasses.replace(alerts.new_relic, enable=False),
    )
    service = await alerting(off)
    await service.service_changed(STOPPED)
    await service.server_license_status(ServerLicense(False, "2025-12-31", 45))
    assert service.recent() == [] and service.handled == 0


async def test_alert_test_command_tries_service_alerts(site: Site, tmp_path: Path) -> None:
    document = base_config()
    document["Butler"].update(sections_of(site))
    document["Butler"]["emailNotification"]["enable"] = False  # tried before it is switched on
    config = str(write_config(tmp_path / "butler.yaml", document))
    try_it = ("alert", "test", "-c", config, "--event")

    code, output = await butler_command(
        *try_it, "serviceStopped", "--channel", "email", "--to", "me@x.example"
    )
    assert code == 0 and "email to me@x.example: sent (250" in output, output
    [(_, recipients, raw)] = site.smtp.mailbox.received
    assert recipients == ["me@x.example"]
    assert parse(raw)["Subject"].startswith("❌ Windows service stopped on host sense1.corp.example:")

    code, output = await butler_command(*try_it, "serviceStarted", "--channel", "webhook")
    assert code == 0, output
    assert [(body["event"], body["currState"]) for _, _, body in site.hook.got] == [
        ("Windows service monitor", "RUNNING")
    ]
    code, output = await butler_command(*try_it, "serviceStopped", "--channel", "signl4")
    assert code == 1 and "nothing sent: signl4 has no Windows service alerts" in output, output


async def test_start_up_warns_of_a_broken_service_template_and_keeps_the_channel(
    tmp_path: Path, site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    document = base_config()
    document["Butler"].update(sections_of(site))
    document["Butler"]["slackNotification"]["serviceStopped"]["templateFile"] = str(tmp_path / "missing.hbs")
    hooks = document["Butler"]["webhookNotification"]["serviceMonitor"]["webhooks"]
    hooks[1]["cert"] = {"enable": True, "certCA": str(tmp_path / "no-ca.pem")}
    config = parse_config(document, base_dir=tmp_path)
    async with AsyncExitStack() as exits:
        service = await open_alerts(config, None, VERSION, exits)
        assert service is not None
        # A webhook that cannot work switches webhooks off, whichever event it serves.
        assert service.channels == {"email", "slack", "teams", "newrelic"}
        assert "webhookNotification.serviceMonitor.webhooks[1].cert.certCA: no such file" in caplog.text
        assert "slackNotification.serviceStopped.templateFile" in caplog.text
        assert "service alerts get Butler's basic message instead" in caplog.text


async def test_two_webhooks_of_one_host_and_path_prefix_are_both_called(
    tmp_path: Path, site: Site, alerting: Callable[[AlertSettings], Awaitable[AlertService]]
) -> None:
    """People see a webhook's URL cut after its first path segment (the rest is often a secret): two
    webhooks shown alike are still two recipients."""
    hooks = [{"webhookURL": f"{site.hook.url}/{name}", "httpMethod": "POST"} for name in ("one", "two")]
    alerts = settings(
        tmp_path, site, webhookNotification={"enable": True, "serviceMonitor": {"webhooks": hooks}}
    )
    service = await alerting(alerts)
    await service.service_changed(STOPPED, channels={"webhook"})
    deliveries = await settled(service, 2)
    assert [d["target"] for d in deliveries] == [f"{site.hook.url}…"] * 2
    assert {d["state"] for d in deliveries} == {"delivered"}
    assert sorted(site.hook.paths) == ["/hook/one", "/hook/two"]
