"""Starting Sense tasks by id, tag or custom property, with the allow-list filter, and passing key-value
parameters to the apps they reload. Shared by the REST API, MQTT and the scheduler; knows nothing of HTTP.

What callers see follows upstream Butler (the task-start examples of its documentation give the same
answers here), with these differences:

- only tasks QRS confirmed are started, as upstream's documentation says: every requested id is looked
  up in one QRS call (chunked for long lists) while the tag and custom-property lookups run, and what
  they found is started in one ``task/start/many`` call: two QRS round trips;
- each start waits for QRS to accept it: a task QRS refused is not reported as started but listed under
  ``tasksStartFailed`` with Qlik's status and message (the key is present only when not empty);
- a task asked for several times in one request is listed each time, as upstream lists it, but started
  once;
- a QRS that cannot be reached or does not answer is an error of the whole request (QrsError), not a
  list of "invalid" tasks; the lookups and starts of a request share one deadline (``timeoutSeconds``),
  after which the request fails with QrsTimeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from butler.config.settings import StartTaskFilter
from butler.errors import BadRequest
from butler.executions import FINAL, ExecutionWatcher
from butler.kvstore import InvalidPair, KeyValueStore, check_pair
from butler.qlik.qrs import QrsError, QrsTimeout
from butler.qlik.repository import Refusal, Repository, Task

log = logging.getLogger("butler.tasks")

#: Upstream's task-id rule: a lowercase GUID (version 0-5, variant 0/8/9/a/b).
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-5][0-9a-f]{3}-[089ab][0-9a-f]{3}-[0-9a-f]{12}")

#: How a start ended: (None, session id or None) when QRS accepted it, else (why not, None).
StartResult = tuple[Refusal | None, str | None]
#: A request's task lookups by what they look for.
_Lookups = dict[tuple[str, ...], "asyncio.Future[list[Task]]"]


class TaskRequestError(BadRequest, ValueError):
    """A malformed item in a task-start request; ``at`` says which, the message what to fix."""


#: Most items one request may carry.
MAX_ITEMS = 1000
#: What an item's ``type`` may be; an item without one is skipped, as upstream skips it.
ITEM_TYPES = (None, "keyvaluestore", "starttaskid", "starttasktag", "starttaskcustomproperty")


@dataclass
class StartOutcome:
    """The answer to a task-start request, in upstream's shape."""

    started: list[dict[str, str]] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    denied: list[dict[str, str]] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    tags_denied: list[dict[str, str]] = field(default_factory=list)
    custom_properties: list[dict[str, str]] = field(default_factory=list)
    custom_properties_denied: list[dict[str, str]] = field(default_factory=list)
    start_failed: list[dict[str, Any]] = field(default_factory=list)
    executions: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "tasksId": {"started": self.started, "invalid": self.invalid, "denied": self.denied},
            "tasksTag": self.tags,
            "tasksTagDenied": self.tags_denied,
            "tasksCP": self.custom_properties,
            "tasksCPDenied": self.custom_properties_denied,
        }
        if self.start_failed:
            answer["tasksStartFailed"] = self.start_failed
        if self.executions is not None:
            answer["executions"] = self.executions
        return answer


