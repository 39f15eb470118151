"""Typed settings built from a validated config file, passed to the code that needs them.

Each field declares the config key it is read from, once: its path, spec, default and a one-line help
(``butler.config.declare``). The validator, the file's defaults, these classes' defaults and
``butler config check --explain`` all come from these declarations.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from butler.auth import DEFAULT_TOKEN_HEADER, SCOPES
from butler.config.alerts import AlertSettings
from butler.config.declare import items, part, setting
from butler.config.influx import InfluxSettings
from butler.config.monitors import MonitorSettings
from butler.config.schema import Bool, Enum, Int, Key, ListOf, Number, Secret, Section, Spec, Str, describe
from butler.http.browsers import parse_origin
from butler.logs import LOG_FORMATS
from butler.mqtt import InvalidMessage, check_topic

LOG_LEVELS = ("silly", "debug", "verbose", "info", "warn", "error")

#: Every flag of ``Butler.restServerEndpointsEnable`` upstream knows, in the template's order, then
#: upstream v6's flags for active users, then the additions (``ADDITION_FLAGS``).
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
    "licenseReleases",
    "audit",
)
ADDITION_FLAGS = frozenset({"licenseReleases", "audit"})

#: Top-level sections of upstream Butler 16 that this project does not implement (yet): reported once.
UPSTREAM_SECTIONS: tuple[str, ...] = (
    "anonTelemetry",
    "systemInfo",
    "configVisualisation",
    "qlikSenseCloud",
)

_PORT = Int(1, 65535)
_SECONDS = Int(1, 3600)
_SA_REPOSITORY = [{"name": "X-Qlik-User", "value": "UserDirectory=Internal;UserId=sa_repository"}]
_NAME_VALUE = Section(keys={"name": Key(Str(), required=True), "value": Key(Str(), required=True)})
_DIRECTORY_PAIR = Section(
    keys={"fromDirectory": Key(Str(), required=True), "toDirectory": Key(Str(), required=True)}
)


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


def _headers(value: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    # An empty list would leave Qlik without a user to act as: the default user then, as upstream.
    return tuple((header["name"], header["value"]) for header in value or _SA_REPOSITORY)


def _paths(value: list[str]) -> tuple[Path, ...]:
    return tuple(Path(item) for item in value)


def _path_pairs(value: list[dict[str, str]]) -> tuple[tuple[Path, Path], ...]:
    return tuple((Path(pair["fromDirectory"]), Path(pair["toDirectory"])) for pair in value)


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """HTTPS for the REST API (``Butler.restServerConfig.tls``)."""

    enable: bool = setting("enable", Bool(), False, help="serve HTTPS instead of HTTP")
    cert: Path | None = setting(
        "cert", Str(nullable=True), None, file=True, help="PEM certificate (required when TLS is on)"
    )
    key: Path | None = setting(
        "key", Str(nullable=True), None, file=True, help="PEM private key (required when TLS is on)"
    )
    ca: Path | None = setting("ca", Str(nullable=True), None, file=True, help="optional PEM CA bundle")


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """How long and how many HTTP connections a listener keeps (additions to ``Butler.restServerConfig``).

    A request head is one packet from every real caller, so 10 s only matters to a stalled or malicious
    client; bodies are at most 1 MiB, so 30 s still allows 35 KB/s. Idle keep-alive connections are kept
    72 s, as upstream's Fastify keeps them: callers' connection pools were tuned to that, and a server
    that closes first races the client reusing the connection (the client gets a reset). 1,000
    connections are far more than the load scripts, ETL jobs and monitors of a Sense site open at once,
    and an idle one costs Butler about 5 KB of memory.
    """

    headers_timeout: float = setting(
        "headersTimeoutSeconds",
        _SECONDS,
        10,
        addition=True,
        help="a request head must arrive in full within this time, or 408 and the connection is closed",
    )
    body_timeout: float = setting(
        "bodyTimeoutSeconds",
        _SECONDS,
        30,
        addition=True,
        help="a request body must arrive in full within this time once read, or 408 and the connection ends",
    )
    keep_alive_timeout: float = setting(
        "keepAliveTimeoutSeconds",
        _SECONDS,
        72,
        addition=True,
        help="a kept-alive connection that sends nothing for this long after its last answer is closed",
    )
    max_connections: int = setting(
        "maxConnections",
        Int(1, 1_000_000),
        1000,
        addition=True,
        help="connections kept open at once per listener; one beyond it is answered 503 and closed",
    )


@dataclass(frozen=True, kw_only=True)
class CertificateScopes:
    """One item of ``Butler.restServerConfig.auth.certificates``: a client certificate's subject and the
    scopes it holds."""

    subject: str = setting("subject", Str(), required=True, help="the subject, as CN=etl,O=Corp")
    scopes: tuple[str, ...] = setting(
        "scopes", ListOf(Enum(choices=SCOPES)), convert=tuple, help="the scopes it holds"
    )


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """``Butler.restServerConfig.auth`` (an addition): API tokens and client certificates, off by default so
    that existing load scripts keep working."""

    enable: bool = setting(
        "enable", Bool(), False, help="every endpoint but /health, /metrics and the docs needs a credential"
    )
    token_header: str = setting(
        "tokenHeader",
        Str(),
        DEFAULT_TOKEN_HEADER,
        help="a header that carries a token as Authorization: Bearer does, for callers that cannot set that",
    )
    certificates: tuple[CertificateScopes, ...] = items(
        "certificates",
        CertificateScopes,
        help="client certificates verified against tls.ca, [{subject, scopes}]",
    )


@dataclass(frozen=True, kw_only=True)
class RestServerSettings:
    """``Butler.restServerConfig``."""

    enable: bool = setting("enable", Bool(), required=True, help="start the REST API")
    host: str = setting(
        "serverHost", Str(), required=True, help="address to listen on; 0.0.0.0 for every interface"
    )
    port: int = setting("serverPort", _PORT, required=True, help="port of the REST API")
    background_port: int | None = setting(
        "backgroundServerPort", _PORT, None, help="accepted and ignored: one listener serves everything"
    )
    allowed_origins: tuple[str, ...] = setting(
        "allowedOrigins",
        ListOf(_Origin()),
        addition=True,
        convert=tuple,
        help="web origins whose pages may call Butler from a browser (README, Browsers)",
    )
    tls: TlsSettings = part("tls", TlsSettings, help="HTTPS for the REST API")
    limits: ConnectionLimits = part("", ConnectionLimits)
    auth: AuthSettings = part("auth", AuthSettings, addition=True, help="API tokens and client certificates")


@dataclass(frozen=True, kw_only=True)
class HealthCheckSettings:
    """``Butler.dockerHealthCheck``: an extra plain-HTTP listener that serves only ``GET /health``."""

    enable: bool = setting("enable", Bool(), False, help="also serve GET /health on a port of its own")
    port: int = setting("port", _PORT, 12398, help="the port of that health check")


@dataclass(frozen=True, kw_only=True)
class InstancesSettings:
    """``Butler.instances`` (an addition): several Butlers on one Redis (``keyValueStore.backend: redis``)
    share the monitors' leases and the REST rate limit (README, Several Butlers)."""

    takeover_seconds: float = setting(
        "takeoverSeconds",
        Number(0.2, 3600),
        15.0,
        help="how soon another Butler takes over a monitor's lease or an event's claim when its holder dies",
    )
    instance_id: str | None = setting(
        "instanceId",
        Str(nullable=True),
        None,
        help="this Butler's name in the leases and /health; null: host name, process id and a random part",
    )


