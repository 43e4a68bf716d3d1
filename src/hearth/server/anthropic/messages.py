"""Anthropic's Messages API: the adapter (request -> `Conversation`) and the renderer (`Step`s ->
a `message` or its named SSE events). https://docs.anthropic.com/en/api/messages

Errors on these routes leave in Anthropic's shape (`server/http/errors.py` decides by path).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from hearth.errors import InvalidRequestError, unsupported
from hearth.protocol import anthropic as wire
from hearth.server.core.conversation import (
    Conversation,
    Message,
    OutputFormat,
    Reasoning,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from hearth.server.core.media import MEDIA_MARKER, MediaPart, media_part_from_url
from hearth.server.core.prepare import count_prompt_tokens_off_loop, prepare_turn_off_loop
from hearth.server.core.turns import (
    ChoiceResult,
    Finish,
    Step,
    UsageTotals,
    collect_turn,
    decode_steps,
    merged_outputs,
    started,
    until_disconnect,
)
from hearth.server.http.errors import anthropic_error_event
from hearth.server.http.sse import named_event, streaming_response
from hearth.server.state import LoadedModel, ServerState

__all__ = ["count_tokens", "serve_messages"]

# Fields of the newest SDKs with no meaning here, refused when set.
_REFUSED_FIELDS = {
    "container": "code-execution containers are not served.",
    "mcp_servers": "Hearth does not connect to MCP servers; define the tools in 'tools'.",
    "diagnostics": "no diagnostics are served.",
    "inference_geo": "a local server runs where it is.",
}


def _refuse_unservable_fields(req: wire.MessagesRequest | wire.CountTokensRequest) -> None:
    for name, why in _REFUSED_FIELDS.items():
        if getattr(req, name, None) is not None:
            raise unsupported(name, why)
    if req.thinking is not None and req.thinking.type == "between_tools":
        raise unsupported("thinking.type", "thinking between tool calls is not served.")
    if req.speed not in (None, "standard"):
        raise unsupported("speed", "a local server has one speed ('standard').")


def _tool_result_text(block: wire.ToolResultBlockParam, param: str) -> str:
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, wire.TextBlockParam):
                raise unsupported(
                    f"{param}.content[{k}]",
                    f"tool results of type '{part.type}' are not served; send text.",
                )
            texts.append(part.text)
        text = "\n".join(texts)
    return f"Error: {text}" if block.is_error else text


def _messages(req: wire.MessagesRequest | wire.CountTokensRequest) -> list[Message]:
    messages: list[Message] = []
    if req.system is not None:
        system = req.system
        text = system if isinstance(system, str) else "\n".join(b.text for b in system)
        if text:
            messages.append(Message("system", text))
    for i, message in enumerate(req.messages):
        param = f"messages[{i}]"
        if isinstance(message.content, str):
            messages.append(Message(message.role, message.content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        media: list[MediaPart] = []
        for j, block in enumerate(message.content):
            where = f"{param}.content[{j}]"
            if isinstance(block, wire.TextBlockParam):
                texts.append(block.text)
            elif isinstance(block, wire.ImageBlockParam) and message.role == "user":
                media.append(_image(block, where))
                texts.append(MEDIA_MARKER)
            elif isinstance(block, wire.ThinkingBlockParam | wire.RedactedThinkingBlockParam) and (
                message.role == "assistant"
            ):
                continue  # earlier thinking: dropped from the prompt, as chat templates drop it
            elif isinstance(block, wire.ToolUseBlockParam) and message.role == "assistant":
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
            elif isinstance(block, wire.ToolResultBlockParam) and message.role == "user":
                if texts:
                    messages.append(Message("user", "\n".join(texts), media=tuple(media)))
                    texts.clear()
                    media.clear()
                text = _tool_result_text(block, where)
                messages.append(Message("tool", text, tool_call_id=block.tool_use_id))
            else:
                raise unsupported(
                    where,
                    f"'{block.type}' blocks are not served in a {message.role} message; send "
                    "text, tool_use (assistant) and tool_result (user) blocks.",
                )
        if message.role == "assistant":
            messages.append(Message("assistant", "\n".join(texts), tuple(calls)))
        elif texts:
            messages.append(Message(message.role, "\n".join(texts), media=tuple(media)))
    return messages


def _image(block: wire.ImageBlockParam, where: str) -> MediaPart:
    """An `image` block's source: base64 data, or a URL (refused: fetching is off)."""
    source = block.source
    kind = source.get("type")
    if kind == "base64":
        data = source.get("data")
        if not isinstance(data, str):
            raise InvalidRequestError(
                "'source.data' must be a base64 string.", param=f"{where}.source.data"
            )
        media_type = source.get("media_type")
        return MediaPart(
            "image",
            data,
            f"{where}.source.data",
            media_type if isinstance(media_type, str) else None,
        )
    if kind == "url" and isinstance(source.get("url"), str):
        return media_part_from_url(source["url"], f"{where}.source.url", "image")
    raise unsupported(
        f"{where}.source.type", "image sources are 'base64' (or 'url', when fetching is on)."
    )


