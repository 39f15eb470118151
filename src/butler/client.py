"""Calls to a running Butler's REST API, for the ``butler task`` and ``butler app`` commands.

Knows Butler's endpoints and answers, nothing of the command line: a refused request is ``Refused`` (its
status and Butler's message), a Butler that cannot be reached or fails is ``Unreachable``.
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """A call to Butler that gave no usable answer."""


class Refused(ClientError):
    """Butler answered the request with a 4xx: the request is wrong (unknown id, no access, bad input)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Unreachable(ClientError):
    """Butler cannot be reached, or it (or Qlik Sense behind it) failed: a 5xx or no answer."""


class ButlerClient:
    """One connection pool to a Butler; use ``async with``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ButlerClient:
        self._http = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.close()

    async def start_tasks(self, items: list[dict[str, Any]], wait_seconds: int | None = None) -> Any:
        """``PUT /v4/reloadtask/-/start`` with ``items`` as the body; with ``wait_seconds``, the starts are
        synchronous and the answer's ``executions`` gives each run's ``executionId``."""
        query = {} if wait_seconds is None else {"wait": "true", "timeout": str(wait_seconds)}
        return await self._call("PUT", "/v4/reloadtask/-/start", query, items)

    async def task_status(self, task_id: str, execution_id: str | None = None) -> Any:
        """A task's last execution, or with ``execution_id`` that run of it."""
        query = {} if execution_id is None else {"executionId": execution_id}
        return await self._call("GET", f"/v4/reloadtask/{_segment(task_id)}/status", query)

    async def reload_app(self, app_id: str, partial: bool, wait: bool) -> Any:
        """``PUT /v4/app/{appId}/reload``; with ``wait``, answered when the reload is over, however long
        it takes (the caller sets a limit if it wants one)."""
        query = {"wait": "true"} if wait else {}
        body = {"partialReload": True} if partial else {}
        limit = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.total) if wait else None
        return await self._call("PUT", f"/v4/app/{_segment(app_id)}/reload", query, body, limit)

    async def _call(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any = None,
        limit: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        assert self._http is not None, "ButlerClient is used with `async with`"
        url = self.url + path
        try:
            async with self._http.request(
                method, url, params=query, json=body, timeout=limit or self._timeout
            ) as response:
                text = await response.text()
                status = response.status
        except aiohttp.InvalidURL as exc:
            raise Unreachable(f"not a Butler URL: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach Butler at {self.url}: {_reason(exc)}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            answer = None
        if status >= 400:
            message = answer.get("message") if isinstance(answer, dict) else None
            text = str(message or text.strip() or f"HTTP {status}")
            raise (
                Refused(status, text) if status < 500 else Unreachable(f"Butler answered {status}: {text}")
            )
        if answer is None:
            raise Unreachable(f"Butler's answer to {method} {path} is not JSON: {text[:200]!r}")
        return answer


def _segment(text: str) -> str:
    """``text`` as one segment of a URL path, whatever it holds."""
    return quote(text, safe="")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
