"""The wheels the packaging test installs Butler from, so that it runs without the package registry.

`scripts/ensure-test-services` fills the folder once, from PyPI (again when the lock file or the
dependencies change): every dependency of Butler as a wheel at its version in `requirements-lock.txt`, and
setuptools for building Butler's own wheel. Run as `python -m tests.wheelhouse`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "build" / "wheelhouse"
_STAMP = WHEELHOUSE / ".complete"
# What the wheels depend on: Butler's dependencies and build requirements, and their pinned versions.
_INPUTS = ("pyproject.toml", "requirements-lock.txt")


def _digest() -> str:
    digest = hashlib.sha256()
    for name in _INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def complete() -> bool:
    """Whether the folder holds the wheels of the current dependencies."""
    return _STAMP.is_file() and _STAMP.read_text() == _digest()


def has_wheels() -> bool:
    return any(WHEELHOUSE.glob("*.whl"))


def offline_pip_environment() -> dict[str, str]:
    """Settings for a pip run that takes every package from the folder and reads no pip config."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE), "PIP_CONFIG_FILE": os.devnull}


def fill(timeout: float = 600) -> None:
    """Download the wheels (needs PyPI); raises CalledProcessError when pip cannot."""
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    build_requirements = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    pinned = ["--only-binary", ":all:", "-c", str(ROOT / "requirements-lock.txt"), "-d", str(WHEELHOUSE)]
    subprocess.run(
        [*pip, *pinned, *build_requirements, str(ROOT)],
        check=True,
        timeout=timeout,
    )
    _STAMP.write_text(_digest())


if __name__ == "__main__":
    if not complete():
        print(f"downloading the wheels of the packaging test to {WHEELHOUSE.relative_to(ROOT)}")
        fill()
