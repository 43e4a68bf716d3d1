"""The scheduler alone: admission, slot choice, budgets, the prompt cache."""

from __future__ import annotations

import pytest

from hearth.engine.scheduler import (
    MIN_COPY_TOKENS,
    KvCopy,
    KvTrim,
    Scheduler,
    Sequence,
    common_prefix_length,
)
from hearth.engine.types import BatchBudget


def seq(request_id: str, prompt: list[int]) -> Sequence:
    return Sequence(request_id=request_id, prompt=tuple(prompt))


def test_common_prefix_length() -> None:
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


def test_requests_beyond_slots_wait_in_arrival_order() -> None:
    scheduler = Scheduler(2, BatchBudget(64, 64))
    for i in range(4):
        scheduler.add(seq(f"r{i}", [i + 1] * 3))
    plan = scheduler.schedule()
    assert [c.sequence.request_id for c in plan.chunks] == ["r0", "r1"]
    assert [s.request_id for s in scheduler.waiting] == ["r2", "r3"]
    scheduler.commit(plan)
    scheduler.release(scheduler.running[0])
    plan = scheduler.schedule()
    assert "r2" in [c.sequence.request_id for c in plan.chunks]
    assert [s.request_id for s in scheduler.waiting] == ["r3"]


def test_one_batch_mixes_decode_tokens_and_prompt_chunks() -> None:
    scheduler = Scheduler(2, BatchBudget(max_batch_tokens=16, max_prefill_tokens=4))
    first = seq("a", [1, 2, 3])
    scheduler.add(first)
    scheduler.commit(scheduler.schedule())
    first.next_token = 9  # sampled after the prompt
    scheduler.add(seq("b", list(range(10, 30))))
    plan = scheduler.schedule()
    decode, prefill = plan.chunks
    assert (decode.sequence.request_id, list(decode.tokens), decode.start_pos) == ("a", [9], 3)
    assert decode.wants_logits
    # While "a" generates, "b" gets at most max_prefill_tokens, and no logits mid-prompt.
    assert prefill.sequence.request_id == "b"
    assert len(prefill.tokens) == 4
    assert not prefill.wants_logits
    assert prefill.seq_id != decode.seq_id


def test_rows_go_in_ascending_sequence_order_whatever_the_admission_order() -> None:
    # llama.cpp keeps split-KV sequences in one ubatch only while their ids ascend by one.
    scheduler = Scheduler(3, BatchBudget(max_batch_tokens=64, max_prefill_tokens=64))
    first, second, third = seq("a", [1, 2]), seq("b", [3, 4]), seq("c", [5, 6])
    for sequence in (first, second, third):
        scheduler.add(sequence)
    scheduler.commit(scheduler.schedule())
    scheduler.release(first)  # slot 0 frees up; the next request takes it
    for sequence in (second, third):
        sequence.next_token = 7
    scheduler.add(seq("d", [8, 9, 10]))
    plan = scheduler.schedule()
    assert [s.request_id for s in scheduler.running] == ["b", "c", "d"]
    assert [(c.sequence.request_id, c.seq_id) for c in plan.chunks] == [
        ("d", 0),
        ("b", 1),
        ("c", 2),
    ]


def test_prompt_alone_gets_the_whole_step_budget() -> None:
    scheduler = Scheduler(1, BatchBudget(max_batch_tokens=8, max_prefill_tokens=2))
    scheduler.add(seq("a", list(range(1, 20))))
    plan = scheduler.schedule()
    assert plan.n_tokens == 8
    scheduler.commit(plan)
    plan = scheduler.schedule()
    assert plan.chunks[0].start_pos == 8


def test_last_prompt_chunk_asks_for_logits() -> None:
    scheduler = Scheduler(1, BatchBudget(max_batch_tokens=4, max_prefill_tokens=4))
    scheduler.add(seq("a", [1, 2, 3, 4, 5, 6]))
    first = scheduler.schedule()
    assert not first.chunks[0].wants_logits
    scheduler.commit(first)
    second = scheduler.schedule()
    assert list(second.chunks[0].tokens) == [5, 6]
    assert second.chunks[0].wants_logits


def test_new_request_reuses_the_slot_with_the_longest_prefix() -> None:
    scheduler = Scheduler(3, BatchBudget(64, 64))
    prompts = {"a": [1, 2, 3, 4], "b": [7, 8, 9, 10], "c": [20, 21]}
    for rid, prompt in prompts.items():
        scheduler.add(seq(rid, prompt))
    scheduler.commit(scheduler.schedule())
    slot_of = {s.request_id: s.slot.seq_id for s in scheduler.running if s.slot}
    for s in list(scheduler.running):
        scheduler.release(s)

    follow_up = seq("b2", [7, 8, 9, 10, 11, 12])
    scheduler.add(follow_up)
    plan = scheduler.schedule()
    assert follow_up.slot is not None and follow_up.slot.seq_id == slot_of["b"]
    assert follow_up.cached_tokens == 4
    assert list(plan.chunks[0].tokens) == [11, 12]
    assert plan.chunks[0].start_pos == 4
    assert plan.kv_ops == []  # the whole cached prefix is kept


