"""What an app holds as the Engine serves it, built from the site file: its objects (sheets, stories,
master objects, app properties and their children), dimensions, measures, bookmarks, variables, fields,
connections, and the properties and layouts the Engine's methods answer with.

The protocol (sockets, JSON-RPC, handles) is engine.py's; nothing here knows of it.
"""

from __future__ import annotations

from typing import Any

from qliksim.site import Site

# The app-object types, and the key of the site file's app entry that lists them.
APP_OBJECT_KEYS = {
    "sheet": "sheets",
    "story": "stories",
    "masterobject": "masterobjects",
    "appprops": "appprops",
}

# The other generic objects the site file lists per app, each with an id, looked up by it.
_ITEM_KEYS = ("dimensions", "measures", "bookmarks", "snapshots", "variables")
_GENERIC_KEYS = {*APP_OBJECT_KEYS.values(), *_ITEM_KEYS}

# The list definitions a session object may hold, and the layout key each list is answered under.
LIST_DEFS = {
    "qAppObjectListDef": "qAppObjectList",
    "qDimensionListDef": "qDimensionList",
    "qMeasureListDef": "qMeasureList",
    "qBookmarkListDef": "qBookmarkList",
    "qVariableListDef": "qVariableList",
    "qFieldListDef": "qFieldList",
    "qMediaListDef": "qMediaList",
    "qUndoInfoDef": "qUndoInfo",
}


