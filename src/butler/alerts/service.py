"""Alerts on task outcomes, Windows services and the server licence: from what happened to messages in
the outbox.

Task outcomes come from the event bus; a service that stopped or started (``service_changed``) and the
server licence (``server_license_status``, ``server_license_alert``) from the monitors, which call these
methods. Each is built by the channels' builders and queued as a reload alert is, with the same retries
and delivery states.

For each outcome an alert is configured for, what the channels need beyond the enriched
outcome is fetched once and shared by all of them: the app owner's e-mail addresses (the
owner itself is in the app's metadata). Each channel's builder makes its messages (one per recipient or
webhook), the script log of a failed reload is stored on disk if configured, and the messages go into the
outbox, from which the dispatcher sends them. Alerts are handled concurrently, a bounded number at a
time, so a slow QRS lookup for one task does not hold the others back.

A channel whose configuration cannot work (a custom property that does not exist in QRS, a template that
cannot be read) is switched off at start-up with a warning naming the key; ``/health`` shows why, and
every other channel and feature goes on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from butler.alerts.channels import email, newrelic, signl4, slack, teams, webhook
from butler.alerts.context import AlertFacts, AppOwner, ServiceFacts
from butler.alerts.dispatcher import Dispatcher
from butler.alerts.model import Channel, Message
from butler.alerts.outbox import AlertInfo, OutboxUnavailable
from butler.alerts.script_logs import prune_script_logs, store_script_log
from butler.config.alerts import AlertSettings
from butler.events.bus import EventBus
from butler.events.parsing import TaskEvent
from butler.events.task_outcomes import TaskOutcome
from butler.logs import Throttle
from butler.monitor_events import ServerLicense, ServiceChange
from butler.qlik.qrs import QrsError
from butler.qlik.repository import QrsRepository
from butler.stopping import cancel_and_wait

log = logging.getLogger("butler.alerts")

Builder = Callable[[AlertFacts, AlertSettings], list[Message]]
BUILDERS: dict[Channel, Builder] = {
    "email": email.build,
    "slack": slack.build,
    "teams": teams.build,
    "webhook": webhook.build,
    "signl4": signl4.build,
    "newrelic": newrelic.build,
}

ServiceBuilder = Callable[[ServiceFacts, AlertSettings], list[Message]]
SERVICE_BUILDERS: dict[Channel, ServiceBuilder] = {
    "email": email.build_service,
    "slack": slack.build_service,
    "teams": teams.build_service,
    "webhook": webhook.build_service,
    "newrelic": newrelic.build_service,
}

#: The message type of a failed start Butler made itself (the scheduler's).
SCHEDULED_START = "/butler-scheduled-start-failed/"
#: How often script logs past their retention are removed (seconds).
PRUNE_INTERVAL = 6 * 3600.0
#: App owners' e-mail addresses are read from QRS again after this long (seconds).
OWNER_CACHE_SECONDS = 300.0
#: Alerts gathered and built at once at most.
CONCURRENT_ALERTS = 32
#: Task outcomes waiting for their alerts at most.
ALERT_QUEUE = 20_000
#: The events chat and webhook channels alert on (success is an addition).
CHAT_EVENTS = frozenset({"reloadTaskFailure", "reloadTaskAborted", "reloadTaskSuccess"})

_RELOAD, _DISTRIBUTE, _PRELOAD = 0, 3, 4
_EVENTS = {
    (_RELOAD, "failed"): "reloadTaskFailure",
    (_RELOAD, "aborted"): "reloadTaskAborted",
    (_RELOAD, "success"): "reloadTaskSuccess",
    (_DISTRIBUTE, "failed"): "distributeTaskFailure",
    (_DISTRIBUTE, "success"): "distributeTaskSuccess",
    (_PRELOAD, "failed"): "preloadTaskFailure",
    (_PRELOAD, "success"): "preloadTaskSuccess",
}


def alert_event(outcome: TaskOutcome) -> str | None:
    """The alert event of an outcome (``reloadTaskFailure``...), None when no alert is made for it."""
    task_type = (outcome.task or {}).get("taskType")
    return _EVENTS.get((task_type if isinstance(task_type, int) else _RELOAD, outcome.event.outcome))


class AlertService:
    """Turns task outcomes into alert messages for every configured channel and hands them to the
    dispatcher; lists alerts and sends dead letters again for the REST API."""

    def __init__(
        self,
        settings: AlertSettings,
        dispatcher: Dispatcher,
        repository: QrsRepository | None,
        version: str,
        channels: frozenset[Channel],
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.repository = repository
        self.version = version
        #: The channels that are on and usable.
        self.channels = channels
        self.handled = 0
        self.failed = 0
        self._slots = asyncio.Semaphore(CONCURRENT_ALERTS)
        self._running: set[asyncio.Task[None]] = set()
        self._owners: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._throttle = Throttle(60.0)
        self._pruner: asyncio.Task[None] | None = None
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="butler-alerts")

    def start(self) -> None:
        """Remove old script logs now and every PRUNE_INTERVAL, when a retention is set."""
        settings = self.settings.script_log
        if settings.enable and settings.retention_days > 0:
            self._pruner = asyncio.get_running_loop().create_task(self._prune())

    async def _prune(self) -> None:
        while True:
            try:
                removed = await prune_script_logs(self.settings.script_log)
            except OSError as exc:
                log.warning("old script logs not removed: %s", exc)
            else:
                if removed:
                    log.info("script logs past their retention removed: %d day folders", len(removed))
            await asyncio.sleep(PRUNE_INTERVAL)

    async def handle(self, outcome: TaskOutcome) -> None:
        """The event bus's handler: returns once the alert is being worked on (at most CONCURRENT_ALERTS
        at once), so that the bus's queue holds what waits."""
        if alert_event(outcome) is None:
            return
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._alert(outcome))
        self._running.add(task)
        task.add_done_callback(self._done)

    async def start_failed(self, task_id: str, problem: str, ident: str) -> None:
        """A start Butler itself made (a schedule's fire) did not happen: alerted as a failed run of that
        task, through the channels configured for failures, the log message saying why (``ident`` makes
        the alert unique: the schedule and the due time)."""
        task: dict[str, Any] | None = None
        app: dict[str, Any] | None = None
        if self.repository is not None:
            try:
                found = await self.repository.task_metadata([task_id])
                task = found[0] if found else None
                app_id = str(((task or {}).get("app") or {}).get("id") or "")
                apps = await self.repository.app_metadata([app_id]) if app_id else []
                app = apps[0] if apps else None
            except (QrsError, TimeoutError) as exc:
                log.warning("the task of a failed scheduled start not read from QRS: %s", exc)
        event = TaskEvent(
            outcome="failed",
            message_type=SCHEDULED_START,
            host=socket.gethostname(),
            task_name=str((task or {}).get("name") or task_id),
            app_name=str((app or {}).get("name") or ""),
            user="",
            task_id=task_id,
            app_id=str((app or {}).get("id") or ""),
            timestamp=time.strftime("%Y-%m-%d %H:%M:%S,000"),
            level="ERROR",
            execution_id=ident,
            message=f"Butler's scheduled start of this task failed: {problem}",
        )
        await self.handle(TaskOutcome(event, task=task, app=app))

    async def service_changed(
        self, change: ServiceChange, channels: Collection[Channel] | None = None
    ) -> None:
        """Alert on a Windows service that stopped, started or changed to another state, through every
        channel that is on (only those of ``channels`` when given: the monitor's alert destinations)."""
        facts = ServiceFacts(change, self.version)
        wanted = [
            c for c in sorted(self.channels) if c in SERVICE_BUILDERS and (channels is None or c in channels)
        ]
        alert = AlertInfo(
            id=f"{facts.rate_key}|{time.time_ns()}:{facts.event}",
            event=facts.event,
            task_id="",
            task_name="",
            app_name="",
            execution_id="",
            host=change.host,
            service=change.service_name,
        )
        what = f"service {change.service_name} on {change.host}"

        def build() -> list[Message]:
            return [m for c in wanted for m in self._guarded(c, what, SERVICE_BUILDERS[c], facts)]

        await self._submit(alert, build, what)

    async def server_license_status(self, status: ServerLicense) -> None:
        """The server licence at a check, to ``webhookNotification.qlikSenseServerLicenseMonitor``."""
        await self._license("server license status", status)

    async def server_license_alert(self, status: ServerLicense) -> None:
        """The server licence expired or is about to, to ``qlikSenseServerLicenseExpiryAlert``."""
        expired = "server license has expired alert"
        await self._license(expired if status.expired else "server license about to expire alert", status)

    async def _license(self, event: str, status: ServerLicense) -> None:
        if "webhook" not in self.channels:
            return
        section = webhook.LICENSE_EVENTS[event][0]
        alert = AlertInfo(f"license|{time.time_ns()}:{section}", section, "", "", "", "")

        def build() -> list[Message]:
            return self._guarded("webhook", "the server licence", webhook.build_license, event, status)

        await self._submit(alert, build, "the server licence")

    async def _submit(self, alert: AlertInfo, build: Callable[[], list[Message]], what: str) -> None:
        try:
            loop = asyncio.get_running_loop()
            messages = await loop.run_in_executor(self._builder, build)
            if not messages:
                return
            await self.dispatcher.submit(alert, messages)
            self.handled += 1
        except OutboxUnavailable as exc:
            self.failed += 1
            log.error("alert on %s lost: %s", what, exc)
        except Exception:  # the monitor calling must go on
            self.failed += 1
            log.exception("alert on %s could not be made", what)

    def _guarded(
        self, channel: Channel, what: str, builder: Callable[..., list[Message]], *args: Any
    ) -> list[Message]:
        try:
            return builder(*args, self.settings)
        except Exception:  # one channel's fault must not keep the alert from the others
            if self._throttle.ready(channel):
                log.exception("the %s alert on %s could not be built", channel, what)
            return []

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slots.release()

    async def close(self) -> None:
        """Let the alerts being built reach the outbox (a few seconds at most), then stop."""
        if self._pruner is not None:
            await cancel_and_wait([self._pruner])
        if self._running:
            _, pending = await asyncio.wait(list(self._running), timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._builder.shutdown(wait=True)

    async def _alert(self, outcome: TaskOutcome) -> None:
        event = alert_event(outcome)
        assert event is not None
        try:
            facts = AlertFacts(
                event=event,
                outcome=outcome,
                execution=outcome.execution_result,
                script_log=outcome.script_log,
                owner=await self._owner(outcome),
                butler_version=self.version,
            )
            # Rendering templates and composing messages is CPU work of several milliseconds per alert:
            # it is done in a thread of its own, so that the event loop keeps answering meanwhile.
            loop = asyncio.get_running_loop()
            messages = await loop.run_in_executor(self._builder, self._build_all, facts)
            if event == "reloadTaskFailure" and self.settings.script_log.enable:
                await store_script_log(facts, self.settings.script_log)
            if not messages:
                return
            task = outcome.task or {}
            alert = AlertInfo(
                id=f"{outcome.event.execution_id or outcome.event.timestamp + outcome.event.task_id}:{event}",
                event=event,
                task_id=outcome.event.task_id,
                task_name=outcome.task_name or str(task.get("name", "")),
                app_name=outcome.app_name,
                execution_id=outcome.event.execution_id,
            )
            await self.dispatcher.submit(alert, messages)
            self.handled += 1
        except OutboxUnavailable as exc:
            self.failed += 1
            log.error("alert for task %s lost: %s", outcome.event.task_id, exc)
        except Exception:
            self.failed += 1
            log.exception("alert for task %s could not be made", outcome.event.task_id)

    def _build_all(self, facts: AlertFacts) -> list[Message]:
        return [message for channel in sorted(self.channels) for message in self._build(channel, facts)]

    def _build(self, channel: Channel, facts: AlertFacts) -> list[Message]:
        return self._guarded(channel, f"task {facts.outcome.event.task_id}", BUILDERS[channel], facts)

    async def _owner(self, outcome: TaskOutcome) -> AppOwner | None:
        owner = (outcome.app or {}).get("owner")
        if not isinstance(owner, dict) or not owner.get("id"):
            return None
        owner_id = str(owner["id"])
        now = time.monotonic()
        cached = self._owners.get(owner_id)
        emails = cached[1] if cached is not None and cached[0] > now else None
        if emails is None and self.repository is not None:
            try:
                emails = await self.repository.user_emails(owner_id)
            except (QrsError, TimeoutError) as exc:
                log.warning("e-mail address of app owner %s not read from QRS: %s", owner.get("userId"), exc)
            else:
                if len(self._owners) > 10_000:
                    self._owners.clear()
                self._owners[owner_id] = (now + OWNER_CACHE_SECONDS, emails)
        return AppOwner(
            name=str(owner.get("name") or ""),
            user_id=str(owner.get("userId") or ""),
            user_directory=str(owner.get("userDirectory") or ""),
            emails=emails or (),
        )

    def full_logs(self) -> frozenset[str]:
        """The outcomes whose events must keep the whole script log: every channel cuts its own head and
        tail from it, and failed reloads may store it on disk or attach it to their e-mail."""
        outcomes = {"failed", "aborted"}
        if any(self._wants(channel, "reloadTaskSuccess") for channel in self.channels):
            outcomes.add("success")
        return frozenset(outcomes)

    def _wants(self, channel: Channel, event: str) -> bool:
        settings = self.settings
        if channel == "email":
            return settings.email.event(event).enable
        if channel in ("slack", "teams"):
            chat = settings.slack if channel == "slack" else settings.teams
            return event in CHAT_EVENTS and chat.event(event).enable
        if channel == "webhook":
            return event in CHAT_EVENTS and bool(settings.webhook.event(event).webhooks)
        return False

    def subscribe(self, bus: EventBus) -> None:
        """Take the task outcomes published to ``bus``. The queue is deep: an alert is never dropped for a
        burst (each queued outcome is a few kilobytes, its script log included)."""
        bus.subscribe("alerts", self.handle, TaskOutcome, queue_size=ALERT_QUEUE)

    def recent(
        self,
        *,
        state: str | None = None,
        task_id: str | None = None,
        channel: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest alerts first, each with its deliveries; only deliveries matching the filters, and
        only alerts with one."""
        alerts: dict[str, dict[str, Any]] = {}
        for delivery in sorted(self.dispatcher.outbox.all(), key=lambda d: d.created, reverse=True):
            if (
                (state is not None and delivery.state != state)
                or (channel is not None and delivery.message.channel != channel)
                or (task_id is not None and delivery.alert.task_id.lower() != task_id.lower())
            ):
                continue
            entry = alerts.get(delivery.alert.id)
            if entry is None:
                if len(alerts) == limit:
                    continue
                entry = alerts[delivery.alert.id] = {**delivery.alert.as_dict(), "deliveries": []}
            entry["deliveries"].append(delivery.summary())
        return list(alerts.values())

    def stats(self) -> dict[str, Any]:
        return {
            "alertsMade": self.handled,
            "alertsFailed": self.failed,
            "channels": self.dispatcher.stats(),
            # Messages of alerts made while the outbox could not be written, sent once it can.
            "heldUnwritten": self.dispatcher.held,
            # Messages of a shared outbox another Butler left overdue (killed, or behind), sent from here.
            "takenOver": self.dispatcher.adopted,
        }


__all__ = ["BUILDERS", "SERVICE_BUILDERS", "AlertService", "alert_event"]
