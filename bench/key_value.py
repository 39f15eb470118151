"""Benchmark of the key-value store endpoints on each backend (SQLite, memory, Redis).

Butler (and, for the Redis backend, a redis-server of the benchmark's own) runs on one core, wrk on the
other, 32 connections. POST writes one of 500 keys with a small value (with SQLite each answer waits
until the write is on disk); GET reads one of them. Needs ``wrk`` and ``redis-server``.

    python bench/key_value.py [--duration 10] [--backends sqlite,memory,redis]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from harness import free_port, rss_mb, run_wrk, start_butler, stop_processes, wait_port, write_butler_config

TARGETS = {"sqlite": (10_000, 15_000)}
POST_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local key, value = math.random(0, 499), math.random(1, 1e6)
  local body = string.format('{"key":"k%d","value":"value %d","ttl":0}', key, value)
  return wrk.format(nil, nil, nil, body)
end
"""
GET_SCRIPT = """
request = function()
  return wrk.format("GET", string.format("/v4/keyvalues/bench?key=k%d", math.random(0, 499)))
end
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,memory,redis")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (str(cores[0]), str(cores[1])) if len(cores) > 1 else ("0", "0")
    workdir = Path(tempfile.mkdtemp(prefix="butler-kv-bench-"))
    (workdir / "post.lua").write_text(POST_SCRIPT)
    (workdir / "get.lua").write_text(GET_SCRIPT)
    processes: list[subprocess.Popen[bytes]] = []

    def stop_all(*_: object) -> None:
        stop_processes(processes)

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    failures = []
    print(
        f"Butler on core {server_core} (with redis-server for the Redis backend), wrk on core {load_core}, "
        f"32 connections, {args.duration} s, logging at info"
    )
    try:
        for backend in args.backends.split(","):
            redis_url = "redis://127.0.0.1:1/0"
            if backend == "redis":
                redis_port = free_port()
                redis = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        server_core,
                        shutil.which("redis-server") or "redis-server",
                        "--port",
                        str(redis_port),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(workdir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                processes.append(redis)
                wait_port(redis_port, redis)
                redis_url = f"redis://127.0.0.1:{redis_port}/0"
            port = free_port()
            config = workdir / f"{backend}.yaml"
            write_butler_config(
                config,
                port,
                ["keyValueStore"],
                keyValueStore={
                    "enable": True,
                    "backend": backend,
                    "sqlite": {"path": str(workdir / "kv.sqlite")},
                    "redis": {"url": redis_url},
                },
            )
            log = (workdir / f"{backend}.log").open("w")
            butler = start_butler(config, server_core, log)
            processes.append(butler)
            wait_port(port, butler)
            base = f"http://127.0.0.1:{port}"
            for number in range(500):
                request = urllib.request.Request(
                    f"{base}/v4/keyvalues/bench",
                    method="POST",
                    data=json.dumps({"key": f"k{number}", "value": "v"}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                urllib.request.urlopen(request).read()
            post = run_wrk(
                f"{base}/v4/keyvalues/bench", args.duration, load_core, script=workdir / "post.lua"
            )
            get = run_wrk(base, args.duration, load_core, script=workdir / "get.lua")
            targets = TARGETS.get(backend)
            for name, result, target in (
                ("POST /v4/keyvalues/bench", post, targets and targets[0]),
                ("GET  /v4/keyvalues/bench?key=", get, targets and targets[1]),
            ):
                rps, p99, errors = result.rps, result.p99_ms, result.non_2xx
                verdict = ""
                if target:
                    ok = rps >= target and errors == 0
                    verdict = f" (target >= {target:,}) {'ok' if ok else 'BELOW TARGET'}"
                    if not ok:
                        failures.append(f"{backend} {name}")
                print(f"{backend:6s} {name}: {rps:,.0f} req/s, p99 {p99:.2f} ms, non-2xx {errors}{verdict}")
            print(f"{backend:6s} Butler resident memory after the run: {rss_mb(butler.pid):.1f} MB")
            stop_all()
            processes.clear()
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
