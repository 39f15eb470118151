"""The InfluxDB clients and writer against local HTTP receivers: the exact requests of InfluxDB 2.x and 3.x,
answers of 503, 400 and dropped connections, a receiver that hangs; the exact line protocol; the points of
each task type."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from butler.config import parse_config
from butler.config.influx import InfluxSettings
from butler.events.parsing import TaskEvent
from butler.events.task_outcomes import TaskOutcome
from butler.influx import InfluxWriter, open_client
from butler.influx.line_protocol import encode
from butler.influx.task_outcomes import task_point
from tests.conftest import base_config
from tests.waiting import eventually


class InfluxReceiver:
    """Stands in for InfluxDB's HTTP API: records each request, answers as told (204 by default)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str], str]] = []
        self.answers: list[int | float] = []  # a status, or seconds to hang
        self.times: list[float] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.times.append(time.monotonic())
        self.requests.append((request.method, request.path, dict(request.query), dict(request.headers), body))
        if request.path == "/query":
            return web.json_response({"results": [{"statement_id": 0}]})
        answer = self.answers.pop(0) if self.answers else 204
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = 204
        if answer == -1:  # the connection closed without an answer
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=204)
        return web.Response(status=answer, text="" if answer == 204 else f'{{"error":"answer {answer}"}}')

    def lines(self) -> list[str]:
        return [line for *_, body in self.requests for line in body.split("\n")]


@pytest.fixture
async def receiver() -> AsyncIterator[InfluxReceiver]:
    got = InfluxReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", got.handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.port = runner.addresses[0][1]
    yield got
    await runner.cleanup()


def settings_for(port: int, **section: Any) -> InfluxSettings:
    document = base_config()
    document["Butler"]["influxDb"] = {"enable": True, "hostIP": "127.0.0.1", "hostPort": port, **section}
    return parse_config(document, base_dir=Path()).influx


Writer = Callable[..., Awaitable[InfluxWriter]]


@pytest.fixture
async def writer() -> AsyncIterator[Writer]:
    made: list[InfluxWriter] = []

    async def make(settings: InfluxSettings, **options: Any) -> InfluxWriter:
        made.append(
            InfluxWriter(
                open_client(settings),
                static_tags=dict(settings.static_tags),
                **{"flush_interval": 0.02, "first_retry": 0.02, "max_retry": 0.1, **options},
            )
        )
        made[-1].start()
        return made[-1]

    yield make
    for one in made:
        await one.close()


LINE = re.compile(r"cpu,host=a\\ b,region=eu load=0.5,n=3,ok=true,s=\"x\\\"y\" (\d{19})")


async def test_v2_request(receiver: InfluxReceiver, writer: Writer) -> None:
    settings = settings_for(
        receiver.port, version=2, v2Config={"org": "my org", "bucket": "b&1", "token": "t0k"}
    )
    influx = await writer(settings)
    before = time.time_ns()
    influx.write("cpu", {"region": "eu", "host": "a b"}, {"load": 0.5, "n": 3, "ok": True, "s": 'x"y'})
    await eventually(lambda: influx.written == 1)
    [(method, path, query, headers, body)] = receiver.requests
    assert (method, path) == ("POST", "/api/v2/write")
    assert query == {"org": "my org", "bucket": "b&1", "precision": "ns"}
    assert headers["Authorization"] == "Token t0k"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    match = LINE.fullmatch(body)
    assert match is not None, body
    assert before <= int(match[1]) <= time.time_ns()


