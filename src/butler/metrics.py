"""Butler's metrics for Prometheus (``GET /metrics``), read from the services when Prometheus scrapes.

Every figure but the request durations is read at scrape time from the counters the services keep (the
ones ``/health`` shows, and plain integer counts beside them: task starts, task events by type, key-value
calls, schedule fires), so metrics cost the services next to nothing between scrapes. Requests are
counted by the ``RequestMetrics`` middleware (``butler.http.middleware.request_metrics``).

Each Butler has its own ``CollectorRegistry``, not the client library's global one, so that two Butlers in
one process (the tests) do not clash. Another module adds its figures with ``Metrics.register``: any
object with a ``collect()`` that yields metric families (``prometheus_client.registry.Collector``), read at
each scrape; e.g. in a service's opener, ``if services.metrics is not None:
services.metrics.register(collector)``. Names start with ``butler_``; labels take bounded values only (no
ids, paths or user names).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from butler.http.middleware.request_metrics import BUCKETS, RequestTimes
from butler.kvstore.counted import CountedStore

if TYPE_CHECKING:
    from butler.events.udp import UdpStats
    from butler.services import Services

#: Proxy hosts given a series of their own in ``butler_active_users``; the host names come from UDP
#: datagrams, so whoever may send them could otherwise make any number of series. The rest are summed
#: under ``proxy_host="other"``.
PROXY_HOSTS = 100
#: The Content-Type of ``GET /metrics``: the classic text format, which every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
_BOUNDS = [str(bound) for bound in BUCKETS] + ["+Inf"]


class Metrics:
    """One Butler's registry: its own figures, the process's, and what other modules ``register``."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        #: Filled in by the REST API's ``RequestMetrics`` middleware.
        self.requests = RequestTimes()
        self._requests = _Requests(self.requests)
        self.register(_Services(services))
        # The client's default collectors hold no state of their own: sharing them is safe.
        for collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.register(collector)

    def register(self, collector: Collector) -> None:
        """Add ``collector`` to what ``GET /metrics`` answers; its ``collect()`` runs at every scrape, in
        the event loop, so it must be quick and must not block."""
        self.registry.register(collector)

    async def exposition(self) -> bytes:
        # The process collector reads /proc (a file per scrape, and a directory entry per open socket),
        # which is no work for the event loop; it yields nothing where there is no /proc (Windows).
        process = await asyncio.to_thread(lambda: list(PROCESS_COLLECTOR.collect()))
        return (
            self._requests.text().encode()
            + generate_latest(self.registry)
            + generate_latest(_Collected(process))
        )


