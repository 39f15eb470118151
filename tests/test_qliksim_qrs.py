"""qliksim's QRS over real mutual TLS: answers, refusals, task execution, script logs, UDP events."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import aiohttp
import pytest

from qliksim.routing import Match, RouteTable
from tests.conftest import HEADERS, XRF, UdpCollector, client_tls

TASK1 = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
TASK2 = "7552d9fc-d1bb-4975-9a38-18357de531ea"
TASK3 = "fb0f317d-da91-4b86-aafa-0174ae1e8c8f"


def encoded(text: str) -> str:
    """Percent-encode as Node's URL does for a query (space and quote), leaving the rest as it is."""
    return text.replace(" ", "%20").replace("'", "%27")


async def test_about_and_lists(qrs: Any) -> None:
    status, about = await qrs("GET", "about")
    assert status == 200 and about["schemaPath"] == "About"
    status, tasks = await qrs("GET", "task?filter=" + encoded(f"id eq {TASK1}"))
    assert status == 200
    assert tasks == [
        {
            "id": TASK1,
            "name": "Reload task of App1",
            "taskType": 0,
            "enabled": True,
            "taskSessionTimeout": 1440,
            "maxRetries": 0,
            "privileges": None,
        }
    ]
    status, full = await qrs("GET", "task/full?filter=" + encoded("tags.name eq 'startTask1'"))
    assert [t["name"] for t in full] == ["Reload task of App1", "Reload task of App2", "Reload task of App3"]
    assert full[0]["schemaPath"] == "ReloadTask" and full[0]["app"]["name"] == "App1"
    assert full[0]["operational"]["lastExecutionResult"]["startTime"].startswith("1753")
    status, by_cp = await qrs(
        "GET",
        "task/full?filter="
        + encoded(
            "(customProperties.definition.name eq 'taskGroup') and (customProperties.value eq 'tasks2')"
        ),
    )
    assert [t["id"] for t in by_cp] == [TASK2]
    assert (await qrs("GET", "task/full?filter=" + encoded(f"id eq {TASK3}")))[1][0]["tags"][1][
        "name"
    ] == "startTask2"
    assert await qrs("GET", "reloadtask/count") == (200, {"value": 36})
    status, one = await qrs("GET", f"reloadtask/{TASK2}")
    assert status == 200 and one["name"] == "Reload task of App2"
    assert (await qrs("GET", "task/00000000-0000-0000-0000-000000000001"))[0] == 404
    status, ordered = await qrs("GET", "app?orderby=" + encoded("name desc"))
    names = [a["name"] for a in ordered]
    assert names == sorted(names, key=str.casefold, reverse=True)
    status, definitions = await qrs(
        "GET", "custompropertydefinition/full?filter=" + encoded("objectTypes eq 'ReloadTask'")
    )
    assert {d["name"] for d in definitions} == {"taskGroup", "ButlerAlert"}
    status, user = await qrs("GET", "user/full?filter=" + encoded("userId eq 'goran'"))
    assert user[0]["attributes"][0]["attributeType"] == "Email"


async def test_delete_app_with_its_tasks(qrs: Any) -> None:
    _, apps = await qrs("GET", "app?filter=" + encoded("name eq 'App2'"))
    app2 = apps[0]["id"]
    assert await qrs("DELETE", f"app/{app2}") == (204, "")
    assert await qrs("DELETE", f"app/{app2}") == (404, "Not found")
    assert await qrs("GET", f"app/{app2}") == (404, "Not found")
    _, tasks = await qrs("GET", "reloadtask/full")
    assert "Reload task of App2" not in [t["name"] for t in tasks] and "Reload task of App3" in [
        t["name"] for t in tasks
    ]


async def test_query_decoding(qrs: Any) -> None:
    # '+' is not a space for QRS; a bare '&' inside a value splits the query.
    assert (await qrs("GET", "app/full?filter=" + encoded("name eq 'App1'").replace("%20", "+")))[0] == 400
    assert await qrs("GET", "app/full?filter=name%20eq%20%27a&b%27") == (400, "Missing parameter value(s)")
    status, body = await qrs("GET", "task?filter=" + encoded("name eq 'unterminated"))
    assert (status, body) == (400, "Cannot parse the expression: name eq 'unterminated")
    assert (await qrs("GET", "task?filter=" + encoded("nosuchthing eq 1")))[0] == 400
    assert (await qrs("GET", "task?filter="))[0] == 200


