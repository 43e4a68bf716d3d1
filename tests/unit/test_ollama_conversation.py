"""Ollama's /api/chat and /api/generate convert straight to the protocol-free forms: a
`Conversation` (tool results keep their function's name), or for a raw prompt the `RawPrompt`
that /v1/completions makes too."""

from __future__ import annotations

import asyncio

from hearth.protocol import ollama as wire
from hearth.protocol.openai import CompletionRequest
from hearth.server.core.conversation import Message, OutputFormat, RawPrompt, Sampling, ToolCall
from hearth.server.ollama.serving import (
    chat_conversation,
    generate_conversation,
    generate_raw_prompt,
)
from hearth.server.openai.completions import raw_prompt
from tests.unit.fake_app import fake_app


def test_a_chat_converts_to_a_conversation_with_the_tool_results_names() -> None:
    req = wire.ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
                    ],
                },
                {"role": "tool", "content": "cold", "tool_name": "get_weather"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "format": "json",
            "options": {"temperature": 0.5, "stop": ["END"], "num_predict": -1},
        }
    )
    conversation = chat_conversation(req)
    assert conversation.messages == (
        Message("user", "Weather?"),
        Message("assistant", "", (ToolCall("call_1_0", "get_weather", '{"city": "Oslo"}'),)),
        Message("tool", "cold", tool_name="get_weather"),
    )
    assert [tool.name for tool in conversation.tools] == ["get_weather"]
    assert conversation.output_format == OutputFormat("json_object")
    assert conversation.sampling == Sampling(temperature=0.5, stop=("END",))
    assert conversation.max_tokens is None and conversation.unlimited


def test_a_generate_is_a_system_and_user_turn_or_a_raw_prompt() -> None:
    templated = generate_conversation(
        wire.GenerateRequest(model="m", prompt="Hi", system="Be brief.", options=None)
    )
    assert templated.messages == (Message("system", "Be brief."), Message("user", "Hi"))
    assert templated.sampling.stop is None  # none given: a preset's may apply
    raw = generate_raw_prompt(
        wire.GenerateRequest.model_validate(
            {"model": "m", "prompt": "Once", "raw": True, "options": {"num_predict": 5}}
        )
    )
    assert raw == RawPrompt(model="m", prompts=("Once",), max_tokens=5)
    completion = raw_prompt(CompletionRequest(model="m", prompt="Once", max_tokens=5))
    assert completion == RawPrompt(model="m", prompts=("Once",), max_tokens=5)


def test_an_ollama_tool_result_reaches_the_model() -> None:
    async def scenario() -> str:
        async with fake_app("Cold.") as app:
            answer = await app.http.post(
                "/api/chat",
                json={
                    "model": "smollm2:135m",
                    "stream": False,
                    "messages": [
                        {"role": "user", "content": "Weather?"},
                        {"role": "tool", "content": "cold", "tool_name": "get_weather"},
                    ],
                },
            )
            assert answer.status_code == 200, answer.text
            prompt = bytes(app.runners["smollm2:135m"].decoded[0][0].sequence.prompt)
            assert b"cold" in prompt
            content: str = answer.json()["message"]["content"]
            return content

    assert asyncio.run(scenario()) == "Cold."
