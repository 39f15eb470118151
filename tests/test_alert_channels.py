"""Messages of the Slack, Teams, webhook, Signl4 and New Relic builders: exact payloads of a failed reload,
values that could break JSON, limits, gating and rate keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import butler
from butler.alerts.channels import newrelic, signl4, slack, teams, webhook
from butler.alerts.context import TRUNCATED, AlertFacts, limit_texts, redacted_url, render_json_template
from butler.alerts.model import Message
from butler.config.alerts import AlertSettings
from tests.test_alert_context import (
    APP_ID,
    EXECUTION,
    EXECUTION_ID,
    SCRIPT_LOG,
    TASK_ID,
    alert_settings,
    facts,
    stockholm,  # noqa: F401 (times are shown in a fixed zone here too)
)

SLACK_URL = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
TEAMS_URL = (
    "https://abc123.westeurope.logic.azure.com:443/workflows/0123abcd/triggers/manual/paths/invoke?sig=S"
)
SIGNL4_URL = "https://connect.signl4.com/webhook/abcde12345"
DETAILS_TEXT = (
    "2024-01-15T10:30:00.000Z\tChanging task state from NeverStarted to Triggered\n"
    "2024-01-15T10:31:00.300Z\tScript error: Field not found <Amount>\n"
    "2024-01-15T10:31:00.400Z\tChanging task state from Started to FinishedFail\n"
)

# Shaped like upstream's failed-reload-qseow templates: JSON escapes (\n) in the template text, ids and
# the script log inserted raw, everything else HTML-escaped, buttons added by {{#each}} with a comma.
SLACK_TEMPLATE = r"""{
    "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": "Qlik Sense reload failed: {{taskName}}"}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": "*Task name:*\n{{taskName}}"},
            {"type": "mrkdwn", "text": "*Task ID:*\n{{{taskId}}}"},
            {"type": "mrkdwn", "text": "*User:*\n{{user}}"},
            {"type": "mrkdwn", "text": "*Execution started:*\n{{executionStartTime.startTimeLocal1}}"}
        ]},
        {"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open app"}, "url": "{{appUrl}}"}
{{#each genericUrls}}
{{!-- one button per link --}}
            ,{"type": "button", "text": {"type": "plain_text", "text": "{{this.linkText}}"},
              "url": "{{this.url}}"}
{{/each}}
        ]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "```{{ executionDetailsConcatenated }}```"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "```{{{ scriptLogHead }}}```"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "```{{{ scriptLogTail }}}```"}}
    ]
}
"""
TEAMS_TEMPLATE = r"""{
    "type": "message",
    "attachments": [{
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": null,
        "content": {
            "type": "AdaptiveCard",
            "version": "1.3",
            "body": [
                {"type": "TextBlock", "text": "Qlik Sense reload task failed: {{taskName}}", "wrap": true},
                {"type": "FactSet", "facts": [
                    {"title": "Task ID:", "value": "{{tasId}}"},
                    {"title": "User:", "value": "{{user}}"},
                    {"title": "Log message:", "value": "{{logMessage}}"}
                ]},
                {"type": "CodeBlock", "codeSnippet": "{{executionDetailsConcatenated}}"},
                {"type": "CodeBlock", "codeSnippet": "{{scriptLogHead}}"},
                {"type": "CodeBlock", "codeSnippet": "{{scriptLogTail}}"}
            ]
        }
    }]
}
"""


def chat_event(
    url: str, template: Path | None, message_type: str = "formatted", **more: Any
) -> dict[str, Any]:
    return {
        "enable": True,
        "webhookURL": url,
        "messageType": message_type,
        "basicMsgTemplate": 'Qlik Sense reload failed: "{{taskName}}"',
        "rateLimit": 120,
        "headScriptLogLines": 2,
        "tailScriptLogLines": 2,
        **({"templateFile": str(template)} if template is not None else {}),
        **more,
    }


def slack_settings(tmp_path: Path, template: str | None = SLACK_TEMPLATE, **changes: Any) -> AlertSettings:
    path = None
    if template is not None:
        path = tmp_path / "slack.handlebars"
        path.write_text(template, encoding="utf-8")
    event = chat_event(
        SLACK_URL, path, channel="sense-task-failure", fromUser="Qlik Sense", iconEmoji=":ghost:"
    )
    event.update(changes.pop("event", {}))
    return alert_settings(tmp_path, slackNotification={"enable": True, "reloadTaskFailure": event, **changes})


def teams_settings(tmp_path: Path, template: str | None = TEAMS_TEMPLATE, **changes: Any) -> AlertSettings:
    path = None
    if template is not None:
        path = tmp_path / "teams.handlebars"
        path.write_text(template, encoding="utf-8")
    event = chat_event(TEAMS_URL, path)
    event.update(changes.pop("event", {}))
    return alert_settings(tmp_path, teamsNotification={"enable": True, "reloadTaskFailure": event, **changes})


def html_escaped(text: str) -> str:
    """As Handlebars escapes ``{{ }}``."""
    table = {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "'": "&#x27;",
        "`": "&#x60;",
        "=": "&#x3D;",
    }
    return "".join(table.get(c, c) for c in text)


def only(messages: list[Message]) -> Message:
    assert len(messages) == 1
    return messages[0]


def strings_under(node: Any, keys: set[str]) -> list[str]:
    if isinstance(node, list):
        return [s for item in node for s in strings_under(item, keys)]
    if isinstance(node, dict):
        found = []
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                found.append(value)
            else:
                found.extend(strings_under(value, keys))
        return found
    return []


ENVELOPE = {"username": "Qlik Sense", "channel": "sense-task-failure", "icon_emoji": ":ghost:"}
SLACK_BASIC = {
    "method": "POST",
    "url": SLACK_URL,
    "headers": {"Content-Type": "application/json"},
    "json": {
        **ENVELOPE,
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": 'Qlik Sense reload failed: "Reload Sales"'},
            },
            {"type": "divider"},
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "emoji": True, "text": "Open QMC"},
                        "style": "primary",
                        "url": "https://sense.corp.local/qmc",
                    },
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "emoji": True, "text": "Open Hub"},
                        "style": "primary",
                        "url": "https://sense.corp.local/hub",
                    },
                ],
            },
        ],
    },
    "query": None,
    "tls": None,
    "fallback": None,
}


# -- Slack ---------------------------------------------------------------------------------------------


def test_slack_formatted_failed_reload(tmp_path: Path) -> None:
    message = only(slack.build(facts(), slack_settings(tmp_path)))
    assert (message.channel, message.event, message.rate_key, message.rate_limit) == (
        "slack",
        "reloadTaskFailure",
        TASK_ID,
        120,
    )
    assert message.target == "https://hooks.slack.com/services…"
    assert message.notes == ()
    assert message.payload == {
        "method": "POST",
        "url": SLACK_URL,
        "headers": {"Content-Type": "application/json"},
        "json": {
            **ENVELOPE,
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": "Qlik Sense reload failed: Reload Sales"},
                },
                {
                    "type": "section",
                    "fields": [
                        {"type": "mrkdwn", "text": "*Task name:*\nReload Sales"},
                        {"type": "mrkdwn", "text": f"*Task ID:*\n{TASK_ID}"},
                        {"type": "mrkdwn", "text": "*User:*\nINTERNAL/sa_scheduler"},
                        {"type": "mrkdwn", "text": "*Execution started:*\n2024-01-15 11:30:00"},
                    ],
                },
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Open app"},
                            "url": f"https://sense.corp.local/sense/app/{APP_ID}",
                        },
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Butler documentation"},
                            "url": "https://butler.ptarmiganlabs.com",
                        },
                    ],
                },
                {
                    "type": "section",
                    "text": {
                        "type": "mrkdwn",
                        "text": "```" + DETAILS_TEXT.replace("<", "&lt;").replace(">", "&gt;") + "```",
                    },
                },
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": "```" + "\n".join(SCRIPT_LOG[:2]) + "```"},
                },
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": "```" + "\n".join(SCRIPT_LOG[-2:]) + "```"},
                },
            ],
        },
        "query": None,
        "tls": None,
        "fallback": SLACK_BASIC,
    }


def test_slack_basic_message(tmp_path: Path) -> None:
    message = only(slack.build(facts(), slack_settings(tmp_path, event={"messageType": "basic"})))
    assert message.payload == SLACK_BASIC
    assert message.notes == ()


def test_slack_basic_without_urls_has_no_empty_buttons(tmp_path: Path) -> None:
    settings = slack_settings(tmp_path, event={"messageType": "basic"})
    settings = alert_settings(
        tmp_path,
        qlikSenseUrls={"qmc": "", "hub": "", "appBaseUrl": ""},
        slackNotification={
            "enable": True,
            "reloadTaskFailure": chat_event(SLACK_URL, None, "basic", channel="c"),
        },
    )
    blocks = only(slack.build(facts(), settings)).payload["json"]["blocks"]
    assert [b["type"] for b in blocks] == ["header", "divider"]


HOSTILE_NAME = 'Sales "Q1" C:\\temp\\new 🚀 <b>&' + "x" * 200
HOSTILE_LOG = [f'{n:05d}\t"quoted" C:\\path\\{n} 🚀 </script> {"é" * 20}' for n in range(1700)]


def hostile_facts() -> AlertFacts:
    details = [
        {
            "detailsType": 0,
            "message": 'Bad "thing" \\ ' + "y" * 5000,
            "detailCreatedDate": "2024-01-15T10:31:00Z",
        }
    ]
    return facts(
        task_name=HOSTILE_NAME,
        task=None,
        app_name='App \\ "quoted"',
        user='CORP\\o"brien',
        message='Error: "}\\n{',
        execution={**EXECUTION, "details": details},
        script_log=HOSTILE_LOG,
    )


@pytest.mark.parametrize("message_type", ["formatted", "basic"])
def test_slack_hostile_values_give_valid_json_within_limits(tmp_path: Path, message_type: str) -> None:
    log_text = "\n".join(HOSTILE_LOG)
    assert len(log_text.encode()) > 100_000
    settings = slack_settings(
        tmp_path, event={"messageType": message_type, "headScriptLogLines": 1700, "tailScriptLogLines": 1700}
    )
    message = only(slack.build(hostile_facts(), settings))
    assert message.notes == ()
    body = message.payload["json"]
    assert json.loads(json.dumps(body, ensure_ascii=False)) == body
    texts = strings_under(body, {"text"})
    assert texts and all(len(t) <= 3000 for t in texts)
    assert all(
        len(t) <= 2000 for block in body["blocks"] for t in strings_under(block.get("fields"), {"text"})
    )
    header = body["blocks"][0]["text"]["text"]
    assert len(header) <= 150
    if message_type == "basic":
        assert header.startswith(
            'Qlik Sense reload failed: "Sales &quot;Q1&quot; C:\\temp\\new 🚀 &lt;b&gt;&amp;xx'
        )
        return
    assert header.endswith(TRUNCATED)
    fields = body["blocks"][1]["fields"]
    assert (
        fields[0]["text"] == "*Task name:*\nSales &quot;Q1&quot; C:\\temp\\new 🚀 &lt;b&gt;&amp;" + "x" * 200
    )
    assert fields[2]["text"] == "*User:*\nCORP/o&quot;brien"
    head = body["blocks"][4]["text"]["text"]
    assert head == "```" + log_text[:2900] + "\n" + TRUNCATED + "```"
    tail = body["blocks"][5]["text"]["text"]
    assert tail == "```" + TRUNCATED + "\n" + log_text[-2900:] + "```"
    details = body["blocks"][3]["text"]["text"]
    assert len(details) == 3000
    assert details.startswith("```2024-01-15T10:31:00Z\tBad &quot;thing&quot; \\ yyy")
    assert details.endswith("\n" + TRUNCATED)


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (None, "no template file is configured"),
        ("", "did not give valid JSON"),
        ('{"blocks": [{{taskName}}]}', "did not give valid JSON"),
        ('{"blocks": [ {{#each genericUrls}} ]}', "could not be rendered"),
        ('[{"type": "divider"}]', "did not give a JSON object"),
    ],
)
def test_slack_failed_template_sends_basic_with_note(
    tmp_path: Path, template: str | None, reason: str
) -> None:
    message = only(slack.build(facts(), slack_settings(tmp_path, template)))
    assert len(message.notes) == 1
    note = message.notes[0]
    assert note.startswith("basic Slack message sent instead of the formatted one: ")
    assert reason in note
    payload = message.payload
    assert payload["fallback"] is None
    assert payload["json"]["blocks"][:3] == SLACK_BASIC["json"]["blocks"]
    assert payload["json"]["blocks"][3] == {
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": f"Butler: {note}"}],
    }


def test_slack_missing_template_file(tmp_path: Path) -> None:
    settings = slack_settings(tmp_path, event={"templateFile": str(tmp_path / "nowhere.handlebars")})
    message = only(slack.build(facts(), settings))
    assert "nowhere.handlebars" in message.notes[0]
    assert message.payload["json"]["blocks"][0] == SLACK_BASIC["json"]["blocks"][0]


def test_slack_broken_basic_template_uses_default_text(tmp_path: Path) -> None:
    settings = slack_settings(
        tmp_path, event={"messageType": "basic", "basicMsgTemplate": "{{#if taskName}}"}
    )
    message = only(slack.build(facts(), settings))
    assert message.payload["json"]["blocks"][0] == SLACK_BASIC["json"]["blocks"][0]
    assert message.notes[0].startswith("Slack basicMsgTemplate could not be rendered")


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"enable": False}, "reloadTaskFailure"),
        ({"event": {"enable": False}}, "reloadTaskFailure"),
        ({"event": {"webhookURL": ""}}, "reloadTaskFailure"),
        ({}, "reloadTaskAborted"),
        ({}, "distributeTaskFailure"),
    ],
)
def test_slack_gating(tmp_path: Path, changes: dict[str, Any], name: str) -> None:
    assert slack.build(facts(name), slack_settings(tmp_path, **changes)) == []


def test_slack_aborted_event_has_its_own_settings(tmp_path: Path) -> None:
    settings = alert_settings(
        tmp_path,
        slackNotification={
            "enable": True,
            "reloadTaskAborted": chat_event(SLACK_URL, None, "basic", rateLimit=30),
        },
    )
    message = only(slack.build(facts("reloadTaskAborted"), settings))
    assert (message.event, message.rate_key, message.rate_limit) == ("reloadTaskAborted", TASK_ID, 30)
    header = message.payload["json"]["blocks"][0]["text"]["text"]
    assert header == 'Qlik Sense reload failed: "Reload Sales"'
    assert message.payload["json"]["channel"] == "sense-task-aborted"


# -- Teams ---------------------------------------------------------------------------------------------


def teams_basic(notes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": TEAMS_URL,
        "headers": {"Content-Type": "application/json"},
        "json": {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.3",
                        "msteams": {"width": "Full"},
                        "body": [
                            {
                                "type": "TextBlock",
                                "size": "large",
                                "weight": "bolder",
                                "text": 'Qlik Sense reload failed: "Reload Sales"',
                                "style": "heading",
                                "wrap": True,
                            },
                            *(
                                {"type": "TextBlock", "text": f"Butler: {n}", "isSubtle": True, "wrap": True}
                                for n in notes
                            ),
                        ],
                        "actions": [
                            {
                                "type": "Action.OpenUrl",
                                "title": "Open QMC",
                                "url": "https://sense.corp.local/qmc",
                            },
                            {
                                "type": "Action.OpenUrl",
                                "title": "Open Hub",
                                "url": "https://sense.corp.local/hub",
                            },
                        ],
                    },
                }
            ],
        },
        "query": None,
        "tls": None,
        "fallback": None,
    }


def test_teams_formatted_with_tasid_alias(tmp_path: Path) -> None:
    message = only(teams.build(facts(), teams_settings(tmp_path)))
    assert (message.channel, message.rate_key, message.rate_limit) == ("teams", TASK_ID, 120)
    assert message.target == "https://abc123.westeurope.logic.azure.com:443/workflows…"
    assert message.payload["fallback"] == teams_basic()
    assert message.payload["json"]["attachments"][0]["content"]["body"] == [
        {"type": "TextBlock", "text": "Qlik Sense reload task failed: Reload Sales", "wrap": True},
        {
            "type": "FactSet",
            "facts": [
                {"title": "Task ID:", "value": TASK_ID},
                {"title": "User:", "value": "INTERNAL/sa_scheduler"},
                {"title": "Log message:", "value": "Max retries reached"},
            ],
        },
        {"type": "CodeBlock", "codeSnippet": DETAILS_TEXT.replace("<", "&lt;").replace(">", "&gt;")},
        {"type": "CodeBlock", "codeSnippet": "\n".join(SCRIPT_LOG[:2])},
        {"type": "CodeBlock", "codeSnippet": "\n".join(SCRIPT_LOG[-2:])},
    ]


def test_teams_basic_is_an_adaptive_card(tmp_path: Path) -> None:
    message = only(teams.build(facts(), teams_settings(tmp_path, event={"messageType": "basic"})))
    assert message.payload == teams_basic()


def test_teams_failed_template_sends_basic_with_note(tmp_path: Path) -> None:
    message = only(teams.build(facts(), teams_settings(tmp_path, '{"type": "message", "attachments": [}')))
    assert len(message.notes) == 1 and "did not give valid JSON" in message.notes[0]
    assert message.payload == teams_basic(message.notes)


def test_teams_hostile_values_give_valid_json_within_limits(tmp_path: Path) -> None:
    settings = teams_settings(tmp_path, event={"headScriptLogLines": 1700, "tailScriptLogLines": 1700})
    message = only(teams.build(hostile_facts(), settings))
    assert message.notes == ()
    body = message.payload["json"]
    assert json.loads(json.dumps(body)) == body
    snippets = strings_under(body, {"codeSnippet", "text"})
    assert all(len(s) <= 3000 for s in snippets)
    card = body["attachments"][0]["content"]["body"]
    assert card[1]["facts"][1] == {"title": "User:", "value": "CORP/o&quot;brien"}
    assert card[0]["text"] == "Qlik Sense reload task failed: " + html_escaped(HOSTILE_NAME)
    assert card[1]["facts"][2] == {"title": "Log message:", "value": "Error: &quot;}\\n{"}
    # Teams templates insert the log HTML-escaped, which makes the cut head longer again: cut once more.
    head = html_escaped("\n".join(HOSTILE_LOG)[:2900] + "\n" + TRUNCATED)
    assert len(head) > 3000
    assert card[3]["codeSnippet"] == head[: 3000 - len(TRUNCATED) - 1] + "\n" + TRUNCATED


@pytest.mark.parametrize(
    "changes", [{"enable": False}, {"event": {"enable": False}}, {"event": {"webhookURL": ""}}]
)
def test_teams_gating(tmp_path: Path, changes: dict[str, Any]) -> None:
    assert teams.build(facts(), teams_settings(tmp_path, **changes)) == []


# -- outgoing webhooks ---------------------------------------------------------------------------------

WEBHOOK_FIELDS = {
    "event": "Qlik Sense reload failed",
    "hostName": "sense1.corp.local",
    "user": "INTERNAL\\sa_scheduler",
    "taskName": "Reload Sales",
    "taskId": TASK_ID,
    "appName": "Sales",
    "appId": APP_ID,
    "appOwnerName": "Anna Berg",
    "appOwnerUserDirectory": "CORP",
    "appOwnerUserId": "anna",
    "appOwnerEmail": "anna@corp.example",
    "logTimeStamp": "2024-01-15 10:31:00,123",
    "logLevel": "ERROR",
    "executionId": EXECUTION_ID,
    "logMessage": "Max retries reached",
}


def webhook_settings(tmp_path: Path, enable: bool = True) -> AlertSettings:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    return alert_settings(
        tmp_path,
        webhookNotification={
            "enable": enable,
            "reloadTaskFailure": {
                "rateLimit": 60,
                "webhooks": [
                    {
                        "description": "get",
                        "webhookURL": "https://hooks.corp.local/alerts/s1",
                        "httpMethod": "get",
                    },
                    {
                        "description": "post",
                        "webhookURL": "https://hooks.corp.local/alerts/s2",
                        "httpMethod": "POST",
                        "cert": {"enable": True, "rejectUnauthorized": False, "certCA": "ca.pem"},
                    },
                    {"description": "put", "webhookURL": "http://10.0.0.5:8080/in", "httpMethod": "put"},
                ],
            },
            "reloadTaskAborted": {"rateLimit": 60, "webhooks": []},
        },
    )


def test_webhooks_one_message_each(tmp_path: Path) -> None:
    messages = webhook.build(facts(), webhook_settings(tmp_path))
    assert [m.payload for m in messages] == [
        {
            "method": "GET",
            "url": "https://hooks.corp.local/alerts/s1",
            "headers": {},
            "json": None,
            "query": WEBHOOK_FIELDS,
            "tls": None,
            "fallback": None,
        },
        {
            "method": "POST",
            "url": "https://hooks.corp.local/alerts/s2",
            "headers": {"Content-Type": "application/json"},
            "json": WEBHOOK_FIELDS,
            "query": None,
            "tls": {"ca": str(tmp_path / "ca.pem"), "verify": False},
            "fallback": None,
        },
        {
            "method": "PUT",
            "url": "http://10.0.0.5:8080/in",
            "headers": {"Content-Type": "application/json"},
            "json": WEBHOOK_FIELDS,
            "query": None,
            "tls": None,
            "fallback": None,
        },
    ]
    assert [m.target for m in messages] == [
        "https://hooks.corp.local/alerts…",
        "https://hooks.corp.local/alerts…",
        "http://10.0.0.5:8080/in…",
    ]
    assert {m.rate_limit for m in messages} == {60}
    keys = [m.rate_key for m in messages]
    assert all(k.startswith(f"{TASK_ID}|") for k in keys) and len(set(keys)) == 3
    assert not any("hooks" in k or "10.0.0.5" in k for k in keys)
    assert webhook.build(facts(), webhook_settings(tmp_path)) == messages


def test_webhooks_gating(tmp_path: Path) -> None:
    assert webhook.build(facts(), webhook_settings(tmp_path, enable=False)) == []
    assert webhook.build(facts("reloadTaskAborted"), webhook_settings(tmp_path)) == []
    assert webhook.build(facts("reloadTaskSuccess"), webhook_settings(tmp_path)) == []


# -- Signl4 --------------------------------------------------------------------------------------------


def signl4_settings(tmp_path: Path, include_all: bool = False) -> AlertSettings:
    return alert_settings(
        tmp_path,
        incidentTool={
            "signl4": {
                "enable": True,
                "url": SIGNL4_URL,
                "reloadTaskFailure": {
                    "enable": True,
                    "rateLimit": 15,
                    "serviceName": "Qlik Sense",
                    "severity": 1,
                    "includeApp": {"includeAll": False, "appId": [APP_ID.upper()]},
                },
                "reloadTaskAborted": {
                    "enable": True,
                    "rateLimit": 15,
                    "serviceName": "Qlik Sense",
                    "severity": 10,
                    "includeApp": {
                        "includeAll": include_all,
                        "appId": ["47d38f73-628f-44e1-a62c-841604b123ff"],
                    },
                },
            }
        },
    )


def test_signl4_failed_reload(tmp_path: Path) -> None:
    message = only(signl4.build(facts(), signl4_settings(tmp_path)))
    assert (message.channel, message.rate_key, message.rate_limit, message.target) == (
        "signl4",
        TASK_ID,
        15,
        "https://connect.signl4.com/webhook…",
    )
    assert message.payload == {
        "method": "POST",
        "url": SIGNL4_URL,
        "headers": {"Content-Type": "application/json"},
        "json": {
            "Title": "Qlik Sense reload task failed",
            "Message": "Task: Reload Sales",
            "Severity": 1,
            "X-S4-Service": "Qlik Sense",
            "X-S4-ExternalID": TASK_ID,
            "X-S4-Status": "new",
        },
        "query": None,
        "tls": None,
        "fallback": None,
    }


def test_signl4_only_included_apps(tmp_path: Path) -> None:
    assert signl4.build(facts("reloadTaskAborted"), signl4_settings(tmp_path)) == []
    message = only(signl4.build(facts("reloadTaskAborted"), signl4_settings(tmp_path, include_all=True)))
    assert (message.payload["json"]["Title"], message.payload["json"]["Severity"]) == (
        "Qlik Sense task aborted",
        10,
    )
    assert signl4.build(facts("reloadTaskSuccess"), signl4_settings(tmp_path)) == []


# -- New Relic -----------------------------------------------------------------------------------------


def new_relic_settings(tmp_path: Path, log_by_cp: bool = False, enable: bool = True) -> AlertSettings:
    def destination(kind: str, **more: Any) -> dict[str, Any]:
        return {"enable": True, "attribute": {"static": [{"name": f"{kind}-attr", "value": kind[0]}]}, **more}

    return alert_settings(
        tmp_path,
        thirdPartyToolsCredentials={
            "newRelic": [
                {"accountName": "Team NR", "insertApiKey": "key-team", "accountId": "111"},
                {"accountName": "Ops NR", "insertApiKey": "key-ops", "accountId": "222"},
                {"accountName": "Default NR", "insertApiKey": "key-default", "accountId": "333"},
            ]
        },
        incidentTool={
            "newRelic": {
                "enable": enable,
                "destinationAccount": {"event": ["Default NR"], "log": ["Default NR"]},
                "url": {
                    "event": "https://insights-collector.eu01.nr-data.net",
                    "log": "https://log-api.eu.newrelic.com/log/v1",
                },
                "reloadTaskFailure": {
                    "destination": {
                        "event": destination(
                            "event",
                            sendToAccount={
                                "byCustomProperty": {
                                    "enable": True,
                                    "customPropertyName": "Butler_FailedTask_Event_NewRelicAccount",
                                },
                                "always": {"enable": True, "account": ["Ops NR", "Default NR"]},
                            },
                        )
                        | {
                            "attribute": {
                                "static": [{"name": "event-attr", "value": "e"}],
                                "dynamic": {"useAppTags": True, "useTaskTags": False},
                            }
                        },
                        "log": destination(
                            "log",
                            tailScriptLogLines=2,
                            sendToAccount={
                                "byCustomProperty": {
                                    "enable": log_by_cp,
                                    "customPropertyName": "Butler_FailedTask_Event_NewRelicAccount",
                                },
                                "always": {"enable": False, "account": ["Ops NR"]},
                            },
                        )
                        | {
                            "attribute": {
                                "static": [{"name": "log-attr", "value": "l"}],
                                "dynamic": {"useAppTags": False, "useTaskTags": True},
                            }
                        },
                    },
                    "sharedSettings": {
                        "rateLimit": 15,
                        "header": [{"name": "X-My-Header", "value": "v1"}],
                        "attribute": {"static": [{"name": "service", "value": "butler"}]},
                    },
                },
            }
        },
    )


COMMON_ATTRIBUTES = {
    "version": "1.2.3",
    "qs_hostName": "sense1.corp.local",
    "qs_user": "INTERNAL/sa_scheduler",
    "qs_taskName": "Reload Sales",
    "qs_taskId": TASK_ID,
    "qs_appName": "Sales",
    "qs_appId": APP_ID,
    "qs_logTimeStamp": "2024-01-15 10:31:00,123",
    "qs_logLevel": "ERROR",
    "qs_executionId": EXECUTION_ID,
    "qs_logMessage": "Max retries reached",
    "qs_appCustomProperties": '[{"name": "Department", "value": "Finance"}]',
    "qs_taskCustomProperties": json.dumps(
        [
            {"name": "Butler_FailedAlertEnableEmail", "value": "Yes"},
            {"name": "Butler_FailedTask_Event_NewRelicAccount", "value": "Team NR"},
            {"name": "Butler_FailedTask_Event_NewRelicAccount", "value": "Unknown NR"},
        ]
    ),
}


def test_new_relic_accounts_and_payloads(tmp_path: Path) -> None:
    messages = newrelic.build(facts(), new_relic_settings(tmp_path))
    # Event: always (Ops, Default) + custom property (Team; Unknown is no account) + default, each once.
    assert [(m.target, m.rate_key) for m in messages] == [
        ("New Relic account Ops NR (event)", f"{TASK_ID}|event|Ops NR"),
        ("New Relic account Default NR (event)", f"{TASK_ID}|event|Default NR"),
        ("New Relic account Team NR (event)", f"{TASK_ID}|event|Team NR"),
        ("New Relic account Default NR (log)", f"{TASK_ID}|log|Default NR"),
    ]
    assert {(m.channel, m.event, m.rate_limit) for m in messages} == {("newrelic", "reloadTaskFailure", 15)}
    assert messages[0].payload == {
        "method": "POST",
        "url": "https://insights-collector.eu01.nr-data.net/v1/accounts/222/events",
        "headers": {"X-My-Header": "v1", "Content-Type": "application/json", "Api-Key": "key-ops"},
        "json": [
            {
                "service": "butler",
                "event-attr": "e",
                **COMMON_ATTRIBUTES,
                "qs_appTag_finance": "true",
                "eventType": "qs_reloadTaskFailedEvent",
            }
        ],
        "query": None,
        "tls": None,
        "fallback": None,
    }
    assert messages[2].payload["headers"]["Api-Key"] == "key-team"
    assert messages[3].payload == {
        "method": "POST",
        "url": "https://log-api.eu.newrelic.com/log/v1",
        "headers": {"X-My-Header": "v1", "Content-Type": "application/json", "Api-Key": "key-default"},
        "json": [
            {
                "common": {
                    "attributes": {
                        "service": "butler",
                        "log-attr": "l",
                        **COMMON_ATTRIBUTES,
                        "qs_taskTag_butler": "true",
                        "qs_taskTag_prod": "true",
                        "qs_executingNodeName": "sense1",
                        "qs_executionStartTime": "2024-01-15T10:30:00.000Z",
                        "qs_executionStopTime": "2024-01-15T10:31:00.456Z",
                        "qs_executionDuration": 60,
                        "qs_executionStatusNum": 8,
                        "qs_executionStatusText": "FinishedFail",
                        "qs_exeuctionStatusText": "FinishedFail",
                        "qs_scriptLogSize": 1234,
                        "qs_scriptLogTailCount": 2,
                        "logtype": "qs_reloadTaskFailedLog",
                    }
                },
                "logs": [
                    {
                        "message": DETAILS_TEXT
                        + "\r\n-------------------------------\r\n\r\n"
                        + "\r\n".join(SCRIPT_LOG[-2:])
                    }
                ],
            }
        ],
        "query": None,
        "tls": None,
        "fallback": None,
    }


def test_new_relic_custom_property_route_only_when_enabled(tmp_path: Path) -> None:
    targets = [m.target for m in newrelic.build(facts(), new_relic_settings(tmp_path, log_by_cp=True))]
    assert targets[3:] == ["New Relic account Team NR (log)", "New Relic account Default NR (log)"]


def test_new_relic_without_script_log(tmp_path: Path) -> None:
    messages = newrelic.build(facts(script_log=None), new_relic_settings(tmp_path))
    assert messages[3].payload["json"][0]["logs"] == [
        {"message": "Script log not available for this reload task."}
    ]


def test_new_relic_aborted_uses_its_own_settings(tmp_path: Path) -> None:
    settings = alert_settings(
        tmp_path,
        thirdPartyToolsCredentials={
            "newRelic": [{"accountName": "A", "insertApiKey": "k", "accountId": "1"}]
        },
        incidentTool={
            "newRelic": {
                "enable": True,
                "reloadTaskAborted": {
                    "destination": {
                        "event": {
                            "enable": True,
                            "sendToAccount": {"always": {"enable": True, "account": ["A"]}},
                        },
                        "log": {
                            "enable": True,
                            "tailScriptLogLines": 1,
                            "sendToAccount": {"always": {"enable": True, "account": ["A"]}},
                        },
                    },
                    "sharedSettings": {"rateLimit": 20, "header": [{"name": "X-Aborted", "value": "1"}]},
                },
            }
        },
    )
    event, entry = newrelic.build(facts("reloadTaskAborted"), settings)
    assert (event.rate_limit, event.payload["headers"]["X-Aborted"]) == (20, "1")
    assert event.payload["json"][0]["eventType"] == "qs_reloadTaskAbortedEvent"
    attributes = entry.payload["json"][0]["common"]["attributes"]
    assert (attributes["logtype"], attributes["qs_scriptLogTailCount"]) == ("qs_reloadTaskAbortedLog", 1)
    assert entry.payload["json"][0]["logs"][0]["message"].endswith("\r\n\r\n" + SCRIPT_LOG[-1])


def test_new_relic_gating(tmp_path: Path) -> None:
    assert newrelic.build(facts(), new_relic_settings(tmp_path, enable=False)) == []
    # The aborted event has no destination enabled in this configuration.
    assert newrelic.build(facts("reloadTaskAborted"), new_relic_settings(tmp_path)) == []
    assert newrelic.build(facts("reloadTaskSuccess"), new_relic_settings(tmp_path)) == []


# -- helpers -------------------------------------------------------------------------------------------


def test_values_keep_handlebars_escaping_and_json_validity(tmp_path: Path) -> None:
    template = tmp_path / "t.handlebars"
    template.write_text('{"escaped": "{{v}}", "raw": "{{{v}}}", "list": [{{#each l}}"{{this}}",{{/each}} 0]}')
    value = "a\"b\\c\n\t\x01🚀 <&='`\ue000=\ue000&#x3D;"
    rendered = render_json_template(template, {"v": value, "l": ['"', "\\"]})
    assert rendered == {
        "escaped": "a&quot;b\\c\n\t\x01🚀 &lt;&amp;&#x3D;&#x27;&#x60;\ufffd&#x3D;\ufffd&amp;#x3D;",
        "raw": "a\"b\\c\n\t\x01🚀 <&='`\ufffd=\ufffd&#x3D;",
        "list": ["&quot;", "\\", 0],
    }


def test_text_limits() -> None:
    block = {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "b" * 2500},
        "fields": [{"type": "mrkdwn", "text": "a" * 2500}, {"type": "mrkdwn", "text": "short"}],
    }
    header = {"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}
    limited = limit_texts({"blocks": [header, block, {"text": "c" * 3001}]}, frozenset({"text"}))
    assert limited == {
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "h" * 111 + "\n" + TRUNCATED}},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "b" * 2500},
                "fields": [
                    {"type": "mrkdwn", "text": "a" * 1961 + "\n" + TRUNCATED},
                    {"type": "mrkdwn", "text": "short"},
                ],
            },
            {"text": "c" * 2961 + "\n" + TRUNCATED},
        ]
    }


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/SECRET", "https://hooks.slack.com/services…"),
        ("https://user:pw@host.example:8443/a/b?c=d", "https://host.example:8443/a…"),
        ("https://host.example", "https://host.example/"),
        ("not a url", "…"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


# -- the templates shipped with Butler -----------------------------------------------------------------

SHIPPED = Path(butler.__file__).resolve().parent / "alert_templates"


@pytest.mark.parametrize("channel", ["slack", "teams"])
@pytest.mark.parametrize("name", ["failed-reload-qseow", "aborted-reload-qseow"])
def test_shipped_templates_render_any_values(tmp_path: Path, channel: str, name: str) -> None:
    template = (SHIPPED / channel / f"{name}.handlebars").read_text(encoding="utf-8")
    lines = {"event": {"headScriptLogLines": 1700, "tailScriptLogLines": 1700}}
    if channel == "slack":
        settings, build = slack_settings(tmp_path, template, **lines), slack.build
    else:
        settings, build = teams_settings(tmp_path, template, **lines), teams.build
    for alert in (facts(), hostile_facts()):
        message = only(build(alert, settings))
        assert message.notes == ()
        assert message.payload["fallback"] is not None
        body = message.payload["json"]
        assert json.loads(json.dumps(body)) == body
        assert all(len(s) <= 3000 for s in strings_under(body, {"text", "codeSnippet"}))
    if channel == "teams":
        facts_shown = strings_under(build(facts(), settings)[0].payload["json"], {"value"})
        assert TASK_ID in facts_shown
