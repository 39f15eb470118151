"""The simulated site: its entities as QRS serves them, and what each app and task does when run.

A site is described in a YAML file (see ``demo_site.yaml`` for a complete example). Entities are kept
as the full JSON objects QRS returns, so serving them costs nothing; condensed forms are derived. Ids not
given in the file are derived from names, so a site file always yields the same ids.
"""

from __future__ import annotations

import copy
import datetime
import random
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from qliksim.licensing import ACCESS_BY_NAME, ACCESS_TYPES, QUARANTINE_RULES, Licensing, ServerLicence
from qliksim.nodes import SERVICE_TYPES, Node, service_statuses
from qliksim.times import NEVER, instant, iso, now_iso

EMPTY_GUID = "00000000-0000-0000-0000-000000000000"
_NAMESPACE = uuid.UUID("3d3c3d36-7a53-4b55-9e37-9f1a4d5e2c11")

TASK_TYPES = {
    "reload": (0, "ReloadTask"),
    "externalprogram": (1, "ExternalProgramTask"),
    "usersync": (2, "UserSyncTask"),
    # The Nov-2022 QRS spec has taskType 3 but no entity for it, so its schemaPath is a best guess.
    "distribute": (3, "DistributionTask"),
}
OUTCOMES = {"success": 7, "fail": 8, "abort": 6}
# A distribution run ends as the distribution service reports; an abort only comes from a stop.
DISTRIBUTE_OUTCOMES = ("success", "fail")


class SiteError(ValueError):
    """The site file is not usable; the message names the entry."""


def stable_id(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}/{name}"))


@dataclass
class RunBehaviour:
    """What happens when an app reloads or a task runs."""

    outcome: str = "success"
    duration_ms: int = 1000
    script_log: list[str] = field(default_factory=list)
    error: str = ""
    queued_ms: int = 0  # distribution tasks only: time spent in DistributionQueue before running


@dataclass
class Site:
    hostname: str = "sense1"
    tags: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom_properties: dict[str, dict[str, Any]] = field(default_factory=dict)
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    data_connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_content: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_behaviour: dict[str, RunBehaviour] = field(default_factory=dict)
    task_behaviour: dict[str, RunBehaviour] = field(default_factory=dict)
    execution_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    results_by_execution: dict[str, str] = field(default_factory=dict)  # execution id -> result id
    execution_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    script_logs: dict[str, str] = field(default_factory=dict)
    allow_not: bool = False
    licensing: Licensing = field(default_factory=Licensing)
    nodes: list[Node] = field(default_factory=list)
    system_info: dict[str, str] = field(default_factory=dict)

    # -- lookups --------------------------------------------------------------------------------------

    def collection(self, kind: str) -> dict[str, dict[str, Any]]:
        """Entities of a QRS type, by id. ``task`` holds every task type."""
        if kind in ACCESS_TYPES:
            return self.licensing.table(kind, datetime.datetime.now(datetime.UTC))
        if kind == "servicestatus":
            return service_statuses(self.nodes)
        tables = {
            "app": self.apps,
            "task": self.tasks,
            "tag": self.tags,
            "custompropertydefinition": self.custom_properties,
            "user": self.users,
            "stream": self.streams,
            "dataconnection": self.data_connections,
            "executionresult": self.execution_results,
            "executionsession": self.execution_sessions,
        }
        if kind in tables:
            return tables[kind]
        for type_name, (_, schema) in TASK_TYPES.items():
            if kind == f"{type_name}task":
                return {i: t for i, t in self.tasks.items() if t["schemaPath"] == schema}
        raise KeyError(kind)

    def find_by_name(
        self, table: dict[str, dict[str, Any]], name: str, what: str, where: str
    ) -> dict[str, Any]:
        for entity in table.values():
            if entity.get("name") == name:
                return entity
        raise SiteError(f"{where}: unknown {what} {name!r}")

    def user_by_key(self, key: str) -> dict[str, Any]:
        directory, _, user_id = key.partition("\\")
        for user in self.users.values():
            if (
                user["userDirectory"].lower() == directory.lower()
                and user["userId"].lower() == user_id.lower()
            ):
                return user
        raise SiteError(f"unknown user {key!r} (write DIRECTORY\\userid)")

    def node(self, name: str) -> Node:
        """A node by name or host name, case-insensitively; KeyError if none."""
        for node in self.nodes:
            if name.lower() in (node.name.lower(), node.host_name.lower()):
                return node
        raise KeyError(name)

    # -- changes --------------------------------------------------------------------------------------

    def delete_app(self, app_id: str) -> bool:
        """Remove an app with its content and, as QRS does, the reload tasks of the app."""
        if self.apps.pop(app_id, None) is None:
            return False
        self.app_content.pop(app_id, None)
        self.app_behaviour.pop(app_id, None)
        for task_id in [i for i, t in self.tasks.items() if (t.get("app") or {}).get("id") == app_id]:
            del self.tasks[task_id]
            self.task_behaviour.pop(task_id, None)
        return True

    def allocate(self, kind: str, spec: dict[str, Any], created: str) -> dict[str, Any]:
        """Allocate professional or analyzer access to ``spec["user"]`` (``DIR\\user``), last used at
        ``lastUsed`` (ISO), ``lastUsedDaysAgo`` days ago, or never. SiteError for a bad entry."""
        if kind not in ACCESS_BY_NAME:
            raise SiteError(f"access type must be one of {', '.join(ACCESS_BY_NAME)}, got {kind!r}")
        collection = ACCESS_BY_NAME[kind]
        user = self.user_by_key(str(spec.get("user", "")))
        try:
            if "lastUsedDaysAgo" in spec:
                moment = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
                    days=float(spec["lastUsedDaysAgo"])
                )
                last_used = iso(moment)
            else:
                last_used = iso(instant(str(spec["lastUsed"]))) if spec.get("lastUsed") else NEVER
        except (TypeError, ValueError):
            raise SiteError(f"{kind} access of {spec['user']}: lastUsed is not a date") from None
        allocation_id = str(spec.get("id") or stable_id(collection, user["id"]))
        base = _standard(allocation_id, ACCESS_TYPES[collection][1], created)
        return self.licensing.allocate(collection, base, condensed_user(user), last_used)