def test_diverging_prompt_trims_the_cache_tail() -> None:
    scheduler = Scheduler(1, BatchBudget(64, 64))
    scheduler.add(seq("a", [1, 2, 3, 4, 5]))
    scheduler.commit(scheduler.schedule())
    scheduler.release(scheduler.running[0])
    scheduler.add(seq("b", [1, 2, 9]))
    plan = scheduler.schedule()
    assert plan.kv_ops == [KvTrim(0, 2)]
    assert list(plan.chunks[0].tokens) == [9]


def test_identical_prompt_still_decodes_its_last_token() -> None:
    scheduler = Scheduler(1, BatchBudget(64, 64))
    scheduler.add(seq("a", [1, 2, 3]))
    scheduler.commit(scheduler.schedule())
    scheduler.release(scheduler.running[0])
    again = seq("b", [1, 2, 3])
    scheduler.add(again)
    plan = scheduler.schedule()
    assert again.cached_tokens == 2
    assert plan.kv_ops == [KvTrim(0, 2)]
    assert list(plan.chunks[0].tokens) == [3] and plan.chunks[0].wants_logits


def test_without_a_prefix_match_the_least_recently_used_slot_is_taken() -> None:
    scheduler = Scheduler(2, BatchBudget(64, 64))
    scheduler.add(seq("a", [1, 1]))
    scheduler.add(seq("b", [2, 2]))
    scheduler.commit(scheduler.schedule())
    a, b = scheduler.running
    assert a.slot is not None and b.slot is not None
    slot_a, slot_b = a.slot.seq_id, b.slot.seq_id
    scheduler.release(b)
    scheduler.release(a)  # a's slot is now the most recently used
    fresh = seq("c", [5, 5])
    scheduler.add(fresh)
    scheduler.schedule()
    assert fresh.slot is not None and fresh.slot.seq_id == slot_b != slot_a


def test_abort_removes_waiting_and_running_sequences() -> None:
    scheduler = Scheduler(1, BatchBudget(64, 64))
    scheduler.add(seq("a", [1, 2]))
    scheduler.add(seq("b", [3, 4]))
    scheduler.schedule()
    assert [s.request_id for s in scheduler.abort("b")] == ["b"]
    assert not scheduler.waiting
    assert [s.request_id for s in scheduler.abort("a")] == ["a"]
    assert scheduler.slots_in_use == 0
    assert scheduler.abort("missing") == []


def test_budget_must_cover_one_token_per_slot() -> None:
    with pytest.raises(ValueError):
        Scheduler(8, BatchBudget(max_batch_tokens=4, max_prefill_tokens=4))


def test_a_new_conversation_takes_an_empty_slot_not_one_sharing_its_system_prompt() -> None:
    scheduler = Scheduler(2, BatchBudget(64, 64))
    system = list(range(100, 120))
    scheduler.add(seq("a", [*system, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    scheduler.commit(scheduler.schedule())
    first = scheduler.running[0]
    assert first.slot is not None
    scheduler.release(first)
    other = seq("b", [*system, 50, 51])
    scheduler.add(other)
    scheduler.schedule()
    assert other.slot is not None and other.slot.seq_id != 0
    assert scheduler.slots[0].cached[-1] == 10  # "a"'s history survives for its next turn


def test_a_long_shared_prefix_is_copied_from_a_busy_slot() -> None:
    scheduler = Scheduler(2, BatchBudget(512, 512))
    system = list(range(1000, 1000 + MIN_COPY_TOKENS + 10))
    busy = seq("a", [*system, 1, 2, 3])
    scheduler.add(busy)
    scheduler.commit(scheduler.schedule())
    busy.next_token = 7  # still generating
    newcomer = seq("b", [*system, 9, 9])
    scheduler.add(newcomer)
    plan = scheduler.schedule()
    assert newcomer.slot is not None and newcomer.slot.seq_id == 1
    assert plan.kv_ops == [KvCopy(src=0, dst=1), KvTrim(1, len(system))]
    assert newcomer.cached_tokens == len(system)
    prefill = [c for c in plan.chunks if c.sequence is newcomer]
    assert [list(c.tokens) for c in prefill] == [[9, 9]]
    assert prefill[0].start_pos == len(system)


def test_a_short_shared_prefix_is_recomputed_not_copied() -> None:
    scheduler = Scheduler(2, BatchBudget(512, 512))
    scheduler.add(seq("a", [5, 6, 7, 8, 1]))
    scheduler.commit(scheduler.schedule())
    scheduler.add(seq("b", [5, 6, 7, 8, 2]))
    plan = scheduler.schedule()
    assert not any(isinstance(op, KvCopy) for op in plan.kv_ops)
