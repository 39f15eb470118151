"""The in-memory backend, also the read cache of the SQLite backend.

Expiry is exact: a heap of expiry times drives one timer, and reads check the time as well, so a key
is never served after its TTL even between two timer runs.
"""

from __future__ import annotations

import asyncio
import heapq
import time

from butler.kvstore import NamespaceFull, NamespaceNotFound


class MemoryStore:
    """Pairs in memory, lost on restart as upstream's are; expiry is exact (one timer for the next pair
    to expire)."""

    def __init__(self, max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        # namespace -> key -> (value, expires at on the time.time() clock or 0 for never)
        self._data: dict[str, dict[str, tuple[str, float]]] = {}
        self._expiry: list[tuple[float, str, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- reading ------------------------------------------------------------------------------------------

    def _namespace(self, namespace: str) -> dict[str, tuple[str, float]]:
        pairs = self._data.get(namespace)
        if pairs is None:
            raise NamespaceNotFound(namespace)
        return pairs

    async def namespaces(self) -> list[str]:
        return list(self._data)

    async def get(self, namespace: str, key: str) -> str | None:
        entry = self._namespace(namespace).get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires and expires <= time.time():
            return None
        return value

    async def keys(self, namespace: str) -> list[str]:
        now = time.time()
        return [
            key for key, (_, expires) in self._namespace(namespace).items() if not expires or expires > now
        ]

    # -- writing ------------------------------------------------------------------------------------------

    def check_room(self, namespace: str, key: str) -> None:
        """Raise NamespaceFull if storing ``key`` would go over the limit."""
        pairs = self._data.get(namespace)
        if pairs is None or key in pairs or len(pairs) < self.max_keys:
            return
        self.purge_expired()
        if len(pairs) >= self.max_keys:
            raise NamespaceFull(namespace, self.max_keys)

    def apply_set(self, namespace: str, key: str, value: str | None, expires: float) -> None:
        pairs = self._data.setdefault(namespace, {})
        if value is None:
            return
        pairs[key] = (value, expires)
        if expires:
            heapq.heappush(self._expiry, (expires, namespace, key))
            if self._timer is None or expires < self._timer_at:
                self._schedule()

    def apply_delete(self, namespace: str, key: str) -> bool:
        pairs = self._namespace(namespace)
        entry = pairs.pop(key, None)
        return entry is not None and not (entry[1] and entry[1] <= time.time())

    def apply_drop(self, namespace: str) -> None:
        self._namespace(namespace)
        del self._data[namespace]

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        if value is not None:
            self.check_room(namespace, key)
        self.apply_set(namespace, key, value, expires_at(ttl_ms))

    async def delete(self, namespace: str, key: str) -> bool:
        return self.apply_delete(namespace, key)

    async def drop(self, namespace: str) -> None:
        self.apply_drop(namespace)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- expiry -------------------------------------------------------------------------------------------

    def purge_expired(self) -> list[tuple[str, str]]:
        """Drop every expired pair; return the (namespace, key) pairs dropped."""
        now = time.time()
        dropped = []
        while self._expiry and self._expiry[0][0] <= now:
            expires, namespace, key = heapq.heappop(self._expiry)
            entry = self._data.get(namespace, {}).get(key)
            # The heap may hold stale entries for pairs rewritten since; only the current expiry counts.
            if entry is not None and entry[1] == expires:
                del self._data[namespace][key]
                dropped.append((namespace, key))
        return dropped

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._expiry:
            self._timer_at = self._expiry[0][0]
            self._timer = loop.call_later(max(0.0, self._timer_at - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expired(self.purge_expired())
        self._schedule()

    def expired(self, pairs: list[tuple[str, str]]) -> None:
        """Called with the pairs the timer dropped; the SQLite backend deletes them from the file."""


def expires_at(ttl_ms: int) -> float:
    return time.time() + ttl_ms / 1000 if ttl_ms > 0 else 0.0
