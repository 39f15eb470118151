"""The key-value store over real sockets, on each backend: SQLite file, memory and a real Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.conftest import ButlerProcess, StartButler, base_config, free_port, run_butler, write_config

BACKENDS = ["sqlite", "memory", "redis"]


def kv_config(backend: str, redis_url: str, tmp_path: Path, max_keys: int = 1000) -> dict[str, Any]:
    document = base_config(keyValueStore=True, butlerping=True)
    document["Butler"]["keyValueStore"] = {
        "enable": True,
        "maxKeysPerNamespace": max_keys,
        "backend": backend,
        "sqlite": {"path": str(tmp_path / "kv.sqlite")},
        # Each test gets its own key prefix, so tests sharing the Redis server do not see each other.
        "redis": {"url": redis_url, "keyPrefix": f"test:{uuid.uuid4().hex}:"},
    }
    return document


@pytest.fixture(params=BACKENDS)
async def kv(
    request: pytest.FixtureRequest, start_butler: StartButler, redis_url: str, tmp_path: Path
) -> Any:
    base = await start_butler(kv_config(request.param, redis_url, tmp_path, max_keys=5))
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            async with http.request(method, base + path, **kwargs) as response:
                text = await response.text()
                if (
                    response.headers.get("Content-Type", "").startswith(("application/json", "text/plain"))
                    and text
                ):
                    return response.status, json.loads(text)
                return response.status, text

        yield call


TTL_RULE = "body/ttl must be 0 (never expires) or from 1 to 315360000000 milliseconds (10 years), got "


def error(message: str) -> dict[str, Any]:
    return {"statusCode": 400, "error": "Bad Request", "message": message}


async def test_pairs_lifecycle(kv: Any) -> None:
    assert await kv("GET", "/v4/keyvaluesnamespaces") == (200, [])
    assert await kv("POST", "/v4/keyvalues/ns1", json={"key": "k1", "value": "v1"}) == (
        201,
        {"namespace": "ns1", "key": "k1", "value": "v1", "ttl": 0},
    )
    assert await kv("POST", "/v4/keyvalues/ns1", json={"key": "k2", "value": 12345.5, "ttl": 1.9}) == (
        201,
        {"namespace": "ns1", "key": "k2", "value": "12345.5", "ttl": 1},
    )
    assert await kv("POST", "/v4/keyvalues/ns2", json={"key": "only-namespace"}) == (
        201,
        {"namespace": "ns2", "key": "only-namespace", "ttl": 0},
    )
    # Load scripts send numbers as text.
    assert await kv("POST", "/v4/keyvalues/ns1", json={"key": "k3", "value": "v3", "ttl": "60000"}) == (
        201,
        {"namespace": "ns1", "key": "k3", "value": "v3", "ttl": 60000},
    )
    assert await kv("GET", "/v4/keyvaluesnamespaces") == (200, ["ns1", "ns2"])
    assert await kv("GET", "/v4/keyvalues/ns1?key=k1") == (
        200,
        {"namespace": "ns1", "key": "k1", "value": "v1"},
    )
    assert await kv("GET", "/v4/keyvalues/ns1/keyexists?key=k1") == (
        200,
        {"keyExists": True, "keyValue": {"namespace": "ns1", "key": "k1", "value": "v1"}},
    )
    assert await kv("GET", "/v4/keyvalues/ns1/keyexists?key=nope") == (
        200,
        {"keyExists": False, "keyValue": {}},
    )
    # Overwriting keeps the key's place.
    assert (await kv("POST", "/v4/keyvalues/ns1", json={"key": "k1", "value": "v1b"}))[0] == 201
    assert await kv("GET", "/v4/keylist/ns1") == (
        200,
        {"namespace": "ns1", "keys": [{"key": "k1"}, {"key": "k3"}]},
    )  # k2 expired after 1 ms
    assert await kv("GET", "/v4/keyvalues/ns1?key=k1") == (
        200,
        {"namespace": "ns1", "key": "k1", "value": "v1b"},
    )
    assert await kv("DELETE", "/v4/keyvalues/ns1/k1") == (204, "")
    assert await kv("DELETE", "/v4/keyvalues/ns1/k1") == (400, error("Key 'k1' not found in namespace: ns1"))
    assert await kv("DELETE", "/v4/keyvalues/ns1") == (204, "")
    assert await kv("GET", "/v4/keyvaluesnamespaces") == (200, ["ns2"])
    assert await kv("GET", "/v4/keylist/ns2") == (200, {"namespace": "ns2", "keys": []})


async def test_ttl_is_exact(kv: Any) -> None:
    assert (await kv("POST", "/v4/keyvalues/t", json={"key": "short", "value": "x", "ttl": 300}))[0] == 201
    assert (await kv("POST", "/v4/keyvalues/t", json={"key": "reset", "value": "x", "ttl": 300}))[0] == 201
    assert (await kv("POST", "/v4/keyvalues/t", json={"key": "reset", "value": "y"}))[
        0
    ] == 201  # now permanent
    assert (await kv("GET", "/v4/keyvalues/t?key=short"))[0] == 200
    await asyncio.sleep(0.45)
    assert await kv("GET", "/v4/keyvalues/t?key=short") == (
        400,
        error("Key 'short' not found in namespace: t"),
    )
    assert await kv("GET", "/v4/keyvalues/t?key=reset") == (
        200,
        {"namespace": "t", "key": "reset", "value": "y"},
    )
    assert await kv("DELETE", "/v4/keyvalues/t/short") == (
        400,
        error("Key 'short' not found in namespace: t"),
    )


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("GET", "/v4/keyvalues/none?key=k", {}, 400, "Namespace not found: none"),
        ("GET", "/v4/keyvalues/none/keyexists?key=k", {}, 400, "Namespace not found: none"),
        ("GET", "/v4/keyvalues/ns", {}, 400, "querystring must have required property 'key'"),
        ("GET", "/v4/keyvalues/ns/keyexists", {}, 400, "querystring must have required property 'key'"),
        ("GET", "/v4/keylist/none", {}, 400, "Namespace not found: none"),
        ("DELETE", "/v4/keyvalues/none", {}, 400, "Namespace not found: none"),
        ("DELETE", "/v4/keyvalues/none/k", {}, 400, "Namespace not found: none"),
        ("DELETE", "/v4/keyvalues/ns/", {}, 400, "Required parameter is missing"),
        ("POST", "/v4/keyvalues/ns", {"json": {"value": "v"}}, 400, "Required parameter is missing"),
        (
            "POST",
            "/v4/keyvalues/ns",
            {"json": {"key": "", "value": "v"}},
            400,
            "Required parameter is missing",
        ),
        (
            "POST",
            "/v4/keyvalues/ns",
            {"json": {"key": "k", "value": {"a": 1}}},
            400,
            "body/value must be string",
        ),
        ("POST", "/v4/keyvalues/ns", {"json": {"key": ["a", "b"]}}, 400, "body/key must be string"),
        ("POST", "/v4/keyvalues/ns", {"json": {"key": "k", "ttl": "soon"}}, 400, "body/ttl must be number"),
        *(
            (
                "POST",
                "/v4/keyvalues/ns",
                {"json": {"key": "k", "value": "v", "ttl": ttl}},
                400,
                TTL_RULE + shown,
            )
            for ttl, shown in (
                (-5, "-5"),
                ("-1", "-1"),
                (1e308, "1e+308"),
                (0.5, "0.5"),
                (315_360_000_001, "315360000001"),
            )
        ),
        (
            "POST",
            "/v4/keyvalues/ns",
            {"json": {"key": "k" * 101, "value": "v"}},
            400,
            "body/key must NOT have more than 100 characters (it is part of URLs)",
        ),
        ("POST", "/v4/keyvalues/ns", {"json": ["k"]}, 400, "body must be object"),
        (
            "POST",
            "/v4/keyvalues/ns",
            {"data": b"{", "headers": {"Content-Type": "application/json"}},
            400,
            "Body is not valid JSON but content-type is set to 'application/json'",
        ),
    ],
)
async def test_bad_requests(
    kv: Any, method: str, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    assert (await kv("POST", "/v4/keyvalues/ns", json={"key": "present", "value": "v"}))[0] == 201
    code, body = await kv(method, path, **kwargs)
    assert code == status
    assert body["message"] == message


async def test_names_and_values_are_stored_exactly(kv: Any) -> None:
    namespace = "a/b:c ü 名前"
    encoded = "a%2Fb%3Ac%20%C3%BC%20%E5%90%8D%E5%89%8D"
    value = 'line1\nline2 "quoted" ; 😀 ' + "x" * 100_000
    assert (await kv("POST", f"/v4/keyvalues/{encoded}", json={"key": "k:1/2", "value": value}))[0] == 201
    assert await kv("GET", f"/v4/keyvalues/{encoded}?key=k%3A1%2F2") == (
        200,
        {"namespace": namespace, "key": "k:1/2", "value": value},
    )
    assert await kv("GET", f"/v4/keylist/{encoded}") == (
        200,
        {"namespace": namespace, "keys": [{"key": "k:1/2"}]},
    )
    assert namespace in (await kv("GET", "/v4/keyvaluesnamespaces"))[1]
    assert (await kv("GET", f"/v4/keyvalues/{'n' * 101}?key=k"))[0] == 414


async def test_longest_names_and_ttl_can_be_read_back(kv: Any) -> None:
    # The worst case for the URL: characters that take 4 bytes in UTF-8, 12 when percent-encoded.
    namespace, key = "😀" * 100, "😀" * 100
    body = {"key": key, "value": "v", "ttl": 315_360_000_000}
    assert await kv("POST", f"/v4/keyvalues/{quote(namespace)}", json=body) == (
        201,
        {"namespace": namespace, "key": key, "value": "v", "ttl": 315_360_000_000},
    )
    assert await kv("GET", f"/v4/keyvalues/{quote(namespace)}?key={quote(key)}") == (
        200,
        {"namespace": namespace, "key": key, "value": "v"},
    )
    assert (await kv("GET", f"/v4/keyvalues/{quote(namespace)}/keyexists?key={quote(key)}"))[1]["keyExists"]
    assert await kv("GET", f"/v4/keylist/{quote(namespace)}") == (
        200,
        {"namespace": namespace, "keys": [{"key": key}]},
    )
    assert (await kv("DELETE", f"/v4/keyvalues/{quote(namespace)}/{quote(key)}"))[0] == 204
    assert (await kv("DELETE", f"/v4/keyvalues/{quote(namespace)}"))[0] == 204


async def test_key_limit(kv: Any) -> None:
    for number in range(5):
        assert (await kv("POST", "/v4/keyvalues/full", json={"key": f"k{number}", "value": "v"}))[0] == 201
    status, body = await kv("POST", "/v4/keyvalues/full", json={"key": "k5", "value": "v"})
    assert status == 400 and "maximum of 5 keys" in body["message"]
    # Overwriting an existing key is fine; after a delete there is room again.
    assert (await kv("POST", "/v4/keyvalues/full", json={"key": "k4", "value": "w"}))[0] == 201
    assert (await kv("DELETE", "/v4/keyvalues/full/k0"))[0] == 204
    assert (await kv("POST", "/v4/keyvalues/full", json={"key": "k5", "value": "v"}))[0] == 201


async def test_concurrent_writers_lose_nothing(kv: Any) -> None:
    async def writer(number: int) -> None:
        for round_ in range(10):
            status, _ = await kv(
                "POST",
                "/v4/keyvalues/busy",
                json={"key": f"w{number % 5}", "value": f"{number}:{round_}" * 50},
            )
            assert status == 201

    await asyncio.gather(*(writer(n) for n in range(20)))
    status, listing = await kv("GET", "/v4/keylist/busy")
    assert status == 200
    # Concurrent first writes may land in any order; each key is listed once.
    assert sorted(k["key"] for k in listing["keys"]) == [f"w{n}" for n in range(5)]
    for n in range(5):
        _, pair = await kv("GET", f"/v4/keyvalues/busy?key=w{n}")
        writer_number, round_ = pair["value"][: pair["value"].index(":") + 2].split(":")
        assert pair["value"] == f"{writer_number}:{round_[0]}" * 50  # never torn
        assert int(writer_number) % 5 == n


# --- Durability and sharing --------------------------------------------------------------------------


async def wait_until_up(process: ButlerProcess, port: int) -> None:
    await asyncio.get_running_loop().run_in_executor(None, process.wait_for_port, port)


async def test_sqlite_pairs_survive_sigkill(
    tmp_path: Path, redis_url: str, butler_process: Callable[..., ButlerProcess]
) -> None:
    port = free_port()
    document = kv_config("sqlite", redis_url, tmp_path)
    document["Butler"]["restServerConfig"]["serverPort"] = port
    config = write_config(tmp_path / "butler.yaml", document)
    base = f"http://127.0.0.1:{port}"
    first = butler_process("serve", "-c", str(config), "--api-rate-limit", "0")
    await wait_until_up(first, port)
    async with aiohttp.ClientSession() as http:
        for key, ttl in (("forever", 0), ("long", 60_000), ("short", 300)):
            async with http.post(
                f"{base}/v4/keyvalues/durable", json={"key": key, "value": key, "ttl": ttl}
            ) as r:
                assert r.status == 201
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        await asyncio.sleep(0.4)  # "short" expires while Butler is down
        second = butler_process("serve", "-c", str(config), "--api-rate-limit", "0")
        await wait_until_up(second, port)
        async with http.get(f"{base}/v4/keylist/durable") as r:
            assert (await r.json(content_type=None))["keys"] == [{"key": "forever"}, {"key": "long"}]
        async with http.get(f"{base}/v4/keyvalues/durable?key=long") as r:
            assert (await r.json())["value"] == "long"
        async with http.get(f"{base}/v4/keyvalues/durable?key=short") as r:
            assert r.status == 400


async def test_two_butlers_share_redis(
    tmp_path: Path, redis_url: str, butler_process: Callable[..., ButlerProcess]
) -> None:
    prefix = f"shared:{uuid.uuid4().hex}:"
    bases = []
    for number in range(2):
        port = free_port()
        document = kv_config("redis", redis_url, tmp_path)
        document["Butler"]["restServerConfig"]["serverPort"] = port
        document["Butler"]["keyValueStore"]["redis"]["keyPrefix"] = prefix
        process = butler_process("serve", "-c", str(write_config(tmp_path / f"b{number}.yaml", document)))
        await wait_until_up(process, port)
        bases.append(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{bases[0]}/v4/keyvalues/shared", json={"key": "k", "value": "from one"}) as r:
            assert r.status == 201
        async with http.get(f"{bases[1]}/v4/keyvalues/shared?key=k") as r:
            assert (await r.json())["value"] == "from one"
        async with http.delete(f"{bases[1]}/v4/keyvalues/shared") as r:
            assert r.status == 204
        async with http.get(f"{bases[0]}/v4/keyvaluesnamespaces") as r:
            assert await r.json() == []


async def test_redis_down_is_a_503(start_butler: StartButler, tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    base = await start_butler(kv_config("redis", dead, tmp_path))
    async with aiohttp.ClientSession() as http, http.get(f"{base}/v4/keyvaluesnamespaces") as r:
        assert r.status == 503
        assert "Redis cannot be reached" in (await r.json())["message"]


def test_unusable_sqlite_path_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    document = kv_config("sqlite", "redis://127.0.0.1:1/0", tmp_path)
    document["Butler"]["keyValueStore"]["sqlite"]["path"] = str(blocker / "kv.sqlite")
    result = run_butler("serve", "-c", str(write_config(tmp_path / "b.yaml", document)))
    assert result.returncode == 1
    assert "cannot open the key-value store file" in result.stderr
