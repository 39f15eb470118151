"""E-mail alerts: who is mailed about a task outcome or a Windows service, and what the mail says.

One Message per recipient, so that a refused or unreachable recipient does not hold up the others and each
recipient has its own rate limit (``<taskId>|<address>``, as upstream keys it). Recipients are, in order:
the addresses in the task's "send to" custom property, the configured common list (when the task has the
enable custom property, or when that rule is off), and for reload events the app owner. The custom
properties come from the task as QRS ``task/full`` returned it, so building costs no QRS call.

Subject and HTML body are the event's Handlebars templates; a plain-text part is derived from the HTML so
that text-only readers and previews get something legible. A body template that is missing or fails gives
Butler's basic message with a note saying why, instead of no mail at all.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from butler.alerts.context import (
    SERVICE_EVENTS,
    AlertFacts,
    AppOwner,
    ServiceFacts,
    service_context,
    template_context,
)
from butler.alerts.model import Message
from butler.alerts.templates import compile_template, load_template
from butler.config.alerts import AlertSettings, EmailEvent, ServiceEmailEvent

log = logging.getLogger("butler.alerts.email")

PRIORITIES = ("high", "normal", "low")

TITLES = {
    "reloadTaskFailure": "Qlik Sense reload failed",
    "reloadTaskAborted": "Qlik Sense reload aborted",
    "reloadTaskSuccess": "Qlik Sense reload success",
    "distributeTaskFailure": "Qlik Sense distribute task failed",
    "distributeTaskSuccess": "Qlik Sense distribute task success",
    "preloadTaskFailure": "Qlik Sense preload task failed",
    "preloadTaskSuccess": "Qlik Sense preload task success",
}


def build(facts: AlertFacts, settings: AlertSettings) -> list[Message]:
    """The e-mails for one task outcome: one Message per valid, distinct recipient; ``[]`` when off."""
    if not settings.email.enable:
        return []
    event = settings.email.event(facts.event)
    if not event.enable:
        return []
    addresses = recipients(facts, event)
    if not addresses:
        return []
    content = render(facts, settings, event)
    return _mails(facts.event, facts.outcome.event.task_id, event.rate_limit, addresses, content)


def build_service(facts: ServiceFacts, settings: AlertSettings) -> list[Message]:
    """The e-mails for a service that stopped or started: one Message per valid, distinct recipient, each
    limited per service, state and address."""
    if not settings.email.enable or facts.change.status not in SERVICE_EVENTS:
        return []
    event = settings.email.services[facts.event]
    addresses = _valid_distinct(event.recipients, f'service "{facts.change.service_name}"', facts.event)
    if not addresses:
        return []
    content = render_service(facts, settings, event)
    return _mails(facts.event, facts.rate_key, event.rate_limit, addresses, content)


def _mails(
    event: str, rate_key: str, rate_limit: float, addresses: list[str], content: Content
) -> list[Message]:
    """One Message of ``content`` per address, each rate-limited on its own."""
    return [
        Message(
            channel="email",
            event=event,
            rate_key=f"{rate_key}|{address}",
            rate_limit=rate_limit,
            target=address,
            payload={**content.payload, "to": address},
            notes=content.notes,
        )
        for address in addresses
    ]


# --- recipients ------------------------------------------------------------------------------------------


def recipients(facts: AlertFacts, event: EmailEvent) -> list[str]:
    """Who is mailed, de-duplicated exactly (first occurrence wins), invalid addresses left out."""
    properties = task_custom_properties(facts.outcome.task)
    candidates: list[str] = []
    if event.recipients_cp_name:
        # Upstream compares the definition name itself, exactly.
        candidates += [value for name, value in properties if name == event.recipients_cp_name]
    if not event.enable_by_cp or _has_enable_property(properties, event):
        candidates += event.recipients
    if facts.event.startswith("reload"):
        candidates += owner_addresses(facts.owner, event, facts.outcome.app_name)
    return _valid_distinct(candidates, f'task "{facts.outcome.event.task_name}"', facts.event)


def _valid_distinct(candidates: Iterable[str], about: str, event: str) -> list[str]:
    found: list[str] = []
    seen: set[str] = set()
    for candidate in candidates:
        address = candidate.strip()
        if not address or address in seen:
            continue
        seen.add(address)
        if not valid_address(address):
            log.warning(
                'Recipient e-mail address not valid: "%s" (%s, %s); not mailed', address, about, event
            )
            continue
        found.append(address)
    return found


def task_custom_properties(task: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """``(name, value)`` of each custom property value of a QRS ``task/full`` entity, in QRS's order."""
    pairs: list[tuple[str, str]] = []
    for item in (task or {}).get("customProperties") or []:
        if not isinstance(item, Mapping):
            continue
        definition = item.get("definition")
        name = definition.get("name") if isinstance(definition, Mapping) else None
        value = item.get("value")
        if isinstance(name, str) and value is not None:
            pairs.append((name, str(value)))
    return pairs


