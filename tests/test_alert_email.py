"""E-mail alerts: recipients and content (fast, no network), and the SMTP sender against a real SMTP server
(aiosmtpd on a loopback socket) with STARTTLS, implicit TLS and AUTH."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import ssl
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from butler.alerts.channels import email as email_channel
from butler.alerts.channels.email import build, html_to_text, valid_address
from butler.alerts.context import AlertFacts, AppOwner
from butler.alerts.model import DeliveryError
from butler.alerts.smtp import SmtpSender, build_mime
from butler.config.alerts import AlertSettings, EmailEvent, SmtpSettings
from butler.events.parsing import TaskEvent
from butler.events.task_outcomes import TaskOutcome
from tests.certs import CertFiles, make_certs

TASK_ID = "f1e2d3c4-0000-4000-8000-000000000001"
APP_ID = "a1b2c3d4-0000-4000-8000-000000000002"


# --- builder fixtures ------------------------------------------------------------------------------------


def task_event(task_name: str = "Reload Sales") -> TaskEvent:
    return TaskEvent(
        outcome="failed",
        message_type="/scheduler-reload-failed/",
        host="sense1.corp.local",
        task_name=task_name,
        app_name="Sales",
        user="INTERNAL\\sa_scheduler",
        task_id=TASK_ID,
        app_id=APP_ID,
        timestamp="2024-01-15 10:31:00,123",
        level="ERROR",
        execution_id="e0000000-0000-4000-8000-000000000003",
        message="Max retries reached",
    )


def cp(name: str, value: str) -> dict[str, Any]:
    return {"definition": {"name": name}, "value": value}


def facts(
    *,
    event: str = "reloadTaskFailure",
    properties: list[dict[str, Any]] | None = None,
    owner: AppOwner | None = None,
    script_log: list[str] | None = None,
    task_name: str = "Reload Sales",
) -> AlertFacts:
    task = {"id": TASK_ID, "name": task_name, "taskType": 0, "customProperties": properties or [], "tags": []}
    app = {"id": APP_ID, "name": "Sales", "customProperties": [], "tags": []}
    outcome = TaskOutcome(event=task_event(task_name), task=task, app=app)
    return AlertFacts(
        event=event, outcome=outcome, execution=None, script_log=script_log, owner=owner, butler_version="t"
    )


def email_event(body_directory: Path | None = None, **changes: Any) -> EmailEvent:
    values: dict[str, Any] = {
        "enable": True,
        "owner_alert": False,
        "owner_include_all": True,
        "owner_include": (),
        "owner_exclude": (),
        "enable_by_cp": False,
        "enable_cp_name": "Butler_FailedAlertEnableEmail",
        "enable_cp_value": "Yes",
        "recipients_cp_name": "Butler_FailedAlertSendToEmail",
        "rate_limit": 600.0,
        "head_lines": 15,
        "tail_lines": 15,
        "priority": "high",
        "subject": 'Qlik Sense reload failed: "{{taskName}}"',
        "body_directory": body_directory,
        "html_template": "failed-reload",
        "from_address": "Qlik Sense (no-reply) <qliksense-noreply@corp.example>",
        "recipients": ("ops@corp.example",),
        "attach_script_log": False,
    }
    values.update(changes)
    return dataclasses.replace(EmailEvent(), **values)


def alert_settings(
    event: EmailEvent, *, name: str = "reloadTaskFailure", enable: bool = True
) -> AlertSettings:
    base = AlertSettings()
    mail = dataclasses.replace(base.email, enable=enable, events={name: event})
    return dataclasses.replace(base, email=mail)


BODY = """<h1>Qlik Sense reload task failed</h1>
<table>
  <tr>
    <td><strong>Task name</strong><br>
      {{taskName}}
    </td>
    <td><strong>App</strong><br>{{appName}}</td>
  </tr>
  <tr><td colspan="2"><br></td></tr>
  <tr><td colspan="2"><a href="{{appUrl}}">Open app</a></td></tr>
</table>
<p>Log &amp; more:</p>
<pre>{{logMessage}}
  second line</pre>
