"""``butler task start|status`` and ``butler app reload`` as schedulers run them: the command as a child
process, talking to a real Butler on the simulated site; exit codes, output, ``--json``, and the progress
display on a terminal (tmux)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from butler.task_commands import printable
from tests.conftest import StartButler, butler_child, free_port
from tests.test_apps import app_id, engine_config
from tests.test_auth import auth_config, make_token
from tests.test_task_start import APP1, APP2, APP3, NOT_ALLOWED, OPS, butler_config, control, next_run
from tests.waiting import eventually

FAILING = "Reload task of App2"


@pytest.fixture
async def base(start_butler: StartButler, simulator: Any, site_certs: Any) -> str:
    document = butler_config(simulator, site_certs, senseAppReload=True)
    document["Butler"]["configEngine"] = engine_config(simulator)
    return await start_butler(document)


async def test_start_and_wait_for_a_run_that_succeeds(base: str, simulator: Any) -> None:
    # 2 s at the tests' time scale: longer than the start's synchronous second, so the run is followed.
    await next_run(simulator, APP1["taskId"], durationMs=200_000)
    code, out, err = await butler_child("task", "start", APP1["taskId"], "--wait", "--butler", base)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"{APP1['taskName']}: Started on {simulator.site.hostname}, 0:0")
    assert lines[0].endswith(" elapsed")
    assert lines[-1] == f"{APP1['taskName']}: FinishedSuccess on {simulator.site.hostname} in 0:02"
    assert "Script log" not in out


async def test_a_failing_run_exits_1_with_its_script_log_tail(base: str, simulator: Any) -> None:
    await next_run(simulator, APP2["taskId"], outcome="fail", durationMs=100, error="Field 'x' not found")
    code, out, err = await butler_child("task", "start", APP2["taskId"], "--wait", "--butler", base)
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == f"{FAILING}: FinishedFail on {simulator.site.hostname} in 0:00"
    assert lines[1].startswith(f"Script log of {FAILING}, last ")
    assert lines[-1].endswith(" Execution Failed") and lines[2].endswith("Execution started.")
    # `task status` tells the same of the task's last run.
    code, out, _ = await butler_child("task", "status", APP2["taskId"], "--butler", base)
    assert code == 1 and out.splitlines()[0] == lines[0]
    assert out.splitlines()[-1] == lines[-1]


async def test_the_demo_sites_failing_task_by_tag(base: str, simulator: Any) -> None:
    code, out, _ = await butler_child("task", "start", "--tag", "butler", "--wait", "--butler", base)
    assert code == 1
    assert out.startswith("Reload Failing App: FinishedFail")
    assert "Execution Failed" in out.splitlines()[-1]


async def test_an_aborted_run_exits_3(base: str, simulator: Any) -> None:
    await next_run(simulator, APP3["taskId"], outcome="abort", durationMs=100)
    code, out, _ = await butler_child("task", "start", APP3["taskId"], "--wait", "--butler", base)
    assert code == 3
    assert out.startswith(f"{APP3['taskName']}: Aborted")
    assert out.splitlines()[-1].endswith("Execution aborted.")


async def test_timeout_exits_4_while_the_run_goes_on(base: str, simulator: Any) -> None:
    await next_run(simulator, APP3["taskId"], durationMs=3_000_000)  # 30 s at the tests' time scale
    code, out, _ = await butler_child(
        "task", "start", APP3["taskId"], "--wait", "--timeout", "1.5", "--butler", base
    )
    assert code == 4
    assert out.splitlines()[-1].startswith(f"{APP3['taskName']}: Started on {simulator.site.hostname}, 0:01")
    assert APP3["taskId"] in simulator.scheduler.running  # given up on, not stopped
    # Started again while it runs: Qlik Sense does not start it, a failure of the request.
    code, out, err = await butler_child("task", "start", APP3["taskId"], "--wait", "--butler", base)
    assert (code, out) == (1, "")
    assert err.startswith(f"butler: task {APP3['taskName']}: Qlik Sense did not start it: ")


async def test_json_output(base: str, simulator: Any) -> None:
    await next_run(simulator, APP1["taskId"], durationMs=150_000)
    code, out, err = await butler_child(
        "task", "start", APP1["taskId"], "--kv", "cli:runBy=airflow", "--wait", "--json", "--butler", base
    )
    assert (code, err) == (0, "")
    document = json.loads(out)  # the whole output is one JSON document
    assert (document["outcome"], document["exitCode"]) == ("success", 0)
    assert document["start"]["tasksId"]["started"] == [APP1]
    [run] = document["runs"]
    assert run["taskId"] == APP1["taskId"] and run["taskName"] == APP1["taskName"]
    assert (run["status"], run["statusCode"], run["finished"]) == ("FinishedSuccess", 7, True)
    assert run["executingNodeName"] == simulator.site.hostname
    assert run["scriptLogTail"][-1].endswith("Execution finished.")
    assert run["duration"] >= 1500
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v4/keyvalues/cli?key=runBy") as r:
        assert (await r.json())["value"] == "airflow"
    # Without --wait: what Butler started.
    code, out, _ = await butler_child("task", "start", "--tag", "startTask1", "--json", "--butler", base)
    document = json.loads(out)
    assert (code, document["outcome"], "runs" in document) == (0, "success", False)
    assert [t["taskId"] for t in document["start"]["tasksTag"]] == [
        APP1["taskId"],
        APP2["taskId"],
        APP3["taskId"],
    ]


async def test_several_tasks_by_tag_and_custom_property(base: str, simulator: Any) -> None:
    await next_run(simulator, APP2["taskId"], outcome="fail", durationMs=100)
    code, out, _ = await butler_child(
        "task", "start", "--cp", "taskGroup=tasks1", "--tag", "startTask2", "--wait", "--butler", base
    )
    assert code == 1  # one of the runs failed
    finals = [line for line in out.splitlines() if line.startswith("Reload task of App")]
    assert sorted(finals) == [
        f"{APP1['taskName']}: FinishedSuccess on {simulator.site.hostname} in 0:00",
        f"{APP2['taskName']}: FinishedFail on {simulator.site.hostname} in 0:00",
        f"{APP3['taskName']}: FinishedSuccess on {simulator.site.hostname} in 0:00",
    ]


async def test_bad_ids_are_refused_with_exit_code_2(base: str) -> None:
    code, out, err = await butler_child("task", "start", "abc123", "--wait", "--butler", base)
    assert (code, out) == (2, "")
    assert err == "butler: task abc123: not a task in Qlik Sense\n"
    unknown = "00000000-0000-4000-8000-000000000000"
    code, _, err = await butler_child("task", "status", unknown, "--butler", base)
    assert code == 2
    assert err == f"butler: Butler refused the request (404): Task {unknown} not found in Qlik Sense\n"
    code, out, _ = await butler_child("task", "status", "NOT-A-GUID", "--json", "--butler", base)
    document = json.loads(out)
    assert (code, document["outcome"], document["exitCode"]) == (2, "refused", 2)
    assert document["problems"] == [
        "Butler refused the request (400): Not a task id (a lowercase GUID): NOT-A-GUID"
    ]


def test_escape_codes_from_qlik_sense_never_reach_the_terminal() -> None:
    assert printable("App\x1b[2J\x07 ü\tx") == "App?[2J? ü?x"


async def test_usage_errors_exit_2() -> None:
    code, _, err = await butler_child("task", "start")
    assert code == 2 and "task start needs a task ID, --tag or --cp" in err
    code, _, err = await butler_child("task", "start", APP1["taskId"], "--timeout", "5")
    assert code == 2 and "--timeout goes with --wait" in err
    code, _, err = await butler_child("task", "start", "--kv", "no-namespace=1", "--tag", "x")
    assert code == 2 and "expected NAMESPACE:KEY=VALUE" in err
    code, out, _ = await butler_child("task", "start", "--help")
    assert code == 0 and "4 --timeout passed" in " ".join(out.split())


async def test_unreachable_butler_exits_5() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await butler_child("task", "start", APP1["taskId"], "--wait", "--butler", url)
    assert (code, out) == (5, "")
    assert err.startswith(f"butler: cannot reach Butler at {url}: ")
    # BUTLER_URL names the Butler when --butler does not.
    code, out, _ = await butler_child("task", "status", APP1["taskId"], "--json", env={"BUTLER_URL": url})
    assert code == 5 and json.loads(out)["outcome"] == "unreachable"


async def test_a_butler_that_wants_a_token(
    start_butler: StartButler, simulator: Any, site_certs: Any, tmp_path: Path
) -> None:
    """A token from BUTLER_TOKEN or --token is sent as a bearer token; without a good one, exit 2."""
    base = await start_butler(auth_config(butler_config(simulator, site_certs)))
    token = await make_token(tmp_path, "airflow", "tasks:start")
    code, _, err = await butler_child("task", "status", APP1["taskId"], "--butler", base)
    assert code == 2 and err.startswith("butler: Butler refused the request (401): ")
    code, _, err = await butler_child("task", "status", APP1["taskId"], "--butler", base, "--token", "x")
    assert code == 2 and "(401)" in err
    code, out, _ = await butler_child(
        "task", "start", APP1["taskId"], "--wait", "--butler", base, env={"BUTLER_TOKEN": token}
    )
    assert code == 0 and out.splitlines()[-1].startswith(f"{APP1['taskName']}: FinishedSuccess")
    code, _, _ = await butler_child("task", "status", APP1["taskId"], "--butler", base, "--token", token)
    assert code == 0


async def test_a_task_the_filter_denies(start_butler: StartButler, simulator: Any, site_certs: Any) -> None:
    base = await start_butler(butler_config(simulator, site_certs, filter_on=True))
    code, out, err = await butler_child(
        "task", "start", APP1["taskId"], NOT_ALLOWED, "--tag", "nightly", "--wait", "--butler", base
    )
    assert code == 2  # refused in part: worse than the run that succeeded
    assert out.splitlines()[-1].startswith(f"{APP1['taskName']}: FinishedSuccess")
    assert err.splitlines() == [
        f"butler: task {NOT_ALLOWED}: denied by Butler.startTaskFilter",
        "butler: tag nightly: denied by Butler.startTaskFilter",
    ]


async def test_run_status_by_execution_id(base: str, simulator: Any) -> None:
    """The status endpoint's ``executionId``: the run of that session, while it runs and once over."""
    await next_run(simulator, OPS["taskId"], durationMs=200_000)
    async with aiohttp.ClientSession() as http:
        url = f"{base}/v4/reloadtask/{OPS['taskId']}"
        async with http.put(f"{url}/start?wait=true&timeout=1", json=[]) as r:
            [started] = json.loads(await r.text())["executions"]
        execution = started["executionId"]
        async with http.get(f"{url}/status", params={"executionId": execution}) as r:
            running = await r.json()
        assert (running["status"], running["finished"], running["executionId"]) == (
            "Started",
            False,
            execution,
        )
        assert running["taskId"] == OPS["taskId"] and "scriptLogTail" not in running
        async with asyncio.timeout(10):
            while not running["finished"]:
                await asyncio.sleep(0.1)
                async with http.get(f"{url}/status", params={"executionId": execution}) as r:
                    running = await r.json()
        assert running["status"] == "FinishedSuccess" and running["scriptLogTail"]
        async with http.get(
            f"{url}/status", params={"executionId": "00000000-0000-4000-8000-000000000000"}
        ) as r:
            assert r.status == 404 and "No run" in (await r.json())["message"]
        async with http.get(f"{url}/status", params={"executionId": "x' or 1 eq 1"}) as r:
            assert r.status == 400 and "Not an execution id" in (await r.json())["message"]


