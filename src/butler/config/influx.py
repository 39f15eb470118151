"""Settings of the InfluxDB output: ``Butler.influxDb``.

The keys are upstream Butler's, so an existing file's InfluxDB section works unchanged: the server and
its version (1, 2 or 3) with one section of credentials per version, static tags for every point, and one
section per kind of task outcome (``reloadTaskFailure``, ``userSyncTaskSuccess``, ...). Where a key is
absent, the default is upstream's code default where it has one (version 1, port 8086), else the
template's value. ``bufferSize``, ``batchSize`` and ``flushIntervalSeconds`` are additions: upstream
wrote each point at once and lost it when InfluxDB was away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from butler.config.declare import part, setting
from butler.config.schema import Bool, Int, Key, ListOf, Number, Secret, Section, Spec, Str

_PORT = Int(1, 65535)
_LINES = Int(0, 100_000)
_NAME_VALUE = Section(keys={"name": Key(Str(), required=True), "value": Key(Str(), required=True)})
#: An InfluxQL duration literal (``10d``, ``1h30m``) or ``INF``.
_DURATION = re.compile(r"(?:\d+(?:ns|u|µ|ms|s|m|h|d|w))+|INF", re.IGNORECASE)


class _Duration(Spec):
    """A retention duration as InfluxDB reads it: refused here rather than by InfluxDB at the first write."""

    @property
    def expected(self) -> str:
        return "a duration such as 10d, 12h or 1w2d, or INF"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and _DURATION.fullmatch(value):
            return value
        self.fail(value, path, errors)
        return None


class _Version(Spec):
    """1, 2 or 3, also written as a string ("2"), as upstream reads it."""

    @property
    def expected(self) -> str:
        return "1, 2 or 3"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, bool) and str(value) in ("1", "2", "3"):
            return int(value)
        self.fail(value, path, errors)
        return None


def _tags(value: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((item["name"], item["value"]) for item in value)


def _static_tags(what: str) -> Any:
    return setting(
        "tag.static", ListOf(_NAME_VALUE), convert=_tags, help=f"[{{name, value}}]: tags of {what}"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxTaskEvent:
    """``Butler.influxDb.<event>`` for external program, user sync, distribute and preload tasks."""

    enable: bool = setting("enable", Bool(), False, help="write a point for each such task outcome")
    static_tags: tuple[tuple[str, str], ...] = _static_tags("these points")
    use_task_tags: bool = setting(
        "tag.dynamic.useTaskTags", Bool(), True, help="a tag taskTag_<name> = true per tag of the task"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxReloadFailure(InfluxTaskEvent):
    """``Butler.influxDb.reloadTaskFailure``."""

    enable: bool = setting("enable", Bool(), True, help="write a point for each failed reload")
    use_app_tags: bool = setting(
        "tag.dynamic.useAppTags", Bool(), True, help="a tag appTag_<name> = true per tag of the app"
    )
    tail_lines: int = setting(
        "tailScriptLogLines", _LINES, 20, help="last lines of the script log in the reload_log field"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxReloadSuccess(InfluxReloadFailure):
    """``Butler.influxDb.reloadTaskSuccess``: written for every reload, or for the tasks whose custom
    property has the enabled value."""

    enable: bool = setting(
        "enable",
        Bool(),
        True,
        help="write points for successful reloads (allReloadTasks or byCustomProperty)",
    )
    all_reload_tasks: bool = setting(
        "allReloadTasks.enable", Bool(), False, help="a point for every successful reload"
    )
    by_custom_property: bool = setting(
        "byCustomProperty.enable",
        Bool(),
        False,
        help="a point for the reloads whose task has the custom property with the enabled value",
    )
    custom_property: str = setting(
        "byCustomProperty.customPropertyName",
        Str(),
        "Butler_SuccessReloadTask_InfluxDB",
        help="that custom property",
    )
    enabled_value: str = setting(
        "byCustomProperty.enabledValue", Str(), "Yes", help="the value that enables the point"
    )
    head_lines: int = setting(
        "headScriptLogLines", _LINES, 15, help="first lines of the script log in the reload_log field"
    )
    tail_lines: int = setting(
        "tailScriptLogLines", _LINES, 25, help="last lines of the script log in the reload_log field"
    )


#: The task-outcome sections, by upstream's key.
TASK_EVENTS: dict[str, type[InfluxTaskEvent]] = {
    "reloadTaskFailure": InfluxReloadFailure,
    "reloadTaskSuccess": InfluxReloadSuccess,
    "userSyncTaskSuccess": InfluxTaskEvent,
    "userSyncTaskFailure": InfluxTaskEvent,
    "externalProgramTaskSuccess": InfluxTaskEvent,
    "externalProgramTaskFailure": InfluxTaskEvent,
    "distributeTaskSuccess": InfluxTaskEvent,
    "distributeTaskFailure": InfluxTaskEvent,
    "preloadTaskSuccess": InfluxTaskEvent,
    "preloadTaskFailure": InfluxTaskEvent,
}


@dataclass(frozen=True, kw_only=True)
class InfluxV1:
    """``Butler.influxDb.v1Config``."""

    auth: bool = setting("auth.enable", Bool(), False, help="log in to InfluxDB (basic authentication)")
    username: str = setting("auth.username", Str(), "", help="the InfluxDB user")
    password: str = setting("auth.password", Secret(), "", help="the InfluxDB user's password")
    database: str = setting("dbName", Str(), "butler", help="the database written to; created if missing")
    retention_policy: str = setting(
        "retentionPolicy.name", Str(), "10d", help="the retention policy written to; created if missing"
    )
    retention_duration: str = setting(
        "retentionPolicy.duration", _Duration(), "10d", help="how long that policy keeps points"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxV2:
    """``Butler.influxDb.v2Config``; the bucket must exist."""

    org: str = setting("org", Str(), "", help="the organization (required for version 2)")
    bucket: str = setting("bucket", Str(), "", help="the bucket written to (required for version 2)")
    description: str | None = setting("description", Str(nullable=True), None, help="accepted and not used")
    token: str = setting("token", Secret(), "", help="an API token that may write to the bucket (required)")
    retention: str | None = setting(
        "retentionDuration", Str(nullable=True), None, help="accepted and not used: the bucket exists"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxV3:
    """``Butler.influxDb.v3Config``."""

    database: str = setting("database", Str(), "", help="the database written to (required for version 3)")
    description: str | None = setting("description", Str(nullable=True), None, help="accepted and not used")
    token: str = setting("token", Secret(), "", help="a token that may write to the database (required)")
    retention: str | None = setting(
        "retentionDuration", Str(nullable=True), None, help="accepted and not used"
    )
    write_timeout: float = setting(
        "writeTimeout",
        Int(1, 3_600_000),
        10000,
        convert=lambda ms: ms / 1000,
        help="milliseconds one write may take",
    )
    query_timeout: int = setting(
        "queryTimeout", Int(1), 60000, help="accepted and not used: Butler only writes"
    )


@dataclass(frozen=True, kw_only=True)
class InfluxSettings:
    """``Butler.influxDb``."""

    enable: bool = setting("enable", Bool(), False, help="write points to InfluxDB")
    host: str = setting("hostIP", Str(), "localhost", help="host name or IP address of InfluxDB")
    port: int = setting("hostPort", _PORT, 8086, help="its HTTP port")
    version: int = setting("version", _Version(), 1, help="InfluxDB's major version: 1, 2 or 3")
    v1: InfluxV1 = part("v1Config", InfluxV1, help="InfluxDB 1.x: database, retention policy, login")
    v2: InfluxV2 = part("v2Config", InfluxV2, help="InfluxDB 2.x: organization, bucket, token")
    v3: InfluxV3 = part("v3Config", InfluxV3, help="InfluxDB 3.x: database, token")
    static_tags: tuple[tuple[str, str], ...] = _static_tags("every point")
    buffer_size: int = setting(
        "bufferSize",
        Int(1, 10_000_000),
        100_000,
        addition=True,
        help="points kept while InfluxDB is slow or away; more are dropped and counted",
    )
    batch_size: int = setting(
        "batchSize", Int(1, 100_000), 1000, addition=True, help="points written in one request at most"
    )
    flush_interval: float = setting(
        "flushIntervalSeconds",
        Number(0.01, 3600),
        1,
        convert=float,
        addition=True,
        help="a point waits at most this long for its batch to fill before it is written",
    )
    events: dict[str, InfluxTaskEvent] = part("", TASK_EVENTS)

    def event(self, name: str) -> InfluxTaskEvent:
        return self.events[name]

    def problems(self) -> list[str]:
        """What keeps the output from working, for the version in use; each line names the key."""
        if not self.enable:
            return []
        required = {2: ("v2Config", ("org", "bucket", "token")), 3: ("v3Config", ("database", "token"))}
        if self.version not in required:
            return []
        section, names = required[self.version]
        values = self.v2 if self.version == 2 else self.v3
        return [
            f"Butler.influxDb.{section}.{name}: required when version is {self.version}"
            for name in names
            if not getattr(values, name)
        ]


__all__ = ["TASK_EVENTS", "InfluxReloadFailure", "InfluxReloadSuccess", "InfluxSettings", "InfluxTaskEvent"]
