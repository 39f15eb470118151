"""Teams messages for reload tasks (alerts.md §3.3), posted to a Power Automate workflow.

Workflows take Adaptive Cards, so the basic message is the smallest Adaptive Card envelope of the kind
the shipped formatted templates produce (A5), not upstream's legacy MessageCard. As for Slack, a
formatted message carries the basic one as ``fallback``, and a template that fails gives the basic
message with a note (A3).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butler.alerts.channels.slack import CHAT_EVENTS, basic_text
from butler.alerts.context import (
    AlertFacts,
    FormattedError,
    chat_log_fields,
    fallback_note,
    http_payload,
    limit_texts,
    redacted_url,
    render_json_template,
    template_context,
)
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings

TEXT_KEYS = frozenset({"text", "codeSnippet"})


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    teams = settings.teams
    if not teams.enable or facts.event not in CHAT_EVENTS:
        return []
    event = teams.event(facts.event)
    if not event.enable or not event.webhook_url:
        return []
    context = template_context(facts, settings, event.head_lines, event.tail_lines, slash_user=True)
    chat_log_fields(context)
    text, notes = basic_text(facts.event, event, context, "Teams")
    basic = http_payload(event.webhook_url, basic_message(text, context, notes))
    payload = basic
    if event.message_type == "formatted":
        try:
            formatted = render_json_template(event.template_file, context)
        except FormattedError as exc:
            notes.append(fallback_note("Teams", str(exc)))
            basic = http_payload(event.webhook_url, basic_message(text, context, notes))
            payload = basic
        else:
            payload = http_payload(event.webhook_url, limit_texts(formatted, TEXT_KEYS), fallback=basic)
    return [
        Message(
            channel="teams",
            event=facts.event,
            rate_key=facts.outcome.event.task_id,
            rate_limit=event.rate_limit,
            target=redacted_url(event.webhook_url),
            payload=payload,
            notes=tuple(notes),
        )
    ]


def basic_message(text: str, context: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "size": "large",
            "weight": "bolder",
            "text": text,
            "style": "heading",
            "wrap": True,
        }
    ]
    body.extend({"type": "TextBlock", "text": f"Butler: {n}", "isSubtle": True, "wrap": True} for n in notes)
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.3",
        "msteams": {"width": "Full"},
        "body": body,
    }
    actions = [
        {"type": "Action.OpenUrl", "title": title, "url": url}
        for title, url in (("Open QMC", context["qlikSenseQMC"]), ("Open Hub", context["qlikSenseHub"]))
        if url
    ]
    if actions:
        card["actions"] = actions
    message = {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }
    limited: dict[str, Any] = limit_texts(message, TEXT_KEYS)
    return limited


__all__ = ["build"]
