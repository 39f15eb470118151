"""The monitors through their seams, without Sense: sc.exe's outputs, the service change rule, the server
licence's threshold crossings, access licence points, the never-release rules, licence release in dry run,
live and capped, the runner's schedule and its quiet failures, and the uptime monitor's figures."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from butler.alerts.model import Channel
from butler.config import ConfigError, parse_config
from butler.config.monitors import (
    LicenseReleaseSettings,
    NeverRelease,
    ReleaseType,
    ServerLicenseSettings,
    ServiceMonitorSettings,
    UptimeSettings,
    WindowsHost,
    WindowsService,
)
from butler.config.settings import MqttSettings
from butler.monitor_events import ServerLicense, ServiceChange, ServiceDetails
from butler.monitors.later import parse
from butler.monitors.licenses import (
    ExpiryAlerts,
    LicenseRelease,
    ServerLicenseMonitor,
    access_points,
    keep_reason,
    read_server_license,
)
from butler.monitors.process import UptimeMonitor, linux_memory, uptime_text
from butler.monitors.runner import QUIET_SECONDS, Periodic
from butler.monitors.sense import Allocation, NodeService, SenseUser
from butler.monitors.services import ServiceMonitor, ServiceStates
from butler.monitors.windows import (
    ServiceUnavailable,
    parse_qc,
    parse_query,
    sc_arguments,
)
from butler.monitors.windows import (
    WindowsService as CheckedService,
)
from butler.qlik.qrs import QrsError
from tests.conftest import base_config
from tests.waiting import eventually

# --- sc.exe --------------------------------------------------------------------------------------------

QUERY_RUNNING = """
SERVICE_NAME: QlikSenseEngineService
        TYPE               : 10  WIN32_OWN_PROCESS
        STATE              : 4  RUNNING
                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)
        WIN32_EXIT_CODE    : 0  (0x0)
        SERVICE_EXIT_CODE  : 0  (0x0)
        CHECKPOINT         : 0x0
        WAIT_HINT          : 0x0
"""
QUERY_STOP_PENDING = QUERY_RUNNING.replace("4  RUNNING", "3  STOP_PENDING")
QC_ENGINE = r"""[SC] QueryServiceConfig SUCCESS

SERVICE_NAME: QlikSenseEngineService
        TYPE               : 10  WIN32_OWN_PROCESS
        START_TYPE         : 2   AUTO_START
        ERROR_CONTROL      : 1   NORMAL
        BINARY_PATH_NAME   : "C:\Program Files\Qlik\Sense\Engine\Engine.exe" -service
        LOAD_ORDER_GROUP   :
        TAG                : 0
        DISPLAY_NAME       : Qlik Sense Engine Service
        DEPENDENCIES       : QlikSenseRepositoryService
                           : QlikSenseServiceDispatcher
        SERVICE_START_NAME : CORP\qservice
"""
QC_DELAYED_NO_DEPENDENCIES = r"""[SC] QueryServiceConfig SUCCESS

SERVICE_NAME: postgresql-x64-12
        TYPE               : 10  WIN32_OWN_PROCESS
        START_TYPE         : 2   AUTO_START  (DELAYED)
        ERROR_CONTROL      : 1   NORMAL
        BINARY_PATH_NAME   : "C:\Program Files\PostgreSQL\12\bin\pg_ctl.exe" runservice -N "postgresql-x64-12"
        LOAD_ORDER_GROUP   :
        TAG                : 0
        DISPLAY_NAME       : postgresql-x64-12 - PostgreSQL Server 12
        DEPENDENCIES       :
        SERVICE_START_NAME : NT AUTHORITY\NetworkService
"""
MISSING = """[SC] EnumQueryServicesStatus:OpenService FAILED 1060:

