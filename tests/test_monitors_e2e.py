"""The monitors end to end: against the simulated two-node site over mutual TLS (QRS, the control API,
the 9032 systeminfo service) and a real Mosquitto, and through a whole Butler for the wiring (schedules,
``/health``, ``GET /v4/licenses/releases``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from butler.config import Settings, parse_config
from butler.monitors.licenses import LicenseRelease, ServerLicenseMonitor
from butler.monitors.sense import QrsSense
from butler.monitors.services import ServiceMonitor
from butler.mqtt import MqttClient
from butler.qlik.qrs import QrsClient
from tests import test_messaging
from tests.conftest import Broker, StartButler
from tests.influxdb import Influxd, influxd  # noqa: F401 (fixture)
from tests.test_alert_email import Mailbox, Server, parse
from tests.test_influx import influx_section
from tests.test_messaging import next_message
from tests.test_monitors import Recorder
from tests.test_service_alerts import email_section
from tests.test_task_start import butler_config
from tests.waiting import eventually

subscriber = test_messaging.subscriber

NEVER_RELEASE = {
    "user": [{"userDir": "INTERNAL", "userId": "sa_repository"}],
    "tag": ["License do not release"],
    "customProperty": [{"name": "LicenseManage", "value": "do-not-release"}],
    "userDirectory": ["ADMIN"],
    "inactive": "ignore",
    "blocked": "ignore",
    "removedExternally": "ignore",
}


def document(simulator: Any, certs: Any, broker: Broker, **sections: Any) -> dict[str, Any]:
    config = butler_config(simulator, certs, licenseReleases=True)
    config["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    config["Butler"].update(sections)
    return config


@pytest.fixture
async def parts(simulator: Any, site_certs: Any, broker: Broker, tmp_path: Path) -> AsyncIterator[Any]:
    """The settings, a QRS client and a connected MQTT client, for monitors built by the test."""
    opened: list[Any] = []

    async def make(**sections: Any) -> tuple[Settings, QrsSense, MqttClient]:
        settings = parse_config(document(simulator, site_certs, broker, **sections), base_dir=tmp_path)
        qrs = QrsClient(settings.qrs, settings.certificates)
        mqtt = MqttClient(settings.mqtt)
        mqtt.start()
        opened.extend([qrs, mqtt])
        await asyncio.wait_for(mqtt.connected.wait(), 10)
        return settings, QrsSense(qrs), mqtt

    yield make
    for item in opened:
        await (item.close() if isinstance(item, QrsClient) else item.stop())


async def test_stopping_the_scheduler_on_one_of_two_nodes_alerts_once_and_publishes(
    parts: Any, control: Any, subscriber: Any
) -> None:
    settings, site, mqtt = await parts(serviceMonitor={"enable": True})
    stopped = await subscriber("qliksense/service_stopped/#")
    running = await subscriber("qliksense/service_running/#")
    alerts = Recorder()
    monitor = ServiceMonitor(settings.monitors.services, settings.mqtt, site, mqtt, alerts, None)
    await monitor.check()
    assert monitor.snapshot() == {
        "sense1": {name: "RUNNING" for name in _services(appmigration=True)},
        "sense2": {name: "RUNNING" for name in _services(appmigration=False)}
        | {
            "QlikSenseAppMigrationService": "DISABLED",
            "QlikSensePrintingService": "DISABLED",
        },
    }
    assert await control("POST", "/nodes/sense2/services/scheduler/stop") == (
        200,
        await _node(control, "sense2"),
    )
    await monitor.check()
    await monitor.check()
    [change] = alerts.changes
    assert (change.host, change.service_name, change.friendly_name, change.status, change.previous) == (
        "sense2",
        "QlikSenseSchedulerService",
        "Scheduler",
        "STOPPED",
        "RUNNING",
    )
    message = await next_message(stopped)
    assert str(message.topic) == "qliksense/service_stopped/sense2/QlikSenseSchedulerService"
    payload = json.loads(message.payload)  # type: ignore[arg-type]
    assert (payload["serviceStatus"], payload["servicePrevStatus"], payload["serviceStatusChanged"]) == (
        "STOPPED",
        "RUNNING",
        True,
    )
    await control("POST", "/nodes/sense2/services/scheduler/start")
    await monitor.check()
    await monitor.check()
    assert [(c.host, c.service_name, c.status) for c in alerts.changes] == [
        ("sense2", "QlikSenseSchedulerService", "STOPPED"),
        ("sense2", "QlikSenseSchedulerService", "RUNNING"),
    ]
    message = await next_message(running)
    assert str(message.topic) == "qliksense/service_running/sense2/QlikSenseSchedulerService"
    # Nothing else changed: no other message on either topic.
    for client in (stopped, running):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(aiter(client.messages))


def _services(appmigration: bool) -> list[str]:
    names = ["Repository", "Proxy", "Scheduler", "Engine"] + (
        ["AppMigration", "Printing"] if appmigration else []
    )
    return [f"QlikSense{name}Service" for name in names]


async def _node(control: Any, host: str) -> Any:
    status, nodes = await control("GET", "/nodes")
    assert status == 200
    return next(node for node in nodes if node["hostName"] == host)


async def test_a_licence_10_days_from_expiry_raises_one_alert_not_one_per_check(
    parts: Any, control: Any, subscriber: Any
) -> None:
    server = {"enable": True, "destination": {"mqtt": {"enable": True}, "webhook": {"enable": True}}}
    settings, site, mqtt = await parts(qlikSenseLicense={"serverLicenseMonitor": server})
    expire = await subscriber("qliksense/qliksense_server_license_expire")
    assert (await control("PUT", "/license", {"expiresInDays": 10}))[0] == 200
    alerts = Recorder()
    monitor = ServerLicenseMonitor(settings.monitors.server_license, settings.mqtt, site, mqtt, alerts, None)
    for _ in range(4):
        await monitor.check()
    [alert] = alerts.alerts
    assert (alert.expired, alert.days_until_expiry) == (False, 10) and len(alerts.statuses) == 4
    message = await next_message(expire)
    assert (
        message.payload
        == f"Qlik Sense server license is about to expire in 10 days, on {alert.expiry_date}".encode()
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await anext(aiter(expire.messages))


async def _allocations(control: Any) -> dict[str, dict[str, bool]]:
    """Each type's users and whether their allocation is quarantined, as the simulator keeps them."""
    status, access = await control("GET", "/access")
    assert status == 200, access
    return {
        kind: {a["user"]["userId"]: a["quarantined"] for a in access[kind]}
        for kind in ("professional", "analyzer")
    }


