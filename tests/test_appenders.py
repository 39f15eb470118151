"""``butler appenders``: the LocalLogConfig.xml files of the Sense nodes, checked against upstream's files
and end to end: datagrams laid out as the generated layouts say reach a running Butler and are understood."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from butler.cli import main
from butler.events.parsing import SessionEvent, TaskEvent, parse_session_datagram, parse_task_datagram
from tests.conftest import StartButler, run_butler, udp_ports
from tests.test_events import udp_config
from tests.test_task_start import APP1, butler_config

#: Upstream Butler's files as its users have them (MIT, see LICENSE-upstream-butler there).
UPSTREAM = Path(__file__).resolve().parent / "data" / "upstream"
PLACEHOLDERS = ("<IP of server where Butler is running>", "<FQDN or IP of server where Butler is running>")


def upstream_tree(name: str, host: str, port: int, default_port: int) -> ET.Element:
    """Upstream's file as an admin fills it in (its placeholders are not even well-formed XML)."""
    text = (UPSTREAM / name).read_text(encoding="utf-8")
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, host)
    text = text.replace(f'value="{default_port}"', f'value="{port}"')
    return ET.fromstring(text.encode())


def params(element: ET.Element) -> dict[str, str]:
    return {p.get("name", "").lower(): p.get("value", "") for p in element.findall("param")}


def structure(root: ET.Element) -> dict[str, Any]:
    """What log4net does with a file: appenders (filters, target, layout) and loggers, comments left out."""
    appenders = {}
    for appender in root.findall("appender"):
        layout = appender.find("layout")
        assert layout is not None
        appenders[appender.get("name")] = {
            "type": appender.get("type"),
            "filters": [(f.get("type"), params(f)) for f in appender.findall("filter")],
            "params": params(appender),
            "layout": layout.get("type"),
            "converters": [params(c) for c in layout.findall("converter")],
            "pattern": params(layout)["conversionpattern"],
        }
    loggers = {
        logger.get("name"): [ref.get("ref") for ref in logger.findall("appender-ref")]
        for logger in root.findall("logger")
    }
    return {"appenders": appenders, "loggers": loggers}


