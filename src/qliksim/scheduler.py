"""Task execution as the Sense scheduler does it.

A started task gets an execution session and an execution result that move through Triggered, Started
and then FinishedSuccess, FinishedFail or Aborted, as the site says for that task (or as the control API
set for its next run). A distribution task waits in DistributionQueue and runs in DistributionRunning
instead, and its end is announced by the distribution appender's single event (whatever the outcome),
never by the reload ones. Details, the script log and ``operational.lastExecutionResult`` are updated as
Sense updates them, and the QRS state is final before the UDP event goes out, because a client that
receives the event asks QRS at once.

Starting a task that is already running does not start a second run: Sense's scheduler refuses it too
("task is already running"). ``start`` then returns None, and a synchronous start answers the empty GUID.
A disabled task is not started either.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qliksim.site import (
    EMPTY_GUID,
    OUTCOMES,
    RunBehaviour,
    Site,
    condensed_app,
    never_run_result,
)
from qliksim.times import NEVER, instant, iso, now_iso
from qliksim.udp import TaskEvent, UdpSender

log = logging.getLogger("qliksim.scheduler")

_STATUS_NAMES = {
    0: "NeverStarted",
    1: "Triggered",
    2: "Started",
    6: "Aborted",
    7: "FinishedSuccess",
    8: "FinishedFail",
    4: "AbortInitiated",
    5: "Aborting",
    13: "DistributionQueue",
    14: "DistributionRunning",
}
DISTRIBUTION = "DistributionTask"


@dataclass
class Execution:
    task_id: str
    session_id: str
    result_id: str
    task: asyncio.Task[None] | None = None
    # Set by a stop; the run then ends as aborted (also a stop that comes before the run began).
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    def __init__(
        self, site: Site, udp: UdpSender, time_scale: float = 1.0, success_type_typo: bool = False
    ) -> None:
        self.site = site
        self.udp = udp
        self.time_scale = time_scale
        self.success_type_typo = success_type_typo
        self.running: dict[str, Execution] = {}
        self.next_outcome: dict[str, RunBehaviour] = {}
        self.started_count: dict[str, int] = {}
        self.next_app_outcome: dict[str, RunBehaviour] = {}
        self.app_reloads: dict[str, int] = {}
        self.reload_kinds: dict[str, list[str]] = {}
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self._background: set[asyncio.Task[Any]] = set()

    def start(self, task_id: str, user: str = "INTERNAL\\sa_repository") -> str | None:
        """Start a task; the execution session id, or None when it was not started (running, disabled)."""
        task = self.site.tasks[task_id]
        self.started_count[task_id] = self.started_count.get(task_id, 0) + 1
        if task_id in self.running or not task["enabled"]:
            log.info(
                "task %s not started: %s", task["name"], "already running" if task["enabled"] else "disabled"
            )
            return None
        behaviour = self.next_outcome.pop(task_id, None) or self.site.task_behaviour[task_id]
        execution = Execution(task_id, str(uuid.uuid4()), str(uuid.uuid4()))
        self._begin(task, execution, user)
        self.running[task_id] = execution
        execution.task = asyncio.get_running_loop().create_task(self._run(task, execution, behaviour, user))
        return execution.session_id

    def stop(self, task_id: str) -> bool:
        execution = self.running.get(task_id)
        if execution is None:
            return False
        execution.stopped.set()
        return True

    async def reload_app(self, app_id: str, partial: bool = False) -> bool:
        """Reload an app outside any task (Engine ``DoReload``, QRS ``app/{id}/reload``); True on success.

        A partial reload keeps the app's data and only adds to it, so it takes a tenth of the time; the
        kind of each reload is kept for the control API.
        """
        behaviour = self.next_app_outcome.pop(app_id, None) or self.site.app_behaviour[app_id]
        self.app_reloads[app_id] = self.app_reloads.get(app_id, 0) + 1
        self.reload_kinds.setdefault(app_id, []).append("partial" if partial else "full")
        duration = behaviour.duration_ms / (10 if partial else 1)
        await asyncio.sleep(duration / 1000 * self.time_scale)
        if behaviour.outcome != "success":
            return False
        self.site.apps[app_id]["lastReloadTime"] = now_iso()
        return True

    def reload_app_soon(self, app_id: str) -> None:
        reload = asyncio.get_running_loop().create_task(self.reload_app(app_id))
        self._background.add(reload)
        reload.add_done_callback(self._background.discard)

    async def close(self) -> None:
        pending = [e.task for e in self.running.values() if e.task] + list(self._background)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- the life of one execution ------------------------------------------------------------------------

    def _detail(self, result: dict[str, Any], message: str, kind: int = 2) -> None:
        result["details"].append(
            {
                "id": str(uuid.uuid4()),
                "detailsType": kind,
                "message": message,
                "detailCreatedDate": now_iso(),
                "privileges": None,
            }
        )

    def _change(self, result: dict[str, Any], status: int) -> None:
        self._detail(
            result, f"Changing task state from {_STATUS_NAMES[result['status']]} to {_STATUS_NAMES[status]}"
        )
        result["status"] = status
        result["modifiedDate"] = now_iso()

    def _begin(self, task: dict[str, Any], execution: Execution, user: str) -> None:
        now = now_iso()
        app_id = task.get("app", {}).get("id", "")
        result = never_run_result() | {
            "id": execution.result_id,
            "createdDate": now,
            "modifiedDate": now,
            "modifiedByUserName": "INTERNAL\\sa_scheduler",
            "schemaPath": "ExecutionResult",
            "executingNodeName": self.site.hostname,
            "startTime": now,
            "taskID": task["id"],
            "executionID": execution.session_id,
            "appID": app_id or EMPTY_GUID,
            "executingNodeID": "4e3f2a1b-0c9d-4e8f-a7b6-c5d4e3f2a1b0",
        }
        self._change(result, 13 if task["schemaPath"] == DISTRIBUTION else 1)
        self.site.execution_results[result["id"]] = result
        self.site.results_by_execution[execution.session_id] = result["id"]
        self.site.execution_sessions[execution.session_id] = {
            "id": execution.session_id,
            "createdDate": now,
            "modifiedDate": now,
            "modifiedByUserName": "INTERNAL\\sa_scheduler",
            "schemaPath": "ExecutionSession",
            "executingNode": {"id": result["executingNodeID"], "privileges": None},
            "executionResult": _condensed_result(result),
            "abortAt": NEVER,
            "retries": 0,
            "abortReason": 0,
            "app": task.get("app"),
            "user": user,
            "reloadTask": _task_ref(task, "ReloadTask"),
            "userSyncTask": _task_ref(task, "UserSyncTask"),
            "externalProgramTask": _task_ref(task, "ExternalProgramTask"),
            "privileges": None,
        }
        task["operational"]["lastExecutionResult"] = _condensed_result(result)

    async def _run(
        self, task: dict[str, Any], execution: Execution, behaviour: RunBehaviour, user: str
    ) -> None:
        result = self.site.execution_results[execution.result_id]
        outcome = behaviour.outcome
        distribution = task["schemaPath"] == DISTRIBUTION
        waiting = behaviour.queued_ms / 1000 * self.time_scale if distribution else 0.05 * self.time_scale
        if await _stopped_within(execution, waiting):
            outcome = "abort"
        else:
            self._change(result, 14 if distribution else 2)
            self._publish(task, result)
            if await _stopped_within(execution, behaviour.duration_ms / 1000 * self.time_scale):
                outcome = "abort"
        self._finish(task, result, behaviour, outcome)
        self.running.pop(task["id"], None)
        self.site.execution_sessions.pop(execution.session_id, None)
        self._notify("finished", result)
        app = task.get("app") or {}  # none for a distribution task: its event names no app
        self.udp.send(
            TaskEvent(
                "distribute" if distribution else outcome,
                self.site.hostname,
                task["name"],
                app.get("name", ""),
                "INTERNAL\\sa_scheduler",
                task["id"],
                app.get("id", ""),
                execution.session_id,
            ).datagram(self.success_type_typo)
        )

    def _finish(
        self, task: dict[str, Any], result: dict[str, Any], behaviour: RunBehaviour, outcome: str
    ) -> None:
        status = OUTCOMES[outcome]
        if outcome == "abort":
            self._change(result, 4)
            self._change(result, 5)
        if outcome == "fail" and behaviour.error:
            self._detail(result, behaviour.error, kind=0)
        self._change(result, status)
        stop = datetime.datetime.now(datetime.UTC)
        start = instant(result["startTime"])
        result["stopTime"] = iso(stop)
        result["duration"] = int((stop - start).total_seconds() * 1000)
        if task["schemaPath"] == "ReloadTask":
            log_text = self._script_log(task, behaviour, outcome, result)
            reference = str(uuid.uuid4())
            self.site.script_logs[reference] = log_text
            result |= {
                "fileReferenceID": reference,
                "scriptLogAvailable": True,
                "scriptLogLocation": f"{self.site.hostname}\\Script Logs\\{reference}.log",
                "scriptLogSize": len(log_text.encode()),
            }
            if outcome == "success":
                app = self.site.apps[task["app"]["id"]]
                app["lastReloadTime"] = result["stopTime"]
                task["app"] = condensed_app(app)
        task["operational"]["lastExecutionResult"] = _condensed_result(result)

    def _script_log(
        self, task: dict[str, Any], behaviour: RunBehaviour, outcome: str, result: dict[str, Any]
    ) -> str:
        stamp = result["startTime"].replace("T", " ").replace("Z", "")
        lines = [
            f"{stamp} {line}"
            for line in (
                behaviour.script_log
                or [
                    "Execution started.",
                    "Qlik Sense Server Version 14.187.4",
                    f"Reload task: {task['name']}",
                    "Lines fetched: 1000",
                    "Creating search index",
                    "Search index creation completed successfully",
                ]
            )
        ]
        if outcome == "success":
            lines.append(f"{stamp} Execution finished.")
        elif outcome == "abort":
            lines.append(f"{stamp} Execution aborted.")
        else:
            lines.append(f"{stamp} Execution Failed")
        return "\r\n".join(lines) + "\r\n"

    def _publish(self, task: dict[str, Any], result: dict[str, Any]) -> None:
        task["operational"]["lastExecutionResult"] = _condensed_result(result)
        session = self.site.execution_sessions.get(result["executionID"])
        if session is not None:
            session["executionResult"] = _condensed_result(result)
        self._notify("changed", result)

    def _notify(self, what: str, result: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(what, result)


async def _stopped_within(execution: Execution, seconds: float) -> bool:
    """Wait ``seconds``; True when the execution was stopped meanwhile (or before)."""
    try:
        await asyncio.wait_for(execution.stopped.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _condensed_result(result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "executingNodeName",
        "status",
        "startTime",
        "stopTime",
        "duration",
        "fileReferenceID",
        "scriptLogAvailable",
        "details",
        "scriptLogLocation",
        "scriptLogSize",
    )
    return {key: result[key] for key in keys} | {
        "details": [dict(d) for d in result["details"]],
        "privileges": None,
    }


def _task_ref(task: dict[str, Any], schema: str) -> dict[str, Any] | None:
    if task["schemaPath"] != schema:
        return None
    return {"id": task["id"], "name": task["name"], "privileges": None}
