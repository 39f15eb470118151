"""The alert sections of upstream's config file load into typed settings, with upstream's defaults."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from butler.config import ConfigError, explain_key, load_config, parse_config
from butler.config.alerts import (
    AlertSettings,
    ChatEvent,
    DeliverySettings,
    EmailEvent,
    NewRelicEvent,
    Signl4Event,
    Webhook,
    WebhookEvent,
)
from tests.conftest import TEMPLATE, base_config, run_butler, write_config

TEMPLATE_DIR = TEMPLATE.parent


def template() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text(encoding="utf-8"))
    return document


def alerts_of(butler: dict[str, Any], tmp_path: Path) -> AlertSettings:
    document = base_config()
    document["Butler"].update(copy.deepcopy(butler))
    return parse_config(document, base_dir=tmp_path).alerts


def errors_of(butler: dict[str, Any], tmp_path: Path) -> list[str]:
    document = base_config()
    document["Butler"].update(butler)
    with pytest.raises(ConfigError) as caught:
        parse_config(document, base_dir=tmp_path)
    return caught.value.messages


# --- Upstream's template ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded() -> AlertSettings:
    return load_config(TEMPLATE).alerts


def test_template_urls_and_script_log(loaded: AlertSettings) -> None:
    assert (loaded.urls.qmc, loaded.urls.hub, loaded.urls.app_base_url) == (
        "https://my.qliksense.net/qmc",
        "https://my.qliksense.net/hub",
        "https://my.qliksense.net/my-virtual-proxy/sense/app",
    )
    assert loaded.generic_urls == (
        {
            "id": "ptarmiganlabs_com",
            "linkText": "Ptarmigan Labs home page",
            "comment": "The home page of the company behind Butler",
            "url": "https://ptarmiganlabs.com",
        },
        {
            "id": "butler_docs",
            "linkText": "Butler documentation",
            "comment": "The documentation for Butler",
            "url": "https://butler.ptarmiganlabs.com",
        },
    )
    assert loaded.script_log.enable is False
    assert loaded.script_log.directory == Path("/path/to/scriptlogs/qseow")
    assert loaded.script_log.retention_days == 0
    assert loaded.delivery == DeliverySettings()


def test_template_email(loaded: AlertSettings) -> None:
    email = loaded.email
    assert email.enable is False
    smtp = email.smtp
    assert (smtp.host, smtp.port, smtp.secure, smtp.server_name) == ("my.emailhost.net", 25, True, None)
    assert (smtp.ignore_tls, smtp.require_tls, smtp.reject_unauthorized) == (False, True, False)
    assert (smtp.auth_enable, smtp.user, smtp.password) == (
        True,
        "<Username, email address etc>",
        "<your-secret-password>",
    )
    assert list(email.events) == [
        "reloadTaskFailure",
        "reloadTaskAborted",
        "reloadTaskSuccess",
        "distributeTaskFailure",
        "distributeTaskSuccess",
        "preloadTaskFailure",
        "preloadTaskSuccess",
    ]
    failed = email.event("reloadTaskFailure")
    assert failed.owner_alert is True and failed.owner_include_all is True
    assert failed.owner_include == (("<Sense user directory>", "<userId>"),) * 2
    assert failed.owner_exclude == (("<Sense user directory>", "<userId>"),) * 2
    assert (failed.enable_by_cp, failed.enable_cp_name, failed.enable_cp_value) == (
        False,
        "Butler_FailedAlertEnableEmail",
        "Yes",
    )
    assert failed.recipients_cp_name == "Butler_FailedAlertSendToEmail"
    assert (failed.rate_limit, failed.head_lines, failed.tail_lines, failed.priority) == (
        600.0,
        15,
        15,
        "high",
    )
    assert failed.subject == 'Qlik Sense reload failed: "{{taskName}}"'
    assert failed.body_directory == TEMPLATE_DIR / "path/to/email_templates"
    assert failed.html_template == "failed-reload"
    assert failed.from_address == "Qlik Sense (no-reply) <qliksense-noreply@mydomain.com>"
    assert failed.recipients == ("<Email address 1>", "<Email address 2>")
    assert failed.attach_script_log is False
    aborted = email.event("reloadTaskAborted")
    assert (aborted.enable_by_cp, aborted.enable_cp_name) == (True, "Butler_AbortedAlertEnableEmail")
    success = email.event("reloadTaskSuccess")
    assert (success.rate_limit, success.head_lines, success.tail_lines) == (60.0, 15, 25)
    assert success.subject == '✅ Qlik Sense reload success: "{{taskName}}"'
    assert success.from_address == "Qlik Sense (no-reply) <qliksense-noreply@ptarmiganlabs.com>"
    preload = email.event("preloadTaskFailure")
    assert preload.subject == '❌ Qlik Sense preload task failed: "{{taskName}}"'
    assert preload.recipients_cp_name == "Butler_PreloadFailedAlertSendToEmail"
    assert email.event("distributeTaskSuccess").html_template == "success-distribute"


def test_template_slack_and_teams(loaded: AlertSettings) -> None:
    slack = loaded.slack.event("reloadTaskAborted")
    assert loaded.slack.enable is False
    assert (slack.enable, slack.webhook_url, slack.channel, slack.message_type) == (
        False,
        "https://hooks.slack.com/services/etc/etc",
        "sense-task-aborted",
        "formatted",
    )
    assert slack.basic_template == 'Qlik Sense reload aborted: "{{taskName}}"'
    assert (slack.rate_limit, slack.head_lines, slack.tail_lines) == (300.0, 10, 10)
    assert slack.template_file == Path("/path/to/slack/template/directory/aborted-reload-qseow.handlebars")
    assert (slack.from_user, slack.icon_emoji) == ("Qlik Sense", ":ghost:")
    teams = loaded.teams.event("reloadTaskFailure")
    assert teams.webhook_url == "https://abc123.my-region.logic.azure.com:443/workflows/other-parameters"
    assert teams.template_file == Path("/path/to/teams/template/directory/failed-reload-qseow.handlebars")
    assert (teams.basic_template, teams.channel) == ('Qlik Sense reload failed: "{{taskName}}"', "")


def test_template_webhooks_signl4_new_relic(loaded: AlertSettings) -> None:
    assert loaded.webhook.enable is False
    assert loaded.webhook.event("reloadTaskFailure") == WebhookEvent(rate_limit=300.0, webhooks=())
    signl4 = loaded.signl4
    assert (signl4.enable, signl4.url) == (False, "https://connect.signl4.com/webhook/abcde12345")
    failed, aborted = signl4.event("reloadTaskFailure"), signl4.event("reloadTaskAborted")
    assert (failed.enable, failed.rate_limit, failed.service_name, failed.severity) == (
        False,
        15.0,
        "Qlik Sense",
        1,
    )
    assert (failed.include_all, failed.app_ids) == (False, ("47d38f73-628f-44e1-a62c-841604b123ff",))
    assert aborted.severity == 10
    relic = loaded.new_relic
    assert (relic.enable, relic.event_url, relic.log_url) == (
        False,
        "https://insights-collector.eu01.nr-data.net",
        "https://log-api.eu.newrelic.com/log/v1",
    )
    assert (relic.accounts, relic.default_event_accounts, relic.default_log_accounts) == ((), (), ())
    aborted_relic = relic.event("reloadTaskAborted")
    assert aborted_relic.rate_limit == 15.0
    assert aborted_relic.headers == (("X-My-Header", "Header value 2"),)
    assert aborted_relic.static_attributes == (("service", "butler"), ("environment", "prod"))
    assert relic.headers == (("X-My-Header", "Header value 1"),)
    assert aborted_relic.event.cp_name == "Butler_AbortedTask_Event_NewRelicAccount"
    assert aborted_relic.event.static_attributes == (("event-specific-attribute 2", "abc 123"),)
    assert (aborted_relic.log.enable, aborted_relic.log.tail_lines) == (False, 20)
    assert aborted_relic.log.cp_name == "Butler_AbortedTask_Log_NewRelicAccount"
    assert (aborted_relic.log.use_app_tags, aborted_relic.log.use_task_tags) == (True, True)


def test_alert_sections_are_no_longer_reported_as_ignored() -> None:
    settings = load_config(TEMPLATE)
    for name in (
        "scriptLog",
        "qlikSenseUrls",
        "genericUrls",
        "teamsNotification",
        "slackNotification",
        "emailNotification",
        "incidentTool",
        "webhookNotification",
        "thirdPartyToolsCredentials",
    ):
        assert name not in settings.unsupported_sections, name
    assert settings.slack_webhook == "https://hooks.slack.com/services/etc/etc"
    result = run_butler("config", "check", str(TEMPLATE))
    assert result.returncode == 0, result.stderr
    [ignored] = [line for line in result.stdout.splitlines() if "ignored:" in line]
    assert "emailNotification" not in ignored and "incidentTool" not in ignored
    # Every section of the monitors, metrics and New Relic is read, none merely tolerated.
    for name in (
        "serviceMonitor",
        "heartbeat",
        "uptimeMonitor",
        "influxDb",
        "qlikSenseVersion",
        "qlikSenseLicense",
        "restServerEndpointsConfig",
    ):
        assert name not in ignored, name
    assert "anonTelemetry" in ignored and "fileLogging" not in ignored  # what is still not read is said


def test_service_and_licence_keys_are_read(tmp_path: Path) -> None:
    """Upstream's service, licence and REST New Relic settings are read, not merely accepted."""
    butler = template()["Butler"]
    alerts = alerts_of(butler, tmp_path)
    stopped = alerts.email.services["serviceStopped"]
    assert (stopped.rate_limit, stopped.priority, stopped.html_template) == (30.0, "high", "service-stopped")
    assert stopped.subject == '❌ Windows service stopped on host {{host}}: "{{serviceDisplayName}}"'
    assert alerts.slack.event("serviceStarted").channel == "qliksense-service-alert"
    assert alerts.teams.event("serviceStopped").rate_limit == 30.0
    assert alerts.webhook.event("qlikSenseServerLicenseExpiryAlert").rate_limit == 300.0
    monitor = alerts.new_relic.service_monitor
    assert (monitor.rate_limit, monitor.running, monitor.stopped) == (5.0, True, True)
    assert monitor.headers == (("X-My-Header", "Header value 2"),)
    assert monitor.event.static_attributes == (("event-specific-attribute", "abc 123"),)
    assert alerts.new_relic.rest_metric.url == "https://insights-collector.eu01.nr-data.net/metric/v1"
    assert alerts.new_relic.rest_event.static_attributes == (("env", "prod"),)
    assert "qsCloud" in butler["scriptLog"]["storeOnDisk"]
    assert "upstream key" in explain_key("Butler.slackNotification.serviceStarted.channel")
    assert "ignored" not in explain_key("Butler.webhookNotification.serviceMonitor")
    assert "ignored" not in explain_key("Butler.restServerEndpointsConfig.newRelic.postNewRelicEvent.url")


