"""Running a prepared request, and reading its output back as text and whole tool calls.

Every API's renderer reads the same `Step`s: per choice, the text to show, the tool calls that
completed, and at the end a protocol-free `Finish`. Two rules hold here for every API:
- a call identical (name and arguments) to one the model already made in this turn ends the
  turn there, as a tool call: small models loop, and a client would run the call twice;
- a call cut short by the token limit is never passed on (its arguments are not JSON); the
  finish still says `length`, and the log says what was dropped.
Calls are passed on whole, once their closing marker arrived, so a repeat can still be dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from hearth.engine.types import (
    FinishReason,
    GenerationRequest,
    ReasoningBudget,
    RequestOutput,
    TokenLogprob,
)
from hearth.errors import ClientDisconnectedError
from hearth.server.core.conversation import ToolCall
from hearth.server.core.tools import ToolCallParser, partial_suffix
from hearth.server.http.journal import journal_active, note_finish, note_generation
from hearth.server.state import LoadedModel

__all__ = [
    "ChoiceResult",
    "Client",
    "CollectedChoice",
    "Finish",
    "ReasoningSplitter",
    "Step",
    "TurnDecoder",
    "UsageTotals",
    "collect",
    "collect_turn",
    "decode_steps",
    "merged_outputs",
    "started",
    "until_disconnect",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Finish = Literal["stop", "length", "tool_calls"]


# -- running -----------------------------------------------------------------------------------


async def merged_outputs(
    model: LoadedModel, requests: Sequence[GenerationRequest], *, journal: bool = True
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several engine requests as one stream, as (prompt index, output) with each
    output's index made unique across the requests. Leaving early aborts them all."""
    if journal and journal_active():
        inner = _journaled(model, requests)
        try:
            async for journaled in inner:
                yield journaled
        finally:
            await inner.aclose()  # notes the generation now, before the line is written
        return
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


async def _journaled(
    model: LoadedModel, requests: Sequence[GenerationRequest]
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """merged_outputs, noting the generation in the request's journal line (--journal)."""
    first: float | None = None
    completion: dict[int, int] = {}
    prompt = cached = 0
    finish: str | None = None
    seen: set[int] = set()
    try:
        async for prompt_index, output in merged_outputs(model, requests, journal=False):
            if first is None:
                first = time.perf_counter()
            if prompt_index not in seen:
                seen.add(prompt_index)
                prompt += output.prompt_tokens
                cached += output.cached_tokens
            completion[output.index] = output.completion_tokens
            if output.finish_reason is not None:
                finish = output.finish_reason.value
            yield prompt_index, output
    finally:
        note_generation(
            request_id=requests[0].request_id,
            model=model.model_id,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=sum(completion.values()),
            finish_reason=finish,
            first_token_s=first,
        )


class Client(Protocol):
    """The HTTP request a turn serves, as far as a turn needs it: whether its client left
    (Starlette's Request is one; the core imports no web framework)."""

    @property
    def receive(self) -> Callable[[], Awaitable[MutableMapping[str, Any]]]: ...


async def until_disconnect(http_request: Client, work: Awaitable[T]) -> T:
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


async def started(http_request: Client, outputs: AsyncIterator[T]) -> AsyncIterator[T]:
    """Wait for a stream's first output before sending headers, so that a refusal (429, a queue
    timeout's 503, an engine error) is a real HTTP status, not an event in a 200 stream."""
    first = await until_disconnect(http_request, anext(outputs))

    async def chained() -> AsyncIterator[T]:
        yield first
        async for output in outputs:
            yield output

    return chained()


# -- usage -------------------------------------------------------------------------------------


@dataclass(slots=True)
class UsageTotals:
    """Usage over a request's choices (and its prompts, for a list of prompts)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: dict[int, int] = field(default_factory=dict)  # by choice index
    reasoning_tokens: dict[int, int] = field(default_factory=dict)  # by choice index
    accepted_prediction_tokens: dict[int, int] = field(default_factory=dict)  # by choice index
    rejected_prediction_tokens: dict[int, int] = field(default_factory=dict)  # by choice index
    prompts_seen: set[int] = field(default_factory=set)

    def add(self, output: RequestOutput, prompt_index: int = 0) -> None:
        if prompt_index not in self.prompts_seen:
            self.prompts_seen.add(prompt_index)
            self.prompt_tokens += output.prompt_tokens
            self.cached_tokens += output.cached_tokens
        self.completion_tokens[output.index] = output.completion_tokens
        self.reasoning_tokens[output.index] = output.reasoning_tokens
        self.accepted_prediction_tokens[output.index] = output.accepted_prediction_tokens
        self.rejected_prediction_tokens[output.index] = output.rejected_prediction_tokens

    @property
    def total_completion_tokens(self) -> int:
        return sum(self.completion_tokens.values())

    @property
    def total_reasoning_tokens(self) -> int:
        return sum(self.reasoning_tokens.values())


# -- raw text (completions, raw generate) ------------------------------------------------------


@dataclass(slots=True)
class CollectedChoice:
    """One choice's raw output, gathered for a reply that is not streamed."""

    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)


