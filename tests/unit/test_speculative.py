"""Speculative decoding from the request's own text: drafting, verification, and the output
it must leave unchanged (token for token, and in distribution)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field

from hearth.engine.core import EngineCore
from hearth.engine.scheduler import Chunk, Scheduler, Sequence
from hearth.engine.speculative import (
    AUTO_MAX_DECODING,
    Draft,
    Drafter,
    DraftLength,
    DraftSource,
    SpeculationMode,
    StepCost,
)
from hearth.engine.types import (
    BatchBudget,
    GenerationRequest,
    Grammar,
    RequestOutput,
    SamplingParams,
)
from tests.stats import goodness_of_fit, homogeneity
from tests.unit.fake_runner import EOG, FakeRunner, text_tokens
from tests.unit.test_engine_core import joined, run


def tokens(text: str) -> tuple[int, ...]:
    return tuple(text_tokens(text))


def spec_request(
    rid: str, prompt: str, prediction: str = "", **params: object
) -> GenerationRequest:
    sampling = SamplingParams(**{"max_tokens": 64, **params})  # type: ignore[arg-type]
    return GenerationRequest(rid, tokens(prompt), sampling, prediction=tokens(prediction))


def generate(
    script: str, request: GenerationRequest, mode: SpeculationMode, **runner_args: object
) -> tuple[list[RequestOutput], FakeRunner]:
    runner = FakeRunner(scripts={request.prompt_tokens[0]: [*text_tokens(script), EOG]})
    for name, value in runner_args.items():
        setattr(runner, name, value)
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 16), speculation=mode)
    core.add(request, "r")
    return run(core)["r"], runner


def draft_chunks(runner: FakeRunner) -> list[Chunk]:
    return [chunk for step in runner.decoded for chunk in step if chunk.n_draft]


# -- drafting -------------------------------------------------------------------------------


def test_prompt_lookup_drafts_what_followed_the_last_ngram() -> None:
    drafter = Drafter(tokens("the cat sat on the mat. the cat"))
    draft = drafter.draft(6)
    assert draft is not None
    assert draft.source is DraftSource.LOOKUP
    assert bytes(draft.tokens) == b" sat o"


def test_prompt_lookup_finds_nothing_in_new_text() -> None:
    assert Drafter(tokens("abcdefgh")).draft(4) is None


def test_output_tokens_become_lookup_text() -> None:
    drafter = Drafter(tokens("Q: "))
    for token in tokens("xyz-xy"):
        drafter.push(token)
    draft = drafter.draft(3)
    assert draft is not None and bytes(draft.tokens) == b"z-x"


def test_prediction_is_drafted_from_a_cursor_that_follows_the_output() -> None:
    drafter = Drafter(tokens("rewrite it"), prediction=tokens("def f(count): return count"))
    first = drafter.draft(4)
    assert first is not None and first.source is DraftSource.PREDICTION
    assert bytes(first.tokens) == b"def "
    for token in tokens("def f("):
        drafter.push(token)
    after = drafter.draft(5)
    assert after is not None and bytes(after.tokens) == b"count"


def test_prediction_is_found_again_after_the_output_departs_from_it() -> None:
    drafter = Drafter(tokens("rename"), prediction=tokens("def f(count): return count + 1"))
    for token in tokens("def f(total):"):  # "count" became "total"
        drafter.push(token)
    draft = drafter.draft(7)
    assert draft is not None and draft.source is DraftSource.PREDICTION
    assert bytes(draft.tokens) == b" return"


def cpu_like() -> StepCost:
    """A step of n rows costs 10 ms + 5 ms per extra row, as measured on a 2-core CPU."""
    cost = StepCost()
    cost.observe(1, 0.010)
    cost.observe(5, 0.030)
    return cost


def gpu_like() -> StepCost:
    cost = StepCost()
    cost.observe(1, 0.010)
    cost.observe(33, 0.012)
    return cost


def test_step_cost_learns_what_each_row_count_costs() -> None:
    cost = StepCost()
    assert cost.cost(3) == 1 + 2 * StepCost.PRIOR_ROW_SHARE  # one-row steps, before any timing
    cost.observe(5, 0.030)
    assert cost.cost(5) == 0.030
    assert abs(cost.cost(1) - 0.030 / (1 + 4 * StepCost.PRIOR_ROW_SHARE)) < 1e-12
    cost.observe(1, 0.010)
    # Counts seen cost what they cost; the others lie on the line through those.
    assert (cost.cost(1), cost.cost(5)) == (0.010, 0.030)
    assert abs(cost.cost(9) - 0.050) < 1e-12 and abs(cost.cost(3) - 0.020) < 1e-12
    cost.observe(3, 0.025)  # a tile's worth of rows can cost less than fewer rows
    cost.observe(4, 0.021)
    assert cost.cost(4) == 0.021 < cost.cost(3) == 0.025
    for _ in range(100):  # the averages follow what steps cost now
        cost.observe(1, 0.020)
    assert abs(cost.cost(1) - 0.020) < 1e-4


def test_the_draft_length_maximises_output_per_second() -> None:
    draft = Draft(tuple(range(40)), DraftSource.PREDICTION)
    sure = DraftLength(SpeculationMode.AUTO)
    for _ in range(10):
        sure.verified(DraftSource.PREDICTION, 8, 8)
    doubtful = DraftLength(SpeculationMode.AUTO)
    for _ in range(10):
        doubtful.verified(DraftSource.PREDICTION, 8, 2)
    assert sure.acceptance(DraftSource.PREDICTION) > 0.99
    # Per position: the first two kept every time, the third refused every time.
    assert doubtful.acceptance(DraftSource.PREDICTION, 1) > 0.95
    assert doubtful.acceptance(DraftSource.PREDICTION, 2) < 0.05
    # Rows that cost little are drafted up to the ceiling; on a CPU a sure draft is long, a
    # doubtful one short or not at all.
    assert sure.plan(draft, gpu_like()) == 32
    assert 8 <= sure.plan(draft, cpu_like()) <= 32
    assert doubtful.plan(draft, gpu_like()) > doubtful.plan(draft, cpu_like())
    assert doubtful.plan(draft, cpu_like()) <= 2
    # A draft is never longer than what is drafted, and a busier step makes it shorter.
    assert sure.plan(Draft((1, 2, 3), DraftSource.PREDICTION), gpu_like()) == 3
    fair = DraftLength(SpeculationMode.AUTO)  # the prior: each token kept 9 times in 10
    assert fair.plan(draft, cpu_like(), rows=3, yielded=3) < fair.plan(draft, cpu_like())


def test_auto_watches_instead_of_decoding_while_drafts_are_refused_and_on_does_not() -> None:
    auto, forced = DraftLength(SpeculationMode.AUTO), DraftLength(SpeculationMode.ON)
    draft = Draft((7, 8, 9), DraftSource.LOOKUP)
    for lengths in (auto, forced):
        lengths.verified(DraftSource.LOOKUP, 4, 0)
        lengths.verified(DraftSource.LOOKUP, 2, 0)
    assert auto.plan(draft, cpu_like()) == 0
    assert forced.plan(draft, cpu_like()) == 3  # on: every draft, whole
    # A watched draft is kept or refused by the tokens produced next, at no decode's cost.
    auto.watch(draft)
    for token in (7, 5):  # the second token departs from it
        assert auto.watching
        auto.produced(token)
    assert not auto.watching and auto.plan(draft, cpu_like()) == 0
    for _ in range(3):  # watched drafts wholly kept bring decoding back
        auto.watch(Draft((1, 2, 3, 4, 5, 6), DraftSource.LOOKUP))
        for token in (1, 2, 3, 4):  # only the first four are watched
            auto.produced(token)
        assert not auto.watching
    assert auto.plan(draft, cpu_like()) > 0


def test_a_prediction_is_decoded_from_the_start_and_lookup_earns_it() -> None:
    prediction = Draft(tuple(range(8)), DraftSource.PREDICTION)
    lookup = Draft(tuple(range(8)), DraftSource.LOOKUP)
    lengths = DraftLength(SpeculationMode.AUTO)
    assert lengths.plan(prediction, cpu_like()) > 0
    assert lengths.plan(lookup, cpu_like()) == 0
    lengths.watch(lookup)
    for token in range(4):
        lengths.produced(token)
    assert lengths.plan(lookup, cpu_like()) > 0  # one watched draft wholly kept is enough


# -- verification in the engine ---------------------------------------------------------------


def test_output_is_the_same_with_and_without_speculation() -> None:
    script = "def add(total, b):\n    return total + b\n"
    prediction = "def add(count, b):\n    return count + b\n"
    results = {}
    for mode in SpeculationMode:
        request = spec_request("r", "Rewrite: " + prediction, prediction=prediction)
        outputs, runner = generate(script, request, mode, n_ctx_per_slot=256)
        results[mode] = (joined(outputs), outputs[-1].completion_tokens, len(runner.decoded))
    assert results[SpeculationMode.ON][:2] == results[SpeculationMode.OFF][:2]
    assert results[SpeculationMode.AUTO][:2] == results[SpeculationMode.OFF][:2]
    assert results[SpeculationMode.OFF][0] == script
    # Fewer decode steps is the point.
    assert results[SpeculationMode.ON][2] < results[SpeculationMode.OFF][2] / 2


def test_rejected_draft_rows_leave_the_kv_cache() -> None:
    request = spec_request("r", "Say", prediction="abcdXYZW")
    outputs, runner = generate("abcdefgh", request, SpeculationMode.ON, n_ctx_per_slot=128)
    assert joined(outputs) == "abcdefgh"
    chunks = draft_chunks(runner)
    assert chunks, "the prediction was never drafted"
    first = chunks[0]
    assert bytes(first.tokens) == b"abcdXYZW"  # the pending "a", then the draft "bcdXYZW"
    # "a" and "bcd" kept: position start + 4 and on ("XYZW") removed.
    assert (first.seq_id, first.start_pos + 4) in runner.trims


def test_prediction_tokens_accepted_and_rejected_are_counted() -> None:
    """As OpenAI counts them: the prediction's tokens the output holds, and the rest, whether
    drafted or not (with speculation off too), once at the end."""
    request = spec_request("r", "Say", prediction="abcdXYZWgh")
    for mode in SpeculationMode:
        outputs, _ = generate("abcdefgh", request, mode, n_ctx_per_slot=128)
        last = outputs[-1]
        assert last.accepted_prediction_tokens == 6, mode  # "abcd" and "gh"
        assert last.rejected_prediction_tokens == 4, mode  # "XYZW"
        assert last.completion_tokens == 9  # eight letters and the end token
        assert all(o.accepted_prediction_tokens == 0 for o in outputs[:-1])


def test_speculation_off_ignores_the_prediction() -> None:
    request = spec_request("r", "Say", prediction="abcdefgh")
    outputs, runner = generate("abcdefgh", request, SpeculationMode.OFF)
    assert joined(outputs) == "abcdefgh"
    assert not draft_chunks(runner)
    # Nothing drafted, but the output holds the whole prediction, as OpenAI counts it.
    assert outputs[-1].accepted_prediction_tokens == 8


def test_a_stop_string_inside_a_draft_ends_the_output_there() -> None:
    request = spec_request("r", "Say", prediction="hello world. more", stop=("world",))
    outputs, runner = generate("hello world. more", request, SpeculationMode.ON)
    assert joined(outputs) == "hello "
    assert outputs[-1].stop_sequence == "world"
    assert draft_chunks(runner)


def test_max_tokens_bounds_the_draft() -> None:
    request = spec_request("r", "Say", prediction="abcdefghijkl", max_tokens=5)
    outputs, runner = generate("abcdefghijkl", request, SpeculationMode.ON)
    assert joined(outputs) == "abcde"
    assert outputs[-1].completion_tokens == 5
    # The step after "a" may produce at most four more: three drafted, one sampled after them.
    assert all(chunk.n_draft <= 3 for chunk in draft_chunks(runner))


def test_the_slot_context_bounds_the_draft() -> None:
    request = spec_request("r", "Say", prediction="abcdefghijkl")
    outputs, runner = generate("abcdefghijkl", request, SpeculationMode.ON, n_ctx_per_slot=8)
    for chunk in draft_chunks(runner):
        assert chunk.start_pos + len(chunk.tokens) <= 8
    plain, _ = generate("abcdefghijkl", request, SpeculationMode.OFF, n_ctx_per_slot=8)
    assert joined(outputs) == joined(plain) == "abcdef"  # eight cells, and the last sample
    assert outputs[-1].finish_reason is plain[-1].finish_reason


def test_logprobs_come_for_every_token_kept() -> None:
    request = spec_request("r", "Say", prediction="abcdXYZ", logprobs=1)
    outputs, runner = generate("abcdefg", request, SpeculationMode.ON)
    assert draft_chunks(runner)
    logprobs = [lp for output in outputs for lp in output.logprobs]
    assert bytes(lp.token for lp in logprobs) == b"abcdefg"


def test_one_output_per_step_carries_every_token_kept() -> None:
    request = spec_request("r", "Say", prediction="abcdefgh")
    outputs, runner = generate("abcdefgh", request, SpeculationMode.ON)
    assert joined(outputs) == "abcdefgh"
    assert len(outputs) <= len(runner.decoded)


def test_n_choices_each_verify_their_own_drafts() -> None:
    runner = FakeRunner(scripts={ord("S"): [*text_tokens("abcdef"), EOG]})
    core: EngineCore[str] = EngineCore(
        runner, 2, BatchBudget(64, 16), speculation=SpeculationMode.ON
    )
    core.add(
        GenerationRequest("r", tokens("Say"), SamplingParams(max_tokens=32), 2, tokens("abcdef")),
        "r",
    )
    outputs = run(core)["r"]
    by_choice = {i: joined([o for o in outputs if o.index == i]) for i in (0, 1)}
    assert by_choice == {0: "abcdef", 1: "abcdef"}
    assert {chunk.seq_id for chunk in draft_chunks(runner)} == {0, 1}


def test_auto_drafts_only_while_few_sequences_decode() -> None:
    n = AUTO_MAX_DECODING + 1
    runner = FakeRunner(n_ctx_per_slot=256)
    core: EngineCore[str] = EngineCore(
        runner, n, BatchBudget(256, 64), speculation=SpeculationMode.AUTO
    )
    for i in range(n):
        prompt = chr(ord("A") + i) + "say"
        runner.scripts[ord(prompt[0])] = [*text_tokens("abcabcabcabc"), EOG]
        core.add(spec_request(f"r{i}", prompt, prediction="abcabcabcabc"), f"r{i}")
    run(core)
    steps_with_all = [step for step in runner.decoded if len(step) == n]
    assert steps_with_all
    assert not any(chunk.n_draft for step in steps_with_all for chunk in step)


def test_auto_leaves_grammar_requests_undrafted_and_on_drafts_them() -> None:
    grammar = Grammar("root ::= [a-z]+")
    for mode, drafted in ((SpeculationMode.AUTO, False), (SpeculationMode.ON, True)):
        request = spec_request("r", "Say", prediction="abcdefgh", grammar=grammar)
        outputs, runner = generate("abcdefgh", request, mode)
        assert joined(outputs) == "abcdefgh"
        assert bool(draft_chunks(runner)) is drafted


def test_drafts_leave_waiting_prompts_their_share_of_the_step() -> None:
    scheduler = Scheduler(2, BatchBudget(max_batch_tokens=24, max_prefill_tokens=16))
    running = Sequence("a", tokens("ab"))
    scheduler.add(running)
    scheduler.commit(scheduler.schedule())
    running.next_token = ord("x")
    running.draft = tokens("0123456789")
    scheduler.add(Sequence("b", tokens("p" * 40)))
    plan = scheduler.schedule()
    decode, prefill = plan.chunks
    assert decode.n_draft == 24 - 1 - 16  # the budget less the pending token and the prompt's share
    assert len(prefill.tokens) == 16
    assert plan.n_tokens <= 24


# -- the distribution -------------------------------------------------------------------------


@dataclass
class MarkovSampler:
    rng: random.Random


@dataclass
class MarkovRunner(FakeRunner):
    """Each row's next token is drawn from a fixed table given the row's own token, with the
    sampler's seeded generator: a model whose exact distribution the test knows."""

    table: dict[int, dict[int, float]] = field(default_factory=dict)
    _row_tokens: list[int] = field(default_factory=list)

    def decode(self, chunks: SequenceType[Chunk]) -> int:
        self._row_tokens = [token for chunk in chunks for token in chunk.tokens]
        return super().decode(chunks)

    def new_sampler(self, params: SamplingParams) -> object:
        return MarkovSampler(random.Random(params.seed))

    def sample(self, sampler: object, batch_row: int) -> int:
        assert isinstance(sampler, MarkovSampler)
        options = self.table[self._row_tokens[batch_row]]
        return sampler.rng.choices(list(options), weights=list(options.values()))[0]


