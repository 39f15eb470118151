"""The Sense version, the server licence, access licence usage, and releasing unused access allocations.

Server licence alerts (unlike upstream, which repeats them at every check) are sent once when the days
left fall to ``thresholdDays`` or below, once more when the licence expires, and again only after the
licence was renewed above the threshold and falls again (``ExpiryAlerts``). The recurring outputs (MQTT,
webhook, InfluxDB) still go out at every check. The state is kept in memory: a restart below the
threshold alerts once more.
"""

from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from butler.config.monitors import (
    AccessLicenseSettings,
    InfluxDestination,
    LicenseReleaseSettings,
    NeverRelease,
    ServerLicenseSettings,
    VersionMonitorSettings,
)
from butler.config.settings import MqttSettings
from butler.errors import UpstreamError
from butler.monitor_events import ServerLicense
from butler.monitors.outputs import AlertSink, FieldValue, InfluxSink, Publisher
from butler.monitors.sense import ACCESS_TYPES, Allocation, SenseSite, SenseUser, SystemInfo

log = logging.getLogger("butler")

Now = Callable[[], datetime]
DAY = timedelta(days=1)
#: Releases and would-be releases kept for ``GET /v4/licenses/releases``.
RELEASES_KEPT = 1000


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _write(
    influx: InfluxSink | None,
    destination: InfluxDestination,
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
) -> None:
    if influx is not None and destination.enable:
        influx.write(measurement, {**dict(destination.tags), **tags}, fields)


# --- Version -------------------------------------------------------------------------------------------

_VERSION_FIELDS = {
    "content_hash": "contentHash",
    "sense_id": "senseId",
    "version": "version",
    "deployment_type": "deploymentType",
    "release_label": "releaseLabel",
    "deprecated_product_version": "deprecatedProductVersion",
    "product_name": "productName",
    "copyright_year_range": "copyrightYearRange",
}


class VersionMonitor:
    def __init__(self, settings: VersionMonitorSettings, info: SystemInfo, influx: InfluxSink | None) -> None:
        self.settings = settings
        self.info = info
        self.influx = influx
        self.found: dict[str, Any] | None = None

    async def check(self) -> None:
        answer = await self.info.fetch()
        fields = {name: str(answer.get(key, "")) for name, key in _VERSION_FIELDS.items()}
        if self.found is None or self.found.get("version") != fields["version"]:
            log.info("Qlik Sense version: %s (%s)", fields["version"], fields["release_label"])
        self.found = fields
        _write(self.influx, self.settings.influx, "qlik_sense_version", {}, fields)


# --- Server licence ------------------------------------------------------------------------------------


class LicenseUnreadable(UpstreamError):
    """The licence QRS returned has no expiry date or state; the message says what is missing."""


def read_server_license(entity: Mapping[str, Any], now: datetime) -> ServerLicense:
    """The licence's state from QRS's ``license`` entity: the ``Valid To:`` line of ``keyDetails``, and the
    days left counted as upstream does (a date is its midnight UTC, rounded up)."""
    expired = entity.get("isExpired")
    details = entity.get("keyDetails")
    line = next((text for text in str(details or "").split("\n") if "Valid To:" in text), None)
    if not isinstance(expired, bool) or line is None:
        missing = "isExpired" if not isinstance(expired, bool) else "Valid To: line"
        raise LicenseUnreadable(f"the server licence from QRS has no {missing}")
    date_text = line.split(":", 1)[1].strip()
    try:
        expiry = datetime.fromisoformat(date_text)
    except ValueError as exc:
        raise LicenseUnreadable(f"the server licence's Valid To date cannot be read: {date_text!r}") from exc
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    days = math.ceil((expiry - now) / DAY)
    return ServerLicense(expired=expired, expiry_date=date_text, days_until_expiry=days)


@dataclass
class ExpiryAlerts:
    """Which alert a check calls for, per the module's rule: ``expired``, ``expiring`` or None."""

    threshold_days: int
    alerted: str | None = None

    def level(self, license: ServerLicense) -> str | None:
        if license.expired or license.days_until_expiry < 0:
            return "expired"
        if license.days_until_expiry <= self.threshold_days:
            return "expiring"
        return None

    def next(self, license: ServerLicense) -> str | None:
        level = self.level(license)
        if level == self.alerted or (level == "expiring" and self.alerted == "expired"):
            return None
        if level is None and self.alerted is not None:
            log.info("Qlik Sense server licence renewed: %d days left", license.days_until_expiry)
        self.alerted = level
        return level


def expiry_text(license: ServerLicense) -> str:
    if license.expired or license.days_until_expiry < 0:
        return f"Qlik Sense server license expired on {license.expiry_date}"
    return (
        f"Qlik Sense server license is about to expire in {license.days_until_expiry} days, "
        f"on {license.expiry_date}"
    )


