"""The UDP listeners for Sense's log appenders: scheduler events (9998) and proxy session events (9997).

Each datagram is checked before it costs anything: size, source (the optional allow-list), a per-source
rate limit; then parsed and handed to the listener's handler, all in the datagram callback, which never
awaits. Every outcome is counted (``stats``); a malformed datagram is logged at most once per source per
minute, so a flood of junk neither crashes nor floods the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from butler.events.parsing import MalformedDatagram

log = logging.getLogger("butler.udp")

#: Receive buffer asked of the kernel: a burst of events waits there instead of being lost.
RECEIVE_BUFFER = 8 * 1024 * 1024
#: Sources remembered for rate limits and log throttling; beyond that the oldest window is forgotten.
MAX_SOURCES = 10_000

Event = TypeVar("Event")


@dataclass(frozen=True)
class UdpLimits:
    """The checks of ``Butler.udpServerConfig`` shared by both listeners."""

    max_message_size: int = 65507
    allowed_sources: frozenset[str] | None = None  # IP addresses; None: any source
    max_per_source_per_minute: int | None = None


@dataclass
class UdpStats:
    """What one listener received and what became of it."""

    received: int = 0
    accepted: int = 0
    malformed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "malformed": self.malformed,
            "dropped": dict(self.dropped),
            "byType": dict(self.by_type),
        }


class _Window:
    """A per-source count over the current minute."""

    __slots__ = ("count", "logged", "started")

    def __init__(self, now: float) -> None:
        self.started = now
        self.count = 0
        self.logged = -1e9


class UdpListener(asyncio.DatagramProtocol, Generic[Event]):
    """One UDP port: ``parse`` turns an accepted datagram into an event, ``handle`` takes it.

    ``handle`` returns a reason to count the event as dropped (a full queue, a duplicate), or None.
    """

    def __init__(
        self,
        name: str,
        limits: UdpLimits,
        parse: Callable[[bytes], Event],
        handle: Callable[[Event], str | None],
        type_of: Callable[[Event], str],
    ) -> None:
        self.name = name
        self.limits = limits
        self.parse = parse
        self.handle = handle
        self.type_of = type_of
        self.stats = UdpStats()
        self.transport: asyncio.DatagramTransport | None = None
        self.receive_buffer = 0
        self.on_error: Callable[[Exception], None] | None = None
        self._sources: dict[str, _Window] = {}

    async def open(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):  # the system's maximum then applies
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def error_received(self, exc: Exception) -> None:
        log.warning("UDP %s listener: %s", self.name, exc)
        if self.on_error is not None:
            self.on_error(exc)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        stats.received += 1
        source = str(addr[0])
        limits = self.limits
        if len(data) > limits.max_message_size:
            stats.drop("tooLarge")
            self._log_once(source, f"datagram of {len(data)} bytes (limit {limits.max_message_size})")
            return
        if limits.allowed_sources is not None and source not in limits.allowed_sources:
            stats.drop("sourceNotAllowed")
            self._log_once(source, "source not on Butler.udpServerConfig.allowedSources")
            return
        window = self._window(source)
        window.count += 1
        if limits.max_per_source_per_minute is not None and window.count > limits.max_per_source_per_minute:
            stats.drop("rateLimited")
            self._log_once(source, f"more than {limits.max_per_source_per_minute} datagrams a minute")
            return
        try:
            event = self.parse(data)
        except MalformedDatagram as exc:
            stats.malformed += 1
            self._log_once(source, f"malformed datagram ({exc})")
            return
        kind = self.type_of(event)
        stats.by_type[kind] = stats.by_type.get(kind, 0) + 1
        refused = self.handle(event)
        if refused is None:
            stats.accepted += 1
        else:
            stats.drop(refused)

    def _window(self, source: str) -> _Window:
        now = time.monotonic()
        window = self._sources.get(source)
        if window is None or now - window.started >= 60:
            if window is None and len(self._sources) >= MAX_SOURCES:
                # Spoofed sources cannot grow this without bound: forget the oldest one.
                del self._sources[next(iter(self._sources))]
            logged = window.logged if window is not None else -1e9
            window = self._sources[source] = _Window(now)
            window.logged = logged
        return window

    def _log_once(self, source: str, what: str) -> None:
        window = self._window(source)
        now = time.monotonic()
        if now - window.logged >= 60:
            window.logged = now
            log.warning(
                "UDP %s listener: %s from %s (logged once a minute per source; counts in GET /health)",
                self.name,
                what,
                source,
            )


async def resolve_sources(names: list[str]) -> frozenset[str]:
    """The IP addresses of the allow-list's addresses and host names (resolved once, at start-up)."""
    loop = asyncio.get_running_loop()
    found: set[str] = set()
    for name in names:
        try:
            found.add(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            for *_, address in await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM):
                found.add(str(address[0]))
        except OSError as exc:
            log.warning("Butler.udpServerConfig.allowedSources: cannot resolve %s: %s", name, exc)
    # IPv4 senders on a dual-stack socket appear as IPv4-mapped IPv6 addresses.
    found |= {f"::ffff:{a}" for a in found if "." in a}
    return frozenset(found)
