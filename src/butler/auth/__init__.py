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

__all__ = ["DEFAULT_TOKEN_HEADER", "SCOPES"]
