"""The MQTT client: one connection to the broker of ``Butler.mqttConfig``, kept up in the background.

Butler's start-up never waits for the broker: the client connects in the background and reconnects
with backoff (0.5 s doubling to 30 s) whenever the connection drops or anything else goes wrong in it.
Messages are published from one bounded queue by one sender, so a burst of publishes neither floods the
connection nor blocks callers; what is queued while the broker is away goes out after the next connect,
and what does not fit in the queue is dropped, counted and logged. On every connect Butler announces
itself on ``qliksense/butler/mqtt/status`` (as upstream does) and subscribes to ``taskStartTopic``, the
only topic Butler acts on. Upstream subscribes to all of ``subscriptionRootTopic`` and ignores the rest;
that would send every event Butler publishes below the root (thousands a second) back to Butler.

Nothing a publisher sends can stop the client:

- A message is checked before it is queued (``check_topic`` and the packet size): a topic brokers do
  not take (empty, a wildcard, not UTF-8, a character the MQTT standard forbids or advises against,
  longer than 65,535 bytes) is refused: ``InvalidMessage`` for a REST caller (a 400), counted and
  logged for Butler's own publishers, whose topics carry host names and other data from Sense.
- Any exception in the connection (not only the network's or the broker's) is logged, counted, and
  followed by a reconnect; ``connected`` is cleared the moment the sender or the receiver stops.
- Poisoned messages. A broker may still close the connection on a message that passed the checks (its
  own limits: Mosquitto's ``max_packet_size``, its topic depth). Nothing tells which message it was,
  so the rule is: the message handed to the connection last before it failed (or whose hand-over
  raised) is the suspect. A QoS 0 message is never sent twice (it went into the connection's buffer;
  what a dead connection did not deliver is lost, as QoS 0 allows), so it costs one reconnect. A QoS 1
  or 2 message not yet acknowledged is sent again first after the reconnect; if the connection fails
  again while that same message is the last handed over, it is dropped, counted as ``poisoned`` and
  logged. An innocent message in flight during two broker restarts in a row would be dropped too; in
  exchange, no message can keep the client reconnecting forever.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from butler.errors import BadRequest, Unavailable
from butler.logs import Throttle

if TYPE_CHECKING:
    # The config declares its topics with this module's topic rule, so it imports this module.
    from butler.config.settings import MqttSettings

log = logging.getLogger("butler.mqtt")

STATUS_TOPIC = "qliksense/butler/mqtt/status"
SEND_TIMEOUT_SECONDS = 5.0
MAX_TOPIC_BYTES = 65_535
#: The largest "remaining length" of an MQTT packet: topic length field, topic, packet id and payload.
MAX_PACKET_BYTES = 268_435_455
#: A message handed last to this many connections that then dropped is dropped itself, as poisoned.
POISON_DROPS = 2
MessageHandler = Callable[[str, bytes], Coroutine[Any, Any, None]]

# Everything a publish topic may not contain: the wildcards, U+0000 (forbidden by the MQTT standard),
# lone surrogates (not UTF-8), and the control characters and non-characters the standard says a topic
# should not contain and on which Mosquitto closes the connection.
_NONCHARACTERS = "\\ufdd0-\\ufdef" + "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(17))
_REFUSED = re.compile(f"[+#\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff{_NONCHARACTERS}]")


class MqttUnavailable(Unavailable):
    """A publish cannot be accepted now (MQTT off, broker away, queue full); the message says which."""


class InvalidMessage(BadRequest, ValueError):
    """A message no broker would take (its topic or its size); the text names the rule it breaks."""


def check_topic(topic: str) -> bytes:
    """The topic in UTF-8, or InvalidMessage naming the rule a publish topic breaks."""
    if not topic:
        raise InvalidMessage("the MQTT topic must not be empty")
    refused = _REFUSED.search(topic)
    if refused is not None:
        char = refused.group()
        where = f"at character {refused.start() + 1}"
        if char in "+#":
            raise InvalidMessage(
                f"the MQTT topic must not contain the wildcard '{char}' ({where}): "
                "wildcards are for subscribing, a message is published to one topic"
            )
        code = f"U+{ord(char):04X}"
        if "\ud800" <= char <= "\udfff":
            raise InvalidMessage(
                f"the MQTT topic must be valid UTF-8: it has a lone surrogate {code} {where}"
            )
        if char == "\x00":
            raise InvalidMessage(f"the MQTT topic must not contain U+0000 ({where})")
        kind = "control character" if ord(char) <= 0x9F else "Unicode non-character"
        raise InvalidMessage(f"the MQTT topic must not contain the {kind} {code} ({where})")
    encoded = topic.encode()
    if len(encoded) > MAX_TOPIC_BYTES:
        raise InvalidMessage(
            f"the MQTT topic must be at most {MAX_TOPIC_BYTES:,} bytes in UTF-8; it has {len(encoded):,}"
        )
    return encoded


def _payload_bytes(payload: bytes | str) -> bytes:
    if isinstance(payload, bytes):
        return payload
    try:
        return payload.encode()
    except UnicodeEncodeError as exc:
        raise InvalidMessage(
            f"the MQTT message must be valid UTF-8 text: it has a lone surrogate "
            f"U+{ord(payload[exc.start]):04X} at character {exc.start + 1}"
        ) from None


@dataclass(slots=True, eq=False)
class _Outgoing:
    """A queued message, with the future of a caller waiting for it to go out."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    sent: asyncio.Future[None] | None
    #: Connections that dropped while this message was the last one handed to them.
    drops: int = 0


