"""Benchmark of several Butlers on one Redis: key-value throughput with 1, 2 and 3 instances, the time from
``kill -9`` of a monitor's lease holder to the next check made by another, and from ``kill -9`` of the
Butler handling a failed reload to its alert delivered by another.

Throughput: N Butlers (``keyValueStore.backend: redis``) and redis-server share the machine's cores; one
wrk per Butler, 32 connections split among them (a load balancer's round robin, without the balancer's own
cost), POST writing one of 500 keys, GET reading one; the figures are the sums. Failover: three Butlers with
a heartbeat every second to a receiver of the benchmark's own; the holder of the heartbeat's lease (from
``/health``) is killed with SIGKILL, and the time from the kill to the next beat is measured, ``--runs``
times, with ``instances.takeoverSeconds`` at ``--takeover`` (and once at the default 15 s with
``--default-run``). Alert failover: three Butlers on qliksim (QRS answering in 3 s, so that enrichment is
under way), each sent the datagram of one failed reload; the Butler that claimed it is killed with SIGKILL,
and the time from the kill to the webhook alert arriving from another is measured, ``--runs`` times, at
the default ``takeoverSeconds`` (15) unless ``--alert-takeover`` says otherwise; each alert must arrive
once. Needs ``wrk`` and ``redis-server``.

    python bench/instances.py [--duration 10] [--runs 10] [--takeover 2] [--default-run]
        [--alert-takeover 15] [--skip-throughput] [--skip-heartbeat]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from alerts import Task, datagram, put, site_file
from harness import (
    free_port,
    run_wrk,
    start_butler,
    start_simulator,
    stop_processes,
    wait_port,
    write_butler_config,
)
from key_value import GET_SCRIPT, POST_SCRIPT


def start_redis(workdir: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    port = free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            *("--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(workdir)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(redis)
    wait_port(port, redis)
    return f"redis://127.0.0.1:{port}/0"


def start_butlers(
    workdir: Path,
    count: int,
    redis_url: str,
    processes: list[subprocess.Popen[bytes]],
    each: Callable[[int], dict[str, Any]] = lambda number: {},
    certs: Path | None = None,
    **sections: Any,
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """``count`` Butlers on ``redis_url`` with ``sections``, and ``each(number)``'s sections of their own;
    with the QMC-style certificates of the folder ``certs``, if given."""
    prefix = f"bench:{time.monotonic_ns()}:kv:"
    instances = sections.pop("instances", {})
    butlers = []
    cores = ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    for number in range(count):
        port = free_port()
        config = write_butler_config(
            workdir / f"butler-{number}.yaml",
            port,
            ["keyValueStore"],
            certs,
            keyValueStore={
                "enable": True,
                "backend": "redis",
                "redis": {"url": redis_url, "keyPrefix": prefix},
            },
            instances={"instanceId": f"butler-{number}", **instances},
            **sections,
            **each(number),
        )
        log = (workdir / f"butler-{number}.log").open("w")
        butler = start_butler(config, cores, log)
        processes.append(butler)
        butlers.append((butler, f"http://127.0.0.1:{port}"))
    for butler, base in butlers:
        wait_port(int(base.rsplit(":", 1)[1]), butler)
    return butlers


def throughput(workdir: Path, duration: int, count: int, cores: list[int]) -> tuple[float, float]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = start_redis(workdir, processes)
        butlers = start_butlers(workdir, count, redis_url, processes)
        base = butlers[0][1]
        for number in range(500):
            request = urllib.request.Request(
                f"{base}/v4/keyvalues/bench",
                method="POST",
                data=json.dumps({"key": f"k{number}", "value": "v"}).encode(),
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(request).read()
        sums = []
        for path, script in (("/v4/keyvalues/bench", "post.lua"), ("", "get.lua")):
            results: list[float] = []
            threads = [
                threading.Thread(
                    target=_load,
                    args=(
                        b + path,
                        duration,
                        str(cores[i % len(cores)]),
                        32 // count,
                        workdir / script,
                        results,
                    ),
                )
                for i, (_, b) in enumerate(butlers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sums.append(sum(results))
        return sums[0], sums[1]
    finally:
        stop_processes(processes)


def _load(url: str, duration: int, core: str, connections: int, script: Path, results: list[float]) -> None:
    results.append(run_wrk(url, duration, core, connections=connections, script=script).rps)


class Beats(BaseHTTPRequestHandler):
    """The heartbeats' receiver (GET), and the webhook alerts' (POST): when each arrived."""

    at: ClassVar[list[float]] = []
    #: Arrival times of the webhook alerts, by the datagram's message.
    alerts: ClassVar[dict[str, list[float]]] = {}

    def do_GET(self) -> None:
        Beats.at.append(time.monotonic())
        self._ok()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        Beats.alerts.setdefault(str(body.get("logMessage")), []).append(time.monotonic())
        self._ok()

    def _ok(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        return None


def health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
        return dict(json.loads(answer.read()))


def failover(workdir: Path, takeover: float, receiver: str) -> float:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = start_redis(workdir, processes)
        heartbeat = {"enable": True, "remoteURL": receiver, "frequency": "every 1 seconds"}
        butlers = start_butlers(
            workdir, 3, redis_url, processes, heartbeat=heartbeat, instances={"takeoverSeconds": takeover}
        )
        time.sleep(2.5)
        holder = next(
            butler
            for butler, base in butlers
            if any(
                lease["name"] == "monitor:heartbeat" and lease["mine"]
                for lease in health(base)["instances"]["leases"]
            )
        )
        holder.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        holder.wait(10)
        while not [at for at in Beats.at if at > killed]:
            if time.monotonic() - killed > 3 * takeover + 5:
                raise RuntimeError("nobody took over")
            time.sleep(0.02)
        return min(at for at in Beats.at if at > killed) - killed
    finally:
        stop_processes(processes)


def alert_failover(
    workdir: Path, takeover: float, receiver: str, qrs_port: int, control: str, task: Task, run: int
) -> float:
    """Seconds from ``kill -9`` of the Butler enriching a failed reload to its alert arriving from another."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = start_redis(workdir, processes)
        udp_ports = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
        butlers = start_butlers(
            workdir,
            3,
            redis_url,
            processes,
            lambda number: alerting_sections(qrs_port, udp_ports[number], receiver),
            certs=workdir / "certs",
            instances={"takeoverSeconds": takeover},
        )
        put(f"{control}/faults/qrs", {"latency_ms": 3000})
        token = f"alert failover {run}"
        message = datagram(task, 10_000 + run, token)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for udp_port in udp_ports:
                sender.sendto(message, ("127.0.0.1", udp_port))
        deadline = time.monotonic() + 5
        claimant = None
        while claimant is None:
            for butler, base in butlers:
                if health(base)["udpEvents"]["sharing"]["taskEvents"]["claimed"]:
                    claimant = butler
            if time.monotonic() > deadline:
                raise RuntimeError("no Butler claimed the failed reload")
            time.sleep(0.02)
        claimant.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        claimant.wait(10)
        put(f"{control}/faults/qrs", {"latency_ms": 20})
        if Beats.alerts.get(token):
            raise RuntimeError("the alert arrived before the kill: QRS was not slow enough")
        while not Beats.alerts.get(token):
            if time.monotonic() - killed > 2 * takeover + 15:
                raise RuntimeError("nobody took the failed reload over")
            time.sleep(0.02)
        time.sleep(1)
        if len(Beats.alerts[token]) != 1:
            raise RuntimeError(f"the alert arrived {len(Beats.alerts[token])} times")
        return Beats.alerts[token][0] - killed
    finally:
        stop_processes(processes)


