"""EngineCore driven by a fake runner: sampling, stops, limits, aborts, batching."""

from __future__ import annotations

from hearth.engine.core import EngineCore
from hearth.engine.types import (
    BatchBudget,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
)
from tests.unit.fake_runner import EOG, FakeRunner, text_tokens


def request(rid: str, prompt: str, **params: object) -> GenerationRequest:
    sampling = SamplingParams(**{"max_tokens": 32, **params})  # type: ignore[arg-type]
    return GenerationRequest(rid, tuple(text_tokens(prompt)), sampling)


def run(core: EngineCore[str], max_steps: int = 200) -> dict[str, list[RequestOutput]]:
    outputs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not core.has_work:
            break
        for sink, output in core.step():
            outputs.setdefault(sink, []).append(output)
    return outputs


def joined(outputs: list[RequestOutput]) -> str:
    return "".join(o.text for o in outputs)


def test_generates_until_end_of_generation() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("hello"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 16))
    core.add(request("r1", "Ask"), "r1")
    out = run(core)["r1"]
    assert joined(out) == "hello"
    assert out[-1].finish_reason is FinishReason.STOP
    assert out[-1].completion_tokens == 6  # five letters and the end token
    assert out[-1].prompt_tokens == 3
    assert runner.freed == 1


def test_max_tokens_finishes_with_length() -> None:
    runner = FakeRunner(scripts={ord("A"): text_tokens("abcdefgh")})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", max_tokens=3), "r1")
    out = run(core)["r1"]
    assert joined(out) == "abc"
    assert out[-1].finish_reason is FinishReason.LENGTH
    assert out[-1].completion_tokens == 3


def test_context_end_finishes_with_length() -> None:
    runner = FakeRunner(n_ctx_per_slot=8, scripts={ord("A"): text_tokens("abcdefgh")})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", max_tokens=100), "r1")
    out = run(core)["r1"]
    assert out[-1].finish_reason is FinishReason.LENGTH
    # 3 prompt tokens + 5 generated ones fill the 8-token slot; the 6th is sampled but not fed.
    assert out[-1].completion_tokens == 6


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("one two END three"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", stop=("END",)), "r1")
    out = run(core)["r1"]
    assert joined(out) == "one two "
    assert all("E" not in o.text for o in out)
    assert out[-1].finish_reason is FinishReason.STOP


def test_held_back_text_is_flushed_when_no_stop_comes() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("abcE"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask", stop=("END",)), "r1")
    assert joined(run(core)["r1"]) == "abcE"


def test_multibyte_characters_split_across_tokens_arrive_whole() -> None:
    runner = FakeRunner(scripts={ord("A"): [*"héllo ✓".encode(), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("r1", "Ask"), "r1")
    out = run(core)["r1"]
    assert joined(out) == "héllo ✓"
    assert all("\ufffd" not in o.text for o in out)


def test_a_request_joins_a_running_batch_at_the_next_step() -> None:
    runner = FakeRunner(
        scripts={ord("A"): text_tokens("aaaaaaaaaa"), ord("B"): [*text_tokens("bb"), EOG]}
    )
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 16))
    core.add(request("a", "A long one", max_tokens=10), "a")
    core.step()
    core.step()
    core.add(request("b", "B"), "b")
    first_b = [o for sink, o in core.step() if sink == "b"]
    last = runner.decoded[-1]
    assert {c.sequence.request_id for c in last} == {"a", "b"}
    assert core.stats.max_batch_size == 2
    out = run(core)
    assert joined(first_b + out["b"]) == "bb"
    assert out["a"][-1].finish_reason is FinishReason.LENGTH


def test_abort_frees_the_slot_for_the_waiting_request() -> None:
    runner = FakeRunner(scripts={ord("A"): text_tokens("a" * 50), ord("B"): [ord("b"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("a", "A", max_tokens=50), "a")
    core.step()
    core.add(request("b", "B"), "b")
    core.step()
    assert core.stats.queue_length == 1
    aborted = core.abort("a")
    assert aborted[0][1].finish_reason is FinishReason.ABORT
    out = run(core)
    assert joined(out["b"]) == "b"
    assert runner.freed == 2
    assert core.abort("a") == []


def test_failed_decode_fails_only_that_step_and_clears_its_cache() -> None:
    runner = FakeRunner(scripts={ord("A"): [ord("x"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("a", "Ask"), "a")
    runner.fail_next_decode = 1
    [(_, output)] = core.step()
    assert output.finish_reason is FinishReason.ERROR
    assert runner.trims == [(0, 0)]
    assert not core.has_work
    assert core.scheduler.slots[0].cached == []


def test_cached_prefix_is_reported_and_not_decoded_again() -> None:
    runner = FakeRunner(scripts={ord("S"): [EOG, EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("t1", "System prompt. Hi"), "t1")
    run(core)
    decoded_before = sum(len(c.tokens) for step in runner.decoded for c in step)
    core.add(request("t2", "System prompt. Hi again"), "t2")
    out = run(core)["t2"]
    decoded_turn2 = sum(len(c.tokens) for step in runner.decoded for c in step) - decoded_before
    assert out[-1].cached_tokens == len("System prompt. Hi")
    assert decoded_turn2 == len(" again")
    assert core.stats.prompt_tokens_cached_total == len("System prompt. Hi")


def test_a_request_waiting_past_the_queue_timeout_fails_with_503() -> None:
    now = [0.0]
    runner = FakeRunner(scripts={ord("A"): text_tokens("a" * 50), ord("B"): [EOG]})
    core: EngineCore[str] = EngineCore(
        runner, 1, BatchBudget(64, 16), queue_timeout_s=5.0, clock=lambda: now[0]
    )
    core.add(request("a", "A", max_tokens=50), "a")
    core.step()
    core.add(request("b", "B"), "b")
    now[0] = 4.0
    assert all(sink == "a" for sink, _ in core.step())
    now[0] = 5.5
    expired = [o for sink, o in core.step() if sink == "b"]
    assert expired[0].finish_reason is FinishReason.ERROR
    assert expired[0].error is not None and expired[0].error.status_code == 503
    assert expired[0].error.headers == {"Retry-After": "1"}
    assert core.stats.queue_length == 0
    assert "a" in run(core)  # the running request is untouched
