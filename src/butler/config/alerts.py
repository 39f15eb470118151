"""Settings of the alerts on task outcomes, Windows services and the server licence: e-mail, Slack,
Teams, outgoing webhooks, Signl4, New Relic; and of the REST API's New Relic endpoints.

The keys are upstream Butler's (``scriptLog``, ``qlikSenseUrls``, ``genericUrls``, ``emailNotification``,
``slackNotification``, ``teamsNotification``, ``webhookNotification``, ``incidentTool``,
``thirdPartyToolsCredentials``), so an existing file's alerts work unchanged. An event's section is
declared once per channel; the events of a channel differ only in defaults (``variant``). When a key is
absent its default is upstream's code default where upstream has one (rate limit 300 s, 15 script-log
lines, Signl4's service name and severity), else the template's value; a placeholder of the template (an
address, a path, a URL) is not a default, as sending to it would only fail later.

Values that would only fail at the first alert (an HTTP method, a priority, a message type) are refused
when the file is loaded. Files and servers are not checked here: a missing template or an unreachable
server must not stop Butler, and start-up reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from butler.config.declare import items, part, setting, variant
from butler.config.schema import Bool, Enum, Int, Key, ListOf, Number, Secret, Section, Spec, Str

_PORT = Int(1, 65535)
_LINES = Int(0, 100_000)
_RATE_LIMIT = Number(0, 31 * 86400)
_METHODS = ("GET", "PUT", "POST")


class _Text(Spec):
    """A string; a number is taken as written (account ids and attribute values are often unquoted)."""

    @property
    def expected(self) -> str:
        return "a string"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.fail(value, path, errors)
        return None


class _HttpMethod(Spec):
    """GET, PUT or POST in any case, as upstream accepts; kept upper-cased."""

    @property
    def expected(self) -> str:
        return "GET, PUT or POST"

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, str) and value.upper() in _METHODS:
            return value.upper()
        self.fail(value, path, errors)
        return None


_NAME_VALUE = Section(keys={"name": Key(_Text(), required=True), "value": Key(_Text(), required=True)})
_OWNER = Section(keys={"directory": Key(_Text(), required=True), "userId": Key(_Text(), required=True)})
_GENERIC_URL = Section(
    keys={name: Key(Str(nullable=True), default="") for name in ("id", "linkText", "comment", "url")}
)


def _pairs(names: tuple[str, str]) -> Any:
    first, second = names
    return lambda values: tuple((item[first], item[second]) for item in values)


def _name_values(key: str, what: str) -> Any:
    return setting(
        key, ListOf(_NAME_VALUE), convert=_pairs(("name", "value")), help=f"[{{name, value}}]: {what}"
    )


def _rate_limit(what: str) -> Any:
    return setting(
        "rateLimit",
        _RATE_LIMIT,
        300,
        convert=float,
        help=f"seconds within which {what} is sent at most once; a message not delivered does not count",
    )


def _text_or_empty(value: str | None) -> str:
    return value or ""


@dataclass(frozen=True, kw_only=True)
class QlikSenseUrls:
    """``Butler.qlikSenseUrls``: the links alert messages offer."""

    qmc: str = setting(
        "qmc", Str(nullable=True), "", convert=_text_or_empty, help="the QMC's URL, {{qlikSenseQMC}}"
    )
    hub: str = setting(
        "hub", Str(nullable=True), "", convert=_text_or_empty, help="the hub's URL, {{qlikSenseHub}}"
    )
    app_base_url: str = setting(
        "appBaseUrl",
        Str(nullable=True),
        "",
        convert=_text_or_empty,
        help="apps' URLs are this, '/' and the app id ({{appUrl}})",
    )


@dataclass(frozen=True, kw_only=True)
class ScriptLogSettings:
    """``Butler.scriptLog.storeOnDisk.clientManaged.reloadTaskFailure``: script logs of failed reloads on
    disk, one folder a day."""

    UPSTREAM_ONLY: ClassVar[tuple[str, ...]] = ("storeOnDisk.qsCloud",)

    enable: bool = setting(
        "storeOnDisk.clientManaged.reloadTaskFailure.enable",
        Bool(),
        False,
        help="write the script log of every failed reload to disk",
    )
    directory: Path | None = setting(
        "storeOnDisk.clientManaged.reloadTaskFailure.logDirectory",
        Str(nullable=True),
        None,
        file=True,
        help="the folder the logs go to, in a sub-folder per day (YYYY-MM-DD)",
    )
    retention_days: int = setting(
        "storeOnDisk.clientManaged.reloadTaskFailure.retentionDays",
        Int(0, 36500),
        0,
        addition=True,
        help="day folders older than this many days are deleted; 0: kept for ever, as upstream",
    )


@dataclass(frozen=True, kw_only=True)
class DeliverySettings:
    """``Butler.alertDelivery`` (an addition): how long and how often an alert is retried."""

    deadline_seconds: float = setting(
        "deadlineSeconds",
        Number(1, 366 * 86400),
        86400,
        convert=float,
        help="an alert not delivered this long after it was raised is given up (a dead letter)",
    )
    first_retry_seconds: float = setting(
        "firstRetrySeconds",
        Number(0.01, 3600),
        1,
        convert=float,
        help="wait before the first retry; each further wait doubles, with jitter",
    )
    max_retry_seconds: float = setting(
        "maxRetrySeconds",
        Number(0.01, 86400),
        30,
        convert=float,
        help="the longest wait between retries: a channel back after an outage gets its alerts this soon",
    )
    http_timeout_seconds: float = setting(
        "httpTimeoutSeconds",
        Number(0.1, 3600),
        10,
        convert=float,
        help="time allowed for one HTTP delivery (Slack, Teams, webhooks, Signl4, New Relic)",
    )
    smtp_timeout_seconds: float = setting(
        "smtpTimeoutSeconds", Number(0.1, 3600), 30, convert=float, help="time allowed for one e-mail"
    )
    keep_seconds: float = setting(
        "keepSeconds",
        Number(0, 366 * 86400),
        7 * 86400,
        convert=float,
        help="delivered and dead alerts stay listed by GET /v4/alerts this long",
    )


# --- E-mail ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    """``Butler.emailNotification.smtp``."""

    host: str = setting("host", Str(), "", help="the SMTP server")
    port: int = setting("port", _PORT, 25, help="its port")
    secure: bool = setting(
        "secure",
        Bool(),
        False,
        help="TLS from the first byte (port 465); false: plain, STARTTLS when offered",
    )
    server_name: str | None = setting(
        "tls.serverName", Str(nullable=True), None, help="name the server's certificate is checked against"
    )
    ignore_tls: bool = setting("tls.ignoreTLS", Bool(), False, help="never use STARTTLS")
    require_tls: bool = setting(
        "tls.requireTLS", Bool(), False, help="refuse to send when the server does not offer STARTTLS"
    )
    reject_unauthorized: bool = setting(
        "tls.rejectUnauthorized", Bool(), False, help="refuse a server certificate that cannot be verified"
    )
    auth_enable: bool = setting("auth.enable", Bool(), False, help="log in to the SMTP server")
    user: str = setting("auth.user", Str(), "", help="the SMTP login")
    password: str = setting("auth.password", Secret(), "", help="the SMTP password")


@dataclass(frozen=True, kw_only=True)
class EmailMessage:
    """The keys of an alert mail's priority, subject, body template and sender, alike for task and
    service events."""

    priority: str = setting(
        "priority", Enum(choices=("high", "normal", "low")), "high", help="the mail's priority"
    )
    subject: str = setting("subject", Str(), "", help="the subject, a Handlebars template")
    body_directory: Path | None = setting(
        "bodyFileDirectory", Str(nullable=True), None, file=True, help="folder of the body templates"
    )
    html_template: str = setting(
        "htmlTemplateFile", Str(), "", help="the body template's file name there, without .handlebars"
    )
    from_address: str = setting("fromAddress", Str(), "", help="the sender, as in From:")


@dataclass(frozen=True, kw_only=True)
class _TaskEmailChoice:
    """The keys of a task event's mail before its message's: when it is sent, to which owners and custom
    properties, and how much of the script log it shows."""

    enable: bool = setting("enable", Bool(), False, help="send e-mails for this event")
    owner_alert: bool = setting(
        "appOwnerAlert.enable", Bool(), False, help="also mail the app's owner (reload events)"
    )
    owner_include_all: bool = setting(
        "appOwnerAlert.includeOwner.includeAll",
        Bool(),
        True,
        help="every owner may be mailed; false: only the owners in includeOwner.user",
    )
    owner_include: tuple[tuple[str, str], ...] = setting(
        "appOwnerAlert.includeOwner.user",
        ListOf(_OWNER),
        convert=_pairs(("directory", "userId")),
        help="[{directory, userId}]: the owners mailed when includeAll is false",
    )
    owner_exclude: tuple[tuple[str, str], ...] = setting(
        "appOwnerAlert.excludeOwner.user",
        ListOf(_OWNER),
        convert=_pairs(("directory", "userId")),
        help="[{directory, userId}]: owners never mailed",
    )
    enable_by_cp: bool = setting(
        "alertEnableByCustomProperty.enable",
        Bool(),
        False,
        help="mail the recipients only about tasks whose custom property has the enabled value",
    )
    enable_cp_name: str = setting(
        "alertEnableByCustomProperty.customPropertyName", Str(), "", help="that custom property"
    )
    enable_cp_value: str = setting(
        "alertEnableByCustomProperty.enabledValue", Str(), "Yes", help="the value that enables the alert"
    )
    recipients_cp_name: str = setting(
        "alertEnabledByEmailAddress.customPropertyName",
        Str(),
        "",
        help="a task custom property whose values are more addresses to mail",
    )
    rate_limit: float = _rate_limit("a mail about the same task to the same address")
    head_lines: int = setting(
        "headScriptLogLines", _LINES, 15, help="first lines of the script log in the mail"
    )
    tail_lines: int = setting(
        "tailScriptLogLines", _LINES, 15, help="last lines of the script log in the mail"
    )


# A dataclass's fields come from its bases, the last listed first, then its own: the bases are listed so
# that the keys of an event's section keep upstream's order.
@dataclass(frozen=True, kw_only=True)
class EmailEvent(EmailMessage, _TaskEmailChoice):
    """``Butler.emailNotification.<event>``: who is mailed about one kind of task outcome, and how."""

    recipients: tuple[str, ...] = setting(
        "recipients", ListOf(Str()), convert=tuple, help="addresses mailed about every task"
    )
    attach_script_log: bool = setting(
        "attachScriptLog",
        Bool(),
        False,
        addition=True,
        help="attach the whole script log (when there is one) to the mail",
    )


def _email(name: str, cp: str, subject: str, template: str, *, owner: bool = False) -> type[EmailEvent]:
    return variant(
        EmailEvent,
        name,
        owner_alert=owner,
        enable_cp_name=f"Butler_{cp}AlertEnableEmail",
        recipients_cp_name=f"Butler_{cp}AlertSendToEmail",
        subject=subject,
        html_template=template,
    )


_EMAIL_EVENTS: dict[str, type[EmailEvent]] = {
    "reloadTaskFailure": _email(
        "ReloadFailureEmail",
        "Failed",
        'Qlik Sense reload failed: "{{taskName}}"',
        "failed-reload",
        owner=True,
    ),
    "reloadTaskAborted": _email(
        "ReloadAbortedEmail",
        "Aborted",
        'Qlik Sense reload aborted: "{{taskName}}"',
        "aborted-reload",
        owner=True,
    ),
    "reloadTaskSuccess": _email(
        "ReloadSuccessEmail",
        "Success",
        '✅ Qlik Sense reload success: "{{taskName}}"',
        "success-reload-qseow",
    ),
    "distributeTaskFailure": _email(
        "DistributeFailureEmail",
        "DistributeFailed",
        '❌ Qlik Sense distribute task failed: "{{taskName}}"',
        "failed-distribute",
    ),
    "distributeTaskSuccess": _email(
        "DistributeSuccessEmail",
        "DistributeSuccess",
        '✅ Qlik Sense distribute task success: "{{taskName}}"',
        "success-distribute",
    ),
    "preloadTaskFailure": _email(
        "PreloadFailureEmail",
        "PreloadFailed",
        '❌ Qlik Sense preload task failed: "{{taskName}}"',
        "failed-preload",
    ),
    "preloadTaskSuccess": _email(
        "PreloadSuccessEmail",
        "PreloadSuccess",
        '✅ Qlik Sense preload task success: "{{taskName}}"',
        "success-preload",
    ),
}


@dataclass(frozen=True, kw_only=True)
class _ServiceEmailLimit:
    """The key of a service event's mail before its message's (see ``EmailEvent`` on the order)."""

    rate_limit: float = _rate_limit("a mail about the same service and state to the same address")


@dataclass(frozen=True, kw_only=True)
class ServiceEmailEvent(EmailMessage, _ServiceEmailLimit):
    """``Butler.emailNotification.serviceStopped`` / ``serviceStarted``: a Windows service's mail. It has no
    switch of its own (as upstream): it is sent when it has recipients."""

    recipients: tuple[str, ...] = setting(
        "recipients", ListOf(Str()), convert=tuple, help="addresses mailed about the service"
    )


_SERVICE_EMAILS: dict[str, type[ServiceEmailEvent]] = {
    "serviceStopped": variant(
        ServiceEmailEvent,
        "ServiceStoppedEmail",
        subject='❌ Windows service stopped on host {{host}}: "{{serviceDisplayName}}"',
        html_template="service-stopped",
    ),
    "serviceStarted": variant(
        ServiceEmailEvent,
        "ServiceStartedEmail",
        subject='✅ Windows service started on host {{host}}: "{{serviceDisplayName}}"',
        html_template="service-started",
    ),
}


@dataclass(frozen=True, kw_only=True)
class EmailSettings:
    """``Butler.emailNotification``."""

    enable: bool = setting("enable", Bool(), False, help="send alert e-mails at all")
    smtp: SmtpSettings = part("smtp", SmtpSettings, help="the SMTP server alerts are sent through")
    events: dict[str, EmailEvent] = part("", _EMAIL_EVENTS)
    services: dict[str, ServiceEmailEvent] = part("", _SERVICE_EMAILS)

    def event(self, name: str) -> EmailEvent:
        """The settings of event ``name``; an event without e-mails gets settings that send none."""
        return self.events.get(name) or EmailEvent()


# --- Slack and Teams ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChatEvent:
    """``Butler.teamsNotification.<event>`` / ``Butler.slackNotification.<event>``: one chat message."""

    enable: bool = setting("enable", Bool(), False, help="send a message for this event")
    webhook_url: str = setting("webhookURL", Str(), "", help="the incoming webhook the message is posted to")
    message_type: str = setting(
        "messageType",
        Enum(choices=("basic", "formatted")),
        "formatted",
        help="basic: basicMsgTemplate and two buttons; formatted: the message templateFile renders",
    )
    basic_template: str = setting(
        "basicMsgTemplate", Str(), "", help="the text of a basic message, a Handlebars template"
    )
    rate_limit: float = _rate_limit("a message about the same task")
    head_lines: int = setting("headScriptLogLines", _LINES, 15, help="first lines of the script log shown")
    tail_lines: int = setting("tailScriptLogLines", _LINES, 15, help="last lines of the script log shown")
    template_file: Path | None = setting(
        "templateFile",
        Str(nullable=True),
        None,
        file=True,
        help="the Handlebars template of a formatted message (JSON once rendered)",
    )
    # Slack's only: Teams messages have no channel, sender or icon of their own.
    channel: str = ""
    from_user: str = "Qlik Sense"
    icon_emoji: str = ":ghost:"


@dataclass(frozen=True, kw_only=True)
class SlackEvent(ChatEvent):
    """``Butler.slackNotification.<event>``."""

    channel: str = setting("channel", Str(), "", help="the Slack channel, without #")
    from_user: str = setting("fromUser", Str(), "Qlik Sense", help="the sender's name shown")
    icon_emoji: str = setting("iconEmoji", Str(), ":ghost:", help="the sender's icon")


def _chat(base: type[ChatEvent], name: str, basic: str, **defaults: Any) -> type[ChatEvent]:
    return variant(base, name, basic_template=basic, **defaults)


_FAILED_TEXT = 'Qlik Sense reload failed: "{{taskName}}"'
_ABORTED_TEXT = 'Qlik Sense reload aborted: "{{taskName}}"'
_SUCCESS_TEXT = 'Qlik Sense reload success: "{{taskName}}"'
_STOPPED_TEXT = 'Windows service stopped: "{{serviceName}}" on host "{{host}}"'
_STARTED_TEXT = 'Windows service started: "{{serviceName}}" on host "{{host}}"'


def _service_chat(base: type[ChatEvent], name: str, basic: str, **defaults: Any) -> type[ChatEvent]:
    # Upstream has no switch for service messages: they go out when the webhook is set.
    return variant(base, name, basic_template=basic, enable=True, **defaults)


@dataclass(frozen=True, kw_only=True)
class ChatSettings:
    """``Butler.slackNotification`` or ``Butler.teamsNotification``."""

    enable: bool = setting("enable", Bool(), False, help="send chat messages at all")
    events: dict[str, ChatEvent] = field(default_factory=dict)

    def event(self, name: str) -> ChatEvent:
        """The settings of event ``name``; an event without messages gets settings that send none."""
        return self.events.get(name) or ChatEvent()


@dataclass(frozen=True, kw_only=True)
class SlackSettings(ChatSettings):
    """``Butler.slackNotification`` (its ``restMessage`` is the REST API's, in ``Settings``)."""

    UPSTREAM_ONLY: ClassVar[tuple[str, ...]] = ("userSessionEvents",)

    events: dict[str, ChatEvent] = part(
        "",
        {
            "reloadTaskFailure": _chat(
                SlackEvent, "SlackReloadFailure", _FAILED_TEXT, channel="sense-task-failure"
            ),
            "reloadTaskAborted": _chat(
                SlackEvent, "SlackReloadAborted", _ABORTED_TEXT, channel="sense-task-aborted"
            ),
            "reloadTaskSuccess": _chat(
                SlackEvent, "SlackReloadSuccess", _SUCCESS_TEXT, channel="sense-task-success"
            ),
            "serviceStopped": _service_chat(
                SlackEvent, "SlackServiceStopped", _STOPPED_TEXT, channel="qliksense-service-alert"
            ),
            "serviceStarted": _service_chat(
                SlackEvent, "SlackServiceStarted", _STARTED_TEXT, channel="qliksense-service-alert"
            ),
        },
        additions=("reloadTaskSuccess",),
    )


@dataclass(frozen=True, kw_only=True)
class TeamsSettings(ChatSettings):
    """``Butler.teamsNotification``."""

    events: dict[str, ChatEvent] = part(
        "",
        {
            "reloadTaskFailure": _chat(ChatEvent, "TeamsReloadFailure", _FAILED_TEXT),
            "reloadTaskAborted": _chat(ChatEvent, "TeamsReloadAborted", _ABORTED_TEXT),
            "reloadTaskSuccess": _chat(ChatEvent, "TeamsReloadSuccess", _SUCCESS_TEXT),
            "serviceStopped": _service_chat(ChatEvent, "TeamsServiceStopped", _STOPPED_TEXT),
            "serviceStarted": _service_chat(ChatEvent, "TeamsServiceStarted", _STARTED_TEXT),
        },
        additions=("reloadTaskSuccess",),
    )


# --- Outgoing webhooks -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """One outgoing webhook, an item of ``Butler.webhookNotification.<event>.webhooks``."""

    description: str = setting("description", Str(nullable=True), "", convert=_text_or_empty, help="a note")
    url: str = setting("webhookURL", Str(), required=True, help="the URL called")
    method: str = setting(
        "httpMethod",
        _HttpMethod(),
        required=True,
        help="GET (fields in the query string), PUT or POST (fields as a JSON body)",
    )
    cert_enable: bool = setting(
        "cert.enable", Bool(), False, help="trust certCA (and apply rejectUnauthorized) for this URL"
    )
    reject_unauthorized: bool = setting(
        "cert.rejectUnauthorized", Bool(), True, help="refuse a certificate that cannot be verified"
    )
    cert_ca: Path | None = setting(
        "cert.certCA", Str(nullable=True), None, file=True, help="PEM CA certificate to trust"
    )


@dataclass(frozen=True, kw_only=True)
class WebhookEvent:
    """``Butler.webhookNotification.<event>``."""

    rate_limit: float = _rate_limit("a call about the same task")
    webhooks: tuple[Webhook, ...] = items(
        "webhooks",
        Webhook,
        help="[{description, webhookURL, httpMethod, cert}]: the webhooks called, one after the other",
    )


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """``Butler.webhookNotification``: an event is sent when its list of webhooks is not empty
    (``serviceMonitor``: a Windows service stopped or started; ``qlikSenseServerLicenseMonitor``: the
    server licence at each check; ``qlikSenseServerLicenseExpiryAlert``: it expired or is about to)."""

    enable: bool = setting("enable", Bool(), False, help="call outgoing webhooks at all")
    events: dict[str, WebhookEvent] = part(
        "",
        {
            name: WebhookEvent
            for name in (
                "reloadTaskFailure",
                "reloadTaskAborted",
                "reloadTaskSuccess",
                "serviceMonitor",
                "qlikSenseServerLicenseMonitor",
                "qlikSenseServerLicenseExpiryAlert",
            )
        },
        additions=("reloadTaskSuccess",),
    )

    def event(self, name: str) -> WebhookEvent:
        """The settings of event ``name``; an event without webhooks gets settings that call none."""
        return self.events.get(name) or WebhookEvent()


# --- Signl4 ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Signl4Event:
    """``Butler.incidentTool.signl4.<event>``."""

    enable: bool = setting("enable", Bool(), False, help="raise a Signl4 alert for this event")
    rate_limit: float = _rate_limit("an alert about the same task")
    service_name: str = setting(
        "serviceName", Str(), "Default service name", help="Signl4's X-S4-Service of the alert"
    )
    severity: int = setting("severity", Int(), 99, help="Signl4's severity of the alert")
    include_all: bool = setting(
        "includeApp.includeAll",
        Bool(),
        False,
        help="every app alerts; false: only the apps in includeApp.appId",
    )
    app_ids: tuple[str, ...] = setting(
        "includeApp.appId", ListOf(Str()), convert=tuple, help="ids of the apps that alert"
    )


@dataclass(frozen=True, kw_only=True)
class Signl4Settings:
    """``Butler.incidentTool.signl4``."""

    enable: bool = setting("enable", Bool(), False, help="raise Signl4 alerts at all")
    url: str = setting("url", Str(), "", help="the team's Signl4 webhook")
    events: dict[str, Signl4Event] = part(
        "", {name: Signl4Event for name in ("reloadTaskFailure", "reloadTaskAborted")}
    )

    def event(self, name: str) -> Signl4Event:
        """The settings of event ``name``; an event without Signl4 alerts gets settings that raise none."""
        return self.events.get(name) or Signl4Event()


# --- New Relic ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NewRelicAccount:
    """An item of ``Butler.thirdPartyToolsCredentials.newRelic``."""

    name: str = setting("accountName", _Text(), required=True, help="the name alerts refer to it by")
    insert_api_key: str = setting("insertApiKey", _Text(), required=True, help="an insert API key")
    account_id: str = setting("accountId", _Text(), required=True, help="the New Relic account id")


@dataclass(frozen=True, kw_only=True)
class NewRelicDestination:
    """``Butler.incidentTool.newRelic.<event>.destination.event`` (or ``.log``)."""

    enable: bool = setting("enable", Bool(), False, help="send this event to New Relic")
    always: bool = setting(
        "sendToAccount.always.enable", Bool(), False, help="send it to the accounts of always.account"
    )
    always_accounts: tuple[str, ...] = setting(
        "sendToAccount.always.account", ListOf(_Text()), convert=tuple, help="names of accounts"
    )
    cp_enable: bool = setting(
        "sendToAccount.byCustomProperty.enable",
        Bool(),
        False,
        help="also send it to the accounts a task custom property names",
    )
    cp_name: str = setting(
        "sendToAccount.byCustomProperty.customPropertyName", Str(), "", help="that custom property"
    )
    static_attributes: tuple[tuple[str, str], ...] = _name_values("attribute.static", "attributes added")
    use_app_tags: bool = setting(
        "attribute.dynamic.useAppTags", Bool(), True, help="one attribute per app tag"
    )
    use_task_tags: bool = setting(
        "attribute.dynamic.useTaskTags", Bool(), True, help="one attribute per task tag"
    )
    # A log entry's only: an event carries no script log.
    tail_lines: int = 20


@dataclass(frozen=True, kw_only=True)
class NewRelicLog(NewRelicDestination):
    """``Butler.incidentTool.newRelic.<event>.destination.log``."""

    tail_lines: int = setting(
        "tailScriptLogLines", _LINES, 20, help="last lines of the script log in the log entry"
    )


@dataclass(frozen=True, kw_only=True)
class NewRelicEvent:
    """``Butler.incidentTool.newRelic.<event>``."""

    rate_limit: float = setting(
        "sharedSettings.rateLimit",
        _RATE_LIMIT,
        300,
        convert=float,
        help="seconds within which an event (and a log entry) about the same task is sent at most once",
    )
    headers: tuple[tuple[str, str], ...] = _name_values("sharedSettings.header", "HTTP headers sent with it")
    static_attributes: tuple[tuple[str, str], ...] = _name_values(
        "sharedSettings.attribute.static", "attributes of both the event and the log entry"
    )
    event: NewRelicDestination = part("destination.event", NewRelicDestination, help="as a New Relic event")
    log: NewRelicDestination = part("destination.log", NewRelicLog, help="as a New Relic log entry")


def _new_relic(name: str, what: str) -> type[NewRelicEvent]:
    return variant(
        NewRelicEvent,
        f"NewRelic{name}",
        event=variant(
            NewRelicDestination, f"NewRelic{name}Event", cp_name=f"Butler_{what}_Event_NewRelicAccount"
        ),
        log=variant(NewRelicLog, f"NewRelic{name}Log", cp_name=f"Butler_{what}_Log_NewRelicAccount"),
    )


@dataclass(frozen=True, kw_only=True)
class NewRelicServiceDestination:
    """``Butler.incidentTool.newRelic.serviceMonitor.destination.event`` (or ``.log``)."""

    enable: bool = setting("enable", Bool(), False, help="send service state changes to New Relic this way")
    accounts: tuple[str, ...] = setting(
        "sendToAccount", ListOf(_Text()), convert=tuple, help="names of the accounts they are sent to"
    )
    static_attributes: tuple[tuple[str, str], ...] = _name_values("attribute.static", "attributes added")
    host: bool = setting(
        "attribute.dynamic.serviceHost", Bool(), True, help="the service's host as attribute serviceHost"
    )
    name: bool = setting(
        "attribute.dynamic.serviceName", Bool(), True, help="the service's name as attribute serviceName"
    )
    display_name: bool = setting(
        "attribute.dynamic.serviceDisplayName",
        Bool(),
        True,
        help="the service's display name as attribute serviceDisplayName",
    )
    state: bool = setting(
        "attribute.dynamic.serviceState", Bool(), True, help="the service's state as attribute serviceState"
    )


@dataclass(frozen=True, kw_only=True)
class NewRelicServiceMonitor:
    """``Butler.incidentTool.newRelic.serviceMonitor``: Windows services that stopped or started."""

    event: NewRelicServiceDestination = part(
        "destination.event", NewRelicServiceDestination, help="as New Relic events (qs_serviceStateEvent)"
    )
    log: NewRelicServiceDestination = part(
        "destination.log", NewRelicServiceDestination, help="as New Relic log entries (qs_serviceStateLog)"
    )
    running: bool = setting(
        "monitorServiceState.running.enable", Bool(), True, help="send a service that started running"
    )
    stopped: bool = setting(
        "monitorServiceState.stopped.enable", Bool(), True, help="send a service that stopped"
    )
    rate_limit: float = setting(
        "sharedSettings.rateLimit",
        _RATE_LIMIT,
        300,
        convert=float,
        help="seconds within which an event (and a log entry) about the same service and state is sent "
        "at most once",
    )
    headers: tuple[tuple[str, str], ...] = _name_values(
        "sharedSettings.header", "HTTP headers sent with them"
    )
    static_attributes: tuple[tuple[str, str], ...] = _name_values(
        "sharedSettings.attribute.static", "attributes of both the events and the log entries"
    )


@dataclass(frozen=True, kw_only=True)
class NewRelicPost:
    """``Butler.restServerEndpointsConfig.newRelic.postNewRelicEvent`` (or ``postNewRelicMetric``): where
    the REST API's ``POST /v4/newrelic/event`` (``metric``) sends what it is given."""

    accounts: tuple[str, ...] = setting(
        "destinationAccount",
        ListOf(_Text()),
        convert=tuple,
        help="names of the accounts (thirdPartyToolsCredentials.newRelic) it is sent to",
    )
    url: str = setting("url", Str(), "", help="New Relic's API of the account's region")
    headers: tuple[tuple[str, str], ...] = _name_values("header", "HTTP headers")
    static_attributes: tuple[tuple[str, str], ...] = _name_values(
        "attribute.static", "attributes added (the request's win on a name clash)"
    )


_REST_EVENT = variant(NewRelicPost, "NewRelicPostEvent", url="https://insights-collector.eu01.nr-data.net/")
_REST_METRIC = variant(
    NewRelicPost, "NewRelicPostMetric", url="https://insights-collector.eu01.nr-data.net/metric/v1"
)


@dataclass(frozen=True, kw_only=True)
class NewRelicSettings:
    """``Butler.incidentTool.newRelic``, the accounts of ``Butler.thirdPartyToolsCredentials.newRelic`` and
    the REST API's ``Butler.restServerEndpointsConfig.newRelic``."""

    enable: bool = setting("incidentTool.newRelic.enable", Bool(), False, help="send to New Relic at all")
    event_url: str = setting(
        "incidentTool.newRelic.url.event",
        Str(),
        "https://insights-collector.eu01.nr-data.net",
        help="New Relic's event API of the account's region",
    )
    log_url: str = setting(
        "incidentTool.newRelic.url.log",
        Str(),
        "https://log-api.eu.newrelic.com/log/v1",
        help="New Relic's log API of the account's region",
    )
    default_event_accounts: tuple[str, ...] = setting(
        "incidentTool.newRelic.destinationAccount.event",
        ListOf(_Text()),
        convert=tuple,
        help="names of the accounts every event is sent to",
    )
    default_log_accounts: tuple[str, ...] = setting(
        "incidentTool.newRelic.destinationAccount.log",
        ListOf(_Text()),
        convert=tuple,
        help="names of the accounts every log entry is sent to",
    )
    accounts: tuple[NewRelicAccount, ...] = items(
        "thirdPartyToolsCredentials.newRelic",
        NewRelicAccount,
        help="[{accountName, insertApiKey, accountId}]: the New Relic accounts alerts may go to",
    )
    events: dict[str, NewRelicEvent] = part(
        "incidentTool.newRelic",
        {
            "reloadTaskFailure": _new_relic("ReloadFailure", "FailedTask"),
            "reloadTaskAborted": _new_relic("ReloadAborted", "AbortedTask"),
        },
    )
    service_monitor: NewRelicServiceMonitor = part(
        "incidentTool.newRelic.serviceMonitor", NewRelicServiceMonitor, help="Windows service state changes"
    )
    rest_event: NewRelicPost = part(
        "restServerEndpointsConfig.newRelic.postNewRelicEvent", _REST_EVENT, help="POST /v4/newrelic/event"
    )
    rest_metric: NewRelicPost = part(
        "restServerEndpointsConfig.newRelic.postNewRelicMetric", _REST_METRIC, help="POST /v4/newrelic/metric"
    )

    def event(self, name: str) -> NewRelicEvent:
        """The settings of event ``name``; an event without New Relic gets settings that send nothing."""
        return self.events.get(name) or NewRelicEvent()

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The HTTP headers of failed reloads (``reloadTaskFailure.sharedSettings.header``); each event has
        its own in ``event(name).headers``."""
        return self.event("reloadTaskFailure").headers

    @property
    def static_attributes(self) -> tuple[tuple[str, str], ...]:
        """The shared attributes of failed reloads; each event has its own in ``event(name)``."""
        return self.event("reloadTaskFailure").static_attributes


# --- Everything ---------------------------------------------------------------------------------------


def _generic_urls(values: list[dict[str, str | None]]) -> tuple[dict[str, str], ...]:
    return tuple({name: value or "" for name, value in item.items()} for item in values)


@dataclass(frozen=True, kw_only=True)
class AlertSettings:
    """The alert sections of ``Butler``, reached as ``settings.alerts``."""

    urls: QlikSenseUrls = part("qlikSenseUrls", QlikSenseUrls, help="links used in alert messages")
    generic_urls: tuple[dict[str, str], ...] = setting(
        "genericUrls",
        ListOf(_GENERIC_URL),
        convert=_generic_urls,
        help="[{id, linkText, comment, url}]: more links templates may show ({{#each genericUrls}})",
    )
    script_log: ScriptLogSettings = part("scriptLog", ScriptLogSettings, help="script logs stored on disk")
    delivery: DeliverySettings = part(
        "alertDelivery", DeliverySettings, addition=True, help="retries and time limits of alert delivery"
    )
    email: EmailSettings = part("emailNotification", EmailSettings, help="alert e-mails")
    slack: ChatSettings = part("slackNotification", SlackSettings, help="Slack messages")
    teams: ChatSettings = part("teamsNotification", TeamsSettings, help="Microsoft Teams messages")
    webhook: WebhookSettings = part("webhookNotification", WebhookSettings, help="outgoing webhooks")
    signl4: Signl4Settings = part("incidentTool.signl4", Signl4Settings, help="Signl4 alerts")
    new_relic: NewRelicSettings = part("", NewRelicSettings)

    def channels_on(self) -> frozenset[str]:
        """The alert channels whose master switch is on (``butler.alerts.model.CHANNELS`` names)."""
        switches = {
            "email": self.email.enable,
            "slack": self.slack.enable,
            "teams": self.teams.enable,
            "webhook": self.webhook.enable,
            "signl4": self.signl4.enable,
            "newrelic": self.new_relic.enable,
        }
        return frozenset(channel for channel, on in switches.items() if on)


__all__ = [
    "AlertSettings",
    "ChatEvent",
    "ChatSettings",
    "DeliverySettings",
    "EmailEvent",
    "EmailMessage",
    "EmailSettings",
    "NewRelicAccount",
    "NewRelicDestination",
    "NewRelicEvent",
    "NewRelicLog",
    "NewRelicPost",
    "NewRelicServiceDestination",
    "NewRelicServiceMonitor",
    "NewRelicSettings",
    "QlikSenseUrls",
    "ScriptLogSettings",
    "ServiceEmailEvent",
    "Signl4Event",
    "Signl4Settings",
    "SlackEvent",
    "SlackSettings",
    "SmtpSettings",
    "TeamsSettings",
    "Webhook",
    "WebhookEvent",
    "WebhookSettings",
]
