"""Benchmark: GET /v4/butlerping latency while Butler copies a 1 GB file through PUT /v4/filecopy.

Butler runs pinned to one core; this script (the pinger and the copy request) on the other.

    python bench/files.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from harness import cores, free_port, start_butler, wait_port, write_butler_config


def write_file(path: Path, size_mb: int) -> None:
    chunk = os.urandom(1 << 20)
    with path.open("wb") as out:
        for _ in range(size_mb):
            out.write(chunk)


async def measure(base: str, source: Path, target: Path) -> tuple[float, list[float]]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http:
        copy = asyncio.ensure_future(
            http.put(f"{base}/v4/filecopy", json={"fromFile": str(source), "toFile": str(target)})
        )
        started = time.perf_counter()
        while not copy.done():
            begin = time.perf_counter()
            async with http.get(f"{base}/v4/butlerping") as response:
                await response.read()
                assert response.status == 200
            latencies.append((time.perf_counter() - begin) * 1000)
            await asyncio.sleep(0.01)
        response = await copy
        assert response.status == 201, await response.text()
        response.release()
        return time.perf_counter() - started, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    server_core, load_core = cores()
    os.sched_setaffinity(0, {int(load_core)})
    workdir = Path(tempfile.mkdtemp(prefix="butler-files-bench-"))
    (workdir / "from").mkdir()
    (workdir / "to").mkdir()
    source = workdir / "from" / "big.bin"
    write_file(source, args.size_mb)
    port = free_port()
    config = workdir / "butler.yaml"
    write_butler_config(
        config,
        port,
        ["butlerping", "fileCopy"],
        fileCopyApprovedDirectories=[
            {"fromDirectory": str(workdir / "from"), "toDirectory": str(workdir / "to")}
        ],
    )
    butler = start_butler(config, server_core, subprocess.DEVNULL)
    try:
        wait_port(port, butler)
        seconds, latencies = asyncio.run(
            measure(f"http://127.0.0.1:{port}", source, workdir / "to" / "big.bin")
        )
        latencies.sort()
        worst = latencies[-1] if latencies else float("nan")
        ok = worst < 20
        print(
            f"copy of {args.size_mb} MB took {seconds:.1f} s; {len(latencies)} pings meanwhile: median "
            f"{latencies[len(latencies) // 2]:.2f} ms, p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms, "
            f"max {worst:.2f} ms (target < 20 ms) {'ok' if ok else 'BELOW TARGET'}"
        )
        return 0 if ok else 1
    finally:
        butler.terminate()
        butler.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
