"""OpenAI serving: a validated wire request in, an engine request out, and back again.

All JSON and chat-template work happens here, on the request side; the engine only sees
`GenerationRequest`. Routes stay thin and call `serve_chat` / `serve_completion`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth import __version__
from hearth.engine.types import FinishReason, GenerationRequest, RequestOutput, SamplingParams
from hearth.errors import (
    ClientDisconnectedError,
    ContextLengthExceededError,
    HearthError,
    InvalidRequestError,
    UnsupportedParameterError,
)
from hearth.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    CompletionChoice,
    CompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    PromptTokensDetails,
    ResponseMessage,
    TextCompletion,
    TextContentPart,
    ToolMessage,
    Usage,
)
from hearth.server.errors import sse_error_event
from hearth.server.state import LoadedModel, ServerState

__all__ = ["check_token_ids", "serve_chat", "serve_completion"]

SYSTEM_FINGERPRINT = f"hearth-{__version__}"
MAX_STOP_SEQUENCES = 4
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


def _sampling_params(
    model: LoadedModel,
    prompt_len: int,
    max_new: int | None,
    *,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    presence_penalty: float | None,
    frequency_penalty: float | None,
    seed: int | None,
    stop: tuple[str, ...],
    logit_bias: dict[str, float] | None,
    ignore_eos: bool | None,
    what: str,
) -> SamplingParams:
    """Resolve limits against the slot's context: refuse, never truncate silently."""
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
            param="max_tokens",
        )
    defaults = SamplingParams(max_tokens=1)
    return SamplingParams(
        max_tokens=max_new if max_new is not None else n_ctx - prompt_len,
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        min_p=defaults.min_p if min_p is None else min_p,
        presence_penalty=presence_penalty or 0.0,
        frequency_penalty=frequency_penalty or 0.0,
        seed=seed,
        stop=stop,
        logit_bias=_logit_bias(model, logit_bias),
        ignore_eos=bool(ignore_eos),
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


def _reject_unhonoured_chat_fields(req: ChatCompletionRequest) -> None:
    if req.n not in (None, 1):
        raise _unsupported("n", "only n=1 is served for now.")
    if req.logprobs:
        raise _unsupported("logprobs", "log-probabilities are not served yet.")
    if req.top_logprobs:
        raise _unsupported("top_logprobs", "log-probabilities are not served yet.")
    if req.tools:
        raise _unsupported("tools", "tool calling is not served yet.")
    if req.tool_choice not in (None, "none"):
        raise _unsupported("tool_choice", "tool calling is not served yet.")
    if req.functions:
        raise _unsupported("functions", "function calling is not served yet.")
    if req.function_call not in (None, "none"):
        raise _unsupported("function_call", "function calling is not served yet.")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise _unsupported("response_format", "only {'type': 'text'} is served for now.")
    if req.audio is not None:
        raise _unsupported("audio", "this model produces text only.")
    if req.modalities and any(m != "text" for m in req.modalities):
        raise _unsupported("modalities", "this model produces text only.")
    if req.prediction is not None:
        raise _unsupported("prediction", "predicted outputs are not served.")
    if req.web_search_options is not None:
        raise _unsupported("web_search_options", "a local server does not search the web.")


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


def _template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    if not req.messages:
        raise InvalidRequestError(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    rendered: list[dict[str, Any]] = []
    for i, message in enumerate(req.messages):
        param = f"messages[{i}]"
        if isinstance(message, ToolMessage | FunctionMessage):
            raise _unsupported(f"{param}.role", f"'{message.role}' messages need tool calling.")
        if isinstance(message, AssistantMessage) and (message.tool_calls or message.function_call):
            raise _unsupported(f"{param}.tool_calls", "tool calling is not served yet.")
        # Most templates know no 'developer' role: it is OpenAI's new name for 'system'.
        role = "system" if isinstance(message, DeveloperMessage) else message.role
        rendered.append({"role": role, "content": _message_text(message.content, param)})
    return rendered


def _chat_prompt_tokens(model: LoadedModel, req: ChatCompletionRequest) -> list[int]:
    text = model.chat_template.render(_template_messages(req), add_generation_prompt=True)
    if model.model_info.add_bos and text.startswith(model.model_info.bos_text):
        text = text[len(model.model_info.bos_text) :]  # tokenize adds it; never two
    return model.runner.tokenize(text, add_special=True, parse_special=True)


def check_token_ids(model: LoadedModel, tokens: list[int], *, param: str) -> None:
    n_vocab = model.runner.n_vocab
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"Token id {bad} is outside the vocabulary (0 to {n_vocab - 1}).", param=param
        )


def _completion_prompt_tokens(model: LoadedModel, prompt: object) -> list[int]:
    # A list holding one prompt is the same as that prompt; more need `n`-style batching.
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise _unsupported("prompt", "send one prompt per request for now.")
        prompt = prompt[0]
    if isinstance(prompt, str):
        tokens = model.runner.tokenize(prompt, add_special=True, parse_special=True)
    else:
        assert isinstance(prompt, list)
        tokens = [int(t) for t in prompt]
        check_token_ids(model, tokens, param="prompt")
    if not tokens:
        raise InvalidRequestError("'prompt' must not be empty.", param="prompt")
    return tokens


# -- running a request -------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _usage(output: RequestOutput) -> Usage:
    return Usage(
        completion_tokens=output.completion_tokens,
        prompt_tokens=output.prompt_tokens,
        total_tokens=output.prompt_tokens + output.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=output.cached_tokens),
    )


def _finish_reason(output: RequestOutput) -> Any:
    assert output.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    return output.finish_reason.value


