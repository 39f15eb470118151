"""The key-value store: namespaces of string values with an optional time to live.

Load scripts use it to pass parameters between the apps of a reload chain and to keep state between
reloads. One interface, three backends: an SQLite file (the default: pairs survive restarts and
upgrades), memory (upstream Butler's behaviour), and Redis (several Butler instances share one store).
The REST API and the task-start service both use it; it knows nothing of HTTP.

Semantics (upstream's, with expiry made exact): namespaces are kept in creation order and exist from
their first write until deleted; keys keep their first-insertion order when overwritten; a TTL is in
milliseconds, counted from the write, and every write replaces the previous TTL (no TTL: never
expires). An expired key is gone at once, whether or not anybody reads it.

A pair is refused before it is stored when it could not be read back through the REST API, which
carries namespaces and keys in URLs, or when its TTL is not one (see ``check_pair``).
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from butler.config.settings import KeyValueSettings
from butler.errors import BadRequest, ButlerError, LimitReached, Unavailable


class KeyValueError(ButlerError):
    """A request the store cannot honour; ``str()`` is the message for the caller."""


class NamespaceNotFound(KeyValueError, BadRequest):
    """A bad request rather than NotFound: upstream answers it with 400, and scripts expect that."""

    def __init__(self, namespace: str) -> None:
        super().__init__(f"Namespace not found: {namespace}")


class NamespaceFull(KeyValueError, LimitReached):
    def __init__(self, namespace: str, limit: int) -> None:
        super().__init__(
            f"Namespace {namespace} already holds the maximum of {limit} keys "
            "(Butler.keyValueStore.maxKeysPerNamespace): delete keys or raise the limit"
        )


class StoreUnavailable(KeyValueError, Unavailable):
    """The backend cannot be read or written (file, Redis)."""


#: A namespace is a path segment of every URL that reads it, and the router takes at most 100 characters
#: in one (as upstream does); a longer namespace could be stored but never read, listed or deleted.
MAX_NAMESPACE_LENGTH = 100
#: A key is a path segment of ``DELETE /v4/keyvalues/{namespace}/{key}``, so the same limit holds: a longer
#: key could be read through the query string but never deleted on its own.
MAX_KEY_LENGTH = 100
#: Ten years: beyond any schedule of a reload chain, and exact in every backend (Redis ``PX``, SQLite).
MAX_TTL_MS = 315_360_000_000


class InvalidPair(KeyValueError, BadRequest):
    """A pair refused before it is stored. ``field`` is what is wrong, ``rule`` what it must be."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(rule, at=field)
        self.field = field
        self.rule = rule


def check_pair(namespace: str, key: str, ttl: float) -> int:
    """The TTL in whole milliseconds (a fraction is dropped, as upstream drops it) of a pair that can be
    stored and read back; raises InvalidPair otherwise."""
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise InvalidPair(
            "namespace", f"must NOT have more than {MAX_NAMESPACE_LENGTH} characters (it is part of URLs)"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidPair("key", f"must NOT have more than {MAX_KEY_LENGTH} characters (it is part of URLs)")
    # Written so that NaN fails it too. A TTL below 1 ms would become 0, which means "never expires".
    if not (ttl == 0 or 1 <= ttl <= MAX_TTL_MS):
        raise InvalidPair(
            "ttl", f"must be 0 (never expires) or from 1 to {MAX_TTL_MS} milliseconds (10 years), got {ttl}"
        )
    return int(ttl)


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
