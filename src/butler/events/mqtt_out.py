"""Events to MQTT: session events, active users and task outcomes, on the topics of ``Butler.mqttConfig``.

A consumer of the event bus (``handle``), with its own queue and worker; publishing here queues the
message on the MQTT client, which sends it in the background. A task outcome is let go (and, with several
Butlers, marked done) once its messages were handed to the broker connection (at QoS 1 and 2, once the
broker acknowledged them), up to ``HANDOVER_SECONDS`` while connected: a Butler killed then leaves no
outcome half-published that another would not publish.

Session and connection events go out one by one (payload ``<host>: <directory>/<userId>``, as upstream).
Active-user figures go out when they change, at most once per ``active_users_interval`` seconds: a
burst of logins gives one message with the final figures instead of one per login. Task outcomes go to
the plain topic (the task name) and, when enabled, the full topic (the enriched JSON).
"""

from __future__ import annotations

import asyncio

from butler.config.settings import EventTopics
from butler.events.active_users import ActiveUsers, ActiveUsersChanged
from butler.events.parsing import SessionEvent
from butler.events.task_outcomes import TaskOutcome
from butler.json_encoding import encode_json
from butler.mqtt import MqttClient

#: How long a task outcome waits for its messages to reach a connected broker before it is let go.
HANDOVER_SECONDS = 5.0


class EventPublisher:
    """What Sense told Butler, as MQTT messages."""

    #: The kinds of events ``handle`` takes, for its subscription to the bus.
    KINDS = (TaskOutcome, SessionEvent, ActiveUsersChanged)

    def __init__(
        self, mqtt: MqttClient, topics: EventTopics, users: ActiveUsers, active_users_interval: float = 1.0
    ) -> None:
        self.mqtt = mqtt
        self.topics = topics
        self.users = users
        self.interval = active_users_interval
        self._pending: asyncio.TimerHandle | None = None
        self._last_hosts: set[str] = set()

    async def handle(self, event: object) -> None:
        if isinstance(event, TaskOutcome):
            await self.task_outcome(event)
        elif isinstance(event, SessionEvent):
            self.session_event(event)
        elif isinstance(event, ActiveUsersChanged):
            self.users_changed()

    def session_event(self, event: SessionEvent) -> None:
        topics = self.topics
        topic = {
            "Start session": topics.session_start,
            "Stop session": topics.session_stop,
            "Open connection": topics.connection_open,
            "Close connection": topics.connection_close,
        }[event.command]
        self.mqtt.enqueue(topic, f"{event.host}: {event.user_directory}/{event.user_id}")

    def users_changed(self) -> None:
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.interval, self.publish_users)

    def publish_users(self) -> None:
        self._pending = None
        topics = self.topics
        self.mqtt.enqueue(topics.active_user_count, str(self.users.count()))
        self.mqtt.enqueue(topics.active_users, encode_json(self.users.user_ids()))
        per_host = self.users.counts_per_host()
        # A host whose last user left is told it has none, once.
        for host in self._last_hosts - set(per_host):
            self.mqtt.enqueue(f"{topics.active_users_per_server}/{host}/count", "0")
        for host, count in per_host.items():
            self.mqtt.enqueue(f"{topics.active_users_per_server}/{host}/count", str(count))
        self._last_hosts = set(per_host)

    def server_status(self, listener: str, status: str) -> None:
        topic = (
            self.topics.task_event_server_status if listener == "task" else self.topics.session_server_status
        )
        self.mqtt.enqueue(topic, status)

    async def task_outcome(self, outcome: TaskOutcome) -> None:
        topics = self.topics
        plain, full, send_full = {
            "failed": (topics.task_failure, topics.task_failure_full, topics.task_failure_send_full),
            "aborted": (topics.task_aborted, topics.task_aborted_full, topics.task_aborted_send_full),
            "success": (topics.task_success, topics.task_success_full, topics.task_success_send_full),
        }[outcome.event.outcome]
        messages: list[tuple[str, str | bytes]] = [(plain, outcome.task_name)]
        if send_full:
            messages.append((full, encode_json(outcome.as_dict())))
        loop = asyncio.get_running_loop()
        handed: list[asyncio.Future[None]] = []
        for topic, payload in messages:
            sent: asyncio.Future[None] = loop.create_future()
            if self.mqtt.enqueue(topic, payload, sent=sent):
                handed.append(sent)
        # Not while the broker is away: the messages wait in the client's queue, the events do not.
        if handed and self.mqtt.connected.is_set():
            await asyncio.wait(handed, timeout=HANDOVER_SECONDS)

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
