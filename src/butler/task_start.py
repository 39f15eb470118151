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
from dataclasses import dataclass, field
from typing import Any

import orjson

from butler.config.settings import StartTaskFilter
from butler.executions import EMPTY_GUID, FINAL, ExecutionWatcher
from butler.kvstore import InvalidPair, KeyValueStore, check_pair
from butler.qlik.qrs import QrsClient, QrsError, QrsTimeout, quote_filter_value

log = logging.getLogger("butler.tasks")

#: Upstream's task-id rule: a lowercase GUID (version 0-5, variant 0/8/9/a/b).
TASK_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-5][0-9a-f]{3}-[089ab][0-9a-f]{3}-[0-9a-f]{12}")
#: Ids looked up per QRS call; keeps the filter well inside URL length limits.
LOOKUP_CHUNK = 40


#: How a start ended: (None, session id or None) when QRS accepted it, else (what went wrong, None).
StartResult = tuple[dict[str, Any] | None, str | None]


class TaskRequestError(ValueError):
    """A malformed item in a task-start request; the message says which and what to fix."""


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


class TaskStarter:
    def __init__(
        self, qrs: QrsClient, task_filter: StartTaskFilter, key_values: KeyValueStore | None
    ) -> None:
        self.qrs = qrs
        self.filter = task_filter
        self.key_values = key_values
        self.watcher = ExecutionWatcher(qrs)

    async def start(
        self,
        url_task_id: str,
        items: list[dict[str, Any]],
        all_ids_must_exist: bool = False,
        wait_seconds: float | None = None,
    ) -> StartOutcome:
        """Start what the request asks for. With ``wait_seconds``, start synchronously and wait up to that
        long for the runs to end, reporting each run under ``executions``."""
        outcome = StartOutcome()
        requested: list[str] = [] if url_task_id == "-" else [url_task_id]
        tags: list[str] = []
        properties: list[tuple[str, str]] = []
        pairs: list[tuple[str, str, str, int]] = []
        for index, item in enumerate(items):
            kind = item.get("type")
            if kind is None:
                continue
            payload = item.get("payload")
            if not isinstance(payload, dict):
                raise TaskRequestError(f"body/{index}/payload must be object")
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
        with self.qrs.deadline():
            startable = list(dict.fromkeys(t for t in requested if self._may_start(t)))
            names_lookup = asyncio.ensure_future(self._names(startable))
            lookups: dict[str, asyncio.Future[Any]] = {}
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
        chunks = [task_ids[i : i + LOOKUP_CHUNK] for i in range(0, len(task_ids), LOOKUP_CHUNK)]
        results = await asyncio.gather(
            *(
                self.qrs.get_json("task", {"filter": " or ".join(f"id eq {task_id}" for task_id in chunk)})
                for chunk in chunks
            )
        )
        return {task["id"]: task["name"] for tasks in results for task in tasks}

    async def _lookup_tag(
        self, tag: str, outcome: StartOutcome, lookups: dict[str, asyncio.Future[Any]]
    ) -> list[dict[str, str]]:
        if self.filter.enable and tag not in self.filter.tags:
            outcome.tags_denied.append({"tag": tag})
            return []
        return await self._matching(f"tags.name eq {quote_filter_value(tag)}", lookups)

    async def _lookup_property(
        self, name: str, value: str, outcome: StartOutcome, lookups: dict[str, asyncio.Future[Any]]
    ) -> list[dict[str, str]]:
        if self.filter.enable and (name, value) not in self.filter.custom_properties:
            outcome.custom_properties_denied.append({"name": name, "value": value})
            return []
        expression = (
            f"(customProperties.definition.name eq {quote_filter_value(name)}) and "
            f"(customProperties.value eq {quote_filter_value(value)})"
        )
        return await self._matching(expression, lookups)

    async def _matching(
        self, expression: str, lookups: dict[str, asyncio.Future[Any]]
    ) -> list[dict[str, str]]:
        """The tasks a QRS filter matches. ``lookups`` holds the request's calls by filter, so a tag or
        custom property named several times in one request costs one QRS call."""
        if expression not in lookups:
            lookups[expression] = asyncio.ensure_future(
                self.qrs.get_json("task/full", {"filter": expression})
            )
        tasks = await lookups[expression]
        return [{"taskId": t["id"], "taskName": t["name"]} for t in tasks]

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

    def _settle(
        self, outcome: StartOutcome, results: dict[str, tuple[dict[str, Any] | None, str | None]]
    ) -> None:
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
            {"taskId": task_id, "taskName": names[task_id], **problem} for task_id, problem in failed.items()
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
                response = await self.qrs.request("POST", "task/start/many", json_body=task_ids)
            except QrsTimeout:
                raise
            except QrsError as exc:
                # The call may have reached QRS: starting the tasks one by one could start them twice.
                log.warning("task/start/many failed: %s", exc)
                return dict.fromkeys(task_ids, ({"status": exc.status, "message": str(exc)}, None))
            if response.status == 204:
                return dict.fromkeys(task_ids, (None, None))
            log.warning("task/start/many answered %s; starting the tasks one by one", response.status)
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
        """Start one task: (None, session id or None) once QRS accepted it, else (what went wrong, None)."""
        path = f"task/{task_id}/start/synchronous" if synchronous else f"task/{task_id}/start"
        try:
            response = await self.qrs.request("POST", path)
        except QrsTimeout:
            raise
        except QrsError as exc:
            log.warning("task %s not started: %s", task_id, exc)
            return {"status": None, "message": str(exc)}, None
        if response.status == 204 and not synchronous:
            return None, None
        if response.status == 201 and synchronous:
            session = str((response.json() or {}).get("value", ""))
            if session and session != EMPTY_GUID:
                return None, session
            return {
                "status": 201,
                "message": "QRS did not start the task (disabled, already running, or no "
                "scheduler available)",
            }, None
        log.warning("task %s not started: QRS answered %s %s", task_id, response.status, response.text[:200])
        return {"status": response.status, "message": response.text[:500]}, None


def _text(payload: dict[str, Any], name: str, index: int) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise TaskRequestError(f"body/{index}/payload/{name} must be a non-empty string")
    return value


def _pair(payload: dict[str, Any], index: int) -> tuple[str, str, str, int] | None:
    """A key-value item as (namespace, key, value, ttl); None for an empty string, 0 or false as the value,
    which upstream skips (it tests the value's truth)."""
    where = f"body/{index}/payload"
    for name in ("namespace", "key", "value"):
        if payload.get(name) is None:
            raise TaskRequestError(f"{where} must have required property '{name}'")
    namespace, key, value = _name(payload, "namespace", index), _name(payload, "key", index), payload["value"]
    ttl = payload.get("ttl")
    number = math.nan
    if ttl is None or ttl == "":
        number = 0.0
    elif not isinstance(ttl, bool):  # true is not a number of milliseconds
        with contextlib.suppress(TypeError, ValueError):
            number = float(ttl)  # load scripts send numbers as text ("60000")
    if math.isnan(number):
        raise TaskRequestError(f"{where}/ttl must be a number of milliseconds")
    try:
        ttl_ms = check_pair(namespace, key, number)
    except InvalidPair as exc:
        raise TaskRequestError(f"{where}/{exc}") from None
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
        raise TaskRequestError(f"body/{index}/payload/{name} must be a non-empty string")
    return value
