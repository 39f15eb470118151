"""The event bus: what Sense tells Butler, published once and delivered to each consumer on its own.

Enriched task outcomes, session events and changes of the active users are published here; each
consumer (MQTT today; e-mail, Slack, Teams, webhooks, metrics next) subscribes with its own bounded queue
and its own worker. ``publish`` never waits: it puts the event on the queue of every consumer that takes
its kind and returns, so a slow consumer (an SMTP server that takes 5 s) delays nobody but itself. When
its queue is full, what no longer fits is dropped and counted for that consumer alone. A consumer that
raises is counted as failed and logged (at most once a minute per consumer) and its worker goes on with
the next event. At shutdown the workers get ``drain_seconds`` to deliver what is queued; then they are
cancelled, and what was left undelivered is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from butler.logs import Throttle

log = logging.getLogger("butler.events.bus")

#: Events queued for one consumer at most unless it asks for another size: enough for a burst of
#: thousands of session events while its worker gets its turn, small enough to bound the memory a
#: consumer that is stuck costs.
DEFAULT_QUEUE_SIZE = 1000
#: How long the workers may go on delivering at shutdown.
DRAIN_SECONDS = 2.0
#: Failures and drops of one consumer are logged at most this often (the counts are in ``GET /health``).
LOG_INTERVAL = 60.0

Event = TypeVar("Event")


class _Taken:
    """Calls ``callback`` once every consumer an event went to has taken it (handled, failed or dropped)."""

    __slots__ = ("callback", "left")

    def __init__(self, left: int, callback: Callable[[], None]) -> None:
        self.left = left
        self.callback = callback

    def one(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.callback()


class Subscription(Generic[Event]):
    """One consumer: the kinds of events it takes, its queue, its worker and its counts."""

    def __init__(
        self,
        name: str,
        handler: Callable[[Event], Awaitable[None]],
        kinds: tuple[type[Event], ...],
        size: int,
    ) -> None:
        if size < 1:
            raise ValueError(f"the queue of consumer {name} must hold at least one event, not {size}")
        self.name = name
        self.handler = handler
        self.kinds = kinds
        self.queue_size = size
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._queue: deque[tuple[Event, _Taken | None]] = deque()
        #: What the idle worker waits on (a bare future: cheaper than an Event, at one wake-up per event).
        self._idle: asyncio.Future[None] | None = None
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._throttle = Throttle(LOG_INTERVAL)

    def stats(self) -> dict[str, int]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": len(self._queue),
            "queueSize": self.queue_size,
        }

    def offer(self, event: Event, taken: _Taken | None = None) -> None:
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            if taken is not None:
                taken.one()
            if self._throttle.ready("dropped"):
                log.warning(
                    "event consumer %s is behind: its queue of %d events is full, events are dropped "
                    "(logged once a minute; counts in GET /health)",
                    self.name,
                    self.queue_size,
                )
            return
        self._queue.append((event, taken))
        self._wake()

    def _wake(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name=f"consumer {self.name}")

    async def _work(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle
                continue
            event, taken = queue.popleft()
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # stopped
                # A cancelled wait inside the handler, not a stop: a fault of the consumer like another.
                self._failed(event)
            except Exception:  # a consumer's fault must not end its worker
                self._failed(event)
            else:
                self.delivered += 1
            if taken is not None:
                taken.one()

    def _failed(self, event: object) -> None:
        self.failed += 1
        if self._throttle.ready("failed"):
            log.exception(
                "event consumer %s failed on %s (logged once a minute; counts in GET /health)",
                self.name,
                type(event).__name__,
            )

    async def stop(self, drain_seconds: float) -> None:
        """Deliver what is queued within ``drain_seconds``, then cancel the worker."""
        self._closing = True
        self._wake()
        worker, self._worker = self._worker, None
        if worker is None:
            return
        _, pending = await asyncio.wait([worker], timeout=drain_seconds)
        if pending:
            worker.cancel()
            undelivered = len(self._queue) + 1  # the one in hand too
            log.warning(
                "event consumer %s did not finish within %g s at shutdown: %d events not delivered",
                self.name,
                drain_seconds,
                undelivered,
            )
        await asyncio.gather(worker, return_exceptions=True)
        self._queue.clear()


class EventBus:
    """Events published once, each consumer served by its own queue and worker."""

    def __init__(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.drain_seconds = drain_seconds
        self.subscriptions: list[Subscription[Any]] = []
        self._running = False
        self._closed = False

    def subscribe(
        self,
        name: str,
        handler: Callable[[Event], Awaitable[None]],
        *kinds: type[Event],
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> Subscription[Event]:
        """Have ``handler`` called with every event of ``kinds`` published from now on.

        ``name`` is how the consumer appears in ``GET /health``; it must be unique.
        """
        if any(s.name == name for s in self.subscriptions):
            raise ValueError(f"an event consumer named {name} is subscribed already")
        if not kinds:
            raise ValueError(f"event consumer {name} takes no kind of event")
        subscription = Subscription(name, handler, kinds, queue_size)
        self.subscriptions.append(subscription)
        if self._running:
            subscription.start()
        return subscription

    def publish(self, event: object, taken: Callable[[], None] | None = None) -> None:
        """Queue ``event`` for every consumer of its kind; never waits. ``taken`` is called once every
        one of them has handled it (or dropped it, its queue full); never for an event still queued at
        shutdown, so that what one Butler did not finish can be taken over by another."""
        if self._closed:
            return
        takers = [s for s in self.subscriptions if isinstance(event, s.kinds)]
        tracker = _Taken(len(takers), taken) if taken is not None and takers else None
        for subscription in takers:
            subscription.offer(event, tracker)
        if taken is not None and not takers:
            taken()

    def start(self) -> None:
        self._running = True
        for subscription in self.subscriptions:
            subscription.start()

    async def stop(self) -> None:
        """Stop taking events; let every consumer drain for at most ``drain_seconds``, all at once."""
        self._closed = True
        self._running = False
        await asyncio.gather(*(s.stop(self.drain_seconds) for s in self.subscriptions))

    def stats(self) -> dict[str, dict[str, int]]:
        return {s.name: s.stats() for s in self.subscriptions}
