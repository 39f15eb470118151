"""The REST server: turns HTTP requests into handler calls and handler results into HTTP answers.

What upstream Butler does around a handler (method override, refusing browser requests made for other web
sites' pages, routing, the per-IP rate limit, validation, Butler's error envelope, one log line per request)
is a chain of middlewares, ``butler.http.middleware``. This module reads bodies (``Expect: 100-continue``,
sent by the REST connector; the 1 MiB limit; the body timeout), sends answers, and holds the connection-level
limits on slow and excess clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from butler.audit import AuditLog
from butler.config.settings import ConnectionLimits
from butler.http.browsers import BrowserCheck
from butler.http.errors import CLIENT_CLOSED, ClientGone, HttpError, reason
from butler.http.middleware import App, Connection, Context, build_chain, dispatch
from butler.http.middleware.access_log import AccessLog
from butler.http.middleware.audit import Audit
from butler.http.middleware.browser_guard import BrowserGuard
from butler.http.middleware.error_envelope import ErrorEnvelope
from butler.http.middleware.method_override import MethodOverride
from butler.http.middleware.rate_limit import RateLimit
from butler.http.middleware.request_metrics import RequestMetrics, RequestTimes
from butler.http.middleware.routing import Routing
from butler.http.middleware.validation import Validation, parse_query
from butler.http.ratelimit import RateLimiter
from butler.http.routing import JSON_HEADERS, Route, Router
from butler.json_encoding import encode_json
from butler.logs import RequestLog, Throttle

BODY_LIMIT = 1024 * 1024
#: Answers given before the whole body was read: too large (413), too slow (408).
_BODY_LEFT_UNREAD = frozenset({408, 413})
#: Sent instead of aiohttp's default, which names the Python and aiohttp versions.
SERVER_HEADER = {"Server": "Butler"}

log = logging.getLogger("butler.rest")


class RestApi:
    """The request handler given to aiohttp's low-level server: runs each request through the middleware
    chain (``butler.http.middleware``) and sends what it answers."""

    def __init__(
        self,
        router: Router,
        rate_limiter: RateLimiter | None = None,
        browsers: BrowserCheck | None = None,
        request_times: RequestTimes | None = None,
        audit: AuditLog | None = None,
        authentication: Callable[[App], App] | None = None,
    ) -> None:
        self.router = router
        self.rate_limiter = rate_limiter
        self.browsers = browsers or BrowserCheck()
        self.request_log = RequestLog(log)
        steps: list[Callable[[App], App]] = [partial(AccessLog, request_log=self.request_log)]
        if request_times is not None:
            steps.append(partial(RequestMetrics, times=request_times))
        if audit is not None:
            steps.append(partial(Audit, audit=audit))
        steps += [
            ErrorEnvelope,
            MethodOverride,
            partial(BrowserGuard, browsers=self.browsers),
            partial(Routing, router=router),
        ]
        # The per-IP limit first: requests with wrong or no credentials count too, so guessing is slowed.
        if rate_limiter is not None:
            steps.append(partial(RateLimit, limiter=rate_limiter))
        if authentication is not None:
            steps.append(authentication)
        steps.append(partial(Validation, read_body=read_body))
        self._chain = build_chain(dispatch, *steps)

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        context = Context(request, time.perf_counter())
        try:
            reply = await self._chain(context)
        except ClientGone:
            gone = web.Response(status=CLIENT_CLOSED)  # aiohttp finds the connection closed and drops it
            gone.force_close()
            return gone
        headers = {**reply.headers, **SERVER_HEADER}
        if context.headers:
            headers.update(context.headers)
        if isinstance(reply.body, list):
            return await _send_pieces(request, reply.status, reply.body, headers)
        response = _Answer(reply.status, reply.body, headers)
        if reply.status in _BODY_LEFT_UNREAD or request.content.exception() is not None:
            # The rest of the body was never read, or could not be: the connection cannot be reused.
            response.force_close()
        return response


#: Statuses whose answers have neither a body nor a Content-Length (RFC 9110, 6.4.1).
_NO_BODY = frozenset({*range(100, 200), 204, 304})


class _Answer(web.StreamResponse):
    """An answer whose body is known in full, sent with its head in one write.

    aiohttp's ``Response`` builds a case-insensitive header map, then prepares, serialises and writes the
    head and the body in steps meant for answers of any kind; for Butler's answers, known in full before
    anything is sent, those steps were a fifth of the time Butler spent on a ping. The head follows the same
    rules: ``Content-Length`` (none for 1xx, 204 and 304; a HEAD gets the GET answer's length and no
    body), ``Date``, and ``Connection`` when the connection does not stay open as its HTTP version implies.
    """

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(status=status)
        self._whole_body = body
        fields = []
        for name, value in headers.items():
            if "\n" in value or "\r" in value:  # a value must never start a header of its own
                raise ValueError(f"header {name} holds a line break")
            fields.append(f"{name}: {value}\r\n")
        if body and "Content-Type" not in headers:
            fields.append("Content-Type: application/octet-stream\r\n")
        self._fields = "".join(fields)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        status = self._status
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        version = request.version
        body = self._whole_body
        head = [f"HTTP/{version.major}.{version.minor} {status} {self._reason}\r\n", self._fields]
        if status in _NO_BODY:
            body = b""
        else:
            head.append(f"Content-Length: {len(body)}\r\n")
            if request.method == "HEAD":
                body = b""
        head.append(f"Date: {rfc822_formatted_time()}\r\n")
        if not keep_alive and version == HttpVersion11:
            head.append("Connection: close\r\n")
        elif keep_alive and version == HttpVersion10:
            head.append("Connection: keep-alive\r\n")
        head.append("\r\n")
        self._eof_sent = True
        self._body_length = len(body)
        await request.writer.write_eof("".join(head).encode() + body)
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        """Nothing is left to send: ``prepare`` sent the whole answer."""


async def _send_pieces(
    request: BaseRequest, status: int, pieces: list[bytes], headers: dict[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = sum(len(p) for p in pieces)
    await response.prepare(request)
    if request.method != "HEAD":
        for piece in pieces:
            await response.write(piece)  # waits while the socket's buffer is full
    await response.write_eof()
    return response


async def read_body(request: BaseRequest) -> Any:
    """Read and decode a request body as upstream's parsers do: JSON, plain text, or 415."""
    length = request.content_length
    if length is not None and length > BODY_LIMIT:
        raise HttpError(413, "Request body is too large", code="FST_ERR_CTP_BODY_TOO_LARGE")
    connection = request.protocol if isinstance(request.protocol, _Connection) else None
    timeout = connection.limits.body_timeout if connection is not None else None
    # A body that came in with its head needs no timer.
    deadline = asyncio.timeout(None if request.content.is_eof() else timeout)
    try:
        async with deadline:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, "Request body is too large", code="FST_ERR_CTP_BODY_TOO_LARGE") from None
    except web.RequestPayloadError:
        if request.transport is None or request.transport.is_closing():
            raise ClientGone from None
        # Not what its head says it is (a Content-Encoding it is not in, broken chunks): where it ends, and
        # so where the next request starts, cannot be told.
        if connection is not None:
            connection.close_after_answer()
        raise HttpError(
            400,
            "Request body cannot be read as its Content-Encoding or Transfer-Encoding says; "
            "send the JSON as it is, without a Content-Encoding",
        ) from None
    except OSError:  # the timeout's TimeoutError, or the connection's error once it is lost
        if deadline.expired():
            assert connection is not None
            connection.close_after_answer()
            raise HttpError(408, f"Request body not received in full within {timeout:g} s") from None
        raise ClientGone from None
    content_type = request.headers.get("Content-Type")
    if content_type is None:
        if not raw:
            return None
        raise _unsupported_media_type("no Content-Type")
    mime = content_type.partition(";")[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        if not raw.strip():
            raise HttpError(
                400,
                "Body cannot be empty when content-type is set to 'application/json'",
                code="FST_ERR_CTP_EMPTY_JSON_BODY",
            )
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HttpError(
                400,
                "Body is not valid JSON but content-type is set to 'application/json'",
                code="FST_ERR_CTP_INVALID_JSON_BODY",
            ) from None
    if mime == "text/plain":
        return raw.decode("utf-8", errors="replace")
    raise _unsupported_media_type(f"Content-Type {mime!r}")


def _unsupported_media_type(what: str) -> HttpError:
    return HttpError(
        415,
        f"Unsupported Media Type: {what}; send the body as JSON with Content-Type: application/json",
        code="FST_ERR_CTP_INVALID_MEDIA_TYPE",
    )


def tls_context(cert: str, key: str, ca: str | None) -> ssl.SSLContext:
    """A server TLS context. Raises OSError or ssl.SSLError naming what could not be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca:
        # The CA bundle completes the chain sent to clients and is trusted for optional client certificates.
        context.load_verify_locations(ca)
    return context


#: Longest request line and header line accepted (Node's limit, which upstream Butler has).
MAX_LINE = 16384


#: Files, sockets and pipes Butler needs besides its REST connections (log, key-value store, Qlik, MQTT).
_SPARE_DESCRIPTORS = 256


def _allow_descriptors(connections: int) -> None:
    """Let the process open enough sockets for ``connections`` clients, as far as the system allows.

    Many systems give a process 1,024 descriptors (soft limit) but allow far more (hard limit); Node raises
    the soft limit to the hard one at start-up, so upstream Butler never met the lower one. Windows has no
    such limit on sockets.
    """
    if sys.platform == "win32":
        return
    import resource

    wanted = connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):
        raised = soft
    if raised < wanted:
        log.warning(
            "The system lets Butler open %d files and sockets, fewer than "
            "Butler.restServerConfig.maxConnections (%d) needs; connections beyond that fail",
            raised,
            connections,
        )


#: Refused connections are counted, and reported in one warning line at most this often (seconds).
_REFUSAL_REPORT_INTERVAL = 60.0
#: How long a refused connection is kept for its request to arrive (seconds).
_REFUSAL_GRACE = 1.0


def _raw_answer(status: int, message: str) -> bytes:
    """A whole HTTP answer in Butler's envelope, written where aiohttp has no request to answer."""
    body = encode_json(HttpError(status, message).envelope())
    headers = {**JSON_HEADERS, **SERVER_HEADER, "Content-Length": str(len(body)), "Connection": "close"}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"HTTP/1.1 {status} {reason(status)}\r\n{head}\r\n".encode() + body


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered at once without reading the request, then closed.

    The close waits for the request to come in, or at most _REFUSAL_GRACE: closing a socket with unread
    data resets the connection, and the client may then lose the answer.
    """

    def __init__(self, transport: asyncio.Transport, answer: bytes) -> None:
        self._transport = transport
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_REFUSAL_GRACE, transport.close)

    def data_received(self, data: bytes) -> None:
        self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


class _Connection(RequestHandler, Connection):
    """aiohttp's connection handler, with Butler's limits on slow clients and on the number of connections,
    answering malformed HTTP in Butler's envelope, logged in one line.

    aiohttp closes a connection that sends nothing for ``keepalive_timeout`` after its last answer. This
    adds the head timeout: a new connection must send its first request head in full within
    ``headers_timeout`` of opening, and a later head must be complete within ``headers_timeout`` of its
    first bytes. One timer per connection, armed only while a head is due or incomplete, so a request
    arriving in one piece on a kept-alive connection costs no timer at all.

    A client that stops reading its answer is dropped once it has read nothing for ``keepalive_timeout``:
    no other timer runs while an answer is written, so it would hold its connection, its handler and the
    answer for ever. Its timer is armed only while the socket's buffer is full.
    """

    __slots__ = ("_answer_timer", "_body", "_head_timer", "_listener", "_unread", "credential")

    def __init__(self, listener: _Server, **kwargs: Any) -> None:
        super().__init__(listener, **kwargs)
        self._listener = listener
        self._head_timer: asyncio.TimerHandle | None = None
        self._answer_timer: asyncio.TimerHandle | None = None
        #: Bytes of the answer waiting for the client to read them, when last looked at.
        self._unread = 0
        # The body of the latest request while it is still arriving: bytes received meanwhile are body.
        self._body: StreamReader | None = None
        self.credential = None

    @property
    def limits(self) -> ConnectionLimits:
        return self._listener.limits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._listener.admit():
            super().connection_made(transport)
            if transport.get_extra_info("sslcontext") is None:
                # Pause the writer as soon as the socket's buffer is full, so that the stall timer covers
                # every unread byte: aiohttp closes a connection once its answer is buffered, and the
                # transport then waits for the client to read the rest, without a limit. (A TLS transport
                # pauses at its mark itself, so 0 would keep it paused; its close waits 30 s at most.)
                cast(asyncio.WriteTransport, transport).set_write_buffer_limits(high=0)
            # Silence from a new connection is a head not sent in time, not an idle keep-alive.
            self._head_timer = self._loop.call_later(self.limits.headers_timeout, self._head_timed_out)
            return
        stream = cast(asyncio.Transport, transport)  # uvloop's transports do not derive from asyncio's
        stream.set_protocol(_Refusal(stream, self._listener.busy_answer))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_answer_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is None:  # closed by aiohttp while TLS sends its last records: TLS's own timeout holds
            return
        self._watch_answer(transport, transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._stop_answer_timer()
        super().resume_writing()

    def _stop_answer_timer(self) -> None:
        if self._answer_timer is not None:
            self._answer_timer.cancel()
            self._answer_timer = None

    def _watch_answer(self, transport: asyncio.WriteTransport, unread: int) -> None:
        self._unread = unread
        self._answer_timer = self._loop.call_later(
            self.limits.keep_alive_timeout, self._answer_read, transport
        )

    def _answer_read(self, transport: asyncio.WriteTransport) -> None:
        """Drop the connection if its client has read nothing since the last look."""
        unread = transport.get_write_buffer_size()
        if unread < self._unread:  # a slow reader, but a reader
            self._watch_answer(transport, unread)
            return
        self._answer_timer = None
        peer = transport.get_extra_info("peername")
        log.info(
            "Answer to %s not read for %g s: connection dropped",
            peer[0] if peer else "?",
            self.limits.keep_alive_timeout,
        )
        transport.abort()  # a close would wait for the client to read the answer

    def data_received(self, data: bytes) -> None:
        body = self._body
        reading_body = body is not None and not body.is_eof()
        super().data_received(data)
        messages = self._messages
        if messages:  # a head is complete
            payload = messages[-1][1]
            self._body = None if payload.is_eof() else payload
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif not reading_body:
            self._body = None
            if data and self._head_timer is None:
                self._head_timer = self._loop.call_later(self.limits.headers_timeout, self._head_timed_out)

    def close_after_answer(self) -> None:
        """Close the connection as soon as the current answer is written.

        aiohttp would otherwise go on waiting for the rest of an unread body for up to ``lingering_time``
        (10 s): more time for a client that was too slow already.
        """
        self._lingering_time = 0.0

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiter = self._waiter
        if self.transport is None or waiter is None or waiter.done() or self._messages:
            return  # a request is being answered: aiohttp's keep-alive timer takes over after it
        peer = self.transport.get_extra_info("peername")
        log.info(
            "Request head from %s not complete within %g s: connection closed",
            peer[0] if peer else "?",
            self.limits.headers_timeout,
        )
        self.transport.write(self._listener.head_timeout_answer)
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client left while its answer was being written: nothing to answer and nothing failed.
            # aiohttp takes a ConnectionError from here as a client gone, and logs it at debug level.
            raise exc
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            text = f"Request line or a header is longer than {MAX_LINE} bytes"
        else:
            detail = " ".join(str(getattr(exc, "message", None) or message or exc).split())
            text = f"Malformed HTTP request: {detail}"
        log.warning("%s from %s", text, request.remote)
        response = web.Response(
            status=status,
            body=encode_json(HttpError(status, text).envelope()),
            headers={**JSON_HEADERS, **SERVER_HEADER},
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __init__(self, api: Callable[[BaseRequest], Any], limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(api, keepalive_timeout=limits.keep_alive_timeout, **kwargs)
        self.limits = limits
        self.refused = 0
        self._refusals = Throttle(_REFUSAL_REPORT_INTERVAL)
        self.busy_answer = _raw_answer(
            503, f"Butler has {limits.max_connections} connections open, the most it takes; try again shortly"
        )
        self.head_timeout_answer = _raw_answer(
            408, f"Request head not received in full within {limits.headers_timeout:g} s"
        )

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)

    def admit(self) -> bool:
        """Whether a new connection may be served; counts and reports the ones that may not."""
        if len(self._connections) < self.limits.max_connections:
            return True
        self.refused += 1
        if self._refusals.ready():
            log.warning(
                "%d connections open, the most Butler.restServerConfig.maxConnections allows: "
                "new connections are refused (%d so far)",
                len(self._connections),
                self.refused,
            )
        return False


class _Site(web.BaseSite):
    """aiohttp's TCPSite, with the TLS handshake held to the head timeout.

    asyncio waits 60 s for a handshake, and a connection counts towards ``max_connections`` only once its
    handshake is done: a client that opens connections and never completes a handshake would otherwise hold
    each for a minute, unlimited in number.
    """

    __slots__ = ("_handshake_timeout", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=1024)
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        assert self._runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._runner.server,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )


class Listener:
    """One TCP listener (plain or TLS) serving a RestApi."""

    def __init__(
        self,
        api: Callable[[BaseRequest], Any],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        limits: ConnectionLimits | None = None,
    ) -> None:
        # BaseRequest refuses bodies over 1 MiB by default, which is the limit wanted here.
        self._server = _Server(
            api,
            limits or ConnectionLimits(),
            access_log=None,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
        )
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context

    @property
    def refused_connections(self) -> int:
        """Connections refused because ``max_connections`` were open."""
        return self._server.refused

    async def start(self) -> None:
        _allow_descriptors(self._server.limits.max_connections)
        await self._runner.setup()
        site = _Site(
            self._runner, self.host, self.port, self.ssl_context, self._server.limits.headers_timeout
        )
        await site.start()
        # Port 0 asks the OS for a free port; report the one that was given.
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


__all__ = ["BODY_LIMIT", "Listener", "RestApi", "Route", "parse_query", "read_body", "tls_context"]
