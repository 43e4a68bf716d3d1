"""The scheduler: which tokens of which sequences go into the next decode step.

Plain Python over plain data, so it is tested with no model at all. Two verbs, after vLLM:
`schedule()` plans a step, `commit()` records that llama.cpp decoded it.

Design (llama.cpp server's slots):
- One llama.cpp sequence per slot, `seq_id = slot index`. A slot remembers the tokens in its KV
  cache, so a new request goes to the free slot sharing the longest token prefix with its prompt
  and only the rest of the prompt is decoded (the prompt cache).
- Every step carries the pending token of each generating sequence, then prompt chunks of newly
  admitted ones, under the named budgets in `BatchBudget`.
- Requests beyond the slots wait in arrival order.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field

from hearth.engine.types import BatchBudget

__all__ = ["Chunk", "Scheduler", "Sequence", "Slot", "StepPlan", "common_prefix_length"]


@dataclass(eq=False, slots=True)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens in this slot's KV, by position
    sequence: Sequence | None = None
    last_used: int = 0


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: str
    prompt: tuple[int, ...]
    slot: Slot | None = None
    next_token: int | None = None  # sampled, not yet in the KV cache
    cached_tokens: int = 0  # prompt tokens reused from the slot's cache

    @property
    def prefilling(self) -> bool:
        return self.slot is not None and len(self.slot.cached) < len(self.prompt)


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive tokens of one sequence in a step; only the last may ask for logits."""

    sequence: Sequence
    seq_id: int
    start_pos: int
    tokens: SequenceType[int]
    wants_logits: bool


@dataclass(slots=True)
class StepPlan:
    chunks: list[Chunk]
    # (seq_id, first position to drop): KV to remove before decoding, to the end of the sequence.
    kv_trims: list[tuple[int, int]]

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


def common_prefix_length(a: SequenceType[int], b: SequenceType[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Scheduler:
    def __init__(self, n_slots: int, budget: BatchBudget) -> None:
        if n_slots < 1:
            raise ValueError("n_slots must be at least 1")
        if budget.max_batch_tokens < n_slots:
            raise ValueError("max_batch_tokens must cover one token per slot")
        self.budget = budget
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._clock = itertools.count(1)

    # -- queue -------------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        if not sequence.prompt:
            raise ValueError("a sequence needs at least one prompt token")
        self.waiting.append(sequence)

    def abort(self, request_id: str) -> Sequence | None:
        """Drop a waiting or running sequence; its slot keeps what was decoded, as cache."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.release(seq)
                return seq
        return None

    def release(self, sequence: Sequence) -> None:
        slot = sequence.slot
        if slot is not None:
            slot.sequence = None
            slot.last_used = next(self._clock)
        sequence.slot = None
        self.running.remove(sequence)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def slots_in_use(self) -> int:
        return len(self.running)

    # -- planning ----------------------------------------------------------------------------

    def schedule(self) -> StepPlan:
        kv_trims = self._admit()
        chunks: list[Chunk] = []
        budget = self.budget.max_batch_tokens
        for seq in self.running:
            if seq.next_token is not None:
                slot = _slot_of(seq)
                chunks.append(Chunk(seq, slot.seq_id, len(slot.cached), (seq.next_token,), True))
        budget -= len(chunks)
        prefill_budget = min(budget, self.budget.max_prefill_tokens) if chunks else budget
        for seq in self.running:
            if prefill_budget <= 0:
                break
            if not seq.prefilling:
                continue
            slot = _slot_of(seq)
            start = len(slot.cached)
            take = seq.prompt[start : start + prefill_budget]
            done = start + len(take) == len(seq.prompt)
            chunks.append(Chunk(seq, slot.seq_id, start, take, done))
            prefill_budget -= len(take)
        return StepPlan(chunks=chunks, kv_trims=kv_trims)

    def commit(self, plan: StepPlan) -> None:
        """Record that every chunk of `plan` is now in the KV cache."""
        for chunk in plan.chunks:
            slot = _slot_of(chunk.sequence)
            slot.cached.extend(chunk.tokens)
            if chunk.sequence.next_token is not None:
                chunk.sequence.next_token = None

    def forget(self, seq_id: int, from_pos: int) -> None:
        """The KV cache of `seq_id` from `from_pos` on was dropped (after a failed decode)."""
        del self.slots[seq_id].cached[from_pos:]

    def _admit(self) -> list[tuple[int, int]]:
        trims: list[tuple[int, int]] = []
        while self.waiting:
            free = [s for s in self.slots if s.sequence is None]
            if not free:
                break
            seq = self.waiting.popleft()
            slot, reuse = self._pick_slot(free, seq.prompt)
            # Keep at least one prompt token to decode: its logits give the first sample.
            reuse = min(reuse, len(seq.prompt) - 1)
            if reuse < len(slot.cached):
                trims.append((slot.seq_id, reuse))
                del slot.cached[reuse:]
            slot.sequence = seq
            slot.last_used = next(self._clock)
            seq.slot = slot
            seq.cached_tokens = reuse
            self.running.append(seq)
        return trims

    @staticmethod
    def _pick_slot(free: list[Slot], prompt: tuple[int, ...]) -> tuple[Slot, int]:
        """The free slot with the longest common prefix; on a tie, the least recently used."""
        best = min(free, key=lambda s: s.last_used)
        best_len = common_prefix_length(best.cached, prompt)
        for slot in free:
            n = common_prefix_length(slot.cached, prompt)
            if n > best_len or (n == best_len and slot.last_used < best.last_used):
                best, best_len = slot, n
        return best, best_len


def _slot_of(seq: Sequence) -> Slot:
    if seq.slot is None:
        raise RuntimeError(f"sequence {seq.request_id} has no slot")
    return seq.slot
