"""Typed settings built from a validated config file, passed to the code that needs them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from butler.files import FileSettings


@dataclass(frozen=True)
class TlsSettings:
    """HTTPS for the REST API (``Butler.restServerConfig.tls``)."""

    enable: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how many HTTP connections a listener keeps (additions to ``Butler.restServerConfig``).

    A request head is one packet from every real caller, so 10 s only matters to a stalled or malicious
    client; bodies are at most 1 MiB, so 30 s still allows 35 KB/s. Idle keep-alive connections are kept
    72 s, as upstream's Fastify keeps them: callers' connection pools were tuned to that, and a server
    that closes first races the client reusing the connection (the client gets a reset). 1,000
    connections are far more than the load scripts, ETL jobs and monitors of a Sense site open at once,
    and an idle one costs Butler about 5 KB of memory.
    """

    headers_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 72.0
    max_connections: int = 1000


@dataclass(frozen=True)
class RestServerSettings:
    """``Butler.restServerConfig``. ``backgroundServerPort`` is read but unused: one listener serves all."""

    enable: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    background_port: int | None = None
    #: Web origins whose pages may call Butler from a browser (an addition to upstream's keys).
    allowed_origins: tuple[str, ...] = ()
    tls: TlsSettings = field(default_factory=TlsSettings)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)


@dataclass(frozen=True)
class HealthCheckSettings:
    """``Butler.dockerHealthCheck``: an extra plain-HTTP listener that serves only ``GET /health``."""

    enable: bool = False
    port: int = 12398


@dataclass(frozen=True)
class KeyValueSettings:
    """``Butler.keyValueStore``. ``backend``, ``sqlite`` and ``redis`` are additions to upstream's keys."""

    max_keys_per_namespace: int = 1000
    backend: str = "sqlite"
    sqlite_path: Path = Path("butler-kv.sqlite")
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "butler:kv:"


@dataclass(frozen=True)
class CertificateSettings:
    """``Butler.cert``: the client certificate exported from the QMC, and the site's root CA."""

    client_cert: Path | None = None
    client_key: Path | None = None
    root_ca: Path | None = None


@dataclass(frozen=True)
class QrsSettings:
    """``Butler.configQRS``. ``timeoutSeconds`` and ``retries`` are additions to upstream's keys."""

    host: str = "localhost"
    port: int = 4242
    use_ssl: bool = True
    headers: tuple[tuple[str, str], ...] = (("X-Qlik-User", "UserDirectory=Internal;UserId=sa_repository"),)
    reject_unauthorized: bool = False
    timeout_seconds: float = 30.0
    retries: int = 2


@dataclass(frozen=True)
class EngineSettings:
    """``Butler.configEngine``; ``timeoutSeconds`` is an addition to upstream's keys."""

    host: str = "localhost"
    port: int = 4747
    use_ssl: bool = True
    headers: tuple[tuple[str, str], ...] = (("X-Qlik-User", "UserDirectory=Internal;UserId=sa_repository"),)
    reject_unauthorized: bool = False
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class StartTaskFilter:
    """``Butler.startTaskFilter``: which task ids, tags and custom-property values may be started by REST."""

    enable: bool = False
    task_ids: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    custom_properties: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class TaskOutcomeSettings:
    """The task-event pipeline: ``Butler.udpServerConfig`` messageQueue, deduplication, taskEvents."""

    workers: int = 10
    queue_size: int = 200
    backpressure_percent: int = 80
    dedup: bool = True
    dedup_seconds: float = 600.0
    timeout_seconds: float = 10.0
    cache_seconds: float = 60.0
    script_log_head: int = 10
    script_log_tail: int = 20


