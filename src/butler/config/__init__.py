"""Loading and validating Butler's YAML config file (everything under ``Butler:``).

The layout and key names are upstream Butler's, so an existing config file loads unchanged. Sections of
upstream features this project does not implement are accepted and reported once, so the admin knows they
have no effect; a key that is neither ours nor upstream's is an error, with a suggestion for near misses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from butler.config.schema import Bool, Enum, Int, Key, ListOf, Section, Spec, Str, describe, validate
from butler.config.settings import (
    CertificateSettings,
    ConnectionLimits,
    EndpointFlags,
    EngineSettings,
    EventTopics,
    HealthCheckSettings,
    KeyValueSettings,
    MqttSettings,
    QrsSettings,
    RestServerSettings,
    Settings,
    StartTaskFilter,
    TaskOutcomeSettings,
    TlsSettings,
    UdpServerSettings,
)
from butler.files import FileSettings
from butler.http.browsers import parse_origin
from butler.mqtt import InvalidMessage, check_topic

__all__ = ["ENDPOINT_FLAGS", "ConfigError", "Settings", "load_config", "parse_config"]

LOG_LEVELS = ("silly", "debug", "verbose", "info", "warn", "error")

#: Every flag of ``Butler.restServerEndpointsEnable`` upstream knows, in the template's order, then
#: upstream v6's flags for active users.
ENDPOINT_FLAGS: tuple[str, ...] = (
    "apiListEnabledEndpoints",
    "base62ToBase16",
    "base16ToBase62",
    "butlerping",
    "createDir",
    "createDirQVD",
    "fileDelete",
    "fileMove",
    "fileCopy",
    "keyValueStore",
    "mqttPublishMessage",
    "newRelic.postNewRelicMetric",
    "newRelic.postNewRelicEvent",
    "scheduler.createNewSchedule",
    "scheduler.getSchedule",
    "scheduler.getScheduleStatusAll",
    "scheduler.updateSchedule",
    "scheduler.deleteSchedule",
    "scheduler.startSchedule",
    "scheduler.stopSchedule",
    "senseAppReload",
    "senseAppDump",
    "senseListApps",
    "senseStartTask",
    "slackPostMessage",
    "activeUserCount",
    "activeUsers",
)

#: Top-level sections of upstream Butler 16 that this project does not implement (yet).
UPSTREAM_SECTIONS: frozenset[str] = frozenset(
    {
        "fileLogging",
        "logDirectory",
        "anonTelemetry",
        "systemInfo",
        "configVisualisation",
        "heartbeat",
        "uptimeMonitor",
        "thirdPartyToolsCredentials",
        "influxDb",
        "scriptLog",
        "qlikSenseUrls",
        "genericUrls",
        "qlikSenseVersion",
        "qlikSenseLicense",
        "teamsNotification",
        "emailNotification",
        "incidentTool",
        "webhookNotification",
        "scheduler",
        "restServerEndpointsConfig",
        "serviceMonitor",
        "qlikSenseCloud",
    }
)

# Sections that only tune upstream internals and change nothing here: accepted silently.
_IGNORED_SECTIONS = frozenset({"restServerApiDocGenerate"})

_PORT = Int(1, 65535)
_SECONDS = Int(1, 3600)
#: The defaults of the connection limits, given once in ConnectionLimits.
_LIMITS = ConnectionLimits()
#: mqttConfig keys of upstream features this version does not have (alerts, Azure, Qlik Cloud).
_MQTT_UPSTREAM_KEYS = frozenset(
    {
        "azureEventGrid",
        "serviceRunningTopic",
        "serviceStoppedTopic",
        "serviceStatusTopic",
        "qlikSenseServerLicenseTopic",
        "qlikSenseServerLicenseExpireTopic",
        "qlikSenseCloud",
    }
)
#: mqttConfig keys of the event topics, with their defaults (one place for schema and settings).
_EVENT_TOPIC_KEYS = {
    "sessionStartTopic": "session_start",
    "sessionStopTopic": "session_stop",
    "connectionOpenTopic": "connection_open",
    "connectionCloseTopic": "connection_close",
    "activeUserCountTopic": "active_user_count",
    "activeUsersTopic": "active_users",
    "activeUsersPerServerTopic": "active_users_per_server",
    "taskFailureTopic": "task_failure",
    "taskFailureFullTopic": "task_failure_full",
    "taskFailureSendFull": "task_failure_send_full",
    "taskAbortedTopic": "task_aborted",
    "taskAbortedFullTopic": "task_aborted_full",
    "taskAbortedSendFull": "task_aborted_send_full",
    "taskSuccessTopic": "task_success",
    "taskSuccessFullTopic": "task_success_full",
    "taskSuccessSendFull": "task_success_send_full",
    "taskFailureServerStatusTopic": "task_event_server_status",
    "sessionServerStatusTopic": "session_server_status",
}
_DIRECTORY_PAIR = Section(
    keys={"fromDirectory": Key(Str(), required=True), "toDirectory": Key(Str(), required=True)}
)
_HEADER_LIST = ListOf(Section(keys={"name": Key(Str(), required=True), "value": Key(Str(), required=True)}))


class _Origin(Spec):
    """A web origin, ``https://sense.company.com[:port]``, kept as browsers write it in ``Origin``."""

    @property
    def expected(self) -> str:
        return "an origin such as https://sense.company.com"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            self.fail(value, path, errors)
            return None
        try:
            return parse_origin(value)
        except ValueError as exc:
            errors.append(f"{path}: {exc}, got {describe(value)}")
            return None


