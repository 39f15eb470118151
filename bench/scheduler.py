"""Benchmark of the scheduler: 10,000 schedules loaded from a file, and 100 schedules firing in one second.

1. Start-up: Butler with a schedule file of ``--schedules`` daily schedules in ten time zones, against Butler
   without one: time to the first answer and until every schedule runs (target < 1 s), memory added
   (target < 50 MB), CPU while idle for 10 s (target < 1 % of a core), and the slowest answer to a ping
   sent meanwhile (how long the event loop is held).
2. Fire accuracy: 100 schedules firing in the same second (every 5 s, for 30 s): lateness from the due
   time to the fire (``fired`` - ``due`` of each run, ``GET /v4/schedules/{id}/runs``), target p99 < 100 ms.
   They start one task, so most fires find it running and are recorded as skipped: the lateness is the
   scheduler's, the QRS round trip of each fire included.

Butler runs pinned to one core, the simulator (QRS) and the load on the other.

    python bench/scheduler.py [--schedules 10000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

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

ZONES = ["UTC", "Europe/Stockholm", "Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney",
         "America/Los_Angeles", "Europe/Paris", "Asia/Kolkata", "America/Sao_Paulo"]  # fmt: skip
TASK = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"  # Reload task of App1 in the simulator's demo site


def schedule_file(path: Path, count: int, cron: str, task: str = TASK) -> None:
    entries = [
        {
            "name": f"Schedule {n}",
            "cronSchedule": cron.format(minute=n % 60, hour=n % 24),
            "timezone": ZONES[n % len(ZONES)],
            "qlikSenseTaskId": task,
            "startupState": "started",
            "id": f"bench-{n}",
        }
        for n in range(count)
    ]
    path.write_text(yaml.safe_dump({"butlerSchedule": entries}, sort_keys=False))


def get(url: str) -> object:
    with urllib.request.urlopen(url) as answer:
        return json.loads(answer.read())


pings: list[float] = []


def ping(port: int, done: threading.Event) -> None:
    while not done.is_set():
        began = time.perf_counter()
        get(f"http://127.0.0.1:{port}/v4/butlerping")
        pings.append(time.perf_counter() - began)
        time.sleep(0.005)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    args = parser.parse_args()
    server_core, load_core = cores()
    workdir = Path(tempfile.mkdtemp(prefix="butler-scheduler-bench-"))
    qrs_port, engine_port, control_port = free_port(), free_port(), free_port()
    failures: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    shutil.copy(Path(qliksim.__file__).parent / "demo_site.yaml", workdir / "site.yaml")
    try:
        simulator = start_simulator(workdir, qrs_port, engine_port, control_port, core=load_core)
        processes.append(simulator)
        wait_port(qrs_port, simulator)
        certs = workdir / "certs"
        flags = ["butlerping"]
        # The runs endpoint's flag is nested in the file (scheduler.getSchedule).
        endpoints = {"butlerping": True, "scheduler": {"getSchedule": True}}
        qrs = {"host": "localhost", "port": qrs_port, "rejectUnauthorized": True}

        def run(file: Path | None) -> tuple[float, float, float, subprocess.Popen[bytes]]:
            """Seconds to the first answer and, with a file, to its schedules running; memory; idle CPU."""
            port = free_port()
            sections: dict[str, object] = {"configQRS": qrs, "restServerEndpointsEnable": endpoints}
            if file is not None:
                sections["scheduler"] = {"enable": True, "configfile": str(file)}
            config = write_butler_config(workdir / f"butler-{port}.yaml", port, flags, certs, **sections)
            started[0] = time.perf_counter()
            butler = start_butler(config, server_core)
            processes.append(butler)
            took = wait_for_answer(f"http://127.0.0.1:{port}/v4/butlerping", 30)
            if file is not None:
                # Pings answered while the file is read and the timers are set up: how long Butler is deaf.
                pinging = threading.Event()
                pinger = threading.Thread(target=ping, args=(port, pinging), daemon=True)
                pinger.start()
                # The last schedule's runs answer once the file is read and every timer runs.
                get(f"http://127.0.0.1:{port}/v4/schedules/bench-{args.schedules - 1}/runs")
                loaded.append(time.perf_counter() - started[0])
                pinging.set()
                pinger.join()
            time.sleep(2)
            before = cpu_seconds(butler.pid)
            time.sleep(10)
            idle = (cpu_seconds(butler.pid) - before) / 10 * 100
            return took, rss_mb(butler.pid), idle, butler

        started, loaded = [0.0], []
        # 1. Start-up with and without the schedules
        _, plain_rss, _, plain = run(None)
        plain.terminate()
        many = workdir / "many.yaml"
        schedule_file(many, args.schedules, "{minute} {hour} * * *")
        took, rss, idle, butler = run(many)
        ok = loaded[0] < 1 and rss - plain_rss < 50 and idle < 1
        failures += [] if ok else ["start-up"]
        print(
            f"{args.schedules:,} schedules: first answer after {took:.2f} s, every schedule running after "
            f"{loaded[0]:.2f} s (target < 1 s), memory "
            f"{rss:.0f} MB against {plain_rss:.0f} MB without (+{rss - plain_rss:.0f} MB, target < 50), "
            f"idle CPU {idle:.2f} % of a core (target < 1 %) {'ok' if ok else 'BELOW TARGET'}"
        )
        print(
            f"  {len(pings)} pings while the schedules were set up: slowest answer "
            f"{max(pings, default=0) * 1000:.0f} ms"
        )
        butler.terminate()

        # 2. 100 schedules firing in the same second, every 5 s
        burst = workdir / "burst.yaml"
        schedule_file(burst, 100, "*/5 * * * * *")
        port = free_port()
        config = write_butler_config(
            workdir / "burst-butler.yaml",
            port,
            flags,
            certs,
            configQRS=qrs,
            restServerEndpointsEnable=endpoints,
            scheduler={"enable": True, "configfile": str(burst)},
        )
        butler = start_butler(config, server_core)
        processes.append(butler)
        wait_for_answer(f"http://127.0.0.1:{port}/v4/butlerping", 30)
        time.sleep(31)
        lateness = []
        for n in range(100):
            runs = get(f"http://127.0.0.1:{port}/v4/schedules/bench-{n}/runs")
            for entry in runs["runs"]:  # type: ignore[index]
                due = datetime.datetime.fromisoformat(entry["due"].replace("Z", "+00:00"))
                fired = datetime.datetime.fromisoformat(entry["fired"].replace("Z", "+00:00"))
                lateness.append((fired - due).total_seconds() * 1000)
        lateness.sort()
        p99 = lateness[int(len(lateness) * 0.99) - 1] if lateness else float("nan")
        ok = bool(lateness) and p99 < 100
        failures += [] if ok else ["fire accuracy"]
        print(
            f"100 schedules firing together, {len(lateness)} fires: lateness p50 "
            f"{lateness[len(lateness) // 2]:.1f} ms, p99 {p99:.1f} ms, max {lateness[-1]:.1f} ms "
            f"(target p99 < 100 ms) {'ok' if ok else 'BELOW TARGET'}"
        )
    finally:
        stop_processes(processes)
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
