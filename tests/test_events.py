"""Events from Sense: real UDP datagrams (from the simulator and from raw sockets) into Butler, answered
on the REST API and published to a real Mosquitto broker, read by an independent subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomqtt
import pytest

from butler.events.parsing import (
    MalformedDatagram,
    SessionEvent,
    TaskEvent,
    parse_session_datagram,
    parse_task_datagram,
)
from tests.conftest import Broker, StartButler, base_config, free_port, udp_ports
from tests.test_task_start import APP1, butler_config, control, next_run

FAILING_TASK = "Reload Failing App"
GUID = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
APP_GUID = "0a1b2c3d-0000-4000-8000-000000000001"
EXECUTION = "9f1c3a2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b"


def task_datagram(
    kind: str = "/scheduler-task-failed/",
    task_name: str = "Nightly",
    app_name: str = "Sales",
    execution: str = EXECUTION,
    message: str = "Max retries reached",
    task_id: str = GUID,
    app_id: str = APP_GUID,
) -> bytes:
    fields = [
        kind,
        "sense1",
        task_name,
        app_name,
        "INTERNAL\\sa_scheduler",
        task_id,
        app_id,
        "2026-11-24 10:00:00,123",
        "ERROR",
        execution,
        message,
    ]
    return ";".join(fields).encode()


def session_datagram(command: str, host: str, directory: str, user: str, message: str = "") -> bytes:
    prefix = "/proxy-session/" if command.endswith("session") else "/proxy-connection/"
    return f"{prefix};{host};{command};{directory};{user};AppAccess;/app/x;{message or command}".encode()


# -- parsing -----------------------------------------------------------------------------------------------


def test_task_datagram_fields() -> None:
    event = parse_task_datagram(task_datagram(message="Max retries reached; giving up; see log"))
    assert isinstance(event, TaskEvent)
    assert (event.outcome, event.task_name, event.app_name, event.task_id, event.app_id) == (
        "failed",
        "Nightly",
        "Sales",
        GUID,
        APP_GUID,
    )
    assert event.message == "Max retries reached; giving up; see log"
    assert (event.timestamp, event.level, event.execution_id) == (
        "2026-11-24 10:00:00,123",
        "ERROR",
        EXECUTION,
    )


def test_task_datagram_with_semicolons_in_names_and_typo_type() -> None:
    event = parse_task_datagram(
        task_datagram(
            "/scheduler-task-success//", task_name="Load; then save", message="Execution State Change"
        )
    )
    assert isinstance(event, TaskEvent)
    assert event.outcome == "success"
    # The task id, not the field position, anchors the fields: the user and ids stay right.
    assert event.user == "INTERNAL\\sa_scheduler" and event.task_id == GUID and event.app_id == APP_GUID
    assert event.task_name == "Load" and event.app_name == " then save;Sales"


def test_session_datagram_fields() -> None:
    event = parse_session_datagram(
        b"/proxy-session/;sense2;Start session;LAB;goran;AppAccess;/hub/;"
        b"Start session for user 'LAB\\goran'; ok"
    )
    assert event == SessionEvent(
        "Start session",
        "sense2",
        "LAB",
        "goran",
        "AppAccess",
        "/hub/",
        "Start session for user 'LAB\\goran'; ok",
    )


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "empty"),
        (b"/scheduler-task-failed/;too;few", "11"),
        (task_datagram(task_id="not-a-guid"), "task id"),
        (task_datagram(app_id="nope"), "task id"),
        (b"/something-else/;a;b;c;d;e;f;g;h;i;j", "unknown message type"),
    ],
)
def test_malformed_task_datagrams(datagram: bytes, reason: str) -> None:
    with pytest.raises(MalformedDatagram, match=reason):
        parse_task_datagram(datagram)


def test_control_characters_removed_and_fields_cut() -> None:
    event = parse_session_datagram(session_datagram("Start session", "s\x07ense1", "LAB", "x" * 900))
    assert event.host == "sense1" and len(event.user_id) == 500
    with pytest.raises(MalformedDatagram, match="unknown command"):
        parse_session_datagram(b"/proxy-session/;h;Dance;LAB;u;o;c;m")


# -- Butler with its UDP listeners ---------------------------------------------------------------------------


class Events:
    """A running Butler with UDP listeners, the ports to send to, and a raw socket to send from."""

    def __init__(self, base: str, task_port: int, session_port: int) -> None:
        self.base = base
        self.task_port = task_port
        self.session_port = session_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send_task(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, ("127.0.0.1", self.task_port))

    def send_session(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, ("127.0.0.1", self.session_port))

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.get(self.base + path) as response:
            return response.status, await response.json()

    async def health(self) -> dict[str, Any]:
        return (await self.get("/health"))[1]["udpEvents"]  # type: ignore[no-any-return]

    async def until(self, check: Any, seconds: float = 10) -> None:
        """Poll ``check`` (Butler's state is only visible through its API) until it holds."""
        async with asyncio.timeout(seconds):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)


