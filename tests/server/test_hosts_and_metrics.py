"""The real server: a foreign `Host` refused on loopback (DNS rebinding), and /metrics' latency
histograms and counters moving with requests, behind the API key unless --metrics-public."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

KEY = "metrics-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten."}],
    "max_tokens": 6,
    "temperature": 0,
    "ignore_eos": True,
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HearthServer]:
    with start_server(
        tmp_path_factory.mktemp("hosts"), "--api-key", KEY, "--allowed-hosts", "my.box", api_key=KEY
    ) as server:
        yield server


def test_a_foreign_host_gets_403_in_each_apis_shape(keyed: HearthServer) -> None:
    evil = {"Host": "evil.example", **AUTH}
    openai_style = httpx.post(f"{keyed.base_url}/v1/chat/completions", json=CHAT, headers=evil)
    assert openai_style.status_code == 403
    error = openai_style.json()["error"]
    assert error["type"] == "permission_error"
    assert error["code"] == "host_not_allowed"
    assert error["param"] is None
    assert "evil.example" in error["message"]

    anthropic_style = httpx.post(
        f"{keyed.base_url}/v1/messages",
        json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
        headers=evil,
    )
    assert anthropic_style.status_code == 403
    body = anthropic_style.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"

    ollama_style = httpx.post(
        f"{keyed.base_url}/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
        headers={"Host": "evil.example:8642", **AUTH},
    )
    assert ollama_style.status_code == 403
    assert set(ollama_style.json()) == {"error"}

    # Before anything else: even /health, and with no key.
    assert (
        httpx.get(f"{keyed.base_url}/health", headers={"Host": "evil.example"}).status_code == 403
    )


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "localhost", "my.box"])
def test_loopback_and_allowed_hosts_are_served(keyed: HearthServer, host: str) -> None:
    headers = {"Host": host.format(port=keyed.port), **AUTH}
    response = httpx.post(f"{keyed.base_url}/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.text


def _scrape(server: HearthServer, headers: dict[str, str]) -> dict[str, float]:
    response = httpx.get(f"{server.base_url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    samples = {}
    for line in response.text.splitlines():
        if line.startswith("hearth_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_need_the_key(keyed: HearthServer) -> None:
    missing = httpx.get(f"{keyed.base_url}/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert _scrape(keyed, AUTH)


def test_latency_histograms_and_finish_reasons_move(keyed: HearthServer) -> None:
    label = f'model="{MODEL}"'
    histograms = [
        "hearth_time_to_first_token_seconds",
        "hearth_time_per_output_token_seconds",
        "hearth_e2e_request_latency_seconds",
        "hearth_request_queue_time_seconds",
    ]
    before = _scrape(keyed, AUTH)

    plain = httpx.post(f"{keyed.base_url}/v1/chat/completions", json=CHAT, headers=AUTH)
    assert plain.status_code == 200
    with httpx.stream(
        "POST",
        f"{keyed.base_url}/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=AUTH,
    ) as streamed:
        assert streamed.status_code == 200
        assert "data: [DONE]" in "".join(streamed.iter_text())

    after = _scrape(keyed, AUTH)
    for name in histograms:
        count = f"{name}_count{{{label}}}"
        assert after[count] - before.get(count, 0) == 2, name
        assert after[f"{name}_sum{{{label}}}"] > 0, name
        assert after[f'{name}_bucket{{le="+Inf",{label}}}'] == after[count]
    length = f'hearth_request_success_total{{finished_reason="length",{label}}}'
    assert after[length] - before.get(length, 0) == 2
    generated = f"hearth_generation_tokens_total{{{label}}}"
    assert after[generated] - before[generated] == 12
    assert (
        after[f"hearth_batch_size_count{{{label}}}"] > before[f"hearth_batch_size_count{{{label}}}"]
    )
    ok = 'hearth_http_requests_total{api="openai",status="200"}'
    assert after[ok] - before.get(ok, 0) == 2


def test_metrics_public_serves_metrics_without_the_key(tmp_path: Path) -> None:
    with start_server(tmp_path, "--api-key", KEY, "--metrics-public", api_key=KEY) as server:
        response = httpx.get(f"{server.base_url}/metrics")
        assert response.status_code == 200
        assert re.search(r"^hearth_models_loaded 1", response.text, re.MULTILINE)
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
        # A Host that is not loopback is refused here too: the check needs no key.
        evil = httpx.get(f"{server.base_url}/metrics", headers={"Host": "evil.example"})
        assert evil.status_code == 403
