"""The status page (``GET /status``): a real Butler on the simulated site, with real SMTP, webhook receiver,
MQTT broker, schedule file and monitors, looked at over HTTP and in a real headless Chromium."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from playwright.async_api import Page, async_playwright

from butler.auth.tokens import SQLITE_NAME, SqliteTokens
from butler.config import parse_config
from butler.config.declare import setting
from butler.config.schema import Secret, Str
from butler.status_page import MASK, masked_config
from tests.conftest import Broker, StartButler, base_config, free_port, udp_ports
from tests.receivers import Receiver, status
from tests.test_alert_email import Mailbox, Server
from tests.test_alerts import TEMPLATES
from tests.test_auth import auth_config, make_token
from tests.test_browsers import CHROMIUM, CHROMIUM_ARGS
from tests.test_events import FAILING_TASK, session_datagram, udp_config
from tests.test_scheduler import FLAGS, schedule
from tests.test_task_start import APP1, butler_config

#: Secrets of the config: none of them may appear anywhere in the page.
SMTP_PASSWORD = "smtp-Pw-7f3a9c2e"
MQTT_PASSWORD = "mqtt-Pw-51be0d44"
INSERT_KEY = "nr-insert-key-9d8e7f60"
WEBHOOK_SECRET = "T0SECRET9/B0SECRET9/xyzzySECRETpath"
SECRETS = (SMTP_PASSWORD, MQTT_PASSWORD, INSERT_KEY, "xyzzySECRETpath", "B0SECRET9")
HOSTILE_TASK = '<script>window.pwned = "task"</script>Reload <b>bold</b>'
HOSTILE_SUBJECT = "<img src=x onerror=\"window.pwned = 'subject'\"> {{taskName}}"
HOSTILE_SCHEDULE = "<script>window.pwned = 'schedule'</script>Nightly"
CRON = "0 30 4 * * *"


@dataclass
class Site:
    base: str
    session_port: int
    webhook: Receiver
    mail: Mailbox

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as answer:
            return answer.status, await answer.text()


@pytest.fixture
async def status_site(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    receivers: Callable[[], Awaitable[Receiver]],
    tmp_path: Path,
) -> Callable[..., Awaitable[Site]]:
    """Butler with the status page, every part it shows on: QRS, SMTP and a webhook, MQTT, UDP events, a
    schedule file, the service and server-licence monitors."""
    mailbox = Mailbox()
    smtp = Server(mailbox)
    await smtp.start()
    webhook = await receivers()

    async def start(**changes: Any) -> Site:
        task_port, session_port = udp_ports()
        document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
        config = document["Butler"]
        config["restServerEndpointsEnable"]["scheduler"] = FLAGS
        config["statusPage"] = {"enable": True}
        config["keyValueStore"] = {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "kv.sqlite")}}
        config["alertDelivery"] = {"firstRetrySeconds": 0.2, "maxRetrySeconds": 1}
        config["mqttConfig"] = {
            "enable": True,
            "brokerHost": "127.0.0.1",
            "brokerPort": broker.port,
            "username": "butler",
            "password": MQTT_PASSWORD,
        }
        config["emailNotification"] = {
            "enable": True,
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp.port,
                "secure": False,
                "tls": {"ignoreTLS": True, "requireTLS": False},
                # Sent to a server that asks for none: the password is there to be masked.
                "auth": {"enable": False, "user": "butler", "password": SMTP_PASSWORD},
            },
            "reloadTaskFailure": {
                "enable": True,
                "rateLimit": 0,
                "subject": HOSTILE_SUBJECT,
                "bodyFileDirectory": str(TEMPLATES / "email"),
                "htmlTemplateFile": "failed-reload-qseow",
                "fromAddress": "Qlik Sense <qliksense-noreply@corp.example>",
                "recipients": ["ops@corp.example"],
            },
        }
        config["webhookNotification"] = {
            "enable": True,
            "reloadTaskFailure": {
                "rateLimit": 0,
                "webhooks": [
                    {
                        "description": "ops",
                        "webhookURL": f"{webhook.url}/{WEBHOOK_SECRET}",
                        "httpMethod": "POST",
                    }
                ],
            },
        }
        config["thirdPartyToolsCredentials"] = {
            "newRelic": [{"accountName": "Main", "insertApiKey": INSERT_KEY, "accountId": "1234567"}]
        }
        file = tmp_path / "schedule.yaml"
        entry = schedule(APP1["taskId"], CRON, timezone="UTC", id="nightly", name=HOSTILE_SCHEDULE)
        file.write_text(yaml.safe_dump({"butlerSchedule": [entry]}))
        config["scheduler"] = {"enable": True, "configfile": str(file)}
        config["serviceMonitor"] = {"enable": True, "frequency": "every 1 seconds"}
        config["qlikSenseLicense"] = {
            "serverLicenseMonitor": {"enable": True, "frequency": "every 1 seconds"}
        }
        for path, value in changes.items():
            node = config
            *parents, leaf = path.split(".")
            for name in parents:
                node = node.setdefault(name, {})
            node[leaf] = value
        base = await start_butler(document)
        simulator.udp.targets = [("127.0.0.1", task_port)]
        return Site(base, session_port, webhook, mailbox)

    yield start
    await smtp.stop()


def failing_task(simulator: Any) -> dict[str, Any]:
    task: dict[str, Any] = next(t for t in simulator.site.tasks.values() if t["name"] == FAILING_TASK)
    return task


async def send_session(port: int, host: str, user: str) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )
    transport.sendto(session_datagram("Start session", host, "LAB", user))
    transport.close()


async def data(site: Site) -> dict[str, Any]:
    code, text = await site.get("/status/data")
    assert code == 200, text
    answer: dict[str, Any] = json.loads(text)
    return answer


async def test_the_page_shows_connections_alerts_schedules_users_monitors_and_masks_secrets(
    status_site: Callable[..., Awaitable[Site]], simulator: Any, control: Any
) -> None:
    assert (await control("PUT", "/license", {"expiresInDays": 10}))[0] == 200
    site = await status_site()
    site.webhook.answers = [status(400)]  # refused for good: a dead letter
    task = failing_task(simulator)
    task["name"] = HOSTILE_TASK
    simulator.scheduler.start(task["id"])
    await send_session(site.session_port, "proxy1.corp.example", "anna")

    async def settled() -> bool:
        snapshot = await data(site)
        alerts = snapshot["alerts"]["recent"]
        states = {(d["channel"], d["state"]) for a in alerts for d in a["deliveries"]}
        monitors = snapshot["monitors"]
        return (
            states == {("email", "delivered"), ("webhook", "dead")}
            and snapshot["activeUsers"] == {"proxy1.corp.example": 1}
            and bool(monitors["services"])
            and monitors["serverLicense"] is not None
        )

    for _ in range(200):
        if await settled():
            break
        await asyncio.sleep(0.05)
    snapshot = await data(site)
    assert await settled(), json.dumps(snapshot, indent=1)
    connections = {row["name"]: row for row in snapshot["connections"]}
    assert connections["QRS"]["state"] == "ok" and "calls" in connections["QRS"]["detail"]
    # The monitors ask QRS with a client of their own.
    assert connections["QRS (monitors)"]["state"] == "ok"
    assert connections["MQTT broker"]["state"] == "ok"
    assert connections["Alerts: email"]["target"].startswith("SMTP 127.0.0.1:")
    assert connections["Alerts: webhook"]["state"] == "warn"  # one dead letter
    assert connections["InfluxDB"]["state"] == "off"
    [alert] = snapshot["alerts"]["recent"]
    assert alert["taskName"] == HOSTILE_TASK
    assert snapshot["udp"]["taskEvents"]["received"] >= 1
    assert snapshot["monitors"]["serverLicense"]["daysUntilExpiry"] == 10

    code, html = await site.get("/status")
    assert code == 200
    # Escaped wherever it comes from: the task name (QRS and UDP), a config value, a schedule's name.
    assert "<script>window.pwned" not in html and "onerror=" not in html.replace("onerror=&quot;", "")
    assert (
        "&lt;script&gt;window.pwned = &quot;task&quot;&lt;/script&gt;Reload &lt;b&gt;bold&lt;/b&gt;" in html
    )
    assert "&lt;img src=x onerror=&quot;window.pwned = &#x27;subject&#x27;&quot;&gt;" in html
    assert "&lt;script&gt;window.pwned = &#x27;schedule&#x27;&lt;/script&gt;Nightly" in html
    for secret in SECRETS:
        assert secret not in html, secret
    assert html.count(MASK) >= 3
    # The webhook's URL by its origin and first segment only.
    assert f"{site.webhook.url.rsplit('/', 1)[0]}/hook…" in html
    # The schedule's next fire, as the scheduler's own route gives it.
    async with aiohttp.ClientSession() as http, http.get(f"{site.base}/v4/schedules") as answer:
        [listed] = await answer.json()
    due = datetime.datetime.fromisoformat(listed["nextFires"][0].replace("Z", "+00:00"))
    assert due.strftime("%Y-%m-%d %H:%M:%SZ") in html
    assert "10 days left" in html
    running = '<span class="state ok">ok</span> QlikSenseSchedulerService'
    assert html.count(running) == 2  # on both nodes
    # A service stopped on one node: the next check shows it down there.
    await control("POST", "/nodes/sense2/services/scheduler/stop")
    for _ in range(100):
        _, html = await site.get("/status")
        if '<span class="state down">down</span> QlikSenseSchedulerService' in html:
            break
        await asyncio.sleep(0.1)
    assert html.count(running) == 1
    assert '<span class="state down">down</span> QlikSenseSchedulerService' in html
    assert "proxy1.corp.example" in html
    # The body alone, as the page refreshes itself.
    code, fragment = await site.get("/status?fragment=true")
    assert code == 200 and "<html" not in fragment and "Recent alerts" in fragment
    code, text = await site.get("/status?fragment=maybe")
    assert code == 400 and "fragment" in json.loads(text)["message"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser installed (Debian package chromium)")
async def test_in_a_browser_retry_sends_a_dead_letter_again_and_a_phone_needs_no_sideways_scroll(
    status_site: Callable[..., Awaitable[Site]], simulator: Any, control: Any, tmp_path: Path
) -> None:
    assert (await control("PUT", "/license", {"expiresInDays": 10}))[0] == 200
    site = await status_site()
    site.webhook.answers = [status(400)]
    task = failing_task(simulator)
    task["name"] = HOSTILE_TASK
    simulator.scheduler.start(task["id"])
    await send_session(site.session_port, "proxy1.corp.example", "anna")

    async def dead() -> list[dict[str, Any]]:
        alerts = (await data(site))["alerts"]["recent"]
        return [d for a in alerts for d in a["deliveries"] if d["state"] == "dead"]

    for _ in range(200):
        if await dead():
            break
        await asyncio.sleep(0.05)
    [letter] = await dead()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            outside: list[str] = []
            page.on(
                "request",
                lambda request: None if request.url.startswith(site.base) else outside.append(request.url),
            )
            await page.goto(f"{site.base}/status")
            await page.wait_for_selector(f'li[data-delivery="{letter["id"]}"] button.retry')
            assert await page.evaluate("window.pwned") is None
            text = await page.inner_text("main")
            assert HOSTILE_TASK in text  # shown as text, not run
            await _screenshot_when_settled(page, site)
            await page.screenshot(path=str(tmp_path / "status-page.png"), full_page=True)

            await page.click(f'li[data-delivery="{letter["id"]}"] button.retry')
            await page.wait_for_function(
                'id => { const li = document.querySelector(`li[data-delivery="${id}"]`);'
                " return li !== null && li.querySelector('.state').textContent === 'delivered'; }",
                arg=letter["id"],
                timeout=15000,
            )
            assert await page.inner_text("#message") == "sent again"
            assert len(site.webhook.taken) == 1
            assert await page.evaluate("window.pwned") is None and dialogs == []
            assert outside == []

            phone = await browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
            await phone.goto(f"{site.base}/status")
            await phone.wait_for_selector("li[data-delivery]")
            scroll = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            widths = await phone.evaluate(scroll)
            assert widths[0] <= widths[1], widths
            # The config too, with its long key paths and URLs, once opened.
            await phone.click("details summary")
            assert await phone.is_visible("text=Butler.restServerConfig.serverHost")
            widths = await phone.evaluate(scroll)
            assert widths[0] <= widths[1], widths
            await phone.screenshot(path=str(tmp_path / "phone.png"))
        finally:
            await browser.close()


async def _screenshot_when_settled(page: Page, site: Site) -> None:
    """Wait until the page shows the monitors' findings and the active user, so the picture has them."""

    async def shown() -> bool:
        text = await page.inner_text("main")
        return "days left" in text and "proxy1.corp.example" in text

    for _ in range(200):
        if await shown():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(await page.inner_text("main"))


