"""Slow, idle, stalled and vanishing HTTP clients, over real sockets.

Where timing matters Butler runs as a process (``butler serve``) with short limits, so that the attacking
clients of a test do not share its event loop; pings from another connection measure how Butler answers
meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import butler.logs
from butler.http.routing import ApiRequest, Reply, Route, Router
from butler.http.server import Listener, RestApi
from tests.certs import make_certs
from tests.conftest import ButlerProcess, StartButler, base_config, free_port, run_butler, write_config

HEAD_TIMEOUT = 2
BODY_TIMEOUT = 2
IDLE_TIMEOUT = 4
#: How far from its timeout a close may come. Closes were measured at most 0.09 s late (and, from the
#: client's clock, 0.13 s early) with 1,200 connections on a 2-core machine busy with other test runs.
MARGIN = 1.0

HOST = "127.0.0.1"
PING = b"GET /v4/butlerping HTTP/1.1\r\nHost: butler\r\n\r\n"


def allow_sockets(count: int) -> None:
    """Let this process hold ``count`` more sockets (POSIX limits descriptors; Windows does not)."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess], **limits: int
) -> tuple[int, ButlerProcess]:
    port = free_port()
    document = base_config(butlerping=True, keyValueStore=True)
    document["Butler"]["restServerConfig"].update(serverPort=port, **limits)
    process = butler_process(
        "serve", "-c", str(write_config(tmp_path / "butler.yaml", document)), "--api-rate-limit", "0"
    )
    process.wait_for_port(port)
    return port, process


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


async def closed_after(reader: asyncio.StreamReader, since: float) -> float:
    """Seconds from ``since`` until the server closes the connection (whatever it writes first)."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    return time.monotonic() - since


async def pinger(port: int, stop: asyncio.Event) -> list[float]:
    """Ping over one keep-alive connection until ``stop``; the latencies in milliseconds."""
    reader, writer = await asyncio.open_connection(HOST, port)
    latencies = []
    while not stop.is_set():
        started = time.perf_counter()
        writer.write(PING)
        status, body = await read_answer(reader)
        latencies.append((time.perf_counter() - started) * 1000)
        assert status == 200 and body["response"] == "Butler reporting for duty"
        await asyncio.sleep(0.005)
    writer.close()
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(len(ordered) * 0.99)]


def on_time(seconds: list[float] | float, timeout: float) -> bool:
    values = seconds if isinstance(seconds, list) else [seconds]
    return all(timeout - MARGIN < value < timeout + MARGIN for value in values)


async def slowloris(port: int) -> float:
    """Send a request head a byte every half second; seconds from its first bytes until Butler closes."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET /v4/butlerping HTTP/1.1\r\nHost: butler\r\nX-Slow: ")
    started = time.monotonic()
    closed = asyncio.ensure_future(closed_after(reader, started))
    while not closed.done():
        await asyncio.wait([closed], timeout=0.5)
        if not closed.done() and not writer.is_closing():
            writer.write(b"x")
    writer.close()
    return closed.result()


async def silent(port: int) -> float:
    """Open a connection and send nothing; seconds until Butler closes it (a head never begun is a head
    not complete in time)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    seconds = await closed_after(reader, time.monotonic())
    writer.close()
    return seconds


async def idle(port: int) -> float:
    """Send one request, then nothing; seconds from the answer until Butler closes the connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(PING)
    await read_answer(reader)
    seconds = await closed_after(reader, time.monotonic())
    writer.close()
    return seconds


