"""Butler as an admin runs it: the command line, HTTPS, start-up failures, logging."""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from butler import __version__
from tests.certs import make_certs
from tests.conftest import ButlerProcess, StartButler, base_config, free_port, run_butler, write_config


def config_file(tmp_path: Path, port: int, **rest: object) -> Path:
    document = base_config(butlerping=True, base16ToBase62=True)
    document["Butler"]["restServerConfig"].update(serverPort=port, **rest)
    return write_config(tmp_path / "butler.yaml", document)


def test_version() -> None:
    result = run_butler("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"butler {__version__}"


async def test_serve_answers_logs_and_stops(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    port = free_port()
    process = butler_process("serve", "-c", str(config_file(tmp_path, port)), "--api-rate-limit", "0")
    process.wait_for_port(port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/v4/butlerping?x=1") as response:
            assert response.status == 200
        async with http.get(f"http://127.0.0.1:{port}/v4/nope") as response:
            assert response.status == 404
    assert process.stop() == 0
    output = process.output()
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info: GET /v4/butlerping\?x=1 200 [\d.]+ms 127\.0\.0\.1$",
        output,
        re.MULTILINE,
    ), output
    assert re.search(r" info: GET /v4/nope 404 [\d.]+ms 127\.0\.0\.1$", output, re.MULTILINE), output


async def test_upstream_style_invocation_and_log_level(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    port = free_port()
    process = butler_process("-c", str(config_file(tmp_path, port)), "--loglevel", "warn")
    process.wait_for_port(port)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/v4/butlerping") as response,
    ):
        assert response.status == 200
    assert process.stop() == 0
    assert "GET /v4/butlerping" not in process.output()


async def test_https(tmp_path: Path, butler_process: Callable[..., ButlerProcess]) -> None:
    certs = make_certs(tmp_path)
    port = free_port()
    tls = {"enable": True, "cert": str(certs.cert), "key": str(certs.key), "ca": str(certs.ca)}
    process = butler_process("serve", "-c", str(config_file(tmp_path, port, tls=tls)))
    process.wait_for_port(port)
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    async with aiohttp.ClientSession() as http:
        url = f"https://127.0.0.1:{port}/v4/base16tobase62?base16=1f5848b5f8ba4e85a57c7ca55a9e"
        async with http.get(url, ssl=trusted) as response:
            assert response.status == 200
            assert (await response.json())["base62"] == "3t5Na7R7Hj5yaBCv80S"
        async with http.post(
            f"https://127.0.0.1:{port}/v4/butlerping", ssl=trusted, headers={"X-HTTP-Method-Override": "GET"}
        ) as response:
            assert response.status == 200
        # Plain HTTP to the TLS port gets no answer.
        try:
            async with http.get(f"http://127.0.0.1:{port}/v4/butlerping") as response:
                assert response.status == 400
        except aiohttp.ClientError:
            pass
    assert process.stop() == 0
    assert f"REST API listening on https://127.0.0.1:{port}" in process.output()


def test_unreadable_tls_files_stop_start_up(tmp_path: Path) -> None:
    port = free_port()
    tls = {"enable": True, "cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.key")}
    result = run_butler("serve", "-c", str(config_file(tmp_path, port, tls=tls)))
    assert result.returncode == 1
    assert f"Butler.restServerConfig.tls.cert: file not found: {tmp_path / 'missing.pem'}" in result.stderr

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    tls = {"enable": True, "cert": str(garbage), "key": str(garbage)}
    result = run_butler("serve", "-c", str(config_file(tmp_path, port, tls=tls)))
    assert result.returncode == 1
    assert "Butler.restServerConfig.tls: cannot load certificate" in result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_butler("serve", "-c", str(config_file(tmp_path, port)))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} for the REST API" in result.stderr


def test_invalid_config_stops_start_up(tmp_path: Path) -> None:
    port = free_port()
    path = config_file(tmp_path, port)
    path.write_text(path.read_text().replace(f"serverPort: {port}", "serverPort: abc"))
    result = run_butler("serve", "-c", str(path))
    assert result.returncode == 1
    assert "Butler.restServerConfig.serverPort: expected an integer 1-65535, got 'abc'" in result.stderr


def test_bad_rate_limit_option(tmp_path: Path) -> None:
    result = run_butler("serve", "-c", str(config_file(tmp_path, free_port())), "--api-rate-limit", "lots")
    assert result.returncode == 2
    assert "expected a whole number of requests per minute, got 'lots'" in result.stderr


async def test_docker_health_check_listener(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    port, health_port = free_port(), free_port()
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"]["serverPort"] = port
    document["Butler"]["dockerHealthCheck"] = {"enable": True, "port": health_port}
    process = butler_process("serve", "-c", str(write_config(tmp_path / "b.yaml", document)))
    process.wait_for_port(health_port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{health_port}/health") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with http.get(f"http://127.0.0.1:{health_port}/v4/butlerping") as response:
            assert response.status == 404
    assert process.stop() == 0


@pytest.mark.parametrize(
    ("flags", "verify", "warned"),
    [
        ({"senseStartTask": True, "senseListApps": True}, {}, ["configQRS", "configEngine"]),
        ({"senseStartTask": True, "senseListApps": True}, {"configQRS": True}, ["configEngine"]),
        ({"senseAppDump": True}, {"configEngine": True}, []),
        ({"senseStartTask": True}, {}, ["configQRS"]),
        ({"butlerping": True}, {}, []),
    ],
)
async def test_unverified_qlik_certificates_are_warned_about(
    start_butler: StartButler,
    site_certs: Any,
    caplog: pytest.LogCaptureFixture,
    flags: dict[str, bool],
    verify: dict[str, bool],
    warned: list[str],
) -> None:
    """One warning line per Qlik service whose certificate is not verified, when Butler talks to it."""
    document = base_config(**flags)
    document["Butler"]["cert"] = {
        "clientCert": str(site_certs.client),
        "clientCertKey": str(site_certs.client_key),
        "clientCertCA": str(site_certs.root),
    }
    for section in ("configQRS", "configEngine"):
        document["Butler"][section] = {"host": "sense1", "rejectUnauthorized": verify.get(section, False)}
    await start_butler(document)
    found = [m for m in caplog.messages if "rejectUnauthorized" in m]
    assert [m.split(".")[1] for m in found] == warned
    port = {"configQRS": 4242, "configEngine": 4747}
    service = {"configQRS": "QRS", "configEngine": "the Engine"}
    for message, section in zip(found, warned, strict=True):
        assert message == (
            f"Butler.{section}.rejectUnauthorized is false: the certificate of {service[section]} at "
            f"sense1:{port[section]} is not verified, so whoever can intercept the connection can pose as "
            "Qlik Sense; true verifies it against Butler.cert.clientCertCA"
        )
