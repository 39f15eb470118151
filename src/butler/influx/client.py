"""HTTP clients of InfluxDB 1.x, 2.x and 3.x behind one interface: ``write`` a batch of line protocol.

Each client keeps one aiohttp session (one connection pool) for its life. What InfluxDB answers decides
what becomes of a batch: a 2xx took it; 400, 413 and 422 refused its contents, and sending it again would
be refused again (``InfluxError.retry`` false); anything else, a connection that fails or a write that
takes longer than the timeout may succeed later (``retry`` true). All three are plain HTTP, as upstream.
"""

from __future__ import annotations

import base64
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

import aiohttp

from butler.config.influx import InfluxSettings
from butler.http.answers import beginning

log = logging.getLogger("butler.influx")

#: How long one write to InfluxDB 1.x or 2.x may take (3.x has ``v3Config.writeTimeout``).
WRITE_TIMEOUT = 10.0
#: Statuses that say the batch itself is wrong.
REFUSED = frozenset({400, 413, 422})
#: How much of InfluxDB's answer goes into an error message.
ANSWER_CHARS = 300
#: How much of InfluxDB's answer is read at most: far more than a query of the set-up answers with.
ANSWER_BYTES = 1 << 20


class InfluxError(Exception):
    """A write did not succeed; ``retry``: the same batch may succeed later."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class InfluxClient(ABC):
    """Writes batches of line protocol to one InfluxDB."""

    def __init__(self, base_url: str, timeout: float, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = {"Content-Type": "text/plain; charset=utf-8", **headers}
        self._session: aiohttp.ClientSession | None = None

    @property
    @abstractmethod
    def target(self) -> str:
        """Where the points go, for logs: ``InfluxDB 1.x at http://host:8086, database butler``."""

    @abstractmethod
    async def write(self, body: bytes) -> None:
        """Write the lines of ``body``; raises InfluxError."""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        return self._session

    async def _request(self, method: str, path: str, params: dict[str, str], **kwargs: Any) -> str:
        """InfluxDB's answer to a request that succeeded; InfluxError otherwise."""
        try:
            async with self.session().request(
                method, f"{self.base_url}{path}", params=params, **kwargs
            ) as response:
                text = (await beginning(response, ANSWER_BYTES)).decode("utf-8", errors="replace")
                if response.status < 300:
                    return text
                message = f"{response.status} {response.reason}: {text.strip()[:ANSWER_CHARS]}"
                raise InfluxError(message, retry=response.status not in REFUSED)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise InfluxError(f"{self.target}: {type(exc).__name__} {exc}".strip(), retry=True) from exc

    async def _post(self, path: str, params: dict[str, str], body: bytes) -> None:
        await self._request("POST", path, params, data=body)


class V1Client(InfluxClient):
    """InfluxDB 1.x: ``POST /write?db=&rp=``, the database and retention policy created when missing."""

    def __init__(self, settings: InfluxSettings) -> None:
        v1 = settings.v1
        login = base64.b64encode(f"{v1.username}:{v1.password}".encode()).decode()
        super().__init__(
            f"http://{settings.host}:{settings.port}",
            WRITE_TIMEOUT,
            {"Authorization": f"Basic {login}"} if v1.auth else {},
        )
        self.settings = v1
        self._ready = False

    @property
    def target(self) -> str:
        return f"InfluxDB 1.x at {self.base_url}, database {self.settings.database}"

    async def write(self, body: bytes) -> None:
        v1 = self.settings
        if not self._ready:
            await self._set_up()
        params = {"db": v1.database, "rp": v1.retention_policy, "precision": "ns"}
        try:
            await self._post("/write", params, body)
        except InfluxError as exc:
            if "not found" in str(exc):  # the database or policy was dropped meanwhile: made again
                self._ready = False
                exc.retry = True
            raise

    async def _set_up(self) -> None:
        """The database and retention policy, made when missing (as upstream makes them)."""
        v1 = self.settings
        database = identifier(v1.database)
        await self._query(f"CREATE DATABASE {database}")  # nothing happens when it exists
        statement = f"SHOW RETENTION POLICIES ON {database}"
        answer = await self._query(statement)
        try:
            names = {row[0] for series in answer.get("series") or [] for row in series.get("values") or []}
        except (AttributeError, LookupError, TypeError) as exc:
            message = f"{self.target}: unexpected answer to {statement}: {str(answer)[:ANSWER_CHARS]}"
            raise InfluxError(message, retry=True) from exc
        if v1.retention_policy not in names:
            await self._query(
                f"CREATE RETENTION POLICY {identifier(v1.retention_policy)} ON {database} "
                f"DURATION {v1.retention_duration} REPLICATION 1 DEFAULT"
            )
            log.info(
                "InfluxDB: retention policy %s (%s) made on database %s",
                v1.retention_policy,
                v1.retention_duration,
                v1.database,
            )
        self._ready = True

    async def _query(self, statement: str) -> dict[str, Any]:
        text = await self._request("POST", "/query", {"q": statement})
        try:
            result: dict[str, Any] = dict(json.loads(text)["results"][0])
        except (ValueError, LookupError, TypeError) as exc:
            message = f"{self.target}: unexpected answer to {statement}: {text[:ANSWER_CHARS]}"
            raise InfluxError(message, retry=True) from exc
        if "error" in result:
            # A login without admin rights cannot make databases: the writes then say whether it exists.
            log.warning("InfluxDB did not run %s: %s", statement, result["error"])
        return result


class V2Client(InfluxClient):
    """InfluxDB 2.x: ``POST /api/v2/write?org=&bucket=&precision=ns`` with a token."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(
            f"http://{settings.host}:{settings.port}",
            WRITE_TIMEOUT,
            {"Authorization": f"Token {settings.v2.token}"},
        )
        self.settings = settings.v2

    @property
    def target(self) -> str:
        return f"InfluxDB 2.x at {self.base_url}, bucket {self.settings.bucket}"

    async def write(self, body: bytes) -> None:
        params = {"org": self.settings.org, "bucket": self.settings.bucket, "precision": "ns"}
        await self._post("/api/v2/write", params, body)


class V3Client(InfluxClient):
    """InfluxDB 3.x: ``POST /api/v3/write_lp?db=&precision=nanosecond`` with a bearer token."""

    def __init__(self, settings: InfluxSettings) -> None:
        v3 = settings.v3
        super().__init__(
            f"http://{settings.host}:{settings.port}",
            v3.write_timeout,
            {"Authorization": f"Bearer {v3.token}"},
        )
        self.settings = v3

    @property
    def target(self) -> str:
        return f"InfluxDB 3.x at {self.base_url}, database {self.settings.database}"

    async def write(self, body: bytes) -> None:
        await self._post("/api/v3/write_lp", {"db": self.settings.database, "precision": "nanosecond"}, body)


def identifier(name: str) -> str:
    """An InfluxQL identifier, quoted."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def open_client(settings: InfluxSettings) -> InfluxClient:
    """The client of the configured version."""
    clients: dict[int, type[V1Client | V2Client | V3Client]] = {1: V1Client, 2: V2Client, 3: V3Client}
    return clients[settings.version](settings)


__all__ = ["InfluxClient", "InfluxError", "V1Client", "V2Client", "V3Client", "open_client"]
