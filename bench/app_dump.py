"""Benchmark: dump of an app with 2,000 objects at simulated Engine latency 0 and 5 ms, and the memory a
large dump costs.

The simulator runs in this process with a site of two apps; Butler runs as a child process. Reports the
time of GET /v4/app/{id}/dump, the Engine calls it made, and Butler's peak memory: for the 2,000-object
app, and then for a large app (the same objects with long descriptions, tens of MB of JSON) as the peak
above Butler's resident memory before that dump, against the dump's size.

    python bench/app_dump.py [--objects 2000] [--large-mb 40]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from harness import free_port, memory_mb, start_butler, stop_run, write_butler_config
from qliksim.certs import make_site_certificates
from qliksim.server import Options, Simulator
from qliksim.site import build_site


def big_app(name: str, objects: int, description_bytes: int = 0) -> dict[str, object]:
    share = objects // 6
    text = "".join(chr(ord("a") + n % 26) for n in range(description_bytes))
    return {
        "name": name,
        "sheets": [
            {
                "id": f"sheet-{n}",
                "title": f"Sheet {n}",
                "description": text,
                "children": [{"id": f"chart-{n}", "type": "barchart", "description": text}],
            }
            for n in range(share)
        ],
        "masterobjects": [
            {"id": f"master-{n}", "title": f"Master {n}", "description": text} for n in range(share)
        ],
        "dimensions": [
            {"id": f"dim-{n}", "label": f"Dim {n}", "fields": [f"Field{n}"], "description": text}
            for n in range(share)
        ],
        "measures": [
            {"id": f"msr-{n}", "label": f"Measure {n}", "expression": f"Sum(F{n})", "description": text}
            for n in range(share)
        ],
        "bookmarks": [{"id": f"bm-{n}", "title": f"Bookmark {n}", "description": text} for n in range(share)],
        "variables": [
            {"id": f"var-{n}", "name": f"v{n}", "definition": str(n)} for n in range(objects - 5 * share)
        ],
    }


def reset_peak(pid: int) -> bool:
    """Start VmHWM again from the current RSS (Linux: writing 5 to clear_refs); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def run(objects: int, large_mb: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="butler-dump-bench-"))
    certs = make_site_certificates(workdir / "certs", "bench")
    # About one description per object (a sheet's chart has one too; variables have none).
    description = large_mb * 1_000_000 // objects
    site = build_site({"apps": [big_app("Big App", objects), big_app("Large App", objects, description)]})
    app_id, large_id = list(site.apps)
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
            print(f"Butler peak resident memory: {memory_mb(butler.pid, 'VmHWM'):.1f} MB")
            simulator.faults.update("engine", {"latency_ms": 0})
            exact = reset_peak(butler.pid)
            before = memory_mb(butler.pid, "VmRSS" if exact else "VmHWM")
            started = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/v4/app/{large_id}/dump") as response:
                size = len(await response.read())
                assert response.status == 200
            seconds = time.perf_counter() - started
            grown = memory_mb(butler.pid, "VmHWM") - before
            print(
                f"large app dump: {size / 1e6:.1f} MB of JSON in {seconds:.2f} s; Butler's peak grew "
                f"{grown:.1f} MB above {before:.1f} MB = {grown * 1e6 / size:.2f}x the dump's size"
                + ("" if exact else " (peak not resettable here: measured from the earlier peak)")
            )
    finally:
        await stop_run(butler, simulator, workdir)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--large-mb", type=int, default=40, help="size of the large app's dump")
    arguments = parser.parse_args()
    return 1 if asyncio.run(run(arguments.objects, arguments.large_mb)) else 0


if __name__ == "__main__":
    sys.exit(main())
