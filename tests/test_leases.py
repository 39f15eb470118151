"""Leases in a real Redis (butler.leases): taken by one, renewed, expired, taken over, fenced; a holder that
cannot reach Redis stops acting before another can take over."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from butler.leases import Leases
from butler.redis_edge import RedisEdge

TAKEOVER = 0.8  # seconds: the lease is 0.6 s, asked for every 0.2 s


@pytest.fixture
async def butlers(redis_url: str) -> AsyncIterator[Callable[..., Leases]]:
    prefix = f"test:{time.monotonic_ns()}:"
    made: list[Leases] = []

    def make(name: str, url: str = redis_url) -> Leases:
        leases = Leases(url, prefix, takeover_seconds=TAKEOVER, instance_id=name)
        made.append(leases)
        return leases

    yield make
    for leases in made:
        await leases.close()


async def test_one_of_three_takes_a_lease_and_keeps_it_while_renewing(
    butlers: Callable[..., Leases],
) -> None:
    three = [butlers(name) for name in "abc"]
    leases = [b.lease("monitor:x") for b in three]
    for b in three:
        await b.start()
    for _ in range(8):  # twice the lease's length: renewed, never lost
        assert [lease.held for lease in leases] == [True, False, False]
        await asyncio.sleep(TAKEOVER / 4)
    assert {lease.holder for lease in leases} == {"a"}
    assert leases[0].token == leases[1].holder_token == leases[2].holder_token


async def test_a_lease_not_renewed_expires_and_another_takes_it_with_a_larger_token(
    butlers: Callable[..., Leases],
) -> None:
    first, second = butlers("first"), butlers("second")
    mine, theirs = first.lease("m"), second.lease("m")
    await first.start()
    await second.start()
    assert mine.held and not theirs.held
    token = mine.token
    assert token is not None
    # The holder dies without releasing: it stops renewing.
    first._stopping.set()
    died = time.monotonic()
    while not theirs.held:
        assert time.monotonic() - died < TAKEOVER + 0.3, "not taken over within the takeover time"
        await asyncio.sleep(0.02)
    assert theirs.token is not None and theirs.token > token
    # Its own clock has told the dead holder to stop before the other took over.
    assert not mine.held


async def test_a_released_lease_is_taken_at_the_next_ask(butlers: Callable[..., Leases]) -> None:
    first, second = butlers("first"), butlers("second")
    mine, theirs = first.lease("m"), second.lease("m")
    await first.start()
    await second.start()
    await first.close()
    assert not mine.held
    started = time.monotonic()
    for _ in range(100):
        if theirs.held:
            break
        await asyncio.sleep(0.02)
    assert time.monotonic() - started <= TAKEOVER / 4 + 0.2


async def test_fencing_tokens_only_grow(butlers: Callable[..., Leases]) -> None:
    tokens = []
    for round_ in range(4):
        leases = butlers(f"holder-{round_}")
        lease = leases.lease("m")
        await leases.renew(lease)
        assert lease.held
        tokens.append(lease.token)
        await leases.release(lease)
    assert tokens == sorted(tokens) and len(set(tokens)) == 4, tokens


async def test_a_holder_that_cannot_renew_stops_acting_before_its_lease_ends(
    butlers: Callable[..., Leases],
) -> None:
    holder, other = butlers("holder"), butlers("other")
    lease, theirs = holder.lease("m"), other.lease("m")
    await holder.start()
    assert lease.held
    # Redis goes away for the holder only: its client now talks to a port where nobody listens.
    assert holder.redis is not None
    reachable = holder.redis
    holder.redis = RedisEdge("redis://127.0.0.1:1/0", reachable.failure)
    stopped = taken = None
    deadline = time.monotonic() + 3 * TAKEOVER
    while taken is None and time.monotonic() < deadline:
        if stopped is None and not lease.held:
            stopped = time.monotonic()
        await other.renew(theirs)
        if theirs.held:
            taken = time.monotonic()
        await asyncio.sleep(0.005)
    await reachable.close()
    assert stopped is not None and taken is not None, (stopped, taken)
    assert stopped <= taken
    assert holder.stats()["redisProblem"]


def test_without_redis_every_lease_is_held() -> None:
    leases = Leases(None)
    lease = leases.lease("monitor:heartbeat")
    assert lease.held and not leases.shared
    assert leases.stats()["leases"] == [
        {
            "name": "monitor:heartbeat",
            "holder": leases.instance,
            "fencingToken": 0,
            "expiresAt": None,
            "mine": True,
        }
    ]


async def test_a_check_still_running_when_its_lease_ends_is_stopped(butlers: Callable[..., Leases]) -> None:
    """A monitor check outlasting its holder's lease (Redis away for the holder) is cancelled before another
    Butler can take the lease and check too; a long check under a lease that is renewed runs to its end."""
    from butler.monitors.later import parse
    from butler.monitors.runner import Periodic

    holder, other = butlers("holder"), butlers("other")
    lease, theirs = holder.lease("monitor:slow"), other.lease("monitor:slow")
    await holder.start()
    ends: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(3 * TAKEOVER)
            ends.append("finished")
        except asyncio.CancelledError:
            ends.append(f"cancelled, other holds it: {theirs.held}")
            raise

    runner = Periodic("slow check", parse("every 1 hours"), slow, at_start=False, lease=lease)
    await runner.run_once()  # renewed all along: runs three leases' length, to its end
    assert ends == ["finished"] and runner.abandoned == 0
    assert holder.redis is not None
    reachable = holder.redis
    holder.redis = RedisEdge("redis://127.0.0.1:1/0", reachable.failure)
    try:
        started = time.monotonic()
        run = asyncio.ensure_future(runner.run_once())
        while not run.done():
            await other.renew(theirs)
            await asyncio.sleep(0.01)
        assert ends[1:] == ["cancelled, other holds it: False"], ends
        assert time.monotonic() - started < TAKEOVER, "stopped when the lease ended, not when the check did"
        assert runner.abandoned == 1 and runner.stats()["abandoned"] == 1 and runner.failures == 0
    finally:
        await reachable.close()
