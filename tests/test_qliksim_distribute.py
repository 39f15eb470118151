"""qliksim's distribution tasks over real mutual TLS: how QRS lists them, their run through the
distribution states, and the single ``/scheduler-distribute/`` datagram Butler's distribute alerts hang on."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from qliksim.site import SiteError, build_site
from tests.conftest import UdpCollector

DISTRIBUTE = "d15a7b10-0000-4000-8000-000000000003"
NAME = "Distribute Sales to Cloud"
NOT_STARTED = "1753-01-01T00:00:00.000Z"


def encoded(text: str) -> str:
    return text.replace(" ", "%20").replace("'", "%27")


async def watch(qrs: Any, until: set[int]) -> tuple[list[int], dict[str, Any]]:
    """The statuses ``reloadtask/{id}`` served, in order without repeats, up to one in ``until``."""
    seen: list[int] = []
    async with asyncio.timeout(10):
        while True:
            status, task = await qrs("GET", f"reloadtask/{DISTRIBUTE}")
            assert status == 200
            result: dict[str, Any] = task["operational"]["lastExecutionResult"]
            if not seen or seen[-1] != result["status"]:
                seen.append(result["status"])
            if result["status"] in until:
                return seen, result
            await asyncio.sleep(0.01)


async def next_run(simulator: Any, body: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.put(f"http://127.0.0.1:{simulator.control_port}/tasks/{DISTRIBUTE}/next-run", json=body) as r,
    ):
        assert r.status == 204


async def only_datagram(udp_collector: tuple[UdpCollector, int]) -> list[str]:
    datagrams = udp_collector[0].datagrams
    fields = (await asyncio.wait_for(datagrams.get(), 5)).decode().split(";")
    await asyncio.sleep(0.2)  # a second datagram (say, a reload task's failed event) would be here by now
    assert datagrams.empty()
    return fields


def assert_distribute_datagram(fields: list[str], execution_id: str) -> None:
    assert len(fields) == 11
    assert fields[:7] == [
        "/scheduler-distribute/",
        "sense1",
        NAME,
        "",
        "INTERNAL\\sa_scheduler",
        DISTRIBUTE,
        "",
    ]
    assert len(fields[7]) == 23 and fields[7][19] == ","  # log4net: yyyy-MM-dd HH:mm:ss,fff
    assert fields[8:] == ["INFO", execution_id, "Exiting execute of Distribute task request."]


async def test_listed_as_a_task_not_as_a_reload_task(qrs: Any) -> None:
    status, condensed = await qrs("GET", "task?filter=" + encoded(f"id eq {DISTRIBUTE}"))
    assert (status, condensed) == (
        200,
        [
            {
                "id": DISTRIBUTE,
                "name": NAME,
                "taskType": 3,
                "enabled": True,
                "taskSessionTimeout": 1440,
                "maxRetries": 0,
                "privileges": None,
            }
        ],
    )
    status, full = await qrs("GET", "task/full?filter=" + encoded("taskType eq 3"))
    assert status == 200 and [t["id"] for t in full] == [DISTRIBUTE]
    task = full[0]
    assert task["schemaPath"] == "DistributionTask" and "app" not in task
    assert [t["name"] for t in task["tags"]] == ["distribute"]
    assert task["operational"]["lastExecutionResult"]["status"] == 0
    assert [
        t["id"] for t in (await qrs("GET", "task/full?filter=" + encoded("taskType eq distribute")))[1]
    ] == [DISTRIBUTE]
    _, every = await qrs("GET", "task")
    assert DISTRIBUTE in [t["id"] for t in every]
    _, reload_tasks = await qrs("GET", "reloadtask/full")
    assert reload_tasks and DISTRIBUTE not in [t["id"] for t in reload_tasks]
    assert all(t["taskType"] == 0 for t in reload_tasks)
    assert DISTRIBUTE not in [t["id"] for t in (await qrs("GET", "reloadtask"))[1]]
    assert await qrs("GET", "reloadtask/count?filter=" + encoded(f"id eq {DISTRIBUTE}")) == (
        200,
        {"value": 0},
    )
    # Served by id all the same, where Butler reads a distribution task's last result.
    status, by_id = await qrs("GET", f"reloadtask/{DISTRIBUTE}")
    assert status == 200 and by_id == task
    # Only distribution tasks get that leniency: other task types stay out of reloadtask/{id}.
    _, external = await qrs("GET", "task?filter=" + encoded("taskType eq 1"))
    assert (await qrs("GET", f"reloadtask/{external[0]['id']}"))[0] == 404


async def test_failed_run_states_result_and_one_datagram(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    # time_scale 0.01: 5 s queued and 10 s running take 50 ms and 100 ms.
    await next_run(
        simulator,
        {"outcome": "fail", "queuedMs": 5000, "durationMs": 10000, "error": "Distribution to cloud failed"},
    )
    assert await qrs("POST", f"task/{DISTRIBUTE}/start", data=b"{}") == (204, "")
    seen, result = await watch(qrs, {6, 7, 8})
    assert seen == [13, 14, 8]
    assert [(d["detailsType"], d["message"]) for d in result["details"]] == [
        (2, "Changing task state from NeverStarted to DistributionQueue"),
        (2, "Changing task state from DistributionQueue to DistributionRunning"),
        (0, "Distribution to cloud failed"),
        (2, "Changing task state from DistributionRunning to FinishedFail"),
    ]
    assert result["executingNodeName"] == "sense1" and result["startTime"] != NOT_STARTED
    assert result["stopTime"] > result["startTime"] and result["duration"] >= 140
    assert result["scriptLogAvailable"] is False and result["scriptLogSize"] == 0
    fields = await only_datagram(udp_collector)
    assert_distribute_datagram(fields, fields[9])
    _, results = await qrs("GET", "executionresult/full?filter=" + encoded(f"ExecutionId eq {fields[9]}"))
    assert len(results) == 1
    assert results[0]["id"] == result["id"] and results[0]["status"] == 8
    assert (
        results[0]["taskID"] == DISTRIBUTE and results[0]["appID"] == "00000000-0000-0000-0000-000000000000"
    )
    # The full task carries the same final result, as Butler's task/full lookup reads it.
    _, full = await qrs("GET", "task/full?filter=" + encoded(f"id eq {DISTRIBUTE}"))
    assert full[0]["operational"]["lastExecutionResult"] == result


async def test_demo_site_run_fails_with_its_error(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    status, session = await qrs("POST", "task/start/synchronous?name=" + encoded(NAME))
    assert status == 201
    # The demo's run is too short to watch every state; its details tell them.
    seen, result = await watch(qrs, {6, 7, 8})
    assert seen[-1] == 8
    assert [d["message"] for d in result["details"]] == [
        "Changing task state from NeverStarted to DistributionQueue",
        "Changing task state from DistributionQueue to DistributionRunning",
        "Distribution to cloud failed",
        "Changing task state from DistributionRunning to FinishedFail",
    ]
    assert_distribute_datagram(await only_datagram(udp_collector), session["value"])


async def test_successful_run_started_with_others(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int]
) -> None:
    await next_run(simulator, {"outcome": "success", "queuedMs": 10000, "durationMs": 10000})
    assert (await qrs("POST", "task/start/many", json=[DISTRIBUTE.upper()]))[0] == 204
    seen, result = await watch(qrs, {6, 7, 8})
    assert seen == [13, 14, 7]
    assert (
        result["details"][-1]["message"] == "Changing task state from DistributionRunning to FinishedSuccess"
    )
    assert not [d for d in result["details"] if d["detailsType"] == 0]
    fields = await only_datagram(udp_collector)
    assert_distribute_datagram(fields, fields[9])


@pytest.mark.parametrize("stop_in", [13, 14])
async def test_stop_aborts_and_still_sends_the_datagram(
    qrs: Any, simulator: Any, udp_collector: tuple[UdpCollector, int], stop_in: int
) -> None:
    await next_run(
        simulator, {"outcome": "success", "queuedMs": 100 if stop_in == 14 else 60000, "durationMs": 60000}
    )
    status, session = await qrs("POST", f"task/{DISTRIBUTE}/start/synchronous")
    assert status == 201
    await watch(qrs, {stop_in})
    assert await qrs("POST", f"task/{DISTRIBUTE}/stop") == (204, "")
    seen, result = await watch(qrs, {6, 7, 8})
    assert seen[-1] == 6 and set(seen) <= {stop_in, 6}
    state = "DistributionQueue" if stop_in == 13 else "DistributionRunning"
    assert [d["message"] for d in result["details"]][-3:] == [
        f"Changing task state from {state} to AbortInitiated",
        "Changing task state from AbortInitiated to Aborting",
        "Changing task state from Aborting to Aborted",
    ]
    assert_distribute_datagram(await only_datagram(udp_collector), session["value"])
    assert (await qrs("GET", f"executionsession/{session['value']}"))[0] == 404


def test_site_file_checks() -> None:
    site = build_site({"tasks": [{"name": "Cloud", "type": "distribute"}]})
    (task,) = site.tasks.values()
    assert (task["taskType"], task["schemaPath"]) == (3, "DistributionTask")
    behaviour = site.task_behaviour[task["id"]]
    assert (behaviour.outcome, behaviour.queued_ms, behaviour.duration_ms) == ("success", 500, 1000)
    with pytest.raises(SiteError, match="task Cloud: outcome must be one of success, fail, got 'abort'"):
        build_site({"tasks": [{"name": "Cloud", "type": "distribute", "distribute": {"outcome": "abort"}}]})
    with pytest.raises(SiteError, match="task Cloud: a distribution task has no app"):
        build_site({"apps": [{"name": "A"}], "tasks": [{"name": "Cloud", "type": "distribute", "app": "A"}]})