@dataclass(frozen=True, kw_only=True)
class PrometheusSettings:
    """``Butler.prometheus`` (an addition): ``GET /metrics`` in Prometheus's text format."""

    enable: bool = setting("enable", Bool(), False, help="serve GET /metrics (README, Metrics)")
    host: str | None = setting(
        "host",
        Str(nullable=True),
        None,
        help="the address of the metrics port; null: Butler.restServerConfig.serverHost",
    )
    port: int | None = setting(
        "port",
        Int(1, 65535, nullable=True),
        None,
        help="a plain-HTTP port serving only GET /metrics; null: served by the REST API's listener",
    )


@dataclass(frozen=True, kw_only=True)
class LogSettings:
    """Where Butler's log goes besides standard error (``Butler.fileLogging``, ``Butler.logDirectory``), and
    in which form. Retention and format are additions; 30 days is upstream's fixed retention."""

    file_logging: bool = setting(
        "fileLogging", Bool(), False, help="also write the log to a file a day, butler.YYYY-MM-DD.log (UTC)"
    )
    directory: Path = setting("logDirectory", Str(), "log", file=True, help="the folder of the log files")
    retention_days: int = setting(
        "logRetentionDays",
        Int(0, 36500),
        30,
        addition=True,
        help="log files of days more than this many days ago are deleted; 0: kept for ever",
    )
    log_format: str = setting(
        "logFormat",
        Enum(choices=LOG_FORMATS),
        "text",
        addition=True,
        help="text (upstream's lines) or json (one object a line, for log collectors)",
    )


