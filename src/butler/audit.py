"""The audit log: who changed what through Butler, and which calls were refused.

One JSON object per line, appended to a file that is rotated by size (``audit.jsonl`` becomes
``audit.jsonl.1``, the older ones move up, and the ``keep``-th is deleted). Records are handed to a queue and
written by a thread of their own, so a slow or full disk never holds up the event loop; a record that cannot
be queued or written is counted as lost (``/health``), and the reason logged once per failing spell.

This module knows nothing of HTTP: the REST chain (``butler.http.middleware.audit``), MQTT task starts and
command-line tools call ``AuditLog.record``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from butler.config.settings import AuditLogSettings

log = logging.getLogger("butler.audit")

#: Records waiting for the writer at most; beyond it they are lost (and counted).
QUEUE_SIZE = 10_000
#: How long a read waits at most for the records queued before it to be written.
READ_WAIT_SECONDS = 2.0
_BLOCK = 64 * 1024
_STOP = object()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class AuditQuery:
    """What ``AuditLog.read`` lists: every condition given must hold."""

    since: datetime | None = None
    until: datetime | None = None
    #: The caller, or the client's address.
    caller: str | None = None
    operation: str | None = None
    #: A status (``404``) or a status class (``4``, as in ``4xx``).
    status: int | None = None
    status_class: int | None = None
    limit: int = 100

    def matches(self, record: dict[str, Any], at: datetime) -> bool:
        if self.until is not None and at > self.until:
            return False
        if self.caller is not None and self.caller not in (record.get("caller"), record.get("ip")):
            return False
        if self.operation is not None and record.get("operation") != self.operation:
            return False
        status = record.get("status")
        if self.status is not None and status != self.status:
            return False
        return self.status_class is None or (isinstance(status, int) and status // 100 == self.status_class)


# What a record may hold of a request: names, bounded, and the sizes of values.

#: Fields that name what a call is about, recorded as they are (bounded).
NAMES = frozenset(
    {
        "taskId",
        "key",
        "namespace",
        "ttl",
        "fromFile",
        "toFile",
        "deleteFile",
        "directory",
        "topic",
        "channel",
        "id",
        "name",
        "cronSchedule",
        "qlikSenseTaskId",
        "startupState",
        "reloadMode",
        "partialReload",
        "overwrite",
        "eventType",
        "account",
        "appId",
        "scheduleId",
        "wait",
    }
)
#: Fields recorded by their size only.
SIZES = frozenset({"value", "message", "text", "msg", "attributes", "metrics", "payload", "body"})
_TEXT = 200
_ITEMS = 20


def bounded(value: Any) -> Any:
    """``value`` as recorded: a text cut at 200 characters."""
    if isinstance(value, str):
        return value if len(value) <= _TEXT else value[:_TEXT] + "…"
    if isinstance(value, bool | int | float) or value is None:
        return value
    return bounded(str(value))


def size_of(value: Any) -> int:
    """What a value not recorded is recorded as: its size in bytes (UTF-8, or as JSON)."""
    return len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))


def named_fields(into: dict[str, Any], source: Any) -> None:
    if not isinstance(source, dict):
        return
    for name, value in source.items():
        if name in NAMES:
            into[name] = bounded(value)
        elif name in SIZES:
            into[f"{name}Bytes"] = size_of(value)


def task_items(items: list[Any]) -> dict[str, Any]:
    """What the items of a task start name (upstream's body: ``[{type, payload}]``)."""
    found: dict[str, list[str]] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("payload"), dict):
            continue
        payload = item["payload"]
        kind = str(item.get("type", "")).lower()
        if kind == "starttaskid":
            name, value = "taskIds", payload.get("taskId")
        elif kind == "starttasktag":
            name, value = "tags", payload.get("tag")
        elif kind == "starttaskcustomproperty":
            name, value = "customProperties", f"{payload.get('name')}={payload.get('value')}"
        elif kind == "keyvaluestore":
            name, value = "keyValues", f"{payload.get('namespace')}/{payload.get('key')}"
        else:
            continue
        listed = found.setdefault(name, [])
        if len(listed) < _ITEMS:
            listed.append(bounded(value))
    return found


def started_of(answer: dict[str, Any]) -> dict[str, Any] | None:
    """The outcome of a task start: the ids of the tasks started."""
    tasks = answer.get("tasksId")
    started = tasks.get("started") if isinstance(tasks, dict) else None
    if not isinstance(started, list):
        return None
    return {"started": [bounded(t.get("taskId")) for t in started[:_ITEMS] if isinstance(t, dict)]}


