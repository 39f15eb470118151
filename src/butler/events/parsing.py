"""The datagrams of Sense's log4net UDP appenders, parsed into typed events.

Scheduler events (the layout of the scheduler's ``LocalLogConfig.xml`` appender that upstream Butler
ships, which ``qliksim/udp.py`` sends) have eleven ``;``-separated fields, proxy session events (the
proxy's appender) eight; neither format escapes ``;``. A message with ``;`` in its free text is
read by keeping everything after the fixed fields as the message. A ``;`` in a task or app name shifts
the fields, so a scheduler event is anchored on its task id, app id, timestamp and level instead of on
field positions; the names on either side of the anchor are exact unless both contain ``;`` (QRS's
names then replace them when the event is enriched).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FIELD_LENGTH = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_LEVELS = frozenset({"DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL"})

#: Scheduler message types and the outcome each reports. ``/scheduler-task-success//`` is the type the
#: appender file shipped with upstream Butler sends (upstream itself drops it as unknown).
TASK_TYPES = {
    "/scheduler-reload-failed/": "failed",
    "/scheduler-task-failed/": "failed",
    "/scheduler-reloadtask-failed/": "failed",
    "/scheduler-reload-aborted/": "aborted",
    "/scheduler-task-aborted/": "aborted",
    "/scheduler-reloadtask-aborted/": "aborted",
    "/scheduler-reloadtask-success/": "success",
    "/scheduler-task-success/": "success",
    "/scheduler-task-success//": "success",
    "/scheduler-distribute/": "distribute",
}
SESSION_TYPES = frozenset({"/proxy-session/", "/proxy-connection/"})
SESSION_COMMANDS = {
    "start session": "Start session",
    "stop session": "Stop session",
    "open connection": "Open connection",
    "close connection": "Close connection",
}
ENGINE_RELOAD_FAILED = "/engine-reload-failed/"


class MalformedDatagram(ValueError):
    """A datagram that is not one of the known formats; the message says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """A scheduler task event (failed, aborted, success or distribute)."""

    outcome: str
    message_type: str
    host: str
    task_name: str
    app_name: str
    user: str
    task_id: str
    app_id: str
    timestamp: str
    level: str
    execution_id: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A proxy session or connection event."""

    command: str  # Start session | Stop session | Open connection | Close connection
    host: str
    user_directory: str
    user_id: str
    origin: str
    context: str
    message: str


@dataclass(frozen=True, slots=True)
class EngineReloadFailed:
    """An Engine reload failure (``/engine-reload-failed/``), logged only, as upstream does."""

    host: str
    app_id: str
    session_id: str
    user_directory: str
    user_id: str
    timestamp: str
    level: str
    message: str


def clean(field: str) -> str:
    """Control characters removed, cut to MAX_FIELD_LENGTH characters."""
    return _CONTROL.sub("", field)[:MAX_FIELD_LENGTH]


def _text(datagram: bytes) -> str:
    if not datagram:
        raise MalformedDatagram("empty datagram")
    # Appenders send UTF-8; a stray byte is replaced rather than costing the whole event.
    return datagram.decode("utf-8", errors="replace").rstrip("\r\n\x00")


def _message_type(text: str) -> str:
    return text.split(";", 1)[0].strip().lower()


def parse_task_datagram(datagram: bytes) -> TaskEvent | EngineReloadFailed:
    """A datagram of the scheduler port (9998): a scheduler task event or an Engine reload failure."""
    text = _text(datagram)
    kind = _message_type(text)
    if kind == ENGINE_RELOAD_FAILED:
        return _engine_reload_failed(text)
    outcome = TASK_TYPES.get(kind)
    if outcome is None:
        raise MalformedDatagram(f"unknown message type {clean(kind)[:60]!r}")
    fields = text.split(";")
    if len(fields) < 11:
        raise MalformedDatagram(f"{kind} needs 11 ';'-separated fields, got {len(fields)}")
    anchor = _anchor(fields)
    if anchor is None:
        raise MalformedDatagram(f"{kind}: no task id (a GUID) followed by app id, timestamp and level")
    names = fields[2 : anchor - 1]
    task_name, app_name = (
        (names[0], ";".join(names[1:])) if len(names) > 1 else (names[0] if names else "", "")
    )
    return TaskEvent(
        outcome=outcome,
        message_type=kind,
        host=clean(fields[1]),
        task_name=clean(task_name),
        app_name=clean(app_name),
        user=clean(fields[anchor - 1]),
        task_id=fields[anchor].strip().lower(),
        app_id=fields[anchor + 1].strip().lower(),
        timestamp=clean(fields[anchor + 2]),
        level=clean(fields[anchor + 3]).upper(),
        execution_id=clean(fields[anchor + 4]).strip().lower(),
        message=clean(";".join(fields[anchor + 5 :])),
    )


def _anchor(fields: list[str]) -> int | None:
    """The index of the task id: the first GUID from field 5 on that is followed by an app id (GUID or
    empty), a timestamp, a level and the execution id."""
    for index in range(5, len(fields) - 5):
        if (
            _GUID.match(fields[index].strip())
            and (not fields[index + 1].strip() or _GUID.match(fields[index + 1].strip()))
            and fields[index + 3].strip().upper() in _LEVELS
        ):
            return index
    return None


def _engine_reload_failed(text: str) -> EngineReloadFailed:
    fields = text.split(";")
    if len(fields) < 9:
        raise MalformedDatagram(f"{ENGINE_RELOAD_FAILED} needs 9 ';'-separated fields, got {len(fields)}")
    if not _GUID.match(fields[2].strip()):
        raise MalformedDatagram(f"{ENGINE_RELOAD_FAILED}: the app id is not a GUID")
    return EngineReloadFailed(
        host=clean(fields[1]),
        app_id=fields[2].strip().lower(),
        session_id=clean(fields[3]),
        user_directory=clean(fields[4]),
        user_id=clean(fields[5]),
        timestamp=clean(fields[6]),
        level=clean(fields[7]).upper(),
        message=clean(";".join(fields[8:])),
    )


def parse_session_datagram(datagram: bytes) -> SessionEvent:
    """A datagram of the proxy port (9997): a session or connection event."""
    text = _text(datagram)
    kind = _message_type(text)
    if kind not in SESSION_TYPES:
        raise MalformedDatagram(f"unknown message type {clean(kind)[:60]!r}")
    fields = text.split(";")
    if len(fields) < 8:
        raise MalformedDatagram(f"{kind} needs 8 ';'-separated fields, got {len(fields)}")
    command = SESSION_COMMANDS.get(fields[2].strip().lower())
    if command is None:
        raise MalformedDatagram(f"{kind}: unknown command {clean(fields[2])[:60]!r}")
    directory, user_id = clean(fields[3]).strip(), clean(fields[4]).strip()
    if not directory or not user_id:
        raise MalformedDatagram(f"{kind}: the user directory and user id are required")
    return SessionEvent(
        command=command,
        host=clean(fields[1]).strip(),
        user_directory=directory,
        user_id=user_id,
        origin=clean(fields[5]),
        context=clean(fields[6]),
        message=clean(";".join(fields[7:])),
    )
