"""Slack messages for reload tasks and Windows services, posted to an incoming webhook.

A formatted message is the rendered template file merged into ``{username, channel, icon_emoji}``; it
carries the basic message as its ``fallback``, sent if Slack refuses the formatted one. When the
template is missing, fails to render or gives no JSON object, the basic message goes out instead with a
note saying why. The basic message is a header (the rendered ``basicMsgTemplate``) with buttons to
the QMC and the hub; a button without URL is left out, as Slack refuses the whole message for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from butler.alerts.channels.chat import CHAT_EVENTS, build_chat, build_service_chat
from butler.alerts.context import AlertFacts, ServiceFacts, limit_texts
from butler.alerts.model import Message

if TYPE_CHECKING:
    from butler.config.alerts import AlertSettings, ChatEvent

TEXT_KEYS = frozenset({"text"})


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    return build_chat(facts, settings, "slack", _basic, _formatted)


def build_service(facts: ServiceFacts, settings: AlertSettings) -> list[Message]:
    return build_service_chat(facts, settings, "slack", _basic, _formatted)


def _envelope(event: ChatEvent) -> dict[str, Any]:
    return {"username": event.from_user, "channel": event.channel, "icon_emoji": event.icon_emoji}


def _basic(event: ChatEvent, text: str, context: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    return {**_envelope(event), **basic_message(text, context, notes)}


def _formatted(event: ChatEvent, rendered: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = limit_texts({**_envelope(event), **rendered}, TEXT_KEYS)
    return body


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
