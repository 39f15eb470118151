"""Task outcomes: scheduler events, enriched from QRS once, published to the event bus for every consumer.

A scheduler event names a task, an app and an execution. Before anyone is told, the event is enriched
from QRS: the task and the app (names, type, tags, custom properties), the execution result (status,
times, duration), and for failed and aborted reload tasks the head and tail of the script log. Task and
app metadata are cached for ``cache_seconds``; lookups made while others are on their way are gathered
into one QRS call (``id eq a or id eq b ...``), so a burst of events costs a few QRS calls, not a few
per event. Enrichment is bounded by ``timeout_seconds``: with QRS slow or down, the event goes out with
what is known, marked ``partial``, and what is missing named.

Events are deduplicated on execution id and outcome for ``dedup_seconds`` (the same event from two
appenders or nodes alerts once); an execution id is held only while its event is queued or handled, so
an event dropped for a full queue can come again. The queue is bounded; ``workers`` events are enriched
at once. A worker publishes the outcome and takes the next event: it never waits for a consumer.

With ``sharing`` (several Butlers on one Redis, ``events/sharing.py``), a worker claims each event in Redis
before it enriches it, and only the Butler that got the claim handles it; the others keep it aside until
the claim is marked done or expires, and take it over in the second case. The claimant extends its claim
while it holds the event, so a Butler that died loses its claims within the takeover time, whatever
enrichment takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from butler.config.settings import TaskOutcomeSettings
from butler.events.bus import EventBus
from butler.events.parsing import TaskEvent
from butler.events.sharing import EventSharing, SharingUnavailable
from butler.executions import describe
from butler.qlik.qrs import QrsClient, QrsError
from butler.qlik.repository import QrsRepository, execution_result
from butler.stopping import cancel_and_wait

log = logging.getLogger("butler.taskevents")

TASK_TYPES = {0: "Reload", 1: "ExternalProgram", 2: "UserSync", 3: "Distribution", 4: "Preload"}
MAX_BATCH = 40
#: How a distribution task's last run ended, by its status: success or failure; other states are not an
#: end (queued, running, and 13/14, the distribution queue and run).
DISTRIBUTION_OUTCOMES = {7: "success", 6: "failed", 8: "failed", 11: "failed"}
#: Execution ids remembered for deduplication at most; beyond that the oldest are forgotten early, so a
#: sustained flood of events cannot grow memory without bound.
MAX_REMEMBERED = 50_000
#: Events claimed by another Butler kept aside at most, in case that Butler does not finish them.
MAX_WATCHED = 20_000


@dataclass
class TaskOutcome:
    """A scheduler event and what QRS told about it. ``missing`` names what could not be fetched."""

    event: TaskEvent
    task: dict[str, Any] | None = None
    app: dict[str, Any] | None = None
    execution: dict[str, Any] | None = None
    #: QRS's execution result as it came (details with their times and types, the node that ran it).
    execution_result: dict[str, Any] | None = None
    script_log_head: list[str] | None = None
    script_log_tail: list[str] | None = None
    #: Every line of the script log, kept only for the outcomes alerts need it for.
    script_log: list[str] | None = None
    missing: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def partial(self) -> bool:
        return bool(self.missing)

    @property
    def task_name(self) -> str:
        return str((self.task or {}).get("name") or self.event.task_name)

    @property
    def app_name(self) -> str:
        return str((self.app or {}).get("name") or self.event.app_name)

    @property
    def task_type(self) -> str | None:
        code = (self.task or {}).get("taskType")
        return TASK_TYPES.get(code, str(code)) if code is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The full JSON: upstream's keys (``taskFailureFullTopic``), then this project's additions."""
        event = self.event
        task, app = self.task or {}, self.app or {}
        return {
            "hostName": event.host,
            # Upstream's form, DIR\user (a doubled backslash, as some appenders send it, made single).
            "user": event.user.replace("\\\\", "\\"),
            "taskName": self.task_name,
            "taskId": event.task_id,
            "appName": self.app_name,
            "appId": event.app_id,
            "logTimeStamp": event.timestamp,
            "logLevel": event.level,
            "executionId": event.execution_id,
            "logMessage": event.message,
            "qs_appTags": _tag_names(app),
            "qs_appCustomProperties": _custom_properties(app),
            "qs_taskTags": _tag_names(task),
            "qs_taskCustomProperties": _custom_properties(task),
            "qs_taskMetadata": task,
            "qs_appMetadata": app,
            "outcome": event.outcome,
            "taskType": self.task_type,
            "executionResult": self.execution,
            "scriptLog": {"head": self.script_log_head, "tail": self.script_log_tail},
            "partial": self.partial,
            "missing": self.missing,
            **({"enrichmentError": self.error} if self.error else {}),
        }