class _Topic(Spec):
    """An MQTT topic Butler publishes to: one the broker would refuse is refused at start-up, rather than
    every message to it at run time."""

    @property
    def expected(self) -> str:
        return "an MQTT topic such as qliksense/task_failure"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, str):
            self.fail(value, path, errors)
            return None
        try:
            check_topic(value)
        except InvalidMessage as exc:
            errors.append(f"{path}: {exc}, got {describe(value)}")
            return None
        return value


class _Anything(Section):
    """Accepted as it is, without checks."""

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        return value


def _flag_section() -> Section:
    groups: dict[str, dict[str, Key]] = {}
    keys: dict[str, Key] = {}
    for name in ENDPOINT_FLAGS:
        if "." in name:
            group, leaf = name.split(".")
            groups.setdefault(group, {})[leaf] = Key(Bool(), default=False)
        else:
            keys[name] = Key(Bool(), default=False)
    for group, leaves in groups.items():
        keys[group] = Key(Section(keys=leaves, nullable=True))
    return Section(keys=keys, nullable=True)


_SCHEMA = Section(
    keys={
        "Butler": Key(
            Section(
                keys={
                    "logLevel": Key(Enum(choices=LOG_LEVELS), default="info"),
                    "restServerConfig": Key(
                        Section(
                            keys={
                                "enable": Key(Bool(), required=True),
                                "serverHost": Key(Str(), required=True),
                                "serverPort": Key(_PORT, required=True),
                                "backgroundServerPort": Key(_PORT),
                                "allowedOrigins": Key(ListOf(_Origin())),
                                "headersTimeoutSeconds": Key(_SECONDS, default=_LIMITS.headers_timeout),
                                "bodyTimeoutSeconds": Key(_SECONDS, default=_LIMITS.body_timeout),
                                "keepAliveTimeoutSeconds": Key(_SECONDS, default=_LIMITS.keep_alive_timeout),
                                "maxConnections": Key(Int(1, 1_000_000), default=_LIMITS.max_connections),
                                "tls": Key(
                                    Section(
                                        keys={
                                            "enable": Key(Bool(), default=False),
                                            "cert": Key(Str(nullable=True)),
                                            "key": Key(Str(nullable=True)),
                                            "ca": Key(Str(nullable=True)),
                                        }
                                    )
                                ),
                            }
                        ),
                        required=True,
                    ),
                    "restServerEndpointsEnable": Key(_flag_section()),
                    "keyValueStore": Key(
                        Section(
                            keys={
                                "enable": Key(Bool(), default=False),
                                "maxKeysPerNamespace": Key(Int(1), default=1000),
                                "backend": Key(Enum(choices=("sqlite", "memory", "redis")), default="sqlite"),
                                "sqlite": Key(Section(keys={"path": Key(Str(), default="butler-kv.sqlite")})),
                                "redis": Key(
                                    Section(
                                        keys={
                                            "url": Key(Str(), default="redis://127.0.0.1:6379/0"),
                                            "keyPrefix": Key(Str(), default="butler:kv:"),
                                        }
                                    )
                                ),
                            }
                        )
                    ),
                    "cert": Key(
                        Section(
                            keys={
                                "clientCert": Key(Str(nullable=True)),
                                "clientCertKey": Key(Str(nullable=True)),
                                "clientCertCA": Key(Str(nullable=True)),
                            }
                        )
                    ),
                    "configQRS": Key(
                        Section(
                            keys={
                                "authentication": Key(Str(), default="certificates"),
                                "host": Key(Str(), default="localhost"),
                                "useSSL": Key(Bool(), default=True),
                                "port": Key(_PORT, default=4242),
                                "headers": Key(Section(keys={"static": Key(_HEADER_LIST)})),
                                "rejectUnauthorized": Key(Bool(), default=False),
                                "timeoutSeconds": Key(Int(1, 3600), default=30),
                                "retries": Key(Int(0, 10), default=2),
                            }
                        )
                    ),
                    "startTaskFilter": Key(
                        Section(
                            keys={
                                "enable": Key(Bool(), default=False),
                                "allowTask": Key(
                                    Section(
                                        keys={
                                            "taskId": Key(ListOf(Str())),
                                            "tag": Key(ListOf(Str())),
                                            "customProperty": Key(
                                                ListOf(
                                                    Section(
                                                        keys={
                                                            "name": Key(Str(), required=True),
                                                            "value": Key(Str(), required=True),
                                                        }
                                                    )
                                                )
                                            ),
                                        },
                                        nullable=True,
                                    )
                                ),
                            }
                        )
                    ),
                    "mqttConfig": Key(
                        Section(
                            keys={
                                "enable": Key(Bool(), default=False),
                                "brokerHost": Key(Str(), default="localhost"),
                                "brokerPort": Key(_PORT, default=1883),
                                "username": Key(Str(nullable=True)),
                                "password": Key(Str(nullable=True)),
                                "clientId": Key(Str(nullable=True)),
                                "qos": Key(Int(0, 2), default=0),
                                "queueSize": Key(Int(1, 10_000_000), default=10000),
                                "tls": Key(
                                    Section(
                                        keys={
                                            "enable": Key(Bool(), default=False),
                                            "ca": Key(Str(nullable=True)),
                                            "cert": Key(Str(nullable=True)),
                                            "key": Key(Str(nullable=True)),
                                        }
                                    )
                                ),
                                # Accepted as upstream's; Butler subscribes to taskStartTopic only.
                                "subscriptionRootTopic": Key(Str(), default="qliksense/#"),
                                "taskStartTopic": Key(Str(), default="qliksense/start_task"),
                                "taskStartResultTopic": Key(_Topic(), default="qliksense/start_task/result"),
                                **{
                                    key: Key(
                                        Bool() if key.endswith("SendFull") else _Topic(),
                                        default=getattr(EventTopics(), name),
                                    )
                                    for key, name in _EVENT_TOPIC_KEYS.items()
                                },
                            },
                            tolerated=_MQTT_UPSTREAM_KEYS,
                        )
                    ),
                    "slackNotification": Key(
                        Section(
                            keys={"restMessage": Key(Section(keys={"webhookURL": Key(Str(nullable=True))}))},
                            tolerated=frozenset(
                                {
                                    "enable",
                                    "reloadTaskFailure",
                                    "reloadTaskAborted",
                                    "serviceStopped",
                                    "serviceStarted",
                                    "userSessionEvents",
                                }
                            ),
                        )
                    ),
                    "fileCopyApprovedDirectories": Key(ListOf(_DIRECTORY_PAIR)),
                    "fileMoveApprovedDirectories": Key(ListOf(_DIRECTORY_PAIR)),
                    "fileDeleteApprovedDirectories": Key(ListOf(Str())),
                    "createDirApprovedDirectories": Key(ListOf(Str()), default=None),
                    "configDirectories": Key(Section(keys={"qvdPath": Key(Str(nullable=True))})),
                    "configEngine": Key(
                        Section(
                            keys={
                                "engineVersion": Key(Str(), default="12.612.0"),
                                "host": Key(Str(), default="localhost"),
                                "port": Key(_PORT, default=4747),
                                "useSSL": Key(Bool(), default=True),
                                "headers": Key(Section(keys={"static": Key(_HEADER_LIST)})),
                                "rejectUnauthorized": Key(Bool(), default=False),
                                "timeoutSeconds": Key(Int(1, 3600), default=30),
                            }
                        )
                    ),
                    "udpServerConfig": Key(
                        Section(
                            keys={
                                "enable": Key(Bool(), default=False),
                                "serverHost": Key(Str(), default="0.0.0.0"),
                                "portTaskFailure": Key(Int(0, 65535), default=9998),
                                "portSessionConnectionEvents": Key(Int(0, 65535), default=9997),
                                "maxMessageSize": Key(Int(64, 65527), default=65507),
                                "enableSourceValidation": Key(Bool(), default=False),
                                "allowedSources": Key(ListOf(Str())),
                                "messageQueue": Key(
                                    Section(
                                        keys={
                                            "maxConcurrent": Key(Int(1, 1000), default=10),
                                            "maxSize": Key(Int(1, 1_000_000), default=200),
                                            "backpressureThreshold": Key(Int(0, 100), default=80),
                                        }
                                    )
                                ),
                                "rateLimit": Key(
                                    Section(
                                        keys={
                                            "enable": Key(Bool(), default=False),
                                            "maxMessagesPerMinute": Key(Int(1), default=600),
                                        }
                                    )
                                ),
                                "deduplication": Key(
                                    Section(
                                        keys={
                                            "enable": Key(Bool(), default=True),
                                            "ttlMinutes": Key(Int(1, 10080), default=10),
                                        }
                                    )
                                ),
                                "sessionExpirySeconds": Key(Int(1), default=4 * 3600),
                                "sessionStateFile": Key(Str(nullable=True), default="butler-sessions.json"),
                                "activeUsersPublishSeconds": Key(Int(0, 3600), default=1),
                                "taskEvents": Key(
                                    Section(
                                        keys={
                                            "enrichTimeoutSeconds": Key(Int(1, 3600), default=10),
                                            "metadataCacheSeconds": Key(Int(0, 86400), default=60),
                                            "scriptLogHeadLines": Key(Int(0, 1000), default=10),
                                            "scriptLogTailLines": Key(Int(0, 1000), default=20),
                                        }
                                    )
                                ),
                            },
                            tolerated=frozenset({"queueMetrics"}),
                        )
                    ),
                    "dockerHealthCheck": Key(
                        Section(
                            keys={"enable": Key(Bool(), default=False), "port": Key(_PORT, default=12398)}
                        )
                    ),
                    **{name: Key(_Anything()) for name in _IGNORED_SECTIONS},
                },
                tolerated=UPSTREAM_SECTIONS,
            ),
            required=True,
        )
    }
)