async def test_app_reload(base: str, simulator: Any) -> None:
    app = app_id(simulator, "App1")
    code, out, _ = await butler_child("app", "reload", app, "--wait", "--butler", base)
    assert code == 0 and out.splitlines()[-1].startswith(f"App {app}: reload succeeded in 0:0")
    code, out, _ = await butler_child("app", "reload", app, "--partial", "--wait", "--json", "--butler", base)
    document = json.loads(out)
    assert (code, document["outcome"], document["reload"]["success"]) == (0, "success", True)
    assert simulator.scheduler.reload_kinds[app] == ["full", "partial"]
    failing = app_id(simulator, "Failing App")
    code, out, _ = await butler_child("app", "reload", failing, "--wait", "--butler", base)
    assert code == 1 and f"App {failing}: reload failed" in out
    code, out, _ = await butler_child("app", "reload", app, "--butler", base)
    assert (code, out) == (0, f"App {app}: reload started\n")
    code, _, err = await butler_child("app", "reload", "no-such-app", "--wait", "--butler", base)
    assert code == 2 and "(404)" in err


async def test_app_reload_timeout_leaves_the_reload_running(base: str, simulator: Any) -> None:
    app = app_id(simulator, "App2")
    before = simulator.site.apps[app]["lastReloadTime"]
    await control(simulator, f"/apps/{app}/next-reload", {"durationMs": 250_000}, 204)  # 2.5 s
    code, out, _ = await butler_child("app", "reload", app, "--wait", "--timeout", "1", "--butler", base)
    assert code == 4 and out.splitlines()[-1] == f"App {app}: still reloading after 0:01"
    await eventually(lambda: simulator.site.apps[app]["lastReloadTime"] != before, 15)


