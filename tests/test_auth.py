"""Authentication of the REST API (``Butler.restServerConfig.auth``): tokens, scopes, client certificates,
per-token limits, and tokens never shown, over real sockets."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import yaml
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from butler.auth import SCOPES
from butler.auth.tokens import (
    SQLITE_NAME,
    RedisTokens,
    SqliteTokens,
    TokenRecord,
    TokenStore,
    digest,
    new_token,
)
from butler.config import ConfigError, parse_config
from butler.http.docs import load_openapi
from butler.http.middleware import Context, build_chain
from butler.http.middleware.authentication import Authentication
from butler.http.routing import Reply, Route
from tests.conftest import StartButler, base_config, run_butler, write_config
from tests.test_apps import engine_config
from tests.test_task_start import butler_config

#: Operations open to all: monitoring's, and the status page's login form and logout.
OPEN = {("get", "/health"), ("get", "/metrics"), ("get", "/status/login"), ("post", "/status/logout")}
METHODS = ("get", "put", "post", "delete", "patch")


def auth_config(document: dict[str, Any] | None = None, **auth: Any) -> dict[str, Any]:
    document = document or base_config()
    document["Butler"]["restServerConfig"]["auth"] = {"enable": True, **auth}
    return document


async def make_token(
    folder: Path, name: str, *scopes: str, store: TokenStore | None = None, **fields: Any
) -> str:
    """A token in the store Butler started in ``folder`` reads (its SQLite file, or ``store``)."""
    token = new_token()
    tokens = store or SqliteTokens(folder / SQLITE_NAME)
    await tokens.create(TokenRecord(name, digest(token), scopes, time.time(), **fields))
    if store is None:
        await tokens.close()
    return token


async def call(
    method: str, url: str, token: str | None = None, headers: dict[str, str] | None = None, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as http, http.request(method, url, headers=sent, **kwargs) as answer:
        text = await answer.text()
        try:
            body: Any = yaml.safe_load(text) if answer.content_type == "application/json" else text
        except yaml.YAMLError:
            body = text
        return answer.status, body, answer


# --- The document --------------------------------------------------------------------------------------


def test_every_operation_names_a_known_scope_and_the_document_offers_both_schemes() -> None:
    document = load_openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            if (method, path) in OPEN:
                assert "x-scope" not in operation and operation["security"] == [], path
            else:
                assert operation.get("x-scope") in SCOPES, f"{method} {path}"
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http", "scheme": "bearer"}
    assert schemes["tokenHeader"]["in"] == "header"
    assert document["security"] == [{"bearerToken": []}, {"tokenHeader": []}]


# --- Every endpoint -------------------------------------------------------------------------------------


@pytest.fixture
async def everything(start_butler: StartButler, simulator: Any, site_certs: Any, tmp_path: Path) -> str:
    """Butler with every endpoint on (Qlik's against the simulator, alerts by webhook, the status page) and
    auth on."""
    flags = {name: True for name in ("senseListApps", "senseAppDump", "senseAppReload")}
    document = butler_config(simulator, site_certs, **flags)
    document["Butler"]["restServerEndpointsEnable"] = base_config()["Butler"]["restServerEndpointsEnable"]
    for flag in ("senseStartTask", "senseListApps", "senseAppDump", "senseAppReload"):
        document["Butler"]["restServerEndpointsEnable"][flag] = True
    document["Butler"]["configEngine"] = engine_config(simulator)
    document["Butler"]["webhookNotification"] = {"enable": True}
    document["Butler"]["prometheus"] = {"enable": True}
    document["Butler"]["statusPage"] = {"enable": True}
    return await start_butler(auth_config(document))


def _url(base: str, path: str) -> str:
    return base + "/".join("x" if part.startswith("{") else part for part in path.split("/"))


async def test_every_endpoint_needs_its_scope(everything: str, tmp_path: Path) -> None:
    base = everything
    status, published, _ = await call("GET", f"{base}/documentation/json")
    assert status == 200
    source = load_openapi()["paths"]
    # Every operation of the document is served here, so none escapes the checks below.
    assert {(m, p) for p, i in published["paths"].items() for m in i if m in METHODS} == {
        (m, p) for p, i in source.items() for m in i if m in METHODS
    }
    tokens = {}
    for scope in SCOPES:
        name = scope.replace(":", "-")
        tokens[scope] = (
            await make_token(tmp_path, f"only-{name}", scope),
            await make_token(tmp_path, f"all-but-{name}", *(s for s in SCOPES if s != scope)),
        )
    checked = 0
    for path, item in source.items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            url = _url(base, path)
            status, body, _ = await call(method.upper(), url)
            if (method, path) in OPEN:
                assert status in (200, 204), (method, path, status, body)
                continue
            scope = operation["x-scope"]
            assert status == 401, (method, path, status, body)
            assert body["error"] == "Unauthorized"
            right, wrong = tokens[scope]
            status, body, _ = await call(method.upper(), url, wrong)
            assert status == 403 and f"lacks scope {scope}" in body["message"], (method, path, body)
            status, body, _ = await call(method.upper(), url, right)
            assert status != 401, (method, path, status, body)
            assert not (status == 403 and "scope" in str(body)), (method, path, body)
            checked += 1
    assert checked >= 50


async def test_with_auth_off_nothing_needs_a_token(start_butler: StartButler) -> None:
    base = await start_butler(base_config())
    status, _, _ = await call("GET", f"{base}/v4/butlerping")
    assert status == 200
    status, _, _ = await call("POST", f"{base}/v4/keyvalues/ns", json={"key": "k", "value": "v"})
    assert status == 201


# --- Tokens ----------------------------------------------------------------------------------------------


async def test_a_token_revoked_through_the_cli_is_refused_at_once(
    start_butler: StartButler, tmp_path: Path
) -> None:
    document = auth_config()
    config = write_config(tmp_path / "butler.yaml", document)
    base = await start_butler(document)
    made = run_butler("token", "create", "-c", str(config), "--name", "etl-nightly", "--scope", "status")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert (await call("GET", f"{base}/v4/butlerping", token))[0] == 200
    listed = run_butler("token", "list", "-c", str(config)).stdout.splitlines()[1].split("\t")
    assert listed[0] == "etl-nightly" and listed[4].startswith("20"), listed  # its first use, written at once
    revoked = run_butler("token", "revoke", "-c", str(config), "etl-nightly")
    assert revoked.returncode == 0 and "etl-nightly revoked" in revoked.stdout
    status, body, answer = await call("GET", f"{base}/v4/butlerping", token)
    assert (status, body["message"]) == (401, "Unknown or revoked token")
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


class KeptAlive:
    """One HTTP/1.1 connection, kept open: the requests of a client that reuses its connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        lines = [f"GET {path} HTTP/1.1", "Host: butler", *(f"{k}: {v}" for k, v in headers.items())]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in head[1:] if line)
        assert fields.get("Connection") != "close", head
        body = await self.reader.readexactly(int(fields["Content-Length"]))
        return int(head[0].split()[1]), yaml.safe_load(body)


