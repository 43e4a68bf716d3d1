"""OpenAI's Responses API: the adapter (request and stored history -> `Conversation`), the
renderer (`Step`s -> a `response` object or its typed SSE events) and the stored state
(`previous_response_id`, retrieve, delete, input items). https://platform.openai.com/docs/api-reference/responses

A stored response keeps the conversation up to its output (the protocol-free messages, without
the request's `instructions`, which the spec does not carry over), so a follow-up's prompt
starts with the same tokens and reuses the KV cache of the turn before.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from hearth.errors import (
    HearthError,
    InsufficientStorageError,
    InvalidRequestError,
    NotFoundError,
    no_space,
    unsupported,
)
from hearth.protocol import responses as wire
from hearth.server.core.conversation import (
    Conversation,
    Message,
    OutputFormat,
    Reasoning,
    Role,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    stop_sequences,
)
from hearth.server.core.media import MEDIA_MARKER, MediaPart, media_part_from_url
from hearth.server.core.prepare import PreparedTurn, prepare_turn_off_loop
from hearth.server.core.turns import (
    Finish,
    Step,
    UsageTotals,
    decode_steps,
    merged_outputs,
    started,
    until_disconnect,
)
from hearth.server.http.auth import key_owner
from hearth.server.http.sse import named_event, streaming_response
from hearth.server.responses.store import DB_FILENAME, ResponseStore, StoredResponse
from hearth.server.state import LoadedModel, ServerState
from hearth.settings import hearth_home

__all__ = [
    "delete_response",
    "list_input_items",
    "retrieve_response",
    "serve_response",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Spec fields with no meaning for a local server, refused when set (each with why).
_REFUSED_FIELDS = {
    "background": "background responses are not served; send the request and wait for it.",
    "conversation": "conversations are not stored; continue with 'previous_response_id'.",
    "prompt": "stored prompt templates are not served; send 'instructions' and 'input'.",
    "max_tool_calls": "the number of calls is not capped; use 'parallel_tool_calls'.",
    "top_logprobs": "log-probabilities are served on /v1/chat/completions.",
    "context_management": "Hearth never compacts a context; it refuses one that does not fit.",
    "moderation": "a local server does not moderate.",
    "image": "this model produces text only.",
    "access_programs": "a local server has no access programs.",
    "background_options": "background responses are not served.",
    "prompt_cache_options": "Hearth caches every prompt by its content; no options apply.",
}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- stored history ----------------------------------------------------------------------------


def _message_to_json(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "text": message.text,
        "tool_calls": [[c.id, c.name, c.arguments] for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "media": [[m.kind, m.base64_data, m.param, m.media_type, m.url] for m in message.media],
    }


def _message_from_json(data: dict[str, Any]) -> Message:
    return Message(
        data["role"],
        data["text"],
        tuple(ToolCall(*call) for call in data["tool_calls"]),
        tool_call_id=data["tool_call_id"],
        media=tuple(MediaPart(*media) for media in data.get("media", ())),
    )


def response_store(state: ServerState) -> ResponseStore:
    """The store, opened on first use (and expired then, and at most hourly after)."""
    store = state.responses
    if not isinstance(store, ResponseStore):  # the server keeps it, typed as its own Closeable
        store = ResponseStore(hearth_home() / DB_FILENAME)
        state.responses = store
    now = time.time()
    if now - state.responses_expired_at > 3600:
        state.responses_expired_at = now
        store.expire(state.settings.responses_max_age_s, now)
    return store


# SQLite's primary result codes for a full disk and a failed read or write of its files.
_SQLITE_FULL, _SQLITE_IOERR = 13, 10


def _store_failed(exc: OSError | sqlite3.Error) -> HearthError:
    """The store could not be read or written: 507 naming the disk when it is full."""
    code = exc.sqlite_errorcode & 0xFF if isinstance(exc, sqlite3.Error) else None
    if code in (_SQLITE_FULL, _SQLITE_IOERR) or (isinstance(exc, OSError) and no_space(exc)):
        return InsufficientStorageError(
            f"The response store could not be read or written: the disk holding "
            f"{hearth_home()} is full (or a file size limit was reached)."
        )
    logger.error("The response store failed: %s", exc)
    return HearthError("The response store failed; see the server's log.")


async def _in_store(state: ServerState, call: Callable[[ResponseStore], T]) -> T:
    """`call` with the store, on a worker thread; its failures as `_store_failed` says."""
    try:
        return await asyncio.to_thread(lambda: call(response_store(state)))
    except (OSError, sqlite3.Error) as exc:
        raise _store_failed(exc) from exc


async def _stored(
    state: ServerState, response_id: str, param: str, owner: str | None
) -> StoredResponse:
    record = await _in_store(state, lambda store: store.get(response_id, owner))
    if record is None:
        raise NotFoundError(f"Response with id '{response_id}' not found.", param=param)
    return record


# -- the adapter -------------------------------------------------------------------------------


# The thinking as an opaque string in each reasoning item (Codex asks whenever store is false).
ENCRYPTED_REASONING = "reasoning.encrypted_content"
# `summary` (and its deprecated `generate_summary`) are accepted and ignored: Hearth returns the
# whole thinking, never a summary (Codex sends summary "auto").
_REASONING_FIELDS = ("effort", "summary", "generate_summary")


def _ignored(req: wire.ResponseCreateRequest) -> tuple[str, ...]:
    """Fields accepted that change nothing here (docs/responses-api.md says why each)."""
    ignored = ["client_metadata"] if req.client_metadata is not None else []
    ignored += [
        f"tools[{i}]"
        for i, tool in enumerate(req.tools or [])
        if isinstance(tool, wire.GenericTool) and tool.type in _IGNORED_TOOLS
    ]
    if req.reasoning is not None:
        ignored += [
            f"reasoning.{name}"
            for name in ("summary", "generate_summary")
            if getattr(req.reasoning, name) is not None
        ]
    return tuple(ignored)


def _refuse_unservable_fields(req: wire.ResponseCreateRequest) -> None:
    for name, why in _REFUSED_FIELDS.items():
        value = getattr(req, name)
        if value is not None and value is not False:
            raise unsupported(name, why)
    if req.truncation == "auto":
        raise unsupported(
            "truncation",
            "Hearth never cuts a conversation silently; a prompt that does not fit its context "
            "is refused. Send 'disabled' or leave it out.",
        )
    if req.reasoning is not None:
        for name, value in req.reasoning.model_dump().items():
            if name not in _REASONING_FIELDS and value is not None:
                raise unsupported(
                    f"reasoning.{name}",
                    "Hearth returns a reasoning model's whole thinking in a reasoning item.",
                )
    for i, kind in enumerate(req.include or ()):
        if kind != ENCRYPTED_REASONING:
            raise unsupported(
                f"include[{i}]",
                f"'{kind}' is not served; only '{ENCRYPTED_REASONING}' may be included.",
            )
    if req.prompt_cache_retention not in (None, "in_memory"):
        raise unsupported(
            "prompt_cache_retention", "Hearth's prompt cache is its KV cache ('in_memory')."
        )
    if req.service_tier not in (None, "auto", "default"):
        raise unsupported("service_tier", "a local server has one tier ('default').")
    if req.text is not None and req.text.verbosity not in (None, "medium"):
        raise unsupported("text.verbosity", "this model has no verbosity control.")
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def _part_text(part: BaseModel, param: str) -> str:
    if isinstance(part, wire.InputTextPart | wire.OutputTextPart):
        return part.text
    if isinstance(part, wire.RefusalPart):
        return part.refusal
    kind = getattr(part, "type", "unknown")
    raise unsupported(param, f"content parts of type '{kind}' are not served; send text parts.")


def _content_text(content: str | list[Any], param: str) -> str:
    if isinstance(content, str):
        return content
    return "".join(_part_text(part, f"{param}.content[{j}]") for j, part in enumerate(content))


def _user_content(content: str | list[Any], param: str) -> tuple[str, tuple[MediaPart, ...]]:
    """A user message's text, with MEDIA_MARKER where each `input_image` sits, and its images."""
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    media: list[MediaPart] = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if isinstance(part, wire.InputImagePart):
            if part.image_url is None:
                raise unsupported(
                    f"{where}.file_id", "files are not stored here; send 'image_url' as a data URL."
                )
            media.append(media_part_from_url(part.image_url, f"{where}.image_url", "image"))
            texts.append(MEDIA_MARKER)
        elif isinstance(part, wire.InputAudioPart):
            media.append(MediaPart("audio", "", f"{where}.input_audio"))
            texts.append(MEDIA_MARKER)
        else:
            texts.append(_part_text(part, where))
    return "".join(texts), tuple(media)


