"""The Repository Service's vocabulary: what Butler asks QRS, in Butler's terms.

Services name tasks, starts, execution sessions and results here, never QRS paths, filter strings or raw
status codes. Every answer is checked for its shape and returned as small frozen records: an answer of
the wrong shape (an object where a list belongs, a task without an id) is a QrsError, so the caller hears
that QRS misbehaved (502) rather than Butler failing.

``Repository`` is the interface services depend on; ``QrsRepository`` speaks it over ``QrsClient`` and
tests may put an in-process fake in its place. ``deadline()`` is the client's: the calls made inside share
one ``timeoutSeconds``. Retries stay in the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from butler.qlik.qrs import QrsClient, QrsError, quote_filter_value

#: Ids looked up per QRS call; keeps the filter well inside URL length limits.
LOOKUP_CHUNK = 40
#: QRS's id of no object: a synchronous start that started nothing names it as its session.
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class Task:
    """A task as a start or a lookup needs it."""

    id: str
    name: str


@dataclass(frozen=True)
class ExecutionResult:
    """How a task run went (QRS's ``ExecutionResult``); ``status`` is QRS's code (see executions.py)."""

    id: str | None = None
    status: int = 0
    start_time: str | None = None
    stop_time: str | None = None
    duration: Any = None
    #: The detail messages, oldest first.
    details: tuple[str | None, ...] = ()
    #: Where the run's script log is kept; None when there is none.
    file_reference_id: str | None = None
    #: The node the run was given to; None before the scheduler chose one.
    node: str | None = None


@dataclass(frozen=True)
class TaskWithResult:
    """A task and its last run (a run never made gives an empty result)."""

    task: Task
    last_result: ExecutionResult


@dataclass(frozen=True)
class SessionState:
    """A poll of an execution session: ``ended`` once QRS dropped it, else the run's result so far (None
    when QRS gave none this time)."""

    ended: bool
    result: ExecutionResult | None = None


@dataclass(frozen=True)
class Refusal:
    """Why QRS did not start a task; ``status`` is None when nothing came back."""

    status: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message}


class Repository(Protocol):
    """What Butler's services ask of the Repository Service."""

    def deadline(self) -> contextlib.AbstractContextManager[None]: ...

    async def tasks_by_ids(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among ``task_ids`` that exist, looked up together."""
        ...

    async def tasks_by_tag(self, tag: str) -> list[Task]: ...

    async def tasks_by_custom_property(self, name: str, value: str) -> list[Task]: ...

    async def start_many(self, task_ids: Sequence[str]) -> bool:
        """Start the tasks in one call: True when QRS took them all, False when it refused the call as a
        whole (the tasks may then be started one by one)."""
        ...

    async def start(self, task_id: str) -> Refusal | None:
        """Start a task: None once QRS accepted it."""
        ...

    async def start_synchronous(self, task_id: str) -> str | Refusal:
        """Start a task and get its execution session id."""
        ...

    async def execution_session(self, session_id: str) -> SessionState: ...

    async def execution_results(self, session_id: str) -> list[ExecutionResult]:
        """The results of the run a session was for (normally one)."""
        ...

    async def task_with_last_result(self, task_id: str) -> TaskWithResult | None: ...

    async def script_log(self, task_id: str, file_reference_id: str) -> list[str] | None:
        """The lines of a run's script log; None when QRS cannot give it."""
        ...


class QrsRepository:
    """``Repository`` over the QRS REST API."""

    def __init__(self, qrs: QrsClient) -> None:
        self.qrs = qrs

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        return self.qrs.deadline()

    async def tasks_by_ids(self, task_ids: Sequence[str]) -> list[Task]:
        chunks = [task_ids[i : i + LOOKUP_CHUNK] for i in range(0, len(task_ids), LOOKUP_CHUNK)]
        answers = await asyncio.gather(*(self._tasks("task", _any_of("id", chunk)) for chunk in chunks))
        return [task for tasks in answers for task in tasks]

    async def tasks_by_tag(self, tag: str) -> list[Task]:
        return await self._tasks("task/full", f"tags.name eq {quote_filter_value(tag)}")

    async def tasks_by_custom_property(self, name: str, value: str) -> list[Task]:
        return await self._tasks(
            "task/full",
            f"(customProperties.definition.name eq {quote_filter_value(name)}) and "
            f"(customProperties.value eq {quote_filter_value(value)})",
        )

    async def _tasks(self, path: str, condition: str) -> list[Task]:
        return [_task(entry, path) for entry in await self._list(path, condition)]

    async def _list(self, path: str, condition: str) -> list[dict[str, Any]]:
        answer = await self.qrs.get_json(path, {"filter": condition})
        if not isinstance(answer, list) or not all(isinstance(entry, dict) for entry in answer):
            raise _shape(path, "a list of objects", answer)
        return answer

    async def start_many(self, task_ids: Sequence[str]) -> bool:
        response = await self.qrs.request("POST", "task/start/many", json_body=list(task_ids))
        return response.status == 204

    async def start(self, task_id: str) -> Refusal | None:
        response = await self.qrs.request("POST", f"task/{task_id}/start")
        if response.status == 204:
            return None
        return Refusal(response.status, response.text[:500])

    async def start_synchronous(self, task_id: str) -> str | Refusal:
        path = f"task/{task_id}/start/synchronous"
        response = await self.qrs.request("POST", path)
        if response.status != 201:
            return Refusal(response.status, response.text[:500])
        answer = response.json()
        if not isinstance(answer, dict):
            raise _shape(path, "an object", answer)
        session = str(answer.get("value") or "")
        if not session or session == EMPTY_GUID:
            return Refusal(
                201, "QRS did not start the task (disabled, already running, or no scheduler available)"
            )
        return session

    async def execution_session(self, session_id: str) -> SessionState:
        path = f"executionsession/{session_id}"
        response = await self.qrs.request("GET", path)
        if response.status == 404:
            return SessionState(ended=True)
        if response.status != 200:
            return SessionState(ended=False)
        answer = response.json() or {}
        if not isinstance(answer, dict):
            raise _shape(path, "an object", answer)
        return SessionState(ended=False, result=execution_result(answer.get("executionResult") or {}, path))

    async def execution_results(self, session_id: str) -> list[ExecutionResult]:
        path = "executionresult/full"
        return [
            execution_result(entry, path) for entry in await self._list(path, f"ExecutionId eq {session_id}")
        ]

    async def task_with_last_result(self, task_id: str) -> TaskWithResult | None:
        path = "task/full"
        tasks = await self._list(path, f"id eq {task_id}")
        if not tasks:
            return None
        operational = tasks[0].get("operational") or {}
        if not isinstance(operational, dict):
            raise _shape(path, "an object as operational", operational)
        return TaskWithResult(
            _task(tasks[0], path), execution_result(operational.get("lastExecutionResult") or {}, path)
        )

    async def script_log(self, task_id: str, file_reference_id: str) -> list[str] | None:
        try:
            ticket = await self.qrs.get_json(
                f"reloadtask/{task_id}/scriptlog", {"fileReferenceId": file_reference_id}
            )
            if not isinstance(ticket, dict) or not isinstance(ticket.get("value"), str):
                return None
            response = await self.qrs.request("GET", f"download/reloadtask/{ticket['value']}/scriptlog.txt")
        except QrsError:
            return None
        if response.status != 200:
            return None
        return response.text.replace("\r\n", "\n").rstrip("\n").split("\n")

    # Task events hand QRS's descriptions to their consumers whole, so these are not read into records.

    async def task_metadata(self, task_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The tasks among ``task_ids`` as QRS describes them (names, type, tags, custom properties...)."""
        return await self._list("task/full", _any_of("id", task_ids))

    async def app_metadata(self, app_ids: Sequence[str]) -> list[dict[str, Any]]:
        return await self._list("app/full", _any_of("id", app_ids))

    async def custom_property_names(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are custom properties defined in QRS."""
        condition = " or ".join(f"name eq {quote_filter_value(name)}" for name in names)
        found = await self._list("custompropertydefinition", condition)
        return {str(entry.get("name")) for entry in found}

    async def user_emails(self, user_id: str) -> tuple[str, ...]:
        """The e-mail addresses QRS keeps for a user (attributes of type email, in QRS's order)."""
        path = f"user/{user_id}"
        user = await self.qrs.get_json(path)
        if not isinstance(user, dict):
            raise _shape(path, "a user object", user)
        return tuple(
            str(a["attributeValue"])
            for a in user.get("attributes") or []
            if isinstance(a, dict)
            and str(a.get("attributeType", "")).lower() == "email"
            and a.get("attributeValue")
        )

    async def execution_result_metadata(self, execution_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The results of the runs ``execution_ids``; ``execution_result`` reads one."""
        return await self._list("executionresult/full", _any_of("ExecutionId", execution_ids))


def _any_of(field: str, ids: Sequence[str]) -> str:
    return " or ".join(f"{field} eq {value}" for value in ids)


def _shape(path: str, expected: str, answer: Any) -> QrsError:
    text = repr(answer)
    return QrsError(f"Qlik Sense QRS answered GET {path} with {text[:200]} instead of {expected}", 200, text)


def _task(entry: dict[str, Any], path: str) -> Task:
    task_id, name = entry.get("id"), entry.get("name")
    if not isinstance(task_id, str) or not isinstance(name, str):
        raise _shape(path, "tasks with an id and a name", entry)
    return Task(task_id, name)


def execution_result(entry: Any, path: str = "executionresult/full") -> ExecutionResult:
    """An execution result as QRS describes it, read; QrsError when it is not one."""
    if not isinstance(entry, dict):
        raise _shape(path, "an execution result object", entry)
    details = entry.get("details") or []
    if not isinstance(details, list) or not all(isinstance(d, dict) for d in details):
        raise _shape(path, "a list of objects as details", details)
    try:
        status = int(entry.get("status") or 0)
    except (TypeError, ValueError):
        raise _shape(path, "a number as status", entry.get("status")) from None
    reference = entry.get("fileReferenceID")
    return ExecutionResult(
        id=entry.get("id"),
        status=status,
        start_time=entry.get("startTime"),
        stop_time=entry.get("stopTime"),
        duration=entry.get("duration"),
        details=tuple(
            d.get("message") for d in sorted(details, key=lambda d: str(d.get("detailCreatedDate", "")))
        ),
        file_reference_id=reference if isinstance(reference, str) and reference != EMPTY_GUID else None,
        node=entry.get("executingNodeName") or None,
    )
