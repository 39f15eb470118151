"""Apps through the Engine, against the simulated site over mutual TLS."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartButler, free_port
from tests.test_task_start import APP1, APP2, assert_within_deadline, butler_config, timed


def app_id(simulator: Any, name: str) -> str:
    return next(a["id"] for a in simulator.site.apps.values() if a["name"] == name)


def engine_config(simulator: Any) -> dict[str, Any]:
    """``Butler.configEngine`` for the simulated site's Engine."""
    return {
        "host": "127.0.0.1",
        "port": simulator.engine_port,
        "useSSL": True,
        "rejectUnauthorized": True,
        "timeoutSeconds": 3,
        "headers": {
            "static": [{"name": "X-Qlik-User", "value": "UserDirectory=Internal;UserId=sa_repository"}]
        },
    }


@pytest.fixture
async def butler(start_butler: StartButler, simulator: Any, site_certs: Any) -> str:
    document = butler_config(
        simulator, site_certs, senseListApps=True, senseAppDump=True, senseAppReload=True
    )
    document["Butler"]["configEngine"] = engine_config(simulator)
    return await start_butler(document)


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def test_list_apps(butler: str, simulator: Any) -> None:
    expected = [{"id": a["id"], "name": a["name"]} for a in simulator.site.apps.values()]
    for path in ("/v4/apps/list", "/v4/senselistapps", "/v2/senseListApps"):
        assert await get(butler + path) == (200, expected)


