"""Signl4 alerts for failed and aborted reload tasks, posted to the team's webhook."""

from __future__ import annotations

from typing import TYPE_CHECKING

from butler.alerts.context import AlertFacts, http_payload, redacted_url
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings

TITLES = {
    "reloadTaskFailure": "Qlik Sense reload task failed",
    "reloadTaskAborted": "Qlik Sense task aborted",
}


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    signl4 = settings.signl4
    if not signl4.enable or not signl4.url or facts.event not in TITLES:
        return []
    event = signl4.event(facts.event)
    outcome = facts.outcome
    app_id = outcome.event.app_id.lower()
    if not event.enable or not (event.include_all or app_id in {a.lower() for a in event.app_ids}):
        return []
    body = {
        "Title": TITLES[facts.event],
        "Message": f"Task: {outcome.task_name}",
        "Severity": event.severity,
        "X-S4-Service": event.service_name,
        "X-S4-ExternalID": outcome.event.task_id,
        "X-S4-Status": "new",
    }
    return [
        Message(
            channel="signl4",
            event=facts.event,
            rate_key=outcome.event.task_id,
            rate_limit=event.rate_limit,
            target=redacted_url(signl4.url),
            payload=http_payload(signl4.url, body),
        )
    ]


__all__ = ["build"]
