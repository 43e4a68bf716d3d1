"""Ollama's native API on the same engine.

An Ollama request converts straight into the same protocol-free `Conversation` as every API's
(`prepare_turn`), or a `RawPrompt` (`prepare_raw`, as /v1/completions), or embedding inputs
(`embed_inputs`): one place decides presets, templates, tools, grammars and limits. Its output
is read back through `turns` as every API's.
Replies go back in Ollama's shape: NDJSON when streaming (Ollama's default), durations in
nanoseconds, `{"error": "..."}` bodies (see `server/http/errors.py`).
Pulling and deleting models is in `server/ollama/models.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from hearth.engine.types import TokenLogprob
from hearth.errors import HearthError, InvalidRequestError, UnsupportedParameterError
from hearth.keep_alive import KeepAlive, parse_keep_alive
from hearth.models import registry
from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.protocol import ollama as wire
from hearth.protocol.embeddings import EmbeddingRequest
from hearth.server.core.conversation import (
    Conversation,
    Message,
    OutputFormat,
    RawPrompt,
    Reasoning,
    Sampling,
    ToolCall,
    stop_sequences,
)
from hearth.server.core.embeddings import embed_inputs, max_input_tokens
from hearth.server.core.function_tools import tool_choice, tools_from
from hearth.server.core.media import MEDIA_MARKER, MediaPart
from hearth.server.core.prepare import prepare_raw, prepare_turn_off_loop
from hearth.server.core.turns import (
    Finish,
    Step,
    decode_steps,
    merged_outputs,
    started,
    until_disconnect,
)
from hearth.server.state import LoadedModel, ServerState

__all__ = [
    "list_tags",
    "model_details",
    "serve_ollama_chat",
    "serve_ollama_embed",
    "serve_ollama_embeddings",
    "serve_ollama_generate",
    "show_model",
]

logger = logging.getLogger(__name__)

# Options with the same meaning as the OpenAI field (or extension) of that name.
_SAME_NAME_OPTIONS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "stop",
)
# llama.cpp's penalties look at the last 64 tokens in Hearth (PENALTY_LAST_N).
_PENALTY_WINDOW = 64
_LOAD_TIME_OPTIONS = {
    "numa": "--threads",
    "num_batch": "--max-batch-tokens",
    "num_gpu": "--gpu-layers",
    "main_gpu": "--gpu-layers",
    "low_vram": "--gpu-layers",
    "f16_kv": "--quantize",
    "logits_all": "logprobs",
    "vocab_only": "/tokenize",
    "use_mmap": "the model loader",
    "use_mlock": "the model loader",
    "embedding_only": "/v1/embeddings",
    "num_thread": "--threads",
    "draft_num_predict": "--speculation",
}
_RAW_TOP_LOGPROBS = 5
_NDJSON = "application/x-ndjson"
_JSON = "application/json"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _refuse_load_time_options(given: dict[str, Any]) -> None:
    for name in given:
        if name in _LOAD_TIME_OPTIONS:
            raise UnsupportedParameterError(
                f"'options.{name}' is set when the server starts ({_LOAD_TIME_OPTIONS[name]}), "
                "not per request.",
                param=f"options.{name}",
            )


def _sampling_fields(options: wire.Options | None) -> dict[str, Any]:
    """Ollama options as OpenAI request fields; an option Hearth cannot honour is refused."""
    if options is None:
        return {}
    given = options.model_dump(exclude_none=True)
    _refuse_load_time_options(given)
    for name in ("tfs_z", "num_keep", "penalize_newline"):
        if name in given:
            raise UnsupportedParameterError(
                f"'options.{name}' is not supported by llama.cpp's samplers.",
                param=f"options.{name}",
            )
    if given.get("repeat_last_n", _PENALTY_WINDOW) != _PENALTY_WINDOW:
        raise UnsupportedParameterError(
            f"'options.repeat_last_n' must be {_PENALTY_WINDOW}: Hearth's penalties look at the "
            f"last {_PENALTY_WINDOW} tokens.",
            param="options.repeat_last_n",
        )
    fields = {name: given[name] for name in _SAME_NAME_OPTIONS if name in given}
    predict = given.get("num_predict")
    if predict is not None:
        if predict > 0:
            fields["max_tokens"] = predict
        elif predict not in (-1, -2):  # Ollama's "no limit" and "fill the context"
            raise InvalidRequestError(
                "'options.num_predict' must be positive, -1 or -2.", param="options.num_predict"
            )
    return fields


def _check_num_ctx(model: LoadedModel, options: wire.Options | None) -> None:
    if options is not None and options.num_ctx and options.num_ctx > model.n_ctx_per_slot:
        raise UnsupportedParameterError(
            f"'options.num_ctx' is {options.num_ctx}, but this server's slots hold "
            f"{model.n_ctx_per_slot} tokens; start it with a larger --ctx-size.",
            param="options.num_ctx",
        )


def _unlimited(options: wire.Options | None) -> bool:
    """num_predict -1 or -2 asks for no limit, which a preset's max_tokens does not undo."""
    return options is not None and options.num_predict in (-1, -2)


