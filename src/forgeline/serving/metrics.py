"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own so tests can run
several apps in one process. With ``--workers`` every worker writes them to a shared folder
(prometheus_client's multiprocess mode) and ``/metrics`` adds them up: counters and histograms are
summed; each gauge says below how its workers' values combine."""

from __future__ import annotations

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set by ``--workers`` (``forgeline.serving.workers``): metrics live in files every worker adds to."""


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
        self.version = Gauge("forgeline_model_version", "Model version being served (with --workers: per worker pid)",
                             registry=self.registry, multiprocess_mode="liveall")
        self.swaps = Counter("forgeline_model_swaps", "Successful model swaps", registry=self.registry)
        self.swap_failures = Counter("forgeline_model_swap_failures", "Failed model loads while polling",
                                     registry=self.registry)
        self.ready = Gauge("forgeline_ready", "1 when serving traffic (with --workers: how many workers are)",
                           registry=self.registry, multiprocess_mode="livesum")
        self.in_flight = Gauge("forgeline_in_flight_requests", "Predict requests waiting for or in inference",
                               registry=self.registry, multiprocess_mode="livesum")
        self.rejected = Counter("forgeline_rejected_connections", "Connections closed before a request: headers "
                                "too slow (408) or too large (431)", ["reason"], registry=self.registry)
        # the traffic log (--log-sample)
        self.traffic_logged = Counter("forgeline_traffic_logged", "Texts written to the traffic log", registry=self.registry)
        self.traffic_dropped = Counter("forgeline_traffic_dropped", "Sampled texts dropped: the log writer fell behind",
                                       registry=self.registry)
        self.traffic_write_failures = Counter("forgeline_traffic_write_failures", "Traffic log files that could not be written",
                                              registry=self.registry)
        # shadow traffic (--shadow ALIAS)
        self.shadow_texts = Counter("forgeline_shadow_texts", "Texts also run on the shadow model", registry=self.registry)
        self.shadow_agreements = Counter("forgeline_shadow_agreements", "Shadow texts where both models gave the same label",
                                         registry=self.registry)
        self.shadow_agreement_rate = Gauge("forgeline_shadow_agreement_rate", "Agreement since the shadow version loaded",
                                           registry=self.registry, multiprocess_mode="livemax")
        self.shadow_latency = Histogram("forgeline_shadow_seconds", "Per-batch latency: champion request vs shadow inference",
                                        ["model"], registry=self.registry,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.shadow_dropped = Counter("forgeline_shadow_dropped", "Texts not shadowed: the shadow queue was full",
                                      registry=self.registry)
        self.shadow_errors = Counter("forgeline_shadow_errors", "Shadow model load or inference failures",
                                     registry=self.registry)
