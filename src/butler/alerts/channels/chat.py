"""What Slack and Teams messages share: the events, the basic text, and the choice
between the formatted message (the rendered template file, carrying the basic message as ``fallback``)
and the basic one, sent with a note saying why when the template is missing, fails to render or gives no
JSON object. Each channel shapes its own basic and formatted bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from butler.alerts.context import (
    SERVICE_EVENTS,
    AlertFacts,
    FormattedError,
    ServiceFacts,
    chat_log_fields,
    fallback_note,
    http_payload,
    redacted_url,
    render_json_template,
    render_text,
    service_context,
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
    "serviceStopped": 'Windows service stopped: "{{serviceName}}" on host "{{host}}"',
    "serviceStarted": 'Windows service started: "{{serviceName}}" on host "{{host}}"',
}
#: The task events among them.
TASK_EVENTS = frozenset(name for name in CHAT_EVENTS if not name.startswith("service"))

#: A channel's basic message from its event settings, the basic text, the template context and the notes.
BasicBody = Callable[["ChatEvent", str, dict[str, Any], list[str]], dict[str, Any]]
#: A channel's formatted message from its event settings and the rendered template.
FormattedBody = Callable[["ChatEvent", dict[str, Any]], dict[str, Any]]


def build_chat(
    facts: AlertFacts,
    settings: AlertSettings,
    channel: Literal["slack", "teams"],
    basic: BasicBody,
    formatted: FormattedBody,
) -> list[Message]:
    """The one message of ``channel`` for an outcome, or none when its settings say so."""
    event = _sending(settings, channel, facts.event) if facts.event in TASK_EVENTS else None
    if event is None:
        return []
    context = template_context(facts, settings, event.head_lines, event.tail_lines, slash_user=True)
    chat_log_fields(context)
    return [chat_message(channel, facts.event, event, context, facts.outcome.event.task_id, basic, formatted)]


def build_service_chat(
    facts: ServiceFacts,
    settings: AlertSettings,
    channel: Literal["slack", "teams"],
    basic: BasicBody,
    formatted: FormattedBody,
) -> list[Message]:
    """The one message of ``channel`` for a service that stopped or started, or none when its settings
    say so."""
    event = _sending(settings, channel, facts.event) if facts.change.status in SERVICE_EVENTS else None
    if event is None:
        return []
    context = service_context(facts, settings)
    return [chat_message(channel, facts.event, event, context, facts.rate_key, basic, formatted)]


def _sending(settings: AlertSettings, channel: Literal["slack", "teams"], name: str) -> ChatEvent | None:
    """The settings of event ``name`` of ``channel`` when it sends a message: the channel and the event
    are on and the event has a webhook."""
    chat = settings.slack if channel == "slack" else settings.teams
    event = chat.event(name)
    return event if chat.enable and event.enable and event.webhook_url else None


def chat_message(
    channel: Literal["slack", "teams"],
    name: str,
    event: ChatEvent,
    context: dict[str, Any],
    rate_key: str,
    basic: BasicBody,
    formatted: FormattedBody,
) -> Message:
    """The formatted message of event ``name`` carrying the basic one as its fallback, or the basic one
    with a note saying why the formatted one could not be made."""
    kind = "Slack" if channel == "slack" else "Teams"
    text, notes = basic_text(name, event, context, kind)
    payload = http_payload(event.webhook_url, basic(event, text, context, notes))
    if event.message_type == "formatted":
        try:
            rendered = render_json_template(event.template_file, context)
        except FormattedError as exc:
            notes.append(fallback_note(kind, str(exc)))
            payload = http_payload(event.webhook_url, basic(event, text, context, notes))
        else:
            payload = http_payload(event.webhook_url, formatted(event, rendered), fallback=payload)
    return Message(
        channel=channel,
        event=name,
        rate_key=rate_key,
        rate_limit=event.rate_limit,
        target=redacted_url(event.webhook_url),
        payload=payload,
        notes=tuple(notes),
    )


def basic_text(name: str, event: ChatEvent, context: dict[str, Any], channel: str) -> tuple[str, list[str]]:
    """The rendered ``basicMsgTemplate``, or upstream's default text for the event if that fails."""
    notes: list[str] = []
    if event.basic_template:
        try:
            return render_text(event.basic_template, context, f"{channel} basicMsgTemplate"), notes
        except FormattedError as exc:
            notes.append(f"{exc}; the default text is used")
    return render_text(CHAT_EVENTS[name], context, f"{channel} default text"), notes


__all__ = ["CHAT_EVENTS", "TASK_EVENTS", "basic_text", "build_chat", "build_service_chat"]
