"""qliksim's Engine: QIX JSON-RPC over a mutual-TLS WebSocket, as Butler's three flows use it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import client_tls

USER = {"X-Qlik-User": "UserDirectory=Internal; UserId=sa_repository"}


class Qix:
    """A minimal pipelining QIX client for the tests."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    async def send(self, handle: int, method: str, params: Any = None, **extra: Any) -> int:
        request_id = next(self.ids)
        await self.socket.send_str(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "handle": handle,
                    "method": method,
                    "params": params or [],
                    **extra,
                }
            )
        )
        return request_id

    async def receive(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self.socket.receive(), 5)
        data: dict[str, Any] = json.loads(message.data)
        return data

    async def call(self, handle: int, method: str, params: Any = None, **extra: Any) -> dict[str, Any]:
        request_id = await self.send(handle, method, params, **extra)
        while True:
            answer = await self.receive()
            if answer.get("id") == request_id:
                return answer


@pytest.fixture
async def engine(simulator: Any, site_certs: Any) -> AsyncIterator[Any]:
    sessions: list[aiohttp.ClientSession] = []

    async def connect(path: str = "/app/engineData", headers: dict[str, str] | None = None) -> Qix:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(site_certs)))
        sessions.append(session)
        socket = await session.ws_connect(
            f"wss://127.0.0.1:{simulator.engine_port}{path}", headers=USER if headers is None else headers
        )
        qix = Qix(socket)
        first = await qix.receive()
        assert first == {
            "jsonrpc": "2.0",
            "method": "OnConnected",
            "params": {"qSessionState": "SESSION_CREATED"},
        }
        return qix

    yield connect
    for session in sessions:
        await session.close()


def app_id(simulator: Any, name: str) -> str:
    return next(a["id"] for a in simulator.site.apps.values() if a["name"] == name)


async def test_list_apps(engine: Any, simulator: Any) -> None:
    qix = await engine("/")
    answer = await qix.call(-1, "GetDocList")
    entries = answer["result"]["qDocList"]
    assert len(entries) == len(simulator.site.apps)
    first = entries[0]
    assert first["qDocName"] == "App1" and first["qDocId"] == app_id(simulator, "App1")
    assert (await qix.call(-1, "EngineVersion"))["result"]["qVersion"]["qComponentVersion"]


async def test_open_and_read_an_app(engine: Any, simulator: Any) -> None:
    qix = await engine()
    missing = await qix.call(-1, "OpenDoc", ["00000000-0000-0000-0000-00000000beef", "", "", "", True])
    assert missing["error"]["code"] == 1003 and missing["error"]["message"] == "App not found"
    app1 = app_id(simulator, "App1")
    opened = await qix.call(-1, "OpenDoc", {"qDocName": app1, "qNoData": True})
    doc = opened["result"]["qReturn"]
    assert doc["qType"] == "Doc" and doc["qGenericId"] == app1
    assert (await qix.call(-1, "OpenDoc", [app1]))["error"]["code"] == 1002
    handle = doc["qHandle"]
    script = (await qix.call(handle, "GetScript"))["result"]["qScript"]
    assert "lib://DataFiles/sales.qvd" in script
    properties = (await qix.call(handle, "GetAppProperties"))["result"]["qProp"]
    assert properties["qTitle"] == "App1"

    sheet_list = await qix.call(
        handle,
        "CreateSessionObject",
        [
            {
                "qAppObjectListDef": {"qType": "sheet", "qData": {"id": "/qInfo/qId"}},
                "qInfo": {"qId": "sheetList", "qType": "sheetList"},
                "qMetaDef": {},
                "qExtendsId": "",
            }
        ],
    )
    list_handle = sheet_list["result"]["qReturn"]["qHandle"]
    layout = (await qix.call(list_handle, "GetLayout"))["result"]["qLayout"]
    items = layout["qAppObjectList"]["qItems"]
    assert [i["qMeta"]["title"] for i in items] == ["Overview", "Details"]
    sheet = await qix.call(handle, "GetObject", [items[0]["qInfo"]["qId"]])
    tree = (await qix.call(sheet["result"]["qReturn"]["qHandle"], "GetFullPropertyTree"))["result"]
    assert tree["qPropEntry"]["qProperty"]["qMetaDef"]["title"] == "Overview"
    assert (await qix.call(handle, "GetObject", ["nope"]))["result"] == {
        "qReturn": {"qType": None, "qHandle": None}
    }

    # The same session-object id twice gets a fresh id the second time.
    lists = [
        await qix.call(
            handle,
            "CreateSessionObject",
            [{"qBookmarkListDef": {"qType": kind}, "qInfo": {"qId": "BookmarkList"}}],
        )
        for kind in ("bookmark", "snapshot")
    ]
    assert lists[0]["result"]["qReturn"]["qGenericId"] != lists[1]["result"]["qReturn"]["qGenericId"]
    bookmarks = (await qix.call(lists[0]["result"]["qReturn"]["qHandle"], "GetLayout"))["result"]["qLayout"]
    assert bookmarks["qBookmarkList"]["qItems"][0]["qInfo"]["qId"] == "bm-north"

    dimensions = await qix.call(
        handle,
        "CreateSessionObject",
        [{"qDimensionListDef": {"qType": "dimension"}, "qInfo": {"qId": "DimensionList"}}],
    )
    dim_items = (await qix.call(dimensions["result"]["qReturn"]["qHandle"], "GetLayout"))["result"]["qLayout"]
    dimension = await qix.call(
        handle, "GetDimension", [dim_items["qDimensionList"]["qItems"][0]["qInfo"]["qId"]]
    )
    dim_props = (await qix.call(dimension["result"]["qReturn"]["qHandle"], "GetProperties"))["result"][
        "qProp"
    ]
    assert dim_props["qDim"]["qFieldDefs"] == ["Region"]
    connections = (await qix.call(handle, "GetConnections"))["result"]["qConnections"]
    assert connections[0]["qName"] == "DataFiles"
    assert (await qix.call(handle, "GetConnection", ["nope"]))["error"]["code"] == 2001


