"""Benchmark: dump of an app with 2,000 objects at simulated Engine latency 0 and 5 ms.

The simulator runs in this process with a site of one big app; Butler runs as a child process.
Reports the time of GET /v4/app/{id}/dump, the Engine calls it made, and Butler's peak memory.

    python bench/app_dump.py [--objects 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from harness import free_port, start_butler, write_butler_config
from qliksim.certs import make_site_certificates
from qliksim.server import Options, Simulator
from qliksim.site import build_site


def big_app(objects: int) -> dict[str, object]:
    share = objects // 6
    return {
        "name": "Big App",
        "sheets": [
            {
                "id": f"sheet-{n}",
                "title": f"Sheet {n}",
                "children": [{"id": f"chart-{n}", "type": "barchart"}],
            }
            for n in range(share)
        ],
        "masterobjects": [{"id": f"master-{n}", "title": f"Master {n}"} for n in range(share)],
        "dimensions": [
            {"id": f"dim-{n}", "label": f"Dim {n}", "fields": [f"Field{n}"]} for n in range(share)
        ],
        "measures": [
            {"id": f"msr-{n}", "label": f"Measure {n}", "expression": f"Sum(F{n})"} for n in range(share)
        ],
        "bookmarks": [{"id": f"bm-{n}", "title": f"Bookmark {n}"} for n in range(share)],
        "variables": [
            {"id": f"var-{n}", "name": f"v{n}", "definition": str(n)} for n in range(objects - 5 * share)
        ],
    }


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(objects: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="butler-dump-bench-"))
    certs = make_site_certificates(workdir / "certs", "bench")
    site = build_site({"apps": [big_app(objects)]})
    app_id = next(iter(site.apps))
    simulator = Simulator(site, certs, Options(qrs_port=0, engine_port=0, control_port=None))
    await simulator.start()
    port = free_port()
    config = workdir / "butler.yaml"
    write_butler_config(
        config,
        port,
        ["senseAppDump"],
        certs.directory,
        configEngine={"host": "localhost", "port": simulator.engine_port, "rejectUnauthorized": True},
    )
    butler = start_butler(config, "0")
    failures = 0
    try:
        for _ in range(100):
            try:
                await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            for latency in (0, 5):
                simulator.faults.update("engine", {"latency_ms": latency})
                simulator.engine.calls.clear()
                started = time.perf_counter()
                async with http.get(f"http://127.0.0.1:{port}/v4/app/{app_id}/dump") as response:
                    body = await response.read()
                    assert response.status == 200, body[:300]
                seconds = time.perf_counter() - started
                calls = sum(simulator.engine.calls.values())
                ok = latency != 5 or seconds < 1
                failures += 0 if ok else 1
                print(
                    f"dump of {objects} objects at Engine latency {latency} ms: {seconds:.2f} s, "
                    f"{calls:,} Engine calls, {len(body) / 1e6:.1f} MB of JSON"
                    + (f" (target < 1 s) {'ok' if ok else 'BELOW TARGET'}" if latency == 5 else "")
                )
        print(f"Butler peak resident memory: {peak_mb(butler.pid):.1f} MB")
    finally:
        butler.terminate()
        butler.wait(10)
        await simulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    return 1 if asyncio.run(run(parser.parse_args().objects)) else 0


if __name__ == "__main__":
    sys.exit(main())