def generate(tmp_path: Path, *args: str) -> tuple[int, str]:
    """``butler appenders`` run as its command line runs it (in this process: the tests call it often)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            code = main(["appenders", "--out", str(tmp_path / "out"), *args])
        except SystemExit as exc:  # argparse refusing the arguments
            code = int(exc.code or 0)
    return code, output.getvalue()


def generated(tmp_path: Path, name: str) -> ET.Element:
    return ET.parse(tmp_path / "out" / name / "LocalLogConfig.xml").getroot()


def test_files_are_upstreams_with_the_site_filled_in(tmp_path: Path) -> None:
    code, output = generate(
        tmp_path, "--butler-host", "10.11.12.13", "--task-port", "9898", "--session-port", "9797"
    )
    assert code == 0, output
    scheduler = structure(generated(tmp_path, "Scheduler"))
    ours = structure(upstream_tree("scheduler-LocalLogConfig.xml", "10.11.12.13", 9898, 9998))
    # The one deliberate change: the success type without upstream's stray second slash.
    success = ours["appenders"]["TaskSuccessLogger"]
    assert success["pattern"].startswith("/scheduler-task-success//;")
    success["pattern"] = success["pattern"].replace("/scheduler-task-success//;", "/scheduler-task-success/;")
    assert scheduler == ours
    assert list(scheduler["appenders"]) == [
        "TaskFailLogger",
        "TaskAbortLogger",
        "TaskSuccessLogger",
        "DistributionTaskLogger",
    ]
    assert {a["params"]["remoteport"] for a in scheduler["appenders"].values()} == {"9898"}
    proxy = structure(generated(tmp_path, "Proxy"))
    assert proxy == structure(upstream_tree("proxy-LocalLogConfig.xml", "10.11.12.13", 9797, 9997))
    assert {a["params"]["remoteaddress"] for a in proxy["appenders"].values()} == {"10.11.12.13"}


def test_default_ports_and_names(tmp_path: Path) -> None:
    assert generate(tmp_path, "--butler-host", "butler.lab.example.com")[0] == 0
    for name, port in (("Scheduler", "9998"), ("Proxy", "9997")):
        for appender in structure(generated(tmp_path, name))["appenders"].values():
            assert appender["params"] == {
                "remoteaddress": "butler.lab.example.com",
                "remoteport": port,
                "encoding": "utf-8",
            }


@pytest.mark.parametrize(
    "host",
    [
        '10.0.0.1" /><param name="remotePort" value="1',
        "<script>",
        "butler&lab",
        "http://butler:8080",
        "butler host",
        "butler\n",
        "butler'",
        "",
        "-butler",
        "a" * 64 + ".example.com",
    ],
)
def test_hosts_that_are_not_addresses_are_refused(tmp_path: Path, host: str) -> None:
    code, output = generate(tmp_path, f"--butler-host={host}")
    assert code == 1
    assert "not an IP address or host name" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["--task-port", "--session-port"])
@pytest.mark.parametrize("port", ["0", "65536", "-1"])
def test_ports_out_of_range_are_refused(tmp_path: Path, option: str, port: str) -> None:
    code, output = generate(tmp_path, "--butler-host", "10.0.0.1", f"{option}={port}")
    assert code == 1
    assert f"port {port} is not between 1 and 65535" in output
    assert not (tmp_path / "out").exists()


def test_the_command_line_writes_the_files(tmp_path: Path) -> None:
    done = run_butler("appenders", "--butler-host", "10.0.0.7", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"wrote {tmp_path / 'Scheduler' / 'LocalLogConfig.xml'}",
        f"wrote {tmp_path / 'Proxy' / 'LocalLogConfig.xml'}",
    ]


def test_ipv6_address_is_taken(tmp_path: Path) -> None:
    assert generate(tmp_path, "--butler-host", "[fd00::5]")[0] == 0
    appenders = structure(generated(tmp_path, "Proxy"))["appenders"].values()
    assert {a["params"]["remoteaddress"] for a in appenders} == {"fd00::5"}


def test_existing_files_are_kept_without_force(tmp_path: Path) -> None:
    proxy = tmp_path / "out" / "Proxy" / "LocalLogConfig.xml"
    proxy.parent.mkdir(parents=True)
    proxy.write_text("the admin's own file")
    code, output = generate(tmp_path, "--butler-host", "10.0.0.1")
    assert code == 1 and "--force" in output and str(proxy) in output
    assert proxy.read_text() == "the admin's own file"
    assert not (tmp_path / "out" / "Scheduler" / "LocalLogConfig.xml").exists()  # nothing half written
    assert generate(tmp_path, "--butler-host", "10.0.0.1", "--force")[0] == 0
    appender = generated(tmp_path, "Proxy").find("appender")
    assert appender is not None and params(appender)["remoteaddress"] == "10.0.0.1"


# -- The layouts, as log4net fills them in, understood by Butler -------------------------------------------


def log4net_line(pattern: str, hostname: str, properties: dict[str, str], level: str, message: str) -> bytes:
    """One datagram as log4net's PatternLayout makes it from ``pattern``."""

    def field(match: re.Match[str]) -> str:
        name, prop = match.group(1), match.group(2)
        if name == "property":
            return properties.get(prop or "", "")
        return {
            "hostname": hostname,
            "date": "2026-11-29 10:00:00,123",
            "level": level,
            "message": message,
        }[name]

    line = re.sub(r"%(\w+)(?:\{(\w+)\})?", field, pattern)
    assert "%" not in line
    return line.encode()


def patterns(tmp_path: Path, name: str) -> dict[str, str]:
    return {
        appender_name: appender["pattern"]
        for appender_name, appender in structure(generated(tmp_path, name))["appenders"].items()
    }


