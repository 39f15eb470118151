"""Teams messages for reload tasks and Windows services, posted to a Power Automate workflow.

Workflows take Adaptive Cards, so the basic message is the smallest Adaptive Card envelope of the kind
the shipped formatted templates produce, not upstream's legacy MessageCard. As for Slack, a
formatted message carries the basic one as ``fallback``, and a template that fails gives the basic
message with a note.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butler.alerts.channels.chat import build_chat, build_service_chat
from butler.alerts.context import AlertFacts, ServiceFacts, limit_texts
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings, ChatEvent

TEXT_KEYS = frozenset({"text", "codeSnippet"})


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    return build_chat(facts, settings, "teams", _basic, _formatted)


def build_service(facts: ServiceFacts, settings: AlertSettings) -> list[Message]:
    return build_service_chat(facts, settings, "teams", _basic, _formatted)


def _basic(event: ChatEvent, text: str, context: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    return basic_message(text, context, notes)


def _formatted(event: ChatEvent, rendered: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = limit_texts(rendered, TEXT_KEYS)
    return body


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