async def test_licence_release_dry_run_releases_nothing_and_live_releases_exactly_those(
    parts: Any, control: Any
) -> None:
    release_config = {"enable": True, "neverRelease": NEVER_RELEASE}
    settings, site, _ = await parts(qlikSenseLicense={"licenseRelease": release_config})
    before = await _allocations(control)
    dry = LicenseRelease(settings.monitors.release, site, None)
    await dry.check()
    assert await _allocations(control) == before
    would = {(r["licenseType"], r["userId"]) for r in dry.releases()}
    assert would == {("professional", "anna"), ("analyzer", "maria"), ("analyzer", "olle")}
    assert {r["result"] for r in dry.releases()} == {"would be released"}

    live_settings, site, _ = await parts(
        qlikSenseLicense={"licenseRelease": release_config | {"dryRun": False}}
    )
    live = LicenseRelease(live_settings.monitors.release, site, None)
    await live.check()
    assert {(r["licenseType"], r["userId"], r["result"]) for r in live.releases()} == {
        (kind, user, "released") for kind, user in would
    }
    after = await _allocations(control)
    gone = {(kind, user) for kind in before for user in before[kind] if user not in after[kind]}
    assert gone == would
    # Kept by a rule: the service account, peter (tag) and lisa (custom property); too recent: goran, joe.
    assert after == {
        "professional": {"goran": False, "sa_repository": False, "peter": False},
        "analyzer": {"joe": False, "lisa": False},
    }
    await live.check()
    assert len(live.releases()) == 3  # nothing left to release


