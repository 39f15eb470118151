"""The OpenAPI document: valid, complete, and what the server publishes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from aiohttp import web
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from butler.app import build_router
from butler.apps import AppService
from butler.config import ENDPOINT_FLAGS, parse_config
from butler.config.alerts import WebhookSettings
from butler.config.settings import (
    CertificateSettings,
    EngineSettings,
    PrometheusSettings,
    QrsSettings,
    StartTaskFilter,
    StatusPageSettings,
)
from butler.http.docs import ApiDocument, load_openapi
from butler.kvstore.memory import MemoryStore
from butler.metrics import Metrics
from butler.qlik.qrs import QrsClient
from butler.services import Services
from butler.task_start import TaskStarter
from tests.conftest import Broker, StartButler, base_config, udp_ports
from tests.test_apps import app_id, engine_config
from tests.test_events import session_datagram, udp_config
from tests.test_messaging import wait_connected
from tests.test_task_start import APP1, APP2, APP3, butler_config


def test_document_is_valid_openapi() -> None:
    validate(load_openapi())  # type: ignore[arg-type]


def test_every_route_is_documented_and_every_operation_served(tmp_path: object) -> None:
    every_flag = base_config(**dict.fromkeys(ENDPOINT_FLAGS, True))
    settings = parse_config(every_flag, base_dir=tmp_path)  # type: ignore[arg-type]
    document = ApiDocument(load_openapi())
    # Services need not work here, only exist, so that every route module registers its routes.
    qrs = QrsClient(QrsSettings(use_ssl=False), CertificateSettings())
    starter = TaskStarter(qrs, StartTaskFilter(), None)
    apps = AppService(EngineSettings(use_ssl=False), CertificateSettings(), starter)
    # An alert channel on, so that the alert routes are registered too; metrics on, for /metrics; the
    # status page on.
    settings = dataclasses.replace(
        settings,
        alerts=dataclasses.replace(settings.alerts, webhook=WebhookSettings(enable=True)),
        prometheus=PrometheusSettings(enable=True),
        status_page=StatusPageSettings(enable=True),
    )
    context = Services(settings, key_values=MemoryStore(), task_starter=starter, apps=apps)
    context.metrics = Metrics(context)
    router = build_router(context, document)
    registered = {(r.method, r.path) for r in router.routes if r.documented}
    assert registered == set(document.operations())
    for route in router.routes:
        if route.documented:
            operation = document.operation(route.method, route.path)
            assert operation is not None and operation.get("operationId"), route.path
            assert operation.get("responses"), route.path


async def test_served_documents(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler(base_config(butlerping=True))
    async with http.get(f"{base}/documentation/json") as response:
        assert response.status == 200
        served = await response.json()
    validate(served)
    # Only what this server has registered is published.
    assert set(served["paths"]) == {"/v4/butlerping", "/v2/butlerPing", "/v2/butlerping", "/health"}
    assert served["servers"] == [{"url": "/"}]
    # No heading without operations in Swagger UI.
    assert [tag["name"] for tag in served["tags"]] == ["Butler", "Legacy v2"]
    async with http.get(f"{base}/documentation/yaml") as response:
        assert response.status == 200
        assert yaml.safe_load(await response.text()) == served


async def test_swagger_ui_works_offline(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    async with http.get(f"{base}/documentation") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        page = await response.text()
    assert "http://" not in page and "https://" not in page  # no CDN
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert f"/documentation/static/{asset}" in page
        async with http.get(f"{base}/documentation/static/{asset}") as response:
            assert response.status == 200
            assert len(await response.read()) > 10_000
    for bad in ("..%2F..%2Fetc%2Fpasswd", ".hidden", "missing.js"):
        async with http.get(f"{base}/documentation/static/{bad}") as response:
            assert response.status == 404


# --- Real answers against the document ---------------------------------------------------------------


@dataclass
class Call:
    """One request of the scenario. ``template`` is the path as the document names it."""

    method: str
    template: str
    url: str
    status: int
    body: Any = None


def inline_refs(node: Any, document: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` replaced by what it points to (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return inline_refs(target, document)
        return {key: inline_refs(value, document) for key, value in node.items()}
    if isinstance(node, list):
        return [inline_refs(value, document) for value in node]
    return node


def closed(schema: Any) -> Any:
    """The schema with every object that lists its properties closed to others, so that an answer with a
    field the document does not mention fails too."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(value) for value in schema]
    return schema