def _listed_content(text: str, media: tuple[MediaPart, ...]) -> list[dict[str, Any]]:
    """A user message's content as `input_items` lists it: its text, then its images."""
    content: list[dict[str, Any]] = [{"type": "input_text", "text": text.replace(MEDIA_MARKER, "")}]
    for part in media:
        url = part.url or f"data:{part.media_type or 'image/png'};base64,{part.base64_data}"
        content.append({"type": "input_image", "image_url": url, "detail": "auto"})
    return content


def _input_messages(
    items: str | list[Any] | None,
) -> tuple[list[Message], list[dict[str, Any]]]:
    """The input as messages, and as the items `input_items` lists (each given an id)."""
    if items is None:
        raise InvalidRequestError("'input' is required.", param="input")
    if isinstance(items, str):
        item_id = _new_id("msg")
        listed = {
            "id": item_id,
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": items}],
        }
        return [Message("user", items)], [listed]
    messages: list[Message] = []
    listed_items: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if isinstance(item, wire.EasyInputMessage):
            media: tuple[MediaPart, ...] = ()
            if item.role == "user":
                text, media = _user_content(item.content, param)
            else:
                text = _content_text(item.content, param)
            # Most templates know no 'developer' role: it is OpenAI's new name for 'system'.
            role: Role = "system" if item.role == "developer" else item.role
            messages.append(Message(role, text, media=media))
            part = "output_text" if item.role == "assistant" else "input_text"
            content: dict[str, Any] = {"type": part, "text": text}
            if part == "output_text":
                content["annotations"] = []
            listed_items.append(
                {
                    "id": item.id or _new_id("msg"),
                    "type": "message",
                    "role": item.role,
                    "status": item.status or "completed",
                    "content": _listed_content(text, media) if media else [content],
                }
            )
        elif isinstance(item, wire.FunctionCallItem):
            call = ToolCall(item.call_id, item.name, item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                messages[-1] = replace(last, tool_calls=(*last.tool_calls, call))
            else:
                messages.append(Message("assistant", "", (call,)))
            listed_items.append(
                {
                    "id": item.id or _new_id("fc"),
                    "type": "function_call",
                    "call_id": item.call_id,
                    "name": item.name,
                    "arguments": item.arguments,
                    "status": item.status or "completed",
                }
            )
        elif isinstance(item, wire.FunctionCallOutputItem):
            output = _content_text(item.output, f"{param}.output")
            messages.append(Message("tool", output, tool_call_id=item.call_id))
            listed_items.append(
                {
                    "id": item.id or _new_id("fco"),
                    "type": "function_call_output",
                    "call_id": item.call_id,
                    "output": output,
                    "status": item.status or "completed",
                }
            )
        elif getattr(item, "type", None) == "reasoning":
            # Earlier thinking sent back (as agents do): dropped, as chat templates drop it.
            listed_items.append(
                {**item.model_dump(), "id": getattr(item, "id", None) or _new_id("rs")}
            )
        else:
            kind = getattr(item, "type", "unknown")
            raise unsupported(
                f"{param}.type",
                f"input items of type '{kind}' are not served; send messages, function_call "
                "and function_call_output items.",
            )
    return messages, listed_items


# Built-in tools that OpenAI's servers run, left out rather than refused: the model answers
# without them (Codex offers web_search on every request). Journaled as ignored.
_IGNORED_TOOLS = frozenset({"web_search", "web_search_preview"})


def _function(tool: wire.FunctionTool, param: str) -> Tool:
    parameters = tool.parameters or {"type": "object", "properties": {}}
    return Tool(
        tool.name,
        tool.description or "",
        parameters,
        param=param,
        strict=tool.strict is not False,  # the spec's default is strict
    )


def _tools(req: wire.ResponseCreateRequest) -> tuple[tuple[Tool, ...], dict[str, str]]:
    """The function tools, a namespace's members among them, and each member's namespace."""
    tools: list[Tool] = []
    namespaces: dict[str, str] = {}
    for i, tool in enumerate(req.tools or []):
        if isinstance(tool, wire.FunctionTool):
            tools.append(_function(tool, f"tools[{i}]"))
        elif isinstance(tool, wire.NamespaceTool):
            for j, member in enumerate(tool.tools):
                tools.append(_function(member, f"tools[{i}].tools[{j}]"))
                namespaces[member.name] = tool.name
        elif tool.type not in _IGNORED_TOOLS:
            raise unsupported(
                f"tools[{i}].type",
                f"the built-in tool '{tool.type}' is not served; Hearth runs function tools.",
            )
    return tuple(tools), namespaces


def _tool_choice(req: wire.ResponseCreateRequest, has_tools: bool) -> ToolChoice:
    choice = req.tool_choice
    parallel = req.parallel_tool_calls is not False
    if isinstance(choice, wire.ToolChoiceFunction):
        if not has_tools:
            raise InvalidRequestError(
                "'tool_choice' names a function, but 'tools' is empty.", param="tool_choice"
            )
        return ToolChoice("named", choice.name, parallel=parallel)
    if choice is None or isinstance(choice, str):
        mode = choice or "auto"
        if mode == "required" and not has_tools:
            raise InvalidRequestError(
                "'tool_choice' is 'required', but 'tools' is empty.", param="tool_choice"
            )
        return ToolChoice(mode, parallel=parallel)
    raise unsupported(
        "tool_choice",
        f"a tool choice of type '{choice.type}' is not served; use 'none', 'auto', 'required' "
        "or a function.",
    )


def _output_format(req: wire.ResponseCreateRequest) -> OutputFormat:
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, wire.TextFormatJsonObject):
        return OutputFormat("json_object", param="text.format", schema_param="text.format")
    if isinstance(fmt, wire.TextFormatJsonSchema):
        return OutputFormat(
            "json_schema",
            fmt.schema_,
            param="text.format",
            schema_param="text.format",
            strict=fmt.strict is True,
        )
    return OutputFormat()