def _tools(req: wire.MessagesRequest | wire.CountTokensRequest) -> tuple[Tool, ...]:
    tools = []
    for i, tool in enumerate(req.tools or []):
        if not isinstance(tool, wire.ToolParam):
            raise unsupported(
                f"tools[{i}].type",
                f"the server tool '{tool.type}' is not served; Hearth runs custom tools.",
            )
        tools.append(
            Tool(
                tool.name,
                tool.description or "",
                tool.input_schema,
                param=f"tools[{i}]",
                schema_field="input_schema",
                strict=tool.strict is True,
            )
        )
    return tuple(tools)


def _tool_choice(choice: wire.ToolChoice | None, has_tools: bool) -> ToolChoice:
    if choice is None:
        return ToolChoice("auto")
    parallel = not choice.disable_parallel_tool_use
    if choice.type in ("any", "tool") and not has_tools:
        raise InvalidRequestError(
            f"tool_choice.type '{choice.type}' needs 'tools'.", param="tool_choice"
        )
    if choice.type == "tool":
        return ToolChoice("named", choice.name, parallel=parallel)
    mode = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return ToolChoice(mode, parallel=parallel)  # type: ignore[arg-type]


def _reasoning(thinking: wire.ThinkingConfig | None, output: wire.OutputConfig | None) -> Reasoning:
    """`enabled` with its budget, `disabled`, or `adaptive` (on, with `output_config.effort`'s
    budget, else the server's). Optional: Claude Code asks every model to think, so a model
    that cannot answers without thinking (the field is journaled as ignored)."""
    effort = output.effort if output is not None else None
    if thinking is None:
        return Reasoning.from_effort(effort, "output_config.effort", optional=True)
    if thinking.type == "disabled":
        return Reasoning(enabled=False, param="thinking", optional=True)
    budget = thinking.budget_tokens
    if budget is None and effort is not None:
        budget = Reasoning.from_effort(effort, "output_config.effort").budget
    return Reasoning(enabled=True, budget=budget, param="thinking", optional=True)


def _output_format(output: wire.OutputConfig | None) -> OutputFormat:
    if output is None or output.format is None:
        return OutputFormat()
    return OutputFormat(
        "json_schema",
        output.format.schema_,
        param="output_config.format",
        schema_param="output_config.format.schema",
        strict=True,  # Anthropic's structured outputs always follow the schema
    )


def _ignored(req: wire.MessagesRequest | wire.CountTokensRequest) -> tuple[str, ...]:
    """Fields accepted that change nothing here (docs/anthropic-api.md says why each)."""
    ignored = ["context_management"] if req.context_management is not None else []
    for i, tool in enumerate(req.tools or []):
        if isinstance(tool, wire.ToolParam) and tool.defer_loading is not None:
            ignored.append(f"tools[{i}].defer_loading")
    return tuple(ignored)