def _reasoning(think: bool | str | None) -> Reasoning:
    """Ollama's `think`: true or false, or an effort level ("low", "medium", "high")."""
    if think is None or isinstance(think, bool):
        return Reasoning(enabled=think, param="think")
    return Reasoning.from_effort(think, "think")


def _output_format(value: str | dict[str, Any] | None) -> OutputFormat:
    """Ollama's `format`: "json" or a JSON Schema."""
    if not value:
        return OutputFormat()
    if value == "json":
        return OutputFormat("json_object")
    return OutputFormat("json_schema", value)


def _sampling(options: wire.Options | None) -> tuple[Sampling, int | None]:
    """Ollama's options as sampling and a token limit (None: a preset's, else none)."""
    fields = _sampling_fields(options)
    stop = stop_sequences(fields.pop("stop", None))
    max_tokens = fields.pop("max_tokens", None)
    return Sampling(**fields, stop=stop), max_tokens


def _messages(messages: Sequence[wire.Message]) -> tuple[Message, ...]:
    converted: list[Message] = []
    for i, message in enumerate(messages):
        if message.images and message.role == "user":
            text, media = _with_images(message.content, message.images, f"messages[{i}].images")
            converted.append(Message("user", text, media=media))
            continue
        if message.images:
            raise UnsupportedParameterError(
                "Images are taken in user messages only.", param=f"messages[{i}].images"
            )
        if message.role == "tool":
            # Ollama matches a result to its call by the function's name: it has no call ids.
            converted.append(Message("tool", message.content, tool_name=message.tool_name))
        elif message.role == "assistant" and message.tool_calls:
            calls = tuple(
                ToolCall(f"call_{i}_{j}", call.function.name, json.dumps(call.function.arguments))
                for j, call in enumerate(message.tool_calls)
            )
            converted.append(Message("assistant", message.content, calls))
        else:
            converted.append(Message(message.role, message.content))
    return tuple(converted)


def _with_images(
    content: str, images: Sequence[str], param: str
) -> tuple[str, tuple[MediaPart, ...]]:
    """Ollama's images go before the message's text, as Ollama's own prompts put them."""
    media = tuple(MediaPart("image", data, f"{param}[{k}]") for k, data in enumerate(images))
    return MEDIA_MARKER * len(media) + content, media