async def collect(
    model: LoadedModel,
    requests: Sequence[GenerationRequest],
    on_output: Callable[[], None] | None = None,
) -> tuple[dict[int, CollectedChoice], UsageTotals]:
    """Every output of the requests, gathered per choice, as raw text. `on_output` runs as each
    arrives (the Ollama API times its first token with it)."""
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


# -- a turn: thinking, text and whole tool calls -----------------------------------------------


class ReasoningSplitter:
    """A reasoning model's output split into thinking and answer as it streams. A tag cut
    across pieces is held back until the next piece decides it; the whitespace that opens the
    thinking and the answer is dropped."""

    __slots__ = ("_answer_begun", "_close", "_held", "_open", "_state", "_thinking_begun")

    def __init__(self, open_tag: str, close_tag: str, *, starts_inside: bool) -> None:
        self._open, self._close = open_tag, close_tag
        self._state = "thinking" if starts_inside else "before"
        self._held = ""
        self._thinking_begun = self._answer_begun = False

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, answer) text of this piece."""
        thinking: list[str] = []
        answer: list[str] = []
        buffer, self._held = self._held + text, ""
        while buffer:
            if self._state == "before":
                stripped = buffer.lstrip()
                if stripped.startswith(self._open):
                    buffer, self._state = stripped[len(self._open) :], "thinking"
                elif self._open.startswith(stripped):
                    self._held = buffer  # may still become the open tag
                    break
                else:
                    self._state = "answer"  # an answer with no thinking
            elif self._state == "thinking":
                end = buffer.find(self._close)
                if end >= 0:
                    thinking.append(buffer[:end])
                    buffer, self._state = buffer[end + len(self._close) :], "answer"
                    continue
                keep = partial_suffix(buffer, self._close)
                thinking.append(buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep :]
                break
            else:
                answer.append(buffer)
                break
        return self._begin_thinking("".join(thinking)), self._begin_answer("".join(answer))

    def finish(self) -> tuple[str, str]:
        """What was held back, at the end of the output."""
        held, self._held = self._held, ""
        if self._state == "thinking":
            return self._begin_thinking(held), ""
        return "", self._begin_answer(held)

    def _begin_thinking(self, text: str) -> str:
        if not self._thinking_begun:
            text = text.lstrip()
            self._thinking_begun = bool(text)
        return text

    def _begin_answer(self, text: str) -> str:
        if not self._answer_begun:
            text = text.lstrip()
            self._answer_begun = bool(text)
        return text


class TurnDecoder:
    """One choice's output as text and whole tool calls (see the module's rules)."""

    __slots__ = ("_emitted", "_parser", "_request_id", "_seen", "_splitter", "calls", "ended")

    def __init__(
        self,
        request_id: str,
        *,
        parse_tools: bool,
        reasoning: ReasoningBudget | None = None,
    ) -> None:
        self._request_id = request_id
        self._parser = ToolCallParser() if parse_tools else None
        self._splitter = (
            ReasoningSplitter(
                reasoning.open_text, reasoning.close_text, starts_inside=reasoning.starts_open
            )
            if reasoning is not None
            else None
        )
        self._emitted = 0  # parser calls passed on or dropped
        self._seen: set[tuple[str, str]] = set()
        self.calls: list[ToolCall] = []
        self.ended = False  # a repeated call ended the turn

    def feed(self, text: str) -> tuple[str, str, list[ToolCall]]:
        """The thinking, the text to show and the calls completed by this piece of output."""
        thinking = ""
        if self._splitter is not None:
            thinking, text = self._splitter.feed(text)
        parser = self._parser
        if parser is None:
            return thinking, text, []
        if self.ended:
            return thinking, "", []
        shown = "".join(value for kind, value in parser.feed(text) if kind == "content")
        return thinking, shown, self._completed(parser)

    def finish(self, reason: FinishReason) -> tuple[str, str, list[ToolCall], Finish]:
        """The rest of the output at its end, and how the turn ended."""
        thinking, text = "", ""
        if self._splitter is not None:
            thinking, text = self._splitter.finish()
        parser = self._parser
        if parser is None:
            return thinking, text, [], "length" if reason is FinishReason.LENGTH else "stop"
        shown, calls = "", []
        if not self.ended:
            more = list(parser.feed(text)) if text else []
            cut = parser.in_call
            more += parser.finish()
            shown = "".join(value for kind, value in more if kind == "content")
            if cut:
                # Cut while its name was still arriving, the call has no entry yet.
                open_call = parser.calls[-1] if parser.calls else None
                logger.warning(
                    "%s: dropped the tool call %r cut short at %s (arguments %r)",
                    self._request_id,
                    open_call.name if open_call else None,
                    reason.value,
                    open_call.arguments if open_call else "",
                )
                self._emitted = len(parser.calls)
            calls = self._completed(parser)
        if reason is FinishReason.LENGTH and not self.ended:
            return thinking, shown, calls, "length"
        return thinking, shown, calls, "tool_calls" if self.calls else "stop"

    def _completed(self, parser: ToolCallParser) -> list[ToolCall]:
        done = len(parser.calls) - (1 if parser.in_call else 0)
        completed = []
        while self._emitted < done and not self.ended:
            call = parser.calls[self._emitted]
            self._emitted += 1
            try:
                key = (call.name, json.dumps(json.loads(call.arguments), sort_keys=True))
            except ValueError:
                logger.warning(
                    "%s: dropped the tool call %r, whose arguments are not JSON: %r",
                    self._request_id,
                    call.name,
                    call.arguments,
                )
                continue
            if key in self._seen:
                logger.info(
                    "%s: the model repeated the call %r; its turn ends there",
                    self._request_id,
                    call.name,
                )
                self.ended = True
                break
            self._seen.add(key)
            whole = ToolCall(call.id, call.name, call.arguments)
            self.calls.append(whole)
            completed.append(whole)
        return completed


@dataclass(slots=True)
class Step:
    """What one engine output means for one choice: the text to show, the tool calls that
    completed, and on the choice's last step how it finished."""

    index: int
    prompt_index: int
    output: RequestOutput
    text: str
    calls: list[ToolCall]
    finish: Finish | None = None
    reasoning: str = ""  # a reasoning model's thinking, kept apart from the answer

    @property
    def stop_sequence(self) -> str | None:
        return self.output.stop_sequence


