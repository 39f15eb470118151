"""The control API (plain HTTP, loopback only) that tests and demos use to watch and steer the site.

GET  /calls                      QRS calls per route, Engine calls per method, task starts, reloads, saves;
                                 qrsReceived: every QRS call per route, faulted ones too, with the statuses;
                                 taskStartRequests: task ids named by start calls, known or not;
                                 requests: the latest requests to QRS and Engine upgrades, oldest first,
                                 each with service, method, path, status ("dropped": cut) and client
POST /calls/reset                zero all counters
GET  /tasks/{id}                 the task as QRS serves it, and whether it is running
PUT  /tasks/{id}/next-run        {"outcome": "success|fail|abort", "durationMs": n, "error": "..."};
                                 "queuedMs": n for a distribution task's time in DistributionQueue
PUT  /apps/{id}/next-reload      the same, for the app's next Engine or QRS reload
POST /sessions                   {"userDirectory", "userId", "proxy"?}: a user opens a session
DELETE /sessions/{id}            the session ends
GET  /sessions                   open sessions
GET  /faults                     current faults
PUT  /faults/{qrs|engine}        {"latency_ms", "status", "ratio", "drop", "down"}; "seed" reseeds the
                                 draws of ratio and drop; "next": [{settings}, ...], one per next call
DELETE /faults                   clear every fault
GET  /nodes                      the site's nodes, each with its services' states
POST /nodes/{node}/services/{service}/stop|start
                                 stop or start a service (repository, proxy, scheduler, engine,
                                 appmigration, printing) on a node named by name or host name
GET  /license                    the server licence as QRS serves it
PUT  /license                    {"expiresInDays": n} or {"validTo": "YYYY-MM-DD"}; {"expired": bool}
GET  /access                     the access-type overview and the allocations of each type, as QRS
                                 serves them
PUT  /access/{professional|analyzer}
                                 {"allocations": [{"user": "DIR\\id", "lastUsed": iso | "lastUsedDaysAgo":
                                 n, "id"?}], "total"?: n}: replace every allocation of the type
POST /access/{professional|analyzer}
                                 {"user", "lastUsed" | "lastUsedDaysAgo", "id"?}: allocate to one user
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from qliksim.faults import SERVICES
from qliksim.licensing import ACCESS_BY_NAME
from qliksim.nodes import SERVICE_TYPES
from qliksim.site import OUTCOMES, RunBehaviour, SiteError
from qliksim.times import now_iso
from qliksim.udp import SessionEvent

if TYPE_CHECKING:
    from qliksim.server import Simulator


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=2))


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def _behaviour(body: dict[str, Any]) -> RunBehaviour:
    outcome = body.get("outcome", "success")
    if outcome not in OUTCOMES:
        raise web.HTTPBadRequest(text=f"outcome must be one of {', '.join(OUTCOMES)}")
    try:
        duration = int(body.get("durationMs", 1000))
        queued = int(body.get("queuedMs", 0))
    except (TypeError, ValueError):
        raise web.HTTPBadRequest(text="durationMs and queuedMs must be numbers") from None
    return RunBehaviour(
        outcome, duration, list(body.get("scriptLog", [])), str(body.get("error", "")), queued
    )


def control_application(simulator: Simulator) -> web.Application:
    site = simulator.site
    scheduler = simulator.scheduler
    routes = web.RouteTableDef()

    @routes.get("/calls")
    async def calls(request: web.Request) -> web.Response:
        return _json(
            {
                "qrs": simulator.qrs.calls,
                "qrsReceived": simulator.qrs.received,
                "taskStartRequests": simulator.qrs.start_requests,
                "qrsConnections": simulator.qrs.connections,
                "engine": simulator.engine.calls,
                "taskStarts": scheduler.started_count,
                "appReloads": scheduler.app_reloads,
                "appReloadKinds": scheduler.reload_kinds,
                "appSaves": simulator.engine.saves,
                "udpSent": simulator.udp.sent,
                "engineSessionsOpen": simulator.engine.open_sessions,
                "faultsInjected": simulator.faults.injected,
                "requests": list(simulator.requests.recent),
            }
        )

    @routes.post("/calls/reset")
    async def reset(request: web.Request) -> web.Response:
        for counter in (
            simulator.qrs.calls,
            simulator.qrs.received,
            simulator.qrs.start_requests,
            simulator.engine.calls,
            scheduler.started_count,
            scheduler.app_reloads,
            scheduler.reload_kinds,
            simulator.engine.saves,
            simulator.requests.recent,
        ):
            counter.clear()
        return web.Response(status=204)

    @routes.get("/tasks/{id}")
    async def task(request: web.Request) -> web.Response:
        found = site.tasks.get(request.match_info["id"])
        if found is None:
            return _error(404, "no such task")
        return _json({"task": found, "running": found["id"] in scheduler.running})

    async def set_next(
        request: web.Request, known: dict[str, Any], plans: dict[str, RunBehaviour]
    ) -> web.Response:
        target = request.match_info["id"]
        if target not in known:
            return _error(404, "no such task or app")
        plans[target] = _behaviour(await _body(request))
        return web.Response(status=204)

    @routes.put("/tasks/{id}/next-run")
    async def next_run(request: web.Request) -> web.Response:
        return await set_next(request, site.tasks, scheduler.next_outcome)

    @routes.put("/apps/{id}/next-reload")
    async def next_reload(request: web.Request) -> web.Response:
        return await set_next(request, site.apps, scheduler.next_app_outcome)

    @routes.post("/sessions")
    async def open_session(request: web.Request) -> web.Response:
        body = await _body(request)
        if not body.get("userDirectory") or not body.get("userId"):
            return _error(400, "userDirectory and userId are required")
        session_id = str(uuid.uuid4())
        event = SessionEvent(
            "Start session",
            str(body.get("proxy", site.hostname)),
            str(body["userDirectory"]),
            str(body["userId"]),
            session_id=session_id,
        )
        simulator.sessions[session_id] = event
        simulator.session_udp.send(event.datagram())
        return _json({"id": session_id}, 201)

    @routes.delete("/sessions/{id}")
    async def close_session(request: web.Request) -> web.Response:
        event = simulator.sessions.pop(request.match_info["id"], None)
        if event is None:
            return _error(404, "no such session")
        event.command = "Stop session"
        simulator.session_udp.send(event.datagram())
        return web.Response(status=204)

    @routes.get("/sessions")
    async def sessions(request: web.Request) -> web.Response:
        return _json(
            [
                {"id": i, "proxy": e.hostname, "userDirectory": e.user_directory, "userId": e.user_id}
                for i, e in simulator.sessions.items()
            ]
        )

    @routes.get("/faults")
    async def faults(request: web.Request) -> web.Response:
        return _json({service: simulator.faults.settings[service].as_dict() for service in SERVICES})

    @routes.put("/faults/{service}")
    async def set_faults(request: web.Request) -> web.Response:
        service = request.match_info["service"]
        if service not in SERVICES:
            return _error(404, f"services are {', '.join(SERVICES)}")
        try:
            settings = simulator.faults.update(service, await _body(request))
        except (TypeError, ValueError) as exc:
            return _error(400, str(exc))
        await simulator.refresh(service)
        return _json(settings.as_dict())

    @routes.delete("/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        simulator.faults.reset()
        for service in SERVICES:
            await simulator.refresh(service)
        return web.Response(status=204)

    @routes.get("/nodes")
    async def nodes(request: web.Request) -> web.Response:
        return _json([node.as_dict() for node in site.nodes])

    @routes.post(r"/nodes/{node}/services/{service}/{action:start|stop}")
    async def start_stop(request: web.Request) -> web.Response:
        node, service = request.match_info["node"], request.match_info["service"].lower()
        try:
            await simulator.set_running(node, service, request.match_info["action"] == "start")
        except KeyError:
            return _error(404, f"no node named {node}")
        except ValueError as exc:
            return _error(409 if service in SERVICE_TYPES else 404, str(exc))
        return _json(site.node(node).as_dict())

    @routes.get("/license")
    async def licence(request: web.Request) -> web.Response:
        if site.licensing.licence is None:
            return _error(404, "the site has no server licence")
        return _json(site.licensing.licence.entity(datetime.datetime.now(datetime.UTC).date()))

    @routes.put("/license")
    async def set_licence(request: web.Request) -> web.Response:
        licence = site.licensing.licence
        if licence is None:
            return _error(404, "the site has no server licence")
        body = await _body(request)
        today = datetime.datetime.now(datetime.UTC).date()
        try:
            if "expiresInDays" in body:
                licence.valid_to = today + datetime.timedelta(days=int(body["expiresInDays"]))
            elif "validTo" in body:
                licence.valid_to = datetime.date.fromisoformat(str(body["validTo"]))
        except (TypeError, ValueError):
            return _error(400, "expiresInDays is a number of days, validTo a date (YYYY-MM-DD)")
        if "expired" in body:
            if not isinstance(body["expired"], bool):
                return _error(400, "expired is true or false")
            licence.expired = body["expired"]
        return _json(licence.entity(today))

    @routes.get("/access")
    async def access(request: web.Request) -> web.Response:
        now = datetime.datetime.now(datetime.UTC)
        return _json(
            {"overview": site.licensing.overview(now)}
            | {
                kind: list(site.licensing.table(collection, now).values())
                for kind, collection in ACCESS_BY_NAME.items()
            }
        )

    @routes.put("/access/{type}")
    async def replace_access(request: web.Request) -> web.Response:
        kind, body = request.match_info["type"], await _body(request)
        if kind not in ACCESS_BY_NAME:
            return _error(404, f"access types are {', '.join(ACCESS_BY_NAME)}")
        allocations = body.get("allocations", [])
        if not isinstance(allocations, list) or not all(isinstance(a, dict) for a in allocations):
            return _error(400, "allocations is a list of {user, lastUsed | lastUsedDaysAgo, id?}")
        total = body.get("total", site.licensing.totals.get(kind, 0))
        if isinstance(total, bool) or not isinstance(total, int):
            return _error(400, "total is a number")
        previous = site.licensing.allocations[ACCESS_BY_NAME[kind]]
        site.licensing.allocations[ACCESS_BY_NAME[kind]] = {}
        try:
            created = [site.allocate(kind, allocation, now_iso()) for allocation in allocations]
        except SiteError as exc:
            site.licensing.allocations[ACCESS_BY_NAME[kind]] = previous
            return _error(400, str(exc))
        site.licensing.totals[kind] = total
        return _json(created)

    @routes.post("/access/{type}")
    async def add_access(request: web.Request) -> web.Response:
        kind, body = request.match_info["type"], await _body(request)
        if kind not in ACCESS_BY_NAME:
            return _error(404, f"access types are {', '.join(ACCESS_BY_NAME)}")
        try:
            return _json(site.allocate(kind, body, now_iso()), 201)
        except SiteError as exc:
            return _error(400, str(exc))

    app = web.Application()
    app.add_routes(routes)
    return app
