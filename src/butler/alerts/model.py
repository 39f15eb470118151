"""What an alert becomes before it is sent: one ``Message`` per channel and recipient.

Channel builders (``butler.alerts.channels``) turn a task outcome into Messages; the outbox keeps each
Message until its channel accepted it; a channel's sender sends a Message's ``payload``, which holds
everything the sender needs. The SMTP password stays in the settings; an HTTP receiver's key (New Relic's
Api-Key) and secret URL are part of its request, so the outbox file is to be kept as the config file is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from butler.errors import UpstreamError

Channel = Literal["email", "slack", "teams", "webhook", "signl4", "newrelic"]
CHANNELS: tuple[Channel, ...] = ("email", "slack", "teams", "webhook", "signl4", "newrelic")

#: The events alerts are configured by, as upstream's config names them.
EVENTS = (
    "reloadTaskFailure",
    "reloadTaskAborted",
    "reloadTaskSuccess",
    "distributeTaskFailure",
    "distributeTaskSuccess",
    "preloadTaskFailure",
    "preloadTaskSuccess",
)


@dataclass(frozen=True)
class Message:
    """One message for one channel and recipient, ready to send.

    ``rate_key`` and ``rate_limit`` (seconds, 0 for none) say how often a message of this channel and
    event may go out for the same key: a slot is spent only when a message is delivered.
    ``target`` names the recipient for people (an e-mail address, or a URL without its secret path).
    ``payload`` is JSON: for HTTP channels ``{"method", "url", "headers", "json", "query", "tls",
    "fallback"}`` (see ``butler.alerts.http``), for e-mail ``{"from", "to", "subject", "html", "text",
    "priority", "attachment"}``. ``notes`` say what went differently from the configuration (a template
    that failed, so the basic message is sent).
    """

    channel: Channel
    event: str
    rate_key: str
    rate_limit: float
    target: str
    payload: dict[str, Any]
    notes: tuple[str, ...] = field(default=())


class DeliveryError(UpstreamError):
    """A channel did not accept a message. ``retryable``: a later attempt may succeed (connection error,
    timeout, 429, 5xx); ``retry_after``: the wait the channel asked for, in seconds."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


__all__ = ["CHANNELS", "EVENTS", "Channel", "DeliveryError", "Message"]
