"""Prometheus metrics served at ``/metrics``: requests, latency, tokens, queue depth, batch sizes."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """One registry per app, so several apps in one process (tests) never share counters."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gritkit_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("gritkit_request_latency_seconds", "Time from request to last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("gritkit_tokens", "Tokens processed: prompt, completion, embedding",
                              ["kind"], registry=self.registry)
        self.queue_depth = Gauge("gritkit_queue_depth", "Embedding requests queued or being encoded; generations "
                                 "waiting for a slot", ["queue"], registry=self.registry)
        self.active_generations = Gauge("gritkit_active_generations", "Generations running now",
                                        registry=self.registry)
        self.model_busy = Gauge("gritkit_model_busy", "Requests whose work is inside the model now (a cancelled "
                                "request counts until its work has stopped)", ["worker"], registry=self.registry)
        self.embedding_batch_size = Histogram("gritkit_embedding_batch_size", "Texts per encode call",
                                              buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting every response (errors from other middleware included) by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            # Label by route template, or by path for requests refused before routing (401, 413);
            # anything else is "unmatched", so label values stay few whatever clients send.
            route = getattr(scope.get("route"), "path", None)
            route = route or (scope["path"] if scope["path"] in self.paths else "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
