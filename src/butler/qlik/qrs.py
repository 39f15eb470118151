"""The QRS client: ``https://host:4242/qrs/...`` with the QMC-exported client certificate.

Every call carries a fresh xrfkey (query parameter and header) and the configured static headers
(``X-Qlik-User``). Connections are kept alive and reused, so a request that starts ten tasks costs ten
requests, not ten TLS handshakes. Calls that are safe to repeat (reads, and any call whose connection
could not be opened) are retried with backoff on connection errors and on 502/503/504.

``timeoutSeconds`` is a deadline, retries included: each attempt may take what is left of it, and no retry
starts that could not begin before it. Inside ``QrsClient.deadline()`` the calls of one operation (a task
start's lookups and starts, say) share one deadline, so the operation ends within ``timeoutSeconds`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from butler.config.settings import CertificateSettings, QrsSettings
from butler.errors import UpstreamError, UpstreamTimeout
from butler.qlik.tls import client_tls

log = logging.getLogger("butler.qrs")

_XRF_ALPHABET = string.ascii_letters + string.digits
_RETRY_STATUSES = frozenset({502, 503, 504})
#: The event-loop time by which the operation in progress must be done; tasks started inside the operation
#: inherit it with their context.
_DEADLINE: ContextVar[float | None] = ContextVar("qrs_deadline", default=None)


def xrfkey() -> str:
    return "".join(secrets.choice(_XRF_ALPHABET) for _ in range(16))


def quote_filter_value(value: str) -> str:
    """A string literal for a QRS filter: quoted, with every ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


class QrsError(UpstreamError):
    """QRS answered with an error, or could not be reached. ``status`` is None when nothing came back."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class QrsTimeout(QrsError, UpstreamTimeout):
    """QRS did not answer within ``Butler.configQRS.timeoutSeconds``."""


@dataclass
class QrsResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; QrsError when it is not (a proxy's or load balancer's page, say), so the caller
        hears that QRS misbehaved rather than Butler failing."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            raise QrsError(
                f"Qlik Sense QRS answered {self.status} with a body that is not JSON: {self.text[:200]}",
                self.status,
                self.text,
            ) from None

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
        #: How the last call went (the status page): when QRS last answered, and why the last call failed
        #: (None once QRS answers again).
        self.last_answer: float | None = None
        self.last_error: str | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else False, limit=64, keepalive_timeout=60
            )
            # Each attempt gets its own timeout, from what is left of its deadline.
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.contextmanager
    def deadline(self) -> Iterator[None]:
        """The QRS calls made inside, and in tasks started inside, share one deadline ``timeoutSeconds``
        from now (or an enclosing deadline that ends sooner)."""
        ends = asyncio.get_running_loop().time() + self.settings.timeout_seconds
        enclosing = _DEADLINE.get()
        token = _DEADLINE.set(ends if enclosing is None else min(ends, enclosing))
        try:
            yield
        finally:
            _DEADLINE.reset(token)

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
        ``safe`` (default: GET only) allows retries after the request may have reached QRS. QrsTimeout when
        the deadline passes first."""
        repeatable = method == "GET" if safe is None else safe
        attempts = 1 + self.settings.retries
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.settings.timeout_seconds
        enclosing = _DEADLINE.get()
        if enclosing is not None:
            ends = min(ends, enclosing)
        for attempt in range(attempts):
            remaining = ends - loop.time()
            if remaining <= 0:
                raise self._timeout(method, path)
            key = xrfkey()
            parts = [f"{name}={quote(value, safe='')}" for name, value in (query or {}).items()]
            parts.append(f"xrfkey={key}")
            url = self.base + path + "?" + "&".join(parts)
            headers = {"X-Qlik-Xrfkey": key, "Content-Type": "application/json"}
            headers.update(self.settings.headers)
            body = orjson.dumps(json_body if json_body is not None else {}) if method != "GET" else None
            answer: QrsResponse | None = None
            cause: Exception | None = None
            self.calls += 1
            try:
                async with self._client().request(
                    method,
                    URL(url, encoded=True),
                    headers=headers,
                    data=body,
                    timeout=aiohttp.ClientTimeout(total=remaining),
                ) as response:
                    answer = QrsResponse(response.status, await response.read())
                self.last_answer = time.time()
                self.last_error = f"QRS answered {answer.status}" if answer.status >= 500 else None
                if answer.status not in _RETRY_STATUSES or not repeatable:
                    return answer
                failure = QrsError(f"QRS answered {answer.status}", answer.status)
            except aiohttp.ClientConnectorError as exc:
                # The connection was never opened, so nothing reached QRS: always safe to try again.
                failure = QrsError(
                    f"cannot connect to Qlik Sense QRS at {self.settings.host}:{self.settings.port}: {exc}"
                )
                cause = exc
            except TimeoutError as exc:
                # The attempt had all the time left: nothing to retry in.
                timeout = self._timeout(method, path)
                self.last_error = str(timeout)
                raise timeout from exc
            except (aiohttp.ClientError, OSError) as exc:
                failure = QrsError(f"Qlik Sense QRS {method} {path} failed: {exc}")
                cause = exc
                if not repeatable:
                    self.last_error = str(failure)
                    raise failure from exc
            if answer is None:
                self.last_error = str(failure)
            delay = 0.1 * 2**attempt
            if attempt + 1 >= attempts or loop.time() + delay >= ends:
                if answer is not None:
                    return answer
                raise failure from cause
            log.warning("%s; trying again in %.1f s", failure, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _timeout(self, method: str, path: str) -> QrsTimeout:
        limit = self.settings.timeout_seconds
        return QrsTimeout(
            f"Qlik Sense QRS did not answer {method} {path} within the {limit:g} s allowed"
            " (Butler.configQRS.timeoutSeconds, retries included)"
        )

    async def get_json(self, path: str, query: dict[str, str] | None = None) -> Any:
        response = await self.request("GET", path, query=query)
        if response.status != 200:
            raise QrsError(
                f"Qlik Sense QRS answered GET {path} with {response.status}: {response.text[:300]}",
                response.status,
                response.text,
            )
        return response.json()
