"""A real InfluxDB 1.x for the tests: Debian's ``influxd`` with a configuration of its own (data in a
temporary folder, free ports, no reporting), which can be stopped and started again on the same ports and
data."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port


class Influxd:
    def __init__(self, directory: Path, auth: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "influxd.conf"
        self.config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{directory / "meta"}"\n'
            f'[data]\n  dir = "{directory / "data"}"\n  wal-dir = "{directory / "wal"}"\n'
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            f"  auth-enabled = {'true' if auth else 'false'}\n"
            "[monitor]\n  store-enabled = false\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.auth: tuple[str, str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("influxd") or "/usr/bin/influxd"
        self.process = subprocess.Popen(
            [binary, "-config", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as answer:
                    if answer.status == 204:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("influxd did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def query(self, statement: str, database: str = "butler") -> dict[str, Any]:
        """The first result of an InfluxQL statement, as InfluxDB answers it."""
        data = urllib.parse.urlencode({"q": statement, "db": database}).encode()
        request = urllib.request.Request(f"{self.url}/query", data=data)
        if self.auth is not None:
            login = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {login}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())["results"][0]
        return result

    def rows(self, statement: str, database: str = "butler") -> list[dict[str, Any]]:
        """The rows of a query's first series, each as {column: value}."""
        result = self.query(statement, database)
        assert "error" not in result, result
        series = result.get("series") or [{"columns": [], "values": []}]
        columns = series[0]["columns"]
        return [dict(zip(columns, values, strict=True)) for values in series[0]["values"]]


@pytest.fixture
def influxd(tmp_path: Path) -> Iterator[Influxd]:
    server = Influxd(tmp_path / "influxdb")
    server.start()
    yield server
    server.stop()
