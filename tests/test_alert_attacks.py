"""Alerts against hostile input, misbehaving receivers and clumsy configuration: task names with line
breaks, receivers whose answers never end or ask for no wait, an outbox file that cannot be opened, alert
sections without the UDP events that would trigger them."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from butler.alerts.channels.email import build
from butler.alerts.dispatcher import Dispatcher, RetryPolicy
from butler.alerts.http import HttpSender
from butler.alerts.model import DeliveryError
from butler.alerts.outbox import OutboxUnavailable, SqliteOutbox
from butler.alerts.smtp import build_mime
from tests.conftest import StartButler, base_config
from tests.receivers import Receiver, hang
from tests.test_alert_delivery import ALERT, dispatcher, message, settled
from tests.test_alert_email import alert_settings, email_event, facts, templates  # noqa: F401
from tests.waiting import eventually

HOSTILE = "Reload\r\nBcc: victim@evil.example\r\n\r\nSales"


@pytest.mark.parametrize("subject", ["", "{{#each}} broken", 'Failed: "{{taskName}}"'])
def test_a_task_name_with_line_breaks_still_gets_its_mail(templates: Path, subject: str) -> None:  # noqa: F811
    """The subject a broken or empty subject template falls back to holds the task name as Sense sent it;
    its line breaks must neither inject headers nor keep the mail from being composed."""
    [built] = build(facts(task_name=HOSTILE), alert_settings(email_event(templates, subject=subject)))
    mail = email.message_from_bytes(build_mime(built.payload, "id1").as_bytes(), policy=email.policy.default)
    assert mail["Bcc"] is None
    assert mail["Subject"].endswith('"Reload Bcc: victim@evil.example Sales"')


def endless(code: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An answer whose body never ends (a megabyte at a time)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=code)
        await response.prepare(request)
        while True:
            await response.write(b"x" * 1_048_576)

    return answer


async def test_a_taken_message_whose_answer_never_ends_is_delivered_once(
    tmp_path: Path,
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    hook = await receivers()
    hook.answers = [endless(200)]
    sending = dispatcher(tmp_path, timeout=3)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await settled(delivery, 8)
        assert (delivery.state, delivery.attempts, delivery.receipt) == ("delivered", 1, "HTTP 200")
        assert len(hook.got) == 1
    finally:
        await sending.stop()


async def test_a_refusal_with_an_endless_body_is_read_only_in_part(
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    hook = await receivers()
    hook.answers = [endless(500)]
    sender = HttpSender(timeout=20)
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as refused:
            await sender.send(message(hook.url).payload, "id1")
    finally:
        await sender.close()
    assert time.monotonic() - started < 5
    assert refused.value.retryable and refused.value.message.startswith("HTTP 500: xxx")
    assert len(refused.value.message) < 400


def asking(retry_after: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, text="busy", headers={"Retry-After": retry_after})

    return answer


@pytest.mark.parametrize(
    "retry_after", ["-1", "NaN", "0", formatdate(time.time() - 3600, usegmt=True), "soon"]
)
async def test_a_retry_after_asking_for_no_wait_gets_the_backoff(
    tmp_path: Path,
    receivers: Callable[[], Awaitable[Receiver]],
    retry_after: str,
) -> None:
    hook = await receivers()
    hook.answers = [asking(retry_after)] * 3
    sending = dispatcher(tmp_path, RetryPolicy(first=0.4, longest=2, deadline=30))
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await settled(delivery)
        moments = [moment for moment, _, _ in hook.got]
        gaps = [later - earlier for earlier, later in itertools.pairwise(moments)]
        assert delivery.state == "delivered" and len(gaps) == 3
        assert min(gaps) >= 0.2, gaps
    finally:
        await sending.stop()


async def test_an_outbox_that_is_no_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"not a database, " * 1000)
    with pytest.raises(OutboxUnavailable, match="cannot write its file"):
        await SqliteOutbox(path, 60).open()
    with pytest.raises(OutboxUnavailable):
        await SqliteOutbox(path / "below-a-file.sqlite", 60).open()


def webhook_config(tmp_path: Path, udp: bool = False) -> dict[str, Any]:
    document = base_config()
    document["Butler"]["keyValueStore"] = {
        "backend": "sqlite",
        "sqlite": {"path": str(tmp_path / "kv.sqlite")},
    }
    document["Butler"]["udpServerConfig"] = {"enable": udp}
    document["Butler"]["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "webhooks": [
                {"description": "ops", "webhookURL": "http://127.0.0.1:9/hook", "httpMethod": "POST"}
            ]
        },
    }
    return document


async def test_butler_runs_without_alerts_when_the_outbox_cannot_be_opened(
    start_butler: StartButler, tmp_path: Path
) -> None:
    (tmp_path / "butler-alerts.sqlite").write_bytes(b"garbage " * 1000)
    base = await start_butler(webhook_config(tmp_path))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as answer:
            health = await answer.json()
        assert answer.status == 200 and health["status"] == "ok"
        assert "cannot write its file" in health["alerts"]["off"]
        async with http.get(f"{base}/v4/alerts") as answer:
            assert answer.status == 503
            assert "cannot write its file" in (await answer.json())["message"]
        async with http.post(f"{base}/v4/keyvalues/n", json={"key": "k", "value": "v"}) as answer:
            assert answer.status < 300, await answer.text()


async def test_alert_sections_without_udp_events_are_said_at_start_up(
    start_butler: StartButler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "butler.alerts")
    await start_butler(webhook_config(tmp_path))
    assert any("udpServerConfig.enable is false" in r.getMessage() for r in caplog.records)


class Flapping:
    """A channel that refuses every other message (a receiver rate-limiting in bursts), once opened."""

    def __init__(self) -> None:
        self.calls = 0
        self.taken: list[str] = []
        self.open = asyncio.Event()

    async def send(self, payload: dict[str, Any], ident: str) -> str:
        await self.open.wait()
        self.calls += 1
        if self.calls % 2:
            raise DeliveryError("HTTP 503", retryable=True)
        self.taken.append(ident)
        return "HTTP 200"

    async def close(self) -> None:
        pass


async def test_a_flapping_channel_with_a_large_backlog_costs_no_pass_over_it_per_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each delivery that goes through makes what waits for a retry due at once: with 10,000 pending and
    every other attempt refused, that must not cost a pass over the whole backlog each time."""
    caplog.set_level(logging.ERROR, "butler.alerts")
    channel = Flapping()
    sending = dispatcher(tmp_path, RetryPolicy(first=60, longest=60, deadline=600), webhook=channel)
    await sending.start()
    try:
        await sending.submit(ALERT, [message(f"http://hook/{n}") for n in range(10_000)])  # one write
        started = time.thread_time()  # the event loop's CPU, not the outbox writer's
        channel.open.set()
        await eventually(lambda: len(channel.taken) >= 2000, 60, lambda: (len(channel.taken), channel.calls))
        cpu = time.thread_time() - started
        assert len(set(channel.taken)) == len(channel.taken)  # none twice
        assert cpu < 1.5, cpu
    finally:
        await sending.stop()


