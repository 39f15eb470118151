"""Benchmark of log files: ``GET /v4/butlerping`` requests/s with file logging off, on in text, on in JSON.

Three Butlers run pinned to the same core (only the one under load works), logging at ``info`` to standard
error (a file, as in the other benchmarks), two of them also to log files of the day (``fileLogging``), in
text and in JSON (``logFormat``); wrk runs pinned to the other core with 32 connections, the three
alternated over the rounds. Every request must be in the day's file.

Requests/s move by more than the files could cost when other work shares the cores, so the target is set
on CPU time, measured in this process: a request line through the log buffer, with and without the files
(their thread's time included), in batches of 1,000 as at 20,000 requests/s. The target: the files add
under 5 % to a request's CPU time (the median of the run without files), in either format. Needs ``wrk``
and ``taskset``.

    python bench/log_files.py [--duration 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import TextIO

from harness import (
    cores,
    free_port,
    run_wrk_measured,
    start_butler,
    stop_processes,
    wait_port,
    write_butler_config,
    wrk_arguments,
)

#: Mode: (file logging, format).
MODES = {"off": (False, "text"), "text": (True, "text"), "json": (True, "json")}
TARGET_COST = 0.05


def line_cost(workdir: Path, rounds: int) -> dict[str, float]:
    """µs of CPU per request line through the log buffer, by format and with (``+files``) or without the
    files; the least of ``rounds`` for each."""
    import asyncio
    import os
    import time

    from butler.logs import LOG_FORMATS, LogBuffer, LogFiles, Request

    def line(now: float) -> Request:
        return (now, "GET", "/v4/butlerping", 200, 0.08, "127.0.0.1", "butler.rest", None)

    # In a running event loop, as in Butler: lines then wait for their batch instead of going out one by one.
    async def run(stream: TextIO) -> dict[str, float]:
        least: dict[str, float] = {}
        for round_number in range(rounds):
            for log_format in LOG_FORMATS:
                for files in (False, True):
                    folder = workdir / "in-process" / f"{log_format}-{files}-{round_number}"
                    log_files = LogFiles(folder, 30) if files else None
                    buffer = LogBuffer(stream, log_format, log_files)
                    started = time.process_time()
                    for _ in range(100):
                        now = time.time()
                        for _ in range(1000):
                            buffer.add(line(now))
                        buffer.flush()
                    if log_files is not None:
                        log_files.close()  # everything written: the thread's work is counted
                    spent = (time.process_time() - started) / 100_000 * 1e6
                    name = f"{log_format}+files" if files else log_format
                    least[name] = min(least.get(name, spent), spent)
        return least

    with open(os.devnull, "w") as stream:
        return asyncio.run(run(stream))


def main() -> int:
    args = wrk_arguments(__doc__ or "", rounds=True)
    if args is None:
        return 2
    server_core, load_core = cores()
    workdir = Path(tempfile.mkdtemp(prefix="butler-bench-logs-"))
    ports = {mode: free_port() for mode in MODES}
    processes = []
    try:
        for mode, (files, log_format) in MODES.items():
            folder = workdir / mode
            folder.mkdir()
            config = write_butler_config(
                folder / "butler.yaml",
                ports[mode],
                ["butlerping"],
                fileLogging=files,
                logDirectory="logs",
                logFormat=log_format,
            )
            processes.append(start_butler(config, server_core, (folder / "butler.log").open("w")))
            wait_port(ports[mode], processes[-1])
        print(
            f"GET /v4/butlerping, server on core {server_core}, wrk on core {load_core}, "
            f"{args.connections} connections, {args.rounds} x {args.duration} s alternated, logging at info"
        )
        pids = dict(zip(MODES, (process.pid for process in processes), strict=True))
        rps: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
        served = dict.fromkeys(MODES, 0)
        for round_number in range(1, args.rounds + 1):
            for mode in MODES:
                url = f"http://127.0.0.1:{ports[mode]}/v4/butlerping"
                result, per_request = run_wrk_measured(
                    url, pids[mode], args.duration, load_core, args.connections
                )
                if result.non_2xx:
                    print(f"files {mode}: {result.non_2xx} answers not 2xx", file=sys.stderr)
                    return 1
                rps[mode].append(result.rps)
                cpu[mode].append(per_request)
                served[mode] += result.requests
                figures = (
                    f"{result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, {per_request:.1f} us CPU/request"
                )
                print(f"round {round_number}, files {mode:4}: {figures}")
        stop_processes(processes)
        cost = line_cost(workdir, args.rounds)
        off, cpu_off = median(rps["off"]), median(cpu["off"])
        print(f"median: files off {off:,.0f} req/s, {cpu_off:.1f} us CPU/request")
        failures = []
        for mode in ("text", "json"):
            logged = sum(
                "/v4/butlerping 200" in line
                for path in (workdir / mode / "logs").glob("butler.*.log")
                for line in path.open(encoding="utf-8")
            )
            added = cost[f"{mode}+files"] - cost["text"]
            share = added / cpu_off
            verdict = "ok" if share < TARGET_COST else "ABOVE TARGET"
            if logged < served[mode]:
                verdict = f"MISSING LINES ({logged:,} of {served[mode]:,} requests in the files)"
            print(
                f"median: files {mode} {median(rps[mode]):,.0f} req/s ({median(rps[mode]) / off - 1:+.1%} "
                f"against off), {median(cpu[mode]):.1f} us CPU/request; {logged:,} request lines in the files"
            )
            print(
                f"  in process: a request line costs {cost['text']:.2f} us in text without files, "
                f"{cost[f'{mode}+files']:.2f} us in {mode} with files: +{added:.2f} us, "
                f"{share:.1%} of a request's CPU (target < {TARGET_COST:.0%}) {verdict}"
            )
            if verdict != "ok":
                failures.append(mode)
        return 1 if failures else 0
    finally:
        stop_processes(processes)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
