"""Butler's own pulse: the heartbeat (a GET to a monitoring tool's push URL) and the uptime monitor
(uptime, memory and event-loop lag, logged and sent to InfluxDB and New Relic).

Memory is read from the operating system, since Python has no V8 heap: ``heap_used`` is the process's
anonymous resident memory (Python's objects and arenas), ``heap_total`` its private data segment,
``external`` resident file-backed memory (libraries) and ``process_memory`` the resident set (on Windows:
private bytes, private bytes, the rest of the working set, the working set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from butler.config.alerts import NewRelicAccount
from butler.config.monitors import HeartbeatSettings, UptimeSettings
from butler.errors import UpstreamError
from butler.http.answers import beginning
from butler.logs import LEVELS
from butler.monitors.outputs import InfluxSink

log = logging.getLogger("butler")
MB = 1024 * 1024


class BeatFailed(UpstreamError):
    """The heartbeat's URL did not take the beat."""


class Heartbeat:
    def __init__(self, settings: HeartbeatSettings) -> None:
        self.settings = settings
        # A push URL's path and query are its key (healthchecks.io, Uptime Kuma): logs and /health show
        # where the beats go, not how to send one.
        url = URL(settings.url)
        self.shown = str(url.origin()) if url.absolute else "the heartbeat URL"
        self._session: aiohttp.ClientSession | None = None

    async def check(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url, shown = self.settings.url, self.shown
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=self.settings.timeout)
            ) as response:
                await beginning(response)
        except TimeoutError as exc:
            raise BeatFailed(f"heartbeat to {shown}: no answer within {self.settings.timeout} s") from exc
        except aiohttp.ClientError as exc:
            # Connection errors name the host and port; others (a redirect refused, ...) the whole URL.
            detail = str(exc) if isinstance(exc, aiohttp.ClientConnectionError) else ""
            raise BeatFailed(f"heartbeat to {shown}: {detail or type(exc).__name__}") from exc
        if response.status >= 400:
            raise BeatFailed(f"heartbeat to {shown}: answered {response.status}")
        log.debug("heartbeat sent to %s (%d)", shown, response.status)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class Memory:
    heap_used: float
    heap_total: float
    external: float
    process_memory: float


def read_memory() -> Memory:
    """The process's memory in MB, as the module says."""
    if sys.platform == "win32":
        return _windows_memory()
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return linux_memory(status.read())
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux; a fallback only
        return Memory(peak, peak, 0.0, peak)


def linux_memory(status: str) -> Memory:
    """From ``/proc/self/status`` (values in kB)."""
    values: dict[str, float] = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[name] = int(parts[0]) / 1024
    return Memory(
        heap_used=values.get("RssAnon", 0.0),
        heap_total=values.get("VmData", 0.0),
        external=values.get("RssFile", 0.0),
        process_memory=values.get("VmRSS", 0.0),
    )


if sys.platform == "win32":

    def _windows_memory() -> Memory:
        import ctypes
        from ctypes import wintypes

        class Counters(ctypes.Structure):
            _fields_ = [
                ("cb", wintypes.DWORD),
                ("PageFaultCount", wintypes.DWORD),
                ("PeakWorkingSetSize", ctypes.c_size_t),
                ("WorkingSetSize", ctypes.c_size_t),
                ("QuotaPeakPagedPoolUsage", ctypes.c_size_t),
                ("QuotaPagedPoolUsage", ctypes.c_size_t),
                ("QuotaPeakNonPagedPoolUsage", ctypes.c_size_t),
                ("QuotaNonPagedPoolUsage", ctypes.c_size_t),
                ("PagefileUsage", ctypes.c_size_t),
                ("PeakPagefileUsage", ctypes.c_size_t),
                ("PrivateUsage", ctypes.c_size_t),
            ]

        counters = Counters()
        counters.cb = ctypes.sizeof(counters)
        process = ctypes.windll.kernel32.GetCurrentProcess()
        ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb)
        private = counters.PrivateUsage / MB
        working = counters.WorkingSetSize / MB
        return Memory(private, private, max(working - private, 0.0), working)


def uptime_text(seconds: float) -> str:
    """``1 day, 2 hours, 3 minutes, 4 seconds``, as upstream's precise-diff text."""
    whole = int(seconds)
    parts = []
    for name, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        count, whole = divmod(whole, size)
        if count or name == "second":
            parts.append(f"{count} {name}{'' if count == 1 else 's'}")
    return ", ".join(parts)


