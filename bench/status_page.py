"""Benchmark of the status page (``GET /status``) on a busy Butler: ``--outcomes`` task outcomes recorded
(10,000) and ``--schedules`` schedules (1,000); target: a render under 100 ms.

The outcomes are recorded as in production: failed-reload datagrams sent to Butler's UDP port, each made an
alert by the task-outcome pipeline and delivered to a local webhook receiver through the alert outbox. The
schedules come from a schedule file read at start-up (yearly, on 1 January, so none fires during the run).
Once every alert is delivered:

1. Render: ``StatusPage.data`` and ``page`` called in this process, the figures of one render without HTTP.
2. Request: ``GET /status`` through the REST API, timed from this process (loopback).

The page lists the latest 50 alerts and the 100 schedules firing soonest (``butler.status_page``), so a
render does not grow with the outbox or the schedule file beyond sorting them.

    python bench/status_page.py [--outcomes 10000] [--schedules 1000] [--renders 200]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from butler.app import Butler
from butler.config import parse_config
from butler.status_page import StatusPage
from harness import udp_ports
from scheduler import schedule_file

TASKS = 200


def datagram(n: int) -> bytes:
    """A failed reload of one of ``TASKS`` tasks, each outcome its own execution."""
    task = n % TASKS
    fields = [
        "/scheduler-task-failed/",
        "sense1",
        f"Reload task {task}",
        f"App {task}",
        "INTERNAL\\sa_scheduler",
        f"00000000-0000-4000-8000-{task:012d}",
        f"00000000-0000-4000-9000-{task:012d}",
        "2026-11-24 10:00:00,123",
        "ERROR",
        f"00000000-0000-4000-a000-{n:012d}",
        "Max retries reached",
    ]
    return ";".join(fields).encode()


async def receiver() -> tuple[web.AppRunner, str, list[int]]:
    got = [0]

    async def take(request: web.Request) -> web.Response:
        await request.read()
        got[0] += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{secret}", take)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook/secret-path", got


def config(
    folder: Path, task_port: int, session_port: int, webhook: str, schedules: int
) -> dict[str, object]:
    file = folder / "schedule.yaml"
    schedule_file(file, schedules, "0 {minute} {hour} 1 1 *")
    return {
        "Butler": {
            "logLevel": "warn",
            "restServerConfig": {"enable": True, "serverHost": "127.0.0.1", "serverPort": 8080},
            "restServerEndpointsEnable": {"butlerping": True},
            "statusPage": {"enable": True},
            "keyValueStore": {"backend": "sqlite", "sqlite": {"path": str(folder / "kv.sqlite")}},
            "udpServerConfig": {
                "enable": True,
                "serverHost": "127.0.0.1",
                "portTaskFailure": task_port,
                "portSessionConnectionEvents": session_port,
            },
            "scheduler": {"enable": True, "configfile": str(file)},
            "webhookNotification": {
                "enable": True,
                "reloadTaskFailure": {
                    "rateLimit": 0,
                    "webhooks": [{"description": "ops", "webhookURL": webhook, "httpMethod": "POST"}],
                },
            },
        }
    }


def figures(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)]
    return (
        f"{label}: median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms ({len(ms)})"
    )


async def record(butler: Butler, task_port: int, outcomes: int, delivered: list[int]) -> float:
    """Send the outcomes and wait until every alert is delivered; seconds it took."""
    started = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(outcomes):
            sender.sendto(datagram(n), ("127.0.0.1", task_port))
            if n % 200 == 199:
                # The pipeline takes them in its own time: a burst larger than the socket buffer would drop.
                await asyncio.sleep(0.05)
    deadline = time.monotonic() + 600
    while delivered[0] < outcomes:
        if time.monotonic() > deadline:
            alerts = butler.services.alerts.stats() if butler.services.alerts is not None else None
            raise RuntimeError(f"{delivered[0]} of {outcomes} alerts delivered: {alerts}")
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outcomes", type=int, default=10_000)
    parser.add_argument("--schedules", type=int, default=1_000)
    parser.add_argument("--renders", type=int, default=200)
    args = parser.parse_args()

    runner, webhook, delivered = await receiver()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        task_port, session_port = udp_ports()
        settings = parse_config(
            config(folder, task_port, session_port, webhook, args.schedules), base_dir=folder
        )
        # Any free port: the one in the file only has to be valid.
        butler = Butler(
            dataclasses.replace(settings, rest=dataclasses.replace(settings.rest, port=0)), rate_limit=0
        )
        await butler.start()
        try:
            assert butler.services.scheduler is not None and butler.services.alerts is not None
            await butler.services.scheduler.ready()
            took = await record(butler, task_port, args.outcomes, delivered)
            outbox = len(butler.services.alerts.dispatcher.outbox.all())
            print(
                f"recorded {args.outcomes} outcomes in {took:.1f} s ({outbox} deliveries in the outbox), "
                f"{len(butler.services.scheduler.jobs)} schedules"
            )

            page = StatusPage(butler.services)
            renders, sizes = [], []
            for _ in range(args.renders):
                started = time.perf_counter()
                html = page.page(page.data())
                renders.append(time.perf_counter() - started)
                sizes.append(len(html.encode()))
            print(figures("render (data and HTML, in process)", renders), f"{sizes[-1] // 1024} KiB")

            url = butler.listeners[0].url + "/status"
            requests = []
            async with aiohttp.ClientSession() as http:
                for _ in range(args.renders):
                    started = time.perf_counter()
                    async with http.get(url) as answer:
                        assert answer.status == 200, await answer.text()
                        await answer.read()
                    requests.append(time.perf_counter() - started)
            print(figures("GET /status (over loopback)", requests))
            target = statistics.median(renders) * 1000 < 100
            print(f"target render < 100 ms: {'met' if target else 'NOT met'}")
        finally:
            await butler.stop()
            await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