class ConfigError(Exception):
    """The config file cannot be used. ``messages`` has one line per problem, each naming the key path."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def load_config(path: str | Path) -> Settings:
    """Read, validate and convert a Butler config file. Raises ConfigError listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror or exc}"]) from exc
    try:
        document = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
    return parse_config(document, base_dir=path.resolve().parent, source=path)


def parse_config(document: Any, *, base_dir: Path, source: Path | None = None) -> Settings:
    """Validate an already parsed config document. Relative file paths are resolved against ``base_dir``."""
    values, errors = validate(_SCHEMA, document, "config file")
    # Messages name keys from the root of the YAML document, as admins read them.
    errors = [e.removeprefix("config file.") for e in errors]
    if errors:
        raise ConfigError(errors)
    butler = values["Butler"]
    rest = butler["restServerConfig"]
    tls = rest["tls"]
    tls_settings = TlsSettings(
        enable=tls["enable"],
        cert=_path(tls["cert"], base_dir),
        key=_path(tls["key"], base_dir),
        ca=_path(tls["ca"], base_dir),
    )
    if tls_settings.enable:
        missing = [name for name in ("cert", "key") if getattr(tls_settings, name) is None]
        if missing:
            raise ConfigError(
                [f"Butler.restServerConfig.tls.{name}: required when tls.enable is true" for name in missing]
            )
    present = document["Butler"]
    health = butler["dockerHealthCheck"]
    kv = butler["keyValueStore"]
    cert = butler["cert"]
    qrs = butler["configQRS"]
    allow = butler["startTaskFilter"]["allowTask"]
    mqtt = butler["mqttConfig"]
    return Settings(
        log_level=butler["logLevel"],
        rest=RestServerSettings(
            enable=rest["enable"],
            host=rest["serverHost"],
            port=rest["serverPort"],
            background_port=rest["backgroundServerPort"],
            allowed_origins=tuple(rest["allowedOrigins"]),
            tls=tls_settings,
            limits=ConnectionLimits(
                headers_timeout=rest["headersTimeoutSeconds"],
                body_timeout=rest["bodyTimeoutSeconds"],
                keep_alive_timeout=rest["keepAliveTimeoutSeconds"],
                max_connections=rest["maxConnections"],
            ),
        ),
        endpoints=EndpointFlags(butler["restServerEndpointsEnable"]),
        health_check=HealthCheckSettings(enable=health["enable"], port=health["port"]),
        key_value=KeyValueSettings(
            max_keys_per_namespace=kv["maxKeysPerNamespace"],
            backend=kv["backend"],
            sqlite_path=_path(kv["sqlite"]["path"], base_dir) or base_dir / "butler-kv.sqlite",
            redis_url=kv["redis"]["url"],
            redis_prefix=kv["redis"]["keyPrefix"],
        ),
        certificates=CertificateSettings(
            client_cert=_path(cert["clientCert"], base_dir),
            client_key=_path(cert["clientCertKey"], base_dir),
            root_ca=_path(cert["clientCertCA"], base_dir),
        ),
        qrs=QrsSettings(
            host=qrs["host"],
            port=qrs["port"],
            use_ssl=qrs["useSSL"],
            headers=tuple((h["name"], h["value"]) for h in qrs["headers"]["static"]) or QrsSettings.headers,
            reject_unauthorized=qrs["rejectUnauthorized"],
            timeout_seconds=qrs["timeoutSeconds"],
            retries=qrs["retries"],
        ),
        start_task_filter=StartTaskFilter(
            enable=butler["startTaskFilter"]["enable"],
            task_ids=frozenset(allow["taskId"]),
            tags=frozenset(allow["tag"]),
            custom_properties=frozenset((cp["name"], cp["value"]) for cp in allow["customProperty"]),
        ),
        mqtt=MqttSettings(
            enable=mqtt["enable"],
            host=mqtt["brokerHost"],
            port=mqtt["brokerPort"],
            username=mqtt["username"],
            password=mqtt["password"],
            client_id=mqtt["clientId"],
            qos=mqtt["qos"],
            tls=mqtt["tls"]["enable"],
            tls_ca=_path(mqtt["tls"]["ca"], base_dir),
            tls_cert=_path(mqtt["tls"]["cert"], base_dir),
            tls_key=_path(mqtt["tls"]["key"], base_dir),
            queue_size=mqtt["queueSize"],
            task_start_topic=mqtt["taskStartTopic"],
            task_start_result_topic=mqtt["taskStartResultTopic"],
            events=EventTopics(**{name: mqtt[key] for key, name in _EVENT_TOPIC_KEYS.items()}),
        ),
        slack_webhook=butler["slackNotification"]["restMessage"]["webhookURL"],
        engine=EngineSettings(
            host=butler["configEngine"]["host"],
            port=butler["configEngine"]["port"],
            use_ssl=butler["configEngine"]["useSSL"],
            headers=tuple((h["name"], h["value"]) for h in butler["configEngine"]["headers"]["static"])
            or EngineSettings.headers,
            reject_unauthorized=butler["configEngine"]["rejectUnauthorized"],
            timeout_seconds=butler["configEngine"]["timeoutSeconds"],
        ),
        udp=_udp_settings(butler["udpServerConfig"], base_dir),
        files=FileSettings(
            copy=tuple(
                (Path(p["fromDirectory"]), Path(p["toDirectory"]))
                for p in butler["fileCopyApprovedDirectories"]
            ),
            move=tuple(
                (Path(p["fromDirectory"]), Path(p["toDirectory"]))
                for p in butler["fileMoveApprovedDirectories"]
            ),
            delete=tuple(Path(d) for d in butler["fileDeleteApprovedDirectories"]),
            qvd_path=Path(butler["configDirectories"]["qvdPath"])
            if butler["configDirectories"]["qvdPath"]
            else None,
            create_dir=None
            if "createDirApprovedDirectories" not in present
            or present["createDirApprovedDirectories"] is None
            else tuple(Path(d) for d in butler["createDirApprovedDirectories"]),
        ),
        source=source,
        unsupported_sections=tuple(name for name in present if name in UPSTREAM_SECTIONS),
    )