def _has_enable_property(properties: Iterable[tuple[str, str]], event: EmailEvent) -> bool:
    # Upstream asks QRS (`definition.name eq '<cp>' and value eq '<val>'`), whose string comparisons are
    # case-insensitive, so the same task is enabled here as there.
    name, value = event.enable_cp_name.casefold(), event.enable_cp_value.casefold()
    return any(n.casefold() == name and v.casefold() == value for n, v in properties)


def owner_addresses(owner: AppOwner | None, event: EmailEvent, app_name: str = "") -> list[str]:
    """The app owner's addresses when the owner is to be mailed; exclude wins over include."""
    if not event.owner_alert or owner is None:
        return []
    who = (owner.user_directory, owner.user_id)
    if not event.owner_include_all and who not in event.owner_include:
        return []
    if who in event.owner_exclude:
        return []
    if not owner.emails:
        log.warning(
            'No email address for owner %s\\%s of app "%s"; the owner is not mailed',
            owner.user_directory,
            owner.user_id,
            app_name,
        )
        return []
    return list(owner.emails)


# Upstream validates with the npm package email-validator; the same rule here accepts and rejects the same
# addresses (intranet domains such as `corp.local` included, which stricter validators refuse).
_LOCAL_CHARS = r"[-!#$%&'*+/0-9=?A-Z^_a-z`{|}~]"
_ADDRESS = re.compile(
    rf"{_LOCAL_CHARS}(?:\.?{_LOCAL_CHARS})*@[a-zA-Z0-9](?:-*\.?[a-zA-Z0-9])*\.[a-zA-Z](?:-?[a-zA-Z0-9])+"
)


def valid_address(address: str) -> bool:
    """Whether ``address`` is a plain e-mail address (``user@host.domain``, ASCII, no display name)."""
    parts = address.split("@")
    if len(parts) != 2:
        return False
    local, domain = parts
    if len(local) > 64 or len(domain) > 255 or any(len(label) > 63 for label in domain.split(".")):
        return False
    return _ADDRESS.fullmatch(address) is not None


# --- content ---------------------------------------------------------------------------------------------


class Content:
    """What every recipient's mail shares: the payload without ``to``, and the notes."""

    def __init__(self, payload: dict[str, Any], notes: tuple[str, ...]) -> None:
        self.payload = payload
        self.notes = notes


def render(facts: AlertFacts, settings: AlertSettings, event: EmailEvent) -> Content:
    """Subject, HTML and text parts, priority and attachment of an event's mail."""
    notes: list[str] = []
    context: dict[str, Any] | None
    try:
        context = template_context(facts, settings, event.head_lines, event.tail_lines)
    except Exception as exc:  # the basic message below needs nothing from the context
        log.exception("Could not build the e-mail template context for %s", facts.event)
        notes.append(f"the template fields could not be computed ({exc})")
        context = None

    subject = _subject(facts, event, context, notes)
    body = _body(facts, event, context, notes)
    if body is None:
        body = basic_body(facts, notes)
    priority = event.priority.lower() if event.priority.lower() in PRIORITIES else "normal"
    return Content(
        {
            "from": event.from_address,
            "subject": subject,
            "html": body,
            "text": html_to_text(body),
            "priority": priority,
            "attachment": _attachment(facts, event, notes),
        },
        tuple(notes),
    )


