"""InfluxDB output against a real InfluxDB 1.x: points written by Butler read back by InfluxQL with their
types, the database and retention policy made, InfluxDB stopped and started again, a failed reload of the
simulated site stored as upstream stores it, and the config keys checked."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from butler.config import parse_config
from butler.influx import InfluxWriter, open_client
from tests.conftest import StartButler, base_config, run_butler, udp_ports, write_config
from tests.influxdb import Influxd, influxd  # noqa: F401 (fixture)
from tests.test_events import FAILING_TASK, udp_config
from tests.test_task_start import APP1, butler_config
from tests.waiting import eventually


def influx_section(server: Influxd, **extra: Any) -> dict[str, Any]:
    return {
        "enable": True,
        "hostIP": "127.0.0.1",
        "hostPort": server.port,
        "version": 1,
        "v1Config": {"dbName": "butler", "retentionPolicy": {"name": "ten_days", "duration": "10d"}},
        **extra,
    }


def writer_for(server: Influxd, tmp_path: Path, **options: Any) -> InfluxWriter:
    document = base_config()
    document["Butler"]["influxDb"] = influx_section(
        server, tag={"static": [{"name": "butler_instance", "value": "test 1"}]}
    )
    settings = parse_config(document, base_dir=tmp_path).influx
    writer = InfluxWriter(
        open_client(settings),
        static_tags=dict(settings.static_tags),
        **{"flush_interval": 0.05, "first_retry": 0.05, "max_retry": 0.2, **options},
    )
    writer.start()
    return writer


async def test_points_are_read_back_with_their_types_and_the_database_is_made(
    influxd: Influxd,  # noqa: F811
    tmp_path: Path,
) -> None:
    writer = writer_for(influxd, tmp_path)
    text = 'a "quoted" \\ back\\slash, comma = equals\r\nsecond line'
    writer.write(
        "task run",
        {"task name": "Nightly, sales=1", "butler_instance": "mine", "empty": "", "dir": "DIR\\user"},
        {"count": 5, "ratio": 0.25, "text": text, "ok": True, "nan": float("nan"), "big": 12345678901},
    )
    writer.write("task run", {"task name": "other"}, {"count": 6, "ratio": 1.5, "text": "x", "ok": False})
    await eventually(lambda: writer.written == 2, why=writer.stats)
    await writer.close()

    assert {"name": "butler"} in influxd.rows("SHOW DATABASES", "")
    [policy] = [p for p in influxd.rows("SHOW RETENTION POLICIES ON butler") if p["name"] == "ten_days"]
    assert (policy["duration"], policy["default"]) == ("240h0m0s", True)
    types = {row["fieldKey"]: row["fieldType"] for row in influxd.rows('SHOW FIELD KEYS FROM "task run"')}
    # Every number is a float field, as upstream writes them; NaN has no form and is left out.
    assert types == {"count": "float", "ratio": "float", "text": "string", "ok": "boolean", "big": "float"}
    rows = influxd.rows('SELECT * FROM "ten_days"."task run" ORDER BY time')
    assert [(r["task name"], r["count"], r["ratio"], r["text"], r["ok"]) for r in rows] == [
        ("Nightly, sales=1", 5, 0.25, text, True),
        ("other", 6, 1.5, "x", False),
    ]
    # The point's tags win over influxDb.tag.static; an empty tag is left out.
    assert rows[0]["butler_instance"] == "mine" and rows[1]["butler_instance"] == "test 1"
    assert rows[0]["dir"] == "DIR\\user" and rows[0]["big"] == 12345678901
    assert "empty" not in {row["tagKey"] for row in influxd.rows('SHOW TAG KEYS FROM "task run"')}


async def test_an_influxdb_that_is_away_loses_nothing_inside_the_bound(
    influxd: Influxd,  # noqa: F811
    tmp_path: Path,
) -> None:
    writer = writer_for(influxd, tmp_path, buffer_size=500, batch_size=100)
    writer.write("before", {}, {"n": 0})
    await eventually(lambda: writer.written == 1, why=writer.stats)

    influxd.stop()
    for n in range(520):
        writer.write("outage", {"k": "v"}, {"n": n})
    await eventually(lambda: writer.failures >= 2, why=writer.stats)
    stats = writer.stats()
    assert (stats["buffered"], stats["dropped"], stats["written"]) == (500, 20, 1)
    assert stats["lastError"]

    influxd.start()
    await eventually(lambda: writer.written == 501, seconds=20, why=writer.stats)
    await writer.close()
    [count] = influxd.rows("SELECT count(n) FROM outage")
    assert count["count"] == 500
    numbers = [row["n"] for row in influxd.rows("SELECT n FROM outage")]
    assert numbers == list(range(500))  # in order, each once: the ones beyond the bound are the dropped


async def site_with_influx(
    start_butler: StartButler, simulator: Any, site_certs: Any, server: Influxd, **sections: Any
) -> str:
    """Butler on the simulated site, its task events going to InfluxDB; its base URL."""
    task_port, session_port = udp_ports()
    document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    document["Butler"]["influxDb"] = influx_section(server, flushIntervalSeconds=0.05, **sections)
    base = await start_butler(document)
    simulator.udp.targets = [("127.0.0.1", task_port)]
    return base


async def stored_points(server: Influxd, measurement: str) -> dict[str, Any]:
    """The one point of ``measurement``, once it is there."""

    def stored() -> list[dict[str, Any]]:
        result = server.query(f"SELECT * FROM {measurement}")
        return server.rows(f"SELECT * FROM {measurement}") if "series" in result else []

    await eventually(stored, seconds=20)
    [point] = stored()
    return point


async def test_a_failed_reload_is_stored_as_upstream_stores_it(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    influxd: Influxd,  # noqa: F811
) -> None:
    base = await site_with_influx(
        start_butler,
        simulator,
        site_certs,
        influxd,
        tag={"static": [{"name": "butler_instance", "value": "prod-1"}]},
        reloadTaskFailure={
            "enable": True,
            "tailScriptLogLines": 5,
            "tag": {
                "static": [{"name": "event_tag", "value": "failure"}],
                "dynamic": {"useAppTags": True, "useTaskTags": True},
            },
        },
    )
    task = next(t for t in simulator.site.tasks.values() if t["name"] == FAILING_TASK)
    simulator.scheduler.start(task["id"])
    point = await stored_points(influxd, "reload_task_failed")
    assert {key: point[key] for key in ("host", "user", "task_id", "task_name", "app_name", "log_level")} == {
        "host": "sense1",
        "user": "INTERNAL/sa_scheduler",
        "task_id": task["id"],
        "task_name": FAILING_TASK,
        "app_name": "Failing App",
        "log_level": "ERROR",
    }
    assert point["app_id"] == task["app"]["id"]
    assert (point["task_executionStatusNum"], point["task_exeuctionStatusText"]) == ("8", "FinishedFail")
    assert point["task_executingNodeName"]
    assert (point["butler_instance"], point["event_tag"], point["taskTag_butler"]) == (
        "prod-1",
        "failure",
        "true",
    )
    assert point["task_scriptLogTailCount"] == 5 and point["task_scriptLogSize"] > 0
    log = point["reload_log"]
    assert "\r\n-------------------------------\r\n\r\n" in log and log.endswith("Execution Failed")
    assert len(log.split("-------------------------------\r\n\r\n")[1].split("\r\n")) == 5
    assert point["scriptLog"] == log
    assert isinstance(point["task_executionDuration_sec"], float | int)
    assert point["execution_id"] and point["log_message"]

    # InfluxDB holds the point a moment before Butler has its answer: the count follows.
    async with aiohttp.ClientSession() as http:
        health: dict[str, Any] = {}

        async def written() -> bool:
            nonlocal health
            async with http.get(f"{base}/health") as answer:
                health = await answer.json()
            return bool(health["influxDb"]["written"] == 1)

        deadline = time.monotonic() + 10
        while not await written():
            assert time.monotonic() < deadline, health
            await asyncio.sleep(0.01)
    assert health["influxDb"]["buffered"] == 0 and health["influxDb"]["failures"] == 0
    assert health["udpEvents"]["consumers"]["influxdb"]["delivered"] >= 1


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"version": 4}, "Butler.influxDb.version: expected 1, 2 or 3, got 4"),
        ({"hostPort": "abc"}, "Butler.influxDb.hostPort: expected an integer 1-65535, got 'abc'"),
        (
            {"v1Config": {"retentionPolicy": {"duration": "10 days"}}},
            "Butler.influxDb.v1Config.retentionPolicy.duration: expected a duration",
        ),
        ({"version": 2, "v2Config": {"org": "o", "bucket": "b"}}, "Butler.influxDb.v2Config.token: required"),
        ({"version": 3, "v3Config": {"token": "t"}}, "Butler.influxDb.v3Config.database: required"),
        ({"bufferSize": 0}, "Butler.influxDb.bufferSize: expected an integer 1-10000000, got 0"),
        (
            {"reloadTaskSuccess": {"headScriptLines": 3}},
            "Butler.influxDb.reloadTaskSuccess.headScriptLines: unknown key",
        ),
        (
            {"tag": {"static": [{"name": "x"}]}},
            "Butler.influxDb.tag.static[0].value: required key is missing",
        ),
    ],
)
def test_bad_values_are_refused_by_config_check(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    document = base_config()
    document["Butler"]["influxDb"] = {"enable": True, **section}
    result = run_butler("config", "check", str(write_config(tmp_path / "butler.yaml", document)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stdout + result.stderr


def test_the_templates_section_is_accepted(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["influxDb"] = {"enable": False, "version": "2", "hostPort": 8086}
    result = run_butler("config", "check", str(write_config(tmp_path / "butler.yaml", document)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "influxDb" not in result.stdout + result.stderr


async def test_a_login_is_used_and_a_wrong_one_keeps_the_points(tmp_path: Path) -> None:
    server = Influxd(tmp_path / "influxdb-auth", auth=True)
    server.start()
    try:
        # The first user may be made without logging in.
        assert "error" not in server.query("CREATE USER admin WITH PASSWORD 'pa ss' WITH ALL PRIVILEGES", "")
        server.auth = ("admin", "pa ss")
        document = base_config()
        wrong = {"enable": True, "username": "admin", "password": "wrong"}
        document["Butler"]["influxDb"] = influx_section(server, v1Config={"auth": wrong})
        settings = parse_config(document, base_dir=tmp_path).influx
        refused = InfluxWriter(open_client(settings), flush_interval=0.02, first_retry=0.02, max_retry=0.05)
        refused.start()
        refused.write("m", {}, {"n": 1})
        await eventually(lambda: refused.failures >= 2, why=refused.stats)
        assert refused.stats()["buffered"] == 1 and "401" in str(refused.stats()["lastError"])
        await refused.close()

        document["Butler"]["influxDb"]["v1Config"]["auth"]["password"] = "pa ss"
        settings = parse_config(document, base_dir=tmp_path).influx
        writer = InfluxWriter(open_client(settings), flush_interval=0.02)
        writer.start()
        writer.write("m", {}, {"n": 2})
        await eventually(lambda: writer.written == 1, why=writer.stats)
        await writer.close()
        assert [row["n"] for row in server.rows("SELECT n FROM m")] == [2]
    finally:
        server.stop()


async def test_a_database_dropped_while_butler_runs_is_made_again(
    influxd: Influxd,  # noqa: F811
    tmp_path: Path,
) -> None:
    writer = writer_for(influxd, tmp_path)
    writer.write("m", {}, {"n": 1})
    await eventually(lambda: writer.written == 1, why=writer.stats)
    assert "error" not in influxd.query("DROP DATABASE butler", "")
    writer.write("m", {}, {"n": 2})
    await eventually(lambda: writer.written == 2, why=writer.stats)
    await writer.close()
    assert [row["n"] for row in influxd.rows("SELECT n FROM ten_days.m")] == [2]


async def test_a_successful_reload_is_stored_with_the_head_and_tail_of_its_log(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    influxd: Influxd,  # noqa: F811
) -> None:
    await site_with_influx(
        start_butler,
        simulator,
        site_certs,
        influxd,
        reloadTaskSuccess={
            "allReloadTasks": {"enable": True},
            "headScriptLogLines": 2,
            "tailScriptLogLines": 3,
        },
    )
    simulator.scheduler.start(APP1["taskId"])
    point = await stored_points(influxd, "reload_task_success")
    assert (point["task_id"], point["task_name"]) == (APP1["taskId"], APP1["taskName"])
    assert (point["task_executionStatusNum"], point["task_exeuctionStatusText"]) == ("7", "FinishedSuccess")
    assert point["appTag_butler"] == "true"
    assert (point["task_scriptLogHeadCount"], point["task_scriptLogTailCount"]) == (2, 3)
    log = point["reload_log"]
    head = log.split("---------- SCRIPT LOG HEAD (2 lines) ----------\r\n")[1].split("\r\n\r\n")[0]
    tail = log.split("---------- SCRIPT LOG TAIL (3 lines) ----------\r\n")[1]
    assert len(head.split("\r\n")) == 2 and len(tail.split("\r\n")) == 3
    assert point["task_executionDuration_json"].startswith('{"hours":0,')