@dataclass(frozen=True)
class EventTopics:
    """The ``Butler.mqttConfig`` topics that events are published on."""

    session_start: str = "qliksense/session/start"
    session_stop: str = "qliksense/session/stop"
    connection_open: str = "qliksense/connection/open"
    connection_close: str = "qliksense/connection/close"
    active_user_count: str = "qliksense/users/active/count"
    active_users: str = "qliksense/users/active/usernames"
    active_users_per_server: str = "qliksense/users/activeperserver"
    task_failure: str = "qliksense/task_failure"
    task_failure_full: str = "qliksense/task_failure_full"
    task_failure_send_full: bool = True
    task_aborted: str = "qliksense/task_aborted"
    task_aborted_full: str = "qliksense/task_aborted_full"
    task_aborted_send_full: bool = True
    task_success: str = "qliksense/task_success"
    task_success_full: str = "qliksense/task_success_full"
    task_success_send_full: bool = True
    task_event_server_status: str = "qliksense/butler/task_failure_server"
    session_server_status: str = "qliksense/butler/session_server"


@dataclass(frozen=True)
class MqttSettings:
    """``Butler.mqttConfig``. ``username``, ``password``, ``clientId``, ``qos``, ``tls``, ``queueSize``,
    ``taskStartResultTopic`` and the ``taskSuccess*`` keys are additions to upstream's keys; the session
    and active-user topics are upstream v6's."""

    enable: bool = False
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str | None = None
    qos: int = 0
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    queue_size: int = 10000
    task_start_topic: str = "qliksense/start_task"
    task_start_result_topic: str = "qliksense/start_task/result"
    events: EventTopics = field(default_factory=EventTopics)


@dataclass(frozen=True)
class UdpServerSettings:
    """``Butler.udpServerConfig``: the listeners for Sense's log-appender events.

    ``portSessionConnectionEvents`` is upstream v6's key; ``sessionExpirySeconds``, ``sessionStateFile``,
    ``activeUsersPublishSeconds`` and the ``taskEvents`` section are additions to upstream's keys.
    """

    enable: bool = False
    host: str = "0.0.0.0"
    task_port: int = 9998
    session_port: int = 9997
    max_message_size: int = 65507
    allowed_sources: tuple[str, ...] | None = None
    max_per_source_per_minute: int | None = None
    session_expiry_seconds: float = 4 * 3600
    session_state_file: Path | None = None
    active_users_publish_seconds: float = 1.0
    task_events: TaskOutcomeSettings = field(default_factory=TaskOutcomeSettings)


@dataclass(frozen=True)
class EndpointFlags:
    """``Butler.restServerEndpointsEnable`` as written in the file, order kept.

    Flags are addressed by dotted name (``butlerping``, ``scheduler.getSchedule``). Only the value ``true``
    enables an endpoint.
    """

    tree: Mapping[str, Any] = field(default_factory=dict)

    def enabled(self, name: str) -> bool:
        node: Any = self.tree
        for part in name.split("."):
            if not isinstance(node, Mapping):
                return False
            node = node.get(part)
        return node is True

    def enabled_leaf_names(self) -> list[str]:
        """Leaf names of the enabled flags, depth-first in file order (for the endpointsenabled route)."""
        return list(_true_leaves(self.tree))

    @classmethod
    def all_enabled(cls, names: list[str]) -> EndpointFlags:
        tree: dict[str, Any] = {}
        for name in names:
            *parents, leaf = name.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = True
        return cls(tree)


def _true_leaves(node: Mapping[str, Any]) -> Iterator[str]:
    for name, value in node.items():
        if isinstance(value, Mapping):
            yield from _true_leaves(value)
        elif value is True:
            yield name


@dataclass(frozen=True)
class Settings:
    """Everything Butler reads from its config file."""

    log_level: str = "info"
    rest: RestServerSettings = field(default_factory=RestServerSettings)
    endpoints: EndpointFlags = field(default_factory=EndpointFlags)
    health_check: HealthCheckSettings = field(default_factory=HealthCheckSettings)
    key_value: KeyValueSettings = field(default_factory=KeyValueSettings)
    certificates: CertificateSettings = field(default_factory=CertificateSettings)
    qrs: QrsSettings = field(default_factory=QrsSettings)
    start_task_filter: StartTaskFilter = field(default_factory=StartTaskFilter)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    slack_webhook: str | None = None
    files: FileSettings = field(default_factory=FileSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    udp: UdpServerSettings = field(default_factory=UdpServerSettings)
    source: Path | None = None
    unsupported_sections: tuple[str, ...] = ()
