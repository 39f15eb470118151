"""Benchmark: Sense's UDP events into Butler at 10,000 datagrams/s for 30 s, with ping latency alongside.

The simulator runs in this process (pinned to the second core): its scheduler runs real task executions
(QRS state, execution results, script logs) and its appender sends their events to Butler's task port,
which Butler enriches from the simulator's QRS; this process also sends proxy session events (logins
and logouts of a few thousand users over two proxies) to Butler's session port. Butler runs as a child
process on the first core. A third process asks ``GET /v4/butlerping`` every 20 ms with a blocking
client and reports its latencies.

Reported: datagrams sent and what Butler counted received, accepted and dropped per port, the task
events enriched (and how many only partly), the kernel's UDP receive-buffer drops during the run,
Butler's memory over the run, and the ping latencies.

    python bench/udp_events.py [--rate 10000] [--seconds 30] [--task-share 0.1] [--mqtt]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import (
    cores,
    cpu_seconds,
    free_port,
    rss_mb,
    start_butler,
    stop_run,
    udp_ports,
    wait_port,
    write_butler_config,
)
from qliksim.certs import make_site_certificates
from qliksim.server import Options, Simulator
from qliksim.site import RunBehaviour, load_site
from qliksim.udp import SessionEvent

PING_TARGET_MS = 20.0

# A child process that pings with a blocking client, so the figures are Butler's, not this loop's.
PINGER = """
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
connection = http.client.HTTPConnection("127.0.0.1", port)
latencies = []
end = time.monotonic() + seconds
while time.monotonic() < end:
    started = time.perf_counter()
    connection.request("GET", "/v4/butlerping")
    response = connection.getresponse()
    response.read()
    latencies.append((time.perf_counter() - started) * 1000)
    time.sleep(0.02)
print(json.dumps(latencies))
"""


def kernel_udp_drops() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer (the whole machine)."""
    lines = [
        line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")
    ]
    header, values = lines[0], lines[1]
    return int(values[header.index("RcvbufErrors")])


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return json.loads(response.read())["udpEvents"]  # type: ignore[no-any-return]


class Load:
    """Sends the mix: session datagrams from this process, task events through the simulated scheduler."""

    def __init__(self, simulator: Simulator, session_port: int, rate: int, task_share: float) -> None:
        self.simulator = simulator
        self.session_target = ("127.0.0.1", session_port)
        self.rate = rate
        self.task_share = task_share
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sessions_sent = 0
        self.runs_started = 0
        self.runs_refused = 0
        self.rng = random.Random(1)
        self.reload_tasks = [
            t["id"] for t in simulator.site.tasks.values() if t["schemaPath"] == "ReloadTask"
        ]
        self.logged_in: set[tuple[str, str, str]] = set()

    def session_event(self) -> bytes:
        host = self.rng.choice(("sense1", "sense2"))
        user = (host, self.rng.choice(("LAB", "EXT")), f"user{self.rng.randrange(3000)}")
        if user in self.logged_in:
            self.logged_in.discard(user)
            return SessionEvent("Stop session", *user).datagram()
        self.logged_in.add(user)
        return SessionEvent("Start session", *user).datagram()

    def start_run(self) -> None:
        scheduler = self.simulator.scheduler
        idle = [t for t in self.reload_tasks if t not in scheduler.running]
        if not idle:
            self.runs_refused += 1
            return
        task_id = self.rng.choice(idle)
        draw = self.rng.random()
        if draw < 0.15:
            scheduler.next_outcome[task_id] = RunBehaviour(
                outcome="fail", duration_ms=1000, error="Field not found"
            )
        if scheduler.start(task_id) is not None:
            self.runs_started += 1
            if draw > 0.97:  # a few runs are stopped by an operator: aborted
                scheduler.stop(task_id)

    async def run(self, seconds: float) -> None:
        tick = 0.01
        per_tick = self.rate * tick
        tasks_per_tick = per_tick * self.task_share
        sessions_per_tick = per_tick - tasks_per_tick
        owed_sessions = owed_tasks = 0.0
        started = time.monotonic()
        next_tick = started
        while next_tick - started < seconds:
            owed_sessions += sessions_per_tick
            owed_tasks += tasks_per_tick
            while owed_sessions >= 1:
                self.sock.sendto(self.session_event(), self.session_target)
                self.sessions_sent += 1
                owed_sessions -= 1
            while owed_tasks >= 1:
                self.start_run()
                owed_tasks -= 1
            next_tick += tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    def close(self) -> None:
        self.sock.close()