@dataclass(frozen=True, kw_only=True)
class StatusPageSettings:
    """``Butler.statusPage`` (an addition): ``GET /status``, Butler's state on one page for people."""

    enable: bool = setting("enable", Bool(), False, help="serve GET /status (README, Status page)")


@dataclass(frozen=True, kw_only=True)
class AuditLogSettings:
    """``Butler.auditLog`` (an addition): state-changing and refused REST calls, as JSON lines."""

    enable: bool = setting("enable", Bool(), False, help="keep the audit log (README, Audit log)")
    file: Path = setting("file", Str(), "butler-audit.jsonl", file=True, help="the audit log's file")
    max_bytes: int = setting(
        "maxBytes", Int(1024), 10 * 1024 * 1024, help="the file is rotated once it would grow beyond this"
    )
    keep: int = setting("keep", Int(0, 1000), 10, help="rotated files kept (file.1 the newest)")


@dataclass(frozen=True, kw_only=True)
class KeyValueSettings:
    """``Butler.keyValueStore``. ``backend``, ``sqlite`` and ``redis`` are additions to upstream's keys."""

    enable: bool = setting(
        "enable",
        Bool(),
        False,
        help="not read, as upstream does not read it: Butler.restServerEndpointsEnable.keyValueStore "
        "turns the key-value endpoints on",
    )
    max_keys_per_namespace: int = setting(
        "maxKeysPerNamespace", Int(1), 1000, help="keys a namespace may hold; a new key beyond it is a 400"
    )
    backend: str = setting(
        "backend",
        Enum(choices=("sqlite", "memory", "redis")),
        "sqlite",
        addition=True,
        help="sqlite (pairs kept in a file), memory (lost on restart, as upstream) or redis (shared)",
    )
    sqlite_path: Path = setting(
        "sqlite.path", Str(), "butler-kv.sqlite", addition=True, file=True, help="the SQLite file"
    )
    redis_url: str = setting(
        "redis.url",
        Str(),
        "redis://127.0.0.1:6379/0",
        addition=True,
        help="the Redis to use, redis://[:password@]host:port/db (rediss:// for TLS)",
    )
    redis_prefix: str = setting(
        "redis.keyPrefix", Str(), "butler:kv:", addition=True, help="prefix of every Redis key Butler writes"
    )


@dataclass(frozen=True, kw_only=True)
class CertificateSettings:
    """``Butler.cert``: the client certificate exported from the QMC, and the site's root CA."""

    client_cert: Path | None = setting(
        "clientCert", Str(nullable=True), None, file=True, help="client.pem exported from the QMC"
    )
    client_key: Path | None = setting(
        "clientCertKey", Str(nullable=True), None, file=True, help="client_key.pem exported from the QMC"
    )
    root_ca: Path | None = setting(
        "clientCertCA", Str(nullable=True), None, file=True, help="root.pem exported from the QMC"
    )