async def test_refusals(qrs: Any, simulator: Any, site_certs: Any) -> None:
    xsrf = (403, "XSRF prevention check failed. Possible XSRF discovered.")
    assert (
        await qrs("GET", "about?xrfkey=abcdefghij123456", headers={**HEADERS, "X-Qlik-Xrfkey": "x"}) == xsrf
    )
    assert await qrs("GET", "about?xrfkey=short", headers={**HEADERS, "X-Qlik-Xrfkey": "short"}) == xsrf
    no_key = {k: v for k, v in HEADERS.items() if k != "X-Qlik-Xrfkey"}
    assert await qrs("GET", "about", headers=no_key) == xsrf
    no_user = {k: v for k, v in HEADERS.items() if k != "X-Qlik-User"}
    status, body = await qrs("GET", "about", headers=no_user)
    assert status == 403 and "X-Qlik-User" in body
    assert await qrs("GET", "nosuchthing") == (404, "No matching endpoint found")
    # Without a client certificate the TLS handshake fails.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client_tls(site_certs, with_client_cert=False))
    ) as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.get(
                f"https://127.0.0.1:{simulator.qrs_port}/qrs/about?xrfkey={XRF}", headers=HEADERS
            ) as response:
                await response.read()


async def wait_for_status(qrs: Any, task_id: str, statuses: set[int]) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            _, task = await qrs("GET", f"reloadtask/{task_id}")
            result: dict[str, Any] = task["operational"]["lastExecutionResult"]
            if result["status"] in statuses:
                return result
            await asyncio.sleep(0.02)


