"""The Qlik Repository Service: ``https://host:4242/qrs/...``.

What a client must do is what Sense demands: present a client certificate signed by the site CA (the TLS
handshake fails without one), send a 16-character alphanumeric ``xrfkey`` query parameter equal to the
``X-Qlik-Xrfkey`` header (else 403 with Qlik's text), and name a user in ``X-Qlik-User``. Query strings are
decoded as QRS decodes them: ``%XX`` only, ``+`` stays ``+``, and a bare ``&`` inside a value is an error.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from qliksim.access import RequestLog
from qliksim.faults import Faults
from qliksim.filter import (
    Comparison,
    FilterError,
    Junction,
    apply_filter,
    parse_filter,
    parse_orderby,
    sort_entities,
)
from qliksim.licensing import ACCESS_TYPES
from qliksim.routing import Match, RouteTable
from qliksim.scheduler import Scheduler
from qliksim.site import CONDENSERS, EMPTY_GUID, Site

XSRF_FAILED = "XSRF prevention check failed. Possible XSRF discovered."
_XRFKEY = re.compile(r"[0-9a-zA-Z]{16}")
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LISTABLE = (
    "app",
    "task",
    "reloadtask",
    "externalprogramtask",
    "usersynctask",
    "tag",
    "custompropertydefinition",
    "user",
    "stream",
    "dataconnection",
    "executionresult",
    "executionsession",
    "servicestatus",
)
_JSON = "application/json; charset=utf-8"

Handler = Callable[["QrsRequest"], Awaitable[web.Response]]
# The route of a request and the path's segments, found once, kept on the request.
_MATCH: web.RequestKey[tuple[list[str], Match[str]] | None] = web.RequestKey("qliksim.qrs.match")


class QrsRequest:
    def __init__(
        self, request: web.Request, parts: list[str], args: dict[str, str], query: dict[str, str], user: str
    ) -> None:
        self.request = request
        self.parts = parts  # the path below /qrs/, lower-cased, split
        self.args = args  # the route's parameters: collection, id, ...
        self.query = query
        self.user = user

    @property
    def collection(self) -> str:
        """The QRS type the route names: ``app`` in ``app/full``, ``analyzeraccesstype`` in
        ``license/analyzeraccesstype/full``."""
        return self.args.get("collection") or self.args["access"]


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": _JSON})


def text_response(text: str, status: int) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def decode_query(raw: str) -> dict[str, str]:
    """QRS's query decoding; keys are lower-cased. ValueError for a piece without ``=``."""
    values: dict[str, str] = {}
    for piece in raw.split("&"):
        if not piece:
            continue
        key, separator, value = piece.partition("=")
        if not separator:
            raise ValueError(piece)
        values[unquote(key).lower()] = unquote(value)
    return values


def _parts(request: web.Request) -> list[str] | None:
    """The lower-cased path below ``/qrs/``, split; None for a path outside it."""
    path = request.path.rstrip("/").lower()
    return path.split("/")[2:] if path.startswith("/qrs/") else None


def parse_user(header: str) -> str | None:
    """``UserDirectory=LAB; UserId=goran`` as ``LAB\\goran``; None if either part is missing."""
    parts: dict[str, str] = {}
    for item in header.split(";"):
        key, _, value = item.strip().partition("=")
        parts[key.strip().lower()] = unquote(value.strip())
    directory, user_id = parts.get("userdirectory"), parts.get("userid")
    if not directory or not user_id:
        return None
    return f"{directory}\\{user_id}"


