"""One path from a conversation to an engine request, whatever API it came in on.

`prepare_turn` renders the model's chat template, plans the tools and the grammar, resolves
sampling and limits against the slot's context, and builds the `GenerationRequest`. The
engine sees nothing else. API adapters (`openai_chat.py`, `ollama.py`, `openai_responses.py`,
`anthropic_messages.py`) only convert their wire types into a `Conversation`. For a reasoning
model it also sets the template's thinking switch and the engine's thinking budget.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hearth.engine.grammar import (
    SchemaNotSupportedError,
    SchemaTooLargeError,
    check_schema,
    json_schema_grammar,
    without_large_bounds,
    without_unenforced,
)
from hearth.engine.types import (
    GenerationRequest,
    Grammar,
    MediaInput,
    MediaSpan,
    ReasoningBudget,
    SamplingParams,
    media_token_ids,
)
from hearth.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from hearth.models.presets import Preset
from hearth.models.reasoning import ReasoningFormat, template_variables
from hearth.server.core.conversation import (
    Conversation,
    Message,
    OutputFormat,
    RawPrompt,
    Sampling,
    Tool,
)
from hearth.server.core.media import MEDIA_MARKER, MediaPart, load_media
from hearth.server.core.tools import ToolSpec, render_call, tool_grammar, tool_system_prompt
from hearth.server.http.journal import note_ignored
from hearth.server.state import LoadedModel, ServerState

__all__ = [
    "PreparedPrompt",
    "PreparedTurn",
    "check_token_ids",
    "choice_count",
    "count_prompt_tokens",
    "count_prompt_tokens_off_loop",
    "new_id",
    "prepare_raw",
    "prepare_turn",
    "preset_max_tokens",
    "preset_sampling",
    "sampling_params",
    "with_preset",
]

logger = logging.getLogger(__name__)

_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
T = TypeVar("T")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """A conversation made ready: the model to run it on, the engine request, and what the
    output may hold (tool calls to parse)."""

    model: LoadedModel
    request: GenerationRequest
    parse_tools: bool  # the model was offered tools, so its output may hold calls


def prepare_turn(
    state: ServerState,
    model: LoadedModel,
    conversation: Conversation,
    *,
    id_prefix: str,
    media: Sequence[tuple[MediaInput, int]] = (),
) -> PreparedTurn:
    """Template, tools, grammar, sampling and limits: the one place a turn is prepared, for the
    model the request holds (whose preset applies here, and only here). `media`: the
    conversation's images, checked, with the positions each takes (`prepare_turn_off_loop`)."""
    conversation = with_preset(conversation, model.preset)
    n = choice_count(model, conversation.n)
    plan = _tool_plan(conversation)
    format_grammar = _format_grammar(conversation.output_format)
    if plan.grammar is not None and format_grammar is not None:
        raise InvalidRequestError(
            f"'{conversation.output_format.param}' cannot be combined with tools the model may "
            "call; turn the tools off, or describe the format in the function's parameters.",
            param=conversation.output_format.param,
        )
    thinking = _thinking(model, conversation)
    ignored = conversation.ignored + thinking.ignored
    if ignored:
        logger.debug("Ignored for %s: %s", conversation.model, ", ".join(ignored))
        note_ignored(ignored)
    text = _render(model, conversation, plan, thinking.template_kwargs)
    tokens, spans = _tokenize_with_media(model, text, media, conversation.messages_param)
    reasoning = thinking.budget(model, text, state.settings.reasoning_budget)
    grammar = plan.grammar or format_grammar
    if grammar is not None and reasoning is not None:
        grammar = _after_reasoning(grammar, reasoning)
    params = sampling_params(
        model,
        conversation.sampling,
        len(tokens),
        conversation.max_tokens,
        what=conversation.messages_param,
        grammar=grammar,
        grammar_param=conversation.output_format.param,
        logprobs=conversation.logprobs,
        reasoning=reasoning,
    )
    request_id = new_id(id_prefix)
    if conversation.user is not None:
        logger.info("%s for user %r (n=%d)", request_id, conversation.user, n)
    return PreparedTurn(
        model,
        GenerationRequest(
            request_id,
            tuple(tokens),
            params,
            n=n,
            prediction=_prediction(model, conversation),
            media=spans,
        ),
        parse_tools=plan.offered,
    )


