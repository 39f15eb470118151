"""Several Butler processes on one Redis: each monitor check made by one of them, taken over when its holder
is killed; key-value reads and the per-IP rate limit the same whichever Butler a load balancer picks."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from butler.errors import Unavailable
from butler.http.errors import HttpError
from butler.http.shared_ratelimit import SharedRateLimiter
from butler.redis_edge import RedisEdge
from tests.conftest import ButlerProcess, base_config, free_port, write_config


async def start_three(
    tmp_path: Path,
    redis_url: str,
    butler_process: Callable[..., ButlerProcess],
    extra: dict[str, Any],
    *args: str,
) -> list[tuple[ButlerProcess, str]]:
    prefix = f"test:{uuid.uuid4().hex}:kv:"
    butlers = []
    for number in range(3):
        document = base_config(keyValueStore=True, butlerping=True)
        port = free_port()
        document["Butler"]["restServerConfig"]["serverPort"] = port
        document["Butler"]["keyValueStore"] = {
            "backend": "redis",
            "redis": {"url": redis_url, "keyPrefix": prefix},
        }
        document["Butler"]["instances"] = {"instanceId": f"butler-{number}"}
        document["Butler"].update(extra)
        config = write_config(tmp_path / f"butler-{number}.yaml", document)
        process = butler_process("serve", "-c", str(config), *args)
        butlers.append((process, f"http://127.0.0.1:{port}"))
    for process, base in butlers:
        await asyncio.to_thread(process.wait_for_port, int(base.rsplit(":", 1)[1]), 20)
    return butlers


async def health(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/health") as answer:
        return dict(await answer.json())


async def test_one_butler_of_three_beats_and_another_takes_over_when_it_is_killed(
    tmp_path: Path, redis_url: str, butler_process: Callable[..., ButlerProcess], receivers: Any
) -> None:
    """A heartbeat every second from three Butlers: one beat a second, not three; ``kill -9`` of the
    lease's holder: another beats within the default takeover time (15 s), and no beat is doubled."""
    receiver = await receivers()
    heartbeat = {"heartbeat": {"enable": True, "remoteURL": receiver.url, "frequency": "every 1 seconds"}}
    butlers = await start_three(tmp_path, redis_url, butler_process, heartbeat)
    await asyncio.sleep(4.5)
    async with aiohttp.ClientSession() as http:
        states = [await health(http, base) for _, base in butlers]
        holders = [
            i
            for i, state in enumerate(states)
            for lease in state["instances"]["leases"]
            if lease["name"] == "monitor:heartbeat" and lease["mine"]
        ]
        assert len(holders) == 1, states
        holder = holders[0]
        lease = next(x for x in states[holder]["instances"]["leases"] if x["name"] == "monitor:heartbeat")
        assert lease["holder"] == f"butler-{holder}" and lease["fencingToken"] >= 1
        assert states[holder]["monitors"]["heartbeat"]["fencingToken"] == lease["fencingToken"]
        beats = [at for at, _, _ in receiver.got]
        # One a second from one Butler: three Butlers checking would make about three times as many.
        assert 3 <= len(beats) <= 6, beats

        process = butlers[holder][0]
        process.proc.kill()
        killed = time.monotonic()
        await asyncio.to_thread(process.proc.wait, 10)
        last_before = max(at for at, _, _ in receiver.got if at <= killed)
        while not [at for at, _, _ in receiver.got if at > killed]:
            assert time.monotonic() - killed < 20, "nobody took over"
            await asyncio.sleep(0.1)
        first_after = min(at for at, _, _ in receiver.got if at > killed)
        gap = first_after - last_before
        # Taken within the takeover time, checked at the next second's fire.
        assert gap <= 15 + 1.5, gap
        await asyncio.sleep(3.5)
        survivors = [base for i, (_, base) in enumerate(butlers) if i != holder]
        states = [await health(http, base) for base in survivors]
    taken = [
        lease
        for state in states
        for lease in state["instances"]["leases"]
        if lease["name"] == "monitor:heartbeat" and lease["mine"]
    ]
    assert len(taken) == 1 and taken[0]["fencingToken"] > lease["fencingToken"], states
    beats = [at for at, _, _ in receiver.got]
    # Never two checks of one fire: beats most of a second apart, before and after the kill (the first is
    # the at-start check, made whenever the holder started).
    assert all(b - a > 0.5 for a, b in itertools.pairwise(beats[1:])), beats
    after = [at for at in beats if at > killed]
    assert len(after) >= 3, beats
    print(f"takeover gap: {gap:.2f} s")


async def test_a_load_balancer_over_three_butlers_sees_one_store_and_one_rate_limit(
    tmp_path: Path, redis_url: str, butler_process: Callable[..., ButlerProcess]
) -> None:
    limit = 30
    butlers = await start_three(tmp_path, redis_url, butler_process, {}, "--api-rate-limit", str(limit))
    bases = itertools.cycle([base for _, base in butlers])
    remaining = []
    async with aiohttp.ClientSession() as http:
        for number in range(limit // 2):
            async with http.post(
                f"{next(bases)}/v4/keyvalues/lb", json={"key": f"k{number}", "value": f"v{number}"}
            ) as answer:
                assert answer.status == 201
                remaining.append(int(answer.headers["x-ratelimit-remaining"]))
            # Read from the next Butler in the round: it sees the write of the one before.
            async with http.get(f"{next(bases)}/v4/keyvalues/lb?key=k{number}") as answer:
                assert answer.status == 200 and (await answer.json())["value"] == f"v{number}"
                remaining.append(int(answer.headers["x-ratelimit-remaining"]))
        # One budget counted down by all three.
        assert remaining == list(range(limit - 1, -1, -1)), remaining
        # The limit+1th request and those after are refused, whichever Butler gets them.
        for _ in range(3):
            async with http.get(f"{next(bases)}/v4/butlerping") as answer:
                assert answer.status == 429, answer.status
                assert int(answer.headers["retry-after"]) >= 1
        states = [await health(http, base) for _, base in butlers]
    assert [state["instances"]["rateLimit"]["counted"] for state in states] == ["redis"] * 3
    assert {state["instances"]["instanceId"] for state in states} == {"butler-0", "butler-1", "butler-2"}


async def test_while_redis_cannot_be_reached_the_rate_limit_counts_locally_and_says_so() -> None:
    edge = RedisEdge("redis://127.0.0.1:1/0", lambda exc: Unavailable(str(exc)))
    limiter = SharedRateLimiter(2, edge, "test:ratelimit:")
    try:
        assert (await limiter.count("10.0.0.1"))["x-ratelimit-remaining"] == "1"
        assert limiter.stats()["counted"] == "local" and limiter.stats()["problem"]
        await limiter.count("10.0.0.1")
        try:
            await limiter.count("10.0.0.1")
        except HttpError as refused:
            assert refused.status == 429
        else:
            raise AssertionError("the third request in the window was let through")
    finally:
        await edge.close()