def _logprobs_wanted(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    return (top_logprobs or 0) if logprobs else None


def chat_conversation(req: wire.ChatRequest) -> Conversation:
    """An /api/chat request as a conversation."""
    sampling, max_tokens = _sampling(req.options)
    return Conversation(
        model=req.model,
        messages=_messages(req.messages),
        tools=tools_from(req.tools) if req.tools else (),
        tool_choice=tool_choice(req.tool_choice, bool(req.tools), None),
        output_format=_output_format(req.format),
        sampling=sampling,
        max_tokens=max_tokens,
        logprobs=_logprobs_wanted(req.logprobs, req.top_logprobs),
        reasoning=_reasoning(req.think),
        unlimited=_unlimited(req.options),
    )


def generate_conversation(req: wire.GenerateRequest) -> Conversation:
    """A templated /api/generate request: its system prompt and prompt as a conversation."""
    sampling, max_tokens = _sampling(req.options)
    system = (Message("system", req.system),) if req.system else ()
    text, media = _with_images(req.prompt or "", req.images or (), "images")
    return Conversation(
        model=req.model,
        messages=(*system, Message("user", text, media=media)),
        output_format=_output_format(req.format),
        sampling=sampling,
        max_tokens=max_tokens,
        logprobs=_logprobs_wanted(req.logprobs, req.top_logprobs),
        reasoning=_reasoning(req.think),
        unlimited=_unlimited(req.options),
    )


def generate_raw_prompt(req: wire.GenerateRequest) -> RawPrompt:
    """A raw (or fill-in-the-middle) /api/generate request: its prompt as it is."""
    if req.think:
        raise UnsupportedParameterError(
            "'think' needs the chat template; drop raw and suffix to use it.", param="think"
        )
    if req.format:
        raise UnsupportedParameterError(
            "'format' needs the chat template; drop raw and suffix to use it.", param="format"
        )
    logprobs = _logprobs_wanted(req.logprobs, req.top_logprobs)
    if logprobs is not None and logprobs > _RAW_TOP_LOGPROBS:
        # A raw prompt is OpenAI's completions' path, whose logprobs stop at 5.
        raise InvalidRequestError(
            f"'top_logprobs' is at most {_RAW_TOP_LOGPROBS} with raw or a suffix.",
            param="top_logprobs",
        )
    sampling, max_tokens = _sampling(req.options)
    return RawPrompt(
        model=req.model,
        prompts=(req.prompt or "",),
        suffix=req.suffix,
        sampling=sampling,
        max_tokens=max_tokens,
        unlimited=_unlimited(req.options),
        logprobs=logprobs,
    )


def _logprobs(entries: Sequence[TokenLogprob]) -> list[wire.Logprob]:
    def text(piece: bytes) -> str:
        return piece.decode("utf-8", "replace")

    return [
        wire.Logprob(
            token=text(entry.piece),
            logprob=entry.logprob,
            top_logprobs=[wire.TopLogprob(token=text(p), logprob=lp) for _, p, lp in entry.top]
            or None,
        )
        for entry in entries
    ]


def _tool_calls(calls: Sequence[ToolCall]) -> list[wire.ToolCall] | None:
    """Ollama's calls carry arguments as an object; `turns` passes on only whole calls."""
    parsed = [
        wire.ToolCall(function=wire.ToolCallFunction(name=call.name, arguments=arguments))
        for call in calls
        if (arguments := _arguments(call.arguments)) is not None
    ]
    return parsed or None


def _arguments(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _Clock:
    """Ollama's durations: the whole request, the prompt (until the first token), the rest."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.first: int | None = None

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter_ns()

    def timings(self, prompt_tokens: int, cached: int, completion_tokens: int) -> dict[str, int]:
        end = time.perf_counter_ns()
        first = self.first or end
        return {
            "total_duration": end - self.start,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens - cached,
            "prompt_eval_duration": first - self.start,
            "eval_count": completion_tokens,
            "eval_duration": end - first,
        }


def _finish_reason(finish: Finish) -> str:
    # Ollama has no "tool_calls" reason: a turn that ends in calls is a "stop".
    return "length" if finish == "length" else "stop"


def _loaded(model: str, keep_alive: KeepAlive | None, *, chat: bool) -> JSONResponse:
    """An empty request loads the model and answers at once, as Ollama's does; with
    `keep_alive: 0` it unloads it instead (once the request's lease ends), and says so."""
    unloads = keep_alive is not None and parse_keep_alive(keep_alive) == 0
    body: dict[str, Any] = {"model": model, "created_at": _now(), "done": True}
    body["done_reason"] = "unload" if unloads else "load"
    if chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    return JSONResponse(body)


def _ndjson(line: BaseModel) -> bytes:
    return line.model_dump_json(exclude_none=True).encode() + b"\n"


def _ndjson_response(lines: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(_guarded(lines), media_type=_NDJSON)


async def _guarded(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the headers went out ends the stream with Ollama's error line."""
    try:
        async for line in lines:
            yield line
    except HearthError as error:
        yield json.dumps({"error": error.message}).encode() + b"\n"
    except Exception:
        logger.exception("stream failed after its headers were sent")
        yield b'{"error": "The server had an error while streaming."}\n'


# -- the streams, as a state machine -----------------------------------------------------------


@dataclass(slots=True)
class OllamaStream:
    """Where an /api/chat or /api/generate turn stands: its text, thinking, tool calls and
    logprobs so far, how it finished, and the latest step's token counts. `on_step` moves it on
    by one step and says which lines go out; the reply that is not streamed is this state at
    its end (`chat_reply`, `generate_reply`)."""

    logprobs: bool = False  # the request asked for them
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    entries: list[TokenLogprob] = field(default_factory=list)
    finish: Finish = "stop"
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def timings(self, clock: _Clock) -> dict[str, int]:
        return clock.timings(self.prompt_tokens, self.cached_tokens, self.completion_tokens)


@dataclass(frozen=True, slots=True)
class LineOut:
    """One NDJSON line before its model, time and durations are added: a piece of text,
    thinking or logprobs, the turn's calls, or (with `done_reason`) the last line."""

    text: str = ""
    thinking: str = ""
    calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    done_reason: str | None = None


def on_step(stream: OllamaStream, step: Step) -> list[LineOut]:
    """A line for each step with text, thinking or logprobs; at the end the calls in one line
    (as Ollama sends them), then the last line."""
    output = step.output
    stream.prompt_tokens, stream.cached_tokens = output.prompt_tokens, output.cached_tokens
    stream.completion_tokens = output.completion_tokens
    stream.text.append(step.text)
    stream.thinking.append(step.reasoning)
    stream.calls += step.calls
    logprobs = output.logprobs if stream.logprobs else ()
    stream.entries += logprobs
    out = []
    if step.text or logprobs or step.reasoning:
        out.append(LineOut(step.text, step.reasoning, logprobs=logprobs))
    if step.finish is not None:
        stream.finish = step.finish
        if stream.calls:
            out.append(LineOut(calls=tuple(stream.calls)))
        out.append(LineOut(done_reason=_finish_reason(step.finish)))
    return out


async def run_to_end(stream: OllamaStream, steps: AsyncIterator[Step], clock: _Clock) -> None:
    """The reply that is not streamed goes through the same states; its lines are not sent."""
    async for step in steps:
        clock.tick()
        on_step(stream, step)


def _chat_line(stream: OllamaStream, out: LineOut, model: str, clock: _Clock) -> bytes:
    message = wire.ResponseMessage(
        content=out.text,
        thinking=out.thinking or None,
        tool_calls=_tool_calls(out.calls) if out.calls else None,
    )
    done = out.done_reason is not None
    return _ndjson(
        wire.ChatResponse(
            model=model,
            created_at=_now(),
            message=message,
            done=done,
            done_reason=out.done_reason,
            logprobs=_logprobs(out.logprobs) if out.logprobs else None,
            **(stream.timings(clock) if done else {}),
        )
    )


def _generate_line(stream: OllamaStream, out: LineOut, model: str, clock: _Clock) -> bytes:
    done = out.done_reason is not None
    return _ndjson(
        wire.GenerateResponse(
            model=model,
            created_at=_now(),
            response=out.text,
            thinking=out.thinking or None,
            done=done,
            done_reason=out.done_reason,
            logprobs=_logprobs(out.logprobs) if out.logprobs else None,
            **(stream.timings(clock) if done else {}),
        )
    )


def chat_reply(stream: OllamaStream, model: str, clock: _Clock) -> wire.ChatResponse:
    return wire.ChatResponse(
        model=model,
        created_at=_now(),
        message=wire.ResponseMessage(
            content="".join(stream.text),
            thinking="".join(stream.thinking) or None,
            tool_calls=_tool_calls(stream.calls),
        ),
        done=True,
        done_reason=_finish_reason(stream.finish),
        logprobs=_logprobs(stream.entries) if stream.logprobs else None,
        **stream.timings(clock),
    )


def generate_reply(stream: OllamaStream, model: str, clock: _Clock) -> wire.GenerateResponse:
    return wire.GenerateResponse(
        model=model,
        created_at=_now(),
        response="".join(stream.text),
        thinking="".join(stream.thinking) or None,
        done=True,
        done_reason=_finish_reason(stream.finish),
        logprobs=_logprobs(stream.entries) if stream.logprobs else None,
        **stream.timings(clock),
    )


async def _stream_lines(
    stream: OllamaStream,
    steps: AsyncIterator[Step],
    line: Callable[[OllamaStream, LineOut, str, _Clock], bytes],
    model: str,
    clock: _Clock,
) -> AsyncIterator[bytes]:
    async for step in steps:
        clock.tick()
        for out in on_step(stream, step):
            yield line(stream, out, model, clock)


# -- /api/chat ---------------------------------------------------------------------------------


async def serve_ollama_chat(
    state: ServerState, model: LoadedModel, req: wire.ChatRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    _check_num_ctx(model, req.options)
    if not req.messages:
        return _loaded(req.model, req.keep_alive, chat=True)
    conversation = chat_conversation(req)
    turn = await prepare_turn_off_loop(state, model, conversation, id_prefix="chatcmpl")
    clock = _Clock()
    stream = OllamaStream(logprobs=bool(req.logprobs))

    if req.stream:
        outputs = await started(http_request, merged_outputs(turn.model, [turn.request]))
        steps = decode_steps(outputs, turn.request, parse_tools=turn.parse_tools)
        return _ndjson_response(_stream_lines(stream, steps, _chat_line, req.model, clock))

    outputs = merged_outputs(turn.model, [turn.request])
    steps = decode_steps(outputs, turn.request, parse_tools=turn.parse_tools)
    await until_disconnect(http_request, run_to_end(stream, steps, clock))
    reply = chat_reply(stream, req.model, clock)
    return JSONResponse(reply.model_dump(mode="json", exclude_none=True))


# -- /api/generate -----------------------------------------------------------------------------


async def serve_ollama_generate(
    state: ServerState, model: LoadedModel, req: wire.GenerateRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    _check_num_ctx(model, req.options)
    if req.images and req.raw:
        raise UnsupportedParameterError(
            "Images are taken with the model's template only, not with raw=true.", param="images"
        )
    if req.template is not None:
        raise UnsupportedParameterError(
            "A per-request template is not supported; Hearth uses the model's own chat template "
            "(or send raw=true with a prompt you formatted).",
            param="template",
        )
    if req.context is not None:
        raise UnsupportedParameterError(
            "'context' is deprecated by Ollama; send the conversation to /api/chat, whose "
            "prompt cache reuses it.",
            param="context",
        )
    if not req.prompt and req.suffix is None:
        return _loaded(req.model, req.keep_alive, chat=False)
    if req.raw or req.suffix is not None:
        raw = generate_raw_prompt(req)
        prepared = await asyncio.to_thread(prepare_raw, model, raw)
        engine_model, request = prepared.model, prepared.requests[0]
    else:
        conversation = generate_conversation(req)
        turn = await prepare_turn_off_loop(state, model, conversation, id_prefix="chatcmpl")
        engine_model, request = turn.model, turn.request
    clock = _Clock()
    stream = OllamaStream(logprobs=bool(req.logprobs))

    if req.stream:
        outputs = await started(http_request, merged_outputs(engine_model, [request]))
        steps = decode_steps(outputs, request, parse_tools=False)
        return _ndjson_response(_stream_lines(stream, steps, _generate_line, req.model, clock))

    steps = decode_steps(merged_outputs(engine_model, [request]), request, parse_tools=False)
    await until_disconnect(http_request, run_to_end(stream, steps, clock))
    reply = generate_reply(stream, req.model, clock)
    return JSONResponse(reply.model_dump(mode="json", exclude_none=True))


# -- /api/embed and /api/embeddings ------------------------------------------------------------


def _embedding_limit(state: ServerState, model: LoadedModel, options: wire.Options | None) -> int:
    """The most tokens per input: the embedder's limit, or `options.num_ctx` when lower.
    Sampling options do not change an embedding; load-time ones are refused as for a chat."""
    most = max_input_tokens(state, model)
    if options is None:
        return most
    _refuse_load_time_options(options.model_dump(exclude_none=True))
    if options.num_ctx is None:
        return most
    if options.num_ctx > most:
        raise UnsupportedParameterError(
            f"'options.num_ctx' is {options.num_ctx}, but `{model.model_id}` embeds at most "
            f"{most} tokens per input here (its training context, or --ctx-size when smaller); "
            "start the server with a larger --ctx-size.",
            param="options.num_ctx",
        )
    return options.num_ctx


async def serve_ollama_embed(
    state: ServerState, model: LoadedModel, req: wire.EmbedRequest, http_request: Request
) -> Response:
    """One unit vector per input, through the same checks and embedder as /v1/embeddings.
    `truncate` (Ollama's default) cuts a long input to the limit; without it, a 400."""
    start = time.perf_counter_ns()
    limit = _embedding_limit(state, model, req.options)
    vectors: list[list[float]] = []
    n_tokens = 0
    if req.input:  # an empty input only loads the model, as in Ollama
        embedded = await embed_inputs(
            state,
            model,
            EmbeddingRequest(input=req.input, model=req.model, dimensions=req.dimensions),
            http_request,
            max_tokens=limit,
            truncate=req.truncate,
        )
        vectors, n_tokens = embedded.vectors, embedded.n_tokens
    reply = wire.EmbedResponse(
        model=req.model,
        embeddings=vectors,
        total_duration=time.perf_counter_ns() - start,
        load_duration=0,
        prompt_eval_count=n_tokens,
    )
    return Response(reply.model_dump_json(), media_type=_JSON)


async def serve_ollama_embeddings(
    state: ServerState, model: LoadedModel, req: wire.EmbeddingsRequest, http_request: Request
) -> Response:
    """The superseded /api/embeddings: one prompt, one vector. It has no `truncate`, and
    Hearth never cuts a prompt silently: a prompt over the limit is a 400."""
    limit = _embedding_limit(state, model, req.options)
    vector: list[float] = []
    if req.prompt:  # an empty prompt only loads the model, as in Ollama
        embedded = await embed_inputs(
            state,
            model,
            EmbeddingRequest(input=req.prompt, model=req.model),
            http_request,
            max_tokens=limit,
        )
        vector = embedded.vectors[0]
    return Response(wire.EmbeddingsResponse(embedding=vector).model_dump_json(), media_type=_JSON)


# -- models ------------------------------------------------------------------------------------


def _parameter_size(n_params: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n_params >= scale:
            return f"{n_params / scale:.{0 if n_params >= 100 * scale else 1}f}{unit}"
    return str(n_params)


def model_details(model: LoadedModel) -> wire.ModelDetails:
    info = model.model_info
    words = info.description.split()  # llama.cpp's "<arch> <size> <file type>"
    family = words[0] if words else "unknown"
    return wire.ModelDetails(
        family=family,
        families=[family],
        parameter_size=_parameter_size(info.n_params),
        quantization_level=words[-1] if len(words) > 2 else "unknown",
    )


def _modelfile_parameters(model: LoadedModel) -> list[str]:
    """The model's defaults (a preset's, an Ollama model's params layer, /api/create's
    `parameters`) as a Modelfile's PARAMETER lines, by Ollama's names."""
    params = model.preset.params.model_dump(exclude_none=True) if model.preset else {}
    lines = []
    for name, value in params.items():
        ollama_name = "num_predict" if name == "max_tokens" else name
        for one in value if isinstance(value, list) else [value]:
            lines.append(f"{ollama_name:<30} {json.dumps(one)}")
    return lines


def show_model(model: LoadedModel) -> wire.ShowResponse:
    info = model.model_info
    details = model_details(model)
    capabilities = ["completion", "tools"]
    if info.fim_tokens is not None:
        capabilities.append("insert")
    if model.chat_template.reasoning is not None:
        capabilities.append("thinking")
    if model.runner.vision:
        capabilities.append("vision")
    parameters = _modelfile_parameters(model)
    system = model.preset.system if model.preset else None
    modelfile = f"# Served by Hearth\nFROM {model.model_id}\n"
    modelfile += "".join(f"PARAMETER {line}\n" for line in parameters)
    if system:
        modelfile += f'SYSTEM """{system}"""\n'
    return wire.ShowResponse(
        modelfile=modelfile,
        parameters="\n".join(parameters),
        template=model.chat_template.source,
        system=system,
        details=details,
        model_info={
            "general.architecture": details.family,
            "general.parameter_count": info.n_params,
            f"{details.family}.context_length": info.n_ctx_train,
        },
        capabilities=capabilities,
        modified_at=datetime.fromtimestamp(model.created, UTC).isoformat(),
    )


def list_tags() -> wire.TagsResponse:
    """Every model a request may name, read from GGUF headers (blocking: call in a thread)."""
    tags = []
    for entry in registry.list_models():
        try:
            info = read_gguf_info(entry.header_path, require_complete=entry.path is not None)
        except NotAGGUFError as exc:
            # Deleted while we listed (no word needed), or broken: the rest are still listed.
            if entry.header_path.exists():
                logger.warning("Not listing %s: %s", entry.name, exc)
            continue
        tags.append(
            wire.TagModel(
                name=entry.name,
                model=entry.name,
                modified_at=entry.modified.isoformat(),
                size=entry.size_bytes,
                digest=entry.sha256 or "",
                source=entry.source,
                details=wire.ModelDetails(
                    family=info.architecture,
                    families=[info.architecture],
                    parameter_size=_parameter_size(info.parameters),
                    quantization_level=info.quantization,
                ),
            )
        )
    return wire.TagsResponse(models=tags)