@dataclass(slots=True)
class _Turn:
    """A request made ready: the conversation, its history to store, and its input items."""

    conversation: Conversation
    history: list[Message]  # without instructions: what a follow-up continues from
    input_items: list[dict[str, Any]]
    namespaces: dict[str, str] = field(default_factory=dict)  # a function -> its namespace
    prepared: PreparedTurn | None = field(default=None)


async def _conversation(
    state: ServerState, req: wire.ResponseCreateRequest, owner: str | None
) -> _Turn:
    _refuse_unservable_fields(req)
    history: list[Message] = []
    if req.previous_response_id is not None:
        record = await _stored(state, req.previous_response_id, "previous_response_id", owner)
        history = [_message_from_json(m) for m in record.conversation]
    new_messages, input_items = _input_messages(req.input)
    history += new_messages
    system = [Message("system", req.instructions)] if req.instructions else []
    tools, namespaces = _tools(req)
    conversation = Conversation(
        model=req.model,
        messages=(*system, *history),
        tools=tools,
        tool_choice=_tool_choice(req, bool(tools)),
        output_format=_output_format(req),
        sampling=Sampling(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            seed=req.seed,
            stop=stop_sequences(req.stop),
        ),
        max_tokens=req.max_output_tokens,
        user=req.user or req.safety_identifier,
        messages_param="input",
        reasoning=Reasoning.from_effort(
            req.reasoning.effort if req.reasoning is not None else None, "reasoning.effort"
        ),
        ignored=_ignored(req),
    )
    return _Turn(conversation, history, input_items, namespaces)