@dataclass(frozen=True, kw_only=True)
class QrsSettings:
    """``Butler.configQRS``. ``timeoutSeconds`` and ``retries`` are additions to upstream's keys."""

    authentication: str = setting(
        "authentication", Str(), "certificates", help="accepted and ignored: Butler always uses Butler.cert"
    )
    host: str = setting("host", Str(), "localhost", help="where QRS listens")
    use_ssl: bool = setting("useSSL", Bool(), True, help="HTTPS to QRS")
    port: int = setting("port", _PORT, 4242, help="the port of QRS")
    headers: tuple[tuple[str, str], ...] = setting(
        "headers.static",
        ListOf(_NAME_VALUE),
        _SA_REPOSITORY,
        convert=_headers,
        help="headers sent on every QRS call, [{name, value}]; X-Qlik-User picks the user",
    )
    reject_unauthorized: bool = setting(
        "rejectUnauthorized", Bool(), False, help="verify QRS's certificate against Butler.cert.clientCertCA"
    )
    timeout_seconds: float = setting(
        "timeoutSeconds",
        _SECONDS,
        30,
        addition=True,
        help="how long the QRS calls of one request (retries included) may take before the caller gets a 504",
    )
    retries: int = setting(
        "retries",
        Int(0, 10),
        2,
        addition=True,
        help="retries of a QRS call safe to repeat, after a connection error or 502/503/504, if time is left",
    )


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """``Butler.configEngine``; ``timeoutSeconds`` is an addition to upstream's keys."""

    engine_version: str = setting(
        "engineVersion", Str(), "12.612.0", help="accepted and ignored: Butler does not need it"
    )
    host: str = setting("host", Str(), "localhost", help="where the Qlik Sense Engine listens")
    port: int = setting("port", _PORT, 4747, help="the port of the Engine")
    use_ssl: bool = setting("useSSL", Bool(), True, help="WSS (TLS) to the Engine")
    headers: tuple[tuple[str, str], ...] = setting(
        "headers.static",
        ListOf(_NAME_VALUE),
        _SA_REPOSITORY,
        convert=_headers,
        help="headers sent when connecting to the Engine, [{name, value}]; X-Qlik-User picks the user",
    )
    reject_unauthorized: bool = setting(
        "rejectUnauthorized",
        Bool(),
        False,
        help="verify the Engine's certificate against Butler.cert.clientCertCA",
    )
    timeout_seconds: float = setting(
        "timeoutSeconds",
        _SECONDS,
        30,
        addition=True,
        help="how long the Engine work of one request may take before the caller gets a 504",
    )


@dataclass(frozen=True, kw_only=True)
class StartTaskFilter:
    """``Butler.startTaskFilter``: which task ids, tags and custom-property values may be started by REST."""

    enable: bool = setting("enable", Bool(), False, help="only start tasks on the allow-lists")
    task_ids: frozenset[str] = setting(
        "allowTask.taskId", ListOf(Str()), convert=frozenset, help="task ids that may be started"
    )
    tags: frozenset[str] = setting(
        "allowTask.tag", ListOf(Str()), convert=frozenset, help="tags whose tasks may be started"
    )
    custom_properties: frozenset[tuple[str, str]] = setting(
        "allowTask.customProperty",
        ListOf(_NAME_VALUE),
        convert=lambda pairs: frozenset((pair["name"], pair["value"]) for pair in pairs),
        help="[{name, value}] custom-property values whose tasks may be started",
    )


