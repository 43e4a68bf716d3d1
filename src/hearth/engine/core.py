"""One engine step: plan with the scheduler, decode, sample, detokenize, stop, report.

`EngineCore` runs on the engine thread and talks to the model only through `ModelRunner`, so
unit tests drive it with a fake runner. It holds no locks: only the engine thread touches it.

Faults stay as small as they can: a decode that llama.cpp refuses fails only the requests in
that batch. An exception inside a step leaves the model's state unknown: every request gets an
error, and the core records the `fault` and fails whatever it is given after it, until the
model is reloaded (the model manager does it once nothing holds the model).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from hearth.engine.prompt_disk import PromptDiskCache, SavedPrefix
from hearth.engine.scheduler import Chunk, KvCopy, KvRestore, Scheduler, Sequence, StepPlan
from hearth.engine.speculative import (
    AUTO_MAX_DECODING,
    Drafter,
    DraftLength,
    DraftSource,
    SpeculationMode,
    StepCost,
    predicted_tokens_kept,
)
from hearth.engine.text import StopMatcher, ThinkingTracker, Utf8Stream
from hearth.engine.types import (
    BatchBudget,
    EngineStats,
    FinishReason,
    GenerationRequest,
    MediaInput,
    MediaSpan,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from hearth.errors import EngineError, HearthError, KvCacheFullError, QueueTimeoutError

__all__ = ["EngineCore", "ModelRunner"]

logger = logging.getLogger(__name__)

SinkT = TypeVar("SinkT")


class ModelRunner(Protocol):
    """What the engine needs from a model. `LlamaRunner` is the real one."""

    @property
    def n_ctx_per_slot(self) -> int: ...

    def decode(self, chunks: SequenceType[Chunk]) -> int:
        """Decode all chunks as one batch; llama_decode's status (0 is success)."""
        ...

    def new_sampler(self, params: SamplingParams) -> object: ...

    def sample(self, sampler: object, batch_row: int) -> int:
        """Sample (and accept) a token from the logits at `batch_row` of the last batch."""
        ...

    def accept(self, sampler: object, token: int) -> None:
        """Accept a token the engine wrote itself into the sampler chain (grammar, penalties)."""
        ...

    def token_logprob(self, batch_row: int, token: int, top_k: int) -> TokenLogprob:
        """`token`'s log-probability at `batch_row` of the last batch, and the top_k best."""
        ...

    def free_sampler(self, sampler: object) -> None: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def token_bytes(self, token: int) -> bytes: ...

    def media_tokens(self, media: MediaInput) -> int | str:
        """The positions an image takes in a prompt, or why it cannot be read."""
        ...

    def decode_media(self, span: MediaSpan, seq_id: int) -> int:
        """Decode an image into `seq_id`'s KV at the span's positions; 0 on success."""
        ...

    def kv_trim(self, seq_id: int, from_pos: int) -> None:
        """Remove `seq_id`'s KV cache from `from_pos` to the end."""
        ...

    def kv_copy(self, src: int, dst: int) -> None:
        """Replace `dst`'s KV cache with a copy of `src`'s."""
        ...

    def kv_save(self, seq_id: int, path: Path, tokens: SequenceType[int]) -> bool:
        """Write `seq_id`'s KV cache, which holds `tokens`, to `path`; whether it was."""
        ...

    def kv_load(self, seq_id: int, path: Path, max_tokens: int) -> list[int] | None:
        """Replace `seq_id`'s KV cache with the one saved in `path`; its tokens, or None (the
        sequence is then empty)."""
        ...


@dataclass(eq=False, slots=True)
class _Choice:
    sequence: Sequence
    params: SamplingParams  # the request's, with this choice's seed
    sampler: object | None = None
    utf8: Utf8Stream | None = None
    stops: StopMatcher | None = None
    thinking: ThinkingTracker | None = None  # a reasoning model's block, kept in budget
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent with text
    done: bool = False
    last_token: int = -1  # the token sampled (or written) last
    drafter: Drafter | None = None  # speculation: where drafts come from, and how long
    draft_length: DraftLength | None = None
    draft_source: DraftSource | None = None  # of the draft in this step's batch
    # With a prediction: the tokens produced, to count at the end which of its tokens the
    # output holds (OpenAI's accepted and rejected prediction tokens).
    produced: list[int] | None = None


