"""The template context of task alerts and script logs kept on disk (§7)."""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from butler.alerts.context import AlertFacts, AppOwner, template_context, time_formats
from butler.alerts.script_logs import expired_folders, file_path, prune_script_logs, store_script_log
from butler.config import parse_config
from butler.config.alerts import AlertSettings
from butler.events.parsing import TaskEvent
from butler.events.task_outcomes import TaskOutcome
from tests.conftest import base_config

TASK_ID = "3c47e5d3-0f8b-4a4e-a27c-1d0c3e5f8a11"
APP_ID = "a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
EXECUTION_ID = "e9f8d7c6-b5a4-4392-8170-6f5e4d3c2b1a"
NEVER = "1753-01-01T00:00:00.000Z"

# Shaped as QRS answers task/full, app/full and executionresult/full (as qliksim's site builds them).
DETAILS = [
    {
        "id": "d0000000-0000-0000-0000-000000000003",
        "detailsType": 2,
        "message": "Changing task state from Started to FinishedFail",
        "detailCreatedDate": "2024-01-15T10:31:00.400Z",
        "privileges": None,
    },
    {
        "id": "d0000000-0000-0000-0000-000000000001",
        "detailsType": 2,
        "message": "Changing task state from NeverStarted to Triggered",
        "detailCreatedDate": "2024-01-15T10:30:00.000Z",
        "privileges": None,
    },
    {
        "id": "d0000000-0000-0000-0000-000000000002",
        "detailsType": 0,
        "message": "Script error: Field not found <Amount>",
        "detailCreatedDate": "2024-01-15T10:31:00.300Z",
        "privileges": None,
    },
]
EXECUTION = {
    "id": "f0000000-0000-0000-0000-00000000000e",
    "createdDate": "2024-01-15T10:30:00.000Z",
    "modifiedDate": "2024-01-15T10:31:00.456Z",
    "modifiedByUserName": "INTERNAL\\sa_scheduler",
    "executionID": EXECUTION_ID,
    "appID": APP_ID,
    "taskID": TASK_ID,
    "executingNodeName": "sense1",
    "status": 8,
    "startTime": "2024-01-15T10:30:00.000Z",
    "stopTime": "2024-01-15T10:31:00.456Z",
    "duration": 60456,
    "fileReferenceID": "b0000000-0000-0000-0000-00000000000b",
    "scriptLogAvailable": True,
    "details": DETAILS,
    "scriptLogLocation": "sense1\\Script Logs\\b0000000-0000-0000-0000-00000000000b.log",
    "scriptLogSize": 1234,
    "schemaPath": "ExecutionResult",
    "privileges": None,
}


def _cp(name: str, value: str) -> dict[str, Any]:
    return {
        "id": f"c0000000-0000-0000-0000-{abs(hash((name, value))) % 10**12:012d}",
        "createdDate": "2024-01-01T08:00:00.000Z",
        "modifiedDate": "2024-01-01T08:00:00.000Z",
        "modifiedByUserName": "INTERNAL\\sa_repository",
        "value": value,
        "definition": {
            "id": "c1000000-0000-0000-0000-000000000001",
            "name": name,
            "valueType": "Text",
            "choiceValues": [],
            "privileges": None,
        },
        "schemaPath": "CustomPropertyValue",
    }