@dataclass(frozen=True, kw_only=True)
class TaskOutcomeSettings:
    """The task-event pipeline: ``Butler.udpServerConfig`` messageQueue, deduplication, taskEvents."""

    workers: int = setting(
        "messageQueue.maxConcurrent", Int(1, 1000), 10, help="task events enriched from QRS at once"
    )
    queue_size: int = setting(
        "messageQueue.maxSize", Int(1, 1_000_000), 200, help="task events queued at most; more are dropped"
    )
    backpressure_percent: int = setting(
        "messageQueue.backpressureThreshold",
        Int(0, 100),
        80,
        help="queue percentage at which a warning is logged",
    )
    dedup: bool = setting(
        "deduplication.enable", Bool(), True, help="handle the same execution id and outcome once"
    )
    dedup_seconds: float = setting(
        "deduplication.ttlMinutes",
        Int(1, 10080),
        10,
        convert=lambda minutes: minutes * 60,
        help="minutes within which the same execution id and outcome is handled once",
    )
    timeout_seconds: float = setting(
        "taskEvents.enrichTimeoutSeconds",
        _SECONDS,
        10,
        addition=True,
        help="how long QRS may take to enrich an event before it goes out partial",
    )
    cache_seconds: float = setting(
        "taskEvents.metadataCacheSeconds",
        Int(0, 86400),
        60,
        addition=True,
        help="how long task and app metadata are cached",
    )
    distribution_poll_seconds: float = setting(
        "taskEvents.distributionPollSeconds",
        Number(0.01, 3600),
        30,
        convert=float,
        addition=True,
        help="how often a distribution task that reported /scheduler-distribute/ is asked how it ended",
    )
    distribution_wait_seconds: float = setting(
        "taskEvents.distributionWaitHours",
        Int(1, 48),
        6,
        convert=lambda hours: hours * 3600.0,
        addition=True,
        help="hours a distribution task is followed at most; upstream's 6",
    )
    script_log_head: int = setting(
        "taskEvents.scriptLogHeadLines",
        Int(0, 1000),
        10,
        addition=True,
        help="first lines of the script log of a failed or aborted reload kept in its event",
    )
    script_log_tail: int = setting(
        "taskEvents.scriptLogTailLines",
        Int(0, 1000),
        20,
        addition=True,
        help="last lines of the script log of a failed or aborted reload kept in its event",
    )


def _topic(key: str, default: str, help: str, *, addition: bool = False) -> Any:
    return setting(key, _Topic(), default, help=help, addition=addition)


def _send_full(key: str, outcome: str, *, addition: bool = False) -> Any:
    return setting(key, Bool(), True, help=f"publish the full JSON of {outcome} tasks too", addition=addition)


