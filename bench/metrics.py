"""Benchmark of GET /metrics: its answer time on a busy Butler, and what collecting metrics costs.

1. Scrape time: Butler with 50 route templates answered (three statuses each: 150 request series), 20
   proxy hosts with active users (sent as UDP session events) and the service, licence and version
   monitors on a simulated site of 10 nodes (``bench/monitors.py``'s site): ``GET /metrics`` answered by wrk
   on one connection; target p99 < 10 ms.
2. Cost: ``GET /v4/butlerping`` on Butler with metrics (scraped every second meanwhile, as Prometheus
   would) and without, the two alternated in the same run: requests/s, and Butler's CPU time per request
   (from /proc), which other load on the machine disturbs far less; target: less than 5 % more CPU per
   request (at full load, 5 % fewer requests/s).
3. The request-metrics middleware alone: the REST chain run in this process for a ping, with and without
   it, in CPU time per request; what it adds, as a share of the CPU a ping costs the whole server (2.).

Butler runs pinned to one core, wrk to the other. Needs ``wrk`` and ``taskset``.

    python bench/metrics.py [--duration 5] [--rounds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from harness import (
    chain_cpu,
    cores,
    cpu_seconds,
    free_port,
    run_wrk,
    start_butler,
    start_simulator,
    stop_processes,
    udp_ports,
    wait_for_answer,
    wait_port,
    write_butler_config,
)
from monitors import NODES, monitor_sections, site_file

ROUTES = 50
PROXIES = 20
USERS_PER_PROXY = 25
ENDPOINTS = ["butlerping", "activeUserCount", "activeUsers"]


def serve(config: Path) -> None:
    """Butler as ``butler serve`` runs it, with 50 routes' requests counted."""
    from butler.app import Butler, run
    from butler.cli import _event_loop_runner
    from butler.config import load_config

    butler = Butler(load_config(config), rate_limit=0)

    def started() -> None:
        metrics = butler.services.metrics
        assert metrics is not None
        for route in range(ROUTES):
            for status in (200, 400, 404):
                for request in range(20):
                    metrics.requests.observe(f"/v4/bench/route{route}/{{id}}", "GET", status, request / 1000)

    _event_loop_runner()(run(butler, started))


def send_sessions(port: int) -> None:
    from qliksim.udp import SessionEvent

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for proxy in range(PROXIES):
            for user in range(USERS_PER_PROXY):
                event = SessionEvent("Start session", f"proxy{proxy}.company.com", "LAB", f"user{user}")
                sock.sendto(event.datagram(), ("127.0.0.1", port))
                time.sleep(0.0005)  # within the receive buffer


def scrape_time(workdir: Path, server_core: str, load_core: str, duration: int) -> bool:
    port = free_port()
    task_port, session_port = udp_ports()
    udp = {
        "enable": True,
        "serverHost": "127.0.0.1",
        "portTaskFailure": task_port,
        "portSessionConnectionEvents": session_port,
        "sessionStateFile": None,
    }
    qrs_port, engine_port, control_port, info_port = free_port(), free_port(), free_port(), free_port()
    site_file(workdir / "site.yaml")
    simulator = start_simulator(
        workdir, qrs_port, engine_port, control_port, core=load_core, systeminfo_port=info_port
    )
    processes = [simulator]
    try:
        wait_port(qrs_port, simulator)
        config = write_butler_config(
            workdir / "scrape.yaml",
            port,
            ENDPOINTS,
            workdir / "certs",
            configQRS={"host": "localhost", "port": qrs_port, "rejectUnauthorized": True},
            prometheus={"enable": True},
            udpServerConfig=udp,
            **monitor_sections(info_port),
        )
        command = ["taskset", "-c", server_core, sys.executable, __file__, "--serve", str(config)]
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        base = f"http://127.0.0.1:{port}"
        wait_for_answer(f"{base}/v4/butlerping", 15)
        send_sessions(session_port)
        time.sleep(1.5)  # the monitors' first checks made
        with urllib.request.urlopen(f"{base}/metrics") as response:
            text = response.read().decode()
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        proxies = sum(1 for line in text.splitlines() if line.startswith("butler_active_users{"))
        services = sum(1 for line in text.splitlines() if line.startswith("butler_sense_service_running{"))
        print(
            f"GET /metrics: {len(text) / 1024:.0f} KiB, {series} samples, {proxies} proxy hosts, "
            f"{services} services on {NODES} nodes, {ROUTES} routes"
        )
        result = run_wrk(f"{base}/metrics", duration, load_core, connections=1)
        ok = result.p99_ms < 10 and result.non_2xx == 0
        print(
            f"GET /metrics, one connection: {result.rps:,.0f} scrapes/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms (target p99 < 10 ms) {'ok' if ok else 'ABOVE TARGET'}"
        )
        return ok and services > 0
    finally:
        stop_processes(processes)


