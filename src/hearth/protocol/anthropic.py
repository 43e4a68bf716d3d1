"""Anthropic Messages API wire types: messages, count_tokens, models, errors, stream events.

https://docs.anthropic.com/en/api/messages
A request's fields follow the reference's order: the required ones first, then the optional ones
alphabetically, as the reference lists them. The response objects and stream events follow the
order of the reference's example objects, which is the order Anthropic's API sends them in. The
`anthropic` Python SDK (`anthropic.types`) spells every field and is the most exact source where
the two differ; fields that only its newer releases carry are declared too, after the others.
Fields Hearth adds are marked "extension, not in the spec". Spec fields, content blocks and tools
that Hearth does not honour are still declared, so that the server can refuse them by name (a 400
naming e.g. `messages[0].content[1]`) instead of a generic "extra field" error or, worse, ignoring
them; docs/anthropic-api.md says which is which.

An unknown content block `type` fails validation (400 naming `messages[0].content[1].type`), as
Anthropic's API answers it. Server tools (web_search_20250305, bash_20250124…) parse into one
generic model that keeps their `type`, so the refusal can name it. What Hearth sends parses with
the official `anthropic` client's own types (tests/unit/test_anthropic_protocol.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from hearth.keep_alive import KeepAlive
from hearth.protocol.base import ClosedObject, ClosedRequest, OpenObject

__all__ = [
    "CacheControl",
    "ContainerUploadBlockParam",
    "ContentBlock",
    "ContentBlockDeltaEvent",
    "ContentBlockParam",
    "ContentBlockStartEvent",
    "ContentBlockStopEvent",
    "CountTokensRequest",
    "CountTokensResponse",
    "DocumentBlockParam",
    "ErrorObject",
    "ErrorResponse",
    "ImageBlockParam",
    "InputJSONDelta",
    "Message",
    "MessageDelta",
    "MessageDeltaEvent",
    "MessageDeltaUsage",
    "MessageParam",
    "MessageStartEvent",
    "MessageStopEvent",
    "MessagesRequest",
    "Metadata",
    "ModelInfo",
    "ModelListPage",
    "PingEvent",
    "RedactedThinkingBlockParam",
    "SearchResultBlockParam",
    "ServerToolParam",
    "ServerToolResultBlockParam",
    "ServerToolUseBlockParam",
    "StopReason",
    "StreamEvent",
    "TextBlock",
    "TextBlockParam",
    "TextDelta",
    "ThinkingBlock",
    "ThinkingBlockParam",
    "ThinkingConfig",
    "ThinkingDelta",
    "Tool",
    "ToolChoice",
    "ToolParam",
    "ToolReferenceBlockParam",
    "ToolResultBlockParam",
    "ToolResultContentBlock",
    "ToolUseBlock",
    "ToolUseBlockParam",
    "Usage",
]


# Anthropic answers an unknown field with a 400 naming it ("Extra inputs are not permitted").
class _Request(ClosedRequest):
    pass


# A message, or a content block the server honours in full.
class _Block(ClosedObject):
    pass


# A block declared only so that the server can refuse it by its `type`.
class _Lenient(OpenObject):
    pass


def _str_or_list(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return None


def _by_json_type(items: str) -> Discriminator:
    # `str | list[block]`, the branch picked by the value's JSON type: a bad block is reported at
    # its own place (messages[0].content[1].type), not as "Input should be a valid string" (the
    # first of a plain union's errors). "str" and "list" never show in the error's `param`.
    return Discriminator(
        _str_or_list,
        custom_error_type="string_or_list_type",
        custom_error_message=f"Input should be a string or a list of {items}",
    )


class CacheControl(_Block):
    """https://docs.anthropic.com/en/api/messages#body-messages-content-cache-control

    Accepted wherever the spec allows it, and ignored: Hearth's prompt cache is automatic (each
    slot keeps its prompt's KV cache, and any request that shares a prefix reuses it), so there is
    no breakpoint to set and nothing is written on request."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


# -- content blocks (request) ------------------------------------------------------------------
# https://docs.anthropic.com/en/api/messages#body-messages-content


