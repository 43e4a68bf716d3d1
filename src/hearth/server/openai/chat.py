"""OpenAI chat completions: the adapter (wire request -> `Conversation`) and the renderer
(`Step`s -> a `chat.completion` or its SSE chunks). https://platform.openai.com/docs/api-reference/chat

Every spec field is either honoured or refused with a 400 naming it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth.engine.types import TokenLogprob
from hearth.errors import HearthError, InvalidRequestError, UnsupportedParameterError, unsupported
from hearth.protocol import openai as wire
from hearth.protocol.openai import (
    AssistantMessage,
    AudioContentPart,
    ChatCompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    ImageContentPart,
    TextContentPart,
    ToolMessage,
    UserMessage,
)
from hearth.server.core.conversation import (
    Conversation,
    Message,
    OutputFormat,
    Reasoning,
    ToolCall,
)
from hearth.server.core.function_tools import tool_choice, tools_from
from hearth.server.core.media import MEDIA_MARKER, MediaPart, media_part_from_url
from hearth.server.core.prepare import prepare_turn_off_loop
from hearth.server.core.turns import (
    ChoiceResult,
    Step,
    UsageTotals,
    collect_turn,
    decode_steps,
    merged_outputs,
    started,
    until_disconnect,
)
from hearth.server.http.sse import SSE_DONE, ContentChunk, sse, streaming_response
from hearth.server.openai.common import (
    SYSTEM_FINGERPRINT,
    chat_logprobs,
    check_stream_options,
    openai_sampling,
    wire_usage,
)
from hearth.server.state import LoadedModel, ServerState

__all__ = ["chat_conversation", "output_format", "serve_chat"]


# -- the adapter -------------------------------------------------------------------------------


def _refuse_unservable_fields(req: ChatCompletionRequest) -> None:
    """Fields Hearth cannot honour for any local text model: refused by name, never ignored."""
    if req.functions:
        raise unsupported("functions", "it is deprecated; send 'tools' instead.")
    if req.function_call is not None:
        raise unsupported("function_call", "it is deprecated; send 'tool_choice' instead.")
    if req.audio is not None:
        raise unsupported("audio", "this model produces text only.")
    if req.modalities and any(m != "text" for m in req.modalities):
        raise unsupported("modalities", "this model produces text only.")
    if req.web_search_options is not None:
        raise unsupported("web_search_options", "a local server does not search the web.")
    if req.verbosity not in (None, "medium"):
        raise unsupported("verbosity", "this model has no verbosity control.")
    if req.store:
        raise unsupported("store", "Hearth keeps no completions; send store=false or omit it.")
    if req.service_tier not in (None, "auto", "default"):
        raise unsupported("service_tier", "a local server has one tier ('default').")
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequestError(
            "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs"
        )


def output_format(response_format: dict[str, Any] | None) -> OutputFormat:
    if not response_format:
        return OutputFormat()
    kind = response_format.get("type", "text")
    if kind in ("text", "json_object"):
        return OutputFormat(kind)
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
    return OutputFormat("json_schema", schema, strict=spec.get("strict") is True)


def _message_content(content: object, param: str) -> tuple[str, tuple[MediaPart, ...]]:
    """A message's text, with MEDIA_MARKER where each image part sits, and its images."""
    if content is None:
        return "", ()
    if isinstance(content, str):
        return content, ()
    assert isinstance(content, list)
    texts: list[str] = []
    media: list[MediaPart] = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        if isinstance(part, TextContentPart):
            texts.append(part.text)
        elif isinstance(part, ImageContentPart):
            url = part.image_url.get("url")
            if not isinstance(url, str):
                raise InvalidRequestError(
                    "'image_url.url' must be a string.", param=f"{part_param}.image_url.url"
                )
            media.append(media_part_from_url(url, f"{part_param}.image_url.url", "image"))
            texts.append(MEDIA_MARKER)
        elif isinstance(part, AudioContentPart):
            media.append(MediaPart("audio", "", f"{part_param}.input_audio"))
            texts.append(MEDIA_MARKER)
        else:
            raise UnsupportedParameterError(
                f"Content parts of type '{part.type}' are not supported; send text and image "
                "parts.",
                param=part_param,
            )
    return "".join(texts), tuple(media)


def _message_text(content: object, param: str) -> str:
    """Text only: images are taken from user messages alone."""
    text, media = _message_content(content, param)
    if media:
        raise UnsupportedParameterError(
            "Images are taken in user messages only.", param=media[0].param
        )
    return text