@dataclass(frozen=True, kw_only=True)
class EventTopics:
    """The ``Butler.mqttConfig`` topics that events are published on."""

    session_start: str = _topic(
        "sessionStartTopic", "qliksense/session/start", "session starts (upstream v6)"
    )
    session_stop: str = _topic("sessionStopTopic", "qliksense/session/stop", "session stops (upstream v6)")
    connection_open: str = _topic(
        "connectionOpenTopic", "qliksense/connection/open", "connections opened (upstream v6)"
    )
    connection_close: str = _topic(
        "connectionCloseTopic", "qliksense/connection/close", "connections closed (upstream v6)"
    )
    active_user_count: str = _topic(
        "activeUserCountTopic", "qliksense/users/active/count", "the number of active users (upstream v6)"
    )
    active_users: str = _topic(
        "activeUsersTopic", "qliksense/users/active/usernames", "the active users' ids (upstream v6)"
    )
    active_users_per_server: str = _topic(
        "activeUsersPerServerTopic",
        "qliksense/users/activeperserver",
        "active users per proxy host, below <topic>/<host>/count (upstream v6)",
    )
    task_failure: str = _topic("taskFailureTopic", "qliksense/task_failure", "names of failed tasks")
    task_failure_full: str = _topic(
        "taskFailureFullTopic", "qliksense/task_failure_full", "the full JSON of failed tasks"
    )
    task_failure_send_full: bool = _send_full("taskFailureSendFull", "failed")
    task_aborted: str = _topic("taskAbortedTopic", "qliksense/task_aborted", "names of aborted tasks")
    task_aborted_full: str = _topic(
        "taskAbortedFullTopic", "qliksense/task_aborted_full", "the full JSON of aborted tasks"
    )
    task_aborted_send_full: bool = _send_full("taskAbortedSendFull", "aborted")
    task_success: str = _topic(
        "taskSuccessTopic", "qliksense/task_success", "names of successful tasks", addition=True
    )
    task_success_full: str = _topic(
        "taskSuccessFullTopic",
        "qliksense/task_success_full",
        "the full JSON of successful tasks",
        addition=True,
    )
    task_success_send_full: bool = _send_full("taskSuccessSendFull", "successful", addition=True)
    task_event_server_status: str = _topic(
        "taskFailureServerStatusTopic",
        "qliksense/butler/task_failure_server",
        "'start' when the task-event UDP listener opens",
    )
    session_server_status: str = _topic(
        "sessionServerStatusTopic",
        "qliksense/butler/session_server",
        "'start' when the session-event UDP listener opens",
    )


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """``Butler.mqttConfig``."""

    #: Keys of upstream features this version does not have (alerts, Azure, Qlik Cloud).
    UPSTREAM_ONLY: ClassVar[tuple[str, ...]] = (
        "azureEventGrid",
        "qlikSenseCloud",
    )

    enable: bool = setting("enable", Bool(), False, help="connect to an MQTT broker")
    host: str = setting("brokerHost", Str(), "localhost", help="the MQTT broker's host")
    port: int = setting("brokerPort", _PORT, 1883, help="the MQTT broker's port")
    username: str | None = setting("username", Str(nullable=True), None, addition=True, help="broker login")
    password: str | None = setting(
        "password", Secret(nullable=True), None, addition=True, help="broker password"
    )
    client_id: str | None = setting(
        "clientId", Str(nullable=True), None, addition=True, help="client id; null: butler-<random>"
    )
    qos: int = setting("qos", Int(0, 2), 0, addition=True, help="QoS of published messages")
    tls: bool = setting("tls.enable", Bool(), False, addition=True, help="TLS to the broker")
    tls_ca: Path | None = setting(
        "tls.ca", Str(nullable=True), None, addition=True, file=True, help="CA bundle for the broker"
    )
    tls_cert: Path | None = setting(
        "tls.cert", Str(nullable=True), None, addition=True, file=True, help="client certificate"
    )
    tls_key: Path | None = setting(
        "tls.key", Str(nullable=True), None, addition=True, file=True, help="client certificate's key"
    )
    queue_size: int = setting(
        "queueSize",
        Int(1, 10_000_000),
        10000,
        addition=True,
        help="messages kept while the broker is away; more are dropped, counted and logged",
    )
    subscription_root_topic: str = setting(
        "subscriptionRootTopic",
        Str(),
        "qliksense/#",
        help="accepted and ignored: Butler subscribes to taskStartTopic only",
    )
    task_start_topic: str = setting(
        "taskStartTopic", Str(), "qliksense/start_task", help="where task-start messages arrive"
    )
    task_start_result_topic: str = _topic(
        "taskStartResultTopic",
        "qliksense/start_task/result",
        "where the outcome of each task-start message is published",
        addition=True,
    )
    events: EventTopics = part("", EventTopics)
    service_running: str = _topic(
        "serviceRunningTopic",
        "qliksense/service_running",
        "services that started, below <topic>/<host>/<name>",
    )
    service_stopped: str = _topic(
        "serviceStoppedTopic",
        "qliksense/service_stopped",
        "services that stopped, below <topic>/<host>/<name>",
    )
    service_status: str = _topic(
        "serviceStatusTopic", "qliksense/service_status", "every service's state at each check, likewise"
    )
    server_license: str = _topic(
        "qlikSenseServerLicenseTopic",
        "qliksense/qliksense_server_license",
        "the server licence at each check",
    )
    server_license_expire: str = _topic(
        "qlikSenseServerLicenseExpireTopic",
        "qliksense/qliksense_server_license_expire",
        "server licence expiry alerts",
    )