# -- the renderer ------------------------------------------------------------------------------


def _usage(totals: UsageTotals) -> wire.ResponseUsage:
    output = totals.total_completion_tokens
    return wire.ResponseUsage(
        input_tokens=totals.prompt_tokens,
        input_tokens_details=wire.InputTokensDetails(
            cached_tokens=totals.cached_tokens,
            cache_write_tokens=totals.prompt_tokens - totals.cached_tokens,
        ),
        output_tokens=output,
        output_tokens_details=wire.OutputTokensDetails(
            reasoning_tokens=totals.total_reasoning_tokens
        ),
        total_tokens=totals.prompt_tokens + output,
    )


def _message_item(item_id: str, text: str, status: str) -> wire.OutputMessage:
    return wire.OutputMessage(
        id=item_id,
        status=status,
        content=[wire.OutputText(text=text)],
    )


def _reasoning_item(item_id: str, text: str, status: str, *, encrypted: bool) -> wire.ReasoningItem:
    opaque = base64.b64encode(text.encode()).decode() if encrypted else None
    return wire.ReasoningItem(
        id=item_id, content=[wire.ReasoningText(text=text)], encrypted_content=opaque, status=status
    )


def _call_item(
    item_id: str,
    call: ToolCall,
    status: str,
    namespace: str | None,
    *,
    arguments: str | None = None,
) -> wire.FunctionToolCall:
    return wire.FunctionToolCall(
        id=item_id,
        call_id=call.id,
        name=call.name,
        arguments=call.arguments if arguments is None else arguments,
        status=status,
        namespace=namespace,
    )


