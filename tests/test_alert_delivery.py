"""Alert delivery: the outbox, the channel workers and the HTTP sender, against real local HTTP receivers."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from butler.alerts.dispatcher import Dispatcher, RetryPolicy, Sender
from butler.alerts.http import HttpSender
from butler.alerts.model import Channel, Message
from butler.alerts.outbox import AlertInfo, Delivery, SqliteOutbox
from butler.errors import Conflict, NotFound
from tests.receivers import Receiver, hang, status
from tests.waiting import eventually

ALERT = AlertInfo(
    "exec-1:reloadTaskFailure", "reloadTaskFailure", "task-1", "Reload of Sales", "Sales", "exec-1"
)
FAST = RetryPolicy(first=0.05, longest=0.2, deadline=30)


def message(url: str, channel: Channel = "webhook", rate_limit: float = 0, **payload: Any) -> Message:
    return Message(
        channel=channel,
        event="reloadTaskFailure",
        rate_key="task-1",
        rate_limit=rate_limit,
        target=url,
        payload={"method": "POST", "url": url, "json": {"taskName": "Reload of Sales"}, **payload},
    )


def dispatcher(path: Path, policy: RetryPolicy = FAST, timeout: float = 5, **senders: Sender) -> Dispatcher:
    lanes: dict[Channel, Sender] = {"webhook": HttpSender(timeout), "slack": HttpSender(timeout)}
    lanes.update(senders)  # type: ignore[arg-type]
    return Dispatcher(
        SqliteOutbox(path / "outbox.sqlite", 3600), lanes, policy, timeout + 1, rng=random.Random(7)
    )


async def settled(delivery: Delivery, seconds: float = 10) -> Delivery:
    await eventually(
        lambda: delivery.state != "pending",
        seconds,
        lambda: f"still pending after {seconds} s: {delivery.summary()}",
    )
    return delivery


async def test_server_errors_are_retried_and_the_message_delivered_once(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(500), status(502), status(503)]
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await settled(delivery)
        assert (delivery.state, delivery.attempts, delivery.receipt) == ("delivered", 4, "HTTP 200")
        assert len(hook.got) == 4  # three refused, one taken: delivered once
        assert {headers["Idempotency-Key"] for _, headers, _ in hook.got} == {delivery.id}
        assert sending.stats()["webhook"] == {
            "sent": 1,
            "retried": 3,
            "dead": 0,
            "rateLimited": 0,
            "pending": 0,
        }
    finally:
        await sending.stop()


async def test_retry_after_is_honoured(tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]) -> None:
    hook = await receivers()
    hook.answers = [status(429, {"Retry-After": "2"})]
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await settled(delivery)
        waited = hook.got[1][0] - hook.got[0][0]
        assert delivery.state == "delivered" and 2.0 <= waited < 2.5, waited
    finally:
        await sending.stop()


async def test_a_hanging_channel_delays_no_other(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    stuck, slack = await receivers(), await receivers()
    stuck.answers = [hang(30)]
    sending = dispatcher(tmp_path, timeout=30)
    await sending.start()
    try:
        await sending.submit(ALERT, [message(stuck.url)])
        await asyncio.sleep(0.1)  # the webhook's worker is now waiting for its receiver
        started = time.monotonic()
        [other] = await sending.submit(ALERT, [message(slack.url, channel="slack")])
        await settled(other)
        assert other.state == "delivered" and time.monotonic() - started < 0.5
    finally:
        await sending.stop()


async def test_a_malformed_formatted_message_falls_back_to_the_basic_one(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(400)]
    basic = {"method": "POST", "url": hook.url, "json": {"text": "Qlik Sense reload failed"}}
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url, fallback=basic)])
        await settled(delivery)
        assert delivery.state == "delivered" and delivery.attempts == 1
        assert [body for _, _, body in hook.got] == [
            {"taskName": "Reload of Sales"},
            {"text": "Qlik Sense reload failed"},
        ]
        assert delivery.receipt is not None and "basic message" in delivery.receipt
    finally:
        await sending.stop()


async def test_a_refusal_is_a_dead_letter_that_can_be_sent_again(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(404)]
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await settled(delivery)
        assert (delivery.state, delivery.attempts, delivery.last_error) == ("dead", 1, "HTTP 404: answer 404")
        with pytest.raises(NotFound):
            await sending.retry("no-such-id")
        [again] = await sending.retry(ALERT.id)  # by the alert's id: all its dead letters
        await settled(again)
        assert again.state == "delivered" and len(hook.got) == 2
        with pytest.raises(Conflict, match=r"Nothing of .* is a dead letter"):
            await sending.retry(delivery.id)
    finally:
        await sending.stop()


async def test_a_message_not_taken_before_the_deadline_is_a_dead_letter(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(503)] * 100
    sending = dispatcher(tmp_path, policy=RetryPolicy(first=0.05, longest=0.1, deadline=0.5))
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        started = time.monotonic()
        await settled(delivery)
        assert delivery.state == "dead" and 0.3 < time.monotonic() - started < 1.5
        assert 3 <= delivery.attempts == len(hook.got)
    finally:
        await sending.stop()


async def test_only_a_delivered_message_spends_a_rate_limit_slot(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [status(404)]  # the first alert is refused: it must not keep the next one back
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        deliveries = []
        for n in range(3):
            alert = AlertInfo(
                f"exec-{n}:reloadTaskFailure", "reloadTaskFailure", "task-1", "Sales", "Sales", f"exec-{n}"
            )
            [delivery] = await sending.submit(alert, [message(hook.url, rate_limit=60)])
            await settled(delivery)
            deliveries.append(delivery)
        assert [d.state for d in deliveries] == ["dead", "delivered", "rateLimited"]
        assert len(hook.got) == 2
    finally:
        await sending.stop()


async def test_pending_messages_survive_a_restart_and_a_repeated_alert_adds_nothing(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    hook.answers = [hang(30)]
    first = dispatcher(tmp_path, timeout=30)
    await first.start()
    await first.submit(ALERT, [message(hook.url)])
    await asyncio.sleep(0.1)
    await first.stop()  # as good as killed: the message was sent but not taken
    second = dispatcher(tmp_path)
    await second.start()
    try:
        [delivery] = second.outbox.all()
        await settled(delivery)
        assert delivery.state == "delivered"
        assert await second.submit(ALERT, [message(hook.url)]) == []  # the same alert again: nothing new
        assert len(hook.got) == 2
    finally:
        await second.stop()


async def test_once_a_channel_takes_a_message_its_backlog_goes_out_without_waiting_its_backoff(
    tmp_path: Path, receivers: Callable[[], Awaitable[Receiver]]
) -> None:
    hook = await receivers()
    # The channel is down for three messages; two are told to come back in 20 s, one in 0.2 s.
    hook.answers = [
        status(503, {"Retry-After": "0.2"}),
        status(503, {"Retry-After": "20"}),
        status(503, {"Retry-After": "20"}),
    ]
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        alerts = [
            AlertInfo(f"exec-{n}:reloadTaskFailure", "reloadTaskFailure", f"task-{n}", "T", "A", f"exec-{n}")
            for n in range(3)
        ]
        started = time.monotonic()
        deliveries = [(await sending.submit(alert, [message(hook.url)]))[0] for alert in alerts]
        for delivery in deliveries:
            await settled(delivery)
        assert [d.state for d in deliveries] == ["delivered"] * 3
        assert time.monotonic() - started < 2  # not 20 s: the first delivery showed the channel is back
    finally:
        await sending.stop()
