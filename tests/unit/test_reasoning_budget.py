"""A reasoning budget that holds: the engine closes the block itself, then the model answers."""

from __future__ import annotations

import pytest

from hearth.engine.core import EngineCore
from hearth.engine.text import ThinkingTracker
from hearth.engine.types import BatchBudget, ReasoningBudget
from tests.unit.fake_runner import EOG, FakeRunner, FakeSampler, text_tokens
from tests.unit.test_engine_core import joined, request, run

CLOSE = tuple(text_tokens("</think>\n\n"))


def reasoning(budget: int, *, starts_open: bool = True) -> ReasoningBudget:
    return ReasoningBudget("<think>", "</think>", CLOSE, budget, starts_open)


def test_the_budget_closes_the_block_and_the_answer_follows() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("abcdefgh"), EOG]})
    sampler_log: list[FakeSampler] = []
    new_sampler = runner.new_sampler

    def keep(params: object) -> object:
        sampler = new_sampler(params)  # type: ignore[arg-type]
        sampler_log.append(sampler)  # type: ignore[arg-type]
        return sampler

    runner.new_sampler = keep  # type: ignore[method-assign]
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(3)), "r1")
    out = run(core)["r1"]
    # Three tokens of thinking, the close the engine wrote, then the model's own tokens again.
    assert joined(out) == "abc</think>\n\ndefgh"
    assert sampler_log[0].accepted == list(CLOSE)  # the grammar and penalties saw the close
    assert out[-1].completion_tokens == 3 + len(CLOSE) + 6
    assert out[-1].reasoning_tokens == 3  # the close the engine wrote is not thinking


def test_budget_zero_closes_at_once() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("ab"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(0)), "r1")
    assert joined(run(core)["r1"]) == "</think>\n\nab"


def test_a_block_the_model_closes_itself_is_left_alone() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("ab</think>answer"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(4)), "r1")
    assert joined(run(core)["r1"]) == "ab</think>answer"


def test_a_block_the_model_opens_counts_from_its_open() -> None:
    script = [*text_tokens("hi <think>abcdef"), EOG]
    runner = FakeRunner(scripts={ord("A"): script})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(2, starts_open=False)), "r1")
    # The model's own open tag starts the count: "ab" are its two tokens of thinking.
    assert joined(run(core)["r1"]) == "hi <think>ab</think>\n\ncdef"


@pytest.mark.parametrize("split", range(1, 9))
def test_the_tracker_finds_a_close_cut_at_any_point(split: int) -> None:
    tracker = ThinkingTracker(reasoning(-1))
    text = "xy</think>z"
    for piece in (text[:split], text[split:]):
        tracker.observe(piece)
    assert tracker.closed and not tracker.inside


def test_an_end_inside_the_block_closes_it_and_the_model_answers() -> None:
    """A model that ends its turn while thinking gets the close written for it and answers:
    the reply is never thinking only. An end right after the close is the end."""
    script = [*text_tokens("abc"), EOG, *text_tokens("ok"), EOG]
    runner = FakeRunner(scripts={ord("A"): script})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(-1)), "r1")
    out = run(core)["r1"]
    assert joined(out) == "abc</think>\n\nok"
    assert out[-1].finish_reason is not None and out[-1].finish_reason.value == "stop"
    assert out[-1].reasoning_tokens == 3

    runner = FakeRunner(scripts={ord("A"): [*text_tokens("abc"), EOG, EOG]})
    core = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r2", "Ask", reasoning=reasoning(-1)), "r2")
    assert joined(run(core)["r2"]) == "abc</think>\n\n"  # closed once, then the model's end


def test_an_end_after_the_block_closed_ends_the_turn() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("a</think>b"), EOG, *text_tokens("z")]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", reasoning=reasoning(-1)), "r1")
    assert joined(run(core)["r1"]) == "a</think>b"
