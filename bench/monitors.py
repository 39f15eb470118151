"""Benchmark of the monitors: what checking a 10-node site every 30 s costs Butler.

1. Cost: two Butlers side by side against one simulated site of 10 nodes, measured over the same window
   (so that other load on this shared machine falls on both alike): one without monitors, one with the
   service monitor, the server licence monitor, the access licence monitor, the licence release (dry run)
   and the version monitor, each ``every 30 seconds``, and the uptime monitor (which also samples the event
   loop's lag every 0.5 s). Butler's CPU time (from /proc) in % of a core for each, the difference (what
   the monitors cost; target < 1 % of a core), the checks made in the window (from ``/health`` →
   ``monitors``, each of which must have run at least 4 times without an error) and memory.
2. One service-monitor check of the 10 nodes (QRS ``servicestatus/full``, 60 services), run in this process
   with Butler's own classes: wall time and CPU time per check.

Both Butlers run pinned to one core, the simulator to the other.

    python bench/monitors.py [--seconds 125] [--checks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

import qliksim
from harness import (
    cores,
    cpu_seconds,
    free_port,
    rss_mb,
    start_butler,
    start_simulator,
    stop_processes,
    wait_for_answer,
    wait_port,
    write_butler_config,
)

NODES = 10
FREQUENCY = "every 30 seconds"
#: The monitors of the measured Butler, by their name in /health.
MONITORS = (
    "serviceMonitor",
    "versionMonitor",
    "serverLicenseMonitor",
    "licenseMonitor",
    "licenseRelease",
    "uptimeMonitor",
)


def site_file(path: Path) -> None:
    """The demo site (its licence and access allocations) with 10 nodes: Central and Rim1..Rim9."""
    site = yaml.safe_load((Path(qliksim.__file__).parent / "demo_site.yaml").read_text())
    site["nodes"] = [{"name": "Central", "hostName": "sense1", "central": True}] + [
        {"name": f"Rim{n}", "hostName": f"sense{n + 1}", "disabled": ["appmigration", "printing"]}
        for n in range(1, NODES)
    ]
    path.write_text(yaml.safe_dump(site, sort_keys=False, allow_unicode=True))


def monitor_sections(systeminfo_port: int) -> dict[str, Any]:
    """The ``Butler`` sections that turn the monitors on."""
    return {
        "serviceMonitor": {"enable": True, "frequency": FREQUENCY},
        "qlikSenseVersion": {
            "versionMonitor": {"enable": True, "frequency": FREQUENCY, "port": systeminfo_port}
        },
        "qlikSenseLicense": {
            "serverLicenseMonitor": {"enable": True, "frequency": FREQUENCY},
            "licenseMonitor": {"enable": True, "frequency": FREQUENCY},
            "licenseRelease": {"enable": True, "dryRun": True, "frequency": FREQUENCY},
        },
        "uptimeMonitor": {"enable": True, "frequency": FREQUENCY},
    }


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def monitor_runs(port: int) -> dict[str, dict[str, Any]]:
    return health(port).get("monitors", {})  # type: ignore[no-any-return]


async def time_checks(config: Path, count: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of ``count`` service-monitor checks, with Butler's classes as ``butler serve``
    builds them (the monitors' QRS client, no MQTT, alerts or InfluxDB); and the services each check saw."""
    import dataclasses

    from butler.config import load_config
    from butler.monitors.sense import SA_REPOSITORY, QrsSense
    from butler.monitors.services import ServiceMonitor
    from butler.qlik.qrs import QrsClient

    settings = load_config(config)
    qrs = QrsClient(dataclasses.replace(settings.qrs, headers=SA_REPOSITORY), settings.certificates)
    site = QrsSense(qrs)
    monitor = ServiceMonitor(settings.monitors.services, settings.mqtt, site, None, None, None)
    try:
        services = len(await site.service_statuses())
        await monitor.check()  # the first check sets the states (and opens the connection)
        walls, cpus = [], []
        for _ in range(count):
            wall, cpu = time.perf_counter(), time.process_time()
            await monitor.check()
            cpus.append(time.process_time() - cpu)
            walls.append(time.perf_counter() - wall)
    finally:
        await qrs.close()
    return walls, cpus, services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=125, help="the measured window (at least 120)")
    parser.add_argument("--checks", type=int, default=50, help="service-monitor checks timed in 2.")
    args = parser.parse_args()
    server_core, load_core = cores()
    workdir = Path(tempfile.mkdtemp(prefix="butler-monitors-bench-"))
    qrs_port, engine_port, control_port, info_port = free_port(), free_port(), free_port(), free_port()
    failures: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    site_file(workdir / "site.yaml")
    try:
        simulator = start_simulator(
            workdir, qrs_port, engine_port, control_port, core=load_core, systeminfo_port=info_port
        )
        processes.append(simulator)
        wait_port(qrs_port, simulator)
        wait_port(info_port, simulator)
        certs = workdir / "certs"
        qrs = {"host": "localhost", "port": qrs_port, "rejectUnauthorized": True}
        endpoints = ["butlerping"]
        plain_port, busy_port = free_port(), free_port()
        plain_config = write_butler_config(
            workdir / "plain.yaml", plain_port, endpoints, certs, configQRS=qrs
        )
        busy_config = write_butler_config(
            workdir / "monitors.yaml",
            busy_port,
            endpoints,
            certs,
            configQRS=qrs,
            **monitor_sections(info_port),
        )
        plain = start_butler(plain_config, server_core)
        processes.append(plain)
        busy = start_butler(busy_config, server_core, log=(workdir / "monitors.log").open("wb"))
        processes.append(busy)
        wait_for_answer(f"http://127.0.0.1:{plain_port}/health", 30)
        wait_for_answer(f"http://127.0.0.1:{busy_port}/health", 30)
        time.sleep(3)  # the start-up checks done, the imports of the first requests made

        # 1. Both over the same window
        runs_before = monitor_runs(busy_port)
        cpu_before = {butler.pid: cpu_seconds(butler.pid) for butler in (plain, busy)}
        started = time.monotonic()
        time.sleep(args.seconds)
        cpu = {pid: cpu_seconds(pid) - before for pid, before in cpu_before.items()}
        window = time.monotonic() - started
        runs_after = monitor_runs(busy_port)
        plain_pct = cpu[plain.pid] / window * 100
        busy_pct = cpu[busy.pid] / window * 100
        cost = busy_pct - plain_pct
        plain_rss, busy_rss = rss_mb(plain.pid), rss_mb(busy.pid)

        checks = {}
        problems = []
        for name in MONITORS:
            after = runs_after.get(name)
            if after is None:
                problems.append(f"{name} not running")
                continue
            made = after["runs"] - runs_before.get(name, {}).get("runs", 0)
            failed = after["failures"] - runs_before.get(name, {}).get("failures", 0)
            checks[name] = made
            if made < 4:
                problems.append(f"{name} made {made} checks")
            if failed or after["lastError"]:
                problems.append(f"{name}: {failed} failed, last error {after['lastError']}")
        ok = cost < 1 and not problems
        failures += [] if ok else ["cost"]
        print(
            f"{NODES} nodes, {len(checks)} monitors {FREQUENCY} (uptime too), {window:.0f} s window: "
            f"Butler with monitors {busy_pct:.3f} % of a core ({cpu[busy.pid]:.2f} s CPU), without "
            f"{plain_pct:.3f} % ({cpu[plain.pid]:.2f} s): the monitors cost {cost:.3f} % of a core "
            f"(target < 1 %) {'ok' if ok else 'BELOW TARGET'}"
        )
        print("  checks in the window: " + ", ".join(f"{name} {made}" for name, made in checks.items()))
        for problem in problems:
            print(f"  {problem}")
        print(
            f"  memory: {busy_rss:.0f} MB with monitors, {plain_rss:.0f} MB without "
            f"({busy_rss - plain_rss:+.0f} MB)"
        )
        stop_processes([plain, busy])

        # 2. One service-monitor check
        walls, cpus, services = asyncio.run(time_checks(busy_config, args.checks))
        walls.sort()
        print(
            f"one service-monitor check of {NODES} nodes ({services} services, {args.checks} checks): "
            f"wall median {statistics.median(walls) * 1000:.1f} ms, p90 "
            f"{walls[int(len(walls) * 0.9) - 1] * 1000:.1f} ms; CPU in Butler's process "
            f"{statistics.mean(cpus) * 1000:.1f} ms per check"
        )
    finally:
        stop_processes(processes)
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