def test_service_settings_are_checked(tmp_path: Path) -> None:
    butler = template()["Butler"]
    butler["emailNotification"]["serviceStarted"]["priority"] = "urgent"
    butler["incidentTool"]["newRelic"]["serviceMonitor"]["monitorServiceState"]["running"]["enable"] = "yes"
    with pytest.raises(ConfigError) as caught:
        alerts_of(butler, tmp_path)
    text = str(caught.value)
    assert "emailNotification.serviceStarted.priority" in text
    assert "serviceMonitor.monitorServiceState.running.enable" in text


# --- Defaults -----------------------------------------------------------------------------------------


def test_absent_sections_give_the_documented_defaults(tmp_path: Path) -> None:
    alerts = parse_config(base_config(), base_dir=tmp_path).alerts
    assert alerts == AlertSettings()
    assert (alerts.urls.qmc, alerts.urls.app_base_url, alerts.generic_urls) == ("", "", ())
    assert (alerts.script_log.enable, alerts.script_log.directory, alerts.script_log.retention_days) == (
        False,
        None,
        0,
    )
    delivery = alerts.delivery
    assert (
        delivery.deadline_seconds,
        delivery.first_retry_seconds,
        delivery.max_retry_seconds,
        delivery.http_timeout_seconds,
        delivery.smtp_timeout_seconds,
        delivery.keep_seconds,
    ) == (86400.0, 1.0, 30.0, 10.0, 30.0, 604800.0)
    smtp = alerts.email.smtp
    assert (smtp.host, smtp.port, smtp.secure, smtp.require_tls, smtp.auth_enable) == (
        "",
        25,
        False,
        False,
        False,
    )
    failed = alerts.email.event("reloadTaskFailure")
    assert (failed.enable, failed.owner_alert, failed.rate_limit, failed.head_lines, failed.tail_lines) == (
        False,
        True,
        300.0,
        15,
        15,
    )
    assert (failed.priority, failed.body_directory, failed.recipients, failed.from_address) == (
        "high",
        None,
        (),
        "",
    )
    assert failed.subject == 'Qlik Sense reload failed: "{{taskName}}"'
    distribute = alerts.email.event("distributeTaskFailure")
    assert (distribute.owner_alert, distribute.enable_cp_name, distribute.recipients_cp_name) == (
        False,
        "Butler_DistributeFailedAlertEnableEmail",
        "Butler_DistributeFailedAlertSendToEmail",
    )
    assert distribute.subject == '❌ Qlik Sense distribute task failed: "{{taskName}}"'
    assert distribute.html_template == "failed-distribute"
    success = alerts.email.event("preloadTaskSuccess")
    assert (success.enable_cp_name, success.html_template) == (
        "Butler_PreloadSuccessAlertEnableEmail",
        "success-preload",
    )
    slack = alerts.slack.event("reloadTaskFailure")
    assert (slack.channel, slack.message_type, slack.rate_limit, slack.head_lines, slack.template_file) == (
        "sense-task-failure",
        "formatted",
        300.0,
        15,
        None,
    )
    assert alerts.slack.event("reloadTaskSuccess").channel == "sense-task-success"
    signl4 = alerts.signl4.event("reloadTaskAborted")
    assert (signl4.service_name, signl4.severity, signl4.rate_limit) == ("Default service name", 99, 300.0)
    relic = alerts.new_relic.event("reloadTaskFailure")
    assert (relic.rate_limit, relic.event.cp_name, relic.log.tail_lines) == (
        300.0,
        "Butler_FailedTask_Event_NewRelicAccount",
        20,
    )


