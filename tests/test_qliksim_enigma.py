"""Qlik's own Engine client, enigma.js with its published QIX schema, against qliksim's Engine."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ENIGMA = Path(__file__).resolve().parent / "enigma"


@pytest.fixture(scope="session")
def enigma_installed() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the enigma.js test (the README's test set-up installs them)")
    if not (ENIGMA / "node_modules" / "enigma.js").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=ENIGMA,
            check=True,
            timeout=300,
            capture_output=True,
        )
    return ENIGMA


async def test_enigma_reads_an_app(enigma_installed: Path, simulator: Any, site_certs: Any) -> None:
    app1 = next(a["id"] for a in simulator.site.apps.values() if a["name"] == "App1")
    process = await asyncio.create_subprocess_exec(
        "node",
        "check.js",
        str(simulator.engine_port),
        str(site_certs.directory),
        app1,
        cwd=enigma_installed,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    assert result["engineVersion"]
    assert {"id": app1, "name": "App1"} in result["docs"]
    assert len(result["docs"]) == len(simulator.site.apps)
    assert "lib://DataFiles/sales.qvd" in result["script"]
    assert result["properties"]["qTitle"] == "App1"
    assert [s["qProperty"]["qMetaDef"]["title"] for s in result["sheets"]] == ["Overview", "Details"]
    assert [d["qDim"]["qFieldDefs"] for d in result["dimensions"]] == [["Region"], ["Product"]]
    assert result["connections"][0]["qName"] == "DataFiles"
    assert result["missingAppError"] == 1003
