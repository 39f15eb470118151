"""Several Butlers on one Redis, each sent every datagram by Sense's appenders: who handles a task event,
and the user sessions they all answer from.

**Task events.** Before an event is enriched, the Butler that has it claims it in Redis: a key named by
what identifies the event on every Butler (its execution id and outcome; without an execution id, the
datagram's fields), set only if absent, with the expiry of a lease (three quarters of ``takeover_seconds``),
which the claimant extends every quarter while it holds the event. The Butler that set the key handles the
event and, once every consumer has taken it (the alert service, MQTT, InfluxDB), marks the key ``done`` for
the deduplication time. The others keep the event aside: when the claim has expired without ``done`` (the
Butler that claimed it died or stopped before its consumers took the event), the first of them to claim it
again handles it, within ``takeover_seconds`` of the claimant's death as a monitor's lease is taken over,
however long enrichment may take. When Redis cannot be reached, every Butler handles its events itself: an
event may then be handled more than once, never lost; ``/health`` says so (``shared: false``).

**Sessions.** Every session change a Butler sees is written to one Redis hash; each Butler reads the hash
back whenever its version changed (at most every ``refresh_seconds``) and answers the REST API and the
metrics from that copy, so that every Butler answers the same users. With Redis away each goes on with
its own sessions; when it is back, each writes what it has before it reads again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from butler.errors import Unavailable
from butler.leases import lease_times
from butler.redis_edge import EXTEND_IF_HELD, RedisEdge
from butler.stopping import every

log = logging.getLogger("butler.sharing")

T = TypeVar("T")

#: This process among the Butlers sharing a Redis: the host, the process and a random part (a restarted
#: Butler with the same pid is another instance).
INSTANCE_ID = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

#: How long one Redis call may take before Redis counts as away.
ANSWER_SECONDS = 2.0

CLAIMED = "claimed"
DONE = "done"
#: Claims extended in one Redis call at most.
RENEW_BATCH = 500


class SharingUnavailable(Unavailable):
    """Redis cannot be reached: each Butler handles its own events."""


def events_prefix(key_value_prefix: str) -> str:
    """The events' key prefix beside the key-value store's (``butler:kv:`` → ``butler:events:``)."""
    return key_value_prefix.removesuffix("kv:") + "events:"


class EventSharing:
    """The claims of task events and the shared sessions, in the Redis at ``url`` below ``prefix``."""

    def __init__(self, url: str, prefix: str, takeover_seconds: float, done_seconds: float) -> None:
        self.url = url
        self.prefix = prefix
        self.instance = INSTANCE_ID
        # As a monitor's lease: a claimant that died loses its claims within the takeover time.
        claim_seconds, self.renew_seconds = lease_times(takeover_seconds)
        self.claim_ms = max(1, int(claim_seconds * 1000))
        self.done_ms = max(1, int(done_seconds * 1000))
        #: The keys of the claims this Butler holds, extended until the event is done or given up.
        self._held: set[str] = set()
        self._renewing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._redis = RedisEdge(url, lambda exc: SharingUnavailable(str(exc)))
        self._client = self._redis.client
        #: False from a failed Redis call until the next one that works.
        self.available = True
        self.last_error: str | None = None
        self.down_since: float | None = None
        self.claimed = 0
        self.claimed_elsewhere = 0
        self.taken_over = 0
        self.handled_locally = 0
        #: Called when Redis works again after a failure (the sessions write back what they have).
        self.on_back: list[Callable[[], None]] = []

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        """``command()``'s answer; after a failure the pooled connections are dropped and it is tried once
        more, since after Redis restarted each of them fails once ("connection closed by server") and
        an event claimed locally then would be handled twice. Raises ``SharingUnavailable``."""
        try:
            return await self._answer(command)
        except SharingUnavailable:
            await self._client.connection_pool.disconnect()
        try:
            return await self._answer(command)
        except SharingUnavailable as exc:
            self._failed(exc)
            raise

    async def _answer(self, command: Callable[[], Awaitable[T]]) -> T:
        # A Redis that takes no answer back (a network that drops packets) must not hold the events up.
        try:
            async with asyncio.timeout(ANSWER_SECONDS):
                return await self._redis.call(command())
        except TimeoutError as exc:
            raise SharingUnavailable(f"no answer within {ANSWER_SECONDS:g} s") from exc

    def _key(self, key: str) -> str:
        return f"{self.prefix}claim:{quote(key, safe='')}"

    def _failed(self, exc: Exception) -> None:
        if self.available:
            log.warning(
                "Redis cannot be reached (%s): events are handled by this Butler alone, and may be handled "
                "by another too, until it is back",
                exc,
            )
            self.down_since = time.time()
        self.available = False
        self.last_error = str(exc)

    def _worked(self) -> None:
        if not self.available:
            log.warning("Redis is back: events and sessions are shared again")
            self.available = True
            self.down_since = None
            for callback in self.on_back:
                callback()

    async def claim(self, key: str) -> bool:
        """True when this Butler is to handle the event: it claimed it, or Redis cannot say."""
        try:
            got = await self._call(
                lambda: self._client.set(
                    self._key(key), f"{CLAIMED} {self.instance}", nx=True, px=self.claim_ms
                )
            )
        except SharingUnavailable:
            self.handled_locally += 1
            return True
        self._worked()
        if got:
            self.claimed += 1
            self._held.add(self._key(key))
        else:
            self.claimed_elsewhere += 1
        return bool(got)

    def give_up(self, key: str) -> None:
        """Stop extending the claim of an event this Butler could not handle: another takes it over once the
        claim expires."""
        self._held.discard(self._key(key))

    def start(self) -> None:
        """Extend the claims held, every ``renew_seconds``, until ``close``."""
        if self._renewing is None:
            self._renewing = asyncio.get_running_loop().create_task(self._keep(), name="event claims")

    async def _keep(self) -> None:
        await every(self.renew_seconds, self._stopping, self._extend_held)

    async def _extend_held(self) -> None:
        try:
            await self.extend()
        except SharingUnavailable:
            pass  # the claims may lapse: better an event handled twice than a Butler stuck
        except Exception:  # a fault here must not end the extending for good, nor fail close()
            log.exception("claims of task events not extended")

    async def extend(self) -> None:
        """Extend every claim held; forget those done or lost meanwhile. Raises ``SharingUnavailable``."""
        held = list(self._held)
        value = f"{CLAIMED} {self.instance}"
        for start in range(0, len(held), RENEW_BATCH):
            keys = held[start : start + RENEW_BATCH]
            kept = await self._call(
                lambda keys=keys: self._client.eval(  # type: ignore[misc]
                    EXTEND_IF_HELD, len(keys), *keys, value, str(self.claim_ms)
                )
            )
            self._worked()
            for key, still in zip(keys, kept, strict=True):
                if not still:
                    self._held.discard(key)

    async def claim_many(self, keys: list[str], ttl_ms: int) -> list[bool]:
        """Claims of short-lived events (session events), all in one round trip, held ``ttl_ms``: the
        datagrams of one event reach every Butler within it. All True when Redis cannot say."""

        def claim() -> Awaitable[list[Any]]:
            pipeline = self._client.pipeline(transaction=False)
            for key in keys:
                pipeline.set(self._key(key), self.instance, nx=True, px=ttl_ms)
            return pipeline.execute()

        try:
            got = await self._call(claim)
        except SharingUnavailable:
            return [True] * len(keys)
        self._worked()
        return [bool(g) for g in got]

    async def state(self, key: str) -> tuple[str | None, float]:
        """``claimed``, ``done`` or None (nobody holds it), and the seconds it is held for yet; raises
        ``SharingUnavailable``."""

        def read() -> Awaitable[list[Any]]:
            pipeline = self._client.pipeline(transaction=True)
            pipeline.get(self._key(key))
            pipeline.pttl(self._key(key))
            return pipeline.execute()

        value, left = await self._call(read)
        self._worked()
        if value is None:
            return None, 0.0
        return str(value).split(" ", 1)[0], max(0, int(left)) / 1000

    async def done(self, key: str) -> None:
        """Mark the event handled for the deduplication time; a failure leaves the claim to expire (another
        Butler may then handle the event again)."""
        marked = f"{DONE} {self.instance}"
        self._held.discard(self._key(key))
        try:
            await self._call(lambda: self._client.set(self._key(key), marked, px=self.done_ms))
        except SharingUnavailable:
            return
        self._worked()

    # --- sessions -------------------------------------------------------------------------------------

    @property
    def _sessions(self) -> str:
        return f"{self.prefix}sessions"

    @property
    def _version(self) -> str:
        return f"{self.prefix}sessions:version"

    async def write_sessions(self, put: dict[str, bytes], remove: list[str]) -> None:
        """Write these sessions and remove those; raises ``SharingUnavailable``."""

        def write() -> Awaitable[list[Any]]:
            pipeline = self._client.pipeline(transaction=True)
            if put:
                pipeline.hset(self._sessions, mapping=put)  # type: ignore[arg-type]
            if remove:
                pipeline.hdel(self._sessions, *remove)
            pipeline.incr(self._version)
            return pipeline.execute()

        await self._call(write)
        self._worked()

    async def sessions_version(self) -> str | None:
        value = await self._call(lambda: self._client.get(self._version))
        self._worked()
        return None if value is None else str(value)

    async def read_sessions(self) -> tuple[str | None, dict[str, Any]]:
        """The version and every session: field → ``[directory, user id, since, last seen]``."""

        def read() -> Awaitable[list[Any]]:
            pipeline = self._client.pipeline(transaction=True)
            pipeline.get(self._version)
            pipeline.hgetall(self._sessions)
            return pipeline.execute()

        version, rows = await self._call(read)
        self._worked()
        sessions: dict[str, Any] = {}
        for field, value in rows.items():
            try:
                sessions[field] = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
        return (None if version is None else str(version)), sessions

    def stats(self) -> dict[str, Any]:
        return {
            "redis": self._client.connection_pool.connection_kwargs.get("host", ""),
            "shared": self.available,
            "shares": ["taskEventClaims", "deduplication", "sessionEventClaims", "activeUserSessions"],
            "lastError": None if self.available else self.last_error,
            "downSince": self.down_since,
            "taskEvents": {
                "claimed": self.claimed,
                "claimedElsewhere": self.claimed_elsewhere,
                "takenOver": self.taken_over,
                "handledWithoutRedis": self.handled_locally,
            },
        }

    async def close(self) -> None:
        """Stop extending the claims held (another Butler takes their events over) and close."""
        self._stopping.set()
        if self._renewing is not None:
            await self._renewing
            self._renewing = None
        await self._redis.close()


__all__ = ["INSTANCE_ID", "EventSharing", "SharingUnavailable", "events_prefix"]
