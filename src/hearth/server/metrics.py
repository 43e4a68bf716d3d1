"""Prometheus metrics at GET /metrics, read from the engines' counters when scraped, one
`model` label per loaded model.

A collector rather than live metric objects: the engine thread keeps plain ints, and nothing on
the per-token path touches prometheus_client. A model's counters start again from zero when it
is loaded again (Prometheus treats that as a counter reset).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hearth.engine.types import EngineStats

__all__ = ["CONTENT_TYPE", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, models: Sequence[tuple[str, EngineStats]], loading: int) -> None:
        self._models = models
        self._loading = loading

    def collect(self) -> Iterator[Metric]:
        models = self._models

        def gauge(name: str, doc: str, field: str) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(f"hearth_{name}", doc, labels=["model"])
            for model, stats in models:
                metric.add_metric([model], getattr(stats, field))
            return metric

        def counter(name: str, doc: str, field: str) -> CounterMetricFamily:
            metric = CounterMetricFamily(f"hearth_{name}", doc, labels=["model"])
            for model, stats in models:
                metric.add_metric([model], getattr(stats, field))
            return metric

        yield GaugeMetricFamily("hearth_models_loaded", "Models in memory.", len(models))
        yield GaugeMetricFamily("hearth_models_loading", "Models being loaded.", self._loading)
        yield gauge("slots", "Slots (sequences decoded together).", "slots_total")
        yield gauge("slots_in_use", "Slots running a request.", "slots_in_use")
        yield gauge("queue_length", "Requests waiting for a slot.", "queue_length")
        yield gauge("max_batch_size", "Most sequences in one decode step.", "max_batch_size")
        yield counter("decode_steps", "llama_decode calls.", "steps")
        yield counter("prompt_tokens", "Prompt tokens of started requests.", "prompt_tokens_total")
        yield counter(
            "prompt_tokens_cached",
            "Prompt tokens served from the prompt cache.",
            "prompt_tokens_cached_total",
        )
        yield counter("generated_tokens", "Tokens sampled.", "generated_tokens_total")
        yield counter("requests_finished", "Requests ended, any way.", "requests_finished")


def render_metrics(models: Sequence[tuple[str, EngineStats]], *, loading: int = 0) -> bytes:
    """Metrics for the loaded models: (name, a snapshot of its engine's stats) each."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_EngineCollector(models, loading))
    return generate_latest(registry)