async def test_butler_runs_the_monitors_on_their_schedules(
    start_butler: StartButler, simulator: Any, site_certs: Any, broker: Broker, subscriber: Any, control: Any
) -> None:
    config = document(
        simulator,
        site_certs,
        broker,
        serviceMonitor={"enable": True, "frequency": "every 1 seconds"},
        qlikSenseLicense={"licenseRelease": {"enable": True, "neverRelease": NEVER_RELEASE}},
        qlikSenseVersion={
            "versionMonitor": {
                "enable": True,
                "host": "127.0.0.1",
                "port": simulator.systeminfo_port,
                "rejectUnauthorized": True,
            }
        },
    )
    stopped = await subscriber("qliksense/service_stopped/#")
    base = await start_butler(config)
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> Any:
            async with http.get(base + path) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        async def ran(name: str) -> bool:
            return bool((await get("/health"))["monitors"][name]["runs"])

        for name in ("serviceMonitor", "licenseRelease", "versionMonitor"):
            await _eventually_async(lambda name=name: ran(name))
        health = (await get("/health"))["monitors"]
        assert health["serviceMonitor"]["frequency"] == "every 1 seconds"
        assert health["versionMonitor"]["lastError"] is None and health["licenseRelease"]["lastError"] is None
        answer = await get("/v4/licenses/releases")
        assert answer["enabled"] is True and answer["dryRun"] is True
        assert sorted(r["userId"] for r in answer["releases"]) == ["anna", "maria", "olle"]
        assert (await get("/v4/licenses/releases?limit=1"))["releases"] == answer["releases"][:1]
        await control("POST", "/nodes/sense1/services/proxy/stop")
        message = await next_message(stopped)
        assert str(message.topic) == "qliksense/service_stopped/sense1/QlikSenseProxyService"


