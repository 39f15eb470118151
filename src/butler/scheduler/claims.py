"""Which Butler fires a schedule's due time, when several run the same schedules.

Every Butler keeps the timers of every schedule; at a due time each asks the shared store to claim that
fire, and only the one that gets it starts the task. A Butler that stops takes nothing with it: the others
claim the next fires. With the key-value store in Redis the claim is a key set only if absent; with SQLite,
a row inserted only if absent in the store's file (Butlers on one host sharing the file). A Butler with a
store of its own claims every fire.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Protocol

from butler.config import Settings
from butler.errors import Unavailable
from butler.redis_edge import RedisEdge
from butler.sqlite_busy import when_free

#: How long a claimed fire is remembered: long after any other Butler could still be asking for it.
CLAIM_SECONDS = 3600


class ClaimsUnavailable(Unavailable):
    """The shared store cannot be asked: the fire is not made, rather than made twice."""


class FireClaims(Protocol):
    async def claim(self, schedule_id: str, due: float) -> bool: ...

    async def close(self) -> None: ...


class LocalClaims:
    """A Butler alone: every fire is its own."""

    async def claim(self, schedule_id: str, due: float) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisClaims:
    """Claims as keys below ``prefix`` in the Redis at ``url``."""

    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.instance = uuid.uuid4().hex
        self._redis = RedisEdge(url, _unreachable)

    async def claim(self, schedule_id: str, due: float) -> bool:
        key = f"{self.prefix}fire:{schedule_id}:{int(due)}"
        return bool(
            await self._redis.call(self._redis.client.set(key, self.instance, nx=True, ex=CLAIM_SECONDS))
        )

    async def close(self) -> None:
        await self._redis.close()


def _unreachable(exc: Exception) -> Exception:
    return ClaimsUnavailable(f"the scheduler cannot reach Redis to claim a fire: {exc}")


class SqliteClaims:
    """Claims as rows of a SQLite file that the Butlers of one host share."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A busy file (another Butler writing) is waited for, not an error.
        connection = sqlite3.connect(self.path, timeout=5, check_same_thread=False, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS fires (schedule TEXT NOT NULL, due INTEGER NOT NULL, "
                "PRIMARY KEY (schedule, due))"
            )
        except BaseException:
            connection.close()
            raise
        return connection

    def _claim(self, schedule_id: str, due: int) -> bool:
        # Claiming is idempotent (a row inserted only if absent): asking again is safe.
        return when_free(lambda: self._insert(schedule_id, due))

    def _insert(self, schedule_id: str, due: int) -> bool:
        if self._connection is None:
            self._connection = self._open()
        connection = self._connection
        connection.execute("DELETE FROM fires WHERE due < ?", (due - CLAIM_SECONDS,))
        cursor = connection.execute(
            "INSERT OR IGNORE INTO fires (schedule, due) VALUES (?, ?)", (schedule_id, due)
        )
        return cursor.rowcount == 1

    async def claim(self, schedule_id: str, due: float) -> bool:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._claim, schedule_id, int(due))
            except (sqlite3.Error, OSError) as exc:
                raise ClaimsUnavailable(f"the scheduler cannot claim a fire in {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.to_thread(connection.close)


def fire_claims(settings: Settings) -> FireClaims:
    """The claims in the store Butler already has: Redis, or a SQLite file beside the key-value store's."""
    key_value = settings.key_value
    if key_value.backend == "redis":
        return RedisClaims(key_value.redis_url, key_value.redis_prefix.removesuffix("kv:") + "scheduler:")
    if key_value.backend == "sqlite":
        return SqliteClaims(key_value.sqlite_path.with_name("butler-scheduler.sqlite"))
    return LocalClaims()


__all__ = ["ClaimsUnavailable", "FireClaims", "LocalClaims", "RedisClaims", "SqliteClaims", "fire_claims"]