def _tag_names(entity: dict[str, Any]) -> list[str]:
    return [str(t.get("name")) for t in entity.get("tags") or [] if isinstance(t, dict)]


def _custom_properties(entity: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": (cp.get("definition") or {}).get("name"), "value": cp.get("value")}
        for cp in entity.get("customProperties") or []
        if isinstance(cp, dict)
    ]


class _Lookup:
    """Entities of one QRS type, looked up in batches by ``fetch`` and optionally cached."""

    def __init__(
        self,
        fetch: Callable[[list[str]], Awaitable[list[dict[str, Any]]]],
        key_of: str,
        cache_seconds: float,
    ) -> None:
        self.fetch = fetch
        self.key_of = key_of
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self._scheduled = False
        self._fetching: set[asyncio.Task[None]] = set()  # referenced, so no fetch is collected mid-way

    async def get(self, key: str) -> dict[str, Any] | None:
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        waiter = self._waiting.get(key)
        if waiter is None:
            waiter = self._waiting[key] = asyncio.get_running_loop().create_future()
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        return await asyncio.shield(waiter)

    def _flush(self) -> None:
        self._scheduled = False
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), MAX_BATCH):
            batch = {k: waiting[k] for k in keys[start : start + MAX_BATCH]}
            fetch = asyncio.get_running_loop().create_task(self._fetch(batch))
            self._fetching.add(fetch)
            fetch.add_done_callback(self._fetching.discard)

    async def close(self) -> None:
        for fetch in list(self._fetching):
            fetch.cancel()
        await asyncio.gather(*self._fetching, return_exceptions=True)

    async def _fetch(self, batch: dict[str, asyncio.Future[dict[str, Any] | None]]) -> None:
        try:
            found = await self.fetch(list(batch))
        except (QrsError, TimeoutError, ValueError) as exc:
            for waiter in batch.values():
                if not waiter.done():
                    waiter.set_exception(QrsError(str(exc)))
                    waiter.exception()  # a waiter whose event timed out no longer looks
            return
        by_key: dict[str, dict[str, Any]] = {}
        for entity in found:
            by_key[str(entity.get(self.key_of, "")).lower()] = entity  # the last (newest) wins
        expires = time.monotonic() + self.cache_seconds
        for key, waiter in batch.items():
            value = by_key.get(key)
            if self.cache_seconds > 0:
                self._cache[key] = (expires, value)
            if not waiter.done():
                waiter.set_result(value)
        if len(self._cache) > 10_000:
            now = time.monotonic()
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}