def _earlier_calls(message: AssistantMessage, param: str) -> tuple[ToolCall, ...]:
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
        call_id = call.get("id")
        calls.append(
            ToolCall(call_id if isinstance(call_id, str) else "", function["name"], arguments)
        )
    return tuple(calls)


def _messages(req: ChatCompletionRequest) -> tuple[Message, ...]:
    messages = []
    for i, message in enumerate(req.messages):
        param = f"messages[{i}]"
        if isinstance(message, FunctionMessage):
            raise unsupported(f"{param}.role", "'function' messages are deprecated; use 'tool'.")
        if isinstance(message, UserMessage):
            text, media = _message_content(message.content, param)
            messages.append(Message("user", text, media=media))
            continue
        text = _message_text(message.content, param)
        if isinstance(message, ToolMessage):
            messages.append(Message("tool", text, tool_call_id=message.tool_call_id))
        elif isinstance(message, AssistantMessage):
            messages.append(Message("assistant", text, _earlier_calls(message, param)))
        elif isinstance(message, DeveloperMessage):
            # Most templates know no 'developer' role: it is OpenAI's new name for 'system'.
            messages.append(Message("system", text))
        else:
            messages.append(Message(message.role, text))
    return tuple(messages)


def chat_conversation(req: ChatCompletionRequest) -> Conversation:
    """A chat completions request as a conversation. Also the Ollama API's route in."""
    _refuse_unservable_fields(req)
    check_stream_options(req.stream, req.stream_options)
    tools = tools_from(req.tools) if req.tools else ()
    choice = tool_choice(req.tool_choice, bool(req.tools), req.parallel_tool_calls)
    newer_limit = req.max_completion_tokens is not None
    return Conversation(
        model=req.model,
        messages=_messages(req),
        tools=tools,
        tool_choice=choice,
        output_format=output_format(req.response_format),
        sampling=openai_sampling(req),
        max_tokens=req.max_completion_tokens if newer_limit else req.max_tokens,
        n=1 if req.n is None else req.n,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        user=req.user or req.safety_identifier,
        reasoning=Reasoning.from_effort(req.reasoning_effort, "reasoning_effort"),
        template_kwargs=req.chat_template_kwargs,
        prediction=_prediction_text(req.prediction),
    )


def _prediction_text(prediction: wire.PredictionContent | None) -> str | None:
    if prediction is None:
        return None
    content = prediction.content
    return content if isinstance(content, str) else "".join(part.text for part in content)


# -- the renderer ------------------------------------------------------------------------------


