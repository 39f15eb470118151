"""Events and metrics from load scripts to New Relic: what ``POST /v4/newrelic/event`` and
``POST /v4/newrelic/metric`` send, to which accounts.

The accounts are the names in ``restServerEndpointsConfig.newRelic.postNewRelicEvent.destinationAccount``
(``postNewRelicMetric``), looked up in ``thirdPartyToolsCredentials.newRelic``; every one is posted to, and,
as upstream answers, the first account's answer is the caller's (the others' failures are logged). The
static attributes of the config come first, the request's after them, so the request's win on a clash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from butler.config.alerts import NewRelicAccount, NewRelicPost, NewRelicSettings
from butler.http.answers import beginning

log = logging.getLogger("butler.newrelic")

#: Seconds one post to New Relic may take (upstream's).
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Posted:
    """New Relic's answer to the first account: its status and status text, or ``status`` None when it
    could not be reached (``reason`` then says why)."""

    status: int | None
    reason: str


class NewRelicApi:
    """Posts events and metrics over one kept-alive connection pool."""

    def __init__(self, settings: NewRelicSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_event(
        self, event_type: str, timestamp: float | None, attributes: Sequence[Mapping[str, Any]]
    ) -> Posted | None:
        """One event, to each account; None when no configured account is known."""
        config = self.settings.rest_event
        event = {
            "timestamp": _timestamp(timestamp),
            "eventType": event_type,
            **dict(config.static_attributes),
            **_attributes(attributes),
        }
        base = config.url if config.url.endswith("/") else f"{config.url}/"
        return await self._post(
            config, event, lambda account: f"{base}v1/accounts/{account.account_id}/events", "event"
        )

    async def post_metric(
        self,
        name: str,
        kind: str,
        value: float,
        timestamp: float | None,
        attributes: Sequence[Mapping[str, Any]],
    ) -> Posted | None:
        """One gauge metric, to each account; None when no configured account is known."""
        config = self.settings.rest_metric
        common = {
            "timestamp": _timestamp(timestamp),
            "attributes": {**dict(config.static_attributes), **_attributes(attributes)},
        }
        payload = [{"common": common, "metrics": [{"name": name, "type": kind, "value": value}]}]
        return await self._post(config, payload, lambda account: config.url, "metric")

    async def _post(
        self, config: NewRelicPost, body: Any, url: Callable[[NewRelicAccount], str], what: str
    ) -> Posted | None:
        known = {account.name: account for account in self.settings.accounts}
        accounts: list[NewRelicAccount] = []
        for name in dict.fromkeys(config.accounts):
            if name in known:
                accounts.append(known[name])
            else:
                log.warning("New Relic account %r is not in thirdPartyToolsCredentials.newRelic", name)
        if not accounts:
            log.warning("no New Relic account to post the %s to: the request is answered with nothing", what)
            return None
        data = orjson.dumps(body)
        answers = await asyncio.gather(*(self._send(url(a), data, config, a) for a in accounts))
        for account, answer in zip(accounts, answers, strict=True):
            if answer.status is None or not 200 <= answer.status < 300:
                log.warning("the %s was not taken by New Relic account %s: %s", what, account.name, answer)
        return answers[0]

    async def _send(self, url: str, data: bytes, config: NewRelicPost, account: NewRelicAccount) -> Posted:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            **dict(config.headers),
            "Api-Key": account.insert_api_key,
        }
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS))
        try:
            async with self._session.post(url, data=data, headers=headers) as response:
                await beginning(response)
                return Posted(response.status, response.reason or "")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Posted(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _timestamp(given: float | None) -> float:
    # Upstream takes the caller's timestamp only when it is positive.
    return given if given is not None and given > 0 else int(time.time() * 1000)


def _attributes(given: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {str(item["name"]): item["value"] for item in given}


__all__ = ["NewRelicApi", "Posted"]