A, B, C = ord("a"), ord("b"), ord("c")
TABLE = {
    ord("?"): {A: 0.5, B: 0.3, C: 0.2},
    A: {A: 0.6, B: 0.4},
    B: {A: 0.3, C: 0.7},
    C: {A: 0.5, B: 0.25, C: 0.25},
}
CONTINUATION = 4


def exact_distribution() -> dict[bytes, float]:
    paths = {b"": 1.0}
    previous = {b"": ord("?")}
    for _ in range(CONTINUATION):
        grown, grown_previous = {}, {}
        for path, probability in paths.items():
            for token, p in TABLE[previous[path]].items():
                key = path + bytes([token])
                grown[key] = probability * p
                grown_previous[key] = token
        paths, previous = grown, grown_previous
    return paths


def sample_continuations(mode: SpeculationMode, seeds: range) -> dict[int, bytes]:
    runner = MarkovRunner(n_ctx_per_slot=64, table=TABLE)
    core: EngineCore[str] = EngineCore(runner, 4, BatchBudget(64, 16), speculation=mode)
    results: dict[int, bytes] = {}
    for seed in seeds:
        # A prediction the model often agrees with, and one it often does not.
        request = spec_request(
            f"r{seed}",
            "abacab?",
            prediction="aab" if seed % 2 else "bca",
            max_tokens=CONTINUATION,
            seed=seed,
        )
        core.add(request, f"r{seed}")
        results[seed] = text_tokens_of(run(core)[f"r{seed}"])
    if mode is not SpeculationMode.OFF:
        assert core.stats.draft_tokens_total > len(seeds)
        assert 0 < core.stats.draft_tokens_accepted_total < core.stats.draft_tokens_total
    return results


