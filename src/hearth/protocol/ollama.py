"""Ollama's native API wire types: chat, generate, tags, show, delete, pull, embed, version.

Fields follow https://github.com/ollama/ollama/blob/main/docs/api.md, so an app written for
Ollama (or the official `ollama` Python client) talks to Hearth unchanged. Unknown fields and
options are refused with a 400 naming them, as on the OpenAI side: Ollama ignores them, which
is how a misspelt option goes unnoticed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hearth.keep_alive import KeepAlive
from hearth.protocol.base import StrictRequest

__all__ = [
    "OLLAMA_API_VERSION",
    "ChatRequest",
    "ChatResponse",
    "CreateRequest",
    "DeleteRequest",
    "EmbedRequest",
    "EmbedResponse",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "ErrorResponse",
    "GenerateRequest",
    "GenerateResponse",
    "Message",
    "ModelDetails",
    "Options",
    "ProgressResponse",
    "PullRequest",
    "ShowRequest",
    "ShowResponse",
    "TagModel",
    "TagsResponse",
    "VersionResponse",
]


# The Ollama release whose API (docs/api.md) Hearth serves; /api/version reports it, since
# clients check it (Codex's `--oss` mode needs 0.13.4 or later).
OLLAMA_API_VERSION = "0.13.4"


class _Request(StrictRequest):
    model_config = ConfigDict(extra="forbid")


class Options(_Request):
    """https://github.com/ollama/ollama/blob/main/docs/modelfile.md#valid-parameters-and-values

    Load-time options (num_ctx, num_thread, num_gpu…) belong to `hearth serve`'s flags; the
    serving layer refuses those it cannot honour per request, by name."""

    # load time options
    numa: bool | None = None
    num_ctx: int | None = Field(None, ge=1)
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    embedding_only: bool | None = None
    num_thread: int | None = None
    # runtime options
    num_keep: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    tfs_z: float | None = None
    typical_p: float | None = Field(None, gt=0.0, le=1.0)
    repeat_last_n: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = Field(None, gt=0.0, le=20.0)
    mirostat_eta: float | None = Field(None, gt=0.0, le=1.0)
    penalize_newline: bool | None = None
    stop: list[str] | None = None
    draft_num_predict: int | None = None  # speculative decoding's drafts per step


class ToolCallFunction(BaseModel):
    name: str
    arguments: dict[str, Any]


class ToolCall(BaseModel):
    function: ToolCallFunction


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


class ChatRequest(_Request):
    """POST /api/chat"""

    model: str
    messages: list[Message] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    think: bool | str | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    stream: bool = True
    keep_alive: KeepAlive | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # extension, not in Ollama's API: OpenAI's tool_choice ("auto" when absent, as in Ollama)
    tool_choice: str | dict[str, Any] | None = None


class GenerateRequest(_Request):
    """POST /api/generate"""

    model: str
    prompt: str | None = None
    suffix: str | None = None
    images: list[str] | None = None
    think: bool | str | None = None
    format: Literal["", "json"] | dict[str, Any] | None = None
    options: Options | None = None
    system: str | None = None
    template: str | None = None
    stream: bool = True
    raw: bool | None = None
    keep_alive: KeepAlive | None = None
    context: list[int] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TopLogprob(BaseModel):
    token: str
    logprob: float


class Logprob(BaseModel):
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] | None = None


class _Timings(BaseModel):
    """Durations in nanoseconds, as Ollama reports them; only on the final (done) object."""

    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    thinking: str | None = None  # a reasoning model's thinking, with `think`
    tool_calls: list[ToolCall] | None = None


class ChatResponse(_Timings):
    model: str
    created_at: str
    message: ResponseMessage
    done: bool
    done_reason: str | None = None
    logprobs: list[Logprob] | None = None


class GenerateResponse(_Timings):
    model: str
    created_at: str
    response: str
    thinking: str | None = None  # a reasoning model's thinking, with `think`
    done: bool
    done_reason: str | None = None
    logprobs: list[Logprob] | None = None


class ModelDetails(BaseModel):
    parent_model: str = ""
    format: str = "gguf"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class TagModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails
    # extension, not in Ollama's spec: where the model comes from ("bundled: …", the hub repo,
    # the registry, "ollama store: <folder>" for a model read in place from Ollama's store)
    source: str | None = None


class TagsResponse(BaseModel):
    """GET /api/tags"""

    models: list[TagModel]


class _ModelRequest(_Request):
    """A request that names its model `model`, or `name` as Ollama's older API did."""

    @model_validator(mode="before")
    @classmethod
    def _name_is_model(cls, data: Any) -> Any:
        # Given both, and different, `name` is refused as an unknown field.
        named = isinstance(data, dict) and "name" in data
        if named and data.get("model", data["name"]) == data["name"]:
            data = {k: v for k, v in data.items() if k != "name"} | {"model": data["name"]}
        return data


class ShowRequest(_ModelRequest):
    """POST /api/show"""

    model: str
    verbose: bool | None = None


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    system: str | None = None
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class DeleteRequest(_ModelRequest):
    """DELETE /api/delete"""

    model: str


class CopyRequest(_Request):
    """POST /api/copy"""

    source: str
    destination: str


class CreateRequest(_ModelRequest):
    """POST /api/create
    (https://github.com/ollama/ollama/blob/main/docs/api.md#create-a-model)

    `files` names GGUF blobs sent before with POST /api/blobs/:digest; `template` is a Jinja
    chat template here (Ollama's is Go's syntax, which is refused by name); `adapters` and
    `messages` are refused: Hearth serves no LoRA adapters and no seeded conversations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    from_: str | None = Field(None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    license: str | list[str] | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Message] | None = None
    stream: bool = True
    quantize: str | None = None


class PullRequest(_ModelRequest):
    """POST /api/pull"""

    model: str
    insecure: bool | None = None
    stream: bool = True


class ProgressResponse(BaseModel):
    """One line of /api/pull's stream; with stream: false, the only (final) one."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class EmbedRequest(_Request):
    """POST /api/embed"""

    model: str
    input: str | list[str] = ""
    truncate: bool = True
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    dimensions: int | None = Field(None, ge=1)


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsRequest(_Request):
    """POST /api/embeddings, superseded by /api/embed"""

    model: str
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


class ErrorResponse(BaseModel):
    """Every /api error: Ollama's clients read the message from `error`."""

    error: str


class VersionResponse(BaseModel):
    """GET /api/version: the Ollama release whose API this matches (clients such as Codex's
    `--oss` mode refuse an older one), and Hearth's own version beside it."""

    version: str
    # extension, not in the spec
    hearth_version: str