<p><i>Sent by Butler.</i></p>
"""


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    (tmp_path / "failed-reload.handlebars").write_text(BODY, encoding="utf-8")
    (tmp_path / "broken.handlebars").write_text("<p>{{#if taskName}}never closed</p>", encoding="utf-8")
    return tmp_path


def addresses(messages: list[Any]) -> list[str]:
    return [m.target for m in messages]


# --- recipients ------------------------------------------------------------------------------------------


def test_recipients_from_custom_property_then_common_then_owner(templates: Path) -> None:
    owner = AppOwner(name="Anna", user_id="anna", user_directory="CORP", emails=("anna@corp.example",))
    event = email_event(templates, owner_alert=True, recipients=("ops@corp.example", "dba@corp.example"))
    properties = [
        cp("Butler_FailedAlertSendToEmail", "team@corp.example"),
        cp("Other", "not-me@corp.example"),
        cp("Butler_FailedAlertSendToEmail", "lead@corp.example"),
    ]
    messages = build(facts(properties=properties, owner=owner), alert_settings(event))
    assert addresses(messages) == [
        "team@corp.example",
        "lead@corp.example",
        "ops@corp.example",
        "dba@corp.example",
        "anna@corp.example",
    ]
    first = messages[0]
    assert first.channel == "email"
    assert first.event == "reloadTaskFailure"
    assert first.rate_key == f"{TASK_ID}|team@corp.example"
    assert first.rate_limit == 600.0
    assert first.payload["to"] == "team@corp.example"
    assert [m.payload["to"] for m in messages] == addresses(messages)


def test_recipient_property_name_is_matched_exactly(templates: Path) -> None:
    properties = [cp("butler_failedalertsendtoemail", "team@corp.example")]
    assert addresses(build(facts(properties=properties), alert_settings(email_event(templates)))) == [
        "ops@corp.example"
    ]


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        ([], ["cp@corp.example"]),
        ([cp("Butler_FailedAlertEnableEmail", "No")], ["cp@corp.example"]),
        ([cp("Butler_FailedAlertEnableEmail", "Yes")], ["cp@corp.example", "ops@corp.example"]),
        # QRS compares filter strings case-insensitively, and upstream asks QRS.
        ([cp("butler_failedalertenableemail", "yes")], ["cp@corp.example", "ops@corp.example"]),
    ],
)
def test_enable_by_custom_property_gates_only_the_common_list(
    templates: Path, properties: list[dict[str, Any]], expected: list[str]
) -> None:
    everything = [*properties, cp("Butler_FailedAlertSendToEmail", "cp@corp.example")]
    event = email_event(templates, enable_by_cp=True)
    assert addresses(build(facts(properties=everything), alert_settings(event))) == expected


def test_owner_is_mailed_without_the_enable_property(templates: Path) -> None:
    owner = AppOwner(name="Anna", user_id="anna", user_directory="CORP", emails=("anna@corp.example",))
    event = email_event(templates, enable_by_cp=True, owner_alert=True)
    assert addresses(build(facts(owner=owner), alert_settings(event))) == ["anna@corp.example"]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"owner_alert": False}, []),
        ({}, ["anna@corp.example", "anna.b@corp.example"]),
        ({"owner_include_all": False, "owner_include": (("CORP", "bob"),)}, []),
        (
            {"owner_include_all": False, "owner_include": (("CORP", "anna"),)},
            ["anna@corp.example", "anna.b@corp.example"],
        ),
        # exact, case-sensitive
        ({"owner_include_all": False, "owner_include": (("corp", "anna"),)}, []),
        ({"owner_exclude": (("CORP", "anna"),)}, []),
        (
            {
                "owner_include_all": False,
                "owner_include": (("CORP", "anna"),),
                "owner_exclude": (("CORP", "anna"),),
            },
            [],
        ),
    ],
)
def test_owner_include_and_exclude(templates: Path, changes: dict[str, Any], expected: list[str]) -> None:
    owner = AppOwner(
        name="Anna",
        user_id="anna",
        user_directory="CORP",
        emails=("anna@corp.example", "anna.b@corp.example"),
    )
    event = email_event(templates, **{"owner_alert": True, "recipients": (), **changes})
    assert addresses(build(facts(owner=owner), alert_settings(event))) == expected


def test_owner_only_for_reload_events_and_missing_owner_is_no_error(templates: Path) -> None:
    owner = AppOwner(name="Anna", user_id="anna", user_directory="CORP", emails=("anna@corp.example",))
    event = email_event(templates, owner_alert=True, recipients=())
    settings = alert_settings(event, name="distributeTaskFailure")
    assert build(facts(event="distributeTaskFailure", owner=owner), settings) == []
    assert build(facts(owner=None), alert_settings(event)) == []
    nomail = AppOwner(name="Anna", user_id="anna", user_directory="CORP", emails=())
    assert build(facts(owner=nomail), alert_settings(event)) == []


def test_duplicates_are_removed_exactly_and_invalid_addresses_skipped(
    templates: Path, caplog: pytest.LogCaptureFixture
) -> None:
    owner = AppOwner(name="Anna", user_id="anna", user_directory="CORP", emails=("ops@corp.example",))
    event = email_event(
        templates,
        owner_alert=True,
        recipients=(
            "ops@corp.example",
            "OPS@corp.example",
            "not an address",
            "x@corp.local",
            " ops@corp.example ",
        ),
    )
    properties = [cp("Butler_FailedAlertSendToEmail", "ops@corp.example")]
    with caplog.at_level("WARNING", logger="butler.alerts.email"):
        messages = build(facts(properties=properties, owner=owner), alert_settings(event))
    assert addresses(messages) == ["ops@corp.example", "OPS@corp.example", "x@corp.local"]
    assert 'Recipient e-mail address not valid: "not an address"' in caplog.text


@pytest.mark.parametrize(
    ("address", "valid"),
    [
        ("user@corp.example", True),
        ("first.last+tag@mail.corp.example", True),
        ("x@corp.local", True),
        ("user@localhost", False),
        ("user@@corp.example", False),
        ("user@corp.example\n", False),
        ("Anna <anna@corp.example>", False),
        (".user@corp.example", False),
        ("user..x@corp.example", False),
        ("user@-corp.example", False),
        ("user@corp.e", False),
        ("a" * 65 + "@corp.example", False),
        ("user@" + "a" * 64 + ".example", False),
        ("user@" + "a" * 63 + ".example", True),
        ("anna@exämple.com", False),
    ],
)
def test_address_validation(address: str, valid: bool) -> None:
    assert valid_address(address) is valid


@pytest.mark.parametrize(("master", "event_on"), [(False, True), (True, False)])
def test_nothing_when_switched_off(templates: Path, master: bool, event_on: bool) -> None:
    settings = alert_settings(email_event(templates, enable=event_on), enable=master)
    assert build(facts(), settings) == []


def test_event_without_settings_sends_nothing(templates: Path) -> None:
    settings = alert_settings(email_event(templates), name="reloadTaskSuccess")
    assert build(facts(), settings) == []


# --- content ---------------------------------------------------------------------------------------------


def test_subject_body_text_and_priority(templates: Path) -> None:
    event = email_event(templates, subject='Reload failed: "{{taskName}}" on {{hostName}}', priority="low")
    [message] = build(facts(task_name="Sales & <Costs>"), alert_settings(event))
    payload = message.payload
    assert payload["from"] == "Qlik Sense (no-reply) <qliksense-noreply@corp.example>"
    # `{{ }}` escapes for HTML; a header shows the characters themselves.
    assert payload["subject"] == 'Reload failed: "Sales & <Costs>" on sense1.corp.local'
    assert "<strong>Task name</strong><br>\n      Sales &amp; &lt;Costs&gt;\n" in payload["html"]
    assert payload["priority"] == "low"
    assert payload["attachment"] is None
    assert message.notes == ()
    assert payload["text"] == (
        "Qlik Sense reload task failed\n"
        "\n"
        "Task name\n"
        "Sales & <Costs>\n"
        "App\n"
        "Sales\n"
        "\n"
        "Open app\n"
        "\n"
        "Log & more:\n"
        "\n"
        "Max retries reached\n"
        "  second line\n"
        "\n"
        "Sent by Butler.\n"
    )


def test_html_to_text_links_lists_and_hidden_parts() -> None:
    markup = (
        "<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<p>See <a href='https://qmc.example/qmc'>the QMC</a> or <a href='https://hub.example'>"
        "https://hub.example</a>.</p><ul><li>one</li><li>two&nbsp;&#x27;2&#x27;</li></ul>"
        "line<br>next<br><br>after<hr>end</body></html>"
    )
    assert html_to_text(markup) == (
        "See the QMC (https://qmc.example/qmc) or https://hub.example.\n"
        "\n"
        "- one\n"
        "- two\xa0'2'\n"
        "\n"
        "line\n"
        "next\n"
        "\n"
        "after\n"
        "----------------------------------------\n"
        "end\n"
    )


@pytest.mark.parametrize(("priority", "expected"), [("high", "high"), ("normal", "normal"), ("LOW", "low")])
def test_priority_in_payload(templates: Path, priority: str, expected: str) -> None:
    [message] = build(facts(), alert_settings(email_event(templates, priority=priority)))
    assert message.payload["priority"] == expected


def test_script_log_attachment(templates: Path) -> None:
    lines = ["2024-01-15 10:30:00 Execution started.", "2024-01-15 10:31:00 Error: boom", ""]
    event = email_event(templates, attach_script_log=True, recipients=("a@corp.example", "b@corp.example"))
    messages = build(facts(script_log=lines), alert_settings(event))
    assert [m.payload["attachment"] for m in messages] == [
        {
            "filename": f"scriptlog-{TASK_ID}.txt",
            "content": "2024-01-15 10:30:00 Execution started.\r\n2024-01-15 10:31:00 Error: boom\r\n",
        }
    ] * 2
    [without_log] = build(
        facts(script_log=None), alert_settings(dataclasses.replace(event, recipients=("a@corp.example",)))
    )
    assert without_log.payload["attachment"] is None
    assert without_log.notes == ("the script log was not available, so it is not attached",)


@pytest.mark.parametrize("template", ["missing", "broken"])
def test_fallback_body_when_the_template_fails(templates: Path, template: str) -> None:
    event = email_event(templates, html_template=template)
    [message] = build(facts(script_log=["first", "last line"]), alert_settings(event))
    path = templates / f"{template}.handlebars"
    [note] = message.notes
    assert note.startswith(f"the body template {path} could not be used (")
    assert note.endswith("); Butler's basic message was sent")
    body = message.payload["html"]
    assert body.startswith("<h1>Qlik Sense reload failed</h1>\n<p><i>Note: the body template ")
    assert "<tr><td><b>Task name</b></td><td>Reload Sales</td></tr>" in body
    assert f"<tr><td><b>Task ID</b></td><td>{TASK_ID}</td></tr>" in body
    assert "<tr><td><b>Log message</b></td><td>Max retries reached</td></tr>" in body
    assert "<pre>first\nlast line</pre>" in body
    text = message.payload["text"]
    assert "Task name\nReload Sales\n" in text
    assert "first\nlast line" in text
    # the subject template still works
    assert message.payload["subject"] == 'Qlik Sense reload failed: "Reload Sales"'


def test_fallback_subject_when_its_template_fails(templates: Path) -> None:
    [message] = build(facts(), alert_settings(email_event(templates, subject="{{#each}} oops")))
    assert message.payload["subject"] == 'Qlik Sense reload failed: "Reload Sales"'
    [note] = message.notes
    assert note.startswith("the subject template failed (")


def test_no_body_directory_gives_basic_body(templates: Path) -> None:
    [message] = build(facts(), alert_settings(email_event(None)))
    assert message.payload["html"].startswith("<h1>Qlik Sense reload failed</h1>")
    assert message.notes == (
        "no body template is configured (emailNotification.reloadTaskFailure.bodyFileDirectory and "
        "htmlTemplateFile); Butler's basic message was sent",
    )


# --- MIME ------------------------------------------------------------------------------------------------


def payload(to: str = "ops@corp.example", **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "from": "Qlik Sense (no-reply) <qliksense-noreply@corp.example>",
        "to": to,
        "subject": '✅ Qlik Sense reload success: "Försäljning"',
        "html": "<p>Hej <b>världen</b></p>",
        "text": "Hej världen\n",
        "priority": "high",
        "attachment": None,
    }
    values.update(changes)
    return values


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


@pytest.mark.parametrize(
    ("priority", "headers"),
    [
        ("high", ("1 (Highest)", "High", "High")),
        ("normal", ("3 (Normal)", "Normal", "Normal")),
        ("low", ("5 (Lowest)", "Low", "Low")),
    ],
)
def test_mime_headers_and_parts(priority: str, headers: tuple[str, str, str]) -> None:
    raw = build_mime(payload(priority=priority)).as_bytes()
    assert raw.isascii()  # the UTF-8 subject is encoded as RFC 2047 words
    message = parse(raw)
    assert message["From"] == '"Qlik Sense (no-reply)" <qliksense-noreply@corp.example>'
    assert message["To"] == "ops@corp.example"
    assert message["Subject"] == '✅ Qlik Sense reload success: "Försäljning"'
    assert message["Message-ID"].endswith("@corp.example>")
    assert build_mime(payload(), "0f3c-17")["Message-ID"] == "<0f3c-17@corp.example>"
    assert message["Date"]
    assert (message["X-Priority"], message["X-MSMail-Priority"], message["Importance"]) == headers
    assert message.get_content_type() == "multipart/alternative"
    text, html_part = message.get_payload()  # type: ignore[misc]
    assert (text.get_content_type(), text.get_content()) == ("text/plain", "Hej världen\n")
    assert (html_part.get_content_type(), html_part.get_content()) == (
        "text/html",
        "<p>Hej <b>världen</b></p>\n",
    )


def test_mime_with_attachment() -> None:
    attachment = {"filename": f"scriptlog-{TASK_ID}.txt", "content": "rad 1\r\nrad 2 \u00e5 fel\r\n"}
    message = parse(build_mime(payload(attachment=attachment)).as_bytes())
    assert message.get_content_type() == "multipart/mixed"
    alternative, attached = message.get_payload()  # type: ignore[misc]
    assert alternative.get_content_type() == "multipart/alternative"
    assert attached.get_content_disposition() == "attachment"
    assert attached.get_filename() == f"scriptlog-{TASK_ID}.txt"
    assert attached.get_content_type() == "text/plain"
    assert attached.get_payload(decode=True) == "rad 1\r\nrad 2 \u00e5 fel\r\n".encode()


# --- a real SMTP server ----------------------------------------------------------------------------------


class Mailbox:
    """aiosmtpd handler: keeps what arrives; refuses the recipients in ``refuse``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.refuse: set[str] = set()
        self.tls_at_data: list[bool] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        self.tls_at_data.append(server.transport.get_extra_info("ssl_object") is not None)
        return "250 2.0.0 Ok: queued as 42"


