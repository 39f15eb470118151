"""Who calls, and may they (``Butler.restServerConfig.auth``): an API token, sent as ``Authorization: Bearer``
or in the configured header, or a verified client certificate mapped to scopes; the route's ``x-scope`` must
be among the caller's. Routes without a scope (``/health``, ``/metrics``, the docs) are open.

401 without a credential or with one that is malformed, unknown, revoked or expired; 403 with one that lacks
the scope or is used from outside its allow-list. Answers and log lines name a token by its name, never its
value. Once the credential is verified (refused for its scope or not), ``context.caller`` is
``token <name>`` or ``certificate <subject>``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from hashlib import sha256
from typing import Any

from multidict import istr

from butler.auth import DEFAULT_TOKEN_HEADER, LOGIN_PATH, SESSION_COOKIE
from butler.auth.tokens import TOKEN_FORM, TokenRecord, TokenStore
from butler.config.settings import CertificateScopes
from butler.http.errors import HttpError
from butler.http.middleware import App, Connection, Context
from butler.http.ratelimit import RateLimiter
from butler.http.routing import Reply

log = logging.getLogger("butler.rest")

#: How often the last use of tokens is written to the store: once a minute tells used from unused.
TOUCH_SECONDS = 60.0
_MATCH = TOKEN_FORM.fullmatch
#: Looked up without folding its case again on every request.
_AUTHORIZATION = istr("Authorization")
_MALFORMED_HEADER = "Malformed Authorization header: expected 'Bearer <token>'"
_MALFORMED_TOKEN = "Malformed token: Butler tokens start with bt_ (butler token create)"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="Butler"'}
#: Names of subject attributes as ``ssl.getpeercert`` gives them, and as subjects are written in config.
_ATTRIBUTES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "emailAddress": "emailAddress",
    "domainComponent": "DC",
}


def unauthorized(message: str) -> HttpError:
    return HttpError(401, message, headers=_CHALLENGE)


def _attribute(name: str) -> str:
    name = name.strip()
    return name if name == "emailAddress" else name.upper()


def parse_subject(text: str) -> frozenset[tuple[str, str]]:
    """``CN=etl,O=Corp`` as a set of (attribute, value): the order of a certificate's subject is its
    issuer's choice, not the admin's."""
    pairs = set()
    for piece in text.split(","):
        name, sep, value = piece.partition("=")
        if sep:
            pairs.add((_attribute(name), value.strip()))
    return frozenset(pairs)


def peer_subject(peercert: dict[str, Any]) -> frozenset[tuple[str, str]]:
    pairs = set()
    for rdn in peercert.get("subject", ()):
        for name, value in rdn:
            pairs.add((_attribute(_ATTRIBUTES.get(name, name)), value))
    return frozenset(pairs)


class Verified:
    """A token verified on a connection: the ``Authorization`` header that sent it, its digest and the record
    found."""

    __slots__ = ("caller", "digest", "record", "sent")

    def __init__(self, sent: str, digest: str, record: TokenRecord, caller: str) -> None:
        self.sent = sent
        self.digest = digest
        self.record = record
        self.caller = caller


class Authentication:
    def __init__(
        self,
        app: App,
        tokens: TokenStore,
        header: str = DEFAULT_TOKEN_HEADER,
        certificates: tuple[CertificateScopes, ...] = (),
        limiter_for: Callable[[int], RateLimiter] = RateLimiter,
    ) -> None:
        self.app = app
        #: Makes the limiter of a per-token limit: counted in Redis when Butlers share one, so that a
        #: token's limit holds whichever Butler a load balancer picks.
        self.limiter_for = limiter_for
        self.tokens = tokens
        #: The store's lookup without I/O, where it has one; only tokens it found are remembered.
        self._find_now = tokens.find_now
        self.header = header
        self.certificates = {parse_subject(c.subject): c for c in certificates}
        self._limiters: dict[int, RateLimiter] = {}
        #: Tokens used since their last use was written; the first use is written at once.
        self._used: set[str] = set()
        self._touch_due = 0.0
        self._touching: set[asyncio.Task[None]] = set()

    def __call__(self, context: Context) -> Awaitable[Reply]:
        route = context.route
        assert route is not None
        scope = route.scope
        if scope is None:
            return self.app(context)
        request = context.request
        sent = request.headers.get(_AUTHORIZATION)
        connection = request.protocol
        if isinstance(connection, Connection):
            known = connection.credential
            # The store is asked on every request, so that a revoked token is refused at once; a client
            # that sends again the token it sent before on the same connection, whose record has not
            # changed since, is spared its hash and the checks already made.
            if (
                known is not None
                and known.sent == sent
                and self._find_now is not None
                and self._find_now(known.digest) is known.record
                and scope in known.record.scopes
            ):
                context.caller = known.caller
                self._used.add(known.record.name)
                if context.started >= self._touch_due:
                    self._touch_used()
                return self.app(context)
        # The usual form of the header is read without the steps that any other form needs (``_token``).
        if sent is not None and sent.startswith("Bearer "):
            # Its form is only checked when it is not found, to say which of the two is wrong.
            token = sent[7:]
        else:
            found = sent_token(request.headers, self.header)
            if found is None and route.session:
                found = self._session(context)
            if found is None:
                self._certificate(context, scope, route.session)
                return self.app(context)
            token = found
            sent = None
        token_digest = sha256(token.encode()).hexdigest()
        find_now = self._find_now
        if find_now is None:
            return self._looked_up(context, token, token_digest, scope)
        record = find_now(token_digest)
        counting = self._admit(context, record, token, token_digest, scope)
        if counting is not None:
            return self._counted(counting, context)
        if (
            sent is not None
            and record is not None
            and record.expires is None
            and not record.allow_ips
            and not record.rate_limit
            and isinstance(connection, Connection)
        ):
            # Nothing in the record can refuse the token later: no expiry, allow-list or limit of its own.
            connection.credential = Verified(sent, token_digest, record, context.caller or "")
        return self.app(context)

    async def _counted(self, counting: Awaitable[None], context: Context) -> Reply:
        await counting
        return await self.app(context)

    async def _looked_up(self, context: Context, token: str, token_digest: str, scope: str) -> Reply:
        counting = self._admit(context, await self.tokens.find(token_digest), token, token_digest, scope)
        if counting is not None:
            await counting
        return await self.app(context)

    def _session(self, context: Context) -> str | None:
        """The token the status page's login keeps in its cookie, if the browser sent it."""
        kept = context.request.cookies.get(SESSION_COOKIE)
        if kept is None:
            return None
        if _MATCH(kept) is None:
            raise unauthorized(f"Malformed {SESSION_COOKIE} cookie: log in again at {LOGIN_PATH}")
        return kept

    def _admit(
        self, context: Context, record: TokenRecord | None, token: str, token_digest: str, scope: str
    ) -> Awaitable[None] | None:
        """Refuse the token or admit it; what is left to await when its limit is counted in Redis."""
        if record is None:
            if not token.strip():
                raise unauthorized(_MALFORMED_HEADER)
            if _MATCH(token) is None:
                raise unauthorized(_MALFORMED_TOKEN)
            raise unauthorized("Unknown or revoked token")
        # Named from here on, so that the audit log says whose token was refused, not only its address.
        context.caller = f"token {record.name}"
        wall = time.time()
        if record.expires is not None and record.expired(wall):
            raise unauthorized(f"Token {record.name} has expired")
        if record.allow_ips and not record.allows(context.client_ip):
            raise HttpError(403, f"Token {record.name} may not be used from {context.client_ip}")
        if scope not in record.scopes:
            raise HttpError(
                403, f"Token {record.name} lacks scope {scope}, needed for {context.method} {context.path}"
            )
        self._used.add(record.name)
        if context.started >= self._touch_due:
            self._touch_used()
        if not record.rate_limit:
            return None
        limiter = self._limiters.get(record.rate_limit)
        if limiter is None:
            limiter = self._limiters[record.rate_limit] = self.limiter_for(record.rate_limit)
        if limiter.shared:
            return self._count(limiter, record.name, context)
        try:
            limiter.hit(record.name)
        except HttpError:
            _over_limit(record.name, context)
            raise
        return None

    async def _count(self, limiter: RateLimiter, name: str, context: Context) -> None:
        try:
            await limiter.count(name)
        except HttpError:
            _over_limit(name, context)
            raise

    def _touch_used(self) -> None:
        """Write the last use of the tokens used since the last write (at most once a minute)."""
        wall = time.time()
        for name in self._used:
            task = asyncio.get_running_loop().create_task(self._touch(name, wall))
            self._touching.add(task)
            task.add_done_callback(self._touching.discard)
        self._used.clear()
        self._touch_due = time.perf_counter() + TOUCH_SECONDS

    async def _touch(self, name: str, when: float) -> None:
        try:
            await self.tokens.touch(name, when)
        except Exception as exc:  # a last-used time not written is no reason to refuse the request
            log.warning("Last use of token %s not recorded: %s", name, exc)

    def _certificate(self, context: Context, scope: str, session: bool = False) -> None:
        transport = context.request.transport
        peercert = transport.get_extra_info("peercert") if transport is not None else None
        if not peercert:
            login = f", or log in at {LOGIN_PATH}" if session else ""
            raise unauthorized(
                f"Authentication needed: send a token as 'Authorization: Bearer <token>' or {self.header}"
                + login
            )
        subject = peer_subject(peercert)
        mapped = self.certificates.get(subject)
        shown = ",".join(f"{name}={value}" for name, value in sorted(subject))
        context.caller = f"certificate {mapped.subject if mapped is not None else shown}"
        if mapped is None:
            raise HttpError(403, f"Certificate {shown} holds no scopes, and {scope} is needed")
        if scope not in mapped.scopes:
            needed = f"needed for {context.method} {context.path}"
            raise HttpError(403, f"Certificate {mapped.subject} lacks scope {scope}, {needed}")


def sent_token(headers: Mapping[str, str], header: str) -> str | None:
    """The token a request sends, as ``Authorization: Bearer`` or in ``header``; None without either. 401
    for a malformed one."""
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise unauthorized(_MALFORMED_HEADER)
        token = value.strip()
    else:
        sent = headers.get(header)
        if sent is None:
            return None
        token = sent.strip()
    if TOKEN_FORM.fullmatch(token) is None:
        raise unauthorized(_MALFORMED_TOKEN)
    return token


def _over_limit(name: str, context: Context) -> None:
    log.warning("Rate limit of token %s exceeded: %s %s", name, context.method, context.path)
