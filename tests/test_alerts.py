"""Alerts end to end: the simulated site fails, aborts or finishes a reload, its log appender tells Butler
over UDP, and every configured channel gets its message: a real SMTP server (aiosmtpd, STARTTLS and AUTH)
and real local HTTP receivers standing in for Slack, Teams, Signl4, New Relic and a webhook."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import butler
from tests.conftest import StartButler, base_config, butler_child, free_port, udp_ports, write_config
from tests.receivers import Receiver, hang, status
from tests.test_alert_email import Accounts, Mailbox, Server, certs, server_tls  # noqa: F401 (fixture)
from tests.test_events import FAILING_TASK, udp_config
from tests.test_task_start import APP1, butler_config, next_run
from tests.waiting import eventually

TEMPLATES = Path(butler.__file__).parent / "alert_templates"
OWNER_EMAIL = "goran@ptarmiganlabs.com"  # LAB\goran owns Failing App in the simulated site
RECIPIENTS = [
    "ops@corp.example",
    "dev@corp.example",
    "qa@corp.example",
    "bi@corp.example",
    "cto@corp.example",
]
CHANNELS = ("email", "slack", "teams", "webhook", "signl4", "newrelic")


class Sinks:
    """Everything alerts may be sent to."""

    def __init__(self, smtp: Server, http: dict[str, Receiver]) -> None:
        self.smtp = smtp
        self.http = http


@pytest.fixture
async def sinks(
    receivers: Callable[[], Awaitable[Receiver]],
    certs: Any,  # noqa: F811
) -> AsyncIterator[Sinks]:
    smtp = Server(
        Mailbox(),
        tls_context=server_tls(certs),
        authenticator=Accounts("butler", "s3cret"),
        auth_required=True,
    )
    await smtp.start()
    http = {name: await receivers() for name in ("slack", "teams", "webhook", "signl4", "newrelic")}
    yield Sinks(smtp, http)
    await smtp.stop()


def alert_config(document: dict[str, Any], sinks: Sinks, smtp_port: int | None = None) -> dict[str, Any]:
    """Every channel on for reload failures (and e-mail for successes), as upstream's config file says it."""
    http = sinks.http
    config = document["Butler"]
    config["qlikSenseUrls"] = {
        "qmc": "https://sense1.corp.example/qmc",
        "hub": "https://sense1.corp.example/hub",
        "appBaseUrl": "https://sense1.corp.example/sense/app",
    }
    config["alertDelivery"] = {"firstRetrySeconds": 0.2, "maxRetrySeconds": 2}
    mail_event = {
        "enable": True,
        "rateLimit": 0,
        "appOwnerAlert": {"enable": True, "includeOwner": {"includeAll": True}},
        "subject": 'Qlik Sense reload failed: "{{taskName}}"',
        "bodyFileDirectory": str(TEMPLATES / "email"),
        "htmlTemplateFile": "failed-reload-qseow",
        "fromAddress": "Qlik Sense (no-reply) <qliksense-noreply@corp.example>",
        "recipients": RECIPIENTS,
    }
    config["emailNotification"] = {
        "enable": True,
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port or sinks.smtp.port,
            "secure": False,
            "tls": {"rejectUnauthorized": False, "requireTLS": True},
            "auth": {"enable": True, "user": "butler", "password": "s3cret"},
        },
        "reloadTaskFailure": mail_event,
        "reloadTaskSuccess": {
            **mail_event,
            "subject": '✅ Qlik Sense reload success: "{{taskName}}"',
            "htmlTemplateFile": "success-reload-qseow",
            "appOwnerAlert": {"enable": False},
            "recipients": ["ops@corp.example"],
        },
    }
    chat = {"enable": True, "messageType": "formatted", "rateLimit": 0}
    config["slackNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            **chat,
            "webhookURL": http["slack"].url,
            "channel": "sense-task-failure",
            "templateFile": str(TEMPLATES / "slack" / "failed-reload-qseow.handlebars"),
        },
    }
    config["slackNotification"]["reloadTaskAborted"] = {
        **chat,
        "webhookURL": http["slack"].url,
        "channel": "sense-task-aborted",
        "templateFile": str(TEMPLATES / "slack" / "aborted-reload-qseow.handlebars"),
    }
    config["teamsNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            **chat,
            "webhookURL": http["teams"].url,
            "templateFile": str(TEMPLATES / "teams" / "failed-reload-qseow.handlebars"),
        },
    }
    config["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "rateLimit": 0,
            "webhooks": [{"description": "ops", "webhookURL": http["webhook"].url, "httpMethod": "POST"}],
        },
        "reloadTaskAborted": {
            "rateLimit": 0,
            "webhooks": [{"description": "ops", "webhookURL": http["webhook"].url, "httpMethod": "GET"}],
        },
    }
    config["incidentTool"] = {
        "signl4": {
            "enable": True,
            "url": http["signl4"].url,
            "reloadTaskFailure": {
                "enable": True,
                "rateLimit": 0,
                "serviceName": "Qlik Sense",
                "severity": 1,
                "includeApp": {"includeAll": True},
            },
        },
        "newRelic": {
            "enable": True,
            "url": {"event": http["newrelic"].url.removesuffix("hook"), "log": http["newrelic"].url + "/log"},
            "reloadTaskFailure": {
                "destination": {
                    "event": {
                        "enable": True,
                        "sendToAccount": {"always": {"enable": True, "account": ["Main"]}},
                    },
                },
                "sharedSettings": {"rateLimit": 0},
            },
        },
    }
    config["thirdPartyToolsCredentials"] = {
        "newRelic": [{"accountName": "Main", "insertApiKey": "nr-key-1", "accountId": "1234567"}]
    }
    return document