async def run(rate: int, seconds: float, task_share: float, broker_port: int | None) -> int:
    butler_core, load_core = cores()
    os.sched_setaffinity(0, {int(load_core)})
    workdir = Path(tempfile.mkdtemp(prefix="butler-udp-bench-"))
    certs = make_site_certificates(workdir / "certs", "bench")
    task_port, session_port = udp_ports()
    simulator = Simulator(
        load_site(None),
        certs,
        Options(
            qrs_port=0,
            engine_port=0,
            control_port=None,
            udp_targets=[("127.0.0.1", task_port)],
            time_scale=0.0005,
        ),
    )
    await simulator.start()
    sections: dict[str, Any] = {
        "logLevel": "warn",
        "configQRS": {"host": "localhost", "port": simulator.qrs_port, "rejectUnauthorized": True},
        "udpServerConfig": {
            "enable": True,
            "serverHost": "127.0.0.1",
            "portTaskFailure": task_port,
            "portSessionConnectionEvents": session_port,
            "messageQueue": {"maxConcurrent": 10, "maxSize": 1000},
        },
    }
    if broker_port is not None:
        sections["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker_port}
    port = free_port()
    config = write_butler_config(
        workdir / "butler.yaml", port, ["butlerping", "activeUserCount"], certs.directory, **sections
    )
    butler = start_butler(config, butler_core)
    load = Load(simulator, session_port, rate, task_share)
    failures = 0
    try:
        wait_port(port, butler)
        idle_mb = rss_mb(butler.pid)
        drops_before = kernel_udp_drops()
        tasks_sent_before = simulator.udp.sent
        pinger = await asyncio.create_subprocess_exec(
            "taskset",
            "-c",
            load_core,
            sys.executable,
            "-c",
            PINGER,
            str(port),
            str(seconds),
            stdout=asyncio.subprocess.PIPE,
        )
        memory: list[float] = []

        async def sample_memory() -> None:
            while True:
                memory.append(rss_mb(butler.pid))
                await asyncio.sleep(1)

        sampler = asyncio.get_running_loop().create_task(sample_memory())
        started, cpu_before = time.monotonic(), cpu_seconds(butler.pid)
        await load.run(seconds)
        elapsed = time.monotonic() - started
        cpu_share = (cpu_seconds(butler.pid) - cpu_before) / elapsed
        ping_output, _ = await pinger.communicate()
        # Runs started last finish within milliseconds; then Butler drains its queue.
        await asyncio.sleep(1.0)
        tasks_sent = simulator.udp.sent - tasks_sent_before
        for _ in range(100):
            stats = health(port)
            if (
                stats["taskEvents"]["received"] >= tasks_sent
                and stats["sessionEvents"]["received"] >= load.sessions_sent
                and stats["taskEventQueue"] == 0
            ):
                break
            await asyncio.sleep(0.1)
        sampler.cancel()
        kernel_drops = kernel_udp_drops() - drops_before
        stats = health(port)
        latencies = sorted(json.loads(ping_output))
        sent = load.sessions_sent + tasks_sent
        print(
            f"sent {sent:,} datagrams in {elapsed:.1f} s = {sent / elapsed:,.0f}/s "
            f"({load.sessions_sent:,} session events, {tasks_sent:,} task events from "
            f"{load.runs_started:,} task runs; {load.runs_refused:,} runs skipped, every task busy)"
        )
        for name, key, expected in (
            ("session port", "sessionEvents", load.sessions_sent),
            ("task port", "taskEvents", tasks_sent),
        ):
            counted = stats[key]
            print(
                f"  {name}: sent {expected:,}, received {counted['received']:,}, "
                f"accepted {counted['accepted']:,}, malformed {counted['malformed']}, "
                f"dropped {counted['dropped'] or 0}"
            )
            if counted["received"] != expected or counted["accepted"] != expected:
                failures += 1
        print(
            f"  task events enriched and handed on: {stats['taskEventsHandled']:,} "
            f"({stats['taskEventsPartial']} partial); QRS calls: {sum(simulator.qrs.calls.values()):,}"
        )
        print(f"  kernel UDP receive-buffer drops during the run: {kernel_drops}")
        # A user is a directory and an id, whichever proxies their sessions are on.
        expected_users = len({(directory, user) for _, directory, user in load.logged_in})
        print(f"  active users at the end: {stats['activeUsers']:,} (by what was sent: {expected_users:,})")
        if stats["activeUsers"] != expected_users:
            failures += 1
        print(f"Butler CPU during the load: {cpu_share:.0%} of one core")
        print(
            f"Butler memory: {idle_mb:.1f} MB idle, {memory[0]:.1f} MB at the start of the load, "
            f"{max(memory):.1f} MB at most, {memory[-1]:.1f} MB at the end"
        )
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        ok = latencies[-1] < PING_TARGET_MS
        failures += 0 if ok else 1
        print(
            f"GET /v4/butlerping during the load: {len(latencies)} requests, median "
            f"{latencies[len(latencies) // 2]:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms "
            f"(target < {PING_TARGET_MS:g} ms) {'ok' if ok else 'ABOVE TARGET'}"
        )
    finally:
        load.close()
        await stop_run(butler, simulator, workdir)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000, help="datagrams per second")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--task-share", type=float, default=0.1, help="share of task events in the mix")
    parser.add_argument("--mqtt", action="store_true", help="also publish every event to a Mosquitto broker")
    arguments = parser.parse_args()
    broker = None
    broker_port = None
    if arguments.mqtt:
        broker_port = free_port()
        broker = subprocess.Popen(["mosquitto", "-p", str(broker_port)], stderr=subprocess.DEVNULL)
        wait_port(broker_port, broker)
    try:
        failures = asyncio.run(run(arguments.rate, arguments.seconds, arguments.task_share, broker_port))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
