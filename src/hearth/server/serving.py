"""OpenAI serving: a validated wire request in, an engine request out, and back again.

All JSON, chat-template, tool and schema work happens here, on the request side; the engine only
sees `GenerationRequest`. Routes stay thin and call `serve_chat` / `serve_completion`.
Every spec field is either honoured or refused with a 400 naming it (`_refuse_*`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth import __version__
from hearth.engine.grammar import SchemaNotSupportedError, check_schema, json_schema_grammar
from hearth.engine.types import (
    FinishReason,
    GenerationRequest,
    Grammar,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from hearth.errors import (
    ClientDisconnectedError,
    ContextLengthExceededError,
    HearthError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from hearth.protocol import openai as wire
from hearth.protocol.openai import (
    AssistantMessage,
    ChatCompletionRequest,
    CompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    TextContentPart,
    ToolMessage,
)
from hearth.server.errors import sse_error_event
from hearth.server.state import LoadedModel, ServerState
from hearth.server.tools import (
    ParsedCall,
    ToolCallParser,
    ToolSpec,
    render_call,
    tool_grammar,
    tool_system_prompt,
)

__all__ = [
    "CollectedChoice",
    "PreparedChat",
    "PreparedCompletion",
    "UsageTotals",
    "check_token_ids",
    "collect",
    "merged_outputs",
    "prepare_chat",
    "prepare_completion",
    "serve_chat",
    "serve_completion",
    "split_tool_calls",
    "started",
    "until_disconnect",
]

logger = logging.getLogger(__name__)

SYSTEM_FINGERPRINT = f"hearth-{__version__}"
MAX_STOP_SEQUENCES = 4
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
T = TypeVar("T")


# -- parsing at the edge -----------------------------------------------------------------------


def _unsupported(param: str, why: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(f"'{param}' is not supported: {why}", param=param)


def _stop_sequences(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequestError(
            f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}.", param="stop"
        )
    return tuple(s for s in stops if s)


def _check_stream_options(stream: bool | None, options: object | None) -> None:
    if options is not None and not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def _choice_count(model: LoadedModel, n: int | None, param: str = "n") -> int:
    """Choices decode side by side, one slot each, so at most one per slot."""
    count = 1 if n is None else n
    if count > model.runner.n_slots:
        raise InvalidRequestError(
            f"'{param}' is {count}, but this server decodes at most {model.runner.n_slots} "
            f"choices at once (its --parallel slots).",
            param=param,
        )
    return count


def _sampling_params(
    model: LoadedModel,
    req: ChatCompletionRequest | CompletionRequest,
    prompt_len: int,
    max_new: int | None,
    *,
    what: str,
    grammar: Grammar | None = None,
    logprobs: int | None = None,
    limit_param: str = "max_tokens",
) -> SamplingParams:
    """Resolve limits against the slot's context: refuse, never truncate silently.
    `limit_param` names the field that set `max_new`, for the error."""
    n_ctx = model.n_ctx_per_slot
    if prompt_len >= n_ctx:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens. However, your {what} "
            f"resulted in {prompt_len} tokens. Please reduce the length of the {what}.",
            param="messages" if what == "messages" else "prompt",
        )
    if max_new is not None and prompt_len + max_new > n_ctx:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_len + max_new} tokens ({prompt_len} in the {what}, {max_new} in the "
            f"completion). Please reduce the length of the {what} or completion.",
            param=limit_param,
        )
    defaults = SamplingParams(max_tokens=1)

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    return SamplingParams(
        max_tokens=max_new if max_new is not None else n_ctx - prompt_len,
        temperature=pick(req.temperature, defaults.temperature),
        top_p=pick(req.top_p, defaults.top_p),
        top_k=pick(req.top_k, defaults.top_k),
        min_p=pick(req.min_p, defaults.min_p),
        typical_p=pick(req.typical_p, defaults.typical_p),
        repeat_penalty=pick(req.repeat_penalty, defaults.repeat_penalty),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        mirostat=pick(req.mirostat, defaults.mirostat),
        mirostat_tau=pick(req.mirostat_tau, defaults.mirostat_tau),
        mirostat_eta=pick(req.mirostat_eta, defaults.mirostat_eta),
        seed=req.seed,
        stop=_stop_sequences(req.stop),
        logit_bias=_logit_bias(model, req.logit_bias),
        grammar=_checked_grammar(model, grammar),
        logprobs=logprobs,
        ignore_eos=bool(req.ignore_eos),
    )


def _checked_grammar(model: LoadedModel, grammar: Grammar | None) -> Grammar | None:
    if grammar is not None and not model.runner.check_grammar(grammar):
        raise InvalidRequestError(
            "llama.cpp could not compile the grammar made from this schema.",
            param="response_format",
        )
    return grammar


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


def check_token_ids(model: LoadedModel, tokens: list[int], *, param: str) -> None:
    n_vocab = model.runner.n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"Token id {bad} is outside the vocabulary (0 to {n_vocab - 1}).", param=param
        )


def _refuse_unservable_chat_fields(req: ChatCompletionRequest) -> None:
    """Fields Hearth cannot honour for any local text model: refused by name, never ignored."""
    if req.functions:
        raise _unsupported("functions", "it is deprecated; send 'tools' instead.")
    if req.function_call is not None:
        raise _unsupported("function_call", "it is deprecated; send 'tool_choice' instead.")
    if req.audio is not None:
        raise _unsupported("audio", "this model produces text only.")
    if req.modalities and any(m != "text" for m in req.modalities):
        raise _unsupported("modalities", "this model produces text only.")
    if req.prediction is not None:
        raise _unsupported("prediction", "predicted outputs are not served.")
    if req.web_search_options is not None:
        raise _unsupported("web_search_options", "a local server does not search the web.")
    if req.reasoning_effort is not None:
        raise _unsupported("reasoning_effort", "this model does not reason before answering.")
    if req.verbosity not in (None, "medium"):
        raise _unsupported("verbosity", "this model has no verbosity control.")
    if req.store:
        raise _unsupported("store", "Hearth keeps no completions; send store=false or omit it.")
    if req.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier", "a local server has one tier ('default').")
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
        )


# -- chat: messages, tools, response formats ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ToolPlan:
    """What the request's tools and tool_choice mean for the prompt and the grammar."""

    specs: list[ToolSpec]
    offered: bool  # the model is told about the tools (tool_choice is not "none")
    grammar: Grammar | None
    forced: str | None = None  # what the prompt says the model must call, if it must