async def test_stop_is_not_lost_when_a_wake_up_comes_at_the_same_moment(tmp_path: Path) -> None:
    """A worker waiting for a later delivery is woken (a new one queued) and cancelled by stop() in the same
    turn of the loop: stop() must still end, not wait for the worker for ever."""
    sending = dispatcher(tmp_path, RetryPolicy(first=60, longest=60, deadline=600), webhook=Flapping())
    await sending.start()
    lane = sending._lanes["webhook"]
    sending._push(lane, time.time() + 60, "later")
    await asyncio.sleep(0.05)  # the worker now waits for the delivery's time or a wake-up
    sending._push(lane, time.time() + 60, "also later")
    await asyncio.wait_for(sending.stop(), 5)


async def writable(outbox: SqliteOutbox, on: bool) -> None:
    """Make the outbox's file refuse writes, or take them again, as a full or read-only disk would."""
    writer = outbox._writer
    connection = writer._connection
    assert connection is not None
    loop = asyncio.get_running_loop()
    pragma = f"PRAGMA query_only={'OFF' if on else 'ON'}"
    await loop.run_in_executor(writer._executor, connection.execute, pragma)


async def test_a_delivery_whose_state_could_not_be_written_is_written_later_not_sent_again(
    tmp_path: Path,
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    hook = await receivers()
    hook.answers = [hang(0.5)]
    sending = dispatcher(tmp_path)
    await sending.start()
    try:
        [delivery] = await sending.submit(ALERT, [message(hook.url)])
        await eventually(lambda: hook.got)
        await writable(sending.outbox, False)  # the disk fails while the receiver takes the message
        await settled(delivery)
        await asyncio.sleep(0.3)
        await writable(sending.outbox, True)
        await asyncio.sleep(0.5)
    finally:
        await sending.stop()
    assert hook.taken == [delivery.id]
    reopened = SqliteOutbox(tmp_path / "outbox.sqlite", 3600)
    [stored] = await reopened.open()
    await reopened.close()
    assert (stored.id, stored.state) == (delivery.id, "delivered")  # a restart does not send it again


async def test_a_clock_set_back_holds_alerts_back_for_the_rate_limit_only(
    tmp_path: Path,
    receivers: Callable[[], Awaitable[Receiver]],
) -> None:
    hook = await receivers()
    now = [1_000_000.0]
    sending = Dispatcher(
        SqliteOutbox(tmp_path / "outbox.sqlite", 86_400),
        {"webhook": HttpSender(5)},
        RetryPolicy(first=0.05, longest=0.2, deadline=30),
        6,
        clock=lambda: now[0],
    )
    await sending.start()
    try:

        async def alert(number: int) -> str:
            info = dataclasses.replace(ALERT, id=f"exec-{number}:reloadTaskFailure")
            [delivery] = await sending.submit(info, [message(hook.url, rate_limit=60)])
            return (await settled(delivery)).state

        assert await alert(1) == "delivered"
        now[0] -= 3600  # NTP sets the clock back an hour
        assert await alert(2) == "rateLimited"
        now[0] += 61
        assert await alert(3) == "delivered"
    finally:
        await sending.stop()
