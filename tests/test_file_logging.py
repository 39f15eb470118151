"""Log files (``Butler.fileLogging``, ``Butler.logDirectory``): one file a day, retention, the JSON format,
and a folder that cannot be written. Butler runs as a process where the files must be seen as an admin
sees them; the switch at midnight runs the real buffer and files in this process with a clock set by the
test."""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from butler.logs import BufferedHandler, LogBuffer, LogFiles
from tests.conftest import ButlerProcess, base_config, free_port, run_butler, write_config
from tests.test_auth import auth_config
from tests.waiting import eventually

DAY = 86400.0
#: 2026-03-01 23:59:59 UTC, a second before a new day.
BEFORE_MIDNIGHT = datetime.datetime(2026, 3, 1, 23, 59, 59, tzinfo=datetime.UTC).timestamp()


def _utc_days() -> set[str]:
    """Today in UTC, and the day after when the test might run across midnight."""
    now = time.time()
    return {time.strftime("%Y-%m-%d", time.gmtime(now)), time.strftime("%Y-%m-%d", time.gmtime(now + 60))}


def _config(port: int, **butler: Any) -> dict[str, Any]:
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"]["serverPort"] = port
    document["Butler"].update(butler)
    return document


def _log_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("butler.*.log")) if folder.is_dir() else []


def _text(folder: Path) -> str:
    return "".join(path.read_text(encoding="utf-8") for path in _log_files(folder))


def _logged(folder: Path, text: str) -> Callable[[], bool]:
    return lambda: text in _text(folder)


async def _ping(port: int, query: str = "", headers: dict[str, str] | None = None) -> int:
    async with (
        aiohttp.ClientSession() as http,
        # Sent as written, so that characters JSON must escape reach the log.
        http.get(
            URL(f"http://127.0.0.1:{port}/v4/butlerping{query}", encoded=True), headers=headers
        ) as response,
    ):
        return response.status


async def test_butler_writes_the_days_file_beside_standard_error(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    """The file is named as upstream names it, in the folder relative to the config file, and holds the
    lines standard error shows."""
    port = free_port()
    (tmp_path / "config").mkdir()
    config = write_config(
        tmp_path / "config" / "butler.yaml", _config(port, fileLogging=True, logDirectory="logs")
    )
    process = butler_process("serve", "-c", str(config))
    process.wait_for_port(port)
    assert await _ping(port, "?from=file-test") == 200
    folder = tmp_path / "config" / "logs"
    await eventually(lambda: "GET /v4/butlerping?from=file-test 200" in _text(folder), why=process.output)
    assert process.stop() == 0

    files = _log_files(folder)
    assert len(files) == 1 and files[0].name in {f"butler.{day}.log" for day in _utc_days()}, files
    assert not (tmp_path / "logs").exists()  # not relative to the working folder
    text = files[0].read_text(encoding="utf-8")
    request = re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info: GET /v4/butlerping\?from=file-test 200 [\d.]+ms "
        r"127\.0\.0\.1$",
        text,
        re.MULTILINE,
    )
    assert request is not None, text
    assert re.search(r"^\S+ info: Butler \S+ starting with config file ", text, re.MULTILINE), text
    # The same lines, in the same order, as on standard error: nothing only in one of them.
    stderr = process.output()
    assert request.group(0) in stderr
    assert [line for line in stderr.splitlines() if re.match(r"^\d{4}-", line)] == text.splitlines()