def _tool_specs(tools: list[dict[str, Any]]) -> list[ToolSpec]:
    specs = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequestError(
                "Each tool must be {'type': 'function', 'function': {...}}.", param=param
            )
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise InvalidRequestError(
                "A function name must be 1 to 64 letters, digits, underscores or dashes.",
                param=f"{param}.function.name",
            )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise InvalidRequestError(
                "'parameters' must be a JSON Schema object.", param=f"{param}.function.parameters"
            )
        description = function.get("description", "")
        specs.append(
            ToolSpec(name, description if isinstance(description, str) else "", parameters)
        )
    if len({s.name for s in specs}) != len(specs):
        raise InvalidRequestError("Function names must be unique.", param="tools")
    return specs


def _tool_plan(req: ChatCompletionRequest) -> _ToolPlan:
    if req.tool_choice is not None and not req.tools:
        raise InvalidRequestError(
            "'tool_choice' is only allowed when 'tools' are specified.", param="tool_choice"
        )
    if not req.tools:
        if req.parallel_tool_calls is not None:
            raise InvalidRequestError(
                "'parallel_tool_calls' is only allowed when 'tools' are specified.",
                param="parallel_tool_calls",
            )
        return _ToolPlan([], offered=False, grammar=None)
    specs = _tool_specs(req.tools)
    choice = req.tool_choice if req.tool_choice is not None else "auto"
    if choice == "none":
        return _ToolPlan(specs, offered=False, grammar=None)
    callable_specs = specs
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise InvalidRequestError(
                "'tool_choice' must be 'none', 'auto', 'required' or "
                "{'type': 'function', 'function': {'name': ...}}.",
                param="tool_choice",
            )
        callable_specs = [s for s in specs if s.name == name]
        if not callable_specs:
            raise InvalidRequestError(
                f"'tool_choice' names the function {name!r}, which is not in 'tools'.",
                param="tool_choice",
            )
    elif choice not in ("auto", "required"):
        raise InvalidRequestError(
            f"Invalid 'tool_choice' {choice!r}: use 'none', 'auto', 'required' or a function.",
            param="tool_choice",
        )
    for index, spec in enumerate(specs):
        if spec in callable_specs:
            try:
                check_schema(spec.parameters)
            except SchemaNotSupportedError as exc:
                raise InvalidRequestError(
                    f"The parameters schema of {spec.name!r} cannot be enforced: {exc}",
                    param=f"tools[{index}].function.parameters",
                ) from exc
    try:
        grammar = tool_grammar(
            callable_specs,
            lazy=choice == "auto",
            parallel=req.parallel_tool_calls is not False and not isinstance(choice, dict),
        )
    except SchemaNotSupportedError as exc:  # the converter itself failed on a checked schema
        raise InvalidRequestError(
            f"A function's parameters schema cannot be enforced: {exc}", param="tools"
        ) from exc
    forced = None
    if isinstance(choice, dict):
        forced = callable_specs[0].name
    elif choice == "required":
        forced = "that fits best"
    return _ToolPlan(specs, offered=True, grammar=grammar, forced=forced)


