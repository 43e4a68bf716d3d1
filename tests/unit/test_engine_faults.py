"""Faults stay inside one request: a refused decode fails only its step's requests, and an
exception in the engine thread fails every request instead of leaving one waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence as SequenceType
from dataclasses import dataclass, field

import pytest

from hearth.engine.core import EngineCore
from hearth.engine.engine import Engine
from hearth.engine.scheduler import Chunk
from hearth.engine.types import (
    BatchBudget,
    FinishReason,
    QueuePolicy,
    RequestOutput,
)
from hearth.errors import EngineError, KvCacheFullError
from tests.unit.fake_runner import EOG, FakeRunner, text_tokens
from tests.unit.test_engine_core import joined, request, run


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (1, "no room in the KV cache"),
        (2, "aborted"),
        (-1, "invalid"),
        (-3, "llama.cpp had an error"),
    ],
)
def test_a_refused_decode_fails_the_requests_of_its_step_and_the_queue_goes_on(
    status: int, words: str
) -> None:
    runner = FakeRunner(scripts={ord("A"): text_tokens("a" * 20), ord("B"): [ord("b"), EOG]})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("a", "A"), "a")
    core.step()  # a is generating
    core.add(request("b", "B"), "b")  # b waits for the one slot
    runner.fail_next_decode = status
    [(sink, failed)] = core.step()
    assert sink == "a" and failed.finish_reason is FinishReason.ERROR
    assert isinstance(failed.error, EngineError)
    assert words in failed.error.message
    assert f"llama_decode returned {status}" in failed.error.message
    assert core.fault is None  # the engine goes on
    out = run(core)
    assert "a" not in out
    assert "".join(o.text for o in out["b"]) == "b"
    assert out["b"][-1].finish_reason is FinishReason.STOP


def test_a_refused_decode_spares_a_running_request_that_was_not_in_the_batch() -> None:
    runner = FakeRunner(
        scripts={ord("A"): text_tokens("a" * 20), ord("B"): [*text_tokens("bb"), EOG]}
    )
    # Prompts of 10 tokens and 10 tokens a step: b is admitted, but only a's prompt goes into
    # the first batch.
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(10, 10))
    core.add(request("a", "A" * 10), "a")
    core.add(request("b", "B" * 10), "b")
    runner.fail_next_decode = 1
    outputs = core.step()
    assert [sink for sink, _ in outputs] == ["a"]
    assert core.scheduler.slots_in_use == 1
    out = run(core)
    assert "".join(o.text for o in out["b"]) == "bb"


@dataclass
class ExplodingRunner(FakeRunner):
    explode_after: int = 2  # samples that work before one raises
    samples: int = 0

    def sample(self, sampler: object, batch_row: int) -> int:
        self.samples += 1
        if self.samples > self.explode_after:
            raise RuntimeError("boom")
        return super().sample(sampler, batch_row)


def test_an_exception_in_a_step_fails_every_request_and_records_the_fault() -> None:
    runner = ExplodingRunner(scripts={ord("A"): text_tokens("a" * 20)})
    core: EngineCore[str] = EngineCore(runner, 1, BatchBudget(64, 16))
    core.add(request("a", "A"), "a")
    core.add(request("b", "B"), "b")  # waiting for the slot
    out = run(core)
    for rid in ("a", "b"):
        last = out[rid][-1]
        assert last.finish_reason is FinishReason.ERROR
        assert last.error is not None and "RuntimeError: boom" in last.error.message
    assert core.fault == "RuntimeError: boom"
    assert not core.has_work and core.scheduler.slots_in_use == 0
    # Until the model is reloaded, a new request fails at once instead of running on it.
    core.add(request("c", "C"), "c")
    [(sink, output)] = core.step()
    assert sink == "c" and output.finish_reason is FinishReason.ERROR


def test_an_engine_thread_whose_step_raises_leaves_no_request_waiting() -> None:
    async def scenario() -> list[BaseException | list[RequestOutput]]:
        runner = ExplodingRunner(scripts={ord("A"): text_tokens("a" * 20)}, explode_after=3)
        engine = Engine(runner, 1, BatchBudget(64, 16), QueuePolicy(max_waiting=8, timeout_s=60))
        engine.start()

        async def one(rid: str) -> list[RequestOutput]:
            return [output async for output in engine.generate(request(rid, "A"))]

        try:
            return await asyncio.wait_for(
                asyncio.gather(*(one(f"r{i}") for i in range(3)), return_exceptions=True), 10
            )
        finally:
            engine.shutdown()

    results = asyncio.run(scenario())
    assert all(isinstance(result, EngineError) for result in results), results


@dataclass
class PoolRunner(FakeRunner):
    """A shared KV cache of `pool` cells (--kv-unified): a decode that would overfill it is
    refused with status 1, as llama_decode refuses it."""

    pool: int = 0
    cells: dict[int, int] = field(default_factory=dict)  # seq_id -> cells held

    def decode(self, chunks: SequenceType[Chunk]) -> int:
        for chunk in chunks:
            assert chunk.start_pos == self.cells.get(chunk.seq_id, 0), "KV out of step"
        if sum(self.cells.values()) + sum(len(c.tokens) for c in chunks) > self.pool:
            return 1
        for chunk in chunks:
            self.cells[chunk.seq_id] = chunk.start_pos + len(chunk.tokens)
        return super().decode(chunks)

    def kv_trim(self, seq_id: int, from_pos: int) -> None:
        super().kv_trim(seq_id, from_pos)
        self.cells[seq_id] = min(self.cells.get(seq_id, 0), from_pos)


def test_a_full_shared_cache_ends_the_request_holding_most_and_the_other_finishes() -> None:
    runner = PoolRunner(pool=40, n_ctx_per_slot=40)
    runner.scripts = {ord("A"): text_tokens("a" * 30), ord("B"): [*text_tokens("b" * 15), EOG]}
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 64))
    core.add(request("a", "A" * 8, max_tokens=24), "a")  # up to 32 cells: fits alone
    core.step()
    core.add(request("b", "B" * 4), "b")  # 4 + 15 cells: the two cannot both finish
    out = run(core)
    [failed] = out["a"][-1:]
    assert failed.finish_reason is FinishReason.ERROR
    assert isinstance(failed.error, KvCacheFullError) and failed.error.status_code == 503
    assert "shared KV cache" in failed.error.message
    assert joined(out["b"]) == "b" * 15 and out["b"][-1].finish_reason is FinishReason.STOP
    assert core.fault is None and not core.has_work
    assert runner.cells[0] == 0  # a's cells were given back, not kept as cache


def test_a_full_shared_cache_drops_idle_caches_before_ending_any_request() -> None:
    runner = PoolRunner(pool=40, n_ctx_per_slot=40)
    runner.scripts = {ord("C"): [*text_tokens("c" * 2), EOG], ord("A"): text_tokens("a" * 20)}
    core: EngineCore[str] = EngineCore(runner, 2, BatchBudget(64, 64))
    core.add(request("c", "C" * 16), "c")
    assert joined(run(core)["c"]) == "cc"  # its 18 cells stay behind as a cache
    core.add(request("a", "A" * 4, max_tokens=20), "a")  # admitted to the other, empty slot
    out = run(core)
    assert joined(out["a"]) == "a" * 20 and out["a"][-1].finish_reason is FinishReason.LENGTH
    assert runner.cells[0] == 0  # the idle cache made room


def test_a_request_is_out_of_the_engine_once_its_last_output_is_read() -> None:
    """Whoever reads a request's last output may act on the model at once (delete it, unload
    it): the engine no longer counts the request, even before its generator is closed."""

    async def scenario() -> tuple[int, int]:
        runner = FakeRunner(scripts={ord("A"): [*text_tokens("ab"), EOG]})
        engine = Engine(runner, 1, BatchBudget(64, 16), QueuePolicy(max_waiting=8, timeout_s=60))
        engine.start()
        try:
            outputs = engine.generate(request("r", "A"))
            while (await outputs.__anext__()).finish_reason is None:
                pass
            at_last_output = engine.in_flight  # the generator is still open here
            await outputs.aclose()
            return at_last_output, engine.in_flight
        finally:
            engine.shutdown()

    assert asyncio.run(scenario()) == (0, 0)
