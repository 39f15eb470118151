"""Sense events, assembled: both UDP listeners, active users, the task-outcome pipeline, the event bus
they publish to and its consumers (MQTT out)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
from collections import deque
from typing import Any

from butler.config.settings import EventTopics, UdpServerSettings
from butler.events.active_users import ActiveUsers, TooManySessions
from butler.events.bus import EventBus
from butler.events.mqtt_out import EventPublisher
from butler.events.parsing import (
    EngineReloadFailed,
    SessionEvent,
    TaskEvent,
    parse_session_datagram,
    parse_task_datagram,
)
from butler.events.sharing import EventSharing
from butler.events.task_outcomes import TaskEnricher, TaskOutcomes
from butler.events.udp import UdpLimits, UdpListener, resolve_sources
from butler.mqtt import MqttClient
from butler.qlik.qrs import QrsClient
from butler.stopping import cancel_and_wait

log = logging.getLogger("butler.events")

#: How long a session event's claim is held: far longer than its datagrams take to reach every Butler,
#: far shorter than the time between two real events with the same fields.
SESSION_CLAIM_MS = 5000
#: Session events waiting for their claim at most; beyond, they are published unclaimed.
MAX_SESSION_BACKLOG = 10_000


class SenseEvents:
    """What Sense's log appenders tell Butler over UDP: the two listeners, the active users, the task
    outcomes enriched from QRS, and the bus that hands both to their consumers (MQTT today)."""

    def __init__(
        self,
        settings: UdpServerSettings,
        qrs: QrsClient | None,
        mqtt: MqttClient | None,
        topics: EventTopics,
        full_logs: frozenset[str] = frozenset(),
        sharing: EventSharing | None = None,
    ) -> None:
        self.settings = settings
        self.sharing = sharing
        self.bus = EventBus()
        self.users = ActiveUsers(
            settings.session_expiry_seconds, settings.session_state_file, bus=self.bus, sharing=sharing
        )
        enricher = TaskEnricher(qrs, settings.task_events, full_logs) if qrs is not None else None
        self.outcomes = TaskOutcomes(enricher, settings.task_events, self.bus, sharing)
        self.publisher = (
            EventPublisher(mqtt, topics, self.users, settings.active_users_publish_seconds)
            if mqtt is not None
            else None
        )
        if self.publisher is not None:
            self.bus.subscribe("mqtt", self.publisher.handle, *EventPublisher.KINDS)
        #: Session events waiting for their claim (with sharing): only the Butler that gets it publishes.
        self._unclaimed: deque[SessionEvent] = deque()
        self._claiming: asyncio.Task[None] | None = None
        self._claim_wake = asyncio.Event()
        self.task_listener: UdpListener[TaskEvent | EngineReloadFailed] | None = None
        self.session_listener: UdpListener[SessionEvent] | None = None

    async def start(self) -> None:
        """Open both listeners (OSError when a port cannot be had) and start the pipeline."""
        settings = self.settings
        allowed = (
            await resolve_sources(list(settings.allowed_sources))
            if settings.allowed_sources is not None
            else None
        )
        limits = UdpLimits(settings.max_message_size, allowed, settings.max_per_source_per_minute)
        tasks: UdpListener[TaskEvent | EngineReloadFailed] = UdpListener(
            "task event", limits, parse_task_datagram, self._task_event, _task_type
        )
        sessions: UdpListener[SessionEvent] = UdpListener(
            "session event", limits, parse_session_datagram, self._session_event, lambda e: e.command
        )
        await tasks.open(settings.host, settings.task_port)
        self.task_listener = tasks
        await sessions.open(settings.host, settings.session_port)
        self.session_listener = sessions
        self.bus.start()
        if self.sharing is not None:
            self.sharing.start()
            self._claiming = asyncio.get_running_loop().create_task(self._claim_sessions(self.sharing))
        self.users.start()
        self.outcomes.start()
        if self.outcomes.enricher is None:
            log.warning("task events are not enriched: Butler.cert is not set, so QRS cannot be reached")
        for name, listener in (("task", tasks), ("session", sessions)):
            log.info(
                "UDP %s events on %s:%d (receive buffer %d KiB)",
                name,
                settings.host,
                listener.port,
                listener.receive_buffer // 1024,
            )
            if self.publisher is not None:
                self.publisher.server_status(name, "start")
                listener.on_error = functools.partial(self._listener_error, name)

    async def stop(self) -> None:
        for listener in (self.task_listener, self.session_listener):
            if listener is not None:
                listener.close()
        await self.outcomes.stop()
        if self._claiming is not None:
            await cancel_and_wait([self._claiming])
        await self.users.stop()
        await self.bus.stop()
        if self.publisher is not None:
            self.publisher.close()
        if self.sharing is not None:
            await self.sharing.close()

    def stats(self) -> dict[str, Any]:
        return {
            "taskEvents": self.task_listener.stats.as_dict() if self.task_listener else None,
            "sessionEvents": self.session_listener.stats.as_dict() if self.session_listener else None,
            "taskEventQueue": self.outcomes.queued,
            "taskEventsHandled": self.outcomes.handled,
            "taskEventsPartial": self.outcomes.partial,
            "activeUsers": self.users.count(),
            "consumers": self.bus.stats(),
            **({"sharing": self._sharing_stats(self.sharing)} if self.sharing is not None else {}),
        }

    def _sharing_stats(self, sharing: EventSharing) -> dict[str, Any]:
        stats = sharing.stats()
        # Events another Butler claimed, kept in case it does not finish them; those not kept (too many).
        stats["taskEvents"] |= {"setAside": self.outcomes.set_aside, "notSetAside": self.outcomes.not_watched}
        return stats

    def _listener_error(self, name: str, exc: Exception) -> None:
        if self.publisher is not None:
            self.publisher.server_status(name, "error")

    def _task_event(self, event: TaskEvent | EngineReloadFailed) -> str | None:
        if isinstance(event, EngineReloadFailed):
            log.warning(
                "Engine reload of app %s failed on %s (user %s/%s): %s",
                event.app_id,
                event.host,
                event.user_directory,
                event.user_id,
                event.message,
            )
            return None
        return self.outcomes.submit(event)

    def _session_event(self, event: SessionEvent) -> str | None:
        try:
            self.users.apply(event)
        except TooManySessions:
            return "sessionLimit"
        if self.sharing is None or len(self._unclaimed) >= MAX_SESSION_BACKLOG:
            self.bus.publish(event)
        else:
            self._unclaimed.append(event)
            self._claim_wake.set()
        return None

    async def _claim_sessions(self, sharing: EventSharing) -> None:
        """Claim waiting session events in batches, in order, and publish those this Butler got."""
        while True:
            await self._claim_wake.wait()
            self._claim_wake.clear()
            while self._unclaimed:
                batch = [self._unclaimed.popleft() for _ in range(min(500, len(self._unclaimed)))]
                won = await sharing.claim_many([_session_key(e) for e in batch], SESSION_CLAIM_MS)
                for event, mine in zip(batch, won, strict=True):
                    if mine:
                        self.bus.publish(event)


def _session_key(event: SessionEvent) -> str:
    fields = "\x1f".join(str(v) for v in dataclasses.astuple(event))
    return "session " + hashlib.sha256(fields.encode()).hexdigest()


def _task_type(event: TaskEvent | EngineReloadFailed) -> str:
    return "/engine-reload-failed/" if isinstance(event, EngineReloadFailed) else event.message_type
