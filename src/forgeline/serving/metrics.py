"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so tests can run
several apps in one process."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("forgeline_requests", "Predict requests by HTTP status", ["status"], registry=self.registry)
        self.texts = Counter("forgeline_texts", "Texts classified", registry=self.registry)
        self.latency = Histogram("forgeline_request_seconds", "Predict request latency", registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.batch_size = Histogram("forgeline_batch_texts", "Texts per inference batch", registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
        self.version = Gauge("forgeline_model_version", "Model version being served", registry=self.registry)
        self.swaps = Counter("forgeline_model_swaps", "Successful model swaps", registry=self.registry)
        self.swap_failures = Counter("forgeline_model_swap_failures", "Failed model loads while polling",
                                     registry=self.registry)
        self.ready = Gauge("forgeline_ready", "1 when serving traffic", registry=self.registry)
        self.in_flight = Gauge("forgeline_in_flight_requests", "Predict requests waiting for or in inference",
                               registry=self.registry)
