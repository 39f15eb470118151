"""The Qlik Associative Engine (QIX): JSON-RPC 2.0 over WebSocket on ``wss://host:4747``.

Accepted paths are those clients use: ``/``, ``/app/``, ``/app/engineData`` and ``/app/<appId>``, with
the optional ``/identity/<x>`` and ``/ttl/<n>`` suffixes. The upgrade needs the client certificate (TLS)
and an ``X-Qlik-User`` header. The first frame is the ``OnConnected`` notification. Requests are served
concurrently and answered as each completes, so clients may pipeline them; ``delta: true`` requests get
JSON-Patch answers (one root ``add``), as enigma.js expects.

This module is the protocol: sockets, sessions, handles and the methods of each interface. What an app
holds, and the properties and layouts built from it, are app_model.py's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import WSCloseCode, WSMsgType, web

from qliksim.access import RequestLog
from qliksim.app_model import AppModel, children, doc_list
from qliksim.faults import Faults, FaultSettings
from qliksim.qrs import parse_user
from qliksim.scheduler import Scheduler
from qliksim.site import Site

ENGINE_VERSION = "12.1477.4"


class QixError(Exception):
    def __init__(self, code: int, message: str, parameter: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter


@dataclass
class QixObject:
    """An object behind a handle: its interface type and whatever its methods need."""

    kind: (
        str  # Global, Doc, GenericObject, GenericDimension, GenericMeasure, GenericBookmark, GenericVariable
    )
    generic_type: str = ""
    generic_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, Any] | None = None
    children: list[dict[str, Any]] = field(default_factory=list)
    app_id: str = ""


# Parameter names per method, for requests that send named parameters (and for defaults).
_PARAMETERS: dict[str, list[tuple[str, Any]]] = {
    "OpenDoc": [
        ("qDocName", None),
        ("qUserName", ""),
        ("qPassword", ""),
        ("qSerial", ""),
        ("qNoData", False),
    ],
    "DoReload": [("qMode", 0), ("qPartial", False), ("qDebug", False)],
    "DoReloadEx": [("qParams", {})],
    "DoSave": [("qFileName", "")],
    "GetObject": [("qId", None)],
    "GetDimension": [("qId", None)],
    "GetMeasure": [("qId", None)],
    "GetBookmark": [("qId", None)],
    "GetVariableById": [("qId", None)],
    "GetVariableByName": [("qName", None)],
    "GetConnection": [("qConnectionId", None)],
    "CreateSessionObject": [("qProp", None)],
    "DestroySessionObject": [("qId", None)],
    "GetDocList": [],
    "EngineVersion": [],
    "ProductVersion": [],
}


def _arguments(method: str, params: Any) -> list[Any]:
    names = _PARAMETERS.get(method, [])
    if isinstance(params, dict):
        return [params.get(name, default) for name, default in names]
    values = list(params or [])
    return values + [default for _, default in names[len(values) :]]


class EngineSession:
    """One WebSocket: its handles and the app it opened."""

    def __init__(self, engine: Engine, path_app: str | None, user: str) -> None:
        self.engine = engine
        self.path_app = path_app
        self.user = user
        self.handles: dict[int, QixObject] = {-1: QixObject("Global")}
        self._next_handle = itertools.count(1)
        self.doc: AppModel | None = None
        self.session_ids: set[str] = set()
        # Handles the engine closed on its own, told to the client in the next answer's "close".
        self.closed: list[int] = []

    def close_doc(self) -> None:
        """The app was deleted: its Doc and every object of it go; only the Global handle stays."""
        self.closed += [h for h in self.handles if h != -1]
        self.handles = {-1: self.handles[-1]}
        self.doc = None
        self.session_ids.clear()

    def new_handle(self, obj: QixObject) -> dict[str, Any]:
        handle = next(self._next_handle)
        self.handles[handle] = obj
        return {
            "qType": obj.kind,
            "qHandle": handle,
            "qGenericType": obj.generic_type,
            "qGenericId": obj.generic_id,
        }

    async def call(self, handle: int, method: str, params: Any) -> dict[str, Any]:
        obj = self.handles.get(handle)
        if obj is None:
            raise QixError(-32602, "Invalid handle", "Invalid handle")
        function: Callable[..., Awaitable[dict[str, Any]]] | None = getattr(
            self, f"_{obj.kind.lower()}_{method}", None
        )
        if function is None:
            raise QixError(-32601, "Method does not exist", method)
        return await function(obj, *_arguments(method, params))

    # -- Global ---------------------------------------------------------------------------------------

    async def _global_EngineVersion(self, obj: QixObject) -> dict[str, Any]:
        return {"qVersion": {"qComponentVersion": ENGINE_VERSION}}

    async def _global_ProductVersion(self, obj: QixObject) -> dict[str, Any]:
        return {"qReturn": ENGINE_VERSION}

    async def _global_IsDesktopMode(self, obj: QixObject) -> dict[str, Any]:
        return {"qReturn": False}

    async def _global_GetDocList(self, obj: QixObject) -> dict[str, Any]:
        return {"qDocList": doc_list(self.engine.site)}

    async def _global_OpenDoc(
        self, obj: QixObject, doc: Any, user: Any, password: Any, serial: Any, no_data: Any
    ) -> dict[str, Any]:
        doc_id = str(doc or "").lower()
        if doc_id not in self.engine.site.apps:
            raise QixError(1003, "App not found", str(doc))
        if self.doc is not None:
            raise QixError(1002, "App already open", str(doc))
        self.doc = AppModel(self.engine.site, doc_id)
        return {"qReturn": self.new_handle(QixObject("Doc", "", doc_id, app_id=doc_id))}

    async def _global_GetActiveDoc(self, obj: QixObject) -> dict[str, Any]:
        if self.doc is None:
            raise QixError(1007, "App invalid")
        handle = next(h for h, o in self.handles.items() if o.kind == "Doc")
        return {"qReturn": {"qType": "Doc", "qHandle": handle, "qGenericId": self.doc.app_id}}

    # -- Doc ------------------------------------------------------------------------------------------

    def _model(self) -> AppModel:
        assert self.doc is not None
        return self.doc

    async def _doc_GetAppProperties(self, obj: QixObject) -> dict[str, Any]:
        return {"qProp": self._model().app_properties()}

    async def _doc_GetAppLayout(self, obj: QixObject) -> dict[str, Any]:
        return {"qLayout": self._model().app_layout()}

    async def _doc_GetScript(self, obj: QixObject) -> dict[str, Any]:
        return {"qScript": self._model().content["script"]}

    async def _doc_GetLineage(self, obj: QixObject) -> dict[str, Any]:
        return {"qLineage": self._model().content["lineage"]}

    async def _doc_GetConnections(self, obj: QixObject) -> dict[str, Any]:
        return {"qConnections": self._model().connections()}

    async def _doc_GetConnection(self, obj: QixObject, connection_id: Any) -> dict[str, Any]:
        for connection in self._model().connections():
            if connection["qId"] == connection_id:
                return {"qConnection": connection}
        raise QixError(2001, "Connection not found", str(connection_id))

    async def _doc_GetAllInfos(self, obj: QixObject) -> dict[str, Any]:
        return {"qInfos": self._model().all_infos()}

    async def _doc_CreateSessionObject(self, obj: QixObject, properties: Any) -> dict[str, Any]:
        if not isinstance(properties, dict):
            raise QixError(-32602, "Invalid method parameter(s)", "qProp")
        properties = json.loads(json.dumps(properties))
        info = properties.setdefault("qInfo", {})
        requested = str(info.get("qId") or "")
        # The engine picks another id when the requested one is taken.
        if not requested or requested in self.session_ids:
            requested = f"{requested or info.get('qType', 'obj')}-{len(self.session_ids) + 1}"
        info["qId"] = requested
        self.session_ids.add(requested)
        return {
            "qReturn": self.new_handle(
                QixObject("GenericObject", str(info.get("qType", "")), requested, properties=properties)
            )
        }

    async def _doc_DestroySessionObject(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        found = object_id in self.session_ids
        self.session_ids.discard(object_id)
        return {"qSuccess": found}

    async def _doc_GetObject(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        model = self._model()
        item = model.find_object(str(object_id))
        if item is None:
            return {"qReturn": {"qType": None, "qHandle": None}}
        return {
            "qReturn": self.new_handle(
                QixObject(
                    "GenericObject",
                    item["type"],
                    item["id"],
                    properties=model.object_properties(item),
                    children=children(item),
                )
            )
        }

    def _content_item(self, kind: str, object_id: Any) -> dict[str, Any] | None:
        return self._model().content_item(kind, object_id)

    async def _doc_GetDimension(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        item = self._content_item("dimensions", object_id)
        if item is None:
            return {"qReturn": {"qType": None, "qHandle": None}}
        return {
            "qReturn": self.new_handle(
                QixObject(
                    "GenericDimension", "dimension", item["id"], properties=self._model().dimension(item)
                )
            )
        }

    async def _doc_GetMeasure(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        item = self._content_item("measures", object_id)
        if item is None:
            return {"qReturn": {"qType": None, "qHandle": None}}
        return {
            "qReturn": self.new_handle(
                QixObject("GenericMeasure", "measure", item["id"], properties=self._model().measure(item))
            )
        }

    async def _doc_GetBookmark(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        for kind, key in (("bookmark", "bookmarks"), ("snapshot", "snapshots")):
            item = self._content_item(key, object_id)
            if item is not None:
                properties = self._model().bookmark(item, kind)
                layout = self._model().bookmark_layout(item, properties)
                return {
                    "qReturn": self.new_handle(
                        QixObject("GenericBookmark", kind, item["id"], properties=properties, layout=layout)
                    )
                }
        return {"qReturn": {"qType": None, "qHandle": None}}

    async def _doc_GetVariableById(self, obj: QixObject, object_id: Any) -> dict[str, Any]:
        item = self._content_item("variables", object_id)
        if item is None:
            raise QixError(2, "Resource not found", str(object_id))
        return {
            "qReturn": self.new_handle(
                QixObject("GenericVariable", "variable", item["id"], properties=self._model().variable(item))
            )
        }

    async def _doc_GetVariableByName(self, obj: QixObject, name: Any) -> dict[str, Any]:
        item = self._model().variable_named(name)
        if item is None:
            raise QixError(2, "Resource not found", str(name))
        return await self._doc_GetVariableById(obj, item["id"])

    async def _doc_DoReload(self, obj: QixObject, mode: Any, partial: Any, debug: Any) -> dict[str, Any]:
        return {"qReturn": await self.engine.scheduler.reload_app(self._model().app_id, bool(partial))}

    async def _doc_DoReloadEx(self, obj: QixObject, params: Any) -> dict[str, Any]:
        partial = isinstance(params, dict) and bool(params.get("qPartial"))
        success = await self.engine.scheduler.reload_app(self._model().app_id, partial)
        return {
            "qResult": {
                "qSuccess": success,
                "qScriptLogFile": f"{self._model().app_id}.log",
                "qEndedWithMemoryConstraint": False,
            }
        }

    async def _doc_DoSave(self, obj: QixObject, file_name: Any) -> dict[str, Any]:
        self.engine.saves[self._model().app_id] = self.engine.saves.get(self._model().app_id, 0) + 1
        return {}

    # -- Generic objects ------------------------------------------------------------------------------

    async def _genericobject_GetLayout(self, obj: QixObject) -> dict[str, Any]:
        return {"qLayout": obj.layout if obj.layout is not None else self._model().layout(obj.properties)}

    async def _genericobject_GetProperties(self, obj: QixObject) -> dict[str, Any]:
        return {"qProp": obj.properties}

    async def _genericobject_GetFullPropertyTree(self, obj: QixObject) -> dict[str, Any]:
        return {"qPropEntry": self._model().property_tree(obj.properties, obj.children)}

    _genericdimension_GetProperties = _genericobject_GetProperties
    _genericdimension_GetLayout = _genericobject_GetLayout
    _genericmeasure_GetProperties = _genericobject_GetProperties
    _genericmeasure_GetLayout = _genericobject_GetLayout
    _genericbookmark_GetProperties = _genericobject_GetProperties
    _genericbookmark_GetLayout = _genericobject_GetLayout
    _genericvariable_GetProperties = _genericobject_GetProperties
    _genericvariable_GetLayout = _genericobject_GetLayout


class Engine:
    """The WebSocket endpoint and what is shared between sessions."""

    def __init__(self, site: Site, scheduler: Scheduler, faults: Faults, requests: RequestLog) -> None:
        self.site = site
        self.scheduler = scheduler
        self.faults = faults
        self.requests = requests
        self.calls: dict[str, int] = {}
        self.saves: dict[str, int] = {}
        self.sessions: dict[EngineSession, web.WebSocketResponse] = {}

    @property
    def open_sessions(self) -> int:
        return len(self.sessions)

    def close_app(self, app_id: str) -> None:
        for session in self.sessions:
            if session.doc is not None and session.doc.app_id == app_id:
                session.close_doc()

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/{tail:.*}", self.handle)
        app.on_shutdown.append(self._going_away)
        return app

    async def _going_away(self, app: web.Application) -> None:
        """An open socket holds its listener's shutdown until the client leaves: close every one, as an
        Engine that stops does, so that the simulator stops at once with clients connected."""
        await asyncio.gather(
            *(
                socket.close(code=WSCloseCode.GOING_AWAY, message=b"Engine shutting down")
                for socket in list(self.sessions.values())
            ),
            return_exceptions=True,
        )

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.requests.record("engine", request, exc.status)
            raise
        if not isinstance(response, web.WebSocketResponse):  # an upgrade is recorded when it is made
            self.requests.record("engine", request, response.status)
        return response

    async def handle(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults.take("engine")
        await self.faults.delay(faults)
        status = self.faults.forced_status("engine", faults)
        if status is not None:
            return web.Response(status=status, text=f"Simulated fault: HTTP {status}")
        user = parse_user(request.headers.get("X-Qlik-User", ""))
        if user is None:
            return web.Response(status=403, text="Forbidden: the X-Qlik-User header is required")
        app_id = _path_app(request.rel_url.raw_path)
        if app_id is False:
            return web.Response(status=404, text="Not found")
        socket = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await socket.prepare(request)
        self.requests.record("engine", request, socket.status)
        session = EngineSession(self, app_id if isinstance(app_id, str) else None, user)
        self.sessions[session] = socket
        pending: set[asyncio.Task[None]] = set()
        try:
            await socket.send_str(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "method": "OnConnected",
                        "params": {"qSessionState": "SESSION_CREATED"},
                    }
                )
            )
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                faults = self.faults.take("engine")
                if self.faults.should_drop("engine", faults):
                    await socket.close()
                    break
                job = asyncio.get_running_loop().create_task(
                    self._answer(session, socket, message.data, faults)
                )
                pending.add(job)
                job.add_done_callback(pending.discard)
        finally:
            for job in pending:
                job.cancel()
            self.sessions.pop(session, None)
        return socket

    async def _answer(
        self, session: EngineSession, socket: web.WebSocketResponse, text: str, faults: FaultSettings
    ) -> None:
        try:
            request = json.loads(text)
        except ValueError:
            await _send(
                socket,
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32700, "parameter": "", "message": "JSON parse error"},
                },
            )
            return
        if not isinstance(request, dict) or "method" not in request:
            await _send(
                socket,
                {
                    "jsonrpc": "2.0",
                    "id": request.get("id") if isinstance(request, dict) else None,
                    "error": {"code": -32600, "parameter": "", "message": "Invalid JSON request"},
                },
            )
            return
        method = str(request["method"])
        self.calls[method] = self.calls.get(method, 0) + 1
        await self.faults.delay(faults)
        answer: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
        try:
            result = await session.call(int(request.get("handle", -1)), method, request.get("params", []))
        except QixError as exc:
            answer["error"] = {"code": exc.code, "parameter": exc.parameter, "message": exc.message}
        except (TypeError, ValueError) as exc:
            answer["error"] = {
                "code": -32602,
                "parameter": str(exc),
                "message": "Invalid method parameter(s)",
            }
        else:
            if request.get("delta"):
                answer["delta"] = True
                result = {key: [{"op": "add", "path": "/", "value": value}] for key, value in result.items()}
            answer["result"] = result
        if session.closed:
            answer["close"], session.closed = session.closed, []
        await _send(socket, answer)


async def _send(socket: web.WebSocketResponse, message: dict[str, Any]) -> None:
    if not socket.closed:
        await socket.send_str(json.dumps(message))


def _path_app(path: str) -> str | bool | None:
    """The app id in an Engine URL path (as sent: an encoded ``/`` is part of a segment); None for no app;
    False for a path the engine does not serve."""
    parts = [unquote(p) for p in path.split("/") if p]
    # Optional suffixes enigma.js may add.
    while len(parts) >= 2 and parts[-2] in ("identity", "ttl"):
        parts = parts[:-2]
    if not parts:
        return None
    if parts[0] != "app" or len(parts) > 2:
        return False
    if len(parts) == 1 or parts[1].lower() == "enginedata":
        return None
    return parts[1].lower()