@dataclass(frozen=True, kw_only=True)
class UdpServerSettings:
    """``Butler.udpServerConfig``: the listeners for Sense's log-appender events."""

    UPSTREAM_ONLY: ClassVar[tuple[str, ...]] = ("queueMetrics",)

    enable: bool = setting("enable", Bool(), False, help="listen for the UDP events of Sense's log appenders")
    host: str = setting("serverHost", Str(), "0.0.0.0", help="address to listen on")
    task_port: int = setting(
        "portTaskFailure", Int(0, 65535), 9998, help="port of the scheduler's task events; 0: not listened on"
    )
    session_port: int = setting(
        "portSessionConnectionEvents",
        Int(0, 65535),
        9997,
        help="port of the proxy's session events (upstream v6); 0: not listened on",
    )
    max_message_size: int = setting(
        "maxMessageSize", Int(64, 65527), 65507, help="larger datagrams are dropped and counted"
    )
    validate_sources: bool = setting(
        "enableSourceValidation", Bool(), False, help="accept datagrams from allowedSources only"
    )
    sources: tuple[str, ...] = setting(
        "allowedSources",
        ListOf(Str()),
        convert=tuple,
        help="IP addresses or host names (resolved at start-up) datagrams are accepted from",
    )
    rate_limit: bool = setting("rateLimit.enable", Bool(), False, help="limit datagrams per source IP")
    messages_per_minute: int = setting(
        "rateLimit.maxMessagesPerMinute", Int(1), 600, help="datagrams a minute accepted per source IP"
    )
    session_expiry_seconds: float = setting(
        "sessionExpirySeconds",
        Int(1),
        4 * 3600,
        addition=True,
        help="a user session with no event for this long is no longer counted",
    )
    session_state_file: Path | None = setting(
        "sessionStateFile",
        Str(nullable=True),
        "butler-sessions.json",
        addition=True,
        file=True,
        help="where the sessions are kept across restarts; null: not kept",
    )
    active_users_publish_seconds: float = setting(
        "activeUsersPublishSeconds",
        Int(0, 3600),
        1,
        addition=True,
        help="active-user figures go to MQTT at most this often",
    )
    task_events: TaskOutcomeSettings = part("", TaskOutcomeSettings)

    @property
    def allowed_sources(self) -> tuple[str, ...] | None:
        """The sources datagrams are accepted from; None: any."""
        return self.sources if self.validate_sources else None

    @property
    def max_per_source_per_minute(self) -> int | None:
        """Datagrams a minute accepted per source; None: no limit."""
        return self.messages_per_minute if self.rate_limit else None


@dataclass(frozen=True, kw_only=True)
class SchedulerSettings:
    """``Butler.scheduler``: Sense tasks started on cron schedules kept in upstream's schedule file."""

    enable: bool = setting(
        "enable", Bool(), False, help="read the schedule file at start-up and run its schedules"
    )
    file: Path = setting(
        "configfile", Str(), "config/schedule.yaml", file=True, help="the schedule file (butlerSchedule:)"
    )
    compat: bool = setting(
        "compat",
        Bool(),
        False,
        addition=True,
        help="read cron months 0-11 and both day fields together, as upstream does (files written for it)",
    )
    history: int = setting(
        "runHistory",
        Int(1, 1000),
        50,
        addition=True,
        help="fires kept per schedule for GET /v4/schedules/{id}/runs",
    )


@dataclass(frozen=True, kw_only=True)
class FileSettings:
    """The approved folders (``Butler.fileCopyApprovedDirectories`` and friends, ``configDirectories``)."""

    copy: tuple[tuple[Path, Path], ...] = setting(
        "fileCopyApprovedDirectories",
        ListOf(_DIRECTORY_PAIR),
        convert=_path_pairs,
        help="[{fromDirectory, toDirectory}]: where copies may go from and to",
    )
    move: tuple[tuple[Path, Path], ...] = setting(
        "fileMoveApprovedDirectories",
        ListOf(_DIRECTORY_PAIR),
        convert=_path_pairs,
        help="[{fromDirectory, toDirectory}]: where moves may go from and to",
    )
    delete: tuple[Path, ...] = setting(
        "fileDeleteApprovedDirectories",
        ListOf(Str()),
        convert=_paths,
        help="folders in which files (and sub-folders) may be deleted",
    )
    qvd_path: Path | None = setting(
        "configDirectories.qvdPath",
        Str(nullable=True),
        None,
        convert=lambda path: Path(path) if path else None,
        help="the folder /v4/createdirqvd creates folders under",
    )
    create_dir: tuple[Path, ...] | None = setting(
        "createDirApprovedDirectories",
        ListOf(Str(), nullable=True),
        None,
        addition=True,
        convert=lambda paths: None if paths is None else _paths(paths),
        help="folders /v4/createdir may create folders in; absent or null: anywhere, as upstream",
    )


@dataclass(frozen=True)
class EndpointFlags:
    """``Butler.restServerEndpointsEnable`` as written in the file, order kept.

    Flags are addressed by dotted name (``butlerping``, ``scheduler.getSchedule``). Only the value ``true``
    enables an endpoint.
    """

    tree: Mapping[str, Any] = field(default_factory=dict)

    def enabled(self, name: str) -> bool:
        node: Any = self.tree
        for part_name in name.split("."):
            if not isinstance(node, Mapping):
                return False
            node = node.get(part_name)
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
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = True
        return cls(tree)