TASK_PROPERTIES = {
    "TaskName": APP1["taskName"],
    "AppName": "App1",
    "User": "INTERNAL\\sa_scheduler",
    "TaskId": APP1["taskId"],
    "AppId": "5c2ab5f1-2e79-4d4b-96b6-ec7bd5e4ba0e",
    "ExecutionId": "9f1c3a2e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
}
TASK_LINES = {
    "TaskFailLogger": ("failed", "ERROR", "Max retries reached for task"),
    "TaskAbortLogger": ("aborted", "WARN", "Execution State Change to Aborting"),
    "TaskSuccessLogger": ("success", "INFO", "Execution State Change to FinishedSuccess"),
    "DistributionTaskLogger": ("distribute", "INFO", "Exiting execute of Distribute task request."),
}


def test_every_layout_parses(tmp_path: Path) -> None:
    assert generate(tmp_path, "--butler-host", "10.0.0.1")[0] == 0
    for name, pattern in patterns(tmp_path, "Scheduler").items():
        outcome, level, message = TASK_LINES[name]
        event = parse_task_datagram(log4net_line(pattern, "sense1", TASK_PROPERTIES, level, message))
        assert isinstance(event, TaskEvent)
        assert (event.outcome, event.task_id, event.task_name, event.app_name, event.level) == (
            outcome,
            APP1["taskId"],
            APP1["taskName"],
            "App1",
            level,
        )
        assert event.message == message and event.host == "sense1"
    for name, pattern in patterns(tmp_path, "Proxy").items():
        command = "Start session" if name == "EventSession" else "Open connection"
        properties = {"Command": command, "UserDirectory": "LAB", "UserId": "anna", "Origin": "AppAccess"}
        session = parse_session_datagram(log4net_line(pattern, "sense2", properties, "INFO", "a; b"))
        assert isinstance(session, SessionEvent)
        assert (session.command, session.host, session.user_directory, session.user_id, session.message) == (
            command,
            "sense2",
            "LAB",
            "anna",
            "a; b",
        )


async def test_datagrams_laid_out_as_generated_reach_butler(
    tmp_path: Path, start_butler: StartButler, simulator: Any, site_certs: Any
) -> None:
    task_port, session_port = udp_ports()
    document = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    base = await start_butler(document)
    code, output = generate(
        tmp_path,
        "--butler-host",
        "127.0.0.1",
        "--task-port",
        str(task_port),
        "--session-port",
        str(session_port),
    )
    assert code == 0, output
    sent: list[tuple[bytes, tuple[str, int]]] = []
    for root_name in ("Scheduler", "Proxy"):
        for appender in generated(tmp_path, root_name).findall("appender"):
            target = params(appender)
            layout = appender.find("layout")
            assert layout is not None
            pattern = params(layout)["conversionpattern"]
            if root_name == "Scheduler":
                _, level, message = TASK_LINES[appender.get("name", "")]
                properties = TASK_PROPERTIES
            else:
                command = "Start session" if appender.get("name") == "EventSession" else "Open connection"
                properties = {"Command": command, "UserDirectory": "LAB", "UserId": "anna"}
                level, message = "INFO", f"{command} for user 'LAB\\anna'"
            datagram = log4net_line(pattern, "sense1", properties, level, message)
            sent.append((datagram, (target["remoteaddress"], int(target["remoteport"]))))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram, address in sent:
            sock.sendto(datagram, address)

    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> Any:
            async with http.get(base + path) as response:
                assert response.status == 200
                return await response.json()

        async with asyncio.timeout(10):
            while True:
                udp = (await get("/health"))["udpEvents"]
                if udp["taskEvents"]["accepted"] == 4 and udp["sessionEvents"]["accepted"] == 2:
                    break
                await asyncio.sleep(0.05)
        assert udp["taskEvents"]["malformed"] == 0 and udp["sessionEvents"]["malformed"] == 0
        users = await get("/v4/activeusers")
        assert [(u["userDirectory"], u["userId"], u["proxyHosts"]) for u in users] == [
            ("LAB", "anna", ["sense1"])
        ]
        assert await get("/v4/activeusercount") == {"response": 1, "perProxyHost": {"sense1": 1}}