APP = {
    "id": APP_ID,
    "createdDate": "2024-01-01T08:00:00.000Z",
    "modifiedDate": "2024-01-14T10:30:05.000Z",
    "modifiedByUserName": "INTERNAL\\sa_scheduler",
    "customProperties": [_cp("Department", "Finance")],
    "owner": {
        "id": "0a000000-0000-0000-0000-000000000001",
        "userId": "anna",
        "userDirectory": "CORP",
        "userDirectoryConnectorName": "CORP",
        "name": "Anna Berg",
        "privileges": None,
    },
    "name": "Sales",
    "appId": "",
    "publishTime": "2024-01-12T09:00:00.000Z",
    "published": True,
    "tags": [{"id": "7a000000-0000-0000-0000-000000000001", "name": "finance", "privileges": None}],
    "description": "Sales dashboard",
    "stream": {"id": "5a000000-0000-0000-0000-000000000001", "name": "Finance", "privileges": None},
    "fileSize": 262144,
    "lastReloadTime": "2024-01-14T10:30:00.000Z",
    "schemaPath": "App",
    "privileges": None,
}
TASK = {
    "id": TASK_ID,
    "createdDate": "2024-01-01T08:00:00.000Z",
    "modifiedDate": "2024-01-10T08:00:00.000Z",
    "modifiedByUserName": "CORP\\admin",
    "customProperties": [
        _cp("Butler_FailedAlertEnableEmail", "Yes"),
        _cp("Butler_FailedTask_Event_NewRelicAccount", "Team NR"),
        _cp("Butler_FailedTask_Event_NewRelicAccount", "Unknown NR"),
    ],
    "isManuallyTriggered": False,
    "operational": {
        "id": "0b000000-0000-0000-0000-000000000001",
        "lastExecutionResult": {
            k: EXECUTION[k]
            for k in (
                "id",
                "executingNodeName",
                "status",
                "startTime",
                "stopTime",
                "duration",
                "details",
                "scriptLogSize",
            )
        },
        "nextExecution": NEVER,
        "privileges": None,
    },
    "name": "Reload Sales",
    "taskType": 0,
    "enabled": True,
    "taskSessionTimeout": 1440,
    "maxRetries": 0,
    "tags": [
        {"id": "7b000000-0000-0000-0000-000000000001", "name": "butler", "privileges": None},
        {"id": "7b000000-0000-0000-0000-000000000002", "name": "prod", "privileges": None},
    ],
    "app": {"id": APP_ID, "name": "Sales", "privileges": None},
    "isPartialReload": False,
    "schemaPath": "ReloadTask",
    "privileges": None,
}
SCRIPT_LOG = [
    "20240115T113000.000+0100 Execution started.",
    "20240115T113000.010+0100 Qlik Sense Server Version 14.187.4",
    "20240115T113000.020+0100 Reload task: Reload Sales",
    "20240115T113059.100+0100 Field 'Amount' not found",
    "20240115T113059.200+0100 Execution Failed",
    "20240115T113059.300+0100 Execution finished.",
]
URLS = {
    "qmc": "https://sense.corp.local/qmc",
    "hub": "https://sense.corp.local/hub",
    "appBaseUrl": "https://sense.corp.local/sense/app/",
}
GENERIC_URLS = [
    {
        "id": "butler_docs",
        "linkText": "Butler documentation",
        "comment": "The documentation for Butler",
        "url": "https://butler.ptarmiganlabs.com",
    }
]


def event(**changes: Any) -> TaskEvent:
    values: dict[str, Any] = {
        "outcome": "failed",
        "message_type": "/scheduler-reload-failed/",
        "host": "sense1.corp.local",
        "task_name": "Reload Sales",
        "app_name": "Sales",
        "user": "INTERNAL\\sa_scheduler",
        "task_id": TASK_ID,
        "app_id": APP_ID,
        "timestamp": "2024-01-15 10:31:00,123",
        "level": "ERROR",
        "execution_id": EXECUTION_ID,
        "message": "Max retries reached",
    }
    values.update(changes)
    return TaskEvent(**values)


def facts(
    name: str = "reloadTaskFailure",
    *,
    task: dict[str, Any] | None = TASK,
    app: dict[str, Any] | None = APP,
    execution: dict[str, Any] | None = EXECUTION,
    script_log: list[str] | None = SCRIPT_LOG,
    owner: AppOwner | None = None,
    **event_changes: Any,
) -> AlertFacts:
    return AlertFacts(
        event=name,
        outcome=TaskOutcome(event(**event_changes), task=copy.deepcopy(task), app=copy.deepcopy(app)),
        execution=copy.deepcopy(execution),
        script_log=script_log,
        owner=owner
        or AppOwner(name="Anna Berg", user_id="anna", user_directory="CORP", emails=("anna@corp.example",)),
        butler_version="1.2.3",
    )


