"""GET /metrics: scraped by a real Prometheus, its text format, its port, its labels."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from butler import __version__
from butler.app import Butler
from butler.config import ConfigError, parse_config
from tests.conftest import Broker, StartButler, base_config, free_port, udp_ports
from tests.test_events import session_datagram, udp_config
from tests.test_openapi import slack_webhook  # noqa: F401 (fixture)
from tests.test_task_start import APP1, APP2, APP3, butler_config, put

PROMETHEUS = shutil.which("prometheus")


def metrics_config(port: int | None = None, **flags: bool) -> dict[str, Any]:
    document = base_config(**flags)
    document["Butler"]["prometheus"] = {"enable": True, "port": port}
    return document


async def scrape(url: str, method: str = "GET") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` by their labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


# -- a real Prometheus --------------------------------------------------------------------------------------


StartPrometheus = Callable[[int], Awaitable[str]]


@pytest.fixture
async def prometheus(tmp_path: Path) -> AsyncIterator[StartPrometheus]:
    """Start Prometheus scraping 127.0.0.1:<port>/metrics every second; returns its base URL."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (scripts/ensure-test-services installs it)")
    processes: list[asyncio.subprocess.Process] = []

    async def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        scrape_config = {"job_name": "butler", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [scrape_config],
                }
            )
        )
        port = free_port()
        log = tmp_path / "prometheus.log"
        with log.open("wb") as errors:
            process = await asyncio.create_subprocess_exec(
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errors,
            )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while True:
                assert process.returncode is None, log.read_text()
                try:
                    async with http.get(f"{base}/-/ready") as response:
                        if response.status == 200:
                            return base
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "Prometheus not ready within 30 s"
                await asyncio.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def promql(base: str, query: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/v1/query", params={"query": query}) as response,
    ):
        answer = await response.json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


async def wait_for_value(base: str, query: str, expected: float, seconds: float = 20) -> None:
    """Until ``query`` gives one series of value ``expected``; the last answer in the failure otherwise."""
    deadline = time.monotonic() + seconds
    while True:
        result = await promql(base, query)
        values = [float(series["value"][1]) for series in result]
        if values == [expected]:
            return
        assert time.monotonic() < deadline, f"{query}: {result}, not {expected}"
        await asyncio.sleep(0.25)


async def test_prometheus_sees_the_task_starts(
    start_butler: StartButler, simulator: Any, site_certs: Any, prometheus: StartPrometheus
) -> None:
    document = butler_config(simulator, site_certs)
    document["Butler"]["prometheus"] = {"enable": True}
    base = await start_butler(document)
    server = await prometheus(int(base.rsplit(":", 1)[1]))
    await wait_for_value(server, 'up{job="butler"}', 1)
    tasks = [APP1, APP2, APP3, APP1, APP2]
    for task in tasks:
        status, body, _ = await put(base, f"/v4/reloadtask/{task['taskId']}/start", [])
        assert status == 200 and body["tasksId"]["started"] == [task]
    # One task id QRS does not know: counted as invalid, not as started.
    await put(base, "/v4/reloadtask/-/start", [{"type": "starttaskid", "payload": {"taskId": "0" * 36}}])
    await wait_for_value(server, 'butler_task_starts_total{outcome="started"}', len(tasks))
    await wait_for_value(server, 'butler_task_starts_total{outcome="invalid"}', 1)
    route = "/v4/reloadtask/{taskId}/start"
    await wait_for_value(
        server, f'sum(butler_http_requests_total{{route="{route}",status="200"}})', len(tasks) + 1
    )


# -- the endpoint -------------------------------------------------------------------------------------------


