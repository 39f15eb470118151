"""Qlik's own Engine client, enigma.js with its published QIX schema, against qliksim's Engine."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ENIGMA = Path(__file__).resolve().parent / "enigma"


@pytest.fixture(scope="session")
def enigma_installed() -> Path:
    """tests/enigma with the packages of its lock file installed (by ``scripts/ensure-test-services``, which
    ``make test`` runs first), so that the test itself needs no network."""
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: scripts/ensure-test-services installs it")
    locked = json.loads((ENIGMA / "package-lock.json").read_text())["packages"]
    try:
        installed = json.loads((ENIGMA / "node_modules" / ".package-lock.json").read_text())["packages"]
    except FileNotFoundError:
        installed = {}
    # npm's record of what it installed lists the lock file's packages, without the project itself ("").
    if installed != {name: entry for name, entry in locked.items() if name}:
        pytest.fail(
            "tests/enigma/node_modules is not what package-lock.json says: run scripts/ensure-test-services"
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
