"""Prometheus metrics, in a registry of the app's own (tests can build many apps in one process).

Counters the engine keeps anyway (batcher stats, cache hits, readiness) are read at scrape time by a collector,
so there is one source of truth and no bookkeeping on the request path. Only what has no other home is recorded
here directly: per-route request counts and the latency / batch histograms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.engine import Engine

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class EngineCollector(Collector):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        yield GaugeMetricFamily("ernie_cls_ready", "1 when the service is ready to classify.", engine.is_ready)
        yield CounterMetricFamily("ernie_cls_cache_hits", "Result cache hits.", engine.cache.hits)
        yield CounterMetricFamily("ernie_cls_cache_misses", "Result cache misses.", engine.cache.misses)
        if engine.batcher is None:
            return
        stats = engine.batcher.stats
        yield GaugeMetricFamily("ernie_cls_queue_texts", "Texts waiting for a batch.", engine.batcher.queued_texts)
        yield CounterMetricFamily("ernie_cls_texts", "Texts classified by the model.", stats.texts)
        yield CounterMetricFamily("ernie_cls_batches", "Model calls.", stats.batches)
        yield CounterMetricFamily(
            "ernie_cls_real_tokens", "Tokens sent to the model, without padding.", stats.real_tokens
        )
        yield CounterMetricFamily(
            "ernie_cls_padded_tokens", "Tokens sent to the model, with padding.", stats.padded_tokens
        )
        yield CounterMetricFamily("ernie_cls_failed_batches", "Model calls that raised.", stats.failed_batches)
        yield CounterMetricFamily(
            "ernie_cls_timed_out_batches", "Model calls abandoned after the inference timeout.", stats.timed_out_batches
        )
        yield CounterMetricFamily(
            "ernie_cls_rejected_texts", "Texts refused with 429 (queue full).", stats.rejected_texts
        )
        dropped = CounterMetricFamily("ernie_cls_dropped_texts", "Texts dropped before inference.", labels=["reason"])
        dropped.add_metric(["deadline"], stats.dropped_deadline)
        dropped.add_metric(["disconnected"], stats.dropped_disconnected)
        yield dropped


class Metrics:
    def __init__(self, engine: Engine) -> None:
        r = self.registry = CollectorRegistry()
        r.register(EngineCollector(engine))
        self.requests = Counter(
            "ernie_cls_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "ernie_cls_request_seconds", "Request latency (classify).", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "ernie_cls_batch_size", "Texts per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_seconds = Histogram(
            "ernie_cls_batch_seconds", "Model call duration.", buckets=LATENCY_BUCKETS, registry=r
        )

    def on_batch(self, size: int, real: int, padded: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