class AppModel:
    """The Engine's view of one app of the site: objects, lists and properties built from the site file."""

    def __init__(self, site: Site, app_id: str) -> None:
        self.site = site
        self.app_id = app_id
        self.app = site.apps[app_id]
        self.content = site.app_content[app_id]
        # Lookups by id, built once: an app with thousands of objects is read one object per call.
        self._objects: dict[str, dict[str, Any]] = {}
        for kind in APP_OBJECT_KEYS:
            for item in self.app_objects(kind):
                self._objects.setdefault(item["id"], item)
                for child in children(item):
                    if "id" in child:
                        self._objects.setdefault(child["id"], child)
        self._items = {key: {item["id"]: item for item in self.content[key]} for key in _ITEM_KEYS}

    def app_objects(self, kind: str) -> list[dict[str, Any]]:
        """The objects of one type: app objects (``sheet``, ``story``, ...) and the other generic objects
        (``dimension``, ``measure``, ...); none for a type the app does not hold."""
        key = APP_OBJECT_KEYS.get(kind, kind + "s")
        return [dict(item, type=kind) for item in self.content[key]] if key in _GENERIC_KEYS else []

    def all_infos(self) -> list[dict[str, Any]]:
        infos = [{"qId": i["id"], "qType": kind} for kind in APP_OBJECT_KEYS for i in self.app_objects(kind)]
        infos += [{"qId": d["id"], "qType": "dimension"} for d in self.content["dimensions"]]
        infos += [{"qId": m["id"], "qType": "measure"} for m in self.content["measures"]]
        infos += [{"qId": b["id"], "qType": "bookmark"} for b in self.content["bookmarks"]]
        infos += [{"qId": v["id"], "qType": "variable"} for v in self.content["variables"]]
        return infos

    def object_properties(self, item: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in item.items() if k not in ("id", "type", "title", "description", "children")}
        return {
            "qInfo": {"qId": item["id"], "qType": item["type"]},
            "qMetaDef": {"title": item.get("title", ""), "description": item.get("description", "")},
        } | extra

    def find_object(self, object_id: str) -> dict[str, Any] | None:
        return self._objects.get(object_id)

    def property_tree(self, properties: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        """``GetFullPropertyTree``'s entry of an object with these properties and children."""
        return {
            "qProperty": properties,
            "qChildren": [self.property_tree(self.object_properties(c), children(c)) for c in items],
            "qEmbeddedSnapshotRef": None,
        }

    def layout(self, properties: dict[str, Any]) -> dict[str, Any]:
        """The layout of an object with these properties: the lists it defines filled in, the rest as is."""
        layout: dict[str, Any] = {
            "qInfo": properties.get("qInfo", {}),
            "qMeta": properties.get("qMetaDef", {}),
        }
        for definition_key, layout_key in LIST_DEFS.items():
            if definition_key in properties:
                layout[layout_key] = self.list_layout(definition_key, properties[definition_key])
        for key, value in properties.items():
            if key not in LIST_DEFS and key not in ("qInfo", "qMetaDef"):
                layout[key] = value
        return layout

    def content_item(self, key: str, object_id: Any) -> dict[str, Any] | None:
        return self._items[key].get(object_id) if isinstance(object_id, str) else None

    def dimension(self, item: dict[str, Any]) -> dict[str, Any]:
        label = item.get("label", item["id"])
        return {
            "qInfo": {"qId": item["id"], "qType": "dimension"},
            "qDim": {
                "qGrouping": "N",
                "qFieldDefs": item.get("fields", [label]),
                "qFieldLabels": [label],
                "title": label,
            },
            "qMetaDef": {"title": label, "description": item.get("description", ""), "tags": []},
        }

    def measure(self, item: dict[str, Any]) -> dict[str, Any]:
        label = item.get("label", item["id"])
        return {
            "qInfo": {"qId": item["id"], "qType": "measure"},
            "qMeasure": {
                "qLabel": label,
                "qDef": item.get("expression", ""),
                "qGrouping": "N",
                "qExpressions": [],
                "qActiveExpression": 0,
            },
            "qMetaDef": {"title": label, "description": item.get("description", ""), "tags": []},
        }

    def bookmark(self, item: dict[str, Any], kind: str) -> dict[str, Any]:
        return {
            "qInfo": {"qId": item["id"], "qType": kind},
            "qMetaDef": {"title": item.get("title", ""), "description": item.get("description", "")},
        }

    def bookmark_layout(self, item: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
        return {
            "qInfo": properties["qInfo"],
            "qMeta": properties["qMetaDef"],
            "qBookmark": {"qStateData": item.get("stateData", []), "qUtcModifyTime": 45306.3},
        }

    def variable(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "qInfo": {"qId": item["id"], "qType": "variable"},
            "qName": item["name"],
            "qComment": item.get("comment", ""),
            "qDefinition": item.get("definition", ""),
            "qIncludeInBookmark": False,
            "qNumberPresentation": {"qType": "U", "qnDec": 10, "qUseThou": 0},
        }

    def variable_named(self, name: Any) -> dict[str, Any] | None:
        return next((v for v in self.content["variables"] if v["name"] == name), None)

    def list_layout(self, definition_key: str, definition: dict[str, Any]) -> Any:
        if definition_key == "qAppObjectListDef":
            kind = definition.get("qType", "")
            return {
                "qItems": [
                    {
                        "qInfo": {"qId": i["id"], "qType": kind},
                        "qMeta": {"title": i.get("title", ""), "description": i.get("description", "")},
                        "qData": {},
                    }
                    for i in self.app_objects(kind)
                ]
            }
        if definition_key == "qDimensionListDef":
            return {
                "qItems": [
                    {
                        "qInfo": {"qId": i["id"], "qType": "dimension"},
                        "qMeta": {"title": i.get("label", i["id"])},
                        "qData": {},
                    }
                    for i in self.content["dimensions"]
                ]
            }
        if definition_key == "qMeasureListDef":
            return {
                "qItems": [
                    {
                        "qInfo": {"qId": i["id"], "qType": "measure"},
                        "qMeta": {"title": i.get("label", i["id"])},
                        "qData": {},
                    }
                    for i in self.content["measures"]
                ]
            }
        if definition_key == "qBookmarkListDef":
            kind = definition.get("qType", "bookmark")
            items = self.content["bookmarks" if kind == "bookmark" else "snapshots"]
            return {
                "qItems": [
                    {
                        "qInfo": {"qId": i["id"], "qType": kind},
                        "qMeta": {"title": i.get("title", "")},
                        "qData": {},
                    }
                    for i in items
                ]
            }
        if definition_key == "qVariableListDef":
            return {
                "qItems": [
                    {
                        "qName": v["name"],
                        "qDefinition": v.get("definition", ""),
                        "qDescription": v.get("comment", ""),
                        "qIsReserved": False,
                        "qIsConfig": False,
                        "qIsScriptCreated": bool(v.get("scriptCreated", False)),
                        "qInfo": {"qId": v["id"], "qType": "variable"},
                        "qMeta": {},
                        "qData": {},
                    }
                    for v in self.content["variables"]
                ]
            }
        if definition_key == "qFieldListDef":
            return {
                "qItems": [
                    {
                        "qName": f["name"],
                        "qCardinal": f.get("cardinal", 0),
                        "qTags": f.get("tags", []),
                        "qIsSystem": False,
                        "qIsHidden": False,
                        "qIsSemantic": False,
                        "qSrcTables": f.get("tables", []),
                    }
                    for f in self.content["fields"]
                ]
            }
        if definition_key == "qMediaListDef":
            return {"qItems": [{"qUrlDef": m, "qUrl": m} for m in self.content["media"]]}
        return {}

    def connections(self) -> list[dict[str, Any]]:
        out = []
        for connection_id in self.content["connections"]:
            c = self.site.data_connections[connection_id]
            out.append(
                {
                    "qId": c["id"],
                    "qName": c["name"],
                    "qConnectionString": c["connectionstring"],
                    "qType": c["type"],
                    "qUserName": c["username"],
                    "qModifiedDate": c["modifiedDate"],
                    "qMeta": {"qName": c["name"]},
                    "qLogOn": "LOG_ON_SERVICE_USER",
                }
            )
        return out

    def app_properties(self) -> dict[str, Any]:
        properties: dict[str, Any] = {
            "qTitle": self.app["name"],
            "qLastReloadTime": self.app["lastReloadTime"],
            "qMigrationHash": self.app["migrationHash"],
            "qSavedInProductVersion": self.app["savedInProductVersion"],
            "qThumbnail": {"qUrl": ""},
            "qHasSectionAccess": False,
            "qUsage": "ANALYTICS",
            "description": self.app["description"],
        } | self.content["properties"]
        return properties

    def app_layout(self) -> dict[str, Any]:
        properties = self.app_properties()
        return {
            "qTitle": properties["qTitle"],
            "qFileName": self.app_id,
            "qLastReloadTime": properties["qLastReloadTime"],
            "qHasScript": True,
        }


def children(item: dict[str, Any]) -> list[dict[str, Any]]:
    """An object's children, each with its type (``object`` when the site file does not say)."""
    return [dict(child, type=child.get("type", "object")) for child in item.get("children", [])]


def doc_list(site: Site) -> list[dict[str, Any]]:
    """``GetDocList``'s entries: every app of the site."""
    return [
        {
            "qDocName": app["name"],
            "qConnectedUsers": 0,
            "qFileTime": 45306.3,
            "qFileSize": app["fileSize"],
            "qDocId": app["id"],
            "qMeta": {
                "createdDate": app["createdDate"],
                "modifiedDate": app["modifiedDate"],
                "published": app["published"],
                "publishTime": app["publishTime"],
                "privileges": ["read", "update"],
                "description": app["description"],
                "dynamicColor": "",
                "stream": app["stream"],
            },
            "qLastReloadTime": app["lastReloadTime"],
            "qTitle": app["name"],
            "qThumbnail": {"qUrl": ""},
            "qReadOnly": False,
            "qHasSectionAccess": False,
            "qIsDirectQueryMode": False,
            "qUsage": "ANALYTICS",
        }
        for app in site.apps.values()
    ]