class TextBlockParam(_Block):
    text: str
    type: Literal["text"]
    cache_control: CacheControl | None = None  # accepted, ignored: see CacheControl
    citations: list[dict[str, Any]] | None = None


class ImageBlockParam(_Lenient):
    source: dict[str, Any]
    type: Literal["image"]
    cache_control: CacheControl | None = None


class DocumentBlockParam(_Lenient):
    source: dict[str, Any]
    type: Literal["document"]
    cache_control: CacheControl | None = None
    citations: dict[str, Any] | None = None
    context: str | None = None
    title: str | None = None


class SearchResultBlockParam(_Lenient):
    content: list[dict[str, Any]]
    source: str
    title: str
    type: Literal["search_result"]


class ThinkingBlockParam(_Lenient):
    signature: str
    thinking: str
    type: Literal["thinking"]


class RedactedThinkingBlockParam(_Lenient):
    data: str
    type: Literal["redacted_thinking"]


class ToolUseBlockParam(_Lenient):
    """A tool call the model made, sent back in the next turn (an assistant message). Clients
    send it back as their SDK dumped the answer's block, with the fields newer SDKs add
    (`caller`, `toolset_name`…): those are kept and not read, since the prompt holds only the
    call itself."""

    id: str
    input: dict[str, Any]
    name: str
    type: Literal["tool_use"]
    cache_control: CacheControl | None = None  # accepted, ignored: see CacheControl


class ToolReferenceBlockParam(_Lenient):
    """A tool search result's reference to a tool: only in a tool_result's content."""

    tool_name: str
    type: Literal["tool_reference"]


ToolResultContentBlock = Annotated[
    TextBlockParam
    | ImageBlockParam
    | SearchResultBlockParam
    | DocumentBlockParam
    | ToolReferenceBlockParam,
    Field(discriminator="type"),
]

_ToolResultContent = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[ToolResultContentBlock], Tag("list")],
    _by_json_type("content blocks"),
]


class ToolResultBlockParam(_Block):
    """A tool's result, for the call with the same `tool_use_id` (in a user message)."""

    tool_use_id: str
    type: Literal["tool_result"]
    cache_control: CacheControl | None = None  # accepted, ignored: see CacheControl
    content: _ToolResultContent | None = None
    is_error: bool | None = None


class ServerToolUseBlockParam(_Lenient):
    id: str
    input: dict[str, Any]
    name: str
    type: Literal["server_tool_use"]


class ServerToolResultBlockParam(_Lenient):
    """The result of one of Anthropic's server tools, sent back as received."""

    content: Any
    tool_use_id: str
    type: Literal[
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
    ]


class ContainerUploadBlockParam(_Lenient):
    file_id: str
    type: Literal["container_upload"]


ContentBlockParam = Annotated[
    TextBlockParam
    | ImageBlockParam
    | DocumentBlockParam
    | SearchResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ServerToolUseBlockParam
    | ServerToolResultBlockParam
    | ContainerUploadBlockParam,
    Field(discriminator="type"),
]


class MessageParam(_Block):
    """https://docs.anthropic.com/en/api/messages#body-messages

    A string content is shorthand for one text block. The `system` role is only in the newest
    SDK's MessageParam; declared so that the server can refuse it (or honour it) by name."""

    content: Annotated[
        Annotated[str, Tag("str")] | Annotated[list[ContentBlockParam], Tag("list")],
        _by_json_type("content blocks"),
    ]
    role: Literal["user", "assistant", "system"]


# -- request options ---------------------------------------------------------------------------


class Metadata(_Request):
    """https://docs.anthropic.com/en/api/messages#body-metadata"""

    user_id: str | None = None


class ThinkingConfig(_Request):
    """https://docs.anthropic.com/en/api/messages#body-thinking

    One model for the spec's `{"type": "enabled", "budget_tokens": N}` and `{"type":
    "disabled"}`, and the newer SDK's `adaptive` and `between_tools`, so that an error names
    `thinking` or `thinking.budget_tokens` rather than a union branch."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    # Anthropic asks for at least 1024; Hearth takes any budget from 1 (small local models).
    budget_tokens: int | None = Field(None, ge=1)
    display: Literal["summarized", "omitted"] | None = None

    @model_validator(mode="after")
    def _budget_only_when_enabled(self) -> ThinkingConfig:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking.budget_tokens is required when thinking.type is 'enabled'")
        if self.type != "enabled" and self.budget_tokens is not None:
            raise ValueError("thinking.budget_tokens is only allowed when thinking is 'enabled'")
        return self


class JSONOutputFormat(_Request):
    """https://platform.claude.com/docs/en/build-with-claude/structured-outputs"""

    schema_: dict[str, Any] = Field(alias="schema")
    type: Literal["json_schema"]


