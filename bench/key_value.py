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
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_wrk(url: str, script: Path, duration: int, core: str) -> tuple[float, float, int]:
    out = subprocess.run(
        ["taskset", "-c", core, "wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rps, p99, int(errors.group(1)) if errors else 0


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
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)

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
            config.write_text(
                json.dumps(
                    {
                        "Butler": {
                            "logLevel": "info",
                            "restServerConfig": {
                                "enable": True,
                                "serverHost": "127.0.0.1",
                                "serverPort": port,
                            },
                            "restServerEndpointsEnable": {"keyValueStore": True},
                            "keyValueStore": {
                                "enable": True,
                                "backend": backend,
                                "sqlite": {"path": str(workdir / "kv.sqlite")},
                                "redis": {"url": redis_url},
                            },
                        }
                    }
                )
            )
            log = (workdir / f"{backend}.log").open("w")
            butler = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    server_core,
                    sys.executable,
                    "-m",
                    "butler",
                    "serve",
                    "-c",
                    str(config),
                    "--api-rate-limit",
                    "0",
                ],
                stdout=log,
                stderr=log,
            )
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
            post = run_wrk(f"{base}/v4/keyvalues/bench", workdir / "post.lua", args.duration, load_core)
            get = run_wrk(base, workdir / "get.lua", args.duration, load_core)
            targets = TARGETS.get(backend)
            for name, (rps, p99, errors), target in (
                ("POST /v4/keyvalues/bench", post, targets and targets[0]),
                ("GET  /v4/keyvalues/bench?key=", get, targets and targets[1]),
            ):
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