def test_an_event_a_channel_does_not_have_sends_nothing(tmp_path: Path) -> None:
    alerts = alerts_of({"slackNotification": {"enable": True}}, tmp_path)
    assert alerts.slack.event("distributeTaskFailure") == ChatEvent()
    assert alerts.slack.event("distributeTaskFailure").enable is False
    assert alerts.webhook.event("preloadTaskSuccess").webhooks == ()
    assert alerts.signl4.event("reloadTaskSuccess") == Signl4Event()
    assert alerts.new_relic.event("reloadTaskSuccess") == NewRelicEvent()
    assert alerts.email.event("serviceStopped") == EmailEvent()
    assert alerts.email.event("serviceStopped").enable is False


# --- Values read from a file --------------------------------------------------------------------------


def test_webhooks_and_additions_are_read(tmp_path: Path) -> None:
    alerts = alerts_of(
        {
            "webhookNotification": {
                "enable": True,
                "reloadTaskSuccess": {
                    "rateLimit": 0.5,
                    "webhooks": [
                        {"description": None, "webhookURL": "https://hook/a", "httpMethod": "get"},
                        {
                            "description": "b",
                            "webhookURL": "https://hook/b",
                            "httpMethod": "Put",
                            "cert": {"enable": True, "rejectUnauthorized": False, "certCA": "ca/ca.pem"},
                        },
                    ],
                },
            },
            "emailNotification": {"reloadTaskAborted": {"attachScriptLog": True, "priority": "low"}},
            "scriptLog": {"storeOnDisk": {"clientManaged": {"reloadTaskFailure": {"retentionDays": 30}}}},
            "alertDelivery": {"firstRetrySeconds": 0.25, "deadlineSeconds": 3600},
            "teamsNotification": {"reloadTaskSuccess": {"enable": True, "messageType": "basic"}},
            "thirdPartyToolsCredentials": {
                "newRelic": [{"accountName": "main", "insertApiKey": "k", "accountId": 1234567}]
            },
        },
        tmp_path,
    )
    assert alerts.webhook.event("reloadTaskSuccess") == WebhookEvent(
        rate_limit=0.5,
        webhooks=(
            Webhook(description="", url="https://hook/a", method="GET"),
            Webhook(
                description="b",
                url="https://hook/b",
                method="PUT",
                cert_enable=True,
                reject_unauthorized=False,
                cert_ca=tmp_path / "ca" / "ca.pem",
            ),
        ),
    )
    aborted = alerts.email.event("reloadTaskAborted")
    assert (aborted.attach_script_log, aborted.priority, aborted.owner_alert) == (True, "low", True)
    assert alerts.script_log.retention_days == 30
    assert (alerts.delivery.first_retry_seconds, alerts.delivery.deadline_seconds) == (0.25, 3600.0)
    teams = alerts.teams.event("reloadTaskSuccess")
    assert (teams.enable, teams.message_type, teams.basic_template) == (
        True,
        "basic",
        'Qlik Sense reload success: "{{taskName}}"',
    )
    [account] = alerts.new_relic.accounts
    assert (account.name, account.insert_api_key, account.account_id) == ("main", "k", "1234567")