async def test_on_a_kept_alive_connection_each_request_is_checked_again(
    start_butler: StartButler, tmp_path: Path
) -> None:
    """A connection that sent a token before is spared its hash, not its checks: another token sent on the
    same connection is its own caller with its own scopes, and a revoke is seen by the next request."""
    document = auth_config()
    config = write_config(tmp_path / "butler.yaml", document)
    base = await start_butler(document)
    made = run_butler("token", "create", "-c", str(config), "--name", "etl", "--scope", "status")
    token = made.stdout.strip()
    kv_only = run_butler("token", "create", "-c", str(config), "--name", "kv", "--scope", "kv:read")
    host, port = base.removeprefix("http://").split(":")
    connection = KeptAlive(*await asyncio.open_connection(host, int(port)))
    ping = "/v4/butlerping"
    bearer = {"Authorization": f"Bearer {token}"}
    try:
        assert (await connection.get(ping, bearer))[0] == 200
        assert (await connection.get(ping, bearer))[0] == 200
        status, body = await connection.get(ping, {"Authorization": f"Bearer {kv_only.stdout.strip()}"})
        needed = "Token kv lacks scope status, needed for GET /v4/butlerping"
        assert (status, body["message"]) == (403, needed)
        assert (await connection.get(ping, bearer))[0] == 200
        assert (await connection.get(ping, {}))[0] == 401
        assert (await connection.get(ping, {"X-Butler-Token": token}))[0] == 200
        assert (await connection.get(ping, bearer))[0] == 200
        assert run_butler("token", "revoke", "-c", str(config), "etl").returncode == 0
        status, body = await connection.get(ping, bearer)
        assert (status, body["message"]) == (401, "Unknown or revoked token")
    finally:
        connection.writer.close()