class Site:
    """Butler with every alert channel on, connected to the simulated site."""

    def __init__(self, base: str, task_port: int) -> None:
        self.base = base
        self.task_port = task_port

    async def alerts(self, **query: str) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base}/v4/alerts", params=query) as answer,
        ):
            assert answer.status == 200, await answer.text()
            return list(await answer.json())

    async def settled(self, count: int, seconds: float = 20) -> list[dict[str, Any]]:
        """The alerts, once ``count`` deliveries exist and none is pending."""
        deadline = time.monotonic() + seconds
        while True:
            alerts = await self.alerts()
            deliveries = [d for a in alerts for d in a["deliveries"]]
            if len(deliveries) >= count and all(d["state"] != "pending" for d in deliveries):
                return alerts
            assert time.monotonic() < deadline, json.dumps(alerts, indent=1)
            await asyncio.sleep(0.05)


@pytest.fixture
async def site(
    start_butler: StartButler, simulator: Any, site_certs: Any, sinks: Sinks, tmp_path: Path
) -> Callable[..., Awaitable[Site]]:
    async def start(smtp_port: int | None = None) -> Site:
        task_port, session_port = udp_ports()
        document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
        document["Butler"]["keyValueStore"] = {
            "backend": "sqlite",
            "sqlite": {"path": str(tmp_path / "kv.sqlite")},
        }
        base = await start_butler(alert_config(document, sinks, smtp_port))
        simulator.udp.targets = [("127.0.0.1", task_port)]
        return Site(base, task_port)

    return start


def failing_task(simulator: Any) -> dict[str, Any]:
    return dict(next(t for t in simulator.site.tasks.values() if t["name"] == FAILING_TASK))


