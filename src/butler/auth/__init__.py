"""Who may call the REST API when ``Butler.restServerConfig.auth`` is on: API tokens and client certificates,
each holding scopes, one scope per group of endpoints (``x-scope`` in ``openapi.yaml``)."""

from __future__ import annotations

#: Every scope, each the operations of one group: ``status`` the ping, conversions and user counts;
#: ``tasks:start`` task starts and their status; ``messaging`` MQTT, Slack and New Relic posts; ``admin``
#: licence releases (and what other admin endpoints come).
SCOPES: tuple[str, ...] = (
    "status",
    "tasks:start",
    "apps",
    "kv:read",
    "kv:write",
    "files",
    "messaging",
    "schedules",
    "alerts",
    "admin",
)

#: The header that carries a token for callers that cannot set ``Authorization`` (``auth.tokenHeader``).
DEFAULT_TOKEN_HEADER = "X-Butler-Token"

#: The cookie in which the status page's login (``/status/login``) keeps a browser's token; it is a
#: credential only for the routes the page calls (``x-session-cookie`` in ``openapi.yaml``).
SESSION_COOKIE = "butler_session"
#: Where a browser logs in to the status page.
LOGIN_PATH = "/status/login"

__all__ = ["DEFAULT_TOKEN_HEADER", "LOGIN_PATH", "SCOPES", "SESSION_COOKIE"]
