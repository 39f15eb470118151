"""``butler demo``: a simulated Qlik Sense site and a Butler connected to it, working out of the box.

The simulator (``qliksim``, the demo site of Butler's task-start documentation) runs as a child process
with certificates made in the state folder; Butler runs here with every implemented endpoint on. The
config file written to the state folder is an ordinary Butler config file: a starting point for a real
site. Alerts on failed reloads go to a mail catcher and a webhook sink the demo starts on local ports, which
keep what they get in the state folder (``mail/*.eml``, ``webhooks.jsonl``). With ``--with-mqtt`` a Mosquitto
of its own (when installed) takes Butler's MQTT messages; with ``--task-filter`` the task allow-list
(``Butler.startTaskFilter``) is on, with the tasks, tags and custom properties of Butler's task-start
documentation, so that each of its examples gives the answer it shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import json
import logging
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

import butler
from butler.app import Butler, StartupError, run
from butler.config import load_config

log = logging.getLogger("butler.demo")

TASK_APP1 = "e3b27f50-b1c0-4879-88fc-c7cdd9c1cf3e"
APP1 = "3534d77c-ab02-5173-8ae7-5be7717a69f8"  # the app of that task in the demo site
#: A task of the demo site that the allow-list leaves out, as in the documentation's filter example.
TASK_NOT_ALLOWED = "8b4fe424-d90c-493f-a61d-0ce91cd485c9"
#: ``--task-filter``: what the documentation's examples start (the tasks of App1-App3 and of the
#: Operations Monitor, tags startTask1 and startTask2, taskGroup tasks1 and tasks2), and the tag of the
#: demo's failing reload.
ALLOW_LIST = {
    "taskId": [
        TASK_APP1,
        "7552d9fc-d1bb-4975-9a38-18357de531ea",
        "fb0f317d-da91-4b86-aafa-0174ae1e8c8f",
        "fbf645f0-0c92-40a4-af9a-6e3eb1d3c35c",
    ],
    "tag": ["startTask1", "startTask2", "butler"],
    "customProperty": [{"name": "taskGroup", "value": "tasks1"}, {"name": "taskGroup", "value": "tasks2"}],
}
#: Where Mosquitto is looked for when it is not on the PATH.
MOSQUITTO_PLACES = ("/usr/sbin/mosquitto", r"C:\Program Files\mosquitto\mosquitto.exe")

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


TEMPLATES = Path(butler.__file__).parent / "alert_templates"


def _alerts(smtp_port: int | None, webhook_url: str) -> dict[str, Any]:
    """Alerts on failed reloads: e-mail to the demo's mail catcher (when it runs) and a webhook."""
    sections: dict[str, Any] = {
        "qlikSenseUrls": {
            "qmc": "https://sense1.example.com/qmc",
            "hub": "https://sense1.example.com/hub",
            "appBaseUrl": "https://sense1.example.com/sense/app",
        },
        "webhookNotification": {
            "enable": True,
            "reloadTaskFailure": {
                "rateLimit": 0,
                "webhooks": [{"description": "demo sink", "webhookURL": webhook_url, "httpMethod": "POST"}],
            },
        },
    }
    if smtp_port is not None:
        sections["emailNotification"] = {
            "enable": True,
            "smtp": {
                "host": "127.0.0.1",
                "port": smtp_port,
                "secure": False,
                "tls": {"ignoreTLS": True, "requireTLS": False},
                "auth": {"enable": False},
            },
            "reloadTaskFailure": {
                "enable": True,
                "rateLimit": 0,
                "appOwnerAlert": {"enable": True, "includeOwner": {"includeAll": True}},
                "subject": '❌ Qlik Sense reload failed: "{{taskName}}"',
                "bodyFileDirectory": str(TEMPLATES / "email"),
                "htmlTemplateFile": "failed-reload-qseow",
                "fromAddress": "Qlik Sense (no-reply) <qliksense-noreply@example.com>",
                "recipients": ["sense-admins@example.com"],
            },
        }
    return sections