class Accounts:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.logins: list[str] = []

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (self.user, self.password)
        if ok:
            self.logins.append(mechanism)
        # handled=False: aiosmtpd answers the refusal itself (535)
        return AuthResult(success=ok, handled=False)


class Server:
    """An SMTP server on a loopback port; counts the connections it accepted."""

    def __init__(self, mailbox: Mailbox, **options: Any) -> None:
        self.mailbox = mailbox
        self.options = options
        self.sessions: list[SMTP] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    @property
    def connections(self) -> int:
        return len(self.sessions)

    async def start(self, implicit_tls: ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            session = SMTP(self.mailbox, hostname="smtp.test", loop=loop, **self.options)
            self.sessions.append(session)
            return session

        self._server = await loop.create_server(factory, "127.0.0.1", 0, ssl=implicit_tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop_all(self) -> None:
        for session in self.sessions:
            if session.transport is not None:
                session.transport.close()

    async def stop(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("smtp-certs"))


def server_tls(certs: CertFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    return context


def smtp_settings(port: int, **changes: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "secure": False,
        "server_name": "localhost",
        "ignore_tls": False,
        "require_tls": False,
        "reject_unauthorized": True,
        "auth_enable": True,
        "user": "butler",
        "password": "s3cret",
    }
    values.update(changes)
    return dataclasses.replace(SmtpSettings(), **values)


@pytest.fixture
async def starttls_server(certs: CertFiles) -> AsyncIterator[Server]:
    server = Server(
        Mailbox(),
        tls_context=server_tls(certs),
        authenticator=Accounts("butler", "s3cret"),
        auth_required=True,
    )
    await server.start()
    yield server
    await server.stop()


async def test_message_arrives_over_starttls_with_auth(starttls_server: Server, certs: CertFiles) -> None:
    accounts = starttls_server.options["authenticator"]
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    try:
        attachment = {"filename": f"scriptlog-{TASK_ID}.txt", "content": "line 1\r\nline 2\r\n"}
        answer = await sender.send(payload(attachment=attachment), "delivery-1")
    finally:
        await sender.close()
    assert answer == "250 2.0.0 Ok: queued as 42"
    [(mail_from, rcpt_tos, raw)] = starttls_server.mailbox.received
    assert (mail_from, rcpt_tos) == ("qliksense-noreply@corp.example", ["ops@corp.example"])
    assert starttls_server.mailbox.tls_at_data == [True]
    assert accounts.logins == ["PLAIN"]
    message = parse(raw)
    assert message["Subject"] == '✅ Qlik Sense reload success: "Försäljning"'
    assert message["To"] == "ops@corp.example"
    assert message["Message-ID"] == "<delivery-1@corp.example>"
    assert message["X-Priority"] == "1 (Highest)"
    assert message.get_content_type() == "multipart/mixed"
    alternative, attached = message.get_payload()  # type: ignore[misc]
    assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
    assert attached.get_payload(decode=True) == b"line 1\r\nline 2\r\n"


async def test_connection_is_reused_and_reopened_after_a_drop(
    starttls_server: Server, certs: CertFiles
) -> None:
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    try:
        for n in range(3):
            await sender.send(payload(f"user{n}@corp.example"))
        assert starttls_server.connections == 1
        # Dropped while idle, noticed only when the next message goes out.
        starttls_server.drop_all()
        await sender.send(payload("user3@corp.example"))
        assert starttls_server.connections == 2
        # Dropped with the client already aware of it.
        starttls_server.drop_all()
        await asyncio.sleep(0.05)
        await sender.send(payload("user4@corp.example"))
        await sender.send(payload("user5@corp.example"))
        assert starttls_server.connections == 3
    finally:
        await sender.close()
    assert [r[1] for r in starttls_server.mailbox.received] == [[f"user{n}@corp.example"] for n in range(6)]


async def test_server_goodbye_421_while_idle_reconnects(starttls_server: Server, certs: CertFiles) -> None:
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    try:
        await sender.send(payload("a@corp.example"))
        session = starttls_server.sessions[0]
        assert session.transport is not None
        # As a server ends an idle connection: 421, then it closes (RFC 5321, 3.8).
        session.transport.write(b"421 4.4.2 smtp.test Error: timeout exceeded\r\n")
        session.transport.close()
        await sender.send(payload("b@corp.example"))
    finally:
        await sender.close()
    assert starttls_server.connections == 2
    assert [r[1] for r in starttls_server.mailbox.received] == [["a@corp.example"], ["b@corp.example"]]


async def test_one_refused_recipient_of_five(starttls_server: Server, certs: CertFiles) -> None:
    starttls_server.mailbox.refuse = {"gone@corp.example"}
    recipients = ["a@corp.example", "b@corp.example", "gone@corp.example", "c@corp.example", "d@corp.example"]
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    results: dict[str, str | DeliveryError] = {}
    try:
        for to in recipients:
            try:
                results[to] = await sender.send(payload(to))
            except DeliveryError as exc:
                results[to] = exc
    finally:
        await sender.close()
    refused = results.pop("gone@corp.example")
    assert isinstance(refused, DeliveryError)
    assert refused.retryable is False
    assert str(refused) == (
        f"SMTP server 127.0.0.1:{starttls_server.port} refused the recipient gone@corp.example: "
        "550 5.1.1 <gone@corp.example>: Recipient address rejected: User unknown"
    )
    assert results == {to: "250 2.0.0 Ok: queued as 42" for to in recipients if to != "gone@corp.example"}
    assert [r[1] for r in starttls_server.mailbox.received] == [
        ["a@corp.example"],
        ["b@corp.example"],
        ["c@corp.example"],
        ["d@corp.example"],
    ]
    assert starttls_server.connections == 1


async def test_temporary_refusal_is_retryable(starttls_server: Server, certs: CertFiles) -> None:
    class Greylist(Mailbox):
        async def handle_RCPT(self, *args: Any) -> str:
            return "451 4.7.1 Greylisted, try again later"

    starttls_server.mailbox = Greylist()
    starttls_server.sessions.clear()
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    try:
        with pytest.raises(DeliveryError) as caught:
            await sender.send(payload())
    finally:
        await sender.close()
    assert caught.value.retryable is True
    assert caught.value.message.endswith("451 4.7.1 Greylisted, try again later")


async def test_authentication_failure(starttls_server: Server, certs: CertFiles) -> None:
    settings = smtp_settings(starttls_server.port, password="wrong")
    sender = SmtpSender(settings, timeout=5, ca_file=certs.ca)
    try:
        with pytest.raises(DeliveryError) as caught:
            await sender.send(payload())
    finally:
        await sender.close()
    assert caught.value.retryable is False
    assert caught.value.message == (
        f"SMTP server 127.0.0.1:{starttls_server.port} refused authentication as 'butler': "
        "535 5.7.8 Authentication credentials invalid"
    )
    assert starttls_server.mailbox.received == []


async def test_login_mechanism_when_plain_is_not_offered(certs: CertFiles) -> None:
    accounts = Accounts("butler", "s3cret")
    server = Server(
        Mailbox(), tls_context=server_tls(certs), authenticator=accounts, auth_exclude_mechanism=["PLAIN"]
    )
    await server.start()
    sender = SmtpSender(smtp_settings(server.port), timeout=5, ca_file=certs.ca)
    try:
        assert await sender.send(payload()) == "250 2.0.0 Ok: queued as 42"
    finally:
        await sender.close()
        await server.stop()
    assert accounts.logins == ["LOGIN"]


async def test_certificate_checked_against_server_name(starttls_server: Server, certs: CertFiles) -> None:
    settings = smtp_settings(starttls_server.port, server_name="smtp.elsewhere.example")
    sender = SmtpSender(settings, timeout=5, ca_file=certs.ca)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(payload())
    await sender.close()
    assert caught.value.retryable is False
    assert caught.value.message.startswith(
        f"The certificate of SMTP server 127.0.0.1:{starttls_server.port} is not trusted: "
    )
    assert "smtp.elsewhere.example" in caught.value.message
    # Without verification (upstream's default) the same server is fine.
    sender = SmtpSender(dataclasses.replace(settings, reject_unauthorized=False), timeout=5)
    try:
        assert await sender.send(payload()) == "250 2.0.0 Ok: queued as 42"
    finally:
        await sender.close()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls(certs: CertFiles) -> None:
    mailbox = Mailbox()
    # aiosmtpd does not see TLS it did not start itself, so it is told not to insist on it for AUTH.
    server = Server(
        mailbox, authenticator=Accounts("butler", "s3cret"), auth_required=True, auth_require_tls=False
    )
    await server.start(implicit_tls=server_tls(certs))
    sender = SmtpSender(smtp_settings(server.port, secure=True), timeout=5, ca_file=certs.ca)
    try:
        assert await sender.send(payload("a@corp.example")) == "250 2.0.0 Ok: queued as 42"
        assert await sender.send(payload("b@corp.example")) == "250 2.0.0 Ok: queued as 42"
    finally:
        await sender.close()
        await server.stop()
    assert server.connections == 1
    assert mailbox.tls_at_data == [True, True]
    assert [r[1] for r in mailbox.received] == [["a@corp.example"], ["b@corp.example"]]


@pytest.fixture
async def plain_server() -> AsyncIterator[Server]:
    server = Server(Mailbox(), auth_require_tls=False, authenticator=Accounts("butler", "s3cret"))
    await server.start()
    yield server
    await server.stop()


async def test_require_tls_without_starttls_is_not_retryable(plain_server: Server) -> None:
    sender = SmtpSender(smtp_settings(plain_server.port, require_tls=True), timeout=5)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(payload())
    await sender.close()
    assert caught.value.retryable is False
    assert caught.value.message == (
        f"SMTP server 127.0.0.1:{plain_server.port} does not offer STARTTLS, and "
        "emailNotification.smtp.tls.requireTLS is true: no mail is sent without TLS"
    )
    assert plain_server.mailbox.received == []


async def test_plain_server_without_require_tls(plain_server: Server) -> None:
    sender = SmtpSender(smtp_settings(plain_server.port), timeout=5)
    try:
        assert await sender.send(payload()) == "250 2.0.0 Ok: queued as 42"
    finally:
        await sender.close()
    assert plain_server.mailbox.tls_at_data == [False]


async def test_ignore_tls_skips_starttls(starttls_server: Server) -> None:
    # The server offers AUTH only over TLS, so without TLS only an unauthenticated send can work.
    starttls_server.options["auth_required"] = False
    sender = SmtpSender(smtp_settings(starttls_server.port, ignore_tls=True, auth_enable=False), timeout=5)
    try:
        assert await sender.send(payload()) == "250 2.0.0 Ok: queued as 42"
    finally:
        await sender.close()
    assert starttls_server.mailbox.tls_at_data == [False]


async def test_connection_refused_is_retryable() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sender = SmtpSender(smtp_settings(port), timeout=5)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(payload())
    await sender.close()
    assert caught.value.retryable is True
    assert caught.value.message.startswith(f"Cannot connect to SMTP server 127.0.0.1:{port}: ")


async def test_message_that_cannot_be_composed_is_not_retryable() -> None:
    sender = SmtpSender(smtp_settings(25), timeout=5)
    with pytest.raises(DeliveryError) as caught:
        await sender.send(payload(subject="two\nlines"))
    assert caught.value.retryable is False
    assert caught.value.message.startswith("The e-mail cannot be composed: ValueError(")


async def test_silent_server_times_out_retryably() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never greets
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = SmtpSender(smtp_settings(port), timeout=0.3)
    try:
        with pytest.raises(DeliveryError) as caught:
            await sender.send(payload())
    finally:
        await sender.close()
        server.close()
    assert caught.value.retryable is True
    assert caught.value.message == f"SMTP server 127.0.0.1:{port} did not answer in time"


async def test_builder_payload_goes_through_the_sender(
    starttls_server: Server, certs: CertFiles, templates: Path
) -> None:
    event = email_event(templates, recipients=("a@corp.example", "b@corp.example"), attach_script_log=True)
    messages = build(facts(script_log=["one", "two"]), alert_settings(event))
    sender = SmtpSender(smtp_settings(starttls_server.port), timeout=5, ca_file=certs.ca)
    try:
        for message in messages:
            await sender.send(message.payload)
    finally:
        await sender.close()
    received = starttls_server.mailbox.received
    assert [r[1] for r in received] == [["a@corp.example"], ["b@corp.example"]]
    message = parse(received[0][2])
    assert message["Subject"] == 'Qlik Sense reload failed: "Reload Sales"'
    assert message["Importance"] == "High"
    alternative, attached = message.get_payload()  # type: ignore[misc]
    text, html_part = alternative.get_payload()
    sent_text = text.get_content().replace("\r\n", "\n")
    assert sent_text == email_channel.html_to_text(html_part.get_content().replace("\r\n", "\n"))
    assert sent_text.startswith("Qlik Sense reload task failed\n\nTask name\nReload Sales\n")
    assert attached.get_filename() == f"scriptlog-{TASK_ID}.txt"
