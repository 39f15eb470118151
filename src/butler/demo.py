"""``butler demo``: a simulated Qlik Sense site and a Butler connected to it, working out of the box.

The simulator (``qliksim``, the demo site of Butler's task-start documentation) runs as a child process
with certificates made in the state folder; Butler runs here with every implemented endpoint on. The
config file written to the state folder is an ordinary Butler config file: a starting point for a real
site.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

import yaml

from butler.app import Butler, StartupError, run
from butler.config import load_config

log = logging.getLogger("butler.demo")

TASK_APP1 = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
APP1 = "3534d77c-ab02-5173-8ae7-5be7717a69f8"  # the app of that task in the demo site

ENABLED = {
    "apiListEnabledEndpoints": True,
    "base62ToBase16": True,
    "base16ToBase62": True,
    "butlerping": True,
    "keyValueStore": True,
    "senseStartTask": True,
    "senseListApps": True,
    "senseAppDump": True,
    "senseAppReload": True,
    "activeUserCount": True,
    "activeUsers": True,
}


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_demo_config(
    state: Path, host: str, port: int, qrs_port: int, engine_port: int, udp_ports: tuple[int, int]
) -> Path:
    certs = state / "certs"
    document = {
        "Butler": {
            "logLevel": "info",
            "restServerConfig": {"enable": True, "serverHost": host, "serverPort": port},
            "restServerEndpointsEnable": ENABLED,
            "keyValueStore": {"enable": True, "backend": "sqlite", "sqlite": {"path": "butler-kv.sqlite"}},
            "cert": {
                "clientCert": str(certs / "client.pem"),
                "clientCertKey": str(certs / "client_key.pem"),
                "clientCertCA": str(certs / "root.pem"),
            },
            "configQRS": {
                "authentication": "certificates",
                "host": "localhost",
                "useSSL": True,
                "port": qrs_port,
                "headers": {
                    "static": [
                        {"name": "X-Qlik-User", "value": "UserDirectory=Internal;UserId=sa_repository"}
                    ]
                },
                "rejectUnauthorized": True,
            },
            "startTaskFilter": {
                "enable": False,
                "allowTask": {"taskId": [], "tag": [], "customProperty": []},
            },
            "configEngine": {
                "host": "localhost",
                "port": engine_port,
                "useSSL": True,
                "headers": {
                    "static": [
                        {"name": "X-Qlik-User", "value": "UserDirectory=Internal;UserId=sa_repository"}
                    ]
                },
                "rejectUnauthorized": True,
            },
            "udpServerConfig": {
                "enable": True,
                "serverHost": "127.0.0.1",
                "portTaskFailure": udp_ports[0],
                "portSessionConnectionEvents": udp_ports[1],
            },
        }
    }
    path = state / "butler-demo.yaml"
    path.write_text(
        "# Written by `butler demo`; an ordinary Butler config file.\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return path


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        if process.returncode is not None:
            raise StartupError(f"the simulator exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError("the simulator did not start within 30 s") from None
            await asyncio.sleep(0.1)


def _instructions(base: str, control: str, config: Path, rate_limit: int) -> str:
    limit = f"{rate_limit} requests per minute per client IP" if rate_limit else "off"
    return f"""
Butler demo is running: a simulated Qlik Sense site, and Butler connected to it.

  Butler REST API     {base}
  API documentation   {base}/documentation
  Config file         {config}
  Simulator control   {control}/calls   (what the simulated Sense site was asked to do)
  Rate limit          {limit} (butler demo --api-rate-limit N; 0 turns it off)

Try (from Butler's documentation):

  curl {base}/v4/butlerping
  curl "{base}/v4/base16tobase62?base16=1f5848b5f8ba4e85a57c7ca55a9e"
  curl -X PUT "{base}/v4/reloadtask/{TASK_APP1}/start" -H 'Content-Type: application/json' -d '[]'
  curl -X PUT "{base}/v4/reloadtask/-/start" -H 'Content-Type: application/json' \\
       -d '[{{"type":"starttasktag","payload":{{"tag":"startTask1"}}}}]'
  curl -X PUT "{base}/v4/reloadtask/{TASK_APP1}/start?wait=true&timeout=60" \\
       -H 'Content-Type: application/json' \\
       -d '[{{"type":"keyvaluestore","payload":{{"namespace":"demo","key":"runBy","value":"curl"}}}}]'
  curl "{base}/v4/keyvalues/demo?key=runBy"
  curl {base}/v4/apps/list
  curl {base}/v4/app/{APP1}/dump

Users log in on the simulated proxies (their session events reach Butler over UDP):

  curl -X POST {control}/sessions -d '{{"userDirectory":"LAB","userId":"goran","proxy":"sense1"}}'
  curl -X POST {control}/sessions -d '{{"userDirectory":"LAB","userId":"anna","proxy":"sense2"}}'
  curl {base}/v4/activeusercount
  curl {base}/v4/activeusers
  curl {base}/v2/activeUsers

A failing reload (its task event reaches Butler over UDP; Butler enriches it from QRS and logs it):

  curl -X PUT "{base}/v4/reloadtask/-/start" -H 'Content-Type: application/json' \\
       -d '[{{"type":"starttasktag","payload":{{"tag":"butler"}}}}]'
  curl {base}/health
  curl {control}/calls

Ctrl-C stops both.
"""


async def run_demo(state: Path, host: str, port: int, rate_limit: int) -> None:
    """Run the demo until Ctrl-C; ``state`` is an existing folder (given as an absolute path)."""
    qrs_port, engine_port, control_port = _free_port(), _free_port(), _free_port()
    udp_ports = (_free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_DGRAM))
    simulator = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "qliksim",
        "serve",
        "--certs",
        str(state / "certs"),
        "--qrs-port",
        str(qrs_port),
        "--engine-port",
        str(engine_port),
        "--control-port",
        str(control_port),
        "--udp-target",
        f"127.0.0.1:{udp_ports[0]}",
        "--session-udp-target",
        f"127.0.0.1:{udp_ports[1]}",
        "--time-scale",
        "0.2",
        "--loglevel",
        "warning",
    )
    try:
        await _wait_for_port(qrs_port, simulator)
        config = write_demo_config(state, host, port, qrs_port, engine_port, udp_ports)
        butler = Butler(load_config(config), rate_limit=rate_limit)
        shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
        text = _instructions(f"http://{shown}:{port}", f"http://127.0.0.1:{control_port}", config, rate_limit)
        await run(butler, lambda: print(text, flush=True))
    finally:
        if simulator.returncode is None:
            simulator.terminate()
            await simulator.wait()