async def test_v3_request(receiver: InfluxReceiver, writer: Writer) -> None:
    settings = settings_for(
        receiver.port,
        version=3,
        v3Config={"database": "butler", "token": "s3cret", "writeTimeout": 5000},
        tag={"static": [{"name": "region", "value": "us"}]},
    )
    influx = await writer(settings)
    influx.write("cpu", {"region": "eu", "host": "a b"}, {"load": 0.5, "n": 3, "ok": True, "s": 'x"y'})
    influx.write("cpu", {"host": "a b"}, {"load": 0.5, "n": 3, "ok": True, "s": 'x"y'})
    await eventually(lambda: influx.written == 2)
    [(method, path, query, headers, body)] = receiver.requests
    assert (method, path) == ("POST", "/api/v3/write_lp")
    assert query == {"db": "butler", "precision": "nanosecond"}
    assert headers["Authorization"] == "Bearer s3cret"
    first, second = body.split("\n")
    assert LINE.fullmatch(first) is not None, first
    assert second.startswith("cpu,host=a\\ b,region=us ")  # the static tag where the point has none
    # Timestamps increase, so that two points of one series never overwrite each other.
    assert int(first.rsplit(" ", 1)[1]) < int(second.rsplit(" ", 1)[1])


async def test_v1_request_with_login(receiver: InfluxReceiver, writer: Writer) -> None:
    settings = settings_for(
        receiver.port,
        version=1,
        v1Config={
            "auth": {"enable": True, "username": "joe", "password": "pw"},
            "dbName": 'my "db"',
            "retentionPolicy": {"name": "rp", "duration": "1w2d"},
        },
    )
    influx = await writer(settings)
    influx.write("m", {}, {"f": 1})
    await eventually(lambda: influx.written == 1)
    statements = [query.get("q") for _, path, query, _, _ in receiver.requests if path == "/query"]
    assert statements == [
        'CREATE DATABASE "my \\"db\\""',
        'SHOW RETENTION POLICIES ON "my \\"db\\""',
        'CREATE RETENTION POLICY "rp" ON "my \\"db\\"" DURATION 1w2d REPLICATION 1 DEFAULT',
    ]
    (method, path, query, headers, body) = receiver.requests[-1]
    assert (method, path, query) == ("POST", "/write", {"db": 'my "db"', "rp": "rp", "precision": "ns"})
    assert headers["Authorization"] == "Basic am9lOnB3"
    assert re.fullmatch(r"m f=1 \d{19}", body)


async def test_failures_are_retried_and_refused_batches_dropped(
    receiver: InfluxReceiver, writer: Writer
) -> None:
    receiver.answers = [503, -1, 503, 204, 400]
    settings = settings_for(receiver.port, version=2, v2Config={"org": "o", "bucket": "b", "token": "t"})
    influx = await writer(settings, batch_size=2)
    for n in range(3):
        influx.write("m", {}, {"n": n})
    await eventually(lambda: influx.written + influx.rejected == 3, why=influx.stats)
    stats = influx.stats()
    assert (stats["failures"], stats["written"], stats["rejected"], stats["buffered"]) == (3, 2, 1, 0)
    assert stats["lastError"].startswith("400 Bad Request")
    # The first batch was sent four times, unchanged; the one InfluxDB refused once.
    bodies = [body for *_, body in receiver.requests]
    assert len(bodies) == 5 and len(set(bodies[:4])) == 1 and bodies[4].startswith("m n=2 ")
    # Each retry waits longer: 0.02 s, then 0.04, then 0.08 (with 20 % jitter), the longest 0.1.
    gaps = [later - earlier for earlier, later in zip(receiver.times[:3], receiver.times[1:4], strict=True)]
    assert [round(gap, 2) >= least for gap, least in zip(gaps, (0.016, 0.032, 0.064), strict=True)] == [
        True
    ] * 3


