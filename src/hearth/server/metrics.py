"""Prometheus metrics at GET /metrics, read from the engine's counters when scraped.

A collector rather than live metric objects: the engine thread keeps plain ints, and nothing on
the per-token path touches prometheus_client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hearth.engine.types import EngineStats

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, model: str, stats: Callable[[], EngineStats]) -> None:
        self._model = model
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        labels = ["model"]
        values = [self._model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(f"hearth_{name}", doc, labels=labels)
            metric.add_metric(values, value)
            return metric

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            metric = CounterMetricFamily(f"hearth_{name}", doc, labels=labels)
            metric.add_metric(values, value)
            return metric

        yield gauge("slots", "Slots (sequences decoded together).", stats.slots_total)
        yield gauge("slots_in_use", "Slots running a request.", stats.slots_in_use)
        yield gauge("queue_length", "Requests waiting for a slot.", stats.queue_length)
        yield gauge("max_batch_size", "Most sequences in one decode step.", stats.max_batch_size)
        yield counter("decode_steps", "llama_decode calls.", stats.steps)
        yield counter(
            "prompt_tokens", "Prompt tokens of started requests.", stats.prompt_tokens_total
        )
        yield counter(
            "prompt_tokens_cached",
            "Prompt tokens served from the prompt cache.",
            stats.prompt_tokens_cached_total,
        )
        yield counter("generated_tokens", "Tokens sampled.", stats.generated_tokens_total)
        yield counter("requests_finished", "Requests ended, any way.", stats.requests_finished)


def render_metrics(model: str, stats: Callable[[], EngineStats]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(model, stats))
    return generate_latest(registry)
