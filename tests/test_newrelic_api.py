"""``POST /v4/newrelic/event`` and ``POST /v4/newrelic/metric``: a running Butler posting to local HTTP
receivers standing in for New Relic; exact outgoing requests, upstream's answers, and every kind of bad
input refused with Butler's envelope before anything is sent."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartButler, base_config, free_port
from tests.receivers import Receiver, status

FLAGS = {"newRelic.postNewRelicEvent": True, "newRelic.postNewRelicMetric": True}
ACCOUNTS = [
    {"accountName": "Prod", "insertApiKey": "NRII-prod", "accountId": 1111111},
    {"accountName": "Test", "insertApiKey": "NRII-test", "accountId": "2222222"},
]


def config(event_url: str, metric_url: str, accounts: list[str] | None = None) -> dict[str, Any]:
    document = base_config(**FLAGS)
    names = ["Prod", "Test"] if accounts is None else accounts
    shared = {"destinationAccount": names, "header": [{"name": "X-My-Header", "value": "Header value"}]}
    document["Butler"].update(
        {
            "thirdPartyToolsCredentials": {"newRelic": ACCOUNTS},
            "restServerEndpointsConfig": {
                "newRelic": {
                    "postNewRelicEvent": {
                        **shared,
                        "url": event_url,
                        "attribute": {
                            "static": [{"name": "env", "value": "prod"}, {"name": "team", "value": "bi"}]
                        },
                    },
                    "postNewRelicMetric": {
                        **shared,
                        "url": metric_url,
                        "attribute": {"static": [{"name": "env", "value": "prod"}]},
                    },
                }
            },
        }
    )
    return document


Started = tuple[str, Receiver]


@pytest.fixture
async def butler_and_relic(
    start_butler: StartButler, receivers: Callable[[], Awaitable[Receiver]]
) -> Callable[..., Awaitable[Started]]:
    async def start(accounts: list[str] | None = None) -> Started:
        relic = await receivers()
        origin = relic.url.removesuffix("/hook")
        base = await start_butler(config(origin, f"{origin}/metric/v1", accounts))
        return base, relic

    return start


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, str, str]:
    async with http.post(url, json=body) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_an_event_goes_to_every_account_and_the_first_answer_is_returned(
    butler_and_relic: Callable[..., Awaitable[Started]], http: aiohttp.ClientSession
) -> None:
    base, relic = await butler_and_relic()
    relic.answers = [status(202), status(500)]
    body = {
        "eventType": "qs_reloadDone",
        "timestamp": 1700000000000,
        "attributes": [{"name": "env", "value": "test"}, {"name": "app", "value": "Sales"}],
    }
    assert await post(http, f"{base}/v4/newrelic/event", body) == (
        202,
        "text/plain; charset=utf-8",
        "Accepted",
    )
    # The event object itself (not an array); the request's attributes after the static ones, winning.
    event = {
        "timestamp": 1700000000000,
        "eventType": "qs_reloadDone",
        "env": "test",
        "team": "bi",
        "app": "Sales",
    }
    got = sorted(zip(relic.paths, relic.got, strict=True), key=lambda item: item[0])
    assert [path for path, _ in got] == ["/v1/accounts/1111111/events", "/v1/accounts/2222222/events"]
    for (_, (_, headers, sent)), key in zip(got, ("NRII-prod", "NRII-test"), strict=True):
        assert sent == event
        assert headers["Content-Type"] == "application/json; charset=utf-8"
        assert (headers["Api-Key"], headers["X-My-Header"]) == (key, "Header value")


async def test_an_event_without_timestamp_is_stamped_now(
    butler_and_relic: Callable[..., Awaitable[Started]], http: aiohttp.ClientSession
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    before = int(time.time() * 1000)
    for timestamp in (None, 0, -5):
        body = {"eventType": "e", **({"timestamp": timestamp} if timestamp is not None else {})}
        status_code, _, text = await post(http, f"{base}/v4/newrelic/event", body)
        # The receiver answers 200 OK, which New Relic's event API counts as taken too.
        assert (status_code, text) == (202, "OK")
    after = int(time.time() * 1000)
    for _, _, sent in relic.got:
        assert set(sent) == {"timestamp", "eventType", "env", "team"}
        assert before <= sent["timestamp"] <= after


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (status(500), (500, "Failed posting event to New Relic")),
        (status(403), (500, "Failed posting event to New Relic")),
        (status(201), (201, "New Relic answered 201 Created")),
    ],
)
async def test_an_event_new_relic_does_not_take(
    butler_and_relic: Callable[..., Awaitable[Started]],
    http: aiohttp.ClientSession,
    answer: Any,
    expected: tuple[int, str],
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    relic.answers = [answer]
    code, content_type, text = await post(http, f"{base}/v4/newrelic/event", {"eventType": "e"})
    assert content_type.startswith("application/json")
    assert (code, json.loads(text)["message"]) == expected
    assert json.loads(text)["statusCode"] == code


async def test_an_event_answered_204_is_answered_204_without_a_body(
    butler_and_relic: Callable[..., Awaitable[Started]], http: aiohttp.ClientSession
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    relic.answers = [status(204)]
    code, _, text = await post(http, f"{base}/v4/newrelic/event", {"eventType": "e"})
    assert (code, text) == (204, "")
    # The connection stays usable: the answer had no body to leave behind.
    relic.answers = [status(202)]
    assert (await post(http, f"{base}/v4/newrelic/event", {"eventType": "e"}))[0] == 202


async def test_a_metric_has_upstreams_shape_and_only_202_is_success(
    butler_and_relic: Callable[..., Awaitable[Started]], http: aiohttp.ClientSession
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    relic.answers = [status(202), status(200)]
    body = {
        "name": "qs_orders",
        "type": "gauge",
        "value": 42.5,
        "timestamp": 1700000000000,
        "interval": 60000,
        "attributes": [{"name": "app", "value": "Sales"}],
    }
    assert await post(http, f"{base}/v4/newrelic/metric", body) == (
        202,
        "text/plain; charset=utf-8",
        "Accepted",
    )
    [(_, headers, sent)] = relic.got
    assert relic.paths == ["/metric/v1"]
    assert sent == [
        {
            "common": {"timestamp": 1700000000000, "attributes": {"env": "prod", "app": "Sales"}},
            "metrics": [{"name": "qs_orders", "type": "gauge", "value": 42.5}],
        }
    ]
    assert (headers["Api-Key"], headers["X-My-Header"], headers["Content-Type"]) == (
        "NRII-prod",
        "Header value",
        "application/json; charset=utf-8",
    )
    code, _, text = await post(http, f"{base}/v4/newrelic/metric", body)  # New Relic answers 200 now
    assert (code, json.loads(text)["message"]) == (500, "Failed posting metric to New Relic")


async def test_no_known_account_is_an_empty_200_and_an_unreachable_one_a_500(
    start_butler: StartButler, http: aiohttp.ClientSession
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    base = await start_butler(config(nowhere, f"{nowhere}/metric/v1", ["Nobody"]))
    assert await post(http, f"{base}/v4/newrelic/event", {"eventType": "e"}) == (200, "", "")
    metric = {"name": "m", "type": "gauge", "value": 1}
    assert await post(http, f"{base}/v4/newrelic/metric", metric) == (200, "", "")
    base = await start_butler(config(nowhere, f"{nowhere}/metric/v1", ["Prod"]))
    code, _, text = await post(http, f"{base}/v4/newrelic/event", {"eventType": "e"})
    assert (code, json.loads(text)["message"]) == (500, "Failed posting event to New Relic")
    code, _, text = await post(http, f"{base}/v4/newrelic/metric", metric)
    assert (code, json.loads(text)["message"]) == (500, "Failed posting metric to New Relic")


EVENT_CASES: list[tuple[Any, str]] = [
    ({}, "body must have required property 'eventType'"),
    ({"eventType": "x" * 255}, "body/eventType must NOT have more than 254 characters"),
    ({"eventType": {"a": 1}}, "body/eventType must be string"),
    ({"eventType": "e", "timestamp": "soon"}, "body/timestamp must be number"),
    # As ajv with coerceTypes "array": a lone value is taken as a list of one.
    ({"eventType": "e", "attributes": "a=b"}, "body/attributes/0 must be object"),
    (
        {"eventType": "e", "attributes": [{"name": "a"}]},
        "body/attributes/0 must have required property 'value'",
    ),
    (
        {"eventType": "e", "attributes": [{"value": "v"}]},
        "body/attributes/0 must have required property 'name'",
    ),
    (
        {"eventType": "e", "attributes": [{"name": "a", "value": "v" * 4097}]},
        "body/attributes/0/value must NOT have more than 4096 characters",
    ),
    (
        {"eventType": "e", "attributes": [{"name": "n" * 255, "value": "v"}]},
        "body/attributes/0/name must NOT have more than 254 characters",
    ),
    ([{"eventType": "e"}], "body must be object"),
]
METRIC_CASES: list[tuple[Any, str]] = [
    ({"type": "gauge", "value": 1}, "body must have required property 'name'"),
    ({"name": "m", "value": 1}, "body must have required property 'type'"),
    ({"name": "m", "type": "gauge"}, "body must have required property 'value'"),
    ({"name": "m", "type": "count", "value": 1}, "body/type must be equal to one of the allowed values"),
    ({"name": "m", "type": "gauge", "value": "many"}, "body/value must be number"),
    ({"name": "m" * 255, "type": "gauge", "value": 1}, "body/name must NOT have more than 254 characters"),
    ({"name": "m", "type": "gauge", "value": 1, "interval": "1m"}, "body/interval must be number"),
    ({"name": "m", "type": "gauge", "value": 1, "attributes": [5]}, "body/attributes/0 must be object"),
]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [("event", body, message) for body, message in EVENT_CASES]
    + [("metric", body, message) for body, message in METRIC_CASES],
)
async def test_bad_input_is_refused_saying_what_to_fix(
    butler_and_relic: Callable[..., Awaitable[Started]],
    http: aiohttp.ClientSession,
    path: str,
    body: Any,
    message: str,
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    code, content_type, text = await post(http, f"{base}/v4/newrelic/{path}", body)
    assert (code, content_type) == (400, "application/json; charset=utf-8")
    envelope = json.loads(text)
    assert (envelope["statusCode"], envelope["error"], envelope["message"]) == (400, "Bad Request", message)
    assert relic.got == []


@pytest.mark.parametrize("path", ["event", "metric"])
async def test_broken_oversized_and_untyped_bodies_are_refused(
    butler_and_relic: Callable[..., Awaitable[Started]], http: aiohttp.ClientSession, path: str
) -> None:
    base, relic = await butler_and_relic(["Prod"])
    url = f"{base}/v4/newrelic/{path}"
    json_type = {"Content-Type": "application/json"}
    async with http.post(url, data=b'{"eventType": "e",', headers=json_type) as response:
        assert response.status == 400
        assert "JSON" in (await response.json())["message"]
    huge = json.dumps(
        {"eventType": "e", "name": "m", "attributes": [{"name": "a", "value": "v" * 2_000_000}]}
    )
    async with http.post(url, data=huge.encode(), headers=json_type) as response:
        assert response.status == 413
        assert (await response.json())["message"] == "Request body is too large"
    async with http.post(url, data=b"eventType=e", headers={"Content-Type": "text/plain"}) as response:
        assert response.status == 400
        assert (await response.json())["message"].startswith("body must be object (the body was sent as")
    assert relic.got == []


async def test_the_endpoints_are_off_without_their_flags(
    start_butler: StartButler, http: aiohttp.ClientSession
) -> None:
    document = config("http://127.0.0.1:9", "http://127.0.0.1:9/metric/v1")
    document["Butler"]["restServerEndpointsEnable"]["newRelic"] = {"postNewRelicEvent": True}
    base = await start_butler(document)
    async with http.post(
        f"{base}/v4/newrelic/metric", json={"name": "m", "type": "gauge", "value": 1}
    ) as response:
        assert response.status == 404
    async with http.post(f"{base}/v4/newrelic/event", json={}) as response:
        assert response.status == 400
