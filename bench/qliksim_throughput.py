"""Benchmark of the simulator: QRS requests/s over keep-alive mutual TLS, and Engine requests/s pipelined on
one WebSocket.

qliksim runs pinned to one core, the load generator (Python, aiohttp) to the other. Besides the rate
achieved, the server's own CPU time is read from /proc, giving its capacity on one core
(requests / server CPU seconds) even when the load generator is what limits the achieved rate.

    python bench/qliksim_throughput.py [--duration 10] [--connections 16] [--window 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import cpu_seconds, free_port

TASK = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
XRF = "0123456789abcdef"
HEADERS = {"X-Qlik-Xrfkey": XRF, "X-Qlik-User": "UserDirectory=Internal; UserId=sa_repository"}


def tls(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "root.pem"))
    context.load_cert_chain(str(certs / "client.pem"), str(certs / "client_key.pem"))
    return context


async def qrs_load(port: int, certs: Path, duration: float, connections: int) -> tuple[int, list[float]]:
    import aiohttp

    url = aiohttp.client.URL(
        f"https://localhost:{port}/qrs/task?filter=id%20eq%20{TASK}&xrfkey={XRF}", encoded=True
    )
    latencies: list[float] = []
    done = 0
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(ssl=tls(certs), limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with session.get(url, headers=HEADERS) as response:
                    body = await response.read()
                    assert response.status == 200 and TASK.encode() in body, response.status
                latencies.append(time.perf_counter() - started)
                done += 1

        await asyncio.gather(*(worker() for _ in range(connections)))
    return done, latencies


async def engine_load(port: int, certs: Path, duration: float, window: int) -> int:
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls(certs))) as session:
        socket_ = await session.ws_connect(f"wss://localhost:{port}/app/engineData", headers=HEADERS)
        await socket_.receive()  # OnConnected
        await socket_.send_str(
            json.dumps({"jsonrpc": "2.0", "id": 0, "handle": -1, "method": "EngineVersion", "params": []})
        )
        await socket_.receive()
        sent = received = 0
        deadline = time.perf_counter() + duration
        while sent < window:
            sent += 1
            await socket_.send_str(
                json.dumps(
                    {"jsonrpc": "2.0", "id": sent, "handle": -1, "method": "EngineVersion", "params": []}
                )
            )
        while True:
            message = await socket_.receive()
            received += 1
            assert b"qComponentVersion" in message.data.encode()
            if time.perf_counter() < deadline:
                sent += 1
                await socket_.send_str(
                    json.dumps(
                        {"jsonrpc": "2.0", "id": sent, "handle": -1, "method": "EngineVersion", "params": []}
                    )
                )
            elif received == sent:
                break
        await socket_.close()
        return received


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--window", type=int, default=200, help="Engine requests in flight")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (cores[0], cores[1]) if len(cores) > 1 else (cores[0], cores[0])
    workdir = Path(tempfile.mkdtemp(prefix="qliksim-bench-"))
    certs = workdir / "certs"
    qrs_port, engine_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "qliksim",
        "serve",
        "--certs",
        str(certs),
        "--qrs-port",
        str(qrs_port),
        "--engine-port",
        str(engine_port),
        "--loglevel",
        "warning",
    ]
    server = subprocess.Popen(["taskset", "-c", str(server_core), *command])
    signal.signal(signal.SIGTERM, lambda *_: (server.terminate(), sys.exit(1)))
    os.sched_setaffinity(0, {load_core})
    failures = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", engine_port), timeout=0.2).close()
                socket.create_connection(("127.0.0.1", qrs_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("qliksim did not start") from None
                time.sleep(0.1)
        print(f"qliksim on core {server_core}, load generator on core {load_core}")

        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        done, latencies = asyncio.run(qrs_load(qrs_port, certs, args.duration, args.connections))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        capacity = done / cpu if cpu else float("inf")
        print(
            f"QRS task?filter=id eq ...: {done / elapsed:,.0f} req/s achieved, {args.connections} keep-alive "
            f"TLS connections, p50 {percentile(latencies, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms; server CPU {cpu / elapsed:.0%} of a core, "
            f"capacity {capacity:,.0f} req/s per core (target >= 3,000)"
        )
        if capacity < 3000:
            failures.append("qrs")

        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        received = asyncio.run(engine_load(engine_port, certs, args.duration, args.window))
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        capacity = received / cpu if cpu else float("inf")
        print(
            f"Engine EngineVersion pipelined on one socket ({args.window} in flight): "
            f"{received / elapsed:,.0f} req/s achieved; server CPU {cpu / elapsed:.0%} of a core, "
            f"capacity {capacity:,.0f} req/s per core (target >= 10,000)"
        )
        if capacity < 10000:
            failures.append("engine")
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