async def test_slow_heads_and_idle_connections_are_closed_while_pings_stay_fast(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    allow_sockets(1300)
    port, _ = serve(
        tmp_path,
        butler_process,
        headersTimeoutSeconds=HEAD_TIMEOUT,
        keepAliveTimeoutSeconds=IDLE_TIMEOUT,
        maxConnections=2000,
    )
    stop = asyncio.Event()
    pings = asyncio.ensure_future(pinger(port, stop))
    await asyncio.sleep(0.2)
    # The attack's connections open over a second, as they would arrive from a few machines.
    idle_attacks: list[asyncio.Future[float]] = []
    silent_attacks: list[asyncio.Future[float]] = []
    slow_attacks: list[asyncio.Future[float]] = []
    for _ in range(20):
        idle_attacks += [asyncio.ensure_future(idle(port)) for _ in range(25)]
        silent_attacks += [asyncio.ensure_future(silent(port)) for _ in range(25)]
        slow_attacks += [asyncio.ensure_future(slowloris(port)) for _ in range(10)]
        await asyncio.sleep(0.05)
    idle_closes = await asyncio.wait_for(asyncio.gather(*idle_attacks), IDLE_TIMEOUT + 10)
    silent_closes = await asyncio.wait_for(asyncio.gather(*silent_attacks), HEAD_TIMEOUT + 10)
    slow_closes = await asyncio.wait_for(asyncio.gather(*slow_attacks), HEAD_TIMEOUT + 10)
    stop.set()
    latencies = await pings

    figures = (
        f"idle connections closed after {min(idle_closes):.3f}-{max(idle_closes):.3f} s, silent ones after "
        f"{min(silent_closes):.3f}-{max(silent_closes):.3f} s, slow heads after "
        f"{min(slow_closes):.3f}-{max(slow_closes):.3f} s; ping p99 {p99(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms of {len(latencies)}"
    )
    assert on_time(idle_closes, IDLE_TIMEOUT), figures
    assert on_time(silent_closes, HEAD_TIMEOUT), figures
    assert on_time(slow_closes, HEAD_TIMEOUT), figures
    assert len(latencies) > 300, figures
    assert p99(latencies) < 20, figures


@pytest.mark.parametrize(
    ("framing", "sent"),
    [
        (b"Content-Length: 100", b'{"key": "k", "value": "only part of'),
        (b"Transfer-Encoding: chunked", b'10\r\n{"key": "k", "va\r\n'),  # no last chunk
    ],
)
async def test_stalled_body_gets_408_and_the_connection_is_closed(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess], framing: bytes, sent: bytes
) -> None:
    port, _ = serve(tmp_path, butler_process, bodyTimeoutSeconds=BODY_TIMEOUT)
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(
        b"POST /v4/keyvalues/stalled HTTP/1.1\r\nHost: butler\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n\r\n"
        + sent
    )
    started = time.monotonic()
    status, body = await asyncio.wait_for(read_answer(reader), BODY_TIMEOUT + 10)
    answered = time.monotonic() - started
    closed = await asyncio.wait_for(closed_after(reader, started), 10)
    writer.close()
    assert (status, body) == (
        408,
        {
            "statusCode": 408,
            "error": "Request Timeout",
            "message": f"Request body not received in full within {BODY_TIMEOUT} s",
        },
    )
    assert on_time(answered, BODY_TIMEOUT), answered
    assert closed < BODY_TIMEOUT + MARGIN, closed