async def test_with_auth_on_the_page_needs_a_token_with_the_admin_scope(
    start_butler: StartButler, tmp_path: Path
) -> None:
    document = auth_config(base_config(butlerping=True))
    document["Butler"]["statusPage"] = {"enable": True}
    base = await start_butler(document)
    admin = await make_token(tmp_path, "ops", "admin")
    other = await make_token(tmp_path, "etl", "status")
    async with aiohttp.ClientSession() as http:
        for path in ("/status", "/status/data"):
            async with http.get(base + path) as answer:
                assert answer.status == 401
                assert answer.headers["WWW-Authenticate"].startswith("Bearer")
                assert "Authentication needed" in (await answer.json())["message"]
            async with http.get(base + path, headers={"Authorization": f"Bearer {other}"}) as answer:
                assert answer.status == 403 and "admin" in (await answer.json())["message"]
            async with http.get(base + path, headers={"Authorization": f"Bearer {admin}"}) as answer:
                assert answer.status == 200
                body = await answer.text()
        # No other site may frame the page, and only its own script runs.
        async with http.get(f"{base}/status", headers={"Authorization": f"Bearer {admin}"}) as answer:
            policy = answer.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in policy and "script-src 'sha256-" in policy
            assert "unsafe-inline" not in policy and answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Cache-Control"] == "no-store"
        # Tokens are never on the page: not the one used, nor any in the store.
        assert admin not in body and other not in body and "bt_" not in body