def _outgoing(
    topic: str, payload: bytes | str, qos: int, retain: bool, sent: asyncio.Future[None] | None
) -> _Outgoing:
    encoded = check_topic(topic)
    data = _payload_bytes(payload)
    size = 2 + len(encoded) + (2 if qos else 0) + len(data)
    if size > MAX_PACKET_BYTES:
        raise InvalidMessage(
            f"the MQTT message is too large: its topic and payload need {size:,} bytes, an MQTT packet "
            f"carries at most {MAX_PACKET_BYTES:,}"
        )
    return _Outgoing(topic, data, qos, retain, sent)


class MqttClient:
    def __init__(self, settings: MqttSettings, on_message: MessageHandler | None = None) -> None:
        self.settings = settings
        self.on_message = on_message
        self.client_id = settings.client_id or f"butler-{uuid.uuid4().hex[:12]}"
        #: Set only while the connection is up and both its sender and receiver run.
        self.connected = asyncio.Event()
        self.published = 0
        self.dropped = 0
        self.invalid = 0
        self.poisoned = 0
        self.connects = 0
        self.errors = 0
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(settings.queue_size)
        # The message being published: it goes first on the next connection if its publish fails.
        self._unsent: _Outgoing | None = None
        # The message handed to the connection last (or whose hand-over raised): the suspect if it fails.
        self._handed: _Outgoing | None = None
        self._runner: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._warnings = Throttle(10.0)

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def stats(self) -> dict[str, Any]:
        """The counters of ``GET /health``."""
        return {
            "connected": self.connected.is_set(),
            "published": self.published,
            "queued": self._queue.qsize() + (self._unsent is not None),
            "dropped": self.dropped,
            "invalid": self.invalid,
            "poisoned": self.poisoned,
            "reconnects": max(self.connects - 1, 0),
            "errors": self.errors,
        }

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            # A connection to a broker that vanished can take long to wind down; shutdown does not wait.
            await asyncio.wait({self._runner}, timeout=3)
            self._runner = None
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def enqueue(
        self,
        topic: str,
        payload: bytes | str,
        qos: int | None = None,
        retain: bool = False,
        sent: asyncio.Future[None] | None = None,
    ) -> bool:
        """Queue a message for the broker; False (counted and logged) when the queue is full or the message
        breaks the rules of ``check_topic``. ``sent``, if given, is resolved once the message has been
        handed to the connection."""
        try:
            message = _outgoing(topic, payload, self.settings.qos if qos is None else qos, retain, sent)
        except InvalidMessage as exc:
            self.invalid += 1
            self._warn(
                "invalid",
                "MQTT message to %r not sent: %s (%d refused so far)",
                topic[:200],
                exc,
                self.invalid,
            )
            return False
        return self._put(message)

    async def publish_now(self, topic: str, payload: bytes | str) -> None:
        """Publish for a caller that must know the message went out: returns once it has been handed to the
        broker connection; InvalidMessage for a message no broker would take, MqttUnavailable when the
        broker is away. Waiting here also slows callers down to the pace the connection can take, instead
        of letting the queue overflow."""
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            message = _outgoing(topic, payload, self.settings.qos, False, sent)
        except InvalidMessage:
            self.invalid += 1
            raise
        if not self.connected.is_set():
            raise MqttUnavailable(
                f"The MQTT broker at {self.where} cannot be reached; the message was not sent"
            )
        if not self._put(message):
            raise MqttUnavailable("Butler's MQTT queue is full; the message was not sent")
        try:
            await asyncio.wait_for(sent, SEND_TIMEOUT_SECONDS)
        except TimeoutError:
            # wait_for cancelled ``sent``: a message still queued is skipped by the sender, so "not sent"
            # stays true and a caller that tries again does not publish it twice.
            if message is self._unsent:
                raise MqttUnavailable(
                    f"The MQTT broker at {self.where} did not acknowledge the message within "
                    f"{SEND_TIMEOUT_SECONDS:g} s; it was handed to the broker and may still be delivered"
                ) from None
            raise MqttUnavailable(
                f"The MQTT broker at {self.where} did not take the message within "
                f"{SEND_TIMEOUT_SECONDS:g} s; the message was not sent"
            ) from None

    def _put(self, message: _Outgoing) -> bool:
        try:
            self._queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            self._warn(
                "queue full",
                "MQTT queue full (%d messages): %d messages dropped so far",
                self._queue.maxsize,
                self.dropped,
            )
            return False

    def _warn(self, kind: str, text: str, *args: Any) -> None:
        """A warning that a flood of the same trouble would repeat: logged at most every 10 s per kind."""
        if self._warnings.ready(kind):
            log.warning(text, *args)

    # -- the connection -------------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls:
            return None
        context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
        if settings.tls_cert and settings.tls_key:
            context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        return context

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(
                    self.settings.host,
                    self.settings.port,
                    identifier=self.client_id,
                    username=self.settings.username,
                    password=self.settings.password,
                    tls_context=self._tls(),
                    keepalive=30,
                    timeout=10,
                ) as client:
                    backoff = 0.5
                    log.info("connected to MQTT broker %s as %s", self.where, self.client_id)
                    await client.publish(
                        STATUS_TOPIC, f"Connected to MQTT broker {self.where} with client ID {self.client_id}"
                    )
                    await client.subscribe(self.settings.task_start_topic)
                    self.connects += 1
                    self.connected.set()
                    async with asyncio.TaskGroup() as group:
                        for work in (self._send(client), self._receive(client)):
                            # Cleared the moment either stops, not once the connection has wound down.
                            group.create_task(work).add_done_callback(lambda _: self.connected.clear())
            except* Exception as failure:
                self.errors += 1
                self._report(failure, backoff)
            self.connected.clear()
            self._judge_unsent()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def _report(self, failure: BaseExceptionGroup[Exception], backoff: float) -> None:
        expected = (aiomqtt.MqttError, OSError, ssl.SSLError)
        known = [exc for exc in failure.exceptions if isinstance(exc, expected)]
        if known:
            log.warning(
                "MQTT broker %s: %s; connecting again in %.1f s",
                self.where,
                "; ".join(str(exc) or type(exc).__name__ for exc in known),
                backoff,
            )
        for exc in failure.exceptions:
            if not isinstance(exc, expected):
                # Not the network or the broker: a fault of Butler's, so with its traceback.
                log.error("MQTT client failed; connecting again in %.1f s", backoff, exc_info=exc)

    def _judge_unsent(self) -> None:
        """After a connection ended: the poisoned-message rule of the module docstring."""
        message, suspect, self._handed = self._unsent, self._handed, None
        if message is None or message is not suspect:
            return
        message.drops += 1
        if message.drops < POISON_DROPS:
            return
        self._unsent = None
        self.poisoned += 1
        log.warning(
            "the connection to MQTT broker %s failed %d times right after the message to %r (%d bytes) "
            "was handed to it; the message is dropped (%d dropped this way so far)",
            self.where,
            message.drops,
            message.topic[:200],
            len(message.payload),
            self.poisoned,
        )
        if message.sent is not None and not message.sent.done():
            message.sent.set_exception(
                MqttUnavailable(
                    f"The connection to the MQTT broker at {self.where} failed on this message "
                    f"{message.drops} times; it was not sent"
                )
            )

    async def _send(self, client: aiomqtt.Client) -> None:
        paho = client._client  # paho itself: see the QoS 0 branch below
        handed = 0
        while True:
            message = self._unsent
            if message is None:
                message = await self._queue.get()
                if message.sent is not None and message.sent.cancelled():
                    continue  # its caller gave up waiting and was told it was not sent
            self._unsent = self._handed = message
            try:
                if message.qos == 0:
                    # aiomqtt's publish() waits an event-loop turn per QoS 0 message for the socket write,
                    # which caps a sender at a few thousand messages/s; handing QoS 0 messages straight to
                    # paho's buffer (written by the same loop) does not wait and keeps their order.
                    info = paho.publish(message.topic, message.payload, 0, message.retain)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                else:
                    await client.publish(
                        message.topic, message.payload, qos=message.qos, retain=message.retain
                    )
            except aiomqtt.MqttCodeError as exc:
                if exc.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    self._handed = None  # the connection was gone before the message reached it
                raise
            self._unsent = None
            self.published += 1
            if message.sent is not None and not message.sent.done():
                message.sent.set_result(None)
            handed += 1
            if handed % 64 == 0:
                await asyncio.sleep(0)  # let the connection write what was handed over so far

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self.on_message is None:
                continue
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            handler = asyncio.get_running_loop().create_task(self.on_message(str(message.topic), payload))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