async def test_json_lines_in_the_file_and_on_standard_error(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    """``--log-format json`` overrides ``logFormat: text``; every line is one object with the fields."""
    port = free_port()
    config = write_config(
        tmp_path / "butler.yaml",
        _config(port, fileLogging=True, logDirectory=str(tmp_path / "json-logs"), logFormat="text"),
    )
    process = butler_process("serve", "-c", str(config), "--log-format", "json")
    process.wait_for_port(port)
    assert await _ping(port, '?q="quoted"%20%5C') == 200
    folder = tmp_path / "json-logs"
    await eventually(lambda: "quoted" in _text(folder), why=process.output)
    assert process.stop() == 0

    lines = _text(folder).splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) >= 3
    for entry in entries:
        assert set(entry) >= {"time", "level", "logger", "message"}, entry
        stamp = datetime.datetime.fromisoformat(entry["time"])
        assert stamp.utcoffset() == datetime.timedelta(0) and entry["time"].endswith("Z"), entry
        assert abs(stamp.timestamp() - time.time()) < 120
    start = entries[0]
    assert (start["level"], start["logger"]) == ("info", "butler")
    assert start["message"].startswith("Butler ") and "starting with config file" in start["message"]
    request = next(entry for entry in entries if "quoted" in entry["message"])
    assert request["method"] == "GET" and request["url"] == '/v4/butlerping?q="quoted"%20%5C'
    assert request["status"] == 200 and request["clientIp"] == "127.0.0.1"
    assert isinstance(request["durationMs"], float) and 0 <= request["durationMs"] < 5000
    assert (request["level"], request["logger"]) == ("info", "butler.rest")
    assert request["message"].startswith('GET /v4/butlerping?q="quoted"%20%5C 200 ')
    # Standard error has the same objects.
    stderr_objects = [json.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    assert request in stderr_objects


def _buffer(files: LogFiles, stream: io.StringIO) -> tuple[LogBuffer, logging.Logger]:
    buffer = LogBuffer(stream, files=files)
    logger = logging.getLogger(f"butler.test-files.{id(buffer)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers[:] = [BufferedHandler(buffer)]
    return buffer, logger


async def test_a_new_day_starts_a_new_file(tmp_path: Path) -> None:
    now = [BEFORE_MIDNIGHT]
    files = LogFiles(tmp_path, retention_days=30, clock=lambda: now[0])
    buffer, logger = _buffer(files, io.StringIO())
    try:
        logger.info("the last line of the day")
        buffer.flush()
        first = tmp_path / "butler.2026-03-01.log"
        await eventually(lambda: first.exists() and "the last line of the day" in first.read_text())
        now[0] += 2
        logger.info("the first line of the next day")
        buffer.flush()
        second = tmp_path / "butler.2026-03-02.log"
        await eventually(lambda: second.exists() and "the first line of the next day" in second.read_text())
    finally:
        files.close()
    assert first.read_text().splitlines()[-1].endswith(" info: the last line of the day")
    assert "next day" not in first.read_text()
    assert second.read_text().count("\n") == 1
    # Closing wrote what was queued and let go of the file: it can be removed (Windows) and reopened.
    assert [path.name for path in _log_files(tmp_path)] == ["butler.2026-03-01.log", "butler.2026-03-02.log"]


def _day(offset: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(BEFORE_MIDNIGHT + offset * DAY))


async def test_retention_deletes_only_butlers_old_files(tmp_path: Path) -> None:
    kept_anyway = [
        "notes.txt",
        f"butler.{_day(-90)}.log.bak",
        f"app.{_day(-90)}.log",
        f"butler-{_day(-90)}.log",
        "butler.2026-13-45.log",  # named like a log file, but no date
        f"other/butler.{_day(-90)}.log",
    ]
    for name in [*kept_anyway, *(f"butler.{_day(-days)}.log" for days in (40, 31, 30, 1))]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("old lines\n")
    now = [BEFORE_MIDNIGHT]
    files = LogFiles(tmp_path, retention_days=30, clock=lambda: now[0])
    buffer, logger = _buffer(files, io.StringIO())
    expected = {*kept_anyway, *(f"butler.{_day(-days)}.log" for days in (30, 1, 0))}
    try:
        await eventually(lambda: _names(tmp_path) == expected, why=lambda: _names(tmp_path))
        # Five days later, the file of 30 days ago is 35 days old: it goes at the switch to the new day.
        now[0] += 5 * DAY
        logger.info("five days later")
        buffer.flush()
        expected = (expected - {f"butler.{_day(-30)}.log"}) | {f"butler.{_day(5)}.log"}
        await eventually(lambda: _names(tmp_path) == expected, why=lambda: _names(tmp_path))
    finally:
        files.close()
    assert (tmp_path / f"butler.{_day(-1)}.log").read_text() == "old lines\n"


def _names(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


async def test_a_file_that_cannot_be_deleted_is_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    """A folder named like an old log file cannot be unlinked, as a file open in another program on
    Windows cannot: the others are deleted, logging goes on, and the trouble is one warning line."""
    (tmp_path / f"butler.{_day(-60)}.log").mkdir()
    (tmp_path / f"butler.{_day(-61)}.log").write_text("old\n")
    stream = io.StringIO()
    files = LogFiles(tmp_path, retention_days=7, clock=lambda: BEFORE_MIDNIGHT)
    buffer, logger = _buffer(files, stream)
    try:
        await eventually(lambda: not (tmp_path / f"butler.{_day(-61)}.log").exists())
        logger.info("still logging")
        buffer.flush()
        today = tmp_path / f"butler.{_day(0)}.log"
        await eventually(lambda: "still logging" in today.read_text())
    finally:
        files.close()
    buffer.flush()  # the writer thread's warning may have come after the flush above
    warning = [line for line in stream.getvalue().splitlines() if " warn: " in line]
    assert (
        len(warning) == 1 and f"old log file {tmp_path / f'butler.{_day(-60)}.log'} not removed" in warning[0]
    )
    assert "still logging" in stream.getvalue()
    assert (tmp_path / f"butler.{_day(-60)}.log").is_dir()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
async def test_a_full_disk_costs_lines_not_the_service(tmp_path: Path) -> None:
    """The day's file is /dev/full: writing it fails as on a full disk. That is one warning, lines still go
    to standard error, and the next day's file is written again."""
    (tmp_path / f"butler.{_day(0)}.log").symlink_to("/dev/full")
    now = [BEFORE_MIDNIGHT]
    stream = io.StringIO()
    files = LogFiles(tmp_path, retention_days=7, clock=lambda: now[0])
    buffer, logger = _buffer(files, stream)
    try:
        for number in range(3):
            logger.info("line %d on a full disk", number)
            buffer.flush()
            await eventually(lambda: " warn: " in stream.getvalue())
        now[0] += 2
        logger.info("the next day")
        buffer.flush()
        next_day = tmp_path / f"butler.{_day(1)}.log"
        await eventually(lambda: next_day.exists() and "the next day" in next_day.read_text())
        logger.info("and on")
        buffer.flush()
        await eventually(lambda: "and on" in next_day.read_text())
    finally:
        files.close()
    warnings = [line for line in stream.getvalue().splitlines() if " warn: " in line]
    assert len(warnings) == 1, warnings
    assert f"log lines not written to {tmp_path / f'butler.{_day(0)}.log'}: " in warnings[0]
    assert "No space left on device" in warnings[0]
    assert all(f"line {number} on a full disk" in stream.getvalue() for number in range(3))


async def test_retention_zero_keeps_every_file(tmp_path: Path) -> None:
    old = tmp_path / f"butler.{_day(-3000)}.log"
    old.write_text("very old\n")
    files = LogFiles(tmp_path, retention_days=0, clock=lambda: BEFORE_MIDNIGHT)
    buffer, logger = _buffer(files, io.StringIO())
    try:
        logger.info("a line")
        buffer.flush()
        await eventually(lambda: "a line" in (tmp_path / f"butler.{_day(0)}.log").read_text())
    finally:
        files.close()
    assert old.read_text() == "very old\n"


def test_a_folder_that_cannot_be_written_stops_start_up(tmp_path: Path) -> None:
    port = free_port()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be\n")
    config = write_config(
        tmp_path / "butler.yaml", _config(port, fileLogging=True, logDirectory="not-a-folder/logs")
    )
    result = run_butler("serve", "-c", str(config))
    assert result.returncode == 1, result.stderr
    assert f"butler: Butler.logDirectory {blocker / 'logs'} cannot be written: " in result.stderr
    assert "Traceback" not in result.stderr and "REST API listening" not in result.stderr


def test_the_keys_are_checked(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "butler.yaml",
        _config(free_port(), logFormat="xml", logRetentionDays=-1, fileLogging="yes"),
    )
    result = run_butler("config", "check", str(config))
    assert result.returncode == 1
    assert "Butler.logFormat: expected one of text, json, got 'xml'" in result.stderr, result.stderr
    assert "Butler.logRetentionDays: expected an integer 0-36500, got -1" in result.stderr
    assert "Butler.fileLogging: expected true or false" in result.stderr


async def test_secrets_stay_out_of_the_log_files(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    """Tokens sent with requests and passwords of the config file are in no log file, at the most verbose
    level, in either format."""
    port = free_port()
    document = auth_config(_config(port, fileLogging=True, logDirectory="logs"))
    document["Butler"]["mqttConfig"] = {"enable": False, "password": "mqtt-s3cr3t-pw"}
    document["Butler"]["emailNotification"] = {"smtp": {"auth": {"password": "smtp-s3cr3t-pw"}}}
    config = write_config(tmp_path / "butler.yaml", document)
    made = run_butler("token", "create", "-c", str(config), "--name", "watcher", "--scope", "status")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    folder = tmp_path / "logs"
    for log_format in ("text", "json"):
        process = ButlerProcess(
            ["serve", "-c", str(config), "-l", "silly", "--log-format", log_format], tmp_path
        )
        try:
            process.wait_for_port(port)
            assert await _ping(port, f"?run={log_format}", {"Authorization": f"Bearer {token}"}) == 200
            wrong = "bt_" + "W" * 40
            assert await _ping(port, f"?run={log_format}-wrong", {"X-Butler-Token": wrong}) == 401
            await eventually(_logged(folder, f"?run={log_format}-wrong 401"), why=process.output)
        finally:
            assert process.stop() == 0
    text = _text(folder)
    assert "?run=text 200 " in text and '"url":"/v4/butlerping?run=json"' in text
    for secret in (token, token[3:], "W" * 40, "mqtt-s3cr3t-pw", "smtp-s3cr3t-pw"):
        assert secret not in text