async def prepare_turn_off_loop(
    state: ServerState, model: LoadedModel, conversation: Conversation, *, id_prefix: str
) -> PreparedTurn:
    """`prepare_turn` on a worker thread: templating, tokenizing and building a grammar grow with
    the request, and a large one must cost its own latency only, never a neighbour's (the event
    loop serves every other client meanwhile). llama.cpp's tokenizer and grammar parser read
    the vocabulary only, so any thread may run them. Images are decoded and checked on a worker
    thread too; the model's runner says how many positions each takes."""
    parts = [part for message in conversation.messages for part in message.media]
    media: list[tuple[MediaInput, int]] = []
    if parts:
        media = await _measured_media(state, model, parts)
    return await asyncio.to_thread(
        prepare_turn, state, model, conversation, id_prefix=id_prefix, media=media
    )


async def _measured_media(
    state: ServerState, model: LoadedModel, parts: Sequence[MediaPart]
) -> list[tuple[MediaInput, int]]:
    for part in parts:
        if part.kind == "image" and not model.runner.vision:
            raise UnsupportedParameterError(
                f"'{part.param}' is an image, and the model `{model.model_id}` does not take "
                "images (it has no vision projector); send text only, or use a model that "
                "takes images.",
                param=part.param,
            )
        if part.kind == "audio":
            raise UnsupportedParameterError(
                f"'{part.param}' is audio, and the model `{model.model_id}` does not take audio.",
                param=part.param,
            )
    loaded = await asyncio.to_thread(
        load_media,
        parts,
        max_bytes=int(state.settings.max_image_bytes),
        fetch_urls=state.settings.allow_media_urls,
    )
    inputs = [MediaInput(item.key, item.data) for item in loaded]
    counts = await model.engine.media_tokens(inputs)
    measured = []
    for item, media_input, count in zip(loaded, inputs, counts, strict=True):
        if isinstance(count, str):  # llama.cpp could not decode it
            raise InvalidRequestError(
                f"'{item.part.param}' could not be decoded as an image: {count}",
                param=item.part.param,
                code="invalid_image",
            )
        measured.append((media_input, count))
    return measured


def _tokenize_with_media(
    model: LoadedModel, text: str, media: Sequence[tuple[MediaInput, int]], param: str
) -> tuple[list[int], tuple[MediaSpan, ...]]:
    """The rendered prompt, tokenized, with each image's positions where its marker was."""
    if not media:
        if MEDIA_MARKER in text:
            raise InvalidRequestError(
                f"The text may not contain {MEDIA_MARKER!r}: it marks where an image goes.",
                param=param,
            )
        return _tokenize(model, text), ()
    pieces = text.split(MEDIA_MARKER)
    if len(pieces) != len(media) + 1:
        raise InvalidRequestError(
            f"The text may not contain {MEDIA_MARKER!r}: it marks where an image goes.",
            param=param,
        )
    tokens = _tokenize(model, pieces[0])
    spans = []
    for (item, count), piece in zip(media, pieces[1:], strict=True):
        spans.append(MediaSpan(len(tokens), count, item))
        tokens.extend(media_token_ids(item.key, count))
        tokens.extend(model.runner.tokenize(piece, add_special=False, parse_special=True))
    return tokens, tuple(spans)


# -- raw prompts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedPrompt:
    """A raw prompt made ready: one engine request per prompt, each decoding best_of choices."""

    request_id: str
    model: LoadedModel
    requests: list[GenerationRequest]
    prompts: list[list[int]]
    n: int
    best_of: int


