"""The monitors' last figures for Prometheus: service states per node, the licences, the last release run.

Read from ``Monitors.snapshot()`` at each scrape, so a monitor that is off, or has not run yet, adds nothing.
Labels are the site's own bounded sets: node host names, service names, licence types.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from butler.monitors.setup import Monitors


class MonitorFigures:
    """A ``prometheus_client`` collector over the monitors' snapshot."""

    def __init__(self, monitors: Monitors) -> None:
        self.monitors = monitors

    def collect(self) -> Iterator[Metric]:
        snapshot = self.monitors.snapshot()
        services = snapshot["services"]
        if services is not None:
            running = GaugeMetricFamily(
                "butler_sense_service_running",
                "1 while a Sense service on a node was RUNNING at the last check, else 0",
                labels=["host", "service"],
            )
            for host, states in services.items():
                for service, state in states.items():
                    running.add_metric([host, service], 1.0 if state == "RUNNING" else 0.0)
            yield running
        server = snapshot["serverLicense"]
        if server is not None:
            yield GaugeMetricFamily(
                "butler_sense_server_license_days_until_expiry",
                "days until the server licence expires (negative once past), at the last check",
                value=server["daysUntilExpiry"],
            )
            yield GaugeMetricFamily(
                "butler_sense_server_license_expired",
                "1 when the server licence had expired at the last check",
                value=1.0 if server["expired"] else 0.0,
            )
        access = snapshot["accessLicenses"]
        if access is not None:
            figures = GaugeMetricFamily(
                "butler_sense_access_licenses",
                "access licence figures per type at the last check (the fields of qlik_sense_license)",
                labels=["license_type", "figure"],
            )
            for license_type, fields in access.items():
                for name, value in fields.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        figures.add_metric([license_type, name], float(value))
            yield figures
        releases = snapshot["releases"]
        if releases is not None and releases["lastRun"]:
            last_run = GaugeMetricFamily(
                "butler_license_release_last_run",
                "what the last licence release run did with the allocations it looked at",
                labels=["result"],
            )
            for result, count in releases["lastRun"].items():
                last_run.add_metric([result], float(count))
            yield last_run


__all__ = ["MonitorFigures"]
