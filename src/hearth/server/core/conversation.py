"""The protocol-free form every API converts into: a conversation, its tools, its output format,
its sampling and its limits. No wire type appears here, and nothing here knows which API a
request came in on; `server/core/prepare.py` turns a `Conversation` into an engine request.

Each value that can be refused carries `param`: the wire path the API's adapter read it from,
so an error names the field the client sent (`tools[0].function.parameters` on chat
completions, `tools[0].input_schema` on Anthropic's Messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hearth.errors import InvalidRequestError
from hearth.server.core.media import MediaPart

__all__ = [
    "EFFORT_BUDGETS",
    "MAX_STOP_SEQUENCES",
    "Conversation",
    "Message",
    "OutputFormat",
    "RawPrompt",
    "Reasoning",
    "Role",
    "Sampling",
    "Tool",
    "ToolCall",
    "ToolChoice",
    "stop_sequences",
]

Role = Literal["system", "user", "assistant", "tool"]
MAX_STOP_SEQUENCES = 4


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the assistant made: `arguments` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. A `tool` message is one call's result (`tool_call_id`, and `tool_name` where the
    API says it); an `assistant` message may carry the calls it made."""

    role: Role
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None
    # Images, in order; `text` holds media.MEDIA_MARKER where each one sits.
    media: tuple[MediaPart, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its arguments' JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]
    param: str = "tools"  # the tool's wire path ("tools[0].function"), for errors
    schema_field: str = "parameters"  # the schema's field name there ("input_schema")
    # A strict tool's schema is enforced whole or refused; otherwise bounds past the grammar's
    # limits are left out of it (engine/grammar.py).
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """`none`: tools are not offered; `auto`: the model may call; `required`: it must call one;
    `named`: it must call `name`."""

    mode: Literal["none", "auto", "required", "named"] = "auto"
    name: str | None = None
    parallel: bool = True  # more than one call in a turn
    param: str = "tool_choice"


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """`json_object`: any JSON object; `json_schema`: JSON valid under `schema` (a grammar)."""

    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: Any = None  # as sent: a non-object is refused where the grammar is made
    param: str = "response_format"  # the field that asked for it, for errors
    schema_param: str = "response_format.json_schema"  # where `schema` sits, for errors
    # A strict schema is refused for a keyword the grammar cannot enforce (a float bound, a
    # format); one that is not strict is served without it.
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling overrides; None keeps the engine's default (`SamplingParams`)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    seed: int | None = None
    # None: not given, so a preset's stop strings apply; () was given: none, not the preset's.
    stop: tuple[str, ...] | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False


# Thinking tokens per effort level, for APIs that name a level rather than a budget
# (reasoning_effort, reasoning.effort, Ollama's think). None: the server's --reasoning-budget.
EFFORT_BUDGETS: dict[str, int | None] = {
    "low": 512,
    "medium": 2048,
    "high": None,
    "xhigh": None,
    "max": None,
}


def stop_sequences(stop: str | list[str] | None) -> tuple[str, ...] | None:
    """The stop strings, checked; None when the request has none (a preset's then apply)."""
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}.", param="stop"
        )
    return tuple(s for s in stops if s)


@dataclass(frozen=True, slots=True)
class Reasoning:
    """What the request asks of a reasoning model's thinking. `enabled` None: the model's
    default (thinking on); `budget` None: the server's --reasoning-budget."""

    enabled: bool | None = None
    budget: int | None = None
    param: str = "reasoning_effort"  # the field that asked, for errors
    # A model that cannot reason answers without thinking instead of refusing: Claude Code
    # asks for thinking on every request, whatever the model.
    optional: bool = False

    @classmethod
    def from_effort(cls, effort: str | None, param: str, *, optional: bool = False) -> Reasoning:
        """An effort level: `none`/`minimal` turn thinking off, `low`/`medium`/`high` (and
        Anthropic's `xhigh`/`max`) on with EFFORT_BUDGETS' budget."""
        if effort is None:
            return cls(param=param, optional=optional)
        if effort in ("none", "minimal"):
            return cls(enabled=False, param=param, optional=optional)
        if effort not in EFFORT_BUDGETS:
            raise InvalidRequestError(
                f"Invalid '{param}' {effort!r}: use 'none', 'minimal', 'low', 'medium' or 'high'.",
                param=param,
            )
        return cls(enabled=True, budget=EFFORT_BUDGETS[effort], param=param, optional=optional)


@dataclass(frozen=True, slots=True)
class Conversation:
    """Everything one generation needs, whatever API asked for it."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    output_format: OutputFormat = field(default_factory=OutputFormat)
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None  # None: a preset's, else until the slot's context is full
    # The client asked for no limit (Ollama's num_predict -1 or -2): a preset's max_tokens too.
    unlimited: bool = False
    n: int = 1
    logprobs: int | None = None  # None: off; k: the sampled token's and k alternatives'
    user: str | None = None  # logged with the request id
    messages_param: str = "messages"  # where the messages came from, for errors
    reasoning: Reasoning = field(default_factory=Reasoning)
    template_kwargs: dict[str, Any] | None = None  # checked against what the template reads
    prediction: str | None = None  # the expected output (Predicted Outputs): speculation drafts
    # Fields the client sent that change nothing a local model can honour (client_metadata,
    # context_management…): accepted, then named in a debug line and the journal.
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RawPrompt:
    """Prompts run as they are, without the chat template or tools: OpenAI's completions and
    Ollama's raw /api/generate. Each prompt is text or token ids; a `suffix` asks the model to
    fill in the middle."""

    model: str
    prompts: tuple[str | tuple[int, ...], ...]
    suffix: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None  # None: a preset's, else `default_max_tokens`
    default_max_tokens: int | None = None  # completions' 16; None: until the context is full
    unlimited: bool = False  # as on Conversation: a preset's max_tokens stays off too
    n: int = 1
    best_of: int | None = None  # None: n; more: the n most likely of best_of choices
    logprobs: int | None = None  # None: off; k: the sampled token's and k alternatives'
    stream: bool = False  # best_of above n cannot stream
    user: str | None = None  # logged with the request id