class Qrs:
    """The QRS routes over a Site, with the call counts the control API reports."""

    def __init__(
        self,
        site: Site,
        scheduler: Scheduler,
        faults: Faults,
        requests: RequestLog,
        app_deleted: Callable[[str], None] = lambda app_id: None,
    ) -> None:
        self.site = site
        self.scheduler = scheduler
        self.faults = faults
        self.requests = requests
        self.app_deleted = app_deleted
        self.calls: dict[str, int] = {}
        # Every call that arrived, faulted ones too, per route: "calls", then per status once answered (or
        # "dropped"), so that tests can count a client's attempts.
        self.received: dict[str, dict[str, int]] = {}
        # Task ids named by start calls, known or not: what a client asked QRS to start.
        self.start_requests: dict[str, int] = {}
        self.tickets: dict[str, str] = {}
        # Connections (so TLS handshakes) seen, for clients that should keep theirs alive.
        self.connections = 0
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()
        # Handlers are named, and looked up when called: a test may replace one on the instance.
        self.routes: RouteTable[str] = RouteTable(
            [
                ("GET", "about", "about"),
                ("GET", "license", "licence"),
                ("GET", "license/accesstypeoverview", "access_overview"),
                ("GET", "license/<access>", "list_condensed"),
                ("GET", "license/<access>/full", "list_full"),
                ("GET", "license/<access>/count", "count"),
                ("GET", "license/<access>/{id}", "by_id"),
                ("DELETE", "license/<access>/{id}", "release_access"),
                ("GET", "reloadtask/{id}/<log>", "script_log_ticket"),
                ("GET", "download/reloadtask/{ticket}/{file}", "download"),
                # Sense's task is a read-only union of the three task types, and has no count route.
                ("GET", "task/count", None),
                ("GET", "<collection>", "list_condensed"),
                ("GET", "<collection>/full", "list_full"),
                ("GET", "<collection>/count", "count"),
                ("GET", "<collection>/{id}", "by_id"),
                ("POST", "task/{id}/start", "start_one"),
                ("POST", "task/{id}/start/synchronous", "start_one_synchronous"),
                ("POST", "task/start", "start_by_name"),
                ("POST", "task/start/synchronous", "start_by_name_synchronous"),
                ("POST", "task/start/many", "start_many"),
                ("POST", "task/{id}/stop", "stop_one"),
                ("POST", "task/stop/many", "stop_many"),
                ("POST", "app/{id}/reload", "reload_app"),
                ("DELETE", "app/{id}", "delete_app"),
            ],
            {"collection": _LISTABLE, "access": tuple(ACCESS_TYPES), "log": ("scriptlog", "scriptlogfile")},
        )

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._record, self.faults.middleware("qrs")])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        parts = _parts(request)
        if parts is None:
            request[_MATCH], route = None, request.path
        else:
            match = self.routes.match(request.method, parts)
            request[_MATCH], route = (parts, match), match.label
        counts = self.received.setdefault(f"{request.method} {route}", {"calls": 0})
        counts["calls"] += 1
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            outcome = "dropped" if status is None else str(status)
            counts[outcome] = counts.get(outcome, 0) + 1
            self.requests.record("qrs", request, status)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport not in self._transports:
            self._transports.add(transport)
            self.connections += 1
        routed = request[_MATCH]
        if routed is None:
            return text_response("No matching endpoint found", 404)
        parts, match = routed
        try:
            query = decode_query(request.raw_path.partition("?")[2])
        except ValueError:
            return text_response("Missing parameter value(s)", 400)
        key = query.get("xrfkey", "")
        if not _XRFKEY.fullmatch(key) or request.headers.get("X-Qlik-Xrfkey") != key:
            return text_response(XSRF_FAILED, 403)
        user = parse_user(request.headers.get("X-Qlik-User", ""))
        if user is None:
            return text_response(
                "Forbidden: the X-Qlik-User header (UserDirectory=...; UserId=...) is required", 403
            )
        route = f"{request.method} {match.label}"
        self.calls[route] = self.calls.get(route, 0) + 1
        if match.handler is None:
            return text_response("No matching endpoint found", 404)
        try:
            handler: Handler = getattr(self, match.handler)
            return await handler(QrsRequest(request, parts, match.args, query, user))
        except FilterError:
            return text_response(
                f"Cannot parse the expression: {query.get('filter', query.get('orderby', ''))}", 400
            )

    # -- reading ------------------------------------------------------------------------------------------

    def _selected(self, request: QrsRequest) -> list[dict[str, Any]]:
        table = self.site.collection(request.collection)
        text = request.query.get("filter", "")
        node = parse_filter(text, allow_not=self.site.allow_not)
        fast = _id_lookup(node, "id")
        by_execution = _id_lookup(node, "executionid") if request.collection == "executionresult" else None
        if fast is None and by_execution is not None:
            # Indexed as QRS's database indexes it: results are looked up by execution id after each run,
            # and there are as many results as runs, so no scan.
            index = self.site.results_by_execution
            entities = [table[index[e]] for e in dict.fromkeys(by_execution) if e in index]
        elif fast is not None:
            wanted = set(fast)
            # In the collection's own order, as a scan would give them.
            entities = (
                [table[i] for i in table if i in wanted]
                if len(wanted) > 1
                else [table[i] for i in wanted if i in table]
            )
        else:
            entities = apply_filter(node, list(table.values()))
        if "orderby" in request.query and request.query["orderby"].strip():
            entities = sort_entities(entities, parse_orderby(request.query["orderby"]))
        return entities

    def _shaped(
        self, request: QrsRequest, entities: list[dict[str, Any]], full: bool
    ) -> list[dict[str, Any]]:
        condense = None if full else CONDENSERS.get(request.collection)
        shaped = [condense(e) if condense else e for e in entities]
        if request.query.get("privileges", "").lower() == "true":
            shaped = [
                e | {"privileges": ["create", "read", "update", "delete", "exportappdata"]} for e in shaped
            ]
        return shaped

    async def list_condensed(self, request: QrsRequest) -> web.Response:
        return json_response(self._shaped(request, self._selected(request), full=False))

    async def list_full(self, request: QrsRequest) -> web.Response:
        return json_response(self._shaped(request, self._selected(request), full=True))

    async def count(self, request: QrsRequest) -> web.Response:
        return json_response({"value": len(self._selected(request))})

    async def by_id(self, request: QrsRequest) -> web.Response:
        entity = self.site.collection(request.collection).get(request.args["id"])
        if entity is None and request.collection == "reloadtask":
            # Lenient: upstream Butler reads a distribution task's last result through
            # reloadtask/{id}, and whether Sense answers there is unknown; a 404 would leave upstream's
            # distribute alerts untestable here. Lists of reload tasks still leave distribution tasks out.
            task = self.site.tasks.get(request.args["id"])
            entity = task if task is not None and task["schemaPath"] == "DistributionTask" else None
        if entity is None:
            return text_response("Not found", 404)
        return json_response(self._shaped(request, [entity], full=True)[0])

    async def about(self, request: QrsRequest) -> web.Response:
        return json_response(
            {
                "schemaPath": "About",
                "buildVersion": "14.187.4",
                "buildDate": "9/20/2024 10:00:00 AM",
                "databaseProvider": "Devart.Data.PostgreSql",
                "nodeType": 1,
                "sharedPersistence": True,
                "requiresBootstrap": False,
                "singleNodeOnly": False,
            }
        )

    async def licence(self, request: QrsRequest) -> web.Response:
        licence = self.site.licensing.licence
        if licence is None:
            return text_response("Not found", 404)
        return json_response(licence.entity(datetime.datetime.now(datetime.UTC).date()))

    async def access_overview(self, request: QrsRequest) -> web.Response:
        return json_response(self.site.licensing.overview(datetime.datetime.now(datetime.UTC)))

    async def release_access(self, request: QrsRequest) -> web.Response:
        released = self.site.licensing.release(
            request.collection, request.args["id"], datetime.datetime.now(datetime.UTC)
        )
        return web.Response(status=204) if released else text_response("Not found", 404)

    async def script_log_ticket(self, request: QrsRequest) -> web.Response:
        task = self.site.tasks.get(request.args["id"])
        if task is None or task["schemaPath"] != "ReloadTask":
            return text_response("Not found", 404)
        if request.args["log"] == "scriptlog":
            reference = request.query.get("filereferenceid", "")
        else:
            result = self.site.execution_results.get(request.query.get("executionresultid", ""))
            reference = result["fileReferenceID"] if result else ""
        if reference not in self.site.script_logs:
            return text_response("Not found", 404)
        ticket = str(uuid.uuid4())
        self.tickets[ticket] = reference
        return json_response({"value": ticket})

    async def download(self, request: QrsRequest) -> web.Response:
        reference = self.tickets.pop(request.args["ticket"], None)
        if reference is None:
            return text_response("Not found", 404)
        return web.Response(
            body=self.site.script_logs[reference].encode(), headers={"Content-Type": "application/unknown"}
        )

    # -- starting and stopping ----------------------------------------------------------------------------

    def _task(self, task_id: str) -> dict[str, Any] | None:
        return self.site.tasks.get(task_id) if _GUID.fullmatch(task_id) else None

    def _asked_to_start(self, task_id: str) -> None:
        self.start_requests[task_id] = self.start_requests.get(task_id, 0) + 1

    async def start_one(self, request: QrsRequest) -> web.Response:
        self._asked_to_start(request.args["id"])
        if self._task(request.args["id"]) is None:
            return text_response("Not found", 404)
        self.scheduler.start(request.args["id"], request.user)
        return web.Response(status=204)

    async def start_one_synchronous(self, request: QrsRequest) -> web.Response:
        self._asked_to_start(request.args["id"])
        if self._task(request.args["id"]) is None:
            return text_response("Not found", 404)
        session = self.scheduler.start(request.args["id"], request.user)
        return json_response({"value": session or EMPTY_GUID}, 201)

    def _named(self, request: QrsRequest) -> dict[str, Any] | None:
        name = request.query.get("name", "")
        return next((t for t in self.site.tasks.values() if t["name"] == name), None)

    async def start_by_name(self, request: QrsRequest) -> web.Response:
        task = self._named(request)
        if task is None:
            return text_response("Not found", 404)
        self.scheduler.start(task["id"], request.user)
        return web.Response(status=204)

    async def start_by_name_synchronous(self, request: QrsRequest) -> web.Response:
        task = self._named(request)
        if task is None:
            return text_response("Not found", 404)
        return json_response({"value": self.scheduler.start(task["id"], request.user) or EMPTY_GUID}, 201)

    async def _id_list(self, request: QrsRequest) -> list[str] | None:
        try:
            ids = json.loads(await request.request.read() or b"[]")
        except ValueError:
            return None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return [i.lower() for i in ids]

    async def start_many(self, request: QrsRequest) -> web.Response:
        ids = await self._id_list(request)
        if ids is None:
            return text_response("The body must be a JSON array of task ids", 400)
        for task_id in ids:
            self._asked_to_start(task_id)
            if self._task(task_id) is not None:
                self.scheduler.start(task_id, request.user)
        return web.Response(status=204)

    async def stop_one(self, request: QrsRequest) -> web.Response:
        if self._task(request.args["id"]) is None:
            return text_response("Not found", 404)
        self.scheduler.stop(request.args["id"])
        return web.Response(status=204)

    async def stop_many(self, request: QrsRequest) -> web.Response:
        ids = await self._id_list(request)
        if ids is None:
            return text_response("The body must be a JSON array of task ids", 400)
        for task_id in ids:
            self.scheduler.stop(task_id)
        return web.Response(status=204)

    async def reload_app(self, request: QrsRequest) -> web.Response:
        app_id = request.args["id"]
        if app_id not in self.site.apps:
            return text_response("Not found", 404)
        self.scheduler.reload_app_soon(app_id)
        return web.Response(status=204)

    async def delete_app(self, request: QrsRequest) -> web.Response:
        app_id = request.args["id"]
        if not self.site.delete_app(app_id):
            return text_response("Not found", 404)
        self.app_deleted(app_id)  # the Engine closes the app in every session that has it open
        return web.Response(status=204)


def _id_lookup(node: Any, key: str) -> list[str] | None:
    """The values of a ``<key> eq <guid>`` filter, or of several joined with ``or``, served by dictionary
    lookups instead of a scan (clients look tasks up this way)."""
    if isinstance(node, Junction) and node.operator == "or":
        ids = [_id_lookup(operand, key) for operand in node.operands]
        if all(i is not None for i in ids):
            return [task_id for found in ids for task_id in found or []]
        return None
    if (
        isinstance(node, Comparison)
        and node.path == (key,)
        and node.operator == "eq"
        and node.literal.kind in ("guid", "string")
    ):
        return [str(node.literal.value).lower()]
    return None