def mismatches(document: dict[str, Any], call: Call, status: int, media: str, text: str) -> list[str]:
    """What in this answer the document does not say: its status, its content type, its body."""
    where = f"{call.method} {call.url} -> {status}"
    if status != call.status:
        return [f"{where}: the scenario expects {call.status}: {text[:300]}"]
    operation = document["paths"][call.template][call.method.lower()]
    response = operation["responses"].get(str(status)) or operation["responses"].get("default")
    if response is None:
        return [f"{where}: status not documented"]
    content = inline_refs(response, document).get("content", {})
    if not content:
        return [] if not text else [f"{where}: the document says no body, the answer has one"]
    if media not in content:
        return [f"{where}: content type {media} not documented (only {sorted(content)})"]
    schema = closed(content[media].get("schema", {}))
    # JSON sent as text/plain, as upstream sends some answers, is described by the schema of its JSON; a
    # page is a string.
    plain = media in ("text/plain", "text/html")
    instance = text if schema.get("type") == "string" and plain else json.loads(text)
    return [
        f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
        for error in OAS30Validator(schema).iter_errors(instance)
    ]


@pytest.fixture
async def slack_webhook() -> AsyncIterator[str]:
    async def accept(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    await runner.cleanup()


async def dead_letter(base: str) -> str:
    """The id of the alert delivery that became a dead letter, once the alert's deliveries are done."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(20):
        while True:
            async with http.get(f"{base}/v4/alerts") as answer:
                deliveries = [d for a in await answer.json() for d in a["deliveries"]]
            if len(deliveries) == 2 and all(d["state"] != "pending" for d in deliveries):
                return str(next(d["id"] for d in deliveries if d["state"] == "dead"))
            await asyncio.sleep(0.05)


async def test_real_answers_match_the_document(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    slack_webhook: str,
    tmp_path: Path,
) -> None:
    task_port, session_port = udp_ports()
    config = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    butler = config["Butler"]
    butler["restServerEndpointsEnable"] = base_config(**dict.fromkeys(ENDPOINT_FLAGS, True))["Butler"][
        "restServerEndpointsEnable"
    ]
    butler["configEngine"] = engine_config(simulator)
    butler["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    butler["slackNotification"] = {"enable": False, "restMessage": {"webhookURL": slack_webhook}}
    # Alerts on failed reloads to a webhook that takes them and to one that does not exist (a dead letter).
    hooks = [(slack_webhook, "taken"), (slack_webhook.removesuffix("hook") + "nowhere", "refused")]
    butler["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "webhooks": [{"description": d, "webhookURL": url, "httpMethod": "POST"} for url, d in hooks]
        },
    }
    folders = {name: tmp_path / name for name in ("from", "to", "delete", "qvd", "outside", "made")}
    for folder in folders.values():
        folder.mkdir()
    for name in ("copied.txt", "moved.txt"):
        (folders["from"] / name).write_text(name)
    (folders["delete"] / "deleted.txt").write_text("x")
    pair = [{"fromDirectory": str(folders["from"]), "toDirectory": str(folders["to"])}]
    butler["fileCopyApprovedDirectories"] = butler["fileMoveApprovedDirectories"] = pair
    butler["fileDeleteApprovedDirectories"] = [str(folders["delete"])]
    butler["configDirectories"] = {"qvdPath": str(folders["qvd"])}
    schedules = tmp_path / "schedule.yaml"
    schedules.write_text(
        "butlerSchedule:\n  - name: Mornings\n    cronSchedule: '0 6 * * *'\n    timezone: Europe/Stockholm\n"
        f"    qlikSenseTaskId: {APP1['taskId']}\n    startupState: started\n    id: sched-1\n"
    )
    butler["scheduler"] = {"enable": True, "configfile": str(schedules)}
    butler["prometheus"] = {"enable": True}
    butler["auditLog"] = {"enable": True, "file": str(tmp_path / "audit.jsonl")}
    butler["statusPage"] = {"enable": True}
    base = await start_butler(config)

    failing = next(t["id"] for t in simulator.site.tasks.values() if t["name"] == "Reload Failing App")
    simulator.udp.targets = [("127.0.0.1", task_port)]
    simulator.scheduler.start(failing)
    dead = await dead_letter(base)

    app1, app3 = (app_id(simulator, name) for name in ("App1", "App3"))
    unknown = "00000000-0000-4000-8000-00000000dead"
    item = {"type": "keyvaluestore", "payload": {"namespace": "ns", "key": "p", "value": "v", "ttl": 60000}}
    start_body = [
        item,
        {"type": "starttaskid", "payload": {"taskId": APP2["taskId"]}},
        {"type": "starttasktag", "payload": {"tag": "startTask1"}},
        {
            "type": "starttaskcustomproperty",
            "payload": {"customPropertyName": "taskGroup", "customPropertyValue": "tasks1"},
        },
    ]
    schedule = {
        "name": "Evenings",
        "cronSchedule": "0 18 * * 1-5",
        "timezone": "America/New_York",
        "qlikSenseTaskId": APP1["taskId"],
        "startupState": "stopped",
        "tags": ["reports"],
    }
    calls = [
        Call("GET", "/v4/butlerping", "/v4/butlerping", 200),
        Call("GET", "/v2/butlerPing", "/v2/butlerPing", 200),
        Call("GET", "/v2/butlerping", "/v2/butlerping", 200),
        Call("GET", "/v4/configfile/endpointsenabled", "/v4/configfile/endpointsenabled", 200),
        Call("GET", "/health", "/health", 200),
        Call("GET", "/status", "/status", 200),
        Call("GET", "/status", "/status?fragment=true", 200),
        Call("GET", "/status", "/status?fragment=2", 400),
        Call("GET", "/status/data", "/status/data", 200),
        Call("GET", "/status/login", "/status/login", 200),
        Call("POST", "/status/login", "/status/login", 204),
        Call("POST", "/status/logout", "/status/logout", 204),
        Call("GET", "/v4/licenses/releases", "/v4/licenses/releases?limit=5", 200),
        Call("GET", "/v4/licenses/releases", "/v4/licenses/releases?limit=0", 400),
        Call("GET", "/metrics", "/metrics?ignored=1", 200),
        Call("GET", "/v4/base62tobase16", "/v4/base62tobase16?base62=6DMW88LpSok9Z7P7hUK0wv7bF", 200),
        Call("GET", "/v4/base62tobase16", "/v4/base62tobase16?base62=-", 400),
        Call("GET", "/v4/base16tobase62", "/v4/base16tobase62?base16=3199af08bfeeaf5d", 200),
        Call("GET", "/v4/base16tobase62", "/v4/base16tobase62", 400),
        Call("GET", "/v2/base16ToBase62", "/v2/base16ToBase62?base16=1f5848b5f8ba4e85a57c7ca55a9e", 200),
        Call("GET", "/v2/base62ToBase16", "/v2/base62ToBase16?base62=0X96HlegVXzQfJVIBWC31", 200),
        Call("GET", "/v2/base62ToBase16", "/v2/base62ToBase16?base62=-", 400),
        # Key-value store
        Call(
            "POST",
            "/v4/keyvalues/{namespace}",
            "/v4/keyvalues/ns",
            201,
            {"key": "k", "value": "v", "ttl": 60000},
        ),
        Call("POST", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns", 201, {"key": "n"}),
        Call("POST", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns", 400, {"key": "k", "ttl": -1}),
        Call("GET", "/v4/keyvaluesnamespaces", "/v4/keyvaluesnamespaces", 200),
        Call("GET", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns?key=k", 200),
        Call("GET", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns?key=nope", 400),
        Call("GET", "/v4/keyvalues/{namespace}/keyexists", "/v4/keyvalues/ns/keyexists?key=k", 200),
        Call("GET", "/v4/keyvalues/{namespace}/keyexists", "/v4/keyvalues/ns/keyexists?key=nope", 200),
        Call("GET", "/v4/keyvalues/{namespace}/keyexists", "/v4/keyvalues/none/keyexists?key=k", 400),
        Call("GET", "/v4/keylist/{namespace}", "/v4/keylist/ns", 200),
        Call("GET", "/v4/keylist/{namespace}", "/v4/keylist/none", 400),
        Call("DELETE", "/v4/keyvalues/{namespace}/{key}", "/v4/keyvalues/ns/k", 204),
        Call("DELETE", "/v4/keyvalues/{namespace}/{key}", "/v4/keyvalues/ns/k", 400),
        Call("DELETE", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns", 204),
        Call("DELETE", "/v4/keyvalues/{namespace}", "/v4/keyvalues/ns", 400),
        # Tasks
        Call(
            "PUT", "/v4/reloadtask/{taskId}/start", f"/v4/reloadtask/{APP1['taskId']}/start", 200, start_body
        ),
        Call(
            "POST",
            "/v4/reloadtask/{taskId}/start",
            "/v4/reloadtask/-/start?allTaskIdsMustExist=true",
            200,
            [item],
        ),
        Call(
            "PUT",
            "/v4/reloadtask/{taskId}/start",
            f"/v4/reloadtask/{APP3['taskId']}/start?wait=true&timeout=30",
            200,
            [],
        ),
        Call(
            "PUT",
            "/v4/reloadtask/{taskId}/start",
            "/v4/reloadtask/-/start",
            400,
            [{"type": "keyvaluestore", "payload": {}}],
        ),
        Call("GET", "/v4/reloadtask/{taskId}/status", f"/v4/reloadtask/{APP3['taskId']}/status", 200),
        Call("GET", "/v4/reloadtask/{taskId}/status", "/v4/reloadtask/x/status", 400),
        Call("GET", "/v4/reloadtask/{taskId}/status", f"/v4/reloadtask/{unknown}/status", 404),
        Call("GET", "/v2/senseStartTask", f"/v2/senseStartTask?taskId={APP1['taskId']}", 200),
        Call("GET", "/v2/senseStartTask", "/v2/senseStartTask?taskId=nope", 400),
        # Messages
        Call(
            "PUT", "/v4/mqttpublishmessage", "/v4/mqttpublishmessage", 201, {"topic": "t/x", "message": "m"}
        ),
        Call("PUT", "/v4/mqttpublishmessage", "/v4/mqttpublishmessage", 400, {"topic": "t/x"}),
        Call("GET", "/v2/mqttPublishMessage", "/v2/mqttPublishMessage?topic=t/x&message=m", 200),
        Call("GET", "/v2/mqttPublishMessage", "/v2/mqttPublishMessage?topic=t/x", 400),
        Call(
            "PUT",
            "/v4/slackpostmessage",
            "/v4/slackpostmessage",
            201,
            {"channel": "#c", "from_user": "u", "msg": "m", "emoji": ":x:"},
        ),
        Call("PUT", "/v4/slackpostmessage", "/v4/slackpostmessage", 400, {"channel": "#c"}),
        Call("GET", "/v2/slackPostMessage", "/v2/slackPostMessage?channel=%23c&msg=m&from_user=u", 200),
        # No New Relic account is configured: upstream's empty 200.
        Call("POST", "/v4/newrelic/event", "/v4/newrelic/event", 200, {"eventType": "qs_test"}),
        Call("POST", "/v4/newrelic/event", "/v4/newrelic/event", 400, {"attributes": []}),
        Call(
            "POST",
            "/v4/newrelic/metric",
            "/v4/newrelic/metric",
            200,
            {"name": "m", "type": "gauge", "value": 1},
        ),
        Call(
            "POST",
            "/v4/newrelic/metric",
            "/v4/newrelic/metric",
            400,
            {"name": "m", "type": "count", "value": 1},
        ),
        # Files
        Call(
            "PUT",
            "/v4/filecopy",
            "/v4/filecopy",
            201,
            {"fromFile": str(folders["from"] / "copied.txt"), "toFile": str(folders["to"] / "copied.txt")},
        ),
        Call(
            "PUT",
            "/v4/filecopy",
            "/v4/filecopy",
            403,
            {"fromFile": str(folders["outside"] / "a.txt"), "toFile": str(folders["to"] / "a.txt")},
        ),
        Call("PUT", "/v4/filecopy", "/v4/filecopy", 400, {}),
        Call(
            "PUT",
            "/v4/filemove",
            "/v4/filemove",
            201,
            {"fromFile": str(folders["from"] / "moved.txt"), "toFile": str(folders["to"] / "moved.txt")},
        ),
        Call(
            "DELETE",
            "/v4/filedelete",
            "/v4/filedelete",
            204,
            {"deleteFile": str(folders["delete"] / "deleted.txt")},
        ),
        Call(
            "DELETE",
            "/v4/filedelete",
            "/v4/filedelete",
            403,
            {"deleteFile": str(folders["outside"] / "a.txt")},
        ),
        Call("POST", "/v4/createdir", "/v4/createdir", 201, {"directory": str(folders["made"] / "a")}),
        Call("POST", "/v4/createdirqvd", "/v4/createdirqvd", 201, {"directory": "b/c"}),
        Call("GET", "/v2/createDir", f"/v2/createDir?directory={quote(str(folders['made'] / 'd'))}", 200),
        Call("GET", "/v2/createDirQVD", "/v2/createDirQVD?directory=e", 200),
        Call("GET", "/v2/createDirQVD", "/v2/createDirQVD", 400),
        # Apps
        Call("GET", "/v4/apps/list", "/v4/apps/list", 200),
        Call("GET", "/v4/senselistapps", "/v4/senselistapps", 200),
        Call("GET", "/v2/senseListApps", "/v2/senseListApps", 200),
        Call("GET", "/v4/app/{appId}/dump", f"/v4/app/{app1}/dump", 200),
        Call("GET", "/v4/app/{appId}/dump", f"/v4/app/{unknown}/dump", 404),
        Call("GET", "/v4/senseappdump/{appId}", f"/v4/senseappdump/{app1}", 200),
        Call("GET", "/v2/senseAppDump", f"/v2/senseAppDump?appId={app1}", 200),
        Call("GET", "/v2/senseAppDump", "/v2/senseAppDump", 400),
        Call("PUT", "/v4/app/{appId}/reload", f"/v4/app/{app3}/reload", 201, {}),
        Call(
            "PUT",
            "/v4/app/{appId}/reload",
            f"/v4/app/{app3}/reload?wait=true",
            201,
            {"startQSEoWTaskOnSuccess": [APP1["taskId"]]},
        ),
        Call("PUT", "/v4/app/{appId}/reload", f"/v4/app/{unknown}/reload", 404, {}),
        Call("PUT", "/v4/app/{appId}/reload", f"/v4/app/{app3}/reload", 400, {"reloadMode": "full"}),
        # Active users (one session, sent below)
        Call("GET", "/v4/activeusercount", "/v4/activeusercount", 200),
        Call("GET", "/v4/activeusercount", "/v4/activeusercount?proxyHost=sense1", 200),
        Call("GET", "/v4/activeusers", "/v4/activeusers", 200),
        Call("GET", "/v2/activeUserCount", "/v2/activeUserCount", 200),
        Call("GET", "/v2/activeUsers", "/v2/activeUsers", 200),
        # Scheduler (the file's schedule sched-1)
        Call("GET", "/v4/schedules", "/v4/schedules", 200),
        Call("GET", "/v4/schedules", "/v4/schedules?id=sched-1", 200),
        Call("GET", "/v4/schedules", "/v4/schedules?id=nope", 400),
        Call("POST", "/v4/schedules", "/v4/schedules", 201, schedule),
        Call("POST", "/v4/schedules", "/v4/schedules", 400, {**schedule, "cronSchedule": "0 0 1 13 *"}),
        Call("POST", "/v4/schedules", "/v4/schedules", 400, {**schedule, "startupState": "later"}),
        Call("PUT", "/v4/schedules/{scheduleId}", "/v4/schedules/sched-1", 200, {**schedule, "name": "Noon"}),
        Call("PUT", "/v4/schedules/{scheduleId}", "/v4/schedules/nope", 400, schedule),
        Call("PUT", "/v4/schedules/{scheduleId}/stop", "/v4/schedules/sched-1/stop", 200),
        Call("PUT", "/v4/schedules/{scheduleId}/start", "/v4/schedules/sched-1/start", 200),
        Call("PUT", "/v4/schedules/{scheduleId}/start", "/v4/schedules/nope/start", 400),
        Call("PUT", "/v4/schedules/startall", "/v4/schedules/startall", 200),
        Call("PUT", "/v4/schedules/stopall", "/v4/schedules/stopall", 200),
        Call("GET", "/v4/schedules/status", "/v4/schedules/status", 200),
        Call("GET", "/v4/schedules/{scheduleId}/runs", "/v4/schedules/sched-1/runs", 200),
        Call("GET", "/v4/schedules/{scheduleId}/runs", "/v4/schedules/nope/runs", 404),
        Call("DELETE", "/v4/schedules/{scheduleId}", "/v4/schedules/sched-1", 204),
        Call("DELETE", "/v4/schedules/{scheduleId}", "/v4/schedules/sched-1", 400),
        # Alerts (the failed reload's, above)
        Call("GET", "/v4/alerts", "/v4/alerts", 200),
        Call("GET", "/v4/alerts", "/v4/alerts?state=dead&channel=webhook&limit=5", 200),
        Call("GET", "/v4/alerts", "/v4/alerts?state=lost", 400),
        Call("POST", "/v4/alerts/{id}/retry", f"/v4/alerts/{dead}/retry", 202),
        Call("POST", "/v4/alerts/{id}/retry", f"/v4/alerts/{unknown}/retry", 404),
        # The audit log of the calls above
        Call("GET", "/v4/audit", "/v4/audit?result=4xx&limit=5", 200),
        Call("GET", "/v4/audit", "/v4/audit?since=soon", 400),
    ]
    document = load_openapi()
    problems: list[str] = []
    answered: set[tuple[str, str]] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(
            session_datagram("Start session", "sense1", "LAB", "goran"), ("127.0.0.1", session_port)
        )
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
        for call in calls:
            async with http.request(call.method, base + call.url, json=call.body) as response:
                text = await response.text()
                problems += mismatches(document, call, response.status, response.content_type, text)
                if response.status < 300:
                    answered.add((call.method, call.template))
    assert not problems, "\n".join(problems)
    # Every operation of the document was answered successfully at least once.
    assert sorted(set(ApiDocument(document).operations()) - answered) == []