class ServerLicenseMonitor:
    def __init__(
        self,
        settings: ServerLicenseSettings,
        topics: MqttSettings,
        site: SenseSite,
        publisher: Publisher | None,
        alerts: AlertSink | None,
        influx: InfluxSink | None,
        now: Now = _utc_now,
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.site = site
        self.publisher = publisher if settings.mqtt.enable else None
        self.alerts = alerts if settings.webhook.enable else None
        self.influx = influx
        self.now = now
        self.expiry = ExpiryAlerts(settings.threshold_days)
        self.found: ServerLicense | None = None

    async def check(self) -> None:
        license = read_server_license(await self.site.server_license(), self.now())
        self.found = license
        log.info(
            "Qlik Sense server licence: expired %s, valid to %s, %d days left",
            license.expired,
            license.expiry_date,
            license.days_until_expiry,
        )
        fields: dict[str, FieldValue] = {
            "license_expired": license.expired,
            "expiry_date": license.expiry_date,
            "days_until_expiry": license.days_until_expiry,
        }
        _write(self.influx, self.settings.influx, "qlik_sense_server_license", {}, fields)
        payload = {
            "licenseExpired": license.expired,
            "expiryDateStr": license.expiry_date,
            "daysUntilExpiry": license.days_until_expiry,
        }
        mqtt, webhook = self.settings.mqtt, self.settings.webhook
        if self.publisher is not None and mqtt.recurring:
            self.publisher.enqueue(self.topics.server_license, json.dumps(payload))
        if self.alerts is not None and webhook.recurring:
            await self.alerts.server_license_status(license)
        if self.expiry.next(license) is None:
            return
        text = expiry_text(license)
        log.warning("%s (alerting once; threshold %d days)", text, self.settings.threshold_days)
        if self.publisher is not None and mqtt.alert:
            self.publisher.enqueue(self.topics.server_license_expire, text)
        if self.alerts is not None and webhook.alert:
            await self.alerts.server_license_alert(license)


# --- Access licences -----------------------------------------------------------------------------------

#: ``qlik_sense_license`` points: the overview's section, whether it is enabled, and field -> QRS key.
_ACCESS_POINTS: dict[str, tuple[str, dict[str, str]]] = {
    "analyzer": (
        "analyzerAccess",
        {k: k for k in ("allocated", "available", "excess", "quarantined", "total", "used")},
    ),
    "professional": (
        "professionalAccess",
        {k: k for k in ("allocated", "available", "excess", "quarantined", "total", "used")},
    ),
    "analyzer_capacity": (
        "analyzerTimeAccess",
        {
            "allocated_minutes": "allocatedMinutes",
            "unavailable_minutes": "unavailableMinutes",
            "used_minutes": "usedMinutes",
        },
    ),
    "token_login": (
        "loginAccess",
        {
            "allocated_tokens": "allocatedTokens",
            "token_cost": "tokenCost",
            "unavailable_tokens": "unavailableTokens",
            "used_tokens": "usedTokens",
        },
    ),
    # used_tokens from usedTokens: upstream reads userTokens, which QRS does not have.
    "token_user": (
        "userAccess",
        {
            "allocated_tokens": "allocatedTokens",
            "quarantined_tokens": "quarantinedTokens",
            "token_cost": "tokenCost",
            "used_tokens": "usedTokens",
        },
    ),
}


def access_points(overview: Mapping[str, Any]) -> dict[str, dict[str, FieldValue]]:
    """The fields of each enabled licence type, and ``tokens_available`` (monitors.md §4)."""
    points: dict[str, dict[str, FieldValue]] = {}
    for license_type, (section_name, keys) in _ACCESS_POINTS.items():
        section = overview.get(section_name) or {}
        if isinstance(section, Mapping) and section.get("enabled") is True:
            points[license_type] = {field: _number(section.get(key)) for field, key in keys.items()}
    points["tokens_available"] = {
        "available_tokens": _number(overview.get("availableTokens")),
        "total_tokens": _number(overview.get("totalTokens")),
    }
    return points


def _number(value: Any) -> float | int:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


class AccessLicenseMonitor:
    def __init__(self, settings: AccessLicenseSettings, site: SenseSite, influx: InfluxSink | None) -> None:
        self.settings = settings
        self.site = site
        self.influx = influx
        self.found: dict[str, dict[str, FieldValue]] | None = None

    async def check(self) -> None:
        points = access_points(await self.site.access_overview())
        self.found = points
        for license_type, fields in points.items():
            _write(
                self.influx,
                self.settings.influx,
                "qlik_sense_license",
                {"license_type": license_type},
                fields,
            )


# --- Licence release -----------------------------------------------------------------------------------


def keep_reason(user: SenseUser, never: NeverRelease) -> str | None:
    """The first never-release rule ``user`` matches, in upstream's order, or None to release."""
    if (user.user_directory, user.user_id) in never.users:
        return "neverRelease.user"
    tag = next((tag for tag in user.tags if tag in never.tags), None)
    if tag is not None:
        return f"neverRelease.tag ({tag})"
    cp = next((pair for pair in user.custom_properties if pair in never.custom_properties), None)
    if cp is not None:
        return f"neverRelease.customProperty ({cp[0]}={cp[1]})"
    if user.user_directory in never.user_directories:
        return "neverRelease.userDirectory"
    for rule, flag in (
        ("inactive", user.inactive),
        ("blocked", user.blocked),
        ("removedExternally", user.removed_externally),
    ):
        wanted = getattr(never, "removed_externally" if rule == "removedExternally" else rule)
        if wanted != "ignore" and flag == (wanted == "yes"):
            return f"neverRelease.{rule} ({wanted})"
    return None


@dataclass(frozen=True)
class Release:
    """One allocation released, or that would have been in a dry run."""

    time: str
    userDirectory: str
    userId: str
    licenseType: str
    lastUsed: str
    daysSinceLastUse: int
    dryRun: bool
    #: ``released``, ``would be released``, or why the release failed.
    result: str


class LicenseRelease:
    def __init__(
        self,
        settings: LicenseReleaseSettings,
        site: SenseSite,
        influx: InfluxSink | None,
        now: Now = _utc_now,
    ) -> None:
        self.settings = settings
        self.site = site
        self.influx = influx
        self.now = now
        self.records: deque[Release] = deque(maxlen=RELEASES_KEPT)
        self.last_run: dict[str, int] = {}

    async def check(self) -> None:
        now = self.now()
        budget = self.settings.max_per_run
        counts = {"released": 0, "wouldRelease": 0, "kept": 0, "failed": 0, "left": 0}
        for license_type in ACCESS_TYPES:
            kind = self.settings.types[license_type]
            if not kind.enable:
                continue
            candidates = await self.site.unused_allocations(license_type, now - kind.threshold_days * DAY)
            # Oldest use first, so that a capped run releases those unused longest.
            for allocation in sorted(candidates, key=lambda a: a.last_used):
                if allocation.quarantined:
                    continue
                if budget == 0:
                    counts["left"] += 1
                    continue
                try:
                    outcome = await self._one(license_type, allocation, now)
                except UpstreamError as exc:  # one user QRS cannot tell about must not stop the others
                    log.warning(
                        "%s licence of %s\\%s not looked at: %s",
                        license_type,
                        allocation.user_directory,
                        allocation.user_id,
                        exc,
                    )
                    outcome = "failed"
                counts[outcome] += 1
                if outcome != "kept":
                    budget -= 1
        self.last_run = counts
        log.info(
            "Licence release%s: %d released, %d would be released, %d kept by neverRelease, %d failed%s",
            " (dry run)" if self.settings.dry_run else "",
            counts["released"],
            counts["wouldRelease"],
            counts["kept"],
            counts["failed"],
            f", {counts['left']} left for the next run (maxReleasesPerRun)" if counts["left"] else "",
        )

    async def _one(self, license_type: str, allocation: Allocation, now: datetime) -> str:
        user_name = f"{allocation.user_directory}\\{allocation.user_id}"
        if (allocation.user_directory, allocation.user_id) in self.settings.never.users:
            reason: str | None = "neverRelease.user"
        else:
            reason = keep_reason(await self.site.user(allocation.user_ref), self.settings.never)
        if reason is not None:
            log.debug("%s licence of %s kept: %s", license_type, user_name, reason)
            return "kept"
        days = math.floor((now - allocation.last_used) / DAY)
        if self.settings.dry_run:
            result, outcome = "would be released", "wouldRelease"
        else:
            try:
                failure = await self.site.release(license_type, allocation.id)
            except UpstreamError as exc:
                failure = f"not known whether released: {exc}"
            result, outcome = ("released", "released") if failure is None else (failure, "failed")
        record = Release(
            time=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
            userDirectory=allocation.user_directory,
            userId=allocation.user_id,
            licenseType=license_type,
            lastUsed=allocation.last_used.isoformat(timespec="seconds").replace("+00:00", "Z"),
            daysSinceLastUse=days,
            dryRun=self.settings.dry_run,
            result=result,
        )
        self.records.appendleft(record)
        log.info(
            "%s licence of %s, unused for %d days: %s%s",
            license_type,
            user_name,
            days,
            result,
            " (dry run)" if self.settings.dry_run else "",
        )
        if outcome == "released":
            _write(
                self.influx,
                self.settings.influx,
                "qlik_sense_license_release",
                {"license_type": license_type, "user": user_name, "dry_run": "false"},
                {"days_since_last_use": days},
            )
        return outcome

    def releases(self) -> list[dict[str, Any]]:
        return [asdict(record) for record in self.records]


__all__ = [
    "AccessLicenseMonitor",
    "ExpiryAlerts",
    "LicenseRelease",
    "LicenseUnreadable",
    "Release",
    "ServerLicenseMonitor",
    "VersionMonitor",
    "access_points",
    "expiry_text",
    "keep_reason",
    "read_server_license",
]
