"""Embeddings over llama.cpp: a second context on the loaded model, owned by one thread.

Request side (event loop): `embed()` puts an `_Add` into the inbox and awaits an asyncio.Future.
Embedder thread: drains the inbox, plans a round over everything waiting (`embed_plan`), decodes
it with one seq_id per input (inputs of many requests share each llama_decode), reads the pooled
vectors with llama_get_embeddings_seq, clears the KV memory, and settles the finished requests'
futures with one `call_soon_threadsafe`. The event loop never waits on this thread.

The context has `embeddings=True`, the model's own pooling type (mean when the GGUF names none,
as for a causal LM) and one unified KV cache, so an input may use all of it. This llama.cpp
computes logits for every token of an embeddings batch, so a step's token count is capped to keep
that buffer small; causal models cut longer inputs into chunks across steps (see `embed_plan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ctypes
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp as llama

from hearth.engine.commands import Abort, AbortAll, Stop
from hearth.engine.embed_plan import EmbedChunk, l2_normalize, merge_chunk_vectors, plan_round
from hearth.engine.llama_runner import _FLASH_ATTN_TYPES, LlamaRunner
from hearth.errors import EngineError, HearthError, ServerOverloadedError

__all__ = ["Embedder", "EmbedderStats"]

logger = logging.getLogger(__name__)

# Sequences in one round (one seq_id each). llama.cpp sizes its mean-pooling input by it.
MAX_SEQS_PER_ROUND = 64
# Every token of an embeddings batch gets logits (n_vocab floats), in the compute buffer and again
# in the output buffer: cap a step's tokens so that each stays near this size (a 262k vocabulary
# gets 128-token steps, SmolLM2's 49k the full --max-batch-tokens).
_LOGITS_BYTES_PER_STEP = 128 * 1024 * 1024
_MIN_STEP_TOKENS = 32
_CHUNKABLE_POOLING = (llama.LLAMA_POOLING_TYPE_MEAN, llama.LLAMA_POOLING_TYPE_LAST)
_POOLING_NAMES = {
    llama.LLAMA_POOLING_TYPE_MEAN: "mean",
    llama.LLAMA_POOLING_TYPE_CLS: "cls",
    llama.LLAMA_POOLING_TYPE_LAST: "last",
}

_Vectors = list[list[float]]
_Future = asyncio.Future[_Vectors]


@dataclass(slots=True)
class EmbedderStats:
    decodes: int = 0
    inputs_embedded: int = 0
    inputs_aborted: int = 0
    tokens_total: int = 0
    max_sequences_per_decode: int = 0
    max_requests_per_decode: int = 0  # > 1: concurrent requests shared a llama_decode


@dataclass(frozen=True, slots=True)
class _Add:
    request_id: str
    inputs: tuple[tuple[int, ...], ...]
    future: _Future


_Command = _Add | Abort | AbortAll | Stop


@dataclass(slots=True, eq=False)
class _Job:
    request_id: str
    future: _Future
    vectors: list[list[float] | None]
    remaining: int
    failed: bool = False


@dataclass(frozen=True, slots=True)
class _Input:
    job: _Job
    index: int
    tokens: tuple[int, ...]


# What one pass of the thread settles on the event loop, in one call_soon_threadsafe.
_Outcomes = list[tuple[_Future, _Vectors | BaseException]]


class Embedder:
    """Pooled, L2-normalised embeddings from the model a `LlamaRunner` loaded.

    Construct and `start()` it on the event loop; the llama context is created on its own thread.
    `close()` before the runner closes: the context borrows the runner's model.
    """

    def __init__(self, runner: LlamaRunner, max_requests: int) -> None:
        self._model = runner.model_handle
        # Requests between embed() and their end, counted on the event loop; past the bound a
        # request is refused at once (429) rather than queued without limit.
        self._max_requests = max_requests
        self._in_flight = 0
        self.n_embd = int(llama.llama_model_n_embd_out(self._model))
        n_ctx_train = int(llama.llama_model_n_ctx_train(self._model))
        slot = runner.n_ctx_per_slot
        self.max_input_tokens = min(slot, n_ctx_train) if n_ctx_train > 0 else slot
        self._pooling = _model_pooling(self._model)
        self._n_threads = runner.config.n_threads
        self._flash_attn = _FLASH_ATTN_TYPES[runner.config.flash_attn]
        by_memory = _LOGITS_BYTES_PER_STEP // (4 * max(1, runner.n_vocab))
        self._step_cap = min(runner.config.n_batch, max(_MIN_STEP_TOKENS, by_memory))
        self._stats = EmbedderStats()
        self._inbox: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._closing = threading.Event()
        # abort_all() also stops the round in progress between two steps, as _closing does.
        self._aborting = threading.Event()
        self._abort_error: HearthError = EngineError("aborted")
        # Set on the thread by _open()
        self._ctx: Any = None
        self._memory: Any = None
        self._batch: Any = None
        self._step_tokens = 0
        self._round_tokens: int | None = None
        self._split = False
        self._failure: EngineError | None = None
        self._pending: deque[_Input] = deque()
        self._jobs: dict[str, _Job] = {}
        self._outcomes: _Outcomes = []

    @property
    def pooling(self) -> str:
        return _POOLING_NAMES.get(self._pooling, str(self._pooling))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="hearth-embedder", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread, which frees the context. Blocking: call it off the event loop."""
        if self._thread is None:
            return
        self._closing.set()  # checked between steps: a long round stops within one decode
        self._inbox.put(Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the embedder thread did not stop within %.0f s", timeout)
        self._thread = None

    def abort_all(self, error: HearthError) -> None:
        """Fail every request with `error`, the round in progress within one decode step; the
        thread keeps running for later requests."""
        self._abort_error = error
        self._aborting.set()
        self._inbox.put(AbortAll(error))

    def stats(self) -> EmbedderStats:
        # Read from another thread: a copy of plain ints, consistent enough for a gauge.
        return copy.copy(self._stats)

    async def embed(self, request_id: str, inputs: Sequence[Sequence[int]]) -> _Vectors:
        """One unit vector per input, in order. Cancelling drops the inputs not yet decoded."""
        if not self._running:
            raise EngineError("the embedder is not running")
        if self._in_flight >= self._max_requests:
            raise ServerOverloadedError(
                f"The server is overloaded: {self._in_flight} embedding requests are running or "
                "waiting. Retry later.",
                headers={"Retry-After": "1"},
            )
        future: _Future = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        self._inbox.put(_Add(request_id, tuple(tuple(t) for t in inputs), future))
        try:
            return await future
        finally:
            self._in_flight -= 1
            if future.cancelled():
                self._inbox.put(Abort(request_id))

    # -- the embedder thread -------------------------------------------------------------------
    # _pending, _jobs and _outcomes belong to this thread alone.

    def _run(self) -> None:
        try:
            self._open()
        except Exception:
            logger.exception("could not create the embedding context")
            self._failure = EngineError(
                "llama.cpp could not create an embedding context for this model (out of memory?)"
            )
        try:
            while self._take_commands():
                if self._pending:
                    try:
                        self._run_round()
                    except Exception:
                        logger.exception("embedding round failed; failing the requests in flight")
                        for job in list(self._jobs.values()):
                            self._fail(job, EngineError("internal embedding error"))
                self._settle()
            self._running = False
            for job in list(self._jobs.values()):
                self._fail(job, EngineError("the server is shutting down"))
            self._settle()
        finally:
            self._free()

    def _take_commands(self) -> bool:
        """Apply every command waiting; False once asked to stop."""
        # Idle: block until a command comes. Busy: take whatever arrived since the last round.
        command: _Command | None
        try:
            command = self._inbox.get() if not self._pending else self._inbox.get_nowait()
        except queue.Empty:
            return True
        go_on = True
        while command is not None:
            if isinstance(command, Stop):
                go_on = False
            elif isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, AbortAll):
                self._aborting.clear()
                for running in list(self._jobs.values()):
                    self._fail(running, command.error)
            else:
                job = self._jobs.get(command.request_id)
                if job is not None:  # else already answered
                    self._stats.inputs_aborted += self._drop(job)
            try:
                command = self._inbox.get_nowait()
            except queue.Empty:
                command = None
        return go_on

    def _add(self, command: _Add) -> None:
        if self._failure is not None or not command.inputs:
            self._outcomes.append((command.future, self._failure or []))
            return
        n = len(command.inputs)
        job = _Job(command.request_id, command.future, [None] * n, remaining=n)
        self._jobs[job.request_id] = job
        self._pending.extend(_Input(job, i, tokens) for i, tokens in enumerate(command.inputs))

    def _run_round(self) -> None:
        pending = self._pending
        lengths = [len(item.tokens) for item in itertools.islice(pending, MAX_SEQS_PER_ROUND)]
        try:
            plan = plan_round(
                lengths,
                step_tokens=self._step_tokens,
                round_tokens=self._round_tokens,
                max_seqs=MAX_SEQS_PER_ROUND,
                split=self._split,
            )
        except ValueError as error:
            # The serving layer checks lengths first; a request that still does not fit fails alone.
            self._fail(pending[0].job, EngineError(str(error)))
            return
        inputs = [pending.popleft() for _ in range(plan.n_inputs)]
        parts: list[list[tuple[int, list[float]]]] = [[] for _ in inputs]
        try:
            for step in plan.steps:
                if self._closing.is_set():
                    raise EngineError("the server is shutting down")
                if self._aborting.is_set():
                    raise self._abort_error
                for chunk, vector in zip(step, self._decode_step(step, inputs), strict=True):
                    parts[chunk.seq].append((chunk.length, vector))
        except HearthError as error:
            if not (self._closing.is_set() or error is self._abort_error):
                logger.error("%s; failing its requests", error)
            for job in {id(item.job): item.job for item in inputs}.values():
                self._fail(job, error)
            return
        finally:
            if self._memory:
                llama.llama_memory_clear(self._memory, False)
        mean = self._pooling == llama.LLAMA_POOLING_TYPE_MEAN
        for item, chunk_vectors in zip(inputs, parts, strict=True):
            job = item.job  # never a failed one: failing drops a job's inputs from the queue
            job.vectors[item.index] = l2_normalize(merge_chunk_vectors(chunk_vectors, mean=mean))
            job.remaining -= 1
            self._stats.inputs_embedded += 1
            if job.remaining == 0:
                del self._jobs[job.request_id]
                self._outcomes.append((job.future, [v for v in job.vectors if v is not None]))

    def _drop(self, job: _Job) -> int:
        """Forget a job and its inputs not yet planned; returns how many were dropped."""
        job.failed = True
        self._jobs.pop(job.request_id, None)
        kept = [item for item in self._pending if item.job is not job]
        dropped = len(self._pending) - len(kept)
        self._pending = deque(kept)
        return dropped

    def _fail(self, job: _Job, error: HearthError) -> None:
        if not job.failed:
            self._drop(job)
            self._outcomes.append((job.future, error))

    def _decode_step(self, step: Sequence[EmbedChunk], inputs: list[_Input]) -> list[list[float]]:
        batch = self._batch
        token, pos, n_seq_id, seq_id, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        i = 0
        for chunk in step:
            tokens = inputs[chunk.seq].tokens
            for p in range(chunk.start, chunk.start + chunk.length):
                token[i] = tokens[p]
                pos[i] = p
                n_seq_id[i] = 1
                seq_id[i][0] = chunk.seq
                logits[i] = 1  # pooled embeddings need every token as an output
                i += 1
        batch.n_tokens = i
        # For a context without KV memory (BERT-like encoders) llama_decode runs llama_encode.
        status = int(llama.llama_decode(self._ctx, batch))
        if status != 0:
            raise EngineError(f"llama_decode failed with status {status} on an embeddings batch")
        vectors = []
        for chunk in step:
            pointer = llama.llama_get_embeddings_seq(self._ctx, chunk.seq)
            if not pointer:
                raise EngineError(f"llama.cpp returned no pooled vector for sequence {chunk.seq}")
            vectors.append(pointer[: self.n_embd])
        stats = self._stats
        stats.decodes += 1
        stats.tokens_total += i
        stats.max_sequences_per_decode = max(stats.max_sequences_per_decode, len(step))
        requests = len({id(inputs[chunk.seq].job) for chunk in step})
        stats.max_requests_per_decode = max(stats.max_requests_per_decode, requests)
        return vectors

    def _settle(self) -> None:
        if self._outcomes and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(_settle_all, self._outcomes)
        self._outcomes = []

    # -- the llama context (embedder thread only) ----------------------------------------------

    def _open(self) -> None:
        ctx = self._new_context(self._step_cap)
        causal = bool(llama.llama_get_causal_attn(ctx))
        has_memory = bool(llama.llama_get_memory(ctx))
        self._split = causal and has_memory and self._pooling in _CHUNKABLE_POOLING
        if not self._split and int(llama.llama_n_ubatch(ctx)) < self.max_input_tokens:
            # Bidirectional attention (or CLS pooling) sees a whole input at once: one ubatch.
            llama.llama_free(ctx)
            ctx = self._new_context(self.max_input_tokens)
        self._ctx = ctx
        self._memory = llama.llama_get_memory(ctx) or None
        self._step_tokens = min(int(llama.llama_n_batch(ctx)), int(llama.llama_n_ubatch(ctx)))
        self._round_tokens = int(llama.llama_n_ctx(ctx)) if self._memory else None
        self._batch = llama.llama_batch_init(self._step_tokens, 0, 1)
        logger.info(
            "embedding context: %s pooling, %d-dimensional, up to %d tokens per input, "
            "%d per decode%s",
            self.pooling,
            self.n_embd,
            self.max_input_tokens,
            self._step_tokens,
            ", long inputs in chunks" if self._split else "",
        )

    def _new_context(self, n_batch: int) -> Any:
        params = llama.llama_context_default_params()
        params.n_ctx = self.max_input_tokens
        # One ubatch per llama_decode: llama.cpp pools each sequence over a ubatch, not a batch.
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = MAX_SEQS_PER_ROUND
        params.n_threads = self._n_threads
        params.n_threads_batch = self._n_threads
        params.kv_unified = True
        params.embeddings = True
        params.pooling_type = self._pooling
        params.flash_attn_type = self._flash_attn
        params.no_perf = True
        ctx = llama.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model returned NULL")
        return ctx

    def _free(self) -> None:
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama.llama_free(self._ctx)
            self._ctx = None
            self._memory = None


def _settle_all(outcomes: _Outcomes) -> None:
    for future, outcome in outcomes:
        if future.done():
            continue  # cancelled: the client left
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _meta(model: Any, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(128)
    n = llama.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode("utf-8", "replace") if n >= 0 else None


def _model_pooling(model: Any) -> int:
    """The GGUF's `<arch>.pooling_type` when it names a pooled one, else mean (causal LMs)."""
    arch = _meta(model, "general.architecture")
    value = _meta(model, f"{arch}.pooling_type") if arch else None
    try:
        pooling = int(value) if value is not None else llama.LLAMA_POOLING_TYPE_UNSPECIFIED
    except ValueError:
        pooling = llama.LLAMA_POOLING_TYPE_UNSPECIFIED
    return pooling if pooling in _POOLING_NAMES else int(llama.LLAMA_POOLING_TYPE_MEAN)
