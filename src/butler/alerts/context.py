"""What the channel builders know of a task outcome, and the Handlebars context they render with.

``AlertFacts`` is gathered once per outcome (task, app, execution result, script log, app owner) and
handed to every channel. ``template_context`` turns it into the fields upstream's templates use, with
upstream's mistakes repaired but its names kept: ``appStreamName`` is the
stream's name, ``host`` and ``tasId`` are aliases, ``executionDetailsText`` is set. A missing execution
result or script log leaves its fields empty instead of losing the alert (upstream lost it).

Times are shown in the host's zone. Local1 is upstream's ``yyyy-LL-dd HH:mm:ss``; Local2 to Local5
stand for Luxon's en-US ``DATETIME_SHORT/MED/FULL_WITH_SECONDS`` with fixed English formats, so they do
not depend on the host's locale: ``1/15/2024, 11:30:00 AM``, ``Jan 15, 2024, 11:30:00 AM`` and (4 and
5, identical as upstream's) ``January 15, 2024 at 11:30:00 AM CET``, the zone as the system abbreviates
it. Times of 1753 (SQL Server's "never") show as ``-``.

Below the context are the helpers the builders share: HTTP payloads in the sender's shape, URLs shown
without their secret part, and rendering a Handlebars template into a JSON message that no value can
break and no text block makes too long for the receiver.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from butler.alerts.templates import compile_template, load_template
from butler.events.task_outcomes import TaskOutcome
from butler.executions import STATUS_NAMES
from butler.monitor_events import ServiceChange

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings

#: QRS's status names by code; the distribution states (13, 14) have none in alerts.
ALERT_STATUS_NAMES = STATUS_NAMES[:13]
NEVER_PREFIX = "1753"
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class AppOwner:
    """The owner of an app and the e-mail addresses of their user record."""

    name: str
    user_id: str
    user_directory: str
    emails: tuple[str, ...] = ()


@dataclass
class AlertFacts:
    """Everything known about one task outcome, for every channel.

    ``execution`` is QRS's execution result (``executionresult/full`` or a task's
    ``operational.lastExecutionResult``); ``script_log`` every line of the script log; each is None when
    QRS could not give it.
    """

    event: str
    outcome: TaskOutcome
    execution: dict[str, Any] | None
    script_log: list[str] | None
    owner: AppOwner | None
    butler_version: str


#: The alert event of a service's new state; other states alert as ``serviceStateChanged`` (webhooks and
#: New Relic only: e-mail, Slack and Teams have settings for these two).
SERVICE_EVENTS = {"STOPPED": "serviceStopped", "RUNNING": "serviceStarted"}
SERVICE_STATE_CHANGED = "serviceStateChanged"


@dataclass(frozen=True)
class ServiceFacts:
    """A Windows service that changed state, for every channel."""

    change: ServiceChange
    butler_version: str

    @property
    def event(self) -> str:
        return SERVICE_EVENTS.get(self.change.status, SERVICE_STATE_CHANGED)

    @property
    def rate_key(self) -> str:
        """Host, service and state: a stop and the start after it are limited separately (upstream's one
        limiter for both kept the start from being told after a stop)."""
        change = self.change
        return f"{change.host}|{change.service_name}|{change.status}"


def service_context(facts: ServiceFacts, settings: AlertSettings) -> dict[str, Any]:
    """The Handlebars context of a service alert (alerts.md §4.4)."""
    change = facts.change
    return {
        "host": change.host,
        "serviceStatus": change.status,
        "servicePrevStatus": change.previous,
        "serviceName": change.service_name,
        "serviceDisplayName": change.details.display_name,
        "serviceFriendlyName": change.friendly_name,
        "serviceStartType": change.details.start_type,
        "serviceExePath": change.details.exe_path,
        "genericUrls": [dict(url) for url in settings.generic_urls],
        "qlikSenseQMC": settings.urls.qmc,
        "qlikSenseHub": settings.urls.hub,
        "butlerVersion": facts.butler_version,
    }


def template_context(
    facts: AlertFacts,
    settings: AlertSettings,
    head_lines: int,
    tail_lines: int,
    *,
    slash_user: bool = False,
) -> dict[str, Any]:
    """The Handlebars context of a task alert.

    ``slash_user``: the user as ``DIR/user``, as upstream gives it to Slack, Teams, Signl4 and New Relic;
    otherwise ``DIR\\user`` (e-mail, webhooks).
    """
    outcome = facts.outcome
    event = outcome.event
    task = outcome.task or {}
    app = outcome.app or {}
    urls = settings.urls
    context: dict[str, Any] = {
        "hostName": event.host,
        "host": event.host,
        "user": user_name(event.user, slash=slash_user),
        "taskName": outcome.task_name,
        "taskId": event.task_id,
        "tasId": event.task_id,
        "taskCustomProperties": custom_properties(task),
        "taskTags": tag_names(task),
        "taskIsManuallyTriggered": task.get("isManuallyTriggered", ""),
        "taskIsPartialReload": task.get("isPartialReload", ""),
        "taskMaxRetries": task.get("maxRetries", ""),
        "taskModifiedByUsername": task.get("modifiedByUserName", ""),
        "taskModifiedDate": task.get("modifiedDate", ""),
        "taskSessionTimeout": task.get("taskSessionTimeout", ""),
        "taskNextExecution": _next_execution(task),
        "appName": outcome.app_name,
        "appId": event.app_id,
        "appUrl": app_url(urls.app_base_url, event.app_id),
        "appDescription": app.get("description", ""),
        "appFileSize": app.get("fileSize", ""),
        "appLastSuccessfulReload": app.get("lastReloadTime", ""),
        "appLastModifiedDate": app.get("modifiedDate", ""),
        "appLastModifiedByUserName": app.get("modifiedByUserName", ""),
        "appPublishTime": app.get("publishTime", ""),
        "appPublished": app.get("published", ""),
        "appStreamName": _stream_name(app),
        "appCustomProperties": custom_properties(app),
        "appTags": tag_names(app),
        "logTimeStamp": event.timestamp,
        "logLevel": event.level,
        "logMessage": event.message,
        "executionId": event.execution_id,
        **execution_fields(execution_of(facts)),
        **script_log_fields(facts, head_lines, tail_lines),
        "qlikSenseQMC": urls.qmc,
        "qlikSenseHub": urls.hub,
        "genericUrls": [dict(url) for url in settings.generic_urls],
        **owner_fields(facts),
        "butlerVersion": facts.butler_version,
    }
    return context


def user_name(user: str, *, slash: bool) -> str:
    return user.replace("\\", "/") if slash else user.replace("\\\\", "\\")


def app_url(base: str, app_id: str) -> str:
    if not base:
        return ""
    return f"{base.rstrip('/')}/{app_id}"


def tag_names(entity: dict[str, Any]) -> list[str]:
    return [str(t.get("name", "")) for t in entity.get("tags") or [] if isinstance(t, dict)]


def custom_properties(entity: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{name, value}]``, one entry per value, as upstream lists them."""
    found = []
    for cp in entity.get("customProperties") or []:
        if isinstance(cp, dict):
            definition = cp.get("definition") or {}
            name = definition.get("name", "") if isinstance(definition, dict) else ""
            found.append({"name": name, "value": cp.get("value", "")})
    return found


