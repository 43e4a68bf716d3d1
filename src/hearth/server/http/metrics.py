"""Prometheus metrics at GET /metrics, read from plain numbers when scraped, one `model` label
per loaded model; and `CountRequests`, the middleware that counts HTTP requests by API and
status.

A collector rather than live metric objects: the engine thread keeps plain ints (`EngineStats`),
`Engine.generate` plain histograms (`RequestStats`), and nothing on the per-token path touches
prometheus_client. A model's series start again from zero when it is loaded again (Prometheus
treats that as a counter reset). Names follow vLLM's where it has one (`vllm:` -> `hearth_`), so
its dashboards adapt by a rename.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.engine.engine import Histogram, RequestStats
from hearth.engine.types import EngineStats
from hearth.server.http.errors import is_anthropic_path, is_ollama_path

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "CONTENT_TYPE",
    "CountRequests",
    "HttpCounts",
    "ModelMetrics",
    "api_of",
    "render_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)  # --parallel <= 256


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """One loaded model's numbers, as scraped: its engine's counters and its requests'."""

    name: str
    engine: EngineStats
    requests: RequestStats = field(default_factory=RequestStats)
    runner_crashes: int = 0  # its runner process died or was killed by the watchdog


def api_of(path: str) -> str:
    """Which API a path belongs to: anthropic, ollama, openai (/v1), or other."""
    if is_anthropic_path(path):
        return "anthropic"
    if is_ollama_path(path):
        return "ollama"
    if path.startswith("/v1/"):
        return "openai"
    return "other"


@dataclass(slots=True)
class HttpCounts:
    """HTTP requests answered, by (API, status); kept on the app (`app.state.http_counts`)."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, api: str, status: int) -> None:
        key = (api, str(status))
        self.counts[key] = self.counts.get(key, 0) + 1


class CountRequests:
    """Counts each HTTP request by API and the status it was answered with: one dict add per
    request, read at the response's start. A request that fails with no response counts as
    500; one whose client left before any answer, as 499 (nginx's "client closed request")."""

    def __init__(self, app: ASGIApp, counts: HttpCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            status = status or 500
            raise
        finally:
            self.counts.add(api_of(scope["path"]), status or 499)


def _histogram_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    cumulative = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        cumulative += count
        buckets.append((repr(float(bound)), cumulative))
    buckets.append(("+Inf", cumulative + histogram.counts[-1]))
    return buckets


def _batch_size_histogram(stats: EngineStats) -> Histogram:
    histogram = Histogram(BATCH_SIZE_BUCKETS)
    for size, steps in stats.batch_size_histogram.items():
        histogram.counts[bisect_left(BATCH_SIZE_BUCKETS, size)] += steps
        histogram.total += size * steps
    return histogram


class _Collector(Collector):
    def __init__(self, models: Sequence[ModelMetrics], loading: int, http: HttpCounts | None):
        self._models = models
        self._loading = loading
        self._http = http

    def collect(self) -> Iterator[Metric]:
        models = self._models

        def gauge(name: str, doc: str, field: str) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(f"hearth_{name}", doc, labels=["model"])
            for model in models:
                metric.add_metric([model.name], getattr(model.engine, field))
            return metric

        def counter(name: str, doc: str, field: str) -> CounterMetricFamily:
            metric = CounterMetricFamily(f"hearth_{name}", doc, labels=["model"])
            for model in models:
                metric.add_metric([model.name], getattr(model.engine, field))
            return metric

        def histogram(name: str, doc: str, field: str) -> HistogramMetricFamily:
            metric = HistogramMetricFamily(f"hearth_{name}", doc, labels=["model"])
            for model in models:
                observed: Histogram = getattr(model.requests, field)
                metric.add_metric(
                    [model.name], _histogram_buckets(observed), sum_value=observed.total
                )
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
            "prefix_cache_hits",
            "Prompt tokens served from the prompt cache (not decoded again).",
            "prompt_tokens_cached_total",
        )
        yield counter("generation_tokens", "Tokens generated.", "generated_tokens_total")
        yield counter(
            "spec_decode_num_draft_tokens",
            "Speculative draft tokens decoded and verified.",
            "draft_tokens_total",
        )
        yield counter(
            "spec_decode_num_accepted_tokens",
            "Speculative draft tokens the model kept.",
            "draft_tokens_accepted_total",
        )
        yield counter("requests_finished", "Requests ended, any way.", "requests_finished")

        batch = HistogramMetricFamily(
            "hearth_batch_size", "Sequences in each decode step.", labels=["model"]
        )
        for model in models:
            sizes = _batch_size_histogram(model.engine)
            batch.add_metric([model.name], _histogram_buckets(sizes), sum_value=sizes.total)
        yield batch

        yield histogram(
            "time_to_first_token_seconds",
            "Time from a request's submission to the engine until its first output.",
            "time_to_first_token",
        )
        yield histogram(
            "time_per_output_token_seconds",
            "Per request: time from its first output to its last, per token after the first.",
            "time_per_output_token",
        )
        yield histogram(
            "e2e_request_latency_seconds",
            "Time from a request's submission to the engine until its last output.",
            "e2e_latency",
        )
        yield histogram(
            "request_queue_time_seconds",
            "Time a request waited for a slot: submission to the step that admitted it.",
            "queue_time",
        )
        success = CounterMetricFamily(
            "hearth_request_success",
            "Choices finished, by reason: stop, length, or abort (the client left).",
            labels=["model", "finished_reason"],
        )
        failure = CounterMetricFamily(
            "hearth_request_failure",
            "Requests the engine failed: a queue timeout, a decode failure, a shutdown.",
            labels=["model"],
        )
        crashes = CounterMetricFamily(
            "hearth_runner_crashes",
            "Times the model's runner process died (a signal, an exit) or was killed by the "
            "watchdog; it is started again by itself.",
            labels=["model"],
        )
        for model in models:
            for reason, count in model.requests.finished.items():
                success.add_metric([model.name, reason], count)
            failure.add_metric([model.name], model.requests.failed)
            crashes.add_metric([model.name], model.runner_crashes)
        yield success
        yield failure
        yield crashes

        if self._http is not None:
            http = CounterMetricFamily(
                "hearth_http_requests",
                "HTTP requests answered, by API (openai, anthropic, ollama, other) and status.",
                labels=["api", "status"],
            )
            for (api, status), count in sorted(self._http.counts.items()):
                http.add_metric([api, status], count)
            yield http


def render_metrics(
    models: Sequence[ModelMetrics], *, loading: int = 0, http: HttpCounts | None = None
) -> bytes:
    """Metrics for the loaded models (a snapshot of each) and the HTTP requests counted."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(models, loading, http))
    return generate_latest(registry)
