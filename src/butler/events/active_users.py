"""Active users, from the proxy's session events.

A user is a user directory and a user id (compared case-insensitively, as Sense does), so the same id in
two directories is two users. Each proxy host keeps its own sessions: ``Start session`` and ``Open
connection`` mark the user active on that host, ``Stop session`` ends it there, and any event refreshes
it. A session that has seen no event for ``expiry_seconds`` is dropped, so a proxy that dies without
sending ``Stop session`` does not leave its users counted. No broker is involved: the count is kept
here and read by the REST API and the consumers of the event bus alike; every change is published to the
bus as ``ActiveUsersChanged``.

With a ``state_file``, the sessions are saved (after changes, at most once per sweep, and at shutdown)
and read back at start-up, so a restart of Butler does not forget who is logged in.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from butler.events.bus import EventBus
from butler.events.parsing import SessionEvent

log = logging.getLogger("butler.activeusers")

UserKey = tuple[str, str]  # (directory, user id), case-folded

#: Sessions kept at most: a flood of invented logins cannot grow memory without bound.
MAX_SESSIONS = 200_000


class TooManySessions(Exception):
    """A new session was refused: ``max_sessions`` are kept already."""


@dataclass(frozen=True)
class ActiveUsersChanged:
    """Published when who is active changed; consumers read the figures from ``users`` when they act,
    so a burst of changes can be told as one."""

    users: ActiveUsers = field(repr=False)


@dataclass
class _Session:
    directory: str
    user_id: str
    since: float
    last_seen: float


def _iso(epoch: float) -> str:
    return (
        datetime.datetime.fromtimestamp(epoch, datetime.UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


@dataclass
class ActiveUsers:
    """Sessions per proxy host, and the active users they make."""

    expiry_seconds: float = 4 * 3600
    state_file: Path | None = None
    max_sessions: int = MAX_SESSIONS
    #: Where every change is published; None: nobody is told.
    bus: EventBus | None = None
    _hosts: dict[str, dict[UserKey, _Session]] = field(default_factory=dict)
    _sweeper: asyncio.Task[None] | None = None
    _unsaved: bool = False

    def start(self) -> None:
        restored = self.load()
        if restored:
            log.info("%d user sessions restored from %s", restored, self.state_file)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
            await self.save()

    def load(self) -> int:
        """Read the sessions an earlier run saved, but those expired meanwhile; how many were read."""
        if self.state_file is None or not self.state_file.is_file():
            return 0
        try:
            rows = orjson.loads(self.state_file.read_bytes())
        except (OSError, ValueError) as exc:
            log.warning("cannot read the saved user sessions in %s: %s", self.state_file, exc)
            return 0
        limit = time.time() - self.expiry_seconds
        restored = 0
        for row in rows if isinstance(rows, list) else []:
            try:
                host, directory, user_id, since, last_seen = row
                since, last_seen = float(since), float(last_seen)
            except (TypeError, ValueError):
                continue
            if last_seen >= limit and all(isinstance(v, str) and v for v in (host, directory, user_id)):
                key = (directory.casefold(), user_id.casefold())
                self._hosts.setdefault(host.casefold(), {})[key] = _Session(
                    directory, user_id, since, last_seen
                )
                restored += 1
        return restored

    async def save(self) -> None:
        """Write the sessions to ``state_file`` (in a thread; replaced atomically, so never half written)."""
        if self.state_file is None:
            return
        rows = [
            [host, session.directory, session.user_id, session.since, session.last_seen]
            for host, sessions in self._hosts.items()
            for session in sessions.values()
        ]
        self._unsaved = False
        try:
            await asyncio.to_thread(_replace, self.state_file, orjson.dumps(rows))
        except OSError as exc:
            self._unsaved = True
            log.warning("cannot save the user sessions to %s: %s", self.state_file, exc)

    def apply(self, event: SessionEvent, now: float | None = None) -> bool:
        """Take one event; True when it changed who is active."""
        now = time.time() if now is None else now
        self._unsaved = True
        host = event.host.casefold()
        key = (event.user_directory.casefold(), event.user_id.casefold())
        sessions = self._hosts.get(host, {})
        session = sessions.get(key)
        if event.command == "Stop session":
            if session is None:
                return False
            del sessions[key]
            if not sessions:
                del self._hosts[host]
        elif session is not None:
            session.last_seen = now
            return False
        elif event.command in ("Start session", "Open connection"):
            # Proxies are few, so counting the sessions costs little, and only for a new session.
            if sum(len(kept) for kept in self._hosts.values()) >= self.max_sessions:
                raise TooManySessions(f"{self.max_sessions} sessions are kept already")
            self._hosts.setdefault(host, {})[key] = _Session(event.user_directory, event.user_id, now, now)
        else:
            return False
        self._changed()
        return True

    def expire(self, now: float | None = None) -> int:
        """Drop sessions without an event for ``expiry_seconds``; how many were dropped."""
        limit = (time.time() if now is None else now) - self.expiry_seconds
        dropped = 0
        for host, sessions in list(self._hosts.items()):
            for key in [k for k, s in sessions.items() if s.last_seen < limit]:
                del sessions[key]
                dropped += 1
            if not sessions:
                del self._hosts[host]
        if dropped:
            log.info("%d user sessions expired after %g s without an event", dropped, self.expiry_seconds)
            self._changed()
        return dropped

    def count(self, host: str | None = None) -> int:
        return len({key for _, sessions in self._on(host) for key in sessions})

    def counts_per_host(self) -> dict[str, int]:
        return {host: len(sessions) for host, sessions in sorted(self._hosts.items())}

    def users(self, host: str | None = None) -> list[dict[str, Any]]:
        """Each active user once: directory, id, the proxy hosts with a session, since and last seen."""
        merged: dict[UserKey, dict[str, Any]] = {}
        for name, sessions in self._on(host):
            for key, session in sessions.items():
                user = merged.get(key)
                if user is None:
                    merged[key] = {
                        "userDirectory": session.directory,
                        "userId": session.user_id,
                        "proxyHosts": [name],
                        "since": session.since,
                        "lastSeen": session.last_seen,
                    }
                else:
                    user["proxyHosts"].append(name)
                    user["since"] = min(user["since"], session.since)
                    user["lastSeen"] = max(user["lastSeen"], session.last_seen)
        return [
            user
            | {
                "proxyHosts": sorted(user["proxyHosts"]),
                "since": _iso(user["since"]),
                "lastSeen": _iso(user["lastSeen"]),
            }
            for _, user in sorted(merged.items())
        ]

    def user_ids(self, host: str | None = None) -> list[str]:
        """The user ids of the active users, sorted (an id active in two directories appears twice).

        Published after every change, so it is built from the keys alone, not from ``users``."""
        ids: dict[UserKey, str] = {}
        for _, sessions in self._on(host):
            for key, session in sessions.items():
                ids.setdefault(key, session.user_id)
        return [ids[key] for key in sorted(ids)]

    def _on(self, host: str | None) -> list[tuple[str, dict[UserKey, _Session]]]:
        """The sessions of every proxy host, or of ``host`` only."""
        if host is None:
            return list(self._hosts.items())
        name = host.casefold()
        return [(name, self._hosts[name])] if name in self._hosts else []

    def _changed(self) -> None:
        if self.bus is not None:
            self.bus.publish(ActiveUsersChanged(self))

    async def _sweep_forever(self) -> None:
        period = max(0.1, min(60.0, self.expiry_seconds / 4))
        while True:
            await asyncio.sleep(period)
            self.expire()
            if self._unsaved:
                await self.save()


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