def js_string(value: Any) -> str:
    """A key-value item's value as text: strings as they are, JSON for the rest."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return orjson.dumps(value).decode()


#: What ``TaskStarter.counts`` counts.
START_COUNTS = ("started", "failed", "denied", "invalid", "error")


class TaskStarter:
    """Butler's task-start logic: what to look up, what may start, and the answer in upstream's shape."""

    def __init__(
        self,
        repository: Repository,
        task_filter: StartTaskFilter,
        key_values: KeyValueStore | None,
        poll_seconds: float = 0.5,
    ) -> None:
        self.repository = repository
        self.filter = task_filter
        self.key_values = key_values
        self.watcher = ExecutionWatcher(repository, poll_seconds)
        #: Tasks by what became of them (started, failed, denied, invalid) since start-up, and ``error``:
        #: requests that failed as a whole (a caller's mistake, QRS unavailable or too slow).
        self.counts = dict.fromkeys(START_COUNTS, 0)

    async def start(
        self,
        url_task_id: str,
        items: Any,
        all_ids_must_exist: bool = False,
        wait_seconds: float | None = None,
    ) -> StartOutcome:
        """Start what the request asks for. With ``wait_seconds``, start synchronously and wait up to that
        long for the runs to end, reporting each run under ``executions``."""
        try:
            return await self._start(url_task_id, items, all_ids_must_exist, wait_seconds)
        except Exception:
            self.counts["error"] += 1
            raise

    async def _start(
        self, url_task_id: str, items: Any, all_ids_must_exist: bool, wait_seconds: float | None
    ) -> StartOutcome:
        outcome = StartOutcome()
        requested: list[str] = [] if url_task_id == "-" else [url_task_id]
        tags: list[str] = []
        properties: list[tuple[str, str]] = []
        pairs: list[tuple[str, str, str, int]] = []
        for index, item in enumerate(_check_items(items)):
            kind = item.get("type")
            if kind is None:
                continue
            payload = item.get("payload")
            if not isinstance(payload, dict):
                raise TaskRequestError("must be object", at=f"{index}/payload")
            if kind == "starttaskid":
                requested.append(_text(payload, "taskId", index))
            elif kind == "starttasktag":
                tags.append(_text(payload, "tag", index))
            elif kind == "starttaskcustomproperty":
                properties.append(
                    (
                        _text(payload, "customPropertyName", index),
                        _text(payload, "customPropertyValue", index),
                    )
                )
            elif kind == "keyvaluestore":
                pair = _pair(payload, index)
                if pair is not None:
                    pairs.append(pair)

        # Stored before any task starts: the apps read them when they reload.
        await self._store_pairs(pairs)
        waiting = wait_seconds is not None
        with self.repository.deadline():
            startable = list(dict.fromkeys(t for t in requested if self._may_start(t)))
            names_lookup = asyncio.ensure_future(self._names(startable))
            lookups: _Lookups = {}
            try:
                found = await asyncio.gather(
                    *(self._lookup_tag(tag, outcome, lookups) for tag in tags),
                    *(self._lookup_property(name, value, outcome, lookups) for name, value in properties),
                )
                names = await names_lookup
            except BaseException:
                names_lookup.cancel()
                await asyncio.gather(names_lookup, return_exceptions=True)
                raise
            candidates = self._classify(requested, names, outcome)
            if all_ids_must_exist and outcome.invalid:
                outcome.denied.extend({"taskId": c["taskId"]} for c in candidates)
            else:
                outcome.started.extend(candidates)
            for matches in found[: len(tags)]:
                outcome.tags.extend(matches)
            for matches in found[len(tags) :]:
                outcome.custom_properties.extend(matches)
            # Only what the lookups confirmed, each task once.
            confirmed = [e["taskId"] for e in (*outcome.started, *outcome.tags, *outcome.custom_properties)]
            results = await self._start_batch(list(dict.fromkeys(confirmed)), waiting)
        self._settle(outcome, results)
        counts = self.counts
        counts["started"] += len(results) - len(outcome.start_failed)
        counts["failed"] += len(outcome.start_failed)
        counts["denied"] += (
            len(outcome.denied) + len(outcome.tags_denied) + len(outcome.custom_properties_denied)
        )
        counts["invalid"] += len(outcome.invalid)
        if waiting:
            sessions = {task_id: session for task_id, (_, session) in results.items() if session}
            listed = {
                e["taskId"]: e["taskName"]
                for e in (*outcome.started, *outcome.tags, *outcome.custom_properties)
            }
            outcome.executions = await self._wait(
                {t: s for t, s in sessions.items() if t in listed}, listed, wait_seconds or 0
            )
        return outcome

    # -- looking tasks up -----------------------------------------------------------------------------

    def _may_start(self, task_id: str) -> bool:
        return bool(TASK_ID.fullmatch(task_id)) and (
            not self.filter.enable or task_id in self.filter.task_ids
        )

    def _classify(
        self, requested: list[str], names: dict[str, str], outcome: StartOutcome
    ) -> list[dict[str, str]]:
        """Sort requested ids, in request order, into invalid, denied, and candidates with their names."""
        candidates = []
        for task_id in requested:
            if not TASK_ID.fullmatch(task_id):
                outcome.invalid.append({"taskId": task_id})
            elif self.filter.enable and task_id not in self.filter.task_ids:
                outcome.denied.append({"taskId": task_id})
            elif task_id in names:
                candidates.append({"taskId": task_id, "taskName": names[task_id]})
            else:
                outcome.invalid.append({"taskId": task_id})
        return candidates

    async def _names(self, task_ids: list[str]) -> dict[str, str]:
        return {task.id: task.name for task in await self.repository.tasks_by_ids(task_ids)}

    async def _lookup_tag(self, tag: str, outcome: StartOutcome, lookups: _Lookups) -> list[dict[str, str]]:
        if self.filter.enable and tag not in self.filter.tags:
            outcome.tags_denied.append({"tag": tag})
            return []
        return await self._matching(("tag", tag), lookups, lambda: self.repository.tasks_by_tag(tag))

    async def _lookup_property(
        self,
        name: str,
        value: str,
        outcome: StartOutcome,
        lookups: _Lookups,
    ) -> list[dict[str, str]]:
        if self.filter.enable and (name, value) not in self.filter.custom_properties:
            outcome.custom_properties_denied.append({"name": name, "value": value})
            return []
        return await self._matching(
            ("customProperty", name, value),
            lookups,
            lambda: self.repository.tasks_by_custom_property(name, value),
        )

    async def _matching(
        self,
        key: tuple[str, ...],
        lookups: _Lookups,
        lookup: Callable[[], Coroutine[Any, Any, list[Task]]],
    ) -> list[dict[str, str]]:
        """The tasks a lookup finds. ``lookups`` holds the request's lookups by what they look for, so a
        tag or custom property named several times in one request costs one QRS call."""
        if key not in lookups:
            lookups[key] = asyncio.ensure_future(lookup())
        return [{"taskId": task.id, "taskName": task.name} for task in await lookups[key]]

    # -- acting -----------------------------------------------------------------------------------------

    async def _store_pairs(self, pairs: list[tuple[str, str, str, int]]) -> None:
        if not pairs:
            return
        if self.key_values is None:
            log.warning("task start: key-value items ignored, the key-value store is not enabled")
            return
        # Stored before any task starts: the apps read them when they reload.
        for namespace, key, value, ttl in pairs:
            await self.key_values.set(namespace, key, value, ttl)

    def _settle(self, outcome: StartOutcome, results: dict[str, StartResult]) -> None:
        """Move the tasks QRS refused out of the started lists and into ``start_failed``."""
        listed = [outcome.started, outcome.tags, outcome.custom_properties]
        names = {e["taskId"]: e["taskName"] for entries in listed for e in entries}
        failed = {
            task_id: problem for task_id, (problem, _) in results.items() if problem and task_id in names
        }
        if not failed:
            return
        for entries in listed:
            entries[:] = [e for e in entries if e["taskId"] not in failed]
        outcome.start_failed.extend(
            {"taskId": task_id, "taskName": names[task_id], **problem.as_dict()}
            for task_id, problem in failed.items()
        )

    async def _wait(
        self, sessions: dict[str, str], names: dict[str, str], seconds: float
    ) -> list[dict[str, Any]]:
        reports: dict[str, dict[str, Any]] = {task_id: {} for task_id in sessions}
        followers = [
            asyncio.ensure_future(self.watcher.follow(task_id, session, reports[task_id]))
            for task_id, session in sessions.items()
        ]
        if followers:
            done, pending = await asyncio.wait(followers, timeout=seconds)
            for follower in pending:
                follower.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for follower in done:
                follower.exception()  # a QRS error while following leaves the report as it was
        return [
            {
                "taskId": task_id,
                "taskName": names[task_id],
                **report,
                "finished": report.get("statusCode") in FINAL,
            }
            for task_id, report in reports.items()
        ]

    async def _start_batch(self, task_ids: list[str], synchronous: bool) -> dict[str, StartResult]:
        """Start several tasks. Asynchronous starts of several tasks go to QRS in one ``task/start/many``
        call; if QRS refuses that call as a whole, each task is started on its own, so that the ones QRS
        refuses are known. Synchronous starts are one call per task (each gives a session id). QrsTimeout
        when QRS does not answer a start in time: whether the tasks started is not known."""
        if not synchronous and len(task_ids) > 1:
            try:
                accepted = await self.repository.start_many(task_ids)
            except QrsTimeout:
                raise
            except QrsError as exc:
                # The call may have reached QRS: starting the tasks one by one could start them twice.
                log.warning("task/start/many failed: %s", exc)
                return dict.fromkeys(task_ids, (Refusal(exc.status, str(exc)), None))
            if accepted:
                return dict.fromkeys(task_ids, (None, None))
            log.warning("task/start/many refused; starting the tasks one by one")
        results = await asyncio.gather(
            *(self._start_one(task_id, synchronous) for task_id in task_ids), return_exceptions=True
        )
        started: dict[str, StartResult] = {}
        for task_id, result in zip(task_ids, results, strict=True):
            if isinstance(result, BaseException):
                raise result  # after every start has ended, so none is left running unobserved
            started[task_id] = result
        return started

    async def _start_one(self, task_id: str, synchronous: bool) -> StartResult:
        """Start one task: (None, session id or None) once QRS accepted it, else (why not, None)."""
        try:
            answer = await (
                self.repository.start_synchronous(task_id) if synchronous else self.repository.start(task_id)
            )
        except QrsTimeout:
            raise
        except QrsError as exc:
            log.warning("task %s not started: %s", task_id, exc)
            return Refusal(None, str(exc)), None
        if isinstance(answer, Refusal):
            log.warning(
                "task %s not started: QRS answered %s %s", task_id, answer.status, answer.message[:200]
            )
            return answer, None
        return None, answer


def _check_items(items: Any) -> list[dict[str, Any]]:
    """The items of a request, checked against the grammar every front end shares (the REST API's schema
    of the request body says the same)."""
    if not isinstance(items, list):
        raise TaskRequestError("must be array", at="")
    if len(items) > MAX_ITEMS:
        raise TaskRequestError(f"must NOT have more than {MAX_ITEMS} items", at="")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TaskRequestError("must be object", at=str(index))
        if item.get("type") not in ITEM_TYPES:
            raise TaskRequestError("must be equal to one of the allowed values", at=f"{index}/type")
    return items


def _text(payload: dict[str, Any], name: str, index: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise TaskRequestError("must be a non-empty string", at=f"{index}/payload/{name}")
    return value


def _pair(payload: dict[str, Any], index: int) -> tuple[str, str, str, int] | None:
    """A key-value item as (namespace, key, value, ttl); None for an empty string, 0 or false as the value,
    which upstream skips (it tests the value's truth)."""
    where = f"{index}/payload"
    for name in ("namespace", "key", "value"):
        if payload.get(name) is None:
            raise TaskRequestError(f"must have required property '{name}'", at=where)
    namespace, key, value = _name(payload, "namespace", index), _name(payload, "key", index), payload["value"]
    ttl = payload.get("ttl")
    number = math.nan
    if ttl is None or ttl == "":
        number = 0.0
    elif not isinstance(ttl, bool):  # true is not a number of milliseconds
        with contextlib.suppress(TypeError, ValueError):
            number = float(ttl)  # load scripts send numbers as text ("60000")
    if math.isnan(number):
        raise TaskRequestError("must be a number of milliseconds", at=f"{where}/ttl")
    try:
        ttl_ms = check_pair(namespace, key, number)
    except InvalidPair as exc:
        raise TaskRequestError(exc.problem, at=f"{where}/{exc.at}") from None
    if value in ("", False, 0):
        log.warning("task start: key-value item %d skipped: its value is empty, 0 or false", index)
        return None
    return namespace, key, js_string(value), ttl_ms


def _name(payload: dict[str, Any], name: str, index: int) -> str:
    """A namespace or key: a non-empty string, or a number (load scripts send those) as its text."""
    value = payload[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = js_string(value)
    if not isinstance(value, str) or not value:
        raise TaskRequestError("must be a non-empty string", at=f"{index}/payload/{name}")
    return value