def _conversation(req: wire.MessagesRequest | wire.CountTokensRequest) -> Conversation:
    _refuse_unservable_fields(req)
    tools = _tools(req)
    common: dict[str, Any] = {
        "model": req.model,
        "messages": tuple(_messages(req)),
        "tools": tools,
        "tool_choice": _tool_choice(req.tool_choice, bool(tools)),
        "reasoning": _reasoning(req.thinking, req.output_config),
        "output_format": _output_format(req.output_config),
        "ignored": _ignored(req),
    }
    if isinstance(req, wire.CountTokensRequest):
        return Conversation(**common)
    if not req.messages:
        raise InvalidRequestError("'messages' must contain at least one message.", param="messages")
    return Conversation(
        **common,
        sampling=Sampling(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=None if req.stop_sequences is None else tuple(req.stop_sequences),
        ),
        max_tokens=req.max_tokens,
        user=req.metadata.user_id if req.metadata is not None else None,
    )


# -- the renderer ------------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _stop_reason(finish: Finish, stop_sequence: str | None) -> wire.StopReason:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    return "stop_sequence" if stop_sequence else "end_turn"


def _usage(totals: UsageTotals) -> wire.Usage:
    # Anthropic's input_tokens counts only what was not read from the cache.
    return wire.Usage(
        input_tokens=totals.prompt_tokens - totals.cached_tokens,
        output_tokens=totals.total_completion_tokens,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=totals.cached_tokens,
    )


def _tool_use(call: ToolCall, input_: dict[str, Any] | None = None) -> wire.ToolUseBlock:
    if input_ is None:
        input_ = json.loads(call.arguments)  # whole calls only (server/core/turns.py)
    return wire.ToolUseBlock(
        id="toolu_" + call.id.removeprefix("call_"), name=call.name, input=input_
    )


