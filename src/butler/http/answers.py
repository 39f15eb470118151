"""Reading what an outside HTTP service (a webhook, New Relic, InfluxDB, a heartbeat URL) answers, without
trusting it to end: the status says whether a request was taken, so a body that never ends must not make
a taken request look failed (and be sent again), nor may a huge one fill the memory. A short body is
still read to its end, so that the connection can be used again."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

#: Bytes of an answer's body read at most, and how long they are waited for (seconds).
READ_BYTES = 16_384
READ_SECONDS = 2.0


async def beginning(
    response: aiohttp.ClientResponse, limit: int = READ_BYTES, wait: float = READ_SECONDS
) -> bytes:
    """The first ``limit`` bytes of the answer's body, or as many as came within ``wait`` seconds."""
    body = b""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with asyncio.timeout(wait):
            while len(body) < limit:
                chunk = await response.content.read(limit - len(body))
                if not chunk:
                    break
                body += chunk
    return body


__all__ = ["READ_BYTES", "READ_SECONDS", "beginning"]