async def test_connections_over_the_cap_are_refused_while_open_ones_keep_working(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    cap = 50
    port, process = serve(tmp_path, butler_process, maxConnections=cap, keepAliveTimeoutSeconds=60)
    client = await asyncio.open_connection(HOST, port)
    held = [await asyncio.open_connection(HOST, port) for _ in range(cap - 1)]
    await asyncio.sleep(0.2)  # Butler has taken them all

    async def ping(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> int:
        connection[1].write(PING)
        return (await asyncio.wait_for(read_answer(connection[0]), 5))[0]

    for _ in range(3):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(PING)
        assert await asyncio.wait_for(read_answer(reader), 5) == (
            503,
            {
                "statusCode": 503,
                "error": "Service Unavailable",
                "message": f"Butler has {cap} connections open, the most it takes; try again shortly",
            },
        )
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()
        assert await ping(client) == 200
    # A slot that frees up is given to the next client.
    held.pop()[1].close()
    for _ in range(100):  # until Butler has seen the close, at most 5 s
        newcomer = await asyncio.open_connection(HOST, port)
        status = await ping(newcomer)
        newcomer[1].close()
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    for _, writer in [client, *held]:
        writer.close()
    process.stop()
    refusals = [line for line in process.output().splitlines() if "maxConnections" in line]
    assert len(refusals) == 1, refusals  # reported once a minute, not once per connection
    assert f"{cap} connections open" in refusals[0] and " warn: " in refusals[0]


async def test_client_leaving_mid_body_is_one_info_line(
    start_butler: StartButler, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(butler.logs, "_buffer", None)  # request lines go through the logging module
    caplog.set_level(logging.DEBUG)
    base = await start_butler()
    port = int(base.rsplit(":", 1)[1])
    caplog.clear()
    for framing in (b"Content-Length: 100", b"Transfer-Encoding: chunked"):
        _, writer = await asyncio.open_connection(HOST, port)
        writer.write(
            b"POST /v4/keyvalues/gone HTTP/1.1\r\nHost: butler\r\nContent-Type: application/json\r\n"
            + framing
            + b"\r\n\r\n"
            + b'5\r\n{"key'
        )
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
    for _ in range(100):  # until both are logged, at most 5 s
        if sum(" /v4/keyvalues/gone " in m for m in caplog.messages) == 2:
            break
        await asyncio.sleep(0.05)
    lines = [r for r in caplog.records if "/v4/keyvalues/gone" in r.getMessage()]
    assert [(r.levelname, r.getMessage().split()[2]) for r in lines] == [("INFO", "499")] * 2, lines
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_client_leaving_mid_answer_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    big = [b"x" * 65536] * 256  # 16 MiB: far more than the socket buffers hold

    async def download(request: ApiRequest) -> Reply:
        return Reply(200, big, "application/octet-stream")

    router = Router()
    router.add(Route("GET", "/v4/download", download))
    listener = Listener(RestApi(router), HOST, 0)
    await listener.start()
    caplog.set_level(logging.DEBUG)
    try:
        reader, writer = await asyncio.open_connection(HOST, listener.port)
        writer.write(b"GET /v4/download HTTP/1.1\r\nHost: butler\r\n\r\n")
        await reader.readexactly(100_000)
        writer.transport.abort()
        await asyncio.sleep(0.5)
    finally:
        await listener.stop()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info] == []


async def test_client_that_stops_reading_its_answers_is_dropped(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    port, process = serve(tmp_path, butler_process, keepAliveTimeoutSeconds=IDLE_TIMEOUT, maxConnections=1)
    for _ in range(100):  # until Butler has seen the close of the connection that found it listening
        connection = socket.create_connection((HOST, port))
        # A fixed receive buffer: the system's may grow to tens of megabytes.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        reader, writer = await asyncio.open_connection(sock=connection)
        writer.write(PING)
        if (await read_answer(reader))[0] == 200:
            break
        writer.close()
        await asyncio.sleep(0.05)
    body = json.dumps({"key": "big", "value": "v" * 900_000}).encode()
    writer.write(
        b"POST /v4/keyvalues/big HTTP/1.1\r\nHost: butler\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert (await read_answer(reader))[0] == 201
    # 18 MB of answers asked for, far more than the socket buffers hold, and none read.
    writer.write(b"GET /v4/keyvalues/big?key=big HTTP/1.1\r\nHost: butler\r\n\r\n" * 20)
    started = time.monotonic()
    for _ in range(int((IDLE_TIMEOUT + MARGIN) / 0.25)):  # until Butler frees the only connection it takes
        newcomer = await asyncio.open_connection(HOST, port)
        newcomer[1].write(PING)
        status = (await asyncio.wait_for(read_answer(newcomer[0]), 5))[0]
        newcomer[1].close()
        if status == 200:
            break
        await asyncio.sleep(0.25)
    dropped = time.monotonic() - started
    writer.close()
    assert status == 200
    assert on_time(dropped, IDLE_TIMEOUT), dropped
    process.stop()  # Butler's log is written out
    lines = [line for line in process.output().splitlines() if " not read for " in line]
    assert len(lines) == 1 and f" info: Answer to 127.0.0.1 not read for {IDLE_TIMEOUT} s: " in lines[0], (
        lines
    )


async def test_tls_handshake_must_be_done_within_the_head_timeout(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    certs = make_certs(tmp_path)
    port = free_port()
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"].update(
        serverPort=port,
        headersTimeoutSeconds=HEAD_TIMEOUT,
        tls={"enable": True, "cert": str(certs.cert), "key": str(certs.key), "ca": str(certs.ca)},
    )
    process = butler_process("serve", "-c", str(write_config(tmp_path / "butler.yaml", document)))
    process.wait_for_port(port)

    async def handshake_begun(first_bytes: bytes) -> float:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(first_bytes)
        seconds = await closed_after(reader, time.monotonic())
        writer.close()
        return seconds

    # Nothing at all, and the first bytes of a ClientHello.
    closes = await asyncio.wait_for(
        asyncio.gather(
            handshake_begun(b""), handshake_begun(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        ),
        HEAD_TIMEOUT + 10,
    )
    assert on_time(closes, HEAD_TIMEOUT), closes


async def test_health_check_listener_has_the_same_limits(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess]
) -> None:
    port, health_port = free_port(), free_port()
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"].update(
        serverPort=port, headersTimeoutSeconds=HEAD_TIMEOUT, keepAliveTimeoutSeconds=IDLE_TIMEOUT
    )
    document["Butler"]["dockerHealthCheck"] = {"enable": True, "port": health_port}
    process = butler_process("serve", "-c", str(write_config(tmp_path / "butler.yaml", document)))
    process.wait_for_port(health_port)
    slow_closes, silent_closes, idle_closes = await asyncio.wait_for(
        asyncio.gather(slowloris(health_port), silent(health_port), idle(health_port)), IDLE_TIMEOUT + 10
    )
    assert on_time(slow_closes, HEAD_TIMEOUT), slow_closes
    assert on_time(silent_closes, HEAD_TIMEOUT), silent_closes
    assert on_time(idle_closes, IDLE_TIMEOUT), idle_closes
    reader, writer = await asyncio.open_connection(HOST, health_port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: butler\r\n")
    status, body = await asyncio.wait_for(read_answer(reader), HEAD_TIMEOUT + 10)
    writer.close()
    assert (status, body["message"]) == (408, f"Request head not received in full within {HEAD_TIMEOUT} s")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("maxConnections", 0, "expected an integer 1-1000000, got 0"),
        ("headersTimeoutSeconds", "10s", "expected an integer 1-3600, got '10s'"),
        ("bodyTimeoutSeconds", 0, "expected an integer 1-3600, got 0"),
        ("keepAliveTimeoutSeconds", 3601, "expected an integer 1-3600, got 3601"),
    ],
)
def test_limits_are_checked_in_the_config_file(tmp_path: Path, key: str, value: object, message: str) -> None:
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"][key] = value
    result = run_butler("config", "check", str(write_config(tmp_path / "butler.yaml", document)))
    assert result.returncode == 1
    assert f"Butler.restServerConfig.{key}: {message}" in result.stdout + result.stderr


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads a process's limits in /proc")
@pytest.mark.parametrize("beyond_hard_limit", [False, True])
def test_open_file_limit_is_raised_for_max_connections(
    tmp_path: Path, butler_process: Callable[..., ButlerProcess], beyond_hard_limit: bool
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 2256:
        pytest.skip(f"needs a finite hard limit on open files of at least 2,256, not {hard}")
    cap = hard if beyond_hard_limit else 2000
    port = free_port()
    document = base_config(butlerping=True)
    document["Butler"]["restServerConfig"].update(serverPort=port, maxConnections=cap)
    # Butler inherits the limit of 512 open files that some systems give a process.
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        process = butler_process("serve", "-c", str(write_config(tmp_path / "butler.yaml", document)))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    process.wait_for_port(port)
    limits = Path(f"/proc/{process.proc.pid}/limits").read_text()
    process.stop()
    raised = int(next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3])
    warned = f"fewer than Butler.restServerConfig.maxConnections ({cap}) needs" in process.output()
    assert (raised, warned) == ((hard, True) if beyond_hard_limit else (2256, False)), process.output()
