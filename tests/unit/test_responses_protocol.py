"""The Responses API's wire types (protocol/responses.py): requests parse as the spec allows and
refuse what it does not; what Hearth sends parses with the official `openai` client's own types,
and its stream helper assembles a response from Hearth's events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response as SdkResponse
from openai.types.responses import ResponseItemList as SdkResponseItemList
from openai.types.responses import ResponseStreamEvent as SdkStreamEvent
from openai.types.responses.response_create_params import ResponseCreateParamsBase
from pydantic import BaseModel, TypeAdapter, ValidationError

from hearth.protocol import responses as r

REQUEST: dict[str, Any] = {"model": "m", "input": "Hi"}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def parse(**fields: Any) -> r.ResponseCreateRequest:
    return r.ResponseCreateRequest.model_validate({**REQUEST, **fields})


# -- requests ----------------------------------------------------------------------------------


def test_input_items_parse_by_type_and_a_message_needs_none() -> None:
    request = parse(
        input=[
            {"role": "developer", "content": "Be brief."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather in Paris?"}],
            },
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city":"Paris"}', "id": "fc_1", "status": "completed"},
            {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
            {"type": "function_call_output", "call_id": "call_2",
             "output": [{"type": "input_text", "text": "sunny"}]},
            # an output message sent back as received, with its extra keys
            {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
             "phase": "final_answer", "content": [
                 {"type": "output_text", "text": "It is 18C.", "annotations": [], "logprobs": []}
             ]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "item_reference", "id": "msg_0"},
        ]
    )  # fmt: skip
    assert isinstance(request.input, list)
    kinds = [type(item).__name__ for item in request.input]
    assert kinds == [
        "EasyInputMessage",
        "EasyInputMessage",
        "FunctionCallItem",
        "FunctionCallOutputItem",
        "FunctionCallOutputItem",
        "EasyInputMessage",
        "GenericItem",
        "GenericItem",
    ]
    first, _, call, _, listed, replayed, reasoning, _ = request.input
    assert isinstance(first, r.EasyInputMessage) and first.type is None
    assert isinstance(call, r.FunctionCallItem) and call.arguments == '{"city":"Paris"}'
    assert isinstance(listed, r.FunctionCallOutputItem) and isinstance(listed.output, list)
    assert isinstance(replayed, r.EasyInputMessage) and isinstance(replayed.content, list)
    assert isinstance(replayed.content[0], r.OutputTextPart)
    assert reasoning.type == "reasoning"


def test_content_parts_that_hearth_refuses_still_parse_by_type() -> None:
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
        {"type": "input_file", "file_id": "file_1"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "refusal", "refusal": "No."},
        {"type": "input_video", "video_url": "https://example.com/a.mp4"},
    ]
    request = parse(input=[{"role": "user", "content": content}])
    assert isinstance(request.input, list)
    message = request.input[0]
    assert isinstance(message, r.EasyInputMessage) and isinstance(message.content, list)
    assert [type(part).__name__ for part in message.content] == [
        "InputTextPart",
        "InputImagePart",
        "InputFilePart",
        "InputAudioPart",
        "RefusalPart",
        "GenericContentPart",
    ]
    assert message.content[-1].type == "input_video"


@pytest.mark.parametrize(
    "item",
    [
        {"content": "no role, no type"},
        {"role": "tool", "content": "chat's role, not the Responses API's"},
        {"type": "message", "role": "user"},  # no content
        {"type": "function_call", "name": "f", "arguments": "{}"},  # no call_id
        {"type": "function_call_output", "call_id": "c", "output": 5},
        "a bare string",
        {"type": ["message"], "role": "user", "content": "a type that is not a string"},
    ],
)
def test_malformed_items_are_refused(item: Any) -> None:
    with pytest.raises(ValidationError):
        parse(input=[item])


def test_function_tools_and_built_in_tools() -> None:
    request = parse(
        tools=[
            {"type": "function", "name": "get_weather", "description": "Weather in a city",
             "parameters": WEATHER, "strict": True},
            {"type": "function", "name": "now"},
            {"type": "web_search", "search_context_size": "low"},
            {"type": "mcp", "server_label": "x", "server_url": "https://example.com"},
        ]
    )  # fmt: skip
    assert request.tools is not None
    weather, now, search, mcp = request.tools
    assert isinstance(weather, r.FunctionTool) and weather.parameters == WEATHER
    assert isinstance(now, r.FunctionTool) and (now.parameters, now.strict) == (None, None)
    assert isinstance(search, r.GenericTool) and search.type == "web_search"
    assert isinstance(mcp, r.GenericTool) and mcp.type == "mcp"
    # A function tool's unknown keys are named, not dropped; so is chat's nested form.
    with pytest.raises(ValidationError, match="defer_loading"):
        parse(tools=[{"type": "function", "name": "f", "defer_loading": True}])
    with pytest.raises(ValidationError):
        parse(tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(ValidationError):  # found by the fuzzer: a 500 before
        parse(tools=[{"type": ["function"], "name": "f"}])


def test_tool_choice_forms() -> None:
    for option in ("none", "auto", "required"):
        assert parse(tool_choice=option).tool_choice == option
    named = parse(tool_choice={"type": "function", "name": "get_weather"}).tool_choice
    assert isinstance(named, r.ToolChoiceFunction) and named.name == "get_weather"
    allowed = parse(tool_choice={"type": "allowed_tools", "mode": "auto", "tools": []})
    assert isinstance(allowed.tool_choice, r.GenericToolChoice)
    assert allowed.tool_choice.type == "allowed_tools"
    with pytest.raises(ValidationError):
        parse(tool_choice="sometimes")


def test_text_format_json_schema_keeps_its_wire_name() -> None:
    request = parse(
        text={
            "format": {"type": "json_schema", "name": "weather", "schema": WEATHER,
                       "strict": True},
            "verbosity": "low",
        }
    )  # fmt: skip
    assert request.text is not None
    form = request.text.format
    assert isinstance(form, r.TextFormatJsonSchema) and form.schema_ == WEATHER
    dumped = request.text.model_dump(mode="json", exclude_none=True)
    assert dumped["format"] == {
        "name": "weather",
        "schema": WEATHER,
        "type": "json_schema",
        "strict": True,
    }
    for form_type in ("text", "json_object"):
        assert parse(text={"format": {"type": form_type}}).text is not None
    with pytest.raises(ValidationError):
        parse(text={"format": {"type": "json_schema", "schema": WEATHER}})  # no name
    with pytest.raises(ValidationError):
        parse(text={"format": {"type": "grammar"}})


def test_every_spec_field_is_declared_and_unknown_ones_are_refused() -> None:
    spec = set(ResponseCreateParamsBase.__annotations__) | {"stream"}
    assert spec <= set(r.ResponseCreateRequest.model_fields)
    with pytest.raises(ValidationError, match="temprature"):
        parse(temprature=0.5)


@pytest.mark.parametrize(
    "fields",
    [
        {"max_output_tokens": "16"},
        {"stream": "true"},
        {"store": 1},
        {"temperature": "0.5"},
        {"temperature": 2.5},
        {"top_logprobs": 21},
        {"truncation": "middle"},
        {"keep_alive": "soon"},
        {"metadata": {"k": 1}},
        {"metadata": {str(n): "v" for n in range(17)}},
    ],
)
def test_lax_coercions_and_out_of_range_values_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse(**fields)


def test_extensions_and_defaults() -> None:
    request = parse(max_output_tokens=64.0, seed=7, top_k=20, min_p=0.1, stop=["\n"],
                    keep_alive="10m")  # fmt: skip
    assert request.max_output_tokens == 64 and type(request.max_output_tokens) is int
    assert (request.seed, request.top_k, request.min_p, request.stop) == (7, 20, 0.1, ["\n"])
    assert request.keep_alive == "10m"
    assert (request.store, request.stream) == (None, False)


# -- what Hearth sends, read by the official client --------------------------------------------


def message(text: str, status: str = "completed") -> r.OutputMessage:
    return r.OutputMessage(id="msg_1", status=status, content=[r.OutputText(text=text)])  # type: ignore[arg-type]


def call() -> r.FunctionToolCall:
    return r.FunctionToolCall(
        id="fc_1", call_id="call_1", name="get_weather", arguments='{"city":"Paris"}',
        status="completed",
    )  # fmt: skip


def response(**fields: Any) -> r.Response:
    base: dict[str, Any] = {
        "id": "resp_1",
        "created_at": 1_700_000_000,
        "status": "completed",
        "model": "smollm2:135m",
        "output": [message("Hello!")],
        "usage": r.ResponseUsage(
            input_tokens=12,
            input_tokens_details=r.InputTokensDetails(cache_write_tokens=4, cached_tokens=8),
            output_tokens=3,
            total_tokens=15,
        ),
    }
    return r.Response(**{**base, **fields})


def test_the_sdk_parses_a_response() -> None:
    ours = response(
        completed_at=1_700_000_001,
        instructions="Be brief.",
        output=[message("Calling."), call()],
        tools=[
            r.FunctionTool(type="function", name="get_weather", parameters=WEATHER, strict=True)
        ],
        tool_choice=r.ToolChoiceFunction(type="function", name="get_weather"),
        text=r.ResponseTextConfig(
            format=r.TextFormatJsonSchema.model_validate(
                {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
            )
        ),
        temperature=0.7,
        top_p=1.0,
        metadata={"k": "v"},
    )
    body = ours.model_dump(mode="json")
    assert list(body)[:4] == ["id", "object", "created_at", "status"]
    assert body["text"]["format"]["schema"] == WEATHER
    sdk = SdkResponse.model_validate(body)
    assert sdk.output_text == "Calling."
    assert sdk.output[1].type == "function_call" and sdk.output[1].call_id == "call_1"
    assert sdk.usage is not None and sdk.usage.input_tokens_details.cached_tokens == 8
    assert sdk.tools[0].type == "function" and sdk.tools[0].name == "get_weather"
    assert sdk.text is not None and sdk.text.format is not None
    assert sdk.text.format.type == "json_schema"

    plain = SdkResponse.model_validate(response().model_dump(mode="json"))
    assert plain.tool_choice == "auto" and plain.text is not None
    assert plain.text.format is not None and plain.text.format.type == "text"
    failed = response(
        status="failed", output=[], usage=None,
        error=r.ResponseError(code="server_error", message="The engine failed."),
    )  # fmt: skip
    assert SdkResponse.model_validate(failed.model_dump(mode="json")).error is not None
    cut = response(
        status="incomplete",
        incomplete_details=r.IncompleteDetails(reason="max_output_tokens"),
        output=[message("Hel", status="incomplete")],
    )
    sdk_cut = SdkResponse.model_validate(cut.model_dump(mode="json"))
    assert sdk_cut.incomplete_details is not None
    assert sdk_cut.incomplete_details.reason == "max_output_tokens"


def test_the_sdk_parses_an_input_item_list() -> None:
    page = r.InputItemList(
        data=[
            {"type": "message", "id": "msg_2", "status": "completed", "role": "user",
             "content": [{"type": "input_text", "text": "Hi"}]},
            {"type": "function_call_output", "id": "fco_1", "call_id": "call_1",
             "output": "18C", "status": "completed"},
        ],
        first_id="msg_2", last_id="fco_1", has_more=False,
    )  # fmt: skip
    sdk = SdkResponseItemList.model_validate(page.model_dump(mode="json"))
    assert [item.id for item in sdk.data] == ["msg_2", "fco_1"]


def stream_events() -> list[BaseModel]:
    """The events of one streamed response, as Hearth would send them."""
    started = response(status="in_progress", output=[], usage=None)
    text = message("Hello!")
    pending = r.OutputMessage(id="msg_1", status="in_progress", content=[])
    tool = call()
    return [
        r.ResponseCreatedEvent(sequence_number=0, response=started),
        r.ResponseInProgressEvent(sequence_number=1, response=started),
        r.ResponseOutputItemAddedEvent(sequence_number=2, output_index=0, item=pending),
        r.ResponseContentPartAddedEvent(
            sequence_number=3, item_id="msg_1", output_index=0, content_index=0,
            part=r.OutputText(text=""),
        ),
        r.OutputTextDeltaEvent(
            sequence_number=4, item_id="msg_1", output_index=0, content_index=0, delta="Hel"
        ),
        r.OutputTextDeltaEvent(
            sequence_number=5, item_id="msg_1", output_index=0, content_index=0, delta="lo!"
        ),
        r.OutputTextDoneEvent(
            sequence_number=6, item_id="msg_1", output_index=0, content_index=0, text="Hello!"
        ),
        r.ResponseContentPartDoneEvent(
            sequence_number=7, item_id="msg_1", output_index=0, content_index=0,
            part=r.OutputText(text="Hello!"),
        ),
        r.ResponseOutputItemDoneEvent(sequence_number=8, output_index=0, item=text),
        r.ResponseOutputItemAddedEvent(
            sequence_number=9, output_index=1,
            item=tool.model_copy(update={"arguments": "", "status": "in_progress"}),
        ),
        r.FunctionCallArgumentsDeltaEvent(
            sequence_number=10, item_id="fc_1", output_index=1, delta='{"city":'
        ),
        r.FunctionCallArgumentsDeltaEvent(
            sequence_number=11, item_id="fc_1", output_index=1, delta='"Paris"}'
        ),
        r.FunctionCallArgumentsDoneEvent(
            sequence_number=12, item_id="fc_1", output_index=1, name="get_weather",
            arguments='{"city":"Paris"}',
        ),
        r.ResponseOutputItemDoneEvent(sequence_number=13, output_index=1, item=tool),
        r.ResponseCompletedEvent(sequence_number=14, response=response(output=[text, tool])),
    ]  # fmt: skip


def test_the_sdk_parses_every_stream_event() -> None:
    ending = response(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
    events = [
        *stream_events(),
        r.ResponseIncompleteEvent(sequence_number=15, response=ending),
        r.ResponseFailedEvent(
            sequence_number=16,
            response=response(status="failed", error={"code": "server_error", "message": "x"}),
        ),
        r.ErrorEvent(sequence_number=17, code="server_shutting_down", message="Bye."),
    ]
    sdk = TypeAdapter[Any](SdkStreamEvent)
    ours = TypeAdapter[Any](r.ResponseStreamEvent)
    for event in events:
        body = event.model_dump(mode="json")
        parsed = sdk.validate_python(body)
        assert parsed.type == body["type"] and parsed.sequence_number == body["sequence_number"]
        assert type(ours.validate_python(body)) is type(event)  # the union reads it back


def sse(events: list[BaseModel]) -> Iterator[bytes]:
    for event in events:
        body = event.model_dump(mode="json")
        yield f"event: {body['type']}\ndata: {json.dumps(body)}\n\n".encode()


def test_the_sdk_stream_helper_assembles_hearths_events() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/responses"
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=sse(stream_events())
        )

    client = openai.OpenAI(
        base_url="http://hearth.test/v1",
        api_key="none",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with client.responses.stream(model="smollm2:135m", input="Hi") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hel", "lo!"]
    assert final.output_text == "Hello!"
    assert final.output[1].type == "function_call"
    assert final.output[1].arguments == '{"city":"Paris"}'
    client.close()


def test_a_deleted_response_body() -> None:
    assert r.DeletedResponse(id="resp_1").model_dump() == {
        "id": "resp_1",
        "object": "response",
        "deleted": True,
    }