class AuditLog:
    """Appends records to ``path`` from a writer thread; ``start`` before recording, ``close`` at the end."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.written = 0
        self.lost = 0
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_SIZE)
        # Held while a file is read or the files are rotated: on Windows an open file cannot be renamed.
        self._files = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._closed = False
        self._lost_lock = threading.Lock()
        #: Records queued, and records the writer is done with (written or lost): a read waits for the
        #: records queued before it, so that a call is in the answer of a read made after it.
        self._queued = 0
        self._handled = 0
        self._progress = threading.Condition()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write_loop, name="butler-audit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        if self._thread is None:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def record(
        self,
        operation: str,
        *,
        caller: str | None,
        ip: str | None = None,
        status: int | None = None,
        target: dict[str, Any] | None = None,
        outcome: Any = None,
    ) -> None:
        """Queue one record; never blocks. ``caller`` is who called (None: the client's address ``ip``);
        ``target`` what the call was about, ``outcome`` what came of it. Neither may hold a secret."""
        entry: dict[str, Any] = {"time": _now(), "caller": caller or ip or "unknown", "ip": ip}
        entry["operation"] = operation
        if target:
            entry["target"] = target
        entry["status"] = status
        if outcome is not None:
            entry["outcome"] = outcome
        if self._closed:
            # Nothing would write it: counted, not left in the queue.
            self._lose(1, "it was recorded after the audit log was closed")
            return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._lose(1, "its queue is full: the disk is too slow")
            return
        self._queued += 1

    def stats(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "written": self.written,
            "lost": self.lost,
            "queued": self._queue.qsize(),
        }

    # The writer thread.

    def _write_loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            records = [item for item in batch if item is not _STOP]
            if records:
                self._write(records)
                with self._progress:
                    self._handled += len(records)
                    self._progress.notify_all()
            if stop:
                return

    def _write(self, records: list[object]) -> None:
        lines = [orjson.dumps(r) + b"\n" for r in records]
        done = 0
        try:
            with self._files:
                while done < len(lines):
                    size = self._size()
                    stuck = False
                    if size and size + len(lines[done]) > self.max_bytes:
                        stuck = not self._rotate()
                        size = size if stuck else 0
                    # The lines that fit, at least one; all of them when the file could not be rotated.
                    end = done + 1
                    total = size + len(lines[done])
                    while end < len(lines) and (stuck or total + len(lines[end]) <= self.max_bytes):
                        total += len(lines[end])
                        end += 1
                    with open(self.path, "ab") as file:
                        file.write(b"".join(lines[done:end]))
                    self.written += end - done
                    done = end
        except OSError as exc:
            self._lose(len(lines) - done, f"{self.path} cannot be written: {exc.strerror or exc}")
            return
        if self._failing:
            self._failing = False
            log.info("audit log: %s is written again", self.path)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _rotate(self) -> bool:
        """Make room for a new file (each rename replaces the file it is renamed to, so the oldest goes
        without a delete of its own); False when the files could not be renamed (a reader holds one open
        elsewhere on Windows, say): the current file then grows on, and the next batch tries again."""
        try:
            for index in range(self.keep - 1, 0, -1):
                older = self._rotated(index)
                if older.exists():
                    os.replace(older, self._rotated(index + 1))
            if self.keep > 0:
                os.replace(self.path, self._rotated(1))
            else:
                self.path.unlink()
        except OSError as exc:
            log.warning("audit log: cannot rotate %s: %s", self.path, exc.strerror or exc)
            return False
        return True

    def _lose(self, count: int, why: str) -> None:
        with self._lost_lock:
            self.lost += count
            first = not self._failing
            self._failing = True
        if first:
            log.warning("audit log: records are lost (counted under audit.lost in /health): %s", why)

    def _rotated(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    # Reading.

    def read(self, query: AuditQuery) -> list[dict[str, Any]]:
        """The records ``query`` asks for, newest first; files are read from their ends, a block at a time,
        and no further back than needed. Blocking: run it in a thread."""
        queued = self._queued
        with self._progress:
            # A writer that cannot keep up delays the answer a little, never for ever.
            self._progress.wait_for(lambda: self._handled >= queued, timeout=READ_WAIT_SECONDS)
        found: list[dict[str, Any]] = []
        for index in range(self.keep + 1):
            path = self.path if index == 0 else self._rotated(index)
            with self._files:
                try:
                    file = open(path, "rb")  # noqa: SIM115 (closed below, the lock held meanwhile)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                with file:
                    for line in _lines_backwards(file):
                        try:
                            record = orjson.loads(line)
                            at = datetime.fromisoformat(record["time"])
                        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                            continue  # a line cut short by a full disk
                        if query.since is not None and at < query.since:
                            return found  # older ones follow
                        if query.matches(record, at):
                            found.append(record)
                            if len(found) >= query.limit:
                                return found
        return found


def _lines_backwards(file: IO[bytes]) -> Iterator[bytes]:
    end = file.seek(0, os.SEEK_END)
    rest = b""
    while end > 0:
        start = max(0, end - _BLOCK)
        file.seek(start)
        block = file.read(end - start) + rest
        end = start
        lines = block.split(b"\n")
        rest = lines.pop(0)
        for line in reversed(lines):
            if line:
                yield line
    if rest:
        yield rest


def record_now(
    settings: AuditLogSettings,
    operation: str,
    *,
    caller: str,
    target: dict[str, Any] | None = None,
    outcome: Any = None,
) -> bool:
    """Record one event from outside a running Butler (a command-line tool changing tokens, say), written
    before it returns; False when the audit log is off or the record could not be written (logged)."""
    if not settings.enable:
        return False
    audit = AuditLog(settings.file, settings.max_bytes, settings.keep)
    audit.start()
    audit.record(operation, caller=caller, target=target, outcome=outcome)
    audit.close()
    return audit.written == 1
