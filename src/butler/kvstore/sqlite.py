"""The SQLite backend: every pair in a file, so nothing is lost on restart or upgrade.

Reads are served from memory (the whole store is loaded at start-up, without the pairs whose TTL ended
while Butler was down). Writes update memory at once and are committed to the file by one writer
thread in group commits (``butler.sqlite_writer``); a write's caller is answered only after its
transaction is on disk.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from butler.kvstore import StoreUnavailable
from butler.kvstore.memory import MemoryStore, expires_at
from butler.sqlite_writer import SqliteWriter, Statement

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, expires REAL NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (namespace, key)
);
"""
_DELETE_PAIR = "DELETE FROM pairs WHERE namespace = ? AND key = ?"

Loaded = tuple[list[str], list[tuple[str, str, str, float]], int]


def _cannot_write(exc: Exception) -> Exception:
    return StoreUnavailable(f"The key-value store cannot write its file: {exc}")


class SqliteStore(MemoryStore):
    """The memory store, with every change also written to a SQLite file (by one thread, in batches) before
    the write is answered, and read back at start-up: pairs survive restarts."""

    def __init__(self, path: Path, max_keys: int = 1000) -> None:
        super().__init__(max_keys)
        self.path = path
        self._writer = SqliteWriter(path, _SCHEMA, _cannot_write)
        self._seq = 0

    async def open(self) -> None:
        namespaces, pairs, seq = await self._writer.open(self._load)
        self._seq = seq
        for namespace in namespaces:
            self._data.setdefault(namespace, {})
        for namespace, key, value, expires in pairs:
            self.apply_set(namespace, key, value, expires)

    @staticmethod
    def _load(connection: sqlite3.Connection) -> Loaded:
        now = time.time()
        connection.execute("DELETE FROM pairs WHERE expires > 0 AND expires <= ?", (now,))
        namespaces = [row[0] for row in connection.execute("SELECT name FROM namespaces ORDER BY seq")]
        pairs = list(connection.execute("SELECT namespace, key, value, expires FROM pairs ORDER BY seq"))
        seq = connection.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM namespaces), 0), "
            "coalesce((SELECT max(seq) FROM pairs), 0))"
        ).fetchone()[0]
        return namespaces, pairs, int(seq)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        if value is not None:
            self.check_room(namespace, key)
        expires = expires_at(ttl_ms)
        self.apply_set(namespace, key, value, expires)
        statements: list[Statement] = [
            ("INSERT OR IGNORE INTO namespaces (name, seq) VALUES (?, ?)", (namespace, self._next()))
        ]
        if value is not None:
            statements.append(
                (
                    "INSERT INTO pairs (namespace, key, value, expires, seq) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                    "expires = excluded.expires",
                    (namespace, key, value, expires, self._next()),
                )
            )
        await self._writer.write(statements)

    async def delete(self, namespace: str, key: str) -> bool:
        existed = self.apply_delete(namespace, key)
        await self._writer.write([(_DELETE_PAIR, (namespace, key))])
        return existed

    async def drop(self, namespace: str) -> None:
        self.apply_drop(namespace)
        await self._writer.write(
            [
                ("DELETE FROM pairs WHERE namespace = ?", (namespace,)),
                ("DELETE FROM namespaces WHERE name = ?", (namespace,)),
            ]
        )

    def expired(self, pairs: list[tuple[str, str]]) -> None:
        self._writer.write_later([(_DELETE_PAIR, pair) for pair in pairs])

    async def close(self) -> None:
        await super().close()
        await self._writer.close()
