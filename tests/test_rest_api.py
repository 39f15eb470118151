"""The core endpoints and cross-cutting HTTP behaviour, over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from butler import __version__
from butler.config import ENDPOINT_FLAGS
from butler.http.errors import HttpError
from butler.http.ratelimit import RateLimiter
from butler.http.routing import ApiRequest, Reply, Route, Router, json_reply
from butler.http.server import Listener, RestApi
from butler.http.validation import Validator
from tests.conftest import QLIK_FLAGS, StartButler, base_config


async def get(
    http: aiohttp.ClientSession, url: str, **kwargs: object
) -> tuple[int, object, aiohttp.ClientResponse]:
    async with http.get(url, **kwargs) as response:  # type: ignore[arg-type]
        body = await response.json(content_type=None)
        return response.status, body, response


async def test_ping(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    status, body, response = await get(http, f"{base}/v4/butlerping")
    assert status == 200
    assert body == {"response": "Butler reporting for duty", "butlerVersion": __version__}
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (
            "/v4/base16tobase62?base16=1f5848b5f8ba4e85a57c7ca55a9e",
            {"base62": "3t5Na7R7Hj5yaBCv80S", "base16": "1f5848b5f8ba4e85a57c7ca55a9e"},
        ),
        (
            "/v4/base62tobase16?base62=3t5Na7R7Hj5yaBCv80S",
            {"base62": "3t5Na7R7Hj5yaBCv80S", "base16": "1f5848b5f8ba4e85a57c7ca55a9e"},
        ),
        (
            "/v4/base62tobase16?base62=0X96HlegVXzQfJVIBWC31",
            {"base62": "0X96HlegVXzQfJVIBWC31", "base16": "816c8710661a0a69e51ac8dc4ccf13"},
        ),
        (
            "/v4/base16tobase62?base16=816c8710661a0a69e51ac8dc4ccf13",
            {"base62": "X96HlegVXzQfJVIBWC31", "base16": "816c8710661a0a69e51ac8dc4ccf13"},
        ),
        (
            "/v4/base62tobase16?base62=6DMW88LpSok9Z7P7hUK0wv7bF",
            {"base62": "6DMW88LpSok9Z7P7hUK0wv7bF", "base16": "3199af08bfeeaf5d420f27ed9c01e74370077"},
        ),
        ("/v4/base16tobase62?base16=", {"base62": "0", "base16": ""}),
        ("/v4/base16tobase62?base16=00ff", {"base62": "47", "base16": "00ff"}),
    ],
)
async def test_base_conversion(
    start_butler: StartButler, http: aiohttp.ClientSession, path: str, expected: dict[str, str]
) -> None:
    base = await start_butler()
    assert (await get(http, base + path))[:2] == (200, expected)


async def test_seed_000_v2_examples(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    assert (await get(http, f"{base}/v2/base16ToBase62?base16=1f5848b5f8ba4e85a57c7ca55a9e"))[:2] == (
        200,
        "3t5Na7R7Hj5yaBCv80S",
    )
    assert (await get(http, f"{base}/v2/base62ToBase16?base62=0X96HlegVXzQfJVIBWC31"))[:2] == (
        200,
        "816c8710661a0a69e51ac8dc4ccf13",
    )
    for path in ("/v2/butlerPing", "/v2/butlerping"):
        assert (await get(http, base + path))[:2] == (200, {"response": "Butler reporting for duty"})


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v4/base62tobase16", "querystring must have required property 'base62'"),
        ("/v4/base16tobase62", "querystring must have required property 'base16'"),
        ("/v4/base16tobase62?base16=a&base16=b", "querystring/base16 must be string"),
        ("/v2/base16ToBase62", "querystring must have required property 'base16'"),
    ],
)
async def test_conversion_validation(
    start_butler: StartButler, http: aiohttp.ClientSession, path: str, message: str
) -> None:
    base = await start_butler()
    status, body, _ = await get(http, base + path)
    assert status == 400
    assert body == {
        "statusCode": 400,
        "code": "FST_ERR_VALIDATION",
        "error": "Bad Request",
        "message": message,
    }


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "/v4/base16tobase62?base16=1F58",
            "Failed converting from base16 to base62: 'F' is not a base16 digit; "
            "base16 digits are 0-9 and a-f (lowercase)",
        ),
        (
            "/v4/base62tobase16?base62=ab-c",
            "Failed converting from base62 to base16: '-' is not a base62 digit; "
            "base62 digits are 0-9, a-z and A-Z",
        ),
    ],
)
async def test_foreign_digits_are_a_client_error(
    start_butler: StartButler, http: aiohttp.ClientSession, path: str, message: str
) -> None:
    base = await start_butler()
    status, body, _ = await get(http, base + path)
    assert (status, body) == (400, {"statusCode": 400, "error": "Bad Request", "message": message})


async def test_enabled_endpoints_list(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    status, body, _ = await get(http, f"{base}/v4/configfile/endpointsenabled")
    assert status == 200
    assert body == [name.split(".")[-1] for name in ENDPOINT_FLAGS if name not in QLIK_FLAGS]
    assert body[:4] == ["apiListEnabledEndpoints", "base62ToBase16", "base16ToBase62", "butlerping"]


async def test_disabled_endpoints_are_absent(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler(base_config(butlerping=True, base16ToBase62=False))
    status, body, _ = await get(http, f"{base}/v4/base16tobase62?base16=ff")
    assert status == 404
    assert body == {
        "message": "Route GET:/v4/base16tobase62?base16=ff not found",
        "error": "Not Found",
        "statusCode": 404,
    }
    assert (await get(http, f"{base}/v2/base16ToBase62?base16=ff"))[0] == 404
    assert (await get(http, f"{base}/v4/configfile/endpointsenabled"))[0] == 404
    assert (await get(http, f"{base}/v4/butlerping"))[0] == 200
    # The health check and the API documents have no flag.
    assert (await get(http, f"{base}/health"))[0] == 200


async def test_routing_rules(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    for path in ("/v4/butlerping/", "/v4/ButlerPing", "/nothing/here"):
        status, body, _ = await get(http, base + path)
        assert status == 404
        assert body["message"] == f"Route GET:{path} not found"  # type: ignore[index]
    async with http.patch(f"{base}/v4/butlerping") as response:
        assert response.status == 404
        assert (await response.json())["message"] == "Route PATCH:/v4/butlerping not found"
    async with http.head(f"{base}/v4/butlerping") as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert await response.read() == b""


async def test_method_override(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    async with http.post(f"{base}/v4/butlerping", headers={"X-HTTP-Method-Override": "GET"}) as response:
        assert response.status == 200
        assert (await response.json())["response"] == "Butler reporting for duty"
    async with http.post(f"{base}/v4/butlerping") as response:
        assert response.status == 404
        assert (await response.json())["message"] == "Route POST:/v4/butlerping not found"
    async with http.post(f"{base}/v4/butlerping", headers={"X-HTTP-Method-Override": "DELETE"}) as response:
        assert response.status == 404
        assert (await response.json())["message"] == "Route DELETE:/v4/butlerping not found"
    # Only POST is overridden, as upstream does.
    async with http.get(f"{base}/v4/nothing", headers={"X-HTTP-Method-Override": "GET"}) as response:
        assert response.status == 404


async def test_health(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler(base_config(butlerping=False))
    status, body, _ = await get(http, f"{base}/health")
    assert status == 200
    assert body["status"] == "ok" and body["version"] == __version__  # type: ignore[index]


async def test_rate_limit_per_client_ip(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler(rate_limit=3)
    statuses = []
    for _ in range(3):
        status, _, response = await get(http, f"{base}/v4/butlerping")
        statuses.append(status)
    assert statuses == [200, 200, 200]
    assert response.headers["x-ratelimit-limit"] == "3"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert 0 < int(response.headers["x-ratelimit-reset"]) <= 60
    status, body, response = await get(http, f"{base}/v4/base16tobase62?base16=ff")
    assert status == 429
    assert body == {
        "statusCode": 429,
        "error": "Too Many Requests",
        "message": "Rate limit exceeded, retry in 1 minute",
    }
    assert 0 < int(response.headers["retry-after"]) <= 60
    # Unknown routes and the health check are not counted and not limited.
    assert (await get(http, f"{base}/v4/unknown"))[0] == 404
    assert (await get(http, f"{base}/health"))[0] == 200
    # Another client address has its own budget.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        status, _, response = await get(other, f"{base}/v4/butlerping")
        assert status == 200
        assert response.headers["x-ratelimit-remaining"] == "2"


@pytest.mark.parametrize(
    ("window", "message"),
    [(1, "1 second"), (10, "10 seconds"), (60, "1 minute"), (89, "1 minute"), (90, "2 minutes")],
)
def test_rate_limit_message_agrees_with_retry_after(window: int, message: str) -> None:
    limiter = RateLimiter(1, window_seconds=window)
    limiter.hit("a")
    with pytest.raises(HttpError) as refused:
        limiter.hit("a")
    assert refused.value.headers["retry-after"] == str(window)
    assert refused.value.message == f"Rate limit exceeded, retry in {message}"


async def test_rate_limit_window_ends() -> None:
    limiter = RateLimiter(2, window_seconds=0.2)
    limiter.hit("a")
    limiter.hit("a")
    with pytest.raises(Exception, match="retry in"):
        limiter.hit("a")
    await asyncio.sleep(0.25)
    assert limiter.hit("a")["x-ratelimit-remaining"] == "1"


# --- Body handling, through a route with a JSON body defined here (the core endpoints take no body) ---

BODY_SCHEMA = {
    "type": "object",
    "properties": {"key": {"type": "string"}, "ttl": {"type": "number"}},
    "required": ["key"],
}


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    async def echo(request: ApiRequest) -> Reply:
        return json_reply({"method": request.method, "body": request.body}, 201)

    router = Router()
    for method in ("PUT", "POST", "DELETE"):
        route = Route(method, "/v4/echo", echo)
        route.body_check = Validator("body", BODY_SCHEMA)
        router.add(route)
    listener = Listener(RestApi(router), "127.0.0.1", 0)
    await listener.start()
    yield listener.url
    await listener.stop()


async def send(http: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> tuple[int, object]:
    async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.json(content_type=None)


async def test_json_body_is_validated_and_coerced(echo_server: str, http: aiohttp.ClientSession) -> None:
    status, body = await send(http, "PUT", f"{echo_server}/v4/echo", json={"key": 5, "ttl": "300", "x": 1})
    assert (status, body) == (201, {"method": "PUT", "body": {"key": "5", "ttl": 300, "x": 1}})


async def test_method_override_keeps_the_body(echo_server: str, http: aiohttp.ClientSession) -> None:
    for override in ("PUT", "delete"):
        status, body = await send(
            http,
            "POST",
            f"{echo_server}/v4/echo",
            json={"key": "k"},
            headers={"X-HTTP-Method-Override": override},
        )
        assert (status, body) == (201, {"method": override.upper(), "body": {"key": "k"}})


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "message"),
    [
        (
            {"data": b"{broken", "headers": {"Content-Type": "application/json"}},
            400,
            "FST_ERR_CTP_INVALID_JSON_BODY",
            "Body is not valid JSON but content-type is set to 'application/json'",
        ),
        (
            {"data": b"", "headers": {"Content-Type": "application/json"}},
            400,
            "FST_ERR_CTP_EMPTY_JSON_BODY",
            "Body cannot be empty when content-type is set to 'application/json'",
        ),
        (
            {"data": b"key=k", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
            415,
            "FST_ERR_CTP_INVALID_MEDIA_TYPE",
            "Unsupported Media Type: Content-Type "
            "'application/x-www-form-urlencoded'; send the body as JSON with Content-Type: application/json",
        ),
        (
            {"data": b"key=k", "skip_auto_headers": ["Content-Type"]},
            415,
            "FST_ERR_CTP_INVALID_MEDIA_TYPE",
            "Unsupported Media Type: no Content-Type; "
            "send the body as JSON with Content-Type: application/json",
        ),
        (
            # Upstream's 400 for a text body, saying why the JSON in it was not taken.
            {"data": b'{"key": "k", "value": "v"}', "headers": {"Content-Type": "text/plain"}},
            400,
            "FST_ERR_VALIDATION",
            "body must be object (the body was sent as Content-Type: text/plain, which is read as text; "
            "send JSON with Content-Type: application/json)",
        ),
        ({"skip_auto_headers": ["Content-Type"]}, 400, "FST_ERR_VALIDATION", "body must be object"),
        ({"json": {"ttl": 1}}, 400, "FST_ERR_VALIDATION", "body must have required property 'key'"),
        ({"json": {"key": "k", "ttl": "later"}}, 400, "FST_ERR_VALIDATION", "body/ttl must be number"),
        ({"json": ["key"]}, 400, "FST_ERR_VALIDATION", "body must be object"),
    ],
)
async def test_bad_bodies(
    echo_server: str,
    http: aiohttp.ClientSession,
    kwargs: dict[str, object],
    status: int,
    code: str,
    message: str,
) -> None:
    assert await send(http, "PUT", f"{echo_server}/v4/echo", **kwargs) == (
        status,
        {
            "statusCode": status,
            "code": code,
            "error": {400: "Bad Request", 415: "Unsupported Media Type"}[status],
            "message": message,
        },
    )


async def test_body_over_one_mebibyte(echo_server: str, http: aiohttp.ClientSession) -> None:
    big = b'{"key": "' + b"x" * (1024 * 1024) + b'"}'
    status, body = await send(
        http, "PUT", f"{echo_server}/v4/echo", data=big, headers={"Content-Type": "application/json"}
    )
    assert status == 413
    assert body == {
        "statusCode": 413,
        "code": "FST_ERR_CTP_BODY_TOO_LARGE",
        "error": "Request Entity Too Large",
        "message": "Request body is too large",
    }

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"key": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    status, body = await send(
        http, "PUT", f"{echo_server}/v4/echo", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert status == 413
    # A body just under the limit is fine.
    ok = b'{"key": "' + b"x" * (1024 * 1024 - 20) + b'"}'
    status, _ = await send(
        http, "PUT", f"{echo_server}/v4/echo", data=ok, headers={"Content-Type": "application/json"}
    )
    assert status == 201


async def test_expect_100_continue(echo_server: str) -> None:
    """Qlik's REST connector sends ``Expect: 100-continue`` and waits for the interim answer."""
    host, port = echo_server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"key": "k"}'
    writer.write(
        b"PUT /v4/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    await writer.drain()
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert final.startswith(b"HTTP/1.1 201")
    writer.close()


async def test_unexpected_handler_failure_is_a_500_envelope(http: aiohttp.ClientSession) -> None:
    async def broken(request: ApiRequest) -> Reply:
        raise RuntimeError("bug")

    router = Router()
    router.add(Route("GET", "/v4/broken", broken))
    listener = Listener(RestApi(router), "127.0.0.1", 0)
    await listener.start()
    try:
        status, body, _ = await get(http, f"{listener.url}/v4/broken")
        assert (status, body) == (
            500,
            {"statusCode": 500, "error": "Internal Server Error", "message": "Internal Server Error"},
        )
    finally:
        await listener.stop()


async def test_long_path_parameter(http: aiohttp.ClientSession) -> None:
    async def item(request: ApiRequest) -> Reply:
        return json_reply(request.params)

    router = Router()
    router.add(Route("GET", "/v4/items/{name}", item))
    router.add(Route("GET", "/v4/items/special", item))
    listener = Listener(RestApi(router), "127.0.0.1", 0)
    await listener.start()
    try:
        assert (await get(http, f"{listener.url}/v4/items/a%20b"))[:2] == (200, {"name": "a b"})
        assert (await get(http, f"{listener.url}/v4/items/special"))[:2] == (200, {})
        status, body, _ = await get(http, f"{listener.url}/v4/items/{'x' * 101}")
        assert status == 414
        assert body["code"] == "FST_ERR_MAX_PARAM_LENGTH"  # type: ignore[index]
    finally:
        await listener.stop()


async def test_malformed_http_gets_the_envelope(start_butler: StartButler) -> None:
    base = await start_butler()
    host, port = base.removeprefix("http://").split(":")

    async def exchange(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer

    answer = await exchange(b"GET /v4/butlerping HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b"400 Bad Request")
    envelope = json.loads(body)
    assert envelope["statusCode"] == 400 and envelope["message"].startswith("Malformed HTTP request: ")

    answer = await exchange(
        b"GET /v4/base16tobase62?base16=" + b"a" * 17000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "statusCode": 400,
        "error": "Bad Request",
        "message": "Request line or a header is longer than 16384 bytes",
    }


async def test_long_query_within_limit(start_butler: StartButler, http: aiohttp.ClientSession) -> None:
    base = await start_butler()
    status, body, _ = await get(http, f"{base}/v4/base16tobase62?base16={'f' * 12000}")
    assert status == 200
    assert body["base16"] == "f" * 12000  # type: ignore[index]


async def test_server_header_names_no_versions(start_butler: StartButler) -> None:
    """Every answer, errors written by the connection handler included, says ``Server: Butler`` only."""
    base = await start_butler(rate_limit=1)
    host, port = base.removeprefix("http://").split(":")

    async def head_of(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        return answer

    heads = [
        await head_of(b"GET /v4/butlerping HTTP/1.1\r\nHost: x\r\n\r\n"),
        await head_of(b"GET /v4/butlerping HTTP/1.1\r\nHost: x\r\n\r\n"),  # over the limit: 429
        await head_of(b"GET /v4/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"),
        await head_of(b"GET /v4/butlerping HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
    ]
    assert [head.split(b" ", 2)[1] for head in heads] == [b"200", b"429", b"404", b"400"]
    for head in heads:
        servers = [line for line in head.split(b"\r\n") if line.lower().startswith(b"server:")]
        assert servers == [b"Server: Butler"], head


async def test_pieces_are_sent_with_the_server_header(http: aiohttp.ClientSession) -> None:
    async def pieces(request: ApiRequest) -> Reply:
        return Reply(200, [b"[1,", b"2]"], "application/json")

    router = Router()
    router.add(Route("GET", "/v4/pieces", pieces))
    listener = Listener(RestApi(router), "127.0.0.1", 0)
    await listener.start()
    try:
        status, body, response = await get(http, f"{listener.url}/v4/pieces")
        assert (status, body, response.headers.getall("Server")) == (200, [1, 2], ["Butler"])
    finally:
        await listener.stop()


async def _read_answer(
    reader: asyncio.StreamReader, head_only: bool = False
) -> tuple[str, dict[str, str], bytes]:
    """One answer off a raw connection: status line, headers (lower-case names), the body its length says
    (none for the answer to a HEAD)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    status_line, *lines = head.removesuffix("\r\n\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(": ")
        assert name.lower() not in headers, f"{name} sent twice"
        headers[name.lower()] = value
    length = 0 if head_only else int(headers.get("content-length", "0"))
    return status_line, headers, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_answer_heads_follow_http_rules() -> None:
    """Each answer's head says how long it is and whether the connection stays open, as HTTP/1.1 and 1.0
    clients need, and a HEAD or a 204 has no body, so the next answer on the connection is read right."""

    async def ok(request: ApiRequest) -> Reply:
        return json_reply({"ok": True})

    async def nothing(request: ApiRequest) -> Reply:
        return Reply(204)

    async def untyped(request: ApiRequest) -> Reply:
        return Reply(200, b"raw")

    async def forged(request: ApiRequest) -> Reply:
        return Reply(200, b"x", headers={"X-Note": "a\r\nSet-Cookie: stolen=1"})

    router = Router()
    for path, handler in (("/ok", ok), ("/nothing", nothing), ("/untyped", untyped), ("/forged", forged)):
        router.add(Route("GET", path, handler))
    listener = Listener(RestApi(router), "127.0.0.1", 0)
    await listener.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(
            b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /ok HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /untyped HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        status, headers, body = await _read_answer(reader)
        assert (status, body) == ("HTTP/1.1 200 OK", b'{"ok":true}')
        assert headers["content-length"] == "11" and "connection" not in headers
        assert headers["content-type"] == "application/json; charset=utf-8" and headers["server"] == "Butler"
        assert headers["date"].endswith(" GMT")
        head_status, head_headers, _ = await _read_answer(reader, head_only=True)
        # A HEAD answer has the GET answer's length but no body: read as if it had none.
        assert head_status == "HTTP/1.1 200 OK" and head_headers["content-length"] == "11"
        status, headers, _ = await _read_answer(reader)
        assert status == "HTTP/1.1 204 No Content" and "content-length" not in headers
        status, headers, body = await _read_answer(reader)
        assert (status, body, headers["content-type"]) == (
            "HTTP/1.1 200 OK",
            b"raw",
            "application/octet-stream",
        )
        status, headers, body = await _read_answer(reader)
        assert (status, headers["connection"], body) == ("HTTP/1.1 200 OK", "close", b'{"ok":true}')
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing more sent
        writer.close()

        # HTTP/1.0 closes after each answer unless the client asks to keep the connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /ok HTTP/1.0\r\n\r\n")
        status, headers, _ = await _read_answer(reader)
        assert (status, headers["connection"]) == ("HTTP/1.0 200 OK", "keep-alive")
        status, headers, body = await _read_answer(reader)
        assert (status, "connection" in headers, body) == ("HTTP/1.0 200 OK", False, b'{"ok":true}')
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

        # A header value with a line break would let its text add headers: it is a fault, not sent.
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /forged HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await _read_answer(reader)
        assert status == "HTTP/1.1 500 Internal Server Error" and "set-cookie" not in headers
        assert json.loads(body)["statusCode"] == 500
        writer.close()
    finally:
        await listener.stop()