class _Collected:
    """Families collected already, in the shape ``generate_latest`` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class _Requests:
    """The request families, written here rather than by the client library: they are most of the lines
    (one per bucket of every route, method and status seen), and the library's writer checks and escapes
    the labels of every line again at every scrape, 7 µs a line; here each series' labels are written once.
    """

    def __init__(self, times: RequestTimes) -> None:
        self.times = times
        self._labels: dict[tuple[str, str, int], str] = {}

    def text(self) -> str:
        totals = [
            "# HELP butler_http_requests_total REST API requests answered, by route template",
            "# TYPE butler_http_requests_total counter",
        ]
        name = "butler_http_request_duration_seconds"
        durations = [
            f"# HELP {name} Time from a REST request's head to its answer, by route template",
            f"# TYPE {name} histogram",
        ]
        for key, series in list(self.times.series.items()):
            labels = self._labels.get(key)
            if labels is None:
                route, method, status = key
                labels = self._labels[key] = f'route="{_escape(route)}",method="{method}",status="{status}"'
            count = 0
            for bound, bucket in zip(_BOUNDS, series.counts, strict=True):
                count += bucket
                durations.append(f'{name}_bucket{{{labels},le="{bound}"}} {count}')
            durations.append(f"{name}_sum{{{labels}}} {series.seconds!r}")
            durations.append(f"{name}_count{{{labels}}} {count}")
            totals.append(f"butler_http_requests_total{{{labels}}} {count}")
        return "\n".join((*totals, *durations, ""))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _counter(name: str, documentation: str, label: str, counts: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=(label,))
    for value, count in counts.items():
        family.add_metric([value], count)
    return family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _Services(Collector):
    """The counters of the open services, as they are at the scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        services = self.services
        info = GaugeMetricFamily("butler_info", "Butler's version", labels=("version",))
        info.add_metric([services.version], 1)
        yield info
        if services.task_starter is not None:
            yield _counter(
                "butler_task_starts",
                "Tasks by what became of their start (error: requests that failed as a whole)",
                "outcome",
                services.task_starter.counts,
            )
        if isinstance(services.key_values, CountedStore):
            yield _counter(
                "butler_kv_operations",
                "Key-value store calls",
                "operation",
                services.key_values.operations,
            )
        if services.events is not None:
            yield from self._events()
        if services.alerts is not None:
            yield from self._alerts()
        if services.mqtt is not None:
            yield from self._mqtt()
        if services.scheduler is not None:
            scheduler = services.scheduler
            yield _gauge("butler_schedules", "Schedules known", len(scheduler.jobs))
            yield _counter(
                "butler_scheduler_fires", "Schedule fires by outcome", "outcome", scheduler.fire_outcomes
            )

    def _events(self) -> Iterator[Metric]:
        events = self.services.events
        assert events is not None
        outcomes = events.outcomes
        handled = CounterMetricFamily(
            "butler_task_events",
            "Task events from Sense handled, by task type (unknown: QRS did not say) and outcome",
            labels=("task_type", "outcome"),
        )
        for (task_type, outcome), count in outcomes.by_outcome.items():
            handled.add_metric([task_type or "unknown", outcome], count)
        yield handled
        yield _gauge("butler_task_event_queue_depth", "Task events waiting to be handled", outcomes.queued)
        yield from _udp(
            (name, listener.stats)
            for name, listener in (("task", events.task_listener), ("session", events.session_listener))
            if listener is not None
        )
        consumers = events.bus.stats()
        delivered = CounterMetricFamily(
            "butler_event_consumer_events",
            "Events handed to each consumer of the event bus, by result",
            labels=("consumer", "result"),
        )
        depth = GaugeMetricFamily(
            "butler_event_consumer_queue_depth", "Events waiting in a consumer's queue", labels=("consumer",)
        )
        capacity = GaugeMetricFamily(
            "butler_event_consumer_queue_capacity", "Events a consumer's queue holds", labels=("consumer",)
        )
        for name, counts in consumers.items():
            for result in ("delivered", "failed", "dropped"):
                delivered.add_metric([name, result], counts[result])
            depth.add_metric([name], counts["queued"])
            capacity.add_metric([name], counts["queueSize"])
        yield from (delivered, depth, capacity)
        per_host = GaugeMetricFamily(
            "butler_active_users", "Users with a session, per proxy host", labels=("proxy_host",)
        )
        for host, count in _busiest(events.users.counts_per_host(), PROXY_HOSTS):
            per_host.add_metric([host], count)
        yield per_host
        yield _gauge(
            "butler_active_users_distinct", "Users with a session on any proxy", events.users.count()
        )

    def _alerts(self) -> Iterator[Metric]:
        alerts = self.services.alerts
        assert alerts is not None
        yield _counter(
            "butler_alerts",
            "Task outcomes turned into alerts (failed: none could be made)",
            "result",
            {"made": alerts.handled, "failed": alerts.failed},
        )
        deliveries = CounterMetricFamily(
            "butler_alert_deliveries", "Alert deliveries by channel and state", labels=("channel", "state")
        )
        pending = GaugeMetricFamily(
            "butler_alert_outbox_pending", "Alert deliveries waiting in the outbox", labels=("channel",)
        )
        for channel, counts in alerts.dispatcher.stats().items():
            for state, key in (("sent", "sent"), ("retried", "retried"), ("dead", "dead")):
                deliveries.add_metric([channel, state], counts[key])
            deliveries.add_metric([channel, "rate_limited"], counts["rateLimited"])
            pending.add_metric([channel], counts["pending"])
        yield from (deliveries, pending)

    def _mqtt(self) -> Iterator[Metric]:
        mqtt = self.services.mqtt
        assert mqtt is not None
        stats = mqtt.stats()
        yield _gauge("butler_mqtt_connected", "1 while connected to the MQTT broker", stats["connected"])
        yield _gauge("butler_mqtt_queue_depth", "MQTT messages waiting to be published", stats["queued"])
        yield _counter(
            "butler_mqtt_messages",
            "MQTT messages by what became of them",
            "result",
            {result: stats[result] for result in ("published", "dropped", "invalid", "poisoned")},
        )
        yield CounterMetricFamily(
            "butler_mqtt_reconnects", "Connections to the broker after the first", value=stats["reconnects"]
        )


def _udp(listeners: Iterable[tuple[str, UdpStats]]) -> Iterator[Metric]:
    labels = ("listener",)
    received = CounterMetricFamily("butler_udp_datagrams_received", "UDP datagrams received", labels=labels)
    accepted = CounterMetricFamily(
        "butler_udp_datagrams_accepted", "UDP datagrams handed on as events", labels=labels
    )
    malformed = CounterMetricFamily(
        "butler_udp_datagrams_malformed", "UDP datagrams that could not be read", labels=labels
    )
    dropped = CounterMetricFamily(
        "butler_udp_datagrams_dropped", "UDP datagrams dropped, by reason", labels=("listener", "reason")
    )
    by_type = CounterMetricFamily(
        "butler_udp_events", "UDP events read, by message type", labels=("listener", "type")
    )
    for name, stats in listeners:
        received.add_metric([name], stats.received)
        accepted.add_metric([name], stats.accepted)
        malformed.add_metric([name], stats.malformed)
        for reason, count in stats.dropped.items():
            dropped.add_metric([name, reason], count)
        for kind, count in stats.by_type.items():
            by_type.add_metric([name, kind], count)
    yield from (received, accepted, malformed, dropped, by_type)


def _busiest(counts: Mapping[str, int], most: int) -> list[tuple[str, int]]:
    """The ``most`` largest counts by name, and the sum of the others as ``other``."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = ranked[:most]
    rest = ranked[most:]
    if rest:
        kept.append(("other", sum(count for _, count in rest)))
    return kept


__all__ = ["CONTENT_TYPE", "Metrics"]