class LoopLag:
    """How late the event loop runs a timer: sampled every ``interval`` seconds, the worst kept until read."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.last = 0.0
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.last = max(loop.time() - due, 0.0)
            self.worst = max(self.worst, self.last)

    def read(self) -> tuple[float, float]:
        """(last, worst since the previous read), in milliseconds."""
        last, worst = self.last * 1000, self.worst * 1000
        self.worst = self.last
        return last, worst


class UptimeMonitor:
    def __init__(
        self,
        settings: UptimeSettings,
        version: str,
        interval_ms: int,
        accounts: tuple[NewRelicAccount, ...],
        influx: InfluxSink | None,
        started: float,
    ) -> None:
        self.settings = settings
        self.version = version
        self.interval_ms = interval_ms
        self.accounts = {account.name: account for account in accounts}
        self.influx = influx if settings.influx else None
        self.started = started
        self.iteration = 0
        self.lag = LoopLag()
        self.found: dict[str, Any] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self.lag.start()

    async def close(self) -> None:
        await self.lag.stop()
        if self._session is not None:
            await self._session.close()

    async def check(self) -> None:
        self.iteration += 1
        # Reading /proc is file I/O, which the event loop does not wait for.
        memory = await asyncio.to_thread(read_memory)
        uptime = time.monotonic() - self.started
        last_lag, worst_lag = self.lag.read()
        self.found = {
            "uptimeSeconds": round(uptime, 1),
            "heapUsedMB": round(memory.heap_used, 2),
            "heapTotalMB": round(memory.heap_total, 2),
            "externalMB": round(memory.external, 2),
            "processMemoryMB": round(memory.process_memory, 2),
            "loopLagMs": round(last_lag, 1),
            "loopLagWorstMs": round(worst_lag, 1),
        }
        level = LEVELS[self.settings.log_level]
        log.log(level, "--------------------------------")
        log.log(level, "Iteration # %s", f"{self.iteration:,}")
        log.log(level, "Process uptime: %s", uptime_text(uptime))
        log.log(
            level,
            "Memory: Heap used %.2f MB of total heap %.2f MB. External (off-heap): %.2f MB. "
            "Total process memory: %.2f MB.",
            memory.heap_used,
            memory.heap_total,
            memory.external,
            memory.process_memory,
        )
        log.log(
            level, "Event loop lag: %.1f ms now, %.1f ms at worst since the last report", last_lag, worst_lag
        )
        log.log(level, "--------------------------------")
        if self.influx is not None:
            self.influx.write(
                "butler_memory_usage",
                {"version": self.version},
                {
                    "heap_used": round(memory.heap_used, 2),
                    "heap_total": round(memory.heap_total, 2),
                    "external": round(memory.external, 2),
                    "process_memory": round(memory.process_memory, 2),
                },
            )
        if self.settings.new_relic.enable:
            await self._new_relic(memory, uptime)

    def new_relic_body(self, memory: Memory, uptime: float, now_ms: int) -> list[dict[str, Any]]:
        """The metrics POST of monitors.md §7."""
        settings = self.settings.new_relic
        attributes: dict[str, Any] = dict(settings.attributes)
        if settings.version:
            attributes["version"] = self.version
        metrics = []
        if settings.memory:
            for name, value in (
                ("qs_butlerHeapUsed", memory.heap_used),
                ("qs_butlerHeapTotal", memory.heap_total),
                ("qs_butlerExternalMem", memory.external),
                ("qs_butlerProcessMem", memory.process_memory),
            ):
                metrics.append({"name": name, "type": "gauge", "value": round(value, 2)})
        if settings.uptime:
            metrics.append({"name": "qs_butlerUptimeMillisec", "type": "gauge", "value": int(uptime * 1000)})
        common = {"timestamp": now_ms, "interval.ms": self.interval_ms, "attributes": attributes}
        return [{"common": common, "metrics": metrics}]

    async def _new_relic(self, memory: Memory, uptime: float) -> None:
        settings = self.settings.new_relic
        body = self.new_relic_body(memory, uptime, int(time.time() * 1000))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        failures = []
        for name in settings.accounts:
            account = self.accounts.get(name)
            if account is None:
                failures.append(f"{name}: no such account in thirdPartyToolsCredentials.newRelic")
                continue
            headers: Mapping[str, str] = {**dict(settings.headers), "Api-Key": account.insert_api_key}
            try:
                async with self._session.post(
                    settings.url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
                ) as response:
                    if response.status >= 300:
                        failures.append(f"{name}: New Relic answered {response.status}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                failures.append(f"{name}: {str(exc) or type(exc).__name__}")
        if failures:
            raise UpstreamError("uptime metrics not sent to New Relic: " + "; ".join(failures))


__all__ = ["Heartbeat", "LoopLag", "Memory", "UptimeMonitor", "linux_memory", "read_memory", "uptime_text"]
