"""The REST server: turns HTTP requests into handler calls and handler results into HTTP answers.

Everything that upstream Butler does around a handler happens here, in one pass per request:
``X-HTTP-Method-Override`` (Qlik's REST connector can only GET and POST), routing, the per-IP rate limit,
``Expect: 100-continue`` (sent by the REST connector), body parsing with the 1 MiB limit, validation,
Butler's error envelope, and one log line per request.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from butler.http.errors import HttpError, RouteNotFound
from butler.http.ratelimit import RateLimiter
from butler.http.routing import JSON_HEADERS, JSON_TYPE, ApiRequest, Reply, Route, Router
from butler.json_encoding import encode_json
from butler.logs import RequestLog

BODY_LIMIT = 1024 * 1024
_BODY_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})

log = logging.getLogger("butler.rest")


def parse_query(query: str) -> dict[str, Any]:
    """Decode a query string as Node's ``querystring`` does: ``+`` is a space, repeated keys make a list."""
    result: dict[str, Any] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition("=")
        if "%" in pair or "+" in pair:
            key, value = unquote_plus(raw_key), unquote_plus(raw_value)
        else:
            key, value = raw_key, raw_value
        if key in result:
            previous = result[key]
            result[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            result[key] = value
    return result


class RestApi:
    """The request handler given to aiohttp's low-level server."""

    def __init__(self, router: Router, rate_limiter: RateLimiter | None = None) -> None:
        self.router = router
        self.rate_limiter = rate_limiter
        self.request_log = RequestLog(log)

    async def __call__(self, request: BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        method = request.method
        if method == "POST":
            override = request.headers.get("X-HTTP-Method-Override")
            if override:
                method = override.strip().upper()
        target = request.raw_path
        client_ip = request.remote or ""
        limit_headers: dict[str, str] | None = None
        route: Route | None = None
        try:
            path, _, query = target.partition("?")
            match = self.router.match("GET" if method == "HEAD" else method, path)
            if match is None:
                raise RouteNotFound(method, target)
            route, params = match
            if self.rate_limiter is not None and route.rate_limited:
                limit_headers = self._count(client_ip, method, target)
            if route.params_check is not None:
                params = route.params_check(params)
            query_values = parse_query(query) if query else {}
            if route.query_check is not None:
                query_values = route.query_check(query_values)
            body: Any = None
            if route.body_check is not None and method in _BODY_METHODS:
                body = route.body_check(await read_body(request))
            reply = await route.handler(
                ApiRequest(method, path, query_values, params, body, request.headers, client_ip)
            )
        except HttpError as exc:
            reply = Reply(exc.status, encode_json(exc.envelope()), JSON_TYPE, exc.headers)
        except Exception as exc:
            mapped = route.error_for(exc) if route is not None else None
            if mapped is None:
                log.exception("%s %s from %s failed", method, target, client_ip)
                mapped = HttpError(500, "Internal Server Error")
            reply = Reply(mapped.status, encode_json(mapped.envelope()), JSON_TYPE)
        headers = {**reply.headers, **limit_headers} if limit_headers else reply.headers
        self.request_log.write(method, target, reply.status, started, client_ip)
        if isinstance(reply.body, list):
            return await _send_pieces(request, reply.status, reply.body, headers)
        response = web.Response(status=reply.status, body=reply.body, headers=headers)
        if reply.status == 413:
            # The rest of an oversized body was never read; the connection cannot be reused.
            response.force_close()
        return response

    def _count(self, client_ip: str, method: str, target: str) -> dict[str, str]:
        assert self.rate_limiter is not None
        try:
            return self.rate_limiter.hit(client_ip)
        except HttpError:
            log.warning("Rate limit exceeded: %s %s from %s", method, target, client_ip)
            raise


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
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise HttpError(413, "Request body is too large", code="FST_ERR_CTP_BODY_TOO_LARGE") from None
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


class _Connection(RequestHandler):
    """aiohttp's connection handler, answering malformed HTTP in Butler's envelope, logged in one line."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            text = f"Request line or a header is longer than {MAX_LINE} bytes"
        else:
            detail = " ".join(str(getattr(exc, "message", None) or message or exc).split())
            text = f"Malformed HTTP request: {detail}"
        log.warning("%s from %s", text, request.remote)
        response = web.Response(
            status=status, body=encode_json(HttpError(status, text).envelope()), headers=JSON_HEADERS
        )
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class Listener:
    """One TCP listener (plain or TLS) serving a RestApi."""

    def __init__(
        self,
        api: Callable[[BaseRequest], Any],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # BaseRequest refuses bodies over 1 MiB by default, which is the limit wanted here.
        self._server = _Server(api, access_log=None, max_line_size=MAX_LINE, max_field_size=MAX_LINE)
        self._runner = web.ServerRunner(self._server, handle_signals=False)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.ssl_context, reuse_address=True, backlog=1024
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