class OutputConfig(_Request):
    """https://docs.anthropic.com/en/api/messages#body-output-config"""

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class ToolChoice(_Request):
    """https://docs.anthropic.com/en/api/messages#body-tool-choice

    One model for the four kinds (`auto`, `any`, `tool` with its `name`, `none`), so that an
    error names `tool_choice` or `tool_choice.name` rather than a union branch."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _name_only_for_a_tool(self) -> ToolChoice:
        if self.type == "tool" and self.name is None:
            raise ValueError("tool_choice.name is required when tool_choice.type is 'tool'")
        if self.type != "tool" and self.name is not None:
            raise ValueError("tool_choice.name is only allowed when tool_choice.type is 'tool'")
        if self.type == "none" and self.disable_parallel_tool_use is not None:
            raise ValueError("tool_choice.disable_parallel_tool_use is not allowed with 'none'")
        return self


# -- tools -------------------------------------------------------------------------------------
# https://docs.anthropic.com/en/api/messages#body-tools


class ToolParam(_Request):
    """A custom (client) tool: the model calls it, the client runs it. `type` may be left out."""

    input_schema: dict[str, Any]  # JSON Schema of the tool's `input`; kept as sent
    name: str
    cache_control: CacheControl | None = None  # accepted, ignored: see CacheControl
    description: str | None = None
    # newer SDK field: the input must follow the schema (Hearth's grammar enforces it anyway)
    strict: bool | None = None
    type: Literal["custom"] | None = None
    # Tool search's "leave it out of the prompt until referenced" (Claude Code sends it). Hearth
    # has no tool search, so every tool is in the prompt: accepted, ignored (journaled).
    defer_loading: bool | None = None


class ServerToolParam(_Lenient):
    """One of Anthropic's server tools (web_search_20250305, web_fetch_20250910, bash_20250124,
    text_editor_20250728, code_execution_20250825, computer_…, memory_…, tool_search_…): versioned
    by its `type`, run by Anthropic's servers. Parsed generically so that the server can refuse it
    by its `type`; its other keys are kept as sent."""

    type: str
    name: str | None = None


def _tool_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
    elif isinstance(value, ToolParam | ServerToolParam):
        kind = value.type
    else:
        return None
    return "custom" if kind in (None, "custom") else "server"


Tool = Annotated[
    Annotated[ToolParam, Tag("custom")] | Annotated[ServerToolParam, Tag("server")],
    Discriminator(
        _tool_tag, custom_error_type="tool_type", custom_error_message="Input should be a tool"
    ),
]


# -- requests ----------------------------------------------------------------------------------


_SystemPrompt = Annotated[
    Annotated[str, Tag("str")] | Annotated[list[TextBlockParam], Tag("list")],
    _by_json_type("text blocks"),
]


class MessagesRequest(_Request):
    """https://docs.anthropic.com/en/api/messages (POST /v1/messages)"""

    model: str
    messages: list[MessageParam]
    max_tokens: int = Field(ge=1)
    container: str | dict[str, Any] | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    system: _SystemPrompt | None = None
    # The newest SDK sends temperature, top_k and top_p only through extra_body; the API still
    # takes them.
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    thinking: ThinkingConfig | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    # newer SDK fields (anthropic 1.x/2.x), declared so that the server can refuse them by name
    cache_control: CacheControl | None = None
    # Server-side clearing of old tool results and thinking as the context fills (Claude Code
    # sends it): Hearth never edits a prompt, so accepted, ignored (journaled).
    context_management: dict[str, Any] | None = None
    diagnostics: dict[str, Any] | None = None
    inference_geo: str | None = None
    output_config: OutputConfig | None = None
    speed: Literal["standard", "fast"] | None = None
    # extension, not in the spec: Ollama's keep_alive (seconds, or "10m"; 0 unloads the model
    # after this request, -1 keeps it loaded)
    keep_alive: KeepAlive | None = None