def udp_config(document: dict[str, Any], task_port: int, session_port: int, **extra: Any) -> dict[str, Any]:
    flags = document["Butler"]["restServerEndpointsEnable"]
    flags |= {"activeUserCount": True, "activeUsers": True}
    document["Butler"]["udpServerConfig"] = {
        "enable": True,
        "serverHost": "127.0.0.1",
        "portTaskFailure": task_port,
        "portSessionConnectionEvents": session_port,
        "activeUsersPublishSeconds": 0,
        **extra,
    }
    return document


@pytest.fixture
async def events(
    start_butler: StartButler, simulator: Any, site_certs: Any, broker: Broker
) -> AsyncIterator[Any]:
    sockets: list[socket.socket] = []

    async def start(mqtt: bool = True, **extra: Any) -> Events:
        task_port, session_port = udp_ports()
        document = udp_config(butler_config(simulator, site_certs), task_port, session_port, **extra)
        if mqtt:
            document["Butler"]["mqttConfig"] = {
                "enable": True,
                "brokerHost": "127.0.0.1",
                "brokerPort": broker.port,
            }
        running = Events(await start_butler(document), task_port, session_port)
        sockets.append(running.sock)
        # The simulated site's appenders send to this Butler.
        simulator.udp.targets = [("127.0.0.1", task_port)]
        simulator.session_udp.targets = [("127.0.0.1", session_port)]
        return running

    yield start
    for sock in sockets:
        sock.close()


@pytest.fixture
async def subscriber(broker: Broker) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.subscribe("qliksense/#")
        yield client


async def messages_until(client: aiomqtt.Client, topic: str, seconds: float = 10) -> dict[str, list[str]]:
    """Messages per topic, read until one arrives on ``topic``."""
    seen: dict[str, list[str]] = {}
    async with asyncio.timeout(seconds):
        async for message in client.messages:
            seen.setdefault(str(message.topic), []).append(bytes(message.payload).decode())  # type: ignore[arg-type]
            if str(message.topic) == topic:
                return seen
    raise AssertionError(f"nothing on {topic}")


async def open_session(simulator: Any, directory: str, user: str, proxy: str = "sense1") -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{simulator.control_port}/sessions",
            json={"userDirectory": directory, "userId": user, "proxy": proxy},
        ) as response,
    ):
        assert response.status == 201
        return str((await response.json())["id"])


async def close_session(simulator: Any, session_id: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"http://127.0.0.1:{simulator.control_port}/sessions/{session_id}") as response,
    ):
        assert response.status == 204