async def serve_chat(
    state: ServerState, model: LoadedModel, req: ChatCompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    turn = await prepare_turn_off_loop(state, model, chat_conversation(req), id_prefix="chatcmpl")
    completion_id = turn.request.request_id
    created = int(time.time())

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await started(http_request, merged_outputs(turn.model, [turn.request]))
        steps = decode_steps(outputs, turn.request, parse_tools=turn.parse_tools)
        events = _stream_chat(
            steps, completion_id, created, req.model, include_usage, parse_tools=turn.parse_tools
        )
        return streaming_response(events)

    choices, totals = await until_disconnect(
        http_request, collect_turn(turn.model, turn.request, parse_tools=turn.parse_tools)
    )
    body = wire.ChatCompletion(
        id=completion_id,
        choices=[
            _chat_choice(index, choice, logprobs=bool(req.logprobs))
            for index, choice in sorted(choices.items())
        ],
        created=created,
        model=req.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        usage=_usage(totals),
    )
    return JSONResponse(body.model_dump(mode="json"))


def _usage(totals: UsageTotals) -> wire.Usage:
    return wire_usage(
        totals.prompt_tokens,
        totals.cached_tokens,
        totals.total_completion_tokens,
        details=wire.CompletionTokensDetails(
            accepted_prediction_tokens=sum(totals.accepted_prediction_tokens.values()),
            reasoning_tokens=totals.total_reasoning_tokens,
            rejected_prediction_tokens=sum(totals.rejected_prediction_tokens.values()),
        ),
    )


def _chat_choice(index: int, choice: ChoiceResult, *, logprobs: bool) -> wire.ChatChoice:
    return wire.ChatChoice(
        finish_reason=choice.finish,
        index=index,
        logprobs=chat_logprobs(choice.logprobs) if logprobs else None,
        message=wire.ResponseMessage(
            reasoning_content=choice.reasoning or None,
            content=choice.text if choice.text or not choice.calls else None,
            tool_calls=[
                wire.ToolCall(
                    id=call.id, function=wire.FunctionCall(arguments=call.arguments, name=call.name)
                )
                for call in choice.calls
            ]
            or None,
        ),
    )


# -- the stream, as a state machine ------------------------------------------------------------


@dataclass(slots=True)
class ChatStream:
    """Where a chat completion stream stands: the choices begun (with the tool calls each has
    sent), those finished, and the usage so far. One small function per event moves it on and
    says which chunks go out: `on_step` for each step, `on_cut_short` for an error after text."""

    parse_tools: bool
    calls_sent: dict[int, int] = field(default_factory=dict)  # by choice: begun, calls sent
    finished: set[int] = field(default_factory=set)
    totals: UsageTotals = field(default_factory=UsageTotals)


@dataclass(frozen=True, slots=True)
class ChunkOut:
    """One chunk for one choice: its delta, its finish reason, its logprobs. `text` marks a
    plain text delta, sent through the content chunk serialized once per choice."""

    index: int
    delta: wire.ChunkDelta = field(default_factory=wire.ChunkDelta)
    finish: str | None = None
    logprobs: Sequence[TokenLogprob] | None = None
    text: str | None = None


def on_step(stream: ChatStream, step: Step) -> list[ChunkOut]:
    """A step of one choice: its first chunk names the role, then thinking, text, whole tool
    calls (numbered per choice) and logprobs, then its finish."""
    index, output = step.index, step.output
    stream.totals.add(output, step.prompt_index)
    out = []
    if index not in stream.calls_sent:
        stream.calls_sent[index] = 0
        out.append(ChunkOut(index, wire.ChunkDelta(role="assistant", content="")))
    if step.reasoning:
        out.append(ChunkOut(index, wire.ChunkDelta(reasoning_content=step.reasoning)))
    if stream.parse_tools:
        if step.text:
            out.append(ChunkOut(index, wire.ChunkDelta(content=step.text)))
        for call in step.calls:
            delta = wire.ToolCallDelta(
                index=stream.calls_sent[index],
                id=call.id,
                type="function",
                function=wire.FunctionCallDelta(name=call.name, arguments=call.arguments),
            )
            stream.calls_sent[index] += 1
            out.append(ChunkOut(index, wire.ChunkDelta(tool_calls=[delta])))
        if output.logprobs:
            out.append(ChunkOut(index, logprobs=output.logprobs))
    elif output.logprobs:
        out.append(ChunkOut(index, wire.ChunkDelta(content=step.text), logprobs=output.logprobs))
    elif step.text:
        out.append(ChunkOut(index, text=step.text))
    if step.finish is not None:
        stream.finished.add(index)
        out.append(ChunkOut(index, finish=step.finish))
    return out


def on_cut_short(stream: ChatStream) -> list[ChunkOut]:
    """Cut short by the server (its drain deadline, a full KV cache): every choice that began
    ends with `length`, its text cut, before the error event that says why."""
    return [
        ChunkOut(index, finish="length")
        for index in stream.calls_sent
        if index not in stream.finished
    ]


async def _stream_chat(
    steps: AsyncIterator[Step],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
    *,
    parse_tools: bool,
) -> AsyncIterator[bytes]:
    def chunk(out: ChunkOut) -> bytes:
        return sse(
            wire.ChatCompletionChunk(
                id=completion_id,
                choices=[
                    wire.ChunkChoice(
                        delta=out.delta,
                        finish_reason=out.finish,
                        index=out.index,
                        logprobs=chat_logprobs(out.logprobs) if out.logprobs else None,
                    )
                ],
                created=created,
                model=model,
                system_fingerprint=SYSTEM_FINGERPRINT,
            ).model_dump_json(exclude={"usage"} if not include_usage else None)
        )

    content_chunks: dict[int, ContentChunk] = {}

    def render(out: ChunkOut) -> bytes:
        if out.text is None:
            return chunk(out)
        template = content_chunks.get(out.index)
        if template is None:
            index = out.index
            template = content_chunks[index] = ContentChunk(
                lambda marker: chunk(ChunkOut(index, wire.ChunkDelta(content=marker)))
            )
        return template.render(out.text)

    stream = ChatStream(parse_tools)
    try:
        async for step in steps:
            for out in on_step(stream, step):
                yield render(out)
    except HearthError:
        for out in on_cut_short(stream):
            yield render(out)
        raise
    if include_usage:
        final = wire.ChatCompletionChunk(
            id=completion_id,
            choices=[],
            created=created,
            model=model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=_usage(stream.totals),
        )
        yield sse(final.model_dump_json())
    yield SSE_DONE