async def serve_messages(
    state: ServerState, model: LoadedModel, req: wire.MessagesRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    conversation = _conversation(req)
    turn = await prepare_turn_off_loop(state, model, conversation, id_prefix="msg")
    message_id = _new_id("msg")

    if req.stream:
        outputs = await started(http_request, merged_outputs(turn.model, [turn.request]))
        steps = decode_steps(outputs, turn.request, parse_tools=turn.parse_tools)
        return streaming_response(
            _stream(steps, message_id, req.model), on_error=anthropic_error_event
        )

    choices, totals = await until_disconnect(
        http_request, collect_turn(turn.model, turn.request, parse_tools=turn.parse_tools)
    )
    choice: ChoiceResult = choices[0]
    content: list[Any] = []
    if choice.reasoning:
        content.append(wire.ThinkingBlock(thinking=choice.reasoning))
    if choice.text or not (choice.calls or choice.reasoning):
        content.append(wire.TextBlock(text=choice.text))
    content += [_tool_use(call) for call in choice.calls]
    body = wire.Message(
        id=message_id,
        content=content,
        model=req.model,
        stop_reason=_stop_reason(choice.finish, choice.stop_sequence),
        stop_sequence=choice.stop_sequence if choice.finish == "stop" else None,
        usage=_usage(totals),
    )
    return JSONResponse(body.model_dump(mode="json"))


def _event(model: BaseModel) -> bytes:
    return named_event(model.type, model.model_dump_json())  # type: ignore[attr-defined]


@dataclass(slots=True)
class MessageStream:
    """Where a Messages stream stands: whether the message started, the content blocks started
    so far, whether a thinking or a text block is open, and the usage so far. `on_step` moves it
    on by one step and says which events go out."""

    message_id: str
    model: str
    started: bool = False
    blocks: int = 0
    thinking_open: bool = False
    text_open: bool = False
    totals: UsageTotals = field(default_factory=UsageTotals)


def on_step(stream: MessageStream, step: Step) -> list[BaseModel]:
    stream.totals.add(step.output, step.prompt_index)
    events: list[BaseModel] = []
    if not stream.started:
        stream.started = True
        events += _message_start(stream)
    if step.reasoning:
        events += _thinking(stream, step.reasoning)
    if stream.thinking_open and (step.text or step.calls or step.finish is not None):
        events += _close_block(stream, text=False)
    if step.text:
        events += _text(stream, step.text)
    for call in step.calls:
        if stream.text_open:
            events += _close_block(stream, text=True)
        events += _tool_use_block(stream, call)
    if step.finish is not None:
        events += _finish(stream, step)
    return events


def _message_start(stream: MessageStream) -> list[BaseModel]:
    usage = _usage(stream.totals)
    usage.output_tokens = 0
    start = wire.Message(id=stream.message_id, content=[], model=stream.model, usage=usage)
    return [wire.MessageStartEvent(message=start), wire.PingEvent()]


def _thinking(stream: MessageStream, text: str) -> list[BaseModel]:
    events: list[BaseModel] = []
    if not stream.thinking_open:
        stream.thinking_open = True
        block = wire.ThinkingBlock(thinking="")
        events.append(wire.ContentBlockStartEvent(index=stream.blocks, content_block=block))
    delta = wire.ThinkingDelta(thinking=text)
    events.append(wire.ContentBlockDeltaEvent(index=stream.blocks, delta=delta))
    return events


def _open_text(stream: MessageStream) -> BaseModel:
    stream.text_open = True
    return wire.ContentBlockStartEvent(index=stream.blocks, content_block=wire.TextBlock(text=""))


def _text(stream: MessageStream, text: str) -> list[BaseModel]:
    events = [] if stream.text_open else [_open_text(stream)]
    events.append(wire.ContentBlockDeltaEvent(index=stream.blocks, delta=wire.TextDelta(text=text)))
    return events


def _close_block(stream: MessageStream, *, text: bool) -> list[BaseModel]:
    """Close the open text block (or thinking block); the next block takes the next index."""
    if text:
        stream.text_open = False
    else:
        stream.thinking_open = False
    stream.blocks += 1
    return [wire.ContentBlockStopEvent(index=stream.blocks - 1)]


def _tool_use_block(stream: MessageStream, call: ToolCall) -> list[BaseModel]:
    index = stream.blocks
    stream.blocks += 1
    return [
        wire.ContentBlockStartEvent(index=index, content_block=_tool_use(call, {})),
        wire.ContentBlockDeltaEvent(
            index=index, delta=wire.InputJSONDelta(partial_json=call.arguments)
        ),
        wire.ContentBlockStopEvent(index=index),
    ]


def _finish(stream: MessageStream, step: Step) -> list[BaseModel]:
    events: list[BaseModel] = []
    if not stream.text_open and stream.blocks == 0:  # an empty answer is one empty text block
        events.append(_open_text(stream))
    if stream.text_open:
        events.append(wire.ContentBlockStopEvent(index=stream.blocks))
    usage = _usage(stream.totals)
    assert step.finish is not None
    stop_sequence = step.stop_sequence if step.finish == "stop" else None
    events.append(
        wire.MessageDeltaEvent(
            delta=wire.MessageDelta(
                stop_reason=_stop_reason(step.finish, stop_sequence),
                stop_sequence=stop_sequence,
            ),
            usage=wire.MessageDeltaUsage(
                output_tokens=usage.output_tokens,
                input_tokens=usage.input_tokens,
                cache_creation_input_tokens=0,
                cache_read_input_tokens=usage.cache_read_input_tokens,
            ),
        )
    )
    events.append(wire.MessageStopEvent())
    return events


async def _stream(steps: AsyncIterator[Step], message_id: str, model: str) -> AsyncIterator[bytes]:
    stream = MessageStream(message_id, model)
    async for step in steps:
        for event in on_step(stream, step):
            yield _event(event)


async def count_tokens(
    state: ServerState, model: LoadedModel, req: wire.CountTokensRequest
) -> wire.CountTokensResponse:
    """The exact prompt length the same request would have (the template, tools, images and
    all)."""
    conversation = _conversation(req)
    return wire.CountTokensResponse(
        input_tokens=await count_prompt_tokens_off_loop(state, model, conversation)
    )
