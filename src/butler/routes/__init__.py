"""REST routes, one module per feature. Each module's ``routes(context)`` lists its endpoints.

Handlers are thin: they take validated input, call the feature's service and shape the answer. Enable
flags and request schemas come from ``openapi.yaml``, not from these modules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from butler import __version__
from butler.apps import AppService
from butler.config import Settings
from butler.events.service import SenseEvents
from butler.kvstore import KeyValueStore
from butler.mqtt import MqttClient
from butler.slack import SlackWebhook
from butler.task_start import TaskStarter


@dataclass(frozen=True)
class RouteContext:
    """What route modules may use: the settings and, as features are added, their services."""

    settings: Settings
    key_values: KeyValueStore | None = None
    task_starter: TaskStarter | None = None
    mqtt: MqttClient | None = None
    slack: SlackWebhook | None = None
    apps: AppService | None = None
    events: SenseEvents | None = None
    version: str = __version__
    started: float = field(default_factory=time.monotonic)
