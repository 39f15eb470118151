"""The Redis backend: one store shared by several Butler instances behind a load balancer.

Each pair is a Redis string with Redis's own expiry (``PX``); each namespace has a sorted set of its
keys in first-insertion order, and one sorted set lists the namespaces in creation order. Writes that
must be atomic (the key limit, overwrite-keeps-position) run as Lua scripts. Names are percent-encoded
inside Redis key names, so a namespace or key may contain any character, ``:`` included.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from redis.exceptions import ResponseError

from butler.kvstore import NamespaceFull, NamespaceNotFound, StoreUnavailable
from butler.redis_edge import RedisEdge

# KEYS: namespaces zset, sequence counter, namespace index zset, value key
# ARGV: namespace, key, value ("" with ARGV[5]=="0" means: only create the namespace), ttl ms, has value,
#       max keys, value-key prefix
_SET = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1])
end
if ARGV[5] == '0' then return 1 end
if redis.call('ZSCORE', KEYS[3], ARGV[2]) == false then
  local limit = tonumber(ARGV[6])
  if redis.call('ZCARD', KEYS[3]) >= limit then
    for _, member in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
      if redis.call('EXISTS', ARGV[7] .. member) == 0 then redis.call('ZREM', KEYS[3], member) end
    end
    if redis.call('ZCARD', KEYS[3]) >= limit then return 0 end
  end
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[2]), ARGV[2])
end
if tonumber(ARGV[4]) > 0 then
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[4], ARGV[3])
end
return 1
"""

# KEYS: namespaces zset, namespace index zset; ARGV: namespace, value-key prefix
_DROP = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do redis.call('DEL', ARGV[2] .. member) end
redis.call('DEL', KEYS[2])
return 1
"""


def _encode(name: str) -> str:
    return quote(name, safe="")


def _unreachable(exc: Exception) -> Exception:
    return StoreUnavailable(f"The key-value store's Redis cannot be reached: {exc}")


class RedisStore:
    """Pairs kept in Redis under ``keyPrefix``, so that several Butlers share them; the key limit and
    the key order are kept by scripts that run atomically in Redis, and Redis expires the pairs."""

    def __init__(self, url: str, prefix: str = "butler:kv:", max_keys: int = 1000) -> None:
        self.max_keys = max_keys
        self.prefix = prefix
        self._redis = RedisEdge(url, _unreachable)
        self._client = self._redis.client
        self._call = self._redis.call
        self._namespaces = f"{prefix}namespaces"
        self._sequence = f"{prefix}seq"
        self._set = self._client.register_script(_SET)
        self._drop = self._client.register_script(_DROP)

    def _index(self, namespace: str) -> str:
        return f"{self.prefix}idx:{_encode(namespace)}"

    def _values(self, namespace: str) -> str:
        """The prefix of the value keys of a namespace; a value key is this plus the encoded key."""
        return f"{self.prefix}val:{_encode(namespace)}:"

    async def _require(self, namespace: str) -> None:
        if await self._call(self._client.zscore(self._namespaces, namespace)) is None:
            raise NamespaceNotFound(namespace)

    async def namespaces(self) -> list[str]:
        # Strings, as the client decodes every answer (redis-py types the answer wider).
        names: list[Any] = await self._call(self._client.zrange(self._namespaces, 0, -1))
        return names

    async def get(self, namespace: str, key: str) -> str | None:
        pipeline = self._client.pipeline(transaction=False)
        pipeline.zscore(self._namespaces, namespace)
        pipeline.get(self._values(namespace) + _encode(key))
        exists, value = await self._call(pipeline.execute())
        if exists is None:
            raise NamespaceNotFound(namespace)
        return value  # type: ignore[no-any-return]

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        values = self._values(namespace)
        try:
            stored = await self._call(
                self._set(
                    keys=[self._namespaces, self._sequence, self._index(namespace), values + _encode(key)],
                    args=[
                        namespace,
                        _encode(key),
                        value or "",
                        max(ttl_ms, 0),
                        "0" if value is None else "1",
                        self.max_keys,
                        values,
                    ],
                )
            )
        except ResponseError as exc:
            raise StoreUnavailable(f"Redis refused the write: {exc}") from exc
        if not stored:
            raise NamespaceFull(namespace, self.max_keys)

    async def delete(self, namespace: str, key: str) -> bool:
        await self._require(namespace)
        pipeline = self._client.pipeline(transaction=True)
        pipeline.delete(self._values(namespace) + _encode(key))
        pipeline.zrem(self._index(namespace), _encode(key))
        deleted, _ = await self._call(pipeline.execute())
        return bool(deleted)

    async def drop(self, namespace: str) -> None:
        dropped = await self._call(
            self._drop(
                keys=[self._namespaces, self._index(namespace)], args=[namespace, self._values(namespace)]
            )
        )
        if not dropped:
            raise NamespaceNotFound(namespace)

    async def keys(self, namespace: str) -> list[str]:
        await self._require(namespace)
        encoded: list[Any] = await self._call(self._client.zrange(self._index(namespace), 0, -1))
        if not encoded:
            return []
        prefix = self._values(namespace)
        present = await self._call(self._client.mget([prefix + name for name in encoded]))
        live: list[str] = []
        stale: list[str] = []
        for name, value in zip(encoded, present, strict=True):
            (live if value is not None else stale).append(name)
        if stale:
            await self._call(self._client.zrem(self._index(namespace), *stale))
        return [unquote(name) for name in live]

    async def close(self) -> None:
        await self._redis.close()
