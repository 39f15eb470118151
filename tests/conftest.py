from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from butler.app import Butler
from butler.config import ENDPOINT_FLAGS, parse_config
from tests.receivers import receivers  # noqa: F401 (a fixture for every test module)

TEMPLATE = Path(__file__).resolve().parent / "data" / "production_template.yaml"


#: Endpoints that need a Qlik Sense site (and so certificates in the config).
QLIK_FLAGS = frozenset({"senseStartTask", "senseAppReload", "senseAppDump", "senseListApps"})


def base_config(**flags: bool) -> dict[str, Any]:
    """A minimal config document with the given endpoint flags (default: every flag on but the Qlik ones)."""
    enabled = flags or {name: name not in QLIK_FLAGS for name in ENDPOINT_FLAGS}
    tree: dict[str, Any] = {}
    for name, value in enabled.items():
        *parents, leaf = name.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {
        "Butler": {
            "logLevel": "info",
            # A free port, so that a test starting Butler from this document never needs a fixed one.
            "restServerConfig": {"enable": True, "serverHost": "127.0.0.1", "serverPort": free_port()},
            "restServerEndpointsEnable": tree,
        }
    }


StartButler = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_butler(tmp_path: Path) -> AsyncIterator[StartButler]:
    """Start Butler in this event loop on a free port of 127.0.0.1; returns its base URL."""
    running: list[Butler] = []

    async def start(document: dict[str, Any] | None = None, rate_limit: int = 0) -> str:
        settings = parse_config(copy.deepcopy(document or base_config()), base_dir=tmp_path)
        settings = dataclasses.replace(settings, rest=dataclasses.replace(settings.rest, port=0))
        butler = Butler(settings, rate_limit=rate_limit)
        await butler.start()
        running.append(butler)
        return butler.listeners[0].url

    yield start
    for butler in running:
        await butler.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port of 127.0.0.1 free for TCP (or, with ``socket.SOCK_DGRAM``, for UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def udp_ports() -> tuple[int, int]:
    """Two different free UDP ports of 127.0.0.1 (task and session events): both held while chosen, since
    two separate choices may give the same port twice."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as two,
    ):
        one.bind(("127.0.0.1", 0))
        two.bind(("127.0.0.1", 0))
        return int(one.getsockname()[1]), int(two.getsockname()[1])


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class ButlerProcess:
    """``butler serve`` as a child process, as an admin runs it."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.log = cwd / "butler-process.log"
        self._log_file = self.log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "butler", *args],
            cwd=cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_for_port(self, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"butler exited with {self.proc.returncode}: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"butler did not listen on {port}: {self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(10)
        self._log_file.close()
        return code

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text()


@pytest.fixture
def butler_process(tmp_path: Path) -> Iterator[Callable[..., ButlerProcess]]:
    started: list[ButlerProcess] = []

    def start(*args: str) -> ButlerProcess:
        process = ButlerProcess(list(args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.stop()


def run_butler(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "butler", *args], capture_output=True, text=True, timeout=30, cwd=cwd
    )


async def butler_child(
    *args: str, env: dict[str, str] | None = None, merged: bool = False
) -> tuple[int, str, str]:
    """``butler ARGS`` as a child process, awaited rather than waited for, so that a Butler in this event
    loop goes on answering it: (exit code, stdout, stderr); ``merged`` puts stderr into stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "butler",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), (err or b"").decode()


# --- The Qlik Sense simulator ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def site_certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from qliksim.certs import make_site_certificates

    return make_site_certificates(tmp_path_factory.mktemp("site-certs"), "sense1")


class UdpCollector(asyncio.DatagramProtocol):
    """A real UDP socket that keeps what it receives."""

    def __init__(self) -> None:
        self.datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.put_nowait(data)


@pytest.fixture
async def udp_collector() -> AsyncIterator[tuple[UdpCollector, int]]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(UdpCollector, local_addr=("127.0.0.1", 0))
    yield protocol, transport.get_extra_info("sockname")[1]
    transport.close()


@pytest.fixture
async def simulator(site_certs: Any, udp_collector: tuple[UdpCollector, int]) -> AsyncIterator[Any]:
    from qliksim.server import Options, Simulator
    from qliksim.site import load_site

    options = Options(
        qrs_port=0,
        engine_port=0,
        control_port=0,
        systeminfo_port=0,
        udp_targets=[("127.0.0.1", udp_collector[1])],
        session_udp_targets=[("127.0.0.1", udp_collector[1])],
        time_scale=0.01,
    )
    sim = Simulator(load_site(None), site_certs, options)
    await sim.start()
    yield sim
    await sim.stop()


Control = Callable[..., Awaitable[tuple[int, Any]]]  # (method, path, json body) -> (status, body)


@pytest.fixture
async def control(simulator: Any) -> AsyncIterator[Control]:
    """Calls to the simulator's control API (stop a service, set the licence, ...)."""
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{simulator.control_port}"

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, base + path, json=body) as response:
                return response.status, await response.json(content_type=None)

        yield call


XRF = "abcdefghij123456"
HEADERS = {
    "X-Qlik-Xrfkey": XRF,
    "X-Qlik-User": "UserDirectory=Internal;UserId=sa_repository",
    "Content-Type": "application/json",
}


@pytest.fixture
async def qrs(simulator: Any, site_certs: Any) -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(site_certs))) as session:
        base = f"https://127.0.0.1:{simulator.qrs_port}/qrs/"

        async def call(method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
            separator = "&" if "?" in path else "?"
            url = f"{base}{path}{separator}xrfkey={XRF}" if "xrfkey" not in path else base + path
            async with session.request(
                method, aiohttp.client.URL(url, encoded=True), headers=headers or HEADERS, **kwargs
            ) as response:
                text = await response.text()
                body = await response.json() if response.content_type == "application/json" else text
                return response.status, body

        yield call


def client_tls(certs: Any, with_client_cert: bool = True) -> Any:
    import ssl

    context = ssl.create_default_context(cafile=str(certs.root))
    if with_client_cert:
        context.load_cert_chain(str(certs.client), str(certs.client_key))
    return context


# --- Redis ------------------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the tests' own on a free port, started from the installed binary; it can be
    stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the session: tests keep apart by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


# --- Mosquitto ---------------------------------------------------------------------------------------------


class Broker:
    """A mosquitto of the tests' own on a free port; can be stopped and started again on the same port."""

    def __init__(self, directory: Path, extra: str = "") -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        # `user root`: started as root, mosquitto would otherwise switch to its own user, which cannot read
        # files in the tests' private temporary folders (no effect when not root).
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\npersistence false\nuser root\n"
            + (extra or "allow_anonymous true\n")
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = Broker(tmp_path)
    running.start()
    yield running
    running.stop()
