"""Benchmark of task starts against the simulator, at simulated QRS latency 0 and 20 ms.

Butler has one core to itself; qliksim (standing in for QRS, which runs on a server of its own in a Sense
site) and the load generators share the other. Two loads:
- 10 ``starttaskid`` items per request, 8 connections (wrk), for ``--duration`` seconds. Butler looks the
  ids up, then starts them: two QRS round trips, so at 20 ms QRS latency 8 connections can reach at most
  8 / 0.040 s = 200 requests/s (target: 180);
- one ``starttasktag`` item matching 10 tasks, sequential requests (one keep-alive connection).
Also reported: QRS calls and new QRS connections (TLS handshakes) per request, Butler's memory.

    python bench/task_start.py [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp
import yaml

from harness import (
    cpu_seconds,
    free_port,
    rss_mb,
    run_wrk,
    start_butler,
    start_simulator,
    stop_processes,
    wait_port,
    write_butler_config,
)

TAGGED = 10
#: Requests/s the 8 connections of 10 ``starttaskid`` items must reach, per QRS latency (ms).
TARGET_RPS = {0: 400, 20: 180}


def site_file(path: Path) -> list[str]:
    """A site with 20 tasks; the first TAGGED carry the tag ``bench``. Returns the task ids."""
    ids = [f"{n:08x}-0000-4000-8000-{n:012x}" for n in range(1, 21)]
    path.write_text(
        yaml.safe_dump(
            {
                "hostname": "bench",
                "tags": ["bench"],
                "apps": [{"name": f"App {n}", "reload": {"durationMs": 100}} for n in range(20)],
                "tasks": [
                    {
                        "id": task_id,
                        "name": f"Reload {n}",
                        "app": f"App {n}",
                        "tags": ["bench"] if n < TAGGED else [],
                    }
                    for n, task_id in enumerate(ids)
                ],
            }
        )
    )
    return ids


def control(base: str, method: str, path: str, body: object = None) -> object:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        text = response.read()
        return json.loads(text) if text else None


def qrs_counts(base: str) -> tuple[int, int]:
    calls = control(base, "GET", "/calls")
    assert isinstance(calls, dict)
    return sum(calls["qrs"].values()), int(calls["qrsConnections"])


async def sequential_tag_starts(url: str, count: int) -> list[float]:
    body = [{"type": "starttasktag", "payload": {"tag": "bench"}}]
    timings = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count):
            started = time.perf_counter()
            async with http.put(url, json=body) as response:
                result = json.loads(await response.text())
                assert response.status == 200 and len(result["tasksTag"]) == TAGGED, result
            timings.append((time.perf_counter() - started) * 1000)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=200, help="tag-start requests per latency")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (str(cores[0]), str(cores[1])) if len(cores) > 1 else ("0", "0")
    workdir = Path(tempfile.mkdtemp(prefix="butler-task-bench-"))
    ids = site_file(workdir / "site.yaml")
    qrs_port, engine_port, control_port, port = free_port(), free_port(), free_port(), free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        stop_processes(processes)

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    failures = []
    try:
        simulator = start_simulator(
            workdir, qrs_port, engine_port, control_port, core=load_core, time_scale="1"
        )
        processes.append(simulator)
        wait_port(qrs_port, simulator)
        certs = workdir / "certs"
        config = workdir / "butler.yaml"
        write_butler_config(
            config,
            port,
            ["senseStartTask"],
            certs,
            configQRS={"host": "localhost", "port": qrs_port, "rejectUnauthorized": True},
        )
        log = (workdir / "butler.log").open("w")
        butler = start_butler(config, server_core, log)
        processes.append(butler)
        wait_port(port, butler)
        base = f"http://127.0.0.1:{port}"
        control_base = f"http://127.0.0.1:{control_port}"
        body = json.dumps([{"type": "starttaskid", "payload": {"taskId": task_id}} for task_id in ids[:10]])
        script = workdir / "start.lua"
        script.write_text(
            f'wrk.method = "PUT"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body}]==]\n"
        )
        print(f"Butler on core {server_core}, qliksim and load on core {load_core}")
        for latency in (0, 20):
            control(control_base, "PUT", "/faults/qrs", {"latency_ms": latency})
            calls_before, connections_before = qrs_counts(control_base)
            cpu_before = cpu_seconds(butler.pid), cpu_seconds(simulator.pid)
            result = run_wrk(f"{base}/v4/reloadtask/-/start", args.duration, load_core, 8, script)
            rps, p50, total, errors = result.rps, result.p50_ms, result.requests, result.non_2xx
            cpu_butler = (cpu_seconds(butler.pid) - cpu_before[0]) / total * 1000
            cpu_simulator = (cpu_seconds(simulator.pid) - cpu_before[1]) / total * 1000
            calls, connections = qrs_counts(control_base)
            ok = rps >= TARGET_RPS[latency] and errors == 0
            failures += [] if ok else [f"10 ids at {latency} ms"]
            print(
                f"QRS latency {latency:2d} ms, 10 starttaskid items, 8 connections: {rps:,.0f} req/s, "
                f"p50 {p50:.1f} ms, non-2xx {errors}; {(calls - calls_before) / total:.1f} QRS calls and "
                f"{(connections - connections_before) / total:.3f} new QRS connections per request; CPU per "
                f"request: Butler {cpu_butler:.2f} ms, simulator {cpu_simulator:.2f} ms "
                f"(target >= {TARGET_RPS[latency]} req/s) {'ok' if ok else 'BELOW TARGET'}"
            )
            calls_before, connections_before = qrs_counts(control_base)
            timings = asyncio.run(sequential_tag_starts(f"{base}/v4/reloadtask/-/start", args.sequential))
            calls, connections = qrs_counts(control_base)
            median = statistics.median(timings)
            ok = latency != 20 or median < 45
            failures += [] if ok else ["tag at 20 ms"]
            print(
                f"QRS latency {latency:2d} ms, one starttasktag matching {TAGGED} tasks, sequential: median "
                f"{median:.1f} ms, p95 {sorted(timings)[int(len(timings) * 0.95)]:.1f} ms; "
                f"{(calls - calls_before) / len(timings):.1f} QRS calls and "
                f"{(connections - connections_before) / len(timings):.3f} new QRS connections per request"
                + (f" (target < 45 ms) {'ok' if ok else 'BELOW TARGET'}" if latency == 20 else "")
            )
        print(f"Butler resident memory after the run: {rss_mb(butler.pid):.1f} MB")
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