def test_a_missing_template_file_does_not_stop_loading(tmp_path: Path) -> None:
    alerts = alerts_of(
        {"slackNotification": {"reloadTaskFailure": {"enable": True, "templateFile": "nowhere.handlebars"}}},
        tmp_path,
    )
    assert alerts.slack.event("reloadTaskFailure").template_file == tmp_path / "nowhere.handlebars"


# --- Values refused when the file is loaded ----------------------------------------------------------


def test_bad_http_method_is_a_config_error(tmp_path: Path) -> None:
    hooks = [
        {"webhookURL": "https://hook/a", "httpMethod": "POST"},
        {"webhookURL": "x", "httpMethod": "DELETE"},
    ]
    assert errors_of({"webhookNotification": {"reloadTaskFailure": {"webhooks": hooks}}}, tmp_path) == [
        "Butler.webhookNotification.reloadTaskFailure.webhooks[1].httpMethod: expected GET, PUT or POST, "
        "got 'DELETE'"
    ]


def test_webhook_without_url_is_a_config_error(tmp_path: Path) -> None:
    hooks = [{"httpMethod": "post"}]
    assert errors_of({"webhookNotification": {"reloadTaskAborted": {"webhooks": hooks}}}, tmp_path) == [
        "Butler.webhookNotification.reloadTaskAborted.webhooks[0].webhookURL: "
        "required key is missing (a string)"
    ]


