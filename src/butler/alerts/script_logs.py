"""Script logs of failed reloads kept on disk, and their retention.

The log of a failed reload goes to
``<directory>/<YYYY-MM-DD>/<YYYY-MM-DD_HH-MM-SS>_appId=<appId>_taskId=<taskId>.log`` (the date and time
of the event's log timestamp), its lines joined with ``\\n``, as upstream writes it.
A file is written to a temporary name and renamed, so a reader never sees half a log; writing runs in a
thread, off the event loop. Ids are GUIDs, but anything else in them is replaced, so that no event can
name a file outside the folder. Retention (an addition) removes date folders older than
``retention_days``; only folders named as dates are touched.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from butler.alerts.context import AlertFacts

if TYPE_CHECKING:
    from butler.config.alerts import ScriptLogSettings

log = logging.getLogger("butler.alerts")

EVENT = "reloadTaskFailure"
_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


def file_path(directory: Path, facts: AlertFacts, now: datetime.datetime | None = None) -> Path:
    """Where the script log of ``facts`` goes. A timestamp that is not ``YYYY-MM-DD HH:MM:SS...`` (the
    appender's format) is replaced by the host's current time."""
    event = facts.outcome.event
    match = _STAMP.match(event.timestamp)
    if match is not None and _valid_day(match.group(1)):
        day, hour, minute, second = match.groups()
    else:
        moment = now or datetime.datetime.now().astimezone()
        day, hour, minute, second = (
            moment.strftime("%Y-%m-%d"),
            f"{moment.hour:02d}",
            f"{moment.minute:02d}",
            f"{moment.second:02d}",
        )
    name = f"{day}_{hour}-{minute}-{second}_appId={_safe(event.app_id)}_taskId={_safe(event.task_id)}.log"
    return directory / day / name


def _safe(value: str) -> str:
    return _UNSAFE.sub("_", value)[:100]


def _valid_day(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


async def store_script_log(facts: AlertFacts, settings: ScriptLogSettings) -> Path | None:
    """Write the script log of a failed reload; the file written, or None when there is nothing to write
    (feature off, another event, no log) or writing failed (logged)."""
    directory = settings.directory
    lines = facts.script_log
    if not settings.enable or directory is None or facts.event != EVENT or not lines:
        return None
    path = file_path(directory, facts)
    try:
        await asyncio.to_thread(_write, directory, path, "\n".join(lines))
    except (OSError, ValueError) as exc:
        log.error("script log of task %s not stored in %s: %s", facts.outcome.event.task_id, path, exc)
        return None
    return path


def _write(directory: Path, path: Path, text: str) -> None:
    root = directory.resolve()
    target = path.resolve()
    if not target.is_relative_to(root) or target == root:
        raise ValueError(f"{path} is outside {directory}")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def expired_folders(directory: Path, retention_days: int, today: datetime.date) -> list[Path]:
    """The date folders under ``directory`` older than ``retention_days`` (none when it is 0)."""
    if retention_days <= 0 or not directory.is_dir():
        return []
    oldest = today - datetime.timedelta(days=retention_days)
    expired = []
    for entry in directory.iterdir():
        if not _DAY.match(entry.name) or not _valid_day(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink() and datetime.date.fromisoformat(entry.name) < oldest:
            expired.append(entry)
    return sorted(expired)


def _remove_expired(directory: Path, retention_days: int, today: datetime.date) -> list[Path]:
    removed = []
    for folder in expired_folders(directory, retention_days, today):
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("old script logs in %s not removed: %s", folder, exc)
        else:
            removed.append(folder)
    return removed


async def prune_script_logs(settings: ScriptLogSettings, today: datetime.date | None = None) -> list[Path]:
    """Remove the date folders older than the retention; the folders removed."""
    if settings.directory is None or settings.retention_days <= 0:
        return []
    return await asyncio.to_thread(
        _remove_expired, settings.directory, settings.retention_days, today or datetime.date.today()
    )


__all__ = ["expired_folders", "file_path", "prune_script_logs", "store_script_log"]