async def test_active_users_from_the_simulated_proxies(events: Any, simulator: Any, subscriber: Any) -> None:
    butler = await events()
    assert await butler.get("/v4/activeusercount") == (200, {"response": 0, "perProxyHost": {}})
    sessions = [
        await open_session(simulator, "LAB", "goran", "sense1"),
        await open_session(simulator, "LAB", "goran", "sense2"),  # the same user on a second proxy
        await open_session(simulator, "EXT", "goran", "sense2"),  # the same id in another directory
        await open_session(simulator, "LAB", "anna", "sense2"),
    ]

    async def three() -> bool:
        return (await butler.get("/v4/activeusercount"))[1]["response"] == 3

    await butler.until(three)
    assert await butler.get("/v4/activeusercount") == (
        200,
        {"response": 3, "perProxyHost": {"sense1": 1, "sense2": 3}},
    )
    assert await butler.get("/v4/activeusercount?proxyHost=SENSE1") == (200, {"response": 1})
    status, users = await butler.get("/v4/activeusers")
    assert status == 200
    assert [(u["userDirectory"], u["userId"], u["proxyHosts"]) for u in users] == [
        ("EXT", "goran", ["sense2"]),
        ("LAB", "anna", ["sense2"]),
        ("LAB", "goran", ["sense1", "sense2"]),
    ]
    assert await butler.get("/v2/activeUserCount") == (200, 3)
    assert await butler.get("/v2/activeUsers") == (200, ["goran", "anna", "goran"])

    seen = await messages_until(subscriber, "qliksense/users/active/count")
    assert "sense1: LAB/goran" in seen["qliksense/session/start"]
    # Figures go out when they change; the last count published is the final one.
    while seen["qliksense/users/active/count"][-1] != "3":
        seen |= await messages_until(subscriber, "qliksense/users/active/count")

    for session_id in sessions[:2]:
        await close_session(simulator, session_id)

    async def two() -> bool:
        return (await butler.get("/v4/activeusercount"))[1]["response"] == 2

    await butler.until(two)
    assert await butler.get("/v2/activeUsers") == (200, ["goran", "anna"])
    stats = (await butler.health())["sessionEvents"]
    assert stats["accepted"] == 6 and stats["byType"] == {"Start session": 4, "Stop session": 2}


async def test_sessions_expire_without_events(events: Any) -> None:
    butler = await events(mqtt=False, sessionExpirySeconds=1)
    butler.send_session(session_datagram("Start session", "sense9", "LAB", "ghost"))

    async def one() -> bool:
        return (await butler.get("/v2/activeUserCount"))[1] == 1

    await butler.until(one)
    await asyncio.sleep(1.2)  # the proxy died: no Stop session comes

    async def none() -> bool:
        return (await butler.get("/v2/activeUserCount"))[1] == 0

    await butler.until(none, seconds=3)


async def test_failed_task_published_enriched(events: Any, simulator: Any, subscriber: Any) -> None:
    await events()
    task = next(t for t in simulator.site.tasks.values() if t["name"] == FAILING_TASK)
    simulator.scheduler.start(task["id"])
    seen = await messages_until(subscriber, "qliksense/task_failure_full")
    assert seen["qliksense/task_failure"] == [FAILING_TASK]
    full = json.loads(seen["qliksense/task_failure_full"][0])
    assert (
        full["taskName"] == FAILING_TASK and full["taskId"] == task["id"] and full["appName"] == "Failing App"
    )
    assert full["user"] == "INTERNAL\\sa_scheduler" and full["logLevel"] == "ERROR"
    assert full["qs_taskTags"] == ["butler"]
    assert {"name": "ButlerAlert", "value": "email"} in full["qs_taskCustomProperties"]
    assert full["qs_appTags"] == [] and full["qs_appMetadata"]["name"] == "Failing App"
    assert full["taskType"] == "Reload" and full["outcome"] == "failed"
    assert full["executionResult"]["status"] == "FinishedFail"
    assert any("missing.qvd" in line for line in full["scriptLog"]["head"])
    assert full["scriptLog"]["tail"][-1].endswith("Execution Failed")
    assert full["partial"] is False and full["missing"] == []


async def test_success_and_abort_topics(events: Any, simulator: Any, subscriber: Any) -> None:
    await events()
    simulator.scheduler.start(APP1["taskId"])
    seen = await messages_until(subscriber, "qliksense/task_success_full")
    assert seen["qliksense/task_success"] == [APP1["taskName"]]
    full = json.loads(seen["qliksense/task_success_full"][0])
    assert full["executionResult"]["status"] == "FinishedSuccess" and full["qs_appTags"] == ["butler"]
    assert full["scriptLog"] == {"head": None, "tail": None}  # script logs are read for failures only

    await next_run(simulator, APP1["taskId"], outcome="success", durationMs=60_000)
    simulator.scheduler.start(APP1["taskId"])
    await asyncio.sleep(0.1)
    simulator.scheduler.stop(APP1["taskId"])
    seen = await messages_until(subscriber, "qliksense/task_aborted_full")
    assert seen["qliksense/task_aborted"] == [APP1["taskName"]]
    assert json.loads(seen["qliksense/task_aborted_full"][0])["executionResult"]["status"] == "Aborted"