async def test_an_expired_token_is_refused(start_butler: StartButler, tmp_path: Path) -> None:
    base = await start_butler(auth_config())
    old = await make_token(tmp_path, "old", "status", expires=time.time() - 1)
    soon = await make_token(tmp_path, "soon", "status", expires=time.time() + 1.0)
    status, body, _ = await call("GET", f"{base}/v4/butlerping", old)
    assert (status, body["message"]) == (401, "Token old has expired")
    assert (await call("GET", f"{base}/v4/butlerping", soon))[0] == 200
    await asyncio.sleep(1.1)
    assert (await call("GET", f"{base}/v4/butlerping", soon))[0] == 401


async def test_the_allow_list(start_butler: StartButler, tmp_path: Path) -> None:
    base = await start_butler(auth_config())
    elsewhere = await make_token(tmp_path, "elsewhere", "status", allow_ips=("10.0.0.0/8", "::1/128"))
    here = await make_token(tmp_path, "here", "status", allow_ips=("10.0.0.0/8", "127.0.0.0/8"))
    status, body, _ = await call("GET", f"{base}/v4/butlerping", elsewhere)
    assert (status, body["message"]) == (403, "Token elsewhere may not be used from 127.0.0.1")
    assert (await call("GET", f"{base}/v4/butlerping", here))[0] == 200


async def test_the_token_header(start_butler: StartButler, tmp_path: Path) -> None:
    base = await start_butler(auth_config())
    token = await make_token(tmp_path, "script", "kv:write", "kv:read")
    ping = f"{base}/v4/keyvalues/ns"
    status, _, _ = await call(
        "POST", ping, headers={"X-Butler-Token": token}, json={"key": "k", "value": "v"}
    )
    assert status == 201
    assert (await call("GET", ping + "?key=k", headers={"x-butler-token": token}))[0] == 200


async def test_a_configured_token_header(start_butler: StartButler, tmp_path: Path) -> None:
    base = await start_butler(auth_config(tokenHeader="X-Load-Script-Key"))
    token = await make_token(tmp_path, "script", "status")
    url = f"{base}/v4/butlerping"
    assert (await call("GET", url, headers={"X-Load-Script-Key": token}))[0] == 200
    assert (await call("GET", url, headers={"X-Butler-Token": token}))[0] == 401
    # Swagger UI's "Authorize" sends the token in the header the served document names.
    _, document, _ = await call("GET", f"{base}/documentation/json")
    assert document["components"]["securitySchemes"]["tokenHeader"]["name"] == "X-Load-Script-Key"


async def test_the_access_log_names_the_caller(
    start_butler: StartButler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="butler.rest")
    base = await start_butler(auth_config())
    token = await make_token(tmp_path, "etl-nightly", "status")
    assert (await call("GET", f"{base}/v4/butlerping", token))[0] == 200
    assert (await call("GET", f"{base}/v4/keyvaluesnamespaces", token))[0] == 403
    assert (await call("GET", f"{base}/v4/butlerping"))[0] == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "butler.rest" and " /v4/" in r.getMessage()]
    assert len(lines) == 3, lines
    assert lines[0].startswith("GET /v4/butlerping 200 ")
    assert lines[0].endswith(" 127.0.0.1 token etl-nightly")
    assert lines[1].startswith("GET /v4/keyvaluesnamespaces 403 ") and lines[1].endswith(" token etl-nightly")
    assert lines[2].startswith("GET /v4/butlerping 401 ") and lines[2].endswith("ms 127.0.0.1")