class _Responder:
    """One response's object, filled as the turn runs; stored when it ends, if asked."""

    def __init__(
        self,
        state: ServerState,
        req: wire.ResponseCreateRequest,
        turn: _Turn,
        owner: str | None,
    ) -> None:
        self.state, self.req, self.turn = state, req, turn
        self.owner = owner  # the API key's fingerprint: only that key reads it back
        self.id = _new_id("resp")
        self.created_at = int(time.time())

    def body(
        self,
        status: wire.ResponseStatus,
        output: list[Any],
        usage: wire.ResponseUsage | None = None,
        finish: Finish | None = None,
    ) -> wire.Response:
        req = self.req
        incomplete = finish == "length"
        return wire.Response(
            id=self.id,
            created_at=self.created_at,
            status=status,
            completed_at=int(time.time()) if status in ("completed", "incomplete") else None,
            incomplete_details=(
                wire.IncompleteDetails(reason="max_output_tokens") if incomplete else None
            ),
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=req.model,
            output=output,
            parallel_tool_calls=req.parallel_tool_calls is not False,
            previous_response_id=req.previous_response_id,
            prompt_cache_key=req.prompt_cache_key,
            reasoning=req.reasoning,
            safety_identifier=req.safety_identifier,
            store=req.store is not False,
            temperature=1.0 if req.temperature is None else req.temperature,
            text=req.text or wire.ResponseTextConfig(format=wire.TextFormatText(type="text")),
            # Hosted tools and tool choices were refused: what is left is what was used.
            tool_choice=(
                req.tool_choice
                if isinstance(req.tool_choice, str | wire.ToolChoiceFunction)
                else "auto"
            ),
            tools=[t for t in req.tools or [] if isinstance(t, wire.FunctionTool)],
            top_p=1.0 if req.top_p is None else req.top_p,
            truncation="disabled",
            usage=usage,
            user=req.user,
            metadata=req.metadata or {},
        )

    async def store(self, body: wire.Response, text: str, calls: list[ToolCall]) -> wire.Response:
        """Store the response; the body to answer. When the write fails (a full disk) the answer
        still goes out, with `store: false`: it is generated already, and a 5xx would make the
        SDKs retry and generate it again."""
        if self.req.store is False:
            return body
        history = [*self.turn.history, Message("assistant", text, tuple(calls))]
        record = StoredResponse(
            id=self.id,
            created_at=float(self.created_at),
            model=self.req.model,
            response=body.model_dump(mode="json", by_alias=True),
            input_items=self.turn.input_items,
            conversation=[_message_to_json(m) for m in history],
            previous_response_id=self.req.previous_response_id,
            owner=self.owner,
        )
        state = self.state
        try:
            await asyncio.to_thread(lambda: response_store(state).put(record))
        except (OSError, sqlite3.Error) as exc:
            logger.warning("Response %s was answered but not stored: %s", self.id, exc)
            return body.model_copy(update={"store": False})
        return body


