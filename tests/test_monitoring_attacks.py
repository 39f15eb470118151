"""The monitoring side against hostile input and misbehaving outside systems, over real sockets: a New Relic,
an InfluxDB and a heartbeat URL whose answers never end or hang, bodies not in the Content-Encoding they
claim, a slow /proc while metrics are scraped, InfluxDB and systeminfo answering garbage, QRS failing or
answering users and allocations of the wrong shape; and no key, token or push URL in an answer, /health,
the log or config check."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.process_collector import ProcessCollector

from butler import newrelic
from butler.config import parse_config
from butler.influx import InfluxWriter, open_client
from butler.monitors.licenses import LicenseRelease
from butler.monitors.sense import QrsSense, SystemInfo, VersionUnavailable
from butler.qlik.qrs import QrsClient, QrsError
from tests.conftest import StartButler, base_config, run_butler, write_config
from tests.receivers import Answer, Receiver, hang, status
from tests.test_influx_http import settings_for
from tests.test_messaging import slack_config
from tests.test_metrics import metrics_config, samples, scrape
from tests.test_newrelic_api import config as new_relic_config
from tests.test_task_start import butler_config, set_faults
from tests.waiting import eventually


def endless(code: int) -> Answer:
    """An answer whose body never ends."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=code)
        await response.prepare(request)
        while True:
            await response.write(b"x" * 65536)
            await asyncio.sleep(0)

    return answer


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, str]:
    async with http.post(url, json=body) as response:
        return response.status, await response.text()


# --- The REST API -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [("event", {"eventType": "e"}), ("metric", {"name": "m", "type": "gauge", "value": 1})],
)
async def test_new_relic_taking_a_post_with_an_answer_that_never_ends_is_answered_202(
    start_butler: StartButler,
    receivers: Callable[[], Awaitable[Receiver]],
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
) -> None:
    relic = await receivers()
    relic.answers = [endless(202)]
    origin = relic.url.removesuffix("/hook")
    base = await start_butler(new_relic_config(origin, f"{origin}/metric/v1", ["Prod"]))
    started = time.monotonic()
    # Taken is taken: a 500 would have the caller send it again.
    assert await post(http, f"{base}/v4/newrelic/{path}", body) == (202, "Accepted")
    assert time.monotonic() - started < newrelic.TIMEOUT_SECONDS
    assert len(relic.got) == 1


