"""Starting Sense tasks: ``PUT|POST /v4/reloadtask/{taskId}/start`` and the old ``/v2/senseStartTask``."""

from __future__ import annotations

import orjson

from butler.http.errors import HttpError
from butler.http.routing import TEXT_TYPE, ApiRequest, Reply, Route, json_reply
from butler.services import Services
from butler.task_start import TASK_ID

MISSING_ID = 'Required parameter (task ID) missing. Should be a task ID or "-" if task info is passed in body'
#: Seconds ``?wait=true`` waits when no ``timeout`` is given.
DEFAULT_WAIT = 300.0


def routes(services: Services) -> list[Route]:
    starter = services.task_starter
    if starter is None:  # the endpoint is switched off
        return []

    async def start(request: ApiRequest) -> Reply:
        task_id = request.params["taskId"]
        if not task_id:
            raise HttpError(400, MISSING_ID)
        query = request.query
        wait = float(query.get("timeout", DEFAULT_WAIT)) if query.get("wait") else None
        outcome = await starter.start(task_id, request.body, bool(query.get("allTaskIdsMustExist")), wait)
        # Upstream sends this answer as pretty-printed JSON text with a text/plain content type.
        return Reply(200, orjson.dumps(outcome.as_dict(), option=orjson.OPT_INDENT_2), TEXT_TYPE)

    async def v2_start(request: ApiRequest) -> Reply:
        task_id = request.query["taskId"]
        outcome = await starter.start(task_id, [])
        if outcome.invalid or outcome.denied or outcome.start_failed:
            problem = (
                "denied by Butler.startTaskFilter" if outcome.denied else "not a task that could be started"
            )
            raise HttpError(400, f"Task {task_id}: {problem}")
        return json_reply({"taskId": task_id})

    async def status(request: ApiRequest) -> Reply:
        task_id = request.params["taskId"]
        if not TASK_ID.fullmatch(task_id):
            raise HttpError(400, f"Not a task id (a lowercase GUID): {task_id}")
        execution_id = request.query.get("executionId")
        if execution_id is None:
            result = await starter.watcher.last_result(task_id)
            if result is None:
                raise HttpError(404, f"Task {task_id} not found in Qlik Sense")
            return json_reply(result)
        # Execution session ids are QRS GUIDs, written as task ids are.
        if not TASK_ID.fullmatch(execution_id):
            raise HttpError(400, f"Not an execution id (a lowercase GUID): {execution_id}")
        run = await starter.watcher.run(task_id, execution_id)
        if run is None:
            raise HttpError(404, f"No run {execution_id} of task {task_id} in Qlik Sense")
        return json_reply({"taskId": task_id, **run})

    return [
        Route("GET", "/v4/reloadtask/{taskId}/status", status),
        Route("PUT", "/v4/reloadtask/{taskId}/start", start),
        Route("POST", "/v4/reloadtask/{taskId}/start", start),
        Route("GET", "/v2/senseStartTask", v2_start),
    ]
