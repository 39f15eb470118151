"""Sense apps through the Engine: the list of apps, an app's metadata dump, and reloads.

The dump makes every Engine call it needs on one socket at once (the Engine answers as each completes),
so its time is a few round trips, not one per object. A reload answers as soon as the app is open (or,
with ``wait``, when the reload is over) and then starts the follow-up tasks through the task-start
service, so their outcome is known and logged.

The Engine's ``timeoutSeconds`` bounds what a caller waits for: the list, the whole dump, a reload's
opening of the app. The reload and the save after it get ``timeoutSeconds`` each: they run after the caller
has its answer, or the caller asked (``wait``) to wait for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import quote

from butler.config.settings import CertificateSettings, EngineSettings
from butler.json_encoding import encode_json
from butler.qlik.engine import AppClosed, EngineSession, engine_tls
from butler.task_start import TaskStarter

log = logging.getLogger("butler.apps")

# The dump's keys for app objects, and the object type each lists.
APP_OBJECT_TYPES = {
    "sheets": "sheet",
    "stories": "story",
    "masterobjects": "masterobject",
    "appprops": "appprops",
}


class AppService:
    """App list, dump and reload through the Engine, for the REST API; one Engine session per call. A
    reload's follow-up tasks go through the task starter, so the allow-list applies to them too."""

    def __init__(
        self, settings: EngineSettings, certificates: CertificateSettings, starter: TaskStarter | None
    ) -> None:
        self.settings = settings
        self.starter = starter
        self._tls = engine_tls(settings, certificates)  # CertificateError here, at start-up
        self._background: set[asyncio.Task[Any]] = set()

    def _session(self, path: str) -> EngineSession:
        return EngineSession(self.settings, self._tls, path)

    async def list_apps(self) -> list[dict[str, str]]:
        async with self._session("") as engine:
            result = await engine.call(-1, "GetDocList")
        return [{"id": d["qDocId"], "name": d["qDocName"]} for d in result.get("qDocList", [])]

    async def dump(self, app_id: str) -> list[bytes]:
        """The app's metadata (§6) as JSON, in pieces to be sent one after the other."""
        async with self._session("/app/engineData") as engine:
            opened = await engine.call(-1, "OpenDoc", app_id, "", "", "", True)
            return await _Dump(engine, opened["qReturn"]["qHandle"]).run(app_id)

    async def reload(
        self, app_id: str, mode: int, partial: bool, on_success: list[str], on_failure: list[str], wait: bool
    ) -> dict[str, Any]:
        """Open the app; then reload it in the background (or, with ``wait``, before answering)."""
        # The id is one segment of the URL whatever it holds, so the Engine answers for that app.
        engine = self._session(f"/app/{quote(app_id, safe='')}")
        await engine.__aenter__()
        try:
            await engine.call(-1, "EngineVersion")
            opened = await engine.call(-1, "OpenDoc", app_id, "", "", "", False)
        except BaseException:
            await engine.__aexit__(None, None, None)
            raise
        handle = opened["qReturn"]["qHandle"]
        work = self._reload(engine, handle, app_id, mode, partial, on_success, on_failure)
        if wait:
            return await work
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return {"appId": app_id}

    async def _reload(
        self,
        engine: EngineSession,
        handle: int,
        app_id: str,
        mode: int,
        partial: bool,
        on_success: list[str],
        on_failure: list[str],
    ) -> dict[str, Any]:
        started = time.monotonic()
        outcome: dict[str, Any] = {"appId": app_id}
        try:
            engine.renew_deadline()
            success = bool((await engine.call(handle, "DoReload", mode, partial, False)).get("qReturn"))
            if success:
                engine.renew_deadline()
                await engine.call(handle, "DoSave")
            outcome |= {"success": success, "durationMs": int((time.monotonic() - started) * 1000)}
        except Exception as exc:  # reported in the outcome and the log; nothing to start then
            log.warning("reload of app %s failed: %s", app_id, exc)
            return outcome | {"success": False, "error": str(exc)}
        finally:
            await engine.__aexit__(None, None, None)
        follow_ups = on_success if outcome["success"] else on_failure
        if follow_ups and self.starter is not None:
            started_tasks = await self.starter.start(
                "-", [{"type": "starttaskid", "payload": {"taskId": t}} for t in follow_ups]
            )
            outcome["tasksStarted"] = started_tasks.as_dict()["tasksId"]
            log.info(
                "app %s reloaded (success %s); follow-up tasks: %s",
                app_id,
                outcome["success"],
                outcome["tasksStarted"],
            )
        return outcome

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


