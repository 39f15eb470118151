"""Following task executions in QRS: waiting for a run to end, and a task's last result.

A synchronous start gives an execution session id. QRS serves the session while the run lasts and drops
it when the run ends; the execution result (found by its ``ExecutionId``) then holds the final status,
times and the reference of the script log, whose tail is fetched through QRS's download tickets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from butler.qlik.repository import ExecutionResult, Repository

STATUS_NAMES = (
    "NeverStarted",
    "Triggered",
    "Started",
    "Queued",
    "AbortInitiated",
    "Aborting",
    "Aborted",
    "FinishedSuccess",
    "FinishedFail",
    "Skipped",
    "Retry",
    "Error",
    "Reset",
    "DistributionQueue",
    "DistributionRunning",
)
FINAL = frozenset({6, 7, 8, 9, 11})
SCRIPT_LOG_TAIL = 20


def describe(result: ExecutionResult) -> dict[str, Any]:
    """The parts of an execution result a caller wants, with the status by name."""
    code = result.status
    return {
        "status": STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code),
        "statusCode": code,
        "startTime": result.start_time,
        "stopTime": result.stop_time,
        "duration": result.duration,
        "executionResultId": result.id,
        "executingNodeName": result.node,
        "details": list(result.details),
    }


class ExecutionWatcher:
    """Follows task runs through the repository: a run until it ends (start and wait), or a task's last
    result (task status)."""

    def __init__(self, repository: Repository, poll_seconds: float = 0.5) -> None:
        self.repository = repository
        self.poll_seconds = poll_seconds

    async def follow(self, task_id: str, session_id: str, report: dict[str, Any]) -> None:
        """Fill ``report`` as the run goes on, until it has ended. Cancelled at the caller's timeout, the
        report keeps what was known by then."""
        report.update(status="Triggered", statusCode=1, executionId=session_id)
        while True:
            ended, state = await self._look(task_id, session_id)
            if state is not None:
                report.update(state)
            if ended:
                return
            await asyncio.sleep(self.poll_seconds)

    async def run(self, task_id: str, session_id: str) -> dict[str, Any] | None:
        """One look at the run of an execution session: how it stands (``finished`` false) while QRS keeps
        the session, its final result and script-log tail once it has ended; None when QRS knows no such
        run. Its QRS calls share one deadline."""
        with self.repository.deadline():
            ended, state = await self._look(task_id, session_id)
        if state is None:
            if ended:
                return None
            state = {"status": "Triggered", "statusCode": 1, "executionId": session_id}
        return state | {"finished": ended and state["statusCode"] in FINAL}

    async def _look(self, task_id: str, session_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(whether the run has ended, its result so far or final with the script-log tail, or None)."""
        state = await self.repository.execution_session(session_id)
        if not state.ended:
            return False, None if state.result is None else describe(state.result) | {
                "executionId": session_id
            }
        results = await self.repository.execution_results(session_id)
        if not results:
            return True, None
        result = results[-1]
        report = describe(result) | {"executionId": session_id}
        tail = await self.script_log_tail(task_id, result)
        if tail is not None:
            report["scriptLogTail"] = tail
        return True, report

    async def script_log_tail(self, task_id: str, result: ExecutionResult) -> list[str] | None:
        if result.file_reference_id is None:
            return None
        lines = await self.repository.script_log(task_id, result.file_reference_id)
        return None if lines is None else lines[-SCRIPT_LOG_TAIL:]

    async def last_result(self, task_id: str) -> dict[str, Any] | None:
        """The task's name and last execution; None when QRS has no such task. Its QRS calls share one
        deadline; a script log that QRS cannot give by then is left out."""
        with self.repository.deadline():
            found = await self.repository.task_with_last_result(task_id)
            if found is None:
                return None
            answer = {"taskId": found.task.id, "taskName": found.task.name, **describe(found.last_result)}
            tail = await self.script_log_tail(task_id, found.last_result)
        if tail is not None:
            answer["scriptLogTail"] = tail
        return answer