async def test_task_run_script_log_and_udp(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    assert (await qrs("POST", f"task/{TASK1}/start", data=b"{}"))[0] == 204
    result = await wait_for_status(qrs, TASK1, {7})
    messages = [d["message"] for d in result["details"]]
    assert messages == [
        "Changing task state from NeverStarted to Triggered",
        "Changing task state from Triggered to Started",
        "Changing task state from Started to FinishedSuccess",
    ]
    assert result["duration"] >= 0 and not result["stopTime"].startswith("1753")
    status, ticket = await qrs(
        "GET", f"reloadtask/{TASK1}/scriptlog?fileReferenceId={result['fileReferenceID']}"
    )
    assert status == 200
    status, log = await qrs("GET", f"download/reloadtask/{ticket['value']}/scriptlog.txt")
    assert status == 200 and "\r\n" in log and "Execution finished." in log
    status, ticket = await qrs("GET", f"reloadtask/{TASK1}/scriptlogfile?executionResultId={result['id']}")
    assert status == 200 and ticket["value"]

    datagram = (await asyncio.wait_for(udp_collector[0].datagrams.get(), 5)).decode()
    fields = datagram.split(";")
    assert len(fields) == 11
    assert fields[0] == "/scheduler-task-success/"
    assert fields[1:7] == [
        "sense1",
        "Reload task of App1",
        "App1",
        "INTERNAL\\sa_scheduler",
        TASK1,
        simulator.site.tasks[TASK1]["app"]["id"],
    ]
    assert fields[8] == "INFO" and "Execution State Change to FinishedSuccess" in fields[10]
    assert len(fields[7]) == 23 and fields[7][19] == ","  # log4net: yyyy-MM-dd HH:mm:ss,fff
    status, results = await qrs(
        "GET", "executionresult/full?filter=" + encoded(f"ExecutionId eq {fields[9]}")
    )
    assert [r["status"] for r in results] == [7]


async def test_failure_set_by_control_api(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{control}/tasks/{TASK2}/next-run",
            json={"outcome": "fail", "durationMs": 100, "error": "Field not found"},
        ) as response:
            assert response.status == 204
        status, session = await qrs("POST", f"task/{TASK2}/start/synchronous")
        assert status == 201 and session["value"] != "00000000-0000-0000-0000-000000000000"
        # A second start while it runs is refused, as the scheduler refuses it.
        assert (await qrs("POST", f"task/{TASK2}/start/synchronous"))[1]["value"] == (
            "00000000-0000-0000-0000-000000000000"
        )
        assert (await qrs("GET", f"executionsession/{session['value']}"))[0] == 200
        result = await wait_for_status(qrs, TASK2, {8})
        assert any(d["detailsType"] == 0 and d["message"] == "Field not found" for d in result["details"])
        assert (await qrs("GET", f"executionsession/{session['value']}"))[0] == 404
        fields = (await asyncio.wait_for(udp_collector[0].datagrams.get(), 5)).decode().split(";")
        assert fields[0] == "/scheduler-task-failed/" and "Max retries reached" in fields[10]
        async with http.get(f"{control}/calls") as response:
            calls = await response.json()
        assert calls["taskStarts"] == {TASK2: 2}
        assert calls["qrs"]["POST task/{id}/start/synchronous"] == 2


def test_route_table() -> None:
    table: RouteTable[str] = RouteTable(
        [
            ("GET", "task/count", None),
            ("GET", "<kind>/count", "count"),
            ("GET", "<kind>/{id}", "by_id"),
            ("POST", "task/{id}/start", "start"),
            ("POST", "task/start/many", "many"),
        ],
        {"kind": ("app", "task")},
    )
    # The first route that fits answers; <kind> is shown in the label by its value, {id} by its name.
    assert table.match("GET", ["app", "count"]) == Match("count", "app/count", {"kind": "app"})
    assert table.match("GET", ["task", "count"]) == Match(None, "task/count", {})
    assert table.match("GET", ["app", "x1"]) == Match("by_id", "app/{id}", {"kind": "app", "id": "x1"})
    assert table.match("POST", ["task", "t1", "start"]) == Match("start", "task/{id}/start", {"id": "t1"})
    assert table.match("POST", ["task", "start", "many"]).handler == "many"
    # No route: no handler, the path itself as the label. Method, length and limited values all count.
    for method, parts in (("GET", ["user", "count"]), ("PUT", ["app", "count"]), ("GET", ["app"])):
        assert table.match(method, parts) == Match(None, "/".join(parts), {})


async def test_task_has_no_count_route(qrs: Any) -> None:
    # Sense's task is a read-only union of the three task types: lists, /full and by id, but no /count.
    assert await qrs("GET", "task/count") == (404, "No matching endpoint found")
    assert await qrs("GET", "task/count?filter=" + encoded("name eq 'x'")) == (
        404,
        "No matching endpoint found",
    )
    assert await qrs("GET", "reloadtask/count") == (200, {"value": 36})
    assert (await qrs("GET", "task/full"))[0] == 200


async def test_requests_are_logged_with_their_status(
    qrs: Any, simulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"
    caplog.set_level(logging.INFO, logger="qliksim.access")
    assert (await qrs("GET", "no/such/route"))[0] == 404
    assert (await qrs("GET", "about"))[0] == 200
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{control}/faults/qrs", json={"next": [{"status": 503}, {"drop": 1}]}) as r:
            assert r.status == 200
        assert (await qrs("GET", "about"))[0] == 503
        with pytest.raises(aiohttp.ClientError):  # a POST, which the client does not send again
            await qrs("POST", "task/start/many", json=[])
        async with http.get(f"{control}/calls") as r:
            calls = await r.json()
        assert [(c["method"], c["path"], c["status"]) for c in calls["requests"]] == [
            ("GET", "/qrs/no/such/route", 404),
            ("GET", "/qrs/about", 200),
            ("GET", "/qrs/about", 503),
            ("POST", "/qrs/task/start/many", "dropped"),
        ]
        assert {(c["service"], c["client"]) for c in calls["requests"]} == {("qrs", "127.0.0.1")}
        async with http.post(f"{control}/calls/reset") as r:
            assert r.status == 204
        async with http.get(f"{control}/calls") as r:
            assert (await r.json())["requests"] == []
    lines = [r.getMessage() for r in caplog.records if r.name == "qliksim.access"]
    assert lines[0] == "qrs GET /qrs/no/such/route 404 127.0.0.1"
    assert lines[-1] == "qrs POST /qrs/task/start/many dropped 127.0.0.1" and len(lines) == 4


async def test_start_variants(qrs: Any, simulator: Any) -> None:
    assert (await qrs("POST", "task/start?name=" + encoded("Reload task of App3")))[0] == 204
    assert (await qrs("POST", "task/start/many", json=[TASK1, TASK2]))[0] == 204
    assert (await qrs("POST", "task/start/many", data=b"{broken"))[0] == 400
    assert (await qrs("POST", "task/00000000-0000-0000-0000-000000000001/start"))[0] == 404
    assert (await qrs("POST", "task/not-a-guid/start"))[0] == 404
    for task_id in (TASK1, TASK2, TASK3):
        await wait_for_status(qrs, task_id, {7})
    assert simulator.scheduler.started_count == {TASK3: 1, TASK1: 1, TASK2: 1}


async def test_faults(qrs: Any, simulator: Any) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{control}/faults/qrs", json={"status": 503}) as response:
            assert response.status == 200
        assert (await qrs("GET", "about"))[0] == 503
        async with http.put(f"{control}/faults/qrs", json={"status": None, "latency_ms": 100}) as response:
            assert response.status == 200
        started = asyncio.get_running_loop().time()
        assert (await qrs("GET", "about"))[0] == 200
        assert asyncio.get_running_loop().time() - started >= 0.1
        async with http.put(f"{control}/faults/qrs", json={"latency_ms": 0, "drop": 1}) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientError):
            await qrs("GET", "about")
        async with http.put(f"{control}/faults/qrs", json={"drop": 0, "down": True}) as response:
            assert response.status == 200
        with pytest.raises(aiohttp.ClientError):
            await qrs("GET", "about")
        async with http.put(f"{control}/faults/qrs", json={"nonsense": 1}) as response:
            assert response.status == 400
        async with http.delete(f"{control}/faults") as response:
            assert response.status == 204
        assert (await qrs("GET", "about"))[0] == 200


async def test_seeded_and_queued_faults(qrs: Any, simulator: Any) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"

    async def statuses(count: int) -> list[int]:
        return [(await qrs("GET", "about"))[0] for _ in range(count)]

    async with aiohttp.ClientSession() as http:
        # The same seed gives the same faults in the same order.
        async with http.put(f"{control}/faults/qrs", json={"status": 503, "ratio": 0.5, "seed": 7}) as r:
            assert r.status == 200
        first = await statuses(20)
        async with http.put(f"{control}/faults/qrs", json={"seed": 7}) as r:
            assert r.status == 200
        assert await statuses(20) == first and {503, 200} == set(first)
        # The faults of the next calls, one each; then the standing settings again.
        async with http.put(
            f"{control}/faults/qrs",
            json={"status": None, "next": [{"status": 500}, {"latency_ms": 200}]},
        ) as r:
            assert r.status == 200
        assert (await qrs("GET", "about"))[0] == 500
        started = asyncio.get_running_loop().time()
        assert (await qrs("GET", "about"))[0] == 200
        assert asyncio.get_running_loop().time() - started >= 0.2
        assert (await qrs("GET", "about"))[0] == 200
        async with http.get(f"{control}/calls") as r:
            calls = await r.json()
        # Every call is counted, faulted ones with their status; the handler saw only the others.
        assert calls["qrsReceived"]["GET about"] == {
            "calls": 43,
            "503": first.count(503) * 2,
            "200": first.count(200) * 2 + 2,
            "500": 1,
        }
        assert calls["qrs"]["GET about"] == first.count(200) * 2 + 2
        for bad in (
            {"seed": "x"},
            {"next": {"status": 500}},
            {"next": [{"down": True}]},
            {"next": [{"x": 1}]},
        ):
            async with http.put(f"{control}/faults/qrs", json=bad) as r:
                assert r.status == 400, bad


async def test_session_events(simulator: Any, udp_collector: tuple[UdpCollector, int]) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{control}/sessions", json={"userDirectory": "LAB", "userId": "goran"}
        ) as response:
            session = await response.json()
        start = (await asyncio.wait_for(udp_collector[0].datagrams.get(), 5)).decode().split(";")
        assert start[:5] == ["/proxy-session/", "sense1", "Start session", "LAB", "goran"]
        assert "Start session for user" in ";".join(start[7:])
        async with http.delete(f"{control}/sessions/{session['id']}") as response:
            assert response.status == 204
        stop = (await asyncio.wait_for(udp_collector[0].datagrams.get(), 5)).decode().split(";")
        assert stop[2] == "Stop session"


async def test_stopped_task_is_aborted(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    control = f"http://127.0.0.1:{simulator.control_port}"
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{control}/tasks/{TASK3}/next-run", json={"durationMs": 60000}) as response:
            assert response.status == 204
        assert (await qrs("POST", f"task/{TASK3}/start"))[0] == 204
        await wait_for_status(qrs, TASK3, {2})
        assert (await qrs("POST", f"task/{TASK3}/stop"))[0] == 204
        result = await wait_for_status(qrs, TASK3, {6})
        assert [d["message"] for d in result["details"]][-3:] == [
            "Changing task state from Started to AbortInitiated",
            "Changing task state from AbortInitiated to Aborting",
            "Changing task state from Aborting to Aborted",
        ]
        fields = (await asyncio.wait_for(udp_collector[0].datagrams.get(), 5)).decode().split(";")
        assert fields[0] == "/scheduler-task-aborted/" and "Execution State Change to Aborting" in fields[10]
        assert fields[8] == "WARN" and fields[5] == TASK3
