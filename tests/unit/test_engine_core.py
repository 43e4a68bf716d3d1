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


def test_n_choices_decode_the_prompt_once_and_fork_its_cache() -> None:
    runner = FakeRunner(scripts={ord("Q"): [*text_tokens("ab"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 4, BatchBudget(64, 64))
    prompt = "Question"
    core.add(GenerationRequest("r", tuple(text_tokens(prompt)), SamplingParams(32), n=3), "r")
    out = run(core)["r"]
    by_choice: dict[int, list[RequestOutput]] = {}
    for output in out:
        by_choice.setdefault(output.index, []).append(output)
    assert sorted(by_choice) == [0, 1, 2]
    for outputs in by_choice.values():
        assert joined(outputs) == "ab"
        assert outputs[-1].finish_reason is FinishReason.STOP
    assert core.stats.prompt_tokens_decoded_total == len(prompt)
    assert core.stats.prompt_tokens_total == len(prompt)
    prefill_tokens = sum(
        len(chunk.tokens) for step in runner.decoded for chunk in step if len(chunk.tokens) > 1
    )
    assert prefill_tokens == len(prompt)
    assert len(runner.copies) == 2
    sources = {src for src, _ in runner.copies}
    assert len(sources) == 1  # both copies come from the first choice's slot
    assert sources.isdisjoint(dst for _, dst in runner.copies)
    assert core.scheduler.slots_in_use == 0
    assert runner.freed == 3


def test_n_choices_wait_for_enough_free_slots() -> None:
    runner = FakeRunner(scripts={ord("A"): [*text_tokens("xyz"), EOG], ord("B"): [EOG]})
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 64))
    core.add(request("busy", "A"), "busy")
    core.step()
    core.add(GenerationRequest("pair", tuple(text_tokens("B")), SamplingParams(8), n=2), "pair")
    core.step()
    assert core.scheduler.waiting  # one slot is free, the pair needs two
    outputs = run(core)
    assert {o.index for o in outputs["pair"] if o.finish_reason} == {0, 1}


def test_seeded_choices_get_distinct_seeds() -> None:
    runner = FakeRunner(scripts={ord("S"): [EOG]})
    core: EngineCore[str] = EngineCore(runner, 3, BatchBudget(64, 64))
    seen: list[int | None] = []
    original = runner.new_sampler

    def recording(params: SamplingParams) -> object:
        seen.append(params.seed)
        return original(params)

    runner.new_sampler = recording  # type: ignore[method-assign]
    core.add(GenerationRequest("s", (ord("S"),), SamplingParams(4, seed=7), n=3), "s")
    run(core)
    assert seen == [7, 8, 9]


def test_aborting_a_forked_request_frees_every_slot() -> None:
    runner = FakeRunner(scripts={ord("L"): text_tokens("long text " * 5)})
    core: EngineCore[str] = EngineCore(runner, 3, BatchBudget(64, 64))
    core.add(GenerationRequest("f", tuple(text_tokens("Long")), SamplingParams(40), n=3), "f")
    core.step()
    core.step()
    assert core.scheduler.slots_in_use == 3
    aborted = core.abort("f")
    assert {o.index for _, o in aborted} == {0, 1, 2}
    assert core.scheduler.slots_in_use == 0
    assert not core.has_work


def test_logprobs_travel_with_the_text_they_belong_to() -> None:
    runner = FakeRunner(scripts={ord("P"): [*text_tokens("hi"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 64))
    core.add(request("p", "P", logprobs=2), "p")
    out = run(core)["p"]
    entries = [entry for output in out for entry in output.logprobs]
    assert [entry.piece for entry in entries] == [b"h", b"i"]  # never the end token
    assert all(entry.logprob <= 0 for entry in entries)
