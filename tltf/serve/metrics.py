"""Prometheus metrics of one app, in its own ``CollectorRegistry`` (several apps can live in one process).

- ``tltf_serve_requests_total{endpoint, model, code}``: every HTTP request, by route and status code;
- ``tltf_serve_errors_total{endpoint, model}``: the ones answered with a 4xx or 5xx;
- ``tltf_serve_request_seconds{endpoint}``: request latency, from the first byte read to the last sent;
- ``tltf_serve_requests_in_progress``: requests whose head has arrived and whose answer is not sent yet;
- ``tltf_serve_batch_rows{model}`` and ``tltf_serve_batch_requests{model}``: per onnxruntime call, the rows and
  the requests it served (their ``_count`` is the number of calls: fewer calls than requests = batching);
- ``tltf_serve_inference_seconds{model}``: the onnxruntime calls' durations;
- ``tltf_serve_rejected_total{model, reason}``: requests the server turned away under load or from slow clients:
  ``queue_full`` / ``queue_bytes`` (503), ``deadline`` (504), ``body_timeout`` (408), ``disconnected`` (the client
  left before its answer: 499, as nginx logs it), ``head_timeout`` (a connection without a complete request head,
  closed with a 408; no model);
- ``tltf_serve_queue_requests{model}`` and ``tltf_serve_queue_bytes{model}``: what each model holds now (waiting
  or running), against ``--max-queue`` and ``--max-queue-mb``; ``tltf_serve_running_requests{model}``: the
  requests in the batch running now.

``endpoint`` is the route's handler name (``infer``, ``predict``, ``model_metadata``, ...; ``none`` for a request
refused before routing: an unknown path, a declared body over the limit) and ``model`` is a served model's name
or empty, never a name a client made up, so a client cannot grow the label sets.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    """The app's collectors; :meth:`exposition` renders them in the Prometheus text format."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        kw = {"registry": self.registry}
        self.requests = Counter("tltf_serve_requests", "HTTP requests by endpoint, model and status code",
                                ["endpoint", "model", "code"], **kw)
        self.errors = Counter("tltf_serve_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "model"], **kw)
        self.latency = Histogram("tltf_serve_request_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, **kw)
        self.in_progress = Gauge("tltf_serve_requests_in_progress", "HTTP requests being read or answered", **kw)
        self.batch_rows = Histogram("tltf_serve_batch_rows", "Rows per onnxruntime call", ["model"],
                                    buckets=ROW_BUCKETS, **kw)
        self.batch_requests = Histogram("tltf_serve_batch_requests", "Requests served per onnxruntime call",
                                        ["model"], buckets=ROW_BUCKETS, **kw)
        self.inference = Histogram("tltf_serve_inference_seconds", "Duration of onnxruntime calls", ["model"],
                                   buckets=LATENCY_BUCKETS, **kw)
        self.rejected = Counter("tltf_serve_rejected", "Requests turned away under load or from slow clients",
                                ["model", "reason"], **kw)
        self.queue_requests = Gauge("tltf_serve_queue_requests", "Requests a model holds (waiting or running)",
                                    ["model"], **kw)
        self.queue_bytes = Gauge("tltf_serve_queue_bytes", "Input bytes a model holds (waiting or running)",
                                 ["model"], **kw)
        self.running = Gauge("tltf_serve_running_requests", "Requests in the batch running now", ["model"], **kw)

    def watch_queue(self, model: str, batcher) -> None:
        """The queue gauges of ``model`` read its batcher's counts when scraped."""
        self.queue_requests.labels(model).set_function(lambda: batcher.held_requests)
        self.queue_bytes.labels(model).set_function(lambda: batcher.held_bytes)
        self.running.labels(model).set_function(lambda: batcher.running_requests)

    def batch_observer(self, model: str):
        """The ``on_batch(rows, requests, seconds)`` callback of a model's batcher."""
        rows_metric = self.batch_rows.labels(model)
        requests_metric = self.batch_requests.labels(model)
        seconds_metric = self.inference.labels(model)

        def observe(rows: int, requests: int, seconds: float) -> None:
            rows_metric.observe(rows)
            requests_metric.observe(requests)
            seconds_metric.observe(seconds)

        return observe

    def exposition(self) -> tuple[bytes, str]:
        """``(body, content type)`` of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request: endpoint (the matched route's handler), model (only names in
    ``models``), status code and latency. An exception escaping the app counts as a 500."""

    def __init__(self, app, metrics: ServeMetrics, models):
        self.app = app
        self.metrics = metrics
        self.models = models

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        self.metrics.in_progress.inc()

        async def send_and_see(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_see)
        finally:
            self.metrics.in_progress.dec()
            endpoint = getattr(scope.get("endpoint"), "__name__", "none")
            model = (scope.get("path_params") or {}).get("name", "")
            model = model if model in self.models else ""
            self.metrics.requests.labels(endpoint, model, str(status[0])).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, model).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
