"""MQTT against a real Mosquitto, and Slack against a real local webhook server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web

from butler import slack as slack_module
from tests.certs import make_certs
from tests.conftest import Broker, StartButler, base_config, free_port
from tests.test_task_start import APP1, APP2, APP3, butler_config, started_counts


def mqtt_config(port: int, **mqtt: Any) -> dict[str, Any]:
    document = base_config(mqttPublishMessage=True, butlerping=True)
    document["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": port, **mqtt}
    return document


async def wait_connected(base: str, http: aiohttp.ClientSession, topic: str = "t/ready") -> None:
    async with asyncio.timeout(15):
        while True:
            async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": topic, "message": "x"}) as r:
                if r.status == 201:
                    return
            await asyncio.sleep(0.1)


@pytest.fixture
async def subscriber(broker: Broker) -> AsyncIterator[Any]:
    async def listen(topic: str) -> aiomqtt.Client:
        client = aiomqtt.Client("127.0.0.1", broker.port)
        await client.__aenter__()
        await client.subscribe(topic)
        clients.append(client)
        return client

    clients: list[aiomqtt.Client] = []
    yield listen
    for client in clients:
        await client.__aexit__(None, None, None)


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(10):
        async for message in client.messages:
            return message
    raise AssertionError("no message")


async def test_publish_through_rest_and_v2(
    start_butler: StartButler, broker: Broker, subscriber: Any
) -> None:
    listener = await subscriber("abc/#")
    base = await start_butler(mqtt_config(broker.port))
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http, "abc/ready")
        assert (await next_message(listener)).payload == b"x"
        body = {"topic": "abc/def", "message": 12345, "extra": "kept"}
        async with http.put(f"{base}/v4/mqttpublishmessage", json=body) as r:
            assert (r.status, await r.json()) == (
                201,
                {"topic": "abc/def", "message": "12345", "extra": "kept"},
            )
        received = await next_message(listener)
        assert (str(received.topic), received.payload) == ("abc/def", b"12345")
        # The seed's two curl examples.
        async with http.get(f"{base}/v2/mqttPublishMessage?topic=abc/def&message=ButlerTalksMQTT") as r:
            assert await r.json() == {"topic": "abc/def", "message": "ButlerTalksMQTT"}
        assert (await next_message(listener)).payload == b"ButlerTalksMQTT"
        async with http.get(f"{base}/v2/mqttPublishMessage?topic=abc%2Fdef&message=Butler+talks+MQTT") as r:
            assert await r.json() == {"topic": "abc/def", "message": "Butler talks MQTT"}
        assert (await next_message(listener)).payload == b"Butler talks MQTT"
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "abc/def"}) as r:
            assert r.status == 400
            assert (await r.json())["message"] == "body must have required property 'message'"
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "a", "message": {"x": 1}}) as r:
            assert (await r.json())["message"] == "body/message must be string"


async def test_mqtt_off_or_broker_away_is_a_503(start_butler: StartButler) -> None:
    off = base_config(mqttPublishMessage=True)
    base = await start_butler(off)
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "a", "message": "b"}) as r:
            assert r.status == 503 and "not enabled" in (await r.json())["message"]
        away = await start_butler(mqtt_config(free_port()))  # start-up does not wait for the broker
        async with http.put(f"{away}/v4/mqttpublishmessage", json={"topic": "a", "message": "b"}) as r:
            assert r.status == 503 and "cannot be reached" in (await r.json())["message"]


async def test_reconnects_after_the_broker_restarts(start_butler: StartButler, broker: Broker) -> None:
    base = await start_butler(mqtt_config(broker.port))
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
        broker.stop()
        await asyncio.sleep(0.5)
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "a", "message": "b"}) as r:
            assert r.status == 503
        broker.start()
        await wait_connected(base, http)
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe("back/#")
            async with http.put(
                f"{base}/v4/mqttpublishmessage", json={"topic": "back/1", "message": "hi"}
            ) as r:
                assert r.status == 201
            assert (await next_message(client)).payload == b"hi"


async def test_broker_with_password(start_butler: StartButler, tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    hashing = await asyncio.create_subprocess_exec(
        "mosquitto_passwd", "-b", str(passwords), "butler", "s3cret"
    )
    assert await hashing.wait() == 0
    secured = Broker(tmp_path, f"allow_anonymous false\npassword_file {passwords}\n")
    secured.start()
    try:
        good = await start_butler(mqtt_config(secured.port, username="butler", password="s3cret"))
        bad = await start_butler(mqtt_config(secured.port, username="butler", password="wrong"))
        async with aiohttp.ClientSession() as http:
            await wait_connected(good, http)
            await asyncio.sleep(1)
            async with http.put(f"{bad}/v4/mqttpublishmessage", json={"topic": "a", "message": "b"}) as r:
                assert r.status == 503
    finally:
        secured.stop()


async def test_broker_with_tls(start_butler: StartButler, tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls_broker = Broker(
        tmp_path, f"allow_anonymous true\ncafile {certs.ca}\ncertfile {certs.cert}\nkeyfile {certs.key}\n"
    )
    tls_broker.start()
    try:
        base = await start_butler(mqtt_config(tls_broker.port, tls={"enable": True, "ca": str(certs.ca)}))
        async with aiohttp.ClientSession() as http:
            await wait_connected(base, http)
    finally:
        tls_broker.stop()


async def test_task_start_from_mqtt(
    start_butler: StartButler, broker: Broker, simulator: Any, site_certs: Any, subscriber: Any
) -> None:
    document = butler_config(simulator, site_certs)
    document["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    document["Butler"]["restServerEndpointsEnable"]["mqttPublishMessage"] = True
    results = await subscriber("qliksense/start_task/result")
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish("qliksense/start_task", APP1["taskId"].upper())
        first = json.loads((await next_message(results)).payload)
        assert first["result"]["tasksId"]["started"] == [APP1]
        await client.publish(
            "qliksense/start_task", json.dumps([{"type": "starttasktag", "payload": {"tag": "startTask1"}}])
        )
        second = json.loads((await next_message(results)).payload)
        assert second["result"]["tasksTag"] == [APP1, APP2, APP3]
        await client.publish("qliksense/start_task", "not a task id")
        third = json.loads((await next_message(results)).payload)
        assert third == {"request": "not a task id", "error": "the payload is neither a task id nor JSON"}
    counts = await started_counts(simulator)
    assert counts[APP1["taskId"]] == 2 and counts[APP2["taskId"]] == 1


# --- Slack ---------------------------------------------------------------------------------------------


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[tuple[int, str, float]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        status, text, delay = self.answers.pop(0) if self.answers else (200, "ok", 0.0)
        await asyncio.sleep(delay)
        return web.Response(status=status, text=text)


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[Webhook, str]]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/services/T/B/X", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield hook, f"http://127.0.0.1:{runner.addresses[0][1]}/services/T/B/X"
    await runner.cleanup()


def slack_config(url: str) -> dict[str, Any]:
    document = base_config(slackPostMessage=True)
    document["Butler"]["slackNotification"] = {"enable": False, "restMessage": {"webhookURL": url}}
    return document


async def test_slack_message_as_sent(start_butler: StartButler, webhook: tuple[Webhook, str]) -> None:
    hook, url = webhook
    base = await start_butler(slack_config(url))
    body = {
        "channel": "#sense-test-slack",
        "msg": "Butler posting to *Slack* <!channel> & co",
        "from_user": "sa_scheduler",
        "emoji": ":test:",
    }
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{base}/v4/slackpostmessage", json=body) as r:
            assert (r.status, await r.json()) == (201, body)
        text = "Butler posting to *Slack* &lt;!channel&gt; &amp; co"
        assert hook.received == [
            {
                "username": "sa_scheduler",
                "channel": "#sense-test-slack",
                "text": text,
                "icon_emoji": ":test:",
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
            }
        ]
        # The seed's v2 example.
        async with http.get(
            f"{base}/v2/slackPostMessage",
            params={
                "channel": "#sense-test-slack",
                "msg": "Butler posting to *Slack*",
                "from_user": "sa_scheduler",
                "emoji": ":test:",
            },
        ) as r:
            assert await r.json() == {
                "channel": "#sense-test-slack",
                "msg": "Butler posting to *Slack*",
                "from_user": "sa_scheduler",
                "emoji": ":test:",
            }
        async with http.put(f"{base}/v4/slackpostmessage", json={"channel": "c", "msg": "m"}) as r:
            assert (await r.json())["message"] == "body must have required property 'from_user'"


async def test_slack_retries_and_failures(
    start_butler: StartButler, webhook: tuple[Webhook, str], monkeypatch: Any
) -> None:
    hook, url = webhook
    monkeypatch.setattr(slack_module, "RETRY_BUDGET_SECONDS", 2.0)
    monkeypatch.setattr(slack_module, "REQUEST_TIMEOUT_SECONDS", 0.5)
    base = await start_butler(slack_config(url))
    body = {"channel": "c", "msg": "m", "from_user": "u"}
    async with aiohttp.ClientSession() as http:
        hook.answers = [(500, "oops", 0), (200, "ok", 0)]
        async with http.put(f"{base}/v4/slackpostmessage", json=body) as r:
            assert r.status == 201
        assert len(hook.received) == 2
        hook.answers = [(404, "no_service", 0)]
        async with http.put(f"{base}/v4/slackpostmessage", json=body) as r:
            assert (r.status, (await r.json())["message"]) == (502, "Slack answered 404: no_service")
        hook.answers = [(200, "ok", 5.0)] * 10
        started = asyncio.get_running_loop().time()
        async with http.put(f"{base}/v4/slackpostmessage", json=body) as r:
            assert r.status == 502 and "cannot be reached" in (await r.json())["message"]
        assert asyncio.get_running_loop().time() - started < 4
