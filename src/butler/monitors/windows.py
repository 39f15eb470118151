"""Windows services through the service control manager, as upstream checks them: ``sc.exe query`` for the
state and ``sc.exe qc`` for the details, on this host or another (``sc.exe \\\\host ...``).

Unlike upstream, ``sc.exe`` is started with an argument list, never through a shell, and host and service
names must match ``NAME_PATTERN`` (checked with the config, and again here), so a name cannot carry a
command. The parsing of the output is plain text work, tested on any OS with real outputs.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from dataclasses import dataclass

from butler.config.monitors import NAME_PATTERN
from butler.errors import UpstreamError
from butler.monitor_events import ServiceDetails

#: sc.exe's START_TYPE words as upstream names them.
START_TYPES = {
    "AUTO_START": "Automatic",
    "DEMAND_START": "Manual",
    "DISABLED": "Disabled",
    "BOOT_START": "Boot",
    "SYSTEM_START": "System",
}
TIMEOUT_SECONDS = 20.0
if sys.platform == "win32":
    import ctypes

    # sc.exe writes in the console's OEM code page (display names with accents, for one).
    OUTPUT_ENCODING = f"cp{ctypes.windll.kernel32.GetOEMCP()}"
else:
    OUTPUT_ENCODING = "utf-8"
_FIELD = re.compile(r"^\s*([A-Z_0-9]+)?\s*:\s?(.*)$")


class ServiceUnavailable(UpstreamError):
    """``sc.exe`` could not tell the state of a service (it does not exist, or the host cannot be asked)."""


def _fields(output: str) -> dict[str, list[str]]:
    """``NAME : value`` lines; a line with only ``: value`` continues the field above (DEPENDENCIES)."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        match = _FIELD.match(line)
        if match is None or line.lstrip().startswith("["):
            continue
        name, value = match[1], match[2].strip()
        if name:
            current = fields.setdefault(name, [])
            current.append(value)
        elif current is not None and value:
            current.append(value)
    return fields


def parse_query(output: str) -> str:
    """The state word of ``sc.exe query <name>`` (``RUNNING``, ``STOPPED``, ``START_PENDING``...)."""
    state = _fields(output).get("STATE")
    if not state or len(state[0].split()) < 2:
        raise ServiceUnavailable(f"no STATE in sc.exe's answer: {output.strip()[:300]!r}")
    return state[0].split()[1]


def parse_qc(output: str) -> ServiceDetails:
    """Display name, start type, executable and dependencies from ``sc.exe qc <name>``."""
    fields = _fields(output)
    if "SERVICE_NAME" not in fields:
        raise ServiceUnavailable(f"no service in sc.exe's answer: {output.strip()[:300]!r}")
    start_words = (fields.get("START_TYPE") or [""])[0].split()
    start_type = START_TYPES.get(start_words[1], start_words[1]) if len(start_words) > 1 else ""
    if start_type == "Automatic" and "(DELAYED)" in start_words:
        start_type = "Automatic (delayed start)"
    return ServiceDetails(
        display_name=(fields.get("DISPLAY_NAME") or [""])[0],
        start_type=start_type,
        exe_path=(fields.get("BINARY_PATH_NAME") or [""])[0],
        dependencies=tuple(value for value in fields.get("DEPENDENCIES", []) if value),
    )


def sc_arguments(host: str, command: str, service: str) -> list[str]:
    """The argument list of one ``sc.exe`` call; ValueError for a name that could carry more than a name."""
    for name in (host, service):
        if not NAME_PATTERN.match(name):
            raise ValueError(f"not a Windows host or service name: {name!r}")
    remote = [] if _is_local(host) else [f"\\\\{host}"]
    return ["sc.exe", *remote, command, service]


def _is_local(host: str) -> bool:
    name = socket.gethostname().lower()
    return host.lower() in (name, name.split(".")[0], "localhost", "127.0.0.1")


@dataclass(frozen=True)
class WindowsService:
    status: str
    details: ServiceDetails


class ServiceManager:
    """Asks ``sc.exe`` (Windows only: ``available`` is False elsewhere). Details change rarely, so ``qc`` runs
    once per service and again only after a change of state, halving upstream's two processes per check."""

    available = sys.platform == "win32"

    def __init__(self) -> None:
        self._details: dict[tuple[str, str], ServiceDetails] = {}

    async def check(self, host: str, service: str, refresh: bool = False) -> WindowsService:
        status = parse_query(await self._run(sc_arguments(host, "query", service)))
        key = (host, service)
        if refresh or key not in self._details:
            self._details[key] = parse_qc(await self._run(sc_arguments(host, "qc", service)))
        return WindowsService(status, self._details[key])

    async def _run(self, arguments: list[str]) -> str:
        try:
            process = await asyncio.create_subprocess_exec(
                *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            raise ServiceUnavailable(f"cannot run sc.exe: {exc}") from exc
        try:
            async with asyncio.timeout(TIMEOUT_SECONDS):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ServiceUnavailable(
                f"{' '.join(arguments)} did not answer within {TIMEOUT_SECONDS:g} s"
            ) from None
        text = output.decode(OUTPUT_ENCODING, errors="replace")
        if process.returncode != 0:
            raise ServiceUnavailable(
                f"{' '.join(arguments)} failed ({process.returncode}): {' '.join(text.split())[:300]}"
            )
        return text


__all__ = [
    "ServiceManager",
    "ServiceUnavailable",
    "WindowsService",
    "parse_qc",
    "parse_query",
    "sc_arguments",
]