async def test_text_format_parses_with_every_family(start_butler: StartButler) -> None:
    base = await start_butler(metrics_config())
    for _ in range(3):
        assert (await scrape(f"{base}/v4/butlerping"))[0] == 200
    status, content_type, text = await scrape(f"{base}/metrics")
    assert status == 200 and content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["butler_http_request_duration_seconds"].type == "histogram"
    assert families["butler_http_requests"].type == "counter"
    assert samples(text, "butler_info") == {(("version", __version__),): 1}
    ping = (("method", "GET"), ("route", "/v4/butlerping"), ("status", "200"))
    assert samples(text, "butler_http_requests_total")[ping] == 3
    assert samples(text, "butler_http_request_duration_seconds_count")[ping] == 3
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for labels, value in samples(text, "butler_http_request_duration_seconds_bucket").items()
        if dict(labels)["route"] == "/v4/butlerping"
    )
    counts = [value for _, value in buckets]
    assert len(buckets) == 15 and buckets[-1] == (float("inf"), 3)
    assert counts == sorted(counts)  # cumulative
    assert 0 < samples(text, "butler_http_request_duration_seconds_sum")[ping] < 3
    # Every key-value call is counted, whichever route made it.
    assert samples(text, "butler_kv_operations_total")[(("operation", "get"),)] == 0
    if sys.platform == "linux":
        assert samples(text, "process_resident_memory_bytes")[()] > 0


async def test_head_query_strings_and_methods(start_butler: StartButler) -> None:
    base = await start_butler(metrics_config())
    status, _, text = await scrape(f"{base}/metrics", "HEAD")
    assert status == 200 and text == ""
    for query in ("?name[]=x", "?%zz=%", "?a=1&a=2&&", "?" + "x" * 5000):
        status, _, text = await scrape(f"{base}/metrics{query}")
        assert status == 200 and "butler_http_requests_total" in text, query
    assert (await scrape(f"{base}/metrics", "POST"))[0] == 404
    assert (await scrape(f"{base}/metrics/", "GET"))[0] == 404


async def test_not_rate_limited(start_butler: StartButler) -> None:
    base = await start_butler(metrics_config(), rate_limit=2)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200 and "x-ratelimit-limit" not in response.headers
        statuses = []
        for _ in range(3):
            async with http.get(f"{base}/v4/butlerping") as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 429]  # the limit is on, for the routes it applies to


async def test_unknown_paths_share_one_label(start_butler: StartButler) -> None:
    base = await start_butler(metrics_config())
    async with aiohttp.ClientSession() as http:
        for n in range(40):
            async with http.get(f"{base}/no/such/path/{n}") as response:
                assert response.status == 404
        async with http.request("PROPFIND", f"{base}/dav") as response:
            assert response.status == 404
        async with http.post(f"{base}/v4/keyvalues/ns", json={"key": "k", "value": "v"}) as response:
            assert response.status == 201
        for _ in range(5):
            async with http.get(f"{base}/v4/keyvalues/ns", params={"key": "k"}) as response:
                assert response.status == 200
    text = (await scrape(f"{base}/metrics"))[2]
    requests = samples(text, "butler_http_requests_total")
    routes = {dict(labels)["route"] for labels in requests}
    assert routes == {"unmatched", "/v4/keyvalues/{namespace}"}
    unmatched = {labels: value for labels, value in requests.items() if dict(labels)["route"] == "unmatched"}
    assert unmatched == {
        (("method", "GET"), ("route", "unmatched"), ("status", "404")): 40,
        (("method", "other"), ("route", "unmatched"), ("status", "404")): 1,
    }
    operations = samples(text, "butler_kv_operations_total")
    assert operations[(("operation", "set"),)] == 1 and operations[(("operation", "get"),)] == 5


async def test_port_of_its_own(start_butler: StartButler) -> None:
    port = free_port()
    base = await start_butler(metrics_config(port))
    assert (await scrape(f"{base}/v4/butlerping"))[0] == 200
    assert (await scrape(f"{base}/metrics"))[0] == 404  # not on the REST API's port
    status, _, text = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    # The REST API's requests are counted; the metrics port's own are not.
    routes = {dict(labels)["route"] for labels in samples(text, "butler_http_requests_total")}
    assert routes == {"/v4/butlerping", "unmatched"}
    assert (await scrape(f"http://127.0.0.1:{port}/v4/butlerping"))[0] == 404


async def test_off_by_default(start_butler: StartButler) -> None:
    port = free_port()
    document = base_config()
    document["Butler"]["prometheus"] = {"enable": False, "port": port}
    base = await start_butler(document)
    assert (await scrape(f"{base}/metrics"))[0] == 404
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(f"http://127.0.0.1:{port}/metrics")
    assert (await scrape(f"{base}/v4/butlerping"))[0] == 200