def alert_settings(tmp_path: Path, **sections: Any) -> AlertSettings:
    document = base_config()
    document["Butler"].update(
        {"qlikSenseUrls": dict(URLS), "genericUrls": copy.deepcopy(GENERIC_URLS), **copy.deepcopy(sections)}
    )
    return parse_config(document, base_dir=tmp_path).alerts


@pytest.fixture(autouse=True)
def stockholm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times are shown in the host's zone: the tests fix it."""
    monkeypatch.setenv("TZ", "Europe/Stockholm")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_reload_context_has_every_field(tmp_path: Path) -> None:
    context = template_context(facts(), alert_settings(tmp_path), 2, 3)
    assert context == {
        "hostName": "sense1.corp.local",
        "host": "sense1.corp.local",
        "user": "INTERNAL\\sa_scheduler",
        "taskName": "Reload Sales",
        "taskId": TASK_ID,
        "tasId": TASK_ID,
        "taskCustomProperties": [
            {"name": "Butler_FailedAlertEnableEmail", "value": "Yes"},
            {"name": "Butler_FailedTask_Event_NewRelicAccount", "value": "Team NR"},
            {"name": "Butler_FailedTask_Event_NewRelicAccount", "value": "Unknown NR"},
        ],
        "taskTags": ["butler", "prod"],
        "taskIsManuallyTriggered": False,
        "taskIsPartialReload": False,
        "taskMaxRetries": 0,
        "taskModifiedByUsername": "CORP\\admin",
        "taskModifiedDate": "2024-01-10T08:00:00.000Z",
        "taskSessionTimeout": 1440,
        "taskNextExecution": "Never",
        "appName": "Sales",
        "appId": APP_ID,
        "appUrl": f"https://sense.corp.local/sense/app/{APP_ID}",
        "appDescription": "Sales dashboard",
        "appFileSize": 262144,
        "appLastSuccessfulReload": "2024-01-14T10:30:00.000Z",
        "appLastModifiedDate": "2024-01-14T10:30:05.000Z",
        "appLastModifiedByUserName": "INTERNAL\\sa_scheduler",
        "appPublishTime": "2024-01-12T09:00:00.000Z",
        "appPublished": True,
        "appStreamName": "Finance",
        "appCustomProperties": [{"name": "Department", "value": "Finance"}],
        "appTags": ["finance"],
        "logTimeStamp": "2024-01-15 10:31:00,123",
        "logLevel": "ERROR",
        "logMessage": "Max retries reached",
        "executionId": EXECUTION_ID,
        "executingNodeName": "sense1",
        "executionStatusNum": 8,
        "executionStatusText": "FinishedFail",
        "executionDuration": {"hours": 0, "minutes": 1, "seconds": 0},
        "executionStartTime": {
            "startTimeUTC": "2024-01-15T10:30:00.000Z",
            "startTimeLocal1": "2024-01-15 11:30:00",
            "startTimeLocal2": "1/15/2024, 11:30:00 AM",
            "startTimeLocal3": "Jan 15, 2024, 11:30:00 AM",
            "startTimeLocal4": "January 15, 2024 at 11:30:00 AM CET",
            "startTimeLocal5": "January 15, 2024 at 11:30:00 AM CET",
        },
        "executionStopTime": {
            "stopTimeUTC": "2024-01-15T10:31:00.456Z",
            "stopTimeLocal1": "2024-01-15 11:31:00",
            "stopTimeLocal2": "1/15/2024, 11:31:00 AM",
            "stopTimeLocal3": "Jan 15, 2024, 11:31:00 AM",
            "stopTimeLocal4": "January 15, 2024 at 11:31:00 AM CET",
            "stopTimeLocal5": "January 15, 2024 at 11:31:00 AM CET",
        },
        "executionDetails": [
            {
                "timestampUTC": "2024-01-15T10:30:00.000Z",
                "timestampLocal1": "2024-01-15 11:30:00",
                "timestampLocal2": "1/15/2024, 11:30:00 AM",
                "timestampLocal3": "Jan 15, 2024, 11:30:00 AM",
                "timestampLocal4": "January 15, 2024 at 11:30:00 AM CET",
                "timestampLocal5": "January 15, 2024 at 11:30:00 AM CET",
                "message": "Changing task state from NeverStarted to Triggered",
                "detailsType": 2,
            },
            {
                "timestampUTC": "2024-01-15T10:31:00.300Z",
                "timestampLocal1": "2024-01-15 11:31:00",
                "timestampLocal2": "1/15/2024, 11:31:00 AM",
                "timestampLocal3": "Jan 15, 2024, 11:31:00 AM",
                "timestampLocal4": "January 15, 2024 at 11:31:00 AM CET",
                "timestampLocal5": "January 15, 2024 at 11:31:00 AM CET",
                "message": "Script error: Field not found <Amount>",
                "detailsType": 0,
            },
            {
                "timestampUTC": "2024-01-15T10:31:00.400Z",
                "timestampLocal1": "2024-01-15 11:31:00",
                "timestampLocal2": "1/15/2024, 11:31:00 AM",
                "timestampLocal3": "Jan 15, 2024, 11:31:00 AM",
                "timestampLocal4": "January 15, 2024 at 11:31:00 AM CET",
                "timestampLocal5": "January 15, 2024 at 11:31:00 AM CET",
                "message": "Changing task state from Started to FinishedFail",
                "detailsType": 2,
            },
        ],
        "executionDetailsConcatenated": (
            "2024-01-15T10:30:00.000Z\tChanging task state from NeverStarted to Triggered\n"
            "2024-01-15T10:31:00.300Z\tScript error: Field not found <Amount>\n"
            "2024-01-15T10:31:00.400Z\tChanging task state from Started to FinishedFail\n"
        ),
        "executionDetailsText": (
            "2024-01-15T10:30:00.000Z\tChanging task state from NeverStarted to Triggered\n"
            "2024-01-15T10:31:00.300Z\tScript error: Field not found <Amount>\n"
            "2024-01-15T10:31:00.400Z\tChanging task state from Started to FinishedFail\n"
        ),
        "scriptLogSize": 1234,
        "scriptLogSizeRows": 6,
        "scriptLogSizeCharacters": 296,
        "scriptLogHead": (
            "20240115T113000.000+0100 Execution started.\r\n"
            "20240115T113000.010+0100 Qlik Sense Server Version 14.187.4"
        ),
        "scriptLogHeadCount": 2,
        "scriptLogTail": (
            "20240115T113059.100+0100 Field 'Amount' not found\r\n"
            "20240115T113059.200+0100 Execution Failed\r\n"
            "20240115T113059.300+0100 Execution finished."
        ),
        "scriptLogTailCount": 3,
        "qlikSenseQMC": "https://sense.corp.local/qmc",
        "qlikSenseHub": "https://sense.corp.local/hub",
        "genericUrls": GENERIC_URLS,
        "appOwnerName": "Anna Berg",
        "appOwnerUserId": "anna",
        "appOwnerUserDirectory": "CORP",
        "appOwnerEmail": "anna@corp.example",
        "butlerVersion": "1.2.3",
    }
    assert context["scriptLogSizeCharacters"] == len("\r\n".join(SCRIPT_LOG))


