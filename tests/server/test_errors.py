"""Every bad input gets an OpenAI error body with the right status, never a 500 or a hang,
and none of them disturbs another client's stream."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

CHAT = [{"role": "user", "content": "Hi"}]


def post(server: HearthServer, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", timeout=30, **kwargs)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def test_malformed_json_is_a_400(server: HearthServer) -> None:
    response = post(
        server,
        "/v1/chat/completions",
        content=b'{"model": "smollm2:135m", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": CHAT, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": CHAT, "temperature": 2.5}, "temperature"),
        ({"model": MODEL, "messages": CHAT, "temperature": -0.1}, "temperature"),
        ({"model": MODEL, "messages": CHAT, "max_tokens": -5}, "max_tokens"),
        ({"model": MODEL, "messages": CHAT, "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": MODEL}, "messages"),
        ({"messages": CHAT}, "model"),
        ({"model": MODEL, "messages": CHAT, "stream": "yes please"}, "stream"),
        ({"model": MODEL, "messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": CHAT, "top_p": 1.5}, "top_p"),
        ({"model": MODEL, "messages": CHAT, "frobnicate": True}, "frobnicate"),
        ({"model": MODEL, "messages": CHAT, "n": 9}, "n"),  # more choices than slots
        ({"model": MODEL, "messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"model": MODEL, "messages": CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"model": MODEL, "messages": CHAT, "tools": [{"type": "function"}]}, "tools[0]"),
        ({"model": MODEL, "messages": CHAT, "tool_choice": "required"}, "tool_choice"),
        ({"model": MODEL, "messages": CHAT, "functions": [{"name": "f"}]}, "functions"),
        ({"model": MODEL, "messages": CHAT, "reasoning_effort": "high"}, "reasoning_effort"),
        ({"model": MODEL, "messages": CHAT, "store": True}, "store"),
        (
            {"model": MODEL, "messages": CHAT, "response_format": {"type": "xml"}},
            "response_format.type",
        ),
        (
            {
                "model": MODEL,
                "messages": CHAT,
                "response_format": {
                    "type": "json_schema",
                    # a float bound, in a strict schema: the grammar cannot enforce it
                    "json_schema": {
                        "name": "n",
                        "schema": {"type": "number", "minimum": 1},
                        "strict": True,
                    },
                },
            },
            "response_format.json_schema.schema.minimum",
        ),
        ({"model": MODEL, "messages": CHAT, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"model": MODEL, "messages": CHAT, "logit_bias": {"5": 500}}, "logit_bias"),
        (
            {"model": MODEL, "messages": CHAT, "stream_options": {"include_usage": True}},
            "stream_options",
        ),
        (
            {
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ],
            },
            "messages[0].content[0].image_url.url",  # not a data URL
        ),
    ],
)
def test_bad_chat_fields_are_400_naming_the_param(
    server: HearthServer, body: dict[str, Any], param: str
) -> None:
    response = post(server, "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_empty_messages_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages"  # type: ignore[index]


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")


def test_a_prompt_past_the_context_is_refused_with_both_numbers(
    server: HearthServer, client: openai.OpenAI
) -> None:
    n_ctx = server.health()["n_ctx_per_slot"]
    assert n_ctx == 8192  # no --ctx-size: SmolLM2's trained context, which memory allows here
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=MODEL, prompt="word " * (n_ctx + 10), max_tokens=1)
    body = long_prompt.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded" and body["param"] == "prompt"
    assert str(n_ctx) in body["message"]
    prompt_tokens = int(body["message"].split("resulted in ")[1].split(" ")[0])
    assert prompt_tokens > n_ctx


def test_max_tokens_past_the_context_is_a_ceiling_served_to_its_end(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """An agent's max_tokens as large as the model's context is served up to the end of the
    slot, ending with `length` on every API, as llama-server and Ollama do."""
    with start_server(
        tmp_path_factory.mktemp("ceiling"), "--ctx-size", "64", "--parallel", "1"
    ) as small:
        n_ctx = small.health()["n_ctx_per_slot"]  # llama.cpp rounds a slot up to 256 cells
        chat = small.client().chat.completions.create(
            model=MODEL, messages=CHAT, max_completion_tokens=32000, extra_body={"ignore_eos": True}
        )
        assert chat.choices[0].finish_reason == "length"
        assert chat.usage is not None
        assert chat.usage.prompt_tokens + chat.usage.completion_tokens == n_ctx
        messages = httpx.post(
            f"{small.base_url}/v1/messages",
            headers={"anthropic-version": "2023-06-01"},
            json={"model": MODEL, "max_tokens": 32000, "messages": CHAT},
            timeout=120,
        )
        assert messages.status_code == 200, messages.text
        assert messages.json()["stop_reason"] in ("max_tokens", "end_turn")
        response = httpx.post(
            f"{small.base_url}/v1/responses",
            json={"model": MODEL, "input": "Hi", "max_output_tokens": 10**9},
            timeout=120,
        )
        assert response.status_code == 200, response.text


def test_completions_errors(server: HearthServer) -> None:
    bad_token = post(server, "/v1/completions", json={"model": MODEL, "prompt": [10**9]})
    assert bad_token.status_code == 400 and error_of(bad_token)["param"] == "prompt"
    empty = post(server, "/v1/completions", json={"model": MODEL, "prompt": ""})
    assert empty.status_code == 400 and error_of(empty)["param"] == "prompt"
    suffix = post(server, "/v1/completions", json={"model": MODEL, "prompt": "a", "suffix": "b"})
    assert suffix.status_code == 400 and error_of(suffix)["param"] == "suffix"


def test_body_over_the_limit_is_413(server: HearthServer) -> None:
    huge = b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "'
    huge += b"a" * (17 * 1024 * 1024) + b'"}]}'
    response = post(
        server, "/v1/chat/completions", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error_of(response)["type"] == "invalid_request_error"

    def chunked() -> Any:  # no content-length: the limit counts bytes as they come
        yield huge[: 1024 * 1024]
        for _ in range(20):
            yield b"a" * 1024 * 1024

    response = post(
        server,
        "/v1/chat/completions",
        content=chunked(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


def test_unknown_route_and_method_get_openai_errors(server: HearthServer) -> None:
    missing = httpx.get(f"{server.base_url}/v1/nothing-here")
    assert missing.status_code == 404
    error_of(missing)
    wrong_method = httpx.get(f"{server.base_url}/v1/chat/completions")
    assert wrong_method.status_code == 405
    error_of(wrong_method)


def test_bad_requests_do_not_disturb_a_running_stream(server: HearthServer) -> None:
    client = server.client()
    pieces: list[str] = []
    finish: list[str | None] = []

    def stream() -> None:
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a story about a fox."}],
            max_tokens=60,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish.append(chunk.choices[0].finish_reason)

    worker = threading.Thread(target=stream)
    worker.start()
    statuses = set()
    for body in (
        {"model": MODEL, "messages": []},
        {"model": "other", "messages": CHAT},
        {"model": MODEL, "messages": CHAT, "max_tokens": -1},
        {"model": MODEL, "messages": CHAT, "temperature": 9},
    ):
        statuses.add(post(server, "/v1/chat/completions", json=body).status_code)
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert statuses == {400, 404}
    assert finish[-1] == "length"
    assert "".join(pieces).strip()


def test_detokenize_refuses_unknown_token_ids(server: HearthServer) -> None:
    response = post(server, "/detokenize", json={"tokens": [1, 10**9]})
    assert response.status_code == 400
    assert error_of(response)["param"] == "tokens"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "max_tokens": "2"},
            "max_tokens",
        ),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "logprobs": 1}, "logprobs"),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "n": "2"}, "n"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "echo": 0.0}, "echo"),
        ("/v1/completions", {"model": MODEL, "prompt": "Hi", "temperature": "0"}, "temperature"),
        ("/v1/embeddings", {"model": MODEL, "input": "Hi", "dimensions": "576"}, "dimensions"),
        ("/tokenize", {"content": "Hi", "add_special": 1}, "add_special"),
        ("/detokenize", {"tokens": ["5"]}, "tokens[0]"),
    ],
)
def test_a_value_of_the_wrong_json_type_is_refused_not_coerced(
    server: HearthServer, path: str, body: dict[str, Any], param: str
) -> None:
    # Found by the fuzzer: pydantic's lax mode took "2" as 2 and 0.0 as false, where the schema
    # (and OpenAI's API) say integer and boolean; "stream": "yes" even started a stream.
    response = post(server, path, json=body)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/generate", {"model": MODEL, "options": {"use_mmap": 0.0}}, "options.use_mmap"),
        ("/api/chat", {"model": MODEL, "stream": "false"}, "stream"),
        ("/api/show", {"model": MODEL, "verbose": 0.0}, "verbose"),
    ],
)
def test_ollama_routes_refuse_wrong_json_types_too(
    server: HearthServer, path: str, body: dict[str, Any], param: str
) -> None:
    response = post(server, path, json=body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert isinstance(message, str) and param in message
