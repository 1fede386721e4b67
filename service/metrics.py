"""Prometheus metrics, in a registry of the app's own (tests can build many apps in one process).

Counters the engines keep anyway (batcher stats, cache hits, readiness) are read at scrape time by a collector,
so there is one source of truth and no bookkeeping on the request path. Each engine's series carry the labels
`model` (its name in the service), `variant` (stable / canary) and `version` (its manifest's): only the versions
loaded now (current and previous sets) are exported, so the label sets stay bounded however often one reloads.
Only what has no other home is recorded here directly: per-route request counts and the latency / batch
histograms.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.engine import Engine
    from service.registry import Registry

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
VERSION_LABELS = ["model", "variant", "version"]

# name, help, how to read it from an engine whose batcher runs
_BATCHER_COUNTERS = (
    ("ernie_cls_texts", "Texts classified by the model.", lambda e: e.batcher.stats.texts),
    ("ernie_cls_batches", "Model calls.", lambda e: e.batcher.stats.batches),
    ("ernie_cls_real_tokens", "Tokens sent to the model, without padding.", lambda e: e.batcher.stats.real_tokens),
    ("ernie_cls_padded_tokens", "Tokens sent to the model, with padding.", lambda e: e.batcher.stats.padded_tokens),
    ("ernie_cls_failed_batches", "Model calls that raised.", lambda e: e.batcher.stats.failed_batches),
    (
        "ernie_cls_timed_out_batches",
        "Model calls abandoned after the inference timeout.",
        lambda e: e.batcher.stats.timed_out_batches,
    ),
    ("ernie_cls_rejected_texts", "Texts refused with 429 (queue full).", lambda e: e.batcher.stats.rejected_texts),
)


class RegistryCollector(Collector):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        models = self.registry
        yield GaugeMetricFamily("ernie_cls_ready", "1 when the service is ready to classify.", models.is_ready)
        versions = self._versions()
        info = GaugeMetricFamily(
            "ernie_cls_model_info", "1 per version loaded; set=current or previous.", labels=[*VERSION_LABELS, "set"]
        )
        for labels, _, which in versions:
            info.add_metric([*labels, which], 1)
        yield info
        yield from self._per_version(versions)

    def _versions(self) -> list[tuple[list[str], Engine, str]]:
        """([model, variant, version], engine, which set) for every engine loaded, each engine once and each label
        set once, current set first: an engine promoted from canary to stable is counted as stable only, and a
        previous engine whose labels the current set already uses (the same version reloaded with other sizes)
        is left out rather than exported twice under one name."""
        out: list[tuple[list[str], Engine, str]] = []
        engines: set[int] = set()
        labels: set[tuple[str, ...]] = set()
        sets = [("current", self.registry.current), ("previous", self.registry.previous)]
        for which, models in sets:
            if models is None:
                continue
            for name, variant, engine in models.engines():
                version = engine.artifact.spec.version if engine.artifact is not None else ""
                key = (name, variant, version)
                if id(engine) in engines or key in labels:
                    continue
                engines.add(id(engine))
                labels.add(key)
                out.append(([name, variant, version], engine, which))
        return out

    @staticmethod
    def _per_version(versions: list[tuple[list[str], Engine, str]]) -> Iterator[Metric]:
        hits = CounterMetricFamily("ernie_cls_cache_hits", "Result cache hits.", labels=VERSION_LABELS)
        misses = CounterMetricFamily("ernie_cls_cache_misses", "Result cache misses.", labels=VERSION_LABELS)
        queue = GaugeMetricFamily("ernie_cls_queue_texts", "Texts waiting for a batch.", labels=VERSION_LABELS)
        counters = [CounterMetricFamily(name, text, labels=VERSION_LABELS) for name, text, _ in _BATCHER_COUNTERS]
        dropped = CounterMetricFamily(
            "ernie_cls_dropped_texts", "Texts dropped before inference.", labels=[*VERSION_LABELS, "reason"]
        )
        for labels, engine, _ in versions:
            hits.add_metric(labels, engine.cache.hits)
            misses.add_metric(labels, engine.cache.misses)
            if engine.batcher is None:
                continue
            queue.add_metric(labels, engine.batcher.queued_texts)
            for family, (_, _, read) in zip(counters, _BATCHER_COUNTERS, strict=True):
                family.add_metric(labels, read(engine))
            dropped.add_metric([*labels, "deadline"], engine.batcher.stats.dropped_deadline)
            dropped.add_metric([*labels, "disconnected"], engine.batcher.stats.dropped_disconnected)
        yield from (hits, misses, queue, *counters, dropped)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ernie_cls_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "ernie_cls_request_seconds",
            "Classify request latency, by model and variant.",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ernie_cls_batch_size", "Texts per model call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r
        )
        self.batch_seconds = Histogram(
            "ernie_cls_batch_seconds", "Model call duration.", buckets=LATENCY_BUCKETS, registry=r
        )
        self._latency_children: dict[tuple[str, str], Histogram] = {}

    def watch(self, registry: Registry) -> None:
        self.registry.register(RegistryCollector(registry))

    def observe_latency(self, model: str, variant: str, seconds: float) -> None:
        child = self._latency_children.get((model, variant))
        if child is None:  # model names come from the models file, not from requests: bounded
            child = self._latency_children[model, variant] = self.latency.labels(model, variant)
        child.observe(seconds)

    def on_batch(self, size: int, real: int, padded: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
