"""The feature declarations of app.py: what each serves matches openapi.yaml, and what it needs is opened."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from butler import app
from butler.app import FEATURES, Butler, Feature, build_router
from butler.apps import AppService
from butler.config import ENDPOINT_FLAGS, parse_config
from butler.events.service import SenseEvents
from butler.http.docs import ApiDocument, load_openapi
from butler.http.server import Listener
from butler.kvstore.memory import MemoryStore
from butler.kvstore.sqlite import SqliteStore
from butler.mqtt import MqttClient
from butler.qlik.qrs import QrsClient
from butler.routes import key_value
from butler.services import OPENERS, Services, StartupError
from butler.slack import SlackWebhook
from tests.conftest import Broker, base_config, udp_ports
from tests.test_apps import engine_config
from tests.test_events import udp_config
from tests.test_task_start import butler_config


def test_each_feature_names_known_flags_and_services() -> None:
    # That each route's flag is among its feature's, build_router checks; test_openapi builds every route.
    for feature in FEATURES:
        assert set(feature.flags) <= set(ENDPOINT_FLAGS), feature
        assert set(feature.services) <= OPENERS.keys(), feature
        assert feature.routes is not None or feature.when is not None, feature  # else it does nothing


def test_a_route_whose_flag_its_feature_does_not_declare_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = parse_config(base_config(keyValueStore=True), base_dir=tmp_path)
    monkeypatch.setattr(app, "FEATURES", (Feature(key_value.routes),))
    with pytest.raises(LookupError, match="flag keyValueStore is not among its feature's"):
        build_router(Services(settings, key_values=MemoryStore()), ApiDocument(load_openapi()))


async def test_only_the_services_of_enabled_features_are_opened_and_stop_closes_them(tmp_path: Path) -> None:
    settings = parse_config(base_config(keyValueStore=True), base_dir=tmp_path)
    settings = dataclasses.replace(settings, rest=dataclasses.replace(settings.rest, port=0))
    butler = Butler(settings)
    await butler.start()
    try:
        services = butler.services
        assert services.key_values is not None
        assert (services.qrs, services.task_starter, services.mqtt, services.apps, services.events) == (
            None,
        ) * 5
        listener = butler.listeners[0]
    finally:
        await butler.stop()
    assert butler.listeners == [] and butler.services.key_values is None
    with pytest.raises(OSError):  # the listener is closed: nothing answers on its port any more
        socket.create_connection(("127.0.0.1", listener.port), timeout=1).close()


async def test_a_start_that_fails_half_way_closes_what_it_opened(tmp_path: Path) -> None:
    """The session-event port is taken: the task-event port, opened just before, is free again."""
    task_port, session_port = udp_ports()
    document = udp_config(base_config(), task_port, session_port)
    settings = parse_config(document, base_dir=tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", session_port))
        with pytest.raises(StartupError, match=r"Butler\.udpServerConfig: cannot listen for events"):
            await Butler(settings).start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", task_port))


async def test_stop_closes_listeners_first_then_each_service_before_those_it_uses(
    tmp_path: Path, simulator: Any, site_certs: Any, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is asked of a service once it is closed: the REST listener stops taking requests first,
    event listening stops before the MQTT and QRS clients it publishes and looks up with, and the QRS
    client closes after the task starts and app reloads that use it."""
    closed: list[str] = []

    def record(cls: type, method: str, name: str) -> None:
        original = getattr(cls, method)

        async def spy(self: Any) -> None:
            closed.append(name)
            await original(self)

        monkeypatch.setattr(cls, method, spy)

    for cls, method, name in (
        (Listener, "stop", "listener"),
        (SlackWebhook, "close", "slack"),
        (SenseEvents, "stop", "events"),
        (AppService, "close", "apps"),
        (MqttClient, "stop", "mqtt"),
        (QrsClient, "close", "qrs"),
        (SqliteStore, "close", "key_values"),
    ):
        record(cls, method, name)
    task_port, session_port = udp_ports()
    document = udp_config(
        butler_config(simulator, site_certs, senseListApps=True, slackPostMessage=True),
        task_port,
        session_port,
    )
    butler_section = document["Butler"]
    butler_section["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    butler_section["slackNotification"] = {"restMessage": {"webhookURL": "http://127.0.0.1:9/hook"}}
    butler_section["configEngine"] = engine_config(simulator)
    butler_section["keyValueStore"] = {"backend": "sqlite", "sqlite": {"path": str(tmp_path / "kv.sqlite")}}
    settings = parse_config(document, base_dir=tmp_path)
    settings = dataclasses.replace(settings, rest=dataclasses.replace(settings.rest, port=0))
    butler = Butler(settings)
    await butler.start()
    opened = [name for name in OPENERS if getattr(butler.services, name) is not None]
    await butler.stop()
    assert opened == ["key_values", "task_starter", "mqtt", "apps", "events", "slack"]
    assert closed == ["listener", "slack", "events", "apps", "mqtt", "qrs", "key_values"]
