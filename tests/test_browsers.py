"""Browsers may call Butler only for its own pages and for pages of the allowed origins.

The rule is checked through real HTTP with the headers browsers send, and end to end with a real headless
Chromium loading pages of other origins that point ``<img>`` and ``fetch()`` at every route that changes
something on a GET.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from playwright.async_api import async_playwright

from butler.config import ConfigError, parse_config
from butler.http.browsers import parse_origin
from tests.conftest import Broker, StartButler, base_config
from tests.test_messaging import Webhook, next_message, wait_connected
from tests.test_task_start import APP1, butler_config, started_counts

ALLOWED = "https://sense.company.com"


def test_origins_are_written_as_browsers_write_them() -> None:
    assert parse_origin("https://Sense.Company.com/") == "https://sense.company.com"
    assert parse_origin("https://sense.company.com:443") == "https://sense.company.com"
    assert parse_origin("http://sense:8080") == "http://sense:8080"
    assert parse_origin("http://[::1]:80") == "http://[::1]"
    assert parse_origin("https://XN--BCHER-KVA.example") == "https://xn--bcher-kva.example"
    for bad in (
        "null",
        "*",
        "sense.company.com",
        "ftp://sense",
        "https://sense/hub",
        "https://u@sense",
        "http://x:z",
        "https://bücher.example",  # browsers send https://xn--bcher-kva.example
    ):
        with pytest.raises(ValueError):
            parse_origin(bad)


def test_allowed_origins_in_the_config(tmp_path: Path) -> None:
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"]["allowedOrigins"] = ["https://Sense.company.com/", "http://qs:81"]
    settings = parse_config(document, base_dir=tmp_path)
    assert settings.rest.allowed_origins == ("https://sense.company.com", "http://qs:81")
    assert parse_config(base_config(butlerping=True), base_dir=tmp_path).rest.allowed_origins == ()

    document["Butler"]["restServerConfig"]["allowedOrigins"] = ["*", "https://sense.company.com/hub", 3]
    with pytest.raises(ConfigError) as error:
        parse_config(document, base_dir=tmp_path)
    assert error.value.messages == [
        "Butler.restServerConfig.allowedOrigins[0]: expected http:// or https:// and a host name, "
        "like https://sense.company.com, got '*'",
        "Butler.restServerConfig.allowedOrigins[1]: an origin is only scheme://host[:port], without user, "
        "path or query, got 'https://sense.company.com/hub'",
        "Butler.restServerConfig.allowedOrigins[2]: expected an origin such as https://sense.company.com, "
        "got 3",
    ]


# Headers as browsers send them; OWN stands for Butler's own origin, OTHER_PORT for a page on another port of
# Butler's host (same-site to the browser, but another origin).
OWN = "{own}"
OTHER_PORT = "{other_port}"
RULES: list[tuple[str, dict[str, str], int]] = [
    ("curl, load scripts, the REST connector", {}, 200),
    ("address typed into the browser", {"Sec-Fetch-Site": "none"}, 200),
    ("Butler's own page", {"Sec-Fetch-Site": "same-origin"}, 200),
    ("Butler's own page, POST", {"Sec-Fetch-Site": "same-origin", "Origin": OWN}, 200),
    ("Butler's own page, browser without fetch metadata", {"Origin": OWN}, 200),
    ("allowed origin", {"Sec-Fetch-Site": "cross-site", "Origin": ALLOWED}, 200),
    ("allowed origin, browser without fetch metadata", {"Origin": ALLOWED}, 200),
    ("<img> of another site", {"Sec-Fetch-Site": "cross-site"}, 403),
    ("<img> of another port of the same host", {"Sec-Fetch-Site": "same-site"}, 403),
    ("fetch() of another port", {"Sec-Fetch-Site": "same-site", "Origin": OTHER_PORT}, 403),
    ("fetch() of another site", {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, 403),
    ("another site, browser without fetch metadata", {"Origin": "https://evil.example"}, 403),
    ("a look-alike of the allowed origin", {"Origin": "https://sense.company.com.evil.example"}, 403),
    ("the allowed host over plain HTTP", {"Origin": "http://sense.company.com"}, 403),
    ("sandboxed frame or local file", {"Sec-Fetch-Site": "cross-site", "Origin": "null"}, 403),
    ("Origin null without fetch metadata", {"Origin": "null"}, 403),
    ("own origin, but the browser says cross-site", {"Sec-Fetch-Site": "cross-site", "Origin": OWN}, 403),
    ("a Sec-Fetch-Site value browsers do not send", {"Sec-Fetch-Site": "other"}, 403),
]


@pytest.mark.parametrize(("case", "headers", "status"), RULES, ids=[case for case, _, _ in RULES])
async def test_who_may_call(
    start_butler: StartButler, http: aiohttp.ClientSession, case: str, headers: dict[str, str], status: int
) -> None:
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"]["allowedOrigins"] = [ALLOWED]
    base = await start_butler(document)
    port = urlsplit(base).port
    assert port is not None
    values = {"own": base, "other_port": f"http://127.0.0.1:{port + 1}"}
    sent = {name: value.format(**values) for name, value in headers.items()}
    async with http.get(f"{base}/v4/butlerping", headers=sent) as response:
        assert response.status == status, case
        body = await response.json()
        assert not any(name.startswith("Access-Control-") for name in response.headers)
    if status == 403:
        assert body["statusCode"] == 403 and body["error"] == "Forbidden"
        assert "Butler.restServerConfig.allowedOrigins" in body["message"]


async def test_refusals_say_what_to_do_and_are_logged(
    start_butler: StartButler, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="butler.rest")
    base = await start_butler(base_config(butlerping=True))
    foreign = {"Sec-Fetch-Site": "cross-site", "Origin": "https://bi.company.com"}
    async with http.get(f"{base}/v4/butlerping?x=1", headers=foreign) as response:
        assert await response.json() == {
            "statusCode": 403,
            "error": "Forbidden",
            "message": "A page of https://bi.company.com may not call Butler; add https://bi.company.com to "
            "Butler.restServerConfig.allowedOrigins if its pages may",
        }
    assert (
        "Refused GET /v4/butlerping?x=1 from 127.0.0.1: made by a browser for a page of https://bi.company.com"
        in caplog.messages
    )
    # The request log has its line as for every request.
    assert any(m.startswith("GET /v4/butlerping?x=1 403 ") for m in caplog.messages), caplog.messages


async def test_checked_before_anything_else(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    """Unknown routes, method overrides and preflights are refused alike; no CORS header lets a page in."""
    document = base_config(butlerping=True, keyValueStore=True)
    document["Butler"]["restServerConfig"]["allowedOrigins"] = [ALLOWED]
    base = await start_butler(document)
    foreign = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    for method, path, extra in [
        ("GET", "/v4/nowhere", {}),
        ("POST", "/v4/keyvalues/ns", {"X-HTTP-Method-Override": "DELETE"}),
        ("OPTIONS", "/v4/keyvalues/ns", {"Access-Control-Request-Method": "PUT"}),
    ]:
        async with http.request(method, base + path, headers={**foreign, **extra}) as response:
            assert response.status == 403, (method, path)
            assert not any(name.startswith("Access-Control-") for name in response.headers)
    # Butler answers no preflight, not even the allowed origin's, and sends no CORS headers, as upstream.
    preflight = {"Sec-Fetch-Site": "cross-site", "Origin": ALLOWED, "Access-Control-Request-Method": "PUT"}
    for headers in (preflight, {}):
        async with http.options(f"{base}/v4/keyvalues/ns", headers=headers) as response:
            assert response.status == 404
            assert not any(name.startswith("Access-Control-") for name in response.headers)


async def test_documentation_is_open_to_every_page(
    start_butler: StartButler, http: aiohttp.ClientSession
) -> None:
    base = await start_butler(base_config(butlerping=True))
    foreign = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    for path in ("/documentation", "/documentation/json", "/documentation/static/swagger-ui.css"):
        async with http.get(base + path, headers=foreign) as response:
            assert response.status == 200, path
    async with http.get(f"{base}/documentationx", headers=foreign) as response:
        assert response.status == 403


# --- A real browser ----------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: The page of another origin: every way a page can send a request without asking Butler first (CORS
#: preflight), and a preflighted one. ``window.attack`` settles when every request has been answered.
ATTACK_PAGE = """<!DOCTYPE html>
<html><body><script>
const butler = BUTLER, gets = GETS, posts = POSTS;
const image = url => new Promise(done => {
  const img = new Image();
  img.onload = () => done("loaded");
  img.onerror = () => done("error");
  img.src = url;
});
const settle = promise => promise.then(r => "answered " + r.type, e => "failed " + e);
const post = (path, body, headers, mode) => settle(fetch(butler + path, {
  method: "POST", mode, body, headers: {"Content-Type": "text/plain", ...headers}}));
