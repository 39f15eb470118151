"""The scheduler: upstream's eight ``/v4/schedules`` routes with their answers and status codes, plus
``PUT /v4/schedules/{scheduleId}`` (update; upstream has the flag, not the route) and
``GET /v4/schedules/{scheduleId}/runs`` (the last fires and the next ones)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from butler.errors import NotFound
from butler.http.errors import HttpError
from butler.http.routing import TEXT_TYPE, ApiRequest, Reply, Route, json_reply
from butler.scheduler.store import FIELDS
from butler.services import Services

if TYPE_CHECKING:
    from butler.scheduler.service import Job, SchedulerService

#: The fields upstream's list answer has (its schema drops any other), id and created first.
LISTED = ("id", "created", *(name for name in FIELDS if name not in ("id", "created")))


def _text(data: Any, status: int = 200) -> Reply:
    # Upstream answers these as text/plain holding JSON; Qlik load scripts read them so.
    return Reply(status, orjson.dumps(data), TEXT_TYPE)


def routes(services: Services) -> list[Route]:
    def scheduler() -> SchedulerService:
        if services.scheduler is None:
            raise HttpError(503, "The scheduler is not running")
        return services.scheduler

    def listed(job: Job) -> dict[str, Any]:
        whole = job.schedule.as_dict()
        entry = {key: whole[key] for key in LISTED if key in whole}
        # Additions: whether it can run, when it fires next and how its last fires went.
        entry["nextFires"] = scheduler().next_fires(job)
        if job.problem is not None:
            entry["problem"] = job.problem
        entry.update(history(job))
        return entry

    def history(job: Job) -> dict[str, Any]:
        return {"fires": job.fires, "runs": [run.as_dict() for run in reversed(job.runs)]}

    async def get_schedules(request: ApiRequest) -> Reply:
        await scheduler().ready()
        ident = request.query.get("id")
        if ident is None:
            return json_reply([listed(job) for job in scheduler().jobs.values()])
        try:
            job = scheduler().get(ident)
        except NotFound:
            raise HttpError(400, f"REST SCHEDULER: Schedule ID {ident} not found.") from None
        return _text([job.schedule.as_dict()])

    async def create(request: ApiRequest) -> Reply:
        job = await scheduler().create(dict(request.body))
        return _text(job.schedule.as_dict(), 201)

    async def update(request: ApiRequest) -> Reply:
        ident = request.params["scheduleId"]
        try:
            job = await scheduler().update(ident, dict(request.body))
        except NotFound:
            raise HttpError(400, f"REST SCHEDULER: Update for schedule ID {ident} failed.") from None
        return _text(job.schedule.as_dict())

    async def delete(request: ApiRequest) -> Reply:
        ident = request.params["scheduleId"]
        try:
            await scheduler().delete(ident)
        except NotFound:
            raise HttpError(400, f"REST SCHEDULER: Delete for schedule ID {ident} failed.") from None
        return Reply(204)

    def state_change(state: str, verb: str) -> Any:
        async def change(request: ApiRequest) -> Reply:
            ident = request.params["scheduleId"]
            try:
                job = await scheduler().set_state(ident, state)
            except NotFound:
                raise HttpError(400, f"REST SCHEDULER: Failed {verb} schedule ID {ident}.") from None
            return _text([job.schedule.as_dict()])

        return change

    def all_change(state: str) -> Any:
        async def change(request: ApiRequest) -> Reply:
            return _text([job.schedule.as_dict() for job in await scheduler().set_all(state)])

        return change

    async def status(request: ApiRequest) -> Reply:
        await scheduler().ready()
        lines = [
            f"'{job.schedule.id}': {job.schedule.cronSchedule}: {'Running' if job.running else 'Stopped'}"
            for job in scheduler().jobs.values()
            if job.cron is not None
        ]
        return Reply(200, ("{\n" + "".join(line + "\n" for line in lines) + "}").encode(), TEXT_TYPE)

    async def runs(request: ApiRequest) -> Reply:
        await scheduler().ready()
        ident = request.params["scheduleId"]
        job = scheduler().get(ident)
        return json_reply({"id": ident, "nextFires": scheduler().next_fires(job), **history(job)})

    return [
        Route("GET", "/v4/schedules", get_schedules, flag="scheduler.getSchedule"),
        Route("POST", "/v4/schedules", create, flag="scheduler.createNewSchedule"),
        Route("GET", "/v4/schedules/status", status, flag="scheduler.getScheduleStatusAll"),
        Route("PUT", "/v4/schedules/startall", all_change("started"), flag="scheduler.startSchedule"),
        Route("PUT", "/v4/schedules/stopall", all_change("stopped"), flag="scheduler.stopSchedule"),
        Route("PUT", "/v4/schedules/{scheduleId}", update, flag="scheduler.updateSchedule"),
        Route("DELETE", "/v4/schedules/{scheduleId}", delete, flag="scheduler.deleteSchedule"),
        Route(
            "PUT",
            "/v4/schedules/{scheduleId}/start",
            state_change("started", "starting"),
            flag="scheduler.startSchedule",
        ),
        Route(
            "PUT",
            "/v4/schedules/{scheduleId}/stop",
            state_change("stopped", "stopping"),
            flag="scheduler.stopSchedule",
        ),
        Route("GET", "/v4/schedules/{scheduleId}/runs", runs, flag="scheduler.getSchedule"),
    ]