async def test_the_page_is_off_unless_enabled(start_butler: StartButler) -> None:
    base = await start_butler(base_config(butlerping=True))
    async with aiohttp.ClientSession() as http:
        for path in ("/status", "/status/data"):
            async with http.get(base + path) as answer:
                assert answer.status == 404
                assert (await answer.json())["statusCode"] == 404


@dataclass(frozen=True, kw_only=True)
class _Lock:
    """Settings with a secret whose name says nothing of it."""

    combination: str = setting("sesame", Secret(), "", help="a secret by its type alone")
    label: str = setting("label", Str(), "", help="not a secret")


def test_a_key_declared_secret_is_masked_whatever_its_name() -> None:
    assert masked_config(_Lock(combination="open-4711", label="front door")) == [
        ("Butler.sesame", MASK),
        ("Butler.label", "front door"),
    ]
    assert masked_config(_Lock()) == [("Butler.sesame", ""), ("Butler.label", "")]


def test_secrets_are_masked_by_type_by_name_and_in_urls(tmp_path: Path) -> None:
    document = base_config(butlerping=True)
    config = document["Butler"]
    config["mqttConfig"] = {"enable": False, "password": MQTT_PASSWORD}
    config["keyValueStore"] = {"redis": {"url": "redis://:redis-Pw-0a1b@cache.corp.example:6379/0"}}
    config["slackNotification"] = {
        "restMessage": {"webhookURL": f"https://hooks.slack.com/services/{WEBHOOK_SECRET}"}
    }
    config["thirdPartyToolsCredentials"] = {
        "newRelic": [{"accountName": "Main", "insertApiKey": INSERT_KEY, "accountId": "1234567"}]
    }
    config["configQRS"] = {
        "headers": {
            "static": [{"name": "Authorization", "value": "Basic c2VjcmV0"}, {"name": "X-A", "value": "b"}]
        }
    }
    rows = dict(masked_config(parse_config(document, base_dir=tmp_path)))
    assert rows["Butler.mqttConfig.password"] == MASK
    assert rows["Butler.keyValueStore.redis.url"] == "redis://cache.corp.example:6379/0…"
    assert rows["Butler.slackNotification.restMessage.webhookURL"] == "https://hooks.slack.com/services…"
    assert rows["Butler.thirdPartyToolsCredentials.newRelic[0].insertApiKey"] == MASK
    assert rows["Butler.thirdPartyToolsCredentials.newRelic[0].accountId"] == "1234567"
    assert rows["Butler.configQRS.headers.static"] == f"Authorization: {MASK}, X-A: b"
    assert rows["Butler.mqttConfig.username"] == ""
    shown = "\n".join(rows.values())
    for secret in (MQTT_PASSWORD, INSERT_KEY, "redis-Pw-0a1b", "xyzzySECRETpath", "c2VjcmV0"):
        assert secret not in shown
    assert re.search(r"restServerEndpointsEnable$", "\n".join(rows), re.M)


