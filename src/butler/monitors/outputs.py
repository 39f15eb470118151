"""Where the monitors' findings go, as the small interfaces they need: the alert channels, InfluxDB and
MQTT. Butler's ``AlertService``, ``InfluxWriter`` and ``MqttClient`` speak them; tests put recorders in
their place."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from butler.alerts.model import Channel
from butler.monitor_events import ServerLicense, ServiceChange

FieldValue = float | int | str | bool


@runtime_checkable
class AlertSink(Protocol):
    """The alert channels' side of the monitors (``butler.alerts.service.AlertService``)."""

    async def service_changed(
        self, change: ServiceChange, channels: Collection[Channel] | None = None
    ) -> None: ...

    async def server_license_status(self, license: ServerLicense) -> None: ...

    async def server_license_alert(self, license: ServerLicense) -> None: ...


class InfluxSink(Protocol):
    """One InfluxDB point, tagged with ``Butler.influxDb.tag.static`` by the writer."""

    def write(self, measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue]) -> None: ...


class Publisher(Protocol):
    """An MQTT message queued for the broker (``MqttClient.enqueue``)."""

    def enqueue(self, topic: str, payload: bytes | str) -> bool: ...


__all__ = ["AlertSink", "FieldValue", "InfluxSink", "Publisher"]