class TaskEnricher:
    """What QRS knows of a scheduler event.

    The script log is read for failed and aborted reloads, and for the outcomes in ``full_logs`` (those
    alerts are configured for), whose events keep every line of it.
    """

    def __init__(
        self, qrs: QrsClient, settings: TaskOutcomeSettings, full_logs: frozenset[str] = frozenset()
    ) -> None:
        self.repository = QrsRepository(qrs)
        self.settings = settings
        self.full_logs = full_logs
        self._tasks = _Lookup(self.repository.task_metadata, "id", settings.cache_seconds)
        self._apps = _Lookup(self.repository.app_metadata, "id", settings.cache_seconds)
        self._results = _Lookup(self.repository.execution_result_metadata, "executionID", 0)

    async def close(self) -> None:
        for lookup in (self._tasks, self._apps, self._results):
            await lookup.close()

    async def enrich(self, event: TaskEvent) -> TaskOutcome:
        outcome = TaskOutcome(event)
        parts: dict[str, asyncio.Task[None]] = {
            "task": asyncio.ensure_future(self._task(outcome)),
        }
        if event.app_id:
            parts["app"] = asyncio.ensure_future(self._app(outcome))
        if event.execution_id:
            parts["executionResult"] = asyncio.ensure_future(self._execution(outcome))
        _, pending = await asyncio.wait(parts.values(), timeout=self.settings.timeout_seconds)
        for task in pending:
            task.cancel()
        errors = []
        for name, task in parts.items():
            if task in pending:
                outcome.missing.append(name)
                errors.append(f"{name}: QRS did not answer within {self.settings.timeout_seconds:g} s")
            elif task.exception() is not None:
                outcome.missing.append(name)
                errors.append(f"{name}: {task.exception()}")
        if (
            "executionResult" in outcome.missing
            and "scriptLog" not in outcome.missing
            and self._wants_log(outcome)
        ):
            outcome.missing.append("scriptLog")
        if errors:
            outcome.error = "; ".join(errors)
        return outcome

    async def _task(self, outcome: TaskOutcome) -> None:
        outcome.task = await self._tasks.get(outcome.event.task_id)

    async def _app(self, outcome: TaskOutcome) -> None:
        outcome.app = await self._apps.get(outcome.event.app_id)

    def _wants_log(self, outcome: TaskOutcome) -> bool:
        kind = outcome.event.outcome
        return (kind in ("failed", "aborted") or kind in self.full_logs) and outcome.event.app_id != ""

    async def _execution(self, outcome: TaskOutcome) -> None:
        result = await self._results.get(outcome.event.execution_id)
        if result is None:
            return
        record = execution_result(result)
        outcome.execution = describe(record)
        outcome.execution_result = result
        if not self._wants_log(outcome) or not result.get("scriptLogAvailable", True):
            return
        reference = record.file_reference_id
        try:
            lines = (
                None
                if reference is None
                else await self.repository.script_log(outcome.event.task_id, reference)
            )
        except asyncio.CancelledError:
            outcome.missing.append("scriptLog")
            raise
        if lines is None:
            if result.get("fileReferenceID"):
                outcome.missing.append("scriptLog")
            return
        settings = self.settings
        if outcome.event.outcome in self.full_logs:
            outcome.script_log = lines
        outcome.script_log_head = lines[: settings.script_log_head]
        outcome.script_log_tail = lines[-settings.script_log_tail :] if settings.script_log_tail else []