async def test_dump(butler: str, simulator: Any) -> None:
    app1 = app_id(simulator, "App1")
    status, dump = await get(f"{butler}/v4/app/{app1}/dump")
    assert status == 200
    assert list(dump)[:3] == ["properties", "loadScript", "lineage"] and list(dump)[-1] == "appId"
    assert dump["appId"] == app1 and dump["properties"]["qTitle"] == "App1"
    assert dump["loadScript"] == simulator.site.app_content[app1]["script"]
    assert [s["qProperty"]["qMetaDef"]["title"] for s in dump["sheets"]] == ["Overview", "Details"]
    assert [d["qDim"]["qFieldDefs"] for d in dump["dimensions"]] == [["Region"], ["Product"]]
    assert [m["qMeasure"]["qDef"] for m in dump["measures"]] == ["Sum(Amount)"]
    assert [v["qName"] for v in dump["variables"]] == ["vToday"]
    assert dump["bookmarks"][0]["qMetaDef"]["title"] == "North region"
    assert "qBookMark" in dump["bookmarks"][0]["qData"]
    assert [f["qName"] for f in dump["fields"]] == ["Region", "Product", "Amount"]
    assert [c["qName"] for c in dump["dataconnections"]] == ["DataFiles"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{butler}/v4/app/{app1}/dump") as response:
            size = len(await response.read())
        async with http.head(f"{butler}/v4/app/{app1}/dump") as response:
            assert response.status == 200 and response.content_length == size
            assert await response.read() == b""
    assert await get(f"{butler}/v4/senseappdump/{app1}") == (200, dump)
    assert await get(f"{butler}/v2/senseAppDump?appId={app1}") == (200, dump)
    status, body = await get(f"{butler}/v4/app/00000000-0000-4000-8000-00000000dead/dump")
    assert status == 404 and "App not found" in body["message"]
    assert simulator.engine.open_sessions == 0  # every socket closed


async def test_dump_shows_the_apps_stories(butler: str, simulator: Any) -> None:
    app1 = app_id(simulator, "App1")
    status, dump = await get(f"{butler}/v4/app/{app1}/dump")
    assert status == 200
    stories = simulator.site.app_content[app1]["stories"]
    assert stories  # the site file gives App1 a story
    assert [s["qProperty"]["qInfo"] for s in dump["stories"]] == [
        {"qId": s["id"], "qType": "story"} for s in stories
    ]
    story = dump["stories"][0]
    assert story["qProperty"]["qMetaDef"] == {
        "title": "Quarterly review",
        "description": "The quarter in three slides",
    }
    assert [c["qProperty"]["qInfo"]["qType"] for c in story["qChildren"]] == ["slide"]
    assert story["qChildren"][0]["qProperty"]["qMetaDef"]["title"] == "Highlights"
    status, other = await get(f"{butler}/v4/app/{app_id(simulator, 'App2')}/dump")
    assert status == 200 and other["stories"] == []


async def reload(butler: str, app: str, body: dict[str, Any], wait: bool = True) -> tuple[int, Any]:
    url = f"{butler}/v4/app/{app}/reload" + ("?wait=true" if wait else "")
    async with aiohttp.ClientSession() as http, http.put(url, json=body) as response:
        return response.status, await response.json()


async def test_reload_with_follow_up_tasks(butler: str, simulator: Any) -> None:
    body = {
        "reloadMode": 0,
        "partialReload": True,
        "startQSEoWTaskOnSuccess": [APP1["taskId"]],
        "startQSEoWTaskOnFailure": [APP2["taskId"]],
    }
    status, outcome = await reload(butler, app_id(simulator, "App2"), body)
    assert status == 201 and outcome["success"] is True
    assert outcome["tasksStarted"]["started"] == [APP1]
    assert simulator.scheduler.started_count == {APP1["taskId"]: 1}
    assert simulator.engine.saves == {app_id(simulator, "App2"): 1}
    assert simulator.scheduler.reload_kinds[app_id(simulator, "App2")] == ["partial"]

    status, outcome = await reload(butler, app_id(simulator, "Failing App"), body)
    assert status == 201 and outcome["success"] is False
    assert outcome["tasksStarted"]["started"] == [APP2]
    assert simulator.engine.saves.get(app_id(simulator, "Failing App")) is None

    # Without wait the answer comes once the app is open; the reload goes on.
    status, outcome = await reload(butler, app_id(simulator, "App3"), {}, wait=False)
    assert (status, outcome) == (201, {"appId": app_id(simulator, "App3")})
    for _ in range(100):
        if simulator.engine.saves.get(app_id(simulator, "App3")):
            break
        await asyncio.sleep(0.05)
    assert simulator.engine.saves.get(app_id(simulator, "App3")) == 1


async def test_reload_errors(butler: str, simulator: Any) -> None:
    status, body = await reload(butler, "00000000-0000-4000-8000-00000000dead", {})
    assert status == 404 and "App not found" in body["message"]
    # An id is one segment of the Engine's URL, whatever it holds: not found, not "Engine unreachable".
    status, body = await reload(butler, "a%2Fb%3Fc", {})
    assert status == 404 and "App not found: a/b?c" in body["message"]
    status, body = await reload(butler, APP1["taskId"], {"reloadMode": "full"})
    assert (status, body["message"]) == (400, "body/reloadMode must be integer")
    async with aiohttp.ClientSession() as http, http.put(f"{butler}/v4/app/x/reload") as response:
        assert response.status == 415 or (await response.json())["message"] == "body must be object"


async def test_engine_down_and_slow(butler: str, simulator: Any) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}/faults/engine"
    async with aiohttp.ClientSession() as http:
        async with http.put(control, json={"down": True}) as r:
            assert r.status == 200
        status, body = await get(f"{butler}/v4/apps/list")
        assert status == 502 and "Engine" in body["message"]
        async with http.put(control, json={"down": False, "latency_ms": 4000}) as r:
            assert r.status == 200
        status, body = await get(f"{butler}/v4/app/{app_id(simulator, 'App1')}/dump")
        assert status == 504
        async with http.put(control, json={"latency_ms": 0}) as r:
            assert r.status == 200
        assert (await get(f"{butler}/v4/apps/list"))[0] == 200


async def engine_latency(simulator: Any, latency_ms: int) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"http://127.0.0.1:{simulator.control_port}/faults/engine", json={"latency_ms": latency_ms}
        ) as r,
    ):
        assert r.status == 200


@pytest.mark.parametrize(
    ("latency_ms", "method", "path"),
    [
        # The connection alone takes longer than timeoutSeconds.
        (2500, "GET", "/v4/apps/list"),
        # Each call answers in time, the calls of the dump together do not.
        (500, "GET", "/v4/app/{app}/dump"),
        # Connecting, EngineVersion and OpenDoc answer in time each, not together.
        (800, "PUT", "/v4/app/{app}/reload"),
    ],
)
async def test_engine_deadline(
    start_butler: StartButler, simulator: Any, site_certs: Any, latency_ms: int, method: str, path: str
) -> None:
    document = butler_config(
        simulator, site_certs, senseListApps=True, senseAppDump=True, senseAppReload=True
    )
    document["Butler"]["configEngine"] = engine_config(simulator) | {"timeoutSeconds": 2}
    base = await start_butler(document)
    await engine_latency(simulator, latency_ms)
    url = base + path.format(app=app_id(simulator, "App1"))
    async with aiohttp.ClientSession() as http:
        elapsed, response = await timed(http.request(method, url, json={} if method == "PUT" else None))
        async with response:
            assert response.status == 504
            assert "within the 2 s allowed" in (await response.json())["message"]
    assert_within_deadline(elapsed, 2)
    await engine_latency(simulator, 0)
    for _ in range(50):  # the simulator ends its side of the closed sockets
        if simulator.engine.open_sessions == 0:
            break
        await asyncio.sleep(0.1)
    assert simulator.engine.open_sessions == 0
    assert simulator.engine.saves == {}


