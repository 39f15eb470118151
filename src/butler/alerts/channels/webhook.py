"""Outgoing webhooks for reload tasks: one message per configured webhook.

Webhooks have no per-event switch: an event goes out when the master switch is on and the event lists
webhooks. GET sends the fields as query parameters, PUT and POST as a JSON body. Each webhook has its
own rate-limit key (the task id and a digest of the webhook), so that delivering to one does not use up
the window of the others.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from butler.alerts.context import AlertFacts, http_payload, owner_fields, redacted_url, user_name
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings, Webhook

EVENT_NAMES = {
    "reloadTaskFailure": "Qlik Sense reload failed",
    "reloadTaskAborted": "Qlik Sense reload aborted",
    "reloadTaskSuccess": "Qlik Sense reload success",
}


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    webhooks = settings.webhook
    if not webhooks.enable or facts.event not in EVENT_NAMES:
        return []
    event = webhooks.event(facts.event)
    if not event.webhooks:
        return []
    fields = webhook_fields(facts)
    return [
        Message(
            channel="webhook",
            event=facts.event,
            rate_key=f"{facts.outcome.event.task_id}|{webhook_key(hook)}",
            rate_limit=event.rate_limit,
            target=redacted_url(hook.url),
            payload=_payload(hook, fields),
        )
        for hook in event.webhooks
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


def _payload(hook: Webhook, fields: dict[str, str]) -> dict[str, Any]:
    tls = (
        {"ca": str(hook.cert_ca) if hook.cert_ca is not None else None, "verify": hook.reject_unauthorized}
        if hook.cert_enable
        else None
    )
    method = hook.method.upper()
    if method == "GET":
        return http_payload(hook.url, method="GET", query=fields, tls=tls)
    return http_payload(hook.url, dict(fields), method=method, tls=tls)


__all__ = ["EVENT_NAMES", "build"]
