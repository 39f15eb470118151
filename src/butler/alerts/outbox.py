"""The outbox: every alert message is on disk before it is sent, and stays there until its channel took it.

A ``Delivery`` is one ``Message`` with its delivery state: ``pending`` (to be sent at ``next_attempt``),
``delivered``, ``dead`` (refused for good, or not accepted before the deadline) or ``rateLimited`` (not
sent: the same task alerted on this channel shortly before). Deliveries are kept in memory and every
change is written to a SQLite file (``butler.sqlite_writer``) before it is acted on, so a Butler killed
at any moment finds at start-up what was still to be sent. Finished deliveries are kept for
``keep_seconds`` so that ``GET /v4/alerts`` can show them and the rate limits survive a restart.

A delivery's id is derived from its alert, channel and recipient: the same alert reported twice (two
nodes, two appenders, a restart half-way) adds nothing the second time, so nobody is told twice.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from butler.alerts.model import Message
from butler.errors import Unavailable
from butler.sqlite_writer import SqliteWriter

State = Literal["pending", "delivered", "dead", "rateLimited"]
STATES: tuple[State, ...] = ("pending", "delivered", "dead", "rateLimited")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, created REAL NOT NULL, finished REAL, record TEXT NOT NULL
);
"""
_SAVE = (
    "INSERT INTO deliveries (id, created, finished, record) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET finished = excluded.finished, record = excluded.record"
)


class OutboxUnavailable(Unavailable):
    """The outbox cannot write its file: alerts cannot be kept safe."""


@dataclass(frozen=True)
class AlertInfo:
    """What an alert is about, shown with each of its deliveries: a task's outcome, or a Windows service
    (``host`` and ``service`` set, the task fields empty), or the server licence (all of them empty)."""

    id: str
    event: str
    task_id: str
    task_name: str
    app_name: str
    execution_id: str
    host: str = ""
    service: str = ""

    def as_dict(self) -> dict[str, str]:
        shown = {
            "alertId": self.id,
            "event": self.event,
            "taskId": self.task_id,
            "taskName": self.task_name,
            "appName": self.app_name,
            "executionId": self.execution_id,
        }
        if self.service:
            shown.update({"host": self.host, "serviceName": self.service})
        return shown


@dataclass
class Delivery:
    """One message of one alert and how its delivery goes."""

    id: str
    alert: AlertInfo
    message: Message
    created: float
    state: State = "pending"
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str | None = None
    finished: float | None = None
    receipt: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate_slot(self) -> tuple[str, str, str]:
        """What one rate-limit slot is kept for: channel, event and the message's key."""
        return (self.message.channel, self.message.event, self.message.rate_key)

    def summary(self) -> dict[str, Any]:
        """The delivery as ``GET /v4/alerts`` shows it (without the payload, which may hold secrets)."""
        return {
            "id": self.id,
            "channel": self.message.channel,
            "target": self.message.target,
            "state": self.state,
            "attempts": self.attempts,
            "created": _iso(self.created),
            "nextAttempt": _iso(self.next_attempt) if self.state == "pending" else None,
            "finished": _iso(self.finished) if self.finished is not None else None,
            "lastError": self.last_error,
            "receipt": self.receipt,
            "notes": [*self.message.notes, *self.notes],
        }

    def record(self) -> dict[str, Any]:
        message = self.message
        return {
            "alert": self.alert.__dict__,
            "message": {
                "channel": message.channel,
                "event": message.event,
                "rate_key": message.rate_key,
                "rate_limit": message.rate_limit,
                "target": message.target,
                "payload": message.payload,
                "notes": list(message.notes),
            },
            "created": self.created,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "finished": self.finished,
            "receipt": self.receipt,
            "notes": self.notes,
        }

    @classmethod
    def from_record(cls, delivery_id: str, record: dict[str, Any]) -> Delivery:
        message = record["message"]
        return cls(
            id=delivery_id,
            alert=AlertInfo(**record["alert"]),
            message=Message(
                channel=message["channel"],
                event=message["event"],
                rate_key=message["rate_key"],
                rate_limit=message["rate_limit"],
                target=message["target"],
                payload=message["payload"],
                notes=tuple(message["notes"]),
            ),
            created=record["created"],
            state=record["state"],
            attempts=record["attempts"],
            next_attempt=record["next_attempt"],
            last_error=record["last_error"],
            finished=record["finished"],
            receipt=record["receipt"],
            notes=list(record["notes"]),
        )


def delivery_id(alert_id: str, message: Message) -> str:
    """The same alert to the same channel and recipient always has the same id. The rate key names the
    recipient too: two webhooks whose URLs differ only after their first path segment share a target."""
    ident = f"{alert_id}\n{message.channel}\n{message.target}\n{message.rate_key}"
    digest = hashlib.sha256(ident.encode()).hexdigest()
    return digest[:24]


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1000):03d}Z"


def _cannot_write(exc: Exception) -> Exception:
    return OutboxUnavailable(f"The alert outbox cannot write its file: {exc}")