@dataclass(eq=False, slots=True)
class _Generation(Generic[SinkT]):
    """One request: its n choices and where their outputs go."""

    request: GenerationRequest
    sink: SinkT
    choices: list[_Choice]
    enqueued_at: float = 0.0

    @property
    def first(self) -> Sequence:
        return self.choices[0].sequence


def _choice_params(params: SamplingParams, index: int) -> SamplingParams:
    # Seeded choices differ from each other yet repeat from run to run.
    if index == 0 or params.seed is None:
        return params
    return replace(params, seed=params.seed + index)


class EngineCore(Generic[SinkT]):
    """Owns the scheduler and every live generation. `SinkT` is where outputs go (a queue)."""

    def __init__(
        self,
        runner: ModelRunner,
        n_slots: int,
        budget: BatchBudget,
        *,
        queue_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        prompt_disk: PromptDiskCache | None = None,
        speculation: SpeculationMode = SpeculationMode.OFF,
        step_cost: StepCost | None = None,
    ) -> None:
        self.runner = runner
        self.speculation = speculation
        self.step_cost = step_cost if step_cost is not None else StepCost()
        self.scheduler = Scheduler(n_slots, budget)
        self.prompt_disk = prompt_disk
        if prompt_disk is not None:
            self.scheduler.saved_prefix = prompt_disk.longest_prefix
        self.queue_timeout_s = queue_timeout_s
        self._clock = clock
        self.stats = EngineStats(slots_total=n_slots)
        self.stats.step_seconds_by_rows = self.step_cost.seconds_by_rows
        self._live: dict[str, _Generation[SinkT]] = {}
        self._choice_of: dict[Sequence, tuple[_Generation[SinkT], _Choice]] = {}
        # Why a step raised, if one did: the core then fails every request it holds or gets.
        self.fault: str | None = None

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add(self, request: GenerationRequest, sink: SinkT) -> None:
        if request.request_id in self._live:
            raise ValueError(f"duplicate request id {request.request_id}")
        if request.n < 1:
            raise ValueError("a request needs at least one choice")
        if request.media and request.media[-1].start + request.media[-1].n_tokens >= len(
            request.prompt_tokens
        ):
            raise ValueError("a prompt must not end with an image: its text asks for logits")
        sequences = [
            Sequence(
                request_id=request.request_id,
                prompt=request.prompt_tokens,
                index=i,
                media=request.media,
            )
            for i in range(request.n)
        ]
        sequences[0].forks = tuple(sequences[1:])
        gen = _Generation(
            request,
            sink,
            [_Choice(seq, _choice_params(request.params, seq.index)) for seq in sequences],
            enqueued_at=self._clock(),
        )
        self.scheduler.add(sequences[0])
        self._live[request.request_id] = gen
        for choice in gen.choices:
            self._choice_of[choice.sequence] = (gen, choice)
        self._refresh_gauges()

    def abort(self, request_id: str) -> list[tuple[SinkT, RequestOutput]]:
        gen = self._live.get(request_id)
        if gen is None or not self.scheduler.abort(request_id):
            return []
        self._retire(gen)
        self._refresh_gauges()
        return [
            (gen.sink, self._output(gen, choice, "", FinishReason.ABORT))
            for choice in gen.choices
            if not choice.done
        ]

    def abort_all(self, error: HearthError) -> list[tuple[SinkT, RequestOutput]]:
        """Fail every request, running or waiting, with `error`."""
        outputs = []
        for request_id, gen in list(self._live.items()):
            self.scheduler.abort(request_id)
            self._retire(gen)
            outputs.append((gen.sink, self._failed(gen, error)))
        self._refresh_gauges()
        return outputs

    def step(self) -> list[tuple[SinkT, RequestOutput]]:
        """Run one step; never raises. An exception inside it fails every request (see
        `fault`)."""
        if self.fault is None:
            try:
                return self._step()
            except Exception as exc:
                self.fault = f"{type(exc).__name__}: {exc}"
                logger.exception(
                    "The engine failed; ending its %d requests, and the model is reloaded "
                    "once nothing holds it",
                    len(self._live),
                )
        return self._fail_after_fault()

    def _step(self) -> list[tuple[SinkT, RequestOutput]]:
        # This runs between two llama_decode calls, while the other compute threads wait: the
        # work between the decode and the samples, and the bookkeeping, are kept to a minimum.
        expired = self._expire_waiting() if self.scheduler.waiting else []
        if self.speculation is not SpeculationMode.OFF:
            self._plan_drafts()
        plan = self.scheduler.schedule()
        unrestored: set[int] = set()  # slots whose saved prefix failed to load, or a copy of it
        for op in plan.kv_ops:
            if isinstance(op, KvCopy):
                self.runner.kv_copy(op.src, op.dst)
                if op.src in unrestored:
                    unrestored.add(op.dst)
            elif isinstance(op, KvRestore):
                if not self._restore(op):
                    unrestored.add(op.seq_id)
            else:
                self.runner.kv_trim(op.seq_id, op.from_pos)
        if unrestored:  # the plan counted on a saved prefix: empty those slots, plan again
            for seq_id in unrestored:
                self._empty_slot(seq_id)
            self._refresh_gauges()
            return expired
        if not plan.chunks:
            self._refresh_gauges()
            return expired
        started = time.perf_counter()
        if any(chunk.media is not None for chunk in plan.chunks):
            expired += self._decode_media(plan)
            if not plan.chunks:
                self._refresh_gauges()
                return expired
        status = self.runner.decode(plan.chunks)
        if status != 0:
            return expired + self._fail_step(plan.chunks, status)
        self.scheduler.commit(plan)

        outputs = expired
        row = -1
        for chunk in plan.chunks:
            row += len(chunk.tokens)
            if not chunk.wants_logits:
                continue
            gen, choice = self._choice_of[chunk.sequence]
            if choice.utf8 is None:  # the prompt is decoded: every choice samples from it
                self._start(gen)
                for other in gen.choices[1:]:
                    self.scheduler.fork(other.sequence, chunk.sequence)
                    outputs.extend(self._sample(gen, other, row))
            if chunk.n_draft:
                outputs.extend(self._verify(gen, choice, chunk, row))
            else:
                outputs.extend(self._sample(gen, choice, row))
        if not plan.prompt_tokens and not plan.kv_ops:  # decoding only: what rows cost
            self.step_cost.observe(row + 1, time.perf_counter() - started)
        self._record_batch(plan, row + 1)
        self._refresh_gauges()
        return outputs

    def _decode_media(self, plan: StepPlan) -> list[tuple[SinkT, RequestOutput]]:
        """Encode the step's images into their slots (apart from the batch, which has no rows
        for them), commit them, and leave the text chunks in `plan`."""
        outputs: list[tuple[SinkT, RequestOutput]] = []
        done: list[Chunk] = []
        for chunk in plan.chunks:
            if chunk.media is None:
                continue
            status = self.runner.decode_media(chunk.media, chunk.seq_id)
            if status != 0:
                outputs += self._fail_step([chunk], status)
                continue
            done.append(chunk)
            self.stats.media_encoded_total += 1
            self.stats.media_tokens_total += chunk.media.n_tokens
        self.scheduler.commit(StepPlan(chunks=done, kv_ops=[]))
        plan.chunks = [chunk for chunk in plan.chunks if chunk.media is None]
        return outputs

    # -- the prompt cache on disk -------------------------------------------------------------

    def _restore(self, op: KvRestore) -> bool:
        """Load a saved prefix into a slot; whether it loaded."""
        assert self.prompt_disk is not None and isinstance(op.saved, SavedPrefix)
        runner, seq_id = self.runner, op.seq_id
        if self.prompt_disk.restore(
            op.saved, lambda path: runner.kv_load(seq_id, path, runner.n_ctx_per_slot)
        ):
            logger.info("Restored %d prompt tokens from disk", len(op.saved.tokens))
            return True
        return False

    def _empty_slot(self, seq_id: int) -> None:
        """Start a slot over from nothing: its sequence decodes its whole prompt."""
        self.runner.kv_trim(seq_id, 0)
        self.scheduler.forget(seq_id, 0)
        sequence = self.scheduler.slots[seq_id].sequence
        if sequence is not None:
            sequence.cached_tokens = 0

    def save_prompt_cache(self) -> int:
        """Save every slot's KV cache to disk (unload, graceful stop), the least recently used
        first; how many were written. Call with no request running."""
        if self.prompt_disk is None or self.fault is not None:
            return 0
        saved = 0
        for slot in sorted(self.scheduler.slots, key=lambda s: s.last_used):
            write = functools.partial(self._kv_save, slot.seq_id, list(slot.cached))
            saved += self.prompt_disk.save(slot.cached, write)
        return saved

    def _kv_save(self, seq_id: int, tokens: list[int], path: Path) -> bool:
        return self.runner.kv_save(seq_id, path, tokens)

    # -- per-token work ----------------------------------------------------------------------

    def _start(self, gen: _Generation[SinkT]) -> None:
        for choice in gen.choices:
            choice.sampler = self.runner.new_sampler(choice.params)
            choice.utf8 = Utf8Stream()
            choice.stops = StopMatcher(choice.params.stop)
            if choice.params.reasoning is not None:
                choice.thinking = ThinkingTracker(choice.params.reasoning)
            if gen.request.prediction:
                choice.produced = []
            if self.speculation is not SpeculationMode.OFF:
                choice.drafter = Drafter(gen.request.prompt_tokens, gen.request.prediction)
                choice.draft_length = DraftLength(self.speculation)
        self.stats.prompt_tokens_total += len(gen.request.prompt_tokens)
        self.stats.prompt_tokens_cached_total += gen.first.cached_tokens

    def _sample(
        self, gen: _Generation[SinkT], choice: _Choice, row: int
    ) -> list[tuple[SinkT, RequestOutput]]:
        params = choice.params
        assert choice.stops is not None and choice.utf8 is not None
        thinking = choice.thinking
        written = thinking is not None and bool(thinking.forced or thinking.force_close())
        if written:
            # The budget ran out: the engine writes the close of the block, token by token.
            assert thinking is not None
            token = thinking.forced.pop(0)
            self.runner.accept(choice.sampler, token)
        else:
            token = self.runner.sample(choice.sampler, row)
            if (
                thinking is not None
                and self.runner.is_end_of_generation(token)
                and thinking.close_at_end()
            ):
                # Ended while thinking: the engine closes the block in place of the end, and
                # the model answers (as at the budget), so the reply is never thinking only.
                token, written = thinking.forced.pop(0), True
                self.runner.accept(choice.sampler, token)
        choice.last_token = token
        if choice.produced is not None:
            choice.produced.append(token)
        if choice.drafter is not None:
            choice.drafter.push(token)
            assert choice.draft_length is not None
            choice.draft_length.produced(token)
        choice.completion_tokens += 1
        self.stats.generated_tokens_total += 1

        if self.runner.is_end_of_generation(token):
            text = choice.stops.flush() + choice.utf8.flush()
            return self._finish(gen, choice, text, FinishReason.STOP)
        if params.logprobs is not None:
            choice.logprobs.append(self.runner.token_logprob(row, token, params.logprobs))
        piece = choice.utf8.push(self.runner.token_bytes(token))
        if thinking is not None:
            thinking.observe(piece, written=written)
        text = choice.stops.push(piece)
        if choice.stops.stopped:
            return self._finish(gen, choice, text, FinishReason.STOP)
        slot = choice.sequence.slot
        assert slot is not None
        # The sampled token still needs a cell of its own to be decoded.
        context_full = len(slot.cached) >= self.runner.n_ctx_per_slot
        if choice.completion_tokens >= params.max_tokens or context_full:
            tail = choice.stops.push(choice.utf8.flush()) + choice.stops.flush()
            return self._finish(gen, choice, text + tail, FinishReason.LENGTH)
        choice.sequence.next_token = token
        if not text:
            return []
        return [(gen.sink, self._output(gen, choice, text, None))]

    # -- speculation (engine/speculative.py) ---------------------------------------------------

    def _plan_drafts(self) -> None:
        """Give each decoding sequence a draft to verify in the next step, where it may pay."""
        decoding = [seq for seq in self.scheduler.running if seq.next_token is not None]
        if self.speculation is SpeculationMode.AUTO and len(decoding) > AUTO_MAX_DECODING:
            return
        n_ctx = self.runner.n_ctx_per_slot
        rows = len(decoding)  # the step's rows so far: each pending token, and drafts given
        # What the step is expected to yield so far: a draft planned earlier in this loop adds
        # its expected tokens, so a later one must beat a step that already holds it.
        yielded = float(len(decoding))
        for seq in decoding:
            choice = self._choice_of[seq][1]
            drafter, lengths, slot = choice.drafter, choice.draft_length, seq.slot
            if drafter is None or lengths is None or slot is None or lengths.watching:
                continue
            # A grammar's output (tools, JSON) drafts only when forced: in auto, a tool-call
            # test's greedy answer changed with drafts (docs/speculation.md).
            if self.speculation is SpeculationMode.AUTO and choice.params.grammar is not None:
                continue
            # The pending token takes a cell and a token of max_tokens; the draft gets the rest.
            room = min(
                n_ctx - len(slot.cached) - 1,
                choice.params.max_tokens - choice.completion_tokens - 1,
            )
            draft = drafter.draft(room)
            if draft is None:
                continue
            length = lengths.plan(draft, self.step_cost, rows, yielded)
            if length:
                seq.draft = draft.tokens[:length]
                choice.draft_source = draft.source
                rows += length
                yielded += lengths.expected_extra(draft.source, length)
            else:  # no draft pays: follow this one for free instead
                lengths.watch(draft)

    def _verify(
        self, gen: _Generation[SinkT], choice: _Choice, chunk: Chunk, row: int
    ) -> list[tuple[SinkT, RequestOutput]]:
        """Sample row by row while the samples equal the draft (`row` is the chunk's last), keep
        what was accepted, and remove the rejected rows from the KV cache."""
        n_draft = chunk.n_draft
        draft = chunk.tokens[-n_draft:]
        slot = self.scheduler.slots[chunk.seq_id]
        del slot.cached[chunk.start_pos + 1 :]  # a draft token is cached once it is accepted
        outputs: list[tuple[SinkT, RequestOutput]] = []
        accepted = 0
        for i in range(n_draft + 1):
            outputs.extend(self._sample(gen, choice, row - n_draft + i))
            if choice.done or i == n_draft or choice.last_token != draft[i]:
                break
            slot.cached.append(draft[i])
            accepted += 1
        if accepted < n_draft:
            self.runner.kv_trim(chunk.seq_id, len(slot.cached))
        self.stats.draft_tokens_total += n_draft
        self.stats.draft_tokens_accepted_total += accepted
        source = choice.draft_source or DraftSource.LOOKUP
        if choice.draft_length is not None:
            choice.draft_length.verified(source, n_draft, accepted)
        if not outputs:
            return outputs
        # One output per step, as without a draft: the text of every token kept.
        sink, last = outputs[-1]
        if len(outputs) > 1:
            last.text = "".join(output.text for _, output in outputs)
            last.logprobs = tuple(lp for _, output in outputs for lp in output.logprobs)
        return [(sink, last)]

    def _finish(
        self, gen: _Generation[SinkT], choice: _Choice, text: str, reason: FinishReason
    ) -> list[tuple[SinkT, RequestOutput]]:
        self.scheduler.release(choice.sequence)
        self._free_sampler(choice)
        choice.done = True
        if all(c.done for c in gen.choices):
            self._retire(gen)
        return [(gen.sink, self._output(gen, choice, text, reason))]

    def _free_sampler(self, choice: _Choice) -> None:
        if choice.sampler is not None:
            sampler, choice.sampler = choice.sampler, None
            if self.fault is None:
                self.runner.free_sampler(sampler)
            else:  # the model is going away with its samplers; end its requests regardless
                with contextlib.suppress(Exception):
                    self.runner.free_sampler(sampler)

    def _retire(self, gen: _Generation[SinkT]) -> None:
        for choice in gen.choices:
            self._free_sampler(choice)
            self._choice_of.pop(choice.sequence, None)
        del self._live[gen.request.request_id]
        self.stats.requests_finished += 1

    def _failed(self, gen: _Generation[SinkT], error: HearthError) -> RequestOutput:
        return self._output(gen, gen.choices[0], "", FinishReason.ERROR, error)

    def _output(
        self,
        gen: _Generation[SinkT],
        choice: _Choice,
        text: str,
        reason: FinishReason | None,
        error: HearthError | None = None,
    ) -> RequestOutput:
        logprobs: tuple[TokenLogprob, ...] = ()
        if choice.logprobs:
            logprobs = tuple(choice.logprobs)
            choice.logprobs.clear()
        stop_sequence = None
        if reason is FinishReason.STOP and choice.stops is not None:
            stop_sequence = choice.stops.matched
        kept = rejected = 0  # of the prediction's tokens: counted once, at the end
        if reason is not None and choice.produced is not None:
            kept = predicted_tokens_kept(gen.request.prediction, choice.produced)
            rejected = len(gen.request.prediction) - kept
        return RequestOutput(
            text=text,
            prompt_tokens=len(gen.request.prompt_tokens),
            completion_tokens=choice.completion_tokens,
            cached_tokens=gen.first.cached_tokens,
            finish_reason=reason,
            error=error,
            index=choice.sequence.index,
            logprobs=logprobs,
            stop_sequence=stop_sequence,
            reasoning_tokens=choice.thinking.tokens if choice.thinking is not None else 0,
            accepted_prediction_tokens=kept,
            rejected_prediction_tokens=rejected,
        )

    # -- failures and bookkeeping ------------------------------------------------------------

    def _fail_step(
        self, chunks: SequenceType[Chunk], status: int
    ) -> list[tuple[SinkT, RequestOutput]]:
        # llama.cpp refused the batch. What this step wrote to the KV cache (what a fatal error
        # or an abort left of it too) is dropped, so the slots stay consistent; the plan was not
        # committed, so a request that is not failed runs its chunk again at the next step.
        why = _decode_failure(status)
        for chunk in chunks:
            self.runner.kv_trim(chunk.seq_id, chunk.start_pos)
            self.scheduler.forget(chunk.seq_id, chunk.start_pos)
        request_ids = list(dict.fromkeys(chunk.sequence.request_id for chunk in chunks))
        if status == 1:  # no room in a shared KV cache: make some, failing as little as possible
            if self._drop_idle_caches():
                logger.warning("%s; dropped the idle slots' caches to make room", why)
                self._refresh_gauges()
                return []
            # The cells may be held by a running request outside this step too; one that holds
            # none and is not in the step frees nothing by ending.
            running = dict.fromkeys(seq.request_id for seq in self.scheduler.running)
            candidates = [
                self._live[r]
                for r in running
                if r in request_ids or self._kv_held(self._live[r])[0] > 0
            ]
            if len(candidates) > 1:
                victim = max(candidates, key=self._kv_held)
                logger.error("%s; ending the request holding the most of it", why)
                error: HearthError = KvCacheFullError(
                    "The server's shared KV cache filled up while this request was generating; "
                    "it ended so that the others could go on. Retry, or ask for fewer tokens.",
                    headers={"Retry-After": "1"},
                )
                return self._fail_requests([victim], error, drop_kv=True)
        logger.error("%s; failing the %d requests of that step", why, len(request_ids))
        error = EngineError(f"The model could not decode this request: {why}.")
        return self._fail_requests([self._live[r] for r in request_ids], error, drop_kv=False)

    def _kv_held(self, gen: _Generation[SinkT]) -> tuple[int, float]:
        """KV cells a request's sequences hold; the newer request first among equals."""
        held = sum(
            len(choice.sequence.slot.cached) for choice in gen.choices if choice.sequence.slot
        )
        return held, gen.enqueued_at

    def _drop_idle_caches(self) -> bool:
        """Empty every slot no sequence uses (its cells are cache only); whether any held some."""
        dropped = False
        for slot in self.scheduler.slots:
            if slot.sequence is None and slot.cached:
                self.runner.kv_trim(slot.seq_id, 0)
                self.scheduler.forget(slot.seq_id, 0)
                dropped = True
        return dropped

    def _fail_requests(
        self, gens: list[_Generation[SinkT]], error: HearthError, *, drop_kv: bool
    ) -> list[tuple[SinkT, RequestOutput]]:
        outputs = []
        for gen in gens:
            slots = [c.sequence.slot.seq_id for c in gen.choices if c.sequence.slot is not None]
            self.scheduler.abort(gen.request.request_id)
            if drop_kv:  # its cells are what the others need
                for seq_id in slots:
                    self.runner.kv_trim(seq_id, 0)
                    self.scheduler.forget(seq_id, 0)
            self._retire(gen)
            outputs.append((gen.sink, self._failed(gen, error)))
        self._refresh_gauges()
        return outputs

    def _fail_after_fault(self) -> list[tuple[SinkT, RequestOutput]]:
        """Fail every request with the fault; bookkeeping that fails too is skipped (the
        model's state is unknown, and it is about to be unloaded)."""
        error = EngineError(
            f"The model's engine failed ({self.fault}); it is reloaded for the next request.",
            headers={"Retry-After": "1"},
        )
        outputs = []
        for gen in list(self._live.values()):
            with contextlib.suppress(Exception):
                self.scheduler.abort(gen.request.request_id)
            self._retire(gen)
            outputs.append((gen.sink, self._failed(gen, error)))
        with contextlib.suppress(Exception):
            self.scheduler.waiting.clear()
            self.scheduler.running.clear()
            self._refresh_gauges()
        return outputs

    def _expire_waiting(self) -> list[tuple[SinkT, RequestOutput]]:
        """Fail requests that waited for a slot longer than the queue timeout (oldest first)."""
        if self.queue_timeout_s is None:
            return []
        outputs = []
        deadline = self._clock() - self.queue_timeout_s
        while self.scheduler.waiting:
            gen = self._live[self.scheduler.waiting[0].request_id]
            if gen.enqueued_at > deadline:
                break
            self.scheduler.waiting.popleft()
            self._retire(gen)
            error = QueueTimeoutError(
                f"The request waited {self.queue_timeout_s:g}s for a free slot; the server is "
                "overloaded. Retry later.",
                headers={"Retry-After": "1"},
            )
            outputs.append((gen.sink, self._failed(gen, error)))
        if outputs:
            self._refresh_gauges()
        return outputs

    def _record_batch(self, plan: StepPlan, n_tokens: int) -> None:
        stats = self.stats
        n_seqs = len(plan.chunks)
        stats.steps += 1
        stats.prompt_tokens_decoded_total += plan.prompt_tokens
        stats.max_batch_size = max(stats.max_batch_size, n_seqs)
        stats.max_batch_tokens_seen = max(stats.max_batch_tokens_seen, n_tokens)
        stats.batch_size_histogram[n_seqs] = stats.batch_size_histogram.get(n_seqs, 0) + 1

    def _refresh_gauges(self) -> None:
        self.stats.slots_in_use = self.scheduler.slots_in_use
        self.stats.queue_length = len(self.scheduler.waiting)


def _decode_failure(status: int) -> str:
    """llama_decode's status in words (llama.h)."""
    if status == 1:
        what = "no room in the KV cache for the batch"
    elif status == 2:
        what = "the decode was aborted"
    elif status == -1:
        what = "llama.cpp refused the batch as invalid"
    else:
        what = "llama.cpp had an error"
    return f"{what} (llama_decode returned {status})"