def _udp_settings(udp: dict[str, Any], base_dir: Path) -> UdpServerSettings:
    queue, events = udp["messageQueue"], udp["taskEvents"]
    if udp["portTaskFailure"] == udp["portSessionConnectionEvents"] != 0:
        raise ConfigError(
            [
                "Butler.udpServerConfig.portSessionConnectionEvents: must differ from portTaskFailure "
                f"({udp['portTaskFailure']}); the two kinds of event need a port each"
            ]
        )
    return UdpServerSettings(
        enable=udp["enable"],
        host=udp["serverHost"],
        task_port=udp["portTaskFailure"],
        session_port=udp["portSessionConnectionEvents"],
        max_message_size=udp["maxMessageSize"],
        allowed_sources=tuple(udp["allowedSources"]) if udp["enableSourceValidation"] else None,
        max_per_source_per_minute=udp["rateLimit"]["maxMessagesPerMinute"]
        if udp["rateLimit"]["enable"]
        else None,
        session_expiry_seconds=udp["sessionExpirySeconds"],
        session_state_file=_path(udp["sessionStateFile"], base_dir),
        active_users_publish_seconds=udp["activeUsersPublishSeconds"],
        task_events=TaskOutcomeSettings(
            workers=queue["maxConcurrent"],
            queue_size=queue["maxSize"],
            backpressure_percent=queue["backpressureThreshold"],
            dedup=udp["deduplication"]["enable"],
            dedup_seconds=udp["deduplication"]["ttlMinutes"] * 60,
            timeout_seconds=events["enrichTimeoutSeconds"],
            cache_seconds=events["metadataCacheSeconds"],
            script_log_head=events["scriptLogHeadLines"],
            script_log_tail=events["scriptLogTailLines"],
        ),
    )


def _path(value: str | None, base_dir: Path) -> Path | None:
    if value is None or value == "":
        return None
    return base_dir / Path(value).expanduser()
