"""The audit log over real sockets: what a session of calls records, ``GET /v4/audit`` and its filters,
no secrets in the file, rotation, and a disk that cannot be written."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from butler.config import ENDPOINT_FLAGS
from tests.conftest import Broker, StartButler, base_config
from tests.test_files import files_config
from tests.test_messaging import next_message, subscriber, wait_connected  # noqa: F401 (a fixture)
from tests.test_task_start import APP1, butler_config
from tests.waiting import eventually

SCHEDULER_FLAGS = {flag.split(".", 1)[1]: True for flag in ENDPOINT_FLAGS if flag.startswith("scheduler.")}


async def call(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text) if text else None
        except ValueError:
            return r.status, text


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def written(path: Path, count: int, seconds: float = 5) -> list[dict[str, Any]]:
    """The records of ``path`` once it holds ``count`` (the writer thread writes a moment later)."""
    deadline = time.monotonic() + seconds
    while len(found := lines(path)) < count:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.02)
    return found


def audit_config(document: dict[str, Any], file: Path, **keys: Any) -> dict[str, Any]:
    document["Butler"]["restServerEndpointsEnable"]["audit"] = True
    document["Butler"]["auditLog"] = {"enable": True, "file": str(file), **keys}
    return document


async def test_a_session_is_recorded_and_listed(
    start_butler: StartButler, simulator: Any, site_certs: Any, tmp_path: Path
) -> None:
    folders = {name: tmp_path / name for name in ("from", "to", "delete", "qvd")}
    for folder in folders.values():
        folder.mkdir()
    (folders["from"] / "a.qvd").write_text("data")
    document = butler_config(simulator, site_certs)
    files = files_config(folders)["Butler"]
    for key in (
        "fileCopyApprovedDirectories",
        "fileMoveApprovedDirectories",
        "fileDeleteApprovedDirectories",
    ):
        document["Butler"][key] = files[key]
    document["Butler"]["restServerEndpointsEnable"] = {
        "senseStartTask": True,
        "keyValueStore": True,
        "fileCopy": True,
        "butlerping": True,
        "scheduler": SCHEDULER_FLAGS,
    }
    document["Butler"]["scheduler"] = {"enable": False, "configfile": str(tmp_path / "schedule.yaml")}
    file = tmp_path / "audit" / "audit.jsonl"
    (tmp_path / "audit").mkdir()
    base = await start_butler(audit_config(document, file))

    status, _ = await call("PUT", f"{base}/v4/reloadtask/{APP1['taskId']}/start", [])
    assert status == 200
    kv = {"key": "k1", "value": "v", "ttl": 60000}
    assert (await call("POST", f"{base}/v4/keyvalues/ns1", kv))[0] == 201
    assert (await call("GET", f"{base}/v4/keyvalues/ns1?key=k1"))[0] == 200  # read-only: not recorded
    assert (await call("GET", f"{base}/v4/butlerping"))[0] == 200  # not recorded
    assert (await call("DELETE", f"{base}/v4/keyvalues/ns1/k1"))[0] == 204
    copy = {"fromFile": str(folders["from"] / "a.qvd"), "toFile": str(folders["to"] / "a.qvd")}
    assert (await call("PUT", f"{base}/v4/filecopy", copy | {"overwrite": True}))[0] == 201
    plan = {
        "name": "nightly",
        "cronSchedule": "0 0 3 * * *",
        "timezone": "Europe/Stockholm",
        "qlikSenseTaskId": APP1["taskId"],
        "startupState": "stopped",
    }
    status, made = await call("POST", f"{base}/v4/schedules", plan)
    assert status == 201, made
    assert (await call("DELETE", f"{base}/v4/schedules/{made['id']}"))[0] == 204
    status, refused = await call("POST", f"{base}/v4/keyvalues/ns1", {"value": "v"})  # no key
    assert status == 400

    records = await written(file, 7)
    assert [(r["operation"], r["status"]) for r in records] == [
        ("startTasks", 200),
        ("addKeyValue", 201),
        ("deleteKeyValue", 204),
        ("fileCopy", 201),
        ("createSchedule", 201),
        ("deleteSchedule", 204),
        ("addKeyValue", 400),
    ]
    assert all(r["caller"] == "127.0.0.1" and r["ip"] == "127.0.0.1" for r in records)
    start, add, delete, copied, create, drop, bad = records
    assert start["target"] == {"taskId": APP1["taskId"]}
    assert start["outcome"] == {"started": [APP1["taskId"]]}
    assert add["target"] == {"namespace": "ns1", "key": "k1", "valueBytes": 1, "ttl": 60000}
    assert delete["target"] == {"namespace": "ns1", "key": "k1"}
    assert copied["target"] == {**copy, "overwrite": True}
    assert create["target"]["name"] == "nightly"
    assert create["target"]["qlikSenseTaskId"] == APP1["taskId"]
    assert drop["target"] == {"scheduleId": made["id"]}
    assert bad["target"] == {"namespace": "ns1", "valueBytes": 1} and bad["outcome"] == refused["message"]
    times = [r["time"] for r in records]
    assert times == sorted(times)

    # Newest first, and the filters.
    async def listed(query: str = "") -> list[dict[str, Any]]:
        status, answer = await call("GET", f"{base}/v4/audit{query}")
        assert status == 200, answer
        return list(answer)

    assert await listed() == records[::-1]
    assert [r["status"] for r in await listed("?operation=addKeyValue")] == [400, 201]
    assert await listed("?result=4xx") == [bad]
    assert await listed("?result=204") == [drop, delete]
    assert await listed("?result=2xx&limit=2") == [drop, create]
    assert await listed("?caller=127.0.0.1&limit=1") == [bad]
    assert await listed("?caller=10.0.0.1") == []
    assert await listed(f"?since={copied['time']}&until={create['time']}") == [create, copied]
    assert await listed(f"?until={start['time']}") == [start]

    for query, name in (
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("result=abc", "result"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
    ):
        status, answer = await call("GET", f"{base}/v4/audit?{query}")
        assert status == 400 and answer["statusCode"] == 400, (query, answer)
        assert f"querystring/{name}" in answer["message"], answer
    # The reads of the audit log are not in it.
    assert len(lines(file)) == 7


async def test_refusals_are_recorded_even_for_read_only_routes(
    start_butler: StartButler, tmp_path: Path
) -> None:
    file = tmp_path / "audit.jsonl"
    base = await start_butler(audit_config(base_config(butlerping=True), file), rate_limit=2)
    for _ in range(2):
        assert (await call("GET", f"{base}/v4/butlerping"))[0] == 200
    assert (await call("GET", f"{base}/v4/butlerping"))[0] == 429
    # A page of another web site, refused by the browser guard before any route is looked up.
    headers = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert (await call("GET", f"{base}/v4/butlerping", headers=headers))[0] == 403
    await written(file, 2)
    await asyncio.sleep(0.1)
    assert [(r["operation"], r["status"]) for r in lines(file)] == [
        ("butlerPing", 429),
        ("GET /v4/butlerping", 403),
    ]


async def test_no_secret_reaches_the_file(start_butler: StartButler, tmp_path: Path) -> None:
    file = tmp_path / "audit.jsonl"
    base = await start_butler(audit_config(base_config(keyValueStore=True, mqttPublishMessage=True), file))
    secret = "Bearer secret-token-4711"
    marker = "MARKER-value-0815"
    body = {"key": "k", "value": marker}
    status, _ = await call("POST", f"{base}/v4/keyvalues/ns", body, headers={"Authorization": secret})
    assert status == 201
    status, _ = await call(
        "POST",
        f"{base}/v4/keyvalues/ns",
        {"key": "k", "value": marker, "ttl": -1},
        headers={"Authorization": secret},
    )
    assert status == 400
    records = await written(file, 2)
    assert records[0]["target"]["valueBytes"] == len(marker)
    raw = file.read_bytes()
    assert b"secret-token" not in raw and b"Bearer" not in raw and b"Authorization" not in raw
    assert marker.encode() not in raw


async def test_rotation_keeps_files_and_reads_across_them(start_butler: StartButler, tmp_path: Path) -> None:
    file = tmp_path / "audit.jsonl"
    base = await start_butler(audit_config(base_config(keyValueStore=True), file, maxBytes=1024, keep=2))
    for index in range(30):
        assert (await call("POST", f"{base}/v4/keyvalues/ns", {"key": f"k{index}", "value": "v"}))[0] == 201
    rotated = [tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2"]
    deadline = time.monotonic() + 5
    while not (file.exists() and any('"k29"' in line for line in file.read_text().splitlines())):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert all(path.exists() for path in rotated)
    assert not (tmp_path / "audit.jsonl.3").exists()  # keep: 2
    on_disk = [r for path in (*rotated[::-1], file) for r in lines(path)]
    assert all(path.stat().st_size <= 1024 for path in (file, *rotated))
    assert len(lines(file)) < len(on_disk) < 30  # the oldest went with the third rotated file
    keys = [r["target"]["key"] for r in on_disk]
    assert keys == [f"k{i}" for i in range(30 - len(keys), 30)]

    status, listed = await call("GET", f"{base}/v4/audit?limit=1000")
    assert status == 200
    assert [r["target"]["key"] for r in listed] == keys[::-1]
    status, oldest = await call("GET", f"{base}/v4/audit?operation=addKeyValue&until={on_disk[0]['time']}")
    assert [r["target"]["key"] for r in oldest][-1] == keys[0]


async def test_an_unwritable_disk_loses_records_counted_and_logged_once(
    start_butler: StartButler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Root may write into any folder whatever its mode: a "folder" that is a regular file cannot be
    # written into by anyone.
    (tmp_path / "not-a-folder").write_text("")
    file = tmp_path / "not-a-folder" / "audit.jsonl"
    caplog.set_level(logging.INFO, logger="butler.audit")
    base = await start_butler(audit_config(base_config(keyValueStore=True), file))
    for index in range(5):
        assert (await call("POST", f"{base}/v4/keyvalues/ns", {"key": f"k{index}", "value": "v"}))[0] == 201
    deadline = time.monotonic() + 5
    while True:
        status, health = await call("GET", f"{base}/health")
        assert status == 200
        if health["audit"]["lost"] == 5:
            break
        assert time.monotonic() < deadline, health
        await asyncio.sleep(0.02)
    assert health["audit"]["written"] == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "butler.audit"]
    assert len(warnings) == 1 and "cannot be written" in warnings[0], warnings
    status, answer = await call("GET", f"{base}/v4/audit")
    assert status == 200 and answer == []


async def test_targets_are_bounded_and_v2_gets_that_change_are_recorded(
    start_butler: StartButler, simulator: Any, site_certs: Any, tmp_path: Path
) -> None:
    file = tmp_path / "audit.jsonl"
    document = butler_config(simulator, site_certs, fileCopy=True)
    base = await start_butler(audit_config(document, file))
    items = [
        {"type": "starttaskid", "payload": {"taskId": f"{i:08}-0000-0000-0000-000000000000"}}
        for i in range(25)
    ]
    assert (await call("PUT", f"{base}/v4/reloadtask/-/start", items))[0] == 200
    long_path = "/" + "d" * 300 + "/a.qvd"
    status, _ = await call("PUT", f"{base}/v4/filecopy", {"fromFile": long_path, "toFile": long_path})
    assert 400 <= status < 500
    assert (await call("GET", f"{base}/v2/senseStartTask?taskId={APP1['taskId']}"))[0] == 200
    start, copy, v2 = await written(file, 3)
    assert start["target"]["taskId"] == "-"
    assert start["target"]["taskIds"] == [item["payload"]["taskId"] for item in items[:20]]
    assert copy["operation"] == "fileCopy" and copy["status"] == status
    assert copy["target"]["fromFile"] == long_path[:200] + "…"
    assert (v2["operation"], v2["status"], v2["target"]) == (
        "v2SenseStartTask",
        200,
        {"taskId": APP1["taskId"]},
    )


async def test_mqtt_task_starts_are_recorded(
    start_butler: StartButler,
    broker: Broker,
    simulator: Any,
    site_certs: Any,
    subscriber: Any,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    file = tmp_path / "audit.jsonl"
    document = audit_config(butler_config(simulator, site_certs, mqttPublishMessage=True), file)
    document["Butler"]["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    results = await subscriber("qliksense/start_task/result")
    base = await start_butler(document)
    async with aiohttp.ClientSession() as http:
        await wait_connected(base, http)
    marker = "MARKER-mqtt-4242"
    item = {"type": "keyvaluestore", "payload": {"namespace": "n", "key": "k", "value": marker}}
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish("qliksense/start_task", APP1["taskId"])
        await next_message(results)
        await client.publish("qliksense/start_task", json.dumps({"taskId": "-", "items": [item]}))
        await next_message(results)

    # wait_connected's publishes are recorded too, as many as it needed: count only the task starts.
    def started() -> list[dict[str, Any]]:
        return [r for r in lines(file) if r["operation"] == "mqttStartTasks"]

    await eventually(lambda: len(started()) >= 2, seconds=5, why=lambda: lines(file))
    first, second = started()
    assert first["caller"] == "mqtt qliksense/start_task" and first["ip"] is None
    assert first["target"] == {"taskId": APP1["taskId"]}
    assert first["outcome"] == {"started": [APP1["taskId"]]}
    assert second["target"] == {"taskId": "-", "keyValues": ["n/k"]}
    assert marker.encode() not in file.read_bytes()


def test_the_log_is_usable_without_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from butler import audit as audit_module
    from butler.audit import AuditLog, AuditQuery, record_now
    from butler.config.settings import AuditLogSettings

    file = tmp_path / "audit.jsonl"
    settings = AuditLogSettings(enable=True, file=file, max_bytes=1024 * 1024, keep=1)
    assert record_now(settings, "tokenCreate", caller="cli root", target={"token": "ci"})
    assert not record_now(AuditLogSettings(file=file), "tokenDelete", caller="cli root")
    log = AuditLog(file, 1024 * 1024, 1)
    log.start()
    log.record("tokenDelete", caller="token admin", ip="10.0.0.5", target={"token": "ci"}, status=None)
    log.close()  # what was queued is written first
    log.record("late", caller="token admin")
    assert log.stats()["lost"] == 1
    first, second = lines(file)
    assert (first["operation"], first["caller"], first["ip"]) == ("tokenCreate", "cli root", None)
    assert (second["caller"], second["ip"]) == ("token admin", "10.0.0.5")
    assert log.read(AuditQuery(caller="token admin")) == [second]
    assert log.read(AuditQuery(caller="10.0.0.5")) == [second]
    assert log.read(AuditQuery(operation="tokenCreate")) == [first]

    # A writer that cannot keep up: what the queue cannot take is counted, never silently dropped.
    monkeypatch.setattr(audit_module, "QUEUE_SIZE", 3)
    stalled = AuditLog(file, 1024 * 1024, 1)  # not started: nothing is taken from its queue
    for _ in range(5):
        stalled.record("addKeyValue", caller=None, ip="127.0.0.1", status=201)
    assert stalled.stats()["lost"] == 2 and stalled.stats()["queued"] == 3
