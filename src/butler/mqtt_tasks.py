"""Starting Sense tasks from MQTT messages on ``Butler.mqttConfig.taskStartTopic``.

A payload that is a task id (upstream's format; any case) starts that task. A JSON payload may carry what a
REST caller can send: either the REST body (an array of ``starttaskid``, ``starttasktag``,
``starttaskcustomproperty`` and ``keyvaluestore`` items) or ``{"taskId": ..., "items": [...],
"allTaskIdsMustExist": ...}``. Both go through the task-start service the REST API uses, so
``Butler.startTaskFilter`` applies here too (upstream's MQTT path ignores it).

The outcome of every message is published on ``taskStartResultTopic`` as JSON:
``{"request": <payload>, "result": <the REST answer>}`` or ``{"request": <payload>, "error": "..."}``; the
error says what to fix, with the place of a bad item as ``items/<index>/...`` (``result_error``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from butler.audit import AuditLog, bounded, started_of, task_items
from butler.errors import BadRequest, ButlerError
from butler.mqtt import MqttClient
from butler.task_start import TaskStarter

log = logging.getLogger("butler.mqtt")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MAX_PAYLOAD = 1024 * 1024
#: Where a message carries the items the task-start service checks.
ITEMS = "items"
#: Told to the sender of a message Butler failed on (a REST caller would get a 500).
FAULT = "Butler failed on this message (Internal Server Error); see Butler's log"


def result_error(exc: BaseException) -> str | None:
    """What a result message says of ``exc``: the message of an error of Butler's services and clients, with
    a bad item's place among the message's items; None for a fault of Butler's own."""
    if isinstance(exc, BadRequest):
        return exc.located(ITEMS)
    if isinstance(exc, ButlerError):
        return str(exc)
    return None


class MqttTaskStarts:
    """Task starts asked for on ``taskStartTopic``: each message goes to the task starter (the allow-list
    applies), and its outcome, or what was wrong with it, is published on ``taskStartResultTopic``."""

    def __init__(self, starter: TaskStarter, mqtt: MqttClient, audit: AuditLog | None = None) -> None:
        self.starter = starter
        self.mqtt = mqtt
        self.audit = audit
        self.handled = 0

    async def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.mqtt.settings.task_start_topic:
            return
        self.handled += 1
        text = payload[:_MAX_PAYLOAD].decode("utf-8", errors="replace").strip()
        answer: dict[str, Any] = {"request": text[:1000]}
        target: dict[str, Any] = {}
        try:
            if len(payload) > _MAX_PAYLOAD:
                # Cut, it would be "not JSON", which does not tell the sender what to fix.
                raise BadRequest(
                    f"the payload has {len(payload):,} bytes; a task-start message may have at most "
                    f"{_MAX_PAYLOAD:,} (1 MiB), as a REST body"
                )
            answer["result"] = (await self._start(text, target)).as_dict()
        except Exception as exc:
            error = result_error(exc)
            if error is None:
                # A fault of Butler's: the sender still hears of it.
                log.exception("MQTT task start %r failed", text[:100])
                error = FAULT
            else:
                log.warning("MQTT task start %r: %s", text[:100], error)
            answer["error"] = error
        self.mqtt.enqueue(self.mqtt.settings.task_start_result_topic, orjson.dumps(answer))
        if self.audit is not None:
            # MQTT names no caller: the topic says where the message came in.
            outcome = started_of(answer["result"]) if "result" in answer else bounded(answer["error"])
            self.audit.record(
                "mqttStartTasks", caller=f"mqtt {bounded(topic)}", target=target, outcome=outcome
            )

    async def _start(self, text: str, target: dict[str, Any]) -> Any:
        """Start what ``text`` asks for; ``target`` is given what it names, for the audit log."""
        if _UUID.fullmatch(text):
            target["taskId"] = text.lower()
            return await self.starter.start(text.lower(), [])
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadRequest("the payload is neither a task id nor JSON") from None
        if isinstance(request, list):
            target.update(task_items(request))
            return await self.starter.start("-", request)
        if isinstance(request, dict):
            task_id = request.get("taskId", "-")
            if not isinstance(task_id, str):
                raise BadRequest("taskId must be a string")
            must_exist = request.get("allTaskIdsMustExist", False) is True
            target["taskId"] = bounded(task_id)
            if isinstance(request.get("items"), list):
                target.update(task_items(request["items"]))
            return await self.starter.start(
                task_id.lower() if _UUID.fullmatch(task_id) else task_id,
                request.get("items", []),
                must_exist,
            )
        raise BadRequest("the JSON payload must be an array of items or an object")
