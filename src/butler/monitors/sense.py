"""What the monitors ask Qlik Sense, in their terms: service states per node, the server licence, access
allocations and their users (QRS), and the version (the 9032 ``systeminfo`` listener).

``SenseSite`` is the interface the monitors depend on; ``QrsSense`` speaks it over ``QrsClient``, and tests
may put an in-process fake in its place. Answers of the wrong shape are a QrsError, as in
``butler.qlik.repository``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
import orjson

from butler.config.settings import CertificateSettings
from butler.errors import UpstreamError
from butler.http.answers import beginning
from butler.qlik.qrs import QrsClient, QrsError, quote_filter_value
from butler.qlik.tls import client_tls

#: QRS's ``serviceType`` numbers: the Windows service's name, the name the monitor shows, its display name.
SERVICE_TYPES: dict[int, tuple[str, str, str]] = {
    0: ("QlikSenseRepositoryService", "Repository", "Qlik Sense Repository Service"),
    1: ("QlikSenseProxyService", "Proxy", "Qlik Sense Proxy Service"),
    2: ("QlikSenseSchedulerService", "Scheduler", "Qlik Sense Scheduler Service"),
    3: ("QlikSenseEngineService", "Engine", "Qlik Sense Engine Service"),
    4: ("QlikSenseAppMigrationService", "App migration", "Qlik Sense App Migration Service"),
    5: ("QlikSensePrintingService", "Printing", "Qlik Sense Printing Service"),
}
#: QRS's ``serviceState`` numbers as the words ``sc.exe`` uses, so both sources read alike: a service the
#: repository cannot reach (3) is treated as stopped.
SERVICE_STATES = {
    0: "START_PENDING",
    1: "CERTIFICATES_NOT_INSTALLED",
    2: "RUNNING",
    3: "STOPPED",
    4: "DISABLED",
    5: "UNKNOWN",
}
#: The user the monitors ask QRS as (upstream's, for the licence calls).
SA_REPOSITORY = (("X-Qlik-User", "UserDirectory=Internal; UserId=sa_repository"),)
#: The access types licence release works on, by the name the config uses.
ACCESS_TYPES = {"professional": "professionalaccesstype", "analyzer": "analyzeraccesstype"}


@dataclass(frozen=True)
class NodeService:
    """One Sense service on one node, as the repository last saw it."""

    host: str
    node: str
    service_name: str
    friendly_name: str
    display_name: str
    status: str


@dataclass(frozen=True)
class Allocation:
    """An access allocation (professional or analyzer) and whose it is."""

    id: str
    user_id: str
    user_directory: str
    #: The user's QRS id, for its tags and flags.
    user_ref: str
    last_used: datetime
    #: Released already: Sense keeps it, quarantined, for seven days.
    quarantined: bool = False


@dataclass(frozen=True)
class SenseUser:
    """What the never-release rules read of a user."""

    user_directory: str
    user_id: str
    tags: tuple[str, ...]
    custom_properties: tuple[tuple[str, str], ...]
    inactive: bool
    blocked: bool
    removed_externally: bool


class SenseSite(Protocol):
    async def service_statuses(self) -> list[NodeService]: ...

    async def server_license(self) -> dict[str, Any]: ...

    async def access_overview(self) -> dict[str, Any]: ...

    async def unused_allocations(self, access_type: str, cutoff: datetime) -> list[Allocation]:
        """The allocations of ``access_type`` (``professional``, ``analyzer``) last used at or before
        ``cutoff``."""
        ...

    async def user(self, user_ref: str) -> SenseUser: ...

    async def release(self, access_type: str, allocation_id: str) -> str | None:
        """Delete an allocation: None when done, else why not."""
        ...


class QrsSense:
    """``SenseSite`` over the QRS REST API."""

    def __init__(self, qrs: QrsClient) -> None:
        self.qrs = qrs

    async def service_statuses(self) -> list[NodeService]:
        path = "servicestatus/full"
        found = []
        for entry in await self._objects(path, await self.qrs.get_json(path)):
            node = entry.get("serverNodeConfiguration") or {}
            if not isinstance(node, dict):
                raise _shape(path, "an object as serverNodeConfiguration", node)
            kind, state = entry.get("serviceType"), entry.get("serviceState")
            unknown = (f"SenseService{kind}", f"Service type {kind}", f"Qlik Sense service type {kind}")
            name, friendly, display = SERVICE_TYPES.get(kind, unknown) if isinstance(kind, int) else unknown
            status = SERVICE_STATES.get(state, "UNKNOWN") if isinstance(state, int) else "UNKNOWN"
            host = str(node.get("hostName") or node.get("name") or "")
            found.append(NodeService(host, str(node.get("name") or host), name, friendly, display, status))
        return found

    async def server_license(self) -> dict[str, Any]:
        answer = await self.qrs.get_json("license")
        if not isinstance(answer, dict):
            raise _shape("license", "an object", answer)
        return answer

    async def access_overview(self) -> dict[str, Any]:
        path = "license/accesstypeoverview"
        answer = await self.qrs.get_json(path)
        if not isinstance(answer, dict):
            raise _shape(path, "an object", answer)
        return answer

    async def unused_allocations(self, access_type: str, cutoff: datetime) -> list[Allocation]:
        path = f"license/{ACCESS_TYPES[access_type]}/full"
        stamp = cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        answer = await self.qrs.get_json(path, {"filter": f"lastUsed le {quote_filter_value(stamp)}"})
        allocations = []
        for entry in await self._objects(path, answer):
            user = entry.get("user") or {}
            if not isinstance(user, dict) or not entry.get("id") or not entry.get("lastUsed"):
                raise _shape(path, "allocations with an id, a user and lastUsed", entry)
            try:
                last_used = parse_time(str(entry["lastUsed"]))
            except ValueError:
                raise _shape(path, "lastUsed as an ISO 8601 time", entry) from None
            allocations.append(
                Allocation(
                    str(entry["id"]),
                    str(user.get("userId", "")),
                    str(user.get("userDirectory", "")),
                    str(user.get("id", "")),
                    last_used,
                    quarantined=entry.get("quarantined") is True,
                )
            )
        return allocations

    async def user(self, user_ref: str) -> SenseUser:
        path = f"user/{user_ref}"
        user = await self.qrs.get_json(path)
        if not isinstance(user, dict):
            raise _shape(path, "a user object", user)
        # A tag or property that cannot be read might be one that keeps the licence: the user is not
        # released then, rather than released on what could be read.
        tags = tuple(str(tag.get("name")) for tag in self._listed(path, user, "tags"))
        properties = []
        for cp in self._listed(path, user, "customProperties"):
            definition = cp.get("definition") or {}
            if not isinstance(definition, dict):
                raise _shape(path, "custom properties with an object as definition", cp)
            properties.append((str(definition.get("name")), str(cp.get("value"))))
        return SenseUser(
            str(user.get("userDirectory", "")),
            str(user.get("userId", "")),
            tags,
            tuple(properties),
            inactive=user.get("inactive") is True,
            blocked=user.get("blacklisted") is True,
            removed_externally=user.get("removedExternally") is True,
        )

    async def release(self, access_type: str, allocation_id: str) -> str | None:
        path = f"license/{ACCESS_TYPES[access_type]}/{allocation_id}"
        response = await self.qrs.request("DELETE", path)
        if response.status in (200, 204):
            return None
        return f"QRS answered {response.status}: {response.text[:200]}"

    @staticmethod
    def _listed(path: str, entity: dict[str, Any], key: str) -> list[dict[str, Any]]:
        items = entity.get(key) or []
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise _shape(path, f"a list of objects as {key}", items)
        return items

    @staticmethod
    async def _objects(path: str, answer: Any) -> list[dict[str, Any]]:
        if not isinstance(answer, list) or not all(isinstance(entry, dict) for entry in answer):
            raise _shape(path, "a list of objects", answer)
        return answer


def parse_time(text: str) -> datetime:
    """QRS's ``2024-02-01T09:12:00.000Z``, as an aware time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _shape(path: str, expected: str, answer: Any) -> QrsError:
    return QrsError(f"Qlik Sense QRS answered GET {path} with {repr(answer)[:200]}; expected {expected}")


