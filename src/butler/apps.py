"""Sense apps through the Engine: the list of apps, an app's metadata dump, and reloads.

The dump makes every Engine call it needs on one socket at once (the Engine answers as each completes),
so its time is a few round trips, not one per object. A reload answers as soon as the app is open (or,
with ``wait``, when the reload is over) and then starts the follow-up tasks through the task-start
service, so their outcome is known and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from butler.config.settings import CertificateSettings, EngineSettings
from butler.qlik.engine import EngineSession, engine_tls
from butler.task_start import TaskStarter

log = logging.getLogger("butler.apps")

APP_OBJECT_TYPES = ("sheet", "story", "masterobject", "appprops")


class AppService:
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

    async def dump(self, app_id: str) -> dict[str, Any]:
        async with self._session("/app/engineData") as engine:
            opened = await engine.call(-1, "OpenDoc", app_id, "", "", "", True)
            return await _Dump(engine, opened["qReturn"]["qHandle"]).run(app_id)

    async def reload(
        self, app_id: str, mode: int, partial: bool, on_success: list[str], on_failure: list[str], wait: bool
    ) -> dict[str, Any]:
        """Open the app; then reload it in the background (or, with ``wait``, before answering)."""
        engine = self._session(f"/app/{app_id}")
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
            success = bool((await engine.call(handle, "DoReload", mode, partial, False)).get("qReturn"))
            if success:
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


class _Dump:
    """Collects §6's keys with all Engine calls of a kind issued together."""

    def __init__(self, engine: EngineSession, doc: int) -> None:
        self.engine = engine
        self.doc = doc

    async def _list(self, definition: dict[str, Any]) -> dict[str, Any]:
        created = await self.engine.call(self.doc, "CreateSessionObject", definition)
        layout = await self.engine.call(created["qReturn"]["qHandle"], "GetLayout")
        return dict(layout["qLayout"])

    async def _app_objects(self, kind: str) -> list[Any]:
        layout = await self._list(
            {
                "qAppObjectListDef": {"qType": kind, "qData": {"id": "/qInfo/qId"}},
                "qInfo": {"qId": f"{kind}List", "qType": f"{kind}List"},
                "qMetaDef": {},
                "qExtendsId": "",
            }
        )

        async def tree(object_id: str) -> Any:
            found = await self.engine.call(self.doc, "GetObject", object_id)
            handle = found["qReturn"]["qHandle"]
            if handle is None:
                return None
            return (await self.engine.call(handle, "GetFullPropertyTree"))["qPropEntry"]

        items = layout.get("qAppObjectList", {}).get("qItems", [])
        return [t for t in await asyncio.gather(*(tree(i["qInfo"]["qId"]) for i in items)) if t is not None]

    async def _generic(
        self, definition: dict[str, Any], layout_key: str, getter: str, with_layout: bool = False
    ) -> list[Any]:
        layout = await self._list(definition)

        async def properties(item: dict[str, Any]) -> Any:
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
            return props

        items = layout.get(layout_key, {}).get("qItems", [])
        return [p for p in await asyncio.gather(*(properties(i) for i in items)) if p is not None]

    async def _connections(self) -> list[Any]:
        listed = (await self.engine.call(self.doc, "GetConnections"))["qConnections"]
        found = await asyncio.gather(*(self.engine.call(self.doc, "GetConnection", c["qId"]) for c in listed))
        return [f["qConnection"] for f in found]

    async def _lineage(self) -> list[Any] | None:
        try:
            return list((await self.engine.call(self.doc, "GetLineage"))["qLineage"])
        except Exception:  # upstream leaves lineage out when the Engine cannot give it
            return None

    async def run(self, app_id: str) -> dict[str, Any]:
        fields = {"qShowSystem": True, "qShowHidden": True, "qShowSrcTables": True, "qShowSemantic": True}
        gathered: list[Any] = await asyncio.gather(
            self.engine.call(self.doc, "GetAppProperties"),
            self.engine.call(self.doc, "GetScript"),
            self._lineage(),
            *(self._app_objects(kind) for kind in APP_OBJECT_TYPES),
            self._generic(
                {
                    "qDimensionListDef": {"qType": "dimension", "qData": {"info": "/qDimInfos"}, "qMeta": {}},
                    "qInfo": {"qId": "DimensionList", "qType": "DimensionList"},
                },
                "qDimensionList",
                "GetDimension",
            ),
            self._generic(
                {
                    "qMeasureListDef": {"qType": "measure", "qData": {"info": "/qMeasure"}, "qMeta": {}},
                    "qInfo": {"qId": "MeasureList", "qType": "MeasureList"},
                },
                "qMeasureList",
                "GetMeasure",
            ),
            self._generic(
                {
                    "qBookmarkListDef": {"qType": "bookmark", "qData": {}},
                    "qInfo": {"qId": "BookmarkList", "qType": "BookmarkList"},
                },
                "qBookmarkList",
                "GetBookmark",
                with_layout=True,
            ),
            self._list({"qInfo": {"qId": "mediaList", "qType": "MediaList"}, "qMediaListDef": {}}),
            self._generic(
                {
                    "qBookmarkListDef": {"qType": "snapshot", "qData": {}},
                    "qInfo": {"qId": "BookmarkList", "qType": "BookmarkList"},
                },
                "qBookmarkList",
                "GetBookmark",
            ),
            self._list({"qInfo": {"qId": "FieldList", "qType": "FieldList"}, "qFieldListDef": fields}),
            self._connections(),
            self._generic(
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
        )
        (
            sheets,
            stories,
            masterobjects,
            appprops,
            dimensions,
            measures,
            bookmarks,
            media,
            snapshots,
            field_list,
            connections,
            variables,
        ) = gathered[3:]
        properties, script, lineage = gathered[:3]
        dump: dict[str, Any] = {"properties": properties["qProp"], "loadScript": script["qScript"]}
        if lineage is not None:
            dump["lineage"] = lineage
        dump |= {
            "sheets": sheets,
            "stories": stories,
            "masterobjects": masterobjects,
            "appprops": appprops,
            "dimensions": dimensions,
            "measures": measures,
            "bookmarks": bookmarks,
            "embeddedmedia": [
                m
                for m in media.get("qMediaList", {}).get("qItems", [])
                if str(m.get("qUrlDef", "")).startswith("/media/")
            ],
            "snapshots": snapshots,
            "fields": field_list.get("qFieldList", {}).get("qItems", []),
            "dataconnections": connections,
            "variables": variables,
            "appId": app_id,
        }
        return dump
