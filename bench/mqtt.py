"""Benchmark of MQTT: task starts from MQTT messages, and PUT /v4/mqttpublishmessage.

1. Task starts: messages with a task id are published on ``qliksense/start_task`` at ``--rate`` per second
   for ``--duration`` seconds; the simulated QRS (run in this process) notes when each start arrives. Reports
   the latency from publish to the start reaching QRS, and any message lost.
2. Publishing: wrk sends ``PUT /v4/mqttpublishmessage`` (32 connections); a subscriber counts what arrives.

Butler runs pinned to one core, mosquitto and wrk to the other. Needs ``wrk`` and ``mosquitto``.

    python bench/mqtt.py [--duration 30] [--rate 100] [--publish-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from harness import free_port, start_butler, stop_processes, write_butler_config
from qliksim.certs import make_site_certificates
from qliksim.server import Options, Simulator
from qliksim.site import load_site


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, **kwargs)


async def wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    butler_core, other_core = (str(cores[0]), str(cores[1])) if len(cores) > 1 else ("0", "0")
    os.sched_setaffinity(0, {int(other_core)})
    workdir = Path(tempfile.mkdtemp(prefix="butler-mqtt-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    failures: list[str] = []
    simulator = None
    try:
        broker_port = free_port()
        (workdir / "mosquitto.conf").write_text(
            f"listener {broker_port} 127.0.0.1\npersistence false\nallow_anonymous true\nuser root\n"
            # Without TCP_NODELAY the broker holds small messages back (Nagle) for up to tens of ms.
            "max_queued_messages 100000\nset_tcp_nodelay true\n"
        )
        processes.append(
            spawn(
                [
                    "taskset",
                    "-c",
                    other_core,
                    shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                    "-c",
                    str(workdir / "mosquitto.conf"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        await wait_port(broker_port)

        certs = make_site_certificates(workdir / "certs", "bench")
        site = load_site(None)
        simulator = Simulator(
            site, certs, Options(qrs_port=0, engine_port=0, control_port=None, time_scale=1.0)
        )
        arrivals: dict[str, float] = {}
        original = simulator.qrs.start_one

        async def noted(request: Any) -> web.Response:
            arrivals.setdefault(request.parts[1], time.perf_counter())
            response: web.Response = await original(request)
            return response

        simulator.qrs.start_one = noted  # type: ignore[method-assign]
        await simulator.start()

        port = free_port()
        config = workdir / "butler.yaml"
        write_butler_config(
            config,
            port,
            ["mqttPublishMessage"],
            certs.directory,
            configQRS={"host": "localhost", "port": simulator.qrs_port, "rejectUnauthorized": True},
            mqttConfig={
                "enable": True,
                "brokerHost": "127.0.0.1",
                "brokerPort": broker_port,
                "queueSize": 100000,
            },
        )
        log = (workdir / "butler.log").open("w")
        processes.append(start_butler(config, butler_core, log))
        await wait_port(port)
        await asyncio.sleep(1.5)  # Butler connects to the broker in the background

        # 1. Task starts from MQTT. Each message names a task not asked for before in this run, so every
        # start is a distinct arrival; the demo site is reused with fresh ids added for the benchmark.
        count = int(args.rate * args.duration)
        template = next(iter(site.tasks.values()))
        ids = [f"{n:08x}-1111-4111-8111-{n:012x}" for n in range(count)]
        for task_id in ids:
            site.tasks[task_id] = dict(
                template, id=task_id, name=f"Bench {task_id[:8]}", operational=dict(template["operational"])
            )
            site.task_behaviour[task_id] = site.task_behaviour[template["id"]]
        sent: dict[str, float] = {}
        async with aiomqtt.Client("127.0.0.1", broker_port) as client:
            interval = 1 / args.rate
            started = time.perf_counter()
            for number, task_id in enumerate(ids):
                delay = started + number * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[task_id] = time.perf_counter()
                await client.publish("qliksense/start_task", task_id)
            await asyncio.sleep(2)
        latencies = sorted((arrivals[t] - sent[t]) * 1000 for t in ids if t in arrivals)
        lost = count - len(latencies)
        median = statistics.median(latencies) if latencies else float("nan")
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
        ok = median < 10 and p99 < 50 and lost == 0
        failures += [] if ok else ["mqtt task start"]
        print(
            f"MQTT task start, {args.rate:.0f} msg/s for {args.duration:.0f} s: {len(latencies)} of {count} "
            f"starts reached QRS, {lost} lost; publish to QRS start median {median:.1f} ms, p99 {p99:.1f} ms "
            f"(target median < 10 ms, p99 < 50 ms, none lost) {'ok' if ok else 'BELOW TARGET'}"
        )

        # 2. PUT /v4/mqttpublishmessage under wrk, every message counted at a subscriber.
        received = 0
        expected: int | None = None
        body = json.dumps({"topic": "bench/publish", "message": "hello from a load script"})
        script = workdir / "publish.lua"
        script.write_text(
            f'wrk.method = "PUT"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{body}]==]\n"
        )
        async with aiomqtt.Client("127.0.0.1", broker_port, max_queued_incoming_messages=0) as subscriber:
            await subscriber.subscribe("bench/publish")

            async def count_messages() -> None:
                nonlocal received
                async for _ in subscriber.messages:
                    received += 1
                    if expected is not None and received >= expected:
                        all_in.set()

            counter = asyncio.create_task(count_messages())
            all_in = asyncio.Event()
            wrk = await asyncio.create_subprocess_exec(
                "taskset",
                "-c",
                other_core,
                "wrk",
                "-t1",
                "-c32",
                f"-d{args.publish_seconds}s",
                "--latency",
                "-s",
                str(script),
                f"http://127.0.0.1:{port}/v4/mqttpublishmessage",
                stdout=asyncio.subprocess.PIPE,
            )
            out = (await wrk.communicate())[0].decode()
            total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            errors_match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            accepted = total - (int(errors_match.group(1)) if errors_match else 0)
            expected = accepted
            if received >= accepted:
                all_in.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), 10)
            counter.cancel()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        ok = rps >= 8000 and received >= accepted and accepted == total
        failures += [] if ok else ["publish"]
        print(
            f"PUT /v4/mqttpublishmessage, 32 connections, {args.publish_seconds} s: {rps:,.0f} req/s, "
            f"{accepted:,} accepted of {total:,}, {received:,} received by the subscriber "
            f"(target >= 8,000 req/s, all received) {'ok' if ok else 'BELOW TARGET'}"
        )
    finally:
        stop_processes(processes)
        if simulator is not None:
            await simulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--publish-seconds", type=int, default=10)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