async def test_stories(engine: Any, simulator: Any) -> None:
    qix = await engine()
    app1 = app_id(simulator, "App1")
    handle = (await qix.call(-1, "OpenDoc", [app1]))["result"]["qReturn"]["qHandle"]
    story_list = await qix.call(
        handle,
        "CreateSessionObject",
        [{"qAppObjectListDef": {"qType": "story"}, "qInfo": {"qId": "StoryList", "qType": "StoryList"}}],
    )
    layout = (await qix.call(story_list["result"]["qReturn"]["qHandle"], "GetLayout"))["result"]["qLayout"]
    items = layout["qAppObjectList"]["qItems"]
    assert [(i["qInfo"], i["qMeta"]["title"]) for i in items] == [
        ({"qId": "8c7e2ddd-5e3b-4d6a-9e6d-73f2e2d8c301", "qType": "story"}, "Quarterly review")
    ]
    infos = (await qix.call(handle, "GetAllInfos"))["result"]["qInfos"]
    assert {"qId": "8c7e2ddd-5e3b-4d6a-9e6d-73f2e2d8c301", "qType": "story"} in infos
    story = await qix.call(handle, "GetObject", ["8c7e2ddd-5e3b-4d6a-9e6d-73f2e2d8c301"])
    assert story["result"]["qReturn"]["qGenericType"] == "story"
    tree = (await qix.call(story["result"]["qReturn"]["qHandle"], "GetFullPropertyTree"))["result"]
    assert [c["qProperty"]["qInfo"] for c in tree["qPropEntry"]["qChildren"]] == [
        {"qId": "8c7e2ddd-5e3b-4d6a-9e6d-73f2e2d8c311", "qType": "slide"}
    ]
    slide = await qix.call(handle, "GetObject", ["8c7e2ddd-5e3b-4d6a-9e6d-73f2e2d8c311"])
    assert slide["result"]["qReturn"]["qGenericType"] == "slide"


async def test_pipelined_requests_and_delta(engine: Any, simulator: Any) -> None:
    qix = await engine()
    handle = (await qix.call(-1, "OpenDoc", [app_id(simulator, "App1")]))["result"]["qReturn"]["qHandle"]
    sent = [await qix.send(handle, "GetScript") for _ in range(200)]
    answers = [await qix.receive() for _ in sent]
    assert sorted(a["id"] for a in answers) == sent
    delta = await qix.call(handle, "GetAppProperties", delta=True)
    assert delta["delta"] is True
    assert delta["result"]["qProp"][0]["op"] == "add" and delta["result"]["qProp"][0]["path"] == "/"
    assert (await qix.call(handle, "NoSuchMethod"))["error"]["code"] == -32601
    assert (await qix.call(99, "GetLayout"))["error"]["code"] == -32602


async def test_reload_through_the_engine(engine: Any, simulator: Any) -> None:
    qix = await engine("/app/" + app_id(simulator, "App2"))
    handle = (await qix.call(-1, "OpenDoc", [app_id(simulator, "App2"), "", "", "", False]))["result"][
        "qReturn"
    ]["qHandle"]
    assert (await qix.call(handle, "DoReload", [0, True]))["result"] == {"qReturn": True}
    assert (await qix.call(handle, "DoSave"))["result"] == {}
    failing = await engine()
    fail_handle = (await failing.call(-1, "OpenDoc", [app_id(simulator, "Failing App")]))["result"][
        "qReturn"
    ]["qHandle"]
    assert (await failing.call(fail_handle, "DoReload", [0, False, False]))["result"] == {"qReturn": False}
    assert simulator.engine.saves == {app_id(simulator, "App2"): 1}
    assert simulator.scheduler.reload_kinds == {
        app_id(simulator, "App2"): ["partial"],
        app_id(simulator, "Failing App"): ["full"],
    }


async def test_upgrades_are_logged_with_their_status(engine: Any, simulator: Any) -> None:
    await engine("/app/")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await engine("/not/an/engine/path")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await engine(headers={})
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{simulator.control_port}/calls") as response,
    ):
        requests = (await response.json())["requests"]
    assert [(r["service"], r["method"], r["path"], r["status"], r["client"]) for r in requests] == [
        ("engine", "GET", "/app/", 101, "127.0.0.1"),
        ("engine", "GET", "/not/an/engine/path", 404, "127.0.0.1"),
        ("engine", "GET", "/app/engineData", 403, "127.0.0.1"),
    ]


async def test_refusals(engine: Any, simulator: Any, site_certs: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await engine(headers={})
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await engine("/not/an/engine/path")
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_tls(site_certs, with_client_cert=False))
    ) as session:
        with pytest.raises(aiohttp.ClientError):
            await session.ws_connect(f"wss://127.0.0.1:{simulator.engine_port}/app/", headers=USER)
