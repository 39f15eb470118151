"""Starting Sense tasks: ``PUT|POST /v4/reloadtask/{taskId}/start`` and the old ``/v2/senseStartTask``."""

from __future__ import annotations

import orjson

from butler.http.errors import HttpError
from butler.http.routing import TEXT_TYPE, ApiRequest, Reply, Route, json_reply
from butler.qlik.qrs import QrsError, QrsTimeout
from butler.routes import RouteContext
from butler.task_start import TaskRequestError

MISSING_ID = 'Required parameter (task ID) missing. Should be a task ID or "-" if task info is passed in body'
ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (TaskRequestError, 400),
    (QrsTimeout, 504),
    (QrsError, 502),
)


def routes(context: RouteContext) -> list[Route]:
    starter = context.task_starter
    if starter is None:  # the endpoint is switched off
        return []

    async def start(request: ApiRequest) -> Reply:
        task_id = request.params["taskId"]
        if not task_id:
            raise HttpError(400, MISSING_ID)
        outcome = await starter.start(task_id, request.body, bool(request.query.get("allTaskIdsMustExist")))
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

    return [
        Route("PUT", "/v4/reloadtask/{taskId}/start", start, errors=ERRORS),
        Route("POST", "/v4/reloadtask/{taskId}/start", start, errors=ERRORS),
        Route("GET", "/v2/senseStartTask", v2_start, errors=ERRORS),
    ]
