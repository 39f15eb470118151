"""The MQTT client: one connection to the broker of ``Butler.mqttConfig``, kept up in the background.

Butler's start-up never waits for the broker: the client connects in the background and reconnects
with backoff (0.5 s doubling to 30 s) whenever the connection drops. Messages are published from one
bounded queue by one sender, so a burst of publishes neither floods the connection nor blocks callers;
what is queued while the broker is away goes out after the next connect, and what does not fit in the
queue is dropped, counted and logged. On every connect Butler announces itself on
``qliksense/butler/mqtt/status`` (as upstream does) and subscribes to ``taskStartTopic``, the only topic
Butler acts on. Upstream subscribes to all of ``subscriptionRootTopic`` and ignores the rest; that would
send every event Butler publishes below the root (thousands a second) back to Butler.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt

from butler.config.settings import MqttSettings

log = logging.getLogger("butler.mqtt")

STATUS_TOPIC = "qliksense/butler/mqtt/status"
SEND_TIMEOUT_SECONDS = 5.0
BACKPRESSURE_DEPTH = 500
#: A queued message: topic, payload, QoS, retain, and the future of a caller waiting for it to go out.
_Outgoing = tuple[str, bytes, int, bool, "asyncio.Future[None] | None"]
MessageHandler = Callable[[str, bytes], Coroutine[Any, Any, None]]


class MqttUnavailable(Exception):
    """A publish cannot be accepted now (MQTT off, broker away, queue full); the message says which."""


class MqttClient:
    def __init__(self, settings: MqttSettings, on_message: MessageHandler | None = None) -> None:
        self.settings = settings
        self.on_message = on_message
        self.client_id = settings.client_id or f"butler-{uuid.uuid4().hex[:12]}"
        self.connected = asyncio.Event()
        self.dropped = 0
        self.published = 0
        self._queue: asyncio.Queue[_Outgoing] = asyncio.Queue(settings.queue_size)
        self._unsent: _Outgoing | None = None
        self._runner: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._last_drop_log = 0.0

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

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
        """Queue a message for the broker; False (counted and logged) when the queue is full. ``sent``, if
        given, is resolved once the message has been handed to the connection."""
        data = payload.encode() if isinstance(payload, str) else payload
        try:
            self._queue.put_nowait((topic, data, self.settings.qos if qos is None else qos, retain, sent))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 10:
                self._last_drop_log = now
                log.warning(
                    "MQTT queue full (%d messages): %d messages dropped so far",
                    self._queue.maxsize,
                    self.dropped,
                )
            return False

    async def publish_now(self, topic: str, payload: bytes | str) -> None:
        """Publish for a caller that must know the message went out: returns once it has been handed to the
        broker connection, MqttUnavailable when the broker is away. Waiting here also slows callers down
        to the pace the connection can take, instead of letting the queue overflow."""
        if not self.connected.is_set():
            raise MqttUnavailable(
                f"The MQTT broker at {self.where} cannot be reached; the message was not sent"
            )
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.enqueue(topic, payload, sent=sent):
            raise MqttUnavailable("Butler's MQTT queue is full; the message was not sent")
        try:
            await asyncio.wait_for(sent, SEND_TIMEOUT_SECONDS)
        except TimeoutError:
            raise MqttUnavailable(
                f"The MQTT broker at {self.where} did not take the message within {SEND_TIMEOUT_SECONDS:g} s"
            ) from None

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
                    self.connected.set()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._send(client))
                        group.create_task(self._receive(client))
            except* (aiomqtt.MqttError, OSError, ssl.SSLError) as failure:
                self.connected.clear()
                log.warning(
                    "MQTT broker %s: %s; connecting again in %.1f s",
                    self.where,
                    "; ".join(str(e) for e in failure.exceptions),
                    backoff,
                )
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _send(self, client: aiomqtt.Client) -> None:
        paho = client._client  # paho itself: see the QoS 0 branch below
        handed = 0
        while True:
            # A message whose publish failed stays in ``_unsent`` and goes first on the next connection.
            message = self._unsent or await self._queue.get()
            self._unsent = message
            topic, payload, qos, retain, sent = message
            if qos == 0:
                # aiomqtt's publish() waits an event-loop turn per QoS 0 message for the socket write, which
                # caps a sender at a few thousand messages/s; handing QoS 0 messages straight to paho's
                # buffer (written by the same loop) does not wait and keeps their order.
                info = paho.publish(topic, payload, qos, retain)
                if info.rc != 0:
                    raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                handed += 1
                if handed % 64 == 0:
                    await asyncio.sleep(0)  # let the connection write what was handed over so far
            else:
                await client.publish(topic, payload, qos=qos, retain=retain)
            self._unsent = None
            self.published += 1
            if sent is not None and not sent.done():
                sent.set_result(None)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if self.on_message is None:
                continue
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            handler = asyncio.get_running_loop().create_task(self.on_message(str(message.topic), payload))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)