def text_tokens_of(outputs: list[RequestOutput]) -> bytes:
    return joined(outputs).encode()


def test_sampling_with_drafts_keeps_the_model_distribution() -> None:
    seeds = range(3000)
    speculative = sample_continuations(SpeculationMode.ON, seeds)
    observed = Counter(speculative.values())
    assert goodness_of_fit(observed, exact_distribution()) > 0.001
    # Against sampling without drafts from other seeds: the same distribution.
    plain = Counter(sample_continuations(SpeculationMode.OFF, range(5000, 8000)).values())
    assert homogeneity(observed, plain) > 0.001


def test_a_seeded_sample_is_the_same_with_and_without_drafts() -> None:
    # The chain draws once per token kept, in order, with or without a draft.
    seeds = range(200)
    assert sample_continuations(SpeculationMode.ON, seeds) == sample_continuations(
        SpeculationMode.OFF, seeds
    )


class FixedStepCost(StepCost):
    """Step costs that stay as given: what the engine's own timing would learn on a device."""

    def __init__(self, one_row: float, per_row: float) -> None:
        super().__init__()
        self.observed: list[int] = []
        for rows in range(1, 40):
            self.seconds_by_rows[rows] = one_row + per_row * (rows - 1)

    def observe(self, rows: int, seconds: float) -> None:
        self.observed.append(rows)


