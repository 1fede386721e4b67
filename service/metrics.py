"""Prometheus metrics, in a registry of the app's own (tests can build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "ernie_cls_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "ernie_cls_request_seconds", "Request latency (classify).", buckets=LATENCY_BUCKETS, registry=r
        )
        self.texts = Counter("ernie_cls_texts", "Texts classified.", registry=r)
        self.batches = Counter("ernie_cls_batches", "Model calls.", registry=r)
        self.batch_size = Histogram(
            "ernie_cls_batch_size", "Texts per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_seconds = Histogram(
            "ernie_cls_batch_seconds", "Model call duration.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.real_tokens = Counter("ernie_cls_real_tokens", "Tokens sent to the model, without padding.", registry=r)
        self.padded_tokens = Counter("ernie_cls_padded_tokens", "Tokens sent to the model, with padding.", registry=r)
        self.queue_texts = Gauge("ernie_cls_queue_texts", "Texts waiting for a batch.", registry=r)
        self.cache_hits = Counter("ernie_cls_cache_hits", "Result cache hits.", registry=r)
        self.cache_misses = Counter("ernie_cls_cache_misses", "Result cache misses.", registry=r)
        self.dropped = Counter("ernie_cls_dropped_texts", "Texts dropped before inference.", ["reason"], registry=r)
        self.rejected = Counter("ernie_cls_rejected_texts", "Texts refused with 429 (queue full).", registry=r)
        self.failed_batches = Counter("ernie_cls_failed_batches", "Model calls that raised.", registry=r)
        self.ready = Gauge("ernie_cls_ready", "1 when the service is ready to classify.", registry=r)

    def on_batch(self, size: int, real: int, padded: int, seconds: float) -> None:
        self.batches.inc()
        self.texts.inc(size)
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.real_tokens.inc(real)
        self.padded_tokens.inc(padded)
