"""Outgoing webhooks for reload tasks, Windows services and the server licence: one message per
configured webhook.

Webhooks have no per-event switch: an event goes out when the master switch is on and the event lists
webhooks. GET sends the fields as query parameters, PUT and POST as a JSON body. Each webhook has its
own rate-limit key (the task id, the service and its state, or the licence message's kind, and a digest
of the webhook), so that delivering to one does not use up the window of the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from butler.alerts.context import (
    AlertFacts,
    ServiceFacts,
    http_payload,
    owner_fields,
    redacted_url,
    user_name,
)
from butler.alerts.model import Message
from butler.monitor_events import ServerLicense

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings, Webhook

EVENT_NAMES = {
    "reloadTaskFailure": "Qlik Sense reload failed",
    "reloadTaskAborted": "Qlik Sense reload aborted",
    "reloadTaskSuccess": "Qlik Sense reload success",
}


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    if facts.event not in EVENT_NAMES:
        return []
    return _messages(settings, facts.event, facts.event, facts.outcome.event.task_id, webhook_fields(facts))


#: The ``event`` field of a service's webhook call (upstream's).
SERVICE_EVENT = "Windows service monitor"
#: Licence webhooks by the ``event`` field of their call: their section, and their rate-limit key.
LICENSE_EVENTS = {
    "server license status": ("qlikSenseServerLicenseMonitor", "license-monitor"),
    "server license has expired alert": ("qlikSenseServerLicenseExpiryAlert", "license-alert"),
    "server license about to expire alert": ("qlikSenseServerLicenseExpiryAlert", "license-alert"),
}


def build_service(facts: ServiceFacts, settings: AlertSettings) -> list[Message]:
    """The calls of ``webhookNotification.serviceMonitor`` for a service's new state."""
    change = facts.change
    fields = {
        "event": SERVICE_EVENT,
        "host": change.host,
        "serviceStatus": change.status,
        "serviceName": change.service_name,
        "serviceDisplayName": change.details.display_name,
        "serviceStartType": change.details.start_type,
        "prevState": change.previous,
        "currState": change.status,
        "stateChanged": change.changed,
    }
    # Upstream's GET parameters are the body's names in lower case.
    return _messages(settings, "serviceMonitor", facts.event, facts.rate_key, fields, lower_query=True)


def build_license(event: str, status: ServerLicense, settings: AlertSettings) -> list[Message]:
    """The calls for a server licence message; ``event`` is one of ``LICENSE_EVENTS``."""
    section, rate_key = LICENSE_EVENTS[event]
    fields = {
        "event": event,
        "licenseExpired": status.expired,
        "expiryDateStr": status.expiry_date,
        "daysUntilExpiry": status.days_until_expiry,
    }
    return _messages(settings, section, section, rate_key, fields)


def _messages(
    settings: AlertSettings,
    section: str,
    event: str,
    rate_key: str,
    fields: Mapping[str, Any],
    *,
    lower_query: bool = False,
) -> list[Message]:
    webhooks = settings.webhook
    if not webhooks.enable:
        return []
    options = webhooks.event(section)
    return [
        Message(
            channel="webhook",
            event=event,
            rate_key=f"{rate_key}|{webhook_key(hook)}",
            rate_limit=options.rate_limit,
            target=redacted_url(hook.url),
            payload=_payload(hook, fields, lower_query),
        )
        for hook in options.webhooks
        if hook.url
    ]


def webhook_fields(facts: AlertFacts) -> dict[str, str]:
    outcome = facts.outcome
    event = outcome.event
    owner = owner_fields(facts)
    return {
        "event": EVENT_NAMES[facts.event],
        "hostName": event.host,
        "user": user_name(event.user, slash=False),
        "taskName": outcome.task_name,
        "taskId": event.task_id,
        "appName": outcome.app_name,
        "appId": event.app_id,
        "appOwnerName": owner["appOwnerName"],
        "appOwnerUserDirectory": owner["appOwnerUserDirectory"],
        "appOwnerUserId": owner["appOwnerUserId"],
        "appOwnerEmail": owner["appOwnerEmail"],
        "logTimeStamp": event.timestamp,
        "logLevel": event.level,
        "executionId": event.execution_id,
        "logMessage": event.message,
    }


def webhook_key(hook: Webhook) -> str:
    """Names a webhook in rate-limit keys without showing its URL, which may hold a secret."""
    return hashlib.sha256(f"{hook.method} {hook.url}".encode()).hexdigest()[:16]


def _query_value(value: Any) -> str:
    # As JavaScript's URLSearchParams writes them.
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _payload(hook: Webhook, fields: Mapping[str, Any], lower_query: bool = False) -> dict[str, Any]:
    tls = (
        {"ca": str(hook.cert_ca) if hook.cert_ca is not None else None, "verify": hook.reject_unauthorized}
        if hook.cert_enable
        else None
    )
    method = hook.method.upper()
    if method == "GET":
        query = {(k.lower() if lower_query else k): _query_value(v) for k, v in fields.items()}
        return http_payload(hook.url, method="GET", query=query, tls=tls)
    return http_payload(hook.url, dict(fields), method=method, tls=tls)


__all__ = ["EVENT_NAMES", "LICENSE_EVENTS", "SERVICE_EVENT", "build", "build_license", "build_service"]