def test_user_with_slash_for_chat_channels(tmp_path: Path) -> None:
    settings = alert_settings(tmp_path)
    assert template_context(facts(), settings, 1, 1, slash_user=True)["user"] == "INTERNAL/sa_scheduler"
    doubled = facts(user="INTERNAL\\\\sa_scheduler")
    assert template_context(doubled, settings, 1, 1)["user"] == "INTERNAL\\sa_scheduler"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://sense.corp.local/sense/app", f"https://sense.corp.local/sense/app/{APP_ID}"),
        ("https://sense.corp.local/sense/app//", f"https://sense.corp.local/sense/app/{APP_ID}"),
        ("", ""),
    ],
)
def test_app_url_has_one_slash(tmp_path: Path, base: str, url: str) -> None:
    document = base_config()
    document["Butler"]["qlikSenseUrls"] = {**URLS, "appBaseUrl": base}
    settings = parse_config(document, base_dir=tmp_path).alerts
    assert template_context(facts(), settings, 1, 1)["appUrl"] == url


def test_times_in_the_hosts_zone_and_never() -> None:
    summer = time_formats("2024-07-01T12:05:09.000Z", "stopTime")
    assert summer == {
        "stopTimeUTC": "2024-07-01T12:05:09.000Z",
        "stopTimeLocal1": "2024-07-01 14:05:09",
        "stopTimeLocal2": "7/1/2024, 2:05:09 PM",
        "stopTimeLocal3": "Jul 1, 2024, 2:05:09 PM",
        "stopTimeLocal4": "July 1, 2024 at 2:05:09 PM CEST",
        "stopTimeLocal5": "July 1, 2024 at 2:05:09 PM CEST",
    }
    midnight = time_formats("2024-01-14T23:00:00.000Z", "t")
    assert midnight["tLocal2"] == "1/15/2024, 12:00:00 AM"
    assert time_formats(NEVER, "startTime") == {
        "startTimeUTC": "-",
        **{f"startTimeLocal{n}": "-" for n in range(1, 6)},
    }


