"""The prompt cache on disk: its index, lookups, LRU bound, corrupt files, and the engine's
save at stop and restore at admission (with the fake runner, whose "state" is the tokens)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from hearth.engine.core import EngineCore
from hearth.engine.engine import Engine
from hearth.engine.prompt_disk import (
    MIN_SAVED_TOKENS,
    PromptDiskCache,
    cache_folder_name,
    model_fingerprint,
)
from hearth.engine.types import (
    BatchBudget,
    FinishReason,
    GenerationRequest,
    QueuePolicy,
    RequestOutput,
    SamplingParams,
)
from tests.unit.fake_runner import EOG, FakeRunner
from tests.unit.test_engine_core import run

FOLDER = "model-f16-f16-faauto"


def tokens(n: int, start: int = 1) -> list[int]:
    return [start + i % 200 for i in range(n)]


def write_tokens(path: Path, held: list[int]) -> bool:
    path.write_bytes(json.dumps(held).encode())
    return True


def read_tokens(path: Path) -> list[int] | None:
    try:
        held: list[int] = json.loads(path.read_bytes())
    except ValueError:
        return None
    return held


def cache(root: Path, limit: int = 1 << 30, max_tokens: int = 4096) -> PromptDiskCache:
    return PromptDiskCache(root, FOLDER, limit, max_tokens)


def test_a_saved_prefix_is_found_after_a_restart(tmp_path: Path) -> None:
    history = tokens(300)
    assert cache(tmp_path).save(history, lambda p: write_tokens(p, history))

    reopened = cache(tmp_path)  # a new process reads the index
    prompt = (*history[:250], 999, 998)
    found = reopened.longest_prefix(prompt, 64)
    assert found is not None
    entry, held, common = found
    assert held == tuple(history) and common == 250
    assert reopened.restore(entry, read_tokens)
    # Asking for more than it shares finds nothing.
    assert reopened.longest_prefix(prompt, 251) is None


def test_the_longest_of_several_prefixes_wins(tmp_path: Path) -> None:
    disk = cache(tmp_path)
    short, long = tokens(100), [*tokens(100), *tokens(100, start=50)]
    other = tokens(150, start=7)
    for held in (short, other):
        disk.save(held, lambda p, h=held: write_tokens(p, h))
    disk.save(long, lambda p: write_tokens(p, long))
    # The longer conversation replaced the one it extends.
    assert len(disk.entries) == 2
    found = disk.longest_prefix((*long, 5), 64)
    assert found is not None and found[2] == len(long)


def test_nothing_is_written_for_what_is_already_saved_or_too_short(tmp_path: Path) -> None:
    disk = cache(tmp_path)
    held = tokens(200)
    assert disk.save(held, lambda p: write_tokens(p, held))
    written: list[Path] = []
    assert not disk.save(held[:150], lambda p: written.append(p) or True)
    assert not disk.save(held[: MIN_SAVED_TOKENS - 1], lambda p: written.append(p) or True)
    assert written == []


def test_least_recently_used_states_are_evicted_past_the_limit(tmp_path: Path) -> None:
    first, second, third = tokens(100, 1), tokens(100, 2), tokens(100, 3)
    size = len(json.dumps(first).encode())
    disk = cache(tmp_path, limit=2 * size + size // 2)
    disk.save(first, lambda p: write_tokens(p, first))
    disk.save(second, lambda p: write_tokens(p, second))
    old = next(e for e in disk.entries.values() if e.tokens == tuple(first))
    os.utime(old.kv_path, (1, 1))  # first is older; restoring second made it recent
    disk.save(third, lambda p: write_tokens(p, third))
    kept = {e.tokens[0] for e in disk.entries.values()}
    assert kept == {2, 3}
    assert not old.kv_path.exists() and not old.meta_path.exists()


def test_the_limit_covers_other_models_folders(tmp_path: Path) -> None:
    other = PromptDiskCache(tmp_path, "other-f16-f16-faauto", 1 << 30, 4096)
    held = tokens(100)
    other.save(held, lambda p: write_tokens(p, held))
    stale = next(iter(other.entries.values())).kv_path
    os.utime(stale, (1, 1))
    size = stale.stat().st_size
    disk = cache(tmp_path, limit=size + size // 2)
    mine = tokens(100, 9)
    disk.save(mine, lambda p: write_tokens(p, mine))
    assert not stale.exists()
    assert len(disk.entries) == 1


def test_a_corrupt_state_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = tokens(120)
    cache(tmp_path).save(held, lambda p: write_tokens(p, held))
    disk = cache(tmp_path)
    entry = next(iter(disk.entries.values()))
    data = bytearray(entry.kv_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    entry.kv_path.write_bytes(bytes(data))
    loaded: list[Path] = []
    with caplog.at_level(logging.WARNING, "hearth.engine.prompt_disk"):
        assert not disk.restore(entry, lambda p: loaded.append(p) or held)
    assert loaded == []  # never handed to llama.cpp
    assert "checksum" in caplog.text
    assert not entry.kv_path.exists() and disk.entries == {}


def test_a_state_llama_cpp_refuses_or_with_other_tokens_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    held = tokens(120)
    disk = cache(tmp_path)
    disk.save(held, lambda p: write_tokens(p, held))
    entry = next(iter(disk.entries.values()))
    with caplog.at_level(logging.WARNING, "hearth.engine.prompt_disk"):
        assert not disk.restore(entry, lambda p: None)
    assert "could not load" in caplog.text
    disk.save(held, lambda p: write_tokens(p, held))
    entry = next(iter(disk.entries.values()))
    assert not disk.restore(entry, lambda p: held[:-1])
    assert "tokens differ" in caplog.text


@pytest.mark.parametrize(
    "index",
    ["{not json", json.dumps({"format": 99, "tokens": [1], "kv_bytes": 1, "crc32": 0}), "[]"],
)
def test_an_unreadable_index_is_ignored_with_a_warning(
    tmp_path: Path, index: str, caplog: pytest.LogCaptureFixture
) -> None:
    held = tokens(100)
    cache(tmp_path).save(held, lambda p: write_tokens(p, held))
    meta = next((tmp_path / FOLDER).glob("*.json"))
    meta.write_text(index)
    with caplog.at_level(logging.WARNING, "hearth.engine.prompt_disk"):
        disk = cache(tmp_path)
    assert disk.entries == {}
    assert "Ignoring the saved prompt cache" in caplog.text
    assert list((tmp_path / FOLDER).iterdir()) == []


def test_states_longer_than_a_slot_are_not_offered(tmp_path: Path) -> None:
    held = tokens(300)
    cache(tmp_path).save(held, lambda p: write_tokens(p, held))
    assert cache(tmp_path, max_tokens=256).longest_prefix(tuple(held), 64) is None


def test_zero_limit_saves_nothing(tmp_path: Path) -> None:
    held = tokens(100)
    assert not cache(tmp_path, limit=0).save(held, lambda p: write_tokens(p, held))


def test_the_fingerprint_follows_the_contents(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    body = os.urandom(3 << 20)
    a.write_bytes(body)
    b.write_bytes(body)
    assert model_fingerprint(a) == model_fingerprint(b)
    b.write_bytes(body[:-1] + bytes([body[-1] ^ 1]))  # the tail is read
    assert model_fingerprint(a) != model_fingerprint(b)
    assert cache_folder_name("abc", "q8_0", "f16", "auto") == "abc-q8_0-f16-faauto"


# -- the engine: save at stop, restore at admission ------------------------------------------


def chat(rid: str, prompt: list[int], max_tokens: int = 4) -> GenerationRequest:
    return GenerationRequest(rid, tuple(prompt), SamplingParams(max_tokens=max_tokens))


def engine(runner: FakeRunner, root: Path, slots: int = 2) -> EngineCore[str]:
    disk = PromptDiskCache(root, FOLDER, 1 << 30, runner.n_ctx_per_slot)
    return EngineCore(runner, slots, BatchBudget(512, 128), prompt_disk=disk)


def test_a_restarted_engine_restores_the_conversation_instead_of_decoding_it(
    tmp_path: Path,
) -> None:
    history = tokens(150)
    before = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, 66, EOG]})
    core = engine(before, tmp_path)
    core.add(chat("turn1", history), "turn1")
    run(core)
    assert core.save_prompt_cache() == 1
    # The slot held the prompt and the answer's first two tokens (the end token is not fed).
    assert before.saves == [(0, 152)]

    after = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [67, EOG]})
    restarted = engine(after, tmp_path)
    turn2 = [*history, 65, 66, 7, 8, 9]
    restarted.add(chat("turn2", turn2), "turn2")
    out = run(restarted)["turn2"]
    assert out[-1].finish_reason is FinishReason.STOP
    assert out[-1].cached_tokens == 152
    assert len(after.loads) == 1
    # Only the new turn's tokens went through a decode.
    first_chunk = after.decoded[0][0]
    assert first_chunk.start_pos == 152 and list(first_chunk.tokens) == [7, 8, 9]
    assert restarted.stats.prompt_tokens_cached_total == 152


def test_a_slot_holding_more_than_the_disk_is_used_instead(tmp_path: Path) -> None:
    history = tokens(150)
    runner = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, EOG]})
    core = engine(runner, tmp_path)
    core.add(chat("a", history[:100]), "a")
    run(core)
    core.save_prompt_cache()
    core.add(chat("b", history), "b")
    run(core)
    core.add(chat("c", [*history, 65, 3]), "c")
    out = run(core)["c"]
    assert runner.loads == []  # b's slot continues; the shorter saved prefix is not read
    assert out[-1].cached_tokens == 151


def test_a_failed_restore_decodes_the_whole_prompt(tmp_path: Path) -> None:
    history = tokens(150)
    core = engine(FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, EOG]}), tmp_path)
    core.add(chat("turn1", history), "turn1")
    run(core)
    core.save_prompt_cache()
    state = next((tmp_path / FOLDER).glob("*.kv"))
    state.write_text(state.read_text().replace('"tokens"', '"tokenz"'))

    after = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [66, EOG]})
    restarted = engine(after, tmp_path)
    restarted.add(chat("turn2", [*history, 5, 6]), "turn2")
    out = run(restarted)["turn2"]
    assert out[-1].finish_reason is FinishReason.STOP and out[-1].cached_tokens == 0
    assert after.decoded[0][0].start_pos == 0
    assert (0, 0) in after.trims
    assert restarted.prompt_disk is not None and restarted.prompt_disk.entries == {}


def test_a_faulted_engine_saves_nothing(tmp_path: Path) -> None:
    history = tokens(150)
    runner = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, EOG]})
    core = engine(runner, tmp_path)
    core.add(chat("a", history), "a")
    run(core)
    core.fault = "RuntimeError: boom"
    assert core.save_prompt_cache() == 0
    assert runner.saves == []


def test_the_engine_thread_saves_its_slots_when_it_stops(tmp_path: Path) -> None:
    history = tokens(120)
    runner = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, 66, EOG]})
    disk = PromptDiskCache(tmp_path, FOLDER, 1 << 30, runner.n_ctx_per_slot)

    async def scenario() -> list[RequestOutput]:
        engine = Engine(runner, 2, BatchBudget(512, 128), QueuePolicy(8, 60), prompt_disk=disk)
        engine.start()
        try:
            return [output async for output in engine.generate(chat("a", history))]
        finally:
            await asyncio.to_thread(engine.shutdown)

    outputs = asyncio.run(scenario())
    assert outputs[-1].finish_reason is FinishReason.STOP
    assert runner.saves == [(0, 122)]
    assert [
        len(e.tokens) for e in PromptDiskCache(tmp_path, FOLDER, 1 << 30, 512).entries.values()
    ] == [122]


def test_a_failed_restore_also_empties_a_slot_that_copied_it_in_the_same_step(
    tmp_path: Path,
) -> None:
    history = tokens(150)
    core = engine(FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [65, EOG]}), tmp_path)
    core.add(chat("turn1", history), "turn1")
    run(core)
    core.save_prompt_cache()
    state = next((tmp_path / FOLDER).glob("*.kv"))
    state.write_text(state.read_text().replace("1", "2"))  # same size, other bytes

    after = FakeRunner(n_ctx_per_slot=512, scripts={history[0]: [66, EOG]})
    restarted = engine(after, tmp_path)
    restarted.add(chat("a", [*history, 5, 6]), "a")
    restarted.add(chat("b", [*history[:120], 7, 8]), "b")  # copies a's slot, in the same step
    outputs = run(restarted)
    assert after.copies == [(0, 1)]
    for rid in ("a", "b"):
        assert outputs[rid][-1].finish_reason is FinishReason.STOP
        assert outputs[rid][-1].cached_tokens == 0
    first_chunks = {c.seq_id: c.start_pos for c in after.decoded[0]}
    assert first_chunks == {0: 0, 1: 0}