class CountTokensRequest(_Request):
    """https://docs.anthropic.com/en/api/messages-count-tokens
    (POST /v1/messages/count_tokens)"""

    model: str
    messages: list[MessageParam]
    mcp_servers: list[dict[str, Any]] | None = None
    system: _SystemPrompt | None = None
    thinking: ThinkingConfig | None = None
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = None
    # newer SDK fields, declared so that the server can refuse them by name
    cache_control: CacheControl | None = None
    context_management: dict[str, Any] | None = None  # accepted, ignored: see MessagesRequest
    output_config: OutputConfig | None = None
    speed: Literal["standard", "fast"] | None = None


# -- responses ---------------------------------------------------------------------------------
# https://docs.anthropic.com/en/api/messages#response-content


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str  # toolu_…
    name: str
    input: dict[str, Any]


class ThinkingBlock(BaseModel):
    """A reasoning model's thinking, before the answer. Hearth signs nothing: `signature` is
    empty, and a thinking block sent back in a later turn is dropped from the prompt."""

    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


ContentBlock = Annotated[TextBlock | ToolUseBlock | ThinkingBlock, Field(discriminator="type")]

StopReason = Literal[
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "model_context_window_exceeded",
]


class Usage(BaseModel):
    """https://docs.anthropic.com/en/api/messages#response-usage

    Anthropic's `input_tokens` counts only the prompt tokens that were neither read from nor
    written to the cache: the whole prompt is input_tokens + cache_read_input_tokens +
    cache_creation_input_tokens."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0
    service_tier: Literal["standard", "priority", "batch"] | None = "standard"


class Message(BaseModel):
    """https://docs.anthropic.com/en/api/messages#response: the Message object."""

    id: str  # msg_…
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[ContentBlock]
    model: str
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage


class CountTokensResponse(BaseModel):
    """https://docs.anthropic.com/en/api/messages-count-tokens#response"""

    input_tokens: int


# -- stream events -----------------------------------------------------------------------------
# https://docs.anthropic.com/en/docs/build-with-claude/streaming
# Each is sent as `event: <type>` followed by `data: <the event as JSON>`.


class MessageStartEvent(BaseModel):
    """The message with empty content, no stop_reason and the usage so far."""

    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentBlock  # a text block with "", or a tool_use block with input {}


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class InputJSONDelta(BaseModel):
    """A piece of a tool_use block's `input`, as JSON text; the pieces joined parse."""

    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: Annotated[TextDelta | InputJSONDelta | ThinkingDelta, Field(discriminator="type")]


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(BaseModel):
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None


class MessageDeltaUsage(BaseModel):
    """Cumulative counts at the end of the message."""

    output_tokens: int
    input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


# -- models ------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    """https://docs.anthropic.com/en/api/models-list (GET /v1/models with `anthropic-version`)"""

    id: str
    type: Literal["model"] = "model"
    display_name: str
    created_at: datetime  # RFC 3339, as pydantic writes an aware datetime ("…T00:00:00Z")
    # newer SDK fields (anthropic 2.x requires `lifecycle`)
    lifecycle: Literal["active", "deprecated", "retired"] = "active"
    max_input_tokens: int | None = None
    max_tokens: int | None = None


class ModelListPage(BaseModel):
    """https://docs.anthropic.com/en/api/models-list#response"""

    data: list[ModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None


# -- errors ------------------------------------------------------------------------------------


class ErrorObject(BaseModel):
    type: str  # invalid_request_error, authentication_error, … (hearth.server.http.errors)
    message: str


class ErrorResponse(BaseModel):
    """https://docs.anthropic.com/en/api/errors: every error, and a stream's `error` event."""

    type: Literal["error"] = "error"
    error: ErrorObject


StreamEvent = Annotated[
    MessageStartEvent
    | ContentBlockStartEvent
    | PingEvent
    | ContentBlockDeltaEvent
    | ContentBlockStopEvent
    | MessageDeltaEvent
    | MessageStopEvent
    | ErrorResponse,
    Field(discriminator="type"),
]