def render_service(facts: ServiceFacts, settings: AlertSettings, event: ServiceEmailEvent) -> Content:
    """Subject, HTML and text parts and priority of a service's mail; a template that fails gives
    Butler's basic subject or body with a note."""
    notes: list[str] = []
    context = service_context(facts, settings)
    change = facts.change
    title = f"Windows service {'stopped' if facts.event == 'serviceStopped' else 'started'}"
    fallback = " ".join(f'{title} on host {change.host}: "{change.details.display_name}"'.split())
    subject = _render_subject(event.subject, context, f"emailNotification.{facts.event}", fallback, notes)
    body = _render_body(
        event.body_directory, event.html_template, context, f"emailNotification.{facts.event}", notes
    )
    if body is None:
        rows = [
            ("Host", change.host),
            ("Service name", change.service_name),
            ("Service display name", change.details.display_name),
            ("Service status", change.status),
            ("Previous service status", change.previous),
            ("Service startup mode", change.details.start_type),
            ("EXE path", change.details.exe_path),
        ]
        body = _basic_html(title, rows, notes, [])
    return Content(
        {
            "from": event.from_address,
            "subject": subject,
            "html": body,
            "text": html_to_text(body),
            "priority": event.priority.lower(),
            "attachment": None,
        },
        tuple(notes),
    )


def _subject(facts: AlertFacts, event: EmailEvent, context: dict[str, Any] | None, notes: list[str]) -> str:
    fallback = f'{TITLES.get(facts.event, "Qlik Sense task event")}: "{facts.outcome.task_name}"'
    if context is None:
        return " ".join(fallback.split())
    return _render_subject(event.subject, context, f"emailNotification.{facts.event}", fallback, notes)


def _render_subject(template: str, context: dict[str, Any], key: str, fallback: str, notes: list[str]) -> str:
    # A header cannot hold line breaks, and a task or service name may: a mail with one could not be
    # composed at all.
    if not template:
        return " ".join(fallback.split())
    try:
        rendered = compile_template(template, f"{key}.subject").render(context)
    except Exception as exc:
        log.warning("E-mail subject template of %s failed: %s; a basic subject is used", key, exc)
        notes.append(f"the subject template failed ({exc}); a basic subject was used")
        return " ".join(fallback.split())
    # `{{x}}` HTML-escapes, right for the body but wrong in a header, where upstream's subjects show `&amp;`
    # .
    return " ".join(html.unescape(rendered).split())


def _body(
    facts: AlertFacts, event: EmailEvent, context: dict[str, Any] | None, notes: list[str]
) -> str | None:
    if context is None:
        return None
    key = f"emailNotification.{facts.event}"
    return _render_body(event.body_directory, event.html_template, context, key, notes)


def _render_body(
    directory: Path | None, name: str, context: dict[str, Any], key: str, notes: list[str]
) -> str | None:
    if directory is None or not name:
        notes.append(
            f"no body template is configured ({key}.bodyFileDirectory and htmlTemplateFile); "
            "Butler's basic message was sent"
        )
        return None
    path = Path(directory) / f"{name}.handlebars"
    try:
        return load_template(path).render(context)
    except Exception as exc:
        log.warning("E-mail body template %s failed: %s; the basic message is sent", path, exc)
        notes.append(f"the body template {path} could not be used ({exc}); Butler's basic message was sent")
        return None


def basic_body(facts: AlertFacts, notes: Iterable[str]) -> str:
    """Butler's own HTML body: the event's main fields, for when the configured template cannot be used."""
    outcome, event = facts.outcome, facts.outcome.event
    execution = facts.execution or {}
    rows = [
        ("Task name", outcome.task_name),
        ("Task ID", event.task_id),
        ("App name", outcome.app_name),
        ("App ID", event.app_id),
        ("Host", event.host),
        ("User", event.user),
        ("Log timestamp", event.timestamp),
        ("Log level", event.level),
        ("Log message", event.message),
        ("Execution ID", event.execution_id),
        ("Executing node", str(execution.get("executingNodeName") or "")),
        ("Execution status", str(execution.get("status") if execution.get("status") is not None else "")),
    ]
    return _basic_html(TITLES.get(facts.event, "Qlik Sense task event"), rows, notes, facts.script_log or [])


def _basic_html(title: str, rows: list[tuple[str, str]], notes: Iterable[str], log_lines: list[str]) -> str:
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>"]
    parts += [f"<p><i>Note: {esc(note)}</i></p>" for note in notes]
    parts.append("<table>")
    parts += [f"<tr><td><b>{esc(label)}</b></td><td>{esc(value)}</td></tr>" for label, value in rows if value]
    parts.append("</table>")
    if log_lines:
        tail = log_lines[-15:]
        parts.append(f"<p>The last {len(tail)} rows of the script log:</p>")
        parts.append(f"<pre>{esc(chr(10).join(tail))}</pre>")
    parts.append("<p><i>This email was sent by Butler.</i></p>")
    return "\n".join(parts) + "\n"