async def test_a_qrs_that_cannot_be_reached_is_shown_down_with_why(
    start_butler: StartButler, site_certs: Any
) -> None:
    document = base_config(senseStartTask=True)
    config = document["Butler"]
    config["cert"] = {
        "clientCert": str(site_certs.client),
        "clientCertKey": str(site_certs.client_key),
        "clientCertCA": str(site_certs.root),
    }
    port = free_port()  # nothing listens there
    config["configQRS"] = {"host": "127.0.0.1", "port": port, "timeoutSeconds": 2, "retries": 0}
    config["statusPage"] = {"enable": True}
    base = await start_butler(document)
    site = Site(base, 0, Receiver(), Mailbox())
    [qrs] = [row for row in (await data(site))["connections"] if row["name"] == "QRS"]
    assert (qrs["state"], qrs["detail"]) == ("idle", "not called yet")
    async with aiohttp.ClientSession() as http:
        url = f"{base}/v4/reloadtask/{APP1['taskId']}/start"
        async with http.put(url, json=[]) as answer:
            assert answer.status >= 500
    [qrs] = [row for row in (await data(site))["connections"] if row["name"] == "QRS"]
    assert qrs["state"] == "down" and qrs["target"] == f"127.0.0.1:{port}"
    assert f"cannot connect to Qlik Sense QRS at 127.0.0.1:{port}" in qrs["detail"]


