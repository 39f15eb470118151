"""Benchmark of the REST core: requests/s and p99 of ping and base conversion, idle memory, start-up time.

Butler runs pinned to one core with logging at ``info`` (one line per request, written to a file); wrk runs
pinned to the other core with 32 connections. Needs ``wrk`` (Debian package ``wrk``) and ``taskset``.

    python bench/rest_core.py [--duration 10] [--connections 32]
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from harness import free_port, rss_mb, run_wrk, start_butler, wait_for_answer, wrk_arguments

TARGETS = {
    "GET /v4/butlerping": ("/v4/butlerping", 20_000),
    "GET /v4/base16tobase62": ("/v4/base16tobase62?base16=1f5848b5f8ba4e85a57c7ca55a9e", 15_000),
}

CONFIG = """
Butler:
  logLevel: info
  restServerConfig:
    enable: true
    serverHost: 127.0.0.1
    serverPort: {port}
  restServerEndpointsEnable:
    base16ToBase62: true
    base62ToBase16: true
    butlerping: true
"""


def main() -> int:
    args = wrk_arguments(__doc__ or "")
    if args is None:
        return 2
    cores = os.sched_getaffinity(0)
    server_core, load_core = (str(c) for c in sorted(cores)[:2]) if len(cores) > 1 else ("0", "0")

    workdir = Path(tempfile.mkdtemp(prefix="butler-bench-"))
    port = free_port()
    config = workdir / "butler.yaml"
    config.write_text(CONFIG.format(port=port))
    log_file = (workdir / "butler.log").open("w")
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    server = start_butler(config, server_core, log_file)

    def stop(*_: object) -> None:
        server.terminate()
        server.wait(10)

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(1)))
    failures = []
    try:
        wait_for_answer(f"{base}/v4/butlerping", 10)
        first_answer = time.perf_counter() - started  # from process start, interpreter included
        time.sleep(1)
        idle = rss_mb(server.pid)
        print(f"start to first answer: {first_answer:.3f} s (target < 0.5 s)")
        print(f"idle resident memory: {idle:.1f} MB (target < 60 MB)")
        if first_answer >= 0.5:
            failures.append("start-up")
        if idle >= 60:
            failures.append("idle memory")
        print(
            f"server on core {server_core}, wrk on core {load_core}, {args.connections} connections, "
            f"{args.duration} s, logging at info"
        )
        for name, (path, target) in TARGETS.items():
            result = run_wrk(base + path, args.duration, load_core, args.connections)
            rps, p99, errors = result.rps, result.p99_ms, result.non_2xx
            verdict = "ok" if rps >= target and errors == 0 else "BELOW TARGET"
            print(
                f"{name}: {rps:,.0f} req/s, p99 {p99:.2f} ms, non-2xx {errors} "
                f"(target >= {target:,} req/s) {verdict}"
            )
            if verdict != "ok":
                failures.append(name)
        print(f"resident memory after load: {rss_mb(server.pid):.1f} MB")
        log_lines = sum(1 for _ in (workdir / "butler.log").open())
        print(f"log lines written: {log_lines:,}")
    finally:
        stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
