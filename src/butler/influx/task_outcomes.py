"""Task outcomes as InfluxDB points, as upstream Butler writes them: a consumer of the event bus.

One measurement per task type and outcome (``reload_task_failed``, ``user_sync_task_success``, ...), each
turned on by its section of ``Butler.influxDb``. Tags: the task (and for reloads the app) of the event,
the host, the user as ``DIR/user`` and the log level; with an execution result, the node, status number
and status text (under upstream's misspelt name ``task_exeuctionStatusText``, so that existing queries
and dashboards find it); ``taskTag_<name>`` and for reloads ``appTag_<name>`` (value ``true``) per tag of
the task and app when ``tag.dynamic`` says so; the section's ``tag.static``. When names clash, the
event's own tags win over the dynamic ones, those over the section's static tags, and all of them over
``influxDb.tag.static``. Fields: the log timestamp, execution id and log message; with an execution
result, its start, stop and duration as upstream's JSON and the duration in seconds, minutes and hours;
for reloads the script log (``reload_log``: the execution details, then the last lines, and for a
success also the first ones).

Aborted tasks are not written, as upstream writes none. Outcomes of a reload success are written for
every reload (``allReloadTasks``) or for the tasks whose custom property has the enabled value.
"""

from __future__ import annotations

import json
from typing import Any

from butler.alerts.context import (
    custom_property_values,
    details_concatenated,
    duration_parts,
    sorted_details,
    status_text,
    tag_names,
    time_formats,
    user_name,
)
from butler.config.influx import InfluxReloadFailure, InfluxReloadSuccess, InfluxSettings
from butler.events.bus import EventBus
from butler.events.task_outcomes import TaskOutcome
from butler.influx.line_protocol import FieldValue
from butler.influx.writer import InfluxWriter

_RELOAD = 0
#: The section and measurement of each task type and outcome.
EVENTS: dict[tuple[int, str], tuple[str, str]] = {
    (_RELOAD, "failed"): ("reloadTaskFailure", "reload_task_failed"),
    (_RELOAD, "success"): ("reloadTaskSuccess", "reload_task_success"),
    (1, "failed"): ("externalProgramTaskFailure", "external_program_task_failed"),
    (1, "success"): ("externalProgramTaskSuccess", "external_program_task_success"),
    (2, "failed"): ("userSyncTaskFailure", "user_sync_task_failed"),
    (2, "success"): ("userSyncTaskSuccess", "user_sync_task_success"),
    (3, "failed"): ("distributeTaskFailure", "distribute_task_failed"),
    (3, "success"): ("distributeTaskSuccess", "distribute_task_success"),
    (4, "failed"): ("preloadTaskFailure", "preload_task_failed"),
    (4, "success"): ("preloadTaskSuccess", "preload_task_success"),
}
#: Task types whose failures carry the execution result too (upstream: reloads, distribute, preload).
_RESULT_ON_FAILURE = frozenset({_RELOAD, 3, 4})
NOT_AVAILABLE = "Script log not available"
_SEPARATOR = "-------------------------------"

Point = tuple[str, dict[str, str], dict[str, FieldValue]]


def task_point(outcome: TaskOutcome, settings: InfluxSettings) -> Point | None:
    """The point of ``outcome``: measurement, tags and fields; None when none is written for it."""
    task_type = _task_type(outcome)
    found = EVENTS.get((task_type, outcome.event.outcome))
    if found is None:
        return None
    section, measurement = found
    config = settings.event(section)
    if not config.enable:
        return None
    if isinstance(config, InfluxReloadSuccess) and not _success_wanted(outcome, config):
        return None
    event, task, app = outcome.event, outcome.task or {}, outcome.app or {}
    tags: dict[str, str] = dict(config.static_tags)
    if isinstance(config, InfluxReloadFailure) and config.use_app_tags:
        tags |= {f"appTag_{name}": "true" for name in tag_names(app)}
    if config.use_task_tags:
        tags |= {f"taskTag_{name}": "true" for name in tag_names(task)}
    tags |= {
        "host": event.host,
        "user": user_name(event.user, slash=True),
        "task_id": event.task_id,
        "task_name": outcome.task_name,
        "log_level": event.level,
    }
    fields: dict[str, FieldValue] = {
        "log_timestamp": event.timestamp,
        "execution_id": event.execution_id,
        "log_message": event.message,
    }
    if task_type == _RELOAD:
        tags |= {"app_id": event.app_id, "app_name": outcome.app_name}
    execution = _execution(outcome)
    if isinstance(config, InfluxReloadFailure):
        _reload_fields(outcome, config, execution, tags, fields)
    elif execution is not None and (event.outcome == "success" or task_type in _RESULT_ON_FAILURE):
        _execution_fields(execution, tags, fields)
    return measurement, tags, fields


def _task_type(outcome: TaskOutcome) -> int:
    code = (outcome.task or {}).get("taskType")
    return code if isinstance(code, int) and not isinstance(code, bool) else _RELOAD