def test_duration_from_milliseconds(tmp_path: Path) -> None:
    execution = {**EXECUTION, "duration": 2 * 3600_000 + 3 * 60_000 + 4_999}
    context = template_context(facts(execution=execution), alert_settings(tmp_path), 1, 1)
    assert context["executionDuration"] == {"hours": 2, "minutes": 3, "seconds": 4}


def test_status_names_and_distribution_states(tmp_path: Path) -> None:
    settings = alert_settings(tmp_path)
    for status, text in ((6, "Aborted"), (7, "FinishedSuccess"), (11, "Error"), (13, ""), (14, "")):
        context = template_context(facts(execution={**EXECUTION, "status": status}), settings, 1, 1)
        assert (context["executionStatusNum"], context["executionStatusText"]) == (status, text)


def test_missing_execution_and_script_log_degrade(tmp_path: Path) -> None:
    settings = alert_settings(tmp_path)
    context = template_context(facts(task=None, execution=None, script_log=None), settings, 5, 5)
    assert {k: context[k] for k in ("executingNodeName", "executionStatusNum", "executionStatusText")} == {
        "executingNodeName": "",
        "executionStatusNum": "",
        "executionStatusText": "",
    }
    assert context["executionStartTime"] == context["executionDuration"] == {}
    assert context["executionDetails"] == []
    assert context["executionDetailsConcatenated"] == context["executionDetailsText"] == ""
    assert (context["scriptLogHead"], context["scriptLogTail"], context["scriptLogSizeRows"]) == ("", "", "")
    assert (context["scriptLogHeadCount"], context["scriptLogTailCount"]) == (0, 0)
    assert (context["taskName"], context["taskTags"], context["taskNextExecution"]) == (
        "Reload Sales",
        [],
        "",
    )


def test_missing_execution_falls_back_to_the_tasks_last_result(tmp_path: Path) -> None:
    context = template_context(facts(execution=None), alert_settings(tmp_path), 1, 1)
    assert (context["executingNodeName"], context["executionStatusText"]) == ("sense1", "FinishedFail")
    assert context["executionStartTime"]["startTimeLocal1"] == "2024-01-15 11:30:00"


def test_missing_log_uses_the_outcomes_head_and_tail(tmp_path: Path) -> None:
    base = facts(script_log=None)
    base.outcome.script_log_head = SCRIPT_LOG[:3]
    base.outcome.script_log_tail = SCRIPT_LOG[-3:]
    context = template_context(base, alert_settings(tmp_path), 1, 2)
    assert context["scriptLogHead"] == SCRIPT_LOG[0]
    assert context["scriptLogTail"] == "\r\n".join(SCRIPT_LOG[-2:])
    assert context["scriptLogSizeRows"] == ""