async def decode_steps(
    outputs: AsyncIterator[tuple[int, RequestOutput]],
    request: GenerationRequest,
    *,
    parse_tools: bool,
) -> AsyncIterator[Step]:
    """The engine's outputs as `Step`s. A choice that repeats a call finishes at once; when all
    request's choices have finished, the rest of the output is not read and it is aborted."""
    request_id, n, reasoning = request.request_id, request.n, request.params.reasoning
    decoders: dict[int, TurnDecoder] = {}
    finished: set[int] = set()
    try:
        async for prompt_index, output in outputs:
            index = output.index
            if index in finished:
                continue  # a choice that ended on a repeated call; its rest is discarded
            decoder = decoders.get(index)
            if decoder is None:
                decoder = decoders[index] = TurnDecoder(
                    request_id, parse_tools=parse_tools, reasoning=reasoning
                )
            thinking, text, calls = decoder.feed(output.text)
            finish: Finish | None = None
            if output.finish_reason is not None:
                more_thinking, tail, more, finish = decoder.finish(output.finish_reason)
                thinking, text, calls = thinking + more_thinking, text + tail, calls + more
            elif decoder.ended:
                finish = "tool_calls"
            if finish is not None:
                note_finish(finish)
            yield Step(index, prompt_index, output, text, calls, finish, thinking)
            if finish is not None:
                finished.add(index)
                if len(finished) == n:
                    return
    finally:
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            await aclose()  # aborts what is still running


@dataclass(slots=True)
class ChoiceResult:
    """One choice of a turn that is not streamed."""

    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    finish: Finish = "stop"
    reasoning: str = ""
    stop_sequence: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0


async def collect_turn(
    model: LoadedModel,
    request: GenerationRequest,
    *,
    parse_tools: bool,
    on_output: Callable[[], None] | None = None,
) -> tuple[dict[int, ChoiceResult], UsageTotals]:
    """A whole turn, per choice: text, calls and finish."""
    results: dict[int, ChoiceResult] = {}
    totals = UsageTotals()
    texts: dict[int, list[str]] = {}
    thoughts: dict[int, list[str]] = {}
    steps = decode_steps(merged_outputs(model, [request]), request, parse_tools=parse_tools)
    async for step in steps:
        if on_output is not None:
            on_output()
        result = results.setdefault(step.index, ChoiceResult())
        texts.setdefault(step.index, []).append(step.text)
        thoughts.setdefault(step.index, []).append(step.reasoning)
        result.calls.extend(step.calls)
        result.logprobs.extend(step.output.logprobs)
        result.completion_tokens = step.output.completion_tokens
        totals.add(step.output, step.prompt_index)
        if step.finish is not None:
            result.finish = step.finish
            result.stop_sequence = step.stop_sequence
    for index, result in results.items():
        result.text = "".join(texts[index])
        result.reasoning = "".join(thoughts[index])
    return results, totals
