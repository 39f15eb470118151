"""Butler's status page: what it is connected to and how each connection does, the latest alerts with their
deliveries, the schedules, active users, UDP intake, the monitors, and the config with its secrets masked.

``StatusPage.data`` gathers a snapshot from the services' own read methods (the figures of ``/health``, the
alert outbox, the scheduler's plan), as plain JSON; ``page`` and ``fragment`` render it as HTML, every value
escaped. The page refreshes its body from ``/status?fragment=true`` every few seconds with a few lines of
inline script, and needs nothing from outside Butler. Long lists are cut (``SHOWN_ALERTS``,
``SHOWN_SCHEDULES``) so that a render stays within milliseconds however many alerts and schedules there are.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import heapq
import re
import time
from collections.abc import Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from butler.alerts.context import redacted_url
from butler.config.declare import declared_values
from butler.config.schema import Secret
from butler.qlik.qrs import QrsClient
from butler.services import Services

#: Alerts (task outcomes and monitor alerts) shown, newest first.
SHOWN_ALERTS = 50
#: Schedules shown, those firing soonest first.
SHOWN_SCHEDULES = 100
#: How often the page asks for a fresh body (milliseconds).
REFRESH_MS = 5000
MASK = "••••••"

#: Key names whose values are secrets, whatever their type in the config declarations; header lists are
#: masked by their header names alike.
_SECRET_NAME = re.compile(r"pass(word|phrase)?|secret|token|api.?key|key$|credential|authorization", re.I)


def masked_config(settings: object) -> list[tuple[str, str]]:
    """Every key of a settings object (of ``Settings``: every key Butler read), as the page shows it:
    secrets masked by their declared type and by their name, URLs cut to their origin and first path
    segment (webhook URLs carry their secret in the path, and others a password before the host)."""
    rows = []
    for path, value, spec in declared_values(settings, "Butler"):
        name = path.rsplit(".", 1)[-1]
        if isinstance(spec, Secret) or _SECRET_NAME.search(name):
            shown = MASK if value not in (None, "") else ""
        else:
            shown = _shown(value)
        rows.append((path, shown))
    return rows


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return redacted_url(value) if "://" in value else value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return ", ".join(_item(item) for item in items)
    if hasattr(value, "enabled_leaf_names"):  # the endpoint flags: those on
        return ", ".join(value.enabled_leaf_names())
    return str(value)


def _item(item: Any) -> str:
    # Pairs are headers (name, value): the value of a secret-looking header is masked.
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, value = item
        return f"{name}: {MASK if _SECRET_NAME.search(name) else _shown(value)}"
    return _shown(item)


class StatusPage:
    """The status of one Butler's services, as data and as HTML."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Settings never change while Butler runs: their table is rendered once.
        self._config_html = _config_table(masked_config(services.settings))

    def data(self) -> dict[str, Any]:
        services = self.services
        return {
            "version": services.version,
            "uptimeSeconds": round(time.monotonic() - services.started, 1),
            "now": _iso(time.time()),
            "connections": self._connections(),
            "alerts": self._alerts(),
            "schedules": self._schedules(),
            "activeUsers": services.events.users.counts_per_host() if services.events is not None else None,
            "udp": self._udp(),
            "monitors": self._monitors(),
        }

    # -- the snapshot -------------------------------------------------------------------------------------

    def _connections(self) -> list[dict[str, Any]]:
        services = self.services
        settings = services.settings
        rows: list[dict[str, Any]] = []
        where = f"{settings.qrs.host}:{settings.qrs.port}"
        clients = [("QRS", services.qrs), ("QRS (monitors)", services.monitors_qrs)]
        for name, qrs in clients:
            if qrs is not None:
                rows.append(_qrs(name, where, qrs))
        if not rows:
            qlik = settings.certificates.client_cert is not None
            why = "no enabled feature calls QRS" if qlik else "Butler.cert is not set"
            rows.append(_row("QRS", where, "off", why))
        engine = f"{settings.engine.host}:{settings.engine.port}"
        if services.apps is not None:
            rows.append(_row("Engine", engine, "idle", "connected for each app dump or reload"))
        else:
            rows.append(_row("Engine", engine, "off", "the app endpoints are off"))
        rows.append(self._mqtt())
        rows.extend(self._alert_channels())
        rows.extend(self._redis())
        influx = services.influx
        if influx is not None:
            stats = influx.stats()
            error = stats["lastError"]
            detail = error or f"{stats['written']} points written, {stats['buffered']} buffered"
            rows.append(_row("InfluxDB", stats["target"], "down" if error else "ok", detail))
        else:
            rows.append(_row("InfluxDB", "", "off", "Butler.influxDb.enable is false"))
        return rows

    def _mqtt(self) -> dict[str, Any]:
        mqtt = self.services.mqtt
        settings = self.services.settings.mqtt
        where = f"{settings.host}:{settings.port}"
        if mqtt is None:
            return _row("MQTT broker", where, "off", "Butler.mqttConfig.enable is false")
        stats = mqtt.stats()
        detail = f"{stats['published']} published, {stats['queued']} queued, {stats['reconnects']} reconnects"
        return _row("MQTT broker", where, "ok" if stats["connected"] else "down", detail)

    def _alert_channels(self) -> list[dict[str, Any]]:
        services = self.services
        if services.alerts_off is not None:
            return [_row("Alerts", "", "down", services.alerts_off)]
        if services.alerts is None:
            return [_row("Alerts", "", "off", "no alert channel is on")]
        smtp = services.settings.alerts.email.smtp
        rows = []
        for channel, counts in services.alerts.dispatcher.stats().items():
            problem = counts.get("disabled") or counts.get("warning")
            state = "down" if "disabled" in counts else "warn" if problem or counts["dead"] else "ok"
            detail = problem or (
                f"{counts['sent']} sent, {counts['pending']} pending, {counts['dead']} dead, "
                f"{counts['retried']} retried"
            )
            where = f"SMTP {smtp.host}:{smtp.port}" if channel == "email" else ""
            rows.append(_row(f"Alerts: {channel}", where, state, detail))
        return rows

    def _redis(self) -> list[dict[str, Any]]:
        services = self.services
        settings = services.settings.key_value
        if settings.backend != "redis":
            return []
        where = redacted_url(settings.redis_url)
        problems = []
        if services.leases is not None and services.leases.problem:
            problems.append(services.leases.problem)
        sharing = services.events.sharing if services.events is not None else None
        if sharing is not None and not sharing.available:
            problems.append(sharing.last_error or "unavailable")
        detail = "; ".join(problems) or "answering"
        return [_row("Redis", where, "down" if problems else "ok", detail)]

    def _alerts(self) -> dict[str, Any] | None:
        alerts = self.services.alerts
        if alerts is None:
            return None
        return {"shown": SHOWN_ALERTS, "recent": alerts.recent(limit=SHOWN_ALERTS), **alerts.stats()}

    def _schedules(self) -> dict[str, Any] | None:
        scheduler = self.services.scheduler
        if scheduler is None:
            return None
        # Those firing soonest first, then stopped ones and those that cannot run.
        soonest = heapq.nsmallest(
            SHOWN_SCHEDULES,
            scheduler.jobs.values(),
            key=lambda job: job.next_due if job.next_due is not None else float("inf"),
        )
        shown = []
        for job in soonest:
            last = job.runs[-1] if job.runs else None
            shown.append(
                {
                    "id": job.schedule.id,
                    "name": job.schedule.name,
                    "cron": job.schedule.cronSchedule,
                    "state": job.schedule.lastKnownState,
                    "problem": job.problem,
                    "lastFire": last.as_dict() if last is not None else None,
                    "nextFire": _iso(job.next_due) if job.next_due is not None else None,
                }
            )
        return {"count": len(scheduler.jobs), "shown": shown, **scheduler.stats()}

    def _udp(self) -> dict[str, Any] | None:
        events = self.services.events
        if events is None:
            return None
        stats = events.stats()
        return {
            "taskEvents": stats["taskEvents"],
            "sessionEvents": stats["sessionEvents"],
            "taskEventsHandled": stats["taskEventsHandled"],
            "taskEventQueue": stats["taskEventQueue"],
        }

    def _monitors(self) -> dict[str, Any] | None:
        monitors = self.services.monitors
        if monitors is None:
            return None
        return {"runners": monitors.stats(), **monitors.snapshot()}

    # -- HTML ---------------------------------------------------------------------------------------------

    def page(self, data: dict[str, Any]) -> str:
        # With authentication on, a browser may have logged in (``/status/login``): it can log out.
        logout = _LOGOUT_BUTTON if self.services.settings.rest.auth.enable else ""
        return _DOCUMENT.format(
            title="Butler status",
            style=_STYLE,
            version=escape(data["version"]),
            header=f'<span id="message" role="status"></span>{logout}',
            main=' id="content"',
            body=self.fragment(data),
            script=_SCRIPT,
        )

    def fragment(self, data: dict[str, Any]) -> str:
        uptime = datetime.timedelta(seconds=int(data["uptimeSeconds"]))
        parts = [
            f'<p class="meta">Butler {escape(data["version"])}, up {uptime}, as of {escape(data["now"])}</p>',
            _section("Connections", _connections_table(data["connections"])),
            _section("Recent alerts", _alerts_html(data["alerts"])),
            _section("Schedules", _schedules_html(data["schedules"])),
            _section("Active users", _users_html(data["activeUsers"])),
            _section("UDP intake", _udp_html(data["udp"])),
            _section("Monitors", _monitors_html(data["monitors"])),
            '<details class="card"><summary><h2>Config</h2></summary>'
            '<p class="note">Passwords, tokens, keys and passphrases are masked; URLs show their origin '
            "and first path segment only.</p>" + self._config_html + "</details>",
        ]
        return "\n".join(parts)