def test_auto_sizes_drafts_by_the_step_cost_and_times_decoding_steps() -> None:
    script = "the lighthouse keeper kept the lamp lit through the storm and the night"
    longest = {}
    for name, cost in (("gpu", FixedStepCost(0.010, 0.0001)), ("cpu", FixedStepCost(0.010, 0.02))):
        runner = FakeRunner(scripts={ord("S"): [*text_tokens(script), EOG]}, n_ctx_per_slot=256)
        core: EngineCore[str] = EngineCore(
            runner, 1, BatchBudget(128, 64), speculation=SpeculationMode.AUTO, step_cost=cost
        )
        core.add(spec_request("r", "Say", prediction=script, max_tokens=128), "r")
        assert joined(run(core)["r"]) == script
        longest[name] = max((chunk.n_draft for chunk in draft_chunks(runner)), default=0)
        # Every step that only decoded was timed, with its rows: the pending token and drafts.
        decoding_steps = [step for step in runner.decoded if all(c.start_pos > 0 for c in step)]
        assert cost.observed and len(cost.observed) <= len(decoding_steps)
        assert max(cost.observed) == longest[name] + 1
    # Cheap rows: the prediction drafted long, near the ceiling (each further token is a little
    # less sure); rows that cost twice a one-row step never pay, whatever the acceptance.
    assert longest["gpu"] >= 24
    assert longest["cpu"] == 0


