"""The QRS client: ``https://host:4242/qrs/...`` with the QMC-exported client certificate.

Every call carries a fresh xrfkey (query parameter and header) and the configured static headers
(``X-Qlik-User``). Connections are kept alive and reused, so a request that starts ten tasks costs ten
requests, not ten TLS handshakes. Calls that are safe to repeat (reads, and any call whose connection
could not be opened) are retried with backoff on connection errors and on 502/503/504.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from butler.config.settings import CertificateSettings, QrsSettings
from butler.qlik.tls import client_tls

log = logging.getLogger("butler.qrs")

_XRF_ALPHABET = string.ascii_letters + string.digits
_RETRY_STATUSES = frozenset({502, 503, 504})


def xrfkey() -> str:
    return "".join(secrets.choice(_XRF_ALPHABET) for _ in range(16))


def quote_filter_value(value: str) -> str:
    """A string literal for a QRS filter: quoted, with every ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


class QrsError(Exception):
    """QRS answered with an error, or could not be reached. ``status`` is None when nothing came back."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class QrsTimeout(QrsError):
    """QRS did not answer within ``Butler.configQRS.timeoutSeconds``."""


@dataclass
class QrsResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class QrsClient:
    def __init__(self, settings: QrsSettings, certificates: CertificateSettings) -> None:
        self.settings = settings
        scheme = "https" if settings.use_ssl else "http"
        self.base = f"{scheme}://{settings.host}:{settings.port}/qrs/"
        self._ssl = client_tls(certificates, settings.reject_unauthorized) if settings.use_ssl else None
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else False, limit=64, keepalive_timeout=60
            )
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds, connect=10)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        json_body: Any = None,
        safe: bool | None = None,
    ) -> QrsResponse:
        """One QRS call. ``path`` is relative to ``/qrs/``; ``query`` values are percent-encoded here.
        ``safe`` (default: GET only) allows retries after the request may have reached QRS."""
        repeatable = method == "GET" if safe is None else safe
        attempts = 1 + self.settings.retries
        for attempt in range(attempts):
            key = xrfkey()
            parts = [f"{name}={quote(value, safe='')}" for name, value in (query or {}).items()]
            parts.append(f"xrfkey={key}")
            url = self.base + path + "?" + "&".join(parts)
            headers = {"X-Qlik-Xrfkey": key, "Content-Type": "application/json"}
            headers.update(self.settings.headers)
            body = orjson.dumps(json_body if json_body is not None else {}) if method != "GET" else None
            retry_after: Exception | None = None
            self.calls += 1
            try:
                async with self._client().request(
                    method, URL(url, encoded=True), headers=headers, data=body
                ) as response:
                    payload = await response.read()
                    if response.status in _RETRY_STATUSES and repeatable and attempt + 1 < attempts:
                        retry_after = QrsError(f"QRS answered {response.status}", response.status)
                    else:
                        return QrsResponse(response.status, payload)
            except aiohttp.ClientConnectorError as exc:
                # The connection was never opened, so nothing reached QRS: always safe to try again.
                error = QrsError(
                    f"cannot connect to Qlik Sense QRS at {self.settings.host}:{self.settings.port}: {exc}"
                )
                if attempt + 1 >= attempts:
                    raise error from exc
                retry_after = error
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                failure = self._failure(method, path, exc)
                if not repeatable or attempt + 1 >= attempts:
                    raise failure from exc
                retry_after = failure
            delay = 0.1 * 2**attempt
            log.warning("%s; trying again in %.1f s", retry_after, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _failure(self, method: str, path: str, exc: BaseException) -> QrsError:
        if isinstance(exc, TimeoutError):
            limit = self.settings.timeout_seconds
            return QrsTimeout(f"Qlik Sense QRS did not answer {method} {path} within {limit:g} s")
        return QrsError(f"Qlik Sense QRS {method} {path} failed: {exc}")

    async def get_json(self, path: str, query: dict[str, str] | None = None) -> Any:
        response = await self.request("GET", path, query=query)
        if response.status != 200:
            raise QrsError(
                f"Qlik Sense QRS answered GET {path} with {response.status}: {response.text[:300]}",
                response.status,
                response.text,
            )
        return response.json()
