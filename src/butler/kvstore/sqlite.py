"""The SQLite backend: every pair in a file, so nothing is lost on restart or upgrade.

Reads are served from memory (the whole store is loaded at start-up, without the pairs whose TTL ended
while Butler was down). Writes update memory at once and are committed to the file by one writer
thread, which groups the writes waiting at that moment into one transaction; a write's caller is
answered only after its transaction is on disk (WAL journal, ``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from butler.kvstore import StoreUnavailable
from butler.kvstore.memory import MemoryStore, expires_at

log = logging.getLogger("butler.kvstore")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, expires REAL NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (namespace, key)
);
"""

Operation = tuple[str, tuple[Any, ...]]


class SqliteStore(MemoryStore):
    """The memory store, with every change also written to a SQLite file (by one thread, in batches) before
    the write is answered, and read back at start-up: pairs survive restarts."""

    def __init__(self, path: Path, max_keys: int = 1000) -> None:
        super().__init__(max_keys)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="butler-kv")
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[Operation, asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._seq = 0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        namespaces, pairs, seq = await loop.run_in_executor(self._executor, self._load)
        self._seq = seq
        for namespace in namespaces:
            self._data.setdefault(namespace, {})
        for namespace, key, value, expires in pairs:
            self.apply_set(namespace, key, value, expires)

    def _load(self) -> tuple[list[str], list[tuple[str, str, str, float]], int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(_SCHEMA)
        now = time.time()
        connection.execute("DELETE FROM pairs WHERE expires > 0 AND expires <= ?", (now,))
        namespaces = [row[0] for row in connection.execute("SELECT name FROM namespaces ORDER BY seq")]
        pairs = list(connection.execute("SELECT namespace, key, value, expires FROM pairs ORDER BY seq"))
        seq = connection.execute(
            "SELECT max(coalesce((SELECT max(seq) FROM namespaces), 0), "
            "coalesce((SELECT max(seq) FROM pairs), 0))"
        ).fetchone()[0]
        self._connection = connection
        return namespaces, pairs, int(seq)

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    async def set(self, namespace: str, key: str, value: str | None, ttl_ms: int = 0) -> None:
        if value is not None:
            self.check_room(namespace, key)
        expires = expires_at(ttl_ms)
        self.apply_set(namespace, key, value, expires)
        operation: Operation = ("set", (namespace, self._next(), key, value, expires, self._next()))
        await self._write(operation)

    async def delete(self, namespace: str, key: str) -> bool:
        existed = self.apply_delete(namespace, key)
        await self._write(("delete", (namespace, key)))
        return existed

    async def drop(self, namespace: str) -> None:
        self.apply_drop(namespace)
        await self._write(("drop", (namespace,)))

    def expired(self, pairs: list[tuple[str, str]]) -> None:
        for namespace, key in pairs:
            future = asyncio.get_running_loop().create_future()
            self._pending.append((("delete", (namespace, key)), future))
            future.add_done_callback(lambda f: f.exception())  # nobody waits on these
        self._start_flush()

    async def close(self) -> None:
        await super().close()
        if self._flushing is not None:
            await self._flushing
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._executor.shutdown(wait=True)

    # -- group commit -------------------------------------------------------------------------------------

    async def _write(self, operation: Operation) -> None:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((operation, future))
        self._start_flush()
        await future

    def _start_flush(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._commit, [op for op, _ in batch])
            except (sqlite3.Error, OSError) as exc:
                log.error("key-value store: cannot write %s: %s", self.path, exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            StoreUnavailable(f"The key-value store cannot write its file: {exc}")
                        )
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, operations: list[Operation]) -> None:
        connection = self._connection
        if connection is None:
            raise sqlite3.ProgrammingError("the key-value store is closed")
        connection.execute("BEGIN")
        try:
            for kind, args in operations:
                if kind == "set":
                    namespace, namespace_seq, key, value, expires, pair_seq = args
                    connection.execute(
                        "INSERT OR IGNORE INTO namespaces (name, seq) VALUES (?, ?)",
                        (namespace, namespace_seq),
                    )
                    if value is not None:
                        connection.execute(
                            "INSERT INTO pairs (namespace, key, value, expires, seq) VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, "
                            "expires = excluded.expires",
                            (namespace, key, value, expires, pair_seq),
                        )
                elif kind == "delete":
                    connection.execute("DELETE FROM pairs WHERE namespace = ? AND key = ?", args)
                else:
                    connection.execute("DELETE FROM pairs WHERE namespace = ?", args)
                    connection.execute("DELETE FROM namespaces WHERE name = ?", args)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
