"""Following task executions in QRS: waiting for a run to end, and a task's last result.

A synchronous start gives an execution session id. QRS serves the session while the run lasts and drops
it when the run ends; the execution result (found by its ``ExecutionId``) then holds the final status,
times and the reference of the script log, whose tail is fetched through QRS's download tickets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from butler.qlik.qrs import QrsClient, QrsError

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
EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
SCRIPT_LOG_TAIL = 20


def describe(result: dict[str, Any]) -> dict[str, Any]:
    """The parts of an execution result a caller wants, with the status by name."""
    code = int(result.get("status", 0))
    return {
        "status": STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code),
        "statusCode": code,
        "startTime": result.get("startTime"),
        "stopTime": result.get("stopTime"),
        "duration": result.get("duration"),
        "executionResultId": result.get("id"),
        "details": [
            d.get("message")
            for d in sorted(result.get("details", []), key=lambda d: d.get("detailCreatedDate", ""))
        ],
    }


async def script_log(qrs: QrsClient, task_id: str, result: dict[str, Any]) -> list[str] | None:
    """The lines of the script log of an execution result; None when it has none or QRS cannot give it."""
    reference = result.get("fileReferenceID")
    if not reference or reference == EMPTY_GUID:
        return None
    try:
        ticket = await qrs.get_json(f"reloadtask/{task_id}/scriptlog", {"fileReferenceId": reference})
        response = await qrs.request("GET", f"download/reloadtask/{ticket['value']}/scriptlog.txt")
    except (QrsError, KeyError, TypeError):
        return None
    if response.status != 200:
        return None
    return response.text.replace("\r\n", "\n").rstrip("\n").split("\n")


class ExecutionWatcher:
    def __init__(self, qrs: QrsClient, poll_seconds: float = 0.5) -> None:
        self.qrs = qrs
        self.poll_seconds = poll_seconds

    async def follow(self, task_id: str, session_id: str, report: dict[str, Any]) -> None:
        """Fill ``report`` as the run goes on, until it has ended. Cancelled at the caller's timeout, the
        report keeps what was known by then."""
        report.update(status="Triggered", statusCode=1, executionId=session_id)
        while True:
            response = await self.qrs.request("GET", f"executionsession/{session_id}")
            if response.status == 404:
                break
            if response.status == 200:
                session = response.json() or {}
                report.update(describe(session.get("executionResult") or {}), executionId=session_id)
            await asyncio.sleep(self.poll_seconds)
        results = await self.qrs.get_json("executionresult/full", {"filter": f"ExecutionId eq {session_id}"})
        if not results:
            return
        result = results[-1]
        report.update(describe(result), executionId=session_id)
        tail = await self.script_log_tail(task_id, result)
        if tail is not None:
            report["scriptLogTail"] = tail

    async def script_log_tail(self, task_id: str, result: dict[str, Any]) -> list[str] | None:
        lines = await script_log(self.qrs, task_id, result)
        return None if lines is None else lines[-SCRIPT_LOG_TAIL:]

    async def last_result(self, task_id: str) -> dict[str, Any] | None:
        """The task's name and last execution; None when QRS has no such task. Its QRS calls share one
        deadline; a script log that QRS cannot give by then is left out."""
        with self.qrs.deadline():
            tasks = await self.qrs.get_json("task/full", {"filter": f"id eq {task_id}"})
            if not tasks:
                return None
            task = tasks[0]
            result = (task.get("operational") or {}).get("lastExecutionResult") or {}
            answer = {"taskId": task["id"], "taskName": task["name"], **describe(result)}
            tail = await self.script_log_tail(task_id, result)
        if tail is not None:
            answer["scriptLogTail"] = tail
        return answer
