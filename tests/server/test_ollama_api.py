"""Ollama's native API through the official `ollama` client, against the real server."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
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


def test_version_is_the_ollama_api_matched_and_hearth_s_own(server: HearthServer) -> None:
    """Clients check /api/version (Codex's --oss needs 0.13.4 or later): it reports the Ollama
    release whose API Hearth serves, and Hearth's own version beside it."""
    from hearth import __version__

    body = httpx.get(f"{server.base_url}/api/version", timeout=10).json()
    assert body == {"version": "0.13.4", "hearth_version": __version__}
    major, minor, patch = (int(part) for part in body["version"].split("."))
    assert (major, minor, patch) >= (0, 13, 4)


def test_show_takes_the_older_name_field(server: HearthServer) -> None:
    by_name = httpx.post(f"{server.base_url}/api/show", json={"name": MODEL}, timeout=30)
    by_model = httpx.post(f"{server.base_url}/api/show", json={"model": MODEL}, timeout=30)
    assert by_name.status_code == 200, by_name.text
    assert by_name.json()["template"] == by_model.json()["template"]
    both = httpx.post(f"{server.base_url}/api/show", json={"name": "x", "model": MODEL}, timeout=30)
    assert both.status_code == 400 and both.json()["error"]


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


# -- /api/embed and /api/embeddings ------------------------------------------------------------

N_EMBD = 576  # SmolLM2-135M's width
LONG_TEXT = " ".join(["the river runs past old mills and quiet farms"] * 20)  # 180+ tokens


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / math.sqrt(math.fsum(x * x for x in a) * math.fsum(y * y for y in b))


def _tokens(server: HearthServer, text: str) -> list[int]:
    response = httpx.post(
        f"{server.base_url}/tokenize", json={"content": text, "add_special": True}, timeout=30
    )
    response.raise_for_status()
    tokens: list[int] = response.json()["tokens"]
    return tokens


def test_embed_gives_the_v1_vectors_in_ollama_shape(
    server: HearthServer, client: ollama.Client
) -> None:
    texts = ["The cat sat on the mat.", "Quarterly revenue grew by eight percent."]
    reply = client.embed(model=MODEL, input=texts)
    assert reply.model == MODEL
    assert [len(v) for v in reply.embeddings] == [N_EMBD, N_EMBD]
    for vector in reply.embeddings:
        assert math.fsum(x * x for x in vector) == pytest.approx(1.0, abs=1e-5)
    assert reply.prompt_eval_count == sum(len(_tokens(server, text)) for text in texts)
    assert reply.total_duration and reply.total_duration > 0
    assert reply.load_duration is not None
    # The same embedder as /v1/embeddings, and one string is one input.
    v1 = server.client().embeddings.create(model=MODEL, input=texts, encoding_format="float")
    for ours, theirs in zip(reply.embeddings, v1.data, strict=True):
        assert _cosine(ours, theirs.embedding) == pytest.approx(1.0, abs=1e-6)
    (single,) = client.embed(model=MODEL, input=texts[0]).embeddings
    assert _cosine(single, reply.embeddings[0]) == pytest.approx(1.0, abs=1e-6)
    # The superseded /api/embeddings: one prompt, one vector.
    legacy = client.embeddings(model=MODEL, prompt=texts[0])
    assert _cosine(legacy.embedding, reply.embeddings[0]) == pytest.approx(1.0, abs=1e-6)
    # dimensions: only the model's own width, as on /v1.
    assert len(client.embed(model=MODEL, input="ok", dimensions=N_EMBD).embeddings[0]) == N_EMBD


def test_embed_truncates_long_inputs_by_default(
    server: HearthServer, client: ollama.Client
) -> None:
    tokens = _tokens(server, LONG_TEXT)
    assert len(tokens) > 64
    # options.num_ctx lowers the limit below the server's (as Ollama's context length does).
    reply = client.embed(model=MODEL, input=[LONG_TEXT, "short"], options={"num_ctx": 64})
    assert reply.prompt_eval_count == 64 + len(_tokens(server, "short"))
    # The vector is that of the input's first 64 tokens.
    head = server.client().embeddings.create(
        model=MODEL, input=tokens[:64], encoding_format="float"
    )
    assert _cosine(reply.embeddings[0], head.data[0].embedding) == pytest.approx(1.0, abs=1e-5)
    assert f"Truncated 1 of 2 embedding inputs to 64 tokens: {len(tokens) - 64} tokens cut" in (
        server.log()
    )


def test_embed_without_truncate_refuses_a_long_input(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.embed(model=MODEL, input=LONG_TEXT, truncate=False, options={"num_ctx": 64})
    assert refused.value.status_code == 400
    assert "maximum input length is 64 tokens" in refused.value.error
    # /api/embeddings has no truncate: Hearth never cuts its prompt silently.
    with pytest.raises(ollama.ResponseError) as legacy:
        client.embeddings(model=MODEL, prompt=LONG_TEXT, options={"num_ctx": 64})
    assert legacy.value.status_code == 400


def test_embed_errors_and_an_empty_input(client: ollama.Client) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"model": "nope:1b", "input": "hi"}, 404, "nope:1b"),
        ({"model": MODEL, "input": "hi", "dimensions": 64}, 400, f"must be {N_EMBD}"),
        ({"model": MODEL, "input": "hi", "options": {"num_thread": 2}}, 400, "--threads"),
        ({"model": MODEL, "input": "hi", "options": {"num_ctx": 10**6}}, 400, "--ctx-size"),
        ({"model": MODEL, "input": ["hi", ""]}, 400, "'input[1]' must not be an empty string"),
    ]
    for arguments, status, message in cases:
        with pytest.raises(ollama.ResponseError) as error:
            client.embed(**arguments)
        assert error.value.status_code == status, arguments
        assert message in error.value.error, arguments
    # An empty input only loads the model, as Ollama's does.
    loaded = client.embed(model=MODEL, input=[])
    assert loaded.embeddings == [] and loaded.prompt_eval_count == 0
    assert client.embeddings(model=MODEL, prompt="").embedding == []


@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", None]
)  # curl -d's label, another client's, none at all
def test_a_json_body_is_json_whatever_its_content_type(
    server: HearthServer, content_type: str | None
) -> None:
    """Ollama's documentation example `curl .../api/generate -d '{...}'` as curl sends it;
    the same on the OpenAI routes, as Ollama reads every body."""
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"model": MODEL, "prompt": "Why is the sky blue?", "stream": False,
                       "options": {"num_predict": 4}})  # fmt: skip
    generated = httpx.post(
        f"{server.base_url}/api/generate", content=body, headers=headers, timeout=60
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["done"] is True
    chat = json.dumps({"model": MODEL, "messages": QUESTION, "max_tokens": 4})
    answered = httpx.post(
        f"{server.base_url}/v1/chat/completions", content=chat, headers=headers, timeout=60
    )
    assert answered.status_code == 200, answered.text
    broken = httpx.post(
        f"{server.base_url}/api/generate", content=b"model=x", headers=headers, timeout=60
    )
    assert broken.status_code == 400  # still JSON or nothing


def test_head_root_is_a_200_for_clients_checking_the_server(server: HearthServer) -> None:
    assert httpx.head(f"{server.base_url}/", timeout=10).status_code == 200
