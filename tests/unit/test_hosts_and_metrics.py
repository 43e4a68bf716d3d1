"""The Host check against DNS rebinding (pure), the request-side measurements of Engine.generate
(a fake runner), and /metrics' rendering of them."""

from __future__ import annotations

import asyncio
import re

import pytest

from hearth.engine.engine import Engine, Histogram, RequestStats
from hearth.engine.types import (
    BatchBudget,
    EngineStats,
    GenerationRequest,
    QueuePolicy,
    RequestOutput,
    SamplingParams,
)
from hearth.server.app import create_app
from hearth.server.http.hosts import HostCheck, host_allowed, is_loopback_host, split_host
from hearth.server.http.metrics import HttpCounts, ModelMetrics, api_of, render_metrics
from hearth.settings import ServeSettings
from tests.unit.fake_runner import EOG, FakeRunner, text_tokens


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8642", "localhost"),
        ("127.0.0.1:8642", "127.0.0.1"),
        ("[::1]:8642", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("my.box", "my.box"),
        ("evil.example:80", "evil.example"),
    ],
)
def test_split_host_drops_the_port_and_brackets(header: str, host: str) -> None:
    assert split_host(header) == host


@pytest.mark.parametrize(
    "header",
    [
        None,  # HTTP/1.0: no browser sends that
        "localhost",
        "localhost:8642",
        "LOCALHOST:1",
        "localhost.",
        "hearth.localhost:8642",  # browsers resolve *.localhost to loopback themselves
        "127.0.0.1",
        "127.0.0.1:8642",
        "127.1.2.3:9",
        "[::1]",
        "[::1]:8642",
    ],
)
def test_loopback_hosts_are_allowed(header: str | None) -> None:
    assert host_allowed(header)


@pytest.mark.parametrize(
    "header",
    [
        "evil.example",
        "evil.example:8642",
        "localhost.evil.example",
        "127.0.0.1.evil.example",
        "10.0.0.5:8642",
        "0.0.0.0:8642",
        "",
    ],
)
def test_other_hosts_are_refused(header: str) -> None:
    assert not host_allowed(header)


def test_allowed_hosts_match_by_name_at_any_port() -> None:
    assert host_allowed("my.box", ["my.box"])
    assert host_allowed("My.Box:8642", ["my.box"])
    assert not host_allowed("other.box", ["my.box"])
    assert not host_allowed("sub.my.box", ["my.box"])
    assert host_allowed("anything.example:1", ["*"])


def test_loopback_bind_addresses() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback_host(host)
    for host in ("0.0.0.0", "::", "192.168.1.4", "my.box", ""):
        assert not is_loopback_host(host)


def test_the_host_check_runs_only_on_a_loopback_bind() -> None:
    def checks(host: str) -> bool:
        app = create_app(ServeSettings(host=host))
        classes = [getattr(middleware, "cls", None) for middleware in app.user_middleware]
        return HostCheck in classes

    assert checks("127.0.0.1")
    assert checks("localhost")
    assert checks("::1")
    assert not checks("0.0.0.0")  # exposed on purpose: any Host may reach it


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.total == pytest.approx(8.65)


def test_api_of_path() -> None:
    assert api_of("/v1/chat/completions") == "openai"
    assert api_of("/v1/messages") == "anthropic"
    assert api_of("/v1/messages/count_tokens") == "anthropic"
    assert api_of("/api/chat") == "ollama"
    assert api_of("/health") == "other"
    assert api_of("/tokenize") == "other"


def _request(rid: str, prompt: str, max_tokens: int = 32) -> GenerationRequest:
    return GenerationRequest(rid, tuple(text_tokens(prompt)), SamplingParams(max_tokens=max_tokens))


async def _drain(engine: Engine, request: GenerationRequest) -> list[RequestOutput]:
    return [output async for output in engine.generate(request)]


def test_generate_measures_latency_queue_wait_and_finish_reasons() -> None:
    runner = FakeRunner(
        scripts={ord("A"): [*text_tokens("hello"), EOG], ord("B"): list(text_tokens("abcdef"))}
    )
    engine = Engine(runner, 1, BatchBudget(64, 16), QueuePolicy(max_waiting=4, timeout_s=30))

    async def main() -> RequestStats:
        engine.start()
        try:
            # One slot: the second request waits for the first to finish.
            await asyncio.gather(
                _drain(engine, _request("r1", "Ask")),
                _drain(engine, _request("r2", "Be brief", max_tokens=4)),
            )
            # A client that leaves after the first output: its choice counts as aborted.
            stream = engine.generate(_request("r3", "Ask"))
            await anext(stream)
            await stream.aclose()
            return engine.request_stats()
        finally:
            engine.shutdown()

    stats = asyncio.run(main())
    assert stats.finished == {"stop": 1, "length": 1, "abort": 1}
    assert stats.failed == 0
    assert stats.time_to_first_token.count == 3
    assert stats.queue_time.count == 3  # each was admitted into the slot
    assert stats.e2e_latency.count == 2  # only the requests that ended
    assert stats.time_per_output_token.count == 2
    assert all(total >= 0 for total in (stats.queue_time.total, stats.e2e_latency.total))


def test_render_metrics_has_vllm_names_per_model() -> None:
    requests = RequestStats()
    requests.time_to_first_token.observe(0.03)
    requests.e2e_latency.observe(0.2)
    requests.finished["stop"] += 2
    engine = EngineStats(
        slots_total=4,
        steps=3,
        prompt_tokens_total=10,
        prompt_tokens_cached_total=6,
        generated_tokens_total=7,
        batch_size_histogram={1: 2, 3: 1},
    )
    http = HttpCounts()
    http.add("openai", 200)
    http.add("openai", 200)
    http.add("ollama", 403)
    text = render_metrics([ModelMetrics("m", engine, requests)], http=http).decode()

    def value(sample: str) -> float:
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        assert match, sample
        return float(match.group(1))

    assert value('hearth_time_to_first_token_seconds_count{model="m"}') == 1
    assert value('hearth_time_to_first_token_seconds_bucket{le="0.04",model="m"}') == 1
    assert value('hearth_time_to_first_token_seconds_bucket{le="0.02",model="m"}') == 0
    assert value('hearth_e2e_request_latency_seconds_sum{model="m"}') == pytest.approx(0.2)
    assert value('hearth_time_per_output_token_seconds_count{model="m"}') == 0
    assert value('hearth_request_queue_time_seconds_count{model="m"}') == 0
    assert value('hearth_request_success_total{finished_reason="stop",model="m"}') == 2
    assert value('hearth_request_success_total{finished_reason="abort",model="m"}') == 0
    assert value('hearth_prompt_tokens_total{model="m"}') == 10
    assert value('hearth_prefix_cache_hits_total{model="m"}') == 6
    assert value('hearth_generation_tokens_total{model="m"}') == 7
    assert value('hearth_batch_size_bucket{le="1.0",model="m"}') == 2
    assert value('hearth_batch_size_bucket{le="2.0",model="m"}') == 2
    assert value('hearth_batch_size_bucket{le="4.0",model="m"}') == 3
    assert value('hearth_batch_size_count{model="m"}') == 3
    assert value('hearth_batch_size_sum{model="m"}') == 5
    assert value('hearth_http_requests_total{api="openai",status="200"}') == 2
    assert value('hearth_http_requests_total{api="ollama",status="403"}') == 1