The specified service does not exist as an installed service.
"""


def test_sc_query_and_qc_outputs_are_read() -> None:
    assert parse_query(QUERY_RUNNING) == "RUNNING"
    assert parse_query(QUERY_STOP_PENDING) == "STOP_PENDING"
    assert parse_qc(QC_ENGINE) == ServiceDetails(
        display_name="Qlik Sense Engine Service",
        start_type="Automatic",
        exe_path='"C:\\Program Files\\Qlik\\Sense\\Engine\\Engine.exe" -service',
        dependencies=("QlikSenseRepositoryService", "QlikSenseServiceDispatcher"),
    )
    delayed = parse_qc(QC_DELAYED_NO_DEPENDENCIES)
    assert (delayed.start_type, delayed.dependencies) == ("Automatic (delayed start)", ())
    assert delayed.exe_path.endswith('runservice -N "postgresql-x64-12"')
    assert parse_qc(QC_ENGINE.replace("2   AUTO_START", "3   DEMAND_START")).start_type == "Manual"
    assert parse_qc(QC_ENGINE.replace("2   AUTO_START", "4   DISABLED")).start_type == "Disabled"
    for broken in (MISSING, "", "STATE : \n"):
        with pytest.raises(ServiceUnavailable):
            parse_query(broken)
    with pytest.raises(ServiceUnavailable):
        parse_qc(MISSING)


def test_sc_gets_an_argument_list_with_checked_names() -> None:
    assert sc_arguments("localhost", "query", "QlikSenseEngineService") == [
        "sc.exe",
        "query",
        "QlikSenseEngineService",
    ]
    assert sc_arguments("sense2.corp.local", "qc", "postgresql-x64-12") == [
        "sc.exe",
        "\\\\sense2.corp.local",
        "qc",
        "postgresql-x64-12",
    ]
    for host, service in (("sense2", 'x" & calc'), ("a b", "Svc"), ("sense2", "Svc;rm"), ("\\\\x", "Svc")):
        with pytest.raises(ValueError, match="not a Windows host or service name"):
            sc_arguments(host, "query", service)


def test_the_config_refuses_names_sc_exe_would_misread(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["serviceMonitor"] = {
        "enable": True,
        "monitor": [{"host": "sense1", "services": [{"name": "Engine & calc", "friendlyName": "x"}]}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(document, base_dir=tmp_path)
    assert caught.value.messages == [
        "Butler.serviceMonitor.monitor[0].services[0].name: expected a name of letters, digits, '_', '.' "
        "and '-', got 'Engine & calc'"
    ]


# --- The change rule -----------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_first_check_sets_the_state_and_a_change_counts_once() -> None:
    states = ServiceStates()
    assert states.observe("sense1", "Engine", "RUNNING") == ("RUNNING", False)
    assert states.observe("sense1", "Engine", "RUNNING") == ("RUNNING", False)
    assert states.observe("sense1", "Engine", "STOPPED") == ("RUNNING", True)
    assert states.observe("sense1", "Engine", "STOPPED") == ("STOPPED", False)
    # Pending and other states are reported but change nothing.
    assert states.observe("sense1", "Engine", "START_PENDING") == ("STOPPED", False)
    assert states.observe("sense1", "Engine", "RUNNING") == ("STOPPED", True)
    assert states.observe("sense1", "Proxy", "STOPPED") == ("STOPPED", False)
    assert states.snapshot() == {"sense1": {"Engine": "RUNNING", "Proxy": "STOPPED"}}


def test_a_state_must_be_seen_on_confirm_checks_in_a_row() -> None:
    states = ServiceStates(confirm_checks=2)
    states.observe("h", "s", "RUNNING")
    assert states.observe("h", "s", "STOPPED") == ("RUNNING", False)
    assert states.observe("h", "s", "RUNNING") == ("RUNNING", False)  # a blip: nothing happened
    assert states.observe("h", "s", "STOPPED") == ("RUNNING", False)
    assert states.observe("h", "s", "STOPPED") == ("RUNNING", True)
    assert states.unsettled("h", "s") is False


def test_alerts_are_limited_per_service_and_direction() -> None:
    clock = Clock()
    states = ServiceStates(alert_interval=300, clock=clock)
    assert states.may_alert("h", "s", "STOPPED") and states.may_alert("h", "s", "RUNNING")
    clock.now += 299
    assert not states.may_alert("h", "s", "STOPPED") and not states.may_alert("h", "s", "RUNNING")
    assert states.may_alert("h", "other", "STOPPED") and states.may_alert("h2", "s", "STOPPED")
    clock.now += 1
    assert states.may_alert("h", "s", "STOPPED")


@dataclass
class Recorder:
    """Stands in for the alert service, the MQTT client and the InfluxDB writer."""

    changes: list[ServiceChange] = field(default_factory=list)
    #: The alert channels each change was handed over for.
    channels: list[Collection[Channel] | None] = field(default_factory=list)
    statuses: list[ServerLicense] = field(default_factory=list)
    alerts: list[ServerLicense] = field(default_factory=list)
    messages: list[tuple[str, str]] = field(default_factory=list)
    points: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def service_changed(
        self, change: ServiceChange, channels: Collection[Channel] | None = None
    ) -> None:
        self.changes.append(change)
        self.channels.append(channels)

    async def server_license_status(self, license: ServerLicense) -> None:
        self.statuses.append(license)

    async def server_license_alert(self, license: ServerLicense) -> None:
        self.alerts.append(license)

    def enqueue(self, topic: str, payload: bytes | str) -> bool:
        self.messages.append((topic, payload if isinstance(payload, str) else payload.decode()))
        return True

    def write(self, measurement: str, tags: Mapping[str, str], fields: Mapping[str, Any]) -> None:
        self.points.append((measurement, dict(tags), dict(fields)))


@dataclass
class FakeSite:
    """The QRS answers the monitors read, set by the test."""

    services: list[NodeService] = field(default_factory=list)
    license: dict[str, Any] = field(default_factory=dict)
    allocations: dict[str, list[Allocation]] = field(default_factory=dict)
    users: dict[str, SenseUser] = field(default_factory=dict)
    released: list[tuple[str, str]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def service_statuses(self) -> list[NodeService]:
        return list(self.services)

    async def server_license(self) -> dict[str, Any]:
        return self.license

    async def access_overview(self) -> dict[str, Any]:
        return {}

    async def unused_allocations(self, access_type: str, cutoff: datetime) -> list[Allocation]:
        return [a for a in self.allocations.get(access_type, []) if a.last_used <= cutoff]

    async def user(self, user_ref: str) -> SenseUser:
        if user_ref not in self.users:
            raise QrsError(f"Qlik Sense QRS answered GET user/{user_ref} with 404")
        return self.users[user_ref]

    async def release(self, access_type: str, allocation_id: str) -> str | None:
        if allocation_id in self.refuse:
            return "QRS answered 403: no"
        self.released.append((access_type, allocation_id))
        return None


def _node(host: str, kind: str, status: str) -> NodeService:
    return NodeService(host, host, f"QlikSense{kind}Service", kind, f"Qlik Sense {kind} Service", status)


async def test_a_stopped_service_on_one_of_two_nodes_is_one_alert_and_one_message() -> None:
    site = FakeSite(
        [_node(host, kind, "RUNNING") for host in ("sense1", "sense2") for kind in ("Engine", "Scheduler")]
    )
    out = Recorder()
    monitor = ServiceMonitor(ServiceMonitorSettings(), MqttSettings(), site, out, out, out)
    await monitor.check()
    assert out.changes == [] and len(out.points) == 4
    assert [topic for topic, _ in out.messages] == [
        f"qliksense/service_status/{host}/QlikSense{kind}Service"
        for host in ("sense1", "sense2")
        for kind in ("Engine", "Scheduler")
    ]
    out.messages.clear()
    site.services[3] = _node("sense2", "Scheduler", "STOPPED")
    await monitor.check()
    await monitor.check()
    [change] = out.changes
    assert change == ServiceChange(
        "sense2",
        "QlikSenseSchedulerService",
        "Scheduler",
        "STOPPED",
        "RUNNING",
        ServiceDetails("Qlik Sense Scheduler Service"),
    )
    assert out.channels == [frozenset({"email", "slack", "teams", "webhook", "newrelic"})]
    stopped = [m for m in out.messages if m[0].startswith("qliksense/service_stopped/")]
    assert stopped == [
        (
            "qliksense/service_stopped/sense2/QlikSenseSchedulerService",
            '{"serviceHost": "sense2", "serviceName": "QlikSenseSchedulerService", "serviceFriendlyName": '
            '"Scheduler", "serviceDisplayName": "Qlik Sense Scheduler Service", "serviceDependencies": [], '
            '"serviceStartType": "", "serviceExePath": "", "serviceStatus": "STOPPED", "servicePrevStatus": '
            '"RUNNING", "serviceStatusChanged": true}',
        )
    ]
    assert (
        "win_service_state",
        {
            "host": "sense2",
            "service_name": "QlikSenseSchedulerService",
            "display_name": "Qlik Sense Scheduler Service",
            "friendly_name": "Scheduler",
        },
        {"state_num": 1, "state_text": "STOPPED", "startup_mode_num": -1, "startup_mode_text": ""},
    ) in out.points
    assert monitor.snapshot()["sense2"]["QlikSenseSchedulerService"] == "STOPPED"


async def test_a_flapping_service_alerts_once_per_direction_per_interval() -> None:
    site = FakeSite([_node("sense1", "Engine", "RUNNING")])
    out = Recorder()
    clock = Clock()
    settings = ServiceMonitorSettings()
    monitor = ServiceMonitor(
        settings, MqttSettings(), site, out, out, None, states=ServiceStates(1, 300, clock)
    )
    await monitor.check()
    for _ in range(5):
        for status in ("STOPPED", "RUNNING"):
            site.services[0] = replace(site.services[0], status=status)
            await monitor.check()
            clock.now += 10
    assert [c.status for c in out.changes] == ["STOPPED", "RUNNING"]
    changes = [t for t, _ in out.messages if not t.startswith("qliksense/service_status/")]
    assert len(changes) == 10  # every change still goes to MQTT
    clock.now += 300
    site.services[0] = replace(site.services[0], status="STOPPED")
    await monitor.check()
    assert [c.status for c in out.changes] == ["STOPPED", "RUNNING", "STOPPED"]


class FakeWindows:
    """``ServiceManager`` with canned answers; a service named in ``broken`` cannot be reached."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.asked: list[tuple[str, str, bool]] = []

    async def check(self, host: str, service: str, refresh: bool = False) -> CheckedService:
        self.asked.append((host, service, refresh))
        if service in self.broken:
            raise ServiceUnavailable(f"sc.exe failed for {service}")
        return CheckedService("RUNNING", parse_qc(QC_ENGINE))