class TaskOutcomes:
    """The pipeline: ``submit`` (from the UDP listener) queues, workers enrich and publish to ``bus``."""

    def __init__(
        self,
        enricher: TaskEnricher | None,
        settings: TaskOutcomeSettings,
        bus: EventBus,
        sharing: EventSharing | None = None,
    ) -> None:
        self.enricher = enricher
        self.settings = settings
        self.bus = bus
        self.sharing = sharing
        #: Events claimed elsewhere, a heap by when their claim expires: (when to look, number, event,
        #: shared key); the number keeps events of the same time in order.
        self._watched: list[tuple[float, int, TaskEvent, str]] = []
        self._watch_number = 0
        self._watcher: asyncio.Task[None] | None = None
        self._marking: set[asyncio.Task[None]] = set()
        self.not_watched = 0
        self.handled = 0
        self.partial = 0
        #: Events handled by task type (None: QRS did not say) and outcome.
        self.by_outcome: dict[tuple[str | None, str], int] = {}
        self._queue: asyncio.Queue[TaskEvent] = asyncio.Queue(settings.queue_size)
        self._held: dict[str, float] = {}  # "<execution id> <outcome>": when it may come again
        self._expiring: deque[tuple[float, str]] = deque()
        self._workers: list[asyncio.Task[None]] = []
        self._warned = 0.0
        #: Distribution tasks followed until they end, by task id.
        self._distributions: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.settings.workers)]
        if self.sharing is not None:
            self._watcher = loop.create_task(self._watch())

    async def stop(self) -> None:
        following = list(self._distributions.values())
        watcher = [self._watcher] if self._watcher is not None else []
        await cancel_and_wait([*self._workers, *following, *watcher])
        self._workers = []
        if self._marking:
            await asyncio.wait(list(self._marking), timeout=2)
        if self.enricher is not None:
            await self.enricher.close()

    @property
    def set_aside(self) -> int:
        return len(self._watched)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, event: TaskEvent) -> str | None:
        """Queue an event; the reason it was not queued (``duplicate``, ``queueFull``), or None."""
        if event.outcome == "distribute":
            return self._follow_distribution(event)
        key = self._dedup_key(event)
        now = time.monotonic()
        if key is not None:
            self._forget_expired(now)
            if key in self._held:
                return "duplicate"
            self._held[key] = float("inf")  # held while queued; the TTL starts once handled
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            if key is not None:
                del self._held[key]
            return "queueFull"
        size = self._queue.qsize()
        if size * 100 >= self.settings.backpressure_percent * self._queue.maxsize and now - self._warned > 60:
            self._warned = now
            log.warning("task event queue at %d of %d events", size, self._queue.maxsize)
        return None

    def _follow_distribution(self, event: TaskEvent) -> str | None:
        """A distribution task says only that it ran (``/scheduler-distribute/``); how it ended is in its
        last execution result, which may still be queued or running: it is asked for until it ended, then
        the event goes on as that task's success or failure."""
        log.info("distribution task %s (%s) reported: %s", event.task_name, event.task_id, event.message)
        if self.enricher is None:
            return None
        if event.task_id in self._distributions:
            return "duplicate"
        follow = asyncio.get_running_loop().create_task(self._distribution_outcome(event, self.enricher))
        self._distributions[event.task_id] = follow
        follow.add_done_callback(lambda _: self._distributions.pop(event.task_id, None))
        return None

    async def _distribution_outcome(self, event: TaskEvent, enricher: TaskEnricher) -> None:
        settings = self.settings
        deadline = time.monotonic() + settings.distribution_wait_seconds
        while True:
            try:
                found = await enricher.repository.task_with_last_result(event.task_id)
            except (QrsError, TimeoutError) as exc:
                log.warning(
                    "distribution task %s: its result not read from QRS (%s); asking again",
                    event.task_id,
                    exc,
                )
                found = None
            status = found.last_result.status if found is not None else None
            outcome = DISTRIBUTION_OUTCOMES.get(status) if status is not None else None
            if outcome is not None:
                self.submit(dataclasses.replace(event, outcome=outcome))
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(settings.distribution_poll_seconds)
        log.warning(
            "distribution task %s (%s) had not ended after %g hours: no alert is made for it",
            event.task_name,
            event.task_id,
            settings.distribution_wait_seconds / 3600,
        )

    def _dedup_key(self, event: TaskEvent) -> str | None:
        """What makes two events the same; None when they are not deduplicated."""
        return f"{event.execution_id} {event.outcome}" if self.settings.dedup and event.execution_id else None

    def _forget_expired(self, now: float) -> None:
        while self._expiring and (self._expiring[0][0] <= now or len(self._expiring) > MAX_REMEMBERED):
            expires, key = self._expiring.popleft()
            if self._held.get(key) == expires:
                del self._held[key]

    def _shared_key(self, event: TaskEvent) -> str:
        """What identifies the event on every Butler: the execution and outcome, else the datagram."""
        if event.execution_id:
            return f"{event.execution_id} {event.outcome}"
        fields = "\x1f".join(str(v) for v in dataclasses.astuple(event))
        return "datagram " + hashlib.sha256(fields.encode()).hexdigest()

    async def _work(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._take(event)
            except Exception:  # a bug must not stop the worker
                log.exception("task event %s of task %s could not be handled", event.outcome, event.task_id)

    async def _take(self, event: TaskEvent) -> None:
        key = self._dedup_key(event)
        shared: str | None = None
        if self.sharing is not None:
            shared = self._shared_key(event)
            if not await self.sharing.claim(shared):
                self._remember(key)
                self._set_aside(event, shared)
                return
        try:
            await self._handle(event, key, shared)
        except Exception:
            if shared is not None and self.sharing is not None:
                self.sharing.give_up(shared)  # another Butler may do better with it
            raise

    def _remember(self, key: str | None) -> None:
        """Hold ``key`` for the deduplication time from now."""
        if key is not None and key in self._held:
            expires = time.monotonic() + self.settings.dedup_seconds
            self._held[key] = expires
            self._expiring.append((expires, key))

    def _set_aside(self, event: TaskEvent, shared: str, held_seconds: float | None = None) -> None:
        """Look at ``event`` again once its claim, held ``held_seconds`` more (a whole claim when not
        known), has expired."""
        assert self.sharing is not None
        if len(self._watched) >= MAX_WATCHED:
            self.not_watched += 1
            return
        if held_seconds is None:
            held_seconds = self.sharing.claim_ms / 1000
        self._watch_number += 1
        heapq.heappush(
            self._watched, (time.monotonic() + held_seconds + 0.1, self._watch_number, event, shared)
        )

    async def _watch(self) -> None:
        """Take over the events whose claim expired without being marked done."""
        sharing = self.sharing
        assert sharing is not None
        while True:
            if not self._watched:
                await asyncio.sleep(0.2)
                continue
            due, _, event, shared = self._watched[0]
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.2))
                continue
            heapq.heappop(self._watched)
            try:
                state, held_seconds = await sharing.state(shared)
            except SharingUnavailable:
                state, held_seconds = None, 0.0  # better twice than never: the claim below lets it through
            if state == "done":
                continue
            if state is not None:  # still claimed (extended, or claimed again): look when that ends
                self._set_aside(event, shared, held_seconds)
                continue
            if await sharing.claim(shared):
                sharing.taken_over += 1
                log.warning(
                    "task event %s of task %s: the Butler that claimed it did not finish it; handled here",
                    event.outcome,
                    event.task_id,
                )
                await self._handle(event, None, shared)
            else:
                self._set_aside(event, shared)

    def _mark_done(self, shared: str) -> None:
        assert self.sharing is not None
        marking = asyncio.get_running_loop().create_task(self.sharing.done(shared))
        self._marking.add(marking)
        marking.add_done_callback(self._marking.discard)

    async def _handle(self, event: TaskEvent, key: str | None, shared: str | None) -> None:
        try:
            outcome = (
                await self.enricher.enrich(event)
                if self.enricher is not None
                else TaskOutcome(event, missing=["task", "app", "executionResult"], error="no QRS connection")
            )
        except Exception:  # a bug must not stop the worker; the event may come again
            log.exception("task event %s of task %s could not be handled", event.outcome, event.task_id)
            if key is not None:
                self._held.pop(key, None)
            if shared is not None and self.sharing is not None:
                self.sharing.give_up(shared)
            return
        self._remember(key)
        self.handled += 1
        self.partial += outcome.partial
        kind = (outcome.task_type, event.outcome)
        self.by_outcome[kind] = self.by_outcome.get(kind, 0) + 1
        log.log(
            logging.DEBUG if event.outcome == "success" else logging.INFO,
            "%s task '%s' (app '%s') %s on %s, execution %s%s",
            outcome.task_type or "",
            outcome.task_name,
            outcome.app_name,
            event.outcome,
            event.host,
            event.execution_id or "-",
            f"; partial, missing {', '.join(outcome.missing)}" if outcome.partial else "",
        )
        if shared is not None:
            self.bus.publish(outcome, functools.partial(self._mark_done, shared))
        else:
            self.bus.publish(outcome)
