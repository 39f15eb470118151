"""Starting Sense tasks from MQTT messages on ``Butler.mqttConfig.taskStartTopic``.

A payload that is a task id (upstream's format; any case) starts that task. A JSON payload may carry what a
REST caller can send: either the REST body (an array of ``starttaskid``, ``starttasktag``,
``starttaskcustomproperty`` and ``keyvaluestore`` items) or ``{"taskId": ..., "items": [...],
"allTaskIdsMustExist": ...}``. Both go through the task-start service the REST API uses, so
``Butler.startTaskFilter`` applies here too (upstream's MQTT path ignores it).

The outcome of every message is published on ``taskStartResultTopic`` as JSON:
``{"request": <payload>, "result": <the REST answer>}`` or ``{"request": <payload>, "error": "..."}``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from butler.kvstore import KeyValueError
from butler.mqtt import MqttClient
from butler.qlik.qrs import QrsError
from butler.task_start import TaskRequestError, TaskStarter

log = logging.getLogger("butler.mqtt")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MAX_PAYLOAD = 1024 * 1024


class MqttTaskStarts:
    def __init__(self, starter: TaskStarter, mqtt: MqttClient) -> None:
        self.starter = starter
        self.mqtt = mqtt
        self.handled = 0

    async def on_message(self, topic: str, payload: bytes) -> None:
        if topic != self.mqtt.settings.task_start_topic:
            return
        self.handled += 1
        text = payload[:_MAX_PAYLOAD].decode("utf-8", errors="replace").strip()
        answer: dict[str, Any] = {"request": text[:1000]}
        try:
            if len(payload) > _MAX_PAYLOAD:
                # Cut, it would be "not JSON", which does not tell the sender what to fix.
                raise TaskRequestError(
                    f"the payload has {len(payload):,} bytes; a task-start message may have at most "
                    f"{_MAX_PAYLOAD:,} (1 MiB), as a REST body"
                )
            answer["result"] = (await self._start(text)).as_dict()
        except (TaskRequestError, QrsError, KeyValueError) as exc:
            log.warning("MQTT task start %r: %s", text[:100], exc)
            answer["error"] = str(exc)
        except Exception:
            # A fault of Butler's: the sender still hears of it (a REST caller would get a 500).
            log.exception("MQTT task start %r failed", text[:100])
            answer["error"] = "Butler failed on this message (Internal Server Error); see Butler's log"
        self.mqtt.enqueue(self.mqtt.settings.task_start_result_topic, orjson.dumps(answer))

    async def _start(self, text: str) -> Any:
        if _UUID.fullmatch(text):
            return await self.starter.start(text.lower(), [])
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise TaskRequestError("the payload is neither a task id nor JSON") from None
        if isinstance(request, list):
            return await self.starter.start("-", _items(request))
        if isinstance(request, dict):
            task_id = request.get("taskId", "-")
            if not isinstance(task_id, str):
                raise TaskRequestError("taskId must be a string")
            must_exist = request.get("allTaskIdsMustExist", False) is True
            return await self.starter.start(
                task_id.lower() if _UUID.fullmatch(task_id) else task_id,
                _items(request.get("items", [])),
                must_exist,
            )
        raise TaskRequestError("the JSON payload must be an array of items or an object")


def _items(items: Any) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise TaskRequestError("items must be an array of objects")
    if len(items) > 1000:
        raise TaskRequestError("at most 1000 items")
    for index, item in enumerate(items):
        if item.get("type") not in (
            None,
            "keyvaluestore",
            "starttaskid",
            "starttasktag",
            "starttaskcustomproperty",
        ):
            raise TaskRequestError(
                f"items/{index}/type must be one of keyvaluestore, starttaskid, starttasktag, "
                "starttaskcustomproperty"
            )
    return items