def _attachment(facts: AlertFacts, event: EmailEvent, notes: list[str]) -> dict[str, str] | None:
    if not event.attach_script_log:
        return None
    if facts.script_log is None:
        notes.append("the script log was not available, so it is not attached")
        return None
    task_id = re.sub(r"[^A-Za-z0-9-]", "_", facts.outcome.event.task_id) or "unknown"
    # Lines were split on CRLF (as QRS delivers the log), so joining restores the file.
    return {"filename": f"scriptlog-{task_id}.txt", "content": "\r\n".join(facts.script_log)}


# --- plain text from HTML --------------------------------------------------------------------------------

_LINE = "\x02"  # the end of a block: a line break unless the line is already empty
_PARAGRAPH = "\x03"  # the end of a paragraph-like block: an empty line after it
_BREAK = "\n"  # <br>: always a line break
_LINE_TAGS = frozenset(
    {"div", "tr", "td", "th", "li", "dt", "dd", "caption", "address", "section", "article"}
)
_PARAGRAPH_TAGS = frozenset(
    {
        "p",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "ul",
        "ol",
        "dl",
        "blockquote",
        "form",
        "header",
        "footer",
    }
)
_HIDDEN_TAGS = frozenset({"head", "style", "script", "title", "template"})


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pre: list[str] = []  # contents of <pre> blocks, kept verbatim
        self._pre_depth = 0
        self._hidden_depth = 0
        self._links: list[tuple[str, int]] = []  # href and where its text starts in `out`

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth += 1
        elif tag == "br":
            self._emit(_BREAK)
        elif tag == "hr":
            self._emit(_LINE + "-" * 40 + _LINE)
        elif tag == "pre":
            self._emit(_PARAGRAPH)
            self._pre_depth += 1
            if self._pre_depth == 1:
                self.pre.append("")
        elif tag == "li":
            self._emit(_LINE + "- ")
        elif tag in _LINE_TAGS:
            self._emit(_LINE)
        elif tag in _PARAGRAPH_TAGS:
            self._emit(_PARAGRAPH)
        elif tag == "a":
            self._links.append((dict(attrs).get("href") or "", len(self.out)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self._hidden_depth = max(0, self._hidden_depth - 1)
        elif tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
            if self._pre_depth == 0:
                self._emit(f"\x00{len(self.pre) - 1}\x00{_PARAGRAPH}")
        elif tag in _LINE_TAGS:
            self._emit(_LINE)
        elif tag in _PARAGRAPH_TAGS:
            self._emit(_PARAGRAPH)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = " ".join("".join(self.out[start:]).split())
            if href and not href.startswith(("#", "mailto:", "javascript:")) and href != text:
                self._emit(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._hidden_depth:
            return
        if self._pre_depth:
            self.pre[-1] += data
        else:
            # HTML collapses ASCII white space only: a no-break space stays.
            self._emit(re.sub(r"[ \t\n\r\f]+", " ", data))

    def _emit(self, text: str) -> None:
        if not self._hidden_depth:
            self.out.append(text)


_BREAKS = re.compile(f"[ \t]*([{_BREAK}{_LINE}{_PARAGRAPH}][ \t{_BREAK}{_LINE}{_PARAGRAPH}]*)")


def html_to_text(markup: str) -> str:
    """A readable plain-text rendering of an HTML body: tags gone, entities decoded, blocks on their own
    lines, at most one empty line in a row, ``<pre>`` kept as it is, link targets after their text."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()

    def newlines(match: re.Match[str]) -> str:
        count = 0
        for mark in match.group(1):
            if mark == _BREAK:
                count += 1
            elif mark == _LINE:
                count = max(count, 1)
            elif mark == _PARAGRAPH:
                count = max(count, 2)
        return "\n" * min(count, 2)

    text = _BREAKS.sub(newlines, "".join(parser.out))
    lines = [line.strip(" ") for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")

    def verbatim(match: re.Match[str]) -> str:
        return parser.pre[int(match.group(1))].replace("\r\n", "\n").strip("\n")

    return re.sub("\x00([0-9]+)\x00", verbatim, text) + "\n"


__all__ = [
    "build",
    "build_service",
    "html_to_text",
    "owner_addresses",
    "recipients",
    "render",
    "valid_address",
]
