"""Dates as QRS writes them: ISO 8601 in UTC with milliseconds and ``Z``; 1753-01-01 for never."""

from __future__ import annotations

import datetime

NEVER = "1753-01-01T00:00:00.000Z"


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.datetime.now(datetime.UTC))


def instant(text: str) -> datetime.datetime:
    """An ISO date or date-time as an aware instant (UTC when no zone is given); ValueError if not one."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
