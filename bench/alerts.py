"""Benchmark of alerts on failed reloads, every channel on, QRS answering in 20 ms (the simulator's latency).

1. Latency: 100 failed reloads, one every 100 ms; from the UDP datagram to the message accepted by the SMTP
   server and by the webhook receiver (target: p95 < 500 ms).
2. Storm: ``--storm`` failed reloads (1,000) in 10 s over 200 tasks, while wrk pings Butler: every alert
   delivered or rate-limited as configured (Slack and Teams limit each task to one message per 300 s), none
   lost, none twice; Butler's memory; ping p99 (target < 20 ms).
   The pings come as monitoring sends them (about 800 a second), not as fast as wrk can.
3. Outage: the webhook receiver answers 503 for ``--down-seconds`` (300) while a failed reload comes every
   2 s: the e-mail latency meanwhile, and how soon the webhook backlog is delivered after it recovers
   (target: < 60 s).

Butler runs pinned to one core; the simulator, the receivers (an aiosmtpd server and an aiohttp server in
this process), the datagram sender and wrk share the other.

    python bench/alerts.py [--storm 1000] [--down-seconds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiosmtpd.smtp import SMTP

from harness import (
    free_port,
    memory_mb,
    rss_mb,
    run_wrk,
    start_butler,
    start_simulator,
    stop_processes,
    wait_port,
)

TASKS = 200
TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "butler" / "alert_templates"
HTTP_CHANNELS = ("slack", "teams", "webhook", "signl4", "newrelic")


Task = tuple[str, str, str, str]


def site_file(path: Path) -> list[Task]:
    """A site of TASKS apps, each with its reload task, owned by a user with an e-mail address; returns
    (task id, task name, app name, app id) of each."""
    tasks = [
        (f"{n:08x}-0000-4000-8000-{n:012x}", f"Reload {n}", f"App {n}", f"{n:08x}-2222-4000-8000-{n:012x}")
        for n in range(TASKS)
    ]
    apps = [
        {"id": app_id, "name": app, "owner": "LAB\\owner", "reload": {"durationMs": 100}}
        for _, _, app, app_id in tasks
    ]
    path.write_text(
        yaml.safe_dump(
            {
                "hostname": "bench",
                "users": [
                    {
                        "userDirectory": "LAB",
                        "userId": "owner",
                        "name": "Owner",
                        "email": "owner@bench.example",
                    }
                ],
                "apps": apps,
                "tasks": [{"id": task_id, "name": name, "app": app} for task_id, name, app, _ in tasks],
            }
        )
    )
    return tasks


@dataclass
class Sinks:
    """What the receivers got: arrival time by token (the datagram's message), ids seen per channel."""

    arrived: dict[str, dict[str, float]] = field(
        default_factory=lambda: {c: {} for c in ("email", *HTTP_CHANNELS)}
    )
    ids: dict[str, list[str]] = field(default_factory=lambda: {c: [] for c in ("email", *HTTP_CHANNELS)})
    webhook_down: bool = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.ids["email"].append(str(mail["Message-ID"]))
        # The later of an alert's mails (to the admins, to the app's owner) counts.
        self.arrived["email"][str(mail["Subject"])] = time.monotonic()
        return "250 OK"

    async def http(self, request: web.Request) -> web.Response:
        channel = request.match_info["channel"]
        if channel == "webhook" and self.webhook_down:
            return web.Response(status=503, text="down")
        body = await request.json()
        self.ids[channel].append(request.headers.get("Idempotency-Key", ""))
        if channel == "webhook":
            self.arrived["webhook"].setdefault(body["logMessage"], time.monotonic())
        return web.Response(text="ok")


def butler_config(
    path: Path, port: int, qrs_port: int, certs: Path, udp_port: int, smtp_port: int, http: str
) -> None:
    chat = {"enable": True, "messageType": "formatted", "rateLimit": 300}
    document = {
        "Butler": {
            "logLevel": "warn",
            "restServerConfig": {"enable": True, "serverHost": "127.0.0.1", "serverPort": port},
            "restServerEndpointsEnable": {"butlerping": True},
            "cert": {
                "clientCert": str(certs / "client.pem"),
                "clientCertKey": str(certs / "client_key.pem"),
                "clientCertCA": str(certs / "root.pem"),
            },
            "configQRS": {"host": "localhost", "port": qrs_port, "rejectUnauthorized": True},
            "keyValueStore": {"backend": "sqlite", "sqlite": {"path": str(path.parent / "kv.sqlite")}},
            "udpServerConfig": {
                "enable": True,
                "serverHost": "127.0.0.1",
                "portTaskFailure": udp_port,
                "portSessionConnectionEvents": 0,
                "messageQueue": {"maxSize": 5000},
            },
            "qlikSenseUrls": {
                "qmc": "https://bench/qmc",
                "hub": "https://bench/hub",
                "appBaseUrl": "https://bench/app",
            },
            "emailNotification": {
                "enable": True,
                "smtp": {
                    "host": "127.0.0.1",
                    "port": smtp_port,
                    "tls": {"ignoreTLS": True},
                    "auth": {"enable": False},
                },
                "reloadTaskFailure": {
                    "enable": True,
                    "rateLimit": 0,
                    "subject": "{{logMessage}}",
                    "bodyFileDirectory": str(TEMPLATES / "email"),
                    "htmlTemplateFile": "failed-reload-qseow",
                    "fromAddress": "bench@bench.example",
                    "recipients": ["admins@bench.example"],
                },
            },
            "slackNotification": {
                "enable": True,
                "reloadTaskFailure": {
                    **chat,
                    "webhookURL": f"{http}/slack",
                    "channel": "bench",
                    "templateFile": str(TEMPLATES / "slack" / "failed-reload-qseow.handlebars"),
                },
            },
            "teamsNotification": {
                "enable": True,
                "reloadTaskFailure": {
                    **chat,
                    "webhookURL": f"{http}/teams",
                    "templateFile": str(TEMPLATES / "teams" / "failed-reload-qseow.handlebars"),
                },
            },
            "webhookNotification": {
                "enable": True,
                "reloadTaskFailure": {
                    "rateLimit": 0,
                    "webhooks": [
                        {"description": "bench", "webhookURL": f"{http}/webhook", "httpMethod": "POST"}
                    ],
                },
            },
            "incidentTool": {
                "signl4": {
                    "enable": True,
                    "url": f"{http}/signl4",
                    "reloadTaskFailure": {"enable": True, "rateLimit": 0, "includeApp": {"includeAll": True}},
                },
                "newRelic": {
                    "enable": True,
                    "url": {"event": f"{http}/newrelic/", "log": f"{http}/newrelic"},
                    "reloadTaskFailure": {
                        "destination": {
                            "event": {
                                "enable": True,
                                "sendToAccount": {"always": {"enable": True, "account": ["A"]}},
                            }
                        },
                        "sharedSettings": {"rateLimit": 0},
                    },
                },
            },
            "thirdPartyToolsCredentials": {
                "newRelic": [{"accountName": "A", "insertApiKey": "k", "accountId": "1"}]
            },
        }
    }
    path.write_text(yaml.safe_dump(document))


def datagram(task: Task, execution: int, token: str) -> bytes:
    task_id, name, app, app_id = task
    fields = [
        "/scheduler-reloadtask-failed/",
        "bench",
        name,
        app,
        "INTERNAL\\sa_scheduler",
        task_id,
        app_id,
        time.strftime("%Y-%m-%d %H:%M:%S,000"),
        "ERROR",
        f"{execution:08x}-1111-4000-8000-{execution:012x}",
        token,
    ]
    return ";".join(fields).encode()


def put(url: str, body: object) -> None:
    request = urllib.request.Request(url, method="PUT", data=json.dumps(body).encode())
    urllib.request.urlopen(request).close()


def health(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/health") as answer:
        return dict(json.loads(answer.read())["alerts"]["channels"])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def wait_settled(base: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        counts = await asyncio.to_thread(health, base)
        if all(c["pending"] == 0 for c in counts.values()) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> int:
    cores = sorted(os.sched_getaffinity(0))
    server_core, load_core = (str(cores[0]), str(cores[1])) if len(cores) > 1 else ("0", "0")
    os.sched_setaffinity(0, {int(load_core)})
    workdir = Path(tempfile.mkdtemp(prefix="butler-alert-bench-"))
    tasks = site_file(workdir / "site.yaml")
    qrs_port, engine_port, control_port, port = free_port(), free_port(), free_port(), free_port()
    udp_port = free_port(socket.SOCK_DGRAM)
    sinks = Sinks()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: SMTP(sinks, hostname="bench", loop=loop), "127.0.0.1", 0)
    app = web.Application()
    app.router.add_post("/{channel}{tail:.*}", sinks.http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    http = f"http://127.0.0.1:{runner.addresses[0][1]}"
    processes: list[subprocess.Popen[bytes]] = []
    failures: list[str] = []
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent: dict[str, float] = {}
    execution = 0

    def send(task: Task, token: str) -> None:
        nonlocal execution
        execution += 1
        sent[token] = time.monotonic()
        sender.sendto(datagram(task, execution, token), ("127.0.0.1", udp_port))

    try:
        simulator = start_simulator(workdir, qrs_port, engine_port, control_port)
        processes.append(simulator)
        await asyncio.to_thread(wait_port, qrs_port, simulator)
        await asyncio.to_thread(put, f"http://127.0.0.1:{control_port}/faults/qrs", {"latency_ms": 20})
        config = workdir / "butler.yaml"
        butler_config(
            config, port, qrs_port, workdir / "certs", udp_port, smtp.sockets[0].getsockname()[1], http
        )
        butler = start_butler(config, server_core, (workdir / "butler.log").open("w"))
        processes.append(butler)
        await asyncio.to_thread(wait_port, port, butler)
        base = f"http://127.0.0.1:{port}"
        await asyncio.sleep(1)
        print(
            f"Butler on core {server_core}; qliksim (QRS latency 20 ms), receivers, load on core {load_core}"
        )

        # 1. Latency
        for n in range(100):
            send(tasks[n], f"latency {n}")
            await asyncio.sleep(0.1)
        await wait_settled(base, 30)
        for channel in ("email", "webhook"):
            times = [
                (sinks.arrived[channel][t] - sent[t]) * 1000 for t in sent if t in sinks.arrived[channel]
            ]
            p95 = percentile(times, 0.95)
            ok = len(times) == 100 and p95 < 500
            failures += [] if ok else [f"latency {channel}"]
            print(
                f"latency to {channel:7s}: {len(times)} of 100 delivered, "
                f"p50 {statistics.median(times):.0f} ms, p95 {p95:.0f} ms, max {max(times):.0f} ms "
                f"(target p95 < 500 ms) {'ok' if ok else 'BELOW TARGET'}"
            )

        # 2. Storm
        before = await asyncio.to_thread(health, base)
        rss_before = rss_mb(butler.pid)
        # Pings as monitoring sends them, not as fast as possible: 4 connections, one ping per 5 ms each.
        paced = workdir / "paced.lua"
        paced.write_text("function delay()\n  return 5\nend\n")
        ping_url = f"{base}/v4/butlerping"
        wrk = asyncio.ensure_future(asyncio.to_thread(run_wrk, ping_url, 14, load_core, 4, paced))
        await asyncio.sleep(1)
        started = time.monotonic()
        for n in range(args.storm):
            send(tasks[n % TASKS], f"storm {n}")
            await asyncio.sleep(max(0.0, started + (n + 1) * 10 / args.storm - time.monotonic()))
        sending = time.monotonic() - started
        ping = await wrk
        after = await wait_settled(base, 120)
        settled = time.monotonic() - started
        print(
            f"storm: {args.storm} failed reloads sent in {sending:.1f} s, alerts done after {settled:.1f} s"
        )
        recent = set(range(min(100, TASKS)))  # tasks alerted in the latency phase, < 300 s ago
        storm_tasks = {n % TASKS for n in range(args.storm)}
        for channel in ("email", *HTTP_CHANNELS):
            got = {k: after[channel][k] - before[channel][k] for k in ("sent", "rateLimited", "dead")}
            limited = channel in ("slack", "teams")
            # E-mail goes to the admins and to the app's owner.
            per_alert = 2 if channel == "email" else 1
            expected_sent = len(storm_tasks - recent) if limited else args.storm * per_alert
            ids = sinks.ids[channel]
            twice = len(ids) - len(set(ids))
            ok = got["sent"] == expected_sent and got["sent"] + got["rateLimited"] == args.storm * per_alert
            ok = ok and got["dead"] == 0 and twice == 0 and after[channel]["pending"] == 0
            failures += [] if ok else [f"storm {channel}"]
            print(
                f"  {channel:8s}: delivered {got['sent']} (expected {expected_sent}), rate-limited "
                f"{got['rateLimited']}, dead {got['dead']}, pending {after[channel]['pending']}, "
                f"received twice {twice} {'ok' if ok else 'WRONG'}"
            )
        print(
            f"  Butler memory: {rss_before:.0f} MB before, {rss_mb(butler.pid):.0f} MB after, peak "
            f"{memory_mb(butler.pid, 'VmHWM'):.0f} MB"
        )
        ok = ping.p99_ms < 20 and ping.non_2xx == 0
        failures += [] if ok else ["ping during the storm"]
        print(
            f"  GET /v4/butlerping meanwhile: {ping.rps:,.0f} req/s, p99 {ping.p99_ms:.1f} ms "
            f"(target < 20 ms) {'ok' if ok else 'BELOW TARGET'}"
        )

        # 3. Outage of the webhook receiver
        sinks.webhook_down = True
        outage: list[str] = []
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.down_seconds:
            token = f"outage {n}"
            send(tasks[n % TASKS], token)
            outage.append(token)
            n += 1
            await asyncio.sleep(2)
        sinks.webhook_down = False
        recovered = time.monotonic()
        while time.monotonic() - recovered < 300:
            if not (await asyncio.to_thread(health, base))["webhook"]["pending"]:
                break
            await asyncio.sleep(0.1)
        backlog = time.monotonic() - recovered
        delivered = sum(1 for t in outage if t in sinks.arrived["webhook"])
        ok = backlog < 60 and delivered == len(outage)
        failures += [] if ok else ["outage backlog"]
        times = [(sinks.arrived["email"][t] - sent[t]) * 1000 for t in outage if t in sinks.arrived["email"]]
        print(
            f"outage: webhook down {args.down_seconds:g} s, {len(outage)} alerts meanwhile; its backlog "
            f"delivered {backlog:.1f} s after it came back ({delivered} of {len(outage)}) (target < 60 s) "
            f"{'ok' if ok else 'BELOW TARGET'}"
        )
        print(
            f"  e-mail latency during the outage: p50 {statistics.median(times):.0f} ms, "
            f"p95 {percentile(times, 0.95):.0f} ms ({len(times)} of {len(outage)} delivered)"
        )
    except Exception:
        print(
            "Butler's log ends with:\n" + "".join((workdir / "butler.log").read_text().splitlines(True)[-30:])
        )
        raise
    finally:
        stop_processes(processes)
        sender.close()
        smtp.close()
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--down-seconds", type=float, default=300)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