async def _all(*work: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run ``work`` together; the first failure cancels the rest (nothing keeps using a closing socket)
    and is raised as itself, not wrapped in an exception group."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(w) for w in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [t.result() for t in tasks]


# Objects read at once per list. Enough to keep the socket busy at any latency, while the coroutines of an
# app with tens of thousands of objects are not all alive together.
ITEMS_AT_ONCE = 32

Fragment = bytes | list[bytes]  # one encoded JSON value, or the encoded items of an array


class _Dump:
    """Collects §6's keys with the Engine calls of every list issued together.

    Each answer is encoded to JSON as soon as it arrives and only the bytes are kept, so the dump costs
    about its own size, not the several times its size its parsed form would take; the pieces are sent
    as they are, never joined.
    """

    def __init__(self, engine: EngineSession, doc: int) -> None:
        self.engine = engine
        self.doc = doc

    async def _list(self, definition: dict[str, Any]) -> dict[str, Any]:
        created = await self.engine.call(self.doc, "CreateSessionObject", definition)
        layout = await self.engine.call(created["qReturn"]["qHandle"], "GetLayout")
        return dict(layout["qLayout"])

    async def _each(self, items: list[Any], read: Callable[[Any], Awaitable[bytes | None]]) -> list[bytes]:
        """``read`` every item, ITEMS_AT_ONCE at a time, in the order of ``items``; None is left out."""
        found: list[bytes | None] = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for index, item in queue:
                found[index] = await read(item)

        await _all(*(worker() for _ in range(min(ITEMS_AT_ONCE, len(items)))))
        return [f for f in found if f is not None]

    async def _app_objects(self, kind: str) -> list[bytes]:
        layout = await self._list(
            {
                "qAppObjectListDef": {"qType": kind, "qData": {"id": "/qInfo/qId"}},
                "qInfo": {"qId": f"{kind}List", "qType": f"{kind}List"},
                "qMetaDef": {},
                "qExtendsId": "",
            }
        )

        async def tree(item: dict[str, Any]) -> bytes | None:
            found = await self.engine.call(self.doc, "GetObject", item["qInfo"]["qId"])
            handle = found["qReturn"]["qHandle"]
            if handle is None:
                return None
            return encode_json((await self.engine.call(handle, "GetFullPropertyTree"))["qPropEntry"])

        return await self._each(layout.get("qAppObjectList", {}).get("qItems", []), tree)

    async def _generic(
        self, definition: dict[str, Any], layout_key: str, getter: str, with_layout: bool = False
    ) -> list[bytes]:
        layout = await self._list(definition)

        async def properties(item: dict[str, Any]) -> bytes | None:
            found = await self.engine.call(self.doc, getter, item["qInfo"]["qId"])
            handle = found["qReturn"]["qHandle"]
            if handle is None:
                return None
            props = dict((await self.engine.call(handle, "GetProperties"))["qProp"])
            if with_layout:
                bookmark = (await self.engine.call(handle, "GetLayout"))["qLayout"].get("qBookmark")
                props["qData"] = {**props.get("qData", {}), "qBookMark": bookmark}
            if getter == "GetVariableById":
                props |= {k: item[k] for k in ("qIsScriptCreated", "qIsReserved", "qIsConfig") if item.get(k)}
            return encode_json(props)

        return await self._each(layout.get(layout_key, {}).get("qItems", []), properties)

    async def _connections(self) -> list[bytes]:
        listed = (await self.engine.call(self.doc, "GetConnections"))["qConnections"]

        async def connection(listed_connection: dict[str, Any]) -> bytes:
            found = await self.engine.call(self.doc, "GetConnection", listed_connection["qId"])
            return encode_json(found["qConnection"])

        return await self._each(listed, connection)

    async def _lineage(self) -> bytes | None:
        try:
            return encode_json(list((await self.engine.call(self.doc, "GetLineage"))["qLineage"]))
        except AppClosed:
            raise
        except Exception:  # upstream leaves lineage out when the Engine cannot give it
            return None

    async def _properties(self) -> bytes:
        return encode_json((await self.engine.call(self.doc, "GetAppProperties"))["qProp"])

    async def _script(self) -> bytes:
        return encode_json((await self.engine.call(self.doc, "GetScript"))["qScript"])

    async def _media(self) -> list[bytes]:
        media = await self._list({"qInfo": {"qId": "mediaList", "qType": "MediaList"}, "qMediaListDef": {}})
        items = media.get("qMediaList", {}).get("qItems", [])
        return [encode_json(m) for m in items if str(m.get("qUrlDef", "")).startswith("/media/")]

    async def _fields(self) -> list[bytes]:
        definition = {"qShowSystem": True, "qShowHidden": True, "qShowSrcTables": True, "qShowSemantic": True}
        fields = await self._list(
            {"qInfo": {"qId": "FieldList", "qType": "FieldList"}, "qFieldListDef": definition}
        )
        return [encode_json(f) for f in fields.get("qFieldList", {}).get("qItems", [])]

    async def run(self, app_id: str) -> list[bytes]:
        """The dump as pieces of JSON, keys in upstream's order."""
        parts: dict[str, Coroutine[Any, Any, Fragment | None]] = {
            "properties": self._properties(),
            "loadScript": self._script(),
            "lineage": self._lineage(),
            **{key: self._app_objects(kind) for key, kind in APP_OBJECT_TYPES.items()},
            "dimensions": self._generic(
                {
                    "qDimensionListDef": {"qType": "dimension", "qData": {"info": "/qDimInfos"}, "qMeta": {}},
                    "qInfo": {"qId": "DimensionList", "qType": "DimensionList"},
                },
                "qDimensionList",
                "GetDimension",
            ),
            "measures": self._generic(
                {
                    "qMeasureListDef": {"qType": "measure", "qData": {"info": "/qMeasure"}, "qMeta": {}},
                    "qInfo": {"qId": "MeasureList", "qType": "MeasureList"},
                },
                "qMeasureList",
                "GetMeasure",
            ),
            "bookmarks": self._generic(
                {
                    "qBookmarkListDef": {"qType": "bookmark", "qData": {}},
                    "qInfo": {"qId": "BookmarkList", "qType": "BookmarkList"},
                },
                "qBookmarkList",
                "GetBookmark",
                with_layout=True,
            ),
            "embeddedmedia": self._media(),
            "snapshots": self._generic(
                {
                    "qBookmarkListDef": {"qType": "snapshot", "qData": {}},
                    "qInfo": {"qId": "BookmarkList", "qType": "BookmarkList"},
                },
                "qBookmarkList",
                "GetBookmark",
            ),
            "fields": self._fields(),
            "dataconnections": self._connections(),
            "variables": self._generic(
                {
                    "qVariableListDef": {
                        "qType": "variable",
                        "qShowReserved": True,
                        "qShowConfig": True,
                        "qData": {"info": "/qDimInfos"},
                        "qMeta": {},
                    },
                    "qInfo": {"qId": "VariableList", "qType": "VariableList"},
                },
                "qVariableList",
                "GetVariableById",
            ),
        }
        values = dict(zip(parts, await _all(*parts.values()), strict=True))
        values["appId"] = encode_json(app_id)
        return list(_object(values))


def _object(values: dict[str, Fragment | None]) -> Iterator[bytes]:
    """The pieces of a JSON object of already encoded values; None values are left out."""
    separator = b"{"
    for key, value in values.items():
        if value is None:
            continue
        yield separator + encode_json(key) + b":"
        separator = b","
        if isinstance(value, bytes):
            yield value
            continue
        yield b"["
        for index, item in enumerate(value):
            if index:
                yield b","
            yield item
        yield b"]"
    yield b"}" if separator == b"," else b"{}"
