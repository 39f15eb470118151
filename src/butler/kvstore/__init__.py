"""The key-value store: namespaces of string values with an optional time to live.

Load scripts use it to pass parameters between the apps of a reload chain and to keep state between
reloads. One interface, three backends: an SQLite file (the default: pairs survive restarts and
upgrades), memory (upstream Butler's behaviour), and Redis (several Butler instances share one store).
The REST API and the task-start service both use it; it knows nothing of HTTP.

Semantics (upstream's, with expiry made exact): namespaces are kept in creation order and exist from
their first write until deleted; keys keep their first-insertion order when overwritten; a TTL is in
milliseconds, counted from the write, and every write replaces the previous TTL (no TTL: never
expires). An expired key is gone at once, whether or not anybody reads it.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from butler.config.settings import KeyValueSettings


class KeyValueError(Exception):
    """A request the store cannot honour; ``str()`` is the message for the caller."""


class NamespaceNotFound(KeyValueError):
    def __init__(self, namespace: str) -> None:
        super().__init__(f"Namespace not found: {namespace}")


class NamespaceFull(KeyValueError):
    def __init__(self, namespace: str, limit: int) -> None:
        super().__init__(
            f"Namespace {namespace} already holds the maximum of {limit} keys "
            "(Butler.keyValueStore.maxKeysPerNamespace): delete keys or raise the limit"
        )


class StoreUnavailable(KeyValueError):
    """The backend cannot be read or written (file, Redis); the caller gets a 503."""


class KeyValueStore(Protocol):
    """What every backend offers. All methods raise NamespaceNotFound for an unknown namespace, except
    ``namespaces`` and ``set`` (which creates the namespace)."""

    async def namespaces(self) -> list[str]: ...

    async def get(self, namespace: str, key: str) -> str | None:
        """The value, or None when the key is absent or expired."""
        ...

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        """Store ``value`` (None only creates the namespace). Raises NamespaceFull for a new key in a full
        namespace. Returns once the write is durable, for the backends that keep data."""
        ...

    async def delete(self, namespace: str, key: str) -> bool:
        """Remove a key; False if it was not there."""
        ...

    async def drop(self, namespace: str) -> None:
        """Remove a namespace and all its pairs."""
        ...

    async def keys(self, namespace: str) -> list[str]:
        """Live keys in insertion order."""
        ...

    async def close(self) -> None: ...


async def open_store(settings: KeyValueSettings) -> KeyValueStore:
    """The backend the settings name, opened (the SQLite file is read; Redis connects on first use).

    Backends are imported here, when chosen: the Redis client alone adds a tenth of a second to start-up.
    """
    if settings.backend == "memory":
        from butler.kvstore.memory import MemoryStore

        return MemoryStore(settings.max_keys_per_namespace)
    if settings.backend == "redis":
        from butler.kvstore.redis_store import RedisStore

        return RedisStore(settings.redis_url, settings.redis_prefix, settings.max_keys_per_namespace)
    from butler.kvstore.sqlite import SqliteStore

    store = SqliteStore(settings.sqlite_path, settings.max_keys_per_namespace)
    try:
        await store.open()
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the key-value store file {settings.sqlite_path}: {exc}") from exc
    return store