def _final_status(finish: Finish) -> Literal["completed", "incomplete"]:
    return "incomplete" if finish == "length" else "completed"


async def serve_response(
    state: ServerState,
    model: LoadedModel,
    req: wire.ResponseCreateRequest,
    http_request: Request,
) -> JSONResponse | StreamingResponse:
    owner = key_owner(http_request)
    turn = await _conversation(state, req, owner)
    prepared = await prepare_turn_off_loop(state, model, turn.conversation, id_prefix="resp")
    responder = _Responder(state, req, turn, owner)
    stream = ResponseStream(
        encrypted_reasoning=ENCRYPTED_REASONING in (req.include or ()),
        namespaces=turn.namespaces,
    )

    if req.stream:
        outputs = await started(http_request, merged_outputs(prepared.model, [prepared.request]))
        steps = decode_steps(outputs, prepared.request, parse_tools=prepared.parse_tools)
        return streaming_response(
            _stream_response(stream, responder, steps),
            on_error=lambda error: b"".join(_event(e) for e in on_error(stream, error)),
        )

    outputs = merged_outputs(prepared.model, [prepared.request])
    steps = decode_steps(outputs, prepared.request, parse_tools=prepared.parse_tools)
    await until_disconnect(http_request, run_to_end(stream, steps))
    body = await _final_body(stream, responder)
    return JSONResponse(body.model_dump(mode="json", by_alias=True))


async def run_to_end(stream: ResponseStream, steps: AsyncIterator[Step]) -> None:
    """The reply that is not streamed goes through the same states; its events are not sent."""
    async for step in steps:
        on_step(stream, step)
    on_end(stream)


async def _final_body(stream: ResponseStream, responder: _Responder) -> wire.Response:
    """The response a finished stream stands for, stored if asked: the reply, or the last
    event of the stream."""
    body = responder.body(stream.status, stream.output, _usage(stream.totals), stream.finish)
    return await responder.store(body, "".join(stream.text), stream.calls)


def _event(model: BaseModel) -> bytes:
    return named_event(model.type, model.model_dump_json(by_alias=True))  # type: ignore[attr-defined]


async def _stream_response(
    stream: ResponseStream, responder: _Responder, steps: AsyncIterator[Step]
) -> AsyncIterator[bytes]:
    for event in on_start(stream, responder.body("in_progress", [])):
        yield _event(event)
    async for step in steps:
        for event in on_step(stream, step):
            yield _event(event)
    for event in on_end(stream):
        yield _event(event)
    yield _event(on_final(stream, await _final_body(stream, responder)))


# -- the stream, as a state machine ------------------------------------------------------------


@dataclass(slots=True)
class OpenItem:
    """An output item added and not yet done: its id and its place in the output."""

    id: str
    index: int


@dataclass(slots=True)
class ResponseStream:
    """Where a response stands: its output items (each put in place when done), the reasoning
    item or message still open, the thinking, text and calls so far, the usage, and the next
    event's number. One small function per event moves it on and returns the events to send:
    `on_start`, `on_step` for each step, `on_end`, `on_final` with the body, `on_error` for an
    error after text. The reply that is not streamed is this state at its end."""

    encrypted_reasoning: bool = False  # a reasoning item also carries its thinking, opaque
    namespaces: dict[str, str] = field(default_factory=dict)  # a function -> its namespace
    new_id: Callable[[str], str] = _new_id
    sequence: int = 0
    output: list[Any] = field(default_factory=list)  # None in the place of an open item
    reasoning: OpenItem | None = None
    thinking: list[str] = field(default_factory=list)
    message: OpenItem | None = None
    message_text: list[str] = field(default_factory=list)  # the open message's
    text: list[str] = field(default_factory=list)  # every message's, for the stored history
    calls: list[ToolCall] = field(default_factory=list)
    totals: UsageTotals = field(default_factory=UsageTotals)
    finish: Finish = "stop"

    @property
    def status(self) -> Literal["completed", "incomplete"]:
        return _final_status(self.finish)

    def number(self) -> int:
        """The next event's sequence number."""
        self.sequence += 1
        return self.sequence - 1


