"""Anthropic's Messages API through the official `anthropic` client, against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
# anthropic 2.x takes temperature, top_k and top_p only through extra_body; the API takes them.
GREEDY = {"temperature": 0}
QUESTION: list[Any] = [{"role": "user", "content": "Name three colors of the rainbow."}]


@pytest.fixture()
def claude(server: HearthServer) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    yield client
    client.close()


def test_create_answers_with_usage(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=24,
        system="Answer briefly.",
        messages=QUESTION,
        extra_body=GREEDY,
        metadata={"user_id": "test-user"},
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.content and message.content[0].type == "text"
    assert message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) > 5
    assert 0 < usage.output_tokens <= 24
    assert usage.cache_creation_input_tokens == 0


def test_max_tokens_stops_with_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=5,
        messages=[{"role": "user", "content": "Write a long essay about the sea."}],
        extra_body=GREEDY,
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5


def test_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=[{"role": "user", "content": "Write a sentence about cats."}],
        stop_sequences=[" "],
        extra_body=GREEDY,
    )
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == " "


def test_stream_text_equals_the_final_message(claude: anthropic.Anthropic) -> None:
    """The streamed text is the final message's, token for token. (Stream against reply on the
    same scripted tokens is tests/unit/test_api_renderers.py's: here two greedy runs may part,
    since with flash attention a draft verified in a batch, or a prompt cached differently,
    changes the last bits of the logits: docs/speculation.md.)"""
    with claude.messages.stream(
        model=MODEL, max_tokens=24, messages=QUESTION, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and text == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 24


def test_raw_stream_event_order(server: HearthServer) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": QUESTION, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/messages", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        names = [line[7:] for line in reply.iter_lines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) <= {"content_block_delta"}


def test_tool_use_round_trip(claude: anthropic.Anthropic) -> None:
    question: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(
        model=MODEL,
        max_tokens=80,
        messages=question,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        extra_body=GREEDY,
    )
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER_TOOL["input_schema"])

    answer = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=[
            *question,
            {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": use.id,
                        "content": json.dumps({"temperature": 21, "sky": "sunny"}),
                    }
                ],
            },
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "none"},
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert answer.content and answer.content[0].type == "text"
    # The conversation up to the tool result was cached by the first turn.
    assert (answer.usage.cache_read_input_tokens or 0) > 0


def test_streamed_tool_use_arrives_as_input_json(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=MODEL,
        max_tokens=80,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert use.type == "tool_use"
    jsonschema.validate(use.input, WEATHER_TOOL["input_schema"])


def test_count_tokens_is_exact(claude: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": MODEL,
        "system": "Count me.",
        "messages": [{"role": "user", "content": "Exactly how many tokens is this, count-test?"}],
        "tools": [WEATHER_TOOL],
    }
    counted = claude.messages.count_tokens(**request)
    message = claude.messages.create(max_tokens=4, extra_body=GREEDY, **request)
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_errors_raise_the_sdks_own_exceptions(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=QUESTION)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model=MODEL,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        }
                    ],
                }
            ],
        )
    assert "messages[0].content[0]" in bad.value.message


def test_missing_max_tokens_and_unknown_fields(server: HearthServer) -> None:
    url = f"{server.base_url}/v1/messages"
    missing = httpx.post(url, json={"model": MODEL, "messages": QUESTION}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"
    assert "max_tokens" in missing.json()["error"]["message"]
    unknown = httpx.post(
        url, json={"model": MODEL, "max_tokens": 4, "messages": QUESTION, "bogus": 1}, timeout=30
    )
    assert unknown.status_code == 400 and "bogus" in unknown.json()["error"]["message"]


def test_models_answer_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    page = claude.models.list()
    ids = [model.id for model in page.data]
    assert ids[0] == MODEL
    assert all(model.type == "model" and model.display_name for model in page.data)


def test_x_api_key_authenticates(tmp_path: Path) -> None:
    with start_server(tmp_path, "--api-key", "sesame", api_key="sesame") as keyed:
        good = anthropic.Anthropic(base_url=keyed.base_url, api_key="sesame", max_retries=0)
        bad = anthropic.Anthropic(base_url=keyed.base_url, api_key="wrong", max_retries=0)
        try:
            reply = good.messages.create(model=MODEL, max_tokens=4, messages=QUESTION)
            assert reply.usage.output_tokens > 0
            with pytest.raises(anthropic.AuthenticationError):
                bad.messages.create(model=MODEL, max_tokens=4, messages=QUESTION)
        finally:
            good.close()
            bad.close()


def test_what_claude_code_sends_that_changes_nothing_is_accepted(tmp_path: Path) -> None:
    """Claude Code asks every model to think, names an effort, defers tools and asks for
    context management: a model that cannot reason answers without thinking, and each ignored
    field is named in the journal. An effort on a request that asks nothing else is the same."""
    journal = tmp_path / "journal"
    body = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": QUESTION,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
        "tools": [{**WEATHER_TOOL, "defer_loading": True}],
    }
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "context-management-2025-06-27"}
    with start_server(tmp_path, "--journal", str(journal)) as server:
        answered = httpx.post(
            f"{server.base_url}/v1/messages", json=body, headers=headers, timeout=120
        )
        assert answered.status_code == 200, answered.text
        assert [block["type"] for block in answered.json()["content"]] in (
            ["text"],
            ["tool_use"],
            ["text", "tool_use"],
        )
        counted = httpx.post(
            f"{server.base_url}/v1/messages/count_tokens",
            json={k: v for k, v in body.items() if k != "max_tokens"},
            headers=headers,
            timeout=60,
        )
        assert counted.status_code == 200, counted.text
        assert counted.json()["input_tokens"] > 0
    entries = [json.loads(line) for line in (journal / "requests.jsonl").read_text().splitlines()]
    (message,) = [e for e in entries if e["route"] == "/v1/messages"]
    assert message["ignored_fields"] == ["context_management", "thinking", "tools[0].defer_loading"]


def test_output_config_format_is_a_json_schema_answer(claude: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
        "required": ["colors"],
        "additionalProperties": False,
    }
    reply = claude.messages.create(
        model=MODEL,
        max_tokens=60,
        messages=QUESTION,
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
    )
    text = "".join(block.text for block in reply.content if block.type == "text")
    if reply.stop_reason == "end_turn":
        jsonschema.validate(json.loads(text), schema)
    else:  # cut by max_tokens: still on the way to a valid answer
        assert reply.stop_reason == "max_tokens" and text.startswith("{")
