"""The alert outbox in Redis, shared by two Butlers (two dispatchers here), against a real redis-server and
a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from butler.alerts.dispatcher import Dispatcher, RetryPolicy
from butler.alerts.http import HttpSender
from butler.alerts.outbox import AlertInfo, Delivery, OutboxUnavailable, delivery_id
from butler.alerts.outbox_redis import RedisOutbox, alerts_prefix
from tests.conftest import RedisServer
from tests.receivers import Receiver, hang, status
from tests.test_alert_delivery import ALERT, message
from tests.waiting import eventually

POLICY = RetryPolicy(first=0.05, longest=0.2, deadline=30)


@pytest.fixture
def prefix() -> str:
    """Keys of this test's own, in the session's Redis."""
    return f"test:{uuid.uuid4().hex}:alerts:"


def butler(redis_url: str, prefix: str, timeout: float = 5, claim_seconds: float = 8) -> Dispatcher:
    return Dispatcher(
        RedisOutbox(redis_url, prefix, 3600),
        {"webhook": HttpSender(timeout)},
        POLICY,
        timeout + 1,
        rng=random.Random(3),
        claim_seconds=claim_seconds,
    )


async def finished(sending: Dispatcher, ident: str, seconds: float = 10) -> Delivery:
    deadline = time.monotonic() + seconds
    while True:
        delivery = sending.outbox.get(ident)
        if delivery is not None and delivery.state != "pending":
            return delivery
        assert time.monotonic() < deadline, delivery.summary() if delivery else "no such delivery"
        await asyncio.sleep(0.01)


def test_the_prefix_sits_beside_the_key_value_stores() -> None:
    assert alerts_prefix("butler:kv:") == "butler:alerts:"
    assert alerts_prefix("site1:") == "site1:alerts:"


async def test_an_alert_two_butlers_get_is_sent_once(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    first, second = butler(redis_url, prefix), butler(redis_url, prefix)
    await first.start()
    await second.start()
    try:
        # Both receive the appenders' event: the first to add it sends it, the second adds nothing.
        added = [
            await first.submit(ALERT, [message(hook.url)]),
            await second.submit(ALERT, [message(hook.url)]),
        ]
        assert [len(a) for a in added] == [1, 0]
        delivery = await finished(first, added[0][0].id)
        assert delivery.state == "delivered"
        await asyncio.sleep(0.3)
        assert hook.taken == [delivery.id]
    finally:
        await first.stop()
        await second.stop()


async def test_an_alert_made_while_redis_is_away_is_held_and_sent_once_when_it_is_back(
    tmp_path: Path, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    """Both Butlers make the same alert while Redis is stopped: each holds it in memory (none is lost), and
    once Redis is back the first to write it sends it, the other's copy is known already."""
    hook = await receivers()
    server = RedisServer(tmp_path)
    server.start()
    first, second = butler(server.url, prefix), butler(server.url, prefix)
    await first.start()
    await second.start()
    try:
        server.stop()
        for one in (first, second):
            assert await one.submit(ALERT, [message(hook.url)]) == []
            assert one.held == 1
        await asyncio.sleep(1.5)  # a try or more to write them, while Redis is away
        assert first.held == second.held == 1 and not hook.got
        server.start()
        await eventually(lambda: first.held == second.held == 0, seconds=10)
        await eventually(lambda: len(hook.taken) >= 1, seconds=10)
        await asyncio.sleep(0.5)
        assert len(hook.taken) == 1
    finally:
        await first.stop()
        await second.stop()
        server.stop()


