"""An in-process Repository Service for fast service tests: a few tasks, their tags and custom
properties, and how QRS answers starts and execution polls, all set by the test. It speaks
``butler.qlik.repository.Repository``; the end-to-end tests use the simulated site over mutual TLS instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from butler.qlik.qrs import QrsError
from butler.qlik.repository import (
    ExecutionResult,
    Refusal,
    SessionState,
    Task,
    TaskWithResult,
)


@dataclass
class FakeTask:
    id: str
    name: str
    tags: tuple[str, ...] = ()
    custom_properties: tuple[tuple[str, str], ...] = ()
    last_result: ExecutionResult = field(default_factory=ExecutionResult)
    #: What a start of this task answers: None (accepted), a Refusal, or a QrsError to raise.
    start: Refusal | QrsError | None = None
    #: How long its start and its lookup by id take, in seconds.
    delay: float = 0
    #: Polls of its execution session before QRS drops it; None: the run never ends.
    polls: int | None = 1
    #: The result of its run, once the session is dropped.
    result: ExecutionResult = field(default_factory=lambda: ExecutionResult(status=7))


@dataclass
class FakeRepository:
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    #: ``start_many``: True (accepted), False (refused as a whole) or a QrsError to raise.
    start_many_answer: bool | QrsError = True
    script_logs: dict[str, list[str]] = field(default_factory=dict)
    #: Every call, in order: (method, argument).
    calls: list[tuple[str, Any]] = field(default_factory=list)
    _sessions: dict[str, FakeTask] = field(default_factory=dict)
    _polls: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, task_id: str, name: str, **details: Any) -> FakeTask:
        self.tasks[task_id] = FakeTask(task_id, name, **details)
        return self.tasks[task_id]

    def called(self, method: str) -> list[Any]:
        return [argument for name, argument in self.calls if name == method]

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    async def _take(self, seconds: float) -> None:
        """Wait ``seconds``; ``calls`` then says whether the wait ended or was cancelled."""
        if seconds:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                self.calls.append(("cancelled", seconds))
                raise
            self.calls.append(("waited", seconds))

    async def _call(self, method: str, argument: Any) -> None:
        self.calls.append((method, argument))
        await asyncio.sleep(0)  # a real call lets other lookups run meanwhile

    async def tasks_by_ids(self, task_ids: Sequence[str]) -> list[Task]:
        await self._call("tasks_by_ids", list(task_ids))
        await self._take(max((self.tasks[t].delay for t in task_ids if t in self.tasks), default=0))
        return [Task(t, self.tasks[t].name) for t in task_ids if t in self.tasks]

    async def tasks_by_tag(self, tag: str) -> list[Task]:
        await self._call("tasks_by_tag", tag)
        return [Task(t.id, t.name) for t in self.tasks.values() if tag in t.tags]

    async def tasks_by_custom_property(self, name: str, value: str) -> list[Task]:
        await self._call("tasks_by_custom_property", (name, value))
        return [Task(t.id, t.name) for t in self.tasks.values() if (name, value) in t.custom_properties]

    async def start_many(self, task_ids: Sequence[str]) -> bool:
        await self._call("start_many", list(task_ids))
        if isinstance(self.start_many_answer, QrsError):
            raise self.start_many_answer
        return self.start_many_answer

    async def start(self, task_id: str) -> Refusal | None:
        await self._call("start", task_id)
        await self._take(self.tasks[task_id].delay)
        answer = self.tasks[task_id].start
        if isinstance(answer, QrsError):
            raise answer
        return answer

    async def start_synchronous(self, task_id: str) -> str | Refusal:
        await self._call("start_synchronous", task_id)
        task = self.tasks[task_id]
        if isinstance(task.start, QrsError):
            raise task.start
        if task.start is not None:
            return task.start
        session = f"00000000-0000-0000-0000-{next(self._ids):012d}"
        self._sessions[session] = task
        self._polls[session] = 0
        return session

    async def execution_session(self, session_id: str) -> SessionState:
        await self._call("execution_session", session_id)
        task = self._sessions[session_id]
        self._polls[session_id] += 1
        if task.polls is not None and self._polls[session_id] > task.polls:
            return SessionState(ended=True)
        return SessionState(ended=False, result=ExecutionResult(status=2, start_time="running"))

    async def execution_results(self, session_id: str) -> list[ExecutionResult]:
        await self._call("execution_results", session_id)
        return [self._sessions[session_id].result]

    async def task_with_last_result(self, task_id: str) -> TaskWithResult | None:
        await self._call("task_with_last_result", task_id)
        task = self.tasks.get(task_id)
        return None if task is None else TaskWithResult(Task(task.id, task.name), task.last_result)

    async def script_log(self, task_id: str, file_reference_id: str) -> list[str] | None:
        await self._call("script_log", (task_id, file_reference_id))
        return self.script_logs.get(file_reference_id)