async def test_one_service_that_cannot_be_checked_stops_none_of_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    services = tuple(WindowsService(name=n, friendly_name=n.lower()) for n in ("Svc1", "Gone", "Svc3"))
    settings = ServiceMonitorSettings(hosts=(WindowsHost(host="win1", services=services),), qrs=False)
    out = Recorder()
    windows = FakeWindows({"Gone"})
    monitor = ServiceMonitor(settings, MqttSettings(), None, out, out, out, windows)  # type: ignore[arg-type]
    await monitor.check()
    await monitor.check()
    assert [p[1]["service_name"] for p in out.points] == ["Svc1", "Svc3", "Svc1", "Svc3"]
    warnings = [
        r.getMessage() for r in caplog.records if "does not exist or cannot be reached" in r.getMessage()
    ]
    assert len(warnings) == 1 and "Gone on win1" in warnings[0]
    payload = out.messages[0][1]
    assert '"serviceDependencies": ["QlikSenseRepositoryService", "QlikSenseServiceDispatcher"]' in payload


# --- Server licence ------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 29, 7, 0, tzinfo=UTC)


def licence_entity(valid_to: str, expired: bool = False) -> dict[str, Any]:
    return {
        "keyDetails": f"Serial: 9999\nProduct: Qlik Sense Enterprise\nValid To: {valid_to}\n",
        "isExpired": expired,
    }


