"""Anthropic's Messages API wire types (protocol/anthropic.py): requests parse as the spec allows
and refuse what it does not; what Hearth sends parses with the official `anthropic` client's own
types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import anthropic.types as sdk
import pytest
from anthropic.pagination import SyncPage
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from hearth.protocol import anthropic as a
from hearth.server.http.errors import validation_error

REQUEST: dict[str, Any] = {
    "model": "m",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


def parse(**fields: Any) -> a.MessagesRequest:
    return a.MessagesRequest.model_validate({**REQUEST, **fields})


def dumped(model: BaseModel) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(model.model_dump_json())
    return body


# -- requests ----------------------------------------------------------------------------------


def test_a_full_conversation_with_tools_parses() -> None:
    request = parse(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather",
                     "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                     "content": [{"type": "text", "text": "timeout"}]},
                ],
            },
        ],
        tools=[{"name": "weather", "description": "Weather now", "input_schema": WEATHER}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        metadata={"user_id": "u-1"},
        stop_sequences=["\n\nHuman:"],
        temperature=0.5,
        top_k=40,
        top_p=0.9,
        stream=True,
        keep_alive="5m",
    )  # fmt: skip
    assert isinstance(request.system, list) and request.system[0].cache_control is not None
    assistant, results = request.messages[1], request.messages[2]
    assert isinstance(assistant.content, list)
    assert [type(b).__name__ for b in assistant.content] == ["TextBlockParam", "ToolUseBlockParam"]
    assert isinstance(results.content, list)
    second = results.content[1]
    assert isinstance(second, a.ToolResultBlockParam) and second.is_error is True
    assert request.tools is not None and isinstance(request.tools[0], a.ToolParam)
    assert request.tool_choice is not None and request.tool_choice.disable_parallel_tool_use
    assert request.metadata is not None and request.metadata.user_id == "u-1"


def test_the_sdk_request_fields_are_all_declared() -> None:
    # Every body field the SDK can send has a name here, so the server can refuse it by name.
    params = sdk.message_create_params.MessageCreateParamsBase.__annotations__
    assert set(params) - {"user_profile_id", "workspace_id"} <= set(a.MessagesRequest.model_fields)
    counted = sdk.message_count_tokens_params.MessageCountTokensParams.__annotations__
    headers = {"user_profile_id", "workspace_id"}
    assert set(counted) - headers <= set(a.CountTokensRequest.model_fields)


def test_blocks_and_tools_hearth_refuses_still_parse_by_type() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {"type": "search_result", "source": "s", "title": "t", "content": []},
        {"type": "container_upload", "file_id": "file_1"},
    ]
    request = parse(
        messages=[{"role": "user", "content": content}],
        tools=[
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"type": "bash_20250124", "name": "bash"},
            {"type": "custom", "name": "f", "input_schema": WEATHER},
        ],
        thinking={"type": "enabled", "budget_tokens": 2048},
        mcp_servers=[{"type": "url", "url": "https://example.com", "name": "x"}],
        container="container_1",
        service_tier="standard_only",
    )
    blocks = request.messages[0].content
    assert isinstance(blocks, list)
    assert [b.type for b in blocks] == [c["type"] for c in content]
    assert request.tools is not None
    assert [type(t).__name__ for t in request.tools] == ["ServerToolParam"] * 2 + ["ToolParam"]
    assert request.tools[0].type == "web_search_20250305"
    assert request.thinking is not None and request.thinking.budget_tokens == 2048


def test_count_tokens_takes_its_own_fields() -> None:
    request = a.CountTokensRequest.model_validate(
        {"model": "m", "messages": REQUEST["messages"], "system": "Be brief.",
         "tools": [{"name": "f", "input_schema": WEATHER}], "tool_choice": {"type": "any"}}
    )  # fmt: skip
    assert request.system == "Be brief."
    with pytest.raises(ValidationError) as caught:
        a.CountTokensRequest.model_validate(REQUEST)  # max_tokens is not count_tokens' field
    assert validation_error(caught.value.errors()).param == "max_tokens"


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": "16"}, "max_tokens", "valid integer"),
        ({"temperature": 1.5}, "temperature", "less than or equal to 1"),
        ({"prompt": "Hi"}, "prompt", "Unrecognized"),
        ({"service_tier": "priority"}, "service_tier", "'auto' or 'standard_only'"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice", "name is required"),
        ({"tool_choice": {"type": "required"}}, "tool_choice.type", "'auto', 'any'"),
        ({"thinking": {"type": "enabled"}}, "thinking", "budget_tokens is required"),
        ({"system": [{"type": "text"}]}, "system[0].text", "Missing"),
        ({"system": 5}, "system", "string or a list of text blocks"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema", "Missing"),
        ({"tools": [{"name": "f", "input_schema": {}, "x": 1}]}, "tools[0].x", "Unrecognized"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'user'"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "video", "url": "x"}]}]},
            "messages[0].content[1].type",
            "'video'",
        ),
        (
            {"messages": [{"role": "user", "content": [{"text": "a"}]}]},
            "messages[0].content[0].type",
            "Missing",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "b": 1}]}]},
            "messages[0].content[0].b",
            "Unrecognized",
        ),
        (
            {"messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text"}]}]}]},
            "messages[0].content[0].content[0].text",
            "Missing",
        ),
    ],
)  # fmt: skip
def test_bad_requests_are_400s_naming_the_field(
    fields: dict[str, Any], param: str, words: str
) -> None:
    assert_refused({**REQUEST, **fields}, param, words)


def test_max_tokens_is_required() -> None:
    body = {key: value for key, value in REQUEST.items() if key != "max_tokens"}
    assert_refused(body, "max_tokens", "Missing required parameter")


def assert_refused(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        a.MessagesRequest.model_validate(body)
    error = validation_error(caught.value.errors(include_url=False), api="Anthropic")
    assert (error.param, error.status_code) == (param, 400)
    assert words in error.message
    assert param in error.message  # Anthropic's body has no `param`: the message names it


# -- what Hearth sends, read by the anthropic SDK ----------------------------------------------


def message(**fields: Any) -> a.Message:
    return a.Message(
        id="msg_1",
        content=[
            a.TextBlock(text="Let me look."),
            a.ToolUseBlock(id="toolu_1", name="weather", input={"city": "Paris"}),
        ],
        model="m",
        stop_reason="tool_use",
        usage=a.Usage(input_tokens=7, output_tokens=12, cache_read_input_tokens=30),
        **fields,
    )


def test_a_message_parses_with_the_sdk() -> None:
    body = dumped(message())
    assert list(body) == [
        "id", "type", "role", "content", "model", "stop_reason", "stop_sequence", "usage",
    ]  # fmt: skip
    parsed = sdk.Message.model_validate(body)
    assert parsed.stop_reason == "tool_use"
    text, call = parsed.content
    assert isinstance(text, sdk.TextBlock) and text.text == "Let me look."
    assert isinstance(call, sdk.ToolUseBlock) and call.input == {"city": "Paris"}
    assert parsed.usage.cache_read_input_tokens == 30
    assert parsed.usage.cache_creation_input_tokens == 0
    # The SDK sends the reply back as the next turn's assistant message (`to_param()`), each
    # block dumped with the fields it was given: that parses as a request's message.
    sent = json.dumps(
        parsed.to_param(), default=lambda m: m.model_dump(exclude_unset=True, mode="json")
    )
    turn = a.MessageParam.model_validate(json.loads(sent))
    assert isinstance(turn.content, list) and isinstance(turn.content[1], a.ToolUseBlockParam)


def test_stream_events_parse_with_the_sdk() -> None:
    start = a.Message(
        id="msg_1", content=[], model="m", usage=a.Usage(input_tokens=7, output_tokens=0)
    )
    events: list[BaseModel] = [
        a.MessageStartEvent(message=start),
        a.ContentBlockStartEvent(index=0, content_block=a.TextBlock(text="")),
        a.PingEvent(),
        a.ContentBlockDeltaEvent(index=0, delta=a.TextDelta(text="Hi")),
        a.ContentBlockStopEvent(index=0),
        a.ContentBlockStartEvent(
            index=1, content_block=a.ToolUseBlock(id="toolu_1", name="weather", input={})
        ),
        a.ContentBlockDeltaEvent(index=1, delta=a.InputJSONDelta(partial_json='{"city": ')),
        a.ContentBlockDeltaEvent(index=1, delta=a.InputJSONDelta(partial_json='"Paris"}')),
        a.ContentBlockStopEvent(index=1),
        a.MessageDeltaEvent(
            delta=a.MessageDelta(stop_reason="tool_use"),
            usage=a.MessageDeltaUsage(output_tokens=12),
        ),
        a.MessageStopEvent(),
    ]
    adapter: TypeAdapter[Any] = TypeAdapter(sdk.RawMessageStreamEvent)
    ours: TypeAdapter[Any] = TypeAdapter(a.StreamEvent)
    for event in events:
        body = dumped(event)
        assert ours.validate_python(body) == event
        if body["type"] == "ping":
            continue  # the SDK skips pings before parsing
        parsed = adapter.validate_python(body)
        assert parsed.type == body["type"]
    delta = adapter.validate_python(dumped(events[9]))
    assert isinstance(delta, sdk.RawMessageDeltaEvent) and delta.delta.stop_reason == "tool_use"


def test_the_sdk_assembles_a_message_from_the_events() -> None:
    start = a.Message(
        id="msg_1", content=[], model="m", usage=a.Usage(input_tokens=3, output_tokens=0)
    )
    events: list[BaseModel] = [
        a.MessageStartEvent(message=start),
        a.PingEvent(),
        a.ContentBlockStartEvent(index=0, content_block=a.TextBlock(text="")),
        a.ContentBlockDeltaEvent(index=0, delta=a.TextDelta(text="Hel")),
        a.ContentBlockDeltaEvent(index=0, delta=a.TextDelta(text="lo")),
        a.ContentBlockStopEvent(index=0),
        a.ContentBlockStartEvent(
            index=1, content_block=a.ToolUseBlock(id="toolu_1", name="f", input={})
        ),
        a.ContentBlockDeltaEvent(index=1, delta=a.InputJSONDelta(partial_json='{"city":')),
        a.ContentBlockDeltaEvent(index=1, delta=a.InputJSONDelta(partial_json=' "Paris"}')),
        a.ContentBlockStopEvent(index=1),
        a.MessageDeltaEvent(
            delta=a.MessageDelta(stop_reason="tool_use"),
            usage=a.MessageDeltaUsage(output_tokens=9),
        ),
        a.MessageStopEvent(),
    ]
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages() -> StreamingResponse:
        async def sse() -> AsyncIterator[bytes]:
            for event in events:
                data = event.model_dump_json()
                yield f"event: {json.loads(data)['type']}\ndata: {data}\n\n".encode()

        return StreamingResponse(sse(), media_type="text/event-stream")

    with TestClient(app) as http:
        client = anthropic.Anthropic(api_key="k", base_url=str(http.base_url), http_client=http)
        with client.messages.stream(
            model="m", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            assert "".join(stream.text_stream) == "Hello"
            final = stream.get_final_message()
    text, call = final.content
    assert isinstance(text, sdk.TextBlock) and text.text == "Hello"
    assert isinstance(call, sdk.ToolUseBlock) and call.input == {"city": "Paris"}
    assert (final.stop_reason, final.usage.output_tokens) == ("tool_use", 9)


def test_count_tokens_models_and_errors_parse_with_the_sdk() -> None:
    counted = sdk.MessageTokensCount.model_validate(dumped(a.CountTokensResponse(input_tokens=9)))
    assert counted.input_tokens == 9

    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    page = a.ModelListPage(
        data=[
            a.ModelInfo(id="smollm2", display_name="SmolLM2", created_at=created),
            a.ModelInfo(id="gemma3", display_name="Gemma 3", created_at=created,
                        max_input_tokens=8192),
        ],
        has_more=False,
        first_id="smollm2",
        last_id="gemma3",
    )  # fmt: skip
    body = dumped(page)
    assert body["data"][0]["created_at"] == "2025-01-02T03:04:05Z"  # RFC 3339
    models = SyncPage[sdk.ModelInfo].model_validate(body)
    assert [m.id for m in models.data] == ["smollm2", "gemma3"]
    assert models.data[0].created_at == created and models.has_more is False

    error = a.ErrorResponse(error=a.ErrorObject(type="not_found_error", message="no model"))
    parsed = sdk.ErrorResponse.model_validate(dumped(error))
    assert (parsed.type, parsed.error.type) == ("error", "not_found_error")
