"""The service monitor (``serviceMonitor``): the state of each Sense service on each node, from QRS
``servicestatus`` (any OS, every node) and, on Windows, of the services the config names, from ``sc.exe``.

State per (host, service), with upstream's rules and without its storms:

- the first check sets the state and reports no change (upstream #896);
- a state counts as changed once seen on ``confirmChecks`` checks in a row (default 1, upstream's);
  only RUNNING and STOPPED change it: pending, paused or unknown states are reported at each check only;
- a confirmed change is published on MQTT (``serviceStoppedTopic/<host>/<name>`` or
  ``serviceRunningTopic/...``) and handed to the alert channels, at most once per
  ``alertRateLimitSeconds`` per service and direction: a service flapping every check gives one stopped
  and one started alert per interval, and each change still shows on MQTT and in the log;
- every check publishes each state on ``serviceStatusTopic/<host>/<name>`` and writes
  ``win_service_state``;
- one service or node that cannot be checked is logged and skipped, never ending the check of the others
  (upstream #864).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from butler.alerts.model import Channel
from butler.config.monitors import ServiceMonitorSettings
from butler.config.settings import MqttSettings
from butler.logs import Throttle
from butler.monitor_events import ServiceChange, ServiceDetails
from butler.monitors.outputs import AlertSink, InfluxSink, Publisher
from butler.monitors.sense import SenseSite
from butler.monitors.windows import ServiceManager

log = logging.getLogger("butler")

#: ``win_service_state`` numbers (upstream's).
STATE_NUMBERS = {
    "STOPPED": 1,
    "START_PENDING": 2,
    "STOP_PENDING": 3,
    "RUNNING": 4,
    "CONTINUE_PENDING": 5,
    "PAUSE_PENDING": 6,
    "PAUSED": 7,
}
START_TYPE_NUMBERS = {"Automatic": 0, "Automatic (delayed start)": 1, "Manual": 2, "Disabled": 3}
_SETTLED = ("RUNNING", "STOPPED")


@dataclass
class _Tracked:
    confirmed: str
    candidate: str | None = None
    seen: int = 0
    last: str = ""


@dataclass
class ServiceStates:
    """The change rule of the module's docstring, with an injectable clock (seconds)."""

    confirm_checks: int = 1
    alert_interval: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _tracked: dict[tuple[str, str], _Tracked] = field(default_factory=dict)
    _alerted: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def observe(self, host: str, service: str, status: str) -> tuple[str, bool]:
        """Record one check's ``status``: (the previous confirmed state, whether it changed now)."""
        key = (host, service)
        tracked = self._tracked.get(key)
        if tracked is None:
            self._tracked[key] = _Tracked(status, last=status)
            return status, False
        tracked.last = status
        if status not in _SETTLED or status == tracked.confirmed:
            tracked.candidate, tracked.seen = None, 0
            return tracked.confirmed, False
        if status != tracked.candidate:
            tracked.candidate, tracked.seen = status, 0
        tracked.seen += 1
        if tracked.seen < self.confirm_checks:
            return tracked.confirmed, False
        previous = tracked.confirmed
        tracked.confirmed, tracked.candidate, tracked.seen = status, None, 0
        return previous, True

    def may_alert(self, host: str, service: str, status: str) -> bool:
        """Whether a change to ``status`` may be alerted now; counts it when so."""
        key = (host, service, status)
        now = self.clock()
        last = self._alerted.get(key)
        if last is not None and now - last < self.alert_interval:
            return False
        self._alerted[key] = now
        return True

    def unsettled(self, host: str, service: str) -> bool:
        """Whether the service was last seen in another state than its confirmed one (its details, such as
        the start type, may have changed with it)."""
        tracked = self._tracked.get((host, service))
        return tracked is not None and tracked.last != tracked.confirmed

    def snapshot(self) -> dict[str, dict[str, str]]:
        """The last state seen of each service, by host."""
        hosts: dict[str, dict[str, str]] = {}
        for (host, service), tracked in sorted(self._tracked.items()):
            hosts.setdefault(host, {})[service] = tracked.last
        return hosts


@dataclass(frozen=True)
class _Seen:
    host: str
    service_name: str
    friendly_name: str
    status: str
    details: ServiceDetails