def write_demo_config(
    state: Path,
    host: str,
    port: int,
    qrs_port: int,
    engine_port: int,
    udp_ports: tuple[int, int],
    alerts: dict[str, Any] | None = None,
    mqtt_port: int | None = None,
    task_filter: bool = False,
) -> Path:
    certs = state / "certs"
    mqtt = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": mqtt_port} if mqtt_port else {}
    document = {
        "Butler": {
            "logLevel": "info",
            "restServerConfig": {"enable": True, "serverHost": host, "serverPort": port},
            "restServerEndpointsEnable": ENABLED | {"mqttPublishMessage": mqtt_port is not None},
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
            "startTaskFilter": {"enable": task_filter, "allowTask": ALLOW_LIST},
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
            **({"mqttConfig": mqtt} if mqtt else {}),
            "statusPage": {"enable": True},
            **(alerts or {}),
        }
    }
    path = state / "butler-demo.yaml"
    path.write_text(
        "# Written by `butler demo`; an ordinary Butler config file.\n"
        + yaml.safe_dump(document, sort_keys=False)
    )
    return path


async def _wait_for_port(
    port: int, process: asyncio.subprocess.Process, name: str = "the simulator", seconds: float = 30
) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        if process.returncode is not None:
            raise StartupError(f"{name} exited with {process.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"{name} did not start within {seconds:.0f} s") from None
            await asyncio.sleep(0.1)


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PLACES if Path(p).is_file()), None)