def _format_grammar(response_format: dict[str, Any] | None) -> Grammar | None:
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_schema_grammar({"type": "object"})
    if kind != "json_schema":
        raise InvalidRequestError(
            f"Invalid 'response_format.type' {kind!r}: use 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequestError(
            "'response_format.json_schema' must be an object with a 'name' and a 'schema'.",
            param="response_format.json_schema",
        )
    schema = spec.get("schema", {"type": "object"})
    try:
        return json_schema_grammar(schema)
    except SchemaNotSupportedError as exc:
        raise InvalidRequestError(
            f"The schema cannot be enforced: {exc}",
            param=f"response_format.json_schema.{exc.path}",
        ) from exc


def _message_text(content: object, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    assert isinstance(content, list)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, TextContentPart):
            raise UnsupportedParameterError(
                f"Content parts of type '{part.type}' are not supported by this model; "
                "send text parts only.",
                param=f"{param}.content[{j}]",
            )
        texts.append(part.text)
    return "".join(texts)


def _earlier_calls(message: AssistantMessage, param: str) -> list[tuple[str, str]]:
    calls = []
    for j, call in enumerate(message.tool_calls or []):
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequestError(
                "A tool call needs a 'function' with a 'name' and 'arguments'.",
                param=f"{param}.tool_calls[{j}]",
            )
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append((function["name"], arguments))
    return calls