def test_days_until_expiry_are_counted_as_upstream_does() -> None:
    assert read_server_license(licence_entity("2026-12-09"), NOW) == ServerLicense(False, "2026-12-09", 10)
    assert read_server_license(licence_entity("2026-11-29"), NOW).days_until_expiry == 0
    assert read_server_license(licence_entity("2026-11-30"), NOW).days_until_expiry == 1
    assert read_server_license(licence_entity("2026-11-01", True), NOW).days_until_expiry == -28
    for broken in (
        {"keyDetails": "Valid From: 2024-01-01", "isExpired": False},
        {"keyDetails": "Valid To: 2026-12-09"},
    ):
        with pytest.raises(Exception, match="has no"):
            read_server_license(broken, NOW)
    with pytest.raises(Exception, match="cannot be read"):
        read_server_license(licence_entity("31/12/2026"), NOW)


def test_an_expiry_alert_is_sent_once_per_threshold_crossing() -> None:
    alerts = ExpiryAlerts(threshold_days=60)

    def day(days: int, expired: bool = False) -> str | None:
        return alerts.next(ServerLicense(expired, "x", days))

    assert [day(d) for d in (90, 61, 60, 59, 10, 1, 0)] == [None, None, "expiring", None, None, None, None]
    assert [day(-1, True), day(-2, True)] == ["expired", None]
    assert [day(400), day(365), day(60), day(30)] == [None, None, "expiring", None]
    assert ExpiryAlerts(60).next(ServerLicense(True, "x", 5)) == "expired"


async def test_a_licence_10_days_from_expiry_alerts_once_and_reports_every_check() -> None:
    site = FakeSite(license=licence_entity((NOW + timedelta(days=10)).date().isoformat()))
    out = Recorder()
    settings = ServerLicenseSettings(
        mqtt=replace(ServerLicenseSettings().mqtt, enable=True),
        webhook=replace(ServerLicenseSettings().webhook, enable=True),
        influx=replace(ServerLicenseSettings().influx, enable=True, tags=(("env", "prod"),)),
    )
    monitor = ServerLicenseMonitor(settings, MqttSettings(), site, out, out, out, now=lambda: NOW)
    for _ in range(3):
        await monitor.check()
    licence = ServerLicense(False, "2026-12-09", 10)
    assert out.alerts == [licence] and out.statuses == [licence] * 3
    expiring = [m for m in out.messages if m[0] == "qliksense/qliksense_server_license_expire"]
    assert expiring == [
        (
            "qliksense/qliksense_server_license_expire",
            "Qlik Sense server license is about to expire in 10 days, on 2026-12-09",
        )
    ]
    recurring = [m for m in out.messages if m[0] == "qliksense/qliksense_server_license"]
    assert (
        recurring
        == [
            (
                "qliksense/qliksense_server_license",
                '{"licenseExpired": false, "expiryDateStr": "2026-12-09", "daysUntilExpiry": 10}',
            )
        ]
        * 3
    )
    assert out.points[0] == (
        "qlik_sense_server_license",
        {"env": "prod"},
        {"license_expired": False, "expiry_date": "2026-12-09", "days_until_expiry": 10},
    )
    site.license = licence_entity("2026-11-01", expired=True)
    await monitor.check()
    await monitor.check()
    assert len(out.alerts) == 2
    expired = [m for m in out.messages if m[0].endswith("_expire")][1:]
    assert expired == [
        ("qliksense/qliksense_server_license_expire", "Qlik Sense server license expired on 2026-11-01")
    ]