# -- the progress display on a terminal ---------------------------------------------------------------------


TMUX = shutil.which("tmux") or "/usr/bin/tmux"


@pytest.mark.skipif(not Path(TMUX).exists(), reason="tmux is not installed")
async def test_progress_on_a_terminal(base: str, simulator: Any, tmp_path: Path) -> None:
    """The command in a terminal of 100x20: the run's line is drawn again in place (one line, never a
    scroll of them), shows status and elapsed time, and leaves no escape codes on the screen."""
    await next_run(simulator, APP1["taskId"], durationMs=300_000)  # 3 s
    socket_name = str(tmp_path / "tmux.sock")
    command = (
        f"{sys.executable} -m butler task start {APP1['taskId']} --wait --butler {base}; "
        "echo EXIT=$?; sleep 60"
    )

    def tmux(*args: str) -> str:
        return subprocess.run(
            [TMUX, "-S", socket_name, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    await asyncio.to_thread(tmux, "new-session", "-d", "-s", "cli", "-x", "100", "-y", "20", command)
    try:
        screens: list[str] = []
        async with asyncio.timeout(30):
            while "EXIT=" not in (screens or [""])[-1]:
                await asyncio.sleep(0.2)
                screens.append(await asyncio.to_thread(tmux, "capture-pane", "-p", "-t", "cli"))
    finally:
        await asyncio.to_thread(tmux, "kill-server")
    running = [s for s in screens if "Started" in s]
    assert running, screens
    first = [line for line in running[0].splitlines() if line.strip()]
    assert first == [first[0]] and first[0].startswith(f"{APP1['taskName']}: Started on ")
    assert first[0].endswith(" elapsed")
    final = [line.rstrip() for line in screens[-1].splitlines() if line.strip()]
    assert final == [
        f"{APP1['taskName']}: FinishedSuccess on {simulator.site.hostname} in 0:03",
        "EXIT=0",
    ]
    for screen in screens:
        assert "\x1b" not in screen and "[2K" not in screen and "[1F" not in screen