async def test_a_token_of_its_own_rate_limit(start_butler: StartButler, tmp_path: Path) -> None:
    base = await start_butler(auth_config())
    limited = await make_token(tmp_path, "limited", "status", rate_limit=3)
    free = await make_token(tmp_path, "free", "status")
    url = f"{base}/v4/butlerping"
    assert [(await call("GET", url, limited))[0] for _ in range(4)] == [200, 200, 200, 429]
    assert [(await call("GET", url, free))[0] for _ in range(4)] == [200] * 4


async def test_refused_requests_count_toward_the_per_ip_limit(start_butler: StartButler) -> None:
    """Guessing tokens is slowed down by the per-IP limit, as any other request is."""
    base = await start_butler(auth_config(), rate_limit=3)
    bad = {"Authorization": f"Bearer {new_token()}"}
    statuses = [(await call("GET", f"{base}/v4/butlerping", headers=bad))[0] for _ in range(4)]
    assert statuses == [401, 401, 401, 429]


async def test_open_routes_stay_open(start_butler: StartButler) -> None:
    document = auth_config()
    document["Butler"]["prometheus"] = {"enable": True}
    base = await start_butler(document)
    for path in ("/health", "/metrics", "/documentation", "/documentation/json", "/documentation/yaml"):
        assert (await call("GET", base + path))[0] == 200, path


async def test_the_caller_is_named_for_the_audit_log(tmp_path: Path) -> None:
    store = SqliteTokens(tmp_path / SQLITE_NAME)
    token = await make_token(tmp_path, "etl", "status", store=store)
    seen: list[str | None] = []

    async def end(context: Context) -> Reply:
        seen.append(context.caller)
        return Reply(200, b"")

    chain = build_chain(end, lambda app: Authentication(app, store))
    request = make_mocked_request("GET", "/v4/butlerping", headers={"Authorization": f"Bearer {token}"})
    context = Context(request, 0.0)

    async def handler(request: Any) -> Reply:
        raise AssertionError

    context.route = Route("GET", "/v4/butlerping", handler, scope="status")
    await chain(context)
    assert seen == ["token etl"]
    await store.close()


# --- Bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        ("Basic dXNlcjpwYXNz", "Malformed Authorization header: expected 'Bearer <token>'"),
        ("Bearer", "Malformed Authorization header: expected 'Bearer <token>'"),
        ("Bearer    ", "Malformed Authorization header: expected 'Bearer <token>'"),
        ("Bearer abc", "Malformed token: Butler tokens start with bt_ (butler token create)"),
        ("Bearer bt_short", "Malformed token: Butler tokens start with bt_ (butler token create)"),
        (
            "Bearer bt_" + "a" * 43 + " extra",
            "Malformed token: Butler tokens start with bt_ (butler token create)",
        ),
        ("Bearer bt_" + "a" * 8000, "Malformed token: Butler tokens start with bt_ (butler token create)"),
        ("Bearer " + new_token(), "Unknown or revoked token"),
    ],
)
async def test_bad_credentials_are_401_with_a_clear_message(
    start_butler: StartButler, authorization: str, message: str
) -> None:
    base = await start_butler(auth_config())
    status, body, _ = await call("GET", f"{base}/v4/butlerping", headers={"Authorization": authorization})
    assert (status, body["message"]) == (401, message)
    sent = authorization.partition(" ")[2].strip()
    assert not sent or sent not in body["message"]


async def test_a_header_over_the_line_limit_is_refused(start_butler: StartButler) -> None:
    base = await start_butler(auth_config())
    status, _, _ = await call(
        "GET", f"{base}/v4/butlerping", headers={"Authorization": "Bearer bt_" + "a" * 20000}
    )
    assert status in (400, 431)


def test_a_certificate_given_an_unknown_scope_is_a_config_error() -> None:
    document = auth_config(certificates=[{"subject": "CN=etl", "scopes": ["kv:read", "tasks:stop"]}])
    with pytest.raises(ConfigError) as error:
        parse_config(document, base_dir=Path())
    assert "Butler.restServerConfig.auth.certificates[0].scopes[1]: expected one of status" in str(
        error.value
    )
    assert "got 'tasks:stop'" in str(error.value)


# --- The CLI -------------------------------------------------------------------------------------------


