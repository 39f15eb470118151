"""qliksim as a command, and its independence from the client it serves."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509

from tests.conftest import client_tls, free_port

SOURCE = Path(__file__).resolve().parents[1] / "src" / "qliksim"


def test_qliksim_never_imports_butler() -> None:
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m == "butler" or m.startswith("butler.") for m in modules), path


def test_certs_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qliksim", "certs", str(tmp_path), "--hostname", "sense1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    client = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    root = x509.load_pem_x509_certificate((tmp_path / "root.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    assert client.subject.rfc4514_string() == "CN=QlikClient"
    assert client.issuer == root.subject and server.issuer == root.subject
    assert client.public_key().key_size == 2048  # type: ignore[union-attr]
    assert (tmp_path / "client_key.pem").read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")


def test_bad_site_file(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("tasks:\n  - name: T\n    app: Missing\n")
    result = subprocess.run(
        [sys.executable, "-m", "qliksim", "serve", "--site", str(site), "--certs", str(tmp_path / "certs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "task T: unknown app 'Missing'" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals; Windows has no SIGTERM to catch")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_at_once_with_engine_clients_connected(
    tmp_path: Path, site_certs: Any, signum: signal.Signals
) -> None:
    qrs_port, engine_port = free_port(), free_port()
    log = tmp_path / "qliksim.log"
    with log.open("w") as output:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "qliksim", "serve", "--certs", str(site_certs.directory)),
            *("--qrs-port", str(qrs_port), "--engine-port", str(engine_port)),
            *("--systeminfo-port", str(free_port())),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls(site_certs))) as http:
            for _ in range(200):
                try:
                    socket = await http.ws_connect(
                        f"wss://127.0.0.1:{engine_port}/app/engineData",
                        headers={"X-Qlik-User": "UserDirectory=Internal; UserId=sa_repository"},
                    )
                    break
                except aiohttp.ClientConnectorError:
                    assert process.returncode is None, log.read_text()
                    await asyncio.sleep(0.05)
            assert json.loads((await socket.receive()).data)["method"] == "OnConnected"
            closing = asyncio.ensure_future(socket.receive())
            sent = time.monotonic()
            process.send_signal(signum)
            # Without closing its sockets, aiohttp waits a minute for the clients to leave, then cancels.
            code = await asyncio.wait_for(process.wait(), 30)
            took = time.monotonic() - sent
            message = await asyncio.wait_for(closing, 1)
        assert code == 0 and took < 5, (took, log.read_text())
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001  # going away
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
