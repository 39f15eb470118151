"""Posting messages to Slack through an incoming webhook.

The text is sent as a ``mrkdwn`` section: Slack's markdown (``*bold*``, ``_italic_``, `` `code` ``) and
``:emoji:`` work, while ``&``, ``<`` and ``>`` are escaped as Slack requires, so text from a load script
cannot turn into mentions (``<!channel>``) or links. A 429 or 5xx from Slack is retried with backoff
(honouring ``Retry-After``) within a bounded time; any other failure is reported with Slack's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp

from butler.errors import UpstreamError
from butler.http.answers import beginning

log = logging.getLogger("butler.slack")

RETRY_BUDGET_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5.0


class SlackError(UpstreamError):
    """Slack did not accept the message; ``status`` is None when it could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def message(channel: str, from_user: str, text: str, emoji: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "username": from_user,
        "channel": channel,
        "text": escape(text),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": escape(text)}}],
    }
    if emoji:
        payload["icon_emoji"] = emoji
    return payload


class SlackWebhook:
    """Posts to one Slack incoming webhook over a kept-alive connection; Slack's refusals are errors the
    caller sees."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
            )
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        delay = 0.25
        while True:
            try:
                async with self._session.post(self.url, json=payload) as response:
                    body = (await beginning(response)).decode("utf-8", errors="replace")[:500]
                    if 200 <= response.status < 300:
                        return
                    retryable = response.status == 429 or response.status >= 500
                    failure = SlackError(f"Slack answered {response.status}: {body}", response.status)
                    wait = _retry_after(response.headers.get("Retry-After"), delay)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                retryable = True
                failure = SlackError(f"Slack cannot be reached: {str(exc) or type(exc).__name__}")
                wait = delay
            if not retryable or time.monotonic() + wait > deadline:
                raise failure
            log.warning("%s; trying again in %.1f s", failure, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, 4.0)


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(0.0, float(header)) if header else default
    except ValueError:
        return default
