"""The UDP datagram parser on its own: every field of every event kind, and what each refusal says.

Pure function tests (no sockets); the datagrams over real UDP are in test_events.py and test_events_fuzz.py.
"""

from __future__ import annotations

import pytest

from butler.events.parsing import (
    EngineReloadFailed,
    MalformedDatagram,
    SessionEvent,
    TaskEvent,
    parse_session_datagram,
    parse_task_datagram,
)

TASK_ID = "E3B27F50-B1C0-4879-88FC-C7CDD9C1CF3E"
APP_ID = "0A1B2C3D-0000-4000-8000-000000000001"
EXECUTION = "9F1C3A2E-5B6D-4E7F-8A9B-0C1D2E3F4A5B"


def task_fields(**changes: str) -> list[str]:
    fields = {
        "kind": "/scheduler-reload-failed/",
        "host": "sense1.lab",
        "task": "Nightly",
        "app": "Sales",
        "user": "INTERNAL\\sa_scheduler",
        "task_id": TASK_ID,
        "app_id": APP_ID,
        "timestamp": "2026-11-24 10:00:00,123",
        "level": "error",
        "execution": EXECUTION,
        "message": "Max retries reached",
    }
    fields.update(changes)
    return list(fields.values())


def task(**changes: str) -> bytes:
    return ";".join(task_fields(**changes)).encode()


def test_every_field_of_a_task_event() -> None:
    assert parse_task_datagram(task()) == TaskEvent(
        outcome="failed",
        message_type="/scheduler-reload-failed/",
        host="sense1.lab",
        task_name="Nightly",
        app_name="Sales",
        user="INTERNAL\\sa_scheduler",
        task_id=TASK_ID.lower(),
        app_id=APP_ID.lower(),
        timestamp="2026-11-24 10:00:00,123",
        level="ERROR",
        execution_id=EXECUTION.lower(),
        message="Max retries reached",
    )


@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("/scheduler-task-aborted/", "aborted"),
        ("/scheduler-reloadtask-success/", "success"),
        ("/scheduler-distribute/", "distribute"),
        # The type is matched without surrounding blanks and case.
        ("  /Scheduler-Task-Failed/ ", "failed"),
    ],
)
def test_message_type_decides_the_outcome(kind: str, outcome: str) -> None:
    event = parse_task_datagram(task(kind=kind))
    assert isinstance(event, TaskEvent)
    assert (event.outcome, event.message_type) == (outcome, kind.strip().lower())


@pytest.mark.parametrize(
    ("message", "line_end"), [(b"Exit code: X ", b"\r\n"), (b"Exit code: X", b"\r\n\x00")]
)
def test_line_ends_after_the_message_are_dropped_and_its_blanks_kept(message: bytes, line_end: bytes) -> None:
    event = parse_task_datagram(task(message=message.decode()) + line_end)
    assert isinstance(event, TaskEvent) and event.message == message.decode()


def test_a_stray_byte_costs_one_character_not_the_event() -> None:
    # "\xf6" is "ö" in Latin-1 but not a whole UTF-8 character.
    event = parse_task_datagram(task(task="Bokf_ring").replace(b"_", b"\xf6"))
    assert isinstance(event, TaskEvent) and event.task_name == "Bokf\N{REPLACEMENT CHARACTER}ring"


def test_an_empty_app_id_is_accepted() -> None:
    # Tasks that are not reloads (external programs) have no app.
    event = parse_task_datagram(task(app_id=""))
    assert isinstance(event, TaskEvent) and (event.task_id, event.app_id) == (TASK_ID.lower(), "")


def test_host_and_user_that_look_like_ids_and_levels_do_not_move_the_anchor() -> None:
    # Field 1 is a GUID followed by an empty field and field 4 a level: the anchor search starts after the
    # user, so these stay the host and the user.
    event = parse_task_datagram(task(host=APP_ID, task="", app="Sales", user="INFO"))
    assert isinstance(event, TaskEvent)
    assert (event.host, event.task_name, event.user, event.task_id) == (APP_ID, "", "INFO", TASK_ID.lower())


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"", "empty datagram"),
        (
            b"/scheduler-task-failed/;a;b;c;d;e;f;g;h;i",
            "/scheduler-task-failed/ needs 11 ';'-separated fields, got 10",
        ),
        (
            task(task_id="not-a-guid"),
            "/scheduler-reload-failed/: no task id (a GUID) followed by app id, timestamp and level",
        ),
        (task(level="LOUD"), "/scheduler-reload-failed/: no task id"),
        (b"/Other/;" + b"x" * 10, "unknown message type '/other/'"),
    ],
)
def test_a_refused_task_datagram_says_why(datagram: bytes, message: str) -> None:
    with pytest.raises(MalformedDatagram) as refused:
        parse_task_datagram(datagram)
    assert str(refused.value).startswith(message)


