"""API tokens: made by ``butler token create``, kept as SHA-256 digests only, in the store the key-value
pairs use (a SQLite file beside theirs, or their Redis).

A token is 32 random bytes, so a plain SHA-256 digest cannot be reversed or guessed; it is looked up by that
digest, never by comparing secrets. Nothing is cached between requests: a token revoked through the CLI (or
by another Butler sharing the Redis) is refused from the next request on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import mmap
import re
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from butler.errors import Unavailable
from butler.sqlite_busy import when_free

#: What every token starts with, so a token found in a file or a paste is recognised as Butler's.
PREFIX = "bt_"
#: A token as ``new_token`` makes it; anything else is refused before any look-up.
TOKEN_FORM = re.compile(r"bt_[A-Za-z0-9_-]{20,200}")
NAME_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The SQLite file of the tokens, in the key-value store's folder.
SQLITE_NAME = "butler-tokens.sqlite"


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """What Butler keeps of a token: never the token itself."""

    name: str
    digest: str
    scopes: tuple[str, ...]
    created: float
    expires: float | None = None
    allow_ips: tuple[str, ...] = ()
    #: Requests per minute this token may make; None: only the per-IP limit applies.
    rate_limit: int | None = None
    last_used: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def allows(self, ip: str) -> bool:
        if not self.allow_ips:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.allow_ips)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TokenRecord:
        data: dict[str, Any] = json.loads(text)
        data["scopes"] = tuple(data["scopes"])
        data["allow_ips"] = tuple(data["allow_ips"])
        return cls(**data)


class TokenExists(Exception):
    pass


class TokenStore(Protocol):
    #: A synchronous look-up, for stores that answer without waiting (SQLite); None for the others.
    find_now: Callable[[str], TokenRecord | None] | None

    async def find(self, token_digest: str) -> TokenRecord | None: ...
    async def create(self, record: TokenRecord) -> None: ...
    async def all(self) -> list[TokenRecord]: ...
    async def revoke(self, name: str) -> bool: ...
    async def touch(self, name: str, when: float) -> None: ...
    async def close(self) -> None: ...


_COLUMNS = "name, digest, scopes, created, expires, allow_ips, rate_limit, last_used"


#: Bytes of the WAL-index header, both copies: SQLite writes it at every commit, whichever connection or
#: process commits. (The checkpoint information after it also changes when readers come and go.)
_WAL_HEADER = 96


class SqliteTokens:
    """Tokens in a SQLite file, read on the event loop (an indexed read of a few microseconds).

    A read through Python's sqlite3 still costs about a third of a ping's time, so records found are kept,
    and all of them dropped as soon as anything commits to the file: the WAL-index header in the ``-shm``
    file, mapped here, changes at every commit (the change counter, the last frame, the salts), so a revoke
    made by the CLI in another process is seen by the very next request. Where the header cannot be mapped,
    every request reads the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Butlers of one host and the token command may open a new file at once.
            when_free(self._prepare)
        except sqlite3.Error as exc:
            raise Unavailable(f"the token store {path} cannot be opened: {exc}") from exc
        self.find_now: Callable[[str], TokenRecord | None] | None = self._find
        self._found: dict[str, TokenRecord] = {}
        self._seen = b""
        self._header = self._map_header()

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (name TEXT PRIMARY KEY, digest TEXT UNIQUE NOT NULL, "
            "scopes TEXT NOT NULL, created REAL NOT NULL, expires REAL, allow_ips TEXT NOT NULL, "
            "rate_limit INTEGER, last_used REAL)"
        )

    def _map_header(self) -> mmap.mmap | None:
        try:
            with open(f"{self.path}-shm", "rb") as shm:
                return mmap.mmap(shm.fileno(), _WAL_HEADER, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None

    def _find(self, token_digest: str) -> TokenRecord | None:
        header = self._header
        if header is None:
            return self._read(token_digest)
        now = header[:_WAL_HEADER]
        if now != self._seen:
            self._found.clear()
            self._seen = now
        record = self._found.get(token_digest)
        if record is None:
            # Only tokens that exist are kept: unknown ones sent at random must not fill the memory.
            record = self._read(token_digest)
            if record is not None:
                self._found[token_digest] = record
        return record

    def _read(self, token_digest: str) -> TokenRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tokens WHERE digest = ?", (token_digest,)).fetchone()
        return None if row is None else _record(row)

    async def find(self, token_digest: str) -> TokenRecord | None:
        return self._find(token_digest)

    async def create(self, record: TokenRecord) -> None:
        try:
            self._db.execute(
                f"INSERT INTO tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.name,
                    record.digest,
                    json.dumps(record.scopes),
                    record.created,
                    record.expires,
                    json.dumps(record.allow_ips),
                    record.rate_limit,
                    record.last_used,
                ),
            )
        except sqlite3.IntegrityError:
            raise TokenExists(record.name) from None

    async def all(self) -> list[TokenRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY name").fetchall()
        return [_record(row) for row in rows]

    async def revoke(self, name: str) -> bool:
        return self._db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0

    async def touch(self, name: str, when: float) -> None:
        self._db.execute("UPDATE tokens SET last_used = ? WHERE name = ?", (when, name))

    async def close(self) -> None:
        if self._header is not None:
            self._header.close()
        self._db.close()


def _record(row: tuple[Any, ...]) -> TokenRecord:
    name, token_digest, scopes, created, expires, allow_ips, rate_limit, last_used = row
    return TokenRecord(
        name,
        token_digest,
        tuple(json.loads(scopes)),
        created,
        expires,
        tuple(json.loads(allow_ips)),
        rate_limit,
        last_used,
    )


class RedisTokens:
    """Tokens in the key-value store's Redis, beside its keys: ``<prefix>token:<digest>`` holds a token's
    record, ``<prefix>tokens`` its digest by name, ``<prefix>tokens:used`` when each was last used. Every
    look-up asks Redis, so a revoke on one Butler is seen by all at once."""

    find_now: Callable[[str], TokenRecord | None] | None = None

    def __init__(self, url: str, prefix: str) -> None:
        from butler.redis_edge import RedisEdge

        self._edge = RedisEdge(url, lambda exc: Unavailable(f"the token store (Redis) failed: {exc}"))
        self._client = self._edge.client
        self._record_key = f"{prefix}token:"
        self._names = f"{prefix}tokens"
        self._used = f"{prefix}tokens:used"

    async def find(self, token_digest: str) -> TokenRecord | None:
        text = await self._edge.call(self._client.get(self._record_key + token_digest))
        return None if text is None else TokenRecord.from_json(str(text))

    async def create(self, record: TokenRecord) -> None:
        added = await self._edge.call(self._client.hsetnx(self._names, record.name, record.digest))
        if not added:
            raise TokenExists(record.name)
        await self._edge.call(self._client.set(self._record_key + record.digest, record.to_json()))

    async def all(self) -> list[TokenRecord]:
        names = await self._edge.call(self._client.hgetall(self._names))
        used = await self._edge.call(self._client.hgetall(self._used))
        records = []
        for name in sorted(str(name) for name in names):
            text = await self._edge.call(self._client.get(self._record_key + str(names[name])))
            if text is not None:
                record = TokenRecord.from_json(str(text))
                records.append(_with_last_used(record, float(used[name])) if name in used else record)
        return records

    async def revoke(self, name: str) -> bool:
        token_digest = await self._edge.call(self._client.hget(self._names, name))
        if token_digest is None:
            return False
        # The record first: from this command on, the token is refused.
        await self._edge.call(self._client.delete(self._record_key + str(token_digest)))
        await self._edge.call(self._client.hdel(self._names, name))
        await self._edge.call(self._client.hdel(self._used, name))
        return True

    async def touch(self, name: str, when: float) -> None:
        await self._edge.call(self._client.hset(self._used, name, str(when)))

    async def close(self) -> None:
        await self._edge.close()


def _with_last_used(record: TokenRecord, when: float) -> TokenRecord:
    data = asdict(record)
    data["last_used"] = when
    data["scopes"] = record.scopes
    data["allow_ips"] = record.allow_ips
    return TokenRecord(**data)


def open_token_store(backend: str, sqlite_path: Path, redis_url: str, redis_prefix: str) -> TokenStore:
    """The token store beside the key-value store: its Redis, or a SQLite file in its folder (also for the
    memory backend, whose pairs are lost on restart but whose tokens must not be)."""
    if backend == "redis":
        return RedisTokens(redis_url, redis_prefix)
    return SqliteTokens(sqlite_path.parent / SQLITE_NAME)


def parse_duration(text: str) -> float:
    """Seconds of ``90d``, ``12h``, ``30m``."""
    match = re.fullmatch(r"([1-9][0-9]{0,5})([dhm])", text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as 90d, 12h or 30m, got {text!r}")
    return int(match.group(1)) * {"d": 86400, "h": 3600, "m": 60}[match.group(2)]


def now() -> float:
    return time.time()


__all__ = [
    "PREFIX",
    "TOKEN_FORM",
    "RedisTokens",
    "SqliteTokens",
    "TokenExists",
    "TokenRecord",
    "TokenStore",
    "digest",
    "new_token",
    "open_token_store",
    "parse_duration",
]