# -- re-alignment ---------------------------------------------------------------------------------


def realigned(prediction: str, output: str, length: int = 12) -> Draft | None:
    drafter = Drafter(tokens("edit this"), prediction=tokens(prediction))
    for token in tokens(output):
        drafter.push(token)
    return drafter.draft(length)


def test_after_a_changed_line_the_draft_resumes_at_the_longest_match() -> None:
    """A newline alone matches at every line end; the longest suffix of the output that the
    prediction holds puts the draft at the right one."""
    prediction = "a = 1\nb = 2\nc = 3\nd = 4\n"
    draft = realigned(prediction, "a = 1\nb = 20\nc")  # line b changed, then line c begins
    assert draft is not None and bytes(draft.tokens) == b" = 3\nd = 4\n"
    assert draft.aligned_on is not None and draft.aligned_on >= 2
    # A newline alone is no match: no draft rather than one from the wrong line.
    assert realigned(prediction, "a = 1\nb = 20\n") is None


def test_a_fence_added_before_the_prediction_is_drafted_past() -> None:
    draft = realigned("def f(x):\n    return x\n", "```python\ndef f")
    assert draft is not None and bytes(draft.tokens) == b"(x):\n    ret"


def test_a_renamed_name_resumes_at_the_token_after_it() -> None:
    """One token put in place of another: the next one already continues the prediction."""
    prediction = tuple(range(10, 30))
    drafter = Drafter((1, 2), prediction=prediction)
    for token in (10, 11, 12, 99, 14):  # 13 was replaced by 99
        drafter.push(token)
    draft = drafter.draft(4)
    assert draft is not None and draft.tokens == (15, 16, 17, 18)
    assert draft.aligned_on is not None