class _Nodes:
    """What a monitor would register: one gauge per node."""

    def __init__(self, nodes: Iterable[str]) -> None:
        self.nodes = list(nodes)

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("butler_test_node_up", "test", labels=("node",))
        for node in self.nodes:
            family.add_metric([node], 1)
        return [family]


async def test_each_butler_has_its_own_registry(tmp_path: Path) -> None:
    one = Butler(parse_config(metrics_config(), base_dir=tmp_path / "one"))
    two = Butler(parse_config(metrics_config(), base_dir=tmp_path / "two"))
    await one.start()
    try:
        await two.start()
        try:
            assert one.services.metrics is not None and two.services.metrics is not None
            one.services.metrics.register(_Nodes(["sense1", "sense2"]))
            await scrape(f"{one.listeners[0].url}/v4/butlerping")
            first = (await scrape(f"{one.listeners[0].url}/metrics"))[2]
            second = (await scrape(f"{two.listeners[0].url}/metrics"))[2]
        finally:
            await two.stop()
    finally:
        await one.stop()
    assert samples(first, "butler_test_node_up") == {(("node", "sense1"),): 1, (("node", "sense2"),): 1}
    assert samples(second, "butler_test_node_up") == {}
    assert any(
        dict(labels)["route"] == "/v4/butlerping" for labels in samples(first, "butler_http_requests_total")
    )
    assert not any(
        dict(labels)["route"] == "/v4/butlerping" for labels in samples(second, "butler_http_requests_total")
    )


async def test_served_nowhere_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rest_off, port_of_its_own = metrics_config(), metrics_config(free_port())
    for document in (rest_off, port_of_its_own):
        document["Butler"]["restServerConfig"]["enable"] = False
    for document, said in ((rest_off, True), (port_of_its_own, False), (metrics_config(), False)):
        caplog.clear()
        butler = Butler(parse_config(document, base_dir=tmp_path))
        await butler.start()
        await butler.stop()
        assert ("GET /metrics is served nowhere" in caplog.text) is said


def test_config_port_may_be_null_or_a_port() -> None:
    assert parse_config(metrics_config(), base_dir=Path()).prometheus.port is None
    assert parse_config(metrics_config(9842), base_dir=Path()).prometheus.port == 9842
    document = metrics_config()
    document["Butler"]["prometheus"]["port"] = "9842"
    with pytest.raises(ConfigError, match=r"prometheus\.port"):
        parse_config(document, base_dir=Path())


async def wait_for_samples(base: str, name: str, expected: dict[tuple[tuple[str, str], ...], float]) -> str:
    """Scrape until the samples ``name`` include ``expected``; the last scrape."""
    async with asyncio.timeout(20):
        while True:
            text = (await scrape(f"{base}/metrics"))[2]
            found = samples(text, name)
            if all(found.get(labels) == value for labels, value in expected.items()):
                return text
            await asyncio.sleep(0.1)