async def test_enrichment_survives_qrs_down(events: Any, simulator: Any, subscriber: Any) -> None:
    butler = await events(taskEvents={"enrichTimeoutSeconds": 1})
    await control(simulator, "/faults/qrs", {"latency_ms": 3000}, 200)
    butler.send_task(task_datagram(task_id=APP1["taskId"], execution="0f0f0f0f-0000-4000-8000-000000000001"))
    seen = await messages_until(subscriber, "qliksense/task_failure_full")
    await control(simulator, "/faults/qrs", {"latency_ms": 0}, 200)
    full = json.loads(seen["qliksense/task_failure_full"][0])
    # What the datagram said goes out; what QRS would have added is named as missing.
    assert full["taskName"] == "Nightly" and full["partial"] is True
    assert set(full["missing"]) >= {"task", "app", "executionResult"}
    assert "did not answer within 1 s" in full["enrichmentError"]
    assert (await butler.health())["taskEventsPartial"] == 1

    # QRS down altogether: the event still goes out, saying why it is partial.
    await control(simulator, "/faults/qrs", {"down": True}, 200)
    butler.send_task(task_datagram(task_id=APP1["taskId"], execution="0f0f0f0f-0000-4000-8000-000000000002"))
    seen = await messages_until(subscriber, "qliksense/task_failure_full")
    await control(simulator, "/faults/qrs", {"down": False}, 200)
    full = json.loads(seen["qliksense/task_failure_full"][0])
    assert full["partial"] is True and "task" in full["missing"]
    assert "Qlik Sense QRS" in full["enrichmentError"]


async def test_duplicates_malformed_and_limits(events: Any, simulator: Any) -> None:
    butler = await events(mqtt=False, maxMessageSize=300)
    for _ in range(3):  # the same event from three appenders
        butler.send_task(task_datagram(task_id=APP1["taskId"]))
    butler.send_task(task_datagram(task_id=APP1["taskId"], kind="/scheduler-task-aborted/"))
    butler.send_task(b"/scheduler-task-failed/;garbage")
    butler.send_task(b"\xff\xfe\x00binary")
    butler.send_task(task_datagram(message="x" * 400))  # over maxMessageSize
    butler.send_session(b"/proxy-session/;h;Start session;;;o;c;m")  # no user

    async def counted() -> bool:
        stats = await butler.health()
        return stats["taskEvents"]["received"] == 7 and stats["taskEventsHandled"] == 2

    await butler.until(counted)
    stats = await butler.health()
    assert stats["taskEvents"]["malformed"] == 2
    assert stats["taskEvents"]["dropped"] == {"duplicate": 2, "tooLarge": 1}
    assert stats["taskEvents"]["accepted"] == 2
    assert stats["sessionEvents"]["malformed"] == 1
    assert (await butler.get("/health"))[0] == 200  # nothing crashed


async def test_source_allow_list_and_rate_limit(events: Any) -> None:
    butler = await events(
        mqtt=False,
        enableSourceValidation=True,
        allowedSources=["10.9.8.7", "localhost"],
        rateLimit={"enable": True, "maxMessagesPerMinute": 3},
    )
    for n in range(5):
        butler.send_session(session_datagram("Start session", "sense1", "LAB", f"user{n}"))

    async def counted() -> bool:
        return (await butler.health())["sessionEvents"]["received"] == 5

    await butler.until(counted)
    stats = (await butler.health())["sessionEvents"]
    assert stats["accepted"] == 3 and stats["dropped"] == {"rateLimited": 2}

    other = await events(mqtt=False, enableSourceValidation=True, allowedSources=["10.9.8.7"])
    other.send_session(session_datagram("Start session", "sense1", "LAB", "intruder"))

    async def refused() -> bool:
        return (await other.health())["sessionEvents"]["dropped"] == {"sourceNotAllowed": 1}

    await other.until(refused)
    assert await other.get("/v2/activeUserCount") == (200, 0)


async def test_active_users_off_answers_503(
    start_butler: StartButler, simulator: Any, site_certs: Any
) -> None:
    document = butler_config(simulator, site_certs)
    document["Butler"]["restServerEndpointsEnable"] |= {"activeUserCount": True}
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http, http.get(base + "/v4/activeusercount") as response:
        assert response.status == 503
        assert "udpServerConfig.enable" in (await response.json())["message"]