def test_the_cli_prints_a_token_once_lists_without_it_and_revokes(tmp_path: Path) -> None:
    config = write_config(tmp_path / "butler.yaml", auth_config())
    made = run_butler(
        "token",
        "create",
        "-c",
        str(config),
        "--name",
        "etl-nightly",
        "--scope",
        "tasks:start",
        "--scope",
        "kv:write",
        "--expires",
        "90d",
        "--allow-ip",
        "10.1.0.0/16",
        "--rate-limit",
        "60",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("bt_") and len(token) >= 43 and "\n" not in token
    assert token not in made.stderr
    listed = run_butler("token", "list", "-c", str(config))
    assert listed.returncode == 0
    [header, row] = listed.stdout.splitlines()
    assert header.split("\t")[:5] == ["name", "scopes", "created", "expires", "last used"]
    fields = row.split("\t")
    assert fields[:2] == ["etl-nightly", "tasks:start,kv:write"]
    assert fields[5:] == ["10.1.0.0/16", "60/min"]
    assert token not in listed.stdout and digest(token) not in listed.stdout
    again = run_butler("token", "create", "-c", str(config), "--name", "etl-nightly", "--scope", "status")
    assert again.returncode == 1 and "a token named etl-nightly exists already" in again.stderr
    other = run_butler("token", "create", "-c", str(config), "--name", "other", "--scope", "status")
    assert other.stdout.strip().startswith("bt_") and other.stdout.strip() != token  # random, not derived
    revoked = run_butler("token", "revoke", "-c", str(config), "etl-nightly")
    assert revoked.returncode == 0
    assert run_butler("token", "revoke", "-c", str(config), "other").returncode == 0
    assert run_butler("token", "list", "-c", str(config)).stdout.splitlines()[1:] == []
    gone = run_butler("token", "revoke", "-c", str(config), "etl-nightly")
    assert gone.returncode == 1 and "no token named etl-nightly" in gone.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--scope", "tasks:stop"], "--scope tasks:stop: no such scope; the scopes are status, tasks:start"),
        (["--scope", "status", "--expires", "soon"], "--expires: expected a duration such as 90d"),
        (["--scope", "status", "--allow-ip", "10.1.0.0/40"], "--allow-ip: not an address or network"),
        (["--scope", "status", "--rate-limit", "0"], "--rate-limit: at least 1"),
    ],
)
def test_the_cli_refuses_bad_tokens(tmp_path: Path, arguments: list[str], message: str) -> None:
    config = write_config(tmp_path / "butler.yaml", auth_config())
    made = run_butler("token", "create", "-c", str(config), "--name", "x", *arguments)
    assert made.returncode == 2 and message in made.stderr, made.stderr
    assert made.stdout == ""


# --- Never shown -------------------------------------------------------------------------------------------


async def test_a_token_is_never_logged_stored_or_answered(
    start_butler: StartButler, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = write_config(tmp_path / "butler.yaml", auth_config())
    base = await start_butler(auth_config())
    made = run_butler(
        "token",
        "create",
        "-c",
        str(config),
        "--name",
        "secret-keeper",
        "--scope",
        "status",
        "--rate-limit",
        "1",
    )
    token = made.stdout.strip()
    answers = []
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"X-Butler-Token": token},
    ):
        for url in (f"{base}/v4/butlerping", f"{base}/v4/keyvaluesnamespaces", f"{base}/health"):
            status, body, answer = await call("GET", url, headers=headers)
            answers.append(f"{status} {body} {dict(answer.headers)}")
    assert "GET /v4/butlerping 429" in caplog.text and "token secret-keeper" in caplog.text
    assert token not in caplog.text and token not in "\n".join(answers)
    stored = [path.read_bytes() for path in sorted(tmp_path.glob(SQLITE_NAME + "*"))]  # noqa: ASYNC240
    assert stored and all(token.encode() not in data for data in stored)
    assert digest(token).encode() in b"".join(stored)  # the files read are the ones it is kept in


