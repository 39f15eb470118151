"""Counts every request and its duration by route template, method and status, for ``GET /metrics``.

Placed right after the access log, so it sees the status actually answered (the error envelope's, 499 for
a client gone) and times the same span the log line shows. The labels are bounded whatever clients send:
the matched route's path pattern (``/v4/keyvalues/{namespace}``, never the path itself) or ``unmatched``,
the method when it is one of HTTP's usual ones or ``other``, and the status.

The counts are plain integers in a dictionary, read when metrics are collected: a request costs a tuple,
one dictionary look-up and a bisection, not the locks of a client library's histogram.
"""

from __future__ import annotations

import time
from bisect import bisect_left

from butler.http.errors import CLIENT_CLOSED, ClientGone
from butler.http.middleware import App, Context
from butler.http.routing import Reply

#: Upper bounds of the duration buckets, in seconds; above the last one is the ``+Inf`` bucket.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The route label of requests no route matched (404s, and paths refused before a route was found).
UNMATCHED = "unmatched"
#: Methods counted under their own name; any other token a client sends counts as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Series:
    """The requests of one route, method and status: how many fell into each bucket, and their total time."""

    __slots__ = ("counts", "seconds")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0


class RequestTimes:
    """Every request answered, by (route template, method, status)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, int], Series] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        series.counts[bisect_left(BUCKETS, seconds)] += 1
        series.seconds += seconds


class RequestMetrics:
    def __init__(self, app: App, times: RequestTimes) -> None:
        self.app = app
        self.times = times

    async def __call__(self, context: Context) -> Reply:
        try:
            reply = await self.app(context)
        except ClientGone:
            self._observe(context, CLIENT_CLOSED)
            raise
        self._observe(context, reply.status)
        return reply

    def _observe(self, context: Context, status: int) -> None:
        route = context.route
        method = context.method
        self.times.observe(
            UNMATCHED if route is None else route.path,
            method if method in METHODS else "other",
            status,
            time.perf_counter() - context.started,
        )