def prepare_raw(model: LoadedModel, raw: RawPrompt, *, id_prefix: str = "cmpl") -> PreparedPrompt:
    """Tokenize raw prompts (no template, no tools) and resolve their sampling and limits, the
    model's preset included: /v1/completions and Ollama's raw /api/generate. Blocking: it
    tokenizes, so call it off the event loop."""
    n = choice_count(model, raw.n)
    best_of = raw.best_of if raw.best_of is not None else n
    if best_of < n:
        raise InvalidRequestError("'best_of' must be at least 'n'.", param="best_of")
    if best_of > n and raw.stream:
        raise InvalidRequestError("'best_of' cannot be used with 'stream'.", param="best_of")
    choice_count(model, best_of, "best_of")
    prompts = _raw_tokens(model, raw)
    wants_logprobs = raw.logprobs is not None or best_of > n
    request_id = new_id(id_prefix)
    if raw.user is not None:
        logger.info("completion %s for user %r (n=%d)", request_id, raw.user, n)
    sampling = preset_sampling(raw.sampling, model.preset)
    max_tokens = preset_max_tokens(raw.max_tokens, model.preset, unlimited=raw.unlimited)
    if max_tokens is None:
        max_tokens = raw.default_max_tokens
    requests = [
        GenerationRequest(
            f"{request_id}-{i}" if len(prompts) > 1 else request_id,
            tuple(tokens),
            sampling_params(
                model,
                sampling,
                len(tokens),
                max_tokens,
                what="prompt",
                logprobs=(raw.logprobs or 0) if wants_logprobs else None,
            ),
            n=best_of,
        )
        for i, tokens in enumerate(prompts)
    ]
    return PreparedPrompt(request_id, model, requests, prompts, n, best_of)


def _raw_tokens(model: LoadedModel, raw: RawPrompt) -> list[list[int]]:
    """The prompts as token lists; a suffix wraps each in the model's fill-in-the-middle tokens."""
    if not raw.prompts:
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    fim = model.model_info.fim_tokens
    if raw.suffix is not None and fim is None:
        raise UnsupportedParameterError(
            "'suffix' is not supported: this model has no fill-in-the-middle tokens.",
            param="suffix",
        )
    token_lists = []
    for i, item in enumerate(raw.prompts):
        param = "prompt" if len(raw.prompts) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            add_special = raw.suffix is None
            tokens = model.runner.tokenize(item, add_special=add_special, parse_special=True)
        else:
            tokens = list(item)
            check_token_ids(model, tokens, param=param)
        if raw.suffix is not None and fim is not None:
            suffix = model.runner.tokenize(raw.suffix, add_special=False, parse_special=False)
            tokens = [fim[0], *tokens, fim[1], *suffix, fim[2]]
        if not tokens:
            raise InvalidRequestError("A prompt must not be empty.", param=param)
        token_lists.append(tokens)
    return token_lists


def with_preset(conversation: Conversation, preset: Preset | None) -> Conversation:
    """The preset's system prompt and sampling defaults where the conversation has none: what
    the client gave always wins, an explicit empty `stop` included."""
    if preset is None:
        return conversation
    messages = conversation.messages
    if preset.system and not any(m.role == "system" for m in messages):
        messages = (Message("system", preset.system), *messages)
    return replace(
        conversation,
        sampling=preset_sampling(conversation.sampling, preset),
        messages=messages,
        max_tokens=preset_max_tokens(
            conversation.max_tokens, preset, unlimited=conversation.unlimited
        ),
    )


def preset_max_tokens(
    max_tokens: int | None, preset: Preset | None, *, unlimited: bool
) -> int | None:
    """The client's limit, else the preset's, unless the client asked for none."""
    if max_tokens is not None or unlimited or preset is None:
        return max_tokens
    return preset.params.max_tokens


def preset_sampling(sampling: Sampling, preset: Preset | None) -> Sampling:
    """The preset's sampling defaults where the client gave none (a raw prompt's too)."""
    if preset is None:
        return sampling
    params = preset.params
    return replace(
        sampling,
        temperature=params.temperature if sampling.temperature is None else sampling.temperature,
        top_p=params.top_p if sampling.top_p is None else sampling.top_p,
        top_k=params.top_k if sampling.top_k is None else sampling.top_k,
        min_p=params.min_p if sampling.min_p is None else sampling.min_p,
        presence_penalty=(
            params.presence_penalty
            if sampling.presence_penalty is None
            else sampling.presence_penalty
        ),
        frequency_penalty=(
            params.frequency_penalty
            if sampling.frequency_penalty is None
            else sampling.frequency_penalty
        ),
        seed=params.seed if sampling.seed is None else sampling.seed,
        stop=_preset_stops(params.stop) if sampling.stop is None else sampling.stop,
    )