def _true_leaves(node: Mapping[str, Any]) -> Iterator[str]:
    for name, value in node.items():
        if isinstance(value, Mapping):
            yield from _true_leaves(value)
        elif value is True:
            yield name


def _flag_section() -> Section:
    root = Section()
    for name in ENDPOINT_FLAGS:
        *parents, leaf = name.split(".")
        section = root
        for parent in parents:
            entry = section.keys.setdefault(parent, Key(Section()))
            assert isinstance(entry.spec, Section)
            section = entry.spec
        section.keys[leaf] = Key(
            Bool(),
            default=False,
            help=f"true turns on the {leaf} endpoint(s)",
            addition=name in ADDITION_FLAGS,
        )
    return root


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything Butler reads from its config file (``Butler``), and what loading it found."""

    UPSTREAM_ONLY: ClassVar[tuple[str, ...]] = (
        *UPSTREAM_SECTIONS,
        # Tunes upstream's internals and changes nothing here.
        "restServerApiDocGenerate",
    )

    log_level: str = setting("logLevel", Enum(choices=LOG_LEVELS), "info", help="how much Butler logs")
    log: LogSettings = part("", LogSettings)
    rest: RestServerSettings = part("restServerConfig", RestServerSettings, help="the REST API")
    endpoints: EndpointFlags = setting(
        "restServerEndpointsEnable",
        _flag_section(),
        None,
        convert=EndpointFlags,
        help="one switch per endpoint; only true turns an endpoint on",
    )
    health_check: HealthCheckSettings = part(
        "dockerHealthCheck", HealthCheckSettings, help="a plain-HTTP GET /health port for Docker"
    )
    prometheus: PrometheusSettings = part(
        "prometheus", PrometheusSettings, addition=True, help="GET /metrics for Prometheus"
    )
    audit: AuditLogSettings = part("auditLog", AuditLogSettings, addition=True, help="the audit log")
    status_page: StatusPageSettings = part(
        "statusPage", StatusPageSettings, addition=True, help="the status page at GET /status"
    )
    key_value: KeyValueSettings = part("keyValueStore", KeyValueSettings, help="the key-value store")
    instances: InstancesSettings = part(
        "instances", InstancesSettings, addition=True, help="several Butlers sharing one Redis"
    )
    certificates: CertificateSettings = part(
        "cert", CertificateSettings, help="the certificates Butler uses with Qlik Sense"
    )
    qrs: QrsSettings = part("configQRS", QrsSettings, help="the Qlik Sense Repository Service (QRS)")
    start_task_filter: StartTaskFilter = part(
        "startTaskFilter", StartTaskFilter, help="which tasks the task-start endpoint may start"
    )
    mqtt: MqttSettings = part("mqttConfig", MqttSettings, help="the MQTT broker and the topics Butler uses")
    slack_webhook: str | None = setting(
        "slackNotification.restMessage.webhookURL",
        Str(nullable=True),
        None,
        help="the Slack webhook of /v4/slackpostmessage",
    )
    files: FileSettings = part("", FileSettings)
    engine: EngineSettings = part("configEngine", EngineSettings, help="the Qlik Sense Engine")
    udp: UdpServerSettings = part(
        "udpServerConfig", UdpServerSettings, help="the UDP events of Sense's log appenders"
    )
    scheduler: SchedulerSettings = part(
        "scheduler", SchedulerSettings, help="tasks started on cron schedules"
    )
    alerts: AlertSettings = part("", AlertSettings)
    influx: InfluxSettings = part("influxDb", InfluxSettings, help="points written to InfluxDB")
    monitors: MonitorSettings = part("", MonitorSettings)
    #: The config file, when loaded from one.
    source: Path | None = None
    #: Upstream sections in the file that this version ignores.
    unsupported_sections: tuple[str, ...] = ()
    #: What the admin should know about the file although Butler can use it.
    notes: tuple[str, ...] = ()
