"""Each step of the REST request chain on its own, with a stand-in for the rest of the chain."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from butler.http.browsers import BrowserCheck
from butler.http.errors import CLIENT_CLOSED, ClientGone, HttpError, RouteNotFound
from butler.http.middleware import App, Context, build_chain, dispatch
from butler.http.middleware.access_log import AccessLog
from butler.http.middleware.browser_guard import BrowserGuard
from butler.http.middleware.error_envelope import ErrorEnvelope
from butler.http.middleware.method_override import MethodOverride
from butler.http.middleware.rate_limit import RateLimit
from butler.http.middleware.routing import Routing
from butler.http.middleware.validation import Validation
from butler.http.ratelimit import RateLimiter
from butler.http.routing import ApiRequest, Reply, Route, Router, json_reply
from butler.logs import LOG_FORMATS, LogBuffer, RequestLog
from butler.qlik.qrs import QrsTimeout
from butler.task_start import TaskRequestError

OK = Reply(200, b"ok")


def context(method: str = "GET", target: str = "/v4/thing", **headers: str) -> Context:
    return Context(make_mocked_request(method, target, headers=CIMultiDict(headers)), 0.0)


class Rest:
    """Stands for the rest of the chain: records the context it got, then answers or raises."""

    def __init__(self, outcome: Reply | BaseException = OK) -> None:
        self.outcome = outcome
        self.seen: Context | None = None

    async def __call__(self, context: Context) -> Reply:
        self.seen = context
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


async def handler(request: ApiRequest) -> Reply:
    return json_reply({"params": request.params, "query": request.query, "body": request.body})


def route(path: str = "/v4/thing/{name}", method: str = "GET", **options: Any) -> Route:
    return Route(method, path, handler, **options)


async def test_method_override_applies_to_posts_only() -> None:
    rest = Rest()
    posted = context("POST", **{"X-HTTP-Method-Override": " delete "})
    await MethodOverride(rest)(posted)
    assert posted.method == "DELETE"
    got = context("GET", **{"X-HTTP-Method-Override": "DELETE"})
    await MethodOverride(rest)(got)
    assert got.method == "GET"


async def test_browser_guard_refuses_other_sites_pages_before_the_rest_runs() -> None:
    rest = Rest()
    guard = BrowserGuard(rest, BrowserCheck(["https://sense.example.com"]))
    with pytest.raises(HttpError) as refused:
        await guard(context("GET", Origin="https://evil.example.com", **{"Sec-Fetch-Site": "cross-site"}))
    assert refused.value.status == 403 and rest.seen is None
    assert await guard(context("GET", Origin="https://sense.example.com")) is OK
    assert await guard(context("GET")) is OK  # not a browser


async def test_routing_finds_the_route_and_its_parameters() -> None:
    router = Router()
    thing = route()
    router.add(thing)
    rest = Rest()
    found = context("HEAD", "/v4/thing/a%20b?x=1")
    await Routing(rest, router)(found)
    assert (found.route, found.params) == (thing, {"name": "a b"})
    with pytest.raises(RouteNotFound) as missing:
        await Routing(rest, router)(context("PUT", "/v4/thing/a?x=1"))
    assert missing.value.message == "Route PUT:/v4/thing/a?x=1 not found"


async def test_rate_limit_counts_limited_routes_and_adds_its_headers(caplog: Any) -> None:
    limiter = RateLimiter(2)
    step = RateLimit(Rest(), limiter)
    polled = context()
    polled.route = route(rate_limited=False)
    for _ in range(3):
        await step(polled)
    assert polled.headers is None
    counted = context()
    counted.route = route()
    await step(counted)
    assert counted.headers is not None and counted.headers["x-ratelimit-remaining"] == "1"
    await step(counted)
    with caplog.at_level(logging.WARNING, "butler.rest"), pytest.raises(HttpError) as limited:
        await step(counted)
    assert limited.value.status == 429 and "Rate limit exceeded: GET /v4/thing" in caplog.text


async def test_validation_gives_the_handler_checked_input_and_reads_bodies_only_where_they_belong() -> None:
    bodies: list[Any] = []

    async def read_body(request: Any) -> Any:
        bodies.append(request)
        return {"n": "5"}

    def numbers(body: Any) -> Any:
        return {"n": int(body["n"])}

    rest = Rest()
    step = Validation(rest, read_body)
    put = context("PUT", "/v4/thing/a?k=1&k=2&s=a+b")
    put.route, put.params = route(method="PUT", body_check=numbers), {"name": "a"}
    await step(put)
    assert put.input is not None
    assert (put.input.params, put.input.query, put.input.body) == (
        {"name": "a"},
        {"k": ["1", "2"], "s": "a b"},
        {"n": 5},
    )
    got = context("GET", "/v4/thing/a")
    got.route = route(body_check=numbers)
    await step(got)
    assert got.input is not None and got.input.body is None and len(bodies) == 1


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (HttpError(418, "short and stout", headers={"x-a": "1"}), 418, "short and stout"),
        (QrsTimeout("QRS did not answer within 10 s"), 504, "QRS did not answer within 10 s"),
        (TaskRequestError("must be object", at="2/payload"), 400, "body/2/payload must be object"),
        (KeyError("inside"), 500, "Internal Server Error"),
    ],
)
async def test_error_envelope_answers_every_error(
    raised: Exception, status: int, message: str, caplog: Any
) -> None:
    with caplog.at_level(logging.ERROR, "butler.rest"):
        reply = await ErrorEnvelope(Rest(raised))(context())
    assert reply.status == status
    assert isinstance(reply.body, bytes) and f'"message":"{message}"'.encode() in reply.body
    assert ("inside" in caplog.text) == (status == 500)
    if isinstance(raised, HttpError):
        assert reply.headers["x-a"] == "1"


async def test_error_envelope_lets_a_client_gone_through() -> None:
    with pytest.raises(ClientGone):
        await ErrorEnvelope(Rest(ClientGone()))(context())


class Lines(RequestLog):
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int]] = []
        self.callers: list[str | None] = []

    def write(
        self, method: str, target: str, status: int, started: float, client_ip: str, caller: str | None = None
    ) -> None:
        self.lines.append((method, target, status))
        self.callers.append(caller)


async def test_access_log_writes_one_line_per_request_with_the_method_as_overridden() -> None:
    lines = Lines()
    posted = context("POST", "/v4/thing?x=1", **{"X-HTTP-Method-Override": "PUT"})
    await AccessLog(MethodOverride(Rest(Reply(201))), lines)(posted)
    with pytest.raises(ClientGone):
        await AccessLog(Rest(ClientGone()), lines)(context("PUT", "/v4/slow"))
    assert lines.lines == [("PUT", "/v4/thing?x=1", 201), ("PUT", "/v4/slow", CLIENT_CLOSED)]
    assert lines.callers == [None, None]


async def test_the_access_log_names_the_caller_in_text_and_in_json() -> None:
    named = context("GET", "/v4/butlerping")
    named.caller = "token etl-nightly"
    lines = Lines()
    await AccessLog(Rest(Reply(200)), lines)(named)
    assert lines.callers == ["token etl-nightly"]
    for log_format in LOG_FORMATS:
        stream = io.StringIO()
        buffer = LogBuffer(stream, log_format)
        buffer.add((0.0, "GET", "/v4/butlerping", 200, 0.5, "10.0.0.1", "butler.rest", "token etl-nightly"))
        buffer.add((0.0, "GET", "/v4/butlerping", 401, 0.5, "10.0.0.1", "butler.rest", None))
        buffer.flush()
        first, second = stream.getvalue().splitlines()
        if log_format == "json":
            entry, anonymous = json.loads(first), json.loads(second)
            assert entry["caller"] == "token etl-nightly" and "caller" not in anonymous
            first, second = entry["message"], anonymous["message"]
        assert first.endswith("0.50ms 10.0.0.1 token etl-nightly"), first
        assert second.endswith("0.50ms 10.0.0.1"), second


async def test_the_chain_runs_its_steps_in_order_and_ends_in_the_handler() -> None:
    order: list[str] = []

    def step(name: str) -> Any:
        def wrap(app: App) -> App:
            async def run(context: Context) -> Reply:
                order.append(name)
                return await app(context)

            return run

        return wrap

    async def no_body(request: Any) -> Any:
        return None

    router = Router()
    router.add(route())
    chain = build_chain(
        dispatch,
        step("first"),
        step("second"),
        lambda app: Routing(app, router),
        lambda app: Validation(app, no_body),
    )
    reply = await chain(context("GET", "/v4/thing/a"))
    assert order == ["first", "second"]
    assert reply.status == 200 and reply.body == b'{"params":{"name":"a"},"query":{},"body":null}'


@pytest.mark.parametrize("buffered", [False, True])
def test_a_caller_named_with_a_line_break_writes_one_line(
    buffered: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client certificate's subject is the client's text: a line break in its CN must not forge a line."""
    forged = (
        "certificate CN=etl\n2026-01-01T00:00:00.000Z info: GET /v4/admin 200 0.10ms 10.0.0.9 token admin"
    )
    stream = io.StringIO()
    buffer = LogBuffer(stream, "text")
    monkeypatch.setattr("butler.logs._buffer", buffer if buffered else None)
    logger = logging.getLogger("butler.rest.test-injection")
    with caplog.at_level(logging.INFO, logger.name):
        RequestLog(logger).write("GET", "/v4/butlerping", 403, 0.0, "10.0.0.1", forged)
    buffer.flush()
    written = stream.getvalue() if buffered else caplog.records[0].getMessage() + "\n"
    assert written.count("\n") == 1
    assert written.endswith(
        " 10.0.0.1 certificate CN=etl\\n2026-01-01T00:00:00.000Z info: GET /v4/admin 200 "
        "0.10ms 10.0.0.9 token admin\n"
    )