async def test_messages_held_while_redis_is_away_are_bounded_by_their_bytes(
    tmp_path: Path,
    prefix: str,
    receivers: Callable[[], Awaitable[Receiver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held messages are bounded by their records' bytes too (a message may carry a script log): beyond,
    the alert is refused as unavailable, and what was held is still sent once Redis is back."""
    import butler.alerts.dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "MAX_HELD_BYTES", 6000)  # two of these messages
    hook = await receivers()
    server = RedisServer(tmp_path)
    server.start()
    sending = butler(server.url, prefix)
    await sending.start()
    try:
        server.stop()
        alerts = [AlertInfo(f"big-{n}", "failed", "t", "task", "app", f"e{n}") for n in range(4)]
        big = {"log": "x" * 2000}
        for alert in alerts[:2]:
            assert await sending.submit(alert, [message(hook.url, **big)]) == []
        with pytest.raises(OutboxUnavailable, match="2 messages"):
            await sending.submit(alerts[2], [message(hook.url, **big)])
        assert sending.held == 2
        server.start()
        await eventually(lambda: len(hook.taken) >= 2, seconds=10)
        assert sending.held == 0
        # Room again: a message now goes straight to the outbox.
        [delivery] = await sending.submit(alerts[3], [message(hook.url, **big)])
        assert (await finished(sending, delivery.id)).state == "delivered"
    finally:
        await sending.stop()
        server.stop()


async def test_what_a_killed_butler_left_pending_a_running_one_sends_once(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    """A Butler wrote an alert to the shared outbox and was killed before sending it: a Butler running
    meanwhile finds it overdue and sends it, once, without a restart of anyone."""
    hook = await receivers()
    running = Dispatcher(
        RedisOutbox(redis_url, prefix, 3600),
        {"webhook": HttpSender(5)},
        POLICY,
        6,
        rng=random.Random(3),
        adopt_seconds=0.3,
    )
    await running.start()
    killed = RedisOutbox(redis_url, prefix, 3600)  # its outbox alone: no worker will ever send
    try:
        await killed.open()
        sent = message(hook.url)
        now = time.time()
        left = Delivery(delivery_id(ALERT.id, sent), ALERT, sent, created=now, next_attempt=now)
        assert await killed.add([left]) == [left]
        began = time.monotonic()
        await eventually(lambda: len(hook.taken) >= 1, seconds=5)
        took = time.monotonic() - began
        # Overdue by the adoption interval, found at the next look: between one and two intervals.
        assert 0.25 <= took < 1.5, took
        # The running Butler's own alert is its own, not taken over.
        [own] = await running.submit(AlertInfo("own", "failed", "t", "task", "app", "e"), [message(hook.url)])
        assert (await finished(running, own.id)).state == "delivered"
        await asyncio.sleep(0.7)
        assert sorted(hook.taken) == sorted([left.id, own.id]) and running.adopted == 1
        assert (await killed.current(left)).state == "delivered"
        assert await killed.overdue(time.time() + 60) == []  # nothing pending is listed any more
    finally:
        await running.stop()
        await killed.close()


async def test_what_a_stopped_butler_left_pending_another_sends_once(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(503)] * 3  # the receiver is down while the first Butler runs
    first = butler(redis_url, prefix)
    await first.start()
    [delivery] = await first.submit(ALERT, [message(hook.url)])
    await eventually(lambda: len(hook.got) >= 2)
    await first.stop()  # gone, its alert still pending in Redis
    hook.answers = []
    second = butler(redis_url, prefix)
    await second.start()
    try:
        assert (await finished(second, delivery.id)).state == "delivered"
    finally:
        await second.stop()
    # The first Butler back: the delivery is done, nothing is sent again.
    again = butler(redis_url, prefix)
    await again.start()
    try:
        await asyncio.sleep(0.5)
        stored = again.outbox.get(delivery.id)
        assert stored is not None and stored.state == "delivered"
        assert hook.taken == [delivery.id]
    finally:
        await again.stop()


async def test_a_delivery_another_butler_is_attempting_is_not_sent_meanwhile(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [hang(1.5)]  # the first Butler's attempt takes 1.5 s, then succeeds
    # Claims of 0.4 s: the first Butler holds its claim through the attempt by extending it.
    first = butler(redis_url, prefix, claim_seconds=0.4)
    await first.start()
    other = butler(redis_url, prefix, claim_seconds=0.4)
    try:
        [delivery] = await first.submit(ALERT, [message(hook.url)])
        await eventually(lambda: hook.got)
        await other.start()  # reads the pending delivery; the first Butler holds its claim
        assert (await finished(first, delivery.id)).state == "delivered"
        await asyncio.sleep(0.5)
        assert len(hook.got) == 1 and hook.taken == [delivery.id]
    finally:
        await first.stop()
        await other.stop()


async def test_finished_deliveries_past_their_time_are_forgotten_at_start(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    first = butler(redis_url, prefix)
    await first.start()
    alert = AlertInfo("old:reloadTaskFailure", "reloadTaskFailure", "t", "T", "A", "old")
    [delivery] = await first.submit(alert, [message(hook.url)])
    await finished(first, delivery.id)
    await first.stop()
    later = Dispatcher(RedisOutbox(redis_url, prefix, keep_seconds=0), {}, POLICY, 5)
    assert await later.outbox.open() == []
    await later.outbox.close()


async def test_a_delivery_another_butler_delivered_is_not_sent_again(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    """Both Butlers hold the pending delivery and retry it while the receiver is down; once it is back, the
    one that delivers it first is the only one: the other finds it delivered in the outbox."""
    hook = await receivers()
    hook.answers = [status(503)] * 6
    first, second = butler(redis_url, prefix), butler(redis_url, prefix)
    await first.start()
    try:
        [delivery] = await first.submit(ALERT, [message(hook.url)])
        await eventually(lambda: hook.got)
        await second.start()  # reads the delivery while it is pending: both now retry it
        for sending in (first, second):
            assert (await finished(sending, delivery.id)).state == "delivered"
        await asyncio.sleep(0.5)
        assert hook.taken == [delivery.id]
    finally:
        await first.stop()
        await second.stop()


async def test_a_rate_limit_slot_one_butler_spent_holds_for_the_other(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    first, second = butler(redis_url, prefix), butler(redis_url, prefix)
    await first.start()
    await second.start()
    try:
        [sent] = await first.submit(ALERT, [message(hook.url, rate_limit=60)])
        assert (await finished(first, sent.id)).state == "delivered"
        # The same task fails again a moment later; the other Butler gets this event.
        again = AlertInfo(
            "exec-2:reloadTaskFailure", "reloadTaskFailure", "task-1", "Reload of Sales", "Sales", "exec-2"
        )
        [held] = await second.submit(again, [message(hook.url, rate_limit=60)])
        assert (await finished(second, held.id)).state == "rateLimited"
        assert hook.taken == [sent.id]
    finally:
        await first.stop()
        await second.stop()


async def test_an_alert_whose_write_reached_redis_but_not_its_answer_is_still_sent(
    redis_url: str, prefix: str, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    """The connection drops after Redis stored the delivery, before its answer came back: the alert is held
    and written again, and that second write, finding it stored already, must still send it."""
    hook = await receivers()
    sending = butler(redis_url, prefix)
    outbox = sending.outbox
    assert isinstance(outbox, RedisOutbox)
    write = outbox._keep_new
    answers_lost = [True]

    async def answer_lost(deliveries: list[Delivery]) -> list[Delivery]:
        kept = await write(deliveries)
        if answers_lost.pop(0) if answers_lost else False:
            raise OutboxUnavailable("The alert outbox cannot reach Redis: connection reset")
        return kept

    outbox._keep_new = answer_lost  # type: ignore[method-assign]
    await sending.start()
    try:
        assert await sending.submit(ALERT, [message(hook.url)]) == []
        assert sending.held == 1
        await eventually(lambda: sending.held == 0, seconds=5)
        await eventually(lambda: len(hook.taken) == 1, seconds=5)
    finally:
        await sending.stop()


async def test_a_fault_writing_held_alerts_loses_those_only_and_says_so(
    redis_url: str,
    prefix: str,
    receivers: Callable[[], Awaitable[Receiver]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write of held messages that fails otherwise than by Redis being away must not end the task that
    writes them, silently, with the messages held for ever: those are lost, logged; later ones are sent."""
    hook = await receivers()
    sending = butler(redis_url, prefix)
    outbox = sending.outbox
    assert isinstance(outbox, RedisOutbox)
    write = outbox._keep_new
    faults: list[Exception] = [
        OutboxUnavailable("The alert outbox cannot reach Redis: connection refused"),
        RuntimeError("a fault of the outbox's own"),
    ]

    async def faulty(deliveries: list[Delivery]) -> list[Delivery]:
        if faults:
            raise faults.pop(0)
        return await write(deliveries)

    outbox._keep_new = faulty  # type: ignore[method-assign]
    await sending.start()
    try:
        assert await sending.submit(ALERT, [message(hook.url)]) == []
        await eventually(lambda: sending.held == 0, seconds=5)
        assert "1 messages held could not be written and are lost" in caplog.text
        faults.append(OutboxUnavailable("The alert outbox cannot reach Redis: connection refused"))
        later = dataclasses.replace(ALERT, id="later")
        assert await sending.submit(later, [message(hook.url)]) == []
        await eventually(lambda: len(hook.taken) == 1, seconds=5)
        assert sending.held == 0
    finally:
        await sending.stop()
