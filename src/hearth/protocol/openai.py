"""OpenAI wire types: chat completions, completions, models, errors.

Fields follow the order of OpenAI's API reference, so the two can be read side by side:
https://platform.openai.com/docs/api-reference/chat/create
Fields Hearth adds are marked "extension, not in the spec". Spec fields that Hearth does not
honour yet are still declared, so that `hearth.server.serving` can refuse them by name (400 with
`param`) instead of a generic "extra field" error or, worse, silently ignoring them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from hearth.keep_alive import KeepAlive
from hearth.protocol.base import StrictRequest

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorBody",
    "Model",
    "ModelList",
    "TextCompletion",
    "Usage",
]


class _Request(StrictRequest):
    # OpenAI answers an unknown argument with a 400 naming it; so does Hearth.
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    # Messages and content parts: strict too, but no field is a number (and a discriminator
    # takes no before-validator, so not a StrictRequest).
    model_config = ConfigDict(extra="allow", strict=True)


# -- chat messages -----------------------------------------------------------------------------
# https://platform.openai.com/docs/api-reference/chat/create#chat-create-messages


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: str


class PredictionContent(_Request):
    """https://platform.openai.com/docs/api-reference/chat/create#chat-create-prediction"""

    type: Literal["content"]
    content: str | list[TextContentPart]


class ImageContentPart(_Lenient):
    type: Literal["image_url"]
    image_url: dict[str, Any]


class AudioContentPart(_Lenient):
    type: Literal["input_audio"]
    input_audio: dict[str, Any]


class FileContentPart(_Lenient):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalContentPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


ContentPart = Annotated[
    TextContentPart | ImageContentPart | AudioContentPart | FileContentPart | RefusalContentPart,
    Field(discriminator="type"),
]


class DeveloperMessage(_Lenient):
    content: str | list[ContentPart]
    role: Literal["developer"]
    name: str | None = None


class SystemMessage(_Lenient):
    content: str | list[ContentPart]
    role: Literal["system"]
    name: str | None = None


class UserMessage(_Lenient):
    content: str | list[ContentPart]
    role: Literal["user"]
    name: str | None = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    audio: dict[str, Any] | None = None
    content: str | list[ContentPart] | None = None
    function_call: dict[str, Any] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ToolMessage(_Lenient):
    content: str | list[ContentPart]
    role: Literal["tool"]
    tool_call_id: str


class FunctionMessage(_Lenient):
    content: str | None
    name: str
    role: Literal["function"]


ChatMessage = Annotated[
    DeveloperMessage
    | SystemMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]


class StreamOptions(_Request):
    include_obfuscation: bool | None = None
    include_usage: bool | None = None


# -- requests ----------------------------------------------------------------------------------


class ChatCompletionRequest(_Request):
    """https://platform.openai.com/docs/api-reference/chat/create"""

    messages: list[ChatMessage]
    model: str
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    function_call: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    n: int | None = Field(None, ge=1, le=128)
    parallel_tool_calls: bool | None = None
    prediction: PredictionContent | None = None
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    response_format: dict[str, Any] | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    # extension, not in the spec: llama.cpp samplers, and llama-server's ignore_eos
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = Field(None, gt=0.0, le=20.0)
    mirostat_eta: float | None = Field(None, gt=0.0, le=1.0)
    ignore_eos: bool | None = None
    # extension, not in the spec: variables for the model's chat template, as llama-server and
    # vLLM take them ({"enable_thinking": false}); a key the template never reads is refused
    chat_template_kwargs: dict[str, Any] | None = None
    # extension, not in the spec: Ollama's keep_alive (seconds, or "10m"; 0 unloads the model
    # after this request, -1 keeps it loaded)
    keep_alive: KeepAlive | None = None


class CompletionRequest(_Request):
    """https://platform.openai.com/docs/api-reference/completions/create"""

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1)
    echo: bool | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    user: str | None = None
    # extension, not in the spec: llama.cpp samplers, and llama-server's ignore_eos
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = Field(None, gt=0.0, le=20.0)
    mirostat_eta: float | None = Field(None, gt=0.0, le=1.0)
    ignore_eos: bool | None = None
    # extension, not in the spec: Ollama's keep_alive (seconds, or "10m"; 0 unloads the model
    # after this request, -1 keeps it loaded)
    keep_alive: KeepAlive | None = None


# -- responses ---------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    audio_tokens: int | None = None
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    accepted_prediction_tokens: int = 0
    audio_tokens: int | None = None
    reasoning_tokens: int = 0
    rejected_prediction_tokens: int = 0


class Usage(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage"""

    completion_tokens: int
    prompt_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCall(BaseModel):
    arguments: str  # JSON, as the model wrote it
    name: str


class ToolCall(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat/object#chat/object-choices"""

    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class ResponseMessage(BaseModel):
    content: str | None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ToolCall] | None = None
    # extension, not in the spec: a reasoning model's thinking, as llama-server, vLLM and
    # DeepSeek's API return it
    reasoning_content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_no_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        for name in ("tool_calls", "reasoning_content"):
            if body.get(name) is None:
                body.pop(name, None)
        return body


class TopLogprob(BaseModel):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprob(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat/object#chat/object-choices"""

    token: str
    bytes: list[int] | None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
    index: int
    logprobs: ChoiceLogprobs | None = None
    message: ResponseMessage


class ChatCompletion(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat/object"""

    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None
    usage: Usage


class FunctionCallDelta(BaseModel):
    arguments: str | None = None
    name: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ToolCallDelta(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat-streaming/streaming"""

    index: int
    id: str | None = None
    function: FunctionCallDelta | None = None
    type: Literal["function"] | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkDelta(BaseModel):
    content: str | None = None
    refusal: str | None = None
    role: Literal["assistant"] | None = None
    tool_calls: list[ToolCallDelta] | None = None
    reasoning_content: str | None = None  # extension, not in the spec: see ResponseMessage

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A delta carries only what changed, as OpenAI's stream does.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"] | None = None
    index: int = 0
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """https://platform.openai.com/docs/api-reference/chat-streaming/streaming"""

    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None = None
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """The legacy shape: https://platform.openai.com/docs/api-reference/completions/object"""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    finish_reason: Literal["stop", "length", "content_filter"] | None
    index: int
    logprobs: CompletionLogprobs | None = None
    text: str


class TextCompletion(BaseModel):
    """https://platform.openai.com/docs/api-reference/completions/object

    Streaming sends the same object, one per piece of text.
    """

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None
    usage: Usage | None = None


class Model(BaseModel):
    """https://platform.openai.com/docs/api-reference/models/object"""

    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str = "hearth"
    # extension, not in the spec, on GET /v1/models/{id} only: what the model can do, in
    # Ollama's words ("completion", "tools", "thinking")
    capabilities: list[str] | None = None

    @model_serializer(mode="wrap")
    def _omit_no_capabilities(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        if body.get("capabilities") is None:
            body.pop("capabilities", None)
        return body


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """https://platform.openai.com/docs/guides/error-codes"""

    error: ErrorDetail
