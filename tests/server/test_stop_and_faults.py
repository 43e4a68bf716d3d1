"""The real server stops cleanly and keeps a broken model to itself: a SIGTERM drains (running
streams finish, new requests get 503 with Retry-After, exit 0), and a truncated GGUF loaded on
demand is an error naming the file while the other models go on serving."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

CHAT = [{"role": "user", "content": "Hi"}]


async def _wait_for_draining(http: httpx.AsyncClient) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        health = (await http.get("/health")).json()
        if health["status"] == "draining":
            return dict(health)
        await asyncio.sleep(0.05)
    raise AssertionError("/health never said draining")


def test_sigterm_drains_four_running_streams_and_refuses_new_requests(tmp_path: Path) -> None:
    story = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": 160,
        "ignore_eos": True,
        "stream": True,
    }

    async def one_stream(http: httpx.AsyncClient, started: asyncio.Event) -> list[str]:
        events: list[str] = []
        async with http.stream("POST", "/v1/chat/completions", json=story) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
                    if len(events) == 3:
                        started.set()
        return events

    async def run(server: HearthServer) -> tuple[list[list[str]], dict[str, Any], dict[str, Any]]:
        async with (
            httpx.AsyncClient(base_url=server.base_url, timeout=120) as http,
            httpx.AsyncClient(base_url=server.base_url, timeout=30) as late,
        ):
            started = [asyncio.Event() for _ in range(4)]
            streams = [asyncio.create_task(one_stream(http, event)) for event in started]
            await asyncio.gather(*(event.wait() for event in started))
            server.process.send_signal(signal.SIGTERM)
            health = await _wait_for_draining(late)
            refused = {
                "openai": await late.post(
                    "/v1/chat/completions", json={"model": MODEL, "messages": CHAT}
                ),
                "anthropic": await late.post(
                    "/v1/messages", json={"model": MODEL, "messages": CHAT, "max_tokens": 4}
                ),
                "ollama": await late.post(
                    "/api/chat", json={"model": MODEL, "messages": CHAT, "stream": False}
                ),
            }
            assert not any(stream.done() for stream in streams), "the streams ended too soon"
            return await asyncio.gather(*streams), health, refused

    with start_server(tmp_path, "--parallel", "4", "--drain-timeout", "300") as server:
        results, health, refused = asyncio.run(run(server))
        exit_code = server.process.wait(timeout=30)

    for events in results:
        assert events[-1] == "[DONE]"
        finishes = [
            choice["finish_reason"]
            for event in events[:-1]
            for choice in json.loads(event)["choices"]
            if choice.get("finish_reason")
        ]
        assert finishes == ["length"]
    assert health["slots_in_use"] == 4
    for api, response in refused.items():
        assert response.status_code == 503, api
        assert response.headers["Retry-After"] == "5", api
    assert refused["openai"].json()["error"]["code"] == "server_draining"
    assert refused["anthropic"].json()["type"] == "error"
    assert refused["anthropic"].json()["error"]["type"] == "api_error"
    assert "shutting down" in refused["ollama"].json()["error"]
    assert exit_code == 0
    log = server.log()
    assert "Traceback" not in log
    assert "Draining: 4 requests running" in log
    assert "timeout graceful shutdown exceeded" not in log


def test_a_second_signal_ends_a_drain_at_once(tmp_path: Path) -> None:
    story = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }

    async def run(server: HearthServer) -> tuple[list[str], float]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            events: list[str] = []
            signalled_at = 0.0
            async with http.stream("POST", "/v1/chat/completions", json=story) as stream:
                async for line in stream.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events.append(line[len("data: ") :])
                    if len(events) == 3:
                        server.process.send_signal(signal.SIGTERM)
                        await _wait_for_draining(http)
                        signalled_at = time.monotonic()
                        server.process.send_signal(signal.SIGTERM)
            return events, time.monotonic() - signalled_at

    with start_server(tmp_path, "--parallel", "1", "--drain-timeout", "120") as server:
        events, ended_after = asyncio.run(run(server))
        exit_code = server.process.wait(timeout=30)
    assert ended_after < 5  # not the 120 s drain
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    # The cut answer has its finish reason before the error event that says why.
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"
    assert exit_code == 0
    assert "Traceback" not in server.log()


def _truncated_copy(path: Path) -> Path:
    from hearth.models.registry import embedded_model_path

    with embedded_model_path().open("rb") as source:
        path.write_bytes(source.read(1 << 20))
    return path


def test_a_truncated_gguf_loaded_on_demand_is_an_error_naming_the_file(tmp_path: Path) -> None:
    broken = _truncated_copy(tmp_path / "broken.gguf")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("these are notes, not a model\n" * 100)
    config = tmp_path / "hearth.toml"
    config.write_text(
        f'[models."broken"]\nbase = "{broken}"\n\n[models."notes"]\nbase = "{not_gguf}"\n'
    )
    with start_server(tmp_path, "--config", str(config)) as server:
        client = server.client()
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            cut = http.post("/v1/chat/completions", json={"model": "broken", "messages": CHAT})
            other = http.post(
                "/api/chat", json={"model": "notes", "messages": CHAT, "stream": False}
            )
        assert cut.status_code == 500
        error = cut.json()["error"]
        assert error["code"] == "model_load_failed"
        assert str(broken) in error["message"] and "cut short" in error["message"]
        assert other.status_code == 500
        assert str(not_gguf) in other.json()["error"]
        assert "not a GGUF file" in other.json()["error"]
        # The server goes on serving its model.
        reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4)
        assert reply.choices[0].message.content
        health = server.health()
        assert health["status"] == "ok"
        assert [m["name"] for m in health["models"]] == [MODEL]
        assert "Traceback" not in server.log()


def test_a_truncated_startup_model_fails_at_start_with_one_line(tmp_path: Path) -> None:
    broken = _truncated_copy(tmp_path / "broken.gguf")
    with pytest.raises(RuntimeError, match=r"cut short") as failure:
        start_server(tmp_path, "--model", str(broken))
    assert "Traceback" not in str(failure.value)


def test_a_full_shared_kv_cache_ends_one_request_while_its_neighbour_completes(
    tmp_path: Path,
) -> None:
    """A real llama_decode failure: two requests that each fit a shared KV cache (--kv-unified,
    2 x 128 cells) but not both. The one holding the most ends with an error event; the other
    gets every token it asked for."""
    # The first's prompt is the longer, so it holds the most cells whenever the cache fills,
    # however far it got before its neighbour arrived.
    lighthouse = (
        "Write a long story about a lighthouse keeper on a rocky northern island who keeps "
        "the lamp burning through a winter of storms, talks to the gulls, mends the nets of "
        "the fishermen, and one night sees a ship with no lights drifting towards the reef."
    )
    first: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": lighthouse}],
        "max_tokens": 150,
        "ignore_eos": True,
        "stream": True,
    }
    second: dict[str, Any] = {
        **first,
        "messages": [{"role": "user", "content": "Count the stars."}],
        "stream": False,
    }

    async def run(server: HearthServer) -> tuple[list[str], httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as http:
            events: list[str] = []
            async with http.stream("POST", "/v1/chat/completions", json=first) as stream:
                assert stream.status_code == 200
                # Not one line is read until the neighbour runs: a client that drained
                # buffered lines first would not let it start until the first had ended.
                neighbour = asyncio.create_task(http.post("/v1/chat/completions", json=second))
                deadline = time.monotonic() + 30
                while (await http.get("/health")).json()["slots_in_use"] < 2:
                    assert not neighbour.done() and time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: ") :])
            return events, await neighbour

    flags = ("--kv-unified", "--parallel", "2", "--ctx-size", "128")
    with start_server(tmp_path, *flags) as server:
        words = [
            httpx.post(
                f"{server.base_url}/tokenize", json={"content": request["messages"][0]["content"]}
            ).json()["tokens"]
            for request in (first, second)
        ]
        events, answer = asyncio.run(run(server))
        health = httpx.get(f"{server.base_url}/health").json()
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "kv_cache_full" and "shared KV cache" in error["message"]
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"
    assert answer.status_code == 200, answer.text
    # The premises: each fits the 256 cells; the second's prompt alone overflows what the first
    # holds at its end, so they collide wherever the second began; the first's prompt is longer.
    second_prompt = answer.json()["usage"]["prompt_tokens"]
    first_prompt = second_prompt + len(words[0]) - len(words[1])
    assert first_prompt + 150 <= 256 < first_prompt + second_prompt + 150
    assert first_prompt > second_prompt + 20
    body = answer.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 150
    assert health["status"] == "ok" and health["slots_in_use"] == 0
    assert "Traceback" not in server.log()
