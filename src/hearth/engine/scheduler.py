"""The scheduler: which tokens of which sequences go into the next decode step.

Plain Python over plain data, so it is tested with no model at all. Two verbs, after vLLM:
`schedule()` plans a step, `commit()` records that llama.cpp decoded it.

Design (llama.cpp server's slots):
- One llama.cpp sequence per slot, `seq_id = slot index`. A slot remembers the tokens in its KV
  cache, so only the part of a prompt that no cache holds is decoded (the prompt cache):
  - a conversation continues in the free slot that holds its history (`_pick_slot`);
  - any other request takes the free slot whose cache is worth least (empty, else least recently
    used), and if another slot, busy or free, shares a long prefix with the prompt (a common
    system prompt), that slot's KV is copied in (`llama_memory_seq_cp`) instead of recomputed.
- Every step carries the pending token of each generating sequence, then prompt chunks of newly
  admitted ones, under the named budgets in `BatchBudget`; its rows go in ascending seq_id order.
- Requests beyond the slots wait in arrival order.
- A request for n choices waits for n free slots. Its prompt is decoded once, in the first; the
  others (`forks`) get a copy of that KV cache when the prompt is done (`fork()`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field, replace

from hearth.engine.types import BatchBudget, MediaSpan

__all__ = [
    "Chunk",
    "KvCopy",
    "KvRestore",
    "KvTrim",
    "Scheduler",
    "Sequence",
    "Slot",
    "StepPlan",
    "common_prefix_length",
]

# A free slot continues a conversation when the prompt reuses all its cache but this many tokens
# (the generation header, the last sampled token, a re-tokenized seam).
CONTINUATION_SLACK = 8
# Copying another slot's KV costs a memcpy of a whole slot; below this prefix, recompute instead.
MIN_COPY_TOKENS = 64


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
    draft: tuple[int, ...] = ()  # guessed tokens after next_token, to verify in the same step
    cached_tokens: int = 0  # prompt tokens reused from the slot's cache
    index: int = 0  # which choice of its request
    forks: tuple[Sequence, ...] = ()  # the other choices, which start from this one's prompt
    awaiting_fork: bool = False  # holds a slot, waiting for the first choice's prompt KV
    media: tuple[MediaSpan, ...] = ()  # images in the prompt: each decoded whole, in one step

    def media_at(self, position: int) -> MediaSpan | None:
        for span in self.media:
            if span.start == position:
                return span
        return None

    def next_media_start(self, position: int) -> int:
        """Where the next image after `position` starts (the prompt's end if none): a text
        chunk stops there."""
        return min((s.start for s in self.media if s.start > position), default=len(self.prompt))

    def media_boundary(self, position: int) -> int:
        """`position`, or the start of the image it falls inside: an image's KV is whole or
        absent, never cut."""
        for span in self.media:
            if span.start < position < span.start + span.n_tokens:
                return span.start
        return position

    @property
    def prefilling(self) -> bool:
        return (
            self.slot is not None
            and not self.awaiting_fork
            and len(self.slot.cached) < len(self.prompt)
        )


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive tokens of one sequence in a step; only the last may ask for logits."""

    sequence: Sequence
    seq_id: int
    start_pos: int
    tokens: SequenceType[int]
    wants_logits: bool
    n_draft: int = 0  # the last n_draft tokens are a draft: they and the row before want logits
    media: MediaSpan | None = None  # an image's positions: encoded and decoded apart


@dataclass(frozen=True, slots=True)
class KvCopy:
    """Replace `dst`'s KV cache with a copy of `src`'s."""

    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class KvRestore:
    """Replace `seq_id`'s KV cache with a prefix saved on disk (`prompt_disk.SavedPrefix`)."""

    seq_id: int
    saved: object


# (prompt, the fewest tokens worth it) -> (a saved prefix, its tokens, tokens shared), or None
SavedPrefixLookup = Callable[[tuple[int, ...], int], tuple[object, tuple[int, ...], int] | None]


@dataclass(frozen=True, slots=True)
class KvTrim:
    """Drop `seq_id`'s KV cache from `from_pos` to the end."""

    seq_id: int
    from_pos: int


@dataclass(slots=True)
class StepPlan:
    chunks: list[Chunk]
    kv_ops: list[KvCopy | KvRestore | KvTrim]  # to apply in order, before decoding
    prompt_tokens: int = 0  # of the chunks' tokens, those of prompts (the rest: one per decode)

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
        self._fork_copies: list[KvCopy | KvRestore | KvTrim] = []  # before the next decode
        # Prefixes saved on disk by an earlier run (the engine sets it when --prompt-cache-disk).
        self.saved_prefix: SavedPrefixLookup | None = None

    # -- queue -------------------------------------------------------------------------------

    def add(self, sequence: Sequence) -> None:
        if not sequence.prompt:
            raise ValueError("a sequence needs at least one prompt token")
        if 1 + len(sequence.forks) > len(self.slots):
            raise ValueError("more choices than slots")
        self.waiting.append(sequence)

    def abort(self, request_id: str) -> list[Sequence]:
        """Drop a request's waiting or running sequences; their slots keep what was decoded, as
        cache."""
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                return [seq]
        dropped = [seq for seq in self.running if seq.request_id == request_id]
        for seq in dropped:
            self.release(seq)
        return dropped

    def fork(self, sequence: Sequence, source: Sequence) -> None:
        """`sequence` starts from `source`'s decoded prompt: copy its KV before the next step."""
        slot, source_slot = _slot_of(sequence), _slot_of(source)
        self._fork_copies.append(KvCopy(source_slot.seq_id, slot.seq_id))
        slot.cached = list(source_slot.cached)
        sequence.awaiting_fork = False
        sequence.cached_tokens = source.cached_tokens

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
        kv_ops, self._fork_copies = self._fork_copies, []
        kv_ops += self._admit()
        chunks: list[Chunk] = []
        budget = self.budget.max_batch_tokens
        drafting = False
        for seq in self.running:
            if seq.next_token is not None:
                slot = _slot_of(seq)
                chunks.append(Chunk(seq, slot.seq_id, len(slot.cached), (seq.next_token,), True))
                drafting |= bool(seq.draft)
        budget -= len(chunks)
        if drafting:
            budget = self._add_drafts(chunks, budget)
        prefill_budget = min(budget, self.budget.max_prefill_tokens) if chunks else budget
        prompt_tokens = 0
        image_planned = False  # one image per step: its encode is the step's prefill
        for seq in self.running:
            if prefill_budget <= 0:
                break
            if not seq.prefilling:
                continue
            slot = _slot_of(seq)
            start = len(slot.cached)
            span = seq.media_at(start) if seq.media else None
            if span is not None:
                if image_planned or (prompt_tokens and span.n_tokens > prefill_budget):
                    continue
                take = seq.prompt[start : start + span.n_tokens]
                chunks.append(Chunk(seq, slot.seq_id, start, take, False, media=span))
                image_planned = True
            else:
                end = min(start + prefill_budget, seq.next_media_start(start))
                take = seq.prompt[start:end]
                done = end == len(seq.prompt)
                chunks.append(Chunk(seq, slot.seq_id, start, take, done))
            prefill_budget -= len(take)
            prompt_tokens += len(take)
        # With split KV, llama.cpp puts sequences in one ubatch only while their ids ascend by
        # one from row to row (split_equal, sequential); rows in any other order cost one more
        # pass over the weights per break.
        chunks.sort(key=_chunk_seq_id)
        return StepPlan(chunks=chunks, kv_ops=kv_ops, prompt_tokens=prompt_tokens)

    def _add_drafts(self, chunks: list[Chunk], budget: int) -> int:
        """Put each decoding sequence's draft after its pending token, within what the budget
        leaves once waiting prompts had their share (a draft is a bet; a prompt is owed)."""
        spare = budget
        if any(seq.prefilling for seq in self.running):
            spare -= self.budget.max_prefill_tokens
        for i, chunk in enumerate(chunks):
            seq = chunk.sequence
            draft, seq.draft = seq.draft[: max(spare, 0)], ()
            if draft:
                chunks[i] = replace(chunk, tokens=(*chunk.tokens, *draft), n_draft=len(draft))
                spare -= len(draft)
                budget -= len(draft)
        return budget

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

    def _admit(self) -> list[KvCopy | KvRestore | KvTrim]:
        ops: list[KvCopy | KvRestore | KvTrim] = []
        while self.waiting:
            free = [s for s in self.slots if s.sequence is None]
            if len(free) < 1 + len(self.waiting[0].forks):
                break
            seq = self.waiting.popleft()
            slot, reuse, donor = self._pick_slot(free, seq.prompt)
            saved = None
            if self.saved_prefix is not None:
                saved = self.saved_prefix(seq.prompt, reuse + MIN_COPY_TOKENS)
            if saved is not None:  # no slot holds as much: restore it from disk, not decode it
                ops.append(KvRestore(slot.seq_id, saved[0]))
                slot.cached, reuse = list(saved[1]), saved[2]
            elif donor is not None:
                ops.append(KvCopy(donor.seq_id, slot.seq_id))
                slot.cached = list(donor.cached)
            # Keep at least one prompt token to decode: its logits give the first sample.
            reuse = seq.media_boundary(min(reuse, len(seq.prompt) - 1))
            if reuse < len(slot.cached):
                ops.append(KvTrim(slot.seq_id, reuse))
                del slot.cached[reuse:]
            slot.sequence = seq
            slot.last_used = next(self._clock)
            seq.slot = slot
            seq.cached_tokens = reuse
            self.running.append(seq)
            for fork in seq.forks:
                # The cheapest other free slot: its cache is replaced by the copy.
                fork_slot = min(
                    (s for s in self.slots if s.sequence is None),
                    key=lambda s: (bool(s.cached), s.last_used),
                )
                fork_slot.sequence = fork
                fork.slot = fork_slot
                fork.awaiting_fork = True
                self.running.append(fork)
        return ops

    def _pick_slot(
        self, free: list[Slot], prompt: tuple[int, ...]
    ) -> tuple[Slot, int, Slot | None]:
        """(slot, prompt tokens it can reuse, slot to copy the KV cache from first, if any)."""
        prefix = {slot.seq_id: common_prefix_length(slot.cached, prompt) for slot in self.slots}
        continuing = [
            s
            for s in free
            if prefix[s.seq_id] and len(s.cached) - prefix[s.seq_id] <= CONTINUATION_SLACK
        ]
        if continuing:
            best = max(continuing, key=lambda s: (prefix[s.seq_id], -s.last_used))
            return best, prefix[best.seq_id], None
        # Not a continuation: overwrite the cache worth least, and never a conversation that
        # only shares a system prompt with this one when an empty slot is there.
        target = min(free, key=lambda s: (bool(s.cached), s.last_used))
        donor = max(self.slots, key=lambda s: prefix[s.seq_id])
        gain = prefix[donor.seq_id] - prefix[target.seq_id]
        if donor is not target and gain >= MIN_COPY_TOKENS:
            return target, prefix[donor.seq_id], donor
        return target, prefix[target.seq_id], None


def _chunk_seq_id(chunk: Chunk) -> int:
    return chunk.seq_id


def _slot_of(seq: Sequence) -> Slot:
    if seq.slot is None:
        raise RuntimeError(f"sequence {seq.request_id} has no slot")
    return seq.slot
