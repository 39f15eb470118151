"""Sends what the outbox holds: one worker per channel, retries with backoff, dead letters, rate limits.

Each channel has its own worker and queue, so an SMTP server that does not answer delays no Slack
message. A worker sends the delivery that is due first; a delivery that fails for a reason that may pass
(connection error, timeout, 429, 5xx) is tried again after an exponential backoff with jitter (or after
the ``Retry-After`` the channel asked for), until ``deadline_seconds`` after the alert: then it is a dead
letter, listed by ``GET /v4/alerts`` and sent again by ``POST /v4/alerts/{id}/retry``. Any other refusal
makes it a dead letter at once.

Rate limits count deliveries, not attempts: a slot of a channel, event and key is spent
when a message was delivered, so a message that failed never keeps the next one from going out (upstream
spent the slot first). A message due while its slot is taken is not sent (``rateLimited``).

Every state change is written to the outbox before the worker goes on: a Butler killed at any moment
sends at start-up what was pending. The one window left is between the channel's acceptance and that
write (milliseconds): a kill exactly then sends the message again after the restart. Webhook receivers
get the delivery id as ``Idempotency-Key`` to recognise such a repeat.

Messages that cannot be written when they come (Redis away, say) are held in memory, ``MAX_HELD`` at most,
and written once the outbox can be written again, then sent: such an alert is late, not lost, unless the
Butler stops before. Their ids are those every Butler gives the same alert, so Butlers that each held it
write it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from butler.alerts.model import CHANNELS, Channel, DeliveryError, Message
from butler.alerts.outbox import (
    AlertInfo,
    Delivery,
    Outbox,
    OutboxUnavailable,
    delivery_id,
    encode_record,
)
from butler.errors import Conflict, NotFound
from butler.logs import Throttle
from butler.stopping import cancel_and_wait, every

log = logging.getLogger("butler.alerts")

#: A claim on a delivery is held this long (seconds), and extended every quarter of it while the attempt
#: lasts: a Butler killed during an attempt leaves the delivery to the others this soon after.
CLAIM_SECONDS = 8.0
#: How often finished deliveries past their keeping time are forgotten (seconds).
PURGE_INTERVAL = 600.0
#: Deliveries held in memory at most while the outbox cannot be written, and their records' bytes at most
#: (a message may carry a script log); the alerts beyond are lost.
MAX_HELD = 10_000
MAX_HELD_BYTES = 64 * 1024 * 1024
#: How often held deliveries are offered to the outbox again (seconds).
HOLD_RETRY_SECONDS = 1.0
#: With an outbox shared by several Butlers: how often one asks for deliveries overdue by this long, to
#: take over those of a Butler that was killed (seconds).
ADOPT_SECONDS = 5.0


class Sender(Protocol):
    """Sends the payload of a channel's messages; returns the channel's answer (``250 OK``, ``HTTP 200``)
    and raises DeliveryError when the channel did not take the message. ``ident`` is the delivery's id,
    the same on every attempt, for the receiver to recognise a repeat."""

    async def send(self, payload: dict[str, Any], ident: str) -> str: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again: ``first`` seconds after the first failure, doubling up to ``longest``, each wait
    drawn between half and all of it (jitter, so that alerts failed together do not retry together); no
    attempt later than ``deadline`` seconds after the alert."""

    first: float = 1.0
    longest: float = 300.0
    deadline: float = 86_400.0

    def wait(self, attempts: int, rng: random.Random, asked: float | None = None) -> float:
        # A receiver asking for no wait (0, a date past, -1 read as 0) would otherwise get the message as
        # fast as it answers, until the deadline: a wait shorter than the first backoff gets the backoff.
        if asked is not None and asked >= self.first:
            return asked
        full = min(self.longest, self.first * 2.0 ** max(0, attempts - 1))
        return full * (0.5 + rng.random() / 2)


@dataclass
class ChannelStats:
    sent: int = 0
    retried: int = 0
    dead: int = 0
    rate_limited: int = 0

    def as_dict(self, pending: int, disabled: str | None, warning: str | None = None) -> dict[str, Any]:
        counts: dict[str, Any] = {
            "sent": self.sent,
            "retried": self.retried,
            "dead": self.dead,
            "rateLimited": self.rate_limited,
            "pending": pending,
        }
        if disabled is not None:
            counts["disabled"] = disabled
        if warning is not None:
            counts["warning"] = warning
        return counts