def _scrape_every_second(url: str, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(url) as response:
            response.read()


def cost(workdir: Path, server_core: str, load_core: str, args: argparse.Namespace) -> bool:
    bases: dict[bool, str] = {}
    servers = []
    for on in (False, True):
        port = free_port()
        config = write_butler_config(
            workdir / f"cost-{on}.yaml", port, ["butlerping"], prometheus={"enable": on}
        )
        log = (workdir / f"cost-{on}.log").open("w")
        servers.append(start_butler(config, server_core, log))
        bases[on] = f"http://127.0.0.1:{port}"
    try:
        for base in bases.values():
            wait_for_answer(f"{base}/v4/butlerping", 15)
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for on, server in zip((False, True), servers, strict=True):
                stop = threading.Event()
                scraper = threading.Thread(target=_scrape_every_second, args=(f"{bases[on]}/metrics", stop))
                if on:
                    scraper.start()
                before = cpu_seconds(server.pid)
                result = run_wrk(f"{bases[on]}/v4/butlerping", args.duration, load_core, args.connections)
                cpu[on].append((cpu_seconds(server.pid) - before) / result.requests * 1e6)
                stop.set()
                if on:
                    scraper.join()
                rates[on].append(result.rps)
        for on in (False, True):
            runs = ", ".join(f"{rate:,.0f}" for rate in rates[on])
            costs = ", ".join(f"{micro:.1f}" for micro in cpu[on])
            print(
                f"GET /v4/butlerping {'with' if on else 'without'} metrics: {runs} req/s; "
                f"CPU per request {costs} µs"
            )
        without, with_metrics = (statistics.median(rates[on]) for on in (False, True))
        cpu_without, cpu_with = (statistics.median(cpu[on]) for on in (False, True))
        extra = (cpu_with - cpu_without) / cpu_without * 100
        ok = extra < 5
        print(
            f"median without {without:,.0f} req/s, with {with_metrics:,.0f} req/s "
            f"({(with_metrics - without) / without * 100:+.1f} %), best {max(rates[False]):,.0f} and "
            f"{max(rates[True]):,.0f}; CPU per request {cpu_without:.1f} µs "
            f"without, {cpu_with:.1f} µs with ({extra:+.1f} %, target < 5 %) {'ok' if ok else 'ABOVE TARGET'}"
        )
        added = middleware_cost(args.rounds)
        share = added / min(cpu[False]) * 100
        print(
            f"the middleware adds {added:.2f} µs per request: {share:.1f} % of a ping's "
            f"{min(cpu[False]):.1f} µs of server CPU (least run without metrics)"
        )
        return ok
    finally:
        stop_processes(servers)


def middleware_cost(rounds: int) -> float:
    """µs of CPU the middleware adds to a ping request (the least of each side over ``rounds``)."""
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from butler.http.middleware.request_metrics import RequestTimes
    from butler.http.routing import ApiRequest, Reply, Route, Router, json_reply
    from butler.http.server import RestApi

    answer = json_reply({"response": "Butler reporting for duty"})

    async def ping(request: ApiRequest) -> Reply:
        return answer

    router = Router()
    router.add(Route("GET", "/v4/butlerping", ping))
    apis = {False: RestApi(router), True: RestApi(router, request_times=RequestTimes())}
    least = asyncio.run(chain_cpu(apis, make_mocked_request("GET", "/v4/butlerping"), rounds))
    print(
        f"REST chain in process: {least[False]:.2f} µs per ping without the middleware, "
        f"{least[True]:.2f} µs with"
    )
    return least[True] - least[False]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return 0
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install wrk util-linux)", file=sys.stderr)
            return 2
    server_core, load_core = cores()
    print(f"Butler on core {server_core}, wrk on core {load_core}, logging at info")
    workdir = Path(tempfile.mkdtemp(prefix="butler-bench-metrics-"))
    try:
        scrape_ok = scrape_time(workdir, server_core, load_core, args.duration)
        cost_ok = cost(workdir, server_core, load_core, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if scrape_ok and cost_ok else 1


if __name__ == "__main__":
    sys.exit(main())
