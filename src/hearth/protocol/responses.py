"""OpenAI Responses API wire types: the request, the response object, its items and stream events.

https://platform.openai.com/docs/api-reference/responses/create
The request's fields follow the reference's order (alphabetical, as it lists them), so the two can
be read side by side. The response object, its output items and the stream events follow the
order of the reference's example objects, which is the order OpenAI's API sends them in.
Fields Hearth adds are marked "extension, not in the spec". Spec fields that Hearth does not
honour are still declared, so that the server can refuse them by name (400 with `param`) rather
than answer a generic "extra field" error or, worse, ignore them; docs/responses-api.md says
which is which.

Input items, content parts and tools that Hearth cannot serve (built-in tools, reasoning items,
images…) still parse, into a generic model that keeps their `type`, so the refusal can name it.
The official `openai` client parses what these models dump (tests/unit/test_responses_protocol.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from hearth.keep_alive import KeepAlive
from hearth.protocol.base import ClosedObject, ClosedRequest, OpenObject

__all__ = [
    "DeletedResponse",
    "EasyInputMessage",
    "ErrorEvent",
    "FunctionCallArgumentsDeltaEvent",
    "FunctionCallArgumentsDoneEvent",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "FunctionToolCall",
    "GenericContentPart",
    "GenericItem",
    "GenericTool",
    "GenericToolChoice",
    "IncompleteDetails",
    "InputAudioPart",
    "InputContentPart",
    "InputFilePart",
    "InputImagePart",
    "InputItem",
    "InputItemList",
    "InputTextPart",
    "InputTokensDetails",
    "Logprob",
    "NamespaceTool",
    "OutputItem",
    "OutputMessage",
    "OutputRefusal",
    "OutputText",
    "OutputTextDeltaEvent",
    "OutputTextDoneEvent",
    "OutputTextPart",
    "OutputTokensDetails",
    "Reasoning",
    "ReasoningItem",
    "ReasoningText",
    "ReasoningTextDeltaEvent",
    "ReasoningTextDoneEvent",
    "RefusalPart",
    "Response",
    "ResponseCompletedEvent",
    "ResponseContentPartAddedEvent",
    "ResponseContentPartDoneEvent",
    "ResponseCreateRequest",
    "ResponseCreatedEvent",
    "ResponseError",
    "ResponseFailedEvent",
    "ResponseInProgressEvent",
    "ResponseIncompleteEvent",
    "ResponseOutputItemAddedEvent",
    "ResponseOutputItemDoneEvent",
    "ResponseStatus",
    "ResponseStreamEvent",
    "ResponseStreamOptions",
    "ResponseTextConfig",
    "ResponseUsage",
    "TextFormat",
    "TextFormatJsonObject",
    "TextFormatJsonSchema",
    "TextFormatText",
    "Tool",
    "ToolChoice",
    "ToolChoiceFunction",
    "TopLogprob",
]


# OpenAI answers an unknown argument with a 400 naming it.
class _Request(ClosedRequest):
    pass


# A nested object the server must honour in full (a tool, the text format).
class _Config(ClosedObject):
    pass


# Input items and content parts: other keys are kept, since clients send back output items as
# they received them (ids, statuses, annotations, logprobs, phase…).
class _Lenient(OpenObject):
    pass


def _tag(value: Any, known: frozenset[str]) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind is None:
        return None
    # A type that is not even a string (a list, say) is "other": its own schema refuses it.
    return kind if isinstance(kind, str) and kind in known else "other"


# -- input: content parts ----------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/responses/create#responses-create-input


class InputTextPart(_Lenient):
    type: Literal["input_text"]
    text: str


class OutputTextPart(_Lenient):
    """An assistant message's text, as a client sends a previous output back."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


class RefusalPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


class InputImagePart(_Lenient):
    type: Literal["input_image"]
    detail: str | None = None
    file_id: str | None = None
    image_url: str | None = None


class InputFilePart(_Lenient):
    type: Literal["input_file"]
    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None


class InputAudioPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class GenericContentPart(_Lenient):
    """Any other part: parsed so that the server can refuse it by its `type`."""

    type: str


_PART_TYPES = frozenset(
    {"input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"}
)


def _part_tag(value: Any) -> str | None:
    return _tag(value, _PART_TYPES)


InputContentPart = Annotated[
    Annotated[InputTextPart, Tag("input_text")]
    | Annotated[OutputTextPart, Tag("output_text")]
    | Annotated[RefusalPart, Tag("refusal")]
    | Annotated[InputImagePart, Tag("input_image")]
    | Annotated[InputFilePart, Tag("input_file")]
    | Annotated[InputAudioPart, Tag("input_audio")]
    | Annotated[GenericContentPart, Tag("other")],
    Discriminator(_part_tag),
]