async def _collect(model: LoadedModel, request: GenerationRequest) -> tuple[str, RequestOutput]:
    pieces: list[str] = []
    last: RequestOutput | None = None
    async for output in model.engine.generate(request):
        pieces.append(output.text)
        last = output
    assert last is not None
    return "".join(pieces), last


async def _until_disconnect(http_request: Request, work: Awaitable[T]) -> T:
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


async def _started(
    http_request: Request, outputs: AsyncIterator[RequestOutput]
) -> AsyncIterator[RequestOutput]:
    """Wait for a stream's first output before sending headers, so that a refusal (429, a queue
    timeout's 503, an engine error) is a real HTTP status, not an event in a 200 stream."""
    first = await _until_disconnect(http_request, anext(outputs))

    async def chained() -> AsyncIterator[RequestOutput]:
        yield first
        async for output in outputs:
            yield output

    return chained()


def _sse(payload: str) -> bytes:
    return b"data: " + payload.encode() + b"\n\n"


_SSE_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _guarded_stream(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A failure after the headers went out becomes an error event, then the stream ends."""
    try:
        async for event in events:
            yield event
    except HearthError as error:
        yield sse_error_event(error)
    except Exception:
        yield sse_error_event(HearthError("The server had an error while streaming."))


# -- chat --------------------------------------------------------------------------------------


async def serve_chat(
    state: ServerState, req: ChatCompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    model = state.model_for(req.model)
    _reject_unhonoured_chat_fields(req)
    _check_stream_options(req.stream, req.stream_options)
    stop = _stop_sequences(req.stop)
    tokens = _chat_prompt_tokens(model, req)
    params = _sampling_params(
        model,
        len(tokens),
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=stop,
        logit_bias=req.logit_bias,
        ignore_eos=req.ignore_eos,
        what="messages",
    )
    completion_id = _new_id("chatcmpl")
    request = GenerationRequest(completion_id, tuple(tokens), params)
    created = int(time.time())

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await _started(http_request, model.engine.generate(request))
        events = _stream_chat(outputs, completion_id, created, req.model, include_usage)
        return StreamingResponse(
            _guarded_stream(events), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    text, last = await _until_disconnect(http_request, _collect(model, request))
    body = ChatCompletion(
        id=completion_id,
        choices=[
            ChatChoice(
                finish_reason=_finish_reason(last), index=0, message=ResponseMessage(content=text)
            )
        ],
        created=created,
        model=req.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        usage=_usage(last),
    )
    return JSONResponse(body.model_dump(mode="json"))


async def _stream_chat(
    outputs: AsyncIterator[RequestOutput],
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(delta: ChunkDelta, finish: Any = None) -> bytes:
        return _sse(
            ChatCompletionChunk(
                id=completion_id,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                created=created,
                model=model,
                system_fingerprint=SYSTEM_FINGERPRINT,
            ).model_dump_json(exclude={"usage"} if not include_usage else None)
        )

    first = True
    async for output in outputs:
        if first:
            yield chunk(ChunkDelta(role="assistant", content=""))
            first = False
        if output.text:
            yield chunk(ChunkDelta(content=output.text))
        if output.finish_reason is not None:
            yield chunk(ChunkDelta(), _finish_reason(output))
            if include_usage:
                final = ChatCompletionChunk(
                    id=completion_id,
                    choices=[],
                    created=created,
                    model=model,
                    system_fingerprint=SYSTEM_FINGERPRINT,
                    usage=_usage(output),
                )
                yield _sse(final.model_dump_json())
    yield _SSE_DONE


# -- completions -------------------------------------------------------------------------------


def _reject_unhonoured_completion_fields(req: CompletionRequest) -> None:
    if req.n not in (None, 1):
        raise _unsupported("n", "only n=1 is served for now.")
    if req.best_of not in (None, 1):
        raise _unsupported("best_of", "only best_of=1 is served for now.")
    if req.logprobs is not None:
        raise _unsupported("logprobs", "log-probabilities are not served yet.")
    if req.echo:
        raise _unsupported("echo", "echo is not served yet.")
    if req.suffix:
        raise _unsupported("suffix", "this model has no fill-in-the-middle support.")


async def serve_completion(
    state: ServerState, req: CompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    model = state.model_for(req.model)
    _reject_unhonoured_completion_fields(req)
    _check_stream_options(req.stream, req.stream_options)
    stop = _stop_sequences(req.stop)
    tokens = _completion_prompt_tokens(model, req.prompt)
    params = _sampling_params(
        model,
        len(tokens),
        req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        seed=req.seed,
        stop=stop,
        logit_bias=req.logit_bias,
        ignore_eos=req.ignore_eos,
        what="prompt",
    )
    completion_id = _new_id("cmpl")
    request = GenerationRequest(completion_id, tuple(tokens), params)
    created = int(time.time())

    def body(text: str, finish: Any, usage: Usage | None) -> TextCompletion:
        return TextCompletion(
            id=completion_id,
            choices=[CompletionChoice(finish_reason=finish, index=0, text=text)],
            created=created,
            model=req.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )

    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        outputs = await _started(http_request, model.engine.generate(request))

        async def events() -> AsyncIterator[bytes]:
            async for output in outputs:
                finish = _finish_reason(output) if output.finish_reason is not None else None
                if output.text or finish is not None:
                    yield _sse(body(output.text, finish, None).model_dump_json(exclude={"usage"}))
                if finish is not None and include_usage:
                    final = body("", None, _usage(output))
                    final.choices = []
                    yield _sse(final.model_dump_json())
            yield _SSE_DONE

        return StreamingResponse(
            _guarded_stream(events()), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    text, last = await _until_disconnect(http_request, _collect(model, request))
    return JSONResponse(body(text, _finish_reason(last), _usage(last)).model_dump(mode="json"))
