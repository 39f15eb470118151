"""Sending e-mail alerts over SMTP, through one connection kept open across messages.

Upstream opened a new connection (and verified it) for every message; here one connection per sender is
reused for as long as the server keeps it, and opened again when the server dropped it.
Messages on one connection go one after the other, as SMTP requires.

TLS, as the settings say: ``secure`` is TLS from the first byte; otherwise STARTTLS when the
server offers it, unless ``ignore_tls``; ``require_tls`` refuses to send without it. Upstream passed these
two to a place where they had no effect; here they are honoured. ``reject_unauthorized`` verifies
the server's certificate against ``server_name`` (the host when unset), which is also the name sent for SNI.

Failures are ``DeliveryError``: retryable when the server could not be reached or answered 4xx (it asks to
try later); not retryable when it answered 5xx or showed a setting that needs a person (no STARTTLS with
``require_tls``, a certificate that does not verify, authentication refused), since every retry would fail
the same way until someone changes the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib

from butler.alerts.model import DeliveryError
from butler.config.alerts import SmtpSettings

log = logging.getLogger("butler.alerts.smtp")

#: nodemailer's priority headers, which upstream's mails carry.
PRIORITY_HEADERS = {
    "high": ("1 (Highest)", "High", "High"),
    "normal": ("3 (Normal)", "Normal", "Normal"),
    "low": ("5 (Lowest)", "Low", "Low"),
}


class SmtpSender:
    """Sends e-mail payloads (``{"from", "to", "subject", "html", "text", "priority", "attachment"}``)."""

    def __init__(self, settings: SmtpSettings, timeout: float, *, ca_file: str | Path | None = None) -> None:
        """``timeout``: seconds for connecting and for each SMTP command. ``ca_file``: the certificates to
        trust instead of the system's, for servers with a private CA."""
        self.settings = settings
        self.timeout = timeout
        self.ca_file = ca_file
        self._client: aiosmtplib.SMTP | None = None
        self._lock = asyncio.Lock()

    @property
    def server(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def send(self, payload: dict[str, Any], ident: str = "") -> str:
        """Send one message; returns the server's answer to it (``"250 ..."``). ``ident``, the delivery's
        id, becomes the Message-ID, so that a repeat after a lost answer is recognisable as one."""
        try:
            # Composing a message costs milliseconds of CPU: done beside the event loop, not on it.
            message = await asyncio.to_thread(_composed, payload, ident)
            sender = _envelope_sender(payload["from"])
            recipient = str(payload["to"])
        except (ValueError, TypeError, KeyError) as exc:
            raise DeliveryError(f"The e-mail cannot be composed: {exc!r}", retryable=False) from exc
        async with self._lock:
            for attempt in (1, 2):
                client = await self._connection()
                try:
                    return await self._transaction(client, message, sender, recipient)
                except _Dropped as exc:
                    self._drop()
                    # A connection the server closed while idle shows only when it is used; the message
                    # was not taken, so it goes once more, over a new connection.
                    if attempt == 2:
                        raise DeliveryError(
                            f"SMTP server {self.server} closed the connection: {exc}", retryable=True
                        ) from exc
                except DeliveryError:
                    raise
                except aiosmtplib.SMTPServerDisconnected as exc:
                    self._drop()
                    raise DeliveryError(
                        f"SMTP server {self.server} closed the connection: {exc}", retryable=True
                    ) from exc
                except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
                    self._drop()
                    raise DeliveryError(
                        f"SMTP server {self.server} did not answer in time", retryable=True
                    ) from exc
                except (aiosmtplib.SMTPException, OSError) as exc:
                    self._drop()
                    raise DeliveryError(f"SMTP server {self.server}: {exc}", retryable=True) from exc
                except asyncio.CancelledError:
                    # Cut off mid-conversation, the connection is in no state to carry the next message.
                    self._drop()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Say goodbye to the server, if connected."""
        async with self._lock:
            client, self._client = self._client, None
            if client is not None and client.is_connected:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                    await client.quit(timeout=min(self.timeout, 5))
                client.close()

    # --- the transaction ---------------------------------------------------------------------------------

    async def _transaction(self, client: aiosmtplib.SMTP, message: bytes, sender: str, recipient: str) -> str:
        try:
            try:
                await client.mail(sender)
            except aiosmtplib.SMTPServerDisconnected as exc:
                raise _Dropped(str(exc)) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                if exc.code == 421:  # the server's goodbye to an idle connection, read only now
                    raise _Dropped(f"{exc.code} {exc.message}") from exc
                raise
            await client.rcpt(recipient)
            response = await client.data(message)
        except aiosmtplib.SMTPSenderRefused as exc:
            await self._reset(client)
            raise _refused(f"SMTP server {self.server} refused the sender {sender}", exc) from exc
        except aiosmtplib.SMTPRecipientRefused as exc:
            await self._reset(client)
            raise _refused(f"SMTP server {self.server} refused the recipient {recipient}", exc) from exc
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset(client)
            raise _refused(f"SMTP server {self.server} refused the message to {recipient}", exc) from exc
        return f"{response.code} {response.message}"

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        # The refused transaction must end before the next message can use the connection.
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    # --- the connection ----------------------------------------------------------------------------------

    async def check(self) -> None:
        """Connect, start TLS and log in as for a message, keeping the connection for the next one; raises
        DeliveryError saying what failed."""
        async with self._lock:
            await self._connection()

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        self._drop()
        client = await self._connect()
        self._client = client
        return client

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self.settings
        name = settings.server_name or settings.host
        try:
            sock = await self._open_socket()
        except TimeoutError as exc:
            raise DeliveryError(f"Timed out connecting to SMTP server {self.server}", retryable=True) from exc
        except OSError as exc:
            raise DeliveryError(
                f"Cannot connect to SMTP server {self.server}: {exc}", retryable=True
            ) from exc
        # The socket is connected here already, so the name given to aiosmtplib serves only for TLS:
        # SNI and the certificate check.
        client = aiosmtplib.SMTP(
            hostname=name,
            sock=sock,
            timeout=self.timeout,
            use_tls=settings.secure,
            start_tls=False,
            tls_context=self._tls_context(),
        )
        try:
            await client.connect()
            await client.ehlo()
            if not settings.secure:
                await self._start_tls(client, name)
            if settings.auth_enable:
                await self._login(client)
        except DeliveryError:
            client.close()
            raise
        except BaseException as exc:
            client.close()
            sock.close()
            raise self._connect_error(exc) from exc
        log.debug("Connected to SMTP server %s", self.server)
        return client

    async def _open_socket(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            addresses = await loop.getaddrinfo(
                self.settings.host, self.settings.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            error: OSError = OSError(f"no address for {self.settings.host}")
            for family, kind, proto, _, address in addresses:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address)
                except OSError as exc:
                    sock.close()
                    error = exc
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
            raise error

    async def _start_tls(self, client: aiosmtplib.SMTP, name: str) -> None:
        settings = self.settings
        if settings.ignore_tls:
            return
        if client.supports_extension("starttls"):
            await client.starttls(server_hostname=name, tls_context=self._tls_context())
            await client.ehlo()  # what the server offers may change once the channel is encrypted
        elif settings.require_tls:
            raise DeliveryError(
                f"SMTP server {self.server} does not offer STARTTLS, and "
                "emailNotification.smtp.tls.requireTLS is true: no mail is sent without TLS",
                retryable=False,
            )

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        settings = self.settings
        offered = client.server_auth_methods
        # One mechanism, the first the server offers in nodemailer's order: trying each after a refusal
        # (aiosmtplib's login) costs as many failed logins per attempt, which servers count for lockouts.
        method = next((m for m in ("plain", "login", "cram-md5") if m in offered), None)
        if method is None:
            raise DeliveryError(
                f"SMTP server {self.server} offers no login Butler can use "
                f"(AUTH {' '.join(offered).upper() or 'not offered'}; PLAIN, LOGIN or CRAM-MD5 needed), "
                "and emailNotification.smtp.auth.enable is true",
                retryable=False,
            )
        login = {"plain": client.auth_plain, "login": client.auth_login, "cram-md5": client.auth_crammd5}[
            method
        ]
        try:
            await login(settings.user, settings.password)
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"SMTP server {self.server} refused authentication as {settings.user!r}: "
                f"{exc.code} {exc.message}",
                retryable=exc.code < 500,
            ) from exc

    def _tls_context(self) -> ssl.SSLContext:
        if self.settings.reject_unauthorized:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        else:
            # Upstream's default (rejectUnauthorized: false): encrypted, whoever the server is.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect_error(self, exc: BaseException) -> DeliveryError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return DeliveryError(
                f"The certificate of SMTP server {self.server} is not trusted: {exc.verify_message or exc}",
                retryable=False,
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return _refused(f"SMTP server {self.server} refused the connection", exc)
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            return DeliveryError(f"SMTP server {self.server} did not answer in time", retryable=True)
        if isinstance(exc, aiosmtplib.SMTPException | OSError):
            return DeliveryError(f"SMTP server {self.server}: {exc}", retryable=True)
        return DeliveryError(f"SMTP server {self.server}: {exc!r}", retryable=True)


class _Dropped(Exception):
    """The server had closed the connection before this message's transaction began."""


def _refused(what: str, exc: aiosmtplib.SMTPResponseException) -> DeliveryError:
    answer = " ".join(f"{exc.code} {exc.message}".split())
    return DeliveryError(f"{what}: {answer}", retryable=400 <= exc.code < 500)


def _envelope_sender(from_header: str) -> str:
    return parseaddr(from_header)[1] or from_header.strip()


def _composed(payload: dict[str, Any], ident: str) -> bytes:
    return build_mime(payload, ident).as_bytes()


def build_mime(payload: dict[str, Any], ident: str = "") -> EmailMessage:
    """The MIME message of a payload: multipart/alternative text and HTML, in multipart/mixed with the
    attachment when there is one, with upstream's priority headers."""
    message = EmailMessage()
    name, address = parseaddr(payload["from"])
    # As an Address, so a display name like upstream's `Qlik Sense (no-reply)` is quoted, not dropped as a
    # comment, and a non-ASCII one is encoded.
    message["From"] = Address(display_name=name, addr_spec=address) if address else payload["from"]
    message["To"] = payload["to"]
    message["Subject"] = payload["subject"]
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = _domain_of(payload["from"])
    local = re.sub(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]", "", ident).strip(".")
    # An explicit domain: without one, make_msgid asks DNS for this host's name, which blocks.
    message["Message-ID"] = f"<{local}@{domain}>" if local else make_msgid(domain=domain)
    x_priority, ms_priority, importance = PRIORITY_HEADERS.get(
        str(payload.get("priority") or "normal"), PRIORITY_HEADERS["normal"]
    )
    message["X-Priority"] = x_priority
    message["X-MSMail-Priority"] = ms_priority
    message["Importance"] = importance
    # Quoted-printable keeps the message 7-bit, which every relay accepts, and the source readable.
    message.set_content(payload.get("text") or "", subtype="plain", charset="utf-8", cte="quoted-printable")
    message.add_alternative(
        payload.get("html") or "", subtype="html", charset="utf-8", cte="quoted-printable"
    )
    attachment = payload.get("attachment")
    if attachment:
        message.add_attachment(
            str(attachment["content"]).encode("utf-8"),
            maintype="text",
            subtype="plain",
            filename=str(attachment["filename"]),
        )
        for part in message.iter_attachments():
            part.set_param("charset", "utf-8")
    return message


def _domain_of(from_header: str) -> str:
    address = _envelope_sender(from_header)
    try:
        domain = Address(addr_spec=address).domain
    except (ValueError, IndexError):
        domain = ""
    return domain or "butler.invalid"


__all__ = ["PRIORITY_HEADERS", "SmtpSender", "build_mime"]
