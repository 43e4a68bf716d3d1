"""Reasoning models on every API: thinking kept apart from the answer, a budget that holds, and
grammars that apply to the answer only. The model is the bundled SmolLM2 with a Qwen3-style
thinking template (tests/reasoning_model.py): its prompt opens `<think>`, and it never closes
the block by itself, so every answer here comes after the close Hearth writes at the budget."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.reasoning_model import OPTIONAL_THINKING_TEMPLATE, write_reasoning_model
from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

BUDGET = 4  # --reasoning-budget: the default when a request sets none (the model is terse)
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HearthServer, str]]:
    tmp = tmp_path_factory.mktemp("reasoning")
    path = write_reasoning_model(tmp / "smollm2-thinking.gguf")
    with start_server(tmp, "--model", str(path), "--reasoning-budget", str(BUDGET)) as server:
        yield server, path.stem


@pytest.fixture()
def chat(thinker: tuple[HearthServer, str]) -> openai.OpenAI:
    return thinker[0].client()


def no_tags(text: str | None) -> None:
    assert text is not None and "<think>" not in text and "</think>" not in text, text


def test_chat_keeps_thinking_apart_and_streams_the_same(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    kwargs: dict[str, Any] = {"model": name, "messages": QUESTION, "max_tokens": 40}
    whole = chat.chat.completions.create(temperature=0, **kwargs)
    message: Any = whole.choices[0].message
    assert message.reasoning_content and message.content
    no_tags(message.reasoning_content)
    no_tags(message.content)
    stream = chat.chat.completions.create(temperature=0, stream=True, **kwargs)
    thinking, answer = "", ""
    for chunk in stream:
        delta: Any = chunk.choices[0].delta
        thinking += getattr(delta, "reasoning_content", None) or ""
        answer += delta.content or ""
    assert (thinking, answer) == (message.reasoning_content, message.content)


def test_reasoning_effort_none_and_the_template_switch_turn_it_off(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    for extra in (
        {"reasoning_effort": "none"},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ):
        reply = chat.chat.completions.create(
            model=name, messages=QUESTION, max_tokens=16, temperature=0, **extra
        )
        message: Any = reply.choices[0].message
        assert getattr(message, "reasoning_content", None) is None
        no_tags(message.content)


def test_an_unknown_template_kwarg_is_refused(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    with pytest.raises(openai.BadRequestError) as error:
        chat.chat.completions.create(
            model=name,
            messages=QUESTION,
            max_tokens=4,
            extra_body={"chat_template_kwargs": {"no_such_switch": True}},
        )
    assert error.value.body["param"] == "chat_template_kwargs.no_such_switch"  # type: ignore[index]


def test_json_schema_and_a_required_call_come_after_the_thinking(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    reply = chat.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "Name a city as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
        max_tokens=60,
        temperature=0,
    )
    message: Any = reply.choices[0].message
    assert message.reasoning_content
    jsonschema.validate(json.loads(message.content), CITY)

    called = chat.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
        temperature=0,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls and getattr(choice.message, "reasoning_content", None)
    jsonschema.validate(json.loads(calls[0].function.arguments), CITY)


def test_responses_reasoning_item_and_budget(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    response = chat.responses.create(
        model=name, input="What is the capital of France?", max_output_tokens=40, temperature=0
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "message"]
    reasoning: Any = response.output[0]
    no_tags(reasoning.content[0].text)
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == BUDGET
    with chat.responses.stream(
        model=name, input="What is the capital of France?", max_output_tokens=40, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == reasoning.content[0].text
    assert final.output_text == response.output_text
    low = chat.responses.create(
        model=name, input="Hi", max_output_tokens=8, reasoning={"effort": "none"}
    )
    assert [item.type for item in low.output] == ["message"]


def test_encrypted_reasoning_goes_out_opaque_and_comes_back(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    """Codex keeps no state (store false) and asks for reasoning.encrypted_content, then sends
    the reasoning item back with the next input: it is accepted and left out of the prompt."""
    import base64

    _, name = thinker
    first = chat.responses.create(
        model=name,
        input="What is the capital of France?",
        max_output_tokens=40,
        temperature=0,
        store=False,
        include=["reasoning.encrypted_content"],
        reasoning={"effort": "low", "summary": "auto"},
    )
    reasoning: Any = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert base64.b64decode(reasoning.encrypted_content).decode() == reasoning.content[0].text
    follow_up = chat.responses.create(
        model=name,
        input=[
            {"role": "user", "content": "What is the capital of France?"},
            reasoning.model_dump(exclude_none=True),
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "And of Italy?"},
        ],
        max_output_tokens=40,
        store=False,
        include=["reasoning.encrypted_content"],
    )
    assert follow_up.status in ("completed", "incomplete")
    plain = chat.responses.create(model=name, input="Hi", max_output_tokens=8, temperature=0)
    assert all(getattr(item, "encrypted_content", None) is None for item in plain.output)


def test_anthropic_thinking_blocks_with_their_budget(thinker: tuple[HearthServer, str]) -> None:
    server, name = thinker
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    try:
        kwargs: dict[str, Any] = {
            "model": name,
            "max_tokens": 40,
            "messages": QUESTION,
            "thinking": {"type": "enabled", "budget_tokens": 3},
            "extra_body": {"temperature": 0},
        }
        message = claude.messages.create(**kwargs)
        assert [block.type for block in message.content] == ["thinking", "text"]
        thinking: Any = message.content[0]
        no_tags(thinking.thinking)
        with claude.messages.stream(**kwargs) as stream:
            final = stream.get_final_message()
        assert final.content[0].thinking == thinking.thinking  # type: ignore[union-attr]
        assert final.content[1].text == message.content[1].text  # type: ignore[union-attr]
        off = claude.messages.create(**{**kwargs, "thinking": {"type": "disabled"}})
        assert [block.type for block in off.content] == ["text"]
    finally:
        claude.close()


def test_ollama_think(thinker: tuple[HearthServer, str]) -> None:
    server, name = thinker
    client = ollama.Client(host=server.base_url)
    try:
        _ollama_think(client, server, name)
    finally:
        client.close()


def _ollama_think(client: ollama.Client, server: HearthServer, name: str) -> None:
    options = {"num_predict": 40, "temperature": 0}
    reply = client.chat(model=name, messages=QUESTION, think=True, options=options)
    assert reply.message.thinking and reply.message.content
    no_tags(reply.message.thinking)
    streamed = list(
        client.chat(model=name, messages=QUESTION, think=True, options=options, stream=True)
    )
    assert "".join(part.message.thinking or "" for part in streamed) == reply.message.thinking
    assert "".join(part.message.content or "" for part in streamed) == reply.message.content
    off = client.chat(model=name, messages=QUESTION, think=False, options=options)
    assert not off.message.thinking
    generated = client.generate(model=name, prompt="Hi", think=True, options=options)
    assert generated.thinking and generated.response
    shown = httpx.post(f"{server.base_url}/api/show", json={"model": name}, timeout=30).json()
    assert "thinking" in shown["capabilities"]


def test_a_model_that_does_not_reason_refuses_to(tmp_path: Path, server: HearthServer) -> None:
    client = server.client()
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, reasoning_effort="high"
        )
    assert error.value.body["param"] == "reasoning_effort"  # type: ignore[index]
    shown = httpx.post(f"{server.base_url}/api/show", json={"model": MODEL}, timeout=30).json()
    assert "thinking" not in shown["capabilities"]
    # GET /v1/models/{id} says it too, for a loaded model and (from its GGUF header) another.
    for name in (MODEL, "gemma3:270m"):
        card = httpx.get(f"{server.base_url}/v1/models/{name}", timeout=30).json()
        assert card["capabilities"] == ["completion", "tools"]


def test_the_model_card_reports_thinking(
    thinker: tuple[HearthServer, str], chat: openai.OpenAI
) -> None:
    _, name = thinker
    card = chat.models.retrieve(name)
    assert card.model_extra is not None and "thinking" in card.model_extra["capabilities"]


def test_json_schema_holds_when_the_model_never_opens_its_thinking(tmp_path: Path) -> None:
    # A template that leaves thinking to the model: SmolLM2 never writes `<think>`, so the
    # schema must hold from the answer's first token, not only after a close tag.
    path = write_reasoning_model(tmp_path / "optional-thinking.gguf", OPTIONAL_THINKING_TEMPLATE)
    with start_server(tmp_path, "--model", str(path)) as server:
        reply = server.client().chat.completions.create(
            model=path.stem,
            messages=[{"role": "user", "content": "Name a city as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": CITY}},
            max_tokens=60,
            temperature=0,
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), CITY)
