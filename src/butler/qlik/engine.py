"""The Engine (QIX) client: JSON-RPC 2.0 over a WebSocket to ``wss://host:4747``.

One socket per operation, always closed. Requests are pipelined: ``call`` may be awaited concurrently and
each answer is matched to its request by id; notifications (``OnConnected`` and others) are skipped.
Qlik's error objects become EngineError with Qlik's code and message.

``timeoutSeconds`` is the deadline of the session's operation: connecting, the greeting and every call
share it, so an operation of many calls (an app dump) ends within ``timeoutSeconds`` as one call does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from butler.config.settings import CertificateSettings, EngineSettings
from butler.errors import NotFound, UpstreamError, UpstreamTimeout
from butler.qlik.tls import client_tls

APP_NOT_FOUND = 1003


class EngineError(UpstreamError):
    """The Engine answered a request with an error."""

    def __init__(self, code: int, message: str, parameter: str = "") -> None:
        super().__init__(
            f"Qlik Sense Engine error {code}: {message}" + (f" ({parameter})" if parameter else "")
        )
        self.code = code
        self.qlik_message = message
        self.parameter = parameter


class AppNotFound(EngineError, NotFound):
    """The Engine does not know the app (Qlik's error 1003)."""

    def __str__(self) -> str:
        return f"App not found: {self.parameter} (Qlik Sense Engine: {self.qlik_message})"


class AppClosed(AppNotFound):
    """The Engine closed the app while it was in use: it was deleted (or replaced) meanwhile."""

    def __str__(self) -> str:
        return (
            "App closed by the Qlik Sense Engine while in use; it was deleted or replaced meanwhile"
            f" (Qlik Sense Engine error {self.code}: {self.qlik_message})"
        )


class EngineUnavailable(UpstreamError):
    """The Engine cannot be reached, or the socket closed before an answer came."""


class EngineTimeout(EngineUnavailable, UpstreamTimeout):
    """The Engine did not answer in time."""


def engine_tls(settings: EngineSettings, certificates: CertificateSettings) -> ssl.SSLContext | None:
    """The TLS context for Engine sockets (None for plain ``ws://``); made once and shared by sessions, as
    loading the certificates costs more than a request."""
    return client_tls(certificates, settings.reject_unauthorized) if settings.use_ssl else None


class EngineSession:
    def __init__(self, settings: EngineSettings, tls: ssl.SSLContext | None, path: str = "") -> None:
        self.settings = settings
        scheme = "wss" if settings.use_ssl else "ws"
        self.url = f"{scheme}://{settings.host}:{settings.port}{path}"
        self._ssl: ssl.SSLContext | bool = tls if tls is not None else False
        self._http: aiohttp.ClientSession | None = None
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        # Handles the Engine said it closed (an answer's "close" list): calls on them fail as AppClosed.
        self._closed: set[int] = set()
        self._connected: asyncio.Future[None] | None = None
        self._deadline = 0.0

    def renew_deadline(self) -> None:
        """Give the calls from now on ``timeoutSeconds`` from now."""
        self._deadline = asyncio.get_running_loop().time() + self.settings.timeout_seconds

    def _remaining(self, doing: str) -> float:
        remaining = self._deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise self._timeout(doing)
        return remaining

    def _timeout(self, doing: str) -> EngineTimeout:
        return EngineTimeout(
            f"the Qlik Sense Engine at {self.url} did not {doing} within the"
            f" {self.settings.timeout_seconds:g} s allowed (Butler.configEngine.timeoutSeconds)"
        )

    async def __aenter__(self) -> EngineSession:
        self.renew_deadline()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        try:
            async with asyncio.timeout_at(self._deadline):
                self._socket = await self._http.ws_connect(
                    self.url,
                    ssl=self._ssl,
                    headers=dict(self.settings.headers),
                    max_msg_size=0,
                    autoping=True,
                )
        except TimeoutError:
            await self._http.close()
            raise self._timeout("accept the connection") from None
        except (aiohttp.ClientError, OSError) as exc:
            await self._http.close()
            raise EngineUnavailable(f"cannot connect to the Qlik Sense Engine at {self.url}: {exc}") from exc
        self._connected = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), self._remaining("greet the session"))
        except TimeoutError:
            await self.__aexit__(None, None, None)
            raise self._timeout("greet the session") from None
        except EngineUnavailable:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._socket is not None:
            # A polite close waits for the Engine's close frame, which an Engine that stopped answering
            # never sends: it gets what is left of the deadline, then the connection is cut (by aiohttp,
            # or by closing the HTTP session below).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._deadline):
                    await self._socket.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()

    async def _read(self) -> None:
        assert self._socket is not None
        problem: Exception = EngineUnavailable(f"the Qlik Sense Engine at {self.url} closed the session")
        try:
            async for message in self._socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = orjson.loads(message.data)
                if not isinstance(data, dict):
                    continue
                if data.get("method") == "OnConnected" and self._connected and not self._connected.done():
                    self._connected.set_result(None)
                    continue
                if isinstance(data.get("close"), list):
                    self._closed.update(data["close"])
                waiter = self._pending.pop(data.get("id", -1), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
        except (aiohttp.ClientError, ValueError) as exc:
            problem = EngineUnavailable(f"the Qlik Sense Engine session at {self.url} failed: {exc}")
        except asyncio.CancelledError:
            # The session is being closed; calls still waiting fail now rather than at their timeout.
            if self._connected is not None:
                self._connected.cancel()
            raise
        finally:
            waiters: list[asyncio.Future[Any]] = [*self._pending.values()]
            if self._connected is not None:
                waiters.append(self._connected)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(problem)
            self._pending.clear()

    async def call(self, handle: int, method: str, *params: Any) -> dict[str, Any]:
        """Send one request and return its ``result``; EngineError for Qlik's error answer, EngineTimeout
        when the session's deadline passes first."""
        assert self._socket is not None
        remaining = self._remaining(f"answer {method}")
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        payload = {
            "jsonrpc": "2.0",
            "id": request_id,
            "handle": handle,
            "method": method,
            "params": list(params),
        }
        try:
            await self._socket.send_str(orjson.dumps(payload).decode())
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._pending.pop(request_id, None)
            raise EngineUnavailable(f"cannot send to the Qlik Sense Engine: {exc}") from exc
        try:
            answer = await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            self._pending.pop(request_id, None)
            raise self._timeout(f"answer {method}") from None
        if "error" in answer:
            error = answer["error"]
            code = int(error.get("code", 0))
            kind = (
                AppClosed if handle in self._closed else AppNotFound if code == APP_NOT_FOUND else EngineError
            )
            raise kind(code, str(error.get("message", "")), str(error.get("parameter", "")))
        result: dict[str, Any] = answer.get("result", {})
        return result