def test_access_licence_points_read_used_tokens() -> None:
    overview = {
        "totalTokens": 100,
        "availableTokens": 40,
        "userAccess": {
            "enabled": True,
            "tokenCost": 1,
            "allocatedTokens": 50,
            "usedTokens": 45,
            "quarantinedTokens": 2,
        },
        "loginAccess": {"enabled": False},
        "professionalAccess": {
            "enabled": True,
            "total": 100,
            "allocated": 80,
            "used": 75,
            "quarantined": 2,
            "excess": 0,
            "available": 18,
        },
    }
    points = access_points(overview)
    assert points == {
        "professional": {
            "allocated": 80,
            "available": 18,
            "excess": 0,
            "quarantined": 2,
            "total": 100,
            "used": 75,
        },
        "token_user": {"allocated_tokens": 50, "quarantined_tokens": 2, "token_cost": 1, "used_tokens": 45},
        "tokens_available": {"available_tokens": 40, "total_tokens": 100},
    }


# --- Licence release -----------------------------------------------------------------------------------

NEVER = NeverRelease(
    users=(("INTERNAL", "sa_repository"),),
    tags=("License do not release",),
    custom_properties=(("LicenseManage", "do-not-release"),),
    user_directories=("ADMIN",),
)


def user(directory: str = "CORP", user_id: str = "u", **kwargs: Any) -> SenseUser:
    values: dict[str, Any] = {
        "tags": (),
        "custom_properties": (),
        "inactive": False,
        "blocked": False,
        "removed_externally": False,
    } | kwargs
    return SenseUser(directory, user_id, **values)


def test_the_never_release_rules_in_upstreams_order() -> None:
    assert keep_reason(user(), NEVER) is None
    assert keep_reason(user("INTERNAL", "sa_repository"), NEVER) == "neverRelease.user"
    assert keep_reason(user("internal", "sa_repository"), NEVER) is None  # exact, as upstream
    assert (
        keep_reason(user(tags=("x", "License do not release")), NEVER)
        == "neverRelease.tag (License do not release)"
    )
    cp = user(custom_properties=(("LicenseManage", "do-not-release"),))
    assert keep_reason(cp, NEVER) == "neverRelease.customProperty (LicenseManage=do-not-release)"
    assert keep_reason(user(custom_properties=(("LicenseManage", "release"),)), NEVER) is None
    assert keep_reason(user("ADMIN"), NEVER) == "neverRelease.userDirectory"
    # The first rule that matches is the reason.
    both = user("ADMIN", tags=("License do not release",))
    assert keep_reason(both, NEVER) == "neverRelease.tag (License do not release)"
    yes = replace(NEVER, inactive="yes", blocked="no", removed_externally="yes")
    assert keep_reason(user(inactive=True, blocked=True), yes) == "neverRelease.inactive (yes)"
    assert keep_reason(user(blocked=True), yes) is None
    assert keep_reason(user(blocked=False), yes) == "neverRelease.blocked (no)"
    assert (
        keep_reason(user(blocked=True, removed_externally=True), yes)
        == "neverRelease.removedExternally (yes)"
    )
    assert keep_reason(user(inactive=True, blocked=True), NEVER) is None  # ignore


def release_site() -> FakeSite:
    def allocation(number: int, directory: str, user_id: str, days: int) -> Allocation:
        return Allocation(
            f"a{number}", user_id, directory, f"ref-{user_id}", NOW - timedelta(days=days, hours=1)
        )

    professional = [
        allocation(1, "CORP", "anna", 45),
        allocation(2, "INTERNAL", "sa_repository", 60),
        allocation(3, "CORP", "peter", 40),
        allocation(4, "CORP", "goran", 1),
        replace(allocation(5, "CORP", "gone", 50), quarantined=True),
    ]
    analyzer = [
        allocation(6, "CORP", "maria", 90),
        allocation(7, "CORP", "lisa", 35),
        allocation(8, "CORP", "olle", 31),
    ]
    users = {
        "ref-anna": user("CORP", "anna"),
        "ref-peter": user("CORP", "peter", tags=("License do not release",)),
        "ref-goran": user("CORP", "goran"),
        "ref-maria": user("CORP", "maria", inactive=True),
        "ref-lisa": user("CORP", "lisa", custom_properties=(("LicenseManage", "do-not-release"),)),
        "ref-olle": user("CORP", "olle"),
    }
    return FakeSite(allocations={"professional": professional, "analyzer": analyzer}, users=users)


def release_settings(**changes: Any) -> LicenseReleaseSettings:
    return replace(LicenseReleaseSettings(never=NEVER), **changes)


async def test_a_dry_run_releases_nothing_and_records_who_would_be_released() -> None:
    site = release_site()
    release = LicenseRelease(release_settings(), site, None, now=lambda: NOW)
    await release.check()
    assert site.released == []
    assert [
        (r["licenseType"], r["userId"], r["daysSinceLastUse"], r["dryRun"], r["result"])
        for r in release.releases()
    ] == [
        ("analyzer", "olle", 31, True, "would be released"),
        ("analyzer", "maria", 90, True, "would be released"),
        ("professional", "anna", 45, True, "would be released"),
    ]
    assert release.last_run == {"released": 0, "wouldRelease": 3, "kept": 3, "failed": 0, "left": 0}


