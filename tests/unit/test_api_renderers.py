"""Every API's renderer in process (tests/unit/fake_app.py): scripted tokens on a real Engine,
the app over httpx.ASGITransport. Each API's stream, folded, must say what its non-stream
answer says, and both must parse in the official SDK's types (openai, anthropic, ollama):
thinking then text then a tool call, several choices interleaved, an error after text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic.types as anthropic_types
import ollama
import openai.types as openai_types
import openai.types.chat as chat_types
import openai.types.responses as responses_types
import pytest
from pydantic import TypeAdapter

from tests.unit.fake_app import MODEL, FakeApp, fake_app
from tests.unit.test_reasoning_detect import QWEN3_TEMPLATE

THINK_TEXT_CALL = (
    "<think>\nLet me check.\n</think>\n\nI will look.<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
)
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}
FUNCTION = {"name": "get_weather", "parameters": PARAMETERS}
QUESTION = [{"role": "user", "content": "Weather in Oslo?"}]
ERROR = "The model could not decode this request"


def _events(text: str) -> list[tuple[str | None, Any]]:
    """An SSE body as (event name, parsed data) pairs; `[DONE]` left out."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
        if data is not None and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def _run(scenario: Callable[[FakeApp], Awaitable[None]], reply: str, **options: Any) -> None:
    async def main() -> None:
        async with fake_app(reply, template=QWEN3_TEMPLATE, **options) as app:
            await scenario(app)

    asyncio.run(main())


async def _both(app: FakeApp, path: str, body: dict[str, Any]) -> tuple[Any, str]:
    whole = await app.http.post(path, json={"model": MODEL, **body, "stream": False})
    assert whole.status_code == 200, whole.text
    streamed = await app.http.post(path, json={"model": MODEL, **body, "stream": True})
    assert streamed.status_code == 200, streamed.text
    return whole.json(), streamed.text


# -- thinking, then text, then a tool call ---------------------------------------------------


def test_chat_completions_stream_says_what_the_reply_says() -> None:
    async def scenario(app: FakeApp) -> None:
        tools = [{"type": "function", "function": FUNCTION}]
        whole, streamed = await _both(
            app, "/v1/chat/completions", {"messages": QUESTION, "tools": tools}
        )
        reply = chat_types.ChatCompletion.model_validate(whole)
        message = reply.choices[0].message
        chunks = [chat_types.ChatCompletionChunk.model_validate(d) for _, d in _events(streamed)]
        content, reasoning, calls, finish = "", "", {}, None
        for chunk in chunks:
            for choice in chunk.choices:
                delta = choice.delta
                content += delta.content or ""
                reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                for call in delta.tool_calls or []:
                    name, arguments = calls.get(call.index, ("", ""))
                    function = call.function
                    calls[call.index] = (
                        name + (function.name or "" if function else ""),
                        arguments + (function.arguments or "" if function else ""),
                    )
                finish = choice.finish_reason or finish
        assert (content, finish) == (message.content, reply.choices[0].finish_reason)
        assert reasoning == (message.model_extra or {})["reasoning_content"] == "Let me check.\n"
        assert message.content == "I will look."
        assert message.tool_calls is not None
        whole_calls = [(c.function.name, c.function.arguments) for c in message.tool_calls]
        assert list(calls.values()) == whole_calls
        assert json.loads(whole_calls[0][1]) == {"city": "Oslo"}
        assert finish == "tool_calls"

    _run(scenario, THINK_TEXT_CALL)


def test_responses_stream_ends_with_the_reply_it_would_have_given() -> None:
    events_adapter: TypeAdapter[Any] = TypeAdapter(responses_types.ResponseStreamEvent)

    async def scenario(app: FakeApp) -> None:
        tools = [{"type": "function", **FUNCTION}]
        whole, streamed = await _both(
            app, "/v1/responses", {"input": "Weather in Oslo?", "tools": tools, "store": False}
        )
        reply = responses_types.Response.model_validate(whole)
        events = [events_adapter.validate_python(data) for _, data in _events(streamed)]
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = events[-1]
        assert final.type == "response.completed"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        arguments = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )

        def shape(response: responses_types.Response) -> list[tuple[str, str]]:
            out = []
            for item in response.output:
                if item.type == "message":
                    out.append(("message", "".join(p.text for p in item.content)))  # type: ignore[union-attr]
                elif item.type == "function_call":
                    out.append((item.name, item.arguments))
                else:
                    out.append((item.type, ""))
            return out

        assert shape(final.response) == shape(reply)
        assert ("message", text) in shape(reply) and ("get_weather", arguments) in shape(reply)
        assert json.loads(arguments) == {"city": "Oslo"}
        assert shape(reply)[0][0] == "reasoning"

    _run(scenario, THINK_TEXT_CALL)