async def test_health_check_listener_reports_the_same_services(start_butler: StartButler) -> None:
    """The Docker health-check listener and the REST API answer /health from the same set of services."""
    task_port, session_port = udp_ports()
    document = udp_config(base_config(), task_port, session_port)
    health_port = free_port()
    document["Butler"]["dockerHealthCheck"] = {"enable": True, "port": health_port}
    base = await start_butler(document)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(
            session_datagram("Start session", "sense1", "LAB", "alice"), ("127.0.0.1", session_port)
        )

    async def received(http: aiohttp.ClientSession, url: str) -> Any:
        async with http.get(url + "/health") as response:
            return (await response.json()).get("udpEvents", {}).get("sessionEvents", {}).get("received")

    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        while True:  # the datagram is counted when the listener has read it
            if await received(http, base) == 1:
                break
            await asyncio.sleep(0.02)
        assert await received(http, f"http://127.0.0.1:{health_port}") == 1


async def test_sessions_survive_a_restart(tmp_path: Any, simulator: Any, site_certs: Any) -> None:
    from butler.app import Butler
    from butler.config import parse_config

    task_port, session_port = udp_ports()
    document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    settings = parse_config(document, base_dir=tmp_path)
    assert settings.udp.session_state_file == tmp_path / "butler-sessions.json"
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first = Butler(settings)
    await first.start()
    try:
        sender.sendto(
            session_datagram("Start session", "sense1", "LAB", "goran"), ("127.0.0.1", session_port)
        )
        sender.sendto(session_datagram("Start session", "sense2", "EXT", "anna"), ("127.0.0.1", session_port))
        assert first.services.events is not None
        async with asyncio.timeout(5):
            while True:  # until both datagrams are in
                if first.services.events.users.count() == 2:
                    break
                await asyncio.sleep(0.02)
    finally:
        await first.stop()
        sender.close()
    second = Butler(settings)
    await second.start()
    try:
        assert second.services.events is not None
        assert second.services.events.users.user_ids() == ["anna", "goran"]
    finally:
        await second.stop()


def test_session_limit_and_ports_that_differ(tmp_path: Any) -> None:
    from butler.config import ConfigError, parse_config
    from butler.events.active_users import ActiveUsers, TooManySessions

    users = ActiveUsers(max_sessions=2)
    for name in ("a", "b"):
        users.apply(parse_session_datagram(session_datagram("Start session", "sense1", "LAB", name)))
    with pytest.raises(TooManySessions):
        users.apply(parse_session_datagram(session_datagram("Start session", "sense2", "LAB", "c")))
    assert users.counts_per_host() == {"sense1": 2}  # the refused session left nothing behind
    users.apply(parse_session_datagram(session_datagram("Stop session", "sense1", "LAB", "a")))
    users.apply(parse_session_datagram(session_datagram("Start session", "sense2", "LAB", "c")))
    assert users.user_ids() == ["b", "c"]

    document = udp_config({"Butler": {**base_config()["Butler"]}}, 9998, 9998)
    with pytest.raises(ConfigError, match="portSessionConnectionEvents: must differ from portTaskFailure"):
        parse_config(document, base_dir=tmp_path)


# -- the event bus: each consumer on its own -----------------------------------------------------------------