async def test_a_live_run_releases_exactly_those_and_records_a_refusal() -> None:
    site = release_site()
    site.refuse = {"a8"}
    out = Recorder()
    settings = release_settings(dry_run=False, influx=replace(LicenseReleaseSettings().influx, enable=True))
    release = LicenseRelease(settings, site, out, now=lambda: NOW)
    await release.check()
    assert site.released == [("professional", "a1"), ("analyzer", "a6")]
    assert [(r["userId"], r["dryRun"], r["result"]) for r in release.releases()] == [
        ("olle", False, "QRS answered 403: no"),
        ("maria", False, "released"),
        ("anna", False, "released"),
    ]
    assert out.points == [
        (
            "qlik_sense_license_release",
            {"license_type": "professional", "user": "CORP\\anna", "dry_run": "false"},
            {"days_since_last_use": 45},
        ),
        (
            "qlik_sense_license_release",
            {"license_type": "analyzer", "user": "CORP\\maria", "dry_run": "false"},
            {"days_since_last_use": 90},
        ),
    ]


async def test_a_capped_run_releases_those_unused_longest_and_leaves_the_rest() -> None:
    site = release_site()
    settings = release_settings(dry_run=False, max_per_run=1)
    release = LicenseRelease(settings, site, None, now=lambda: NOW)
    await release.check()
    assert site.released == [("professional", "a1")]
    # Not looked at: peter (professional), and the three analyzer candidates.
    assert release.last_run["left"] == 4
    only_analyzer = release_settings(
        dry_run=False, types={"analyzer": ReleaseType(), "professional": ReleaseType(enable=False)}
    )
    release = LicenseRelease(only_analyzer, release_site(), None, now=lambda: NOW)
    await release.check()
    assert [r["userId"] for r in release.releases()] == ["olle", "maria"]


# --- The runner ----------------------------------------------------------------------------------------


async def test_checks_run_at_start_and_at_each_fire_and_failures_are_logged_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "butler")
    clock = Clock(now=datetime(2026, 5, 4, 7, 0, 10, tzinfo=UTC).timestamp())
    slept: list[float] = []
    ran: list[float] = []
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds
        if len(slept) >= 4:
            await gate.wait()

    async def check() -> None:
        ran.append(clock.now)
        raise ConnectionError("refused")

    runner = Periodic("heartbeat", parse("every 30 seconds"), check, at_start=True, clock=clock, sleep=sleep)
    runner.start()
    await asyncio.sleep(0.05)
    await runner.stop()
    assert slept == [20.0, 30.0, 30.0, 30.0]
    assert [datetime.fromtimestamp(t, UTC).strftime("%M:%S") for t in ran] == [
        "00:10",
        "00:30",
        "01:00",
        "01:30",
    ]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "heartbeat failed: refused" in errors[0].getMessage()
    assert runner.stats()["failures"] == 4 and runner.stats()["failingInARow"] == 4
    # The same error again after the quiet time is logged once more; a recovery is logged too.
    assert runner._logged_error is not None
    runner._logged_error = ("refused", runner._logged_error[1] - QUIET_SECONDS)
    await runner.run_once()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
    runner.check = _fine
    await runner.run_once()
    assert "works again after 5 failed checks" in caplog.records[-1].getMessage()


async def _fine() -> None:
    return None


# --- Uptime --------------------------------------------------------------------------------------------


def test_uptime_figures_and_the_new_relic_body() -> None:
    status = (
        "Name:\tpython\nVmData:\t  204800 kB\nVmRSS:\t   51200 kB\nRssAnon:\t   40960 kB\n"
        "RssFile:\t   10240 kB\n"
    )
    memory = linux_memory(status)
    assert (memory.heap_used, memory.heap_total, memory.external, memory.process_memory) == (40, 200, 10, 50)
    assert uptime_text(90061) == "1 day, 1 hour, 1 minute, 1 second"
    assert uptime_text(7322) == "2 hours, 2 minutes, 2 seconds"
    settings = UptimeSettings()
    nr = replace(settings.new_relic, attributes=(("service", "butler"),), uptime=False)
    monitor = UptimeMonitor(replace(settings, new_relic=nr), "1.2.3", 900000, (), None, 0.0)
    body = monitor.new_relic_body(memory, 12.5, 1700000000000)
    assert body == [
        {
            "common": {
                "timestamp": 1700000000000,
                "interval.ms": 900000,
                "attributes": {"service": "butler", "version": "1.2.3"},
            },
            "metrics": [
                {"name": "qs_butlerHeapUsed", "type": "gauge", "value": 40.0},
                {"name": "qs_butlerHeapTotal", "type": "gauge", "value": 200.0},
                {"name": "qs_butlerExternalMem", "type": "gauge", "value": 10.0},
                {"name": "qs_butlerProcessMem", "type": "gauge", "value": 50.0},
            ],
        }
    ]
    assert math.isclose(sum(m["value"] for m in body[0]["metrics"]), 300.0)


class DownSite(FakeSite):
    async def service_statuses(self) -> list[NodeService]:
        raise QrsError("cannot connect to Qlik Sense QRS at sense1:4242")


