"""A key-value store that counts the operations made on it, for ``GET /metrics``.

It wraps whichever backend is open, so the counts mean the same for each; Butler puts it in place only
while metrics are on.
"""

from __future__ import annotations

from butler.kvstore import KeyValueStore

#: The operations counted, the store's methods.
OPERATIONS = ("namespaces", "get", "set", "delete", "drop", "keys")


class CountedStore:
    def __init__(self, store: KeyValueStore) -> None:
        self.store = store
        #: Calls by operation, whether they succeeded or not.
        self.operations = dict.fromkeys(OPERATIONS, 0)

    async def namespaces(self) -> list[str]:
        self.operations["namespaces"] += 1
        return await self.store.namespaces()

    async def get(self, namespace: str, key: str) -> str | None:
        self.operations["get"] += 1
        return await self.store.get(namespace, key)

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        self.operations["set"] += 1
        await self.store.set(namespace, key, value, ttl_ms)

    async def delete(self, namespace: str, key: str) -> bool:
        self.operations["delete"] += 1
        return await self.store.delete(namespace, key)

    async def drop(self, namespace: str) -> None:
        self.operations["drop"] += 1
        await self.store.drop(namespace)

    async def keys(self, namespace: str) -> list[str]:
        self.operations["keys"] += 1
        return await self.store.keys(namespace)

    async def close(self) -> None:
        await self.store.close()