async def test_a_slow_influxdb_holds_up_neither_the_loop_nor_the_caller(
    receiver: InfluxReceiver, writer: Writer
) -> None:
    receiver.answers = [3.0]
    settings = settings_for(receiver.port, version=2, v2Config={"org": "o", "bucket": "b", "token": "t"})
    influx = await writer(settings, batch_size=100, buffer_size=20_000)
    influx.write("m", {}, {"n": -1})
    await eventually(lambda: len(receiver.requests) == 1)  # the first write hangs
    lags: list[float] = []

    async def ticker() -> None:
        for _ in range(50):
            started = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - started - 0.01)

    ticking = asyncio.create_task(ticker())
    slowest = total = 0.0
    for n in range(10_000):
        started = time.perf_counter()
        influx.write("m", {"k": "v"}, {"n": n, "text": "some words"})
        took = time.perf_counter() - started
        slowest, total = max(slowest, took), total + took
        if n % 500 == 0:
            await asyncio.sleep(0)
    await ticking
    # InfluxDB takes 3 s to answer: neither a write nor the loop waits for it. The bounds are far above
    # what is measured (about 20 µs a write), as the machine may be busy with other work.
    assert total / 10_000 < 0.0005 and slowest < 0.1, (total, slowest)
    assert max(lags) < 0.1, max(lags)
    assert influx.stats()["buffered"] == 10_001
    await eventually(lambda: influx.written == 10_001, seconds=20, why=influx.stats)


async def test_close_writes_what_is_buffered(receiver: InfluxReceiver) -> None:
    settings = settings_for(receiver.port, version=3, v3Config={"database": "d", "token": "t"})
    influx = InfluxWriter(open_client(settings), flush_interval=60)
    influx.start()
    influx.write("m", {}, {"n": 1})
    await asyncio.sleep(0.05)
    assert receiver.requests == []
    await influx.close()
    assert [line.split(" ")[:2] for line in receiver.lines()] == [["m", "n=1"]]


async def test_close_gives_up_at_its_deadline(receiver: InfluxReceiver) -> None:
    receiver.answers = [10.0]
    settings = settings_for(receiver.port, version=3, v3Config={"database": "d", "token": "t"})
    influx = InfluxWriter(open_client(settings), flush_interval=60, close_seconds=0.3)
    influx.start()
    influx.write("m", {}, {"n": 1})
    started = time.monotonic()
    await influx.close()
    assert time.monotonic() - started < 1
    assert influx.stats()["buffered"] == 1


def test_line_protocol_escaping() -> None:
    line = encode(
        "my measurement,x=1",
        {"tag key,=": "v a,l=ue", "z": "trailing\\", "empty": "", "nl": "a\nb", "dir": "DIR\\user"},
        {"f k": 'say "hi" \\ there\nnext', "i": 42, "f": -1.5e-7, "b": False, "nan": float("inf")},
        1_700_000_000_000_000_000,
    )
    assert line == (
        "my\\ measurement\\,x=1,dir=DIR\\user,nl=a\\nb,tag\\ key\\,\\==v\\ a\\,l\\=ue,z=trailing "
        'f\\ k="say \\"hi\\" \\\\ there\nnext",i=42,f=-1.5e-07,b=false 1700000000000000000'
    )
    assert encode("m", {}, {"nan": float("nan")}, 1) is None
    assert encode("m\\", {"t\\": "v"}, {"f\\": 1}, 1) == "m,t=v f=1 1"


def outcome(task_type: int, kind: str, **task: Any) -> TaskOutcome:
    event = TaskEvent(
        outcome=kind,
        message_type="/scheduler-task-failed/",
        host="sense1",
        task_name="Sync users",
        app_name="",
        user="INTERNAL\\sa_scheduler",
        task_id="t-1",
        app_id="",
        timestamp="2026-11-24 10:00:00,123",
        level="INFO",
        execution_id="e-1",
        message="done",
    )
    execution = {
        "executingNodeName": "central",
        "status": 7 if kind == "success" else 8,
        "startTime": "2026-11-24T10:00:00.000Z",
        "stopTime": "2026-11-24T10:01:05.000Z",
        "duration": 3_725_000,
        "details": [],
    }
    return TaskOutcome(
        event,
        task={"taskType": task_type, "tags": [{"name": "nightly"}], **task},
        execution_result=execution,
    )