def custom_property_values(entity: dict[str, Any], name: str) -> list[str]:
    return [str(cp["value"]) for cp in custom_properties(entity) if cp["name"] == name]


def _next_execution(task: dict[str, Any]) -> str:
    operational = task.get("operational")
    value = operational.get("nextExecution") if isinstance(operational, dict) else None
    if not isinstance(value, str):
        return ""
    return "Never" if value.startswith(NEVER_PREFIX) else value


def _stream_name(app: dict[str, Any]) -> str:
    stream = app.get("stream")
    return str(stream.get("name", "")) if isinstance(stream, dict) else ""


def execution_of(facts: AlertFacts) -> dict[str, Any] | None:
    """The execution result, or failing that the task's last one: fetched with the task, it is the run
    the event is about unless the task ran again since."""
    if facts.execution is not None:
        return facts.execution
    operational = (facts.outcome.task or {}).get("operational")
    last = operational.get("lastExecutionResult") if isinstance(operational, dict) else None
    return last if isinstance(last, dict) and last.get("status") else None


def execution_fields(execution: dict[str, Any] | None) -> dict[str, Any]:
    """The execution-result fields; empty (never missing) when the result is not known."""
    if execution is None:
        return {
            "executingNodeName": "",
            "executionStatusNum": "",
            "executionStatusText": "",
            "executionDuration": {},
            "executionStartTime": {},
            "executionStopTime": {},
            "executionDetails": [],
            "executionDetailsConcatenated": "",
            "executionDetailsText": "",
            "scriptLogSize": "",
        }
    status = execution.get("status")
    details = sorted_details(execution)
    concatenated = details_concatenated(details)
    return {
        "executingNodeName": execution.get("executingNodeName", ""),
        "executionStatusNum": status if status is not None else "",
        "executionStatusText": status_text(status),
        "executionDuration": duration_parts(execution.get("duration")),
        "executionStartTime": time_formats(execution.get("startTime"), "startTime"),
        "executionStopTime": time_formats(execution.get("stopTime"), "stopTime"),
        "executionDetails": [
            {
                **time_formats(d.get("detailCreatedDate"), "timestamp"),
                "message": d.get("message", ""),
                "detailsType": d.get("detailsType", ""),
            }
            for d in details
        ],
        "executionDetailsConcatenated": concatenated,
        "executionDetailsText": concatenated,
        "scriptLogSize": execution.get("scriptLogSize", ""),
    }