async def test_redis_keeps_digests_only_and_every_butler_sees_a_revoke(
    start_butler: StartButler, redis_url: str, tmp_path: Path
) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    document = auth_config()
    document["Butler"]["keyValueStore"] = {
        "backend": "redis",
        "redis": {"url": redis_url, "keyPrefix": prefix},
    }
    one = await start_butler(document)
    two = await start_butler(document)
    config = write_config(tmp_path / "butler.yaml", document)
    token = run_butler(
        "token", "create", "-c", str(config), "--name", "shared", "--scope", "status"
    ).stdout.strip()
    for base in (one, two):
        assert (await call("GET", f"{base}/v4/butlerping", token))[0] == 200
    raw = redis.Redis.from_url(redis_url)
    keys = raw.keys(prefix + "*")
    assert keys
    for key in keys:
        assert token.encode() not in key
        kind = raw.type(key)
        if kind == b"string":
            values = [raw.get(key) or b""]
        else:
            values = [v for pair in raw.hgetall(key).items() for v in pair]
        assert all(token.encode() not in value for value in values), key
    assert run_butler("token", "revoke", "-c", str(config), "shared").returncode == 0
    for base in (one, two):
        assert (await call("GET", f"{base}/v4/butlerping", token))[0] == 401
    raw.close()


async def test_redis_tokens_listed_with_their_last_use(redis_url: str) -> None:
    store = RedisTokens(redis_url, f"test:{uuid.uuid4().hex}:")
    token = await make_token(Path(), "a", "status", store=store)
    await store.touch("a", 1000.0)
    [record] = await store.all()
    assert (record.name, record.scopes, record.last_used, record.digest) == (
        "a",
        ("status",),
        1000.0,
        digest(token),
    )
    assert await store.revoke("a") and await store.all() == [] and await store.find(digest(token)) is None
    await store.close()