async def test_service_figures(
    start_butler: StartButler,
    simulator: Any,
    site_certs: Any,
    broker: Broker,
    slack_webhook: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Task events, UDP, active users, the event consumers, alerts, MQTT and the scheduler, each from a real
    source: the simulator's UDP events, datagrams sent here, a webhook that takes alerts and one that does
    not exist, the broker, and a schedule firing every second."""
    task_port, session_port = udp_ports()
    config = udp_config(butler_config(simulator, site_certs), task_port, session_port)
    butler = config["Butler"]
    butler["prometheus"] = {"enable": True}
    butler["mqttConfig"] = {"enable": True, "brokerHost": "127.0.0.1", "brokerPort": broker.port}
    hooks = [slack_webhook, slack_webhook.removesuffix("hook") + "nowhere"]
    butler["webhookNotification"] = {
        "enable": True,
        "reloadTaskFailure": {
            "webhooks": [{"description": "d", "webhookURL": url, "httpMethod": "POST"} for url in hooks]
        },
    }
    schedules = tmp_path / "schedule.yaml"
    schedules.write_text(
        "butlerSchedule:\n  - name: Every second\n    cronSchedule: '* * * * * *'\n    timezone: UTC\n"
        f"    qlikSenseTaskId: {APP1['taskId']}\n    startupState: started\n    id: sched-1\n"
    )
    butler["scheduler"] = {"enable": True, "configfile": str(schedules)}
    base = await start_butler(config)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for host, user in (("sense1", "anna"), ("sense1", "bo"), ("sense2", "anna")):
            sock.sendto(session_datagram("Start session", host, "LAB", user), ("127.0.0.1", session_port))
        sock.sendto(b"/proxy-session/;only;three", ("127.0.0.1", session_port))
    failing = next(t["id"] for t in simulator.site.tasks.values() if t["name"] == "Reload Failing App")
    simulator.udp.targets = [("127.0.0.1", task_port)]
    simulator.scheduler.start(failing)

    await wait_for_samples(
        base, "butler_active_users", {(("proxy_host", "sense1"),): 2, (("proxy_host", "sense2"),): 1}
    )
    await wait_for_samples(
        base, "butler_task_events_total", {(("outcome", "failed"), ("task_type", "Reload")): 1}
    )
    text = await wait_for_samples(
        base,
        "butler_alert_deliveries_total",
        {(("channel", "webhook"), ("state", "sent")): 1, (("channel", "webhook"), ("state", "dead")): 1},
    )
    assert samples(text, "butler_active_users_distinct") == {(): 2}
    assert samples(text, "butler_udp_datagrams_malformed_total")[(("listener", "session"),)] == 1
    assert samples(text, "butler_udp_datagrams_accepted_total")[(("listener", "session"),)] == 3
    udp_events = samples(text, "butler_udp_events_total")
    assert udp_events[(("listener", "task"), ("type", "/scheduler-task-failed/"))] == 1
    assert udp_events[(("listener", "session"), ("type", "Start session"))] == 3
    assert samples(text, "butler_alerts_total")[(("result", "made"),)] == 1
    deliveries = samples(text, "butler_alert_deliveries_total")
    # The refused webhook's 404 is final: a dead letter at once, not retried.
    assert deliveries[(("channel", "webhook"), ("state", "retried"))] == 0
    assert deliveries[(("channel", "webhook"), ("state", "rate_limited"))] == 0
    assert samples(text, "butler_alert_outbox_pending") == {(("channel", "webhook"),): 0}
    consumers = samples(text, "butler_event_consumer_events_total")
    assert consumers[(("consumer", "alerts"), ("result", "delivered"))] >= 1
    assert consumers[(("consumer", "mqtt"), ("result", "dropped"))] == 0
    assert samples(text, "butler_event_consumer_queue_depth")[(("consumer", "mqtt"),)] == 0
    assert samples(text, "butler_task_event_queue_depth") == {(): 0}
    assert samples(text, "butler_mqtt_connected") == {(): 1}
    assert samples(text, "butler_mqtt_messages_total")[(("result", "published"),)] >= 1
    assert samples(text, "butler_schedules") == {(): 1}
    text = await wait_for_samples(base, "butler_schedules", {(): 1})
    async with asyncio.timeout(10):
        while not samples(text, "butler_scheduler_fires_total"):
            await asyncio.sleep(0.2)
            text = (await scrape(f"{base}/metrics"))[2]
    assert set(samples(text, "butler_scheduler_fires_total")) <= {
        (("outcome", o),) for o in ("started", "skipped")
    }


def test_proxy_hosts_beyond_the_busiest_are_summed_under_other() -> None:
    """Host names come from UDP datagrams: the series they make are bounded whatever is sent."""
    from butler.metrics import PROXY_HOSTS, _busiest

    counts = {f"proxy{n:03d}": n for n in range(PROXY_HOSTS + 20)}
    kept = _busiest(counts, PROXY_HOSTS)
    assert len(kept) == PROXY_HOSTS + 1
    assert kept[0] == (f"proxy{PROXY_HOSTS + 19:03d}", PROXY_HOSTS + 19)  # the busiest first
    assert kept[-1] == ("other", sum(range(20)))
    assert sum(count for _, count in kept) == sum(counts.values())
    assert _busiest({"a": 1, "b": 2}, PROXY_HOSTS) == [("b", 2), ("a", 1)]