@contextlib.asynccontextmanager
async def _mosquitto(wanted: bool) -> AsyncIterator[int | None]:
    """A Mosquitto on a free local port (its port); None when not wanted or not installed."""
    binary = find_mosquitto() if wanted else None
    if binary is None:
        if wanted:
            log.warning("no MQTT broker: mosquitto is not installed (https://mosquitto.org/download/)")
        yield None
        return
    port = _free_port()
    # Started without a config file, Mosquitto listens on this machine only and lets anyone in.
    broker = await asyncio.create_subprocess_exec(
        binary, "-p", str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _wait_for_port(port, broker, "mosquitto", 10)
        yield port
    finally:
        if broker.returncode is None:
            broker.terminate()
            await broker.wait()


class _MailCatcher:
    """Keeps each mail it is sent in ``folder`` as an .eml file and logs a line for it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.count:04d}.eml"
        path.write_bytes(envelope.content)
        subject = email.message_from_bytes(envelope.content, policy=email.policy.default)["Subject"]
        log.info("mail catcher: %r for %s, kept in %s", subject, ", ".join(envelope.rcpt_tos), path)
        return "250 OK: kept by the demo's mail catcher"


@contextlib.asynccontextmanager
async def _mail_catcher(folder: Path) -> AsyncIterator[int | None]:
    """An SMTP server on a free local port (its port), or None when aiosmtpd is not installed."""
    try:
        from aiosmtpd.smtp import SMTP
    except ImportError:
        log.warning(
            "no mail catcher: aiosmtpd is not installed (make setup installs it); e-mail alerts are off"
        )
        yield None
        return
    catcher = _MailCatcher(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(catcher, hostname="demo-mail", loop=loop), "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def _webhook_sink(file: Path) -> AsyncIterator[str]:
    """An HTTP server on a free local port that appends each call it gets to ``file`` (its URL)."""

    async def take(request: web.Request) -> web.Response:
        body = await request.text()
        with file.open("a", encoding="utf-8") as sink:
            sink.write(json.dumps({"method": request.method, "path": request.path_qs, "body": body}) + "\n")
        log.info("webhook sink: %s %s, kept in %s", request.method, request.path, file)
        return web.Response(text="kept by the demo's webhook sink")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", take)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/butler-alerts"
    finally:
        await runner.cleanup()


@dataclasses.dataclass(frozen=True)
class _Shown:
    """What the demo's instructions name."""

    base: str
    control: str
    config: Path
    rate_limit: int
    state: Path
    mail: bool
    mqtt_port: int | None
    mqtt_wanted: bool
    task_filter: bool


def _extras(shown: _Shown) -> str:
    """The examples of --task-filter and --with-mqtt, when on."""
    base, text = shown.base, ""
    if shown.task_filter:
        ids = [
            "7552d9fc-d1bb-4975-9a38-18357de531ea",
            "fb0f317d-da91-4b86-aafa-0174ae1e8c8",
            TASK_NOT_ALLOWED,
        ]
        body = ",".join(f'{{"type":"starttaskid","payload":{{"taskId":"{i}"}}}}' for i in ids)
        text += f"""
The task allow-list is on (Butler.startTaskFilter): the documentation's filter example starts the two
allowed tasks, and lists the short id as invalid and the last one as denied:

  curl -X PUT "{base}/v4/reloadtask/{TASK_APP1}/start" -H 'Content-Type: application/json' \\
       -d '[{body}]'
"""
    if shown.mqtt_port is not None:
        port = shown.mqtt_port
        text += f"""
MQTT: Butler publishes failed and aborted reloads, and starts the tasks named on qliksense/start_task:

  mosquitto_sub -p {port} -t 'qliksense/#' -v
  mosquitto_pub -p {port} -t qliksense/start_task -m {TASK_APP1}
"""
    return text


def _instructions(shown: _Shown) -> str:
    base, control, state = shown.base, shown.control, shown.state
    limit = f"{shown.rate_limit} requests per minute per client IP" if shown.rate_limit else "off"
    mail_line = f"{state / 'mail'}/*.eml" if shown.mail else "off (aiosmtpd is not installed)"
    if shown.mqtt_port is not None:
        mqtt_line = f"127.0.0.1:{shown.mqtt_port}   (the demo's Mosquitto)"
    else:
        mqtt_line = (
            "off (mosquitto is not installed)" if shown.mqtt_wanted else "off (butler demo --with-mqtt)"
        )
    allow = "on" if shown.task_filter else "off (butler demo --task-filter)"
    return f"""
Butler demo is running: a simulated Qlik Sense site, and Butler connected to it.

  Butler REST API     {base}
  API documentation   {base}/documentation
  Status page         {base}/status
  Config file         {shown.config}
  Simulator control   {control}/calls   (what the simulated Sense site was asked to do)
  Rate limit          {limit} (butler demo --api-rate-limit N; 0 turns it off)
  Alert e-mails       {mail_line}   (the demo's mail catcher)
  Alert webhooks      {state / "webhooks.jsonl"}   (the demo's webhook sink)
  MQTT broker         {mqtt_line}
  Task allow-list     {allow}

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
{_extras(shown)}
From the command line, as a scheduler runs it (exit code 0 for success, 1 for a failed run):

  butler task start {TASK_APP1} --wait --butler {base}
  butler task start --tag butler --wait --butler {base}
  butler app reload {APP1} --wait --butler {base}

Users log in on the simulated proxies (their session events reach Butler over UDP):

  curl -X POST {control}/sessions -d '{{"userDirectory":"LAB","userId":"goran","proxy":"sense1"}}'
  curl -X POST {control}/sessions -d '{{"userDirectory":"LAB","userId":"anna","proxy":"sense2"}}'
  curl {base}/v4/activeusercount
  curl {base}/v4/activeusers
  curl {base}/v2/activeUsers

A failing reload (its task event reaches Butler over UDP; Butler enriches it from QRS, logs it and
sends its alerts: an e-mail to the mail catcher, for the admins and the app's owner, and a webhook call):

  curl -X PUT "{base}/v4/reloadtask/-/start" -H 'Content-Type: application/json' \\
       -d '[{{"type":"starttasktag","payload":{{"tag":"butler"}}}}]'
  curl {base}/v4/alerts
  curl {base}/health
  curl {control}/calls

The simulated site's two nodes, server licence and access allocations (what monitors read from QRS);
stopping a service makes QRS report it as NoCommunication:

  curl {control}/nodes
  curl {control}/license
  curl {control}/access
  curl -X POST {control}/nodes/Rim1/services/engine/stop

Ctrl-C stops both.
"""


async def run_demo(
    state: Path, host: str, port: int, rate_limit: int, with_mqtt: bool = False, task_filter: bool = False
) -> None:
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
        "--systeminfo-port",
        str(_free_port()),
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
        async with (
            _mail_catcher(state / "mail") as smtp_port,
            _webhook_sink(state / "webhooks.jsonl") as hook,
            _mosquitto(with_mqtt) as mqtt_port,
        ):
            alerts = _alerts(smtp_port, hook)
            config = write_demo_config(
                state, host, port, qrs_port, engine_port, udp_ports, alerts, mqtt_port, task_filter
            )
            service = Butler(load_config(config), rate_limit=rate_limit)
            shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host
            text = _instructions(
                _Shown(
                    base=f"http://{shown}:{port}",
                    control=f"http://127.0.0.1:{control_port}",
                    config=config,
                    rate_limit=rate_limit,
                    state=state,
                    mail=smtp_port is not None,
                    mqtt_port=mqtt_port,
                    mqtt_wanted=with_mqtt,
                    task_filter=task_filter,
                )
            )
            await run(service, lambda: print(text, flush=True))
    finally:
        if simulator.returncode is None:
            simulator.terminate()
            await simulator.wait()