def _qrs(name: str, where: str, qrs: QrsClient) -> dict[str, Any]:
    if qrs.last_error is not None:
        return _row(name, where, "down", qrs.last_error)
    if qrs.last_answer is not None:
        return _row(name, where, "ok", f"{qrs.calls} calls, last answer {_iso(qrs.last_answer)}")
    return _row(name, where, "idle", "not called yet")


def _row(name: str, target: str, state: str, detail: str) -> dict[str, Any]:
    return {"name": name, "target": target, "state": state, "detail": detail}


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _section(title: str, body: str) -> str:
    return f'<section class="card"><h2>{escape(title)}</h2>{body}</section>'


def _note(what: str) -> str:
    return f'<p class="note">{escape(what)}</p>'


def _state(state: str) -> str:
    return f'<span class="state {escape(state)}">{escape(state)}</span>'


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A table of already escaped cells; each cell is labelled for the narrow layout."""
    names = list(head)
    header = "".join(f"<th>{escape(name)}</th>" for name in names)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td data-label="{escape(name)}">{cell}</td>' for name, cell in zip(names, row, strict=True)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _connections_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ("", "to", "state", ""),
        (
            (escape(r["name"]), escape(r["target"]), _state(r["state"]), escape(str(r["detail"])))
            for r in rows
        ),
    )


def _alerts_html(alerts: dict[str, Any] | None) -> str:
    if alerts is None:
        return _note("No alert channel is on.")
    recent = alerts["recent"]
    if not recent:
        return _note("No alert yet.")
    rows = []
    for alert in recent:
        what = alert.get("taskName") or alert.get("serviceName") or ""
        where = alert.get("appName") or alert.get("host") or ""
        deliveries = "".join(_delivery(d) for d in alert["deliveries"])
        rows.append(
            (
                escape(alert["event"]),
                f'<span class="name">{escape(what)}</span><br><small>{escape(where)}</small>',
                f'<ul class="deliveries">{deliveries}</ul>',
            )
        )
    note = _note(f"Newest first; the latest {alerts['shown']} at most.")
    return note + _table(("event", "task", "deliveries"), rows)


def _delivery(delivery: dict[str, Any]) -> str:
    text = f"{delivery['channel']} {delivery['target']}"
    error = f' <small class="error">{escape(delivery["lastError"])}</small>' if delivery["lastError"] else ""
    button = (
        f' <button class="retry" data-id="{escape(delivery["id"])}">retry</button>'
        if delivery["state"] == "dead"
        else ""
    )
    return (
        f'<li data-delivery="{escape(delivery["id"])}">{_state(delivery["state"])} {escape(text)}'
        f"{error}{button}</li>"
    )


def _schedules_html(schedules: dict[str, Any] | None) -> str:
    if schedules is None:
        return _note("The scheduler is off.")
    rows = []
    for entry in schedules["shown"]:
        last = entry["lastFire"]
        last_text = f"{last['fired']} {last['outcome']}" if last is not None else "never"
        state = "problem" if entry["problem"] else entry["state"] or "stopped"
        rows.append(
            (
                f'<span class="name">{escape(entry["name"])}</span>',
                f"<code>{escape(entry['cron'])}</code>",
                _state(state) + (f" <small>{escape(entry['problem'])}</small>" if entry["problem"] else ""),
                escape(last_text.replace("T", " ")),
                escape(entry["nextFire"] or "—"),
            )
        )
    count = schedules["count"]
    note = f"{count} schedules, {schedules['running']} running, {schedules['fires']} fires since start-up"
    if count > len(rows):
        note += f"; the {len(rows)} firing soonest are shown"
    return _note(note + ".") + _table(("schedule", "cron", "state", "last fire", "next fire"), rows)


def _users_html(per_host: Mapping[str, int] | None) -> str:
    if per_host is None:
        return _note("Butler.udpServerConfig is off: active users are counted from the proxies' events.")
    if not per_host:
        return _note("No active user.")
    return _table(("proxy", "users"), ((escape(host), str(count)) for host, count in per_host.items()))


def _counts(counts: Mapping[str, Any]) -> str:
    """Counters, nested ones flattened to ``name.sub``."""
    items: list[str] = []
    for name, value in counts.items():
        if isinstance(value, Mapping):
            items.extend(f"{name}.{sub} {v}" for sub, v in value.items())
        else:
            items.append(f"{name} {value}")
    return '<ul class="counts">' + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>"


def _udp_html(udp: dict[str, Any] | None) -> str:
    if udp is None:
        return _note("Butler.udpServerConfig.enable is false.")
    rows = [
        (escape(name), _counts(udp[key] or {}))
        for name, key in (("task events", "taskEvents"), ("session events", "sessionEvents"))
    ]
    summary = f"{udp['taskEventsHandled']} task events handled, {udp['taskEventQueue']} queued."
    return _note(summary) + _table(("port", "counters"), rows)


def _monitors_html(monitors: dict[str, Any] | None) -> str:
    if monitors is None:
        return _note("No monitor is on.")
    parts = []
    runners = monitors["runners"]
    if runners:
        parts.append(
            _table(
                ("monitor", "state", "last run", "next run", ""),
                (
                    (
                        escape(name),
                        _state("down" if r["failingInARow"] else "ok" if r["runs"] else "idle"),
                        escape((r["lastRun"] or "—").replace("T", " ")),
                        escape((r["nextRun"] or "—").replace("T", " ")),
                        escape(r["lastError"] or ""),
                    )
                    for name, r in runners.items()
                ),
            )
        )
    hosts = monitors.get("services")
    if hosts:
        rows = [
            (escape(host), " ".join(f"{_state(_service_state(s))} {escape(n)}" for n, s in found.items()))
            for host, found in hosts.items()
        ]
        parts.append("<h3>Windows services</h3>" + _table(("node", "services"), rows))
    licence = monitors.get("serverLicense")
    if licence is not None:
        days = licence["daysUntilExpiry"]
        state = "down" if licence["expired"] else "ok"
        text = f"expires {licence['expiryDate']}, {days} days left" if days is not None else "no expiry"
        parts.append(f"<h3>Server licence</h3><p>{_state(state)} {escape(text)}</p>")
    return "".join(parts) or _note("The monitors have not run yet.")


def _service_state(status: str) -> str:
    # A disabled service is the admin's choice (the app migration service on a rim node), not a fault.
    return {"running": "ok", "disabled": "off"}.get(status.lower(), "down")


def _config_table(rows: list[tuple[str, str]]) -> str:
    return _table(("key", "value"), ((escape(path), escape(shown)) for path, shown in rows))


_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: .6em 1em; display: flex; justify-content: space-between;
  align-items: center; flex-wrap: wrap; gap: .5em; }
header h1 { font-size: 1.2em; margin: 0; }
main { padding: .5em; max-width: 72em; margin: auto; }
.card { background: #fff; border-radius: 6px; padding: .6em .9em; margin: .6em 0;
  box-shadow: 0 1px 2px rgba(0,0,0,.1); overflow-wrap: break-word; }
h2 { font-size: 1.05em; margin: .2em 0 .5em; display: inline-block; }
h3 { font-size: .95em; margin: .8em 0 .3em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3em .4em; border-bottom: 1px solid #e3e5ea; vertical-align: top; }
th { font-weight: 600; color: #555d6e; }
.state { display: inline-block; border-radius: 3px; padding: 0 .4em; font-size: .85em; color: #fff;
  background: #7a8294; }
.state.ok, .state.delivered, .state.started { background: #2e7d32; }
.state.down, .state.dead, .state.problem { background: #c62828; }
.state.warn, .state.pending, .state.rateLimited { background: #ef6c00; }
.note, .meta { color: #555d6e; font-size: .9em; margin: .2em 0 .5em; }
.error { color: #c62828; }
ul.deliveries, ul.counts { list-style: none; margin: 0; padding: 0; }
ul.counts li { display: inline-block; margin-right: 1em; }
button { font: inherit; font-size: .85em; padding: .1em .6em; cursor: pointer; }
#message { font-size: .9em; }
form.login label { display: block; margin: .4em 0; }
form.login input { font: inherit; width: 100%; box-sizing: border-box; padding: .3em; }
@media (max-width: 640px) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; box-sizing: border-box; }
  tr { border-bottom: 1px solid #e3e5ea; padding: .3em 0; }
  td { border: 0; padding: .1em 0; }
  td:empty { display: none; }
  td[data-label]:not([data-label=""])::before { content: attr(data-label) ": "; color: #555d6e; }
}
"""

