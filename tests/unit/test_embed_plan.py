"""The embedder's batching decision and vector arithmetic, without a model."""

from __future__ import annotations

import math
import random

import pytest

from hearth.engine.embed_plan import (
    EmbedChunk,
    EmbedRound,
    l2_normalize,
    merge_chunk_vectors,
    plan_round,
)


def _check_invariants(
    lengths: list[int],
    plan: EmbedRound,
    *,
    step_tokens: int,
    round_tokens: int | None,
    max_seqs: int,
    split: bool,
) -> None:
    """Every taken input is covered once, in order, within every budget."""
    assert 1 <= plan.n_inputs <= min(max_seqs, len(lengths))
    taken = lengths[: plan.n_inputs]
    if round_tokens is not None:
        assert sum(taken) <= round_tokens
    covered: dict[int, int] = {}
    for step in plan.steps:
        assert step, "a step is never empty"
        assert sum(chunk.length for chunk in step) <= step_tokens
        assert len({chunk.seq for chunk in step}) == len(step), "one chunk per sequence a step"
        for chunk in step:
            assert chunk.length > 0
            assert chunk.start == covered.get(chunk.seq, 0), "chunks of an input in order"
            covered[chunk.seq] = chunk.start + chunk.length
            if not split:
                assert chunk.start == 0 and chunk.length == taken[chunk.seq]
    assert covered == dict(enumerate(taken))


def test_nothing_pending_plans_nothing() -> None:
    assert plan_round([], step_tokens=64, round_tokens=512, max_seqs=8, split=True) == EmbedRound(
        0, ()
    )


def test_short_inputs_from_the_queue_share_one_step() -> None:
    plan = plan_round([5, 7, 3], step_tokens=64, round_tokens=512, max_seqs=8, split=True)
    assert plan == EmbedRound(3, ((EmbedChunk(0, 0, 5), EmbedChunk(1, 0, 7), EmbedChunk(2, 0, 3)),))


def test_split_fills_every_step_to_the_budget() -> None:
    plan = plan_round([40, 100, 10], step_tokens=64, round_tokens=512, max_seqs=8, split=True)
    assert plan.n_inputs == 3
    assert [sum(c.length for c in step) for step in plan.steps] == [64, 64, 22]
    assert plan.steps[0] == (EmbedChunk(0, 0, 40), EmbedChunk(1, 0, 24))
    assert plan.steps[1] == (EmbedChunk(1, 24, 64),)
    assert plan.steps[2] == (EmbedChunk(1, 88, 12), EmbedChunk(2, 0, 10))


def test_unsplit_inputs_stay_whole() -> None:
    plan = plan_round([40, 40, 20, 4], step_tokens=64, round_tokens=None, max_seqs=8, split=False)
    assert plan.n_inputs == 4
    assert plan.steps == (
        (EmbedChunk(0, 0, 40),),
        (EmbedChunk(1, 0, 40), EmbedChunk(2, 0, 20), EmbedChunk(3, 0, 4)),
    )


def test_round_stops_at_the_kv_budget_and_the_sequence_limit() -> None:
    by_tokens = plan_round([300] * 3, step_tokens=64, round_tokens=700, max_seqs=8, split=True)
    assert by_tokens.n_inputs == 2
    by_count = plan_round([1] * 10, step_tokens=64, round_tokens=512, max_seqs=4, split=True)
    assert by_count.n_inputs == 4
    assert len(by_count.steps) == 1


def test_round_stops_before_an_input_that_cannot_fit_it() -> None:
    # The serving layer refuses such inputs; the plan still never builds an invalid batch.
    plan = plan_round([10, 100], step_tokens=64, round_tokens=None, max_seqs=8, split=False)
    assert plan.n_inputs == 1
    with pytest.raises(ValueError, match="does not fit"):
        plan_round([100], step_tokens=64, round_tokens=None, max_seqs=8, split=False)
    with pytest.raises(ValueError, match="does not fit"):
        plan_round([600], step_tokens=64, round_tokens=512, max_seqs=8, split=True)
    with pytest.raises(ValueError, match="does not fit"):
        plan_round([0], step_tokens=64, round_tokens=512, max_seqs=8, split=True)


@pytest.mark.parametrize("split", [True, False])
def test_random_queues_keep_every_invariant(split: bool) -> None:
    rng = random.Random(1234)
    for _ in range(300):
        step_tokens = rng.choice([16, 64, 512])
        round_tokens = rng.choice([None, 512, 2048]) if not split else rng.choice([512, 2048])
        max_seqs = rng.choice([1, 4, 64])
        top = step_tokens if not split else min(round_tokens or 4096, 700)
        if round_tokens is not None:
            top = min(top, round_tokens)
        lengths = [rng.randint(1, top) for _ in range(rng.randint(1, 80))]
        plan = plan_round(
            lengths,
            step_tokens=step_tokens,
            round_tokens=round_tokens,
            max_seqs=max_seqs,
            split=split,
        )
        _check_invariants(
            lengths,
            plan,
            step_tokens=step_tokens,
            round_tokens=round_tokens,
            max_seqs=max_seqs,
            split=split,
        )


def test_mean_of_chunks_is_weighted_by_their_tokens() -> None:
    # Chunk means 1.0 over 1 token and 0.0 over 3 tokens: the mean of all 4 tokens is 0.25.
    merged = merge_chunk_vectors([(1, [1.0, 0.0]), (3, [0.0, 1.0])], mean=True)
    assert merged == pytest.approx([0.25, 0.75])


def test_other_pooling_takes_the_last_chunk() -> None:
    assert merge_chunk_vectors([(5, [1.0, 2.0]), (2, [3.0, 4.0])], mean=False) == [3.0, 4.0]
    assert merge_chunk_vectors([(5, [1.0, 2.0])], mean=True) == [1.0, 2.0]
    with pytest.raises(ValueError):
        merge_chunk_vectors([], mean=True)


def test_l2_normalize() -> None:
    assert l2_normalize([3.0, 4.0]) == pytest.approx([0.6, 0.8])
    unit = l2_normalize([0.1, -2.0, 7.5])
    assert math.fsum(x * x for x in unit) == pytest.approx(1.0)
    assert l2_normalize([0.0, 0.0]) == [0.0, 0.0]  # nothing to scale; never a division by zero