class Outbox:
    """Deliveries in memory, each change in a store before the change is acted on.

    A subclass keeps them in its store (``_load``, ``_keep_new``, ``save``, ``_drop``). ``claim`` and
    ``current`` serve Butlers sharing one store: before an attempt a Butler claims the delivery (no other
    sends it meanwhile) and checks it is still pending there (another may have delivered it). With a store
    of its own, a Butler owns every delivery.
    """

    #: Whether other Butlers share the store (and may leave deliveries for this one to take over).
    shared = False

    def __init__(self, keep_seconds: float) -> None:
        self.keep_seconds = keep_seconds
        self._deliveries: dict[str, Delivery] = {}

    async def open(self) -> list[Delivery]:
        """Read the store: the deliveries still pending or finished within ``keep_seconds``, oldest first."""
        for delivery in await self._load(time.time() - self.keep_seconds):
            self._deliveries[delivery.id] = delivery
        return list(self._deliveries.values())

    async def add(self, deliveries: Iterable[Delivery]) -> list[Delivery]:
        """Keep the deliveries not kept yet (by id); returns those, once they are in the store."""
        new = [d for d in dict((d.id, d) for d in deliveries).values() if d.id not in self._deliveries]
        if not new:
            return []
        kept = await self._keep_new(new)
        for delivery in kept:
            self._deliveries[delivery.id] = delivery
        return kept

    def get(self, delivery_id_: str) -> Delivery | None:
        return self._deliveries.get(delivery_id_)

    def all(self) -> list[Delivery]:
        return list(self._deliveries.values())

    def purge(self, now: float) -> int:
        """Forget deliveries finished more than ``keep_seconds`` ago; how many were forgotten."""
        cutoff = now - self.keep_seconds
        old = [d.id for d in self._deliveries.values() if d.finished is not None and d.finished < cutoff]
        for delivery_id_ in old:
            del self._deliveries[delivery_id_]
        if old:
            self._drop(old)
        return len(old)

    async def claim(self, delivery: Delivery, seconds: float) -> bool:
        """Whether this Butler may attempt the delivery now (for at most ``seconds``)."""
        return True

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """The attempt goes on: hold the claim ``seconds`` more, if it is still this Butler's."""

    async def release(self, delivery: Delivery) -> None:
        """The attempt is over."""

    async def spent(self, slot: tuple[str, str, str]) -> float | None:
        """When another Butler sharing this outbox last spent ``slot`` (None: none did, or none shares)."""
        return None

    async def spend(self, slot: tuple[str, str, str], moment: float, seconds: float) -> None:
        """Tell the Butlers sharing this outbox that ``slot`` was spent at ``moment``, for ``seconds``."""
        return None

    async def current(self, delivery: Delivery) -> Delivery:
        """The delivery as the store has it now."""
        return delivery

    async def overdue(self, before: float) -> list[Delivery]:
        """Pending deliveries of the shared store that were due before ``before`` and are not known here
        as finished: those another Butler did not attempt in time. None with a store of its own."""
        return []

    async def _load(self, cutoff: float) -> list[Delivery]:
        raise NotImplementedError

    async def _keep_new(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Store ``deliveries``; those that were not in the store yet."""
        raise NotImplementedError

    async def save(self, delivery: Delivery) -> None:
        """Write a delivery's new state; returns once it is stored."""
        raise NotImplementedError

    def _drop(self, ids: list[str]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteOutbox(Outbox):
    """The outbox in a SQLite file of this Butler's."""

    def __init__(self, path: Path, keep_seconds: float) -> None:
        super().__init__(keep_seconds)
        self.path = path
        self._writer = SqliteWriter(path, _SCHEMA, _cannot_write)

    async def _load(self, cutoff: float) -> list[Delivery]:
        def read(connection: sqlite3.Connection) -> list[tuple[str, str]]:
            connection.execute(
                "DELETE FROM deliveries WHERE finished IS NOT NULL AND finished < ?", (cutoff,)
            )
            return list(connection.execute("SELECT id, record FROM deliveries ORDER BY created, id"))

        try:
            rows = await self._writer.open(read)
        except (sqlite3.Error, OSError) as exc:  # a folder it cannot make, a file that is no database
            raise _cannot_write(exc) from exc
        return [Delivery.from_record(ident, orjson.loads(record)) for ident, record in rows]

    async def _keep_new(self, deliveries: list[Delivery]) -> list[Delivery]:
        await self._writer.write([_save(d) for d in deliveries])
        return deliveries

    async def save(self, delivery: Delivery) -> None:
        await self._writer.write([_save(delivery)])

    def _drop(self, ids: list[str]) -> None:
        self._writer.write_later([("DELETE FROM deliveries WHERE id = ?", (i,)) for i in ids])

    async def close(self) -> None:
        await self._writer.close()


def encode_record(delivery: Delivery) -> str:
    return orjson.dumps(delivery.record()).decode()


def _save(delivery: Delivery) -> tuple[str, tuple[Any, ...]]:
    return (_SAVE, (delivery.id, delivery.created, delivery.finished, encode_record(delivery)))


__all__ = [
    "STATES",
    "AlertInfo",
    "Delivery",
    "Outbox",
    "OutboxUnavailable",
    "SqliteOutbox",
    "State",
    "delivery_id",
    "encode_record",
]