def _preset_stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


# -- limits and sampling -----------------------------------------------------------------------


def choice_count(model: LoadedModel, n: int, param: str = "n") -> int:
    """Choices decode side by side, one slot each, so at most one per slot."""
    if n > model.runner.n_slots:
        raise InvalidRequestError(
            f"'{param}' is {n}, but this server decodes at most {model.runner.n_slots} "
            f"choices at once (its --parallel slots).",
            param=param,
        )
    return n


def sampling_params(
    model: LoadedModel,
    sampling: Sampling,
    prompt_len: int,
    max_new: int | None,
    *,
    what: str,
    grammar: Grammar | None = None,
    grammar_param: str = "response_format",
    logprobs: int | None = None,
    reasoning: ReasoningBudget | None = None,
) -> SamplingParams:
    """Resolve limits against the slot's context: a prompt that does not fit is refused, never
    truncated. `max_new` is a ceiling, not a promise: past the room the context leaves, the
    generation runs to the end of the context and finishes with `length`, as llama-server and
    Ollama do (agents send a max_tokens as large as the model's context). `what` names the
    prompt's field ("messages", "prompt", "input"), for the error."""
    n_ctx = model.n_ctx_per_slot
    if prompt_len >= n_ctx:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens. However, your {what} "
            f"resulted in {prompt_len} tokens. Please reduce the length of the {what}.",
            param=what,
        )
    room = n_ctx - prompt_len
    defaults = SamplingParams(max_tokens=1)

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    if grammar is not None and not model.runner.check_grammar(grammar):
        raise InvalidRequestError(
            "llama.cpp could not compile the grammar made from this schema.", param=grammar_param
        )
    return SamplingParams(
        max_tokens=room if max_new is None else min(max_new, room),
        temperature=pick(sampling.temperature, defaults.temperature),
        top_p=pick(sampling.top_p, defaults.top_p),
        top_k=pick(sampling.top_k, defaults.top_k),
        min_p=pick(sampling.min_p, defaults.min_p),
        typical_p=pick(sampling.typical_p, defaults.typical_p),
        repeat_penalty=pick(sampling.repeat_penalty, defaults.repeat_penalty),
        presence_penalty=sampling.presence_penalty or 0.0,
        frequency_penalty=sampling.frequency_penalty or 0.0,
        mirostat=pick(sampling.mirostat, defaults.mirostat),
        mirostat_tau=pick(sampling.mirostat_tau, defaults.mirostat_tau),
        mirostat_eta=pick(sampling.mirostat_eta, defaults.mirostat_eta),
        seed=sampling.seed,
        stop=tuple(s for s in sampling.stop or () if s),
        logit_bias=_logit_bias(model, sampling.logit_bias),
        grammar=grammar,
        logprobs=logprobs,
        ignore_eos=sampling.ignore_eos,
        reasoning=reasoning,
    )


def _logit_bias(
    model: LoadedModel, logit_bias: dict[str, float] | None
) -> tuple[tuple[int, float], ...]:
    if not logit_bias:
        return ()
    n_vocab = model.runner.n_vocab
    biases = []
    for key, bias in logit_bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < n_vocab:
            raise InvalidRequestError(
                f"Invalid key in 'logit_bias': {key!r} is not a token id (0 to {n_vocab - 1}).",
                param="logit_bias",
            )
        if not -100.0 <= bias <= 100.0:
            raise InvalidRequestError(
                f"Invalid value in 'logit_bias' for token {key}: {bias} is outside -100 to 100.",
                param="logit_bias",
            )
        biases.append((int(key), float(bias)))
    return tuple(biases)


def check_token_ids(model: LoadedModel, tokens: Sequence[int], *, param: str) -> None:
    n_vocab = model.runner.n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"Token id {bad} is outside the vocabulary (0 to {n_vocab - 1}).", param=param
        )