async def test_butlers_sharing_a_redis_show_it(start_butler: StartButler, redis_url: str) -> None:
    document = base_config(butlerping=True)
    prefix = f"test:{uuid.uuid4().hex}:kv:"
    document["Butler"]["keyValueStore"] = {
        "backend": "redis",
        "redis": {"url": redis_url, "keyPrefix": prefix},
    }
    document["Butler"]["statusPage"] = {"enable": True}
    base = await start_butler(document)
    site = Site(base, 0, Receiver(), Mailbox())
    [row] = [row for row in (await data(site))["connections"] if row["name"] == "Redis"]
    assert (row["state"], row["target"]) == ("ok", redis_url.rsplit("/", 1)[0] + "/0…")


async def test_the_schedules_firing_soonest_come_first_and_stopped_ones_last(
    start_butler: StartButler, tmp_path: Path
) -> None:
    file = tmp_path / "schedule.yaml"
    entries = [
        schedule(APP1["taskId"], cron, state, timezone="UTC", id=name, name=name)
        for name, cron, state in (
            ("stopped", "0 0 1 * * *", "stopped"),
            ("five", "0 0 5 * * *", "started"),
            ("three", "0 0 3 * * *", "started"),
            ("every minute", "0 * * * * *", "started"),
        )
    ]
    file.write_text(yaml.safe_dump({"butlerSchedule": entries}))
    document = base_config(butlerping=True)
    document["Butler"]["scheduler"] = {"enable": True, "configfile": str(file)}
    document["Butler"]["statusPage"] = {"enable": True}
    site = Site(await start_butler(document), 0, Receiver(), Mailbox())
    for _ in range(100):
        schedules = (await data(site))["schedules"]
        if schedules["count"] == 4:
            break
        await asyncio.sleep(0.05)
    shown = schedules["shown"]
    assert shown[0]["name"] == "every minute"
    fires = [entry["nextFire"] for entry in shown]
    assert fires[:3] == sorted(fires[:3]) and None not in fires[:3]
    assert (shown[3]["name"], shown[3]["nextFire"], shown[3]["state"]) == ("stopped", None, "stopped")