window.attack = Promise.all([
  ...gets.img.map(path => image(butler + path)),
  ...gets.fetch.map(path => settle(fetch(butler + path, {mode: "no-cors"}))),
  ...gets.fetch.map(path => settle(fetch(butler + path, {mode: "no-cors", method: "POST",
                                                         headers: {"X-HTTP-Method-Override": "GET"}}))),
  ...posts.map(([path, body]) => post(path, body, {}, "no-cors")),
  ...posts.map(([path, body]) => post(path, body, {"X-HTTP-Method-Override": "PUT"}, "no-cors")),
  ...posts.map(([path, body]) => post(path, body, {"X-HTTP-Method-Override": "PUT"}, "cors")),
  image(butler + "/documentation/static/favicon-32x32.png"),
]);
</script></body></html>
"""


def state_changing_gets(folders: dict[str, Path], label: str) -> list[str]:
    """The five GET routes that change something, each with values naming ``label``."""
    return [
        f"/v2/senseStartTask?taskId={APP1['taskId']}",
        f"/v2/createDir?directory={quote(str(folders['made'] / label))}",
        f"/v2/createDirQVD?directory={label}",
        f"/v2/mqttPublishMessage?topic=browser/{label}&message={label}",
        f"/v2/slackPostMessage?channel=%23sense&from_user=Butler&msg={label}",
    ]


class OtherSite:
    """A web server on another port: pages of another origin by name, and a Slack webhook."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.slack = Webhook()
        self.port = 0

    async def page(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in self.pages:
            raise web.HTTPNotFound()
        return web.Response(text=self.pages[request.match_info["name"]], content_type="text/html")


@pytest.fixture
async def other_site() -> AsyncIterator[OtherSite]:
    site = OtherSite()
    app = web.Application()
    app.router.add_get("/{name}", site.page)
    app.router.add_post("/services/T/B/X", site.slack.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    site.port = runner.addresses[0][1]
    yield site
    await runner.cleanup()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser installed (Debian package chromium)")
async def test_pages_of_other_origins_cannot_drive_butler(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    other_site: OtherSite,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folders = {name: tmp_path / name for name in ("made", "qvd")}
    for folder in folders.values():
        folder.mkdir()
    document = butler_config(
        simulator,
        site_certs,
        createDir=True,
        createDirQVD=True,
        mqttPublishMessage=True,
        slackPostMessage=True,
    )
    butler = document["Butler"]
    butler["createDirApprovedDirectories"] = [str(folders["made"])]
    butler["configDirectories"] = {"qvdPath": str(folders["qvd"])}
    butler["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    slack_url = f"http://127.0.0.1:{other_site.port}/services/T/B/X"
    butler["slackNotification"] = {"restMessage": {"webhookURL": slack_url}}
    base = await start_butler(document)
    async with aiomqtt.Client("127.0.0.1", broker.port) as messages:
        await messages.subscribe("browser/#")
        async with aiohttp.ClientSession() as http:
            await wait_connected(base, http)
        await attack(base, simulator, folders, other_site, caplog)
        # The same requests from a client that is not a browser (no Origin, no Sec-Fetch-Site) still work.
        async with aiohttp.ClientSession() as http:
            for path in state_changing_gets(folders, "script"):
                async with http.get(base + path) as response:
                    assert response.status == 200, (path, await response.text())
        # The first message on the pages' topics is the script's: nothing the pages sent was published.
        received = await next_message(messages)
        assert (str(received.topic), received.payload) == ("browser/script", b"script")
    assert await started_counts(simulator) == {APP1["taskId"]: 1}
    assert (folders["made"] / "script").is_dir() and (folders["qvd"] / "script").is_dir()
    assert [m["text"] for m in other_site.slack.received] == ["script"]


async def attack(
    base: str,
    simulator: Any,
    folders: dict[str, Path],
    other_site: OtherSite,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pages of two other origins try everything; then Butler's own page shows it still works."""
    posts = [
        ("/v4/createdir", json.dumps({"directory": str(folders["made"] / "posted")})),
        ("/v4/createdirqvd", json.dumps({"directory": "posted"})),
        (f"/v4/reloadtask/{APP1['taskId']}/start", "[]"),
        ("/v4/mqttpublishmessage", json.dumps({"topic": "browser/posted", "message": "posted"})),
        ("/v4/slackpostmessage", json.dumps({"channel": "#sense", "from_user": "Butler", "msg": "posted"})),
    ]
    # 127.0.0.1 on another port is the same site as Butler to the browser (only the port differs);
    # localhost is another site.
    attackers = {
        "same-site": f"http://127.0.0.1:{other_site.port}",
        "cross-site": f"http://localhost:{other_site.port}",
    }
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for kind, page_origin in attackers.items():
                gets = {via: state_changing_gets(folders, f"{kind}-{via}") for via in ("img", "fetch")}
                other_site.pages[kind] = (
                    ATTACK_PAGE.replace("BUTLER", json.dumps(base))
                    .replace("GETS", json.dumps(gets))
                    .replace("POSTS", json.dumps(posts))
                )
                page = await browser.new_page()
                await page.goto(f"{page_origin}/{kind}")
                outcomes = await page.evaluate("window.attack")
                await page.close()
                assert outcomes[-1] == "loaded", (kind, "the documentation is open to every page")

            # Nothing started, nothing was created, nothing was posted (or published: see the caller).
            assert await started_counts(simulator) == {}
            assert [p for folder in folders.values() for p in folder.iterdir()] == []
            assert other_site.slack.received == []
            # Because every request reached Butler and was refused there before anything ran.
            refused = refused_requests(caplog)
            for path in state_changing_gets(folders, "any"):
                assert ("GET", path.partition("?")[0]) in refused, refused
                assert ("POST", path.partition("?")[0]) in refused, refused
            for path, _ in posts:
                assert ("POST", path) in refused and ("OPTIONS", path) in refused, refused

            # Butler's own pages (Swagger UI's "Try it out") still work.
            page = await browser.new_page()
            await page.goto(f"{base}/documentation")
            own = await page.evaluate(
                """async ([get, post]) => [
                    (await fetch(get)).status,
                    (await fetch(post[0], {method: "POST", body: post[1],
                                           headers: {"Content-Type": "application/json"}})).status]""",
                [f"/v2/createDir?directory={quote(str(folders['made'] / 'own'))}", posts[0]],
            )
            assert own == [200, 201]
            assert sorted(p.name for p in folders["made"].iterdir()) == ["own", "posted"]
        finally:
            await browser.close()


def refused_requests(caplog: pytest.LogCaptureFixture) -> set[tuple[str, str]]:
    """(method, path) of the requests Butler logged as refused."""
    found = set()
    for record in caplog.records:
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Refused")
            and isinstance(record.args, tuple)
        ):
            method, target = record.args[:2]
            found.add((str(method), str(target).partition("?")[0]))
    return found