# -- tools and output formats ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ToolPlan:
    """What the conversation's tools and tool choice mean for the prompt and the grammar."""

    specs: list[ToolSpec]
    offered: bool  # the model is told about the tools (tool choice is not "none")
    grammar: Grammar | None


def _tool_specs(tools: Sequence[Tool]) -> list[ToolSpec]:
    specs = []
    for tool in tools:
        if not _FUNCTION_NAME.match(tool.name):
            raise InvalidRequestError(
                "A function name must be 1 to 64 letters, digits, underscores or dashes.",
                param=f"{tool.param}.name",
            )
        specs.append(ToolSpec(tool.name, tool.description, tool.parameters))
    if len({s.name for s in specs}) != len(specs):
        raise InvalidRequestError("Function names must be unique.", param="tools")
    return specs


def _schema_param(schema_param: str, exc: SchemaNotSupportedError) -> str:
    """The wire path of the schema's part an error names: a too-large bound by its keyword."""
    if isinstance(exc, SchemaTooLargeError):
        return schema_param + exc.path.removeprefix("schema")
    return schema_param


def _tool_plan(conversation: Conversation, *, build_grammar: bool = True) -> _ToolPlan:
    """`build_grammar=False`: the prompt's part only (count_tokens), no schema checked."""
    if not conversation.tools:
        return _ToolPlan([], offered=False, grammar=None)
    specs = _tool_specs(conversation.tools)
    choice = conversation.tool_choice
    if choice.mode == "none":
        return _ToolPlan(specs, offered=False, grammar=None)
    callable_specs = specs
    if choice.mode == "named":
        callable_specs = [s for s in specs if s.name == choice.name]
        if not callable_specs:
            raise InvalidRequestError(
                f"'{choice.param}' names the function {choice.name!r}, which is not in 'tools'.",
                param=choice.param,
            )
    if not build_grammar:  # count_tokens: nothing is generated, so no schema is refused
        return _ToolPlan(specs, offered=True, grammar=None)
    grammar_specs = []
    for tool, spec in zip(conversation.tools, specs, strict=True):
        if spec not in callable_specs:
            continue
        if not tool.strict:
            # Only a strict tool promises its schema whole: the grammar leaves out bounds past
            # the limits and keywords it cannot enforce (a float bound, a format).
            parameters, large = without_large_bounds(spec.parameters)
            parameters, unenforced = without_unenforced(parameters)
            if large or unenforced:
                logger.info(
                    "%s is not strict: its grammar leaves out %s",
                    spec.name,
                    ", ".join(large + unenforced),
                )
                spec = replace(spec, parameters=parameters)
        try:
            check_schema(spec.parameters)
        except SchemaNotSupportedError as exc:
            raise InvalidRequestError(
                f"The {tool.schema_field} schema of {spec.name!r} cannot be enforced: {exc}",
                param=_schema_param(f"{tool.param}.{tool.schema_field}", exc),
            ) from exc
        grammar_specs.append(spec)
    try:
        grammar = tool_grammar(
            grammar_specs,
            lazy=choice.mode == "auto",
            parallel=choice.parallel and choice.mode != "named",
        )
    except SchemaNotSupportedError as exc:  # the converter itself failed on a checked schema
        raise InvalidRequestError(
            f"A function's parameters schema cannot be enforced: {exc}", param="tools"
        ) from exc
    return _ToolPlan(specs, offered=True, grammar=grammar)


def _format_grammar(output_format: OutputFormat) -> Grammar | None:
    if output_format.kind == "text":
        return None
    if output_format.kind == "json_object":
        return json_schema_grammar({"type": "object"})
    schema = {"type": "object"} if output_format.schema is None else output_format.schema
    if not output_format.strict and isinstance(schema, dict):
        schema, unenforced = without_unenforced(schema)
        if unenforced:
            logger.info(
                "The schema is not strict: its grammar leaves out %s", ", ".join(unenforced)
            )
    try:
        return json_schema_grammar(schema)
    except SchemaNotSupportedError as exc:
        raise InvalidRequestError(
            f"The schema cannot be enforced: {exc}",
            param=f"{output_format.schema_param}.{exc.path}",
        ) from exc


