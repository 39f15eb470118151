"""Random and malformed datagrams at the UDP listeners: nothing crashes, every datagram is counted once."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler.config.settings import TaskOutcomeSettings
from butler.events.active_users import ActiveUsers
from butler.events.bus import EventBus
from butler.events.parsing import SessionEvent, TaskEvent, parse_session_datagram, parse_task_datagram
from butler.events.task_outcomes import TaskOutcomes
from butler.events.udp import UdpLimits, UdpListener
from tests.test_events import session_datagram, task_datagram

TYPES = [
    "/scheduler-task-failed/",
    "/scheduler-task-aborted/",
    "/scheduler-task-success//",
    "/scheduler-distribute/",
    "/engine-reload-failed/",
    "/proxy-session/",
    "/proxy-connection/",
]


@st.composite
def datagrams(draw: Any) -> bytes:
    """Valid events, valid events cut or spliced, and plain junk."""
    kind = draw(st.sampled_from(["task", "session", "fields", "junk"]))
    if kind == "task":
        valid = task_datagram(
            draw(st.sampled_from(TYPES[:4])),
            task_name=draw(st.text(max_size=40)),
            message=draw(st.text(max_size=80)),
            execution=draw(st.uuids()).hex if draw(st.booleans()) else str(draw(st.uuids())),
        )
    elif kind == "session":
        valid = session_datagram(
            draw(st.sampled_from(["Start session", "Stop session", "Open connection", "Close connection"])),
            draw(st.text(max_size=20)),
            draw(st.text(max_size=10)),
            draw(st.text(max_size=10)),
            draw(st.text(max_size=60)),
        )
    elif kind == "fields":
        fields = draw(st.lists(st.text(max_size=30), max_size=14))
        return ";".join([draw(st.sampled_from(TYPES)), *fields]).encode("utf-8", "surrogatepass")
    else:
        return bytes(draw(st.binary(max_size=300)))
    cut = draw(st.integers(0, len(valid)))
    return valid[:cut] if draw(st.booleans()) else valid


def listeners() -> tuple[UdpListener[Any], UdpListener[Any], TaskOutcomes, ActiveUsers]:
    outcomes = TaskOutcomes(None, TaskOutcomeSettings(queue_size=5), EventBus())
    users = ActiveUsers()
    limits = UdpLimits(max_message_size=250)

    def session(event: SessionEvent) -> str | None:
        users.apply(event)
        return None

    def task(event: Any) -> str | None:
        return outcomes.submit(event) if isinstance(event, TaskEvent) else None

    return (
        UdpListener("task event", limits, parse_task_datagram, task, lambda e: type(e).__name__),
        UdpListener("session event", limits, parse_session_datagram, session, lambda e: e.command),
        outcomes,
        users,
    )


def balanced(listener: UdpListener[Any]) -> bool:
    stats = listener.stats
    return stats.received == stats.accepted + stats.malformed + sum(stats.dropped.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(datagrams(), max_size=30))
def test_any_datagram_is_counted_once(batch: list[bytes]) -> None:
    async def run() -> None:
        tasks, sessions, _, users = listeners()
        for data in batch:
            tasks.datagram_received(data, ("10.0.0.1", 5000))
            sessions.datagram_received(data, ("10.0.0.1", 5000))
        for listener in (tasks, sessions):
            assert listener.stats.received == len(batch)
            assert balanced(listener)
        assert users.count() <= len(batch)

    asyncio.run(run())


def random_batch(count: int, seed: int = 7) -> list[bytes]:
    """Valid events, cut ones and random bytes, the same on every run."""
    rng = random.Random(seed)
    batch = []
    for n in range(count):
        valid = (
            task_datagram(rng.choice(TYPES[:3]), execution=f"{n:08x}-0000-4000-8000-000000000000")
            if n % 2
            else session_datagram("Start session", f"sense{n % 3}", "LAB", f"user{n}")
        )
        choice = rng.random()
        if choice < 0.3:
            batch.append(valid[: rng.randrange(len(valid))])
        elif choice < 0.5:
            batch.append(rng.randbytes(rng.randrange(1, 400)))
        else:
            batch.append(valid)
    return batch


async def test_random_datagrams_over_a_real_socket() -> None:
    tasks, sessions, outcomes, users = listeners()
    await tasks.open("127.0.0.1", 0)
    await sessions.open("127.0.0.1", 0)
    batch = random_batch(300)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for data in batch:
            for listener in (tasks, sessions):
                sender.sendto(data, ("127.0.0.1", listener.port))
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            while True:  # until the kernel has handed every datagram over
                if tasks.stats.received == sessions.stats.received == len(batch):
                    break
                await asyncio.sleep(0.01)
    finally:
        sender.close()
        tasks.close()
        sessions.close()
    assert balanced(tasks) and balanced(sessions)
    assert tasks.stats.malformed > 0 and sessions.stats.malformed > 0 and sessions.stats.accepted > 0
    # Nobody takes events off the five-place queue here: once it is full, events are dropped and counted.
    assert outcomes.queued == 5 and tasks.stats.dropped["queueFull"] > 0
    assert users.count() == sessions.stats.accepted