def test_anthropic_stream_builds_the_blocks_of_the_message() -> None:
    events_adapter: TypeAdapter[Any] = TypeAdapter(anthropic_types.RawMessageStreamEvent)

    async def scenario(app: FakeApp) -> None:
        body = {
            "max_tokens": 400,
            "messages": QUESTION,
            "tools": [{"name": "get_weather", "input_schema": PARAMETERS}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        }
        whole, streamed = await _both(app, "/v1/messages", body)
        reply = anthropic_types.Message.model_validate(whole)
        # `ping` is a keep-alive the SDK drops before its event types.
        pairs = [(name, data) for name, data in _events(streamed) if name != "ping"]
        events = [events_adapter.validate_python(data) for _, data in pairs]
        blocks: dict[int, list[Any]] = {}
        stop_reason = None
        for event in events:
            if event.type == "content_block_start":
                block = event.content_block
                start = {"thinking": "", "text": "", "tool_use": ""}[block.type]
                blocks[event.index] = [block.type, getattr(block, "name", None), start]
            elif event.type == "content_block_delta":
                delta = event.delta
                piece = {
                    "thinking_delta": lambda d: d.thinking,
                    "text_delta": lambda d: d.text,
                    "input_json_delta": lambda d: d.partial_json,
                    "signature_delta": lambda d: "",
                }[delta.type](delta)
                blocks[event.index][2] += piece
            elif event.type == "message_delta":
                stop_reason = event.delta.stop_reason
        folded = [
            (kind, name, json.loads(text) if kind == "tool_use" else text)
            for kind, name, text in blocks.values()
        ]
        expected = []
        for block in reply.content:
            if block.type == "thinking":
                expected.append(("thinking", None, block.thinking))
            elif block.type == "text":
                expected.append(("text", None, block.text))
            elif block.type == "tool_use":
                expected.append(("tool_use", block.name, block.input))
        assert folded == expected
        assert expected == [
            ("thinking", None, "Let me check.\n"),
            ("text", None, "I will look."),
            ("tool_use", "get_weather", {"city": "Oslo"}),
        ]
        assert stop_reason == reply.stop_reason == "tool_use"

    _run(scenario, THINK_TEXT_CALL)


def test_ollama_chat_stream_says_what_the_reply_says() -> None:
    async def scenario(app: FakeApp) -> None:
        tools = [{"type": "function", "function": FUNCTION}]
        whole, streamed = await _both(
            app, "/api/chat", {"messages": QUESTION, "tools": tools, "think": True}
        )
        reply = ollama.ChatResponse.model_validate(whole)
        lines = [ollama.ChatResponse.model_validate(line) for line in _lines(streamed)]
        content = "".join(line.message.content or "" for line in lines)
        thinking = "".join(line.message.thinking or "" for line in lines)
        calls = [
            (call.function.name, dict(call.function.arguments))
            for line in lines
            for call in line.message.tool_calls or []
        ]
        assert (content, thinking) == (reply.message.content, reply.message.thinking)
        assert (content, thinking) == ("I will look.", "Let me check.\n")
        assert reply.message.tool_calls is not None
        assert calls == [
            (c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls
        ]
        assert calls == [("get_weather", {"city": "Oslo"})]
        assert lines[-1].done and lines[-1].done_reason == reply.done_reason == "stop"

    _run(scenario, THINK_TEXT_CALL)


# -- several choices interleaved ------------------------------------------------------------


def _completion_chunk(data: dict[str, Any]) -> openai_types.Completion:
    """A streamed completions chunk in the SDK's type, which requires a finish_reason that
    OpenAI's own stream leaves null until a choice ends (the SDK builds chunks unvalidated)."""
    checked = openai_types.Completion.model_validate(
        {
            **data,
            "choices": [
                {**c, "finish_reason": c["finish_reason"] or "stop"} for c in data["choices"]
            ],
        }
    )
    for choice, sent in zip(checked.choices, data["choices"], strict=True):
        choice.finish_reason = sent["finish_reason"]
    return checked


def test_completions_interleave_prompts_and_choices_by_index() -> None:
    async def scenario(app: FakeApp) -> None:
        runner = app.runners[MODEL]
        runner.scripts = {ord("A"): [*b"one two", 256], ord("B"): [*b"three", 256]}
        whole, streamed = await _both(
            app, "/v1/completions", {"prompt": ["Alpha", "Beta"], "n": 2, "max_tokens": 16}
        )
        reply = openai_types.Completion.model_validate(whole)
        chunks = [_completion_chunk(d) for _, d in _events(streamed)]
        texts: dict[int, str] = {}
        finishes: dict[int, str | None] = {}
        indexes_in_order = []
        for chunk in chunks:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + choice.text
                finishes[choice.index] = choice.finish_reason or finishes.get(choice.index)
                indexes_in_order.append(choice.index)
        assert {c.index: c.text for c in reply.choices} == texts
        assert texts == {0: "one two", 1: "one two", 2: "three", 3: "three"}
        assert {c.index: c.finish_reason for c in reply.choices} == finishes
        assert indexes_in_order != sorted(indexes_in_order)  # the choices did interleave

    _run(scenario, "")


def test_chat_choices_stream_by_index() -> None:
    async def scenario(app: FakeApp) -> None:
        whole, streamed = await _both(app, "/v1/chat/completions", {"messages": QUESTION, "n": 3})
        reply = chat_types.ChatCompletion.model_validate(whole)
        texts: dict[int, str] = {}
        for _, data in _events(streamed):
            for choice in chat_types.ChatCompletionChunk.model_validate(data).choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        assert texts == {c.index: c.message.content for c in reply.choices}
        assert texts == {0: "Fine.", 1: "Fine.", 2: "Fine."}

    _run(scenario, "Fine.")


def test_ollama_generate_stream_says_what_the_reply_says() -> None:
    async def scenario(app: FakeApp) -> None:
        for raw in (False, True):
            whole, streamed = await _both(app, "/api/generate", {"prompt": "Hi", "raw": raw})
            reply = ollama.GenerateResponse.model_validate(whole)
            lines = [ollama.GenerateResponse.model_validate(line) for line in _lines(streamed)]
            assert "".join(line.response for line in lines) == reply.response == "Fine."
            assert lines[-1].done and lines[-1].done_reason == reply.done_reason

    _run(scenario, "Fine.")


# -- an error after text ----------------------------------------------------------------------

ERROR_CASES: dict[str, tuple[str, dict[str, Any], Callable[[str], tuple[str, str]]]] = {}


def _openai_error(streamed: str) -> tuple[str, str]:
    events = _events(streamed)
    text = "".join(
        (c.get("delta", {}).get("content") or c.get("text") or "")
        for _, d in events
        if "choices" in d
        for c in d["choices"]
    )
    return text, events[-1][1]["error"]["message"]


def _responses_error(streamed: str) -> tuple[str, str]:
    events = _events(streamed)
    text = "".join(d["delta"] for _, d in events if d["type"] == "response.output_text.delta")
    assert events[-1][0] == "error"
    message: str = events[-1][1]["message"]
    return text, message


def _anthropic_error(streamed: str) -> tuple[str, str]:
    events = _events(streamed)
    text = "".join(
        d["delta"].get("text", "") for _, d in events if d["type"] == "content_block_delta"
    )
    assert events[-1][0] == "error"
    message: str = events[-1][1]["error"]["message"]
    return text, message


def _ollama_error(streamed: str) -> tuple[str, str]:
    lines = _lines(streamed)
    text = "".join(
        line.get("response") or line.get("message", {}).get("content", "") for line in lines[:-1]
    )
    message: str = lines[-1]["error"]
    return text, message


ERROR_CASES = {
    "chat": ("/v1/chat/completions", {"messages": QUESTION}, _openai_error),
    "completions": ("/v1/completions", {"prompt": "Hi"}, _openai_error),
    "responses": ("/v1/responses", {"input": "Hi", "store": False}, _responses_error),
    "anthropic": ("/v1/messages", {"max_tokens": 50, "messages": QUESTION}, _anthropic_error),
    "ollama chat": ("/api/chat", {"messages": QUESTION}, _ollama_error),
    "ollama generate": ("/api/generate", {"prompt": "Hi"}, _ollama_error),
}


@pytest.mark.parametrize("api", list(ERROR_CASES))
def test_an_error_after_text_ends_the_stream_and_fails_the_reply(
    api: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, body, read = ERROR_CASES[api]

    async def scenario(app: FakeApp) -> None:
        runner = app.runners[MODEL]
        runner.fail_decode_at = (
            6  # five tokens (the prompt's decode samples the first), then a failed step
        )
        streamed = await app.http.post(path, json={"model": MODEL, **body, "stream": True})
        assert streamed.status_code == 200  # the headers went before the error
        text, message = read(streamed.text)
        assert text == "Hello" and ERROR in message
        runner.decodes, runner.fail_decode_at = 0, 6
        whole = await app.http.post(path, json={"model": MODEL, **body, "stream": False})
        assert whole.status_code == 500 and ERROR in whole.text

    _run(scenario, "Hello there", n_ctx=1024)


# -- a tool call cut short while its name was still arriving -------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 40}),
        ("/v1/responses", {"input": "Weather in Oslo?", "max_output_tokens": 40}),
        ("/api/chat", {"messages": QUESTION, "options": {"num_predict": 40}}),
    ],
    ids=["chat", "responses", "ollama"],
)
def test_a_call_cut_inside_its_name_ends_as_length_without_a_call(
    path: str, body: dict[str, Any]
) -> None:
    reply = 'I will look.<tool_call>\n{"name": "get_weather_in_a_city_with_a_very_long_name'

    async def scenario(app: FakeApp) -> None:
        tools = [{"type": "function", "function": FUNCTION}]
        if path == "/v1/responses":
            tools = [{"type": "function", **FUNCTION}]
        whole, streamed = await _both(app, path, {**body, "tools": tools})
        # Responses echoes its tools: look at what the model said only.
        said = whole["output"] if path == "/v1/responses" else whole
        assert "get_weather" not in json.dumps(said)  # the cut call is dropped, never half sent
        assert "I will look." in json.dumps(said)
        assert '"function_call"' not in streamed and '"tool_calls": [' not in streamed

    _run(scenario, reply)