async def test_a_failed_reload_reaches_every_channel(
    site: Callable[..., Awaitable[Site]], simulator: Any, sinks: Sinks
) -> None:
    butler_site = await site()
    task = failing_task(simulator)
    simulator.scheduler.start(task["id"])
    [alert] = await butler_site.settled(len(RECIPIENTS) + 1 + 5)
    assert (alert["event"], alert["taskId"], alert["taskName"]) == (
        "reloadTaskFailure",
        task["id"],
        FAILING_TASK,
    )
    states = {(d["channel"], d["target"]): d["state"] for d in alert["deliveries"]}
    assert set(states.values()) == {"delivered"}, states
    assert {channel for channel, _ in states} == set(CHANNELS)

    # E-mail: one message per recipient, the app owner's address (from QRS) included, over STARTTLS.
    mails = {
        rcpt[0]: email.message_from_bytes(raw, policy=email.policy.default)
        for _, rcpt, raw in sinks.smtp.mailbox.received
    }
    assert sorted(mails) == sorted([*RECIPIENTS, OWNER_EMAIL])
    assert all(sinks.smtp.mailbox.tls_at_data)
    mail = mails[OWNER_EMAIL]
    assert mail["Subject"] == f'Qlik Sense reload failed: "{FAILING_TASK}"'
    assert mail["X-Priority"].startswith("1")
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert FAILING_TASK in html and "Failing App" in html
    assert "Cannot open file: &#x27;lib://DataFiles/missing.qvd&#x27;" in html  # the script log, escaped
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Cannot open file: 'lib://DataFiles/missing.qvd'" in text

    # Slack: the shipped template's blocks, with the channel and sender of the config.
    [(_, _, slack)] = sinks.http["slack"].got
    assert (slack["channel"], slack["username"], slack["icon_emoji"]) == (
        "sense-task-failure",
        "Qlik Sense",
        ":ghost:",
    )
    slack_text = json.dumps(slack["blocks"])
    assert FAILING_TASK in slack_text and "missing.qvd" in slack_text

    # Teams: an Adaptive Card; the shipped template's {{tasId}} shows the task id.
    [(_, _, teams)] = sinks.http["teams"].got
    card = teams["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert task["id"] in json.dumps(card["content"])

    # The webhook: upstream's fields, the owner's address from QRS, upstream's DIR\user.
    [(_, headers, hook)] = sinks.http["webhook"].got
    assert hook["event"] == "Qlik Sense reload failed"
    assert (hook["taskName"], hook["taskId"], hook["appName"]) == (FAILING_TASK, task["id"], "Failing App")
    assert (hook["appOwnerUserDirectory"], hook["appOwnerUserId"], hook["appOwnerEmail"]) == (
        "LAB",
        "goran",
        OWNER_EMAIL,
    )
    assert hook["user"] == "INTERNAL\\sa_scheduler"
    assert headers["Idempotency-Key"] == next(
        d["id"] for d in alert["deliveries"] if d["channel"] == "webhook"
    )

    # Signl4 and New Relic.
    [(_, _, signl4)] = sinks.http["signl4"].got
    assert (signl4["Title"], signl4["Severity"], signl4["X-S4-ExternalID"]) == (
        "Qlik Sense reload task failed",
        1,
        task["id"],
    )
    [(_, nr_headers, nr_events)] = sinks.http["newrelic"].got
    assert nr_headers["Api-Key"] == "nr-key-1"
    assert (
        nr_events[0]["eventType"] == "qs_reloadTaskFailedEvent"
        and nr_events[0]["qs_taskName"] == FAILING_TASK
    )

    # The counts in /health.
    counts = await health(butler_site.base)
    assert {name: c["sent"] for name, c in counts.items()} == {
        "email": len(RECIPIENTS) + 1,
        "slack": 1,
        "teams": 1,
        "webhook": 1,
        "signl4": 1,
        "newrelic": 1,
    }


async def test_a_successful_reload_is_mailed_and_an_aborted_one_reaches_its_channels(
    site: Callable[..., Awaitable[Site]], simulator: Any, sinks: Sinks
) -> None:
    butler_site = await site()
    simulator.scheduler.start(APP1["taskId"])
    [alert] = await butler_site.settled(1)
    assert alert["event"] == "reloadTaskSuccess"
    assert [(d["channel"], d["target"], d["state"]) for d in alert["deliveries"]] == [
        ("email", "ops@corp.example", "delivered")
    ]
    [(_, _, raw)] = sinks.smtp.mailbox.received
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert mail["Subject"] == f'✅ Qlik Sense reload success: "{APP1["taskName"]}"'

    # Stopped as soon as it started: the simulated scheduler reports the run aborted.
    simulator.scheduler.start(APP1["taskId"])
    simulator.scheduler.stop(APP1["taskId"])
    alerts = await butler_site.settled(3)
    aborted = next(a for a in alerts if a["event"] == "reloadTaskAborted")
    assert sorted((d["channel"], d["state"]) for d in aborted["deliveries"]) == [
        ("slack", "delivered"),
        ("webhook", "delivered"),
    ]
    [(_, _, hook)] = sinks.http["webhook"].got  # upstream's GET webhook: the fields as query parameters
    assert (hook["event"], hook["taskName"], hook["appName"]) == (
        "Qlik Sense reload aborted",
        APP1["taskName"],
        "App1",
    )
    assert (hook["appOwnerUserId"], hook["appOwnerEmail"]) == ("goran", OWNER_EMAIL)
    [(_, _, slack)] = sinks.http["slack"].got
    assert slack["channel"] == "sense-task-aborted" and APP1["taskName"] in json.dumps(slack["blocks"])
    assert sinks.http["teams"].got == [] and len(sinks.smtp.mailbox.received) == 1  # not configured for it


async def test_one_refused_recipient_does_not_stop_the_others(
    site: Callable[..., Awaitable[Site]], simulator: Any, sinks: Sinks
) -> None:
    sinks.smtp.mailbox.refuse = {"qa@corp.example"}
    butler_site = await site()
    simulator.scheduler.start(failing_task(simulator)["id"])
    [alert] = await butler_site.settled(len(RECIPIENTS) + 1 + 5)
    mail_states = {
        d["target"]: (d["state"], d["attempts"]) for d in alert["deliveries"] if d["channel"] == "email"
    }
    assert mail_states.pop("qa@corp.example") == ("dead", 1)
    assert set(mail_states.values()) == {("delivered", 1)} and len(mail_states) == len(RECIPIENTS)
    dead = next(d for d in alert["deliveries"] if d["target"] == "qa@corp.example")
    assert "550" in dead["lastError"]
    assert sorted(r[0] for _, r, _ in sinks.smtp.mailbox.received) == sorted(
        [r for r in RECIPIENTS if r != "qa@corp.example"] + [OWNER_EMAIL]
    )


async def test_mail_waits_for_an_smtp_server_that_is_down_for_a_minute(
    site: Callable[..., Awaitable[Site]],
    simulator: Any,
    sinks: Sinks,
    certs: Any,  # noqa: F811
) -> None:
    port = free_port()  # nothing listens there yet
    butler_site = await site(smtp_port=port)
    simulator.scheduler.start(failing_task(simulator)["id"])
    # Said at start-up, while the channel stays on.
    async with asyncio.timeout(5):
        while True:
            if "warning" in (await health(butler_site.base))["email"]:
                break
            await asyncio.sleep(0.05)
    assert "Cannot connect to SMTP server" in (await health(butler_site.base))["email"]["warning"]
    await asyncio.sleep(60)
    pending = [d for a in await butler_site.alerts() for d in a["deliveries"] if d["channel"] == "email"]
    assert {d["state"] for d in pending} == {"pending"} and min(d["attempts"] for d in pending) >= 10
    late = Server(
        Mailbox(),
        tls_context=server_tls(certs),
        authenticator=Accounts("butler", "s3cret"),
        auth_required=True,
    )
    late.port = port
    loop = asyncio.get_running_loop()
    late._server = await loop.create_server(  # the same port as configured
        lambda: _session(late, loop), "127.0.0.1", port
    )
    try:
        started = time.monotonic()
        [alert] = await butler_site.settled(len(RECIPIENTS) + 1 + 5, seconds=15)
        assert {d["state"] for d in alert["deliveries"]} == {"delivered"}
        assert len(late.mailbox.received) == len(RECIPIENTS) + 1  # each once
        assert time.monotonic() - started < 5  # the backoff is at most 2 s here
        assert "warning" not in (await health(butler_site.base))["email"]
    finally:
        await late.stop()


async def health(base: str) -> dict[str, Any]:
    """The alert channels' part of ``/health``."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/health") as answer:
        return dict((await answer.json())["alerts"]["channels"])


def _session(server: Server, loop: asyncio.AbstractEventLoop) -> Any:
    from aiosmtpd.smtp import SMTP

    session = SMTP(server.mailbox, hostname="smtp.test", loop=loop, **server.options)
    server.sessions.append(session)
    return session


async def test_a_killed_butler_delivers_its_pending_alert_once_after_a_restart(
    simulator: Any,
    site_certs: Any,
    sinks: Sinks,
    tmp_path: Path,
    butler_process: Callable[..., Any],
) -> None:
    """Killed while the first attempt waits for the receiver (nothing recorded of the delivery but that it
    is to be made): after the restart the alert is delivered, once."""
    hook = sinks.http["webhook"]
    hook.answers = [hang(30)]
    task_port, session_port = udp_ports()
    port = free_port()
    document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    document["Butler"]["restServerConfig"]["serverPort"] = port
    document["Butler"]["keyValueStore"] = {
        "backend": "sqlite",
        "sqlite": {"path": str(tmp_path / "kv.sqlite")},
    }
    document["Butler"]["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "webhooks": [{"description": "ops", "webhookURL": hook.url, "httpMethod": "POST"}]
        },
    }
    config = write_config(tmp_path / "butler.yaml", document)
    first = butler_process("serve", "-c", str(config))
    await asyncio.to_thread(first.wait_for_port, port)
    simulator.udp.targets = [("127.0.0.1", task_port)]
    simulator.scheduler.start(failing_task(simulator)["id"])
    await eventually(lambda: hook.got, why=first.output)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    second = butler_process("serve", "-c", str(config))
    await asyncio.to_thread(second.wait_for_port, port)
    await eventually(lambda: hook.taken, why=second.output)
    await asyncio.sleep(1)  # time for a repeat, were there one
    assert hook.taken == [hook.got[0][1]["Idempotency-Key"]]  # once, and as the same delivery
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v4/alerts") as answer:
        [alert] = await answer.json()
    [delivery] = alert["deliveries"]
    assert (delivery["state"], delivery["attempts"]) == ("delivered", 1)


async def test_a_hanging_channel_does_not_delay_the_others(
    site: Callable[..., Awaitable[Site]], simulator: Any, sinks: Sinks
) -> None:
    sinks.http["slack"].answers = [hang(30)]
    butler_site = await site()
    simulator.scheduler.start(failing_task(simulator)["id"])
    started = time.monotonic()
    deadline = started + 10
    while not sinks.http["webhook"].got or not sinks.http["teams"].got:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert time.monotonic() - started < 2
    slack = [d for a in await butler_site.alerts() for d in a["deliveries"] if d["channel"] == "slack"]
    assert [d["state"] for d in slack] == ["pending"]


async def test_alerts_api_filters_and_refuses_bad_input(
    site: Callable[..., Awaitable[Site]], simulator: Any, sinks: Sinks
) -> None:
    butler_site = await site()
    simulator.scheduler.start(failing_task(simulator)["id"])
    await butler_site.settled(len(RECIPIENTS) + 1 + 5)
    only_slack = await butler_site.alerts(channel="slack")
    assert [d["channel"] for a in only_slack for d in a["deliveries"]] == ["slack"]
    assert await butler_site.alerts(state="dead") == []
    assert await butler_site.alerts(taskId="no-such-task") == []
    async with aiohttp.ClientSession() as http:
        for query, fragment in (
            ({"state": "lost"}, "state"),
            ({"channel": "fax"}, "channel"),
            ({"limit": "0"}, "limit"),
            ({"limit": "many"}, "limit"),
        ):
            async with http.get(f"{butler_site.base}/v4/alerts", params=query) as answer:
                assert answer.status == 400 and fragment in (await answer.json())["message"]
        async with http.post(f"{butler_site.base}/v4/alerts/nothing-here/retry") as answer:
            assert answer.status == 404 and "nothing-here" in (await answer.json())["message"]
        delivered = only_slack[0]["deliveries"][0]["id"]
        async with http.post(f"{butler_site.base}/v4/alerts/{delivered}/retry") as answer:
            assert answer.status == 409 and "dead letter" in (await answer.json())["message"]


def test_base_config_has_no_alerts() -> None:
    # The other tests' Butler runs without alert sections: no channel, no /v4/alerts.
    assert not any(k in base_config()["Butler"] for k in ("emailNotification", "webhookNotification"))


async def butler_command(*args: str) -> tuple[int, str]:
    code, output, _ = await butler_child(*args, merged=True)
    return code, output


async def test_alert_test_command_sends_a_sample_through_one_channel(sinks: Sinks, tmp_path: Path) -> None:
    document = alert_config(base_config(), sinks)
    document["Butler"]["emailNotification"]["enable"] = False  # tried before it is switched on
    config = str(write_config(tmp_path / "butler.yaml", document))

    code, output = await butler_command(
        "alert", "test", "-c", config, "--channel", "email", "--to", "me@corp.example"
    )
    assert code == 0, output
    assert "email to me@corp.example: sent (250" in output
    [(_, recipients, raw)] = sinks.smtp.mailbox.received
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert recipients == ["me@corp.example"] and "Butler test: reload of Sales" in mail["Subject"]

    code, output = await butler_command("alert", "test", "-c", config, "--channel", "webhook")
    assert code == 0, output
    [(_, _, hook)] = sinks.http["webhook"].got
    assert (hook["event"], hook["taskName"]) == ("Qlik Sense reload failed", "Butler test: reload of Sales")

    sinks.http["slack"].answers = [status(403)]
    code, output = await butler_command("alert", "test", "-c", config, "--channel", "slack")
    assert code == 1 and "NOT sent: HTTP 403: answer 403" in output, output

    document["Butler"]["webhookNotification"]["reloadTaskFailure"]["webhooks"] = []
    config = str(write_config(tmp_path / "butler.yaml", document))
    code, output = await butler_command("alert", "test", "-c", config, "--channel", "webhook")
    assert (
        code == 1
        and "nothing sent: webhookNotification.reloadTaskFailure.webhooks lists no webhook" in output
    )


async def test_two_butlers_sharing_one_redis_alert_once(
    start_butler: StartButler, simulator: Any, site_certs: Any, sinks: Sinks, redis_url: str
) -> None:
    """Both get the appenders' events (A16 of upstream: each sent its own alerts): one message is sent."""
    hook = sinks.http["webhook"]
    ports = []
    prefix = f"test:{time.monotonic_ns()}:kv:"
    for _ in range(2):
        task_port, session_port = udp_ports()
        document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
        document["Butler"]["keyValueStore"] = {
            "backend": "redis",
            "redis": {"url": redis_url, "keyPrefix": prefix},
        }
        document["Butler"]["webhookNotification"] = {
            "enable": True,
            "reloadTaskFailure": {
                "webhooks": [{"description": "ops", "webhookURL": hook.url, "httpMethod": "POST"}]
            },
        }
        await start_butler(document)
        ports.append(task_port)
    simulator.udp.targets = [("127.0.0.1", port) for port in ports]
    simulator.scheduler.start(failing_task(simulator)["id"])
    async with asyncio.timeout(10):
        while True:
            if hook.taken:
                break
            await asyncio.sleep(0.02)
    await asyncio.sleep(1)  # time for a second message, were there one
    assert len(hook.got) == 1 and hook.got[0][2]["taskName"] == FAILING_TASK


DISTRIBUTION_TASK = "d15a7b10-0000-4000-8000-000000000003"  # "Distribute Sales to Cloud", fails


@pytest.mark.parametrize("early", [False, True], ids=["reported-at-end", "reported-while-queued"])
async def test_a_failed_distribution_is_mailed_once_its_result_is_known(
    start_butler: StartButler, simulator: Any, site_certs: Any, sinks: Sinks, early: bool
) -> None:
    """The distribution task says only that it ran (``/scheduler-distribute/``); Butler asks QRS how it
    ended (again and again while it is queued or running) and mails its failure with upstream's
    distribute template, once."""
    task_port, session_port = udp_ports()
    document = udp_config(
        butler_config(simulator, site_certs),
        task_port,
        session_port,
        taskEvents={"distributionPollSeconds": 0.1},
    )
    config = alert_config(document, sinks)["Butler"]
    config["emailNotification"]["distributeTaskFailure"] = {
        "enable": True,
        "rateLimit": 0,
        "subject": '❌ Qlik Sense distribute task failed: "{{taskName}}"',
        "bodyFileDirectory": str(TEMPLATES / "email"),
        "htmlTemplateFile": "failed-distribute-qseow",
        "fromAddress": "qliksense-noreply@corp.example",
        "recipients": ["ops@corp.example"],
    }
    base = await start_butler(document)
    # Announced as soon as it started (only then), the run (0.6 s: queued, then distributing) must be
    # followed in QRS until it ended; else Butler hears the run's own datagram at its end.
    simulator.udp.targets = [] if early else [("127.0.0.1", task_port)]
    if early:
        await next_run(
            simulator,
            DISTRIBUTION_TASK,
            outcome="fail",
            queuedMs=30_000,
            durationMs=30_000,
            error="Distribution to cloud failed",
        )
    session = simulator.scheduler.start(DISTRIBUTION_TASK)
    if early:
        fields = [
            "/scheduler-distribute/",
            "sense1",
            "Distribute Sales to Cloud",
            "",
            "INTERNAL\\sa_scheduler",
        ]
        fields += [
            DISTRIBUTION_TASK,
            "",
            "2026-11-29 05:13:01,234",
            "INFO",
            session,
            "Distribute task request.",
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(";".join(fields).encode(), ("127.0.0.1", task_port))
    [alert] = await Site(base, task_port).settled(1)
    await asyncio.sleep(0.5)  # a second /scheduler-distribute/ of the run adds no second alert
    assert len(await Site(base, task_port).alerts()) == 1
    assert (alert["event"], alert["taskId"]) == ("distributeTaskFailure", DISTRIBUTION_TASK)
    [(_, recipients, raw)] = sinks.smtp.mailbox.received
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert recipients == ["ops@corp.example"]
    assert mail["Subject"] == '❌ Qlik Sense distribute task failed: "Distribute Sales to Cloud"'
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "FinishedFail" in html and "Distribution to cloud failed" in html