@dataclass
class _Lane:
    """One channel: its due-time heap, the wake-up of its worker, its counts."""

    sender: Sender | None
    heap: list[tuple[float, int, str]] = field(default_factory=list)
    #: The queued deliveries and the order of each one's entry in the heap: an entry of another order is
    #: one left behind when the delivery was made due earlier, and is skipped.
    queued: dict[str, int] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stats: ChannelStats = field(default_factory=ChannelStats)
    worker: asyncio.Task[None] | None = None
    #: Deliveries waiting for a retry after a failure.
    backing_off: set[str] = field(default_factory=set)


class Dispatcher:
    """Puts messages into the outbox and has each channel's worker send them."""

    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[Channel, Sender],
        policy: RetryPolicy,
        send_timeout: float,
        *,
        disabled: Mapping[Channel, str] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        adopt_seconds: float = ADOPT_SECONDS,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        self.outbox = outbox
        self.adopt_seconds = adopt_seconds
        self.claim_seconds = claim_seconds
        self.policy = policy
        self.send_timeout = send_timeout
        self.disabled = dict(disabled or {})
        #: What a channel's check at start-up found wrong, while the channel stays on (shown by /health).
        self.warnings: dict[Channel, str] = {}
        self._rng = rng or random.Random()
        self._clock = clock
        self._lanes: dict[Channel, _Lane] = {c: _Lane(senders.get(c)) for c in CHANNELS}
        #: When each rate-limit slot was last spent.
        self._spent: dict[tuple[str, str, str], float] = {}
        self._order = 0
        self._purger: asyncio.Task[None] | None = None
        self._throttle = Throttle(60.0)
        #: Deliveries not yet written: the outbox could not be written when they came.
        self._held: list[Delivery] = []
        self._held_bytes = 0
        #: The size of each held delivery's record, in the order of ``_held``.
        self._held_sizes: list[int] = []
        self._holding: asyncio.Task[None] | None = None
        self._adopting: asyncio.Task[None] | None = None
        #: Deliveries taken over from another Butler's part of a shared outbox.
        self.adopted = 0

    async def start(self) -> None:
        """Read the outbox and start the workers: what was pending before a restart is sent now."""
        for delivery in await self.outbox.open():
            if delivery.state == "delivered" and delivery.finished is not None:
                self._spend(delivery, delivery.finished)
            elif delivery.state == "pending":
                self._queue(delivery)
        loop = asyncio.get_running_loop()
        for channel, lane in self._lanes.items():
            if lane.sender is not None:
                lane.worker = loop.create_task(self._work(channel, lane), name=f"alerts-{channel}")
        self._purger = loop.create_task(self._purge())
        if self.outbox.shared:
            self._adopting = loop.create_task(self._adopt(), name="alerts-adopt")

    async def stop(self) -> None:
        tasks = [lane.worker for lane in self._lanes.values() if lane.worker is not None]
        tasks += [task for task in (self._purger, self._holding, self._adopting) if task is not None]
        await cancel_and_wait(tasks)
        if self._held:
            log.error(
                "alerts: %d messages held while the outbox could not be written are lost at this stop",
                len(self._held),
            )
        for lane in self._lanes.values():
            lane.worker = None
            if lane.sender is not None:
                with contextlib.suppress(Exception):
                    await lane.sender.close()
        await self.outbox.close()

    async def submit(self, alert: AlertInfo, messages: Iterable[Message]) -> list[Delivery]:
        """Keep the messages of an alert in the outbox and queue them; returns the deliveries that are new
        (a message already kept for this alert is not sent again). Raises OutboxUnavailable when they
        cannot be kept safe."""
        now = self._clock()
        deliveries = []
        for message in messages:
            delivery = Delivery(delivery_id(alert.id, message), alert, message, created=now, next_attempt=now)
            if self._lanes[message.channel].sender is None:
                delivery.state, delivery.finished = "dead", now
                delivery.last_error = self.disabled.get(
                    message.channel, f"the {message.channel} channel is off"
                )
            deliveries.append(delivery)
        try:
            new = await self.outbox.add(deliveries)
        except OutboxUnavailable as exc:
            self._hold(deliveries, exc)
            return []
        self._take(new)
        return new

    def _hold(self, deliveries: list[Delivery], exc: OutboxUnavailable) -> None:
        """Keep deliveries the outbox could not take, until it can; OutboxUnavailable when too many are."""
        sizes = [len(encode_record(d)) for d in deliveries]
        added = sum(sizes)
        if len(self._held) + len(deliveries) > MAX_HELD or self._held_bytes + added > MAX_HELD_BYTES:
            held = f"{len(self._held)} messages ({self._held_bytes:,} bytes)"
            raise OutboxUnavailable(f"{exc}, and {held} are held already") from exc
        if not self._held:
            log.error("alerts: %s; messages are held here until it can be written", exc)
        self._held += deliveries
        self._held_sizes += sizes
        self._held_bytes += added
        if self._holding is None or self._holding.done():
            self._holding = asyncio.get_running_loop().create_task(self._write_held(), name="alerts-held")

    async def _write_held(self) -> None:
        while self._held:
            await asyncio.sleep(HOLD_RETRY_SECONDS)
            batch = self._held[:500]
            try:
                new = await self.outbox.add(batch)
            except OutboxUnavailable:
                continue
            except Exception:
                # Not the outbox being away but a fault that writing again would meet again: these messages
                # are lost, as they would have been had the fault come when they were made, and those held
                # after them still get written.
                self._release_held(len(batch))
                log.exception("alerts: %d messages held could not be written and are lost", len(batch))
                continue
            self._release_held(len(batch))
            self._take(new)
            if not self._held:
                log.warning("alerts: the outbox is written again; the messages held are kept and sent")

    def _release_held(self, count: int) -> None:
        self._held_bytes -= sum(self._held_sizes[:count])
        del self._held[:count]
        del self._held_sizes[:count]

    def _take(self, new: list[Delivery]) -> None:
        """Queue the new deliveries the outbox took and count those it took as dead."""
        for delivery in new:
            if delivery.state == "pending":
                self._queue(delivery)
            else:
                self._lanes[delivery.message.channel].stats.dead += 1

    @property
    def held(self) -> int:
        """Messages held in memory until the outbox can be written."""
        return len(self._held)

    async def retry(self, ident: str) -> list[Delivery]:
        """Send again the dead letters of a delivery id or an alert id. NotFound: no such id; Conflict:
        nothing of it is dead."""
        matches = [d for d in self.outbox.all() if ident in (d.id, d.alert.id)]
        if not matches:
            raise NotFound(f"No alert or delivery with id {ident}")
        dead = [d for d in matches if d.state == "dead"]
        if not dead:
            states = sorted({d.state for d in matches})
            raise Conflict(
                f"Nothing of {ident} is a dead letter (state: {', '.join(states)}); only those are sent again"
            )
        now = self._clock()
        for delivery in dead:
            if self._lanes[delivery.message.channel].sender is None:
                raise Conflict(
                    f"The {delivery.message.channel} channel is off"
                    + (
                        f": {self.disabled[delivery.message.channel]}"
                        if delivery.message.channel in self.disabled
                        else ""
                    )
                )
        for delivery in dead:
            delivery.state, delivery.finished = "pending", None
            delivery.created = delivery.next_attempt = now  # a new deadline from now
            delivery.attempts = 0
            delivery.notes.append(
                f"sent again on request at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}"
            )
            await self.outbox.save(delivery)
            self._queue(delivery)
        return dead

    def stats(self) -> dict[str, Any]:
        return {
            channel: lane.stats.as_dict(
                len(lane.queued), self.disabled.get(channel), self.warnings.get(channel)
            )
            for channel, lane in self._lanes.items()
            if lane.sender is not None or channel in self.disabled
        }

    # -- the workers ------------------------------------------------------------------------------------

    def _queue(self, delivery: Delivery) -> None:
        self._push(self._lanes[delivery.message.channel], delivery.next_attempt, delivery.id)

    def _push(self, lane: _Lane, due: float, ident: str) -> None:
        self._order += 1
        heapq.heappush(lane.heap, (due, self._order, ident))
        lane.queued[ident] = self._order
        lane.wake.set()

    def _spend(self, delivery: Delivery, moment: float) -> None:
        if delivery.message.rate_limit > 0:
            slot = delivery.rate_slot
            self._spent[slot] = max(moment, self._spent.get(slot, 0.0))

    def _slot_taken(self, delivery: Delivery, now: float) -> bool:
        limit = delivery.message.rate_limit
        spent = self._spent.get(delivery.rate_slot)
        if spent is not None and spent > now:
            # The clock was set back: the slot counts as spent now, not until the clock is back where it
            # was (every alert of the task would be held back until then).
            spent = self._spent[delivery.rate_slot] = now
        return limit > 0 and spent is not None and now - spent < limit

    async def _next_due(self, lane: _Lane) -> Delivery:
        while True:
            lane.wake.clear()
            if lane.heap:
                due, order, ident = lane.heap[0]
                if lane.queued.get(ident) != order:
                    heapq.heappop(lane.heap)
                    continue
                wait = due - self._clock()
                if wait <= 0:
                    heapq.heappop(lane.heap)
                    del lane.queued[ident]
                    lane.backing_off.discard(ident)
                    delivery = self.outbox.get(ident)
                    if delivery is not None and delivery.state == "pending":
                        return delivery
                    continue
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the
                # wake-up, and stop() would wait for this worker for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await lane.wake.wait()
            else:
                await lane.wake.wait()

    async def _work(self, channel: Channel, lane: _Lane) -> None:
        assert lane.sender is not None
        while True:
            delivery = await self._next_due(lane)
            try:
                await self._attempt(channel, lane, lane.sender, delivery)
            except OutboxUnavailable as exc:
                if self._throttle.ready(channel):
                    log.error("alerts: %s", exc)
                if delivery.state == "pending":
                    # The retry could not be kept: the delivery is tried again later, not lost track of.
                    delivery.next_attempt = self._clock() + self.policy.first
                    self._queue(delivery)
                    await asyncio.sleep(self.policy.first)
                else:
                    # Delivered (or finished otherwise) but not on disk: a restart would send it again.
                    await self._keep(channel, delivery)

    async def _adopt(self) -> None:
        """Queue the deliveries of the shared outbox overdue by ``adopt_seconds``: the Butler that added
        them was killed or is behind. Each attempt claims the delivery first, so a live one's are not sent
        twice."""
        while True:
            await asyncio.sleep(self.adopt_seconds)
            try:
                overdue = await self.outbox.overdue(self._clock() - self.adopt_seconds)
            except OutboxUnavailable:
                continue
            for delivery in overdue:
                lane = self._lanes[delivery.message.channel]
                if lane.sender is not None and delivery.id not in lane.queued:
                    self.adopted += 1
                    self._queue(delivery)

    async def _keep(self, channel: Channel, delivery: Delivery) -> None:
        """Write a finished delivery's state, however long the outbox takes to be writable again."""
        while True:
            await asyncio.sleep(self.policy.first)
            try:
                await self.outbox.save(delivery)
            except OutboxUnavailable as exc:
                if self._throttle.ready(channel):
                    log.error("alerts: %s", exc)
            else:
                return

    async def _attempt(self, channel: Channel, lane: _Lane, sender: Sender, delivery: Delivery) -> None:
        """One attempt, when this Butler holds the delivery's claim and the delivery is still pending in
        the outbox (Butlers sharing an outbox in Redis: another may be attempting it, or have finished)."""
        if not await self.outbox.claim(delivery, self.claim_seconds):
            # Another Butler is attempting it: look again soon, to take it over if that one stopped.
            delivery.next_attempt = self._clock() + self.policy.first
            self._queue(delivery)
            return
        attempted = asyncio.Event()
        holding = (
            asyncio.get_running_loop().create_task(self._hold_claim(delivery, attempted))
            if self.outbox.shared
            else None
        )
        try:
            stored = await self.outbox.current(delivery)
            if stored.state != "pending":
                return
            if stored is not delivery and stored.next_attempt > self._clock():
                # Another Butler's attempt failed meanwhile: its backoff holds.
                self._queue(stored)
                return
            await self._deliver(channel, lane, sender, stored)
        finally:
            attempted.set()
            if holding is not None:
                await holding
            await self.outbox.release(delivery)

    async def _hold_claim(self, delivery: Delivery, attempted: asyncio.Event) -> None:
        """Extend the claim on ``delivery`` until ``attempted`` is set."""

        async def extend() -> None:
            try:
                await self.outbox.extend(delivery, self.claim_seconds)
            except OutboxUnavailable:
                pass  # the claim may lapse: another Butler may then attempt the delivery too
            except Exception:  # the attempt itself goes on
                log.exception("alerts: the claim on delivery %s was not extended", delivery.id)

        await every(self.claim_seconds / 4, attempted, extend)

    async def _deliver(self, channel: Channel, lane: _Lane, sender: Sender, delivery: Delivery) -> None:
        now = self._clock()
        if delivery.message.rate_limit > 0:
            # Butlers sharing an outbox in Redis share its slots: one of them may have spent this one.
            with contextlib.suppress(OutboxUnavailable):
                shared = await self.outbox.spent(delivery.rate_slot)
                if shared is not None:
                    self._spend(delivery, min(shared, now))
        if self._slot_taken(delivery, now):
            delivery.state, delivery.finished = "rateLimited", now
            _forget_payload(delivery)
            lane.stats.rate_limited += 1
            log.warning(
                "Rate limit: %s alert for task %s not sent to %s (one was sent less than %g s ago)",
                channel,
                delivery.alert.task_name or delivery.alert.task_id,
                delivery.message.target,
                delivery.message.rate_limit,
            )
            await self.outbox.save(delivery)
            return
        delivery.attempts += 1
        try:
            async with asyncio.timeout(self.send_timeout):
                receipt = await sender.send(delivery.message.payload, delivery.id)
        except (DeliveryError, TimeoutError) as exc:
            error = (
                exc
                if isinstance(exc, DeliveryError)
                else DeliveryError(f"no answer within {self.send_timeout:g} s", retryable=True)
            )
            await self._failed(channel, lane, delivery, error)
            return
        except Exception as exc:  # a fault in a sender must not stop the channel or lose the message
            log.exception("alerts: the %s sender failed", channel)
            await self._failed(
                channel, lane, delivery, DeliveryError(f"internal error: {exc!r}", retryable=True)
            )
            return
        finished = self._clock()
        delivery.state, delivery.finished, delivery.receipt, delivery.last_error = (
            "delivered",
            finished,
            receipt,
            None,
        )
        self._spend(delivery, finished)
        if delivery.message.rate_limit > 0:
            with contextlib.suppress(OutboxUnavailable):
                await self.outbox.spend(delivery.rate_slot, finished, delivery.message.rate_limit)
        _forget_payload(delivery)
        lane.stats.sent += 1
        self.warnings.pop(channel, None)  # whatever the start-up check found, the channel works now
        self._channel_is_back(lane, finished)
        log.info(
            "%s alert for task %s delivered to %s", channel, delivery.alert.task_name, delivery.message.target
        )
        await self.outbox.save(delivery)

    def _channel_is_back(self, lane: _Lane, now: float) -> None:
        """A delivery went through: what waits for a retry is due now, not after its backoff (after a long
        outage the waits have grown to ``longest``; the backlog goes out as soon as one gets through)."""
        # Each waiting delivery gets a new entry, due now; its old one is skipped when it comes up. Each
        # failure is paid for once, not each time a delivery goes through.
        waiting, lane.backing_off = lane.backing_off, set()
        for ident in waiting:
            if ident in lane.queued:
                self._push(lane, now, ident)

    async def _failed(self, channel: Channel, lane: _Lane, delivery: Delivery, error: DeliveryError) -> None:
        now = self._clock()
        delivery.last_error = error.message
        wait = self.policy.wait(delivery.attempts, self._rng, error.retry_after)
        if error.retryable and now + wait <= delivery.created + self.policy.deadline:
            delivery.next_attempt = now + wait
            lane.stats.retried += 1
            lane.backing_off.add(delivery.id)
            log.warning(
                "%s alert for task %s to %s not delivered (%s); attempt %d, next in %.1f s",
                channel,
                delivery.alert.task_name,
                delivery.message.target,
                error.message,
                delivery.attempts,
                wait,
            )
            await self.outbox.save(delivery)
            self._queue(delivery)
            return
        delivery.state, delivery.finished = "dead", now
        lane.stats.dead += 1
        why = "refused" if not error.retryable else f"not delivered within {self.policy.deadline:g} s"
        log.error(
            "%s alert for task %s to %s %s after %d attempt(s): %s (a dead letter: POST /v4/alerts/%s/retry)",
            channel,
            delivery.alert.task_name,
            delivery.message.target,
            why,
            delivery.attempts,
            error.message,
            delivery.id,
        )
        await self.outbox.save(delivery)

    async def _purge(self) -> None:
        while True:
            await asyncio.sleep(PURGE_INTERVAL)
            self.outbox.purge(self._clock())
            cutoff = self._clock() - max((d.message.rate_limit for d in self.outbox.all()), default=0)
            self._spent = {slot: moment for slot, moment in self._spent.items() if moment >= cutoff}


def _forget_payload(delivery: Delivery) -> None:
    """A message that went out (or never will) is not needed again, only its record: memory and the file
    then hold a few hundred bytes per delivery, not the whole e-mail. Dead letters keep theirs, to be sent
    again."""
    delivery.message = dataclasses.replace(delivery.message, payload={})


__all__ = ["ChannelStats", "Dispatcher", "RetryPolicy", "Sender"]