async def test_qrs_that_cannot_be_asked_stops_no_windows_check_and_fails_the_check() -> None:
    services = (WindowsService(name="Svc1", friendly_name="one"),)
    settings = ServiceMonitorSettings(hosts=(WindowsHost(host="win1", services=services),))
    out = Recorder()
    monitor = ServiceMonitor(settings, MqttSettings(), DownSite(), out, out, out, FakeWindows(set()))  # type: ignore[arg-type]
    with pytest.raises(QrsError, match="cannot connect"):
        await monitor.check()
    assert [p[1]["service_name"] for p in out.points] == ["Svc1"]


# --- Heartbeat -----------------------------------------------------------------------------------------


async def test_a_heartbeat_gets_its_url_and_fails_on_an_error_or_no_answer_in_time() -> None:
    from aiohttp import web

    from butler.config.monitors import HeartbeatSettings
    from butler.monitors.process import BeatFailed, Heartbeat

    beats: list[str] = []
    answer = {"status": 200, "delay": 0.0}

    async def beat(request: web.Request) -> web.Response:
        beats.append(request.method)
        await asyncio.sleep(answer["delay"])
        return web.Response(status=int(answer["status"]))

    app = web.Application()
    app.router.add_get("/ping/abc", beat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    heartbeat = Heartbeat(HeartbeatSettings(url=f"http://127.0.0.1:{port}/ping/abc", timeout=1))
    try:
        await heartbeat.check()
        assert beats == ["GET"]
        answer["status"] = 503
        with pytest.raises(BeatFailed, match="answered 503"):
            await heartbeat.check()
        answer.update(status=200, delay=3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(BeatFailed, match="no answer within 1 s"):
            await heartbeat.check()
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await heartbeat.close()
        await runner.cleanup()


async def test_the_uptime_block_is_logged_at_its_level_and_written_to_influxdb(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(5, "butler")
    out = Recorder()
    settings = replace(UptimeSettings(), log_level="warn", influx=True)
    monitor = UptimeMonitor(settings, "1.2.3", 900000, (), out, started=0.0)
    await monitor.check()
    await monitor.check()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines[1] == "Iteration # 1" and lines[7] == "Iteration # 2"
    assert lines[2].startswith("Process uptime: ") and lines[3].startswith("Memory: Heap used ")
    assert [p[0] for p in out.points] == ["butler_memory_usage"] * 2
    assert out.points[0][1] == {"version": "1.2.3"} and out.points[0][2]["process_memory"] > 1
    assert monitor.found is not None and monitor.found["processMemoryMB"] > 1


def test_upstreams_template_with_every_monitor_on_loads(tmp_path: Path) -> None:
    import yaml

    from tests.conftest import TEMPLATE

    document = yaml.safe_load(TEMPLATE.read_text())
    butler = document["Butler"]
    sections = [
        butler["serviceMonitor"],
        butler["qlikSenseVersion"]["versionMonitor"],
        butler["heartbeat"],
        butler["uptimeMonitor"],
        butler["uptimeMonitor"]["storeInInfluxdb"],
        butler["uptimeMonitor"]["storeNewRelic"],
        *butler["qlikSenseLicense"].values(),
    ]
    for section in sections:
        section["enable"] = True
    butler["serviceMonitor"]["monitor"] = [
        {"host": "sense1", "services": [{"name": "QlikSenseEngineService", "friendlyName": "Engine"}]}
    ]
    monitors = parse_config(document, base_dir=tmp_path).monitors
    assert monitors.any_on and all(section.enable for section in (monitors.services, monitors.release))
    assert monitors.release.dry_run is True and monitors.release.never.inactive == "ignore"
    assert [parse(text).text for text in (monitors.services.frequency, monitors.uptime.frequency)] == [
        "every 30 seconds",
        "every 15 minutes",
    ]
    assert monitors.uptime.new_relic.accounts == ("First NR account", "Second NR account")


async def test_a_user_qrs_cannot_tell_about_stops_no_other_release() -> None:
    site = release_site()
    del site.users["ref-maria"]
    release = LicenseRelease(release_settings(dry_run=False), site, None, now=lambda: NOW)
    await release.check()
    assert site.released == [("professional", "a1"), ("analyzer", "a8")]
    assert release.last_run == {"released": 2, "wouldRelease": 0, "kept": 3, "failed": 1, "left": 0}


async def test_sc_exe_runs_without_a_shell_and_details_are_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in ``sc.exe`` on the PATH records its arguments and answers as the real one does."""
    from butler.monitors.windows import ServiceManager

    calls = tmp_path / "calls"
    (tmp_path / "query.txt").write_text(QUERY_RUNNING)
    (tmp_path / "qc.txt").write_text(QC_ENGINE)
    script = tmp_path / "sc.exe"
    script.write_text(
        f'#!/bin/sh\nprintf "%s|" "$@" >> {calls}; echo >> {calls}\n'
        f'for last; do :; done\nif [ "$last" = Missing ]; then cat <<EOF\n{MISSING}EOF\nexit 36; fi\n'
        f'for a; do case "$a" in query) cat {tmp_path}/query.txt;; qc) cat {tmp_path}/qc.txt;; esac; done\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    manager = ServiceManager()
    first = await manager.check("sense2", "QlikSenseEngineService")
    again = await manager.check("sense2", "QlikSenseEngineService")
    assert first == again and first.status == "RUNNING" and first.details.start_type == "Automatic"
    await manager.check("sense2", "QlikSenseEngineService", refresh=True)
    assert calls.read_text().splitlines() == [
        "\\\\sense2|query|QlikSenseEngineService|",
        "\\\\sense2|qc|QlikSenseEngineService|",
        "\\\\sense2|query|QlikSenseEngineService|",
        "\\\\sense2|query|QlikSenseEngineService|",
        "\\\\sense2|qc|QlikSenseEngineService|",
    ]
    with pytest.raises(ServiceUnavailable, match=r"failed \(36\): \[SC\] EnumQueryServicesStatus"):
        await manager.check("sense2", "Missing")
    with pytest.raises(ValueError):
        await manager.check("sense2", "$(touch pwned)")
    assert not (tmp_path / "pwned").exists()


async def test_monitors_are_built_from_their_settings_and_report_their_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from butler.monitors.setup import Monitors

    document = base_config()
    document["Butler"]["serviceMonitor"] = {"enable": True, "frequency": "every 1 seconds"}
    document["Butler"]["qlikSenseLicense"] = {"licenseRelease": {"enable": True}}
    document["Butler"]["heartbeat"] = {"enable": False}
    settings = parse_config(document, base_dir=tmp_path)
    common: dict[str, Any] = {"publisher": None, "influx": None, "version": "1", "started": 0.0}
    without_qlik = Monitors.open(settings, site=None, alerts=None, **common)
    assert without_qlik.runners == {}
    assert sum("Butler.cert is not set" in r.getMessage() for r in caplog.records) == 2
    site = FakeSite([_node("sense1", "Engine", "RUNNING")])
    monitors = Monitors.open(settings, site=site, alerts=object(), **common)
    assert list(monitors.runners) == ["serviceMonitor", "licenseRelease"]
    assert "take no monitor alerts" in caplog.records[-1].getMessage()
    monitors.start()
    try:
        await eventually(lambda: all(r.runs for r in monitors.runners.values()), 5)
    finally:
        await monitors.stop()
    stats = monitors.stats()
    assert (
        stats["serviceMonitor"]["frequency"] == "every 1 seconds"
        and stats["licenseRelease"]["lastError"] is None
    )
    snapshot = monitors.snapshot()
    assert snapshot["services"] == {"sense1": {"QlikSenseEngineService": "RUNNING"}}
    assert snapshot["releases"] == {
        "lastRun": {"released": 0, "wouldRelease": 0, "kept": 0, "failed": 0, "left": 0},
        "recorded": 0,
    }
    assert snapshot["serverLicense"] is None and snapshot["uptime"] is None


async def test_uptime_metrics_are_posted_to_each_new_relic_account(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from aiohttp import web

    from butler.config.alerts import NewRelicAccount
    from butler.errors import UpstreamError

    received: list[tuple[dict[str, str], Any]] = []

    async def metric(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.json()))
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/metric/v1", metric)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    settings = UptimeSettings()
    new_relic = replace(
        settings.new_relic,
        enable=True,
        url=f"http://127.0.0.1:{port}/metric/v1",
        accounts=("First", "Nowhere"),
        headers=(("X-My-Header", "v"),),
    )
    accounts = (NewRelicAccount(name="First", insert_api_key="key-1", account_id="1"),)
    monitor = UptimeMonitor(replace(settings, new_relic=new_relic), "1.2.3", 900000, accounts, None, 0.0)
    try:
        with pytest.raises(UpstreamError, match="Nowhere: no such account"):
            await monitor.check()
    finally:
        await monitor.close()
        await runner.cleanup()
    [(headers, body)] = received
    assert headers["Api-Key"] == "key-1" and headers["X-My-Header"] == "v"
    assert [m["name"] for m in body[0]["metrics"]][-1] == "qs_butlerUptimeMillisec"
    assert body[0]["common"]["attributes"] == {"version": "1.2.3"}


async def test_the_alert_destinations_that_are_off_are_not_alerted(tmp_path: Path) -> None:
    site = FakeSite([_node("sense1", "Engine", "RUNNING")])
    out = Recorder()
    document = base_config()
    off = {"email": {"enable": False}, "teams": {"enable": False}}
    document["Butler"]["serviceMonitor"] = {"enable": True, "alertDestination": off}
    settings = parse_config(document, base_dir=tmp_path).monitors.services
    monitor = ServiceMonitor(settings, MqttSettings(), site, out, out, out)
    await monitor.check()
    site.services[0] = _node("sense1", "Engine", "STOPPED")
    await monitor.check()
    assert out.channels == [frozenset({"slack", "webhook", "newrelic"})]