def test_points_of_each_task_type() -> None:
    on = {"enable": True, "tag": {"static": [{"name": "kind", "value": "sync"}]}}
    settings = settings_for(
        1,
        userSyncTaskSuccess=on,
        externalProgramTaskFailure={"enable": True, "tag": {"dynamic": {"useTaskTags": False}}},
        distributeTaskFailure={"enable": True},
        reloadTaskSuccess={"enable": True, "byCustomProperty": {"enable": True}},
    )
    point = task_point(outcome(2, "success"), settings)
    assert point is not None
    measurement, tags, fields = point
    assert measurement == "user_sync_task_success"
    assert tags == {
        "kind": "sync",
        "taskTag_nightly": "true",
        "host": "sense1",
        "user": "INTERNAL/sa_scheduler",
        "task_id": "t-1",
        "task_name": "Sync users",
        "log_level": "INFO",
        "task_executingNodeName": "central",
        "task_executionStatusNum": "7",
        "task_exeuctionStatusText": "FinishedSuccess",
    }
    assert fields["task_executionDuration_json"] == '{"hours":1,"minutes":2,"seconds":5}'
    assert (fields["task_executionDuration_sec"], fields["task_executionDuration_h"]) == (
        3725,
        1 + 2 / 60 + 5 / 3600,
    )
    assert fields["task_executionStartTime_json"].startswith('{"startTimeUTC":"2026-11-24T10:00:00.000Z",')

    # External program failures: the event alone, as upstream.
    point = task_point(outcome(1, "failed"), settings)
    assert point is not None and point[0] == "external_program_task_failed"
    assert "taskTag_nightly" not in point[1] and "task_executingNodeName" not in point[1]
    assert set(point[2]) == {"log_timestamp", "execution_id", "log_message"}
    # Distribution failures carry the execution result.
    point = task_point(outcome(3, "failed"), settings)
    assert point is not None and point[1]["task_exeuctionStatusText"] == "FinishedFail"
    # Off by default; aborted tasks are not written.
    assert task_point(outcome(4, "success"), settings) is None
    assert task_point(outcome(0, "aborted"), settings) is None
    # A successful reload: only for tasks with the custom property's enabled value.
    assert task_point(outcome(0, "success"), settings) is None
    cp = [{"definition": {"name": "Butler_SuccessReloadTask_InfluxDB"}, "value": "Yes"}]
    point = task_point(outcome(0, "success", customProperties=cp), settings)
    assert point is not None and point[0] == "reload_task_success"
    assert point[2]["scriptLog"] == "Script log not available" and point[2]["task_scriptLogHeadCount"] == 0


async def test_batches_go_when_full_or_at_the_interval(receiver: InfluxReceiver, writer: Writer) -> None:
    settings = settings_for(receiver.port, version=3, v3Config={"database": "d", "token": "t"})
    influx = await writer(settings, batch_size=3, flush_interval=0.5)
    started = time.monotonic()
    for n in range(4):
        influx.write("m", {}, {"n": n})
    await eventually(lambda: influx.written == 3)
    assert time.monotonic() - started < 0.4  # a full batch does not wait
    await eventually(lambda: influx.written == 4)
    assert time.monotonic() - started >= 0.5  # the rest waits for the interval
    assert [body.count("\n") + 1 for *_, body in receiver.requests] == [3, 1]


async def test_a_fault_in_the_client_does_not_end_the_writer(receiver: InfluxReceiver) -> None:
    settings = settings_for(receiver.port, version=3, v3Config={"database": "d", "token": "t"})
    client = open_client(settings)
    real_write = client.write
    calls = 0

    async def faulty(body: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        await real_write(body)

    client.write = faulty  # type: ignore[method-assign]
    influx = InfluxWriter(client, flush_interval=0.01, first_retry=0.01)
    influx.start()
    influx.write("m", {}, {"n": 1})
    await eventually(lambda: influx.written == 1, why=influx.stats)
    assert influx.stats()["failures"] == 1 and "a bug" in str(influx.stats()["lastError"])
    await influx.close()