def sorted_details(execution: dict[str, Any]) -> list[dict[str, Any]]:
    """The detail entries by creation time (a stable sort, as upstream's)."""
    return sorted(
        (d for d in execution.get("details") or [] if isinstance(d, dict)),
        key=lambda d: str(d.get("detailCreatedDate", "")),
    )


def details_concatenated(details: list[dict[str, Any]]) -> str:
    return "".join(f"{d.get('detailCreatedDate', '')}\t{d.get('message', '')}\n" for d in details)


def status_text(status: Any) -> str:
    if isinstance(status, int) and not isinstance(status, bool) and 0 <= status < len(ALERT_STATUS_NAMES):
        return ALERT_STATUS_NAMES[status]
    return ""


def duration_parts(duration: Any) -> dict[str, int]:
    """QRS's duration (ms) as Luxon's ``shiftTo('hours', 'minutes', 'seconds')``, seconds floored."""
    if isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0:
        return {}
    seconds = int(duration // 1000)
    return {"hours": seconds // 3600, "minutes": seconds % 3600 // 60, "seconds": seconds % 60}


def time_formats(value: Any, prefix: str) -> dict[str, str]:
    """``{<prefix>UTC, <prefix>Local1..5}`` of a QRS timestamp."""
    names = [f"{prefix}UTC", *(f"{prefix}Local{n}" for n in range(1, 6))]
    if not isinstance(value, str) or not value or value.startswith(NEVER_PREFIX):
        return dict.fromkeys(names, "-")
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return {names[0]: value, **dict.fromkeys(names[1:], "-")}
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    local = moment.astimezone()
    hour12 = local.hour % 12 or 12
    clock = f"{hour12}:{local.minute:02d}:{local.second:02d} {'AM' if local.hour < 12 else 'PM'}"
    month = MONTHS[local.month - 1]
    full = f"{month} {local.day}, {local.year} at {clock} {local.tzname() or ''}".rstrip()
    return {
        names[0]: value,
        names[1]: local.strftime("%Y-%m-%d %H:%M:%S"),
        names[2]: f"{local.month}/{local.day}/{local.year}, {clock}",
        names[3]: f"{month[:3]} {local.day}, {local.year}, {clock}",
        names[4]: full,
        names[5]: full,
    }


def script_log_fields(facts: AlertFacts, head_lines: int, tail_lines: int) -> dict[str, Any]:
    """Head and tail joined with ``\\r\\n`` as upstream sends them; empty when the log is not known."""
    lines = facts.script_log
    head_lines, tail_lines = max(head_lines, 0), max(tail_lines, 0)
    if lines is None:
        # The outcome may still hold the head and tail it was enriched with.
        outcome = facts.outcome
        if outcome.script_log_head is None and outcome.script_log_tail is None:
            return {
                "scriptLogSizeRows": "",
                "scriptLogSizeCharacters": "",
                "scriptLogHead": "",
                "scriptLogHeadCount": 0,
                "scriptLogTail": "",
                "scriptLogTailCount": 0,
            }
        head = (outcome.script_log_head or [])[:head_lines]
        tail = (outcome.script_log_tail or [])[-tail_lines:] if tail_lines else []
        return {
            "scriptLogSizeRows": "",
            "scriptLogSizeCharacters": "",
            "scriptLogHead": "\r\n".join(head),
            "scriptLogHeadCount": head_lines,
            "scriptLogTail": "\r\n".join(tail),
            "scriptLogTailCount": tail_lines,
        }
    return {
        "scriptLogSizeRows": len(lines),
        "scriptLogSizeCharacters": sum(len(line) for line in lines) + 2 * max(len(lines) - 1, 0),
        "scriptLogHead": "\r\n".join(lines[:head_lines]),
        "scriptLogHeadCount": head_lines,
        "scriptLogTail": "\r\n".join(lines[-tail_lines:]) if tail_lines else "",
        "scriptLogTailCount": tail_lines,
    }


def owner_fields(facts: AlertFacts) -> dict[str, str]:
    """The app owner; failing a lookup, the owner named in the app's metadata, without e-mail."""
    owner = facts.owner
    if owner is None:
        named = (facts.outcome.app or {}).get("owner")
        if isinstance(named, dict):
            owner = AppOwner(
                name=str(named.get("name", "")),
                user_id=str(named.get("userId", "")),
                user_directory=str(named.get("userDirectory", "")),
            )
    if owner is None:
        return dict.fromkeys(("appOwnerName", "appOwnerUserId", "appOwnerUserDirectory", "appOwnerEmail"), "")
    return {
        "appOwnerName": owner.name,
        "appOwnerUserId": owner.user_id,
        "appOwnerUserDirectory": owner.user_directory,
        "appOwnerEmail": owner.emails[0] if owner.emails else "",
    }


# -- what the channel builders share -------------------------------------------------------------------

TRUNCATED = "----Script log truncated by Butler----"
#: Slack's and Teams' limit for one text block (Slack refuses a message with a longer one).
TEXT_LIMIT = 3000
#: Slack's limits for a header's plain text and for each of a section's fields.
HEADER_LIMIT = 150
FIELD_LIMIT = 2000
#: What the script log's head and tail are cut to before rendering, leaving room for the marker.
LOG_KEEP = 2900
JSON_HEADERS = {"Content-Type": "application/json"}


def http_payload(
    url: str,
    body: Any = None,
    *,
    method: str = "POST",
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    tls: dict[str, Any] | None = None,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An HTTP message as the sender takes it (``model.Message``); a body goes as JSON."""
    return {
        "method": method,
        "url": url,
        "headers": dict(JSON_HEADERS if headers is None and body is not None else headers or {}),
        "json": body,
        "query": dict(query) if query is not None else None,
        "tls": tls,
        "fallback": fallback,
    }


def redacted_url(url: str) -> str:
    """A URL as people may see it: its origin and first path segment, the rest (often a secret) left out."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "…"
    if not parts.scheme or not host:
        return "…"
    origin = f"{parts.scheme}://{host}{f':{port}' if port is not None else ''}/"
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        return origin
    return f"{origin}{segments[0]}…"


#: Stands for a ``"`` of a value while a JSON template is rendered (see ``json_escaped``).
QUOTE = "\ue000"


def json_escaped(value: Any) -> Any:
    """Every string in ``value`` escaped for a JSON string literal, so that a template that puts it
    between quotes stays valid JSON whatever it holds.

    A ``"`` cannot be escaped as ``\\"``: Handlebars' HTML escaping of ``{{ }}`` would make that
    ``\\&quot;``, an invalid JSON escape. It becomes ``QUOTE`` followed by ``=``, which ``{{ }}`` turns
    into ``QUOTE&#x3D;`` and ``{{{ }}}`` leaves alone; ``unquoted`` then makes the first ``&quot;`` (as
    Handlebars would have) and the second a JSON-escaped ``"``.
    """
    if isinstance(value, str):
        text = json.dumps(value.replace(QUOTE, "\ufffd"), ensure_ascii=False)[1:-1]
        return text.replace('\\"', f"{QUOTE}=")
    if isinstance(value, Mapping):
        return {key: json_escaped(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_escaped(item) for item in value]
    return value


def unquoted(rendered: str) -> str:
    """A template rendered with ``json_escaped`` values, with their quotes put back (see there)."""
    return rendered.replace(f"{QUOTE}&#x3D;", "&quot;").replace(f"{QUOTE}=", "\\u0022")


def chat_log_fields(context: dict[str, Any]) -> None:
    """Prepare the script log and execution details for a chat message:
    carriage returns dropped, line breaks kept as such, head and tail cut to what a text block holds."""
    for name in ("scriptLogHead", "scriptLogTail", "executionDetailsConcatenated"):
        value = context.get(name)
        if isinstance(value, str):
            context[name] = value.replace("\r", "")
    head, tail = context.get("scriptLogHead"), context.get("scriptLogTail")
    if isinstance(head, str) and len(head) >= TEXT_LIMIT:
        context["scriptLogHead"] = f"{head[:LOG_KEEP]}\n{TRUNCATED}"
    if isinstance(tail, str) and len(tail) >= TEXT_LIMIT:
        context["scriptLogTail"] = f"{TRUNCATED}\n{tail[-LOG_KEEP:]}"


def cut_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"\n{TRUNCATED}"
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)] + marker


def limit_texts(node: Any, keys: frozenset[str], limit: int = TEXT_LIMIT) -> Any:
    """``node`` with every string under one of ``keys`` cut to ``limit`` characters, at any depth; a
    Slack header's plain text to ``HEADER_LIMIT``, the texts of a section's fields to ``FIELD_LIMIT``."""
    if isinstance(node, list):
        return [limit_texts(item, keys, limit) for item in node]
    if not isinstance(node, dict):
        return node
    header = node.get("type") == "header"
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key in keys and isinstance(value, str):
            result[key] = cut_text(value, limit)
        elif key == "fields" and isinstance(value, list):
            result[key] = limit_texts(value, keys, min(limit, FIELD_LIMIT))
        elif header and key == "text" and isinstance(value, dict):
            text = value.get("text")
            result[key] = (
                {**value, "text": cut_text(text, HEADER_LIMIT)} if isinstance(text, str) else dict(value)
            )
        else:
            result[key] = limit_texts(value, keys, limit)
    return result


class FormattedError(Exception):
    """A formatted message could not be made; the message says why, for the note on the basic one."""


def render_json_template(path: Path | None, context: dict[str, Any]) -> dict[str, Any]:
    """The template file rendered with every value JSON-escaped, parsed; FormattedError when there is no
    template, it cannot be read or rendered, or it does not give a JSON object."""
    if path is None:
        raise FormattedError("no template file is configured for the formatted message")
    try:
        template = load_template(path)
        text = unquoted(template.render(json_escaped(context)))
    except Exception as exc:  # a broken template must cost the formatting only, never the alert
        raise FormattedError(f"template {path} could not be rendered: {exc}") from exc
    try:
        message = json.loads(text)
    except ValueError as exc:
        raise FormattedError(f"template {path} did not give valid JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise FormattedError(f"template {path} did not give a JSON object")
    return message


def render_text(template: str, context: dict[str, Any], source: str) -> str:
    """A one-line template (a basic message); FormattedError when it cannot be rendered."""
    try:
        return compile_template(template, source).render(context)
    except Exception as exc:  # the caller falls back to a fixed text
        raise FormattedError(f"{source} could not be rendered: {exc}") from exc


def fallback_note(kind: str, reason: str) -> str:
    return f"basic {kind} message sent instead of the formatted one: {reason}"


__all__ = [
    "SERVICE_EVENTS",
    "AlertFacts",
    "AppOwner",
    "FormattedError",
    "ServiceFacts",
    "http_payload",
    "redacted_url",
    "service_context",
    "template_context",
]