async def _eventually_async(condition: Any, seconds: float = 10) -> None:
    for _ in range(int(seconds * 10)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {seconds} s")


async def test_the_version_and_the_access_licences_are_read_and_written(parts: Any, simulator: Any) -> None:
    from butler.monitors.licenses import AccessLicenseMonitor, VersionMonitor
    from butler.monitors.sense import SystemInfo

    influx = {"enable": True, "tag": {"static": [{"name": "site", "value": "lab"}]}}
    settings, site, _ = await parts(
        qlikSenseVersion={"versionMonitor": {"enable": True, "destination": {"influxDb": influx}}},
        qlikSenseLicense={"licenseMonitor": {"enable": True, "destination": {"influxDb": influx}}},
    )
    out = Recorder()
    info = SystemInfo("127.0.0.1", simulator.systeminfo_port, settings.certificates, True)
    version = VersionMonitor(settings.monitors.version, info, out)
    try:
        await version.check()
    finally:
        await info.close()
    [(measurement, tags, fields)] = out.points
    assert (measurement, tags) == ("qlik_sense_version", {"site": "lab"})
    assert fields["product_name"] == "Qlik Sense" and fields["version"] == version.found["version"]  # type: ignore[index]
    out.points.clear()
    access = AccessLicenseMonitor(settings.monitors.access_license, site, out)
    await access.check()
    by_type = {tags["license_type"]: fields for _, tags, fields in out.points}
    assert sorted(by_type) == ["analyzer", "professional", "tokens_available"]
    assert by_type["professional"]["allocated"] == 4 and by_type["analyzer"]["allocated"] == 4
    assert {tags["site"] for _, tags, _ in out.points} == {"lab"}


async def test_a_service_stopped_then_started_is_one_email_one_message_and_a_metric_each(
    start_butler: StartButler, simulator: Any, site_certs: Any, broker: Broker, subscriber: Any, control: Any
) -> None:
    """A whole Butler against the two-node site: the scheduler stopped on the rim node is one e-mail at the
    SMTP server, one MQTT message and the metric at 0; started again, one more of each and the metric at 1."""
    mailbox = Mailbox()
    smtp = Server(mailbox)
    await smtp.start()
    try:
        config = document(
            simulator,
            site_certs,
            broker,
            serviceMonitor={"enable": True, "frequency": "every 1 seconds"},
            prometheus={"enable": True},
            emailNotification=email_section(smtp.port, stopped="", started=""),
        )
        stops = await subscriber("qliksense/service_stopped/#")
        starts = await subscriber("qliksense/service_running/#")
        base = await start_butler(config)
        async with aiohttp.ClientSession() as http:

            async def running() -> float | None:
                async with http.get(f"{base}/metrics") as response:
                    text = await response.text()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "butler_sense_service_running" and sample.labels == {
                            "host": "sense2",
                            "service": "QlikSenseSchedulerService",
                        }:
                            return float(sample.value)
                return None

            async def metric_is(value: float) -> bool:
                return await running() == value

            async def mails(count: int) -> bool:
                return len(mailbox.received) >= count

            await _eventually_async(lambda: metric_is(1.0))
            assert mailbox.received == []  # no alert for what the first check found
            await control("POST", "/nodes/sense2/services/scheduler/stop")
            message = await next_message(stops)
            assert str(message.topic) == "qliksense/service_stopped/sense2/QlikSenseSchedulerService"
            assert json.loads(message.payload)["serviceStatus"] == "STOPPED"  # type: ignore[arg-type]
            await _eventually_async(lambda: metric_is(0.0))
            await _eventually_async(lambda: mails(1))
            await asyncio.sleep(2.5)  # two more checks with the service still stopped: nothing more
            assert len(mailbox.received) == 1
            stopped = parse(mailbox.received[0][2])
            # Folded right after "Subject:" (Python's folding of a long header), which unfolds to the same
            # header (RFC 5322 2.2.3); Python's parser keeps the space of the fold.
            scheduler = '"Qlik Sense Scheduler Service"'
            assert stopped["Subject"].lstrip() == f"Windows service stopped on host sense2: {scheduler}"
            await control("POST", "/nodes/sense2/services/scheduler/start")
            message = await next_message(starts)
            assert str(message.topic) == "qliksense/service_running/sense2/QlikSenseSchedulerService"
            await _eventually_async(lambda: metric_is(1.0))
            await _eventually_async(lambda: mails(2))
            await asyncio.sleep(2.5)
            assert len(mailbox.received) == 2
            started = parse(mailbox.received[1][2])
            assert started["Subject"].lstrip() == f"Windows service started on host sense2: {scheduler}"
    finally:
        await smtp.stop()


async def test_the_monitors_points_are_read_back_from_a_real_influxdb(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    influxd: Influxd,  # noqa: F811
) -> None:
    """A whole Butler with the service, version and licence monitors writing through its InfluxDB writer:
    InfluxQL reads back upstream's measurements, tags and fields."""
    to_influx = {"influxDb": {"enable": True}}
    config = document(
        simulator,
        site_certs,
        broker,
        serviceMonitor={"enable": True, "frequency": "every 1 seconds"},
        qlikSenseLicense={
            "serverLicenseMonitor": {
                "enable": True,
                "frequency": "every 1 seconds",
                "destination": to_influx,
            },
            "licenseMonitor": {"enable": True, "frequency": "every 1 seconds", "destination": to_influx},
        },
        qlikSenseVersion={
            "versionMonitor": {
                "enable": True,
                "frequency": "every 1 seconds",
                "host": "127.0.0.1",
                "port": simulator.systeminfo_port,
                "rejectUnauthorized": True,
                "destination": to_influx,
            }
        },
        influxDb=influx_section(influxd, tag={"static": [{"name": "site", "value": "test"}]}),
    )
    await start_butler(config)

    def measured(measurement: str, where: str = "") -> list[dict[str, Any]]:
        result = influxd.query(f'SELECT * FROM "ten_days"."{measurement}"{where}')
        if "error" in result or not result.get("series"):  # not written yet (the database made at the first)
            return []
        series = result["series"][0]
        return [dict(zip(series["columns"], values, strict=True)) for values in series["values"]]

    await eventually(
        lambda: measured("win_service_state") and measured("qlik_sense_version"),
        seconds=15,
        why=lambda: (influxd.query("SHOW MEASUREMENTS"), influxd.query("SHOW RETENTION POLICIES ON butler")),
    )
    scheduler = measured(
        "win_service_state", " WHERE host = 'sense2' AND service_name = 'QlikSenseSchedulerService'"
    )[0]
    assert (scheduler["state_num"], scheduler["state_text"], scheduler["site"]) == (4, "RUNNING", "test")
    assert scheduler["friendly_name"] == "Scheduler"
    assert {row["host"] for row in measured("win_service_state")} == {"sense1", "sense2"}
    version = measured("qlik_sense_version")[0]
    assert version["product_name"] == "Qlik Sense" and version["version"]
    await eventually(lambda: measured("qlik_sense_server_license"), seconds=10)
    license = measured("qlik_sense_server_license")[0]
    assert (license["license_expired"], 40 <= license["days_until_expiry"] <= 46) == (False, True), license
    await eventually(lambda: measured("qlik_sense_license"), seconds=10)
    types = {row["license_type"]: row for row in measured("qlik_sense_license")}
    assert {"professional", "analyzer", "tokens_available"} <= types.keys()
    assert types["professional"]["allocated"] == 4