def _template_messages(
    req: ChatCompletionRequest, model: LoadedModel, tools: _ToolPlan
) -> list[dict[str, Any]]:
    if not req.messages:
        raise InvalidRequestError(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    native = model.chat_template.renders_tool_calls
    rendered: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        param = f"messages[{i}]"
        if isinstance(message, FunctionMessage):
            raise _unsupported(f"{param}.role", "'function' messages are deprecated; use 'tool'.")
        text = _message_text(message.content, param)
        if isinstance(message, ToolMessage):
            if native:
                rendered.append(
                    {"role": "tool", "content": text, "tool_call_id": message.tool_call_id}
                )
                continue
            # Hermes' layout: a tool's answer comes back in the user's turn.
            response = f"<tool_response>\n{text}\n</tool_response>"
            if rendered and rendered[-1]["role"] == "user":
                rendered[-1]["content"] += "\n" + response
            else:
                rendered.append({"role": "user", "content": response})
            continue
        if isinstance(message, AssistantMessage) and message.tool_calls:
            calls = _earlier_calls(message, param)
            if native:
                rendered.append(
                    {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [
                            {"type": "function", "function": {"name": n, "arguments": _loads(a)}}
                            for n, a in calls
                        ],
                    }
                )
            else:
                written = "\n".join(render_call(n, a) for n, a in calls)
                rendered.append({"role": "assistant", "content": (text + "\n" + written).strip()})
            continue
        # Most templates know no 'developer' role: it is OpenAI's new name for 'system'.
        role = "system" if isinstance(message, DeveloperMessage) else message.role
        rendered.append({"role": role, "content": text})
    if tools.offered and not native:
        prompt = tool_system_prompt(tools.specs, tools.forced)
        if rendered[0]["role"] == "system":
            rendered[0]["content"] = prompt + "\n\n" + rendered[0]["content"]
        else:
            rendered.insert(0, {"role": "system", "content": prompt})
    return rendered


def _loads(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _chat_prompt_tokens(
    model: LoadedModel, req: ChatCompletionRequest, tools: _ToolPlan
) -> list[int]:
    messages = _template_messages(req, model, tools)
    native_tools = None
    if tools.offered and model.chat_template.renders_tool_calls:
        native_tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in tools.specs
        ]
    text = model.chat_template.render(messages, add_generation_prompt=True, tools=native_tools)
    info = model.model_info
    if info.add_bos and text.startswith(info.bos_text):
        text = text[len(info.bos_text) :]  # tokenize adds it; never two
    return model.runner.tokenize(text, add_special=True, parse_special=True)


# -- running a request -------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass(slots=True)
class CollectedChoice:
    """One choice's output, gathered for a reply that is not streamed."""

    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(slots=True)
class UsageTotals:
    """Usage over a request's choices (and its prompts, for a list of prompts)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: dict[int, int] = field(default_factory=dict)  # by choice index
    prompts_seen: set[int] = field(default_factory=set)

    def add(self, output: RequestOutput, prompt_index: int) -> None:
        if prompt_index not in self.prompts_seen:
            self.prompts_seen.add(prompt_index)
            self.prompt_tokens += output.prompt_tokens
            self.cached_tokens += output.cached_tokens
        self.completion_tokens[output.index] = output.completion_tokens

    def usage(self) -> wire.Usage:
        completion = sum(self.completion_tokens.values())
        return wire.Usage(
            completion_tokens=completion,
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=self.cached_tokens),
        )


def _finish_reason(reason: FinishReason | None) -> Literal["stop", "length"]:
    assert reason in (FinishReason.STOP, FinishReason.LENGTH)
    return "stop" if reason is FinishReason.STOP else "length"


async def merged_outputs(
    model: LoadedModel, requests: Sequence[GenerationRequest]
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several engine requests as one stream, as (prompt index, output) with each
    output's index made unique across the requests. Leaving early aborts them all."""
    if len(requests) == 1:
        async for output in model.engine.generate(requests[0]):
            yield 0, output
        return
    queue: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = asyncio.Queue()

    async def pump(prompt_index: int, request: GenerationRequest) -> None:
        try:
            offset = sum(r.n for r in requests[:prompt_index])
            async for output in model.engine.generate(request):
                output.index += offset
                await queue.put((prompt_index, output))
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    on_output: Callable[[], None] | None = None,
) -> tuple[dict[int, CollectedChoice], UsageTotals]:
    """Every output of the requests, gathered per choice. `on_output` runs as each arrives (the
    Ollama API times its first token with it)."""
    choices: dict[int, CollectedChoice] = {}
    totals = UsageTotals()
    async for prompt_index, output in merged_outputs(model, requests):
        if on_output is not None:
            on_output()
        choice = choices.setdefault(output.index, CollectedChoice())
        choice.pieces.append(output.text)
        choice.logprobs.extend(output.logprobs)
        choice.completion_tokens = output.completion_tokens
        if output.finish_reason is not None:
            choice.finish_reason = output.finish_reason
        totals.add(output, prompt_index)
    return choices, totals