def test_bad_priority_is_a_config_error(tmp_path: Path) -> None:
    assert errors_of({"emailNotification": {"preloadTaskSuccess": {"priority": "urgent"}}}, tmp_path) == [
        "Butler.emailNotification.preloadTaskSuccess.priority: "
        "expected one of high, normal, low, got 'urgent'"
    ]


def test_bad_message_type_is_a_config_error(tmp_path: Path) -> None:
    butler = {
        "slackNotification": {"reloadTaskFailure": {"messageType": "fancy"}},
        "teamsNotification": {"reloadTaskSuccess": {"messageType": "Basic"}},
    }
    assert errors_of(butler, tmp_path) == [
        "Butler.slackNotification.reloadTaskFailure.messageType: "
        "expected one of basic, formatted, got 'fancy'",
        "Butler.teamsNotification.reloadTaskSuccess.messageType: "
        "expected one of basic, formatted, got 'Basic'",
    ]


def test_misspelt_alert_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    butler = {"emailNotification": {"reloadTaskFailure": {"rateLimt": 10}}}
    assert errors_of(butler, tmp_path) == [
        "Butler.emailNotification.reloadTaskFailure.rateLimt: unknown key (did you mean 'rateLimit'?)"
    ]


def test_bad_value_in_the_template_names_its_key(tmp_path: Path) -> None:
    document = template()
    document["Butler"]["emailNotification"]["reloadTaskFailure"]["rateLimit"] = "ten"
    config = write_config(tmp_path / "butler.yaml", document)
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.messages == [
        "Butler.emailNotification.reloadTaskFailure.rateLimit: expected a number 0-2678400, got 'ten'"
    ]


# --- --explain ----------------------------------------------------------------------------------------


def test_explain_an_alert_key() -> None:
    result = run_butler(
        "config", "check", "--explain", "Butler.emailNotification.reloadTaskFailure.rateLimit"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Butler.emailNotification.reloadTaskFailure.rateLimit (upstream key)",
        "  seconds within which a mail about the same task to the same address is sent at most once; "
        "a message not delivered does not count",
        "  type: a number 0-2678400",
        "  default: 300",
    ]
    assert explain_key("Butler.slackNotification.reloadTaskSuccess.channel").splitlines() == [
        "Butler.slackNotification.reloadTaskSuccess.channel (addition)",
        "  the Slack channel, without #",
        "  type: a string",
        "  default: sense-task-success",
    ]
    assert (
        explain_key("alertDelivery.keepSeconds").splitlines()[0]
        == "Butler.alertDelivery.keepSeconds (addition)"
    )
    assert explain_key("emailNotification.reloadTaskAborted.subject").splitlines()[-1] == (
        '  default: Qlik Sense reload aborted: "{{taskName}}"'
    )
    assert explain_key("Butler.slackNotification.restMessage.webhookURL").splitlines()[1] == (
        "  the Slack webhook of /v4/slackpostmessage"
    )