# -- input: items ------------------------------------------------------------------------------


class EasyInputMessage(_Lenient):
    """A message: the spec's EasyInputMessage (whose `type` may be left out) and its input
    message item in one. `id` and `status` come with an output message a client sends back."""

    content: str | list[InputContentPart]
    role: Literal["user", "assistant", "system", "developer"]
    type: Literal["message"] | None = None
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallItem(_Lenient):
    """A tool call the model made, sent back in the next turn's input."""

    arguments: str  # JSON, as the model wrote it
    call_id: str
    name: str
    type: Literal["function_call"]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Lenient):
    """A tool's result, for the call with the same `call_id`."""

    call_id: str
    output: str | list[InputContentPart]
    type: Literal["function_call_output"]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class GenericItem(_Lenient):
    """Any other item (`reasoning`, `item_reference`, built-in tool calls…): parsed so that the
    server can refuse it by its `type`."""

    type: str


_ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})


def _item_tag(value: Any) -> str | None:
    if isinstance(value, dict) and "type" not in value and "role" in value:
        return "message"  # the spec's EasyInputMessage needs no type
    return _tag(value, _ITEM_TYPES)


InputItem = Annotated[
    Annotated[EasyInputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[GenericItem, Tag("other")],
    Discriminator(_item_tag),
]


# -- tools -------------------------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/responses/create#responses-create-tools


class FunctionTool(_Config):
    """https://platform.openai.com/docs/guides/function-calling: the Responses API's function
    tool is flat (no nested `function` object, unlike chat completions). The spec's `strict`
    defaults to true when absent; the server reads None that way."""

    name: str
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    type: Literal["function"]
    description: str | None = None


class NamespaceTool(_Config):
    """Function tools grouped under a name (Codex sends its agent tools so); a call to one of
    them names the namespace in its `namespace` field."""

    description: str
    name: str
    tools: list[FunctionTool]
    type: Literal["namespace"]


class GenericTool(_Lenient):
    """Any other tool (web_search, file_search, code_interpreter, computer_use_preview, mcp,
    image_generation, local_shell, custom…): parsed so that the server can refuse it by `type`."""

    type: str


def _tool_tag(value: Any) -> str | None:
    return _tag(value, frozenset({"function"}))


def _tool_kind(value: Any) -> str | None:
    return _tag(value, frozenset({"function", "namespace"}))


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")]
    | Annotated[NamespaceTool, Tag("namespace")]
    | Annotated[GenericTool, Tag("other")],
    Discriminator(_tool_kind),
]


class ToolChoiceFunction(_Config):
    name: str
    type: Literal["function"]


class GenericToolChoice(_Lenient):
    """allowed_tools, a hosted tool's type, mcp, custom…: refused by `type`."""

    type: str


ToolChoice = (
    Literal["none", "auto", "required"]
    | Annotated[
        Annotated[ToolChoiceFunction, Tag("function")] | Annotated[GenericToolChoice, Tag("other")],
        Discriminator(_tool_tag),
    ]
)


# -- text format -------------------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/responses/create#responses-create-text


class TextFormatText(_Config):
    type: Literal["text"]


class TextFormatJsonObject(_Config):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Config):
    # `schema` would shadow BaseModel.schema(); the wire name is kept by the alias.
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    name: str = Field(max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    type: Literal["json_schema"]
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")
]


class ResponseTextConfig(_Config):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Lenient):
    """https://platform.openai.com/docs/api-reference/responses/create#responses-create-reasoning"""

    context: str | None = None
    effort: str | None = None
    generate_summary: str | None = None  # deprecated by OpenAI for `summary`
    mode: str | None = None
    summary: str | None = None


class ResponseStreamOptions(_Request):
    include_obfuscation: bool | None = None


# -- the request -------------------------------------------------------------------------------


class ResponseCreateRequest(_Request):
    """https://platform.openai.com/docs/api-reference/responses/create"""

    access_programs: dict[str, Any] | None = None
    background: bool | None = None
    background_options: dict[str, Any] | None = None
    # not in the spec: Codex CLI sends it on every request (its session and turn ids);
    # accepted, ignored (journaled)
    client_metadata: dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | None = None
    conversation: str | dict[str, Any] | None = None
    image: dict[str, Any] | None = None
    include: list[str] | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    max_tool_calls: int | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    model: str
    moderation: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    prompt_cache_retention: str | None = None
    reasoning: Reasoning | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    store: bool | None = None  # None: true, as the spec's default
    stream: bool | None = False
    stream_options: ResponseStreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    text: ResponseTextConfig | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    # extension, not in the spec: llama.cpp samplers, a seed, and stop strings
    seed: int | None = None
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: str | list[str] | None = None
    # extension, not in the spec: Ollama's keep_alive (seconds, or "10m"; 0 unloads the model
    # after this request, -1 keeps it loaded)
    keep_alive: KeepAlive | None = None