async def test_with_auth_on_a_browser_logs_in_with_a_token_and_out_again(
    start_butler: StartButler, tmp_path: Path
) -> None:
    """The login form sets a cookie that opens the page's own routes only; a token lacking the admin scope
    is refused with the reason; logging out, or revoking the token, ends it."""
    document = auth_config(base_config(butlerping=True))
    document["Butler"]["statusPage"] = {"enable": True}
    base = await start_butler(document)
    admin = await make_token(tmp_path, "ops", "admin", "status")
    etl = await make_token(tmp_path, "etl", "status")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            answer = await page.goto(f"{base}/status")
            assert answer is not None and answer.status == 401
            assert "log in at /status/login" in await page.content()
            await page.goto(f"{base}/status/login")
            await page.fill("#token", etl)
            await page.click("button[type=submit]")
            await page.wait_for_function("document.getElementById('message').textContent !== ''")
            assert "Token etl lacks scope admin" in await page.inner_text("#message")
            assert await page.context.cookies() == []
            await page.fill("#token", admin)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/status")
            assert "Connections" in await page.inner_text("main")
            assert await page.evaluate("document.cookie") == ""  # no script can read it
            [cookie] = await page.context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "butler_session",
                True,
                "Strict",
            )
            assert (await page.request.get(f"{base}/status/data")).status == 200
            # A credential for the page's routes only, though the token itself may ping.
            assert (await page.request.get(f"{base}/v4/butlerping")).status == 401
            await page.click("#logout")
            await page.wait_for_url(f"{base}/status/login")
            assert await page.context.cookies() == []
            assert (await page.request.get(f"{base}/status/data")).status == 401
            # Logged in again, the token revoked: the page's next refresh goes back to the form.
            await page.fill("#token", admin)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/status")
            tokens = SqliteTokens(tmp_path / SQLITE_NAME)
            assert await tokens.revoke("ops")
            await tokens.close()
            await page.wait_for_url(f"{base}/status/login", timeout=15000)
        finally:
            await browser.close()


async def test_a_session_cookie_is_checked_as_a_token_is(start_butler: StartButler, tmp_path: Path) -> None:
    document = auth_config(base_config())
    document["Butler"]["statusPage"] = {"enable": True}
    base = await start_butler(document)
    etl = await make_token(tmp_path, "etl", "status")
    async with aiohttp.ClientSession() as http:
        for cookie, expected, message in (
            ("not-a-token", 401, "Malformed butler_session cookie: log in again at /status/login"),
            (f"bt_{'x' * 43}", 401, "Unknown or revoked token"),
            (etl, 403, "Token etl lacks scope admin"),
        ):
            headers = {"Cookie": f"butler_session={cookie}"}
            async with http.get(f"{base}/status/data", headers=headers) as answer:
                assert answer.status == expected and message in (await answer.json())["message"]
        # The login itself needs the token in a header, checked for the admin scope.
        async with http.post(f"{base}/status/login", headers={"Authorization": f"Bearer {etl}"}) as answer:
            assert answer.status == 403 and "Set-Cookie" not in answer.headers
