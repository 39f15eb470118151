"""Sends the messages of the HTTP channels (Slack, Teams, webhooks, Signl4, New Relic).

A payload says everything about its request: ``method``, ``url``, ``headers``, a ``json`` body or a
``query``, ``tls`` (``{"ca": path or None, "verify": bool}`` for a webhook with its own CA or without
verification) and a ``fallback`` payload, sent instead when the receiver refuses the message as
malformed (400): the basic message when a formatted one was refused. Connections are kept
and reused per channel. The answer decides what happens next: 2xx delivered; 429 and 5xx, connection
errors and timeouts may pass (retried, ``Retry-After`` honoured); any other status is final.
"""

from __future__ import annotations

import ssl
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson

from butler.alerts.model import DeliveryError
from butler.http.answers import beginning

#: Answers kept in an error message at most (characters).
_ANSWER_SHOWN = 300
#: Longest wait a Retry-After may ask for that is honoured as asked (seconds); beyond it the backoff decides.
_LONGEST_RETRY_AFTER = 3600.0


class HttpSender:
    """One channel's HTTP client: a kept-alive connection pool, requests bounded by ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[tuple[str | None, bool], ssl.SSLContext] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "Butler"},
            )
        return self._session

    async def send(self, payload: dict[str, Any], ident: str) -> str:
        try:
            return await self._request(payload, ident)
        except DeliveryError as refused:
            fallback = payload.get("fallback")
            if refused.retryable or not fallback or not str(refused.message).startswith("HTTP 400"):
                raise
            answer = await self._request(fallback, ident)
            return f"{answer} (basic message: the formatted one was refused: {refused.message})"

    async def _request(self, payload: dict[str, Any], ident: str) -> str:
        method = str(payload.get("method", "POST")).upper()
        url = str(payload["url"])
        # The same id on every attempt of a message: a receiver can tell a repeat from a new alert.
        headers = {"Idempotency-Key": ident, **(payload.get("headers") or {})}
        body = payload.get("json")
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        try:
            async with self._client().request(
                method,
                url,
                params=payload.get("query") or None,
                data=data,
                headers=headers,
                ssl=self._tls(payload.get("tls")),
            ) as response:
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
                text = (await beginning(response)).decode("utf-8", errors="replace")
                if 200 <= status < 300:
                    return f"HTTP {status}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g} s", retryable=True) from None
        shown = " ".join(text.split())[:_ANSWER_SHOWN]
        message = f"HTTP {status}: {shown}" if shown else f"HTTP {status}"
        if status == 429 or status >= 500:
            raise DeliveryError(message, retryable=True, retry_after=retry_after)
        raise DeliveryError(message, retryable=False)

    def _tls(self, options: Any) -> ssl.SSLContext | bool:
        if not options:
            return True
        ca = options.get("ca")
        verify = bool(options.get("verify", True))
        key = (ca, verify)
        context = self._contexts.get(key)
        if context is None:
            context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[key] = context
        return context

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` asks for (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return min(seconds, _LONGEST_RETRY_AFTER)


__all__ = ["HttpSender"]
