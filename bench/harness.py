"""What the benchmarks share: free ports, waiting for a listener, wrk runs, and reading /proc."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port of 127.0.0.1 free for TCP (or, with ``socket.SOCK_DGRAM``, for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_ports() -> tuple[int, int]:
    """Two different free UDP ports: both held while chosen (two separate choices may give one twice)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as two,
    ):
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        return int(one.getsockname()[1]), int(two.getsockname()[1])


def memory_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status: VmRSS (now) or VmHWM (peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    return memory_mb(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores() -> tuple[str, str]:
    """(server core, load core): the first two cores this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    return (str(allowed[0]), str(allowed[1])) if len(allowed) > 1 else (str(allowed[0]), str(allowed[0]))


def wait_port(port: int, process: subprocess.Popen[bytes] | None = None, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int


def _ms(output: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_arguments(
    description: str, rounds: bool = False, flags: dict[str, str] | None = None
) -> argparse.Namespace | None:
    """The options of a benchmark driven by wrk: ``--duration``, ``--connections``, for runs alternated
    over rounds ``--rounds``, and the benchmark's own on-off ``flags`` (name: help). None, said on standard
    error, when wrk or taskset is missing."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    if rounds:
        parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is needed (apt-get install wrk util-linux)", file=sys.stderr)
            return None
    return args


def run_wrk(
    url: str, duration: float, core: str, connections: int = 32, script: Path | None = None
) -> WrkResult:
    command = ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return WrkResult(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(output, "50%"),
        p99_ms=_ms(output, "99%"),
        requests=int(re.search(r"(\d+) requests in", output).group(1)),  # type: ignore[union-attr]
        non_2xx=int(errors.group(1)) if errors else 0,
    )


def run_wrk_measured(
    url: str, pid: int, duration: float, core: str, connections: int = 32, script: Path | None = None
) -> tuple[WrkResult, float]:
    """wrk against ``url`` (as ``run_wrk``), and the CPU time per request (µs) the server ``pid`` spent."""
    before = cpu_seconds(pid)
    result = run_wrk(url, duration, core, connections, script)
    return result, (cpu_seconds(pid) - before) / result.requests * 1e6


def start_butler(config: Path, core: str, log: object = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """``butler serve`` with the rate limit off, pinned to ``core``; output to ``log``."""
    command = [
        "taskset",
        "-c",
        core,
        sys.executable,
        "-m",
        "butler",
        "serve",
        "-c",
        str(config),
        "--api-rate-limit",
        "0",
    ]
    return subprocess.Popen(command, stdout=log, stderr=log)  # type: ignore[arg-type]


def start_simulator(
    workdir: Path,
    qrs_port: int,
    engine_port: int,
    control_port: int,
    *,
    core: str | None = None,
    time_scale: str | None = None,
    systeminfo_port: int | None = None,
) -> subprocess.Popen[bytes]:
    """``qliksim serve`` of ``workdir``'s ``site.yaml`` and ``certs``, pinned to ``core`` when given; its
    systeminfo listener on ``systeminfo_port`` (a free port if not given, so that 9032 is never needed)."""
    command = [sys.executable, "-m", "qliksim", "serve", "--site", str(workdir / "site.yaml")]
    command += ["--certs", str(workdir / "certs"), "--qrs-port", str(qrs_port)]
    command += ["--engine-port", str(engine_port), "--control-port", str(control_port)]
    command += ["--systeminfo-port", str(systeminfo_port if systeminfo_port is not None else free_port())]
    if time_scale is not None:
        command += ["--time-scale", time_scale]
    pinned = ["taskset", "-c", core] if core is not None else []
    return subprocess.Popen([*pinned, *command, "--loglevel", "warning"])


def write_butler_config(
    path: Path, port: int, endpoints: list[str], certs: Path | None = None, **sections: object
) -> Path:
    """A Butler config file: REST on 127.0.0.1:``port`` with ``endpoints`` on, the QMC-style certificates of
    the folder ``certs`` (if given), and any further ``Butler`` sections."""
    butler: dict[str, object] = {
        "logLevel": "info",
        "restServerConfig": {"enable": True, "serverHost": "127.0.0.1", "serverPort": port},
        "restServerEndpointsEnable": dict.fromkeys(endpoints, True),
    }
    if certs is not None:
        butler["cert"] = {
            "clientCert": str(certs / "client.pem"),
            "clientCertKey": str(certs / "client_key.pem"),
            "clientCertCA": str(certs / "root.pem"),
        }
    path.write_text(yaml.safe_dump({"Butler": {**butler, **sections}}))
    return path


async def stop_run(butler: subprocess.Popen[bytes], simulator: Any, workdir: Path) -> None:
    """End a benchmark run: Butler, the in-process simulator, and the run's folder."""
    butler.terminate()
    butler.wait(10)
    await simulator.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def wait_for_answer(url: str, timeout: float) -> float:
    """Seconds until ``url`` first answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


async def chain_cpu(
    apis: dict[bool, Any], request: Any, rounds: int, count: int = 100_000
) -> dict[bool, float]:
    """µs of CPU per request through each REST chain of ``apis`` in this process, the least over ``rounds``
    (alternated): a step's own cost, without the noise of sockets and of other processes."""
    from butler.http.middleware import Context

    least = {on: float("inf") for on in apis}
    for _ in range(rounds):
        for on, api in apis.items():
            chain = api._chain
            started = time.process_time()
            for _ in range(count):
                await chain(Context(request, time.perf_counter()))
            least[on] = min(least[on], (time.process_time() - started) / count * 1e6)
    return least


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the processes still running, then wait for each."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(10)