# -- the response object -----------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/responses/object


class TopLogprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class Logprob(BaseModel):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[Logprob] = Field(default_factory=list)


class OutputRefusal(BaseModel):
    type: Literal["refusal"] = "refusal"
    refusal: str


class OutputMessage(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/object#responses/object-output"""

    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[Annotated[OutputText | OutputRefusal, Field(discriminator="type")]]


class FunctionToolCall(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/object#responses/object-output"""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str  # JSON, as the model wrote it
    status: Literal["in_progress", "completed", "incomplete"]
    namespace: str | None = None  # the NamespaceTool the function came in


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """A reasoning model's thinking, before the message: its whole text in `content` (Hearth
    writes no summaries)."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    # With include ["reasoning.encrypted_content"]: the thinking, opaque (base64, not
    # encrypted: nothing leaves this machine), for a client that keeps no state to send back.
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


OutputItem = Annotated[
    OutputMessage | FunctionToolCall | ReasoningItem, Field(discriminator="type")
]

ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]


class ResponseError(BaseModel):
    # The SDK types `code` as a closed list; of it, Hearth sends "server_error".
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class InputTokensDetails(BaseModel):
    # Hearth keeps every prompt in its KV cache: the prompt tokens it decoded were written to
    # the cache, the rest were read from it.
    cache_write_tokens: int = 0
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage"""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


def _text_format_text() -> ResponseTextConfig:
    return ResponseTextConfig(format=TextFormatText(type="text"), verbosity="medium")


class Response(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/object

    Most fields echo the request, with the value the server used where it left one out.
    """

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: Reasoning | None = Field(default_factory=Reasoning)
    safety_identifier: str | None = None
    service_tier: str | None = "default"
    store: bool = True
    temperature: float | None = None
    text: ResponseTextConfig = Field(default_factory=_text_format_text)
    # Only what Hearth serves comes back: function tools, and no hosted tool choice. (The
    # request's unions, with their catch-all members, would be ambiguous in /openapi.json.)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class InputItemList(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/input-items

    `data` holds the stored items as the spec lists them (each with its `id`)."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    """https://platform.openai.com/docs/api-reference/responses/delete (the example's body; the
    official SDK reads no body)."""

    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


# -- stream events -----------------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/responses-streaming


class ResponseCreatedEvent(BaseModel):
    type: Literal["response.created"] = "response.created"
    sequence_number: int
    response: Response


class ResponseInProgressEvent(BaseModel):
    type: Literal["response.in_progress"] = "response.in_progress"
    sequence_number: int
    response: Response


class ResponseOutputItemAddedEvent(BaseModel):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    sequence_number: int
    output_index: int
    item: OutputItem


class ResponseContentPartAddedEvent(BaseModel):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: Annotated[OutputText | OutputRefusal, Field(discriminator="type")]


class OutputTextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Logprob] = Field(default_factory=list)


class OutputTextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Logprob] = Field(default_factory=list)


class ResponseContentPartDoneEvent(BaseModel):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: Annotated[OutputText | OutputRefusal, Field(discriminator="type")]


class ReasoningTextDeltaEvent(BaseModel):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDoneEvent(BaseModel):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str


class FunctionCallArgumentsDeltaEvent(BaseModel):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(BaseModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponseOutputItemDoneEvent(BaseModel):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    sequence_number: int
    output_index: int
    item: OutputItem


class ResponseCompletedEvent(BaseModel):
    type: Literal["response.completed"] = "response.completed"
    sequence_number: int
    response: Response


class ResponseIncompleteEvent(BaseModel):
    type: Literal["response.incomplete"] = "response.incomplete"
    sequence_number: int
    response: Response


class ResponseFailedEvent(BaseModel):
    type: Literal["response.failed"] = "response.failed"
    sequence_number: int
    response: Response


class ErrorEvent(BaseModel):
    """An error after the stream began, in the shape of the SDK's ResponseErrorEvent."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None = None
    message: str
    param: str | None = None


ResponseStreamEvent = Annotated[
    ResponseCreatedEvent
    | ResponseInProgressEvent
    | ResponseOutputItemAddedEvent
    | ResponseContentPartAddedEvent
    | OutputTextDeltaEvent
    | OutputTextDoneEvent
    | ResponseContentPartDoneEvent
    | ReasoningTextDeltaEvent
    | ReasoningTextDoneEvent
    | FunctionCallArgumentsDeltaEvent
    | FunctionCallArgumentsDoneEvent
    | ResponseOutputItemDoneEvent
    | ResponseCompletedEvent
    | ResponseIncompleteEvent
    | ResponseFailedEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