def _success_wanted(outcome: TaskOutcome, config: InfluxReloadSuccess) -> bool:
    if config.all_reload_tasks:
        return True
    values = custom_property_values(outcome.task or {}, config.custom_property)
    return config.by_custom_property and config.enabled_value in values


def _execution(outcome: TaskOutcome) -> dict[str, Any] | None:
    """The run's execution result, or failing that the task's last one (fetched with the task)."""
    if outcome.execution_result is not None:
        return outcome.execution_result
    operational = (outcome.task or {}).get("operational")
    last = operational.get("lastExecutionResult") if isinstance(operational, dict) else None
    return last if isinstance(last, dict) and last.get("status") is not None else None


def _execution_fields(execution: dict[str, Any], tags: dict[str, str], fields: dict[str, FieldValue]) -> None:
    status = execution.get("status")
    tags |= {
        "task_executingNodeName": str(execution.get("executingNodeName") or ""),
        "task_executionStatusNum": "" if status is None else str(status),
        "task_exeuctionStatusText": status_text(status),
    }
    fields["task_executionStartTime_json"] = _json(time_formats(execution.get("startTime"), "startTime"))
    fields["task_executionStopTime_json"] = _json(time_formats(execution.get("stopTime"), "stopTime"))
    duration = duration_parts(execution.get("duration"))
    if duration:
        hours, minutes, seconds = duration["hours"], duration["minutes"], duration["seconds"]
        fields["task_executionDuration_json"] = _json(duration)
        fields["task_executionDuration_sec"] = hours * 3600 + minutes * 60 + seconds
        fields["task_executionDuration_min"] = hours * 60 + minutes + seconds / 60
        fields["task_executionDuration_h"] = hours + minutes / 60 + seconds / 3600


def _reload_fields(
    outcome: TaskOutcome,
    config: InfluxReloadFailure,
    execution: dict[str, Any] | None,
    tags: dict[str, str],
    fields: dict[str, FieldValue],
) -> None:
    success = isinstance(config, InfluxReloadSuccess)
    if execution is None:
        tags |= {
            "task_executingNodeName": "unknown",
            "task_executionStatusNum": "-1",
            "task_exeuctionStatusText": NOT_AVAILABLE,
        }
        _no_log(fields, success)
        return
    _execution_fields(execution, tags, fields)
    lines = outcome.script_log
    if lines is None and outcome.script_log_tail is None:
        _no_log(fields, success)
        return
    fields["task_scriptLogSize"] = _number(execution.get("scriptLogSize"))
    details = details_concatenated(sorted_details(execution))
    tail_count = config.tail_lines
    tail_source = lines if lines is not None else outcome.script_log_tail or []
    tail = "\r\n".join(tail_source[-tail_count:]) if tail_count else ""
    if isinstance(config, InfluxReloadSuccess):
        head_count = config.head_lines
        head = "\r\n".join((lines if lines is not None else outcome.script_log_head or [])[:head_count])
        fields["task_scriptLogHeadCount"] = head_count
        log = (
            f"{details}\r\n---------- SCRIPT LOG HEAD ({head_count} lines) ----------\r\n{head}\r\n\r\n"
            f"---------- SCRIPT LOG TAIL ({tail_count} lines) ----------\r\n{tail}"
        )
    else:
        log = f"{details}\r\n{_SEPARATOR}\r\n\r\n{tail}"
    fields["task_scriptLogTailCount"] = tail_count
    fields["scriptLog"] = log
    fields["reload_log"] = log


def _no_log(fields: dict[str, FieldValue], success: bool) -> None:
    fields["task_scriptLogSize"] = 0
    if success:
        fields["task_scriptLogHeadCount"] = 0
    fields["task_scriptLogTailCount"] = 0
    fields["scriptLog"] = NOT_AVAILABLE


def _number(value: Any) -> float | int:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _json(value: Any) -> str:
    """As JavaScript's JSON.stringify writes it (upstream's form): no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class TaskOutcomePoints:
    """The consumer: each task outcome of the bus that a section of ``influxDb`` turns on, as a point."""

    def __init__(self, writer: InfluxWriter, settings: InfluxSettings) -> None:
        self.writer = writer
        self.settings = settings

    async def handle(self, outcome: TaskOutcome) -> None:
        point = task_point(outcome, self.settings)
        if point is not None:
            self.writer.write(*point)

    def full_logs(self) -> frozenset[str]:
        """The outcomes whose events must keep the whole script log, for the lines of ``reload_log``."""
        success = self.settings.event("reloadTaskSuccess")
        wanted = {
            "failed": self.settings.event("reloadTaskFailure").enable,
            # Template files turn the section on but neither way of choosing tasks: no log to fetch then.
            "success": isinstance(success, InfluxReloadSuccess)
            and success.enable
            and (success.all_reload_tasks or success.by_custom_property),
        }
        return frozenset(outcome for outcome, on in wanted.items() if on)

    def subscribe(self, bus: EventBus) -> None:
        if any(event.enable for event in self.settings.events.values()):
            bus.subscribe("influxdb", self.handle, TaskOutcome)


__all__ = ["EVENTS", "TaskOutcomePoints", "task_point"]
