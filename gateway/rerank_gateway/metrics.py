"""Prometheus metrics of the gateway, served at ``GET /metrics``.

With several workers (``--workers N``) each is its own process: prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set by the CLI) sums them, so a scrape sees the whole gateway.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

disable_created_metrics()  # no *_created series: half the lines, no use for rates
REQUESTS = Counter("rerank_gateway_requests_total", "REST requests answered, by route and HTTP status",
                   ["route", "status"])
LATENCY = Histogram("rerank_gateway_request_duration_seconds", "Time from request to response, by route",
                    ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
PASSAGES = Counter("rerank_gateway_passages_total", "Passages scored, by route", ["route"])
TOKENS = Counter("rerank_gateway_tokens_total", "Tokens scored (BOS and template included), by route", ["route"])
ERRORS = Counter("rerank_gateway_errors_total", "Error answers, by kind (the error body's type)", ["kind"])
PASSAGES_IN_FLIGHT = Gauge("rerank_gateway_passages_in_flight", "Passages admitted and not yet answered",
                           multiprocess_mode="livesum")
REJECTED = Counter("rerank_gateway_admission_rejected_total",
                   "Requests answered 503 at once: over the admission budget, by the budget that was full "
                   "(passages or tokens)", ["budget"])
TOKENS_IN_FLIGHT = Gauge("rerank_gateway_tokens_in_flight", "Estimated tokens of the passages admitted and not yet "
                         "answered", multiprocess_mode="livesum")
CACHE_HITS = Counter("rerank_gateway_cache_hits_total", "Passages answered from the score cache")
CACHE_MISSES = Counter("rerank_gateway_cache_misses_total", "Passages looked up in the score cache and not found "
                       "(scored by Triton)")
CACHE_ENTRIES = Gauge("rerank_gateway_cache_entries", "Pair scores held by the score cache", multiprocess_mode="livesum")
CACHE_BYTES = Gauge("rerank_gateway_cache_bytes", "Bytes held by the score cache", multiprocess_mode="livesum")
DISCONNECTS = Counter("rerank_gateway_client_disconnects_total",
                      "Requests whose client went away before the answer: cancelled, with their Triton calls")
IN_FLIGHT = Gauge("rerank_gateway_requests_in_flight", "REST requests being answered", multiprocess_mode="livesum")


def scored(route: str, passages: int, tokens: int) -> None:
    PASSAGES.labels(route).inc(passages)
    TOKENS.labels(route).inc(tokens)


def exposition() -> tuple[bytes, str]:
    """The metrics text of this process, or of every worker in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts, times and tracks every HTTP request; the route label is the matched path template
    (``/v1/retrieval/{model}/reranking``), so label values stay few."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            REQUESTS.labels(route, str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)
