"""Benchmark of slow and idle clients: how soon Butler closes them, and what a normal caller sees meanwhile.

Butler runs pinned to one core with its default limits except the head and keep-alive timeouts, which are
shortened so that a run takes seconds (``--head``, ``--idle``). The attack runs on the other core, from
this process: ``--silent`` connections that send nothing, ``--idle`` connections idle after one request,
``--slow`` connections that send a request head a byte every 0.5 s (slowloris), and ``--stalled`` requests
whose body never arrives in full. Meanwhile one keep-alive connection pings ``/v4/butlerping`` every 5 ms;
its latencies are the figure that matters (target: p99 < 20 ms).

    python bench/slow_clients.py [--silent 1000] [--idle-connections 500] [--slow 300] [--stalled 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness import free_port, memory_mb, rss_mb, start_butler, wait_port

# The attacking clients are the slow-client tests' own, so the benchmark measures what the tests check.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.test_slow_clients import HOST, closed_after, idle, p99, pinger, silent, slowloris


async def stalled(port: int) -> float:
    """A request whose body never arrives in full; seconds until Butler closes the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        b"POST /v4/keyvalues/bench HTTP/1.1\r\nHost: butler\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"key": "k", "value": "only part of'
    )
    seconds = await closed_after(reader, time.monotonic())
    writer.close()
    return seconds


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s" if values else "none"


async def attack(port: int, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    pings = asyncio.ensure_future(pinger(port, stop))
    await asyncio.sleep(0.5)
    kinds = {"silent": silent, "idle": idle, "slow": slowloris, "stalled": stalled}
    counts = {
        "silent": args.silent,
        "idle": args.idle_connections,
        "slow": args.slow,
        "stalled": args.stalled,
    }
    started: dict[str, list[asyncio.Future[float]]] = {kind: [] for kind in kinds}
    # The connections open over about a second, as they would arrive from a few machines.
    for step in range(20):
        for kind, opener in kinds.items():
            share = counts[kind] * (step + 1) // 20 - counts[kind] * step // 20
            started[kind] += [asyncio.ensure_future(opener(port)) for _ in range(share)]
        await asyncio.sleep(0.05)
    closes = {}
    for kind, futures in started.items():
        results = await asyncio.gather(*futures, return_exceptions=True)
        closes[kind] = [r for r in results if isinstance(r, float)]
        failed = len(results) - len(closes[kind])
        print(f"{counts[kind]:5d} {kind:8s} connections closed after {spread(closes[kind])}, {failed} failed")
    await asyncio.sleep(1)
    stop.set()
    latencies = sorted(await pings)
    worst = p99(latencies)
    verdict = "ok" if worst < 20 else "ABOVE TARGET"
    print(
        f"/v4/butlerping during the attack: {len(latencies)} pings, "
        f"median {statistics.median(latencies):.2f} ms, p99 {worst:.2f} ms, max {latencies[-1]:.2f} ms "
        f"(target p99 < 20 ms) {verdict}"
    )
    return 0 if verdict == "ok" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silent", type=int, default=1000)
    parser.add_argument("--idle-connections", type=int, default=500)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--stalled", type=int, default=100)
    parser.add_argument("--head", type=int, default=5, help="headersTimeoutSeconds")
    parser.add_argument("--body", type=int, default=5, help="bodyTimeoutSeconds")
    parser.add_argument("--idle", type=int, default=8, help="keepAliveTimeoutSeconds")
    args = parser.parse_args()
    total = args.silent + args.idle_connections + args.slow + args.stalled
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < total + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(total + 256, hard), hard))
    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (str(cores[0]), str(cores[1])) if len(cores) > 1 else ("0", "0")
    os.sched_setaffinity(0, {int(load_core)})
    workdir = Path(tempfile.mkdtemp(prefix="butler-slow-bench-"))
    port = free_port()
    config = workdir / "butler.yaml"
    rest = {
        "enable": True,
        "serverHost": HOST,
        "serverPort": port,
        "headersTimeoutSeconds": args.head,
        "bodyTimeoutSeconds": args.body,
        "keepAliveTimeoutSeconds": args.idle,
        "maxConnections": total + 100,
    }
    endpoints = {"butlerping": True, "keyValueStore": True}
    document = {
        "Butler": {"logLevel": "info", "restServerConfig": rest, "restServerEndpointsEnable": endpoints}
    }
    config.write_text(yaml.safe_dump(document))
    log = (workdir / "butler.log").open("w")
    butler = start_butler(config, server_core, log)
    try:
        wait_port(port, butler)
        print(
            f"Butler on core {server_core}, attack on core {load_core}; headersTimeoutSeconds {args.head}, "
            f"bodyTimeoutSeconds {args.body}, keepAliveTimeoutSeconds {args.idle}"
        )
        idle_memory = rss_mb(butler.pid)
        code = asyncio.run(attack(port, args))
        print(
            f"Butler resident memory: {idle_memory:.1f} MB before, "
            f"peak {memory_mb(butler.pid, 'VmHWM'):.1f} MB"
        )
    finally:
        butler.terminate()
        butler.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