def on_start(stream: ResponseStream, in_progress: wire.Response) -> list[BaseModel]:
    return [
        wire.ResponseCreatedEvent(sequence_number=stream.number(), response=in_progress),
        wire.ResponseInProgressEvent(sequence_number=stream.number(), response=in_progress),
    ]


def on_step(stream: ResponseStream, step: Step) -> list[BaseModel]:
    """Thinking goes to one reasoning item, done when text or a call follows; text to a
    message, done when a call follows (text after it begins another); each call is an item
    added and done at once."""
    stream.totals.add(step.output, step.prompt_index)
    events: list[BaseModel] = []
    if step.reasoning:
        events += _think(stream, step.reasoning)
    if stream.reasoning is not None and (step.text or step.calls):
        events += _close_reasoning(stream, "completed")
    if step.text:
        events += _write(stream, step.text)
    for call in step.calls:
        if stream.message is not None:
            events += _close_message(stream, "completed")
        events += _call(stream, call)
    if step.finish is not None:
        stream.finish = step.finish
    return events


def on_end(stream: ResponseStream) -> list[BaseModel]:
    """The turn ended: the items still open are done with the response's status; a response
    with neither text nor calls answers with an empty message."""
    events: list[BaseModel] = []
    if stream.reasoning is not None:
        events += _close_reasoning(stream, stream.status)
    if not stream.text and not stream.calls:
        events += _open_message(stream)
    if stream.message is not None:
        events += _close_message(stream, stream.status)
    return events


def on_final(stream: ResponseStream, body: wire.Response) -> BaseModel:
    """The last event: the whole response, as the reply that is not streamed would be."""
    if stream.status == "incomplete":
        return wire.ResponseIncompleteEvent(sequence_number=stream.number(), response=body)
    return wire.ResponseCompletedEvent(sequence_number=stream.number(), response=body)


def on_error(stream: ResponseStream, error: HearthError) -> list[BaseModel]:
    """An error after the headers went out: one error event, numbered on from the stream's."""
    return [
        wire.ErrorEvent(
            sequence_number=stream.number(),
            code=error.code or error.error_type,
            message=error.message,
            param=error.param,
        )
    ]


def _think(stream: ResponseStream, text: str) -> list[BaseModel]:
    events: list[BaseModel] = []
    if stream.reasoning is None and not stream.thinking:
        stream.reasoning = OpenItem(stream.new_id("rs"), len(stream.output))
        stream.output.append(None)
        item = wire.ReasoningItem(id=stream.reasoning.id, status="in_progress")
        events.append(
            wire.ResponseOutputItemAddedEvent(
                sequence_number=stream.number(), output_index=stream.reasoning.index, item=item
            )
        )
    if stream.reasoning is None:
        return events  # thinking after the answer began (a splitter never gives any): dropped
    stream.thinking.append(text)
    events.append(
        wire.ReasoningTextDeltaEvent(
            sequence_number=stream.number(),
            item_id=stream.reasoning.id,
            output_index=stream.reasoning.index,
            content_index=0,
            delta=text,
        )
    )
    return events


def _close_reasoning(stream: ResponseStream, status: str) -> list[BaseModel]:
    assert stream.reasoning is not None
    opened, stream.reasoning = stream.reasoning, None
    text = "".join(stream.thinking)
    item = _reasoning_item(opened.id, text, status, encrypted=stream.encrypted_reasoning)
    stream.output[opened.index] = item
    return [
        wire.ReasoningTextDoneEvent(
            sequence_number=stream.number(),
            item_id=opened.id,
            output_index=opened.index,
            content_index=0,
            text=text,
        ),
        wire.ResponseOutputItemDoneEvent(
            sequence_number=stream.number(), output_index=opened.index, item=item
        ),
    ]