@pytest.mark.parametrize("greets", [True, False])
async def test_engine_that_stops_answering(
    start_butler: StartButler, simulator: Any, site_certs: Any, greets: bool
) -> None:
    """An Engine that accepts the socket and then answers nothing, not even the close frame: the 504
    still comes within the deadline, and Butler cuts the connection instead of leaving it open."""
    connections: list[asyncio.Transport] = []

    async def frozen(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        if greets:
            await socket.send_str('{"jsonrpc":"2.0","method":"OnConnected","params":{}}')
        assert isinstance(request.transport, asyncio.Transport)
        connections.append(request.transport)
        await asyncio.sleep(30)  # reads nothing, so the close frame is never answered
        return socket

    application = web.Application()
    application.router.add_get("/{path:.*}", frozen)
    runner = web.AppRunner(application, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        document = butler_config(
            simulator, site_certs, senseListApps=True, senseAppDump=True, senseAppReload=True
        )
        document["Butler"]["configEngine"] = {
            "host": "127.0.0.1",
            "port": port,
            "useSSL": False,
            "timeoutSeconds": 2,
        }
        base = await start_butler(document)
        async with aiohttp.ClientSession() as http:
            for method, path in [
                ("GET", "/v4/apps/list"),
                ("GET", "/v4/app/a/dump"),
                ("PUT", "/v4/app/a/reload"),
            ]:
                request = http.request(method, base + path, json={} if method == "PUT" else None)
                elapsed, response = await timed(request)
                async with response:
                    assert response.status == 504
                    assert "within the 2 s allowed" in (await response.json())["message"]
                assert_within_deadline(elapsed, 2)
        await asyncio.sleep(0.2)
        assert len(connections) == 3 and all(c.is_closing() for c in connections)
    finally:
        await runner.cleanup()


async def test_dropped_engine_socket_mid_dump(butler: str, simulator: Any) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}/faults/engine"
    async with aiohttp.ClientSession() as http:
        async with http.put(control, json={"drop": 0.05}) as r:
            assert r.status == 200
        statuses = []
        for _ in range(5):
            status, _ = await get(f"{butler}/v4/app/{app_id(simulator, 'App1')}/dump")
            statuses.append(status)
        async with http.put(control, json={"drop": 0}) as r:
            assert r.status == 200
    assert set(statuses) <= {200, 502} and 502 in statuses
    await asyncio.sleep(0.2)
    assert simulator.engine.open_sessions == 0  # no socket left open on either side


async def test_app_deleted_mid_dump(butler: str, simulator: Any, qrs: Any) -> None:
    app3 = app_id(simulator, "App3")
    control = f"http://127.0.0.1:{simulator.control_port}/faults/engine"
    async with aiohttp.ClientSession() as http:
        async with http.put(control, json={"latency_ms": 150}) as r:
            assert r.status == 200
        dump = asyncio.ensure_future(get(f"{butler}/v4/app/{app3}/dump"))
        for _ in range(100):  # until the dump has the app open
            if any(s.doc is not None for s in simulator.engine.sessions):
                break
            await asyncio.sleep(0.02)
        assert await qrs("DELETE", f"app/{app3}") == (204, "")
        status, body = await dump
        async with http.put(control, json={"latency_ms": 0}) as r:
            assert r.status == 200
    assert status == 404
    assert "deleted or replaced" in body["message"] and "Invalid handle" in body["message"]
    assert app3 not in [a["id"] for a in (await get(f"{butler}/v4/apps/list"))[1]]
    await asyncio.sleep(0.2)
    assert simulator.engine.open_sessions == 0
