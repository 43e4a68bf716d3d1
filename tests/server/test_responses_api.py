"""OpenAI's Responses API through the official client, against the real server and model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.server.conftest import MODEL, HearthServer, start_server

pytestmark = pytest.mark.server

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_create_retrieve_list_items_and_delete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input="Name three colors of the rainbow.",
        instructions="Answer briefly.",
        max_output_tokens=24,
        temperature=0,
        metadata={"case": "crud"},
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.metadata == {"case": "crud"}
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens > 5 and 0 < usage.output_tokens <= 24
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens

    again = client.responses.retrieve(response.id)
    assert again.id == response.id and again.output_text == response.output_text

    items = client.responses.input_items.list(response.id)
    assert [item.type for item in items.data] == ["message"]
    message: Any = items.data[0]
    assert message.role == "user"
    assert message.content[0].text == "Name three colors of the rainbow."

    deleted = client.responses.delete(response.id)
    assert deleted is None  # the SDK returns nothing; the server answered 200
    with pytest.raises(openai.NotFoundError) as error:
        client.responses.retrieve(response.id)
    assert error.value.status_code == 404
    assert error.value.body["param"] == "response_id"  # type: ignore[index]


def test_input_items_are_paginated(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": [{"type": "input_text", "text": "Say a color."}]},
        ],
        max_output_tokens=8,
        temperature=0,
    )
    first = client.responses.input_items.list(response.id, limit=3, order="asc")
    assert len(first.data) == 3 and first.has_more
    rest = client.responses.input_items.list(
        response.id, limit=3, order="asc", after=first.data[-1].id
    )
    assert len(rest.data) == 1 and not rest.has_more
    newest = client.responses.input_items.list(response.id, limit=1)  # desc by default
    assert newest.data[0].id == rest.data[0].id


def test_stream_emits_the_typed_event_sequence(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "input": "Name three colors of the rainbow.",
        "max_output_tokens": 24,
        "temperature": 0,
    }
    whole = client.responses.create(store=False, **kwargs)
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed" if final.status == "completed" else "response.incomplete",
    ]
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL, input="Write a long essay about the sea.", max_output_tokens=5, temperature=0
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 5


class Color(BaseModel):
    name: str
    hex_code: str


def test_parse_fills_a_pydantic_model(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL,
        input="Give one color as JSON with a name and a hex code.",
        text_format=Color,
        max_output_tokens=60,
        temperature=0,
    )
    assert isinstance(parsed.output_parsed, Color)
    assert parsed.output_parsed.name


def test_function_call_round_trip_reuses_the_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=80,
        temperature=0,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])
    assert first.status == "completed"

    second = client.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": call.call_id,
                "output": json.dumps({"temperature": 21, "sky": "sunny"}),
            }
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",  # as an agent's next turn: the prompt starts the same
        max_output_tokens=60,
        temperature=0,
    )
    assert second.previous_response_id == first.id
    assert second.status in ("completed", "incomplete") and second.output
    usage = second.usage
    assert usage is not None and first.usage is not None
    # The second turn starts with the first turn's prompt: its KV cache is reused.
    assert usage.input_tokens_details.cached_tokens >= first.usage.input_tokens


def test_streamed_function_call_events(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=80,
        temperature=0,
        store=False,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1
    call = final.output[-1]
    assert call.type == "function_call" and call.arguments == done[0].arguments
    jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(final.id)  # store=False keeps nothing


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"truncation": "auto"}, "truncation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"previous_response_id": "resp_unknown"}, "previous_response_id"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_refusals_name_the_param(server: HearthServer, extra: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "input": "Hi.", "max_output_tokens": 4, **extra}
    reply = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=30)
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_non_text_input_parts_are_refused(server: HearthServer) -> None:
    body = {
        "model": MODEL,
        "input": [
            {
                "role": "user",
                "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}],
            }
        ],
    }
    reply = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400  # the bundled model has no projector
    assert reply.json()["error"]["param"] == "input[0].content[0].image_url"
    assert "does not take images" in reply.json()["error"]["message"]


def test_a_stored_response_survives_a_restart(tmp_path: Path) -> None:
    with start_server(tmp_path) as first_server:
        client = first_server.client()
        first = client.responses.create(
            model=MODEL, input="My name is Ada. Say hello.", max_output_tokens=12, temperature=0
        )
    with start_server(tmp_path) as second_server:
        client = second_server.client()
        kept = client.responses.retrieve(first.id)
        assert kept.output_text == first.output_text
        follow_up = client.responses.create(
            model=MODEL,
            previous_response_id=first.id,
            input="What is my name?",
            max_output_tokens=12,
            temperature=0,
        )
        assert follow_up.status in ("completed", "incomplete")
        items = client.responses.input_items.list(follow_up.id)
        assert [item.type for item in items.data] == ["message"]  # only this turn's input
        assert follow_up.usage is not None and first.usage is not None
        # Its prompt holds the first turn: more tokens than the new question alone.
        assert follow_up.usage.input_tokens > first.usage.input_tokens


def test_what_codex_sends_that_changes_nothing_is_accepted(tmp_path: Path) -> None:
    """Codex sends client_metadata on every request, and with store false asks for encrypted
    reasoning and summaries: accepted (nothing to encrypt for a model that does not reason),
    each ignored field named in the journal; any other include is refused by name."""
    journal = tmp_path / "journal"
    body = {
        "model": MODEL,
        "input": [{"role": "user", "content": "Say hi."}],
        "max_output_tokens": 8,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"summary": "auto"},
        "client_metadata": {"session_id": "s-1", "turn_id": "t-1"},
        "stream": True,
    }
    with start_server(tmp_path, "--journal", str(journal)) as server:
        with httpx.stream(
            "POST", f"{server.base_url}/v1/responses", json=body, timeout=120
        ) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("event:")]
        assert events[0] == "event: response.created"
        assert events[-1] in ("event: response.completed", "event: response.incomplete")
        other = httpx.post(
            f"{server.base_url}/v1/responses",
            json={**body, "stream": False, "include": ["message.output_text.logprobs"]},
            timeout=60,
        )
        assert other.status_code == 400
        assert other.json()["error"]["param"] == "include[0]"
    entries = [json.loads(line) for line in (journal / "requests.jsonl").read_text().splitlines()]
    first = next(e for e in entries if e["route"] == "/v1/responses")
    assert first["ignored_fields"] == ["client_metadata", "reasoning.summary"]


def test_a_namespace_s_functions_are_offered_and_their_calls_name_it(
    client: openai.OpenAI,
) -> None:
    """Codex groups its agent tools in a namespace and offers web_search on every request: the
    namespace's functions are tools like any other, a call to one names its namespace, and
    web_search (which OpenAI's servers run) is left out."""
    spawn = {
        "type": "function",
        "name": "spawn_agent",
        "description": "Start a helper agent with a task.",
        "parameters": {
            "type": "object",
            "properties": {"task": {"type": "string", "maxLength": 40}},
            "required": ["task"],
            "additionalProperties": False,
        },
        "strict": False,
    }
    tools: Any = [
        {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.", "tools": [spawn]},
        {"type": "web_search", "external_web_access": False},
    ]
    response = client.responses.create(
        model=MODEL,
        input="Start a helper agent that lists files.",
        tools=tools,
        tool_choice={"type": "function", "name": "spawn_agent"},
        max_output_tokens=60,
    )
    (call,) = response.output
    assert call.type == "function_call" and call.name == "spawn_agent"
    assert call.namespace == "multi_agent_v1"
    assert "task" in json.loads(call.arguments)
    with client.responses.stream(
        model=MODEL,
        input="Start a helper agent that lists files.",
        tools=tools,
        tool_choice={"type": "function", "name": "spawn_agent"},
        max_output_tokens=60,
    ) as stream:
        events = list(stream)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "function_call" and added[0].item.namespace == "multi_agent_v1"
    refused = httpx.post(
        f"{client.base_url}responses",
        json={"model": MODEL, "input": "Hi", "tools": [{"type": "file_search"}]},
        timeout=30,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools[0].type"
