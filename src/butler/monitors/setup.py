"""The enabled monitors of one Butler, each on its own schedule, and what they found.

``Monitors.open`` builds them from the settings and the services they report through (QRS, MQTT, the
alert channels, InfluxDB), ``start`` runs them, ``stop`` ends them. ``stats`` is for ``/health``;
``snapshot`` hands a metrics exporter the figures they found; ``releases`` lists licence releases.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from butler.config import Settings
from butler.leases import Leases
from butler.monitors.later import parse
from butler.monitors.licenses import (
    AccessLicenseMonitor,
    LicenseRelease,
    ServerLicenseMonitor,
    VersionMonitor,
)
from butler.monitors.outputs import AlertSink, InfluxSink, Publisher
from butler.monitors.process import Heartbeat, UptimeMonitor
from butler.monitors.runner import Periodic
from butler.monitors.sense import SenseSite, SystemInfo
from butler.monitors.services import ServiceMonitor
from butler.monitors.windows import ServiceManager

log = logging.getLogger("butler")


class Monitors:
    def __init__(self, leases: Leases | None = None) -> None:
        self.leases = leases
        self.runners: dict[str, Periodic] = {}
        self.services: ServiceMonitor | None = None
        self.version: VersionMonitor | None = None
        self.server_license: ServerLicenseMonitor | None = None
        self.access_license: AccessLicenseMonitor | None = None
        self.release: LicenseRelease | None = None
        self.uptime: UptimeMonitor | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        site: SenseSite | None,
        publisher: Publisher | None,
        alerts: object | None,
        influx: InfluxSink | None,
        version: str,
        started: float,
        windows: ServiceManager | None = None,
        leases: Leases | None = None,
    ) -> Monitors:
        """The enabled monitors; those that need Qlik Sense are left out, with a warning, when ``site`` is
        None (no client certificate)."""
        monitors = cls(leases)
        config = settings.monitors
        alerting = config.services.enable or config.server_license.enable
        sink = _alert_sink(alerts) if alerting else None
        if config.services.enable:
            if windows is None and config.services.hosts:
                windows = ServiceManager() if ServiceManager.available else None
                if windows is None:
                    log.warning(
                        "Butler.serviceMonitor.monitor: Windows services are checked with sc.exe, which only "
                        "runs on Windows (this is %s); the Sense services are checked through QRS",
                        sys.platform,
                    )
            if windows is None and not config.services.qrs:
                log.warning(
                    "Butler.serviceMonitor: qrs.enable is false and no Windows service can be checked"
                )
            elif site is None and windows is None:
                _needs_qlik("serviceMonitor")
            else:
                monitors.services = ServiceMonitor(
                    config.services, settings.mqtt, site, publisher, sink, influx, windows
                )
                monitors._add("serviceMonitor", config.services.frequency, monitors.services.check, True)
        version_settings = config.version
        if version_settings.enable:
            if settings.certificates.client_cert is None:
                _needs_qlik("qlikSenseVersion.versionMonitor")
            else:
                info = SystemInfo(
                    version_settings.host or settings.qrs.host,
                    version_settings.port,
                    settings.certificates,
                    version_settings.reject_unauthorized,
                )
                monitors._closers.append(info.close)
                monitors.version = VersionMonitor(version_settings, info, influx)
                monitors._add("versionMonitor", version_settings.frequency, monitors.version.check, True)
        for name, enabled in (
            ("serverLicenseMonitor", config.server_license.enable),
            ("licenseMonitor", config.access_license.enable),
            ("licenseRelease", config.release.enable),
        ):
            if enabled and site is None:
                _needs_qlik(f"qlikSenseLicense.{name}")
        if site is not None:
            if config.server_license.enable:
                monitors.server_license = ServerLicenseMonitor(
                    config.server_license, settings.mqtt, site, publisher, sink, influx
                )
                monitors._add(
                    "serverLicenseMonitor",
                    config.server_license.frequency,
                    monitors.server_license.check,
                    True,
                )
            if config.access_license.enable:
                monitors.access_license = AccessLicenseMonitor(config.access_license, site, influx)
                monitors._add(
                    "licenseMonitor", config.access_license.frequency, monitors.access_license.check, True
                )
            if config.release.enable:
                monitors.release = LicenseRelease(config.release, site, influx)
                monitors._add("licenseRelease", config.release.frequency, monitors.release.check, True)
        if config.heartbeat.enable:
            heartbeat = Heartbeat(config.heartbeat)
            monitors._closers.append(heartbeat.close)
            monitors._add("heartbeat", config.heartbeat.frequency, heartbeat.check, True)
        uptime = config.uptime
        if uptime.enable:
            schedule = parse(uptime.frequency)
            first = schedule.next_after(time.time())
            interval_ms = round((schedule.next_after(first) - first) * 1000)
            monitors.uptime = UptimeMonitor(
                uptime, version, interval_ms, settings.alerts.new_relic.accounts, influx, started
            )
            monitors._closers.append(monitors.uptime.close)
            monitors._add("uptimeMonitor", uptime.frequency, monitors.uptime.check, False)
        return monitors

    def _add(self, name: str, frequency: str, check: Callable[[], Awaitable[None]], at_start: bool) -> None:
        lease = self.leases.lease(f"monitor:{name}") if self.leases is not None else None
        self.runners[name] = Periodic(name, parse(frequency), check, at_start=at_start, lease=lease)

    def start(self) -> None:
        if self.uptime is not None:
            self.uptime.start()
        for runner in self.runners.values():
            runner.start()
            log.info("monitor %s on: %s", runner.name, runner.schedule.text)

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.stop()
        for close in self._closers:
            await close()

    def stats(self) -> dict[str, Any]:
        """Each monitor's schedule and how its checks went (``/health``)."""
        return {name: runner.stats() for name, runner in self.runners.items()}

    def snapshot(self) -> dict[str, Any]:
        """The figures the monitors found last (None where a monitor is off or has not run)."""
        server = self.server_license.found if self.server_license is not None else None
        return {
            "services": self.services.snapshot() if self.services is not None else None,
            "version": self.version.found if self.version is not None else None,
            "serverLicense": (
                {
                    "expired": server.expired,
                    "expiryDate": server.expiry_date,
                    "daysUntilExpiry": server.days_until_expiry,
                }
                if server is not None
                else None
            ),
            "accessLicenses": self.access_license.found if self.access_license is not None else None,
            "releases": (
                {"lastRun": self.release.last_run, "recorded": len(self.release.records)}
                if self.release is not None
                else None
            ),
            "uptime": self.uptime.found if self.uptime is not None else None,
        }


def _alert_sink(alerts: object | None) -> AlertSink | None:
    if alerts is None:
        return None
    if isinstance(alerts, AlertSink):
        return alerts
    log.warning(
        "the alert channels of this Butler take no monitor alerts: service and licence alerts are off"
    )
    return None


def _needs_qlik(section: str) -> None:
    log.warning(
        "Butler.%s is on but Butler.cert is not set, so Qlik Sense cannot be asked: it does not run", section
    )


__all__ = ["Monitors"]