async def test_a_blocked_consumer_delays_no_other(
    tmp_path: Any, simulator: Any, site_certs: Any, broker: Broker, subscriber: Any, monkeypatch: Any
) -> None:
    from butler.app import Butler
    from butler.config import parse_config
    from butler.events.task_outcomes import TaskOutcome

    task_port, session_port = udp_ports()
    # One enrichment worker: were it to wait for a consumer, the second event would not even be enriched.
    document = udp_config(
        butler_config(simulator, site_certs), task_port, session_port, messageQueue={"maxConcurrent": 1}
    )
    document["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    butler = Butler(parse_config(document, base_dir=tmp_path))
    await butler.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    release = asyncio.Event()
    try:
        assert butler.services.mqtt is not None
        await asyncio.wait_for(butler.services.mqtt.connected.wait(), 10)  # MQTT connects in the background
        assert butler.services.events is not None
        bus = butler.services.events.bus
        # One event first, so that what happens on the first event only (the first message published, the
        # first outcome encoded) is not measured.
        warm_up = "0b0b0b0b-0000-4000-8000-0000000000ff"
        sender.sendto(task_datagram(task_id=APP1["taskId"], execution=warm_up), ("127.0.0.1", task_port))
        await messages_until(subscriber, "qliksense/task_failure_full")

        async def blocked(outcome: TaskOutcome) -> None:
            """An SMTP server that does not answer: 10 s for every event (released when the test ends)."""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 10)

        async def broken(outcome: TaskOutcome) -> None:
            raise RuntimeError("this consumer has a bug")

        bus.subscribe("blocked", blocked, TaskOutcome, queue_size=2)
        bus.subscribe("broken", broken, TaskOutcome)
        # The reference point: when the enriched event reached the bus.
        reached: dict[str, float] = {}
        publish = bus.publish

        def timed_publish(event: object) -> None:
            if isinstance(event, TaskOutcome):
                reached[event.event.execution_id] = time.monotonic()
            publish(event)

        monkeypatch.setattr(bus, "publish", timed_publish)
        delays = []
        for n in range(6):
            execution = f"0b0b0b0b-0000-4000-8000-00000000000{n}"
            sender.sendto(
                task_datagram(task_id=APP1["taskId"], execution=execution), ("127.0.0.1", task_port)
            )
            seen = await messages_until(subscriber, "qliksense/task_failure_full")
            received = time.monotonic()
            assert json.loads(seen["qliksense/task_failure_full"][0])["executionId"] == execution
            delays.append(received - reached[execution])
        # Out through Mosquitto and back within 50 ms of reaching the bus (a local round trip takes 1-3 ms),
        # although the blocked consumer has been stuck on the first event since it came.
        assert max(delays) < 0.05, delays
        health = await Events(butler.listeners[0].url, task_port, session_port).health()
        assert health["taskEventsHandled"] == 7
        counts = {
            name: (c["delivered"], c["failed"], c["dropped"], c["queued"], c["queueSize"])
            for name, c in health["consumers"].items()
        }
        assert counts == {
            "mqtt": (7, 0, 0, 0, 1000),
            # One event in hand, two queued, three dropped: counted for this consumer alone.
            "blocked": (0, 0, 3, 2, 2),
            "broken": (0, 6, 0, 0, 1000),
        }
    finally:
        release.set()
        await butler.stop()
        sender.close()


async def delivered(subscription: Any, count: int) -> None:
    """Until the consumer has handled ``count`` events, well or not."""
    async with asyncio.timeout(5):
        while True:
            if subscription.delivered + subscription.failed >= count:
                return
            await asyncio.sleep(0.005)


async def test_bus_full_queue_drops_for_that_consumer_alone() -> None:
    from butler.events.bus import EventBus

    bus = EventBus()
    release = asyncio.Event()
    taken: list[int] = []

    async def stuck(number: int) -> None:
        await release.wait()
        taken.append(number)

    async def texts(text: str) -> None:
        raise AssertionError(f"given {text!r}: only strings were asked for")

    async def quick(number: int) -> None:
        taken.append(-number)

    bus.start()
    slow = bus.subscribe("slow", stuck, int, queue_size=3)
    fast = bus.subscribe("fast", quick, int)
    bus.subscribe("texts", texts, str)
    bus.publish(1)
    await asyncio.sleep(0.01)  # the slow consumer has the first event in hand
    for number in range(2, 11):
        bus.publish(number)
    await delivered(fast, 10)
    assert slow.stats() == {"delivered": 0, "failed": 0, "dropped": 6, "queued": 3, "queueSize": 3}
    release.set()
    await delivered(slow, 4)
    assert taken == [-n for n in range(1, 11)] + [1, 2, 3, 4]
    assert bus.stats()["texts"]["delivered"] == 0
    await bus.stop()