# -- the prompt --------------------------------------------------------------------------------


def _result_id(message: Message) -> str:
    """The call a tool result answers: its id, or for an API without call ids (Ollama's), the
    function's name."""
    if message.tool_call_id is not None:
        return message.tool_call_id
    return message.tool_name or "tool"


def _template_messages(
    messages: Sequence[Message], model: LoadedModel, tools: _ToolPlan, messages_param: str
) -> list[dict[str, object]]:
    if not messages:
        raise InvalidRequestError(
            f"'{messages_param}' must contain at least one message.",
            param=messages_param,
            code="empty_array",
        )
    native = model.chat_template.renders_tool_calls
    rendered: list[dict[str, object]] = []
    for message in messages:
        if message.role == "tool":
            if native:
                rendered.append(
                    {"role": "tool", "content": message.text, "tool_call_id": _result_id(message)}
                )
                continue
            # Hermes' layout: a tool's answer comes back in the user's turn.
            response = f"<tool_response>\n{message.text}\n</tool_response>"
            last = rendered[-1] if rendered else None
            if last is not None and last["role"] == "user":
                last["content"] = f"{last['content']}\n{response}"
            else:
                rendered.append({"role": "user", "content": response})
            continue
        if message.role == "assistant" and message.tool_calls:
            if native:
                rendered.append(
                    {
                        "role": "assistant",
                        "content": message.text,
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": c.name, "arguments": _loads(c.arguments)},
                            }
                            for c in message.tool_calls
                        ],
                    }
                )
            else:
                written = "\n".join(render_call(c.name, c.arguments) for c in message.tool_calls)
                rendered.append(
                    {"role": "assistant", "content": (message.text + "\n" + written).strip()}
                )
            continue
        rendered.append({"role": message.role, "content": message.text})
    if tools.offered and not native:
        prompt = tool_system_prompt(tools.specs)
        if rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{prompt}\n\n{rendered[0]['content']}"
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def _loads(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _render(
    model: LoadedModel,
    conversation: Conversation,
    plan: _ToolPlan,
    template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The conversation through the model's chat template."""
    messages = _template_messages(conversation.messages, model, plan, conversation.messages_param)
    native_tools = None
    if plan.offered and model.chat_template.renders_tool_calls:
        native_tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in plan.specs
        ]
    return model.chat_template.render(
        messages, add_generation_prompt=True, tools=native_tools, extra=template_kwargs
    )


def _prediction(model: LoadedModel, conversation: Conversation) -> tuple[int, ...]:
    # Plain text, as the model would write it: special tokens are not parsed from it.
    if not conversation.prediction:
        return ()
    tokens = model.runner.tokenize(conversation.prediction, add_special=False, parse_special=False)
    return tuple(tokens)


def _tokenize(model: LoadedModel, text: str) -> list[int]:
    info = model.model_info
    if info.add_bos and text.startswith(info.bos_text):
        text = text[len(info.bos_text) :]  # tokenize adds it; never two
    return model.runner.tokenize(text, add_special=True, parse_special=True)


# -- reasoning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Thinking:
    """A reasoning model's thinking for one request: the template's switch, and the budget."""

    format: ReasoningFormat | None
    enabled: bool
    requested_budget: int | None
    template_kwargs: dict[str, Any] | None
    ignored: tuple[str, ...] = ()  # an optional ask for thinking of a model that cannot

    def budget(self, model: LoadedModel, prompt: str, default: int) -> ReasoningBudget | None:
        """What the engine keeps in budget; None when the output holds no thinking block."""
        fmt = self.format
        if fmt is None:
            return None
        starts_open = prompt.rstrip().endswith(fmt.open_tag)
        if not self.enabled and fmt.switch is not None and not starts_open:
            return None  # the template turned thinking off: the model answers at once
        budget = self.requested_budget if self.requested_budget is not None else default
        # Only the tag: a grammar that starts after it would refuse anything more written for
        # the model (llama.cpp aborts on a token its grammar rejects).
        close = model.runner.tokenize(fmt.close_tag, add_special=False, parse_special=True)
        return ReasoningBudget(
            fmt.open_tag,
            fmt.close_tag,
            tuple(close),
            # Off with no switch in the template: the block is closed as soon as it opens.
            budget if self.enabled else 0,
            starts_open,
        )


def _thinking(model: LoadedModel, conversation: Conversation) -> _Thinking:
    template = model.chat_template
    kwargs = dict(conversation.template_kwargs or {})
    if kwargs:
        readable = template_variables(template)
        for key in kwargs:
            if key not in readable:
                raise UnsupportedParameterError(
                    f"The model's chat template does not read {key!r}.",
                    param=f"chat_template_kwargs.{key}",
                )
    requested = conversation.reasoning
    fmt = template.reasoning
    if fmt is None:
        if requested.enabled and requested.optional:
            return _Thinking(None, False, None, kwargs or None, (requested.param,))
        if requested.enabled:
            raise UnsupportedParameterError(
                f"'{requested.param}' is not supported: this model does not reason before "
                "answering.",
                param=requested.param,
            )
        return _Thinking(None, False, None, kwargs or None)
    enabled = requested.enabled if requested.enabled is not None else True
    if fmt.switch is not None:
        if fmt.switch in kwargs and requested.enabled is None:
            enabled = bool(kwargs[fmt.switch])
        kwargs[fmt.switch] = enabled
    return _Thinking(fmt, enabled, requested.budget, kwargs or None)


def _after_reasoning(grammar: Grammar, reasoning: ReasoningBudget) -> Grammar:
    """The grammar, applied to the answer only: llama.cpp's lazy grammar starts once the
    thinking block is closed. Its constrained text begins at the trigger's first non-empty
    group (an empty one would hand it the whole thinking), so a grammar that constrains the
    whole answer starts at the close tag itself and takes a little whitespace after it.

    When the prompt leaves the block closed, the model may think or answer at once: then the
    whole output is constrained, an optional block (without '<' inside, so that its close is
    the first '<') before the answer, since a lazy grammar would never start on a model that
    never writes the close tag."""
    close_tag = reasoning.close_text
    close = re.escape(close_tag)
    if grammar.triggers:  # already lazy (tools under "auto"): its own group follows the close
        triggers = tuple(rf"[\s\S]*?{close}{trigger}" for trigger in grammar.triggers)
        return replace(grammar, triggers=triggers)
    rule = "hearth-after-thinking"
    after_close = f"{json.dumps(close_tag)} [ \\t\\n]{{0,4}} {grammar.root}"
    if not reasoning.starts_open:
        block = f"{json.dumps(reasoning.open_text)} [^<]* {after_close}"
        gbnf = f"{grammar.gbnf}\n{rule} ::= {block} | {grammar.root}\n"
        return Grammar(gbnf, rule)
    gbnf = f"{grammar.gbnf}\n{rule} ::= {after_close}\n"
    return Grammar(gbnf, rule, (rf"[\s\S]*?({close}[\s\S]*)",))


def count_prompt_tokens(
    model: LoadedModel, conversation: Conversation, media: Sequence[tuple[MediaInput, int]] = ()
) -> int:
    """The exact prompt length `prepare_turn` would send (Anthropic's count_tokens), images'
    positions included (`media`, measured by `count_prompt_tokens_off_loop`)."""
    conversation = with_preset(conversation, model.preset)
    plan = _tool_plan(conversation, build_grammar=False)
    text = _render(model, conversation, plan, _thinking(model, conversation).template_kwargs)
    tokens, _ = _tokenize_with_media(model, text, media, conversation.messages_param)
    return len(tokens)


async def count_prompt_tokens_off_loop(
    state: ServerState, model: LoadedModel, conversation: Conversation
) -> int:
    """`count_prompt_tokens` on a worker thread, with the images measured by the runner."""
    parts = [part for message in conversation.messages for part in message.media]
    media = await _measured_media(state, model, parts) if parts else []
    return await asyncio.to_thread(count_prompt_tokens, model, conversation, media)