# Relative URLs: the page works behind a proxy that serves Butler below a path of its own.
_SCRIPT = """
(function () {
  var content = document.getElementById("content");
  var message = document.getElementById("message");
  var logout = document.getElementById("logout");
  if (logout !== null) {
    logout.addEventListener("click", function () {
      fetch("status/logout", { method: "POST" }).then(function () { location.href = "status/login"; });
    });
  }
  var open = function () { var d = content.querySelector("details"); return d !== null && d.open; };
  function refresh() {
    var wasOpen = open();
    return fetch("status?fragment=true", { headers: { Accept: "text/html" } })
      .then(function (r) {
        // A login that expired or was revoked: back to the form.
        if (r.status === 401 && logout !== null) location.href = "status/login";
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        content.innerHTML = html;
        var d = content.querySelector("details");
        if (d !== null) d.open = wasOpen;
      })
      .catch(function (e) { message.textContent = "refresh failed: " + e.message; });
  }
  content.addEventListener("click", function (event) {
    var button = event.target.closest("button.retry");
    if (button === null) return;
    button.disabled = true;
    fetch("v4/alerts/" + encodeURIComponent(button.dataset.id) + "/retry", { method: "POST" })
      .then(function (r) { return r.json().then(function (body) { return [r.status, body]; }); })
      .then(function (answer) {
        message.textContent = answer[0] === 202 ? "sent again" : (answer[1].message || "HTTP " + answer[0]);
        return refresh();
      })
      .catch(function (e) { message.textContent = "retry failed: " + e.message; button.disabled = false; });
  });
  setInterval(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_MS))


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _policy(script: str) -> str:
    """Only the page's own style and ``script`` run, by their digests: were a value ever rendered unescaped,
    a script it carried would still not run. Nothing is loaded from elsewhere; no site may frame the page."""
    return (
        f"default-src 'none'; connect-src 'self'; style-src {_digest(_STYLE)}; script-src {_digest(script)}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


CONTENT_SECURITY_POLICY = _policy(_SCRIPT)

_LOGOUT_BUTTON = '<button id="logout" type="button">log out</button>'

# The form is sent by the script, with the token in the Authorization header, so that the token is checked
# as on any call (scope, expiry, allow-list, rate limits, audit) before the cookie is set.
_LOGIN_SCRIPT = """
(function () {
  var message = document.getElementById("message");
  document.getElementById("login").addEventListener("submit", function (event) {
    event.preventDefault();
    var token = document.getElementById("token").value.trim();
    message.textContent = "";
    fetch("login", { method: "POST", headers: { Authorization: "Bearer " + token } })
      .then(function (r) {
        if (r.status === 204) { location.href = "../status"; return null; }
        return r.json().then(function (body) { message.textContent = body.message || "HTTP " + r.status; });
      })
      .catch(function (e) { message.textContent = "log in failed: " + e.message; });
  });
})();
"""

#: The login form's policy: as the page's, with its own script.
LOGIN_CONTENT_SECURITY_POLICY = _policy(_LOGIN_SCRIPT)

_LOGIN_FORM = """<form id="login" class="login card">
<label for="token">An API token with the admin scope (and alerts, to send dead letters again):</label>
<input id="token" type="password" autocomplete="current-password" required>
<p><button type="submit">log in</button> <span id="message" class="error" role="status"></span></p>
</form>"""


def login_page(version: str) -> str:
    """The status page's login form (``GET /status/login``)."""
    return _DOCUMENT.format(
        title="Butler status: log in",
        style=_STYLE,
        version=escape(version),
        header="",
        main="",
        body=_LOGIN_FORM,
        script=_LOGIN_SCRIPT,
    )


#: The status page and its login form: ``header`` follows the heading, ``main`` holds ``main``'s attributes.
_DOCUMENT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>Butler {version}</h1>{header}</header>
<main{main}>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""
