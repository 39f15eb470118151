"""``InfluxWriter``: points handed over without waiting, written to InfluxDB in batches in the background.

``write`` timestamps a point, turns it into line protocol and puts it into a bounded buffer: it never
waits, so a slow or absent InfluxDB holds up neither the event loop nor the caller. A background task
writes the buffer in batches of ``batch_size`` points, as soon as a batch is full or ``flush_interval``
after the first point waiting. A batch that fails stays at the head of the buffer and is tried again
after a wait that doubles from ``FIRST_RETRY`` to ``MAX_RETRY`` seconds; points written meanwhile queue
behind it. Nothing inside the bound is lost while InfluxDB is away; a point that finds the buffer full is
dropped and counted. A batch InfluxDB refuses (400: a malformed line, a field of another type) would be
refused again: it is dropped, counted as rejected and logged with InfluxDB's answer.

Timestamps are given by ``write`` and strictly increase (a nanosecond apart at least), so two points of
the same series never overwrite each other, and a batch written twice (sent, but its answer lost) leaves
each point once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from itertools import islice
from typing import Any

from butler.influx.client import InfluxClient, InfluxError
from butler.influx.line_protocol import FieldValue, encode
from butler.logs import Throttle

log = logging.getLogger("butler.influx")

FIRST_RETRY = 1.0
MAX_RETRY = 30.0
#: How long ``close`` may go on writing what is buffered.
CLOSE_SECONDS = 2.0
#: Trouble (failed writes, dropped points) is logged at most this often per kind; counts are in /health.
LOG_INTERVAL = 60.0


class InfluxWriter:
    """Points to one InfluxDB, buffered and written in batches by a task of its own."""

    def __init__(
        self,
        client: InfluxClient,
        *,
        static_tags: Mapping[str, str] | None = None,
        buffer_size: int = 100_000,
        batch_size: int = 1000,
        flush_interval: float = 1.0,
        first_retry: float = FIRST_RETRY,
        max_retry: float = MAX_RETRY,
        close_seconds: float = CLOSE_SECONDS,
    ) -> None:
        self.client = client
        self.static_tags = dict(static_tags or {})
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.close_seconds = close_seconds
        self.written = 0
        self.dropped = 0
        self.rejected = 0
        self.invalid = 0
        self.failures = 0
        self.last_error: str | None = None
        self._buffer: deque[str] = deque()
        self._last_ns = 0
        self._waiting = asyncio.Event()  # a point is buffered
        self._full = asyncio.Event()  # a batch is full
        self._task: asyncio.Task[None] | None = None
        self._failing = 0  # failed attempts since the last success
        self._throttle = Throttle(LOG_INTERVAL)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="influx writer")

    def write(self, measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue]) -> None:
        """Buffer a point, timestamped now; ``tags`` win over the static tags of ``influxDb.tag.static``.

        Called from the event loop's thread; never waits.
        """
        if len(self._buffer) >= self.buffer_size:
            self.dropped += 1
            if self._throttle.ready("dropped"):
                log.warning(
                    "InfluxDB: %d points are waiting, the most kept (Butler.influxDb.bufferSize): "
                    "new points are dropped (logged once a minute; counts in GET /health)",
                    self.buffer_size,
                )
            return
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        line = encode(measurement, {**self.static_tags, **tags}, fields, self._last_ns)
        if line is None:
            self.invalid += 1
            if self._throttle.ready("invalid"):
                log.warning("InfluxDB: a point of %s has no field that can be written", measurement)
            return
        self._buffer.append(line)
        self._waiting.set()
        if len(self._buffer) >= self.batch_size:
            self._full.set()

    def stats(self) -> dict[str, Any]:
        return {
            "target": self.client.target,
            "buffered": len(self._buffer),
            "bufferSize": self.buffer_size,
            "written": self.written,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "invalid": self.invalid,
            "failures": self.failures,
            "lastError": self.last_error,
        }

    async def close(self) -> None:
        """Stop the background task, write what is buffered within ``close_seconds``, close the client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.close_seconds):
                while self._buffer and await self._write_batch():
                    pass
        if self._buffer:
            log.warning("InfluxDB: %d points not written at shutdown", len(self._buffer))
        await self.client.close()

    async def _run(self) -> None:
        while True:
            self._waiting.clear()
            if not self._buffer:
                await self._waiting.wait()
            self._full.clear()
            if len(self._buffer) < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._full.wait()
            retry = self.first_retry
            while self._buffer:
                if await self._write_batch():
                    retry = self.first_retry
                    if len(self._buffer) < self.batch_size:
                        break  # what came meanwhile waits for its batch to fill, as any point does
                else:
                    # Jitter, so that Butlers sharing an InfluxDB do not come back all at once.
                    await asyncio.sleep(retry * random.uniform(0.8, 1.2))
                    retry = min(retry * 2, self.max_retry)

    async def _write_batch(self) -> bool:
        """Write the head of the buffer; whether it is gone from the buffer (written or refused)."""
        count = min(len(self._buffer), self.batch_size)
        body = "\n".join(islice(self._buffer, count)).encode()
        try:
            await self.client.write(body)
        except Exception as raised:
            exc = raised if isinstance(raised, InfluxError) else InfluxError(repr(raised), retry=True)
            if exc is not raised and self._throttle.ready("fault"):
                # A fault of Butler's must not end the writer: logged, and the batch tried again.
                log.exception("InfluxDB: writing a batch failed unexpectedly")
            self.last_error = str(exc)
            if exc.retry:
                self.failures += 1
                self._failing += 1
                if self._throttle.ready("failed"):
                    log.warning(
                        "InfluxDB: %d points not written, tried again later (logged once a minute): %s",
                        len(self._buffer),
                        exc,
                    )
                return False
            self.rejected += count
            log.error("InfluxDB refused %d points, dropped: %s", count, exc)
        else:
            self.written += count
            if self._failing:
                log.info("InfluxDB: writing again after %d failed attempts", self._failing)
        self._failing = 0
        for _ in range(count):
            self._buffer.popleft()
        return True


__all__ = ["InfluxWriter"]
