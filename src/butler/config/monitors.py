"""The monitors' settings: ``serviceMonitor``, ``qlikSenseVersion``, ``qlikSenseLicense``, ``heartbeat``,
``uptimeMonitor`` and the MQTT topics they publish on, with upstream's keys and defaults.

Every ``frequency`` is later.js text, checked here against the forms ``butler.monitors.later`` runs, so a
text a monitor could not run is a config error naming the forms that work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from butler.config.alerts import _NAME_VALUE
from butler.config.declare import items, part, setting
from butler.config.schema import Bool, Enum, Int, Key, ListOf, Section, Spec, Str
from butler.logs import LEVELS
from butler.monitors.later import LaterError, parse

#: Windows service and host names: what ``sc.exe`` is given, so nothing in them can mean more.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Later(Spec):
    """later.js text of one of the forms the monitors run (``every 30 seconds``)."""

    @property
    def expected(self) -> str:
        return "later.js text such as 'every 30 seconds'"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            self.fail(value, path, errors)
            return None
        try:
            parse(value)
        except LaterError as exc:
            errors.append(f"{path}: {exc}")
            return None
        return value


class _Name(Spec):
    """A Windows service or host name: letters, digits, ``_``, ``.`` and ``-``."""

    @property
    def expected(self) -> str:
        return "a name of letters, digits, '_', '.' and '-'"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and NAME_PATTERN.match(value):
            return value
        self.fail(value, path, errors)
        return None


class _YesNoIgnore(Spec):
    """``ignore``, ``yes`` or ``no`` in any case, as upstream reads them; kept lower-cased."""

    @property
    def expected(self) -> str:
        return "ignore, yes or no"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and value.lower() in ("ignore", "yes", "no"):
            return value.lower()
        self.fail(value, path, errors)
        return None


def _frequency(default: str) -> Any:
    return setting("frequency", _Later(), default, help="later.js text: when the monitor runs")


def _pairs(values: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((item["name"], item["value"]) for item in values)


def _enable(default: bool, what: str) -> Any:
    return setting("enable", Bool(), default, help=what)


@dataclass(frozen=True, kw_only=True)
class InfluxDestination:
    """``destination.influxDb`` of a monitor: whether its points are written, and their own tags."""

    enable: bool = _enable(False, "write this monitor's points to InfluxDB (Butler.influxDb)")
    tags: tuple[tuple[str, str], ...] = setting(
        "tag.static",
        ListOf(_NAME_VALUE),
        convert=_pairs,
        help="[{name, value}]: tags of this monitor's points",
    )


@dataclass(frozen=True, kw_only=True)
class WindowsService:
    """An item of ``serviceMonitor.monitor[].services``."""

    name: str = setting("name", _Name(), required=True, help="the Windows service name (sc.exe's)")
    friendly_name: str = setting("friendlyName", Str(), "", help="the name alerts show")


@dataclass(frozen=True, kw_only=True)
class WindowsHost:
    """An item of ``serviceMonitor.monitor``."""

    host: str = setting("host", _Name(), required=True, help="the Windows host the services run on")
    services: tuple[WindowsService, ...] = items(
        "services", WindowsService, help="[{name, friendlyName}]: its services to check"
    )


_DESTINATIONS = ("influxDb", "newRelic", "email", "mqtt", "teams", "slack", "webhook")


@dataclass(frozen=True, kw_only=True)
class ServiceMonitorSettings:
    """``Butler.serviceMonitor``."""

    enable: bool = _enable(False, "check the Sense services' states")
    frequency: str = _frequency("every 30 seconds")
    hosts: tuple[WindowsHost, ...] = items(
        "monitor",
        WindowsHost,
        help="[{host, services: [{name, friendlyName}]}]: Windows services checked with sc.exe (on Windows)",
    )
    influx: bool = setting("alertDestination.influxDb.enable", Bool(), True, help="write win_service_state")
    new_relic: bool = setting("alertDestination.newRelic.enable", Bool(), True, help="alert New Relic")
    email: bool = setting("alertDestination.email.enable", Bool(), True, help="alert by e-mail")
    mqtt: bool = setting("alertDestination.mqtt.enable", Bool(), True, help="publish states to MQTT")
    teams: bool = setting("alertDestination.teams.enable", Bool(), True, help="alert Teams")
    slack: bool = setting("alertDestination.slack.enable", Bool(), True, help="alert Slack")
    webhook: bool = setting("alertDestination.webhook.enable", Bool(), True, help="alert the webhooks")
    qrs: bool = setting(
        "qrs.enable",
        Bool(),
        True,
        addition=True,
        help="also check every node's Sense services through QRS servicestatus (any OS, every node)",
    )
    confirm_checks: int = setting(
        "confirmChecks",
        Int(1, 100),
        1,
        addition=True,
        help="checks in a row a service must be seen stopped (or running) before that counts as a change",
    )
    alert_interval: int = setting(
        "alertRateLimitSeconds",
        Int(0, 86400),
        300,
        addition=True,
        help="alerts per service and direction (stopped, started) at most once in this many seconds",
    )

    @property
    def alerts_on(self) -> bool:
        return self.new_relic or self.email or self.teams or self.slack or self.webhook


@dataclass(frozen=True, kw_only=True)
class VersionMonitorSettings:
    """``Butler.qlikSenseVersion.versionMonitor``."""

    enable: bool = _enable(False, "read the Sense version from the systeminfo endpoint")
    frequency: str = _frequency("every 24 hours")
    host: str = setting("host", Str(), "", help="a Sense node (each serves port 9032)")
    port: int = setting("port", Int(1, 65535), 9032, addition=True, help="the systeminfo port")
    reject_unauthorized: bool = setting(
        "rejectUnauthorized",
        Bool(),
        False,
        help="verify the node's certificate against Butler.cert.clientCertCA",
    )
    influx: InfluxDestination = part("destination.influxDb", InfluxDestination)


@dataclass(frozen=True, kw_only=True)
class Recurring:
    """``destination.mqtt`` or ``destination.webhook`` of the server licence monitor."""

    enable: bool = _enable(False, "send the licence's state to this destination")
    recurring: bool = setting("sendRecurring.enable", Bool(), True, help="at every check")
    alert: bool = setting(
        "sendAlert.enable", Bool(), True, help="an alert when the days left fall below the threshold"
    )


@dataclass(frozen=True, kw_only=True)
class ServerLicenseSettings:
    """``Butler.qlikSenseLicense.serverLicenseMonitor``."""

    enable: bool = _enable(False, "check the server licence's expiry")
    frequency: str = _frequency("every 24 hours")
    threshold_days: int = setting(
        "alert.thresholdDays", Int(0, 36500), 60, help="alert when fewer days than this are left"
    )
    influx: InfluxDestination = part("destination.influxDb", InfluxDestination)
    mqtt: Recurring = part("destination.mqtt", Recurring)
    webhook: Recurring = part("destination.webhook", Recurring)


@dataclass(frozen=True, kw_only=True)
class AccessLicenseSettings:
    """``Butler.qlikSenseLicense.licenseMonitor``."""

    enable: bool = _enable(False, "read the access licence usage")
    frequency: str = _frequency("every 6 hours")
    influx: InfluxDestination = part("destination.influxDb", InfluxDestination)


_USER = Section(keys={"userDir": Key(Str(), required=True), "userId": Key(Str(), required=True)})


def _users(values: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((item["userDir"], item["userId"]) for item in values)


@dataclass(frozen=True, kw_only=True)
class ReleaseType:
    """``licenseRelease.licenseType.<type>``."""

    enable: bool = _enable(True, "release allocations of this type")
    threshold_days: int = setting(
        "releaseThresholdDays", Int(1, 36500), 30, help="days unused after which an allocation is released"
    )


@dataclass(frozen=True, kw_only=True)
class NeverRelease:
    """``licenseRelease.neverRelease``: the users whose allocations stay, checked in this order."""

    users: tuple[tuple[str, str], ...] = setting(
        "user", ListOf(_USER), convert=_users, help="[{userDir, userId}]: these users"
    )
    tags: tuple[str, ...] = setting("tag", ListOf(Str()), convert=tuple, help="users with any of these tags")
    custom_properties: tuple[tuple[str, str], ...] = setting(
        "customProperty", ListOf(_NAME_VALUE), convert=_pairs, help="[{name, value}]: users with one of these"
    )
    user_directories: tuple[str, ...] = setting(
        "userDirectory", ListOf(Str()), convert=tuple, help="users of these user directories"
    )
    inactive: str = setting(
        "inactive", _YesNoIgnore(), "ignore", help="yes: keep inactive users; no: keep active users"
    )
    blocked: str = setting(
        "blocked", _YesNoIgnore(), "ignore", help="yes: keep blocked users; no: the others"
    )
    removed_externally: str = setting(
        "removedExternally",
        _YesNoIgnore(),
        "ignore",
        help="yes: keep users removed externally; no: the others",
    )


@dataclass(frozen=True, kw_only=True)
class LicenseReleaseSettings:
    """``Butler.qlikSenseLicense.licenseRelease``."""

    enable: bool = _enable(False, "release access allocations unused for long")
    dry_run: bool = setting("dryRun", Bool(), True, help="only record what would be released")
    frequency: str = _frequency("every 24 hours")
    never: NeverRelease = part("neverRelease", NeverRelease)
    types: dict[str, ReleaseType] = part(
        "licenseType", {"analyzer": ReleaseType, "professional": ReleaseType}
    )
    max_per_run: int = setting(
        "maxReleasesPerRun",
        Int(1, 100000),
        100,
        addition=True,
        help="allocations released (or recorded as would-be) at most per run; the rest wait for the next",
    )
    influx: InfluxDestination = part("destination.influxDb", InfluxDestination)


@dataclass(frozen=True, kw_only=True)
class HeartbeatSettings:
    """``Butler.heartbeat``."""

    enable: bool = _enable(False, "GET remoteURL on a schedule")
    url: str = setting(
        "remoteURL", Str(), "", help="the URL to GET (a healthchecks.io or Uptime Kuma push URL)"
    )
    frequency: str = _frequency("every 30 seconds")
    timeout: int = setting(
        "timeoutSeconds", Int(1, 300), 10, addition=True, help="a beat not answered in this time failed"
    )


@dataclass(frozen=True, kw_only=True)
class UptimeNewRelic:
    """``uptimeMonitor.storeNewRelic``."""

    enable: bool = _enable(False, "send Butler's memory and uptime to New Relic as metrics")
    accounts: tuple[str, ...] = setting(
        "destinationAccount",
        ListOf(Str()),
        convert=tuple,
        help="names of thirdPartyToolsCredentials.newRelic",
    )
    url: str = setting(
        "url", Str(), "https://insights-collector.eu01.nr-data.net/metric/v1", help="New Relic's metric API"
    )
    headers: tuple[tuple[str, str], ...] = setting(
        "header", ListOf(_NAME_VALUE), convert=_pairs, help="[{name, value}]: more HTTP headers"
    )
    memory: bool = setting(
        "metric.dynamic.butlerMemoryUsage.enable", Bool(), True, help="send the memory metrics"
    )
    uptime: bool = setting("metric.dynamic.butlerUptime.enable", Bool(), True, help="send the uptime metric")
    attributes: tuple[tuple[str, str], ...] = setting(
        "attribute.static",
        ListOf(_NAME_VALUE),
        convert=_pairs,
        help="[{name, value}]: attributes of the metrics",
    )
    version: bool = setting(
        "attribute.dynamic.butlerVersion.enable", Bool(), True, help="add Butler's version as an attribute"
    )


@dataclass(frozen=True, kw_only=True)
class UptimeSettings:
    """``Butler.uptimeMonitor``."""

    enable: bool = _enable(False, "log Butler's uptime and memory on a schedule")
    frequency: str = _frequency("every 15 minutes")
    log_level: str = setting(
        "logLevel", Enum(choices=tuple(LEVELS)), "verbose", help="the level of its log block"
    )
    influx: bool = setting("storeInInfluxdb.enable", Bool(), False, help="write butler_memory_usage")
    new_relic: UptimeNewRelic = part("storeNewRelic", UptimeNewRelic)


@dataclass(frozen=True, kw_only=True)
class MonitorSettings:
    """Every monitor's section (their MQTT topics are in ``MqttSettings``)."""

    services: ServiceMonitorSettings = part("serviceMonitor", ServiceMonitorSettings, help="Sense services")
    version: VersionMonitorSettings = part(
        "qlikSenseVersion.versionMonitor", VersionMonitorSettings, help="the Sense version"
    )
    server_license: ServerLicenseSettings = part(
        "qlikSenseLicense.serverLicenseMonitor", ServerLicenseSettings, help="the server licence's expiry"
    )
    access_license: AccessLicenseSettings = part(
        "qlikSenseLicense.licenseMonitor", AccessLicenseSettings, help="access licence usage"
    )
    release: LicenseReleaseSettings = part(
        "qlikSenseLicense.licenseRelease", LicenseReleaseSettings, help="releasing unused access allocations"
    )
    heartbeat: HeartbeatSettings = part("heartbeat", HeartbeatSettings, help="I'm-alive calls")
    uptime: UptimeSettings = part("uptimeMonitor", UptimeSettings, help="Butler's uptime and memory")

    @property
    def any_on(self) -> bool:
        return any(
            section.enable
            for section in (
                self.services,
                self.version,
                self.server_license,
                self.access_license,
                self.release,
                self.heartbeat,
                self.uptime,
            )
        )