# --- Client certificates -------------------------------------------------------------------------------


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: Any, signer: Any, ca: bool = False, server: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def _name(**attributes: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name(CN="Butler clients CA")
    ca = _certificate(ca_name, ca_name, ca_key, ca_key, ca=True)
    files: dict[str, Path | tuple[Path, Path]] = {"ca": _write(folder, "ca", ca, ca_key)[0]}
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["server"] = _write(
        folder,
        "server",
        _certificate(_name(CN="localhost"), ca_name, server_key, ca_key, server=True),
        server_key,
    )
    for name, subject in (("etl", _name(O="Corp", CN="etl")), ("other", _name(CN="other", O="Corp"))):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        files[name] = _write(folder, name, _certificate(subject, ca_name, key, ca_key), key)
    stranger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger_name = _name(CN="etl", O="Corp")
    files["stranger"] = _write(
        folder,
        "stranger",
        _certificate(stranger_name, stranger_name, stranger_key, stranger_key),
        stranger_key,
    )
    return files


async def test_client_certificates_map_to_scopes(start_butler: StartButler, pki: dict[str, Any]) -> None:
    cert, key = pki["server"]
    document = auth_config(certificates=[{"subject": "CN=etl, O=Corp", "scopes": ["status", "kv:read"]}])
    document["Butler"]["restServerConfig"]["tls"] = {
        "enable": True,
        "cert": str(cert),
        "key": str(key),
        "ca": str(pki["ca"]),
    }
    base = await start_butler(document)
    assert base.startswith("https://")

    def client(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        if name is not None:
            context.load_cert_chain(*(str(p) for p in pki[name]))
        return context

    status, body, _ = await call("GET", f"{base}/v4/butlerping", ssl=client("etl"))
    assert status == 200, body
    status, body, _ = await call("GET", f"{base}/v4/keyvaluesnamespaces", ssl=client("etl"))
    assert status == 200, body
    status, body, _ = await call("POST", f"{base}/v4/keyvalues/ns", ssl=client("etl"), json={"key": "k"})
    assert (status, body["message"]) == (
        403,
        "Certificate CN=etl, O=Corp lacks scope kv:write, needed for POST /v4/keyvalues/ns",
    )
    status, body, _ = await call("GET", f"{base}/v4/butlerping", ssl=client("other"))
    assert (status, body["message"]) == (
        403,
        "Certificate CN=other,O=Corp holds no scopes, and status is needed",
    )
    status, body, _ = await call("GET", f"{base}/v4/butlerping", ssl=client(None))
    assert status == 401
    with pytest.raises(aiohttp.ClientError):
        await call("GET", f"{base}/v4/butlerping", ssl=client("stranger"))


async def test_certificates_need_a_ca(start_butler: StartButler, pki: dict[str, Any]) -> None:
    from butler.services import StartupError

    cert, key = pki["server"]
    document = auth_config(certificates=[{"subject": "CN=etl", "scopes": ["status"]}])
    document["Butler"]["restServerConfig"]["tls"] = {"enable": True, "cert": str(cert), "key": str(key)}
    with pytest.raises(StartupError, match=r"auth\.certificates needs Butler\.restServerConfig\.tls\.ca"):
        await start_butler(document)


async def test_certificates_without_tls_are_named_unused(
    start_butler: StartButler, caplog: pytest.LogCaptureFixture
) -> None:
    await start_butler(auth_config(certificates=[{"subject": "CN=etl", "scopes": ["status"]}]))
    assert "Butler.restServerConfig.auth.certificates are not used: TLS is off" in caplog.text


async def test_the_audit_log_names_the_token_and_records_its_refusals(
    start_butler: StartButler, tmp_path: Path
) -> None:
    """Authentication and the audit log together: a call made with a token is recorded under the token's
    name, calls refused for no credential (401) or a missing scope (403) are recorded, and the token
    itself is nowhere in the file."""
    from tests.test_audit import audit_config

    file = tmp_path / "audit.jsonl"
    document = audit_config(auth_config(), file)
    document["Butler"]["restServerEndpointsEnable"]["keyValueStore"] = True
    base = await start_butler(document)
    writer = await make_token(tmp_path, "etl-nightly", "kv:write", "kv:read")
    admin = await make_token(tmp_path, "ops", "admin")
    body = {"key": "k", "value": "v"}
    assert (await call("POST", f"{base}/v4/keyvalues/ns", writer, json=body))[0] == 201
    assert (await call("POST", f"{base}/v4/keyvalues/ns", None, json=body))[0] == 401
    assert (await call("POST", f"{base}/v4/keyvalues/ns", admin, json=body))[0] == 403
    status, records, _ = await call("GET", f"{base}/v4/audit?operation=addKeyValue", admin)
    assert status == 200, records
    assert [(r["caller"], r["status"]) for r in reversed(records)] == [
        ("token etl-nightly", 201),
        ("127.0.0.1", 401),
        ("token ops", 403),
    ]
    text = file.read_text()
    assert writer not in text and admin not in text


async def test_a_tokens_own_rate_limit_holds_across_butlers_sharing_redis(
    start_butler: StartButler, redis_url: str, tmp_path: Path
) -> None:
    """Round-robin over two Butlers on one Redis, as a load balancer would: a token allowed 4 requests a
    minute gets 4 answers in all, not 4 from each."""
    document = auth_config()
    document["Butler"]["keyValueStore"] = {
        "backend": "redis",
        "redis": {"url": redis_url, "keyPrefix": f"test:{uuid.uuid4().hex}:kv:"},
    }
    bases = [await start_butler(document), await start_butler(document)]
    config = write_config(tmp_path / "butler.yaml", document)
    created = ["token", "create", "-c", str(config), "--name", "etl", "--scope", "status"]
    created += ["--rate-limit", "4"]
    token = run_butler(*created).stdout.strip()
    statuses = [(await call("GET", f"{bases[n % 2]}/v4/butlerping", token))[0] for n in range(6)]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_token_changes_made_with_the_cli_are_in_the_audit_log(tmp_path: Path) -> None:
    from tests.test_audit import audit_config, lines

    file = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "butler.yaml", audit_config(auth_config(), file))
    made = run_butler("token", "create", "-c", str(config), "--name", "etl", "--scope", "kv:read")
    token = made.stdout.strip()
    assert run_butler("token", "revoke", "-c", str(config), "etl").returncode == 0
    records = lines(file)
    assert [(r["operation"], r["target"]["name"]) for r in records] == [
        ("createToken", "etl"),
        ("revokeToken", "etl"),
    ]
    assert records[0]["target"]["scopes"] == ["kv:read"] and records[0]["caller"].startswith("cli ")
    assert token not in file.read_text()
