"""OpenAI completions: a prompt (text or token ids, one or many) in, raw text out.
https://platform.openai.com/docs/api-reference/completions

A completions prompt is not a conversation: no chat template, no tools. Its adapter makes a
protocol-free `RawPrompt`, prepared by `prepare.prepare_raw` as Ollama's raw /api/generate is;
then the engine, `turns`, and its own renderer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth.engine.types import FinishReason, TokenLogprob
from hearth.errors import HearthError, unsupported
from hearth.protocol import openai as wire
from hearth.protocol.openai import CompletionRequest
from hearth.server.core.conversation import RawPrompt
from hearth.server.core.prepare import prepare_raw
from hearth.server.core.turns import (
    CollectedChoice,
    UsageTotals,
    collect,
    merged_outputs,
    started,
    until_disconnect,
)
from hearth.server.http.sse import SSE_DONE, ContentChunk, sse, streaming_response
from hearth.server.openai.common import (
    SYSTEM_FINGERPRINT,
    check_stream_options,
    openai_sampling,
    piece_text,
    wire_usage,
)
from hearth.server.state import LoadedModel, ServerState

__all__ = ["raw_prompt", "serve_completion"]

logger = logging.getLogger(__name__)


def _finish_reason(reason: FinishReason | None) -> Literal["stop", "length"]:
    assert reason in (FinishReason.STOP, FinishReason.LENGTH)
    return "stop" if reason is FinishReason.STOP else "length"


def _usage(totals: UsageTotals) -> wire.Usage:
    return wire_usage(totals.prompt_tokens, totals.cached_tokens, totals.total_completion_tokens)


def _refuse_unservable_completion_fields(req: CompletionRequest) -> None:
    if req.echo and req.logprobs is not None:
        raise unsupported(
            "logprobs", "with 'echo', the prompt's log-probabilities are not computed."
        )


def _completion_logprobs(entries: Sequence[TokenLogprob], offset: int) -> wire.CompletionLogprobs:
    tokens, token_logprobs, top, text_offset = [], [], [], []
    position = offset
    for entry in entries:
        text = piece_text(entry.piece)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        alternatives = {piece_text(piece): lp for _, piece, lp in entry.top}
        alternatives.setdefault(text, entry.logprob)
        top.append(alternatives)
        text_offset.append(position)
        position += len(text)
    return wire.CompletionLogprobs(
        text_offset=text_offset, token_logprobs=token_logprobs, tokens=tokens, top_logprobs=top
    )


def raw_prompt(req: CompletionRequest) -> RawPrompt:
    """A completions request as a raw prompt, refusing what cannot be served."""
    _refuse_unservable_completion_fields(req)
    check_stream_options(req.stream, req.stream_options)
    prompt = req.prompt
    prompts: tuple[str | tuple[int, ...], ...]
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = (tuple(int(t) for t in prompt),)  # type: ignore[arg-type]
    else:
        prompts = tuple(p if isinstance(p, str) else tuple(p) for p in prompt)  # type: ignore[arg-type]
    given = "max_tokens" in req.model_fields_set
    return RawPrompt(
        model=req.model,
        prompts=prompts,
        suffix=req.suffix,
        sampling=openai_sampling(req),
        max_tokens=req.max_tokens if given else None,
        default_max_tokens=None if given else req.max_tokens,
        n=1 if req.n is None else req.n,
        best_of=req.best_of,
        logprobs=req.logprobs,
        stream=bool(req.stream),
        user=req.user,
    )


async def serve_completion(
    state: ServerState, model: LoadedModel, req: CompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    raw = raw_prompt(req)
    prepared = await asyncio.to_thread(prepare_raw, model, raw)  # tokenizing: off loop
    model, requests, prompts = prepared.model, prepared.requests, prepared.prompts
    n, best_of = prepared.n, prepared.best_of
    completion_id = prepared.request_id
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

        def text_only(index: int) -> ContentChunk:
            def render_with(marker: str) -> bytes:
                choice = wire.CompletionChoice(finish_reason=None, index=index, text=marker)
                return sse(body([choice], None).model_dump_json(exclude={"usage"}))

            return ContentChunk(render_with)

        async def events() -> AsyncIterator[bytes]:
            totals = UsageTotals()
            begun: set[int] = set()
            text_chunks: dict[int, ContentChunk] = {}
            finished: set[int] = set()
            try:
                async for prompt_index, output in outputs:
                    totals.add(output, prompt_index)
                    text = output.text
                    if output.index not in begun:
                        begun.add(output.index)
                        text = echoes[prompt_index] + text
                    finish = _finish_reason(output.finish_reason) if output.finish_reason else None
                    if finish is not None:
                        finished.add(output.index)
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
                        yield sse(body([choice], None).model_dump_json(exclude={"usage"}))
            except HearthError:
                # Cut short by the server: every choice that began ends with `length`, then
                # the error event says why.
                for index in sorted(begun - finished):
                    choice = wire.CompletionChoice(finish_reason="length", index=index, text="")
                    yield sse(body([choice], None).model_dump_json(exclude={"usage"}))
                raise
            if include_usage:
                yield sse(body([], _usage(totals)).model_dump_json())
            yield SSE_DONE

        return streaming_response(events())

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
    return JSONResponse(body(reply, _usage(totals)).model_dump(mode="json"))


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
