"""Plain engine types. The HTTP layer builds these; the engine never sees JSON."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hearth.errors import HearthError

__all__ = [
    "BatchBudget",
    "EngineStats",
    "FinishReason",
    "GenerationRequest",
    "Grammar",
    "MediaInput",
    "MediaSpan",
    "QueuePolicy",
    "ReasoningBudget",
    "RequestOutput",
    "RunnerHealth",
    "SamplingParams",
    "TokenLogprob",
    "media_token_ids",
]


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens or the end of the slot's context
    ABORT = "abort"  # the client went away
    ERROR = "error"  # llama.cpp refused the batch


@dataclass(frozen=True, slots=True)
class Grammar:
    """A GBNF grammar the output must follow. With `triggers` it is lazy: free text until one of
    these regex patterns matches the output, constrained from the match on (tool calls in
    `tool_choice="auto"`)."""

    gbnf: str
    root: str = "root"
    triggers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReasoningBudget:
    """A reasoning model's thinking, kept within `budget` tokens: once that many were generated
    inside the block, the engine writes `close_tokens` itself (they go through the sampler
    chain, so a lazy grammar sees the close) and the model goes on to answer. -1: no budget."""

    open_text: str  # "<think>"
    close_text: str  # "</think>"
    close_tokens: tuple[int, ...]  # what the engine writes: the close tag
    budget: int = -1
    starts_open: bool = False  # the prompt opened the block: the output starts inside it


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What one request asks of the sampler. temperature 0 means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0  # 0 off, 1 or 2: Mirostat v1/v2 replaces top-k/top-p/min-p
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: Grammar | None = None
    logprobs: int | None = None  # None: off; k: the sampled token's and the top k alternatives'
    ignore_eos: bool = False  # generate through end-of-generation tokens (benchmarks)
    reasoning: ReasoningBudget | None = None  # a reasoning model's thinking, kept in budget

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-6


@dataclass(frozen=True, slots=True)
class MediaInput:
    """An image, checked by the server: its bytes and the key the prompt cache knows it by."""

    key: str  # sha256 of data, hex
    data: bytes


@dataclass(frozen=True, slots=True)
class MediaSpan:
    """Where an image sits in a prompt: `n_tokens` positions from `start`, held in
    `prompt_tokens` by `media_token_ids(media.key, n_tokens)`."""

    start: int
    n_tokens: int
    media: MediaInput


def media_token_ids(key: str, n_tokens: int) -> tuple[int, ...]:
    """Stand-ins for an image's positions in a token list: negative, so never a vocabulary id,
    and derived from the image's bytes, so that the prompt cache (a token prefix match, in
    memory and on disk) reuses an image's KV only for the same image."""
    seed = int(key[:15], 16)
    return tuple(-1 - ((seed + i) % 2_000_000_000) for i in range(n_tokens))


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """`n` choices of one prompt. They share the prompt's KV cache: it is decoded once, then
    copied into a slot per choice (`llama_memory_seq_cp`)."""

    request_id: str
    prompt_tokens: tuple[int, ...]
    params: SamplingParams
    n: int = 1
    prediction: tuple[int, ...] = ()  # the expected output's tokens: drafts to verify
    media: tuple[MediaSpan, ...] = ()  # images in the prompt, in order


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's log-probability under the model (before penalties, biases and the
    grammar), with the most likely alternatives, best first."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()


@dataclass(slots=True)
class RequestOutput:
    """What one engine step produced for one choice of a request: new text, and the end if it
    came. `completion_tokens` counts this choice's tokens; `prompt_tokens` is the shared prompt."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    finish_reason: FinishReason | None = None
    error: HearthError | None = None  # set with FinishReason.ERROR
    index: int = 0  # which of the request's n choices
    logprobs: tuple[TokenLogprob, ...] = ()  # for the tokens behind `text`, when asked for
    stop_sequence: str | None = None  # the stop string that ended it, with FinishReason.STOP
    reasoning_tokens: int = 0  # of completion_tokens, those generated inside a thinking block
    accepted_prediction_tokens: int = 0  # drafts from the prediction the model agreed with
    rejected_prediction_tokens: int = 0  # drafts from the prediction it decoded and refused


@dataclass(frozen=True, slots=True)
class BatchBudget:
    """Named budgets for one decode step, after TGI's router.

    max_batch_tokens bounds every step (it is also llama.cpp's n_batch). While some sequence is
    generating, prompt chunks get at most max_prefill_tokens of it, so a long prompt never stalls
    running streams for its whole prefill.
    """

    max_batch_tokens: int = 512
    max_prefill_tokens: int = 128


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How many requests may wait for a slot, and for how long (seconds). The defaults live in
    ServeSettings (--max-queue, --queue-timeout)."""

    max_waiting: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class RunnerHealth:
    """What /health and /api/ps say of a model's runner process."""

    pid: int | None
    restarts: int  # times it was started again after a crash
    crashes: int
    last_crash: str | None  # "signal 11 (SIGSEGV)", or what the watchdog saw
    last_crash_at: float | None  # time.time()
    failed: str | None  # why the model is marked failed, after repeated crashes
    watchdog_s: float  # how long a step may take now before the watchdog kills the runner


@dataclass(slots=True)
class EngineStats:
    slots_total: int = 0
    slots_in_use: int = 0
    queue_length: int = 0
    max_batch_size: int = 0  # most sequences seen in one decode step
    max_batch_tokens_seen: int = 0
    steps: int = 0
    prompt_tokens_total: int = 0
    prompt_tokens_cached_total: int = 0
    prompt_tokens_decoded_total: int = 0  # prompt tokens that went through llama_decode
    generated_tokens_total: int = 0
    draft_tokens_total: int = 0  # speculative draft tokens verified
    draft_tokens_accepted_total: int = 0  # of those, the ones kept
    media_encoded_total: int = 0  # images encoded and decoded into a slot's KV
    media_tokens_total: int = 0  # their positions
    requests_finished: int = 0
    # What a decode step of n rows costs, by n (speculative.StepCost): what drafts are sized by
    step_seconds_by_rows: dict[int, float] = field(default_factory=dict)
    batch_size_histogram: dict[int, int] = field(default_factory=dict)