async def test_a_new_relic_that_hangs_is_a_500_in_time_that_names_no_key(
    start_butler: StartButler,
    receivers: Callable[[], Awaitable[Receiver]],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(newrelic, "TIMEOUT_SECONDS", 1.0)
    relic = await receivers()
    relic.answers = [hang(30)]
    origin = relic.url.removesuffix("/hook")
    base = await start_butler(new_relic_config(origin, f"{origin}/metric/v1", ["Prod"]))
    started = time.monotonic()
    posting = asyncio.ensure_future(post(http, f"{base}/v4/newrelic/event", {"eventType": "e"}))
    # Meanwhile Butler answers others.
    async with http.get(f"{base}/health") as response:
        assert response.status == 200
    code, text = await posting
    assert (code, json.loads(text)["message"]) == (500, "Failed posting event to New Relic")
    assert time.monotonic() - started < 3
    assert "NRII" not in text and "NRII" not in caplog.text
    assert "not taken by New Relic account Prod" in caplog.text


async def test_a_slack_message_taken_with_an_answer_that_never_ends_is_sent_once(
    start_butler: StartButler, receivers: Callable[[], Awaitable[Receiver]], http: aiohttp.ClientSession
) -> None:
    hook = await receivers()
    hook.answers = [endless(200)] * 3
    base = await start_butler(slack_config(hook.url))
    body = {"channel": "#c", "msg": "m", "from_user": "u", "emoji": ":e:"}
    async with http.put(f"{base}/v4/slackpostmessage", json=body) as response:
        assert response.status == 201
    assert len(hook.got) == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_is_not_in_its_content_encoding_is_a_400_and_the_next_request_works(
    start_butler: StartButler, http: aiohttp.ClientSession, encoding: str
) -> None:
    base = await start_butler(new_relic_config("http://127.0.0.1:9", "http://127.0.0.1:9", ["Nobody"]))
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    url = f"{base}/v4/newrelic/event"
    async with http.post(url, data=b'{"eventType": "e"}', headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["message"].startswith("Request body cannot be read as its Content-")
    # Where that body ended cannot be known: the connection is closed, and the client told so.
    assert await post(http, url, {"eventType": "e"}) == (200, "")


async def test_a_slow_proc_holds_up_no_other_request_while_metrics_are_scraped(
    start_butler: StartButler, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    collect = ProcessCollector.collect

    def slow(self: ProcessCollector) -> Any:
        time.sleep(1)  # /proc of a process with many sockets, or a busy kernel
        return collect(self)

    monkeypatch.setattr(ProcessCollector, "collect", slow)
    base = await start_butler(metrics_config())
    started = time.monotonic()
    scraping = asyncio.ensure_future(scrape(f"{base}/metrics"))
    await asyncio.sleep(0.2)
    async with http.get(f"{base}/health") as response:
        assert response.status == 200
    # The test shares Butler's event loop: a blocked loop would hold its own timer up too.
    assert time.monotonic() - started < 0.8
    status, _, text = await scraping
    assert status == 200 and "butler_info" in text
    if sys.platform == "linux":
        assert samples(text, "process_resident_memory_bytes")[()] > 0


# --- InfluxDB ---------------------------------------------------------------------------------------------


@pytest.fixture
async def influx_answers() -> AsyncIterator[tuple[int, list[Answer], list[web.Request]]]:
    """A local InfluxDB: its port, the answers to give (204 once none is left) and the requests got."""
    answers: list[Answer] = []
    got: list[web.Request] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        got.append(request)
        return await answers.pop(0)(request) if answers else web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1], answers, got
    await runner.cleanup()


async def test_points_influxdb_took_with_an_answer_that_never_ends_are_written_once(
    influx_answers: Any,
) -> None:
    port, answers, got = influx_answers
    answers.append(endless(200))
    settings = settings_for(port, version=2, v2Config={"org": "o", "bucket": "b", "token": "t"})
    writer = InfluxWriter(open_client(settings), flush_interval=0.01, first_retry=0.05)
    writer.start()
    try:
        writer.write("m", {}, {"f": 1})
        await eventually(lambda: writer.written == 1, 5)
        assert (writer.failures, len(got)) == (0, 1)
    finally:
        await writer.close()


@pytest.mark.parametrize(
    "answer",
    [{"results": [{"series": "x"}]}, {"results": [{"series": [{"values": [5]}]}]}],
)
async def test_an_influxdb_1_answering_its_set_up_queries_with_garbage_is_its_fault_not_butlers(
    influx_answers: Any, caplog: pytest.LogCaptureFixture, answer: Any
) -> None:
    port, answers, _ = influx_answers

    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer)

    answers.extend([garbage, garbage])  # CREATE DATABASE, SHOW RETENTION POLICIES
    writer = InfluxWriter(open_client(settings_for(port)), flush_interval=0.01, first_retry=0.05)
    writer.start()
    try:
        writer.write("m", {}, {"f": 1})
        await eventually(lambda: writer.failures >= 1, 5)
        assert "unexpected answer to" in str(writer.last_error)
        assert "Traceback" not in caplog.text and "unexpectedly" not in caplog.text
    finally:
        await writer.close()


# --- Monitors ---------------------------------------------------------------------------------------------


async def test_monitors_survive_qrs_faults_and_keep_their_schedule(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    document = butler_config(simulator, site_certs)
    document["Butler"]["serviceMonitor"] = {"enable": True, "frequency": "every 1 seconds"}
    document["Butler"]["qlikSenseLicense"] = {
        "serverLicenseMonitor": {"enable": True, "frequency": "every 1 seconds"}
    }
    # Every call fails: answered 500, cut off, or slower than configQRS.timeoutSeconds.
    await set_faults(simulator, next=[{"status": 500}, {"drop": 1}, {"latency_ms": 2500}] * 4)
    base = await start_butler(document)

    async def monitors() -> dict[str, Any]:
        async with http.get(f"{base}/health") as response:
            return dict((await response.json())["monitors"])

    for _ in range(100):
        state = await monitors()
        if all(m["failures"] and m["runs"] > m["failures"] and not m["lastError"] for m in state.values()):
            break
        await asyncio.sleep(0.1)
    assert all(m["failures"] and m["lastError"] is None for m in state.values()), state
    # QRS's faults, not Butler's: no traceback.
    assert "serviceMonitor failed" in caplog.text and "Traceback" not in caplog.text


def allocation(number: int, user: str, last_used: Any = "2020-01-01T00:00:00.000Z") -> dict[str, Any]:
    return {
        "id": f"a{number}",
        "lastUsed": last_used,
        "user": {"id": f"ref-{user}", "userDirectory": "CORP", "userId": user},
    }


USERS: dict[str, Any] = {
    "anna": {"userDirectory": "CORP", "userId": "anna"},
    "bert": {"userDirectory": "CORP", "userId": "bert", "tags": 5},
    "cleo": {"userDirectory": "CORP", "userId": "cleo", "customProperties": [{"definition": "x"}]},
    "dora": ["not", "a", "user"],
}


@pytest.fixture
async def release_on(
    tmp_path: Path,
) -> AsyncIterator[Callable[[list[dict[str, Any]]], Awaitable[LicenseRelease]]]:
    """A dry-run licence release asking a local QRS that has ``allocations`` of professional access."""
    allocations: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        if path == "license/professionalaccesstype/full":
            return web.json_response(allocations)
        if path.startswith("user/ref-"):
            return web.json_response(USERS[path.removeprefix("user/ref-")])
        return web.json_response([])

    app = web.Application()
    app.router.add_get("/qrs/{tail:.*}", answer)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    document = base_config()
    document["Butler"]["configQRS"] = {"host": "127.0.0.1", "port": runner.addresses[0][1], "useSSL": False}
    document["Butler"]["qlikSenseLicense"] = {"licenseRelease": {"enable": True, "dryRun": True}}
    settings = parse_config(document, base_dir=tmp_path)
    qrs = QrsClient(settings.qrs, settings.certificates)

    async def release(given: list[dict[str, Any]]) -> LicenseRelease:
        allocations[:] = given
        return LicenseRelease(settings.monitors.release, QrsSense(qrs), None)

    yield release
    await qrs.close()
    await runner.cleanup()


async def test_users_of_the_wrong_shape_are_not_released_and_stop_no_other_release(
    release_on: Callable[[list[dict[str, Any]]], Awaitable[LicenseRelease]], caplog: pytest.LogCaptureFixture
) -> None:
    release = await release_on([allocation(n, user) for n, user in enumerate(USERS)])
    await release.check()
    assert [record["userId"] for record in release.releases()] == ["anna"]
    assert release.last_run["failed"] == 3
    assert caplog.text.count("expected a list of objects as tags") == 1


async def test_an_allocation_with_a_last_use_that_is_no_time_fails_the_check_as_qrs_fault(
    release_on: Callable[[list[dict[str, Any]]], Awaitable[LicenseRelease]],
) -> None:
    release = await release_on([allocation(1, "anna"), allocation(2, "anna", last_used="yesterday")])
    with pytest.raises(QrsError, match="expected lastUsed as an ISO 8601 time"):
        await release.check()


def answering(code: int, body: bytes) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, body=body)

    return answer


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (endless(200), "more than"),
        (answering(200, b"<html>not JSON</html>"), "not JSON"),
        (answering(200, b"[1, 2]"), "not an object"),
        (answering(503, b""), "answered 503"),
    ],
)
async def test_a_systeminfo_answering_garbage_fails_the_check_in_time(
    site_certs: Any, tmp_path: Path, answer: Answer, problem: str
) -> None:
    from qliksim.server import server_tls

    app = web.Application()
    app.router.add_get("/v1/systeminfo", answer)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls(site_certs)).start()
    document = base_config()
    document["Butler"]["cert"] = {
        "clientCert": str(site_certs.client),
        "clientCertKey": str(site_certs.client_key),
        "clientCertCA": str(site_certs.root),
    }
    certificates = parse_config(document, base_dir=tmp_path).certificates
    info = SystemInfo("127.0.0.1", runner.addresses[0][1], certificates, True)
    started = time.monotonic()
    try:
        with pytest.raises(VersionUnavailable, match=problem):
            await info.fetch()
    finally:
        await info.close()
        await runner.cleanup()
    assert time.monotonic() - started < SystemInfo.TIMEOUT_SECONDS / 2