async def test_bus_consumer_that_raises_is_counted_and_goes_on(caplog: Any) -> None:
    from butler.events.bus import EventBus

    bus = EventBus()
    good: list[int] = []

    async def odd_fails(number: int) -> None:
        if number % 2:
            raise ValueError(f"cannot take {number}")
        good.append(number)

    subscription = bus.subscribe("flaky", odd_fails, int)
    bus.start()
    for number in range(10):
        bus.publish(number)
    await delivered(subscription, 10)
    assert (subscription.delivered, subscription.failed) == (5, 5) and good == [0, 2, 4, 6, 8]
    # Logged once, with the traceback; the next failures only counted.
    records = [r for r in caplog.records if r.name == "butler.events.bus"]
    assert len(records) == 1 and records[0].exc_info is not None and "flaky" in records[0].getMessage()
    await bus.stop()


async def test_a_consumer_whose_own_wait_was_cancelled_goes_on(caplog: Any) -> None:
    """A CancelledError from inside a handler (a wait of its own cancelled) is that event's failure; the
    worker goes on, and tells the event was taken (with several Butlers, the claim is marked done)."""
    from butler.events.bus import EventBus

    bus = EventBus()
    handled: list[int] = []
    taken: list[int] = []

    async def cancelled_inside(number: int) -> None:
        if number == 1:
            inner = asyncio.get_running_loop().create_future()
            inner.cancel()
            await inner
        handled.append(number)

    subscription = bus.subscribe("inner", cancelled_inside, int)
    bus.start()
    for number in range(3):
        bus.publish(number, lambda number=number: taken.append(number))  # type: ignore[misc]
    await delivered(subscription, 3)
    assert handled == [0, 2] and subscription.failed == 1 and taken == [0, 1, 2]
    await bus.stop()


async def test_bus_stop_drains_then_cancels(caplog: Any) -> None:
    from butler.events.bus import EventBus

    bus = EventBus(drain_seconds=0.3)
    handled: list[int] = []

    async def steady(number: int) -> None:
        await asyncio.sleep(0.01)
        handled.append(number)

    async def hung(number: int) -> None:
        await asyncio.sleep(3600)

    bus.subscribe("steady", steady, int)
    bus.subscribe("hung", hung, int)
    bus.start()
    for number in range(5):
        bus.publish(number)
    started = time.monotonic()
    await bus.stop()
    took = time.monotonic() - started
    assert handled == [0, 1, 2, 3, 4]  # drained
    # The hung consumer is given the drain time, then cancelled and awaited: no worker is left pending.
    assert 0.3 <= took < 1.5, took
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("consumer ")]
    assert (
        "event consumer hung did not finish within 0.3 s at shutdown: 5 events not delivered" in caplog.text
    )
    bus.publish(5)  # after stop: ignored
    assert bus.stats()["steady"]["queued"] == 0


async def test_bus_subscriptions() -> None:
    from butler.events.bus import EventBus

    bus = EventBus()

    async def take(number: int) -> None:
        pass

    bus.start()
    late = bus.subscribe("late", take, int)  # subscribed while running: served at once
    bus.publish(1)
    await delivered(late, 1)
    with pytest.raises(ValueError, match="named late is subscribed already"):
        bus.subscribe("late", take, int)
    with pytest.raises(ValueError, match="at least one event"):
        bus.subscribe("none", take, int, queue_size=0)
    await bus.stop()


async def test_a_fault_after_enrichment_does_not_stop_the_worker(caplog: Any) -> None:
    """A fault once the event is enriched (here the bus refusing it) is logged, and the one worker goes on
    with the next event."""
    from butler.config.settings import TaskOutcomeSettings
    from butler.events.bus import EventBus
    from butler.events.parsing import TaskEvent, parse_task_datagram
    from butler.events.task_outcomes import TaskOutcomes

    bus = EventBus()
    published: list[Any] = []
    second = asyncio.Event()

    def publish(event: Any, taken: Any = None) -> None:
        published.append(event)
        if len(published) == 1:
            raise RuntimeError("bus refused")
        second.set()

    bus.publish = publish  # type: ignore[method-assign]
    outcomes = TaskOutcomes(None, TaskOutcomeSettings(workers=1), bus)
    outcomes.start()
    try:
        for execution in ("11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"):
            event = parse_task_datagram(task_datagram(execution=execution))
            assert isinstance(event, TaskEvent) and outcomes.submit(event) is None
        await asyncio.wait_for(second.wait(), 5)
        assert published[1].event.execution_id == "22222222-2222-2222-2222-222222222222"
        assert "could not be handled" in caplog.text and "bus refused" in caplog.text
    finally:
        await outcomes.stop()
