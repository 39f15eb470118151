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

With ``sharing`` (several Butlers on one Redis), every change is also written to Redis and the sessions
are read back from there whenever another Butler changed them (``events/sharing.py``), so that every
Butler answers the same users; this Butler's changes not yet written stay on top of what it read.
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
from butler.events.sharing import EventSharing, SharingUnavailable
from butler.stopping import cancel_and_wait

log = logging.getLogger("butler.activeusers")

UserKey = tuple[str, str]  # (directory, user id), case-folded

#: Sessions kept at most: a flood of invented logins cannot grow memory without bound.
MAX_SESSIONS = 200_000
#: How often the sessions are written to and read from a shared Redis.
SYNC_SECONDS = 0.5
#: With a shared Redis, a session's last event is moved on in steps of this many seconds at most.
SEEN_STEP = 30.0


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
    #: The Redis the sessions are shared through; None: this Butler's own.
    sharing: EventSharing | None = None
    _hosts: dict[str, dict[UserKey, _Session]] = field(default_factory=dict)
    _sweeper: asyncio.Task[None] | None = None
    _unsaved: bool = False
    #: Changes not yet written to Redis: (host, directory, user id) → the session, or None when it ended.
    _unshared: dict[tuple[str, str, str], _Session | None] = field(default_factory=dict)
    #: Write every session before reading again (at start-up, and when Redis is back after a failure).
    _write_all: bool = True
    _version: str | None = None
    _syncer: asyncio.Task[None] | None = None

    def start(self) -> None:
        restored = self.load()
        if restored:
            log.info("%d user sessions restored from %s", restored, self.state_file)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        if self.sharing is not None:
            self.sharing.on_back.append(self._rewrite)
            self._syncer = asyncio.get_running_loop().create_task(self._sync_forever())

    def _rewrite(self) -> None:
        self._write_all = True

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync()
            except SharingUnavailable:
                self._write_all = True  # Redis may come back empty: what this Butler knows goes back
            except Exception:  # a fault here must not end sharing for good
                log.exception("user sessions not shared")
            await asyncio.sleep(SYNC_SECONDS)

    async def sync(self) -> None:
        """Write this Butler's changes to Redis, then read every Butler's when they changed."""
        sharing = self.sharing
        assert sharing is not None
        if self._write_all:
            for host, sessions in self._hosts.items():
                for key, session in sessions.items():
                    self._unshared.setdefault((host, *key), session)
        pending, self._unshared = self._unshared, {}
        write_all, self._write_all = self._write_all, False
        if pending:
            put = {
                _field(k): orjson.dumps([s.directory, s.user_id, s.since, s.last_seen])
                for k, s in pending.items()
                if s is not None
            }
            try:
                await sharing.write_sessions(put, [_field(k) for k, s in pending.items() if s is None])
            except SharingUnavailable:
                self._write_all = self._write_all or write_all
                for k, s in pending.items():
                    self._unshared.setdefault(k, s)
                raise
        version = await sharing.sessions_version()
        if version is not None and version == self._version:
            return
        version, rows = await sharing.read_sessions()
        hosts: dict[str, dict[UserKey, _Session]] = {}
        for name, row in rows.items():
            try:
                host, directory_key, user_key = name.split("\x1f")
                directory, user_id, since, last_seen = row
                session = _Session(str(directory), str(user_id), float(since), float(last_seen))
            except (TypeError, ValueError):
                continue
            hosts.setdefault(host, {})[(directory_key, user_key)] = session
        for (host, directory_key, user_key), unshared in self._unshared.items():
            if unshared is None:
                hosts.get(host, {}).pop((directory_key, user_key), None)
            else:
                hosts.setdefault(host, {})[(directory_key, user_key)] = unshared
        hosts = {host: sessions for host, sessions in hosts.items() if sessions}
        changed = _who(hosts) != _who(self._hosts)
        self._hosts = hosts
        self._version = version
        if changed:
            self._changed()

    async def stop(self) -> None:
        if self._syncer is not None:
            await cancel_and_wait([self._syncer])
            self._syncer = None
        if self._sweeper is not None:
            await cancel_and_wait([self._sweeper])
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
            self._share(host, key, None)
        elif session is not None:
            # Shared, a session's last event is kept in steps: each step is a write to Redis and a read
            # of every session by every Butler, and expiry needs no finer time.
            if self.sharing is None or now - session.last_seen >= min(SEEN_STEP, self.expiry_seconds / 4):
                session.last_seen = now
                self._share(host, key, session)
            return False
        elif event.command in ("Start session", "Open connection"):
            # Proxies are few, so counting the sessions costs little, and only for a new session.
            if sum(len(kept) for kept in self._hosts.values()) >= self.max_sessions:
                raise TooManySessions(f"{self.max_sessions} sessions are kept already")
            session = _Session(event.user_directory, event.user_id, now, now)
            self._hosts.setdefault(host, {})[key] = session
            self._share(host, key, session)
        else:
            return False
        self._changed()
        return True

    def _share(self, host: str, key: UserKey, session: _Session | None) -> None:
        if self.sharing is not None:
            self._unshared[(host, *key)] = session

    def expire(self, now: float | None = None) -> int:
        """Drop sessions without an event for ``expiry_seconds``; how many were dropped."""
        limit = (time.time() if now is None else now) - self.expiry_seconds
        dropped = 0
        for host, sessions in list(self._hosts.items()):
            for key in [k for k, s in sessions.items() if s.last_seen < limit]:
                del sessions[key]
                self._share(host, key, None)
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


def _field(key: tuple[str, str, str]) -> str:
    """A session's field in the shared hash: host, directory and user id (case-folded)."""
    return "\x1f".join(key)


def _who(hosts: dict[str, dict[UserKey, _Session]]) -> dict[str, set[UserKey]]:
    return {host: set(sessions) for host, sessions in hosts.items()}


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