async def until_disconnect(http_request: Request, work: Awaitable[T]) -> T:
    """Run `work`, cancelling it (and so aborting its engine request) if the client leaves."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body is already read, so the next ASGI message is the client leaving.
        while (await http_request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()  # the handler itself was cancelled (a server stop): never orphan the work
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()  # aborts the engine request
        raise ClientDisconnectedError("The client closed the connection.")
    return task.result()


async def started(http_request: Request, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for a stream's first output before sending headers, so that a refusal (429, a queue
    timeout's 503, an engine error) is a real HTTP status, not an event in a 200 stream."""
    first = await until_disconnect(http_request, anext(outputs))

    async def chained() -> AsyncIterator[T]:
        yield first
        async for output in outputs:
            yield output

    return chained()


def _sse(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _ContentChunk:
    """A stream's text-only event, serialized once: each token then costs one `json.dumps` of
    its text instead of building and dumping the pydantic chunk (the hot path of a stream)."""

    def __init__(self, render_with: Callable[[str], bytes]) -> None:
        marker = f"hearth-content-{uuid.uuid4().hex}"
        event = render_with(marker)
        self._head, found, self._tail = event.partition(json.dumps(marker).encode())
        if not found:
            raise ValueError("the rendered event does not hold the marker as a JSON string")

    def render(self, text: str) -> bytes:
        return self._head + json.dumps(text, ensure_ascii=False).encode() + self._tail


async def _guarded_stream(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the headers went out becomes an error event, then the stream ends."""
    try:
        async for event in events:
            yield event
    except HearthError as error:
        yield sse_error_event(error)
    except Exception:
        logger.exception("stream failed after its headers were sent")
        yield sse_error_event(HearthError("The server had an error while streaming."))


def _streaming_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        _guarded_stream(events), media_type="text/event-stream", headers=_SSE_HEADERS
    )


def _piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


def _chat_logprobs(entries: Sequence[TokenLogprob]) -> wire.ChoiceLogprobs:
    return wire.ChoiceLogprobs(
        content=[
            wire.TokenLogprob(
                token=_piece_text(entry.piece),
                bytes=list(entry.piece),
                logprob=entry.logprob,
                top_logprobs=[
                    wire.TopLogprob(token=_piece_text(piece), bytes=list(piece), logprob=lp)
                    for _, piece, lp in entry.top
                ],
            )
            for entry in entries
        ]
    )


def _log_request(kind: str, request_id: str, user: str | None, n: int) -> None:
    if user is not None:
        logger.info("%s %s for user %r (n=%d)", kind, request_id, user, n)


# -- chat --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """A chat request parsed at the edge: the model to run it on and the engine request."""

    model: LoadedModel
    request: GenerationRequest
    parse_tools: bool  # the output may hold tool calls to parse
    logprobs: bool


def prepare_chat(state: ServerState, req: ChatCompletionRequest) -> PreparedChat:
    """Validate, template and tokenize a chat request. Shared by /v1 and the Ollama API."""
    model = state.model_for(req.model)
    _refuse_unservable_chat_fields(req)
    _check_stream_options(req.stream, req.stream_options)
    n = _choice_count(model, req.n)
    tools = _tool_plan(req)
    format_grammar = _format_grammar(req.response_format)
    if tools.grammar is not None and format_grammar is not None:
        raise InvalidRequestError(
            "'response_format' cannot be combined with tools the model may call; send "
            "tool_choice='none', or describe the format in the function's parameters.",
            param="response_format",
        )
    tokens = _chat_prompt_tokens(model, req, tools)
    newer_limit = req.max_completion_tokens is not None
    params = _sampling_params(
        model,
        req,
        len(tokens),
        req.max_completion_tokens if newer_limit else req.max_tokens,
        what="messages",
        limit_param="max_completion_tokens" if newer_limit else "max_tokens",
        grammar=tools.grammar or format_grammar,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
    )
    completion_id = _new_id("chatcmpl")
    _log_request("chat completion", completion_id, req.user or req.safety_identifier, n)
    request = GenerationRequest(completion_id, tuple(tokens), params, n=n)
    return PreparedChat(model, request, parse_tools=tools.offered, logprobs=bool(req.logprobs))


async def serve_chat(
    state: ServerState, req: ChatCompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    chat = prepare_chat(state, req)
    completion_id = chat.request.request_id
    created = int(time.time())

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await started(http_request, merged_outputs(chat.model, [chat.request]))
        events = _stream_chat(
            outputs, completion_id, created, req.model, include_usage, parse_tools=chat.parse_tools
        )
        return _streaming_response(events)

    choices, totals = await until_disconnect(http_request, collect(chat.model, [chat.request]))
    body = wire.ChatCompletion(
        id=completion_id,
        choices=[
            _chat_choice(index, choice, parse_tools=chat.parse_tools, logprobs=chat.logprobs)
            for index, choice in sorted(choices.items())
        ],
        created=created,
        model=req.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        usage=totals.usage(),
    )
    return JSONResponse(body.model_dump(mode="json"))


def split_tool_calls(text: str) -> tuple[str | None, list[ParsedCall]]:
    """A whole output's text content (None when it is only calls) and its tool calls."""
    parser = ToolCallParser()
    kept = [value for kind, value in parser.feed(text) if kind == "content"]
    kept += [value for kind, value in parser.finish() if kind == "content"]
    calls = parser.calls
    return ("".join(kept) if kept or not calls else None), calls


def _chat_choice(
    index: int, choice: CollectedChoice, *, parse_tools: bool, logprobs: bool
) -> wire.ChatChoice:
    content: str | None = choice.text
    calls: list[ParsedCall] = []
    if parse_tools:
        content, calls = split_tool_calls(choice.text)
    finish: Any = _finish_reason(choice.finish_reason)
    if calls and finish == "stop":
        finish = "tool_calls"
    return wire.ChatChoice(
        finish_reason=finish,
        index=index,
        logprobs=_chat_logprobs(choice.logprobs) if logprobs else None,
        message=wire.ResponseMessage(
            content=content,
            tool_calls=[
                wire.ToolCall(
                    id=call.id, function=wire.FunctionCall(arguments=call.arguments, name=call.name)
                )
                for call in calls
            ]
            or None,
        ),
    )


async def _stream_chat(
    outputs: AsyncIterator[tuple[int, RequestOutput]],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    *,
    parse_tools: bool,
) -> AsyncIterator[bytes]:
    def chunk(
        index: int,
        delta: wire.ChunkDelta,
        finish: Any = None,
        logprobs: Sequence[TokenLogprob] | None = None,
    ) -> bytes:
        return _sse(
            wire.ChatCompletionChunk(
                id=completion_id,
                choices=[
                    wire.ChunkChoice(
                        delta=delta,
                        finish_reason=finish,
                        index=index,
                        logprobs=_chat_logprobs(logprobs) if logprobs else None,
                    )
                ],
                created=created,
                model=model,
                system_fingerprint=SYSTEM_FINGERPRINT,
            ).model_dump_json(exclude={"usage"} if not include_usage else None)
        )

    def tool_events(index: int, events: Sequence[tuple[str, Any]]) -> list[bytes]:
        sent = []
        for kind, value in events:
            if kind == "content":
                sent.append(chunk(index, wire.ChunkDelta(content=value)))
            elif kind == "call":
                delta = wire.ToolCallDelta(
                    index=value.index,
                    id=value.id,
                    type="function",
                    function=wire.FunctionCallDelta(name=value.name, arguments=""),
                )
                sent.append(chunk(index, wire.ChunkDelta(tool_calls=[delta])))
            else:
                call_index = parsers[index].calls[-1].index
                delta = wire.ToolCallDelta(
                    index=call_index, function=wire.FunctionCallDelta(arguments=value)
                )
                sent.append(chunk(index, wire.ChunkDelta(tool_calls=[delta])))
        return sent

    content_chunks: dict[int, _ContentChunk] = {}

    def content(index: int, text: str) -> bytes:
        template = content_chunks.get(index)
        if template is None:
            template = content_chunks[index] = _ContentChunk(
                lambda marker: chunk(index, wire.ChunkDelta(content=marker))
            )
        return template.render(text)

    parsers: dict[int, ToolCallParser] = {}
    totals = UsageTotals()
    async for prompt_index, output in outputs:
        index = output.index
        totals.add(output, prompt_index)
        if index not in parsers:
            parsers[index] = ToolCallParser()
            yield chunk(index, wire.ChunkDelta(role="assistant", content=""))
        if parse_tools:
            events = list(parsers[index].feed(output.text))
            if output.finish_reason is not None:
                events += parsers[index].finish()
            for event in tool_events(index, events):
                yield event
            if output.logprobs:
                yield chunk(index, wire.ChunkDelta(), logprobs=output.logprobs)
        elif output.logprobs:
            yield chunk(index, wire.ChunkDelta(content=output.text), logprobs=output.logprobs)
        elif output.text:
            yield content(index, output.text)
        if output.finish_reason is not None:
            finish: Any = _finish_reason(output.finish_reason)
            if parsers[index].calls and finish == "stop":
                finish = "tool_calls"
            yield chunk(index, wire.ChunkDelta(), finish)
    if include_usage:
        final = wire.ChatCompletionChunk(
            id=completion_id,
            choices=[],
            created=created,
            model=model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=totals.usage(),
        )
        yield _sse(final.model_dump_json())
    yield _SSE_DONE


# -- completions -------------------------------------------------------------------------------


def _refuse_unservable_completion_fields(req: CompletionRequest) -> None:
    if req.echo and req.logprobs is not None:
        raise _unsupported(
            "logprobs", "with 'echo', the prompt's log-probabilities are not computed."
        )


def _completion_prompts(model: LoadedModel, req: CompletionRequest) -> list[list[int]]:
    """The request's prompts as token lists: a string, strings, token ids, or lists of them."""
    prompt = req.prompt
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [[int(t) for t in prompt]]  # type: ignore[arg-type]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    if not prompts:
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    fim = model.model_info.fim_tokens
    if req.suffix is not None and fim is None:
        raise _unsupported("suffix", "this model has no fill-in-the-middle tokens.")
    token_lists = []
    for i, item in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            add_special = req.suffix is None
            tokens = model.runner.tokenize(item, add_special=add_special, parse_special=True)
        else:
            tokens = list(item)
            check_token_ids(model, tokens, param=param)
        if req.suffix is not None and fim is not None:
            suffix = model.runner.tokenize(req.suffix, add_special=False, parse_special=False)
            tokens = [fim[0], *tokens, fim[1], *suffix, fim[2]]
        if not tokens:
            raise InvalidRequestError("A prompt must not be empty.", param=param)
        token_lists.append(tokens)
    return token_lists


def _completion_logprobs(entries: Sequence[TokenLogprob], offset: int) -> wire.CompletionLogprobs:
    tokens, token_logprobs, top, text_offset = [], [], [], []
    position = offset
    for entry in entries:
        text = _piece_text(entry.piece)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        alternatives = {_piece_text(piece): lp for _, piece, lp in entry.top}
        alternatives.setdefault(text, entry.logprob)
        top.append(alternatives)
        text_offset.append(position)
        position += len(text)
    return wire.CompletionLogprobs(
        text_offset=text_offset, token_logprobs=token_logprobs, tokens=tokens, top_logprobs=top
    )


@dataclass(frozen=True, slots=True)
class PreparedCompletion:
    """A completions request parsed at the edge: one engine request per prompt."""

    completion_id: str
    model: LoadedModel
    requests: list[GenerationRequest]
    prompts: list[list[int]]
    n: int
    best_of: int


def prepare_completion(state: ServerState, req: CompletionRequest) -> PreparedCompletion:
    """Validate and tokenize a completions request. Shared by /v1 and the Ollama API."""
    model = state.model_for(req.model)
    _refuse_unservable_completion_fields(req)
    _check_stream_options(req.stream, req.stream_options)
    n = _choice_count(model, req.n)
    best_of = req.best_of if req.best_of is not None else n
    if best_of < n:
        raise InvalidRequestError("'best_of' must be at least 'n'.", param="best_of")
    if best_of > n and req.stream:
        raise InvalidRequestError("'best_of' cannot be used with 'stream'.", param="best_of")
    _choice_count(model, best_of, "best_of")
    prompts = _completion_prompts(model, req)
    wants_logprobs = req.logprobs is not None or best_of > n
    completion_id = _new_id("cmpl")
    _log_request("completion", completion_id, req.user, n)
    requests = [
        GenerationRequest(
            f"{completion_id}-{i}" if len(prompts) > 1 else completion_id,
            tuple(tokens),
            _sampling_params(
                model,
                req,
                len(tokens),
                req.max_tokens,
                what="prompt",
                logprobs=(req.logprobs or 0) if wants_logprobs else None,
            ),
            n=best_of,
        )
        for i, tokens in enumerate(prompts)
    ]
    return PreparedCompletion(completion_id, model, requests, prompts, n, best_of)


async def serve_completion(
    state: ServerState, req: CompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    prepared = prepare_completion(state, req)
    model, requests, prompts = prepared.model, prepared.requests, prepared.prompts
    n, best_of = prepared.n, prepared.best_of
    completion_id = prepared.completion_id
    echoes = [model.runner.detokenize(tokens) if req.echo else "" for tokens in prompts]
    created = int(time.time())

    def body(choices: list[wire.CompletionChoice], usage: wire.Usage | None) -> wire.TextCompletion:
        return wire.TextCompletion(
            id=completion_id,
            choices=choices,
            created=created,
            model=req.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await started(http_request, merged_outputs(model, requests))

        def text_only(index: int) -> _ContentChunk:
            def render_with(marker: str) -> bytes:
                choice = wire.CompletionChoice(finish_reason=None, index=index, text=marker)
                return _sse(body([choice], None).model_dump_json(exclude={"usage"}))

            return _ContentChunk(render_with)

        async def events() -> AsyncIterator[bytes]:
            totals = UsageTotals()
            begun: set[int] = set()
            text_chunks: dict[int, _ContentChunk] = {}
            async for prompt_index, output in outputs:
                totals.add(output, prompt_index)
                text = output.text
                if output.index not in begun:
                    begun.add(output.index)
                    text = echoes[prompt_index] + text
                finish = _finish_reason(output.finish_reason) if output.finish_reason else None
                if text and finish is None and req.logprobs is None:
                    template = text_chunks.get(output.index)
                    if template is None:
                        template = text_chunks[output.index] = text_only(output.index)
                    yield template.render(text)
                elif text or finish is not None or output.logprobs:
                    choice = wire.CompletionChoice(
                        finish_reason=finish,
                        index=output.index,
                        text=text,
                        logprobs=_completion_logprobs(output.logprobs, 0)
                        if req.logprobs is not None
                        else None,
                    )
                    yield _sse(body([choice], None).model_dump_json(exclude={"usage"}))
            if include_usage:
                yield _sse(body([], totals.usage()).model_dump_json())
            yield _SSE_DONE

        return _streaming_response(events())

    choices, totals = await until_disconnect(http_request, collect(model, requests))
    kept = _best_choices(choices, best_of, n)
    reply = []
    for new_index, (old_index, choice) in enumerate(kept):
        echo = echoes[old_index // best_of]
        reply.append(
            wire.CompletionChoice(
                finish_reason=_finish_reason(choice.finish_reason),
                index=new_index,
                text=echo + choice.text,
                logprobs=_completion_logprobs(choice.logprobs, len(echo))
                if req.logprobs is not None
                else None,
            )
        )
    return JSONResponse(body(reply, totals.usage()).model_dump(mode="json"))


def _best_choices(
    choices: dict[int, CollectedChoice], best_of: int, n: int
) -> list[tuple[int, CollectedChoice]]:
    """Per prompt, the n of best_of choices with the highest log-probability per token."""
    ordered = sorted(choices.items())
    if best_of == n:
        return ordered
    kept = []
    for start in range(0, len(ordered), best_of):
        group = ordered[start : start + best_of]
        group.sort(key=lambda item: -_mean_logprob(item[1]))
        kept.extend(sorted(group[:n]))
    return kept


def _mean_logprob(choice: CollectedChoice) -> float:
    if not choice.logprobs:
        return 0.0
    return sum(entry.logprob for entry in choice.logprobs) / len(choice.logprobs)
