"""Slack messages for reload tasks (alerts.md §3.2), posted to an incoming webhook.

A formatted message is the rendered template file merged into ``{username, channel, icon_emoji}``; it
carries the basic message as its ``fallback``, sent if Slack refuses the formatted one. When the
template is missing, fails to render or gives no JSON object, the basic message goes out instead with a
note saying why (A3). The basic message is a header (the rendered ``basicMsgTemplate``) with buttons to
the QMC and the hub; a button without URL is left out, as Slack refuses the whole message for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butler.alerts.context import (
    AlertFacts,
    FormattedError,
    chat_log_fields,
    fallback_note,
    http_payload,
    limit_texts,
    redacted_url,
    render_json_template,
    render_text,
    template_context,
)
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings, ChatEvent

#: The events Slack and Teams alert on, and the basic text used when none is configured or it fails.
CHAT_EVENTS = {
    "reloadTaskFailure": 'Qlik Sense reload failed: "{{taskName}}"',
    "reloadTaskAborted": 'Qlik Sense reload aborted: "{{taskName}}"',
    "reloadTaskSuccess": 'Qlik Sense reload success: "{{taskName}}"',
}
TEXT_KEYS = frozenset({"text"})


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    slack = settings.slack
    if not slack.enable or facts.event not in CHAT_EVENTS:
        return []
    event = slack.event(facts.event)
    if not event.enable or not event.webhook_url:
        return []
    context = template_context(facts, settings, event.head_lines, event.tail_lines, slash_user=True)
    chat_log_fields(context)
    text, notes = basic_text(facts.event, event, context, "Slack")
    envelope = {"username": event.from_user, "channel": event.channel, "icon_emoji": event.icon_emoji}
    basic = http_payload(event.webhook_url, {**envelope, **basic_message(text, context, notes)})
    payload = basic
    if event.message_type == "formatted":
        try:
            formatted = render_json_template(event.template_file, context)
        except FormattedError as exc:
            notes.append(fallback_note("Slack", str(exc)))
            basic = http_payload(event.webhook_url, {**envelope, **basic_message(text, context, notes)})
            payload = basic
        else:
            body = limit_texts({**envelope, **formatted}, TEXT_KEYS)
            payload = http_payload(event.webhook_url, body, fallback=basic)
    return [
        Message(
            channel="slack",
            event=facts.event,
            rate_key=facts.outcome.event.task_id,
            rate_limit=event.rate_limit,
            target=redacted_url(event.webhook_url),
            payload=payload,
            notes=tuple(notes),
        )
    ]


def basic_text(name: str, event: ChatEvent, context: dict[str, Any], channel: str) -> tuple[str, list[str]]:
    """The rendered ``basicMsgTemplate``, or upstream's default text for the event if that fails."""
    notes: list[str] = []
    if event.basic_template:
        try:
            return render_text(event.basic_template, context, f"{channel} basicMsgTemplate"), notes
        except FormattedError as exc:
            notes.append(f"{exc}; the default text is used")
    return render_text(CHAT_EVENTS[name], context, f"{channel} default text"), notes


def basic_message(text: str, context: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    buttons = [
        {
            "type": "button",
            "text": {"type": "plain_text", "emoji": True, "text": title},
            "style": "primary",
            "url": url,
        }
        for title, url in (("Open QMC", context["qlikSenseQMC"]), ("Open Hub", context["qlikSenseHub"]))
        if url
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": text}},
        {"type": "divider"},
    ]
    if buttons:
        blocks.append({"type": "actions", "elements": buttons})
    if notes:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"Butler: {n}"} for n in notes]}
        )
    message: dict[str, Any] = limit_texts({"blocks": blocks}, TEXT_KEYS)
    return message


__all__ = ["CHAT_EVENTS", "build"]
