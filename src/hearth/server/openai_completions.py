"""OpenAI completions: a prompt (text or token ids, one or many) in, raw text out.
https://platform.openai.com/docs/api-reference/completions

A completions prompt is not a conversation: no chat template, no tools. It shares the rest of
the one path (`prepare.sampling_params`, the engine, `turns`), and its own renderer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from hearth.engine.types import FinishReason, GenerationRequest, TokenLogprob
from hearth.errors import HearthError, InvalidRequestError
from hearth.protocol import openai as wire
from hearth.protocol.openai import CompletionRequest
from hearth.server.openai_common import (
    SYSTEM_FINGERPRINT,
    check_stream_options,
    openai_sampling,
    piece_text,
    unsupported,
    wire_usage,
)
from hearth.server.prepare import check_token_ids, choice_count, new_id, sampling_params
from hearth.server.sse import SSE_DONE, ContentChunk, sse, streaming_response
from hearth.server.state import LoadedModel, ServerState
from hearth.server.turns import (
    CollectedChoice,
    UsageTotals,
    collect,
    merged_outputs,
    started,
    until_disconnect,
)

__all__ = ["PreparedCompletion", "prepare_completion", "serve_completion"]

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
        raise unsupported("suffix", "this model has no fill-in-the-middle tokens.")
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


@dataclass(frozen=True, slots=True)
class PreparedCompletion:
    """A completions request parsed at the edge: one engine request per prompt."""

    completion_id: str
    model: LoadedModel
    requests: list[GenerationRequest]
    prompts: list[list[int]]
    n: int
    best_of: int


def prepare_completion(model: LoadedModel, req: CompletionRequest) -> PreparedCompletion:
    """Validate and tokenize a completions request for the model it holds. Shared by /v1 and
    the Ollama API."""
    _refuse_unservable_completion_fields(req)
    check_stream_options(req.stream, req.stream_options)
    n = choice_count(model, 1 if req.n is None else req.n)
    best_of = req.best_of if req.best_of is not None else n
    if best_of < n:
        raise InvalidRequestError("'best_of' must be at least 'n'.", param="best_of")
    if best_of > n and req.stream:
        raise InvalidRequestError("'best_of' cannot be used with 'stream'.", param="best_of")
    choice_count(model, best_of, "best_of")
    prompts = _completion_prompts(model, req)
    wants_logprobs = req.logprobs is not None or best_of > n
    completion_id = new_id("cmpl")
    if req.user is not None:
        logger.info("completion %s for user %r (n=%d)", completion_id, req.user, n)
    sampling = openai_sampling(req)
    requests = [
        GenerationRequest(
            f"{completion_id}-{i}" if len(prompts) > 1 else completion_id,
            tuple(tokens),
            sampling_params(
                model,
                sampling,
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
    state: ServerState, model: LoadedModel, req: CompletionRequest, http_request: Request
) -> JSONResponse | StreamingResponse:
    prepared = await asyncio.to_thread(prepare_completion, model, req)  # tokenizing: off loop
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