def test_an_unknown_type_is_quoted_cut_to_60_characters() -> None:
    kind = "/" + "k" * 99
    with pytest.raises(MalformedDatagram) as refused:
        parse_task_datagram(f"{kind};a;b".encode())
    assert str(refused.value) == f"unknown message type {kind[:60]!r}"
    with pytest.raises(MalformedDatagram) as refused:
        parse_session_datagram(f"{kind};a;b".encode())
    assert str(refused.value) == f"unknown message type {kind[:60]!r}"


# -- Engine reload failures ----------------------------------------------------------------------------------

ENGINE_FIELDS = [
    "/engine-reload-failed/",
    "sense2",
    f" {APP_ID} ",
    "session-7",
    "LAB",
    "goran",
    "2026-11-24 10:01:00,000",
    "warn",
    "Reload failed; see the script log",
]


def test_every_field_of_an_engine_reload_failure() -> None:
    assert parse_task_datagram(";".join(ENGINE_FIELDS).encode()) == EngineReloadFailed(
        host="sense2",
        app_id=APP_ID.lower(),
        session_id="session-7",
        user_directory="LAB",
        user_id="goran",
        timestamp="2026-11-24 10:01:00,000",
        level="WARN",
        message="Reload failed; see the script log",
    )


def test_engine_reload_failure_of_exactly_nine_fields() -> None:
    event = parse_task_datagram(";".join([*ENGINE_FIELDS[:8], "Reload failed"]).encode())
    assert isinstance(event, EngineReloadFailed) and event.message == "Reload failed"


def test_engine_reload_failure_fields_are_cleaned() -> None:
    fields = [ENGINE_FIELDS[0], *(f"a\x07{field}" for field in ENGINE_FIELDS[1:2]), *ENGINE_FIELDS[2:]]
    fields[3:9] = [f"{field}\x01" + "y" * 600 for field in ENGINE_FIELDS[3:9]]
    event = parse_task_datagram(";".join(fields).encode())
    assert isinstance(event, EngineReloadFailed)
    assert event.host == "asense2"
    for value, original in zip(
        (event.session_id, event.user_directory, event.user_id, event.timestamp, event.level, event.message),
        ENGINE_FIELDS[3:9],
        strict=True,
    ):
        assert len(value) == 500 and value.upper().startswith(original.upper())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (ENGINE_FIELDS[:8], "/engine-reload-failed/ needs 9 ';'-separated fields, got 8"),
        (
            [*ENGINE_FIELDS[:2], "not-an-app", *ENGINE_FIELDS[3:]],
            "/engine-reload-failed/: the app id is not a GUID",
        ),
    ],
)
def test_a_refused_engine_reload_failure_says_why(fields: list[str], message: str) -> None:
    with pytest.raises(MalformedDatagram) as refused:
        parse_task_datagram(";".join(fields).encode())
    assert str(refused.value) == message


# -- session events ------------------------------------------------------------------------------------------


def test_every_field_of_a_connection_event() -> None:
    datagram = b"/proxy-connection/; sense3 ;CLOSE CONNECTION; LAB ; anna ;Origin;Ctx;Closed\r\n"
    assert parse_session_datagram(datagram) == SessionEvent(
        "Close connection", "sense3", "LAB", "anna", "Origin", "Ctx", "Closed"
    )


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (b"/proxy-session/;h;Start session;LAB;u;o;c", "/proxy-session/ needs 8 ';'-separated fields, got 7"),
        (
            b"/proxy-session/;h;Dance" + b"x" * 80 + b";LAB;u;o;c;m",
            f"/proxy-session/: unknown command {('Dance' + 'x' * 80)[:60]!r}",
        ),
        (
            b"/proxy-session/;h;Start session;LAB; ;o;c;m",
            "/proxy-session/: the user directory and user id are required",
        ),
        (
            b"/proxy-session/;h;Start session;\x01;u;o;c;m",
            "/proxy-session/: the user directory and user id are required",
        ),
    ],
)
def test_a_refused_session_datagram_says_why(datagram: bytes, message: str) -> None:
    with pytest.raises(MalformedDatagram) as refused:
        parse_session_datagram(datagram)
    assert str(refused.value) == message