class VersionUnavailable(UpstreamError):
    """The systeminfo listener did not answer as expected; the message says how."""


class SystemInfo:
    """``GET https://<host>:9032/v1/systeminfo`` with the QMC client certificate, no xrfkey."""

    TIMEOUT_SECONDS = 10.0
    #: Bytes of the answer read at most: Sense's is under 1 kB.
    ANSWER_BYTES = 65_536

    def __init__(
        self, host: str, port: int, certificates: CertificateSettings, reject_unauthorized: bool
    ) -> None:
        self.url = f"https://{host}:{port}/v1/systeminfo"
        self._ssl = client_tls(certificates, reject_unauthorized)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl))
        try:
            async with self._session.get(
                self.url, timeout=aiohttp.ClientTimeout(total=self.TIMEOUT_SECONDS)
            ) as response:
                body = await beginning(response, self.ANSWER_BYTES, self.TIMEOUT_SECONDS)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise VersionUnavailable(f"{self.url}: {str(exc) or type(exc).__name__}") from exc
        if status != 200 or not body:
            raise VersionUnavailable(f"{self.url} answered {status}: {body[:200]!r}")
        if len(body) == self.ANSWER_BYTES:
            raise VersionUnavailable(f"{self.url} answered more than {self.ANSWER_BYTES} bytes")
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise VersionUnavailable(f"{self.url} answered {body[:200]!r}, not JSON") from exc
        if not isinstance(answer, dict):
            raise VersionUnavailable(f"{self.url} answered {str(answer)[:200]}, not an object")
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


__all__ = [
    "ACCESS_TYPES",
    "Allocation",
    "NodeService",
    "QrsSense",
    "SenseSite",
    "SenseUser",
    "SystemInfo",
    "VersionUnavailable",
    "parse_time",
]