def test_the_match_nearest_after_the_parting_wins_among_equals() -> None:
    prediction = tokens("x = f(a)\ny = f(a)\nz = f(a)\n")
    drafter = Drafter(tokens("go"), prediction=prediction)
    for token in tokens("x = f(a)\ny = g(b"):  # departs in line y
        drafter.push(token)
    for token in tokens("a)\n"):
        drafter.push(token)
    draft = drafter.draft(5)
    # "a)\n" ends lines x, y and z alike: the draft goes on after line y, where they parted.
    assert draft is not None and bytes(draft.tokens) == b"z = f"


def test_prompt_lookup_resumes_at_the_longest_match_too() -> None:
    drafter = Drafter(tokens("alpha beta gamma. delta beta epsilon. "))
    for token in tokens("delta beta"):
        drafter.push(token)
    draft = drafter.draft(8)
    assert draft is not None and draft.source is DraftSource.LOOKUP
    assert bytes(draft.tokens) == b" epsilon"


def test_a_realigned_draft_starts_its_estimate_afresh() -> None:
    lengths = DraftLength(SpeculationMode.AUTO)
    for _ in range(6):
        lengths.verified(DraftSource.PREDICTION, 8, 0)  # refused at once, again and again
    draft = Draft(tuple(range(20)), DraftSource.PREDICTION)
    assert lengths.plan(draft, cpu_like()) == 0
    fresh = Draft(tuple(range(20)), DraftSource.PREDICTION, aligned_on=8)
    assert lengths.plan(fresh, cpu_like()) > 0
    assert lengths.acceptance(DraftSource.PREDICTION) > 0.85
    short = DraftLength(SpeculationMode.AUTO)
    short.plan(Draft(tuple(range(20)), DraftSource.PREDICTION, aligned_on=2), cpu_like())
    assert short.acceptance(DraftSource.PREDICTION) < 0.7  # a short match is a weaker guess


def test_one_preempted_step_does_not_poison_the_step_cost() -> None:
    cost = StepCost()
    for _ in range(20):
        cost.observe(4, 0.030)
    cost.observe(4, 4.8)  # the OS gave the cores to a neighbour for seconds
    assert cost.cost(4) < 0.040
    for _ in range(40):  # a real change still moves it
        cost.observe(4, 0.060)
    assert cost.cost(4) > 0.055


def test_a_later_draft_must_beat_a_step_that_already_holds_an_earlier_one() -> None:
    # Four decoding sequences on a CPU: once the first has a draft, the step already yields its
    # expected tokens, so the same draft for the next must pay against that, not against the
    # bare step, and gets no longer.
    draft = Draft(tuple(range(32)), DraftSource.PREDICTION)
    first, second = DraftLength(SpeculationMode.AUTO), DraftLength(SpeculationMode.AUTO)
    for lengths in (first, second):
        for _ in range(10):
            lengths.verified(DraftSource.PREDICTION, 8, 8)
    planned = first.plan(draft, cpu_like(), rows=4, yielded=4)
    assert planned > 0
    expected = first.expected_extra(DraftSource.PREDICTION, planned)
    assert 0 < expected <= planned
    naive = second.plan(draft, cpu_like(), rows=4 + planned, yielded=4)
    counted = second.plan(draft, cpu_like(), rows=4 + planned, yielded=4 + expected)
    assert counted < naive
