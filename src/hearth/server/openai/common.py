"""What OpenAI's chat and completions adapters share: sampling fields, stop lists, logprobs."""

from __future__ import annotations

from collections.abc import Sequence

from hearth import __version__
from hearth.engine.types import TokenLogprob
from hearth.errors import InvalidRequestError
from hearth.protocol import openai as wire
from hearth.protocol.openai import ChatCompletionRequest, CompletionRequest
from hearth.server.core.conversation import Sampling, stop_sequences

__all__ = [
    "SYSTEM_FINGERPRINT",
    "chat_logprobs",
    "check_stream_options",
    "openai_sampling",
    "piece_text",
    "wire_usage",
]

SYSTEM_FINGERPRINT = f"hearth-{__version__}"


def openai_sampling(req: ChatCompletionRequest | CompletionRequest) -> Sampling:
    return Sampling(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        typical_p=req.typical_p,
        repeat_penalty=req.repeat_penalty,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        mirostat=req.mirostat,
        mirostat_tau=req.mirostat_tau,
        mirostat_eta=req.mirostat_eta,
        seed=req.seed,
        stop=stop_sequences(req.stop),
        logit_bias=req.logit_bias,
        ignore_eos=bool(req.ignore_eos),
    )


def check_stream_options(stream: bool | None, options: object | None) -> None:
    if options is not None and not stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )


def wire_usage(
    prompt_tokens: int,
    cached_tokens: int,
    completion_tokens: int,
    details: wire.CompletionTokensDetails | None = None,
) -> wire.Usage:
    return wire.Usage(
        completion_tokens=completion_tokens,
        prompt_tokens=prompt_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        completion_tokens_details=details,
        prompt_tokens_details=wire.PromptTokensDetails(cached_tokens=cached_tokens),
    )


def piece_text(piece: bytes) -> str:
    return piece.decode("utf-8", "replace")


def chat_logprobs(entries: Sequence[TokenLogprob]) -> wire.ChoiceLogprobs:
    return wire.ChoiceLogprobs(
        content=[
            wire.TokenLogprob(
                token=piece_text(entry.piece),
                bytes=list(entry.piece),
                logprob=entry.logprob,
                top_logprobs=[
                    wire.TopLogprob(token=piece_text(piece), bytes=list(piece), logprob=lp)
                    for _, piece, lp in entry.top
                ],
            )
            for entry in entries
        ]
    )
