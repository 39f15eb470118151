"""MQTT against a real Mosquitto, and Slack against a real local webhook server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import aiomqtt
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from butler import mqtt as mqtt_module
from butler import slack as slack_module
from butler.config.settings import MqttSettings
from butler.mqtt import InvalidMessage, MqttClient, _Outgoing, check_topic
from butler.task_start import TaskStarter
from tests.certs import make_certs
from tests.conftest import Broker, StartButler, base_config, free_port, udp_ports
from tests.test_events import session_datagram, udp_config
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


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="freezes the broker with SIGSTOP")
async def test_a_503_after_waiting_means_what_it_says(
    start_butler: StartButler, broker: Broker, subscriber: Any, monkeypatch: Any
) -> None:
    """A caller told 503 because the broker did not take its message in time: a message that was still
    queued is never sent later (a load script that tries again would publish it twice); one already
    handed to the broker is answered as such."""
    monkeypatch.setattr(mqtt_module, "SEND_TIMEOUT_SECONDS", 1.0)
    listener = await subscriber("late/#")
    base = await start_butler(mqtt_config(broker.port, qos=1))
    assert broker.process is not None
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http, "late/ready")
        broker.process.send_signal(signal.SIGSTOP)  # the connection stays up, nothing is acknowledged
        try:
            answers = []
            for message in ("handed", "queued"):
                body = {"topic": "late/x", "message": message}
                async with http.put(f"{base}/v4/mqttpublishmessage", json=body) as r:
                    answers.append((r.status, (await r.json())["message"]))
        finally:
            broker.process.send_signal(signal.SIGCONT)
        assert answers[0][0] == 503 and answers[0][1].endswith(
            "handed to the broker and may still be delivered"
        )
        assert answers[1][0] == 503 and answers[1][1].endswith("the message was not sent")
        await wait_connected(base, http, "late/end")
    received: list[tuple[str, bytes]] = []
    while not received or received[-1][0] != "late/end":  # up to wait_connected's last message
        message = await next_message(listener)
        received.append((str(message.topic), bytes(message.payload)))
    assert ("late/x", b"handed") in received and ("late/x", b"queued") not in received


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


async def mqtt_task_starts(
    start_butler: StartButler, broker: Broker, simulator: Any, site_certs: Any, subscriber: Any
) -> Any:
    """Butler on the simulated site taking task starts by MQTT, connected to the broker; the messages of
    the result topic."""
    document = butler_config(simulator, site_certs)
    document["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    document["Butler"]["restServerEndpointsEnable"]["mqttPublishMessage"] = True
    results = await subscriber("qliksense/start_task/result")
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
    return results


async def test_task_start_from_mqtt(
    start_butler: StartButler, broker: Broker, simulator: Any, site_certs: Any, subscriber: Any
) -> None:
    results = await mqtt_task_starts(start_butler, broker, simulator, site_certs, subscriber)
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


async def test_task_start_message_with_a_bad_item_names_it_among_the_items(
    start_butler: StartButler, broker: Broker, simulator: Any, site_certs: Any, subscriber: Any
) -> None:
    results = await mqtt_task_starts(start_butler, broker, simulator, site_certs, subscriber)
    tag = {"type": "starttasktag", "payload": {"tag": "startTask1"}}
    cases = [
        ([tag, {"type": "starttaskid"}], "items/1/payload must be object"),
        ({"items": [{"type": "starttask"}]}, "items/0/type must be equal to one of the allowed values"),
        ({"items": [tag, 5]}, "items/1 must be object"),
        ({"items": {"type": "starttasktag"}}, "items must be array"),
        (
            [{"type": "keyvaluestore", "payload": {"namespace": "n", "key": "k", "value": "v", "ttl": -1}}],
            "items/0/payload/ttl must be 0 (never expires) or from 1 to 315360000000 milliseconds "
            "(10 years), got -1.0",
        ),
    ]
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for request, error in cases:
            await client.publish("qliksense/start_task", json.dumps(request))
            answer = json.loads((await next_message(results)).payload)
            assert answer == {"request": json.dumps(request), "error": error}
    assert await started_counts(simulator) == {}


async def test_every_task_start_message_is_answered(
    start_butler: StartButler,
    broker: Broker,
    simulator: Any,
    site_certs: Any,
    subscriber: Any,
    monkeypatch: Any,
) -> None:
    results = await mqtt_task_starts(start_butler, broker, simulator, site_certs, subscriber)
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        # Valid JSON, but over the size limit: the answer says so, not "neither a task id nor JSON".
        big = json.dumps(
            [{"type": "starttaskid", "payload": {"taskId": APP1["taskId"]}, "pad": "x" * 1_100_000}]
        )
        await client.publish("qliksense/start_task", big)
        answer = json.loads((await next_message(results)).payload)
        assert answer["error"] == (
            f"the payload has {len(big):,} bytes; a task-start message may have at most 1,048,576 (1 MiB), "
            "as a REST body"
        )

        # A fault of Butler's own is answered too, and the client goes on.
        async def broken(*args: Any) -> Any:
            raise TypeError("unexpected")

        monkeypatch.setattr(TaskStarter, "start", broken)
        await client.publish("qliksense/start_task", APP1["taskId"])
        answer = json.loads((await next_message(results)).payload)
        assert answer["error"].startswith("Butler failed on this message (Internal Server Error)")
        monkeypatch.undo()
        await client.publish("qliksense/start_task", APP2["taskId"])
        answer = json.loads((await next_message(results)).payload)
        assert answer["result"]["tasksId"]["started"] == [APP2]
    assert await started_counts(simulator) == {APP2["taskId"]: 1}


# --- Nothing a publisher sends can stop the client ----------------------------------------------------------


class LoggingBroker(Broker):
    """A broker that logs every connection, so a test can count how often a client connected."""

    def __init__(self, directory: Path, extra: str = "") -> None:
        self.log = directory / "mosquitto.log"
        super().__init__(directory, f"allow_anonymous true\nlog_dest file {self.log}\n{extra}")

    def connections(self, client_id: str) -> int:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return sum("New client connected" in line and f" as {client_id} " in line for line in lines)


@pytest.fixture
def logging_broker(tmp_path: Path) -> Any:
    started: list[LoggingBroker] = []

    def start(extra: str = "") -> LoggingBroker:
        running = LoggingBroker(tmp_path, extra)
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


async def health(base: str, http: aiohttp.ClientSession) -> dict[str, Any]:
    async with http.get(f"{base}/health") as r:
        return (await r.json())["mqtt"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("topic", "rule"),
    [
        ("", "must not be empty"),
        ("load/#", "wildcard '#' (at character 6)"),
        ("sense/+/count", "wildcard '+'"),
        ("a\ud800", "valid UTF-8: it has a lone surrogate U+D800"),
        ("a\x00b", "U+0000"),
        ("line\nbreak", "control character U+000A"),
        ("a\x85", "control character U+0085"),
        ("a\ufffe", "non-character U+FFFE"),
        ("a\U0010ffff", "non-character U+10FFFF"),
        ("a" * 65_536, "at most 65,535 bytes in UTF-8; it has 65,536"),
        ("é" * 32_768, "it has 65,536"),
    ],
)
def test_topic_rules(topic: str, rule: str) -> None:
    with pytest.raises(InvalidMessage, match=re.escape(rule)):
        check_topic(topic)


@pytest.mark.parametrize("topic", ["a", "/", "$share-less/x", "sense1/count", "ü/😀", "a" * 65_535, "a b"])
def test_topics_that_pass(topic: str) -> None:
    assert check_topic(topic) == topic.encode()


async def test_butlers_own_messages_are_checked_too(monkeypatch: Any, caplog: Any) -> None:
    client = MqttClient(MqttSettings(enable=True))
    assert not client.enqueue("qliksense/users/activeperserver/sense#1/count", "1")
    assert not client.enqueue("qliksense/task_failure", "\ud800")
    monkeypatch.setattr(mqtt_module, "MAX_PACKET_BYTES", 100)
    assert not client.enqueue("t", "x" * 98)
    assert client.enqueue("t", "x" * 97)  # topic length field, topic and payload: the largest packet
    assert client.stats()["invalid"] == 3 and client.stats()["queued"] == 1
    refusals = [record.getMessage() for record in caplog.records if "not sent" in record.getMessage()]
    assert refusals == [
        "MQTT message to 'qliksense/users/activeperserver/sense#1/count' not sent: the MQTT topic must not "
        "contain the wildcard '#' (at character 38): wildcards are for subscribing, a message is published "
        "to one topic (1 refused so far)"
    ]  # a flood of refusals is one line per 10 s


#: Characters that break (or nearly break) a publish topic, mixed into arbitrary text.
TOPIC_TROUBLE = [
    "+",
    "#",
    "/",
    "$",
    " ",
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\x85",
    "\ud800",
    "\udfff",
    "\ufdd0",
]
TOPIC_TROUBLE += ["\ufffe", "\U0001ffff", "é", "😀"]
Case = tuple[str, str, bool]


def fuzz_cases() -> list[Case]:
    """Hundreds of (topic, message, use the /v2 route) cases drawn by hypothesis, the same on every run."""
    chars = st.one_of(st.characters(exclude_categories=()), st.sampled_from(TOPIC_TROUBLE))
    topics = st.one_of(
        st.text(chars, max_size=40),
        st.builds("/".join, st.lists(st.text(chars, max_size=8), max_size=6)),
        st.integers(65_530, 65_540).map(lambda n: "t" * n),
    )
    messages = st.one_of(st.text(chars, max_size=200), st.integers(0, 300_000).map(lambda n: "m" * n))
    cases: list[Case] = []

    @settings(
        max_examples=400,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(topics, messages, st.booleans())
    @example("load/#", "x", False)
    @example("load/#", "x", True)
    @example("a/\ud800", "x", False)
    @example("a/b", "\ud800", False)
    @example("a\x00", "x", True)
    @example("", "x", False)
    def collect(topic: str, message: str, v2: bool) -> None:
        cases.append((topic, message, v2 and len(topic) + len(message) < 300))

    collect()
    return cases


async def fuzz_publish(base: str, http: aiohttp.ClientSession, case: Case) -> tuple[int, str]:
    topic, message, v2 = case
    if v2:
        query = "&".join(
            f"{name}={quote(value, safe='', errors='surrogatepass')}"
            for name, value in (("topic", topic), ("message", message))
        )
        url = URL(f"{base}/v2/mqttPublishMessage?{query}", encoded=True)
        async with http.get(url) as r:
            return r.status, (await r.json())["message"] if r.status >= 400 else ""
    # JSON with the lone surrogates of a JavaScript string escaped, as JSON.stringify sends them.
    body = json.dumps({"topic": topic, "message": message}).encode()
    headers = {"Content-Type": "application/json"}
    async with http.put(f"{base}/v4/mqttpublishmessage", data=body, headers=headers) as r:
        return r.status, (await r.json())["message"] if r.status >= 400 else ""


async def test_no_topic_or_message_stops_the_client(start_butler: StartButler, logging_broker: Any) -> None:
    broker = logging_broker()
    base = await start_butler(mqtt_config(broker.port, clientId="butler-fuzz"))
    async with aiohttp.ClientSession() as http, aiomqtt.Client("127.0.0.1", broker.port) as listener:
        await listener.subscribe("after/ok")
        await wait_connected(base, http)
        refused = 0
        for case in fuzz_cases():
            status, reason = await fuzz_publish(base, http, case)
            assert status in ((200, 400) if case[2] else (201, 400)), (case[:2], status, reason)
            topic = case[0]
            if not topic or any(char in topic for char in "+#\x00"):
                assert status == 400 and reason.startswith("the MQTT topic"), (topic, reason)
            # (In a query string a lone surrogate is bytes that are no UTF-8, read as U+FFFD.)
            if not case[2] and any("\ud800" <= char <= "\udfff" for char in topic):
                assert status == 400, (topic, reason)
            refused += reason.startswith("the MQTT")
        assert refused > 50
        # The client is alive and connected: a normal publish arrives at once.
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "after/ok", "message": "1"}) as r:
            assert r.status == 201
        async with asyncio.timeout(1):
            async for received in listener.messages:
                assert received.payload == b"1"
                break
        stats = await health(base, http)
        assert stats["connected"] and stats["invalid"] == refused
        assert stats["reconnects"] == 0 and stats["errors"] == 0
    assert broker.connections("butler-fuzz") == 1


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_message_the_broker_refuses_is_dropped(
    start_butler: StartButler, logging_broker: Any, qos: int
) -> None:
    # Mosquitto closes the connection of a client that sends a packet beyond its max_packet_size.
    broker = logging_broker("max_packet_size 10000\n")
    base = await start_butler(mqtt_config(broker.port, clientId="butler-refused", qos=qos))
    async with aiohttp.ClientSession() as http, aiomqtt.Client("127.0.0.1", broker.port) as listener:
        await listener.subscribe("after/#")
        await wait_connected(base, http, "after/ready")
        big = {"topic": "after/big", "message": "x" * 20_000}
        async with http.put(f"{base}/v4/mqttpublishmessage", json=big) as r:
            if qos == 0:
                # Handed to the connection's buffer: the caller cannot know the broker refused it.
                assert r.status == 201
            else:
                assert r.status == 503
                assert "failed on this message 2 times; it was not sent" in (await r.json())["message"]
        await wait_connected(base, http, "after/again")
        # The connection stays up: no more reconnects while later messages go out.
        await asyncio.sleep(2)
        async with http.put(f"{base}/v4/mqttpublishmessage", json={"topic": "after/ok", "message": "1"}) as r:
            assert r.status == 201
        payloads: list[bytes] = []
        async with asyncio.timeout(5):
            async for received in listener.messages:
                payloads.append(bytes(received.payload))
                if received.payload == b"1":
                    break
        assert big["message"].encode() not in payloads
        stats = await health(base, http)
        drops = 1 if qos == 0 else 2  # a QoS 0 message is never sent twice
        assert (stats["poisoned"], stats["reconnects"], stats["connected"]) == (qos, drops, True)
    assert broker.connections("butler-refused") == 1 + drops


async def test_the_connection_survives_any_error(logging_broker: Any) -> None:
    """Messages that slipped past the checks make paho raise ValueError (a wildcard) and UnicodeEncodeError
    (a lone surrogate): each costs two reconnects, and the client goes on."""
    broker = logging_broker()
    client = MqttClient(MqttSettings(enable=True, host="127.0.0.1", port=broker.port, client_id="butler-err"))
    client.start()
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port) as listener:
            await listener.subscribe("after/#")
            async with asyncio.timeout(10):
                await client.connected.wait()
            for topic in ("load/#", "a\ud800"):
                client._queue.put_nowait(_Outgoing(topic, b"x", 0, False, None))
            assert client.enqueue("after/ok", "1")
            async with asyncio.timeout(10):
                async for received in listener.messages:
                    assert (str(received.topic), received.payload) == ("after/ok", b"1")
                    break
            assert client.connected.is_set()
            stats = client.stats()
            assert (stats["poisoned"], stats["errors"], stats["reconnects"]) == (2, 4, 4)
    finally:
        await client.stop()
    assert broker.connections("butler-err") == 5


async def test_event_topics_from_sense_data_cannot_stop_the_client(
    start_butler: StartButler, broker: Broker, subscriber: Any
) -> None:
    """A proxy host name becomes part of an active-user topic; a datagram naming host ``sense#1`` (anyone
    may send one) must not stop the events that follow."""
    listener = await subscriber("qliksense/users/activeperserver/#")
    task_port, session_port = udp_ports()
    document = udp_config(mqtt_config(broker.port), task_port, session_port)
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(
                session_datagram("Start session", "sense#1", "LAB", "eve"), ("127.0.0.1", session_port)
            )
            await asyncio.sleep(0.2)
            sock.sendto(
                session_datagram("Start session", "sense2", "LAB", "anna"), ("127.0.0.1", session_port)
            )
        received = await next_message(listener)
        assert (str(received.topic), received.payload) == (
            "qliksense/users/activeperserver/sense2/count",
            b"1",
        )
        stats = await health(base, http)
        assert stats["invalid"] >= 1 and stats["connected"]


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
