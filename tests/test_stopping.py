"""Background tasks are stopped even when a cancel is lost on its way."""

from __future__ import annotations

import asyncio
import time

from butler.stopping import cancel_and_wait


async def test_a_task_that_loses_its_first_cancel_is_cancelled_again() -> None:
    cancels = 0

    async def worker() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # taken for a timeout of its own, as a client library may
                raise

    async def failing() -> None:
        raise ValueError("a failure of its own")

    tasks = [asyncio.create_task(worker()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    started = time.monotonic()
    await asyncio.wait_for(cancel_and_wait(tasks, again_after=0.1), 5)
    assert cancels == 2 and tasks[0].cancelled()
    assert isinstance(tasks[1].exception(), ValueError)
    assert time.monotonic() - started < 2


async def test_tasks_already_ended_are_left_as_they_are() -> None:
    async def done() -> str:
        return "done"

    task = asyncio.create_task(done())
    await task
    await cancel_and_wait([task])
    assert task.result() == "done"


async def test_every_calls_until_stopped_and_lets_a_call_in_progress_end() -> None:
    from butler.stopping import every

    stopping = asyncio.Event()
    calls: list[str] = []

    async def action() -> None:
        calls.append("began")
        await asyncio.sleep(0.15)  # stopped meanwhile: this call still ends
        calls.append("ended")

    running = asyncio.get_running_loop().create_task(every(0.05, stopping, action))
    await asyncio.sleep(0.12)
    stopping.set()
    await asyncio.wait_for(running, 1)
    assert calls == ["began", "ended"]
