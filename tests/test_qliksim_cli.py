"""qliksim as a command, and its independence from the client it serves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from cryptography import x509

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
