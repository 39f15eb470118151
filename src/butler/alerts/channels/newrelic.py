"""New Relic events and logs for failed and aborted reload tasks and for Windows services.

Each destination (event, log) goes to a set of accounts: the ``always`` accounts when that route is on,
the accounts named by the task's custom property when that route is on (upstream took the route whenever
the key existed), and the default accounts. One message per destination and account, with the
account's ``Api-Key``; the headers and shared attributes are the event's own (``sharedSettings``).

New Relic drops attributes that are not scalars, so what upstream sent as arrays and objects is
sent as scalars: custom properties as a JSON string, execution times as their UTC text, the duration in
seconds; the task and app metadata (whole QRS objects, dropped by New Relic) are left out. Upstream's
misspelt ``qs_exeuctionStatusText`` is kept next to ``qs_executionStatusText`` for existing queries.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from butler.alerts.context import (
    JSON_HEADERS,
    AlertFacts,
    ServiceFacts,
    custom_properties,
    custom_property_values,
    details_concatenated,
    execution_of,
    http_payload,
    sorted_details,
    status_text,
    tag_names,
    user_name,
)
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import (
        AlertSettings,
        NewRelicAccount,
        NewRelicDestination,
        NewRelicEvent,
        NewRelicServiceDestination,
    )

log = logging.getLogger("butler.alerts")

EVENT_TYPES = {
    "reloadTaskFailure": "qs_reloadTaskFailedEvent",
    "reloadTaskAborted": "qs_reloadTaskAbortedEvent",
}
LOG_TYPES = {"reloadTaskFailure": "qs_reloadTaskFailedLog", "reloadTaskAborted": "qs_reloadTaskAbortedLog"}
NO_SCRIPT_LOG = "Script log not available for this reload task."
LOG_SEPARATOR = "\r\n-------------------------------\r\n\r\n"


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    new_relic = settings.new_relic
    if not new_relic.enable or facts.event not in EVENT_TYPES:
        return []
    event = new_relic.event(facts.event)
    messages: list[Message] = []
    task_id = facts.outcome.event.task_id
    for kind, destination, defaults in (
        ("event", event.event, new_relic.default_event_accounts),
        ("log", event.log, new_relic.default_log_accounts),
    ):
        if not destination.enable:
            continue
        for account in accounts(facts, settings, destination, defaults):
            payload = _payload(facts, settings, event, destination, account, kind)
            messages.append(_message(facts.event, task_id, event.rate_limit, kind, account, payload))
    return messages


SERVICE_EVENT_TYPE = "qs_serviceStateEvent"
SERVICE_LOG_TYPE = "qs_serviceStateLog"


def build_service(facts: ServiceFacts, settings: AlertSettings) -> list[Message]:
    """An event and a log entry per destination account for a service's new state, as the service
    monitor's settings say (a running or stopped service only when its ``monitorServiceState`` is on)."""
    new_relic = settings.new_relic
    monitor = new_relic.service_monitor
    status = facts.change.status
    if not new_relic.enable or (status == "RUNNING" and not monitor.running):
        return []
    if status == "STOPPED" and not monitor.stopped:
        return []
    known = {account.name: account for account in new_relic.accounts}
    messages: list[Message] = []
    for kind, destination in (("event", monitor.event), ("log", monitor.log)):
        if not destination.enable:
            continue
        for name in dict.fromkeys(destination.accounts):
            account = known.get(name)
            if account is None:
                log.warning(
                    "New Relic account %r (service alerts) is not in thirdPartyToolsCredentials.newRelic",
                    name,
                )
                continue
            payload = _service_payload(facts, settings, destination, account, kind)
            messages.append(_message(facts.event, facts.rate_key, monitor.rate_limit, kind, account, payload))
    return messages


def _message(
    event: str, rate_key: str, rate_limit: float, kind: str, account: NewRelicAccount, payload: dict[str, Any]
) -> Message:
    """The Message sending ``payload`` to ``account`` as an event or a log entry (``kind``), rate-limited
    per account and kind."""
    return Message(
        channel="newrelic",
        event=event,
        rate_key=f"{rate_key}|{kind}|{account.name}",
        rate_limit=rate_limit,
        target=f"New Relic account {account.name} ({kind})",
        payload=payload,
    )


def service_log_message(facts: ServiceFacts) -> str:
    change = facts.change
    state = f"{change.status}." if change.status in ("RUNNING", "STOPPED") else f'in state "{change.status}".'
    return f'Windows service "{change.details.display_name}" on host "{change.host}" is {state}'


def _service_payload(
    facts: ServiceFacts,
    settings: AlertSettings,
    destination: NewRelicServiceDestination,
    account: NewRelicAccount,
    kind: str,
) -> dict[str, Any]:
    new_relic = settings.new_relic
    monitor = new_relic.service_monitor
    change = facts.change
    headers = {**dict(monitor.headers), **JSON_HEADERS, "Api-Key": account.insert_api_key}
    found: dict[str, Any] = {**dict(monitor.static_attributes), **dict(destination.static_attributes)}
    for on, name, value in (
        (destination.host, "serviceHost", change.host),
        (destination.name, "serviceName", change.service_name),
        (destination.display_name, "serviceDisplayName", change.details.display_name),
        (destination.state, "serviceState", change.status),
    ):
        if on:
            found[name] = value
    if kind == "event":
        body: Any = [{**found, "eventType": SERVICE_EVENT_TYPE}]
        return http_payload(events_url(new_relic.event_url, account), body, headers=headers)
    body = [
        {
            "common": {"attributes": {**found, "logtype": SERVICE_LOG_TYPE}},
            "logs": [{"message": service_log_message(facts)}],
        }
    ]
    return http_payload(new_relic.log_url, body, headers=headers)