# -- building entities ----------------------------------------------------------------------------------


def _standard(entity_id: str, schema: str, created: str) -> dict[str, Any]:
    return {
        "id": entity_id,
        "createdDate": created,
        "modifiedDate": created,
        "modifiedByUserName": "INTERNAL\\sa_repository",
        "schemaPath": schema,
        "privileges": None,
    }


def condensed_tag(tag: dict[str, Any]) -> dict[str, Any]:
    return {"id": tag["id"], "name": tag["name"], "privileges": None}


def condensed_user(user: dict[str, Any]) -> dict[str, Any]:
    return {
        key: user[key] for key in ("id", "userId", "userDirectory", "userDirectoryConnectorName", "name")
    } | {"privileges": None}


def condensed_stream(stream: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if stream is None else {"id": stream["id"], "name": stream["name"], "privileges": None}


def condensed_app(app: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "name",
        "appId",
        "publishTime",
        "published",
        "stream",
        "savedInProductVersion",
        "migrationHash",
        "availabilityStatus",
    )
    return {key: app[key] for key in keys} | {"privileges": None}


def condensed_task(task: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "taskType", "enabled", "taskSessionTimeout", "maxRetries")
    return {key: task[key] for key in keys} | {"privileges": None}


def condensed_reference(entity: dict[str, Any]) -> dict[str, Any]:
    """The condensed form of types whose condensed schema has no fields of its own."""
    return {"id": entity["id"], "privileges": None}


CONDENSERS = {
    "app": condensed_app,
    "tag": condensed_tag,
    "user": condensed_user,
    "task": condensed_task,
    "reloadtask": condensed_task,
    "externalprogramtask": condensed_task,
    "usersynctask": condensed_task,
    "professionalaccesstype": condensed_reference,
    "analyzeraccesstype": condensed_reference,
    "servicestatus": condensed_reference,
}


def never_run_result() -> dict[str, Any]:
    return {
        "id": EMPTY_GUID,
        "executingNodeName": "",
        "status": 0,
        "startTime": NEVER,
        "stopTime": NEVER,
        "duration": 0,
        "fileReferenceID": EMPTY_GUID,
        "scriptLogAvailable": False,
        "details": [],
        "scriptLogLocation": "",
        "scriptLogSize": 0,
        "privileges": None,
    }


def _behaviour(
    spec: dict[str, Any] | None, where: str, outcomes: tuple[str, ...] = tuple(OUTCOMES)
) -> RunBehaviour:
    spec = spec or {}
    outcome = spec.get("outcome", "success")
    if outcome not in outcomes:
        raise SiteError(f"{where}: outcome must be one of {', '.join(outcomes)}, got {outcome!r}")
    log = spec.get("scriptLog", [])
    if isinstance(log, str):
        log = log.splitlines()
    return RunBehaviour(
        outcome,
        int(spec.get("durationMs", 1000)),
        [str(line) for line in log],
        str(spec.get("error", "")),
        int(spec.get("queuedMs", 0)),
    )


def _custom_values(site: Site, spec: dict[str, Any] | None, created: str, where: str) -> list[dict[str, Any]]:
    values = []
    for name, assigned in (spec or {}).items():
        definition = site.find_by_name(site.custom_properties, name, "custom property", where)
        for value in assigned if isinstance(assigned, list) else [assigned]:
            entry = _standard(stable_id("cpvalue", f"{where}/{name}/{value}"), "CustomPropertyValue", created)
            entry.pop("privileges")
            entry |= {
                "value": str(value),
                "definition": {
                    "id": definition["id"],
                    "name": definition["name"],
                    "valueType": definition["valueType"],
                    "choiceValues": definition["choiceValues"],
                    "privileges": None,
                },
            }
            values.append(entry)
    return values


def _tags(site: Site, names: list[str] | None, where: str) -> list[dict[str, Any]]:
    return [condensed_tag(site.find_by_name(site.tags, name, "tag", where)) for name in names or []]


def build_site(document: dict[str, Any]) -> Site:
    """A Site from a parsed site file."""
    if not isinstance(document, dict):
        raise SiteError("a site file is a mapping")
    site = Site(
        hostname=str(document.get("hostname", "sense1")), allow_not=bool(document.get("filterNot", False))
    )
    created = str(document.get("created", "2024-01-15T08:00:00.000Z"))
    for name in document.get("tags", []):
        site.tags[stable_id("tag", name)] = _standard(stable_id("tag", name), "Tag", created) | {"name": name}
    for spec in document.get("customProperties", []):
        cp_id = spec.get("id") or stable_id("cp", spec["name"])
        site.custom_properties[cp_id] = _standard(cp_id, "CustomPropertyDefinition", created) | {
            "name": spec["name"],
            "valueType": spec.get("valueType", "Text"),
            "choiceValues": [str(v) for v in spec.get("choiceValues", [])],
            "objectTypes": spec.get("objectTypes", ["App", "ReloadTask"]),
            "description": spec.get("description", ""),
        }
    for spec in document.get("streams", []):
        stream_id = spec.get("id") or stable_id("stream", spec["name"])
        site.streams[stream_id] = _standard(stream_id, "Stream", created) | {
            "name": spec["name"],
            "customProperties": [],
            "tags": [],
            "owner": None,
        }
    for spec in document.get("users", []):
        key = f"{spec['userDirectory']}\\{spec['userId']}"
        user_id = spec.get("id") or stable_id("user", key.lower())
        where = f"user {key}"
        user = _standard(user_id, "User", created) | {
            "customProperties": _custom_values(site, spec.get("customProperties"), created, where),
            "userId": spec["userId"],
            "userDirectory": spec["userDirectory"],
            "userDirectoryConnectorName": spec["userDirectory"],
            "name": spec.get("name", spec["userId"]),
            "roles": spec.get("roles", []),
            "attributes": [],
            "inactive": bool(spec.get("inactive", False)),
            "removedExternally": bool(spec.get("removedExternally", False)),
            "blacklisted": bool(spec.get("blacklisted", False)),
            "deleteProhibited": False,
            "tags": _tags(site, spec.get("tags"), where),
            "favorites": [],
        }
        if spec.get("email"):
            attribute = _standard(stable_id("attr", key + "/email"), "UserAttribute", created)
            attribute.pop("privileges")
            user["attributes"].append(
                attribute
                | {"attributeType": "Email", "attributeValue": spec["email"], "externalId": spec["email"]}
            )
        site.users[user_id] = user
    for spec in document.get("dataConnections", []):
        connection_id = spec.get("id") or stable_id("dataconnection", spec["name"])
        site.data_connections[connection_id] = _standard(connection_id, "DataConnection", created) | {
            "name": spec["name"],
            "connectionstring": spec.get("connectionString", ""),
            "type": spec.get("type", "folder"),
            "username": spec.get("userName", ""),
            "customProperties": [],
            "tags": [],
            "owner": None,
        }
    for spec in document.get("apps", []):
        _add_app(site, spec, created)
    for spec in document.get("tasks", []):
        _add_task(site, spec, created)
    generated = document.get("generate")
    if generated:
        _generate(site, generated, created)
    _add_nodes(site, document.get("nodes") or [{"name": "Central", "hostName": site.hostname}])
    _add_licensing(site, document, created)
    site.system_info = _system_info(document.get("systemInfo") or {})
    return site


def _add_nodes(site: Site, specs: list[dict[str, Any]]) -> None:
    started = now_iso()
    for number, spec in enumerate(specs):
        disabled = frozenset(str(s).lower() for s in spec.get("disabled", []))
        if not disabled <= set(SERVICE_TYPES):
            raise SiteError(f"node {spec['name']}: services are {', '.join(SERVICE_TYPES)}")
        host_name = str(spec.get("hostName", spec["name"]))
        site.nodes.append(
            Node(
                str(spec.get("id") or stable_id("node", host_name.lower())),
                str(spec["name"]),
                host_name,
                # The first node is the central one unless the file names another.
                bool(spec.get("central", number == 0 and not any(s.get("central") for s in specs))),
                disabled,
                changed=dict.fromkeys(SERVICE_TYPES, started),
            )
        )
    if sum(node.central for node in site.nodes) != 1:
        raise SiteError("nodes: exactly one node is central")


def _licence_dates(spec: dict[str, Any], today: datetime.date) -> tuple[datetime.date, datetime.date]:
    """Valid from and to, from ``validFrom``/``validTo`` (dates) or ``validForDays`` (from today)."""
    try:
        valid_from = datetime.date.fromisoformat(str(spec.get("validFrom", "2024-01-01")))
        if "validForDays" in spec:
            return valid_from, today + datetime.timedelta(days=int(spec["validForDays"]))
        return valid_from, datetime.date.fromisoformat(str(spec["validTo"]))
    except (TypeError, ValueError):
        raise SiteError(
            "license: validFrom and validTo are dates (YYYY-MM-DD), validForDays a number"
        ) from None


def _add_licensing(site: Site, document: dict[str, Any], created: str) -> None:
    spec = document.get("license")
    licensing = site.licensing
    if spec:
        valid_from, valid_to = _licence_dates(spec, datetime.datetime.now(datetime.UTC).date())
        serial = str(spec.get("serial", "9999000000001234"))
        licensing.licence = ServerLicence(
            _standard(stable_id("license", serial), "License", created),
            serial,
            str(spec.get("organization", "Example AB")),
            valid_from,
            valid_to,
            bool(spec.get("expired", False)),
            bool(spec.get("subscription", True)),
        )
    access = document.get("accessTypes") or {}
    licensing.quarantine_rule = str(document.get("accessQuarantine", "recent"))
    if licensing.quarantine_rule not in QUARANTINE_RULES:
        raise SiteError(f"accessQuarantine must be one of {', '.join(QUARANTINE_RULES)}")
    for kind, type_spec in access.items():
        if kind not in ACCESS_BY_NAME:
            raise SiteError(f"accessTypes: types are {', '.join(ACCESS_BY_NAME)}, got {kind!r}")
        licensing.totals[kind] = int(type_spec.get("total", 0))
        for allocation in type_spec.get("allocations", []):
            site.allocate(kind, allocation, created)


def _system_info(spec: dict[str, Any]) -> dict[str, str]:
    """What a node's ``/v1/systeminfo`` on port 9032 answers; every field may be set in the site file."""
    version = str(spec.get("version", "14.173.4"))
    return {
        "contentHash": str(spec.get("contentHash", stable_id("contenthash", version).replace("-", ""))),
        "senseId": str(spec.get("senseId", f"qliksenseserver:{version}")),
        "originalClassName": "Composition",
        "version": version,
        "deploymentType": str(spec.get("deploymentType", "QlikSenseServer")),
        "releaseLabel": str(spec.get("releaseLabel", "February 2024 Patch 1")),
        "deprecatedProductVersion": str(spec.get("deprecatedProductVersion", "4.0.X")),
        "productName": str(spec.get("productName", "Qlik Sense")),
        "copyrightYearRange": str(spec.get("copyrightYearRange", "1993-2024")),
    }


def _add_app(site: Site, spec: dict[str, Any], created: str) -> None:
    name = spec["name"]
    app_id = spec.get("id") or stable_id("app", name)
    where = f"app {name}"
    owner = site.user_by_key(spec.get("owner", "INTERNAL\\sa_repository")) if site.users else None
    stream = site.find_by_name(site.streams, spec["stream"], "stream", where) if spec.get("stream") else None
    app = _standard(app_id, "App", created) | {
        "customProperties": _custom_values(site, spec.get("customProperties"), created, where),
        "owner": condensed_user(owner)
        if owner
        else {
            "id": EMPTY_GUID,
            "userId": "sa_repository",
            "userDirectory": "INTERNAL",
            "userDirectoryConnectorName": "",
            "name": "sa_repository",
            "privileges": None,
        },
        "name": name,
        "appId": "",
        "sourceAppId": EMPTY_GUID,
        "targetAppId": EMPTY_GUID,
        "publishTime": created if stream else NEVER,
        "published": stream is not None,
        "tags": _tags(site, spec.get("tags"), where),
        "description": spec.get("description", ""),
        "stream": condensed_stream(stream),
        "fileSize": int(spec.get("fileSize", 262144)),
        "lastReloadTime": spec.get("lastReloadTime", created),
        "thumbnail": "",
        "savedInProductVersion": "12.1477.4",
        "migrationHash": "9e9a5a58a7b5d9ff4a9b3e3ea5a3b3e4c7b0c6e1",
        "dynamicColor": "",
        "availabilityStatus": 1,
        "lastDataDistribution": None,
    }
    site.apps[app_id] = app
    site.app_behaviour[app_id] = _behaviour(spec.get("reload"), where)
    content = {
        key: copy.deepcopy(spec.get(key, []))
        for key in (
            "sheets",
            "stories",
            "masterobjects",
            "appprops",
            "dimensions",
            "measures",
            "bookmarks",
            "snapshots",
            "variables",
            "fields",
            "media",
            "lineage",
        )
    }
    content["script"] = spec.get(
        "script", "///$tab Main\r\nSET ThousandSep=',';\r\nLOAD 1 as Dummy AutoGenerate 1;\r\n"
    )
    content["properties"] = spec.get("properties", {})
    content["connections"] = [
        site.find_by_name(site.data_connections, c, "data connection", where)["id"]
        for c in spec.get("dataConnections", [])
    ]
    site.app_content[app_id] = content


def _add_task(site: Site, spec: dict[str, Any], created: str) -> None:
    name = spec["name"]
    kind = spec.get("type", "reload")
    if kind not in TASK_TYPES:
        raise SiteError(f"task {name}: type must be one of {', '.join(TASK_TYPES)}, got {kind!r}")
    task_id = spec.get("id") or stable_id("task", name)
    where = f"task {name}"
    task_type, schema = TASK_TYPES[kind]
    task = _standard(task_id, schema, created) | {
        "customProperties": _custom_values(site, spec.get("customProperties"), created, where),
        "isManuallyTriggered": False,
        "operational": {
            "id": stable_id("operational", task_id),
            "lastExecutionResult": never_run_result(),
            "nextExecution": NEVER,
            "privileges": None,
        },
        "name": name,
        "taskType": task_type,
        "enabled": bool(spec.get("enabled", True)),
        "taskSessionTimeout": int(spec.get("taskSessionTimeout", 1440)),
        "maxRetries": int(spec.get("maxRetries", 0)),
        "tags": _tags(site, spec.get("tags"), where),
    }
    if kind == "reload":
        app = site.find_by_name(site.apps, spec["app"], "app", where) if "app" in spec else None
        if app is None:
            raise SiteError(f"{where}: a reload task needs an app")
        task |= {"app": condensed_app(app), "isPartialReload": bool(spec.get("partial", False))}
    elif kind == "distribute":
        if "app" in spec:
            raise SiteError(f"{where}: a distribution task has no app")
    elif kind == "externalprogram":
        task |= {
            "path": spec.get("path", "C:\\Scripts\\run.cmd"),
            "parameters": spec.get("parameters", ""),
            "qlikUser": None,
        }
    else:
        task |= {
            "userDirectory": {
                "id": stable_id("userdirectory", spec.get("userDirectory", "LAB")),
                "name": spec.get("userDirectory", "LAB"),
                "type": "Repository.UserDirectoryConnectors.ODBC.ODBCSql",
                "privileges": None,
            }
        }
    # Move the standard trailer keys last, as QRS writes them.
    for key in ("privileges", "schemaPath"):
        task[key] = task.pop(key)
    site.tasks[task_id] = task
    behaviour_spec = spec.get("run") or {}
    if kind == "reload" and not behaviour_spec:
        app_behaviour = site.app_behaviour[task["app"]["id"]]
        behaviour = copy.deepcopy(app_behaviour)
    elif kind == "distribute":
        behaviour = _behaviour({"queuedMs": 500} | (spec.get("distribute") or {}), where, DISTRIBUTE_OUTCOMES)
    else:
        behaviour = _behaviour(behaviour_spec, where)
    site.task_behaviour[task_id] = behaviour


def _generate(site: Site, spec: dict[str, Any], created: str) -> None:
    """Extra apps and tasks so that lists look like a real site's; deterministic for a given seed."""
    rng = random.Random(int(spec.get("seed", 1)))
    streams = list(site.streams.values())
    owners = list(site.users.values())
    areas = [
        "Sales",
        "Finance",
        "HR",
        "Logistics",
        "Marketing",
        "Procurement",
        "Production",
        "Quality",
        "Service",
    ]
    kinds = ["Dashboard", "Analysis", "Extract", "Transform", "Monitor", "Report"]
    for number in range(int(spec.get("apps", 0))):
        name = f"{rng.choice(areas)} {rng.choice(kinds)} {number + 1:02d}"
        stream = rng.choice(streams)["name"] if streams and rng.random() < 0.7 else None
        owner = rng.choice(owners) if owners else None
        outcome = "fail" if rng.random() < 0.1 else "success"
        _add_app(
            site,
            {
                "name": name,
                "stream": stream,
                "owner": f"{owner['userDirectory']}\\{owner['userId']}"
                if owner
                else "INTERNAL\\sa_repository",
                "reload": {"outcome": outcome, "durationMs": rng.randint(500, 5000)},
                "sheets": [
                    {"id": stable_id("sheet", f"{name}/{i}"), "title": f"Sheet {i + 1}"}
                    for i in range(rng.randint(1, 4))
                ],
            },
            created,
        )
        _add_task(site, {"name": f"Reload {name}", "app": name}, created)


def load_site(path: Path | None) -> Site:
    """The site described by a YAML file; the built-in demo site when ``path`` is None."""
    if path is None:
        text = resources.files("qliksim").joinpath("demo_site.yaml").read_text(encoding="utf-8")
    else:
        text = path.read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SiteError(f"not valid YAML: {exc}") from exc
    try:
        return build_site(document)
    except KeyError as exc:
        raise SiteError(f"missing key {exc}") from exc