class ServiceMonitor:
    def __init__(
        self,
        settings: ServiceMonitorSettings,
        topics: MqttSettings,
        site: SenseSite | None,
        publisher: Publisher | None,
        alerts: AlertSink | None,
        influx: InfluxSink | None,
        windows: ServiceManager | None = None,
        states: ServiceStates | None = None,
    ) -> None:
        self.settings = settings
        destinations: tuple[tuple[Channel, bool], ...] = (
            ("email", settings.email),
            ("slack", settings.slack),
            ("teams", settings.teams),
            ("webhook", settings.webhook),
            ("newrelic", settings.new_relic),
        )
        #: The alert channels of ``alertDestination`` (MQTT and InfluxDB are this monitor's own outputs).
        self.channels = frozenset(channel for channel, on in destinations if on)
        self.topics = topics
        self.site = site if settings.qrs else None
        self.publisher = publisher if settings.mqtt else None
        self.alerts = alerts if settings.alerts_on else None
        self.influx = influx if settings.influx else None
        self.windows = windows
        self.states = states or ServiceStates(settings.confirm_checks, settings.alert_interval)
        self._warnings = Throttle(3600)

    async def check(self) -> None:
        """One check of every service; QRS that cannot be asked fails the check (so ``/health`` says so)
        once the Windows services have been reported."""
        from_qrs, from_windows = await asyncio.gather(
            self._from_qrs(), self._from_windows(), return_exceptions=True
        )
        for found in (from_qrs, from_windows):
            if isinstance(found, BaseException):
                continue
            for service in found:
                try:
                    await self._report(service)
                except Exception:  # one service's outputs failing must not stop the others'
                    log.exception(
                        "the state of %s on %s could not be reported", service.service_name, service.host
                    )
        for found in (from_qrs, from_windows):
            if isinstance(found, BaseException):
                raise found

    async def _from_qrs(self) -> list[_Seen]:
        if self.site is None:
            return []
        statuses = await self.site.service_statuses()
        return [
            _Seen(s.host, s.service_name, s.friendly_name, s.status, ServiceDetails(s.display_name))
            for s in statuses
        ]

    async def _from_windows(self) -> list[_Seen]:
        if self.windows is None:
            return []
        wanted = [(h.host, s) for h in self.settings.hosts for s in h.services]
        answers = await asyncio.gather(
            *(
                self.windows.check(host, s.name, refresh=self.states.unsettled(host, s.name))
                for host, s in wanted
            ),
            return_exceptions=True,
        )
        seen = []
        for (host, service), answer in zip(wanted, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                if self._warnings.ready(f"{host}/{service.name}"):
                    log.warning(
                        "Windows service %s on %s does not exist or cannot be reached: %s",
                        service.name,
                        host,
                        answer,
                    )
                continue
            seen.append(_Seen(host, service.name, service.friendly_name, answer.status, answer.details))
        return seen

    async def _report(self, seen: _Seen) -> None:
        previous, changed = self.states.observe(seen.host, seen.service_name, seen.status)
        change = ServiceChange(
            seen.host, seen.service_name, seen.friendly_name, seen.status, previous, seen.details
        )
        if self.publisher is not None:
            suffix = f"/{seen.host}/{seen.service_name}"
            self.publisher.enqueue(self.topics.service_status + suffix, json.dumps(status_payload(change)))
            if changed:
                topic = (
                    self.topics.service_running if seen.status == "RUNNING" else self.topics.service_stopped
                )
                self.publisher.enqueue(topic + suffix, json.dumps(change_payload(change)))
        if self.influx is not None:
            self.influx.write("win_service_state", *influx_point(change))
        if not changed:
            return
        log.warning(
            "Service %s (%s) on %s is %s, was %s",
            seen.service_name,
            seen.friendly_name,
            seen.host,
            seen.status,
            previous,
        )
        if self.alerts is None:
            return
        if not self.states.may_alert(seen.host, seen.service_name, seen.status):
            log.info(
                "No alert for %s on %s now %s: one was sent less than %d s ago",
                seen.service_name,
                seen.host,
                seen.status,
                self.settings.alert_interval,
            )
            return
        try:
            await self.alerts.service_changed(change, self.channels)
        except Exception:  # one alert that fails must not stop the check of the others
            log.exception("the alert on %s on %s could not be handed over", seen.service_name, seen.host)

    def snapshot(self) -> dict[str, dict[str, str]]:
        return self.states.snapshot()


def status_payload(change: ServiceChange) -> dict[str, Any]:
    """The JSON of ``serviceStatusTopic`` (monitors.md §1.3)."""
    details = change.details
    return {
        "serviceHost": change.host,
        "serviceName": change.service_name,
        "serviceFriendlyName": change.friendly_name,
        "serviceDisplayName": details.display_name,
        "serviceDependencies": list(details.dependencies),
        "serviceStartType": details.start_type,
        "serviceExePath": details.exe_path,
        "serviceStatus": change.status,
    }


def change_payload(change: ServiceChange) -> dict[str, Any]:
    """The JSON of ``serviceStoppedTopic`` and ``serviceRunningTopic``."""
    return status_payload(change) | {
        "servicePrevStatus": change.previous,
        "serviceStatusChanged": change.changed,
    }


def influx_point(change: ServiceChange) -> tuple[Mapping[str, str], Mapping[str, float | int | str | bool]]:
    """Tags and fields of ``win_service_state``."""
    tags = {
        "host": change.host,
        "service_name": change.service_name,
        "display_name": change.details.display_name,
        "friendly_name": change.friendly_name,
    }
    fields: dict[str, float | int | str | bool] = {
        "state_num": STATE_NUMBERS.get(change.status, -1),
        "state_text": change.status,
        "startup_mode_num": START_TYPE_NUMBERS.get(change.details.start_type, -1),
        "startup_mode_text": change.details.start_type,
    }
    return tags, fields


__all__ = ["ServiceMonitor", "ServiceStates", "change_payload", "influx_point", "status_payload"]