async def test_a_beat_taken_with_an_answer_that_never_ends_is_a_beat(
    start_butler: StartButler, receivers: Callable[[], Awaitable[Receiver]], http: aiohttp.ClientSession
) -> None:
    beat = await receivers()
    beat.answers = [endless(200)] * 3
    document = base_config()
    document["Butler"]["heartbeat"] = {
        "enable": True,
        "remoteURL": beat.url,
        "frequency": "every 1 seconds",
        "timeoutSeconds": 1,
    }
    base = await start_butler(document)

    async def health() -> dict[str, Any]:
        async with http.get(f"{base}/health") as response:
            return dict((await response.json())["monitors"]["heartbeat"])

    for _ in range(50):
        if (await health())["runs"] >= 2:
            break
        await asyncio.sleep(0.1)
    state = await health()
    assert (state["runs"] >= 2, state["failures"], state["lastError"]) == (True, 0, None)


async def test_a_failing_heartbeat_shows_not_its_push_key(
    start_butler: StartButler,
    receivers: Callable[[], Awaitable[Receiver]],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    beat = await receivers()
    beat.answers = [status(500)] * 3
    origin = beat.url.removesuffix("/hook")
    document = base_config()
    document["Butler"]["heartbeat"] = {
        "enable": True,
        "remoteURL": f"{origin}/api/push/s3cr3tKey?status=up",
        "frequency": "every 1 seconds",
    }
    base = await start_butler(document)
    await eventually(lambda: bool(beat.got), 5)
    await asyncio.sleep(0.1)
    async with http.get(f"{base}/health") as response:
        state = (await response.json())["monitors"]["heartbeat"]
    assert state["lastError"] == f"heartbeat to {origin}: answered 500"
    assert "s3cr3tKey" not in caplog.text


# --- Secrets ----------------------------------------------------------------------------------------------


def test_a_password_or_token_of_the_wrong_type_is_not_shown_by_config_check(tmp_path: Path) -> None:
    document = base_config()
    document["Butler"]["influxDb"] = {"enable": True, "version": 2, "v2Config": {"token": 8675309123}}
    document["Butler"]["mqttConfig"] = {"password": 424242}
    document["Butler"]["emailNotification"] = {"smtp": {"auth": {"password": 13579}}}
    checked = run_butler("config", "check", str(write_config(tmp_path / "butler.yaml", document)))
    assert checked.returncode == 1
    assert "Butler.influxDb.v2Config.token: expected a string, got a number (not shown" in checked.stderr
    assert "Butler.mqttConfig.password: expected a string or null, got a number" in checked.stderr
    assert not {"8675309123", "424242", "13579"} & set(checked.stderr.split()), checked.stderr
