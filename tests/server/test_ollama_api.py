"""Ollama's native API through the official `ollama` client, against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import ollama
import pytest

from tests.server.conftest import MODEL, HearthServer

pytestmark = pytest.mark.server

QUESTION = [{"role": "user", "content": "Name a color."}]


@pytest.fixture()
def client(server: HearthServer) -> Iterator[ollama.Client]:
    client = ollama.Client(host=server.base_url)
    yield client
    client.close()


def test_chat_answers_with_ollama_timings(client: ollama.Client) -> None:
    reply = client.chat(model=MODEL, messages=QUESTION, options={"num_predict": 8, "seed": 1})
    assert reply.message.role == "assistant"
    assert reply.message.content
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count is not None and 0 < reply.eval_count <= 8
    assert reply.prompt_eval_count is not None and reply.prompt_eval_count > 0
    assert reply.total_duration and reply.eval_duration is not None
    assert reply.total_duration >= reply.eval_duration > 0  # measured from the first token


def test_streamed_chat_matches_the_whole_reply(client: ollama.Client) -> None:
    options = {"num_predict": 12, "temperature": 0}
    whole = client.chat(model=MODEL, messages=QUESTION, options=options)
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=options, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_generate_plain_raw_and_streamed(client: ollama.Client) -> None:
    reply = client.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 6})
    assert reply.response and reply.done
    raw = client.generate(
        model=MODEL, prompt="1, 2, 3, 4,", raw=True, options={"num_predict": 4, "temperature": 0}
    )
    assert raw.response
    streamed = "".join(
        part.response or ""
        for part in client.generate(
            model=MODEL,
            prompt="1, 2, 3, 4,",
            raw=True,
            stream=True,
            options={"num_predict": 4, "temperature": 0},
        )
    )
    assert streamed == raw.response


def test_format_schema_is_enforced(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer"}},
        "required": ["color", "count"],
        "additionalProperties": False,
    }
    reply = client.chat(model=MODEL, messages=QUESTION, format=schema, options={"seed": 4})
    jsonschema.validate(json.loads(reply.message.content or ""), schema)


WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_tools_are_offered_and_history_is_accepted(client: ollama.Client) -> None:
    options = {"temperature": 0, "num_predict": 20}
    plain = client.chat(model=MODEL, messages=WEATHER, options=options)
    offered = client.chat(model=MODEL, messages=WEATHER, tools=[WEATHER_TOOL], options=options)
    assert offered.prompt_eval_count and plain.prompt_eval_count
    assert offered.prompt_eval_count > plain.prompt_eval_count + 40  # the tools are described
    history = [
        {"role": "user", "content": "What is the weather in London?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "London"}}}],
        },
        {"role": "tool", "content": "rainy, 12 C", "tool_name": "get_weather"},
        *WEATHER,
    ]
    answer = client.chat(model=MODEL, messages=history, tools=[WEATHER_TOOL], options=options)
    assert answer.done and (answer.message.content or answer.message.tool_calls)


@pytest.mark.parametrize("stream", [False, True])
def test_required_tool_call_in_ollama_shape(server: HearthServer, stream: bool) -> None:
    # tool_choice is a Hearth extension here (Ollama's API has none); the reply is Ollama's.
    body = {
        "model": MODEL,
        "messages": WEATHER,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "stream": stream,
        "options": {"temperature": 0, "num_predict": 60},
    }
    response = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=120)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines() if line.strip()]
    assert lines[-1]["done"] is True
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    assert len(calls) >= 1
    assert calls[0]["function"]["name"] == "get_weather"
    arguments = calls[0]["function"]["arguments"]
    assert isinstance(arguments, dict)  # Ollama sends arguments as an object, not a string
    jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])


def test_tags_show_version(client: ollama.Client) -> None:
    tags = client.list()
    assert MODEL in [m.model for m in tags.models]
    details = tags.models[0].details
    assert details is not None and details.family and details.quantization_level
    shown = client.show(MODEL)
    assert shown.template and "im_start" in shown.template
    assert shown.capabilities and "completion" in shown.capabilities
    assert client.ps is not None  # the client has it; the server side is tested with models


def test_empty_requests_load_the_model(client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL)
    assert loaded.done and loaded.done_reason == "load"
    chat_loaded = client.chat(model=MODEL, messages=[])
    assert chat_loaded.done


def test_errors_use_ollama_shape(server: HearthServer, client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope:1b", messages=QUESTION)
    assert missing.value.status_code == 404
    assert "nope:1b" in missing.value.error
    with pytest.raises(ollama.ResponseError) as load_time:
        client.chat(model=MODEL, messages=QUESTION, options={"num_thread": 8})
    assert load_time.value.status_code == 400 and "--threads" in load_time.value.error
    response = httpx.post(
        f"{server.base_url}/api/chat",
        json={"model": MODEL, "messages": QUESTION, "options": {"temprature": 0.5}},
    )
    assert response.status_code == 400
    assert "temprature" in response.json()["error"]
    big_ctx = httpx.post(
        f"{server.base_url}/api/generate",
        json={"model": MODEL, "prompt": "hi", "options": {"num_ctx": 10**6}, "stream": False},
    )
    assert big_ctx.status_code == 400 and "num_ctx" in big_ctx.json()["error"]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
@pytest.mark.parametrize("keep_alive", ["soon", True, ""])
def test_bad_keep_alive_is_a_400_not_a_500(
    server: HearthServer, path: str, keep_alive: object
) -> None:
    # Found by the fuzzer: Ollama's keep_alive was parsed only after validation, so "soon" was a
    # 500, and JSON true passed as 1 second (unloading the model a second after the request).
    response = httpx.post(
        f"{server.base_url}{path}", json={"model": MODEL, "keep_alive": keep_alive}, timeout=30
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"} and "keep_alive" in body["error"]
    assert server.health()["model_loaded"]


def test_body_over_the_limit_is_a_413_in_ollamas_shape(server: HearthServer) -> None:
    # The body limit answered /api/... in OpenAI's shape, which Ollama's clients cannot read.
    huge = b'{"model": "smollm2:135m", "prompt": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    headers = {"content-type": "application/json"}

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it comes
        yield from (huge[i : i + 1024 * 1024] for i in range(0, len(huge), 1024 * 1024))

    for content in (huge, chunked()):
        response = httpx.post(
            f"{server.base_url}/api/generate", content=content, headers=headers, timeout=60
        )
        assert response.status_code == 413
        body = response.json()
        assert set(body) == {"error"} and "too large" in body["error"]
