"""Writes to a SQLite file from one thread, in group commits, so that a write is answered once it is on disk
without blocking the event loop.

The key-value store and the alert outbox keep their state in memory and write every change through one
``SqliteWriter``: the writes waiting at a moment are committed in one transaction (WAL journal,
``synchronous=FULL``), and each writer is answered when its transaction is on disk. A burst of writes
therefore costs a few fsyncs, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("butler.sqlite")

#: One statement and its parameters.
Statement = tuple[str, Sequence[Any]]
T = TypeVar("T")


class SqliteWriter:
    """One SQLite file, opened with ``schema``, written by one thread in group commits.

    ``failure`` makes the exception a failed write raises for its callers, from the SQLite error.
    """

    def __init__(self, path: Path, schema: str, failure: Callable[[Exception], Exception]) -> None:
        self.path = path
        self.schema = schema
        self.failure = failure
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"butler-{path.stem}")
        self._connection: sqlite3.Connection | None = None
        self._pending: list[tuple[list[Statement], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def open(self, load: Callable[[sqlite3.Connection], T]) -> T:
        """Open the file (made if missing, with its folder) and return what ``load`` reads from it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._open, load)

    def _open(self, load: Callable[[sqlite3.Connection], T]) -> T:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.executescript(self.schema)
        self._connection = connection
        return load(connection)

    async def write(self, statements: list[Statement]) -> None:
        """Run ``statements`` in the next transaction; returns once it is committed."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((statements, future))
        self._start_flush()
        await future

    def write_later(self, statements: list[Statement]) -> None:
        """Run ``statements`` in the next transaction; nobody waits for it (a failure is logged)."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.exception())  # logged by _flush; nobody else looks
        self._pending.append((statements, future))
        self._start_flush()

    async def close(self) -> None:
        if self._flushing is not None:
            await self._flushing
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await asyncio.get_running_loop().run_in_executor(self._executor, connection.close)
        self._executor.shutdown(wait=True)

    def _start_flush(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(
                    self._executor, self._commit, [s for group, _ in batch for s in group]
                )
            except (sqlite3.Error, OSError) as exc:
                log.error("cannot write %s: %s", self.path, exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(self.failure(exc))
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def _commit(self, statements: list[Statement]) -> None:
        connection = self._connection
        if connection is None:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        connection.execute("BEGIN")
        try:
            for sql, parameters in statements:
                connection.execute(sql, parameters)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise


__all__ = ["SqliteWriter", "Statement"]