def alerting_sections(qrs_port: int, udp_port: int, receiver: str) -> dict[str, Any]:
    """Config sections of a Butler on the simulator's QRS, alerting failed reloads to ``receiver``."""
    return {
        "configQRS": {"host": "localhost", "port": qrs_port, "rejectUnauthorized": True},
        "udpServerConfig": {
            "enable": True,
            "serverHost": "127.0.0.1",
            "portTaskFailure": udp_port,
            "portSessionConnectionEvents": 0,
        },
        "webhookNotification": {
            "enable": True,
            "reloadTaskFailure": {
                "rateLimit": 0,
                "webhooks": [{"description": "bench", "webhookURL": receiver, "httpMethod": "POST"}],
            },
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--takeover", type=float, default=2.0)
    parser.add_argument("--default-run", action="store_true", help="one more failover at the default 15 s")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-heartbeat", action="store_true", help="no failover of the heartbeat")
    parser.add_argument("--alert-takeover", type=float, default=15.0, help="takeoverSeconds for alerts")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    workdir = Path(tempfile.mkdtemp(prefix="butler-instances-bench-"))
    (workdir / "post.lua").write_text(POST_SCRIPT)
    (workdir / "get.lua").write_text(GET_SCRIPT)
    print(f"{len(cores)} cores shared by redis-server, the Butlers and wrk; 32 connections in all")
    try:
        if not args.skip_throughput:
            for count in (1, 2, 3):
                post, get = throughput(workdir, args.duration, count, cores)
                print(f"{count} Butler(s): POST {post:,.0f} req/s, GET {get:,.0f} req/s")
        server = ThreadingHTTPServer(("127.0.0.1", 0), Beats)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        receiver = f"http://127.0.0.1:{server.server_address[1]}/beat"
        if not args.skip_heartbeat:
            gaps = [failover(workdir, args.takeover, receiver) for _ in range(args.runs)]
            print(
                f"failover, takeoverSeconds {args.takeover:g} (lease {args.takeover * 0.75:g} s), "
                f"{args.runs} runs: kill -9 to next check median {statistics.median(gaps):.2f} s, "
                f"max {max(gaps):.2f} s"
            )
            if args.default_run:
                gap = failover(workdir, 15.0, receiver)
                print(f"failover, takeoverSeconds 15 (default), 1 run: {gap:.2f} s")
        tasks = site_file(workdir / "site.yaml")
        qrs_port, engine_port, control_port = free_port(), free_port(), free_port()
        simulator = start_simulator(workdir, qrs_port, engine_port, control_port)
        try:
            wait_port(qrs_port, simulator)
            control = f"http://127.0.0.1:{control_port}"
            gaps = [
                alert_failover(workdir, args.alert_takeover, receiver, qrs_port, control, tasks[run], run)
                for run in range(args.runs)
            ]
        finally:
            stop_processes([simulator])
        print(
            f"alert failover, takeoverSeconds {args.alert_takeover:g}, {args.runs} runs: kill -9 of the "
            f"Butler enriching a failed reload to its alert delivered by another, each once: median "
            f"{statistics.median(gaps):.2f} s, max {max(gaps):.2f} s"
        )
        server.shutdown()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