def events_url(base: str, account: NewRelicAccount) -> str:
    return f"{base if base.endswith('/') else base + '/'}v1/accounts/{account.account_id}/events"


def account_names(
    facts: AlertFacts, destination: NewRelicDestination, defaults: tuple[str, ...]
) -> list[str]:
    """The accounts a destination goes to, by name, each once, in the order the routes give them."""
    names: list[str] = []
    if destination.always:
        names.extend(destination.always_accounts)
    if destination.cp_enable and destination.cp_name:
        names.extend(custom_property_values(facts.outcome.task or {}, destination.cp_name))
    names.extend(defaults)
    return list(dict.fromkeys(n for n in names if n))


def accounts(
    facts: AlertFacts, settings: AlertSettings, destination: NewRelicDestination, defaults: tuple[str, ...]
) -> list[NewRelicAccount]:
    known = {account.name: account for account in settings.new_relic.accounts}
    found = []
    for name in account_names(facts, destination, defaults):
        account = known.get(name)
        if account is None:
            log.warning(
                "New Relic account %r (for task %s) is not among thirdPartyToolsCredentials.newRelic",
                name,
                facts.outcome.event.task_id,
            )
        else:
            found.append(account)
    return found


def attributes(facts: AlertFacts, shared: NewRelicEvent, destination: NewRelicDestination) -> dict[str, Any]:
    outcome = facts.outcome
    event = outcome.event
    task, app = outcome.task or {}, outcome.app or {}
    found: dict[str, Any] = {
        **dict(shared.static_attributes),
        **dict(destination.static_attributes),
        "version": facts.butler_version,
        "qs_hostName": event.host,
        "qs_user": user_name(event.user, slash=True),
        "qs_taskName": outcome.task_name,
        "qs_taskId": event.task_id,
        "qs_appName": outcome.app_name,
        "qs_appId": event.app_id,
        "qs_logTimeStamp": event.timestamp,
        "qs_logLevel": event.level,
        "qs_executionId": event.execution_id,
        "qs_logMessage": event.message,
        "qs_appCustomProperties": json.dumps(custom_properties(app), ensure_ascii=False),
        "qs_taskCustomProperties": json.dumps(custom_properties(task), ensure_ascii=False),
    }
    if destination.use_task_tags:
        found.update({f"qs_taskTag_{tag}": "true" for tag in tag_names(task)})
    if destination.use_app_tags:
        found.update({f"qs_appTag_{tag}": "true" for tag in tag_names(app)})
    return found


def _payload(
    facts: AlertFacts,
    settings: AlertSettings,
    shared: NewRelicEvent,
    destination: NewRelicDestination,
    account: NewRelicAccount,
    kind: str,
) -> dict[str, Any]:
    new_relic = settings.new_relic
    headers = {**dict(shared.headers), **JSON_HEADERS, "Api-Key": account.insert_api_key}
    found = attributes(facts, shared, destination)
    if kind == "event":
        body: Any = [{**found, "eventType": EVENT_TYPES[facts.event]}]
        return http_payload(events_url(new_relic.event_url, account), body, headers=headers)
    execution = execution_of(facts) or {}
    status = execution.get("status")
    duration = execution.get("duration")
    found.update(
        {
            "qs_executingNodeName": execution.get("executingNodeName", ""),
            "qs_executionStartTime": execution.get("startTime", ""),
            "qs_executionStopTime": execution.get("stopTime", ""),
            "qs_executionDuration": int(duration // 1000)
            if isinstance(duration, int | float) and not isinstance(duration, bool)
            else "",
            "qs_executionStatusNum": status if status is not None else "",
            "qs_executionStatusText": status_text(status),
            "qs_exeuctionStatusText": status_text(status),
            "qs_scriptLogSize": execution.get("scriptLogSize", ""),
            "qs_scriptLogTailCount": destination.tail_lines,
            "logtype": LOG_TYPES[facts.event],
        }
    )
    message = log_message(facts, destination, execution)
    body = [{"common": {"attributes": found}, "logs": [{"message": message}]}]
    return http_payload(new_relic.log_url, body, headers=headers)


def log_message(facts: AlertFacts, destination: NewRelicDestination, execution: dict[str, Any]) -> str:
    lines = facts.script_log
    if lines is None:
        lines = facts.outcome.script_log_tail
    if lines is None:
        return NO_SCRIPT_LOG
    concatenated = details_concatenated(sorted_details(execution))
    tail = "\r\n".join(lines[-destination.tail_lines :]) if destination.tail_lines > 0 else ""
    return f"{concatenated}{LOG_SEPARATOR}{tail}"


__all__ = ["build", "build_service", "events_url", "service_log_message"]