def test_owner_from_app_metadata_when_lookup_failed(tmp_path: Path) -> None:
    base = facts()
    base.owner = None
    context = template_context(base, alert_settings(tmp_path), 1, 1)
    assert [context[k] for k in ("appOwnerName", "appOwnerUserId", "appOwnerUserDirectory")] == [
        "Anna Berg",
        "anna",
        "CORP",
    ]
    assert context["appOwnerEmail"] == ""


def test_unpublished_app_and_next_execution(tmp_path: Path) -> None:
    app = {**APP, "stream": None, "published": False}
    task = {**TASK, "operational": {**TASK["operational"], "nextExecution": "2024-01-16T06:00:00.000Z"}}
    context = template_context(facts(app=app, task=task), alert_settings(tmp_path), 1, 1)
    assert (context["appStreamName"], context["taskNextExecution"]) == ("", "2024-01-16T06:00:00.000Z")


# -- script logs on disk -------------------------------------------------------------------------------


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def log_settings(directory: Path | None, enable: bool = True, retention_days: int = 0) -> Any:
    return SimpleNamespace(enable=enable, directory=directory, retention_days=retention_days)


async def test_failed_reload_log_stored_by_date(tmp_path: Path) -> None:
    written = await store_script_log(facts(), log_settings(tmp_path))
    expected = tmp_path / "2024-01-15" / f"2024-01-15_10-31-00_appId={APP_ID}_taskId={TASK_ID}.log"
    assert written == expected
    assert expected.read_bytes() == "\n".join(SCRIPT_LOG).encode()
    assert listing(expected.parent) == [expected.name]


@pytest.mark.parametrize(
    ("name", "enable", "script_log"),
    [
        ("reloadTaskAborted", True, SCRIPT_LOG),
        ("reloadTaskFailure", False, SCRIPT_LOG),
        ("reloadTaskFailure", True, None),
        ("reloadTaskFailure", True, []),
    ],
)
async def test_nothing_stored(tmp_path: Path, name: str, enable: bool, script_log: list[str] | None) -> None:
    assert await store_script_log(facts(name, script_log=script_log), log_settings(tmp_path, enable)) is None
    assert listing(tmp_path) == []


async def test_hostile_ids_stay_in_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    hostile = facts(app_id="../../etc", task_id="..\\x/y", timestamp="../../evil 10:00:00")
    written = await store_script_log(hostile, log_settings(root))
    assert written is not None
    assert written.resolve().is_relative_to(root.resolve())
    assert written.name.endswith("_appId=______etc_taskId=___x_y.log")
    assert listing(tmp_path) == ["logs"]


def test_file_name_from_the_timestamp(tmp_path: Path) -> None:
    path = file_path(tmp_path, facts(timestamp="2024-02-29 23:59:58,999"))
    assert path.relative_to(tmp_path).as_posix() == (
        f"2024-02-29/2024-02-29_23-59-58_appId={APP_ID}_taskId={TASK_ID}.log"
    )


async def test_retention_removes_old_date_folders_only(tmp_path: Path) -> None:
    for name in ("2024-01-01", "2024-01-07", "2024-01-08", "2024-01-15", "notes", "2024-13-01"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.log").write_text("x")
    (tmp_path / "2023-12-31").write_text("a file, not a folder")
    today = datetime.date(2024, 1, 15)
    assert expired_folders(tmp_path, 0, today) == []
    removed = await prune_script_logs(log_settings(tmp_path, retention_days=7), today)
    assert removed == [tmp_path / "2024-01-01", tmp_path / "2024-01-07"]
    assert listing(tmp_path) == [
        "2023-12-31",
        "2024-01-08",
        "2024-01-15",
        "2024-13-01",
        "notes",
    ]
    assert await prune_script_logs(log_settings(tmp_path, retention_days=0), today) == []


async def test_write_failure_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert await store_script_log(facts(), log_settings(blocked)) is None
    assert "not stored" in caplog.text