def _open_message(stream: ResponseStream) -> list[BaseModel]:
    message = stream.message = OpenItem(stream.new_id("msg"), len(stream.output))
    stream.output.append(None)
    return [
        wire.ResponseOutputItemAddedEvent(
            sequence_number=stream.number(),
            output_index=message.index,
            item=wire.OutputMessage(id=message.id, status="in_progress", content=[]),
        ),
        wire.ResponseContentPartAddedEvent(
            sequence_number=stream.number(),
            item_id=message.id,
            output_index=message.index,
            content_index=0,
            part=wire.OutputText(text=""),
        ),
    ]


def _write(stream: ResponseStream, text: str) -> list[BaseModel]:
    events = _open_message(stream) if stream.message is None else []
    assert stream.message is not None
    stream.message_text.append(text)
    stream.text.append(text)
    events.append(
        wire.OutputTextDeltaEvent(
            sequence_number=stream.number(),
            item_id=stream.message.id,
            output_index=stream.message.index,
            content_index=0,
            delta=text,
        )
    )
    return events


def _close_message(stream: ResponseStream, status: str) -> list[BaseModel]:
    message, stream.message = stream.message, None
    assert message is not None
    text = "".join(stream.message_text)
    stream.message_text.clear()
    item = _message_item(message.id, text, status)
    stream.output[message.index] = item
    return [
        wire.OutputTextDoneEvent(
            sequence_number=stream.number(),
            item_id=message.id,
            output_index=message.index,
            content_index=0,
            text=text,
        ),
        wire.ResponseContentPartDoneEvent(
            sequence_number=stream.number(),
            item_id=message.id,
            output_index=message.index,
            content_index=0,
            part=wire.OutputText(text=text),
        ),
        wire.ResponseOutputItemDoneEvent(
            sequence_number=stream.number(), output_index=message.index, item=item
        ),
    ]


def _call(stream: ResponseStream, call: ToolCall) -> list[BaseModel]:
    item_id, index = stream.new_id("fc"), len(stream.output)
    namespace = stream.namespaces.get(call.name)
    done = _call_item(item_id, call, "completed", namespace)
    stream.calls.append(call)
    stream.output.append(done)
    added = _call_item(item_id, call, "in_progress", namespace, arguments="")
    return [
        wire.ResponseOutputItemAddedEvent(
            sequence_number=stream.number(), output_index=index, item=added
        ),
        wire.FunctionCallArgumentsDeltaEvent(
            sequence_number=stream.number(),
            item_id=item_id,
            output_index=index,
            delta=call.arguments,
        ),
        wire.FunctionCallArgumentsDoneEvent(
            sequence_number=stream.number(),
            item_id=item_id,
            output_index=index,
            name=call.name,
            arguments=call.arguments,
        ),
        wire.ResponseOutputItemDoneEvent(
            sequence_number=stream.number(), output_index=index, item=done
        ),
    ]


# -- stored responses --------------------------------------------------------------------------


async def retrieve_response(
    state: ServerState, response_id: str, *, stream: bool, include: list[str], owner: str | None
) -> JSONResponse:
    if stream:
        raise unsupported("stream", "there are no background responses to replay.")
    if include:
        raise unsupported("include", "no extra output data is served.")
    record = await _stored(state, response_id, "response_id", owner)
    return JSONResponse(record.response)


async def delete_response(
    state: ServerState, response_id: str, owner: str | None
) -> wire.DeletedResponse:
    deleted = await _in_store(state, lambda store: store.delete(response_id, owner))
    if not deleted:
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return wire.DeletedResponse(id=response_id)


async def list_input_items(
    state: ServerState,
    response_id: str,
    *,
    after: str | None,
    before: str | None,
    limit: int,
    order: Literal["asc", "desc"],
    owner: str | None,
) -> wire.InputItemList:
    page, has_more = await _in_store(
        state,
        lambda store: store.input_items(
            response_id, after=after, before=before, limit=limit, order=order, owner=owner
        ),
    )
    return wire.InputItemList(
        data=page,
        first_id=page[0]["id"] if page else None,
        last_id=page[-1]["id"] if page else None,
        has_more=has_more,
    )
